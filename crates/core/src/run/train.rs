//! One run, top to bottom: setup / data / model / loop / checkpoint. Full FT and LoRA
//! go through this same loop; the method only decided which weights are trainable.
//! Called by the napi binding (crates/node), the sidecar and the benches.
use crate::base::error::{Error, Result};
use crate::base::rng::Rng;
use crate::config::{MethodConfig, MethodKind, RunConfig, Targets};
use crate::data::{self, Sampler, Shards};
use crate::io::checkpoint::{self, TrainerState, FORMAT_VERSION};
use crate::io::rundir::{self, RunStatus};
use crate::model::{Llama, LlamaConfig, Trainable};
use crate::nn::linear::ForwardCtx;
use crate::optim::{clip_grad_norm, lr_at, Optimizer};
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// What a run reports while it goes (and what the napi binding forwards to JS).
#[derive(Serialize, Clone, Debug, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[schemars(rename = "TrainEvent")]
pub enum Event {
    /// The prepare step's account of the data (documents, tokens, truncated and dropped examples).
    Prepared(data::PrepareReport),
    Start {
        run_id: String,
        run_dir: String,
        total_steps: usize,
        start_step: usize,
        params: usize,
        trainable_params: usize,
        rows: usize,
    },
    Progress(Progress),
    Checkpoint {
        step: usize,
        tokens: u64,
        path: String,
    },
    /// The held-out loss (data.validation) at a step, and whether it is the best so far.
    Validation {
        step: usize,
        val_loss: f64,
        /// Loss-carrying tokens it is the mean over.
        val_tokens: f64,
        best: bool,
    },
}

#[derive(Serialize, Clone, Debug, schemars::JsonSchema)]
pub struct Progress {
    pub step: usize,
    pub total_steps: usize,
    pub tokens: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
}

#[derive(Serialize, Clone, Debug, schemars::JsonSchema)]
pub struct RunSummary {
    pub run_id: String,
    pub run_dir: String,
    /// completed or cancelled (failures are errors).
    pub status: Outcome,
    pub method: MethodKind,
    pub steps: usize,
    pub total_steps: usize,
    pub tokens: u64,
    /// Passes over the prepared data: samples seen / rows.
    pub epochs: f64,
    /// Loss of this process's first and last step; null when it trained no step (resumed
    /// from the final checkpoint).
    pub first_loss: Option<f64>,
    pub final_loss: Option<f64>,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
    pub params: usize,
    pub trainable_params: usize,
    /// The final model (HF layout) or adapter (PEFT layout) directory; empty when cancelled.
    pub output: String,
    pub last_checkpoint: String,
    /// The checkpoint with the best val_loss (train.keep_best), or "".
    pub best_checkpoint: String,
    /// The step train.early_stop_patience stopped the run at (it completed there), or null.
    pub stopped_early_at: Option<usize>,
}

/// How a run that did not fail ended.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Completed,
    Cancelled,
}

impl From<Outcome> for RunStatus {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Completed => RunStatus::Completed,
            Outcome::Cancelled => RunStatus::Cancelled,
        }
    }
}

/// The run config's method in the model's terms.
impl TryFrom<&MethodConfig> for Trainable {
    type Error = Error;
    fn try_from(m: &MethodConfig) -> Result<Self> {
        Ok(match m.kind {
            MethodKind::Full if m.targets == Targets::Preset("all".into()) => Trainable::All,
            MethodKind::Full => Trainable::Modules(m.target_modules()?),
            MethodKind::Lora => {
                Trainable::Lora { modules: m.target_modules()?, rank: m.rank, scale: m.scale(), dropout: m.dropout }
            }
        })
    }
}

pub trait Sink {
    fn event(&mut self, ev: &Event);
}

impl<F: FnMut(&Event)> Sink for F {
    fn event(&mut self, ev: &Event) {
        self(ev)
    }
}

