//! The engine's one protocol (docs/sidecar-protocol.md): typed requests, replies, events and
//! failures, and [`Session::dispatch`], which runs every request with one panic guard and one
//! error classifier. The napi addon (crates/node) and the sidecar worker (sidecar/) are
//! transports over it and nothing more: the same request gives the same reply and events
//! through either, and the CUDA worker runs exactly the dispatch the CPU tests run.
//!
//! On the wire a request is one JSON object `{"v": 2, "id": 7, "op": "train", ...fields}`;
//! what comes back are lines `{"v": 2, "id": 7, "event": "progress", "data": Event}`, then one
//! `{"v": 2, "id": 7, "event": "result", "data": reply}` or
//! `{"v": 2, "id": 7, "event": "error", "error": Failure}`. [`protocol_schema`] is the JSON
//! Schema of all of it (the TypeScript types are generated from it).
use crate::base::error::{panic_message, Error};
use crate::config::{self, RunConfig};
use crate::io::{checkpoint, export, rundir};
use crate::run::{analyze, evaluate, infer, spectrum, train};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The protocol version both ends speak.
pub const PROTOCOL: u64 = 2;

// ------------------------------------------------------------------ requests

/// `load`: a model (+ optional adapter) for inference; replies with its handle.
pub type Load = infer::LoadRequest;
/// `eval_loss`: mean held-out loss of a model (+ adapter) on a data file.
pub type EvalLossParams = evaluate::EvalLossRequest;
/// `analyze`: spectra of ΔW between a base and a tuned model or adapter.
pub type Analyze = analyze::AnalyzeRequest;

#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct Train {
    /// The run config (unresolved; the engine applies defaults and validates).
    #[schemars(with = "RunConfig")]
    pub config: Value,
}

#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct EngineRef {
    /// A handle `load` returned.
    pub engine: String,
}

#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct Generate {
    pub engine: String,
    pub prompts: Vec<String>,
    #[serde(default)]
    pub options: infer::GenerateOptions,
}

fn default_batch() -> usize {
    8
}

#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct LoglikParams {
    pub engine: String,
    pub requests: Vec<infer::LoglikRequest>,
    /// Sequences per forward pass.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct CountTokens {
    pub engine: String,
    pub text: String,
}

#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct TokenCounts {
    /// A tokenizer.json or a .gguf file.
    pub tokenizer: String,
    pub texts: Vec<String>,
}

#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct Merge {
    /// Base model: Hugging Face directory or .gguf.
    pub base: String,
    /// PEFT adapter directory.
    pub adapter: String,
    /// Where the merged Hugging Face directory goes.
    pub out: String,
    #[serde(default)]
    pub options: checkpoint::MergeOptions,
}

#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct Export {
    /// A model (Hugging Face directory or .gguf) or a PEFT adapter directory.
    pub src: String,
    /// Where the export goes: a directory (hf, vllm) or a .gguf file (gguf, gguf-lora).
    pub out: String,
    pub options: export::ExportOptions,
}

#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct RandomBaselineParams {
    /// Matrix size n (n×n).
    pub n: usize,
    /// The scales c of A + c·B.
    pub cs: Vec<f64>,
    pub seed: u64,
}

#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct ResolveConfig {
    #[schemars(with = "RunConfig")]
    pub config: Value,
}

#[derive(Deserialize, JsonSchema, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct NoFields {}

#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct RunDir {
    pub run_dir: String,
}

#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct MarkInterrupted {
    pub run_dir: String,
    /// interrupted (the worker died) or cancelled (it was stopped on purpose).
    pub status: rundir::RunStatus,
    #[serde(default)]
    pub error: String,
}

#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    /// The id of the running request to stop (a train stops after its current step).
    #[schemars(with = "RequestId")]
    pub target: Value,
}

/// JSON has no NaN or ±∞, and the maths must take and give them: their numbers travel as
/// numbers, or as the strings "NaN", "Infinity" and "-Infinity" (null reads as NaN).
pub mod nonfinite {
    use serde::{Deserialize, Deserializer};
    use serde_json::Value;

