//! napi-rs binding of loralab-core: parse arguments, call the core, map errors,
//! return plain objects. No logic lives here; `index.d.ts` is generated from it.
use loralab_core::{config, train, Error as CoreError};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

// candle allocates a fresh buffer per op; mimalloc reuses them instead of mapping and
// faulting in new pages every step (the system allocator spent more time in the kernel than in gemm).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    fn mi_option_set(option: i32, value: std::ffi::c_long);
}

/// Keep freed pages for reuse (mimalloc v3 option 15, purge_delay = -1) rather than return
/// them to the OS and fault fresh zeroed ones in each step: ~10 % of a CPU step otherwise.
fn keep_freed_pages() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: sets a process-wide allocator option; valid at any time.
    ONCE.call_once(|| unsafe { mi_option_set(15, -1) });
}

/// Config errors become `InvalidArg` (the CLI maps them to exit code 2), the rest `GenericFailure`.
fn to_napi(e: CoreError) -> Error {
    let status = match e {
        CoreError::Config { .. } => Status::InvalidArg,
        _ => Status::GenericFailure,
    };
    Error::new(status, e.to_string())
}

fn guard<T>(what: &str, f: impl FnOnce() -> std::result::Result<T, CoreError>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(to_napi),
        Err(p) => {
            let msg = loralab_core::error::panic_message(p.as_ref());
            Err(Error::new(Status::GenericFailure, format!("internal error in {what}: {msg} (hint: this is a loralab bug; please report it with the run's config.json)")))
        }
    }
}

/// The run config's JSON Schema (descriptions and defaults included).
#[napi]
pub fn config_schema() -> serde_json::Value {
    config::config_schema()
}

/// Parse, default and validate a config (JSON text); returns the resolved config.
#[napi]
pub fn resolve_config(config_json: String) -> Result<serde_json::Value> {
    guard("resolveConfig", || {
        let cfg = config::parse_config(&config_json)?.resolve()?;
        Ok(serde_json::to_value(cfg)?)
    })
}

/// A cancellation flag the training loop checks every step.
#[napi]
pub struct CancelToken {
    flag: Arc<AtomicBool>,
}

#[napi]
impl CancelToken {
    #[napi(constructor)]
    pub fn new() -> Self {
        Self { flag: Arc::new(AtomicBool::new(false)) }
    }
    #[napi]
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::Relaxed);
    }
    #[napi(getter)]
    pub fn cancelled(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
}

impl Default for CancelToken {
    fn default() -> Self {
        Self::new()
    }
}

type EventCallback = ThreadsafeFunction<String, (), String, Status, false>;

pub struct TrainTask {
    config_json: String,
    flag: Arc<AtomicBool>,
    on_event: Option<Arc<EventCallback>>,
}

impl Task for TrainTask {
    type Output = String;
    type JsValue = String;

