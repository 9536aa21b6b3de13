//! loralab-sidecar: the engine in its own process, behind line-delimited JSON on stdio
//! (protocol v1, docs/sidecar-protocol.md). Bun spawns it for `device = "cuda"` runs so
//! the Bun process never loads CUDA and a GPU crash never takes the server down.
//!
//! stdin: one request per line. stdout: one event per line (and nothing else; logs go to
//! stderr). A reader thread takes requests; `cancel` and `shutdown` act at once, every
//! other request runs in arrival order on one worker thread (one device, one queue).
use loralab_core::{analyze, config, infer, train, Error as CoreError};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

const PROTOCOL: u64 = 1;
/// Requests the worker runs in order; `cancel` and `shutdown` are the reader's own.
const QUEUED_OPS: [&str; 7] = ["load", "unload", "generate", "loglik", "count_tokens", "train", "analyze"];

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// stdout, one whole line per event, shared by the reader and the worker.
#[derive(Clone)]
struct Out(Arc<Mutex<std::io::Stdout>>);

impl Out {
    fn emit(&self, mut ev: Value) {
        ev["v"] = json!(PROTOCOL);
        let line = ev.to_string();
        let mut o = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // A closed stdout means Bun is gone: nothing is listening, so stop.
        if writeln!(o, "{line}").and_then(|_| o.flush()).is_err() {
            std::process::exit(0);
        }
    }
    fn result(&self, id: &Value, data: Value) {
        self.emit(json!({"id": id, "event": "result", "data": data}));
    }
    fn error(&self, id: &Value, e: Failure) {
        let mut err = json!({"code": e.code, "message": e.message});
        if let Some(f) = e.field {
            err["field"] = json!(f);
        }
        if let Some(c) = e.config {
            err["config"] = c;
        }
        self.emit(json!({"id": id, "event": "error", "error": err}));
    }
}

/// An error as the protocol reports it: a code Bun maps to an error class.
#[derive(Debug)]
struct Failure {
    code: &'static str,
    message: String,
    field: Option<String>,
    config: Option<Value>,
}

impl Failure {
    fn protocol(message: impl Into<String>) -> Self {
        Self { code: "protocol", message: message.into(), field: None, config: None }
    }
}

/// Classify an engine error. CUDA out-of-memory is its own code, with the config that
/// caused it, because its fix (a smaller micro-batch, LoRA, checkpointing) is the user's.
fn classify(e: CoreError, config: Option<&Value>) -> Failure {
    let message = e.to_string();
    if is_out_of_memory(&message) {
        let what = config.map(oom_summary).unwrap_or_default();
        return Failure {
            code: "oom",
            message: format!("CUDA out of memory{what}: {message} (hint: lower train.micro_batch (raise train.grad_accum to keep the batch) or data.seq_len, set train.gradient_checkpointing = true, or train with method.kind = \"lora\")"),
            field: None,
            config: config.cloned(),
        };
    }
    match e {
        CoreError::Config { field, .. } => Failure { code: "config", message, field: Some(field), config: None },
        _ => Failure { code: "engine", message, field: None, config: None },
    }
}

fn is_out_of_memory(message: &str) -> bool {
    message.contains("CUDA_ERROR_OUT_OF_MEMORY") || message.to_ascii_lowercase().contains("out of memory")
}

fn oom_summary(c: &Value) -> String {
    let get =
        |a: &str, b: &str| c.get(a).and_then(|s| s.get(b)).map(|v| v.to_string()).unwrap_or_else(|| "default".into());
    format!(
        " (method.kind = {}, train.micro_batch = {}, data.seq_len = {}, model.dtype = {}, train.device = {})",
        get("method", "kind"),
        get("train", "micro_batch"),
        get("data", "seq_len"),
        get("model", "dtype"),
        get("train", "device")
    )
}

/// Run `f`, turning a panic into an `internal` failure: the sidecar answers every request.
fn guard(config: Option<&Value>, f: impl FnOnce() -> Result<Value, CoreError>) -> Result<Value, Failure> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| classify(e, config)),
        Err(p) => {
            let msg = loralab_core::error::panic_message(p.as_ref());
            if is_out_of_memory(&msg) {
                return Err(classify(CoreError::Candle(loralab_core::candle::Error::Msg(msg)), config));
            }
            let message =
                format!("internal error: {msg} (hint: this is a loralab bug; please report it with the request)");
            Err(Failure { code: "internal", message, field: None, config: None })
        }
    }
}

