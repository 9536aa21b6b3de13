//! Checkpoint and model I/O in the formats other tools read: a full model as a
//! Hugging Face directory, a LoRA adapter as a PEFT directory, plus optimizer state
//! and trainer state for exact resume. Writes go to `<dir>.tmp` and are renamed into
//! place, so a crash never leaves a half-written checkpoint under the real name.
use crate::base::error::{Error, Result};
pub use crate::base::formats::{default_tokenizer, is_gguf};
use crate::base::rng::Rng;
use crate::config::{MethodConfig, MethodKind};
use crate::model::{hf_shapes, Llama, LlamaConfig};
use crate::optim::Optimizer;
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
    /// The best validation loss so far and its step (train.keep_best, train.early_stop_patience).
    #[serde(default)]
    pub best_val: Option<(usize, f64)>,
    /// Evaluations since the best one (the early stop's patience).
    #[serde(default)]
    pub evals_since_best: usize,
}

/// Trained tensors are saved in f32 (f64 stays f64): never rounded to bf16, because
/// the spectrum of the weight change depends on it.
fn save_dtype(t: &Tensor) -> DType {
    if t.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

pub(crate) fn save_map(map: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    // the safetensors crate writes a tempfile (mode 0600) and renames it into place: give the
    // result the mode a plain new file gets here (0666 less the umask), as the JSON beside it has
    let probe = path.with_extension("mode");
    let mode = std::fs::File::create(&probe).and_then(|f| f.metadata()).map(|m| m.permissions());
    let _ = std::fs::remove_file(&probe);
    candle_core::safetensors::save(map, path).map_err(|e| Error::file(path, e))?;
    if let Ok(mode) = mode {
        std::fs::set_permissions(path, mode).map_err(|e| Error::file(path, e))?;
    }
    Ok(())
}

/// The dtype of written weights, by name (`loralab merge --dtype`).
pub fn weight_dtype(name: &str) -> Result<DType> {
    match name {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        _ => Err(Error::config("dtype", format!("`{name}` is not a weight dtype (hint: bf16, f16 or f32)"))),
    }
}

/// config.json's name for a dtype (`torch_dtype`).
fn torch_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F64 => "float64",
        _ => "float32",
    }
}

/// A file's bytes under a new name, as a file written here (std::fs::copy would keep the source's mode).
fn copy_file(from: &Path, to: &Path) -> Result<()> {
    std::fs::write(to, std::fs::read(from).map_err(|e| Error::file(from, e))?).map_err(|e| Error::file(to, e))
}

/// A JSON object file (config.json, tokenizer_config.json, ...).
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).map_err(|e| Error::file(path, e))?)
        .map_err(|e| Error::file(path, format!("not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(Error::file(path, "not a JSON object (hint: a Hugging Face config file holds one {...})"));
    }
    Ok(v)
}

pub(crate) fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(v)?).map_err(|e| Error::file(path, e))
}

/// The first id of a config.json token id field (a number or a list).
fn first_id(v: &Option<serde_json::Value>) -> Option<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|i| i as u32),
        Some(serde_json::Value::Array(a)) => a.first().and_then(|i| i.as_u64()).map(|i| i as u32),
        _ => None,
    }
}

// ------------------------------------------------------------------ a Hugging Face model directory

