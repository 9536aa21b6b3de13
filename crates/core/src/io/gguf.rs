//! GGUF (llama.cpp's format) checkpoints as base models: metadata → LlamaConfig, every
//! tensor dequantized to f32 (candle's GGUF reader and dequantizers: F32, F16, BF16, Q8_0,
//! Q4_0, Q4_1, Q4_K, Q5_K, Q6_K, ...) and renamed to Hugging Face keys. llama.cpp's
//! converter permutes the rows of q/k projections for the llama architecture (not qwen2);
//! that is undone here, so the model is in HF layout and its adapters load against the HF
//! original. Called by checkpoint::load_model.
use crate::base::error::{Error, Result};
use crate::model::{Llama, LlamaConfig};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

const SUPPORTED: [&str; 2] = ["llama", "qwen2"];

fn num(v: &Value) -> Option<f64> {
    Some(match v {
        Value::U8(x) => *x as f64,
        Value::I8(x) => *x as f64,
        Value::U16(x) => *x as f64,
        Value::I16(x) => *x as f64,
        Value::U32(x) => *x as f64,
        Value::I32(x) => *x as f64,
        Value::U64(x) => *x as f64,
        Value::I64(x) => *x as f64,
        Value::F32(x) => *x as f64,
        Value::F64(x) => *x,
        _ => return None,
    })
}

