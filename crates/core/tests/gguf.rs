//! A real pretrained model nobody here trained: SmolLM2-135M-Instruct as a Q4_1 GGUF
//! (`bun run fetch smollm2` puts it in the cache; `bun run test` fetches it first). Its
//! logits must match an independent numpy forward pass over the same file read with the
//! PyPI `gguf` package (tests/reference/gguf_ref.py), to ≤ 1e-3.
mod common;
use candle_core::{DType, Device, Tensor};
use common::*;
use loralab_core::gguf::{hf_name, load_gguf};
use loralab_core::linear::Ctx;
use loralab_core::rng::Rng;
use std::path::PathBuf;

fn smollm2() -> PathBuf {
    let cache = std::env::var("LORALAB_CACHE").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/loralab"));
    let p = cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.is_file(), "{} is missing (hint: `bun run fetch smollm2`; `bun run test` does it first)", p.display());
    p
}

#[test]
fn smollm2_logits_match_the_numpy_reference() {
    let (model, md) = load_gguf(&smollm2(), DType::F32).unwrap();
    assert_eq!(model.cfg.num_hidden_layers, 30);
    assert_eq!(model.cfg.vocab_size, 49152);
    assert!(model.cfg.tie_word_embeddings && model.lm_head.is_none());
    assert_eq!(md["tokenizer.ggml.model"].to_string().unwrap(), "gpt2");
    let fx = candle_core::safetensors::load(repo().join("tests/reference/gguf_ref.safetensors"), &Device::Cpu).unwrap();
    let ids = fx["ids"].to_dtype(DType::U32).unwrap().unsqueeze(0).unwrap();
    let logits = model.forward(&ids, &mut Ctx { train: false, rng: &mut Rng::new(0) }).unwrap();
    let t = ids.dim(1).unwrap();
    for (row, key) in [(3, "logits.pos3"), (t - 1, "logits.last")] {
        let got = logits.get(row).unwrap();
        let d = max_abs_diff(&got, &fx[key]);
        assert!(d <= 1e-3, "{key}: max abs difference {d:e} from the numpy reference");
        let argmax = |x: &Tensor| x.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        assert_eq!(argmax(&got), argmax(&fx[key]));
    }
}

#[test]
fn gguf_names_map_to_hugging_face_keys() {
    assert_eq!(hf_name("token_embd.weight").unwrap(), "model.embed_tokens.weight");
    assert_eq!(hf_name("blk.7.attn_q.weight").unwrap(), "model.layers.7.self_attn.q_proj.weight");
    assert_eq!(hf_name("blk.0.attn_k.bias").unwrap(), "model.layers.0.self_attn.k_proj.bias");
    assert_eq!(hf_name("blk.29.ffn_down.weight").unwrap(), "model.layers.29.mlp.down_proj.weight");
    assert_eq!(hf_name("blk.3.ffn_norm.weight").unwrap(), "model.layers.3.post_attention_layernorm.weight");
    assert!(hf_name("rope_freqs.weight").is_none());
}

#[test]
fn a_truncated_gguf_is_a_clear_error() {
    let bytes = std::fs::read(smollm2()).unwrap();
    let p = std::env::temp_dir().join(format!("loralab-truncated-{}.gguf", std::process::id()));
    std::fs::write(&p, &bytes[..4096]).unwrap();
    let err = load_gguf(&p, DType::F32).err().expect("a truncated file must not load").to_string();
    assert!(err.contains(&p.display().to_string()) && (err.contains("GGUF") || err.contains("tensor")), "{err}");
    let _ = std::fs::remove_file(p);
}