/// A model as a complete Hugging Face directory in `dir`, what `AutoModelForCausalLM` and
/// `AutoTokenizer` load: model.safetensors (in `dtype`; None: f32, f64 stays f64), config.json
/// (the base's, or the one GGUF metadata gave, with `torch_dtype` set to what was written),
/// generation_config.json, tokenizer.json and the tokenizer files beside it (see
/// [`write_tokenizer_files`]). Returns notes on what the base lacked.
fn write_model(
    dir: &Path,
    model: &Llama,
    hf_config: &Path,
    tokenizer: &Path,
    dtype: Option<DType>,
) -> Result<Vec<String>> {
    let mut map = HashMap::new();
    let mut written = DType::F32;
    for (name, w) in model.named_weights() {
        let t = w.tensor();
        written = dtype.unwrap_or_else(|| save_dtype(t));
        map.insert(name, t.to_dtype(written)?);
    }
    save_map(&map, &dir.join("model.safetensors"))?;
    // the original keeps every field other tools read; a GGUF base has none: the config its metadata gave
    let mut config = if hf_config.is_file() { read_json(hf_config)? } else { serde_json::to_value(&model.cfg)? };
    config["torch_dtype"] = serde_json::json!(torch_name(written));
    if config.get("dtype").is_some() {
        // transformers >= 4.56 writes `dtype` (and reads it first)
        config["dtype"] = serde_json::json!(torch_name(written));
    }
    write_json(&dir.join("config.json"), &config)?;
    let gen = hf_config.with_file_name("generation_config.json");
    if hf_config.is_file() && gen.is_file() {
        copy_file(&gen, &dir.join("generation_config.json"))?;
    } else {
        let cfg = &model.cfg;
        let eos = if cfg.generation_eos.is_empty() {
            cfg.eos_token_id.clone()
        } else {
            Some(serde_json::json!(cfg.generation_eos))
        };
        let mut g = serde_json::json!({"_from_model_config": true});
        for (k, v) in [("bos_token_id", cfg.bos_token_id.clone()), ("eos_token_id", eos)] {
            if let Some(v) = v.filter(|v| !v.is_null()) {
                g[k] = v;
            }
        }
        write_json(&dir.join("generation_config.json"), &g)?;
    }
    let tok_json = crate::io::tokenizer::tokenizer_json(tokenizer)?;
    std::fs::write(dir.join("tokenizer.json"), &tok_json)?;
    write_tokenizer_files(dir, tokenizer, &tok_json, &model.cfg)
}

/// A model as a complete Hugging Face directory at `out` (see [`write_model`]), its weights in
/// `dtype`, written aside and renamed into place with its manifest (`loralab export --format hf`).
pub(crate) fn write_model_dir(
    out: &Path,
    model: &Llama,
    hf_config: &Path,
    tokenizer: &Path,
    dtype: DType,
) -> Result<Vec<String>> {
    check_out_dir(out)?;
    let tmp = fresh_tmp(out)?;
    let written =
        write_model(&tmp, model, hf_config, tokenizer, Some(dtype)).and_then(|n| publish(&tmp, out).map(|_| n));
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp); // nothing half-written is left beside the output
    }
    written
}

/// tokenizer_config.json (chat template, bos/eos tokens) and special_tokens_map.json. A
/// tokenizer.json's own folder's files are copied (tokenizer_config.json, special_tokens_map.json,
/// chat_template.jinja); a .gguf's are built from its metadata ([`crate::io::gguf::tokenizer_config`]);
/// with neither they are built. A bos or eos token none of them names comes from config.json's
/// id. No chat template is made up: a base without one gives a note.
fn write_tokenizer_files(dir: &Path, tokenizer: &Path, tok_json: &[u8], cfg: &LlamaConfig) -> Result<Vec<String>> {
    let src = tokenizer.with_file_name("tokenizer_config.json");
    let mut copied_map = None;
    let mut template_file = false;
    let mut tc = if is_gguf(tokenizer) {
        crate::io::gguf::tokenizer_config(tokenizer)?
    } else if src.is_file() {
        for name in ["special_tokens_map.json", "chat_template.jinja"] {
            let f = tokenizer.with_file_name(name);
            if f.is_file() {
                copy_file(&f, &dir.join(name))?;
                if name == "chat_template.jinja" {
                    template_file = true;
                } else {
                    copied_map = Some(read_json(&f)?);
                }
            }
        }
        read_json(&src)?
    } else {
        serde_json::json!({"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": false, "model_max_length": cfg.max_position_embeddings})
    };
    let unnamed: Vec<(&str, u32)> =
        [("bos_token", first_id(&cfg.bos_token_id)), ("eos_token", first_id(&cfg.eos_token_id))]
            .into_iter()
            .filter(|(field, _)| {
                let named = |v: &serde_json::Value| v.get(*field).is_some_and(|t| !t.is_null());
                !named(&tc) && !copied_map.as_ref().is_some_and(named)
            })
            .filter_map(|(field, id)| Some((field, id?)))
            .collect();
    if !unnamed.is_empty() {
        let tok = tokenizers::Tokenizer::from_bytes(tok_json)
            .map_err(|e| Error::file(tokenizer, format!("cannot load tokenizer: {e}")))?;
        for (field, id) in unnamed {
            if let Some(t) = tok.id_to_token(id) {
                tc[field] = serde_json::json!(t);
            }
        }
    }
    let mut notes = Vec::new();
    if tc.get("chat_template").is_none_or(|t| t.is_null()) && !template_file {
        notes.push(format!(
            "{}: the base has no chat template (none in tokenizer_config.json beside its tokenizer, nor in GGUF metadata), so neither has the written model: transformers' apply_chat_template fails on it (hint: add a `chat_template` to the written tokenizer_config.json, or use a base that ships one)",
            tokenizer.display()
        ));
    }
    write_json(&dir.join("tokenizer_config.json"), &tc)?;
    if copied_map.is_none() {
        let map: serde_json::Map<String, serde_json::Value> = ["bos_token", "eos_token", "unk_token", "pad_token"]
            .iter()
            .filter_map(|k| tc.get(*k).filter(|v| !v.is_null()).map(|v| (k.to_string(), v.clone())))
            .collect();
        write_json(&dir.join("special_tokens_map.json"), &serde_json::Value::Object(map))?;
    }
    Ok(notes)
}

