//! The engine against an independent implementation: tests/reference/llama_ref.py
//! (numpy + the `autograd` package, f64) produced the fixture's logits and four
//! AdamW steps of full fine-tuning and of LoRA (r=3 on q, v, down; alpha 6), with
//! global-norm clipping at 1 and weight decay 0.1. Asserted here in f64.
#![allow(clippy::unwrap_used)] // test code: a panic is how a check fails
mod common;
use candle_core::{DType, Tensor};
use common::*;
use loralab_core::config::{MethodConfig, MethodKind, OptimConfig, OptimizerName, Targets};
use loralab_core::linear::ForwardCtx;
use loralab_core::model::{masked_loss, peft_key, Llama};
use loralab_core::optim::{clip_grad_norm, Optimizer};
use loralab_core::rng::Rng;
use loralab_core::train::batch_from_rows;

#[test]
fn logits_match_reference() {
    let fx = fixture();
    let m = fx.model(DType::F64);
    let b = batch_from_rows(&fx.rows(0)).unwrap();
    let logits = m.forward(&b.ids, &mut ForwardCtx { train: false, rng: &mut Rng::new(0) }).unwrap();
    let d = max_abs_diff(&logits, &fx.t["expected.logits"]);
    assert!(d < 1e-10, "logits differ from the reference by {d:e}");
}

/// Four steps exactly as the train loop does them: forward, masked loss, backward,
/// clip, AdamW at a constant lr.
fn four_steps(fx: &Fixture, m: &Llama) -> (Vec<f64>, Vec<f64>) {
    let params = m.trainable();
    let cfg = OptimConfig {
        name: OptimizerName::Adamw,
        lr: Some(fx.json["lr"].as_f64().unwrap()),
        betas: [0.9, 0.95],
        eps: 1e-8,
        weight_decay: 0.1,
        grad_clip: 1.0,
    };
    let mut opt = Optimizer::new(&cfg, cfg.lr.unwrap(), &params).unwrap();
    let (mut losses, mut norms) = (vec![], vec![]);
    for s in 0..4 {
        let b = batch_from_rows(&fx.rows(s)).unwrap();
        let logits = m.forward(&b.ids, &mut ForwardCtx { train: true, rng: &mut Rng::new(0) }).unwrap();
        let loss = masked_loss(&logits, &b.targets, &b.mask, b.loss_tokens).unwrap();
        losses.push(loss.to_scalar::<f64>().unwrap());
        let g = loss.backward().unwrap();
        let mut grads: Vec<Tensor> = params.iter().map(|(_, v)| g.get(v.as_tensor()).unwrap().clone()).collect();
        norms.push(clip_grad_norm(&mut grads, 1.0).unwrap());
        opt.step(&params, &grads, cfg.lr.unwrap(), s + 1).unwrap();
    }
    (losses, norms)
}

fn assert_close(what: &str, got: &[f64], want: &serde_json::Value) {
    let want: Vec<f64> = want.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= 1e-10 * w.abs().max(1.0), "{what}[{i}]: {g} vs reference {w}");
    }
}

#[test]
fn full_finetuning_four_adamw_steps_match_reference() {
    let fx = fixture();
    let mut m = fx.model(DType::F64);
    m.apply_method(&MethodConfig { kind: MethodKind::Full, ..Default::default() }, &mut Rng::new(0)).unwrap();
    let (losses, norms) = four_steps(&fx, &m);
    assert_close("full loss", &losses, &fx.json["full_losses"]);
    assert_close("full grad norm", &norms, &fx.json["full_grad_norms"]);
    for (name, w) in m.named_weights() {
        let d = max_abs_diff(w.tensor(), &fx.t[&format!("full.{name}")]);
        assert!(d < 1e-9, "{name} after 4 steps differs from the reference by {d:e}");
    }
}

#[test]
fn lora_four_adamw_steps_match_reference() {
    let fx = fixture();
    let mut m = fx.model(DType::F64);
    let method = MethodConfig {
        kind: MethodKind::Lora,
        rank: 3,
        alpha: Some(6.0),
        dropout: 0.0,
        targets: Targets::List(vec!["q_proj".into(), "v_proj".into(), "down_proj".into()]),
        rslora: false,
    };
    m.apply_method(&method, &mut Rng::new(0)).unwrap();
    let base: Vec<(String, Tensor)> =
        m.named_weights().into_iter().map(|(n, w)| (n, w.tensor().copy().unwrap())).collect();
    for lin in m.linears() {
        if let Some(l) = &lin.lora {
            l.a.set(&fx.t[&format!("lora_init.{}.A", lin.name)]).unwrap();
        }
    }
    let (losses, norms) = four_steps(&fx, &m);
    assert_close("lora loss", &losses, &fx.json["lora_losses"]);
    assert_close("lora grad norm", &norms, &fx.json["lora_grad_norms"]);
    for lin in m.linears() {
        if let Some(l) = &lin.lora {
            assert!(
                max_abs_diff(l.a.as_tensor(), &fx.t[&format!("lora.{}.A", lin.name)]) < 1e-9,
                "{}",
                peft_key(&lin.name, "A")
            );
            assert!(
                max_abs_diff(l.b.as_tensor(), &fx.t[&format!("lora.{}.B", lin.name)]) < 1e-9,
                "{}",
                peft_key(&lin.name, "B")
            );
        }
    }
    // only adapter tensors changed
    for ((name, before), (_, w)) in base.iter().zip(m.named_weights()) {
        assert_eq!(max_abs_diff(before, w.tensor()), 0.0, "frozen {name} changed");
    }
}
