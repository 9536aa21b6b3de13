//! The run config: defined once, here. Serde gives the file shape (every field has a
//! default, unknown keys are refused), `resolve()` settles every derived value and
//! validates before any work starts, and schemars turns the doc comments below into
//! the JSON Schema that `loralab train --help` and the TypeScript types are made from.
use crate::base::error::{Error, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Human-readable run name; the run id is `<name>-<time>` unless `run_id` is set.
    pub name: String,
    /// Folder that holds one directory per run (the run-directory contract, docs/run-directory.md).
    pub out_dir: String,
    /// Fixed run id (directory name under out_dir). Empty: `<name>-<UTC time>` so runs never collide.
    pub run_id: String,
    /// Seed for initialisation, data order and dropout: same seed and config, same losses.
    pub seed: u64,
    pub model: ModelConfig,
    pub data: DataConfig,
    pub method: MethodConfig,
    pub optim: OptimConfig,
    pub schedule: ScheduleConfig,
    pub train: TrainConfig,
    /// Experiment trackers the run also logs to, through their own clients on the Bun side: `tensorboard` (event files), `mlflow` (a tracking server's REST API), `wandb` (the wandb client, offline unless WANDB_MODE says otherwise). Params at the start, every logged step's metrics and validation, the output and run files as artifacts at the end. A tracker that fails warns once and the run goes on.
    pub track: Vec<TrackerName>,
    pub tracking: TrackingConfig,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TrackerName {
    Tensorboard,
    Mlflow,
    Wandb,
}

/// Where the trackers in `track` log.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TrackingConfig {
    /// MLflow tracking server, http(s)://host:port. Empty: $MLFLOW_TRACKING_URI.
    pub mlflow_uri: String,
    /// The MLflow experiment and the W&B project the run goes to. Empty: `loralab`.
    pub experiment: String,
    /// TensorBoard's log directory (one subdirectory per run). Empty: the run directory's `tensorboard/`.
    pub tensorboard_dir: String,
    /// Where wandb keeps the run (offline: synced later with `wandb sync`). Empty: the run directory.
    pub wandb_dir: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Hugging Face model directory (config.json + model.safetensors + tokenizer.json), or a llama.cpp .gguf file (dequantized to f32). Through the library and CLI also a Hub id, `org/name[@revision]` or `hf://org/name[@revision]/FILE.gguf`, fetched into the Hugging Face cache ($HF_HUB_CACHE) first. Empty: a randomly initialised model from `config`.
    pub path: String,
    /// The Hub repo and commit `path` was resolved from, `org/name@sha` (provenance; set by the library when `path` was given as a Hub id, which it resolves into the Hugging Face cache).
    pub source: String,
    /// Hugging Face config.json used for random initialisation when `path` is empty (small models made here; real ones come pretrained).
    pub config: String,
    /// tokenizer.json. Empty: `<path>/tokenizer.json`, or the GGUF file's own tokenizer metadata.
    pub tokenizer: String,
    /// Compute dtype: f32 (CPU training), f64 (gradient checks), or bf16: mixed precision, the GPU's dtype: frozen
    /// weights and activations in bf16, trained weights (f32 masters), optimizer state and the loss in f32. Trained weights are always saved in f32 or wider.
    pub dtype: DTypeName,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DTypeName {
    F32,
    F64,
    Bf16,
}

impl DTypeName {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            DTypeName::F32 => candle_core::DType::F32,
            DTypeName::F64 => candle_core::DType::F64,
            DTypeName::Bf16 => candle_core::DType::BF16,
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// Continued pretraining: documents joined by EOS and cut into seq_len blocks; loss on every token.
    Cpt,
    /// Instruction fine-tuning: prompt + response per example; loss on response tokens only.
    Ift,
    /// Conversations: a list of {role, content} per record; the model's chat template renders every turn but the last as the prompt, the last (the assistant's) is the response.
    Chat,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// cpt (raw text, packed), ift (prompt/response pairs) or chat (conversations, with the model's chat template).
    pub format: DataFormat,
    /// Training records. The engine reads .jsonl (one object per line) and .txt (one document, cpt); through the library and CLI also .json arrays, .csv, .parquet, .gz of the text formats, Hugging Face dataset directories, and `hf://datasets/org/name[@revision]/path` (fetched into the Hugging Face cache first).
    pub train: String,
    /// A known dataset layout (read by the library): starcoder-python (content), openwebmath (text), magicoder-evol-instruct (instruction, response), metamathqa (query, response). Empty: format and the *_field options below.
    pub recipe: String,
    /// The original dataset when `train` is the library's normalised copy of it (provenance; set by the library).
    pub source: String,
    /// CPT: the record field holding the document (StarCoder uses `content`, OpenWebMath `text`).
    pub text_field: String,
    /// IFT: the record field holding the prompt (Magicoder `instruction`, MetaMathQA `query`).
    pub prompt_field: String,
    /// IFT: the record field holding the response.
    pub response_field: String,
    /// chat: the record field holding the conversation (a list of {role, content}).
    pub messages_field: String,
    /// IFT: how the prompt is shown to the model when it has no chat template (or chat_template is false); `{prompt}` is replaced. The response follows it directly.
    pub template: String,
    /// IFT: format each prompt as a user turn with the model's own chat template (tokenizer_config.json or GGUF) when it ships one, as the model was instruction-tuned.
    pub chat_template: bool,
    /// Tokens per training sequence (the study: 4096 code, 1024 math IFT; small here so CPU runs finish).
    pub seq_len: usize,
    /// Token shards are written here once per (dataset, tokenizer, template, seq_len) and reused by every run.
    pub cache_dir: String,
    /// Use only the first N records (0 = all): quick experiments on a slice of a large set.
    pub max_records: usize,
    /// A token budget (0 = all): records are used until their tokens (text, or prompt + response, each with its EOS) reach N. For a recipe (`train = "recipe:NAME"`) the library streams the dataset shard by shard from the Hub and stops there, so only the shards the budget needs are downloaded.
    pub max_tokens: u64,
    /// Held-out records, in the same format and fields as `train`, scored every `train.eval_every` steps (the masked loss, no gradient) as `val_loss` in metrics.jsonl. Empty: no validation.
    pub validation: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MethodKind {
    /// Full fine-tuning: every weight trains.
    Full,
    /// LoRA: base weights frozen, low-rank adapters (A, B) on the target modules train.
    Lora,
}

/// Target modules: `attention` (q,k,v,o), `mlp` (gate,up,down), `all`, or an explicit list of module names.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum Targets {
    Preset(String),
    List(Vec<String>),
}

pub const ATTENTION_MODULES: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];
pub const MLP_MODULES: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MethodConfig {
    /// full or lora. The method only decides which weights train; the loop is the same.
    pub kind: MethodKind,
    /// LoRA rank r (the study: 16, 64, 256).
    pub rank: usize,
    /// LoRA alpha; scale = alpha/r. Empty: 2·rank (the study found alpha = 2r best at every LR).
    pub alpha: Option<f64>,
    /// Dropout on the adapter's input (the study: 0.05).
    pub dropout: f64,
    /// LoRA: the adapted modules: attention, mlp, all (the study recommends all), or a list such as ["q_proj","v_proj"]. Full FT: "all" trains every weight; anything else trains only those modules (the hybrid method).
    pub targets: Targets,
    /// rsLoRA: scale alpha/√r instead of alpha/r, so high ranks are not under-scaled.
    pub rslora: bool,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerName {
    /// Decoupled LionW, as the study trained (its weight decay is not multiplied by the LR).
    Lionw,
    /// AdamW (torch semantics); the study found it worse than LionW for both methods.
    Adamw,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// lionw (the study's) or adamw.
    pub name: OptimizerName,
    /// Peak learning rate. Empty: 1e-5 for full, 1e-4 for lora (the study: LoRA's best LR is about 10× full FT's).
    pub lr: Option<f64>,
    /// (beta1, beta2); the study used (0.9, 0.95).
    pub betas: [f64; 2],
    /// AdamW epsilon.
    pub eps: f64,
    /// Weight decay. LionW: p *= 1 - (lr_t/lr_0)·wd each step (decoupled, as in the study); AdamW: p *= 1 - lr_t·wd.
    pub weight_decay: f64,
    /// Global gradient-norm clipping threshold (the study: 1). 0 disables.
    pub grad_clip: f64,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// lr stays at its peak after warmup.
    Constant,
    /// Linear warmup, then cosine decay to final_frac·lr (the study's IFT schedule: 10% warmup, to 1%).
    Cosine,
    /// Linear warmup, then lr·√(warmup/step), with a linear cooldown to 0 over the last cooldown_frac (the study's CPT "trapezoidal" schedule).
    InverseSqrt,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// constant, cosine or inverse_sqrt.
    pub kind: ScheduleKind,
    /// Warmup length as a fraction of train.steps (the study: 0.1).
    pub warmup_frac: f64,
    /// Warmup length in steps; overrides warmup_frac when > 0 (CPT branches resumed from one
    /// long run keep its warmup whatever their own length).
    pub warmup_steps: usize,
    /// Cosine: the lr at the end, as a fraction of the peak (the study: 0.01).
    pub final_frac: f64,
    /// inverse_sqrt: the final linear cooldown, as a fraction of train.steps (the study: 0.2).
    pub cooldown_frac: f64,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Optimizer steps. 0: derived from `tokens`, else from `epochs`.
    pub steps: usize,
    /// Train on this many tokens (rounded up to whole steps; 0 = unused). The study's CPT budgets are tokens (0.25B–20B).
    pub tokens: u64,
    /// Passes over the data when `steps` and `tokens` are 0 (the study's IFT budgets are 1–16 epochs).
    pub epochs: f64,
    /// Sequences per forward/backward pass (bounded by memory).
    pub micro_batch: usize,
    /// Micro-batches per optimizer step; global batch = micro_batch·grad_accum (the study: 192 sequences).
    pub grad_accum: usize,
    /// Dropout on attention probabilities (a regularizer baseline of the study: 0.05, 0.1). 0 = off.
    pub attention_dropout: f64,
    /// Write a checkpoint every N optimizer steps (0 = only at the end and at checkpoint_at_tokens).
    pub checkpoint_every: usize,
    /// Also write a checkpoint when the trained-token count first reaches each of these (the study's CPT budgets).
    pub checkpoint_at_tokens: Vec<u64>,
    /// Append a metrics line every N steps.
    pub log_every: usize,
    /// Resume from this checkpoint directory (weights, optimizer state, data position, RNG). The schedule is this config's, so a run can branch off a long one with a new cooldown. `latest`: the run's (run_id's) newest checkpoint, or a fresh start when it has none, so one command serves every attempt of a preemptible job.
    pub resume_from: String,
    /// cpu (the in-process engine), or cuda / cuda:N: the run goes through the sidecar process (docs/sidecar-protocol.md).
    pub device: String,
    /// Keep only each block's input in the forward pass and recompute the block in the backward pass: activation memory of one block instead of all, for about one more forward pass of compute (long sequences).
    pub gradient_checkpointing: bool,
    /// Score `data.validation` every N steps and at the last step (0 = never).
    pub eval_every: usize,
    /// Stop once `val_loss` has not improved for this many evaluations in a row (0 = never); the run completes there, with its output and the best checkpoint named.
    pub early_stop_patience: usize,
    /// Keep only the N newest checkpoints (0 = all), besides the best one (`keep_best`) and those at `checkpoint_at_tokens`.
    pub keep_checkpoints: usize,
    /// `val_loss`: write a checkpoint at each evaluation that improves it, and never delete the best one. A score of `eval_tasks` (`eval/forgetting`, `eval/learning`, `eval/<task>/<metric>`; higher is better): the library keeps the best-scored checkpoint as `best/` in the run directory. Empty: off.
    pub keep_best: String,
    /// Benchmarks scored on a checkpoint written every `eval_every` steps, while the run trains (by the loralab library and CLI, which run the evaluation): forgetting tasks (hellaswag, winogrande, arc_challenge) and the learning task (gsm8k, humaneval), each on its first `eval_limit` documents; the base model first. Results go to the run directory's `evals.jsonl` and the trackers.
    pub eval_tasks: Vec<String>,
    /// Documents per task for `eval_tasks` (lm-eval's --limit).
    pub eval_limit: usize,
    /// Task → data file or dataset directory for `eval_tasks`. A task not named: its benchmark in the cache (`loralab fetch`).
    pub eval_data: std::collections::BTreeMap<String, String>,
    /// Stop once the forgetting score (the mean of the forgetting tasks in `eval_tasks`) falls more than this many points (percentage points, 0–100) below the base model's. 0: never.
    pub forgetting_budget: f64,
}

// --------------------------------------------------------------------- defaults

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            name: "run".into(),
            out_dir: "runs".into(),
            run_id: String::new(),
            seed: 0,
            model: ModelConfig::default(),
            data: DataConfig::default(),
            method: MethodConfig::default(),
            optim: OptimConfig::default(),
            schedule: ScheduleConfig::default(),
            train: TrainConfig::default(),
            track: Vec::new(),
            tracking: TrackingConfig::default(),
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            path: String::new(),
            source: String::new(),
            config: String::new(),
            tokenizer: String::new(),
            dtype: DTypeName::F32,
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            format: DataFormat::Cpt,
            train: String::new(),
            recipe: String::new(),
            source: String::new(),
            text_field: "text".into(),
            prompt_field: "prompt".into(),
            response_field: "response".into(),
            messages_field: "messages".into(),
            template: "{prompt}\n".into(),
            chat_template: true,
            seq_len: 256,
            cache_dir: ".cache/loralab/shards".into(),
            max_records: 0,
            max_tokens: 0,
            validation: String::new(),
        }
    }
}