/// `<path><suffix>` beside `path` (the suffix appended to its name, never replacing an
/// extension: `x.v1` → `x.v1.tmp`). A path without a name of its own (`.`, `..`, `/`) is refused.
pub(crate) fn sibling(path: &Path, suffix: &str) -> Result<PathBuf> {
    let name = path.file_name().filter(|n| *n != "." && *n != "..").ok_or_else(|| {
        Error::config(
            "out",
            format!("`{}` names no file or directory of its own (hint: a new name, such as ./export)", path.display()),
        )
    })?;
    let mut n = name.to_os_string();
    n.push(suffix);
    Ok(path.with_file_name(n))
}

/// An output directory loralab may (re)write: absent, empty, or one it wrote itself (its
/// manifest says so). Anything else is the user's and is refused, never deleted.
pub(crate) fn check_out_dir(out: &Path) -> Result<()> {
    sibling(out, "")?;
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        return Err(Error::config(
            "out",
            format!("{} exists and is not a directory (hint: a new directory name)", out.display()),
        ));
    }
    let empty = std::fs::read_dir(out).map_err(|e| Error::file(out, e))?.next().is_none();
    if empty || out.join(MANIFEST).is_file() {
        return Ok(());
    }
    Err(Error::config(
        "out",
        format!("{} exists and was not written by loralab (no {MANIFEST}) (hint: name a new directory; loralab replaces only directories it wrote)", out.display()),
    ))
}

/// A fresh `<dir>.tmp` to write into; [`publish`] renames it to `dir`.
fn fresh_tmp(dir: &Path) -> Result<PathBuf> {
    let tmp = sibling(dir, ".tmp")?;
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::file(&tmp, e))?;
    Ok(tmp)
}

/// The integrity record of a directory loralab wrote: every file's size and sha256, written last.
pub const MANIFEST: &str = "loralab_manifest.json";

fn sha256_file(path: &Path) -> Result<(u64, String)> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::file(path, e))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(|e| Error::file(path, e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, h.finalize().iter().map(|b| format!("{b:02x}")).collect()))
}

