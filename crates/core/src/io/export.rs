//! Exports users deploy (`loralab export`): a model (a full fine-tune's output, a base, or an
//! adapter merged into its base) as a Hugging Face directory in bf16/f16/f32 or as a llama.cpp
//! GGUF file (f32, f16, bf16, Q8_0); a LoRA adapter as a GGUF LoRA (`llama-cli --lora`) or as
//! a PEFT directory with the fields vLLM's `PEFTHelper` reads. The GGUF side follows the
//! spec (github.com/ggml-org/ggml/blob/master/docs/gguf.md) and llama.cpp's own converters:
//! tensor names as [`gguf::gguf_name`], llama's q/k rows permuted, 1-D tensors in F32, the
//! tokenizer as `tokenizer.ggml.*` metadata, Llama-3 rope scaling as `rope_freqs.weight`.
use crate::base::error::{Error, Result};
use crate::base::formats::{default_tokenizer, is_gguf};
use crate::io::checkpoint::{self, load_adapter, load_base, read_json, weight_dtype, write_json};
use crate::io::gguf;
use crate::model::{Llama, LlamaConfig};
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What to write (JSON from the addon; unknown fields refused).
#[derive(Deserialize, Clone, Debug, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ExportOptions {
    /// `hf` (a Hugging Face model directory), `gguf` (one llama.cpp file), `gguf-lora` (a LoRA
    /// adapter for `llama-cli --lora`), `vllm` (a PEFT adapter directory for vLLM).
    pub format: String,
    /// hf, vllm: bf16, f16 or f32 (default f32 for hf, bf16 for vllm); gguf: f32, f16, bf16 or
    /// q8_0 (default f16); gguf-lora: f32 or f16 (default f16).
    pub dtype: String,
    /// The base model (HF directory or .gguf) an adapter applies to: needed to merge it (hf,
    /// gguf) and for a GGUF LoRA's architecture and head counts.
    pub base: String,
    /// The Hub id (`org/name` or `org/name@sha`) of the base (an adapter's) or of the model
    /// itself (an unmodified Hub model): a vLLM adapter's `base_model_name_or_path`, and a GGUF
    /// model's `general.source.huggingface.repository`, so an adapter later trained on that
    /// GGUF names the Hugging Face repo PEFT can load.
    pub base_source: String,
}

/// What [`export`] wrote.
#[derive(Serialize, Clone, Debug, schemars::JsonSchema)]
pub struct Exported {
    pub path: String,
    pub format: String,
    pub dtype: String,
    /// The GGUF tensor types written, by count (gguf, gguf-lora).
    pub tensor_types: HashMap<String, usize>,
    /// What the user should know: what the source lacked, how to load the result.
    pub notes: Vec<String>,
}

fn is_adapter(p: &Path) -> bool {
    p.join("adapter_config.json").is_file()
}