/// Train one run. Writes the run directory (docs/run-directory.md) and returns its summary.
pub fn run(cfg: RunConfig, sink: &mut dyn Sink, cancel: &AtomicBool) -> Result<RunSummary> {
    let mut cfg = cfg.resolve()?;
    let run_dir = cfg.run_dir();
    let mut resuming = !cfg.train.resume_from.is_empty();
    std::fs::create_dir_all(rundir::checkpoints_dir(&run_dir)).map_err(|e| Error::file(&run_dir, e))?;
    // one process trains a run directory at a time: the lock goes with the process, however it ends
    let lock_path = rundir::lock_file(&run_dir);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::file(&lock_path, e))?;
    // a resume may find the run's previous process still finishing (a worker whose server died
    // stops after its step and checkpoints): it waits for it, up to a minute
    let mut held = lock.try_lock().is_ok();
    for _ in 0..if resuming { 600 } else { 0 } {
        if held {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        held = lock.try_lock().is_ok();
    }
    if !held {
        return Err(Error::config(
            "run_id",
            format!(
                "run directory {} is being trained by another process (hint: wait for it, or pick a new run_id)",
                run_dir.display()
            ),
        ));
    }
    if cfg.train.resume_from == "latest" {
        // read under the lock: a previous attempt finishing its last checkpoint is waited for
        cfg.train.resume_from = last_checkpoint(&run_dir).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        resuming = !cfg.train.resume_from.is_empty();
        if !resuming {
            // nothing to resume: start over in place, as a run that died before its first checkpoint
            if rundir::status(&run_dir) == Some(RunStatus::Completed) {
                return Err(Error::config(
                    "run_id",
                    format!(
                        "run {} is completed and kept no checkpoint to resume (hint: pick a new run_id)",
                        run_dir.display()
                    ),
                ));
            }
        }
    }
    if rundir::run_json(&run_dir).is_file() && !resuming {
        // a run that died before its first checkpoint left nothing to resume: it starts over in
        // place; anything else is kept
        let last = last_checkpoint(&run_dir);
        let completed = rundir::status(&run_dir) == Some(RunStatus::Completed);
        if completed || last.is_some() {
            let hint = match last {
                Some(ck) if !completed => {
                    format!("resume it with --train.resume_from={}, or pick a new run_id", ck.display())
                }
                _ => "pick a new run_id".to_string(),
            };
            return Err(Error::config(
                "run_id",
                format!("run directory {} already exists (hint: {hint})", run_dir.display()),
            ));
        }
    }
    std::fs::write(rundir::config_json(&run_dir), serde_json::to_vec_pretty(&cfg)?)?;
    let started = crate::config::utc_stamp();
    rundir::write_run(&run_dir, &cfg, RunStatus::Running, &started, None)?;
    let result = run_inner(&cfg, &run_dir, sink, cancel);
    let _held = lock; // released when the run ends
    match &result {
        Ok(s) => rundir::write_run(&run_dir, &cfg, s.status.into(), &started, None)?,
        Err(e) => rundir::write_run(&run_dir, &cfg, RunStatus::Failed, &started, Some(&e.to_string()))?,
    }
    result
}

pub use crate::io::rundir::last_checkpoint;

/// Build the model the config names: pretrained from model.path, or a seeded random init.
pub fn build_model(cfg: &RunConfig) -> Result<Llama> {
    let dtype = cfg.model.dtype.dtype();
    let model = if cfg.model.path.is_empty() {
        let hf = LlamaConfig::from_file(Path::new(&cfg.model.config))?;
        check_sizes(cfg, &hf, available_memory())?;
        Llama::random(hf, dtype, &mut Rng::fork(cfg.seed, 0))?
    } else {
        let m = checkpoint::load_base(Path::new(&cfg.model.path), dtype)?;
        check_sizes(cfg, &m.cfg, available_memory())?;
        m
    };
    let mut model = model.to_device(&crate::base::device::open(&cfg.train.device)?)?;
    model.attention_dropout = cfg.train.attention_dropout;
    model.apply_method(&cfg.method, &mut Rng::fork(cfg.seed, 1))?;
    Ok(model)
}

/// Bytes of memory this machine can still give (Linux's MemAvailable); None where unknown.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

const GIB: f64 = (1u64 << 30) as f64;