impl Default for MethodConfig {
    fn default() -> Self {
        Self {
            kind: MethodKind::Full,
            rank: 16,
            alpha: None,
            dropout: 0.05,
            targets: Targets::Preset("all".into()),
            rslora: false,
        }
    }
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self { name: OptimizerName::Lionw, lr: None, betas: [0.9, 0.95], eps: 1e-8, weight_decay: 0.0, grad_clip: 1.0 }
    }
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self { kind: ScheduleKind::Cosine, warmup_frac: 0.1, warmup_steps: 0, final_frac: 0.01, cooldown_frac: 0.2 }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 0,
            tokens: 0,
            epochs: 1.0,
            micro_batch: 8,
            grad_accum: 1,
            attention_dropout: 0.0,
            checkpoint_every: 0,
            checkpoint_at_tokens: vec![],
            log_every: 1,
            resume_from: String::new(),
            device: "cpu".into(),
            gradient_checkpointing: false,
            eval_every: 0,
            early_stop_patience: 0,
            keep_checkpoints: 0,
            keep_best: String::new(),
            eval_tasks: Vec::new(),
            eval_limit: 50,
            eval_data: Default::default(),
            forgetting_budget: 0.0,
        }
    }
}

// --------------------------------------------------------------------- parsing

/// Parse a config from JSON text, naming the field path of any error.
pub fn parse_config(json: &str) -> Result<RunConfig> {
    config_from(&mut serde_json::Deserializer::from_str(json))
}