fn field<T: serde::de::DeserializeOwned>(req: &Value, name: &str) -> Result<T, CoreError> {
    let v = req.get(name).cloned().unwrap_or(Value::Null);
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." { name.to_string() } else { format!("{name}.{path}") };
        CoreError::config(at, e.into_inner().to_string())
    })
}

/// A request queued for the worker.
struct Job {
    id: Value,
    op: String,
    req: Value,
    cancel: Arc<AtomicBool>,
}

struct Worker {
    out: Out,
    engines: HashMap<String, Arc<infer::Engine>>,
    next_engine: usize,
}

impl Worker {
    fn handle(&mut self, job: Job) {
        let Job { id, op, req, cancel } = job;
        let out = self.out.clone();
        let config = (op == "train").then(|| req.get("config").cloned().unwrap_or(Value::Null));
        let r = guard(config.as_ref(), || match op.as_str() {
            "load" => {
                let engine = infer::Engine::load(&field(&req, "request")?)?;
                let cfg = serde_json::to_value(&engine.model.cfg)?;
                self.next_engine += 1;
                let handle = format!("engine-{}", self.next_engine);
                self.engines.insert(handle.clone(), Arc::new(engine));
                Ok(json!({"engine": handle, "model_config": cfg}))
            }
            "unload" => {
                let handle: String = field(&req, "engine")?;
                Ok(json!({"unloaded": self.engines.remove(&handle).is_some()}))
            }
            "generate" => {
                let e = self.engine(&req)?;
                let prompts: Vec<String> = field(&req, "prompts")?;
                let options: infer::GenerateOptions =
                    field(&json!({"options": req.get("options").cloned().unwrap_or(json!({}))}), "options")?;
                Ok(serde_json::to_value(e.generate(&prompts, &options)?)?)
            }
            "loglik" => {
                let e = self.engine(&req)?;
                let reqs: Vec<infer::LoglikRequest> = field(&req, "requests")?;
                let bs: usize = if req.get("batch_size").is_some() { field(&req, "batch_size")? } else { 8 };
                Ok(serde_json::to_value(e.loglikelihood(&reqs, bs.max(1))?)?)
            }
            "count_tokens" => {
                let e = self.engine(&req)?;
                let text: String = field(&req, "text")?;
                Ok(json!(e.count_tokens(&text)?))
            }
            "train" => {
                let text = serde_json::to_string(req.get("config").unwrap_or(&Value::Null))?;
                let cfg = config::parse_config(&text)?;
                let mut sink = |ev: &train::Event| {
                    if let Ok(data) = serde_json::to_value(ev) {
                        out.emit(json!({"id": id, "event": "progress", "data": data}));
                    }
                };
                Ok(serde_json::to_value(train::run(cfg, &mut sink, &cancel)?)?)
            }
            "analyze" => {
                let a: analyze::AnalyzeRequest = field(&req, "request")?;
                let progress = |done: usize, total: usize, name: &str| {
                    out.emit(
                        json!({"id": id, "event": "progress", "data": {"done": done, "total": total, "matrix": name}}),
                    );
                };
                Ok(serde_json::to_value(analyze::analyze(&a, &progress)?)?)
            }
            _ => unreachable!("the reader queues only known ops"),
        });
        match r {
            Ok(data) => out.result(&id, data),
            Err(f) => out.error(&id, f),
        }
    }

    fn engine(&self, req: &Value) -> Result<Arc<infer::Engine>, CoreError> {
        let handle: String = field(req, "engine")?;
        self.engines.get(&handle).cloned().ok_or_else(|| {
            CoreError::config(
                "engine",
                format!(
                    "no engine `{handle}` (hint: load one first; loaded: {:?})",
                    self.engines.keys().collect::<Vec<_>>()
                ),
            )
        })
    }
}

