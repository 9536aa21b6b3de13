//! PEFT interop: loralab's adapters carry the fields PEFT reads; PEFT's adapters load here
//! (with or without the `.default` infix, rank_pattern, alpha_pattern, rsLoRA), what cannot
//! be honoured is refused by name, and `merge` writes a model that reloads to the same logits.
#![allow(clippy::unwrap_used)] // test code: a panic is how a check fails
mod common;
use candle_core::{DType, Device, Tensor};
use common::*;
use loralab_core::checkpoint::{load_adapter, load_model_dir, merge, save};
use loralab_core::config::{MethodConfig, MethodKind, Targets};
use loralab_core::linear::ForwardCtx;
use loralab_core::model::Llama;
use loralab_core::rng::Rng;
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("loralab-peft-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn logits(m: &Llama) -> Tensor {
    let ids = Tensor::new(&[[1u32, 5, 7, 3, 11, 2]], &Device::Cpu).unwrap();
    m.forward(&ids, &mut ForwardCtx { train: false, rng: &mut Rng::new(0) }).unwrap()
}

/// base/ (HF model) and adapter/ (PEFT layout, random non-zero B) under `dir`; returns the adapted model.
fn setup(dir: &Path, rslora: bool) -> Llama {
    let cfg = tiny_config(true, false);
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let tok = repo().join("datasets/tiny/tokenizer.json");
    let base = Llama::random(cfg.clone(), DType::F32, &mut Rng::new(9)).unwrap();
    save(
        &dir.join("base"),
        &base,
        &MethodConfig { kind: MethodKind::Full, ..Default::default() },
        &cfg_path,
        &tok,
        "",
        None,
        None,
    )
    .unwrap();
    let mut m = Llama::random(cfg, DType::F32, &mut Rng::new(9)).unwrap();
    let method = MethodConfig {
        kind: MethodKind::Lora,
        rank: 4,
        alpha: Some(8.0),
        dropout: 0.05,
        targets: Targets::Preset("all".into()),
        rslora,
    };
    m.apply_method(&method, &mut Rng::new(2)).unwrap();
    for lin in m.linears() {
        let l = lin.lora.as_ref().unwrap();
        let (o, r) = l.b.dims2().unwrap();
        l.b.set(&randn(&[o, r], 0.3, o as u64).to_dtype(DType::F32).unwrap()).unwrap();
    }
    save(&dir.join("adapter"), &m, &method, &cfg_path, &tok, &dir.join("base").to_string_lossy(), None, None).unwrap();
    m
}

fn adapter_config(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("adapter/adapter_config.json")).unwrap()).unwrap()
}

#[test]
fn loralab_adapters_carry_what_peft_reads_and_load_back() {
    for rslora in [false, true] {
        let dir = tmp(&format!("fields-{rslora}"));
        let adapted = setup(&dir, rslora);
        let ac = adapter_config(&dir);
        for (k, v) in [("peft_type", "LORA"), ("task_type", "CAUSAL_LM")] {
            assert_eq!(ac[k], v);
        }
        assert_eq!(ac["r"], 4);
        assert_eq!(ac["lora_alpha"], 8.0);
        assert_eq!(ac["lora_dropout"], 0.05);
        assert_eq!(ac["use_rslora"], rslora);
        assert_eq!(ac["target_modules"].as_array().unwrap().len(), 7);
        assert!(ac["base_model_name_or_path"].as_str().unwrap().ends_with("base"));
        let mut m = load_model_dir(&dir.join("base"), DType::F32).unwrap();
        load_adapter(&mut m, &dir.join("adapter")).unwrap();
        assert!(max_abs_diff(&logits(&m), &logits(&adapted)) < 1e-6);
    }
}

#[test]
fn peft_default_infix_and_patterns_are_honoured() {
    let dir = tmp("patterns");
    let adapted = setup(&dir, false);
    // rename every key to PEFT's `.default` form
    let file = dir.join("adapter/adapter_model.safetensors");
    let w = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let renamed: std::collections::HashMap<String, Tensor> =
        w.into_iter().map(|(k, v)| (k.replace(".weight", ".default.weight"), v)).collect();
    candle_core::safetensors::save(&renamed, &file).unwrap();
    // as PEFT would write it: no loralab manifest
    std::fs::remove_file(dir.join("adapter/loralab_manifest.json")).unwrap();
    let mut m = load_model_dir(&dir.join("base"), DType::F32).unwrap();
    load_adapter(&mut m, &dir.join("adapter")).unwrap();
    assert!(max_abs_diff(&logits(&m), &logits(&adapted)) < 1e-6, "the .default infix");

    // alpha_pattern: q_proj gets alpha 2 (scale 0.5) while the rest keep lora_alpha 8 (scale 2)
    let mut ac = adapter_config(&dir);
    ac["alpha_pattern"] = serde_json::json!({"q_proj": 2.0});
    ac["rank_pattern"] = serde_json::json!({"q_proj": 4});
    std::fs::write(dir.join("adapter/adapter_config.json"), ac.to_string()).unwrap();
    let mut m = load_model_dir(&dir.join("base"), DType::F32).unwrap();
    load_adapter(&mut m, &dir.join("adapter")).unwrap();
    for lin in m.linears() {
        let want = if lin.name.ends_with("q_proj") { 0.5 } else { 2.0 };
        assert_eq!(lin.lora.as_ref().unwrap().scale, want, "{}", lin.name);
    }
    // a rank_pattern that contradicts the tensors is an error
    ac["rank_pattern"] = serde_json::json!({"v_proj": 8});
    std::fs::write(dir.join("adapter/adapter_config.json"), ac.to_string()).unwrap();
    let mut m = load_model_dir(&dir.join("base"), DType::F32).unwrap();
    let e = load_adapter(&mut m, &dir.join("adapter")).unwrap_err().to_string();
    assert!(e.contains("rank_pattern gives r=8"), "{e}");
}

#[test]
fn unsupported_peft_features_are_refused_by_name() {
    let dir = tmp("refuse");
    setup(&dir, false);
    let good = adapter_config(&dir);
    for (field, value) in [
        ("use_dora", serde_json::json!(true)),
        ("modules_to_save", serde_json::json!(["lm_head"])),
        ("bias", serde_json::json!("lora_only")),
        ("layers_to_transform", serde_json::json!([0])),
        ("fan_in_fan_out", serde_json::json!(true)),
    ] {
        let mut ac = good.clone();
        ac[field] = value;
        std::fs::write(dir.join("adapter/adapter_config.json"), ac.to_string()).unwrap();
        let mut m = load_model_dir(&dir.join("base"), DType::F32).unwrap();
        let e = load_adapter(&mut m, &dir.join("adapter")).unwrap_err().to_string();
        assert!(e.contains(&format!("`{field}`")) && e.contains("adapter_config.json"), "{field}: {e}");
    }
}

#[test]
fn merge_writes_a_model_that_reloads_to_the_same_logits() {
    let dir = tmp("merge");
    let adapted = setup(&dir, false);
    merge(&dir.join("base"), &dir.join("adapter"), &dir.join("merged")).unwrap();
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(dir.join("merged").join(f).is_file(), "{f}");
    }
    let merged = load_model_dir(&dir.join("merged"), DType::F32).unwrap();
    assert!(merged.linears().iter().all(|l| l.lora.is_none()));
    let d = max_abs_diff(&logits(&merged), &logits(&adapted));
    assert!(d <= 1e-5, "merged vs unmerged differ by {d:e}");
}
