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
        let answer = SESSION.handle_line(&self.line, &emit);
        // the final line goes the same way as the events, so it cannot overtake them
        emit(answer.clone());
        Ok(answer)
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> Result<Self::JsValue> {
        Ok(output)
    }
}

/// Run one request line off the JS thread. `onLine` gets its progress lines and then its
/// result or error line, in order; the promise resolves with that last line too (it never
/// rejects). The request is cancellable (`callSync` cancel) from this call on.
#[napi(ts_return_type = "Promise<string>")]
pub fn call(
    line: String,
    #[napi(ts_arg_type = "((line: string) => void) | undefined | null")] on_line: Option<LineCallback>,
) -> AsyncTask<CallTask> {
    SESSION.register(&api::line_id(&line));
    AsyncTask::new(CallTask { line, on_event: on_line.map(Arc::new) })
}

/// Run one quick request line (no model work: config, schema, maths, cancel, the run
/// directory) on the JS thread and return its answer line; others are refused.
#[napi]
pub fn call_sync(line: String) -> String {
    let (id, req) = api::parse_line(&line);
    let reply = req.and_then(|req| match api::refused_in_process(&req) {
        Some(f) => Err(f),
        None if req.is_quick() => SESSION.dispatch(&id, req, &|_| {}),
        None => {
            let why = format!("`{}` is not quick: send it with call() (hint: it runs off the JS thread)", req.op());
            Err(api::Failure::protocol(why))
        }
    });
    api::reply_line(&id, &reply)
}
