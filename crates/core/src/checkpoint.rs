//! Checkpoint and model I/O in the formats other tools read: a full model as a
//! Hugging Face directory, a LoRA adapter as a PEFT directory, plus optimizer state
//! and trainer state for exact resume. Writes go to `<dir>.tmp` and are renamed into
//! place, so a crash never leaves a half-written checkpoint under the real name.
use crate::config::{MethodConfig, MethodKind};
use crate::error::{Error, Result};
use crate::model::{hf_shapes, Llama, LlamaConfig};
use crate::optim::Optimizer;
use crate::rng::Rng;
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct TrainerState {
    pub format_version: u32,
    pub run_id: String,
    pub method: MethodKind,
    /// Optimizer updates done.
    pub step: usize,
    /// Training samples (sequences) consumed: the data position.
    pub samples: u64,
    /// Tokens trained on (samples · seq_len).
    pub tokens: u64,
    /// The dropout RNG, so masks after resume are the ones an uninterrupted run draws.
    pub rng: Rng,
    pub loss: f64,
}

/// Trained tensors are saved in f32 (f64 stays f64): never rounded to bf16, because
/// the spectrum of the weight change depends on it.
fn save_dtype(t: &Tensor) -> DType {
    if t.dtype() == DType::F64 { DType::F64 } else { DType::F32 }
}

fn save_map(map: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    candle_core::safetensors::save(map, path).map_err(|e| Error::file(path, e))
}

/// Write a model (full FT) or adapter (LoRA) directory, optionally with optimizer and trainer state.
#[allow(clippy::too_many_arguments)]
pub fn save(
    dir: &Path,
    model: &Llama,
    method: &MethodConfig,
    hf_config: &Path,
    tokenizer: &Path,
    base_model: &str,
    opt: Option<(&Optimizer, &[(String, Var)])>,
    state: Option<&TrainerState>,
) -> Result<()> {
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::file(&tmp, e))?;
    match method.kind {
        MethodKind::Full => {
            let mut map = HashMap::new();
            for (name, w) in model.named_weights() {
                let t = w.tensor();
                map.insert(name, t.to_dtype(save_dtype(t))?);
            }
            save_map(&map, &tmp.join("model.safetensors"))?;
            if hf_config.is_file() {
                // the original keeps every field other tools read (and its generation defaults)
                std::fs::copy(hf_config, tmp.join("config.json")).map_err(|e| Error::file(hf_config, e))?;
                let gen = hf_config.with_file_name("generation_config.json");
                if gen.is_file() {
                    std::fs::copy(&gen, tmp.join("generation_config.json")).map_err(|e| Error::file(&gen, e))?;
                }
            } else {
                // a GGUF base has none: write the config its metadata gave
                std::fs::write(tmp.join("config.json"), serde_json::to_vec_pretty(&model.cfg)?)?;
            }
            std::fs::write(tmp.join("tokenizer.json"), crate::data::tokenizer_json(tokenizer)?)?;
        }
        MethodKind::Lora => {
            let mut map = HashMap::new();
            for (name, v) in model.trainable() {
                map.insert(name, v.as_tensor().to_dtype(save_dtype(v.as_tensor()))?);
            }
            save_map(&map, &tmp.join("adapter_model.safetensors"))?;
            let targets = method.target_modules()?;
            let adapter_config = serde_json::json!({
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "base_model_name_or_path": base_model,
                "r": method.rank,
                "lora_alpha": method.alpha.unwrap_or(2.0 * method.rank as f64),
                "lora_dropout": method.dropout,
                "target_modules": targets,
                "use_rslora": method.rslora,
                "bias": "none",
                "fan_in_fan_out": false,
                "inference_mode": true,
                "init_lora_weights": true,
            });
            std::fs::write(tmp.join("adapter_config.json"), serde_json::to_vec_pretty(&adapter_config)?)?;
        }
    }
    if let Some((opt, params)) = opt {
        let mut map = HashMap::new();
        for ((name, _), st) in params.iter().zip(&opt.state) {
            map.insert(format!("{name}::m"), st.m.clone());
            if let Some(v) = &st.v {
                map.insert(format!("{name}::v"), v.clone());
            }
        }
        save_map(&map, &tmp.join("optimizer.safetensors"))?;
    }
    if let Some(s) = state {
        std::fs::write(tmp.join("trainer_state.json"), serde_json::to_vec_pretty(s)?)?;
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).map_err(|e| Error::file(dir, e))?;
    Ok(())
}