fn write_manifest(dir: &Path) -> Result<()> {
    let mut files = serde_json::Map::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::file(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    for p in names {
        let (bytes, sha256) = sha256_file(&p)?;
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        files.insert(name, serde_json::json!({ "bytes": bytes, "sha256": sha256 }));
    }
    write_json(&dir.join(MANIFEST), &serde_json::json!({ "format_version": FORMAT_VERSION, "files": files }))
}

/// Check a directory against its manifest: every file it lists present, of its size and sha256
/// (files added later, such as evaluation results, are not its concern); with `tensors_only`,
/// just the .safetensors files (a model or adapter directory whose JSON a user may edit, as
/// Hugging Face users do). A directory without a manifest (written elsewhere, or by an older
/// loralab) passes. Resuming checks a checkpoint whole.
pub fn verify(dir: &Path, tensors_only: bool) -> Result<()> {
    let path = dir.join(MANIFEST);
    if !path.is_file() {
        return Ok(());
    }
    let m = read_json(&path)?;
    let files = m["files"].as_object().ok_or_else(|| {
        Error::file(&path, "no `files` table (hint: the manifest is damaged; so may the checkpoint be)")
    })?;
    let hint = "hint: the file changed after loralab wrote it (a truncated copy, a full disk, bit rot): use another checkpoint, or copy this one again from where it came";
    for (name, want) in files.iter().filter(|(n, _)| !tensors_only || n.ends_with(".safetensors")) {
        let f = dir.join(name);
        if name.contains('/') || name.contains("..") {
            return Err(Error::file(
                &path,
                format!("lists `{name}`, not a file of this directory (hint: the manifest is damaged)"),
            ));
        }
        if !f.is_file() {
            return Err(Error::file(&f, format!("missing: the checkpoint's manifest lists it ({hint})")));
        }
        let (bytes, sha) = sha256_file(&f)?;
        if Some(bytes) != want["bytes"].as_u64() {
            return Err(Error::file(
                &f,
                format!("damaged: {bytes} bytes, the manifest says {} ({hint})", want["bytes"]),
            ));
        }
        if Some(sha.as_str()) != want["sha256"].as_str() {
            return Err(Error::file(
                &f,
                format!("damaged: sha256 {sha}, the manifest says {} ({hint})", want["sha256"]),
            ));
        }
    }
    Ok(())
}

pub(crate) fn publish(tmp: &Path, dir: &Path) -> Result<()> {
    write_manifest(tmp)?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(tmp, dir).map_err(|e| Error::file(dir, e))
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
    let tmp = fresh_tmp(dir)?;
    match method.kind {
        MethodKind::Full => {
            write_model(&tmp, model, hf_config, tokenizer, None)?;
        }
        MethodKind::Lora => {
            let mut map = HashMap::new();
            for (name, v) in model.trainable() {
                map.insert(name, v.as_tensor().to_dtype(save_dtype(v.as_tensor()))?);
            }
            save_map(&map, &tmp.join("adapter_model.safetensors"))?;
            let targets = method.target_modules()?;
            // `org/name@sha` (a Hub model): PEFT's base_model_name_or_path and revision
            // (a GGUF file in a Hub repo, org/name@sha/FILE.gguf, is no base PEFT can load: kept as it is)
            let (base_model, revision) = match base_model.split_once('@') {
                Some((repo, sha))
                    if sha.len() == 40
                        && sha.bytes().all(|b| b.is_ascii_hexdigit())
                        && !Path::new(base_model).exists() =>
                {
                    (repo, Some(sha))
                }
                _ => (base_model, None),
            };

            let adapter_config = serde_json::json!({
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "base_model_name_or_path": base_model,
                "revision": revision,
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
    publish(&tmp, dir)
}

/// The Hugging Face repo a GGUF file was converted from, as its metadata states it
/// (`general.source.huggingface.repository`, or a huggingface.co `general.source.url`).
pub fn gguf_source_repo(path: &Path) -> Option<String> {
    let md = crate::io::gguf::metadata(path).ok()?;
    let text = |k: &str| md.get(k).and_then(|v| v.to_string().ok()).cloned();
    let repo = text("general.source.huggingface.repository").or_else(|| {
        let url = text("general.source.url")?;
        let rest = url.strip_prefix("https://huggingface.co/")?;
        let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        (parts.len() >= 2).then(|| format!("{}/{}", parts[0], parts[1]))
    })?;
    let ok = repo.split('/').count() == 2 && repo.split('/').all(|p| !p.is_empty() && !p.starts_with('.'));
    ok.then_some(repo)
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
    verify(dir, true)?;
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
    verify(dir, false)?;
    let state: TrainerState =
        serde_json::from_slice(&std::fs::read(dir.join("trainer_state.json")).map_err(|e| Error::file(dir, e))?)
            .map_err(|e| Error::file(dir.join("trainer_state.json"), e))?;
    if state.format_version != FORMAT_VERSION {
        return Err(Error::file(
            dir,
            format!("checkpoint format {} (this engine reads {FORMAT_VERSION})", state.format_version),
        ));
    }
    let weights = if state.method == MethodKind::Full {
        dir.join("model.safetensors")
    } else {
        dir.join("adapter_model.safetensors")
    };
    let w = candle_core::safetensors::load(&weights, &Device::Cpu).map_err(|e| Error::file(&weights, e))?;
    let opt_path = dir.join("optimizer.safetensors");
    let o = candle_core::safetensors::load(&opt_path, &Device::Cpu).map_err(|e| {
        Error::file(
            &opt_path,
            format!("{e} (hint: the file is damaged or not a safetensors file: use another checkpoint)"),
        )
    })?;
    for ((name, var), st) in params.iter().zip(opt.state.iter_mut()) {
        let t = w.get(name).ok_or_else(|| Error::MissingTensor { path: weights.clone(), name: name.clone() })?;
        if t.dims() != var.dims() {
            return Err(Error::file(&weights, format!("{name} has shape {:?}, the model expects {:?} (hint: same model and method as the run that wrote it?)", t.dims(), var.dims())));
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        let m = o.get(&format!("{name}::m")).ok_or_else(|| Error::MissingTensor {
            path: dir.join("optimizer.safetensors"),
            name: format!("{name}::m"),
        })?;
        st.m = m.to_dtype(st.m.dtype())?.to_device(st.m.device())?;
        if let Some(v) = &mut st.v {
            let t = o.get(&format!("{name}::v")).ok_or_else(|| Error::MissingTensor {
                path: dir.join("optimizer.safetensors"),
                name: format!("{name}::v"),
            })?;
            *v = t.to_dtype(v.dtype())?.to_device(v.device())?;
        }
    }
    Ok(state)
}

/// PEFT's pattern match: a `rank_pattern`/`alpha_pattern` key applies to a module whose
/// name is the key or ends with `.key` (PEFT: `re.match(rf"(.*\.)?({key})$", name)`, keys
/// taken literally here).
fn pattern_value(patterns: &serde_json::Value, module: &str) -> Option<f64> {
    patterns
        .as_object()?
        .iter()
        .find(|(k, _)| module == k.as_str() || module.ends_with(&format!(".{k}")))
        .and_then(|(_, v)| v.as_f64())
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
        verify(dir, true)?;
        let cfg_path = dir.join("adapter_config.json");
        let ac: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&cfg_path).map_err(|e| Error::file(&cfg_path, e))?)
                .map_err(|e| Error::file(&cfg_path, e))?;
        if ac.get("peft_type").and_then(|v| v.as_str()).is_some_and(|t| t != "LORA") {
            return Err(Error::file(
                &cfg_path,
                format!("peft_type {} is not supported (hint: loralab loads LoRA adapters)", ac["peft_type"]),
            ));
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

    /// The modules the file adapts (`model.layers.0.self_attn.q_proj`), from its lora_A keys.
    pub fn modules(&self) -> Vec<String> {
        self.tensors
            .keys()
            .filter_map(|k| {
                k.split_once(".lora_A.").map(|(m, _)| m.strip_prefix("base_model.model.").unwrap_or(m).to_string())
            })
            .collect()
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
                return Err(Error::file(
                    &cfg_path,
                    format!("rank_pattern gives r={pr} for {module} but its tensors have rank {r}"),
                ));
            }
        }
        Ok(Some((a, b, self.scale(module, r))))
    }

    /// A module's scale at rank `r`: its alpha (alpha_pattern, else lora_alpha) over r, or √r
    /// with rsLoRA.
    pub fn scale(&self, module: &str, r: usize) -> f64 {
        let alpha = pattern_value(&self.config["alpha_pattern"], module).unwrap_or(self.alpha);
        if self.rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }

    /// The file's tensors, by their keys as written.
    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }
}

/// Attach a PEFT LoRA adapter directory to a model (see [`Adapter`]).
pub fn load_adapter(model: &mut Llama, dir: &Path) -> Result<()> {
    let adapter = Adapter::open(dir)?;
    let dtype = model.dtype;
    let mut n = 0;
    for lin in model.linears_mut() {
        let Some((a, b, scale)) = adapter.factors(&lin.name, lin.in_out())? else { continue };
        lin.lora = Some(crate::nn::linear::LoraAdapter {
            a: Var::from_tensor(&a.to_dtype(dtype)?)?,
            b: Var::from_tensor(&b.to_dtype(dtype)?)?,
            scale,
            dropout: 0.0,
        });
        n += 1;
    }
    if n == 0 {
        return Err(Error::file(
            dir.join("adapter_model.safetensors"),
            "no lora_A/lora_B tensor matches a module of this model (hint: is it an adapter for this base model?)",
        ));
    }
    // every adapted module of the file must be one of this model's (a layer it lacks is another base's)
    let known: std::collections::HashSet<String> = model.linears().iter().map(|l| l.name.clone()).collect();
    let mut foreign: Vec<String> = adapter.modules().into_iter().filter(|m| !known.contains(m)).collect();
    if !foreign.is_empty() {
        foreign.sort();
        return Err(Error::file(
            dir.join("adapter_model.safetensors"),
            format!(
                "{} adapted module(s) this model does not have, e.g. {} (hint: an adapter for another base model?)",
                foreign.len(),
                foreign[0]
            ),
        ));
    }
    Ok(())
}

/// Options of [`merge_with`] (JSON from the addon; unknown fields refused).
#[derive(Deserialize, Clone, Debug, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MergeOptions {
    /// The written weights' dtype: bf16, f16 or f32. f32 by default: what merge always wrote.
    pub dtype: String,
}

impl Default for MergeOptions {
    fn default() -> Self {
        Self { dtype: "f32".into() }
    }
}

/// What [`merge_with`] wrote: the weights' dtype, and notes on what the base lacked.
#[derive(Serialize, Clone, Debug, schemars::JsonSchema)]
pub struct Merged {
    pub dtype: String,
    pub notes: Vec<String>,
}

/// Load a base model (HF directory or .gguf), apply a PEFT adapter, fold it in (in f32) and
/// write the merged model as a complete Hugging Face directory (see [`write_model`]), its
/// weights in `opts.dtype`. `loralab merge` calls it.
pub fn merge_with(base: &Path, adapter: &Path, out: &Path, opts: &MergeOptions) -> Result<Merged> {
    let dtype = weight_dtype(&opts.dtype)?;
    check_out_dir(out)?;
    let mut model = load_base(base, DType::F32)?;
    load_adapter(&mut model, adapter)?;
    model.merge_lora()?;
    let notes = write_model_dir(out, &model, &base.join("config.json"), &default_tokenizer(base), dtype)?;
    Ok(Merged { dtype: opts.dtype.clone(), notes })
}

/// [`merge_with`] in f32.
pub fn merge(base: &Path, adapter: &Path, out: &Path) -> Result<()> {
    merge_with(base, adapter, out, &MergeOptions::default()).map(|_| ())
}

/// A llama.cpp GGUF file rather than a Hugging Face directory.
/// A base model from a Hugging Face directory or a llama.cpp .gguf file.
pub fn load_base(path: &Path, dtype: DType) -> Result<Llama> {
    if is_gguf(path) {
        Ok(crate::io::gguf::load_gguf(path, dtype)?.0)
    } else {
        load_model_dir(path, dtype)
    }
}

/// A model to evaluate: a base (HF directory or .gguf) with an optional PEFT adapter, merged
/// into the weights or run beside them, and the path of its tokenizer (`tokenizer` empty: the
/// model's own).
pub fn load_for_eval(
    model: &str,
    adapter: &str,
    merged: bool,
    tokenizer: &str,
    dtype: DType,
) -> Result<(Llama, PathBuf)> {
    let path = Path::new(model);
    if !is_gguf(path) && !path.join("config.json").is_file() {
        return Err(Error::config(
            "model",
            format!("{}: no config.json (hint: a Hugging Face model directory or a .gguf file)", path.display()),
        ));
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
