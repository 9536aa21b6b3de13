//! Optimizers and schedules against their reference update rules, written out here
//! element by element in plain f64 (LionW's sign() makes multi-step f32 goldens flaky,
//! so it is checked step by step).
#![allow(clippy::unwrap_used)] // test code: a panic is how a check fails
use candle_core::{DType, Device, Tensor, Var};
use loralab_core::config::{OptimConfig, OptimizerName, ScheduleConfig, ScheduleKind};
use loralab_core::optim::{clip_grad_norm, lr_at, Optimizer};
use loralab_core::rng::Rng;

#[test]
fn lionw_matches_the_decoupled_rule_step_by_step() {
    let mut r = Rng::new(11);
    let n = 64;
    let mut p: Vec<f64> = (0..n).map(|_| r.normal()).collect();
    let mut m = vec![0f64; n];
    let (b1, b2, wd, lr0) = (0.9, 0.95, 0.1, 1e-2);
    let var = Var::from_tensor(&Tensor::new(p.as_slice(), &Device::Cpu).unwrap()).unwrap();
    let params = vec![("p".to_string(), var.clone())];
    let cfg = OptimConfig {
        name: OptimizerName::Lionw,
        lr: Some(lr0),
        betas: [b1, b2],
        eps: 1e-8,
        weight_decay: wd,
        grad_clip: 0.0,
    };
    let mut opt = Optimizer::new(&cfg, lr0, &params).unwrap();
    for step in 1..=6 {
        let lr = lr0 * (1.0 - step as f64 / 10.0); // a decaying lr exercises lr_t/lr_0 in the decay
        let g: Vec<f64> = (0..n).map(|i| if i == 0 { 0.0 } else { r.normal() }).collect();
        opt.step(&params, &[Tensor::new(g.as_slice(), &Device::Cpu).unwrap()], lr, step).unwrap();
        for i in 0..n {
            p[i] *= 1.0 - (lr / lr0) * wd;
            let c = b1 * m[i] + (1.0 - b1) * g[i];
            let sign = if c > 0.0 {
                1.0
            } else if c < 0.0 {
                -1.0
            } else {
                0.0
            };
            p[i] -= lr * sign;
            m[i] = b2 * m[i] + (1.0 - b2) * g[i];
        }
        let got = var.as_tensor().to_vec1::<f64>().unwrap();
        for i in 0..n {
            assert!((got[i] - p[i]).abs() < 1e-12, "step {step} [{i}]: {} vs {}", got[i], p[i]);
        }
    }
}

#[test]
fn optimizer_state_is_f32_for_f32_params() {
    let v = Var::zeros(4, DType::F32, &Device::Cpu).unwrap();
    let opt =
        Optimizer::new(&OptimConfig { name: OptimizerName::Adamw, ..Default::default() }, 1e-3, &[("w".into(), v)])
            .unwrap();
    assert_eq!(opt.state[0].m.dtype(), DType::F32);
    assert_eq!(opt.state[0].v.as_ref().unwrap().dtype(), DType::F32);
}

#[test]
fn clipping_scales_to_max_norm() {
    let mut g = vec![Tensor::new(&[3f64, 0.], &Device::Cpu).unwrap(), Tensor::new(&[4f64], &Device::Cpu).unwrap()];
    let norm = clip_grad_norm(&mut g, 1.0).unwrap();
    assert!((norm - 5.0).abs() < 1e-12);
    let after: f64 =
        g.iter().map(|t| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()).sum::<f64>().sqrt();
    assert!((after - 5.0 / (5.0 + 1e-6)).abs() < 1e-9);
    let mut small = vec![Tensor::new(&[0.3f64], &Device::Cpu).unwrap()];
    clip_grad_norm(&mut small, 1.0).unwrap();
    assert_eq!(small[0].to_vec1::<f64>().unwrap(), vec![0.3]);
    // the GPU's form (each Σg² kept on the device in f32, read once) gives the same norm
    let mut g = vec![
        Tensor::new(&[3f32, 0.], &Device::Cpu).unwrap(),
        Tensor::new(&[[4f32], [12.]], &Device::Cpu).unwrap().t().unwrap(),
    ];
    let norm = loralab_core::nn::portable::with_portable(|| clip_grad_norm(&mut g, 1.0)).unwrap();
    assert!((norm - 13.0).abs() < 1e-6, "portable norm {norm}");
    assert!((g[1].to_vec2::<f32>().unwrap()[0][1] - 12.0 / 13.0).abs() < 1e-6);
}

