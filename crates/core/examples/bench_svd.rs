//! `bun run bench svd` drives this (packages/cli/src/bench.ts), alternating with numpy:
//! - `bench_svd matrix M N THREADS [f32|f64]`: seconds for the singular values (no vectors) of a
//!   random M×N matrix in that precision (f64 is what `loralab analyze` computes ΔW's spectrum
//!   in) with faer, once, as JSON;
//! - `bench_svd pair LAYERS HIDDEN INTERMEDIATE DIR`: writes a synthetic base/tuned pair of
//!   that shape (sharded safetensors, one layer per file), then analyses it end to end (ΔW of
//!   every matrix, 7 per layer) and reports time and peak heap against the model's size.
#![allow(clippy::unwrap_used)] // a benchmark: a failed measurement may panic
#[path = "common/alloc.rs"]
mod alloc;
use candle_core::{DType, Device, Tensor};
use loralab_core::rng::Rng;
use std::collections::HashMap;
use std::time::Instant;

fn random_f32(m: usize, n: usize, seed: u64) -> faer::Mat<f32> {
    let mut r = Rng::new(seed);
    faer::Mat::from_fn(m, n, |_, _| r.normal() as f32)
}

fn vm_hwm_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn write_pair(dir: &std::path::Path, layers: usize, d: usize, f: usize) -> f64 {
    let cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256, "hidden_size": d, "intermediate_size": f,
        "num_hidden_layers": layers, "num_attention_heads": d / 128, "num_key_value_heads": d / 128, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": true
    });
    let mut bytes = 0usize;
    for (which, seed) in [("base", 1u64), ("tuned", 2)] {
        let out = dir.join(which);
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("config.json"), cfg.to_string()).unwrap();
        let mut index = serde_json::Map::new();
        let shard = |name: &str| format!("layer-{name}.safetensors");
        let mut extra: HashMap<String, Tensor> = HashMap::new();
        extra.insert("model.embed_tokens.weight".into(), Tensor::zeros((256, d), DType::F32, &Device::Cpu).unwrap());
        extra.insert("model.norm.weight".into(), Tensor::ones(d, DType::F32, &Device::Cpu).unwrap());
        for l in 0..layers {
            let mut w: HashMap<String, Tensor> = HashMap::new();
            for (m, shape) in [
                ("self_attn.q_proj", (d, d)),
                ("self_attn.k_proj", (d, d)),
                ("self_attn.v_proj", (d, d)),
                ("self_attn.o_proj", (d, d)),
                ("mlp.gate_proj", (f, d)),
                ("mlp.up_proj", (f, d)),
                ("mlp.down_proj", (d, f)),
            ] {
                // the same base in both; the tuned one moved by a small dense change
                let mut rb = Rng::fork(7, (l * 7 + m.len()) as u64);
                let mut rd = Rng::fork(seed, (l * 7 + m.len()) as u64);
                let n = shape.0 * shape.1;
                let v: Vec<f32> = (0..n)
                    .map(|_| (rb.normal() * 0.02 + if which == "tuned" { rd.normal() * 1e-4 } else { 0.0 }) as f32)
                    .collect();
                bytes += n * 4;
                w.insert(format!("model.layers.{l}.{m}.weight"), Tensor::from_vec(v, shape, &Device::Cpu).unwrap());
            }
            w.insert(
                format!("model.layers.{l}.input_layernorm.weight"),
                Tensor::ones(d, DType::F32, &Device::Cpu).unwrap(),
            );
            w.insert(
                format!("model.layers.{l}.post_attention_layernorm.weight"),
                Tensor::ones(d, DType::F32, &Device::Cpu).unwrap(),
            );
            for k in w.keys() {
                index.insert(k.clone(), serde_json::json!(shard(&l.to_string())));
            }
            candle_core::safetensors::save(&w, out.join(shard(&l.to_string()))).unwrap();
        }
        for k in extra.keys() {
            index.insert(k.clone(), serde_json::json!(shard("extra")));
        }
        candle_core::safetensors::save(&extra, out.join(shard("extra"))).unwrap();
        std::fs::write(out.join("model.safetensors.index.json"), serde_json::json!({"weight_map": index}).to_string())
            .unwrap();
    }
    bytes as f64 / 2.0
}