/// The same from a JSON value (a protocol request's `config`), without printing it to text first.
pub fn config_from_value(v: serde_json::Value) -> Result<RunConfig> {
    config_from(v)
}

fn config_from<'de, D: serde::Deserializer<'de>>(de: D) -> Result<RunConfig> {
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "(top level)".to_string() } else { path };
        let mut inner = e.into_inner().to_string();
        if let Some(i) = inner.find(" at line ") {
            inner.truncate(i); // the position in a JSON text made from TOML or flags means nothing to the user
        }
        let hint = if inner.contains("unknown field") {
            " (hint: check the spelling; `loralab train --help` lists every field)"
        } else if inner.contains("untagged enum Targets") {
            " (hint: targets is \"attention\", \"mlp\", \"all\" or a list of module names)"
        } else {
            ""
        };
        Error::config(field, format!("{inner}{hint}"))
    })
}

/// The JSON Schema of the config (descriptions are the doc comments above).
pub fn config_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(RunConfig)).unwrap_or(serde_json::Value::Null)
}

// --------------------------------------------------------------------- resolve

impl MethodConfig {
    /// The adapted module names, validated.
    pub fn target_modules(&self) -> Result<Vec<String>> {
        let all: Vec<&str> = ATTENTION_MODULES.iter().chain(MLP_MODULES.iter()).copied().collect();
        let names: Vec<String> = match &self.targets {
            Targets::Preset(p) => match p.as_str() {
                "attention" => ATTENTION_MODULES.iter().map(|s| s.to_string()).collect(),
                "mlp" => MLP_MODULES.iter().map(|s| s.to_string()).collect(),
                "all" => all.iter().map(|s| s.to_string()).collect(),
                other if all.contains(&other) => vec![other.to_string()],
                other => {
                    return Err(Error::config(
                        "method.targets",
                        format!(
                            "unknown target `{other}` (hint: use attention, mlp, all, or module names from {all:?})"
                        ),
                    ))
                }
            },
            Targets::List(list) => {
                for n in list {
                    if !all.contains(&n.as_str()) {
                        return Err(Error::config(
                            "method.targets",
                            format!("unknown target module `{n}` (hint: module names are {all:?}; embeddings and lm_head are never adapted)"),
                        ));
                    }
                }
                if list.is_empty() {
                    return Err(Error::config(
                        "method.targets",
                        "empty list (hint: name at least one module, or use \"all\")",
                    ));
                }
                list.clone()
            }
        };
        Ok(names)
    }

