//! GGUF (llama.cpp's format) checkpoints as base models: metadata → LlamaConfig, every
//! tensor dequantized to f32 (candle's GGUF reader and dequantizers: F32, F16, BF16, Q8_0,
//! Q4_0, Q4_1, Q4_K, Q5_K, Q6_K, ...) and renamed to Hugging Face keys. llama.cpp's
//! converter permutes the rows of q/k projections for the llama architecture (not qwen2);
//! that is undone here, so the model is in HF layout and its adapters load against the HF
//! original. Called by checkpoint::load_model.
use crate::error::{Error, Result};
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
    let arch = md.get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    if !SUPPORTED.contains(&arch.as_str()) {
        return Err(Error::file(path, format!("general.architecture `{arch}` is not supported (hint: loralab trains the Llama family: {SUPPORTED:?})")));
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
            cfg["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": get("rope.scaling.factor").unwrap_or(1.0)});
        } else if kind != "none" {
            return Err(Error::file(path, format!("rope scaling `{kind}` in GGUF is not supported yet")));
        }
    }
    serde_json::from_value(cfg).map_err(|e| Error::file(path, format!("GGUF metadata: {e}")))
}

/// GGUF tensor name -> Hugging Face key.
pub fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
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

fn open(path: &Path) -> Result<(std::fs::File, Content)> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::file(path, e))?;
    let content = Content::read(&mut f).map_err(|e| Error::file(path, format!("not a readable GGUF file: {e} (hint: truncated or corrupt?)")))?;
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
    let cfg = config_from_metadata(&content.metadata, path, tied)?;
    let permuted = cfg.model_type == "llama";
    let mut tensors = HashMap::new();
    for name in content.tensor_infos.keys() {
        let Some(hf) = hf_name(name) else {
            if name == "rope_freqs.weight" {
                return Err(Error::file(path, "rope_freqs.weight (Llama-3 rope scaling stored as a tensor) is not supported yet"));
            }
            continue;
        };
        let mut t = dequantized(&mut f, &content, name, path)?;
        if permuted && name.contains(".attn_q.") {
            t = unpermute(&t, cfg.num_attention_heads)?;
        } else if permuted && name.contains(".attn_k.") {
            t = unpermute(&t, cfg.kv_heads())?;
        }
        tensors.insert(hf, t);
    }
    let model = Llama::from_tensors(cfg, tensors, dtype, path)?;
    Ok((model, content.metadata))
}

// ------------------------------------------------------------------ tokenizer from metadata

/// GGUF stores the pre-tokenizer only by name (`tokenizer.ggml.pre`); these are the names
/// whose split rules are known here, as Hugging Face pre-tokenizer JSON.
fn pre_tokenizer(name: &str) -> Option<serde_json::Value> {
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    match name {
        // GPT-2's byte-level regex
        "gpt-2" | "default" => Some(byte_level),
        // SmolLM: every digit on its own, then GPT-2's byte-level regex (as its tokenizer.json)
        "smollm" => Some(serde_json::json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level]})),
        _ => None,
    }
}

fn strings(md: &HashMap<String, Value>, key: &str, path: &Path) -> Result<Vec<String>> {
    let v = md.get(key).ok_or_else(|| Error::file(path, format!("GGUF metadata lacks {key}")))?;
    v.to_vec().map_err(|e| Error::file(path, format!("{key}: {e}")))?.iter().map(|s| s.to_string().cloned().map_err(|e| Error::file(path, format!("{key}: {e}")))).collect()
}

/// The tokenizer.json a GGUF file's metadata describes (BPE models: `tokenizer.ggml.model` gpt2).
pub fn tokenizer_json(path: &Path) -> Result<String> {
    let (_, content) = open(path)?;
    let md = &content.metadata;
    let model = md.get("tokenizer.ggml.model").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    if model != "gpt2" {
        return Err(Error::file(path, format!("tokenizer.ggml.model `{model}` is not supported yet (hint: supported: gpt2 (byte-level BPE); or give model.tokenizer a tokenizer.json)")));
    }
    let pre_name = md.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).cloned().unwrap_or_else(|| "default".into());
    let pre = pre_tokenizer(&pre_name).ok_or_else(|| {
        Error::file(path, format!("tokenizer.ggml.pre `{pre_name}`: its split rules are not in loralab's table (hint: known: gpt-2, smollm; or give model.tokenizer a tokenizer.json)"))
    })?;
    let tokens = strings(md, "tokenizer.ggml.tokens", path)?;
    let merges = strings(md, "tokenizer.ggml.merges", path)?;
    let types: Vec<i64> = match md.get("tokenizer.ggml.token_type").and_then(|v| v.to_vec().ok()) {
        Some(v) => v.iter().map(|t| num(t).unwrap_or(1.0) as i64).collect(),
        None => vec![1; tokens.len()],
    };
    let vocab: serde_json::Map<String, serde_json::Value> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), serde_json::json!(i))).collect();
    // token_type 3 = control (<|im_start|>, <|endoftext|>, ...): matched whole, never split
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| types.get(*i) == Some(&3))
        .map(|(i, t)| serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let add_bos = md.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(false);
    let bos = md.get("tokenizer.ggml.bos_token_id").and_then(num).map(|v| v as usize);
    let post = match (add_bos, bos.and_then(|b| tokens.get(b))) {
        (true, Some(b)) => serde_json::json!({"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}], "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}], "special_tokens": {b.clone(): {"id": b, "ids": [bos], "tokens": [b]}}}),
        _ => serde_json::Value::Null,
    };
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": pre, "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges},
    });
    Ok(json.to_string())
}