/// Export `src` (a model: HF directory or .gguf; or a PEFT adapter directory) to `out`.
pub fn export(src: &Path, out: &Path, opts: &ExportOptions) -> Result<Exported> {
    let adapter = is_adapter(src);
    if !adapter && !is_gguf(src) && !src.join("config.json").is_file() {
        return Err(Error::config(
            "export",
            format!("{}: neither a model (config.json, or a .gguf) nor a PEFT adapter (adapter_config.json) (hint: a run's output/ directory, a model directory, or an adapter directory)", src.display()),
        ));
    }
    // the output never replaces the source, nor anything of the user's (checkpoint::check_out_dir)
    checkpoint::sibling(out, "")?;
    let same = |a: &Path, b: &Path| matches!((std::fs::canonicalize(a), std::fs::canonicalize(b)), (Ok(x), Ok(y)) if y.starts_with(&x));
    if same(out, src) {
        return Err(Error::config(
            "out",
            format!("{} is (or holds) the source {} (hint: a new name)", out.display(), src.display()),
        ));
    }
    if opts.format.starts_with("gguf") {
        if out.extension().is_none_or(|e| e != "gguf") || out.is_dir() {
            return Err(Error::config(
                "out",
                format!(
                    "{}: a GGUF export is one file named *.gguf (hint: e.g. {}/model.gguf)",
                    out.display(),
                    out.display()
                ),
            ));
        }
    } else {
        checkpoint::check_out_dir(out)?;
    }
    let base = Path::new(&opts.base);
    if adapter && opts.base.is_empty() && opts.format != "vllm" {
        return Err(Error::config(
            "export",
            format!(
                "{}: an adapter needs its base model for `{}` (hint: --base DIR|FILE.gguf|org/name)",
                src.display(),
                opts.format
            ),
        ));
    }
    let dtype_or = |d: &str| if opts.dtype.is_empty() { d.to_string() } else { opts.dtype.to_lowercase() };
    // the model a full export writes: the source, or the adapter merged into its base (in f32)
    let model = |tokenizer: &mut PathBuf, hf_config: &mut PathBuf| -> Result<Llama> {
        let from = if adapter { base } else { src };
        *tokenizer = default_tokenizer(from);
        *hf_config = from.join("config.json");
        let mut m = load_base(from, DType::F32)?;
        if adapter {
            load_adapter(&mut m, src)?;
            m.merge_lora()?;
        }
        Ok(m)
    };
    let (mut tokenizer, mut hf_config) = (PathBuf::new(), PathBuf::new());
    let (dtype, types, notes) = match opts.format.as_str() {
        "hf" => {
            let dtype = dtype_or("f32");
            let m = model(&mut tokenizer, &mut hf_config)?;
            let notes = checkpoint::write_model_dir(out, &m, &hf_config, &tokenizer, weight_dtype(&dtype)?)?;
            (dtype, HashMap::new(), notes)
        }
        "gguf" => {
            let dtype = dtype_or("f16");
            let ty = gguf_type(&dtype, &["f32", "f16", "bf16", "q8_0"])?;
            let m = model(&mut tokenizer, &mut hf_config)?;
            let name = src.file_stem().and_then(|n| n.to_str()).unwrap_or("model").to_string();
            // the source repo: what a GGUF source says of itself, or an unmodified Hub model's
            let own = (!adapter && is_gguf(src)).then(|| checkpoint::gguf_source_repo(src)).flatten();
            let given = if adapter || opts.base_source.contains(".gguf") {
                ""
            } else {
                opts.base_source.split('@').next().unwrap_or_default()
            };
            let source = own.unwrap_or_else(|| given.to_string());
            let (types, notes) = write_model_gguf(out, &m, &tokenizer, ty, &name, &source)?;
            (dtype, types, notes)
        }
        "gguf-lora" => {
            if !adapter {
                return Err(Error::config(
                    "export",
                    format!(
                        "{}: `gguf-lora` exports a LoRA adapter, and this is a model (hint: format gguf for a model)",
                        src.display()
                    ),
                ));
            }
            let dtype = dtype_or("f16");
            let ty = gguf_type(&dtype, &["f32", "f16"])?;
            let mut m = load_base(base, DType::F32)?;
            load_adapter(&mut m, src)?;
            let (types, notes) = write_lora_gguf(out, &m, ty)?;
            (dtype, types, notes)
        }
        "vllm" => {
            if !adapter {
                return Err(Error::config("export", format!("{}: `vllm` exports a LoRA adapter, and this is a model (vLLM serves a full model from its Hugging Face directory: format hf)", src.display())));
            }
            let dtype = dtype_or("bf16");
            // a GGUF is no base vLLM loads: the repo its metadata says it came from, if any
            let source = if opts.base_source.contains(".gguf") { "" } else { opts.base_source.as_str() };
            let from_gguf = (source.is_empty() && is_gguf(base)).then(|| checkpoint::gguf_source_repo(base)).flatten();
            let notes = write_vllm_adapter(src, out, weight_dtype(&dtype)?, from_gguf.as_deref().unwrap_or(source))?;
            (dtype, HashMap::new(), notes)
        }
        other => {
            return Err(Error::config(
                "export",
                format!("format `{other}` is not one loralab writes (hint: hf, gguf, gguf-lora or vllm)"),
            ))
        }
    };
    Ok(Exported { path: out.display().to_string(), format: opts.format.clone(), dtype, tensor_types: types, notes })
}