    fn read(v: Value) -> Result<f64, String> {
        match v {
            Value::Null => Ok(f64::NAN),
            Value::Number(n) => n.as_f64().ok_or_else(|| format!("{n} is not a number")),
            Value::String(s) => match s.as_str() {
                "NaN" => Ok(f64::NAN),
                "Infinity" => Ok(f64::INFINITY),
                "-Infinity" => Ok(f64::NEG_INFINITY),
                _ => Err(format!("\"{s}\" is not a number (hint: numbers, or \"NaN\", \"Infinity\", \"-Infinity\")")),
            },
            other => Err(format!("{other} is not a number")),
        }
    }
    pub fn one<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        read(Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
    pub fn opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        match Value::deserialize(d)? {
            Value::Null => Ok(None),
            v => read(v).map(Some).map_err(serde::de::Error::custom),
        }
    }
    pub fn vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        let vs: Vec<Value> = Vec::deserialize(d)?;
        vs.into_iter().map(read).collect::<Result<_, _>>().map_err(serde::de::Error::custom)
    }
    /// A number as it travels.
    pub fn write(x: f64) -> Value {
        match x {
            x if x.is_nan() => Value::String("NaN".into()),
            f64::INFINITY => Value::String("Infinity".into()),
            f64::NEG_INFINITY => Value::String("-Infinity".into()),
            x => serde_json::json!(x),
        }
    }
}

/// How a maths number travels (the schema of [`nonfinite`]): a number, or one of three strings.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum Num {
    Finite(f64),
    NonFinite(NonFinite),
}

#[derive(JsonSchema)]
#[allow(dead_code)]
pub enum NonFinite {
    #[serde(rename = "NaN")]
    NaN,
    Infinity,
    #[serde(rename = "-Infinity")]
    NegInfinity,
}

/// A device to open and compute on (`cpu`, `cuda`, `cuda:N`).
#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct DeviceProbe {
    pub device: String,
}

#[derive(Serialize, JsonSchema, Debug)]
pub struct Probed {
    pub device: String,
    /// The sum of [0, 1, 2, 3] computed there: 6.
    pub sum: f64,
}

/// The maths the report shares with the browser build (loralab-maths).
#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct PassAtK {
    pub n: u64,
    pub c: u64,
    pub k: u64,
}

#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct ParetoFrontier {
    #[serde(deserialize_with = "nonfinite::vec")]
    #[schemars(with = "Vec<Num>")]
    pub x: Vec<f64>,
    #[serde(deserialize_with = "nonfinite::vec")]
    #[schemars(with = "Vec<Num>")]
    pub y: Vec<f64>,
}

#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct RankAt {
    #[serde(deserialize_with = "nonfinite::vec")]
    #[schemars(with = "Vec<Num>")]
    pub sigma: Vec<f64>,
    #[serde(deserialize_with = "nonfinite::one")]
    #[schemars(with = "Num")]
    pub threshold: f64,
    /// Σσ² of the whole spectrum (default: Σ over `sigma`).
    #[serde(default, deserialize_with = "nonfinite::opt")]
    #[schemars(with = "Option<Num>")]
    pub total_sq: Option<f64>,
}

#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct ExplainedVariance {
    #[serde(deserialize_with = "nonfinite::vec")]
    #[schemars(with = "Vec<Num>")]
    pub sigma: Vec<f64>,
    #[serde(default, deserialize_with = "nonfinite::opt")]
    #[schemars(with = "Option<Num>")]
    pub total_sq: Option<f64>,
}

#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct Sigma {
    #[serde(deserialize_with = "nonfinite::vec")]
    #[schemars(with = "Vec<Num>")]
    pub sigma: Vec<f64>,
}

#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct SingularValues {
    /// Row-major m×n.
    #[serde(deserialize_with = "nonfinite::vec")]
    #[schemars(with = "Vec<Num>")]
    pub a: Vec<f64>,
    pub m: usize,
    pub n: usize,
}

/// A request id: a number or a string, echoed on every line of its answer.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum RequestId {
    Number(u64),
    Text(String),
}

// ------------------------------------------------------------------ replies

#[derive(Serialize, JsonSchema, Debug)]
pub struct Loaded {
    pub engine: String,
    /// The model's config.json fields, as loaded.
    pub model_config: Value,
}

#[derive(Serialize, JsonSchema, Debug)]
pub struct Unloaded {
    pub unloaded: bool,
}

#[derive(Serialize, JsonSchema, Debug)]
pub struct Cancelled {
    pub cancelled: bool,
}

#[derive(Serialize, JsonSchema, Debug)]
pub struct Marked {
    pub marked: bool,
}

#[derive(Serialize, JsonSchema, Debug)]
pub struct ShutDown {
    pub shutdown: bool,
}

// ------------------------------------------------------------------ events and failures