/// The model's config from GGUF metadata, in config.json terms.
pub fn config_from_metadata(md: &HashMap<String, Value>, path: &Path, tied: bool) -> Result<LlamaConfig> {
    if md.get("general.type").and_then(|v| v.to_string().ok()).is_some_and(|t| t == "adapter") {
        return Err(Error::file(
            path,
            "a GGUF LoRA adapter, not a model (hint: llama.cpp applies it with --lora over its base; loralab takes the PEFT adapter directory it was exported from)",
        ));
    }
    let arch = md.get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    if !SUPPORTED.contains(&arch.as_str()) {
        return Err(Error::file(
            path,
            format!(
                "general.architecture `{arch}` is not supported (hint: loralab trains the Llama family: {SUPPORTED:?})"
            ),
        ));
    }
    let get = |k: &str| md.get(&format!("{arch}.{k}")).and_then(num);
    let need = |k: &str| get(k).ok_or_else(|| Error::file(path, format!("GGUF metadata lacks {arch}.{k}")));
    let vocab = get("vocab_size")
        .or_else(|| md.get("tokenizer.ggml.tokens").and_then(|v| v.to_vec().ok()).map(|t| t.len() as f64))
        .ok_or_else(|| Error::file(path, "GGUF metadata gives no vocabulary size"))?;
    let heads = need("attention.head_count")?;
    let mut cfg = serde_json::json!({
        "architectures": [if arch == "qwen2" { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
        "model_type": arch,
        "vocab_size": vocab as usize,
        "hidden_size": need("embedding_length")? as usize,
        "intermediate_size": need("feed_forward_length")? as usize,
        "num_hidden_layers": need("block_count")? as usize,
        "num_attention_heads": heads as usize,
        "num_key_value_heads": get("attention.head_count_kv").unwrap_or(heads) as usize,
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
        "rope_theta": get("rope.freq_base").unwrap_or(10_000.0),
        "max_position_embeddings": get("context_length").unwrap_or(2048.0) as usize,
        "tie_word_embeddings": tied,
        "bos_token_id": md.get("tokenizer.ggml.bos_token_id").and_then(num).map(|v| v as u64),
        "eos_token_id": md.get("tokenizer.ggml.eos_token_id").and_then(num).map(|v| v as u64),
    });
    if let Some(kd) = get("attention.key_length") {
        cfg["head_dim"] = serde_json::json!(kd as usize);
    }
    if let Some(Value::String(kind)) = md.get(&format!("{arch}.rope.scaling.type")) {
        if kind == "linear" {
            cfg["rope_scaling"] =
                serde_json::json!({"rope_type": "linear", "factor": get("rope.scaling.factor").unwrap_or(1.0)});
        } else if kind != "none" {
            return Err(Error::file(path, format!("rope scaling `{kind}` in GGUF is not supported yet")));
        }
    }
    serde_json::from_value(cfg).map_err(|e| Error::file(path, format!("GGUF metadata: {e}")))
}

/// llama.cpp's tensor names and Hugging Face's, one table for both directions: the whole-model
/// tensors, then a block's modules (`blk.N.<gguf>` ↔ `model.layers.N.<hf>`).
const TOP: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];
const BLOCK: [(&str, &str); 9] = [
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// One direction of the table: `name` under `from_prefix`, renamed to `to_prefix`.
fn rename(name: &str, from_prefix: &str, to_prefix: &str, gguf_to_hf: bool) -> Option<String> {
    let pick = |(g, h): &(&'static str, &'static str)| if gguf_to_hf { (*g, *h) } else { (*h, *g) };
    if let Some((_, to)) = TOP.iter().map(pick).find(|(from, _)| *from == name) {
        return Some(to.to_string());
    }
    let rest = name.strip_prefix(from_prefix)?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let (_, to) = BLOCK.iter().map(pick).find(|(from, _)| *from == module)?;
    Some(format!("{to_prefix}{layer}.{to}.{kind}"))
}

/// GGUF tensor name -> Hugging Face key.
pub fn hf_name(gguf: &str) -> Option<String> {
    rename(gguf, "blk.", "model.layers.", true)
}

/// Hugging Face key -> GGUF tensor name (the inverse of [`hf_name`]).
pub fn gguf_name(hf: &str) -> Option<String> {
    rename(hf, "model.layers.", "blk.", false)
}

/// llama.cpp's q/k row permutation (what its converter stores for the llama architecture):
/// W.reshape(h, 2, d/2, in).swapaxes(1, 2); [`unpermute`] undoes it.
pub fn permute(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let dims = w.dims().to_vec();
    let half = dims[0] / heads / 2;
    let mut shape = vec![heads, 2, half];
    shape.extend(&dims[1..]);
    w.reshape(shape)?.transpose(1, 2)?.contiguous()?.reshape(dims)
}

/// A Hugging Face tensor in llama.cpp's layout for `cfg`'s architecture: llama's q/k rows
/// permuted (the inverse of [`to_hf_layout`]).
pub fn to_gguf_layout(gguf_name: &str, t: &Tensor, cfg: &LlamaConfig) -> Result<Tensor> {
    let permuted = cfg.model_type != "qwen2";
    Ok(if permuted && gguf_name.contains(".attn_q.") {
        permute(t, cfg.num_attention_heads)?
    } else if permuted && gguf_name.contains(".attn_k.") {
        permute(t, cfg.kv_heads())?
    } else {
        t.clone()
    })
}

/// Undo llama.cpp's q/k row permutation: it stored W.reshape(h, 2, d/2, in).swapaxes(1, 2).
fn unpermute(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = dims[0];
    let half = rows / heads / 2;
    let rest: Vec<usize> = dims[1..].to_vec();
    let mut shape = vec![heads, half, 2];
    shape.extend(&rest);
    w.reshape(shape)?.transpose(1, 2)?.contiguous()?.reshape(dims)
}

/// A dequantized GGUF tensor in Hugging Face layout: llama's q/k rows un-permuted.
pub fn to_hf_layout(gguf_name: &str, t: Tensor, cfg: &LlamaConfig) -> Result<Tensor> {
    let permuted = cfg.model_type == "llama";
    Ok(if permuted && gguf_name.contains(".attn_q.") {
        unpermute(&t, cfg.num_attention_heads)?
    } else if permuted && gguf_name.contains(".attn_k.") {
        unpermute(&t, cfg.kv_heads())?
    } else {
        t
    })
}

fn open(path: &Path) -> Result<(std::fs::File, Content)> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::file(path, e))?;
    let content = Content::read(&mut f)
        .map_err(|e| Error::file(path, format!("not a readable GGUF file: {e} (hint: truncated or corrupt?)")))?;
    Ok((f, content))
}

fn dequantized(f: &mut std::fs::File, content: &Content, name: &str, path: &Path) -> Result<Tensor> {
    let q = content.tensor(f, name, &Device::Cpu).map_err(|e| Error::file(path, format!("tensor {name}: {e}")))?;
    q.dequantize(&Device::Cpu).map_err(|e| Error::file(path, format!("tensor {name}: {e}")))
}

/// The metadata of a GGUF file (no tensor is read).
pub fn metadata(path: &Path) -> Result<HashMap<String, Value>> {
    Ok(open(path)?.1.metadata)
}

/// One tensor of a GGUF file, dequantized to f32, as stored (no renaming, no permutation).
pub fn read_f32(path: &Path, name: &str) -> Result<Tensor> {
    let (mut f, content) = open(path)?;
    dequantized(&mut f, &content, name, path)
}