    fn compute(&mut self) -> Result<Self::Output> {
        let on_event = self.on_event.clone();
        let flag = self.flag.clone();
        let json = std::mem::take(&mut self.config_json);
        guard("train", move || {
            let cfg = config::parse_config(&json)?;
            let mut sink = |ev: &train::Event| {
                if let (Some(cb), Ok(s)) = (&on_event, serde_json::to_string(ev)) {
                    cb.call(s, ThreadsafeFunctionCallMode::NonBlocking);
                }
            };
            let summary = train::run(cfg, &mut sink, &flag)?;
            Ok(serde_json::to_string(&summary)?)
        })
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> Result<Self::JsValue> {
        Ok(output)
    }
}

/// Train one run on a worker thread; resolves with the run summary as JSON text. Events (JSON text: start, progress, checkpoint)
/// go to `onEvent`; `cancel.cancel()` stops a running loop after its current step,
/// writes a checkpoint and resolves with status "cancelled".
#[napi(ts_return_type = "Promise<string>")]
pub fn train(
    config_json: String,
    cancel: &CancelToken,
    #[napi(ts_arg_type = "((event: string) => void) | undefined | null")] on_event: Option<EventCallback>,
) -> AsyncTask<TrainTask> {
    keep_freed_pages();
    AsyncTask::new(TrainTask { config_json, flag: cancel.flag.clone(), on_event: on_event.map(Arc::new) })
}

/// Mean held-out loss of a model (+ optional adapter) on a data file; JSON in, JSON text out.
#[napi(ts_return_type = "Promise<string>")]
pub fn eval_loss(request_json: String) -> AsyncTask<EvalTask> {
    keep_freed_pages();
    AsyncTask::new(EvalTask { request_json })
}

pub struct EvalTask {
    request_json: String,
}

impl Task for EvalTask {
    type Output = String;
    type JsValue = String;
    fn compute(&mut self) -> Result<Self::Output> {
        let json = std::mem::take(&mut self.request_json);
        guard("evalLoss", move || {
            let de = &mut serde_json::Deserializer::from_str(&json);
            let req: loralab_core::evaluate::EvalLossRequest = serde_path_to_error::deserialize(de)
                .map_err(|e| CoreError::config(e.path().to_string(), e.into_inner().to_string()))?;
            Ok(serde_json::to_string(&loralab_core::evaluate::eval_loss(&req)?)?)
        })
    }
    fn resolve(&mut self, _env: Env, output: Self::Output) -> Result<Self::JsValue> {
        Ok(output)
    }
}

/// Fold a PEFT adapter into its base (HF directory or .gguf) and write a complete HF model
/// directory to `out`. Options JSON `{dtype?: "bf16" | "f16" | "f32"}` (default f32);
/// resolves with JSON text `{dtype, notes}`.
#[napi(ts_return_type = "Promise<string>")]
pub fn merge(base: String, adapter: String, out: String, options_json: Option<String>) -> AsyncTask<MergeTask> {
    keep_freed_pages();
    AsyncTask::new(MergeTask { base, adapter, out, options_json })
}

pub struct MergeTask {
    base: String,
    adapter: String,
    out: String,
    options_json: Option<String>,
}

impl Task for MergeTask {
    type Output = String;
    type JsValue = String;
    fn compute(&mut self) -> Result<Self::Output> {
        let (base, adapter, out, options) =
            (self.base.clone(), self.adapter.clone(), self.out.clone(), self.options_json.take());
        guard("merge", move || {
            let opts: loralab_core::checkpoint::MergeOptions = match options {
                Some(json) => parse("merge", &json)?,
                None => Default::default(),
            };
            Ok(serde_json::to_string(&loralab_core::checkpoint::merge_with(
                base.as_ref(),
                adapter.as_ref(),
                out.as_ref(),
                &opts,
            )?)?)
        })
    }
    fn resolve(&mut self, _env: Env, output: Self::Output) -> Result<Self::JsValue> {
        Ok(output)
    }
}

// ------------------------------------------------------------------ inference

fn parse<T: serde::de::DeserializeOwned>(what: &str, json: &str) -> std::result::Result<T, CoreError> {
    let de = &mut serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(de)
        .map_err(|e| CoreError::config(format!("{what}.{}", e.path()), e.into_inner().to_string()))
}

/// A model loaded once for evaluation (base + optional adapter, merged or not):
/// batched generation and log-likelihoods, each a Promise run off the JS thread.
#[napi]
pub struct Engine {
    inner: Arc<loralab_core::infer::Engine>,
}

/// Load a model for inference; JSON `{model, adapter?, merged?, tokenizer?, dtype?}`.
#[napi(ts_return_type = "Promise<Engine>")]
pub fn load_engine(request_json: String) -> AsyncTask<LoadEngineTask> {
    keep_freed_pages();
    AsyncTask::new(LoadEngineTask { request_json })
}

pub struct LoadEngineTask {
    request_json: String,
}

impl Task for LoadEngineTask {
    type Output = Arc<loralab_core::infer::Engine>;
    type JsValue = Engine;
    fn compute(&mut self) -> Result<Self::Output> {
        let json = std::mem::take(&mut self.request_json);
        guard("loadEngine", move || Ok(Arc::new(loralab_core::infer::Engine::load(&parse("load", &json)?)?)))
    }
    fn resolve(&mut self, _env: Env, output: Self::Output) -> Result<Self::JsValue> {
        Ok(Engine { inner: output })
    }
}

#[napi]
impl Engine {
    /// Generate from prompts (JSON array of strings) with options (JSON); resolves to JSON text.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn generate(&self, prompts_json: String, options_json: String) -> AsyncTask<InferTask> {
        AsyncTask::new(InferTask {
            engine: self.inner.clone(),
            kind: InferKind::Generate,
            a: prompts_json,
            b: options_json,
        })
    }