/// A spectral analysis finished one matrix.
#[derive(Serialize, JsonSchema, Debug, Clone)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AnalyzeEvent {
    Matrix { done: usize, total: usize, matrix: String },
}

/// What a running request reports before its reply.
#[derive(Serialize, JsonSchema, Debug, Clone)]
#[serde(untagged)]
#[schemars(rename = "EngineEvent")]
pub enum Event {
    Train(train::Event),
    Analyze(AnalyzeEvent),
}

#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    /// The request or config was refused before any work; `field` names what.
    Config,
    /// The device ran out of memory; `config` is the run config that asked for too much.
    Oom,
    /// Anything else the engine reports (data, checkpoints, a non-finite loss...).
    Engine,
    /// The worker process died mid-request (said by the transport's client, not the engine).
    Interrupted,
    /// A panic: a loralab bug.
    Internal,
    /// Not a request this protocol speaks (bad JSON, no id, unknown op, wrong version).
    Protocol,
}

/// Why a request failed, as both transports report it.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
pub struct Failure {
    pub code: FailureCode,
    /// The whole message, hint included.
    pub message: String,
    /// The config or request field at fault (`config` failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What to do about it (the message's "(hint: …)").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The run config of an `oom` failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
}

impl Failure {
    fn new(code: FailureCode, message: String) -> Self {
        let hint = hint_of(&message);
        Failure { code, message, field: None, hint, config: None }
    }
    pub fn protocol(message: impl Into<String>) -> Self {
        Self::new(FailureCode::Protocol, message.into())
    }
}

/// The text of a message's last "(hint: …)" or "Hint: …".
fn hint_of(message: &str) -> Option<String> {
    if let Some(i) = message.rfind("(hint: ") {
        // up to the parenthesis that closes it (hints hold parentheses of their own)
        let rest = &message[i + 7..];
        let mut depth = 0usize;
        for (j, c) in rest.char_indices() {
            match c {
                '(' => depth += 1,
                ')' if depth == 0 => return Some(rest[..j].to_string()),
                ')' => depth -= 1,
                _ => {}
            }
        }
        return Some(rest.to_string());
    }
    message.rfind("Hint: ").map(|i| message[i + 6..].to_string())
}

fn is_out_of_memory(message: &str) -> bool {
    message.contains("CUDA_ERROR_OUT_OF_MEMORY") || message.to_ascii_lowercase().contains("out of memory")
}

/// The one error classifier. Out-of-memory is its own code, with the config that caused it,
/// because its fix (a smaller micro-batch, LoRA, checkpointing) is the user's.
pub fn classify(e: &Error, config: Option<&Value>) -> Failure {
    let message = e.to_string();
    if let Error::Config { field, .. } = e {
        return Failure { field: Some(field.clone()), ..Failure::new(FailureCode::Config, message) };
    }
    if is_out_of_memory(&message) {
        let get = |a: &str, b: &str| {
            config.and_then(|c| c.get(a)?.get(b)).map(|v| v.to_string()).unwrap_or_else(|| "default".into())
        };
        let what = format!(
            " (method.kind = {}, train.micro_batch = {}, data.seq_len = {}, model.dtype = {}, train.device = {})",
            get("method", "kind"),
            get("train", "micro_batch"),
            get("data", "seq_len"),
            get("model", "dtype"),
            get("train", "device")
        );
        let mut f = Failure::new(FailureCode::Oom, format!("out of memory{what}: {message} (hint: lower train.micro_batch (raise train.grad_accum to keep the batch) or data.seq_len, set train.gradient_checkpointing = true, or train with method.kind = \"lora\")"));
        f.config = config.cloned();
        return f;
    }
    Failure::new(FailureCode::Engine, message)
}

// ------------------------------------------------------------------ the request table

/// Point `$ref`s to the written (`…Out`) shape of the `renamed` definitions.
fn rename_refs(v: &mut Value, renamed: &[String]) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("$ref") {
                if let Some(name) = r.strip_prefix("#/$defs/").filter(|n| renamed.iter().any(|x| x == n)) {
                    *r = format!("#/$defs/{name}Out");
                }
            }
            m.values_mut().for_each(|v| rename_refs(v, renamed));
        }
        Value::Array(a) => a.iter_mut().for_each(|v| rename_refs(v, renamed)),
        _ => {}
    }
}