/// Refuse sizes the model or the machine cannot hold, before any tensor is made: a LoRA rank
/// above min(d_in, d_out) of an adapted module, a sequence longer than the model's positions,
/// and (on the CPU) weights, optimizer state and one micro-batch's activations that would not
/// fit in `available` bytes. The estimate counts what the engine keeps: weights, gradients and
/// moments of what trains, each layer's saved activations (the attention scores are (t, t) per
/// head) and the logits; it errs low, so a refusal is a run that could not have finished.
pub fn check_sizes(cfg: &RunConfig, m: &LlamaConfig, available: Option<u64>) -> Result<()> {
    let targets = match cfg.method.kind {
        MethodKind::Lora => cfg.method.target_modules()?,
        MethodKind::Full => Vec::new(),
    };
    // (module, d_out, d_in) of one layer's adaptable matrices
    let shapes: Vec<(String, usize, usize)> = crate::model::hf_shapes(m)
        .into_iter()
        .filter(|(k, s)| k.starts_with("model.layers.0.") && k.ends_with(".weight") && s.len() == 2)
        .map(|(k, s)| (k.trim_end_matches(".weight").rsplit('.').next().unwrap_or_default().to_string(), s[0], s[1]))
        .collect();
    let mut lora_params = 0usize;
    for (module, d_out, d_in) in shapes.iter().filter(|(n, _, _)| targets.contains(n)) {
        let max = (*d_out).min(*d_in);
        if cfg.method.rank > max {
            return Err(Error::config(
                "method.rank",
                format!("{} exceeds min(d_in, d_out) = {max} of {module} ({d_out}×{d_in}): a rank-{} update of it is full rank already (hint: method.rank ≤ {max} for this model, or leave {module} out of method.targets)", cfg.method.rank, cfg.method.rank),
            ));
        }
        lora_params += cfg.method.rank * (d_out + d_in);
    }
    if m.max_position_embeddings > 0 && cfg.data.seq_len > m.max_position_embeddings {
        return Err(Error::config(
            "data.seq_len",
            format!(
                "{} is longer than the model's max_position_embeddings ({}) (hint: data.seq_len ≤ {})",
                cfg.data.seq_len, m.max_position_embeddings, m.max_position_embeddings
            ),
        ));
    }
    let tokens = cfg.train.micro_batch.checked_mul(cfg.data.seq_len).filter(|&t| t <= 1 << 40).ok_or_else(|| {
        Error::config("train.micro_batch", format!("micro_batch × seq_len = {} × {} is too large (hint: a micro-batch holds at most a few hundred thousand tokens; use train.grad_accum for bigger batches)", cfg.train.micro_batch, cfg.data.seq_len))
    })?;
    let Some(available) = available else { return Ok(()) };
    if crate::base::device::parse(&cfg.train.device)?.is_some() {
        return Ok(()); // the GPU's memory is the sidecar's to judge (an OOM there is classified)
    }
    let e = cfg.model.dtype.dtype().size_in_bytes() as f64;
    let n = m.n_params() as f64;
    let trainable = if cfg.method.kind == MethodKind::Lora { (lora_params * m.num_hidden_layers) as f64 } else { n };
    let moments = match cfg.optim.name {
        crate::config::OptimizerName::Adamw => 2.0,
        crate::config::OptimizerName::Lionw => 1.0,
    };
    let (d, f, nh, t) =
        (m.hidden_size as f64, m.intermediate_size as f64, m.num_attention_heads as f64, cfg.data.seq_len as f64);
    let per_layer_token = 6.0 * d + 3.0 * f + 2.0 * nh * t;
    let layers = m.num_hidden_layers as f64;
    let saved = if cfg.train.gradient_checkpointing { layers * d + per_layer_token } else { layers * per_layer_token };
    let activations = tokens as f64 * (saved + 2.0 * m.vocab_size as f64) * e;
    let need = n * e + trainable * (1.0 + moments) * e + activations;
    if need > available as f64 {
        return Err(Error::config(
            "train.micro_batch",
            format!(
                "this run needs about {:.1} GiB ({:.1} GiB weights and optimizer state, {:.1} GiB activations of micro_batch {} × seq_len {}) but the machine has {:.1} GiB available (hint: lower train.micro_batch and raise train.grad_accum for the same batch, shorten data.seq_len, or set train.gradient_checkpointing = true)",
                need / GIB,
                (need - activations) / GIB,
                activations / GIB,
                cfg.train.micro_batch,
                cfg.data.seq_len,
                available as f64 / GIB
            ),
        ));
    }
    Ok(())
}

/// One global batch: ids (b, t), next-token targets and loss mask per micro-batch.
pub struct MicroBatch {
    pub ids: Tensor,
    pub targets: Vec<u32>,
    pub mask: Vec<f64>,
    pub loss_tokens: f64,
}