fn main() {
    let out = Out(Arc::new(Mutex::new(std::io::stdout())));
    // Panics are caught and answered as `internal` errors; their report goes to stderr only.
    std::panic::set_hook(Box::new(|info| eprintln!("loralab-sidecar: {info}")));
    out.emit(json!({
        "event": "ready",
        "protocol": PROTOCOL,
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "devices": loralab_core::device::available(),
    }));

    let (tx, rx) = mpsc::channel::<Job>();
    let running: Arc<Mutex<HashMap<String, Arc<AtomicBool>>>> = Default::default();
    let worker = {
        let (out, running) = (out.clone(), running.clone());
        std::thread::Builder::new()
            .name("loralab-worker".into())
            .spawn(move || {
                let mut w = Worker { out, engines: HashMap::new(), next_engine: 0 };
                for job in rx {
                    let key = job.id.to_string();
                    w.handle(job);
                    running.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                }
            })
            .expect("spawn the worker thread")
    };

    let cancel_all = |running: &Mutex<HashMap<String, Arc<AtomicBool>>>| {
        for flag in running.lock().unwrap_or_else(|p| p.into_inner()).values() {
            flag.store(true, Ordering::Relaxed);
        }
    };
    let stdin = std::io::stdin();
    let mut shutdown_id = None;
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let req: Value = match serde_json::from_str(&line) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                out.error(
                    &Value::Null,
                    Failure::protocol(format!("not a JSON object: {:.200} (hint: one request per line)", line)),
                );
                continue;
            }
        };
        let id = req.get("id").cloned().unwrap_or(Value::Null);
        if !(id.is_string() || id.is_u64()) {
            out.error(&id, Failure::protocol("request without an id (hint: {\"v\": 1, \"id\": 1, \"op\": ...})"));
            continue;
        }
        if req.get("v").and_then(Value::as_u64) != Some(PROTOCOL) {
            out.error(&id, Failure::protocol(format!("protocol version {} is not spoken here (hint: this sidecar speaks v{PROTOCOL}; rebuild it with the Bun packages)", req.get("v").unwrap_or(&Value::Null))));
            continue;
        }
        let op = req.get("op").and_then(Value::as_str).unwrap_or_default().to_string();
        match op.as_str() {
            "cancel" => {
                let target = req.get("target").cloned().unwrap_or(Value::Null).to_string();
                let flag = running.lock().unwrap_or_else(|p| p.into_inner()).get(&target).cloned();
                if let Some(f) = &flag {
                    f.store(true, Ordering::Relaxed);
                }
                out.result(&id, json!({"cancelled": flag.is_some()}));
            }
            "shutdown" => {
                shutdown_id = Some(id);
                break;
            }
            op if !QUEUED_OPS.contains(&op) => {
                out.error(
                    &id,
                    Failure::protocol(format!(
                        "unknown op `{op}` (hint: one of {}, cancel, shutdown)",
                        QUEUED_OPS.join(", ")
                    )),
                );
            }
            _ => {
                let cancel = Arc::new(AtomicBool::new(false));
                running.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string(), cancel.clone());
                if tx.send(Job { id, op, req, cancel }).is_err() {
                    break;
                }
            }
        }
    }
    // shutdown or end of input (Bun went away): a running train stops after its step and
    // checkpoints; queued requests still run and answer; then exit.
    cancel_all(&running);
    drop(tx);
    let _ = worker.join();
    if let Some(id) = shutdown_id {
        out.result(&id, json!({"shutdown": true}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_out_of_memory_is_its_own_code_and_names_the_config() {
        let cfg = json!({"method": {"kind": "full"}, "train": {"micro_batch": 4, "device": "cuda"}, "data": {"seq_len": 2048}});
        let e = CoreError::Candle(loralab_core::candle::Error::Msg(
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
        ));
        let f = classify(e, Some(&cfg));
        assert_eq!(f.code, "oom");
        assert!(
            f.message.contains("train.micro_batch = 4")
                && f.message.contains("data.seq_len = 2048")
                && f.message.contains("hint"),
            "{}",
            f.message
        );
        assert_eq!(f.config.as_ref(), Some(&cfg));
        let other = classify(CoreError::config("train.steps", "must be ≥ 1"), Some(&cfg));
        assert_eq!((other.code, other.field.as_deref()), ("config", Some("train.steps")));
    }
}