/// `{"$ref": X, "properties": …}` (how schemars writes a newtype variant of an internally
/// tagged enum) becomes `{"allOf": [{"$ref": X}, {"properties": …}]}`, which every reader,
/// json-schema-to-typescript included, takes as both.
fn split_refs(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if m.len() > 1 && m.contains_key("$ref") && m.contains_key("properties") {
                let r = m.remove("$ref").unwrap_or_default();
                let rest = Value::Object(std::mem::take(m));
                m.insert("allOf".into(), json!([{ "$ref": r }, rest]));
            }
            m.values_mut().for_each(split_refs);
        }
        Value::Array(a) => a.iter_mut().for_each(split_refs),
        _ => {}
    }
}

/// Parse one op's fields; a wrong field names its path (`options.top_p`).
fn fields<T: DeserializeOwned>(v: Value) -> Result<T, Error> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        Error::config(if path == "." { "(request)".into() } else { path }, e.into_inner().to_string())
    })
}

macro_rules! protocol {
    ($( $op:literal => $Var:ident($Params:ty) -> $Reply:ty, $quick:literal; )*) => {
        /// One request of the protocol.
        #[derive(Debug)]
        pub enum Request { $( $Var($Params), )* }

        /// Every op, in the order of the table.
        pub const OPS: &[&str] = &[$( $op ),*];

        impl Request {
            /// A request from its op and fields (`v`, `id` and `op` already taken out).
            pub fn parse(op: &str, v: Value) -> Result<Self, Failure> {
                match op {
                    $( $op => fields(v).map(Request::$Var).map_err(|e| classify(&e, None)), )*
                    _ => Err(Failure::protocol(format!("unknown op `{op}` (hint: one of {})", OPS.join(", ")))),
                }
            }
            pub fn op(&self) -> &'static str {
                match self { $( Request::$Var(_) => $op, )* }
            }
            /// Quick enough to answer on the caller's thread (no model work).
            pub fn is_quick(&self) -> bool {
                match self { $( Request::$Var(_) => $quick, )* }
            }
        }

        /// The protocol's JSON Schema: each op's request fields and reply, the events and the
        /// failure, with shared definitions under `$defs`.
        pub fn protocol_schema() -> Value {
            use schemars::generate::SchemaSettings;
            // requests as the engine reads them (defaults make fields optional), replies and
            // events as it writes them (every field present)
            let mut de = SchemaSettings::draft2020_12().for_deserialize().into_generator();
            let mut ser = SchemaSettings::draft2020_12().for_serialize().into_generator();
            let mut requests = serde_json::Map::new();
            let mut replies = serde_json::Map::new();
            $(
                requests.insert($op.into(), de.subschema_for::<$Params>().to_value());
                replies.insert($op.into(), ser.subschema_for::<$Reply>().to_value());
            )*
            let mut event = ser.subschema_for::<Event>().to_value();
            let mut failure = ser.subschema_for::<Failure>().to_value();
            let mut defs = de.take_definitions(true);
            let mut out_defs = Value::Object(ser.take_definitions(true));
            let (mut requests, mut replies) = (Value::Object(requests), Value::Object(replies));
            // a type on both sides whose two shapes differ is published twice: `Name` read,
            // `NameOut` written; so is one that refers to such a type (to a fixed point)
            let mut renamed: Vec<String> = vec![];
            loop {
                let mut written = out_defs.clone();
                rename_refs(&mut written, &renamed);
                let differ: Vec<String> = written.as_object().map(|m| {
                    m.iter().filter(|(k, v)| defs.get(*k).is_some_and(|d| d != *v)).map(|(k, _)| k.clone()).collect()
                }).unwrap_or_default();
                if differ == renamed {
                    break;
                }
                renamed = differ;
            }
            for v in [&mut out_defs, &mut replies, &mut event, &mut failure] {
                rename_refs(v, &renamed);
            }
            for (k, v) in out_defs.as_object().cloned().unwrap_or_default() {
                let name = if renamed.contains(&k) { format!("{k}Out") } else { k };
                defs.insert(name, v);
            }
            let mut defs = Value::Object(defs);
            for v in [&mut defs, &mut requests, &mut replies, &mut event, &mut failure] {
                split_refs(v);
            }
            let (requests, replies) = (requests.as_object().cloned().unwrap_or_default(), replies.as_object().cloned().unwrap_or_default());
            let all = |m: &serde_json::Map<String, Value>| json!({
                "type": "object",
                "properties": m,
                "required": m.keys().collect::<Vec<_>>(),
                "additionalProperties": false,
            });
            json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": "Protocol",
                "description": format!("loralab engine protocol v{PROTOCOL}"),
                "type": "object",
                "properties": {
                    "requests": all(&requests),
                    "replies": all(&replies),
                    "event": event,
                    "failure": failure,
                },
                "required": ["requests", "replies", "event", "failure"],
                "additionalProperties": false,
                "$defs": defs,
            })
        }
    };
}