pub fn micro_batch(shards: &Shards, rows: &[usize], device: &Device) -> Result<MicroBatch> {
    let rows: Vec<(Vec<u32>, Vec<u8>)> = rows
        .iter()
        .map(|&r| {
            let (ids, m) = shards.row(r);
            (ids, m.to_vec())
        })
        .collect();
    let mut mb = batch_from_rows(&rows)?;
    mb.ids = mb.ids.to_device(device)?;
    Ok(mb)
}

/// Rows of (token ids, loss mask) -> inputs, next-token targets and target mask.
pub fn batch_from_rows(rows: &[(Vec<u32>, Vec<u8>)]) -> Result<MicroBatch> {
    let t = rows.first().map(|r| r.0.len()).unwrap_or(0);
    let n = rows.len() * t;
    let (mut ids, mut targets, mut mask) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for (row, m) in rows {
        // position i predicts token i+1 (weighted by that token's mask); the last position predicts nothing
        targets.extend(row[1..].iter().copied().chain([0]));
        mask.extend(m[1..].iter().map(|&v| v as f64).chain([0.0]));
        ids.extend_from_slice(row);
    }
    let loss_tokens = mask.iter().sum();
    let b = rows.len();
    Ok(MicroBatch { ids: Tensor::from_vec(ids, (b, t), &Device::Cpu)?, targets, mask, loss_tokens })
}