fn main() {
    alloc::keep_freed_pages();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("matrix") => {
            let [m, n, threads]: [usize; 3] = [1, 2, 3].map(|i| args[i].parse().expect("M N THREADS [f32|f64]"));
            let dtype = args.get(4).map(String::as_str).unwrap_or("f32");
            let par = loralab_core::spectrum::par(threads);
            let before = alloc::reset_peak();
            // one timed decomposition per process: the runner repeats it in rounds, interleaved with the peers
            let t;
            let s1;
            match dtype {
                "f64" => {
                    let a = random_f32(m, n, 11);
                    let a = faer::Mat::<f64>::from_fn(m, n, |i, j| f64::from(a[(i, j)]));
                    t = Instant::now();
                    s1 = loralab_core::spectrum::singular_values(a.as_ref(), par).unwrap()[0];
                }
                "f32" => {
                    let a = random_f32(m, n, 11);
                    t = Instant::now();
                    s1 = f64::from(loralab_core::spectrum::singular_values(a.as_ref(), par).unwrap()[0]);
                }
                other => panic!("dtype {other}: f32 or f64"),
            }
            let seconds = t.elapsed().as_secs_f64();
            let heap = (alloc::peak() - before) as f64;
            println!(
                "{}",
                serde_json::json!({"m": m, "n": n, "threads": threads, "dtype": dtype, "seconds": seconds, "sigma_1": s1, "peak_heap_mib": heap / 1048576.0})
            );
        }
        Some("pair") => {
            let [layers, d, f]: [usize; 3] =
                [1, 2, 3].map(|i| args[i].parse().expect("LAYERS HIDDEN INTERMEDIATE DIR"));
            let dir = std::path::PathBuf::from(&args[4]);
            let t = Instant::now();
            let model_bytes = write_pair(&dir, layers, d, f);
            println!(
                "wrote a {layers}-layer {d}-wide (intermediate {f}) pair: {} MiB per model, {:.0} s",
                alloc::mib(model_bytes),
                t.elapsed().as_secs_f64()
            );
            let before = alloc::reset_peak();
            let req = loralab_core::analyze::AnalyzeRequest {
                base: dir.join("base").display().to_string(),
                tuned: dir.join("tuned").display().to_string(),
                spectra: false,
                memory_mb: 1024,
                ..Default::default()
            };
            let t = Instant::now();
            let a = loralab_core::analyze::analyze(&req, &|done, total, _| {
                if done % 32 == 0 || done == total {
                    eprintln!("  {done}/{total} matrices, {:.0} s", t.elapsed().as_secs_f64());
                }
            })
            .unwrap();
            let secs = t.elapsed().as_secs_f64();
            let biggest = (d * f * 8) as f64;
            let peak = (alloc::peak() - before) as f64;
            println!(
                "analyzed {} matrices (ΔW spectra, f64) in {secs:.1} s; peak heap {} MiB = {:.1}× one f64 {d}×{f} matrix ({} MiB), {:.3}× one model ({} MiB f32); VmHWM {:.0} MiB (includes mapped file pages)",
                a.matrices.len(),
                alloc::mib(peak),
                peak / biggest,
                alloc::mib(biggest),
                peak / model_bytes,
                alloc::mib(model_bytes),
                vm_hwm_mib()
            );
            let r90: f64 =
                a.matrices.iter().map(|m| m.delta.rank_at["0.9"] as f64 / m.delta.max_rank as f64).sum::<f64>()
                    / a.matrices.len() as f64;
            println!("(a random dense ΔW: mean rank@90 % / max rank = {r90:.2})");
        }
        _ => {
            eprintln!("usage: bench_svd matrix M N THREADS [f32|f64] | bench_svd pair LAYERS HIDDEN INTERMEDIATE DIR");
            std::process::exit(2);
        }
    }
}
