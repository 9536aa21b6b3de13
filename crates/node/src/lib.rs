//! napi-rs transport of loralab-core's protocol (loralab_core::api): request lines in, answer
//! lines out, exactly the lines the sidecar prints. No logic lives here; `index.d.ts` is
//! generated from it.
use loralab_core::api::{self, Session};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use std::sync::{Arc, LazyLock};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One session per process: loaded models and running requests, shared by every call.
static SESSION: LazyLock<Session> = LazyLock::new(Session::new);

type LineCallback = ThreadsafeFunction<String, (), String, Status, false>;

pub struct CallTask {
    line: String,
    on_event: Option<Arc<LineCallback>>,
}

impl Task for CallTask {
    type Output = String;
    type JsValue = String;

    fn compute(&mut self) -> Result<Self::Output> {
        let on_event = self.on_event.clone();
        let emit = move |line: String| {
            if let Some(cb) = &on_event {
                cb.call(line, ThreadsafeFunctionCallMode::NonBlocking);
            }
        };
        Ok(SESSION.handle_line(&self.line, &emit))
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> Result<Self::JsValue> {
        Ok(output)
    }
}

/// Run one request line off the JS thread; `onEvent` gets its progress lines, the promise
/// resolves with its result or error line (it never rejects).
#[napi(ts_return_type = "Promise<string>")]
pub fn call(
    line: String,
    #[napi(ts_arg_type = "((line: string) => void) | undefined | null")] on_event: Option<LineCallback>,
) -> AsyncTask<CallTask> {
    AsyncTask::new(CallTask { line, on_event: on_event.map(Arc::new) })
}

/// Run one quick request line (no model work: config, schema, maths, cancel, the run
/// directory) on the JS thread and return its answer line; others are refused.
#[napi]
pub fn call_sync(line: String) -> String {
    match api::parse_line(&line) {
        (id, Ok(req)) if req.is_quick() => api::reply_line(&id, &SESSION.dispatch(&id, req, &|_| {})),
        (id, Ok(req)) => {
            let why = format!("`{}` is not quick: send it with call() (hint: it runs off the JS thread)", req.op());
            api::reply_line(&id, &Err(api::Failure::protocol(why)))
        }
        (id, Err(f)) => api::reply_line(&id, &Err(f)),
    }
}
