//! Finite-difference gradient checks in f64 for every layer type and the whole tiny
//! model, for full and for LoRA parameters. This is what catches candle's silent
//! graph cuts (fused ops without backward) and any wrong hand-written backward.
#![allow(clippy::unwrap_used)] // test code: a panic is how a check fails
mod common;
use candle_core::{DType, Tensor, Var};
use common::*;
use loralab_core::config::{MethodConfig, MethodKind, Targets};
use loralab_core::linear::{ForwardCtx, Linear, Weight};
use loralab_core::model::{masked_loss, rope_tables, Llama};
use loralab_core::nn::portable::{masked_loss as masked_loss_portable, rope as rope_portable};
use loralab_core::ops;
use loralab_core::rng::Rng;

fn proj(shape: &[usize], seed: u64) -> Tensor {
    randn(shape, 1.0, seed)
}

/// A scalar from any output: Σ out·P with a fixed random P (exercises every output entry).
fn scalar(out: &Tensor, p: &Tensor) -> Tensor {
    (out * p).unwrap().sum_all().unwrap()
}

#[test]
fn linear_trainable_with_bias() {
    let x = Var::from_tensor(&randn(&[5, 6], 1.0, 1)).unwrap();
    let mut lin = Linear::new("l".into(), randn(&[4, 6], 0.5, 2), Some(randn(&[4], 0.5, 3)));
    lin.weight.unfreeze().unwrap();
    lin.bias.as_mut().unwrap().unfreeze().unwrap();
    let p = proj(&[5, 4], 4);
    let f =
        || scalar(&lin.forward(x.as_tensor(), &mut ForwardCtx { train: false, rng: &mut Rng::new(0) }).unwrap(), &p);
    let Weight::Trainable(w) = &lin.weight else { panic!() };
    let Some(Weight::Trainable(b)) = &lin.bias else { panic!() };
    gradcheck("linear.x", &x, &f, 30);
    gradcheck("linear.w", w, &f, 24);
    gradcheck("linear.b", b, &f, 4);
}

#[test]
fn frozen_linear_passes_gradient_to_input_only() {
    let x = Var::from_tensor(&randn(&[5, 6], 1.0, 1)).unwrap();
    let w = randn(&[4, 6], 0.5, 2);
    let b = randn(&[4], 0.5, 3);
    let p = proj(&[5, 4], 4);
    for bias in [None, Some(&b)] {
        let f = || scalar(&ops::frozen_linear(x.as_tensor(), &w, bias).unwrap(), &p);
        gradcheck("frozen_linear.x", &x, &f, 30);
        // the op's forward equals the plain matmul
        let plain = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
        let plain = match bias {
            Some(b) => plain.broadcast_add(b).unwrap(),
            None => plain,
        };
        assert!(max_abs_diff(&plain, &ops::frozen_linear(x.as_tensor(), &w, bias).unwrap()) < 1e-12);
        let g = f().backward().unwrap();
        assert!(g.get(&w).is_none() && g.get(&b).is_none(), "a frozen weight received a gradient");
    }
}

#[test]
fn lora_linear_a_b_and_input() {
    let x = Var::from_tensor(&randn(&[5, 6], 1.0, 1)).unwrap();
    let mut lin = Linear::new("l".into(), randn(&[4, 6], 0.5, 2), None);
    lin.add_lora(3, 2.0, 0.0, &mut Rng::new(5)).unwrap();
    let l = lin.lora.as_ref().unwrap();
    l.b.set(&randn(&[4, 3], 0.5, 6)).unwrap(); // B = 0 would make dL/dA vanish
    let p = proj(&[5, 4], 4);
    let f =
        || scalar(&lin.forward(x.as_tensor(), &mut ForwardCtx { train: false, rng: &mut Rng::new(0) }).unwrap(), &p);
    gradcheck("lora.A", &l.a, &f, 18);
    gradcheck("lora.B", &l.b, &f, 12);
    gradcheck("lora.x", &x, &f, 30);
    assert!(f().backward().unwrap().get(lin.weight.tensor()).is_none());
}