/// The safetensors files of a Hugging Face model directory (single or sharded).
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&index)?)?;
        let mut files: Vec<PathBuf> = v["weight_map"]
            .as_object()
            .ok_or_else(|| Error::file(&index, "no weight_map"))?
            .values()
            .filter_map(|f| f.as_str().map(|f| dir.join(f)))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    Err(Error::file(dir, "no model.safetensors or model.safetensors.index.json (hint: a Hugging Face model directory)"))
}

/// Read every tensor of a model directory (memory-mapped).
pub fn load_hf_tensors(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let files = weight_files(dir)?;
    // SAFETY: checkpoint files are not modified while mapped.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }.map_err(|e| Error::file(dir, e))?;
    let mut out = HashMap::new();
    for (name, _) in st.tensors() {
        out.insert(name.clone(), st.load(&name, &Device::Cpu).map_err(|e| Error::file(dir, e))?);
    }
    Ok(out)
}

pub fn load_model_dir(dir: &Path, dtype: DType) -> Result<Llama> {
    let cfg = LlamaConfig::from_file(&dir.join("config.json"))?;
    let tensors = load_hf_tensors(dir)?;
    check_shapes(&cfg, &tensors, dir)?;
    Llama::from_tensors(cfg, tensors, dtype, dir)
}

fn check_shapes(cfg: &LlamaConfig, tensors: &HashMap<String, Tensor>, dir: &Path) -> Result<()> {
    for (name, shape) in hf_shapes(cfg) {
        if let Some(t) = tensors.get(&name) {
            if t.dims() != shape.as_slice() {
                return Err(Error::file(dir, format!("tensor {name} has shape {:?}, config.json says {shape:?} (hint: config.json and weights are from different models)", t.dims())));
            }
        }
    }
    Ok(())
}

