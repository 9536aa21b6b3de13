//! The CUDA kernels (crates/kernels, run on its CPU emulator) held to this crate's own ops on
//! the same inputs: the conventions the GPU path relies on (grouped-query head order, rotary
//! table layout, the dropout RNG's draws, the loss's row weights) are the engine's.
//! crates/kernels/tests checks the kernels' maths against plain references; this file checks
//! they compute what ops.rs and model.rs compute.
#![allow(clippy::unwrap_used)] // test code: a panic is how a check fails
use candle_core::{DType, Device, Tensor, Var};
use loralab_core::ops;
use loralab_core::rng::Rng;
use loralab_kernels::emu::{launch, Arg};
use loralab_kernels::{self as kern, Dtype};

fn randn(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec((0..n).map(|_| rng.normal() as f32).collect::<Vec<f32>>(), shape, &Device::Cpu).unwrap()
}

/// Values a bf16 holds exactly (so f32 and bf16 kernels see the same inputs).
fn randn_bf16(rng: &mut Rng, shape: &[usize]) -> Tensor {
    randn(rng, shape).to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap()
}

fn bf16_bits(v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| half::bf16::from_f32(x).to_bits()).collect()
}

fn from_bf16_bits(v: &[u16]) -> Vec<f32> {
    v.iter().map(|&x| half::bf16::from_bits(x).to_f32()).collect()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn the_dropout_kernel_draws_ops_dropouts_mask_bit_for_bit() {
    let mut rng = Rng::fork(7, 3);
    let x = randn(&mut rng, &[37, 29]); // 1073 elements: a partial last draw
    for p in [0.05, 0.5] {
        let start = rng.clone();
        let cpu = flat(&ops::dropout(&x, p, &mut rng).unwrap());
        let n = x.elem_count();
        let mut gpu = vec![f32::NAN; n];
        let xs = flat(&x);
        let thr = (p * 65536.0).round() as u32;
        launch(
            &kern::name("dropout", Dtype::F32),
            kern::dropout(n),
            &mut [
                Arg::F32(&xs),
                Arg::F32Mut(&mut gpu),
                Arg::Long(n as u64),
                Arg::Long(start.state),
                Arg::Uint(thr),
                Arg::Float((1.0 / (1.0 - p)) as f32),
            ],
        );
        assert!(
            cpu.iter().zip(&gpu).all(|(a, b)| a.to_bits() == b.to_bits()),
            "p = {p}: the kernel's mask differs from ops::dropout's"
        );
        let mut after = start.clone();
        after.skip(ops::dropout_draws(n));
        assert_eq!(rng, after, "ops::dropout advances the RNG past exactly its draws");
    }
}

#[test]
fn the_attention_kernels_compute_model_rs_grouped_query_attention_and_its_gradients() {
    let mut rng = Rng::new(11);
    let (b, nh, kv, t, hd) = (2, 4, 2, 19, 32);
    let rep = nh / kv;
    let scale = 1.0 / (hd as f64).sqrt();
    let (q, k, v) = (
        Var::from_tensor(&randn_bf16(&mut rng, &[b, nh, t, hd])).unwrap(),
        Var::from_tensor(&randn_bf16(&mut rng, &[b, kv, t, hd])).unwrap(),
        Var::from_tensor(&randn_bf16(&mut rng, &[b, kv, t, hd])).unwrap(),
    );
    let d_o = randn_bf16(&mut rng, &[b, nh, t, hd]);
    // model.rs's composition: the rep query heads of kv head j are adjacent
    let scores = q.as_tensor().reshape((b, kv, rep * t, hd)).unwrap().matmul(&k.as_tensor().t().unwrap()).unwrap();
    let o =
        ops::causal_softmax(&scores, scale).unwrap().matmul(v.as_tensor()).unwrap().reshape((b, nh, t, hd)).unwrap();
    let grads = (&o * &d_o).unwrap().sum_all().unwrap().backward().unwrap();
    let (dq, dk, dv) = (
        flat(grads.get(q.as_tensor()).unwrap()),
        flat(grads.get(k.as_tensor()).unwrap()),
        flat(grads.get(v.as_tensor()).unwrap()),
    );

    let (qs, ks, vs, dos) = (flat(q.as_tensor()), flat(k.as_tensor()), flat(v.as_tensor()), flat(&d_o));
    let (nq, nk, rows) = (qs.len(), ks.len(), b * nh * t);
    let (nh_, kv_, t_, sc) = (nh as i32, kv as i32, t as i32, scale as f32);
    let (mut go, mut lse, mut delta) = (vec![f32::NAN; nq], vec![f32::NAN; rows], vec![f32::NAN; rows]);
    launch(
        &kern::attn_name("attn_fwd", Dtype::F32, hd),
        kern::attn_fwd(b, nh, t, hd),
        &mut [
            Arg::F32(&qs),
            Arg::F32(&ks),
            Arg::F32(&vs),
            Arg::F32Mut(&mut go),
            Arg::F32Mut(&mut lse),
            Arg::Int(nh_),
            Arg::Int(kv_),
            Arg::Int(t_),
            Arg::Float(sc),
        ],
    );
    let d = max_diff(&go, &flat(&o));
    assert!(d < 1e-5, "O differs from model.rs's attention by {d:e}");
    launch(
        &kern::attn_name("attn_bwd_delta", Dtype::F32, hd),
        kern::attn_bwd_delta(rows),
        &mut [Arg::F32(&go), Arg::F32(&dos), Arg::F32Mut(&mut delta), Arg::Int(rows as i32)],
    );
    let (mut gdq, mut gdk, mut gdv) = (vec![f32::NAN; nq], vec![f32::NAN; nk], vec![f32::NAN; nk]);
    launch(
        &kern::attn_name("attn_bwd_kv", Dtype::F32, hd),
        kern::attn_bwd_kv(b, kv, t, hd),
        &mut [
            Arg::F32(&qs),
            Arg::F32(&ks),
            Arg::F32(&vs),
            Arg::F32(&dos),
            Arg::F32(&lse),
            Arg::F32(&delta),
            Arg::F32Mut(&mut gdk),
            Arg::F32Mut(&mut gdv),
            Arg::Int(nh_),
            Arg::Int(kv_),
            Arg::Int(t_),
            Arg::Float(sc),
        ],
    );
    launch(
        &kern::attn_name("attn_bwd_q", Dtype::F32, hd),
        kern::attn_fwd(b, nh, t, hd),
        &mut [
            Arg::F32(&qs),
            Arg::F32(&ks),
            Arg::F32(&vs),
            Arg::F32(&dos),
            Arg::F32(&lse),
            Arg::F32(&delta),
            Arg::F32Mut(&mut gdq),
            Arg::Int(nh_),
            Arg::Int(kv_),
            Arg::Int(t_),
            Arg::Float(sc),
        ],
    );
    for (what, got, want) in [("dQ", &gdq, &dq), ("dK", &gdk, &dk), ("dV", &gdv, &dv)] {
        let d = max_diff(got, want);
        assert!(d < 1e-4, "{what} differs from candle's backward through model.rs's attention by {d:e}");
    }

    // the tensor-core kernels (bf16 in and out, the GPU's default for bf16) on the same inputs
    let (q16, k16, v16, do16) = (bf16_bits(&qs), bf16_bits(&ks), bf16_bits(&vs), bf16_bits(&dos));
    let (mut o16, mut lse16, mut delta16) = (vec![0u16; nq], vec![f32::NAN; rows], vec![f32::NAN; rows]);
    let name = |op: &str| format!("{op}_tc_bf16_{hd}");
    launch(
        &name("attn_fwd"),
        kern::attn_tc(b, nh, t),
        &mut [
            Arg::U16(&q16),
            Arg::U16(&k16),
            Arg::U16(&v16),
            Arg::U16Mut(&mut o16),
            Arg::F32Mut(&mut lse16),
            Arg::Int(nh_),
            Arg::Int(kv_),
            Arg::Int(t_),
            Arg::Float(sc),
        ],
    );
    let d = max_diff(&from_bf16_bits(&o16), &flat(&o));
    assert!(d < 2e-2, "tensor-core O differs from model.rs's attention by {d:e}");
    launch(
        &kern::attn_name("attn_bwd_delta", Dtype::Bf16, hd),
        kern::attn_bwd_delta(rows),
        &mut [Arg::U16(&o16), Arg::U16(&do16), Arg::F32Mut(&mut delta16), Arg::Int(rows as i32)],
    );
    let (mut dq16, mut dk16, mut dv16) = (vec![0u16; nq], vec![0u16; nk], vec![0u16; nk]);
    launch(
        &name("attn_bwd_kv"),
        kern::attn_tc(b, kv, t),
        &mut [
            Arg::U16(&q16),
            Arg::U16(&k16),
            Arg::U16(&v16),
            Arg::U16(&do16),
            Arg::F32(&lse16),
            Arg::F32(&delta16),
            Arg::U16Mut(&mut dk16),
            Arg::U16Mut(&mut dv16),
            Arg::Int(nh_),
            Arg::Int(kv_),
            Arg::Int(t_),
            Arg::Float(sc),
        ],
    );
    launch(
        &name("attn_bwd_q"),
        kern::attn_tc(b, nh, t),
        &mut [
            Arg::U16(&q16),
            Arg::U16(&k16),
            Arg::U16(&v16),
            Arg::U16(&do16),
            Arg::F32(&lse16),
            Arg::F32(&delta16),
            Arg::U16Mut(&mut dq16),
            Arg::Int(nh_),
            Arg::Int(kv_),
            Arg::Int(t_),
            Arg::Float(sc),
        ],
    );
    for (what, got, want) in [("dQ", &dq16, &dq), ("dK", &dk16, &dk), ("dV", &dv16, &dv)] {
        let d = max_diff(&from_bf16_bits(got), want);
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        assert!(
            d < 3e-2 * scale,
            "tensor-core {what} differs from candle's backward through model.rs's attention by {d:e} (scale {scale})"
        );
    }
}

#[test]
fn rope_swiglu_rms_norm_and_the_loss_kernels_compute_what_ops_rs_computes() {
    let mut rng = Rng::new(12);
    // rotary embedding with the model's tables (frequencies repeated as HF does)
    let (b, h, t, hd) = (2, 3, 9, 32);
    let inv_freq: Vec<f64> = (0..hd / 2).map(|i| 1.0 / 10000f64.powf(2.0 * i as f64 / hd as f64)).collect();
    let tables = ops::RopeTables::new(&inv_freq, t);
    let x = randn(&mut rng, &[b, h, t, hd]);
    let want = flat(&tables.apply(&x).unwrap());
    let (cos, sin): (Vec<f32>, Vec<f32>) =
        (tables.cos.iter().map(|&v| v as f32).collect(), tables.sin.iter().map(|&v| v as f32).collect());
    let (xs, rows) = (flat(&x), b * h * t);
    let mut got = vec![f32::NAN; xs.len()];
    launch(
        &kern::name("rope", Dtype::F32),
        kern::rope(rows, hd),
        &mut [
            Arg::F32(&xs),
            Arg::F32(&cos),
            Arg::F32(&sin),
            Arg::F32Mut(&mut got),
            Arg::Int(rows as i32),
            Arg::Int(t as i32),
            Arg::Int(hd as i32),
            Arg::Float(1.0),
        ],
    );
    let d = max_diff(&got, &want);
    assert!(d < 1e-5, "rope differs from RopeTables::apply by {d:e}");

    // SwiGLU and its gradients, against ops::swiglu's composition (candle's silu and mul)
    let (g, u, dy) = (
        Var::from_tensor(&randn(&mut rng, &[5, 33])).unwrap(),
        Var::from_tensor(&randn(&mut rng, &[5, 33])).unwrap(),
        randn(&mut rng, &[5, 33]),
    );
    let y = ops::swiglu(g.as_tensor(), u.as_tensor()).unwrap();
    let grads = (&y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
    let (gs, us, dys, n) = (flat(g.as_tensor()), flat(u.as_tensor()), flat(&dy), 5 * 33);
    let mut got = vec![f32::NAN; n];
    launch(
        &kern::name("swiglu_fwd", Dtype::F32),
        kern::elementwise(n),
        &mut [Arg::F32(&gs), Arg::F32(&us), Arg::F32Mut(&mut got), Arg::Long(n as u64)],
    );
    let d = max_diff(&got, &flat(&y));
    assert!(d < 1e-5, "swiglu differs from ops::swiglu by {d:e}");
    let (mut dg, mut du) = (vec![f32::NAN; n], vec![f32::NAN; n]);
    launch(
        &kern::name("swiglu_bwd", Dtype::F32),
        kern::elementwise(n),
        &mut [
            Arg::F32(&gs),
            Arg::F32(&us),
            Arg::F32(&dys),
            Arg::F32Mut(&mut dg),
            Arg::F32Mut(&mut du),
            Arg::Long(n as u64),
        ],
    );
    for (what, got, t) in [("dg", &dg, g.as_tensor()), ("du", &du, u.as_tensor())] {
        let d = max_diff(got, &flat(grads.get(t).unwrap()));
        assert!(d < 1e-5, "swiglu {what} differs from candle's backward by {d:e}");
    }

    // RMSNorm
    let (n, dm, eps) = (7, 200, 1e-5);
    let (x, w) = (randn(&mut rng, &[n, dm]), randn(&mut rng, &[dm]));
    let want = flat(&ops::rms_norm(&x, &w, eps, false).unwrap());
    let (xs, ws) = (flat(&x), flat(&w));
    let mut got = vec![f32::NAN; xs.len()];
    launch(
        &kern::name("rms_norm_fwd", Dtype::F32),
        kern::rms_norm(n),
        &mut [Arg::F32(&xs), Arg::F32(&ws), Arg::F32Mut(&mut got), Arg::Int(dm as i32), Arg::Float(eps as f32)],
    );
    let d = max_diff(&got, &want);
    assert!(d < 1e-5, "rms-norm differs from ops::rms_norm by {d:e}");

    // the masked next-token loss: row weights = mask / denominator, as the trainer passes them
    let (n, vocab) = (6, 300);
    let logits = (randn(&mut rng, &[n, vocab]) * 3.0).unwrap();
    let targets: Vec<u32> = (0..n as u32).map(|i| i * 47 % vocab as u32).collect();
    let weights = vec![0.25, 0.0, 0.25, 0.25, 0.0, 0.25];
    let want = ops::masked_nll(&logits, targets.clone(), weights.clone())
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let ls = flat(&logits);
    let w32: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
    let (mut per_row, mut total) = (vec![f32::NAN; n], vec![f32::NAN]);
    launch(
        &kern::name("nll_fwd", Dtype::F32),
        kern::nll(n),
        &mut [Arg::F32(&ls), Arg::U32(&targets), Arg::F32(&w32), Arg::F32Mut(&mut per_row), Arg::Int(vocab as i32)],
    );
    launch("sum_f32", kern::sum(), &mut [Arg::F32(&per_row), Arg::F32Mut(&mut total), Arg::Int(n as i32)]);
    assert!((total[0] - want).abs() < 1e-5 * want.abs().max(1.0), "loss {} vs ops::masked_nll {want}", total[0]);
    // and its gradient: candle's backward through the CPU op
    let lv = Var::from_tensor(&logits).unwrap();
    let g = ops::masked_nll(lv.as_tensor(), targets.clone(), weights).unwrap().backward().unwrap();
    let want = flat(g.get(lv.as_tensor()).unwrap());
    let mut got = vec![f32::NAN; ls.len()];
    launch(
        &kern::name("nll_grad", Dtype::F32),
        kern::nll(n),
        &mut [Arg::F32(&ls), Arg::U32(&targets), Arg::F32(&w32), Arg::F32Mut(&mut got), Arg::Int(vocab as i32)],
    );
    let d = max_diff(&got, &want);
    assert!(d < 1e-6, "the loss gradient differs from ops::masked_nll's backward by {d:e}");
}

#[test]
fn the_optimizer_kernels_take_the_cpus_fused_adamw_and_lionw_steps_bit_for_bit() {
    use loralab_core::config::{OptimConfig, OptimizerName};
    use loralab_core::optim::Optimizer;
    let mut rng = Rng::new(13);
    let n = 1000;
    for name in [OptimizerName::Adamw, OptimizerName::Lionw] {
        let p = Var::from_tensor(&randn(&mut rng, &[n])).unwrap();
        let params = vec![("w".to_string(), p.clone())];
        let mut opt =
            Optimizer::new(&OptimConfig { name, weight_decay: 0.1, ..Default::default() }, 1e-2, &params).unwrap();
        // emulated state, started where the CPU's is
        let (mut pe, mut me, mut ve) = (flat(p.as_tensor()), vec![0f32; n], vec![0f32; n]);
        let (lr0, [b1, b2], eps) = (1e-2, opt.betas, opt.eps);
        for t in 1..=3 {
            let g = randn(&mut rng, &[n]);
            let gs = flat(&g);
            let lr = lr0 * (1.0 - 0.1 * t as f64);
            opt.step(&params, &[g], lr, t).unwrap();
            let nl = n as u64;
            match name {
                OptimizerName::Adamw => {
                    launch(
                        "opt_moment",
                        kern::elementwise(n),
                        &mut [Arg::F32Mut(&mut me), Arg::F32(&gs), Arg::Long(nl), Arg::Double(b1), Arg::Int(0)],
                    );
                    launch(
                        "opt_moment",
                        kern::elementwise(n),
                        &mut [Arg::F32Mut(&mut ve), Arg::F32(&gs), Arg::Long(nl), Arg::Double(b2), Arg::Int(1)],
                    );
                    let (bc1, bc2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
                    launch(
                        "opt_adam",
                        kern::elementwise(n),
                        &mut [
                            Arg::F32Mut(&mut pe),
                            Arg::F32(&me),
                            Arg::F32(&ve),
                            Arg::Long(nl),
                            Arg::Double(1.0 - lr * 0.1),
                            Arg::Double(lr),
                            Arg::Double(bc1),
                            Arg::Double(bc2),
                            Arg::Double(eps),
                        ],
                    );
                }
                OptimizerName::Lionw => {
                    launch(
                        "opt_lion",
                        kern::elementwise(n),
                        &mut [
                            Arg::F32Mut(&mut pe),
                            Arg::F32(&me),
                            Arg::F32(&gs),
                            Arg::Long(nl),
                            Arg::Double(1.0 - lr / lr0 * 0.1),
                            Arg::Double(lr),
                            Arg::Double(b1),
                        ],
                    );
                    launch(
                        "opt_moment",
                        kern::elementwise(n),
                        &mut [Arg::F32Mut(&mut me), Arg::F32(&gs), Arg::Long(nl), Arg::Double(b2), Arg::Int(0)],
                    );
                }
            }
            let cpu = flat(p.as_tensor());
            assert!(
                cpu.iter().zip(&pe).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name:?} step {t}: the kernels' weights differ from the CPU's fused step"
            );
        }
    }
}