#[test]
fn fused_lora_op_matches_the_plain_composition_with_dropout_and_bias() {
    let x = Var::from_tensor(&randn(&[6, 5], 1.0, 1)).unwrap();
    let mut lin = Linear::new("l".into(), randn(&[4, 5], 0.5, 2), Some(randn(&[4], 0.5, 3)));
    lin.add_lora(3, 1.5, 0.3, &mut Rng::new(5)).unwrap();
    let l = lin.lora.as_ref().unwrap();
    l.b.set(&randn(&[4, 3], 0.5, 6)).unwrap();
    let p = proj(&[6, 4], 4);
    let fused =
        || scalar(&lin.forward(x.as_tensor(), &mut ForwardCtx { train: true, rng: &mut Rng::new(7) }).unwrap(), &p);
    let plain = || {
        scalar(&lin.lora_portable(x.as_tensor(), &mut ForwardCtx { train: true, rng: &mut Rng::new(7) }).unwrap(), &p)
    };
    assert!((fused().to_scalar::<f64>().unwrap() - plain().to_scalar::<f64>().unwrap()).abs() < 1e-12);
    let (gf, gp) = (fused().backward().unwrap(), plain().backward().unwrap());
    for (name, t) in [("x", x.as_tensor()), ("A", l.a.as_tensor()), ("B", l.b.as_tensor())] {
        let d = max_abs_diff(gf.get(t).unwrap(), gp.get(t).unwrap());
        assert!(d < 1e-12, "d{name}: fused vs plain differ by {d:e}");
    }
    gradcheck("lora_fused.A", &l.a, &fused, 15);
    gradcheck("lora_fused.B", &l.b, &fused, 12);
    gradcheck("lora_fused.x", &x, &fused, 30);
    // the dropout RNG advanced the same way in both
    let (mut r1, mut r2) = (Rng::new(7), Rng::new(7));
    lin.forward(x.as_tensor(), &mut ForwardCtx { train: true, rng: &mut r1 }).unwrap();
    lin.lora_portable(x.as_tensor(), &mut ForwardCtx { train: true, rng: &mut r2 }).unwrap();
    assert_eq!(r1, r2);
}

#[test]
fn rms_norm_op_and_reference_agree() {
    let x = Var::from_tensor(&randn(&[2, 3, 8], 1.0, 1)).unwrap();
    let w = Var::from_tensor(&(randn(&[8], 0.1, 2) + 1.0).unwrap()).unwrap();
    let p = proj(&[2, 3, 8], 3);
    let op = ops::rms_norm(x.as_tensor(), w.as_tensor(), 1e-5, true).unwrap();
    let reference = loralab_core::nn::portable::rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap();
    assert!(max_abs_diff(&op, &reference) < 1e-12);
    let f = || scalar(&ops::rms_norm(x.as_tensor(), w.as_tensor(), 1e-5, true).unwrap(), &p);
    gradcheck("rms.x", &x, &f, 48);
    gradcheck("rms.w", &w, &f, 8);
    // the fused backward equals autodiff of the reference composition
    let g_op = f().backward().unwrap();
    let g_ref = scalar(&reference, &p).backward().unwrap();
    assert!(max_abs_diff(g_op.get(x.as_tensor()).unwrap(), g_ref.get(x.as_tensor()).unwrap()) < 1e-12);
    assert!(max_abs_diff(g_op.get(w.as_tensor()).unwrap(), g_ref.get(w.as_tensor()).unwrap()) < 1e-12);
    // frozen weight: no gradient computed for it
    let g = scalar(&ops::rms_norm(x.as_tensor(), w.as_tensor(), 1e-5, false).unwrap(), &p).backward().unwrap();
    assert!(g.get(w.as_tensor()).is_none());
}

#[test]
fn rope_op_with_llama3_scaling_matches_reference() {
    let cfg = tiny_config(true, false);
    let x = Var::from_tensor(&randn(&[1, 4, 5, 2], 1.0, 1)).unwrap();
    let rope = rope_tables(&cfg, 5).unwrap();
    let cos = Tensor::from_vec(rope.cos.to_vec(), (5, 2), &candle_core::Device::Cpu).unwrap();
    let sin = Tensor::from_vec(rope.sin.to_vec(), (5, 2), &candle_core::Device::Cpu).unwrap();
    let p = proj(&[1, 4, 5, 2], 2);
    let y = rope.apply(x.as_tensor()).unwrap();
    assert!(max_abs_diff(&y, &rope_portable(x.as_tensor(), &cos, &sin).unwrap()) < 1e-12);
    let f = || scalar(&rope.apply(x.as_tensor()).unwrap(), &p);
    gradcheck("rope.x", &x, &f, 40);
    let g_ref = scalar(&rope_portable(x.as_tensor(), &cos, &sin).unwrap(), &p).backward().unwrap();
    assert!(
        max_abs_diff(f().backward().unwrap().get(x.as_tensor()).unwrap(), g_ref.get(x.as_tensor()).unwrap()) < 1e-12
    );
    // rotation preserves the norm of each (x_i, x_{i+hd/2}) pair
    let n = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
    assert!((n(&y) - n(x.as_tensor())).abs() < 1e-10);
}

#[test]
fn causal_softmax_op_matches_reference() {
    // (b, kv, rep·t, t) with rep = 2, t = 5: row r is query position r mod t
    let x = Var::from_tensor(&randn(&[2, 1, 10, 5], 1.0, 1)).unwrap();
    let p = proj(&[2, 1, 10, 5], 2);
    let y = ops::causal_softmax(x.as_tensor(), 0.7).unwrap();
    let r = loralab_core::nn::portable::causal_softmax(&x.as_tensor().reshape((2, 1, 2, 5, 5)).unwrap(), 0.7)
        .unwrap()
        .reshape((2, 1, 10, 5))
        .unwrap();
    assert!(max_abs_diff(&y, &r) < 1e-12);
    let f = || scalar(&ops::causal_softmax(x.as_tensor(), 0.7).unwrap(), &p);
    gradcheck("causal_softmax.x", &x, &f, 60);
}