/// Restore trainable tensors, optimizer state and trainer state from a checkpoint directory.
pub fn restore(dir: &Path, params: &[(String, Var)], opt: &mut Optimizer) -> Result<TrainerState> {
    let state: TrainerState = serde_json::from_slice(&std::fs::read(dir.join("trainer_state.json")).map_err(|e| Error::file(dir, e))?)
        .map_err(|e| Error::file(dir.join("trainer_state.json"), e))?;
    if state.format_version != FORMAT_VERSION {
        return Err(Error::file(dir, format!("checkpoint format {} (this engine reads {FORMAT_VERSION})", state.format_version)));
    }
    let weights = if state.method == MethodKind::Full { dir.join("model.safetensors") } else { dir.join("adapter_model.safetensors") };
    let w = candle_core::safetensors::load(&weights, &Device::Cpu).map_err(|e| Error::file(&weights, e))?;
    let o = candle_core::safetensors::load(dir.join("optimizer.safetensors"), &Device::Cpu).map_err(|e| Error::file(dir, e))?;
    for ((name, var), st) in params.iter().zip(opt.state.iter_mut()) {
        let t = w.get(name).ok_or_else(|| Error::MissingTensor { path: weights.clone(), name: name.clone() })?;
        if t.dims() != var.dims() {
            return Err(Error::file(&weights, format!("{name} has shape {:?}, the model expects {:?} (hint: same model and method as the run that wrote it?)", t.dims(), var.dims())));
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        let m = o.get(&format!("{name}::m")).ok_or_else(|| Error::MissingTensor { path: dir.join("optimizer.safetensors"), name: format!("{name}::m") })?;
        st.m = m.to_dtype(st.m.dtype())?.to_device(st.m.device())?;
        if let Some(v) = &mut st.v {
            let t = o.get(&format!("{name}::v")).ok_or_else(|| Error::MissingTensor { path: dir.join("optimizer.safetensors"), name: format!("{name}::v") })?;
            *v = t.to_dtype(v.dtype())?.to_device(v.device())?;
        }
    }
    Ok(state)
}

/// PEFT's pattern match: a `rank_pattern`/`alpha_pattern` key applies to a module whose
/// name is the key or ends with `.key` (PEFT: `re.match(rf"(.*\.)?({key})$", name)`, keys
/// taken literally here).
fn pattern_value(patterns: &serde_json::Value, module: &str) -> Option<f64> {
    patterns.as_object()?.iter().find(|(k, _)| module == k.as_str() || module.ends_with(&format!(".{k}"))).and_then(|(_, v)| v.as_f64())
}

/// A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors), read and
/// checked: keys with or without PEFT's `.default` infix, `rank_pattern`, `alpha_pattern`,
/// `use_rslora`. What it cannot honour it refuses by name.
pub struct Adapter {
    pub dir: PathBuf,
    config: serde_json::Value,
    tensors: HashMap<String, Tensor>,
    alpha: f64,
    rslora: bool,
}

impl Adapter {
    pub fn open(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        let ac: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).map_err(|e| Error::file(&cfg_path, e))?).map_err(|e| Error::file(&cfg_path, e))?;
        if ac.get("peft_type").and_then(|v| v.as_str()).is_some_and(|t| t != "LORA") {
            return Err(Error::file(&cfg_path, format!("peft_type {} is not supported (hint: loralab loads LoRA adapters)", ac["peft_type"])));
        }
        let unsupported = [
            ("use_dora", ac["use_dora"].as_bool() == Some(true)),
            ("modules_to_save", ac["modules_to_save"].as_array().is_some_and(|v| !v.is_empty())),
            ("bias", ac["bias"].as_str().is_some_and(|b| b != "none")),
            ("layers_to_transform", !ac["layers_to_transform"].is_null()),
            ("fan_in_fan_out", ac["fan_in_fan_out"].as_bool() == Some(true)),
        ];
        if let Some((field, _)) = unsupported.iter().find(|(_, bad)| *bad) {
            return Err(Error::file(&cfg_path, format!("`{field}` = {} is not supported (hint: plain LoRA adapters only: no DoRA, no extra trained modules or biases, every layer, fan_in_fan_out false)", ac[*field])));
        }
        let alpha = ac["lora_alpha"].as_f64().ok_or_else(|| Error::file(&cfg_path, "no `lora_alpha`"))?;
        let rslora = ac["use_rslora"].as_bool().unwrap_or(false);
        let file = dir.join("adapter_model.safetensors");
        let tensors = candle_core::safetensors::load(&file, &Device::Cpu).map_err(|e| Error::file(&file, e))?;
        Ok(Self { dir: dir.to_path_buf(), config: ac, tensors, alpha, rslora })
    }

    /// The factors (A: r×in, B: out×r) and scale of one module (`model.layers.0.self_attn.q_proj`),
    /// checked against the module's (in, out); None when the adapter does not touch it.
    pub fn factors(&self, module: &str, in_out: (usize, usize)) -> Result<Option<(Tensor, Tensor, f64)>> {
        let find = |ab: &str| {
            let plain = crate::model::peft_key(module, ab);
            let default = plain.replace(&format!(".lora_{ab}.weight"), &format!(".lora_{ab}.default.weight"));
            self.tensors.get(&plain).or_else(|| self.tensors.get(&default)).cloned()
        };
        let (Some(a), Some(b)) = (find("A"), find("B")) else { return Ok(None) };
        let file = self.dir.join("adapter_model.safetensors");
        let cfg_path = self.dir.join("adapter_config.json");
        let (r, fan_in) = a.dims2()?;
        let (fan_out, r2) = b.dims2()?;
        if r != r2 || (fan_in, fan_out) != in_out {
            return Err(Error::file(&file, format!("{module}: lora_A {:?} / lora_B {:?} do not fit a ({}, {}) module of this model (hint: an adapter for another base model?)", a.dims(), b.dims(), in_out.1, in_out.0)));
        }
        if let Some(pr) = pattern_value(&self.config["rank_pattern"], module) {
            if pr as usize != r {
                return Err(Error::file(&cfg_path, format!("rank_pattern gives r={pr} for {module} but its tensors have rank {r}")));
            }
        }
        let a_ = pattern_value(&self.config["alpha_pattern"], module).unwrap_or(self.alpha);
        let scale = if self.rslora { a_ / (r as f64).sqrt() } else { a_ / r as f64 };
        Ok(Some((a, b, scale)))
    }
}