/// Read a GGUF file into an f32 Llama in HF layout (every weight frozen).
pub fn load_gguf(path: &Path, dtype: DType) -> Result<(Llama, HashMap<String, Value>)> {
    let (mut f, content) = open(path)?;
    let tied = !content.tensor_infos.contains_key("output.weight");
    let mut cfg = config_from_metadata(&content.metadata, path, tied)?;
    // GGUF has no attention_bias key: a Llama with q/k/v biases says so by its tensors
    if cfg.model_type == "llama" && content.tensor_infos.contains_key("blk.0.attn_q.bias") {
        cfg.attention_bias = true;
    }
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        let factors = dequantized(&mut f, &content, "rope_freqs.weight", path)?.flatten_all()?.to_vec1::<f32>()?;
        cfg.rope_scaling =
            Some(llama3_scaling(&cfg, &factors).map_err(|e| Error::file(path, format!("rope_freqs.weight: {e}")))?);
    }
    let mut tensors = HashMap::new();
    let unknown: Vec<&String> =
        content.tensor_infos.keys().filter(|n| hf_name(n).is_none() && n.as_str() != "rope_freqs.weight").collect();
    if !unknown.is_empty() {
        return Err(Error::file(
            path,
            format!("tensors loralab does not know how to place: {:?} (hint: a model of another architecture, or a GGUF LoRA rather than a model?)", &unknown[..unknown.len().min(5)]),
        ));
    }
    for name in content.tensor_infos.keys() {
        let Some(hf) = hf_name(name) else { continue };
        let t = dequantized(&mut f, &content, name, path)?;
        tensors.insert(hf, to_hf_layout(name, t, &cfg)?);
    }
    let model = Llama::from_tensors(cfg, tensors, dtype, path)?;
    Ok((model, content.metadata))
}

/// llama.cpp stores Llama-3.1 rope scaling as a tensor of per-frequency divisors
/// (`rope_freqs.weight`: 1 at high frequencies, `factor` at low ones, a smooth ramp between).
/// Hugging Face configs need the parameters that made it: factor is the largest divisor; on
/// the ramp, s = (1/f − 1/factor)/(1 − 1/factor) is linear in the frequency, s = a·ω + b,
/// with b = −low/(high − low) and a = original_max/(2π(high − low)). Only the ratios are
/// determined, so low_freq_factor = 1 (every released Llama 3.x); the fit is then checked by
/// recomputing every divisor.
fn llama3_scaling(cfg: &LlamaConfig, factors: &[f32]) -> std::result::Result<crate::model::RopeScaling, String> {
    let base = LlamaConfig { rope_scaling: None, ..cfg.clone() }.inv_freq().map_err(|e| e.to_string())?;
    if factors.len() != base.len() {
        return Err(format!("{} factors for {} rotary frequencies", factors.len(), base.len()));
    }
    let factor = factors.iter().fold(1f64, |m, &f| m.max(f as f64));
    let ramp: Vec<(f64, f64)> = base
        .iter()
        .zip(factors)
        .filter(|(_, &f)| (f as f64) > 1.0 + 1e-4 && (f as f64) < factor * (1.0 - 1e-4))
        .map(|(&w, &f)| (w, (1.0 / f as f64 - 1.0 / factor) / (1.0 - 1.0 / factor)))
        .collect();
    if ramp.len() < 2 {
        return Err(format!("{} frequencies on the ramp between 1 and factor {factor}: too few to recover Llama-3 rope_scaling (hint: use the Hugging Face checkpoint, whose config.json states it)", ramp.len()));
    }
    // least squares s = a·ω + b
    let n = ramp.len() as f64;
    let (mw, ms) = (ramp.iter().map(|r| r.0).sum::<f64>() / n, ramp.iter().map(|r| r.1).sum::<f64>() / n);
    let a = ramp.iter().map(|r| (r.0 - mw) * (r.1 - ms)).sum::<f64>()
        / ramp.iter().map(|r| (r.0 - mw).powi(2)).sum::<f64>();
    let b = ms - a * mw;
    let span = -1.0 / b; // high − low, with low = 1
    let scaling = crate::model::RopeScaling {
        rope_type: "llama3".into(),
        factor,
        low_freq_factor: 1.0,
        high_freq_factor: 1.0 + span,
        original_max_position_embeddings: (a * 2.0 * std::f64::consts::PI * span).round() as usize,
    };
    let fitted =
        LlamaConfig { rope_scaling: Some(scaling.clone()), ..cfg.clone() }.inv_freq().map_err(|e| e.to_string())?;
    for ((w, s), f) in base.iter().zip(&fitted).zip(factors) {
        if ((w / s) / *f as f64 - 1.0).abs() > 1e-3 {
            return Err(format!(
                "the divisors are not Llama-3 rope scaling (best fit {scaling:?} gives {} where the file has {f})",
                w / s
            ));
        }
    }
    Ok(scaling)
}