#[test]
fn masked_nll_op_matches_reference() {
    let x = Var::from_tensor(&randn(&[6, 7], 2.0, 1)).unwrap();
    let targets = vec![1u32, 6, 0, 3, 3, 2];
    let mask = vec![1.0, 0.0, 1.0, 1.0, 0.0, 1.0];
    let f = || masked_loss(x.as_tensor(), &targets, &mask, 4.0).unwrap();
    let tt = Tensor::new(targets.as_slice(), &candle_core::Device::Cpu).unwrap();
    let mt = Tensor::new(mask.as_slice(), &candle_core::Device::Cpu).unwrap();
    let r = masked_loss_portable(x.as_tensor(), &tt, &mt, 4.0).unwrap();
    assert!(max_abs_diff(&f(), &r) < 1e-12);
    gradcheck("masked_nll.x", &x, &f, 42);
    let g_ref = r.backward().unwrap();
    assert!(
        max_abs_diff(f().backward().unwrap().get(x.as_tensor()).unwrap(), g_ref.get(x.as_tensor()).unwrap()) < 1e-12
    );
}

#[test]
fn dropout_op_regenerates_its_mask() {
    let x = Var::from_tensor(&randn(&[3, 40], 1.0, 1)).unwrap();
    let p = proj(&[3, 40], 2);
    let f = || scalar(&ops::dropout(x.as_tensor(), 0.3, &mut Rng::new(5)).unwrap(), &p);
    gradcheck("dropout.x", &x, &f, 40);
    // about p of the entries are dropped, the rest scaled by 1/(1-p); the RNG advances past them
    let mut r = Rng::new(5);
    let y = ops::dropout(&Tensor::ones(10_000, DType::F64, &candle_core::Device::Cpu).unwrap(), 0.3, &mut r)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let dropped = y.iter().filter(|&&v| v == 0.0).count() as f64 / 1e4;
    assert!((dropped - 0.3).abs() < 0.02, "{dropped}");
    assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-12));
    let mut seq = Rng::new(5);
    (0..10_000 / 4).for_each(|_| {
        seq.uniform();
    });
    assert_eq!(r, seq, "a draw serves four elements");
}

fn model_loss(m: &Llama, ids: &Tensor, targets: &[u32], mask: &[f64]) -> Tensor {
    let logits = m.forward(ids, &mut ForwardCtx { train: false, rng: &mut Rng::new(0) }).unwrap();
    masked_loss(&logits, targets, mask, 7.0).unwrap()
}

fn data() -> (Tensor, Vec<u32>, Vec<f64>) {
    let ids = Tensor::new(&[[1u32, 5, 7, 3, 11], [4, 4, 12, 0, 9]], &candle_core::Device::Cpu).unwrap();
    (ids, vec![5, 7, 3, 11, 0, 4, 12, 0, 9, 0], vec![1., 1., 0., 1., 0., 1., 1., 1., 1., 0.])
}

#[test]
fn whole_model_full_finetuning_every_tensor() {
    for (tied, bias) in [(true, false), (false, true)] {
        let mut m = Llama::random(tiny_config(tied, bias), DType::F64, &mut Rng::new(3)).unwrap();
        m.apply_method(&MethodConfig { kind: MethodKind::Full, ..Default::default() }, &mut Rng::new(4)).unwrap();
        let (ids, targets, mask) = data();
        let f = || model_loss(&m, &ids, &targets, &mask);
        for (name, v) in m.trainable() {
            gradcheck(&name, &v, &f, 6);
        }
    }
}

#[test]
fn whole_model_lora_adapters_and_no_frozen_gradients() {
    let mut m = Llama::random(tiny_config(true, true), DType::F64, &mut Rng::new(3)).unwrap();
    let method = MethodConfig {
        kind: MethodKind::Lora,
        rank: 2,
        alpha: Some(4.0),
        dropout: 0.0,
        targets: Targets::Preset("all".into()),
        rslora: false,
    };
    m.apply_method(&method, &mut Rng::new(4)).unwrap();
    for lin in m.linears() {
        let l = lin.lora.as_ref().unwrap();
        let (o, r) = l.b.dims2().unwrap();
        l.b.set(&randn(&[o, r], 0.3, o as u64 * 31 + r as u64)).unwrap();
    }
    let (ids, targets, mask) = data();
    let f = || model_loss(&m, &ids, &targets, &mask);
    let trainable = m.trainable();
    assert_eq!(trainable.len(), 2 * 7 * 2, "A and B on 7 modules × 2 layers");
    for (name, v) in &trainable {
        gradcheck(name, v, &f, 4);
    }
    let g = f().backward().unwrap();
    for (name, w) in m.named_weights() {
        assert!(g.get(w.tensor()).is_none(), "frozen {name} received a gradient");
    }
}