fn gguf_type(name: &str, allowed: &[&str]) -> Result<GgmlDType> {
    if !allowed.contains(&name) {
        return Err(Error::config(
            "dtype",
            format!("`{name}` is not a type this GGUF export writes (hint: {})", allowed.join(", ")),
        ));
    }
    Ok(match name {
        "f32" => GgmlDType::F32,
        "f16" => GgmlDType::F16,
        "bf16" => GgmlDType::BF16,
        _ => GgmlDType::Q8_0,
    })
}

/// llama.cpp's `general.file_type` (LLAMA_FTYPE_*): ALL_F32 0, MOSTLY_F16 1, MOSTLY_Q8_0 7,
/// MOSTLY_BF16 32.
fn file_type(ty: GgmlDType) -> u32 {
    match ty {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q8_0 => 7,
        _ => 32,
    }
}

fn type_name(ty: GgmlDType) -> &'static str {
    match ty {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q8_0 => "Q8_0",
        _ => "other",
    }
}

/// llama.cpp's architecture name for a config: mistral is llama there.
fn arch(cfg: &LlamaConfig) -> Result<&'static str> {
    match cfg.model_type.as_str() {
        "llama" | "mistral" => Ok("llama"),
        "qwen2" => Ok("qwen2"),
        other => Err(Error::config(
            "export",
            format!("model_type `{other}` has no GGUF architecture here (hint: llama, mistral, qwen2)"),
        )),
    }
}

/// GGUF key-value pairs, in the order written.
type Metadata = Vec<(String, Value)>;

fn u32v(n: usize) -> Value {
    Value::U32(n as u32)
}

/// A tensor as GGUF stores it: 1-D tensors (norms, biases) and `rope_freqs` in F32, as
/// llama.cpp's converter writes them; 2-D in `ty`, falling back to F16 for Q8_0 when a row is
/// not a whole number of 32-value blocks.
fn qtensor(t: &Tensor, ty: GgmlDType, types: &mut HashMap<String, usize>) -> Result<QTensor> {
    let t = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.contiguous()?;
    let mut ty = if t.rank() < 2 { GgmlDType::F32 } else { ty };
    if ty == GgmlDType::Q8_0 && t.dims()[t.rank() - 1] % 32 != 0 {
        ty = GgmlDType::F16;
    }
    *types.entry(type_name(ty).to_string()).or_default() += 1;
    Ok(QTensor::quantize(&t, ty)?)
}

/// Write tensors and metadata to `path` atomically (a `.tmp` beside it, renamed).
fn write_gguf(path: &Path, metadata: &[(String, Value)], tensors: &[(String, QTensor)]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    }
    let tmp = checkpoint::sibling(path, ".tmp")?;
    let written = (|| -> Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| Error::file(&tmp, e))?);
        let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        candle_core::quantized::gguf_file::write(&mut f, &md, &ts).map_err(|e| Error::file(&tmp, e))?;
        use std::io::Write;
        f.flush().map_err(|e| Error::file(&tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| Error::file(path, e))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp); // nothing half-written is left beside the output
    }
    written
}

/// The architecture's hyperparameters as llama.cpp's loader reads them (counts u32, floats f32).
fn arch_metadata(cfg: &LlamaConfig, a: &str) -> Result<Vec<(String, Value)>> {
    let k = |s: &str| format!("{a}.{s}");
    let mut md = vec![
        (k("context_length"), u32v(cfg.max_position_embeddings)),
        (k("embedding_length"), u32v(cfg.hidden_size)),
        (k("block_count"), u32v(cfg.num_hidden_layers)),
        (k("feed_forward_length"), u32v(cfg.intermediate_size)),
        (k("attention.head_count"), u32v(cfg.num_attention_heads)),
        (k("attention.head_count_kv"), u32v(cfg.kv_heads())),
        (k("attention.layer_norm_rms_epsilon"), Value::F32(cfg.rms_norm_eps as f32)),
        (k("rope.freq_base"), Value::F32(cfg.rope_theta as f32)),
        (k("rope.dimension_count"), u32v(cfg.head_dim())),
        (k("vocab_size"), u32v(cfg.vocab_size)),
    ];
    if cfg.head_dim() * cfg.num_attention_heads != cfg.hidden_size {
        md.push((k("attention.key_length"), u32v(cfg.head_dim())));
        md.push((k("attention.value_length"), u32v(cfg.head_dim())));
    }
    match &cfg.rope_scaling {
        None => {}
        Some(r) if r.rope_type == "linear" => {
            md.push((k("rope.scaling.type"), Value::String("linear".into())));
            md.push((k("rope.scaling.factor"), Value::F32(r.factor as f32)));
        }
        // rope_freqs.weight: llama.cpp's llama loader reads it; its qwen2 loader does not
        Some(r) if r.rope_type == "llama3" && a == "llama" => {}
        Some(r) => {
            return Err(Error::config(
                "export",
                format!("rope scaling `{}` cannot be written to GGUF here (hint: linear and llama3 are)", r.rope_type),
            ))
        }
    }
    Ok(md)
}