protocol! {
    "load" => Load(Load) -> Loaded, false;
    "unload" => Unload(EngineRef) -> Unloaded, true;
    "train" => Train(Train) -> train::RunSummary, false;
    "eval_loss" => EvalLoss(EvalLossParams) -> evaluate::EvalLoss, false;
    "generate" => Generate(Generate) -> Vec<infer::Generation>, false;
    "loglik" => Loglik(LoglikParams) -> Vec<infer::Loglik>, false;
    "count_tokens" => CountTokens(CountTokens) -> usize, true;
    "token_counts" => TokenCounts(TokenCounts) -> Vec<usize>, true;
    "analyze" => Analyze(Analyze) -> analyze::Analysis, false;
    "merge" => Merge(Merge) -> checkpoint::Merged, false;
    "export" => Export(Export) -> export::Exported, false;
    "random_baseline" => RandomBaseline(RandomBaselineParams) -> spectrum::RandomBaseline, false;
    "resolve_config" => ResolveConfig(ResolveConfig) -> RunConfig, true;
    "config_schema" => ConfigSchema(NoFields) -> Value, true;
    "protocol_schema" => ProtocolSchema(NoFields) -> Value, true;
    "run_directory" => RunDirectory(RunDir) -> rundir::RunDirectory, true;
    "mark_interrupted" => MarkInterrupted(MarkInterrupted) -> Marked, true;
    "pass_at_k" => PassAtK(PassAtK) -> Num, true;
    "pareto_frontier" => ParetoFrontier(ParetoFrontier) -> Vec<usize>, true;
    "rank_at" => RankAt(RankAt) -> Option<usize>, true;
    "explained_variance" => ExplainedVariance(ExplainedVariance) -> Vec<Num>, true;
    "effective_rank" => EffectiveRank(Sigma) -> Num, true;
    "stable_rank" => StableRank(Sigma) -> Num, true;
    "singular_values" => SingularValues(SingularValues) -> Vec<Num>, true;
    "device_probe" => DeviceProbe(DeviceProbe) -> Probed, false;
    "cancel" => Cancel(Cancel) -> Cancelled, true;
    "shutdown" => Shutdown(NoFields) -> ShutDown, false;
}

// ------------------------------------------------------------------ the wire

/// A parsed request line: its id (echoed back) and the request, or why it is refused.
pub fn parse_line(line: &str) -> (Value, Result<Request, Failure>) {
    let mut v: serde_json::Map<String, Value> = match serde_json::from_str(line) {
        Ok(Value::Object(m)) => m,
        _ => {
            let f = Failure::protocol(format!("not a JSON object: {line:.200} (hint: one request per line)"));
            return (Value::Null, Err(f));
        }
    };
    let id = v.remove("id").unwrap_or(Value::Null);
    if !(id.is_string() || id.is_u64()) {
        let f =
            Failure::protocol(format!("request without an id (hint: {{\"v\": {PROTOCOL}, \"id\": 1, \"op\": ...}})"));
        return (id, Err(f));
    }
    let version = v.remove("v").unwrap_or(Value::Null);
    if version.as_u64() != Some(PROTOCOL) {
        let f = Failure::protocol(format!(
            "protocol version {version} is not spoken here (hint: this engine speaks v{PROTOCOL}; rebuild it with the Bun packages)"
        ));
        return (id, Err(f));
    }
    let op = match v.remove("op") {
        Some(Value::String(op)) => op,
        _ => return (id, Err(Failure::protocol(format!("request without an op (hint: one of {})", OPS.join(", "))))),
    };
    let req = Request::parse(&op, Value::Object(v));
    (id, req)
}

/// Why a request cannot run in a process other requests share (the addon): `shutdown` would
/// cancel and unload everyone's work there. The sidecar is a process of its own.
pub fn refused_in_process(req: &Request) -> Option<Failure> {
    matches!(req, Request::Shutdown(_)).then(|| {
        Failure::protocol("shutdown ends a worker process; in process, unload what you loaded (hint: Engine.close())")
    })
}

/// The id of a request line, read without building the rest (for a transport that must
/// register the request before it parses it off the calling thread).
pub fn line_id(line: &str) -> Value {
    #[derive(Deserialize)]
    struct IdOnly {
        #[serde(default)]
        id: Value,
    }
    serde_json::from_str::<IdOnly>(line).map(|r| r.id).unwrap_or(Value::Null)
}

