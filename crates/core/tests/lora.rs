//! LoRA's promises: B = 0 leaves the model exactly the base; merged equals unmerged;
//! frozen weights get no gradient and no optimizer state, and never change.
#![allow(clippy::unwrap_used)] // test code: a panic is how a check fails
mod common;
use candle_core::{DType, Tensor};
use common::*;
use loralab_core::config::{MethodConfig, MethodKind, OptimConfig, Targets};
use loralab_core::linear::ForwardCtx;
use loralab_core::model::{masked_loss, Llama};
use loralab_core::optim::Optimizer;
use loralab_core::rng::Rng;

fn lora(targets: &str, rank: usize, rslora: bool) -> MethodConfig {
    MethodConfig {
        kind: MethodKind::Lora,
        rank,
        alpha: Some(2.0 * rank as f64),
        dropout: 0.05,
        targets: Targets::Preset(targets.into()),
        rslora,
    }
}

fn logits(m: &Llama, ids: &Tensor) -> Tensor {
    m.forward(ids, &mut ForwardCtx { train: false, rng: &mut Rng::new(0) }).unwrap()
}

fn ids() -> Tensor {
    Tensor::new(&[[1u32, 5, 7, 3, 11, 2], [4, 4, 12, 0, 9, 8]], &candle_core::Device::Cpu).unwrap()
}

#[test]
fn b_zero_gives_the_base_logits_exactly() {
    let base = Llama::random(tiny_config(true, true), DType::F32, &mut Rng::new(3)).unwrap();
    let mut adapted = Llama::random(tiny_config(true, true), DType::F32, &mut Rng::new(3)).unwrap();
    adapted.apply_method(&lora("all", 4, false), &mut Rng::new(9)).unwrap();
    assert_eq!(max_abs_diff(&logits(&base, &ids()), &logits(&adapted, &ids())), 0.0);
}

#[test]
fn merged_adapter_equals_unmerged() {
    for (targets, rslora) in [("all", false), ("attention", true), ("mlp", false)] {
        let mut m = Llama::random(tiny_config(false, true), DType::F32, &mut Rng::new(3)).unwrap();
        m.apply_method(&lora(targets, 4, rslora), &mut Rng::new(9)).unwrap();
        for lin in m.linears() {
            if let Some(l) = &lin.lora {
                let (o, r) = l.b.dims2().unwrap();
                l.b.set(&randn(&[o, r], 0.5, o as u64 + 7).to_dtype(DType::F32).unwrap()).unwrap();
            }
        }
        let unmerged = logits(&m, &ids());
        let base = Llama::random(tiny_config(false, true), DType::F32, &mut Rng::new(3)).unwrap();
        assert!(max_abs_diff(&unmerged, &logits(&base, &ids())) > 1e-3, "non-zero B must change the model");
        m.merge_lora().unwrap();
        let d = max_abs_diff(&unmerged, &logits(&m, &ids()));
        assert!(d <= 1e-5, "{targets}: merged vs unmerged differ by {d:e}");
    }
}

#[test]
fn scale_is_alpha_over_r_or_sqrt_r() {
    assert_eq!(lora("all", 16, false).scale(), 2.0);
    assert_eq!(lora("all", 16, true).scale(), 8.0);
}

#[test]
fn frozen_weights_no_gradient_no_state_never_change() {
    let mut m = Llama::random(tiny_config(true, true), DType::F32, &mut Rng::new(3)).unwrap();
    m.apply_method(&lora("attention", 2, false), &mut Rng::new(9)).unwrap();
    let params = m.trainable();
    assert!(params.iter().all(|(n, _)| n.contains(".lora_A.") || n.contains(".lora_B.")), "only adapters train");
    assert_eq!(params.len(), 2 * 4 * 2);
    let mut opt = Optimizer::new(&OptimConfig::default(), 1e-2, &params).unwrap();
    assert_eq!(opt.state.len(), params.len(), "optimizer state exists for adapters only");
    let frozen: Vec<(String, Tensor)> =
        m.named_weights().into_iter().map(|(n, w)| (n, w.tensor().copy().unwrap())).collect();
    let adapters: Vec<Tensor> = params.iter().map(|(_, v)| v.as_tensor().copy().unwrap()).collect();
    let targets = [5u32, 7, 3, 11, 2, 0, 4, 12, 0, 9, 8, 0];
    let mask = [1.0; 12];
    for step in 1..=2 {
        let loss = masked_loss(
            &m.forward(&ids(), &mut ForwardCtx { train: true, rng: &mut Rng::new(step) }).unwrap(),
            &targets,
            &mask,
            12.0,
        )
        .unwrap();
        let g = loss.backward().unwrap();
        for (name, w) in m.named_weights() {
            assert!(g.get(w.tensor()).is_none(), "frozen {name} has a gradient");
        }
        let grads: Vec<Tensor> = params.iter().map(|(_, v)| g.get(v.as_tensor()).unwrap().clone()).collect();
        opt.step(&params, &grads, 1e-2, step as usize).unwrap();
    }
    for ((name, before), (_, w)) in frozen.iter().zip(m.named_weights()) {
        assert_eq!(max_abs_diff(before, w.tensor()), 0.0, "frozen {name} changed");
    }
    for ((name, v), before) in params.iter().zip(&adapters) {
        if name.contains("lora_B") {
            assert!(max_abs_diff(before, v.as_tensor()) > 0.0, "{name} did not train");
        }
    }
}