/// A model as one GGUF file: metadata (architecture, hyperparameters, tokenizer), every
/// weight in llama.cpp's names and layout. Returns the tensor types written and notes.
pub fn write_model_gguf(
    path: &Path,
    model: &Llama,
    tokenizer: &Path,
    ty: GgmlDType,
    name: &str,
    source_repo: &str,
) -> Result<(HashMap<String, usize>, Vec<String>)> {
    let cfg = &model.cfg;
    let a = arch(cfg)?;
    let mut md = vec![
        ("general.architecture".to_string(), Value::String(a.into())),
        ("general.name".to_string(), Value::String(name.into())),
        ("general.file_type".to_string(), Value::U32(file_type(ty))),
        ("general.quantization_version".to_string(), Value::U32(2)),
    ];
    if !source_repo.is_empty() {
        md.push(("general.source.huggingface.repository".into(), Value::String(source_repo.into())));
    }
    md.extend(arch_metadata(cfg, a)?);
    let (tok_md, notes) = tokenizer_metadata(tokenizer, cfg)?;
    md.extend(tok_md);
    let mut types = HashMap::new();
    let mut tensors = Vec::new();
    for (hf, w) in model.named_weights() {
        let g = gguf::gguf_name(&hf).ok_or_else(|| Error::config("export", format!("tensor {hf} has no GGUF name")))?;
        let t = gguf::to_gguf_layout(&g, w.tensor(), cfg)?;
        tensors.push((g, qtensor(&t, ty, &mut types)?));
    }
    if cfg.rope_scaling.as_ref().is_some_and(|r| r.rope_type == "llama3") {
        // llama.cpp's per-frequency divisors: the unscaled frequency over the scaled one
        let plain = LlamaConfig { rope_scaling: None, ..cfg.clone() }.inv_freq()?;
        let scaled = cfg.inv_freq()?;
        let f: Vec<f32> = plain.iter().zip(&scaled).map(|(p, s)| (p / s) as f32).collect();
        let n = f.len();
        tensors.push(("rope_freqs.weight".into(), qtensor(&Tensor::from_vec(f, n, &Device::Cpu)?, ty, &mut types)?));
    }
    write_gguf(path, &md, &tensors)?;
    Ok((types, notes))
}