/// A progress line.
pub fn event_line(id: &Value, ev: &Event) -> String {
    json!({"v": PROTOCOL, "id": id, "event": "progress", "data": ev}).to_string()
}

/// The final line of a request: its reply or its failure.
pub fn reply_line(id: &Value, reply: &Result<Value, Failure>) -> String {
    match reply {
        Ok(data) => json!({"v": PROTOCOL, "id": id, "event": "result", "data": data}),
        Err(f) => json!({"v": PROTOCOL, "id": id, "event": "error", "error": f}),
    }
    .to_string()
}

// ------------------------------------------------------------------ the session

/// What a transport keeps between requests: loaded models by handle and the cancel flags of
/// running requests. Shared by every thread of the transport.
#[derive(Default)]
pub struct Session {
    engines: Mutex<HashMap<String, Arc<infer::Engine>>>,
    next_engine: AtomicUsize,
    running: Mutex<HashMap<String, Arc<AtomicBool>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn reply<T: Serialize>(v: T) -> Result<Value, Error> {
    Ok(serde_json::to_value(v)?)
}

fn number(x: f64) -> Result<Value, Error> {
    Ok(nonfinite::write(x))
}

fn numbers(xs: Vec<f64>) -> Result<Value, Error> {
    Ok(Value::Array(xs.into_iter().map(nonfinite::write).collect()))
}

fn maths<T>(r: Result<T, String>) -> Result<T, Error> {
    r.map_err(|e| Error::config("(request)", e))
}

impl Session {
    pub fn new() -> Self {
        crate::base::alloc::keep_freed_pages();
        Self::default()
    }

    /// Make a request cancellable from the moment it is accepted, before it runs: a
    /// transport calls this as it takes the request (the sidecar as it queues it, the addon on
    /// the JS thread), so a cancel that arrives before the work starts is not lost. `dispatch`
    /// uses the same flag.
    pub fn register(&self, id: &Value) -> Arc<AtomicBool> {
        lock(&self.running).entry(id.to_string()).or_default().clone()
    }

    /// Ask a running (or accepted) request to stop (a train: after its current step, with a checkpoint).
    pub fn cancel(&self, target: &Value) -> bool {
        let flag = lock(&self.running).get(&target.to_string()).cloned();
        flag.inspect(|f| f.store(true, Ordering::Relaxed)).is_some()
    }

    /// Stop every running request (a transport shutting down).
    pub fn cancel_all(&self) {
        for f in lock(&self.running).values() {
            f.store(true, Ordering::Relaxed);
        }
    }

    /// Run one request: the one dispatch, under the one panic guard, errors through the one
    /// classifier. `emit` gets its progress events.
    pub fn dispatch(&self, id: &Value, req: Request, emit: &(dyn Fn(&Event) + Sync)) -> Result<Value, Failure> {
        let config = match &req {
            Request::Train(t) => Some(t.config.clone()),
            _ => None,
        };
        let flag = self.register(id);
        let r = catch_unwind(AssertUnwindSafe(|| self.run(req, &flag, emit)));
        lock(&self.running).remove(&id.to_string());
        match r {
            Ok(r) => r.map_err(|e| classify(&e, config.as_ref())),
            Err(p) => {
                let msg = panic_message(p.as_ref());
                if is_out_of_memory(&msg) {
                    return Err(classify(&Error::Candle(candle_core::Error::Msg(msg)), config.as_ref()));
                }
                let message =
                    format!("internal error: {msg} (hint: this is a loralab bug; please report it with the request)");
                Err(Failure::new(FailureCode::Internal, message))
            }
        }
    }

    /// Parse and dispatch one request line for a transport inside a shared process (the
    /// addon: `shutdown` refused); returns the reply line.
    pub fn handle_line(&self, line: &str, emit_line: &(dyn Fn(String) + Sync)) -> String {
        let (id, req) = parse_line(line);
        let req = req.and_then(|r| refused_in_process(&r).map_or(Ok(r), Err));
        let reply = match req {
            Ok(r) => self.dispatch(&id, r, &|ev| emit_line(event_line(&id, ev))),
            Err(f) => {
                lock(&self.running).remove(&id.to_string()); // registered as it was accepted
                Err(f)
            }
        };
        reply_line(&id, &reply)
    }