    /// The adapter's output scale: alpha/r, or alpha/√r with rsLoRA.
    pub fn scale(&self) -> f64 {
        let alpha = self.alpha.unwrap_or(2.0 * self.rank as f64);
        if self.rslora {
            alpha / (self.rank as f64).sqrt()
        } else {
            alpha / self.rank as f64
        }
    }
}

impl RunConfig {
    /// The learning rate after defaults.
    pub fn lr(&self) -> f64 {
        self.optim.lr.unwrap_or(match self.method.kind {
            MethodKind::Full => 1e-5,
            MethodKind::Lora => 1e-4,
        })
    }

    /// model.path names a llama.cpp GGUF file rather than a Hugging Face directory.
    pub fn model_is_gguf(&self) -> bool {
        crate::base::formats::is_gguf(Path::new(&self.model.path))
    }

    pub fn config_json_path(&self) -> PathBuf {
        if self.model.path.is_empty() {
            PathBuf::from(&self.model.config)
        } else {
            Path::new(&self.model.path).join("config.json")
        }
    }

    pub fn run_dir(&self) -> PathBuf {
        Path::new(&self.out_dir).join(&self.run_id)
    }

    /// Fill every derived value and validate. After this the config is written to the
    /// run directory as-is, and nothing downstream looks for a default again.
    pub fn resolve(mut self) -> Result<RunConfig> {
        // paths: a leading ~/ is the home directory, as in a shell
        for p in [
            &mut self.out_dir,
            &mut self.model.path,
            &mut self.model.config,
            &mut self.model.tokenizer,
            &mut self.data.train,
            &mut self.data.cache_dir,
            &mut self.data.validation,
            &mut self.train.resume_from,
            &mut self.tracking.tensorboard_dir,
            &mut self.tracking.wandb_dir,
        ] {
            *p = expand_home(p);
        }
        // identity
        if self.name.is_empty() || self.name.contains('/') {
            return Err(Error::config("name", "must be a non-empty name without '/' (hint: name = \"code-ift-lora\")"));
        }
        let run_id_was_empty = self.run_id.is_empty();
        if self.run_id.is_empty() {
            self.run_id = format!("{}-{}", self.name, utc_stamp());
        } else if self.run_id.contains('/') {
            return Err(Error::config(
                "run_id",
                "must not contain '/' (hint: it becomes a directory name under out_dir)",
            ));
        }

        // model
        if self.model.path.is_empty() && self.model.config.is_empty() {
            return Err(Error::config("model.path", "no model given (hint: set model.path to a Hugging Face model directory, or model.config to a config.json for a random init)"));
        }
        if !self.model.path.is_empty() {
            if self.model_is_gguf() {
                require_file(Path::new(&self.model.path), "model.path")?;
            } else {
                require_file(&Path::new(&self.model.path).join("config.json"), "model.path")?;
            }
        } else {
            require_file(Path::new(&self.model.config), "model.config")?;
        }
        if self.model.tokenizer.is_empty() {
            if self.model.path.is_empty() {
                return Err(Error::config(
                    "model.tokenizer",
                    "required when model.path is empty (hint: point it at a tokenizer.json)",
                ));
            }
            self.model.tokenizer =
                crate::base::formats::default_tokenizer(Path::new(&self.model.path)).to_string_lossy().into_owned();
        }
        require_file(Path::new(&self.model.tokenizer), "model.tokenizer")?;

        // data
        if self.data.train.is_empty() {
            return Err(Error::config("data.train", "no training data (hint: a .jsonl or .txt file)"));
        }
        if self.data.train.starts_with("recipe:") {
            return Err(Error::config("data.train", "recipe:NAME is streamed from the Hub by the loralab library before the engine (hint: run through `loralab train` or the loralab library)"));
        }
        if !self.data.recipe.is_empty() {
            return Err(Error::config("data.recipe", "recipes are applied by the loralab library before the engine (hint: run through `loralab train` or the @loralab/loralab library)"));
        }
        let ext = Path::new(&self.data.train).extension().and_then(|e| e.to_str()).unwrap_or("");
        if Path::new(&self.data.train).is_dir() || !["jsonl", "txt"].contains(&ext) {
            return Err(Error::config("data.train", format!("{}: the engine reads .jsonl and .txt (hint: other formats go through `loralab train` or the library, which normalise them)", self.data.train)));
        }
        require_file(Path::new(&self.data.train), "data.train")?;
        if self.data.seq_len < 2 {
            return Err(Error::config("data.seq_len", format!("must be at least 2 (got {})", self.data.seq_len)));
        }
        if self.data.format == DataFormat::Ift && !self.data.template.contains("{prompt}") {
            return Err(Error::config(
                "data.template",
                "must contain {prompt} (hint: \"Question: {prompt}\\nAnswer:\")",
            ));
        }

        // method
        if self.method.kind == MethodKind::Lora {
            if self.method.rank == 0 {
                return Err(Error::config("method.rank", "must be ≥ 1 (got 0) (hint: the study uses 16, 64 and 256)"));
            }
            self.method.target_modules()?;
        }
        let alpha = self.method.alpha.unwrap_or(2.0 * self.method.rank as f64);
        if !(alpha.is_finite() && alpha > 0.0) {
            return Err(Error::config("method.alpha", format!("must be > 0 (got {alpha}) (hint: alpha = 2·rank)")));
        }
        self.method.alpha = Some(alpha);
        check_unit("method.dropout", self.method.dropout)?;

        // optimizer and schedule
        let lr = self.lr();
        if !(lr.is_finite() && lr > 0.0) {
            let hint = match self.method.kind {
                MethodKind::Full => "full fine-tuning: the study's best LRs are 1e-5 to 5e-5; sweep in [1e-6, 1e-4]",
                MethodKind::Lora => {
                    "LoRA: the study's best LRs are 1e-4 to 5e-4, about 10× full FT's; sweep in [1e-5, 1e-3]"
                }
            };
            return Err(Error::config("optim.lr", format!("must be > 0 (got {lr}) (hint: {hint})")));
        }
        self.optim.lr = Some(lr);
        for (i, b) in self.optim.betas.iter().enumerate() {
            check_unit(&format!("optim.betas[{i}]"), *b)?;
        }
        if self.optim.eps.is_nan() || self.optim.eps <= 0.0 {
            return Err(Error::config("optim.eps", "must be > 0"));
        }
        if !(self.optim.weight_decay >= 0.0 && self.optim.weight_decay.is_finite()) {
            return Err(Error::config("optim.weight_decay", "must be ≥ 0"));
        }
        if !(self.optim.grad_clip >= 0.0 && self.optim.grad_clip.is_finite()) {
            return Err(Error::config("optim.grad_clip", "must be ≥ 0 (0 disables clipping)"));
        }
        check_unit("schedule.warmup_frac", self.schedule.warmup_frac)?;
        check_unit("schedule.final_frac", self.schedule.final_frac)?;
        check_unit("schedule.cooldown_frac", self.schedule.cooldown_frac)?;

        // training
        if self.train.micro_batch == 0 {
            return Err(Error::config("train.micro_batch", "must be ≥ 1"));
        }
        if self.train.grad_accum == 0 {
            return Err(Error::config("train.grad_accum", "must be ≥ 1"));
        }
        if self.train.steps > 0 && self.train.tokens > 0 {
            return Err(Error::config(
                "train.tokens",
                "both train.steps and train.tokens are set (hint: give one budget)",
            ));
        }
        if self.train.steps == 0
            && self.train.tokens == 0
            && !(self.train.epochs > 0.0 && self.train.epochs.is_finite())
        {
            return Err(Error::config("train.steps", "set train.steps > 0 or train.epochs > 0"));
        }
        if self.train.log_every == 0 {
            return Err(Error::config("train.log_every", "must be ≥ 1"));
        }
        check_unit("train.attention_dropout", self.train.attention_dropout)?;
        if self.train.resume_from == "latest" {
            // the same command resumes wherever the run got to, or starts it (a preemptible job)
            if run_id_was_empty {
                return Err(Error::config(
                    "train.resume_from",
                    "`latest` needs the run to resume: set run_id (hint: --run_id=NAME, the same on every attempt)",
                ));
            }
            // the training run names the checkpoint once it holds the run directory's lock
        } else if !self.train.resume_from.is_empty() {
            require_file(&Path::new(&self.train.resume_from).join("trainer_state.json"), "train.resume_from")?;
        }
        if !self.data.validation.is_empty() {
            require_file(Path::new(&self.data.validation), "data.validation")?;
        }
        const TASKS: [&str; 5] = ["hellaswag", "winogrande", "arc_challenge", "gsm8k", "humaneval"];
        for (i, t) in self.train.eval_tasks.iter().enumerate() {
            if !TASKS.contains(&t.as_str()) {
                return Err(Error::config(
                    "train.eval_tasks",
                    format!("unknown task `{t}` (hint: one of {})", TASKS.join(", ")),
                ));
            }
            if self.train.eval_tasks[..i].contains(t) {
                return Err(Error::config("train.eval_tasks", format!("`{t}` is listed twice")));
            }
        }
        if let Some(t) = self.train.eval_data.keys().find(|t| !self.train.eval_tasks.contains(t)) {
            return Err(Error::config("train.eval_data", format!("`{t}` is not in train.eval_tasks")));
        }
        if !self.train.eval_tasks.is_empty() && self.train.eval_every == 0 {
            return Err(Error::config(
                "train.eval_tasks",
                "scored every train.eval_every steps, which is 0 (hint: train.eval_every = 100)",
            ));
        }
        if !self.train.eval_tasks.is_empty() && self.train.eval_limit == 0 {
            return Err(Error::config("train.eval_limit", "must be at least 1"));
        }
        let b = self.train.forgetting_budget;
        if !(0.0..=100.0).contains(&b) {
            return Err(Error::config("train.forgetting_budget", format!("{b}: percentage points, 0 (off) to 100")));
        }
        if b > 0.0
            && !self.train.eval_tasks.iter().any(|t| ["hellaswag", "winogrande", "arc_challenge"].contains(&t.as_str()))
        {
            return Err(Error::config("train.forgetting_budget", "needs a forgetting task in train.eval_tasks (hint: eval_tasks = [\"hellaswag\", \"winogrande\", \"arc_challenge\"])"));
        }
        for p in self.train.eval_data.values_mut() {
            *p = expand_home(p);
        }
        if self.train.eval_every > 0 && self.data.validation.is_empty() && self.train.eval_tasks.is_empty() {
            return Err(Error::config("train.eval_every", "scores data.validation, and none is given (hint: data.validation = \"held-out.jsonl\", in the train file's format)"));
        }
        let keep_best = self.train.keep_best.as_str();
        let by_score = keep_best.starts_with("eval/");
        for (field, on) in [
            ("train.early_stop_patience", self.train.early_stop_patience > 0),
            ("train.keep_best", !keep_best.is_empty() && !by_score),
        ] {
            if on && (self.train.eval_every == 0 || self.data.validation.is_empty()) {
                return Err(Error::config(
                    field,
                    "needs validation during training (hint: set train.eval_every and data.validation)",
                ));
            }
        }
        if by_score {
            // a score of train.eval_tasks, kept by the library that scores them (higher is better)
            let parts: Vec<&str> = keep_best.split('/').collect();
            let named = match parts.as_slice() {
                ["eval", "forgetting" | "learning"] => true,
                ["eval", task, metric] => self.train.eval_tasks.iter().any(|t| t == task) && !metric.is_empty(),
                _ => false,
            };
            if self.train.eval_tasks.is_empty() || !named {
                return Err(Error::config(
                    "train.keep_best",
                    format!(
                        "`{keep_best}`: a score is kept by `eval/forgetting`, `eval/learning` or `eval/<task>/<metric>` of a task in train.eval_tasks (hint: set train.eval_tasks and train.eval_every)"
                    ),
                ));
            }
        } else if !matches!(keep_best, "" | "val_loss") {
            return Err(Error::config(
                "train.keep_best",
                format!("`{keep_best}`: the metric kept by is `val_loss`, or a score `eval/forgetting`, `eval/learning`, `eval/<task>/<metric>` (or empty: off)"),
            ));
        }
        crate::base::device::parse(&self.train.device)?;
        for (i, t) in self.track.iter().enumerate() {
            if self.track[..i].contains(t) {
                return Err(Error::config("track", format!("{t:?} is listed twice").to_lowercase()));
            }
        }
        let uri = &self.tracking.mlflow_uri;
        if !(uri.is_empty() || uri.starts_with("http://") || uri.starts_with("https://")) {
            return Err(Error::config(
                "tracking.mlflow_uri",
                format!("`{uri}`: an MLflow tracking server's http(s)://host:port (hint: `mlflow server` prints it)"),
            ));
        }
        if self.tracking.experiment.is_empty() {
            self.tracking.experiment = "loralab".into();
        }
        Ok(self)
    }
}

fn expand_home(p: &str) -> String {
    match (p.strip_prefix("~/"), std::env::var("HOME")) {
        (Some(rest), Ok(home)) => format!("{home}/{rest}"),
        _ => p.to_string(),
    }
}

fn check_unit(field: &str, v: f64) -> Result<()> {
    if !((0.0..1.0).contains(&v) || field.ends_with("frac") && v == 1.0) {
        return Err(Error::config(field, format!("must be in [0, 1) (got {v})")));
    }
    Ok(())
}

fn require_file(p: &Path, field: &str) -> Result<()> {
    if !p.is_file() {
        return Err(Error::config(
            field,
            format!(
                "file not found: {} (hint: check the path; relative paths are from the working directory)",
                p.display()
            ),
        ));
    }
    Ok(())
}

/// `YYYYMMDD-HHMMSS-mmm` in UTC, without a date crate.
pub fn utc_stamp() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}-{:03}", rem / 3600, rem % 3600 / 60, rem % 60, now.subsec_millis())
}