// ------------------------------------------------------------------ tokenizer from metadata

/// GGUF stores the pre-tokenizer only by name (`tokenizer.ggml.pre`); these are the names
/// whose split rules are known here, as Hugging Face pre-tokenizer JSON (the rules of each
/// model's published tokenizer.json, which llama.cpp's src/llama-vocab.cpp reimplements per
/// name). The table is the whole list: any other name is refused. Returns (pre-tokenizer,
/// normalizer).
const PRE_NAMES: &str =
    "gpt-2, default, smollm, starcoder, refact, llama-bpe, llama3, dbrx, smaug-bpe, qwen2, stablelm2";

pub fn pre_tokenizer(name: &str) -> Option<(serde_json::Value, serde_json::Value)> {
    use serde_json::{json, Value};
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let split = |digits: &str, trim_offsets: bool| {
        let regex = format!(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{{L}}\p{{N}}]?\p{{L}}+|\p{{N}}{digits}| ?[^\s\p{{L}}\p{{N}}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        );
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": trim_offsets, "use_regex": false}]})
    };
    Some(match name {
        // GPT-2's byte-level regex
        "gpt-2" | "default" => (byte_level, Value::Null),
        // every digit on its own, then GPT-2's byte-level regex
        "smollm" | "starcoder" | "refact" => (
            json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level]}),
            Value::Null,
        ),
        // Llama 3's tokenizer.json: numbers in runs of up to three digits
        "llama-bpe" | "llama3" | "dbrx" | "smaug-bpe" => (split("{1,3}", true), Value::Null),
        // Qwen2's tokenizer.json: NFC, then digits one by one
        "qwen2" | "stablelm2" => (split("", false), json!({"type": "NFC"})),
        _ => return None,
    })
}

fn strings(md: &HashMap<String, Value>, key: &str, path: &Path) -> Result<Vec<String>> {
    let v = md.get(key).ok_or_else(|| Error::file(path, format!("GGUF metadata lacks {key}")))?;
    v.to_vec()
        .map_err(|e| Error::file(path, format!("{key}: {e}")))?
        .iter()
        .map(|s| s.to_string().cloned().map_err(|e| Error::file(path, format!("{key}: {e}"))))
        .collect()
}

fn flag(md: &HashMap<String, Value>, key: &str, default: bool) -> bool {
    md.get(key).and_then(|v| v.to_bool().ok()).unwrap_or(default)
}

/// The tokenizer.json a GGUF file's metadata describes: `tokenizer.ggml.model` gpt2
/// (byte-level BPE with merges, pre-tokenizer by name) or llama (SentencePiece BPE with scores).
pub fn tokenizer_json(path: &Path) -> Result<String> {
    let (_, content) = open(path)?;
    let md = &content.metadata;
    let model = md.get("tokenizer.ggml.model").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    let tokens = strings(md, "tokenizer.ggml.tokens", path)?;
    let types: Vec<i64> = match md.get("tokenizer.ggml.token_type").and_then(|v| v.to_vec().ok()) {
        Some(v) => v.iter().map(|t| num(t).unwrap_or(1.0) as i64).collect(),
        None => vec![1; tokens.len()],
    };
    let vocab: serde_json::Map<String, serde_json::Value> =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), serde_json::json!(i))).collect();
    // token_type 3 = control (<|im_start|>, <s>, ...), 4 = user-defined: matched whole, never split
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(3) | Some(4)))
        .map(|(i, t)| serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": types[i] == 3}))
        .collect();
    let (normalizer, pre, decoder, bpe) = match model.as_str() {
        "gpt2" => {
            let pre_name = md.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).cloned().unwrap_or_else(|| "default".into());
            let (pre, normalizer) = pre_tokenizer(&pre_name).ok_or_else(|| {
                Error::file(path, format!("tokenizer.ggml.pre `{pre_name}`: its split rules are not in loralab's table (hint: known: {PRE_NAMES}; or give model.tokenizer a tokenizer.json)"))
            })?;
            let merges = strings(md, "tokenizer.ggml.merges", path)?;
            let decoder = serde_json::json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
            let bpe = serde_json::json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges});
            (normalizer, pre, decoder, bpe)
        }
        "llama" => sentencepiece(md, path, &tokens, &types, vocab)?,
        _ => return Err(Error::file(path, format!("tokenizer.ggml.model `{model}` is not supported (hint: supported: gpt2 (byte-level BPE), llama (SentencePiece BPE); or give model.tokenizer a tokenizer.json)"))),
    };
    let bos = md.get("tokenizer.ggml.bos_token_id").and_then(num).map(|v| v as usize);
    let post = match (flag(md, "tokenizer.ggml.add_bos_token", false), bos.and_then(|b| tokens.get(b))) {
        (true, Some(b)) => {
            serde_json::json!({"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}], "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}], "special_tokens": {b.clone(): {"id": b, "ids": [bos], "tokens": [b]}}})
        }
        _ => serde_json::Value::Null,
    };
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": normalizer,
        "pre_tokenizer": pre, "post_processor": post, "decoder": decoder, "model": bpe,
    });
    Ok(json.to_string())
}