    /// Log-likelihoods of `[{context, continuation}]` (JSON) in batches of `batch_size`; resolves to JSON text.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn loglikelihood(&self, requests_json: String, batch_size: u32) -> AsyncTask<InferTask> {
        AsyncTask::new(InferTask {
            engine: self.inner.clone(),
            kind: InferKind::Loglik(batch_size as usize),
            a: requests_json,
            b: String::new(),
        })
    }

    /// Token ids of a text (no special tokens): for prompt-length accounting.
    #[napi]
    pub fn count_tokens(&self, text: String) -> Result<u32> {
        guard("countTokens", || Ok(self.inner.count_tokens(&text)? as u32))
    }

    /// The model's config.json fields, as loaded.
    #[napi(getter)]
    pub fn model_config(&self) -> Result<serde_json::Value> {
        guard("modelConfig", || Ok(serde_json::to_value(&self.inner.model.cfg)?))
    }
}

pub enum InferKind {
    Generate,
    Loglik(usize),
}

pub struct InferTask {
    engine: Arc<loralab_core::infer::Engine>,
    kind: InferKind,
    a: String,
    b: String,
}

impl Task for InferTask {
    type Output = String;
    type JsValue = String;
    fn compute(&mut self) -> Result<Self::Output> {
        let (e, a, b) = (self.engine.clone(), std::mem::take(&mut self.a), std::mem::take(&mut self.b));
        match self.kind {
            InferKind::Generate => guard("generate", move || {
                let prompts: Vec<String> = parse("prompts", &a)?;
                Ok(serde_json::to_string(&e.generate(&prompts, &parse("options", &b)?)?)?)
            }),
            InferKind::Loglik(bs) => guard("loglikelihood", move || {
                let reqs: Vec<loralab_core::infer::LoglikRequest> = parse("requests", &a)?;
                Ok(serde_json::to_string(&e.loglikelihood(&reqs, bs)?)?)
            }),
        }
    }
    fn resolve(&mut self, _env: Env, output: Self::Output) -> Result<Self::JsValue> {
        Ok(output)
    }
}

// ------------------------------------------------------------------ spectral analysis

pub struct AnalyzeTask {
    request_json: String,
    on_progress: Option<Arc<EventCallback>>,
}

impl Task for AnalyzeTask {
    type Output = String;
    type JsValue = String;
    fn compute(&mut self) -> Result<Self::Output> {
        let json = std::mem::take(&mut self.request_json);
        let cb = self.on_progress.clone();
        guard("analyze", move || {
            let req: loralab_core::analyze::AnalyzeRequest = parse("analyze", &json)?;
            let progress = |done: usize, total: usize, name: &str| {
                if let Some(cb) = &cb {
                    let ev = serde_json::json!({"done": done, "total": total, "matrix": name}).to_string();
                    cb.call(ev, ThreadsafeFunctionCallMode::NonBlocking);
                }
            };
            Ok(serde_json::to_string(&loralab_core::analyze::analyze(&req, &progress)?)?)
        })
    }
    fn resolve(&mut self, _env: Env, output: Self::Output) -> Result<Self::JsValue> {
        Ok(output)
    }
}

/// Spectra of the weight change between a base and a tuned model or adapter (JSON request);
/// `onProgress` gets `{done, total, matrix}` JSON after each matrix; resolves to JSON text.
#[napi(ts_return_type = "Promise<string>")]
pub fn analyze(
    request_json: String,
    #[napi(ts_arg_type = "((event: string) => void) | undefined | null")] on_progress: Option<EventCallback>,
) -> AsyncTask<AnalyzeTask> {
    keep_freed_pages();
    AsyncTask::new(AnalyzeTask { request_json, on_progress: on_progress.map(Arc::new) })
}