fn sched(kind: ScheduleKind) -> ScheduleConfig {
    ScheduleConfig { kind, warmup_frac: 0.1, warmup_steps: 0, final_frac: 0.01, cooldown_frac: 0.2 }
}

#[test]
fn schedules() {
    let lr = 1.0;
    // warmup: linear to the peak over 10 of 100 steps
    assert!((lr_at(&sched(ScheduleKind::Cosine), lr, 0, 100) - 0.1).abs() < 1e-12);
    assert!((lr_at(&sched(ScheduleKind::Cosine), lr, 9, 100) - 1.0).abs() < 1e-12);
    // cosine: peak after warmup, decays to final_frac
    assert!((lr_at(&sched(ScheduleKind::Cosine), lr, 10, 100) - 1.0).abs() < 1e-12);
    let last = lr_at(&sched(ScheduleKind::Cosine), lr, 99, 100);
    assert!(last > 0.01 && last < 0.012, "{last}");
    // constant
    assert_eq!(lr_at(&sched(ScheduleKind::Constant), lr, 50, 100), 1.0);
    // inverse sqrt: lr·sqrt(warmup/step), then a linear cooldown to 0 over the last 20 %
    let s = sched(ScheduleKind::InverseSqrt);
    assert!((lr_at(&s, lr, 39, 100) - (10.0f64 / 40.0).sqrt()).abs() < 1e-12);
    let at_cool = (10.0f64 / 81.0).sqrt();
    assert!((lr_at(&s, lr, 80, 100) - at_cool).abs() < 1e-12);
    assert!((lr_at(&s, lr, 90, 100) - at_cool * 0.5).abs() < 1e-12);
    assert!((lr_at(&s, lr, 99, 100) - at_cool * 0.05).abs() < 1e-12);
    // monotone non-increasing after warmup
    let v: Vec<f64> = (10..100).map(|i| lr_at(&s, lr, i, 100)).collect();
    assert!(v.windows(2).all(|w| w[1] <= w[0] + 1e-15));
}

#[test]
fn fused_in_place_updates_equal_the_tensor_op_reference() {
    for name in [OptimizerName::Lionw, OptimizerName::Adamw] {
        for dtype in [DType::F32, DType::F64] {
            let mut r = Rng::new(3);
            let init: Vec<f64> = (0..300).map(|_| r.normal()).collect();
            let mk = || {
                Var::from_tensor(&Tensor::new(init.as_slice(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap()).unwrap()
            };
            let (a, b) = (vec![("p".to_string(), mk())], vec![("p".to_string(), mk())]);
            let cfg =
                OptimConfig { name, lr: Some(1e-2), betas: [0.9, 0.95], eps: 1e-8, weight_decay: 0.1, grad_clip: 1.0 };
            let (mut fa, mut fb) = (Optimizer::new(&cfg, 1e-2, &a).unwrap(), Optimizer::new(&cfg, 1e-2, &b).unwrap());
            for t in 1..=5 {
                let g: Vec<f64> = (0..300).map(|_| r.normal()).collect();
                let g = Tensor::new(g.as_slice(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
                fa.step(&a, std::slice::from_ref(&g), 1e-2 / t as f64, t).unwrap();
                fb.step_portable(&b, &[g], 1e-2 / t as f64, t).unwrap();
            }
            let d = (a[0].1.as_tensor().to_dtype(DType::F64).unwrap()
                - b[0].1.as_tensor().to_dtype(DType::F64).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
            let tol = if dtype == DType::F32 { 1e-6 } else { 1e-12 };
            assert!(d < tol, "{name:?} {dtype:?}: fused vs reference differ by {d:e}");
        }
    }
}

#[test]
fn warmup_steps_overrides_the_fraction_so_cpt_branches_share_one_warmup() {
    // a long run (100 steps) and a branch of it (50 steps) warm up over the same 10 steps
    let s = ScheduleConfig { warmup_steps: 10, ..sched(ScheduleKind::InverseSqrt) };
    for step in 0..40 {
        let long = lr_at(&ScheduleConfig { cooldown_frac: 0.0, ..s.clone() }, 1.0, step, 100);
        let branch = lr_at(&s, 1.0, step, 50);
        assert!((long - branch).abs() < 1e-15, "step {step}: {long} vs {branch}");
        // before the branch's cooldown (from 40)
    }
    assert!(lr_at(&s, 1.0, 45, 50) < lr_at(&s, 1.0, 40, 50));
    assert_eq!(lr_at(&s, 1.0, 4, 50), 0.5); // (4+1)/10
}