/// The tokenizer_config.json transformers needs beside that tokenizer.json: the chat template
/// (`tokenizer.chat_template`, when the file has one) and the special tokens by their text
/// (`tokenizer.ggml.{bos,eos,unknown,padding}_token_id` → tokens). BOS is left to
/// tokenizer.json's post-processor, as [`tokenizer_json`] wrote it.
pub fn tokenizer_config(path: &Path) -> Result<serde_json::Value> {
    let md = metadata(path)?;
    let tokens = strings(&md, "tokenizer.ggml.tokens", path)?;
    let arch = md.get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    let mut tc =
        serde_json::json!({"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": false});
    if let Some(n) = md.get(&format!("{arch}.context_length")).and_then(num) {
        tc["model_max_length"] = serde_json::json!(n as u64);
    }
    for (field, key) in [("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding")]
    {
        if let Some(t) =
            md.get(&format!("tokenizer.ggml.{key}_token_id")).and_then(num).and_then(|i| tokens.get(i as usize))
        {
            tc[field] = serde_json::json!(t);
        }
    }
    if let Some(t) = md.get("tokenizer.chat_template").and_then(|v| v.to_string().ok()) {
        tc["chat_template"] = serde_json::json!(t);
    }
    Ok(tc)
}

type Parts = (serde_json::Value, serde_json::Value, serde_json::Value, serde_json::Value);

/// Llama-2-style SentencePiece BPE (`tokenizer.ggml.model` = llama): GGUF keeps each piece's
/// score, not merges. SentencePiece merges the adjacent pair whose joined piece scores
/// highest, so the merges are every split (left, right) of a piece into two pieces, ranked
/// by the joined piece's score (as Hugging Face's SentencePiece converter derives them);
/// unknown characters fall back to the `<0xXX>` byte pieces; spaces are `▁`, with one
/// prepended unless `tokenizer.ggml.add_space_prefix` is false.
fn sentencepiece(
    md: &HashMap<String, Value>,
    path: &Path,
    tokens: &[String],
    types: &[i64],
    vocab: serde_json::Map<String, serde_json::Value>,
) -> Result<Parts> {
    use serde_json::json;
    let scores: Vec<f64> = md
        .get("tokenizer.ggml.scores")
        .and_then(|v| v.to_vec().ok())
        .map(|v| v.iter().map(|s| num(s).unwrap_or(0.0)).collect())
        .ok_or_else(|| Error::file(path, "a SentencePiece (llama) tokenizer needs tokenizer.ggml.scores"))?;
    if scores.len() != tokens.len() {
        return Err(Error::file(
            path,
            format!("tokenizer.ggml.scores has {} entries for {} tokens", scores.len(), tokens.len()),
        ));
    }
    let id: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let mut merges: Vec<(f64, usize, usize)> = Vec::new();
    for (piece, score) in tokens.iter().zip(&scores) {
        let mut local: Vec<(usize, usize)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| Some((*id.get(&piece[..at])?, *id.get(&piece[at..])?)))
            .collect();
        local.sort();
        merges.extend(local.into_iter().map(|(l, r)| (*score, l, r)));
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0)); // stable: ties keep (left, right) id order
    let merges: Vec<[&str; 2]> = merges.iter().map(|&(_, l, r)| [tokens[l].as_str(), tokens[r].as_str()]).collect();
    let unk = md
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(num)
        .map(|v| v as usize)
        .or_else(|| types.iter().position(|&t| t == 2));
    let prefix = flag(md, "tokenizer.ggml.add_space_prefix", true);
    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    let normalizer = if prefix {
        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, replace]})
    } else {
        replace
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let bpe = json!({"type": "BPE", "dropout": null, "unk_token": unk.and_then(|u| tokens.get(u)), "continuing_subword_prefix": null, "end_of_word_suffix": null,
        "fuse_unk": true, "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges});
    Ok((normalizer, serde_json::Value::Null, json!({"type": "Sequence", "decoders": decoders}), bpe))
}