/// A LoRA adapter as llama.cpp's GGUF LoRA (what its convert_lora_to_gguf.py writes):
/// `general.type` adapter, `adapter.type` lora, `adapter.lora.alpha`, and per module
/// `<gguf name>.lora_a` (r × in) and `.lora_b` (out × r), B's rows permuted for llama's q/k.
/// llama.cpp scales each pair by alpha / r; when every module has one scale s and one rank
/// r, alpha = s·r (rsLoRA included). Otherwise (rank_pattern, alpha_pattern) each B carries
/// its own scale and alpha is 0, which llama.cpp reads as "scale 1".
pub fn write_lora_gguf(path: &Path, model: &Llama, ty: GgmlDType) -> Result<(HashMap<String, usize>, Vec<String>)> {
    let cfg = &model.cfg;
    let a = arch(cfg)?;
    let pairs: Vec<_> =
        model.linears().into_iter().filter_map(|l| l.lora.as_ref().map(|lo| (l.name.clone(), lo))).collect();
    if pairs.is_empty() {
        return Err(Error::config(
            "export",
            "the adapter touches no module of the base (hint: is it this base's adapter?)",
        ));
    }
    let (r0, s0) = (pairs[0].1.a.as_tensor().dim(0)?, pairs[0].1.scale);
    let uniform =
        pairs.iter().all(|(_, l)| l.a.as_tensor().dim(0).ok() == Some(r0) && (l.scale - s0).abs() <= 1e-12 * s0.abs());
    let alpha = if uniform { s0 * r0 as f64 } else { 0.0 };
    let md = vec![
        ("general.architecture".to_string(), Value::String(a.into())),
        ("general.type".to_string(), Value::String("adapter".into())),
        (
            "general.name".to_string(),
            Value::String(path.file_stem().and_then(|n| n.to_str()).unwrap_or("adapter").into()),
        ),
        ("general.file_type".to_string(), Value::U32(file_type(ty))),
        ("adapter.type".to_string(), Value::String("lora".into())),
        ("adapter.lora.alpha".to_string(), Value::F32(alpha as f32)),
    ];
    let mut types = HashMap::new();
    let mut tensors = Vec::new();
    for (module, lora) in &pairs {
        let g = gguf::gguf_name(&format!("{module}.weight"))
            .ok_or_else(|| Error::config("export", format!("{module} has no GGUF name")))?;
        let mut b = gguf::to_gguf_layout(&g, lora.b.as_tensor(), cfg)?;
        if !uniform {
            b = (b * lora.scale)?;
        }
        tensors.push((format!("{g}.lora_a"), qtensor(lora.a.as_tensor(), ty, &mut types)?));
        tensors.push((format!("{g}.lora_b"), qtensor(&b, ty, &mut types)?));
    }
    write_gguf(path, &md, &tensors)?;
    let mut notes = vec![format!(
        "llama.cpp: llama-cli -m BASE.gguf --lora {} (BASE.gguf: the same base as GGUF, e.g. `loralab export BASE --format gguf`)",
        path.display()
    )];
    if !uniform {
        notes.push("modules differ in rank or scale: each lora_b carries its module's scale and adapter.lora.alpha is 0 (llama.cpp then applies scale 1)".into());
    }
    Ok((types, notes))
}

// ------------------------------------------------------------------ tokenizer metadata

