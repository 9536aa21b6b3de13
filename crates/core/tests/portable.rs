//! The portable path: what the engine runs on CUDA (and in bf16), checked on CPU.
//! Every fused CPU op has a composition of candle's own tensor ops beside it (ops::fused
//! decides which runs); candle runs those compositions on every device. Here the whole
//! training loop runs both ways on the tiny model: f32 portable equals f32 fused, and
//! bf16 mixed precision (bf16 activations, f32 masters and optimizer state) follows f32
//! within bf16's tolerance, trains, and saves f32 weights.
#![allow(clippy::unwrap_used)] // test code: a panic is how a check fails
mod common;
use common::repo;
use loralab_core::config::{parse_config, RunConfig};
use loralab_core::nn::portable::with_portable;
use loralab_core::train::{run, Event, RunSummary};
use std::path::Path;
use std::sync::atomic::AtomicBool;

fn cfg(out: &str, run_id: &str, kind: &str, dtype: &str, dropout: f64) -> RunConfig {
    let tiny = repo().join("datasets/tiny");
    let out = std::env::temp_dir().join(format!("loralab-portable-{out}-{}", std::process::id()));
    let v = serde_json::json!({
        "name": "t", "out_dir": out, "run_id": run_id, "seed": 5,
        "model": {"config": tiny.join("config.json"), "tokenizer": tiny.join("tokenizer.json"), "dtype": dtype},
        "data": {"train": tiny.join("code.jsonl"), "text_field": "content", "seq_len": 32, "cache_dir": out.join("cache")},
        "method": {"kind": kind, "rank": 4, "dropout": dropout},
        "optim": {"name": "adamw", "lr": 1e-3},
        "train": {"steps": 3, "micro_batch": 2, "grad_accum": 2, "attention_dropout": dropout, "checkpoint_every": 0}
    });
    parse_config(&v.to_string()).unwrap()
}

fn go(c: RunConfig) -> (RunSummary, Vec<f64>) {
    let s = run(c, &mut |_: &Event| {}, &AtomicBool::new(false)).unwrap();
    let losses = std::fs::read_to_string(Path::new(&s.run_dir).join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
        .collect();
    (s, losses)
}

#[test]
fn portable_f32_training_equals_the_fused_ops() {
    for kind in ["full", "lora"] {
        // dropout on (LoRA and attention): the portable path draws the same masks
        let (_, fused) = go(cfg("eq", &format!("fused-{kind}"), kind, "f32", 0.1));
        let (_, portable) = with_portable(|| go(cfg("eq", &format!("portable-{kind}"), kind, "f32", 0.1)));
        assert_eq!(fused.len(), 3);
        for (a, b) in fused.iter().zip(&portable) {
            assert!((a - b).abs() <= 1e-4 * a.abs(), "{kind}: fused {fused:?} vs portable {portable:?}");
        }
    }
}

#[test]
fn bf16_mixed_precision_follows_f32_and_saves_f32_masters() {
    for kind in ["full", "lora"] {
        let (_, f32_losses) = go(cfg("bf16", &format!("f32-{kind}"), kind, "f32", 0.0));
        let (s, bf16_losses) = go(cfg("bf16", &format!("bf16-{kind}"), kind, "bf16", 0.0));
        // the first three steps' losses agree to bf16's precision (8 bits of mantissa)
        for (a, b) in f32_losses.iter().zip(&bf16_losses) {
            assert!((a - b).abs() <= 2e-2 * a.abs(), "{kind}: f32 {f32_losses:?} vs bf16 {bf16_losses:?}");
        }
        // trained weights are saved from their f32 masters
        let file = if kind == "full" { "model.safetensors" } else { "adapter_model.safetensors" };
        let saved = candle_core::safetensors::load(Path::new(&s.output).join(file), &candle_core::Device::Cpu).unwrap();
        assert!(!saved.is_empty());
        for (name, t) in &saved {
            assert_eq!(t.dtype(), candle_core::DType::F32, "{name}");
            // gradients reached the masters: every B left its zero init
            if name.contains("lora_B") {
                assert!(t.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "{name} never moved");
            }
        }
    }
}

#[test]
fn gradient_checkpointing_gives_plain_backprops_gradients_and_losses() {
    use loralab_core::linear::ForwardCtx;
    use loralab_core::rng::Rng;
    use loralab_core::train::{batch_from_rows, build_model};
    for kind in ["full", "lora"] {
        // the gradients of one micro-batch, dropout on (the replayed RNG must give the same masks)
        let c = cfg("ckpt", kind, kind, "f32", 0.1);
        let model = build_model(&c).unwrap();
        let params = model.trainable();
        let rows: Vec<(Vec<u32>, Vec<u8>)> =
            (0..2).map(|r| ((0..32).map(|i| ((i * 7 + r * 13) % 500) as u32).collect(), vec![1u8; 32])).collect();
        let mb = batch_from_rows(&rows).unwrap();
        let run = |ckpt: bool| {
            let mut rng = Rng::new(9);
            let r = model
                .loss_and_grads(
                    &mb.ids,
                    &mb.targets,
                    &mb.mask,
                    mb.loss_tokens,
                    &mut ForwardCtx { train: true, rng: &mut rng },
                    &params,
                    ckpt,
                )
                .unwrap();
            (r, rng.uniform())
        };
        let (((l0, g0), next0), ((l1, g1), next1)) = (run(false), run(true));
        assert!((l0 - l1).abs() <= 1e-6 * l0, "{kind}: loss {l0} vs {l1}");
        assert_eq!(next0, next1, "{kind}: the RNG must end where plain backprop leaves it");
        for ((name, _), (a, b)) in params.iter().zip(g0.iter().zip(&g1)) {
            let (a, b) = (a.as_ref().unwrap(), b.as_ref().expect("checkpointing lost a gradient"));
            let scale = a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-12);
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d <= 1e-5 * scale, "{kind} {name}: max |Δg| {d} of max |g| {scale}");
        }
        // and whole runs: the same losses step by step
        let with = |ckpt: bool| {
            let mut c = cfg("ckpt", &format!("{kind}-{ckpt}"), kind, "f32", 0.1);
            c.train.gradient_checkpointing = ckpt;
            go(c).1
        };
        let (plain, ckpt) = (with(false), with(true));
        for (a, b) in plain.iter().zip(&ckpt) {
            assert!((a - b).abs() <= 1e-6 * a.abs(), "{kind}: plain {plain:?} vs checkpointed {ckpt:?}");
        }
    }
}