pub struct BaselineTask {
    n: u32,
    cs: Vec<f64>,
    seed: u32,
}

impl Task for BaselineTask {
    type Output = String;
    type JsValue = String;
    fn compute(&mut self) -> Result<Self::Output> {
        let (n, cs, seed) = (self.n as usize, std::mem::take(&mut self.cs), self.seed as u64);
        guard("randomBaseline", move || {
            if n < 2 || cs.is_empty() || cs.iter().any(|c| !c.is_finite()) {
                return Err(CoreError::config(
                    "baseline",
                    format!("need n ≥ 2 and finite scales c (n = {n}, c = {cs:?})"),
                ));
            }
            Ok(serde_json::to_string(&loralab_core::spectrum::random_baseline(n, &cs, seed, 0)?)?)
        })
    }
    fn resolve(&mut self, _env: Env, output: Self::Output) -> Result<Self::JsValue> {
        Ok(output)
    }
}

/// The study's random-matrix control: spectra of Gaussian A, cB and A + cB (n×n) for each c.
#[napi(ts_return_type = "Promise<string>")]
pub fn random_baseline(n: u32, cs: Vec<f64>, seed: u32) -> AsyncTask<BaselineTask> {
    AsyncTask::new(BaselineTask { n, cs, seed })
}

// ------------------------------------------------------------------ the shared analysis maths
// (loralab-maths: the same code the browser report runs as WebAssembly, crates/wasm)

/// Unbiased pass@k = 1 − C(n−c, k)/C(n, k) (Chen et al. 2021).
#[napi]
pub fn pass_at_k(n: u32, c: u32, k: u32) -> Result<f64> {
    loralab_maths::pass_at_k(n as u64, c as u64, k as u64).map_err(|e| Error::new(Status::InvalidArg, e))
}

/// Indices of the points not dominated with both coordinates better higher, by x ascending.
#[napi]
pub fn pareto_frontier(x: Vec<f64>, y: Vec<f64>) -> Result<Vec<u32>> {
    if x.len() != y.len() {
        return Err(Error::new(
            Status::InvalidArg,
            format!("pareto frontier: {} x values for {} y values", x.len(), y.len()),
        ));
    }
    Ok(loralab_maths::pareto_frontier(&x, &y).into_iter().map(|i| i as u32).collect())
}

/// Smallest k whose first k of `sigma` explain `threshold` of `totalSq` (Σσ² of the whole
/// spectrum; default Σ of `sigma`); null when the stored values never reach it.
#[napi]
pub fn rank_at(sigma: Vec<f64>, threshold: f64, total_sq: Option<f64>) -> Option<u32> {
    let total = total_sq.unwrap_or_else(|| loralab_maths::total_sq(&sigma));
    loralab_maths::rank_at(&sigma, total, threshold).map(|k| k as u32)
}

/// Cumulative explained variance of `sigma` against `totalSq` (default Σ of `sigma`).
#[napi]
pub fn explained_variance(sigma: Vec<f64>, total_sq: Option<f64>) -> Vec<f64> {
    let total = total_sq.unwrap_or_else(|| loralab_maths::total_sq(&sigma));
    loralab_maths::explained_variance(&sigma, total)
}

/// exp of the entropy of σ/Σσ.
#[napi]
pub fn effective_rank(sigma: Vec<f64>) -> f64 {
    loralab_maths::effective_rank(&sigma)
}

/// Σσ² / σ₁².
#[napi]
pub fn stable_rank(sigma: Vec<f64>) -> f64 {
    loralab_maths::stable_rank(&sigma)
}

/// Singular values (descending) of a small row-major m×n matrix (one-sided Jacobi).
#[napi]
pub fn small_singular_values(a: Vec<f64>, m: u32, n: u32) -> Result<Vec<f64>> {
    loralab_maths::singular_values(&a, m as usize, n as usize).map_err(|e| Error::new(Status::InvalidArg, e))
}
