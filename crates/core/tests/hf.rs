//! Hugging Face checkpoint directories: single and sharded safetensors, f32/bf16/f16 on
//! disk, and the bad inputs a user brings (unsupported architecture, truncated file, shape
//! mismatch, missing tensor): each fails naming the file and what is wrong.
#![allow(clippy::unwrap_used)] // test code: a panic is how a check fails
mod common;
use candle_core::{DType, Device, Tensor};
use common::*;
use loralab_core::checkpoint::{load_model_dir, save};
use loralab_core::config::{MethodConfig, MethodKind};
use loralab_core::linear::ForwardCtx;
use loralab_core::model::Llama;
use loralab_core::rng::Rng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("loralab-hf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A tiny random model written as an HF directory (f32); returns the directory.
fn write_model(dir: &Path) -> Llama {
    let cfg = tiny_config(false, false);
    let cfg_path = dir.join("src-config.json");
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let model = Llama::random(cfg, DType::F32, &mut Rng::new(9)).unwrap();
    let full = MethodConfig { kind: MethodKind::Full, ..Default::default() };
    save(&dir.join("model"), &model, &full, &cfg_path, &repo().join("datasets/tiny/tokenizer.json"), "", None, None)
        .unwrap();
    model
}

fn logits(m: &Llama) -> Tensor {
    let ids = Tensor::new(&[[1u32, 5, 7, 3, 11, 2]], &Device::Cpu).unwrap();
    m.forward(&ids, &mut ForwardCtx { train: false, rng: &mut Rng::new(0) }).unwrap()
}

fn tensors(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model/model.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn sharded_bf16_and_f16_checkpoints_load_as_the_f32_original_rounded() {
    let dir = tmp("shards");
    let original = write_model(&dir);
    let all = tensors(&dir);
    for (dt, label) in [(DType::BF16, "bf16"), (DType::F16, "f16")] {
        let out = dir.join(label);
        std::fs::create_dir_all(&out).unwrap();
        std::fs::copy(dir.join("model/config.json"), out.join("config.json")).unwrap();
        // two shards and an index, as transformers writes them
        let mut names: Vec<&String> = all.keys().collect();
        names.sort();
        let (a, b) = names.split_at(names.len() / 2);
        let mut weight_map = serde_json::Map::new();
        for (file, part) in [("model-00001-of-00002.safetensors", a), ("model-00002-of-00002.safetensors", b)] {
            let m: HashMap<String, Tensor> =
                part.iter().map(|n| ((*n).clone(), all[*n].to_dtype(dt).unwrap())).collect();
            candle_core::safetensors::save(&m, out.join(file)).unwrap();
            for n in part {
                weight_map.insert((*n).clone(), serde_json::json!(file));
            }
        }
        std::fs::write(
            out.join("model.safetensors.index.json"),
            serde_json::to_vec(&serde_json::json!({"metadata": {}, "weight_map": weight_map})).unwrap(),
        )
        .unwrap();
        let loaded = load_model_dir(&out, DType::F32).unwrap();
        for (name, w) in loaded.named_weights() {
            assert_eq!(w.tensor().dtype(), DType::F32);
            let want = all[&name].to_dtype(dt).unwrap().to_dtype(DType::F32).unwrap();
            assert_eq!(max_abs_diff(w.tensor(), &want), 0.0, "{label}: {name}");
        }
        let d = max_abs_diff(&logits(&loaded), &logits(&original));
        assert!(d < 0.1, "{label}: logits moved by {d} from rounding alone");
    }
}

fn err_of(dir: &Path) -> String {
    load_model_dir(dir, DType::F32).err().map(|e| e.to_string()).expect("must not load")
}

#[test]
fn bad_checkpoints_fail_naming_the_file_and_the_problem() {
    let dir = tmp("bad");
    write_model(&dir);
    let m = dir.join("model");
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(m.join("config.json")).unwrap()).unwrap();

    // an architecture outside the Llama family
    let mut other = cfg.clone();
    other["model_type"] = serde_json::json!("gpt2");
    other["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
    std::fs::write(m.join("config.json"), other.to_string()).unwrap();
    let e = err_of(&m);
    assert!(e.contains("model_type `gpt2`") && e.contains("GPT2LMHeadModel") && e.contains("config.json"), "{e}");

    // config and weights of different shapes
    let mut wide = cfg.clone();
    wide["intermediate_size"] = serde_json::json!(16);
    std::fs::write(m.join("config.json"), wide.to_string()).unwrap();
    let e = err_of(&m);
    assert!(e.contains("mlp.gate_proj.weight") && e.contains("config.json says"), "{e}");
    std::fs::write(m.join("config.json"), cfg.to_string()).unwrap();

    // a missing tensor
    let mut all = tensors(&dir);
    all.remove("model.layers.1.mlp.up_proj.weight");
    let full_file = m.join("model.safetensors");
    let bytes = std::fs::read(&full_file).unwrap();
    candle_core::safetensors::save(&all, &full_file).unwrap();
    // loralab wrote this directory: its manifest catches the change first, naming the file
    let e = err_of(&m);
    assert!(e.contains("model.safetensors: damaged"), "{e}");
    // what a directory written elsewhere (no manifest) can hold: the loader's own checks
    std::fs::remove_file(m.join("loralab_manifest.json")).unwrap();
    let e = err_of(&m);
    assert!(e.contains("missing tensor model.layers.1.mlp.up_proj.weight") && e.contains("model"), "{e}");

    // a truncated file
    std::fs::write(&full_file, &bytes[..bytes.len() / 2]).unwrap();
    let e = err_of(&m);
    assert!(e.contains(&m.display().to_string()), "{e}");
}

#[test]
fn every_architecture_matches_transformers_logits() {
    // tests/fixtures/hf/make.py: tiny models and their logits from transformers 5.24 itself
    for name in ["llama3", "llama2-bias", "mistral", "qwen2", "smollm"] {
        let dir = repo().join("tests/fixtures/hf").join(name);
        let m = load_model_dir(&dir, DType::F32).unwrap();
        let fx = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
        let ids = fx["ids"].to_dtype(DType::U32).unwrap().unsqueeze(0).unwrap();
        let got = m.forward(&ids, &mut ForwardCtx { train: false, rng: &mut Rng::new(0) }).unwrap();
        let d = max_abs_diff(&got, &fx["logits"]);
        assert!(d < 1e-4, "{name}: logits differ from transformers' by {d:e}");
    }
}

#[test]
fn generation_config_eos_ids_are_read_beside_config_json() {
    let dir = tmp("gen");
    write_model(&dir);
    let m = dir.join("model");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(m.join("config.json")).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("eos_token_id");
    std::fs::write(m.join("config.json"), cfg.to_string()).unwrap();
    std::fs::write(m.join("generation_config.json"), r#"{"eos_token_id": [7, 9], "do_sample": false}"#).unwrap();
    let c = loralab_core::model::LlamaConfig::from_file(&m.join("config.json")).unwrap();
    assert_eq!(c.eos_id(), Some(7));
    assert_eq!(c.stop_ids(), vec![7, 9]);
    std::fs::write(m.join("generation_config.json"), "{oops").unwrap();
    let e = loralab_core::model::LlamaConfig::from_file(&m.join("config.json")).unwrap_err().to_string();
    assert!(e.contains("generation_config.json") && e.contains("not valid JSON"), "{e}");
}