fn run_inner(cfg: &RunConfig, run_dir: &Path, sink: &mut dyn Sink, cancel: &AtomicBool) -> Result<RunSummary> {
    // ------------------------------------------------------------------ setup
    let t0 = Instant::now();
    let tok_path = PathBuf::from(&cfg.model.tokenizer);
    let tokenizer = data::load_tokenizer(&tok_path)?;
    let hf_config_path = cfg.config_json_path();

    // ------------------------------------------------------------------ model
    let model = build_model(cfg)?;
    let base_ref = if cfg.model.path.is_empty() {
        // a random base exists nowhere else: keep it, so adapters and ΔW have their W_base
        let base_dir = rundir::base_dir(run_dir);
        if !base_dir.join("model.safetensors").is_file() {
            // before any step: full FT's weights are still the init; LoRA never changes them
            let full = crate::config::MethodConfig { kind: MethodKind::Full, ..cfg.method.clone() };
            checkpoint::save(&base_dir, &model, &full, &hf_config_path, &tok_path, "", None, None)?;
        }
        base_dir.to_string_lossy().into_owned()
    } else if let Some(repo) = checkpoint::is_gguf(Path::new(&cfg.model.path))
        .then(|| checkpoint::gguf_source_repo(Path::new(&cfg.model.path)))
        .flatten()
    {
        // a GGUF base is nothing PEFT loads: adapters name the Hugging Face repo it was
        // converted from, when its metadata says (llama.cpp's converter writes general.source.*)
        repo
    } else if !cfg.model.source.is_empty() {
        // a Hub model: adapters name its id and commit, which PEFT resolves from the same cache
        cfg.model.source.clone()
    } else {
        cfg.model.path.clone()
    };
    let params = model.trainable();
    let trainable_params: usize = params.iter().map(|(_, v)| v.elem_count()).sum();
    let n_params = model.cfg.n_params();

    // ------------------------------------------------------------------ data
    let n_tok = tokenizer.get_vocab_size(true);
    if n_tok > model.cfg.vocab_size {
        return Err(Error::config(
            "model.tokenizer",
            format!("{} has {n_tok} tokens but the model's vocab_size is {} (hint: use the tokenizer.json that belongs to this model)", cfg.model.tokenizer, model.cfg.vocab_size),
        ));
    }
    let eos = data::eos_id(&tokenizer, model.cfg.eos_id())?;
    let chat = crate::io::chat::ChatTemplate::find(&cfg.model.path)?;
    let shards = data::prepare(&cfg.data, &tokenizer, &tok_path, eos, chat.as_ref())?;
    // held-out rows, prepared as the training rows are (whole: no record or token budget)
    let validation = if cfg.data.validation.is_empty() {
        None
    } else {
        let v = crate::config::DataConfig {
            train: cfg.data.validation.clone(),
            max_records: 0,
            max_tokens: 0,
            ..cfg.data.clone()
        };
        let v = data::prepare(&v, &tokenizer, &tok_path, eos, chat.as_ref())?;
        if v.rows == 0 {
            return Err(Error::config(
                "data.validation",
                format!(
                    "{}: no {}-token row to score (hint: more held-out records, or a shorter data.seq_len)",
                    cfg.data.validation, v.seq_len
                ),
            ));
        }
        Some(v)
    };
    let per_step = cfg.train.micro_batch * cfg.train.grad_accum;
    std::fs::write(rundir::data_json(run_dir), serde_json::to_vec_pretty(&shards.report)?)?;
    sink.event(&Event::Prepared(shards.report.clone()));
    let step_tokens = (per_step * shards.seq_len) as u64;
    let total_steps = if cfg.train.steps > 0 {
        cfg.train.steps
    } else if cfg.train.tokens > 0 {
        cfg.train.tokens.div_ceil(step_tokens) as usize
    } else {
        ((cfg.train.epochs * shards.rows as f64) / per_step as f64).ceil().max(1.0) as usize
    };
    let mut sampler = Sampler::new(cfg.seed, shards.rows);

    // ------------------------------------------------------------------ optimizer, resume
    let lr0 = cfg.lr();
    let mut opt = Optimizer::new(&cfg.optim, lr0, &params)?;
    let mut state = TrainerState {
        format_version: FORMAT_VERSION,
        run_id: cfg.run_id.clone(),
        method: cfg.method.kind,
        step: 0,
        samples: 0,
        tokens: 0,
        rng: Rng::fork(cfg.seed, 2),
        loss: f64::NAN,
        best_val: None,
        evals_since_best: 0,
    };
    if !cfg.train.resume_from.is_empty() {
        let restored = checkpoint::restore(Path::new(&cfg.train.resume_from), &params, &mut opt)?;
        if restored.method != cfg.method.kind {
            return Err(Error::config(
                "train.resume_from",
                format!("checkpoint was written by a {:?} run, this config is {:?}", restored.method, cfg.method.kind),
            ));
        }
        state = TrainerState { run_id: cfg.run_id.clone(), ..restored };
    }
    let start_step = state.step;
    let metrics_path = rundir::metrics_jsonl(run_dir);
    truncate_metrics(&metrics_path, start_step)?;
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| Error::file(&metrics_path, e))?;
    sink.event(&Event::Start {
        run_id: cfg.run_id.clone(),
        run_dir: run_dir.to_string_lossy().into_owned(),
        total_steps,
        start_step,
        params: n_params,
        trainable_params,
        rows: shards.rows,
    });

    let ckpt_dir = |step: usize| rundir::checkpoint_dir(run_dir, step);
    let mut last_checkpoint =
        if cfg.train.resume_from.is_empty() { String::new() } else { cfg.train.resume_from.clone() };
    let save_ckpt = |state: &TrainerState, opt: &Optimizer, model: &Llama| -> Result<String> {
        let dir = ckpt_dir(state.step);
        checkpoint::save(
            &dir,
            model,
            &cfg.method,
            &hf_config_path,
            &tok_path,
            &base_ref,
            Some((opt, &params)),
            Some(state),
        )?;
        Ok(dir.to_string_lossy().into_owned())
    };

    // ------------------------------------------------------------------ loop
    let loop_start = Instant::now();
    let mut first_loss = f64::NAN;
    let mut tokens_this_run = 0u64;
    let mut status = Outcome::Completed;
    let mut stopped_early_at = None;
    while state.step < total_steps {
        if cancel.load(Ordering::Relaxed) {
            status = Outcome::Cancelled;
            break;
        }
        let step_start = Instant::now();
        let lr = lr_at(&cfg.schedule, lr0, state.step, total_steps);

        // one global batch = grad_accum micro-batches; the loss is normalised by the
        // global batch's loss-token count so accumulation equals one big batch
        let rows: Vec<usize> = (0..per_step as u64).map(|i| sampler.row_of(state.samples + i)).collect();
        let batches = rows
            .chunks(cfg.train.micro_batch)
            .map(|r| micro_batch(&shards, r, &model.device))
            .collect::<Result<Vec<_>>>()?;
        let denom: f64 = batches.iter().map(|b| b.loss_tokens).sum::<f64>().max(1.0);
        let mut grads: Vec<Option<Tensor>> = vec![None; params.len()];
        let mut loss_sum = 0.0;
        for mb in &batches {
            let mut ctx = ForwardCtx { train: true, rng: &mut state.rng };
            let (loss, g) = model.loss_and_grads(
                &mb.ids,
                &mb.targets,
                &mb.mask,
                denom,
                &mut ctx,
                &params,
                cfg.train.gradient_checkpointing,
            )?;
            loss_sum += loss;
            for (acc, gi) in grads.iter_mut().zip(g) {
                let gi = gi.ok_or_else(|| candle_core::Error::Msg("a trainable tensor received no gradient: the graph is cut (a loralab bug; please report it with config.json)".into()))?;
                *acc = Some(match acc.take() {
                    None => gi,
                    Some(a) => (a + gi)?,
                });
            }
        }
        if !loss_sum.is_finite() {
            return Err(Error::NonFinite {
                step: state.step + 1,
                value: loss_sum,
                last_checkpoint: if last_checkpoint.is_empty() { "(none yet)".into() } else { last_checkpoint },
            });
        }
        let mut grads: Vec<Tensor> = grads.into_iter().flatten().collect();
        let grad_norm = clip_grad_norm(&mut grads, cfg.optim.grad_clip)?;
        if !grad_norm.is_finite() {
            return Err(Error::NonFinite {
                step: state.step + 1,
                value: grad_norm,
                last_checkpoint: if last_checkpoint.is_empty() { "(none yet)".into() } else { last_checkpoint },
            });
        }
        opt.step(&params, &grads, lr, state.step + 1)?;

        let prev_tokens = state.tokens;
        state.step += 1;
        state.samples += per_step as u64;
        state.tokens += (per_step * shards.seq_len) as u64;
        state.loss = loss_sum;
        tokens_this_run += (per_step * shards.seq_len) as u64;
        if first_loss.is_nan() {
            first_loss = loss_sum;
        }
        let dt = step_start.elapsed().as_secs_f64();
        let p = Progress {
            step: state.step,
            total_steps,
            tokens: state.tokens,
            loss: loss_sum,
            lr,
            grad_norm,
            tokens_per_s: (per_step * shards.seq_len) as f64 / dt.max(1e-9),
            elapsed_s: t0.elapsed().as_secs_f64(),
        };
        if state.step.is_multiple_of(cfg.train.log_every) || state.step == total_steps {
            writeln!(metrics, "{}", serde_json::to_string(&p)?)?;
        }
        sink.event(&Event::Progress(p));

        // ------------------------------------------------------------------ validation
        let mut improved = false;
        if let Some(v) = &validation {
            if cfg.train.eval_every > 0
                && (state.step.is_multiple_of(cfg.train.eval_every) || state.step == total_steps)
            {
                let (val_loss, val_tokens) = validation_loss(&model, v, cfg.train.micro_batch, &mut state.rng)?;
                improved = state.best_val.is_none_or(|(_, b)| val_loss < b);
                if improved {
                    state.best_val = Some((state.step, val_loss));
                    state.evals_since_best = 0;
                } else {
                    state.evals_since_best += 1;
                }
                let line = serde_json::json!({"step": state.step, "val_loss": val_loss, "val_tokens": val_tokens});
                writeln!(metrics, "{line}")?;
                sink.event(&Event::Validation { step: state.step, val_loss, val_tokens, best: improved });
            }
        }
        let stop_early = cfg.train.early_stop_patience > 0 && state.evals_since_best >= cfg.train.early_stop_patience;

        // ------------------------------------------------------------------ checkpoint
        let every = cfg.train.checkpoint_every > 0 && state.step.is_multiple_of(cfg.train.checkpoint_every);
        let at_tokens = cfg.train.checkpoint_at_tokens.iter().any(|&p| prev_tokens < p && state.tokens >= p);
        let best = improved && cfg.train.keep_best == "val_loss";
        // the library scores eval_tasks on these, while the run goes on
        let scored = !cfg.train.eval_tasks.is_empty() && state.step.is_multiple_of(cfg.train.eval_every);
        if every || at_tokens || best || scored || stop_early || state.step == total_steps {
            metrics.flush()?;
            last_checkpoint = save_ckpt(&state, &opt, &model)?;
            sink.event(&Event::Checkpoint { step: state.step, tokens: state.tokens, path: last_checkpoint.clone() });
            if cfg.train.keep_checkpoints > 0 {
                prune_checkpoints(run_dir, cfg, &state)?;
            }
        }
        if stop_early {
            stopped_early_at = Some(state.step);
            break;
        }
    }
    metrics.flush()?;

    // ------------------------------------------------------------------ outputs
    let mut output = String::new();
    if status == Outcome::Cancelled {
        if last_checkpoint.is_empty() || !last_checkpoint.ends_with(&format!("step-{:06}", state.step)) {
            last_checkpoint = save_ckpt(&state, &opt, &model)?;
            sink.event(&Event::Checkpoint { step: state.step, tokens: state.tokens, path: last_checkpoint.clone() });
        }
    } else {
        let out = rundir::output_dir(run_dir, cfg.method.kind);
        checkpoint::save(&out, &model, &cfg.method, &hf_config_path, &tok_path, &base_ref, None, None)?;
        output = out.to_string_lossy().into_owned();
    }
    let elapsed = loop_start.elapsed().as_secs_f64();
    Ok(RunSummary {
        run_id: cfg.run_id.clone(),
        run_dir: run_dir.to_string_lossy().into_owned(),
        status,
        method: cfg.method.kind,
        steps: state.step,
        total_steps,
        tokens: state.tokens,
        epochs: state.samples as f64 / shards.rows as f64,
        first_loss: Some(first_loss).filter(|l| l.is_finite()),
        final_loss: Some(state.loss).filter(|l| l.is_finite()),
        tokens_per_s: tokens_this_run as f64 / elapsed.max(1e-9),
        elapsed_s: t0.elapsed().as_secs_f64(),
        params: n_params,
        trainable_params,
        output,
        last_checkpoint,
        best_checkpoint: match (&state.best_val, cfg.train.keep_best == "val_loss") {
            (Some((step, _)), true) => rundir::checkpoint_dir(run_dir, *step).to_string_lossy().into_owned(),
            _ => String::new(),
        },
        stopped_early_at,
    })
}

