//! The model directories loralab writes are complete Hugging Face ones: config.json whose
//! torch_dtype is what was written, generation_config.json, tokenizer_config.json with the
//! base's chat template and bos/eos tokens (copied, built from config.json's ids, or built from
//! GGUF metadata), special_tokens_map.json; every file a plain 0644 one. That transformers loads
//! them is tests/merge-hf.test.ts's part (it needs the Python venv).
#![allow(clippy::unwrap_used)] // test code: a panic is how a check fails
mod common;
use candle_core::DType;
use common::*;
use loralab_core::checkpoint::{merge_with, save, MergeOptions};
use loralab_core::config::{MethodConfig, MethodKind};
use loralab_core::model::{Llama, LlamaConfig};
use loralab_core::rng::Rng;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("loralab-hfdir-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A random tiny base (HF dir written by `save`) and a LoRA adapter for it with non-zero B.
fn base_and_adapter(dir: &Path, tokenizer: &Path) {
    let cfg_path = repo().join("datasets/tiny/config.json");
    let mut model = Llama::random(LlamaConfig::from_file(&cfg_path).unwrap(), DType::F32, &mut Rng::new(3)).unwrap();
    let full = MethodConfig { kind: MethodKind::Full, ..Default::default() };
    save(&dir.join("base"), &model, &full, &cfg_path, tokenizer, "", None, None).unwrap();
    let lora = MethodConfig { kind: MethodKind::Lora, rank: 2, ..Default::default() };
    model.apply_method(&lora, &mut Rng::new(5)).unwrap();
    for lin in model.linears_mut() {
        if let Some(l) = &lin.lora {
            l.b.set(&randn(l.b.dims(), 0.05, 9).to_dtype(DType::F32).unwrap()).unwrap();
        }
    }
    save(&dir.join("adapter"), &model, &lora, &cfg_path, tokenizer, "base", None, None).unwrap();
}

fn plain_mode() -> u32 {
    // what a new file gets here: 0644 under the usual umask
    let probe = std::env::temp_dir().join(format!("loralab-hfdir-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").unwrap();
    let m = std::fs::metadata(&probe).unwrap().permissions().mode() & 0o777;
    std::fs::remove_file(&probe).unwrap();
    m
}

#[test]
fn merge_writes_every_hf_file_in_the_asked_dtype_with_plain_modes() {
    let dir = tmp("merge");
    // the tiny tokenizer with a tokenizer_config.json that has a chat template but names no eos
    let tok_dir = dir.join("tok");
    std::fs::create_dir_all(&tok_dir).unwrap();
    std::fs::copy(repo().join("datasets/tiny/tokenizer.json"), tok_dir.join("tokenizer.json")).unwrap();
    std::fs::write(
        tok_dir.join("tokenizer_config.json"),
        r#"{"chat_template": "{{ messages[0]['content'] }}", "bos_token": "<s>"}"#,
    )
    .unwrap();
    base_and_adapter(&dir, &tok_dir.join("tokenizer.json"));
    for (name, torch, bytes) in [("bf16", "bfloat16", 2), ("f16", "float16", 2), ("f32", "float32", 4)] {
        let out = dir.join(format!("merged-{name}"));
        let r =
            merge_with(&dir.join("base"), &dir.join("adapter"), &out, &MergeOptions { dtype: name.into() }).unwrap();
        assert!(r.notes.is_empty(), "{:?}", r.notes);
        for f in [
            "model.safetensors",
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ] {
            let meta = std::fs::metadata(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert_eq!(meta.permissions().mode() & 0o777, plain_mode(), "{f}");
        }
        assert_eq!(json(&out.join("config.json"))["torch_dtype"], torch);
        let t = candle_core::safetensors::load(out.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
        let w = &t["model.layers.0.self_attn.q_proj.weight"];
        assert_eq!(w.dtype().size_in_bytes(), bytes);
        let tc = json(&out.join("tokenizer_config.json"));
        assert_eq!(tc["chat_template"], "{{ messages[0]['content'] }}");
        assert_eq!(
            (tc["bos_token"].as_str(), tc["eos_token"].as_str()),
            (Some("<s>"), Some("</s>")),
            "eos from config.json's id 1"
        );
        assert_eq!(json(&out.join("generation_config.json"))["eos_token_id"], 1);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_base_without_chat_template_gets_a_note_not_a_made_up_template() {
    let dir = tmp("plain");
    base_and_adapter(&dir, &repo().join("datasets/tiny/tokenizer.json"));
    let r = merge_with(&dir.join("base"), &dir.join("adapter"), &dir.join("merged"), &MergeOptions::default()).unwrap();
    assert_eq!(r.dtype, "f32");
    assert_eq!(r.notes.len(), 1);
    assert!(r.notes[0].contains("no chat template") && r.notes[0].contains("hint:"), "{}", r.notes[0]);
    let tc = json(&dir.join("merged/tokenizer_config.json"));
    assert!(tc.get("chat_template").is_none());
    assert_eq!(
        json(&dir.join("merged/special_tokens_map.json")),
        serde_json::json!({"bos_token": "<s>", "eos_token": "</s>"})
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unknown_dtype_is_a_config_error_with_a_hint_before_any_work() {
    let dir = tmp("dtype");
    let e = merge_with(
        &dir.join("no-base"),
        &dir.join("no-adapter"),
        &dir.join("m"),
        &MergeOptions { dtype: "fp8".into() },
    )
    .unwrap_err();
    assert!(matches!(e, loralab_core::Error::Config { ref field, .. } if field == "dtype"), "{e}");
    assert!(e.to_string().contains("hint: bf16, f16 or f32"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn smollm2_gguf_metadata_gives_its_chat_template_and_special_tokens() {
    let tc = loralab_core::gguf::tokenizer_config(&smollm2()).unwrap();
    assert!(tc["chat_template"].as_str().unwrap().contains("<|im_start|>"));
    assert_eq!((tc["bos_token"].as_str(), tc["eos_token"].as_str()), (Some("<|im_start|>"), Some("<|im_end|>")));
    assert_eq!(tc["model_max_length"], 8192);
}