/// `tokenizer.ggml.*` for a GGUF model. From a .gguf tokenizer: its own keys, copied. From a
/// Hugging Face tokenizer.json: byte-level BPE only (`gpt2` in llama.cpp's words), with its
/// pre-tokenizer named by the table [`gguf::pre_tokenizer`] (matched by its JSON); tokens by
/// id, padded to the config's vocabulary with `[PADn]` (unused); added special tokens
/// control (3), other added tokens user-defined (4); merges as "a b"; BOS/EOS/UNK/PAD ids;
/// add_bos_token from the post-processor; the chat template. SentencePiece tokenizers need
/// piece scores that tokenizer.json does not keep, and are refused with a hint.
fn tokenizer_metadata(tokenizer: &Path, cfg: &LlamaConfig) -> Result<(Metadata, Vec<String>)> {
    let mut notes = Vec::new();
    if is_gguf(tokenizer) {
        let md = gguf::metadata(tokenizer)?;
        let mut keys: Vec<_> = md.keys().filter(|k| k.starts_with("tokenizer.")).cloned().collect();
        keys.sort();
        return Ok((
            keys.into_iter()
                .map(|k| {
                    let v = md[&k].clone();
                    (k, v)
                })
                .collect(),
            notes,
        ));
    }
    let tj = read_json(tokenizer)?;
    let model = &tj["model"];
    let bad = |msg: String| Error::file(tokenizer, msg);
    if model["type"] != "BPE" {
        return Err(bad(format!("a {} tokenizer cannot be written to GGUF here (hint: byte-level BPE tokenizers are: SmolLM2, Llama 3, Qwen2; convert others with llama.cpp's convert_hf_to_gguf.py)", model["type"])));
    }
    let pre = &tj["pre_tokenizer"];
    let normalizer = &tj["normalizer"];
    let names = ["gpt-2", "smollm", "llama-bpe", "qwen2"];
    let pre_name = names
        .iter()
        .find(|n| gguf::pre_tokenizer(n).is_some_and(|(p, nz)| &p == pre && (&nz == normalizer || (nz.is_null() && normalizer.is_null()))))
        .ok_or_else(|| {
            let sp = model["byte_fallback"] == true;
            bad(if sp {
                "a SentencePiece-style tokenizer (byte_fallback): GGUF keeps its piece scores, which tokenizer.json does not have (hint: convert with llama.cpp's convert_hf_to_gguf.py, which reads tokenizer.model, or train from a GGUF base, whose tokenizer is copied)".into()
            } else {
                format!("its pre-tokenizer is none whose llama.cpp name is known here (hint: known: {}; or convert with llama.cpp's convert_hf_to_gguf.py)", names.join(", "))
            })
        })?;
    let vocab = model["vocab"].as_object().ok_or_else(|| bad("model.vocab is not an object".into()))?;
    let mut by_id: Vec<Option<(String, i32)>> = Vec::new();
    let mut put = |id: usize, tok: &str, ty: i32| {
        if by_id.len() <= id {
            by_id.resize(id + 1, None);
        }
        by_id[id] = Some((tok.to_string(), ty));
    };
    let in_vocab = |id: u64, tok: &str| -> Result<usize> {
        if id as usize >= cfg.vocab_size {
            return Err(bad(format!("token {tok:?} has id {id}, beyond the model's vocab_size {}", cfg.vocab_size)));
        }
        Ok(id as usize)
    };
    for (tok, id) in vocab {
        let id = id.as_u64().ok_or_else(|| bad(format!("vocab id of {tok:?} is not a number")))?;
        put(in_vocab(id, tok)?, tok, 1);
    }
    let added = tj["added_tokens"].as_array().cloned().unwrap_or_default();
    for t in &added {
        let (Some(id), Some(content)) = (t["id"].as_u64(), t["content"].as_str()) else { continue };
        // control: special tokens, and <|…|> ones marked otherwise (as llama.cpp's converter does)
        let control = t["special"] == true || (content.starts_with("<|") && content.ends_with("|>"));
        put(in_vocab(id, content)?, content, if control { 3 } else { 4 });
    }
    by_id.resize(cfg.vocab_size, None);
    let (mut tokens, mut types) = (Vec::new(), Vec::new());
    let mut padded = 0;
    for (i, t) in by_id.into_iter().enumerate() {
        let (tok, ty) = t.unwrap_or_else(|| {
            padded += 1;
            (format!("[PAD{i}]"), 5)
        });
        tokens.push(Value::String(tok));
        types.push(Value::I32(ty));
    }
    if padded > 0 {
        notes.push(format!("{padded} embedding rows have no token: written as [PADn], unused"));
    }
    let merges: Vec<Value> = model["merges"]
        .as_array()
        .ok_or_else(|| bad("model.merges is missing".into()))?
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => Ok(Value::String(s.clone())),
            serde_json::Value::Array(p) if p.len() == 2 => Ok(Value::String(format!(
                "{} {}",
                p[0].as_str().unwrap_or_default(),
                p[1].as_str().unwrap_or_default()
            ))),
            other => Err(bad(format!("merge {other} is neither \"a b\" nor [a, b]"))),
        })
        .collect::<Result<_>>()?;
    if merges.is_empty() {
        return Err(bad("a BPE tokenizer without merges (hint: is model.merges empty?)".into()));
    }
    let mut md = vec![
        ("tokenizer.ggml.model".to_string(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".to_string(), Value::String((*pre_name).into())),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".to_string(), Value::Array(types)),
        ("tokenizer.ggml.merges".to_string(), Value::Array(merges)),
    ];
    // special tokens: tokenizer_config.json's names, else config.json's ids
    let tc_path = tokenizer.with_file_name("tokenizer_config.json");
    let tc = if tc_path.is_file() { read_json(&tc_path)? } else { serde_json::json!({}) };
    let id_of = |field: &str| -> Option<u32> {
        let v = &tc[field];
        let text = v.as_str().or_else(|| v["content"].as_str())?;
        vocab
            .get(text)
            .and_then(|i| i.as_u64())
            .or_else(|| added.iter().find(|t| t["content"] == text).and_then(|t| t["id"].as_u64()))
            .map(|i| i as u32)
    };
    let first = |v: &Option<serde_json::Value>| match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|i| i as u32),
        Some(serde_json::Value::Array(a)) => a.first().and_then(|i| i.as_u64()).map(|i| i as u32),
        _ => None,
    };
    for (key, id) in [
        ("bos", id_of("bos_token").or_else(|| first(&cfg.bos_token_id))),
        ("eos", id_of("eos_token").or_else(|| first(&cfg.eos_token_id))),
        ("unknown", id_of("unk_token")),
        ("padding", id_of("pad_token")),
    ] {
        if let Some(id) = id {
            md.push((format!("tokenizer.ggml.{key}_token_id"), Value::U32(id)));
        }
    }
    // BOS: what the post-processor adds (a TemplateProcessing, alone or in a Sequence, as Llama 3
    // has it) wins, as in llama.cpp's converter; else tokenizer_config's flag; else nothing is
    // written and llama.cpp keeps its default for the pre-tokenizer
    let post = &tj["post_processor"];
    let template = if post["type"] == "Sequence" {
        post["processors"].as_array().and_then(|ps| ps.iter().find(|p| p["type"] == "TemplateProcessing")).cloned()
    } else {
        (post["type"] == "TemplateProcessing").then(|| post.clone())
    };
    let add_bos = match template {
        Some(t) => {
            Some(t["single"].as_array().and_then(|s| s.first()).is_some_and(|f| f.get("SpecialToken").is_some()))
        }
        None => tc["add_bos_token"].as_bool(),
    };
    if let Some(b) = add_bos {
        md.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(b)));
    }
    let jinja = tokenizer.with_file_name("chat_template.jinja");
    let template = match &tc["chat_template"] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(named) => {
            // the others as tokenizer.chat_template.<name>, as llama.cpp reads them
            for t in named.iter().filter(|t| t["name"] != "default") {
                if let (Some(n), Some(body)) = (t["name"].as_str(), t["template"].as_str()) {
                    md.push((format!("tokenizer.chat_template.{n}"), Value::String(body.into())));
                }
            }
            named.iter().find(|t| t["name"] == "default").and_then(|t| t["template"].as_str()).map(String::from)
        }
        _ => std::fs::read_to_string(&jinja).ok(),
    };
    match template {
        Some(t) => md.push(("tokenizer.chat_template".into(), Value::String(t))),
        None => notes.push("the source has no chat template, so neither has the GGUF".into()),
    }
    Ok((md, notes))
}