/// The masked next-token loss over every held-out row, without gradients or dropout: the mean
/// per loss-carrying token, and how many there were.
fn validation_loss(model: &Llama, v: &Shards, rows_per_batch: usize, rng: &mut Rng) -> Result<(f64, f64)> {
    let rows: Vec<usize> = (0..v.rows).collect();
    let batches =
        rows.chunks(rows_per_batch.max(1)).map(|r| micro_batch(v, r, &model.device)).collect::<Result<Vec<_>>>()?;
    let denom: f64 = batches.iter().map(|b| b.loss_tokens).sum::<f64>().max(1.0);
    // eval mode draws nothing from the RNG; a copy keeps the training stream untouched regardless
    let mut rng = rng.clone();
    let mut sum = 0.0;
    for mb in &batches {
        let logits = model.forward(&mb.ids, &mut ForwardCtx { train: false, rng: &mut rng })?.detach();
        let loss = crate::model::masked_loss(&logits, &mb.targets, &mb.mask, denom)?;
        sum += loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    }
    Ok((sum, denom))
}

/// train.keep_checkpoints: delete all but the N newest checkpoints, never the best one
/// (train.keep_best) nor those written at train.checkpoint_at_tokens (the study's budgets).
fn prune_checkpoints(run_dir: &Path, cfg: &RunConfig, state: &TrainerState) -> Result<()> {
    let all = rundir::checkpoints(run_dir);
    let best = state.best_val.filter(|_| cfg.train.keep_best == "val_loss").map(|(s, _)| s);
    let step_tokens = |step: usize| all.iter().find(|c| c.step == step).map(|c| c.tokens);
    let budgeted = |step: usize| {
        // the first checkpoint at or past a budget is that budget's
        cfg.train
            .checkpoint_at_tokens
            .iter()
            .any(|&p| all.iter().find(|c| c.tokens >= p).map(|c| c.step) == Some(step) && step_tokens(step).is_some())
    };
    let candidates: Vec<_> = all.iter().filter(|c| Some(c.step) != best && !budgeted(c.step)).collect();
    let excess = candidates.len().saturating_sub(cfg.train.keep_checkpoints);
    for c in &candidates[..excess] {
        std::fs::remove_dir_all(&c.path).map_err(|e| Error::file(&c.path, e))?;
    }
    Ok(())
}

/// A resumed run rewrites the steps after its checkpoint: drop their old metric lines
/// so the file has each step once.
fn truncate_metrics(path: &Path, keep_through: usize) -> Result<()> {
    if !path.is_file() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path)?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s as usize <= keep_through)
        })
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    std::fs::write(path, out)?;
    Ok(())
}