    fn engine(&self, handle: &str) -> Result<Arc<infer::Engine>, Error> {
        let engines = lock(&self.engines);
        engines.get(handle).cloned().ok_or_else(|| {
            let loaded: Vec<&String> = engines.keys().collect();
            Error::config("engine", format!("no engine `{handle}` (hint: load one first; loaded: {loaded:?})"))
        })
    }

    fn run(&self, req: Request, cancel: &AtomicBool, emit: &(dyn Fn(&Event) + Sync)) -> Result<Value, Error> {
        match req {
            Request::Load(r) => {
                let engine = infer::Engine::load(&r)?;
                let model_config = serde_json::to_value(&engine.model.cfg)?;
                let handle = format!("engine-{}", self.next_engine.fetch_add(1, Ordering::Relaxed) + 1);
                lock(&self.engines).insert(handle.clone(), Arc::new(engine));
                reply(Loaded { engine: handle, model_config })
            }
            Request::Unload(r) => reply(Unloaded { unloaded: lock(&self.engines).remove(&r.engine).is_some() }),
            Request::Train(t) => {
                let cfg = config::config_from_value(t.config)?;
                let mut sink = |ev: &train::Event| emit(&Event::Train(ev.clone()));
                reply(train::run(cfg, &mut sink, cancel)?)
            }
            Request::EvalLoss(r) => reply(evaluate::eval_loss(&r)?),
            Request::Generate(g) => reply(self.engine(&g.engine)?.generate(&g.prompts, &g.options)?),
            Request::Loglik(l) => reply(self.engine(&l.engine)?.loglikelihood(&l.requests, l.batch_size.max(1))?),
            Request::CountTokens(c) => reply(self.engine(&c.engine)?.count_tokens(&c.text)?),
            Request::Analyze(a) => {
                let progress = |done: usize, total: usize, name: &str| {
                    emit(&Event::Analyze(AnalyzeEvent::Matrix { done, total, matrix: name.to_string() }))
                };
                reply(analyze::analyze(&a, &progress)?)
            }
            Request::Merge(m) => {
                let (base, adapter, out) = (Path::new(&m.base), Path::new(&m.adapter), Path::new(&m.out));
                reply(checkpoint::merge_with(base, adapter, out, &m.options)?)
            }
            Request::TokenCounts(t) => reply(crate::data::token_counts(Path::new(&t.tokenizer), &t.texts)?),
            Request::Export(x) => reply(export::export(Path::new(&x.src), Path::new(&x.out), &x.options)?),
            Request::RandomBaseline(b) => {
                if b.n < 2 || b.cs.is_empty() || b.cs.iter().any(|c| !c.is_finite()) {
                    let msg = format!("need n ≥ 2 and finite scales c (n = {}, c = {:?})", b.n, b.cs);
                    return Err(Error::config("baseline", msg));
                }
                reply(spectrum::random_baseline(b.n, &b.cs, b.seed, 0)?)
            }
            Request::ResolveConfig(r) => reply(config::config_from_value(r.config)?.resolve()?),
            Request::ConfigSchema(_) => Ok(config::config_schema()),
            Request::ProtocolSchema(_) => Ok(protocol_schema()),
            Request::RunDirectory(r) => reply(rundir::describe(Path::new(&r.run_dir))),
            Request::MarkInterrupted(m) => {
                if !matches!(m.status, rundir::RunStatus::Interrupted | rundir::RunStatus::Cancelled) {
                    return Err(Error::config("status", "must be interrupted or cancelled"));
                }
                reply(Marked { marked: rundir::mark_interrupted(Path::new(&m.run_dir), m.status, &m.error)? })
            }
            Request::DeviceProbe(d) => reply(Probed { sum: crate::base::device::probe(&d.device)?, device: d.device }),
            Request::PassAtK(p) => number(maths(loralab_maths::pass_at_k(p.n, p.c, p.k))?),
            Request::ParetoFrontier(p) => {
                if p.x.len() != p.y.len() {
                    return Err(Error::config("y", format!("{} x values for {} y values", p.x.len(), p.y.len())));
                }
                reply(loralab_maths::pareto_frontier(&p.x, &p.y))
            }
            Request::RankAt(r) => {
                let total = r.total_sq.unwrap_or_else(|| loralab_maths::total_sq(&r.sigma));
                reply(loralab_maths::rank_at(&r.sigma, total, r.threshold))
            }
            Request::ExplainedVariance(r) => {
                let total = r.total_sq.unwrap_or_else(|| loralab_maths::total_sq(&r.sigma));
                numbers(loralab_maths::explained_variance(&r.sigma, total))
            }
            Request::EffectiveRank(s) => number(loralab_maths::effective_rank(&s.sigma)),
            Request::StableRank(s) => number(loralab_maths::stable_rank(&s.sigma)),
            Request::SingularValues(s) => numbers(maths(loralab_maths::singular_values(&s.a, s.m, s.n))?),
            Request::Cancel(c) => reply(Cancelled { cancelled: self.cancel(&c.target) }),
            Request::Shutdown(_) => {
                self.cancel_all();
                lock(&self.engines).clear();
                reply(ShutDown { shutdown: true })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_is_its_own_code_and_names_the_config() {
        let cfg = json!({"method": {"kind": "full"}, "train": {"micro_batch": 4, "device": "cuda"}, "data": {"seq_len": 2048}});
        let e =
            Error::Candle(candle_core::Error::Msg("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into()));
        let f = classify(&e, Some(&cfg));
        assert_eq!(f.code, FailureCode::Oom);
        assert!(
            f.message.contains("train.micro_batch = 4") && f.message.contains("data.seq_len = 2048"),
            "{}",
            f.message
        );
        assert!(f.hint.as_deref().is_some_and(|h| h.starts_with("lower train.micro_batch")), "{:?}", f.hint);
        assert_eq!(f.config.as_ref(), Some(&cfg));
        let other = classify(&Error::config("train.steps", "must be ≥ 1 (hint: 100)"), Some(&cfg));
        assert_eq!(
            (other.code, other.field.as_deref(), other.hint.as_deref()),
            (FailureCode::Config, Some("train.steps"), Some("100"))
        );
    }

    #[test]
    fn lines_are_refused_with_the_reason() {
        let s = Session::default();
        let none = |_: String| {};
        let refused = |line: &str| -> Failure {
            let out: Value = serde_json::from_str(&s.handle_line(line, &none)).unwrap_or_default();
            serde_json::from_value(out["error"].clone()).unwrap_or_else(|_| panic!("no failure for {line}: {out}"))
        };
        assert!(refused("[1]").message.starts_with("not a JSON object"));
        assert!(refused(r#"{"v": 2, "op": "unload"}"#).message.starts_with("request without an id"));
        assert!(refused(r#"{"v": 1, "id": 1, "op": "unload"}"#).message.contains("protocol version 1"));
        assert!(refused(r#"{"v": 2, "id": 1, "op": "fly"}"#).message.contains("unknown op `fly`"));
        let f =
            refused(r#"{"v": 2, "id": 1, "op": "generate", "engine": "e", "prompts": [], "options": {"top_p": "x"}}"#);
        assert_eq!((f.code, f.field.as_deref()), (FailureCode::Config, Some("options.top_p")));
        let f = refused(r#"{"v": 2, "id": 1, "op": "count_tokens", "engine": "engine-9", "text": "a"}"#);
        assert_eq!((f.code, f.field.as_deref()), (FailureCode::Config, Some("engine")));
        let ok = s.handle_line(r#"{"v": 2, "id": "p", "op": "pass_at_k", "n": 4, "c": 2, "k": 1}"#, &none);
        assert_eq!(ok, r#"{"data":0.5,"event":"result","id":"p","v":2}"#); // 1 − C(2,1)/C(4,1)
    }

    #[test]
    fn the_schema_names_every_op() {
        let s = protocol_schema();
        for op in OPS {
            assert!(s["properties"]["requests"]["properties"].get(*op).is_some(), "request {op}");
            assert!(s["properties"]["replies"]["properties"].get(*op).is_some(), "reply {op}");
        }
        // a config is read with its defaults (fields optional) and written whole
        let defs = &s["$defs"];
        assert_eq!(s["properties"]["replies"]["properties"]["resolve_config"]["$ref"], "#/$defs/RunConfigOut");
        assert_eq!(defs["Train"]["properties"]["config"]["$ref"], "#/$defs/RunConfig");
        let required = |d: &str| defs[d]["required"].as_array().map(|a| a.len()).unwrap_or(0);
        assert!(
            required("RunConfigOut") > required("RunConfig"),
            "{} vs {}",
            required("RunConfigOut"),
            required("RunConfig")
        );
        // a written type that refers to a renamed one is renamed too, so no read type points at a written one
        for (k, v) in defs.as_object().into_iter().flatten().filter(|(k, _)| !k.ends_with("Out")) {
            assert!(!v.to_string().contains("Out\""), "{k} (read) refers to a written shape: {v}");
        }
    }
}