// ------------------------------------------------------------------ vLLM

/// vLLM's largest --max-lora-rank (vllm/config: possible_max_ranks).
const VLLM_RANKS: [u64; 9] = [1, 8, 16, 32, 64, 128, 256, 320, 512];

/// A PEFT adapter directory for vLLM: adapter_model.safetensors in `dtype` and an
/// adapter_config.json with every field vLLM's PEFTHelper reads stated (r, lora_alpha,
/// target_modules as a list, bias "none", use_rslora, use_dora false, modules_to_save null,
/// fan_in_fan_out false) and the base by Hub id. What vLLM refuses (DoRA, biases, extra
/// trained modules, a rank above 512) is refused here first.
fn write_vllm_adapter(src: &Path, out: &Path, dtype: DType, base_source: &str) -> Result<Vec<String>> {
    let cfg_path = src.join("adapter_config.json");
    let mut ac = read_json(&cfg_path)?;
    // read with the same checks as loading it here: LoRA only, no DoRA, biases, modules_to_save, ...
    let adapter = checkpoint::Adapter::open(src)?;
    let file = src.join("adapter_model.safetensors");
    // PEFT's `.default` adapter name is not in the keys vLLM parses
    let mut map: HashMap<String, Tensor> =
        adapter.tensors().iter().map(|(k, t)| (k.replace(".default.weight", ".weight"), t.clone())).collect();
    if !map.keys().any(|k| k.contains(".lora_A.")) {
        return Err(Error::file(&file, "no lora_A/lora_B tensors (hint: an empty or foreign adapter)"));
    }
    // vLLM scales every module by one lora_alpha / r: per-module patterns (which it ignores)
    // are folded into each B, the adapter then scaled by 1 (lora_alpha = r, no rsLoRA)
    let patterned = ["alpha_pattern", "rank_pattern"].iter().any(|k| ac[*k].as_object().is_some_and(|o| !o.is_empty()));
    let mut r = ac["r"].as_u64().ok_or_else(|| Error::file(&cfg_path, "no integer `r`"))?;
    let mut notes = Vec::new();
    if patterned {
        let keys: Vec<String> = map.keys().filter(|k| k.contains(".lora_B.")).cloned().collect();
        let mut max_r = 0u64;
        for kb in keys {
            let ka = kb.replace(".lora_B.", ".lora_A.");
            let rank = map.get(&ka).ok_or_else(|| Error::file(&file, format!("{kb} has no lora_A")))?.dim(0)?;
            max_r = max_r.max(rank as u64);
            let scale = adapter.scale(kb.split(".lora_B.").next().unwrap_or_default(), rank);
            let b = map[&kb].to_dtype(DType::F64)?;
            map.insert(kb, (b * scale)?);
        }
        r = max_r;
        ac["r"] = serde_json::json!(r);
        ac["lora_alpha"] = serde_json::json!(r);
        ac["use_rslora"] = serde_json::json!(false);
        ac["alpha_pattern"] = serde_json::json!({});
        ac["rank_pattern"] = serde_json::json!({});
        notes.push(format!("per-module alpha/rank patterns folded into each lora_B (vLLM reads one lora_alpha / r): r = {r}, lora_alpha = {r}"));
    }
    if r > 512 {
        return Err(Error::file(&cfg_path, format!("r = {r}: vLLM serves ranks up to 512")));
    }
    let max_rank = VLLM_RANKS.iter().find(|&&m| m >= r).copied().unwrap_or(512);
    let named = ac["base_model_name_or_path"].as_str().unwrap_or_default().to_string();
    let hub_like = |s: &str| {
        let parts: Vec<&str> = s.split('/').collect();
        parts.len() == 2
            && parts.iter().all(|p| !p.is_empty() && !p.starts_with('.'))
            && !s.ends_with(".gguf")
            && !Path::new(s).exists()
    };
    if !base_source.is_empty() {
        let (repo, rev) = base_source.split_once('@').unwrap_or((base_source, ""));
        ac["base_model_name_or_path"] = serde_json::json!(repo);
        ac["revision"] = if rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()) {
            serde_json::json!(rev)
        } else {
            serde_json::Value::Null
        };
    } else if !hub_like(&named) {
        notes.push(format!("base_model_name_or_path is `{named}`, not a Hub id: vLLM takes the base from its own --model, so serve the same base (hint: --base-source org/name records it)"));
    }
    // a list, or PEFT's regex string, as it is
    if !(ac["target_modules"].is_array() || ac["target_modules"].is_string()) {
        return Err(Error::file(&cfg_path, "no `target_modules`"));
    }
    for (k, v) in [
        ("peft_type", serde_json::json!("LORA")),
        ("task_type", serde_json::json!("CAUSAL_LM")),
        ("bias", serde_json::json!("none")),
        ("use_dora", serde_json::json!(false)),
        ("modules_to_save", serde_json::Value::Null),
        ("fan_in_fan_out", serde_json::json!(false)),
        ("use_rslora", serde_json::json!(ac["use_rslora"].as_bool().unwrap_or(false))),
        ("inference_mode", serde_json::json!(true)),
    ] {
        ac[k] = v;
    }
    let tmp = checkpoint::sibling(out, ".tmp")?;
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::file(&tmp, e))?;
    let written = (|| -> Result<()> {
        let mut typed = HashMap::new();
        for (k, t) in &map {
            typed.insert(k.clone(), t.to_dtype(dtype)?);
        }
        checkpoint::save_map(&typed, &tmp.join("adapter_model.safetensors"))?;
        write_json(&tmp.join("adapter_config.json"), &ac)?;
        checkpoint::publish(&tmp, out)
    })();
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written?;
    notes.push(format!(
        "vLLM: vllm serve {} --enable-lora --max-lora-rank {max_rank} --lora-modules adapter={}",
        ac["base_model_name_or_path"].as_str().unwrap_or("BASE"),
        out.display()
    ));
    Ok(notes)
}
