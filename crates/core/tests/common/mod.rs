//! Shared helpers for the engine's integration tests.
#![allow(clippy::unwrap_used)] // test code: a panic is how a check fails
#![allow(dead_code)]
use candle_core::{DType, Device, Tensor, Var};
use loralab_core::model::{Llama, LlamaConfig};
use std::collections::HashMap;
use std::path::PathBuf;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// SmolLM2-135M-Instruct (Q4_1 GGUF) from the cache: `bun run fetch smollm2` puts it there.
pub fn smollm2() -> PathBuf {
    let cache = std::env::var("LORALAB_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/loralab"));
    let p = cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.is_file(), "{} is missing (hint: `bun run fetch smollm2`; `bun run test` does it first)", p.display());
    p
}

/// The reference fixture made by tests/reference/llama_ref.py.
pub struct Fixture {
    pub json: serde_json::Value,
    pub t: HashMap<String, Tensor>,
}

pub fn fixture() -> Fixture {
    let dir = repo().join("tests/reference");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("llama_ref.json")).unwrap()).unwrap();
    let t = candle_core::safetensors::load(dir.join("llama_ref.safetensors"), &Device::Cpu).unwrap();
    Fixture { json, t }
}

impl Fixture {
    pub fn config(&self) -> LlamaConfig {
        serde_json::from_value(self.json["config"].clone()).unwrap()
    }
    pub fn model(&self, dtype: DType) -> Llama {
        let w: HashMap<String, Tensor> =
            self.t.iter().filter_map(|(k, v)| k.strip_prefix("w.").map(|n| (n.to_string(), v.clone()))).collect();
        Llama::from_tensors(self.config(), w, dtype, std::path::Path::new("fixture")).unwrap()
    }
    /// Batch s as engine rows: (ids, per-token loss mask).
    pub fn rows(&self, s: usize) -> Vec<(Vec<u32>, Vec<u8>)> {
        let ids = self.t[&format!("batch{s}.ids")].to_dtype(DType::U32).unwrap().to_vec2::<u32>().unwrap();
        let mask = self.t[&format!("batch{s}.mask")].to_vec2::<f64>().unwrap();
        ids.into_iter().zip(mask).map(|(i, m)| (i, m.iter().map(|&v| v as u8).collect())).collect()
    }
}

/// A small config for gradient checks: GQA, Llama-3 rope scaling, q/k/v/o biases.
pub fn tiny_config(tied: bool, bias: bool) -> LlamaConfig {
    serde_json::from_value(serde_json::json!({
        "model_type": "llama", "vocab_size": 13, "hidden_size": 8, "intermediate_size": 12,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": tied, "attention_bias": bias,
        "initializer_range": 0.4, "eos_token_id": 2,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 4}
    }))
    .unwrap()
}

pub fn randn(shape: &[usize], scale: f64, seed: u64) -> Tensor {
    let mut r = loralab_core::rng::Rng::new(seed);
    let n: usize = shape.iter().product();
    Tensor::from_vec((0..n).map(|_| r.normal() * scale).collect::<Vec<f64>>(), shape, &Device::Cpu).unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Finite-difference check of dLoss/dVar at `n` entries (central differences, f64).
/// Returns the worst relative error; asserts the analytic gradient exists.
pub fn gradcheck(name: &str, var: &Var, loss: &dyn Fn() -> Tensor, n: usize) -> f64 {
    let l = loss();
    let grads = l.backward().unwrap();
    let g = grads
        .get(var.as_tensor())
        .unwrap_or_else(|| panic!("{name}: no gradient (the graph is cut)"))
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let base = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let shape = var.shape().clone();
    let eps = 1e-6;
    let mut worst = 0f64;
    let mut r = loralab_core::rng::Rng::new(name.len() as u64);
    let picks: Vec<usize> = if base.len() <= n {
        (0..base.len()).collect()
    } else {
        (0..n).map(|_| (r.next_u64() % base.len() as u64) as usize).collect()
    };
    for i in picks {
        let eval = |delta: f64| {
            let mut v = base.clone();
            v[i] += delta;
            var.set(&Tensor::from_vec(v, shape.clone(), &Device::Cpu).unwrap()).unwrap();
            loss().to_scalar::<f64>().unwrap()
        };
        let num = (eval(eps) - eval(-eps)) / (2.0 * eps);
        let err = (num - g[i]).abs() / (num.abs().max(g[i].abs()).max(1e-3));
        worst = worst.max(err);
        assert!(err < 1e-5, "{name}[{i}]: analytic {} vs numeric {num} (rel err {err:e})", g[i]);
    }
    var.set(&Tensor::from_vec(base, shape, &Device::Cpu).unwrap()).unwrap();
    worst
}