/// Attach a PEFT LoRA adapter directory to a model (see [`Adapter`]).
pub fn load_adapter(model: &mut Llama, dir: &Path) -> Result<()> {
    let adapter = Adapter::open(dir)?;
    let dtype = model.dtype;
    let mut n = 0;
    for lin in model.linears_mut() {
        let Some((a, b, scale)) = adapter.factors(&lin.name, lin.in_out())? else { continue };
        lin.lora = Some(crate::linear::LoraAdapter { a: Var::from_tensor(&a.to_dtype(dtype)?)?, b: Var::from_tensor(&b.to_dtype(dtype)?)?, scale, dropout: 0.0 });
        n += 1;
    }
    if n == 0 {
        return Err(Error::file(dir.join("adapter_model.safetensors"), "no lora_A/lora_B tensor matches a module of this model (hint: is it an adapter for this base model?)"));
    }
    Ok(())
}

/// Load a base model (HF directory or .gguf), apply a PEFT adapter, fold it in and write
/// the merged model in Hugging Face layout (f32). `loralab merge` calls it.
pub fn merge(base: &Path, adapter: &Path, out: &Path) -> Result<()> {
    let mut model = load_base(base, DType::F32)?;
    load_adapter(&mut model, adapter)?;
    model.merge_lora()?;
    let tokenizer = default_tokenizer(base);
    let full = MethodConfig { kind: MethodKind::Full, ..Default::default() };
    save(out, &model, &full, &base.join("config.json"), &tokenizer, "", None, None)
}

/// A llama.cpp GGUF file rather than a Hugging Face directory.
pub fn is_gguf(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "gguf")
}

/// Where a base model's tokenizer is: the GGUF file's own metadata, or `<dir>/tokenizer.json`.
pub fn default_tokenizer(base: &Path) -> std::path::PathBuf {
    if is_gguf(base) { base.to_path_buf() } else { base.join("tokenizer.json") }
}

/// A base model from a Hugging Face directory or a llama.cpp .gguf file.
pub fn load_base(path: &Path, dtype: DType) -> Result<Llama> {
    if is_gguf(path) {
        Ok(crate::gguf::load_gguf(path, dtype)?.0)
    } else {
        load_model_dir(path, dtype)
    }
}

/// A model to evaluate: a base (HF directory or .gguf) with an optional PEFT adapter, merged
/// into the weights or run beside them, and the path of its tokenizer (`tokenizer` empty: the
/// model's own).
pub fn load_for_eval(model: &str, adapter: &str, merged: bool, tokenizer: &str, dtype: DType) -> Result<(Llama, PathBuf)> {
    let path = Path::new(model);
    if !is_gguf(path) && !path.join("config.json").is_file() {
        return Err(Error::config("model", format!("{}: no config.json (hint: a Hugging Face model directory or a .gguf file)", path.display())));
    }
    let mut m = load_base(path, dtype)?;
    if !adapter.is_empty() {
        load_adapter(&mut m, Path::new(adapter))?;
        if merged {
            m.merge_lora()?;
        }
    }
    Ok((m, if tokenizer.is_empty() { default_tokenizer(path) } else { PathBuf::from(tokenizer) }))
}
