//! The spectral analysis: singular values against matrices built with known spectra (f64
//! to 1e-10, f32 to max(m, n)·ε·σ₁), the LoRA factor path against the dense one, rank@ on
//! hand-made spectra, intruder dimensions, the random baseline, and whole checkpoint pairs.
#![allow(clippy::unwrap_used)] // test code: a panic is how a check fails
mod common;
use candle_core::{DType, Device, Tensor};
use common::*;
use faer::{Mat, MatRef, Par};
use loralab_core::analyze::{analyze, AnalyzeRequest};
use loralab_core::model::{Llama, LlamaConfig};
use loralab_core::rng::Rng;
use loralab_core::spectrum::{intruders, lora_singular_values, random_baseline, rank_at, singular_values, stats};
use std::collections::HashMap;

fn gaussian(m: usize, n: usize, seed: u64) -> Mat<f64> {
    let mut r = Rng::new(seed);
    Mat::from_fn(m, n, |_, _| r.normal())
}

/// A random m×k matrix with orthonormal columns.
fn orthonormal(m: usize, k: usize, seed: u64) -> Mat<f64> {
    gaussian(m, k, seed).qr().compute_thin_Q()
}

/// U·diag(s)·Vᵀ with random orthonormal U (m×k), V (n×k).
fn with_spectrum(m: usize, n: usize, s: &[f64], seed: u64) -> Mat<f64> {
    let k = s.len();
    let u = orthonormal(m, k, seed);
    let v = orthonormal(n, k, seed + 1);
    let us = Mat::from_fn(m, k, |i, j| u[(i, j)] * s[j]);
    &us * v.transpose()
}

fn svals(a: MatRef<'_, f64>) -> Vec<f64> {
    singular_values(a, Par::Seq).unwrap()
}

#[test]
fn a_rank_k_matrix_has_exactly_k_singular_values_above_1e_10_sigma_1() {
    for (m, n, k) in [(60, 40, 7), (40, 90, 13), (50, 50, 1)] {
        let a = &gaussian(m, k, 1) * gaussian(k, n, 2);
        let s = svals(a.as_ref());
        assert_eq!(s.len(), m.min(n));
        assert_eq!(s.iter().filter(|&&x| x > 1e-10 * s[0]).count(), k, "{m}×{n} rank {k}: {:?}", &s[..k + 2]);
    }
}

#[test]
fn known_singular_values_are_recovered_to_1e_10_and_rotations_change_nothing() {
    let want: Vec<f64> = (0..30).map(|i| 10.0 * 0.8f64.powi(i)).collect();
    let a = with_spectrum(70, 45, &want, 5);
    let got = svals(a.as_ref());
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-10 * want[0], "{g} vs {w}");
    }
    assert!(got[30..].iter().all(|&x| x <= 1e-10 * want[0]));
    // orthogonal rotations on either side leave the spectrum alone
    let q = orthonormal(70, 70, 9);
    let p = orthonormal(45, 45, 10);
    let rotated = &(&q * &a) * p.transpose();
    for (g, w) in svals(rotated.as_ref()).iter().zip(&got) {
        assert!((g - w).abs() <= 1e-10 * want[0]);
    }
}

#[test]
fn in_f32_the_same_holds_to_max_m_n_eps_sigma_1() {
    let want: Vec<f64> = (0..20).map(|i| 3.0 / (1.0 + i as f64)).collect();
    let a = with_spectrum(80, 50, &want, 11);
    let a32 = Mat::<f32>::from_fn(80, 50, |i, j| a[(i, j)] as f32);
    let got = singular_values(a32.as_ref(), Par::Seq).unwrap();
    // rounding the entries to f32 perturbs σ by ≤ ‖E‖₂ ≤ ‖E‖_F ≈ √(mn)·ε/√3·‖A‖_max; the SVD itself adds O(max(m,n)·ε·σ₁)
    let tol = 80.0 * f32::EPSILON as f64 * want[0];
    for (i, g) in got.iter().enumerate() {
        let w = want.get(i).copied().unwrap_or(0.0);
        assert!((*g as f64 - w).abs() <= tol, "σ{i}: {g} vs {w} (tolerance {tol:e})");
    }
    let st = stats(&got.iter().map(|&x| x as f64).collect::<Vec<_>>(), (80, 50), &[0.9], 5, f32::EPSILON as f64);
    assert_eq!(st.numerical_rank, 20);
}

#[test]
fn the_lora_factor_path_equals_the_dense_svd_of_the_formed_delta() {
    for (m, n, r, scale) in [(64, 48, 8, 2.0), (30, 90, 16, 0.5), (40, 40, 40, 1.0), (20, 50, 32, 1.5)] {
        let b = gaussian(m, r, 20);
        let a = gaussian(r, n, 21);
        let factor = lora_singular_values(b.as_ref(), a.as_ref(), scale, Par::Seq).unwrap();
        let dense = svals(((&b * &a) * faer::Scale(scale)).as_ref());
        assert_eq!(factor.len(), dense.len());
        for (f, d) in factor.iter().zip(&dense) {
            assert!((f - d).abs() <= 1e-4 * dense[0] && (f - d).abs() <= 1e-10 * dense[0], "{m}×{n} r={r}: {f} vs {d}");
        }
    }
}

#[test]
fn rank_at_thresholds_on_hand_made_spectra() {
    assert_eq!(rank_at(&[3.0, 2.0, 1.0], 0.9), 2); // σ² = 9, 4, 1: 9/14 < 0.9 ≤ 13/14
    assert_eq!(rank_at(&[3.0, 2.0, 1.0], 0.5), 1);
    assert_eq!(rank_at(&[3.0, 2.0, 1.0], 1.0), 3);
    assert_eq!(rank_at(&[1.0; 4], 0.9), 4); // 3/4 < 0.9
    assert_eq!(rank_at(&[3.0, 1.0], 0.9), 1); // exactly 0.9: reached
    assert_eq!(rank_at(&[0.0; 5], 0.9), 0);
    let s = stats(&[1.0; 4], (4, 6), &[0.5, 0.9], 2, f64::EPSILON);
    assert_eq!((s.rank_at["0.5"], s.rank_at["0.9"], s.max_rank, s.singular_values.len()), (2, 4, 4, 2));
    assert!((s.effective_rank - 4.0).abs() < 1e-12 && (s.stable_rank - 4.0).abs() < 1e-12);
    let one = stats(&[2.0, 0.0, 0.0], (3, 3), &[0.9], 3, f64::EPSILON);
    assert!(
        (one.effective_rank - 1.0).abs() < 1e-12 && (one.stable_rank - 1.0).abs() < 1e-12 && one.numerical_rank == 1
    );
}

#[test]
fn intruder_dimensions_appear_for_a_new_orthogonal_direction_and_not_for_a_rescale() {
    let s: Vec<f64> = (0..10).map(|i| 5.0 - 0.4 * i as f64).collect();
    let base = with_spectrum(40, 30, &s, 30);
    let scaled = &base * faer::Scale(1.05);
    assert_eq!(intruders(base.as_ref(), scaled.as_ref(), 5, 0.5).unwrap().count, 0);
    // a strong rank-1 update along a direction outside the base's range: an intruder
    let svd = base.thin_svd().unwrap();
    let mut u = gaussian(40, 1, 31);
    let proj = svd.U() * (svd.U().transpose() * &u);
    u = &u - &proj;
    let norm = (0..40).map(|i| u[(i, 0)] * u[(i, 0)]).sum::<f64>().sqrt();
    let v = orthonormal(30, 1, 32);
    let update = (&u * v.transpose()) * faer::Scale(8.0 / norm);
    let tuned = &base + &update;
    let r = intruders(base.as_ref(), tuned.as_ref(), 3, 0.5).unwrap();
    assert_eq!(r.count, 1, "{:?}", r.max_cosine);
    assert!(r.max_cosine[0] < 0.2);
}

#[test]
fn the_random_baseline_spectrum_barely_moves_as_c_shrinks() {
    let b = random_baseline(120, &[1.0, 0.3, 0.1, 0.01], 7, 1).unwrap();
    let shifts: Vec<f64> = b.points.iter().map(|p| p.relative_shift).collect();
    assert!(shifts.windows(2).all(|w| w[1] < w[0]), "{shifts:?}");
    assert!(shifts[3] < 0.01, "{shifts:?}");
    assert_eq!(b.sigma_a.len(), 120);
}

// ------------------------------------------------------------------ checkpoint pairs

fn tiny_cfg_path() -> std::path::PathBuf {
    repo().join("datasets/tiny/config.json")
}

/// A saved random base and a tuned copy whose q_proj of layer 1 changed by a rank-`r`
/// matrix with entries of about scale²·√r; stored in `dtype`.
fn pair(dir: &std::path::Path, r: usize, scale: f64, dtype: DType) -> (std::path::PathBuf, std::path::PathBuf) {
    let cfg = LlamaConfig::from_file(&tiny_cfg_path()).unwrap();
    let model = Llama::random(cfg, DType::F32, &mut Rng::new(4)).unwrap();
    let weights: HashMap<String, Tensor> =
        model.named_weights().into_iter().map(|(k, w)| (k, w.tensor().clone())).collect();
    let save = |d: &std::path::Path, w: &HashMap<String, Tensor>, dt: DType| {
        std::fs::create_dir_all(d).unwrap();
        let w: HashMap<String, Tensor> = w.iter().map(|(k, v)| (k.clone(), v.to_dtype(dt).unwrap())).collect();
        candle_core::safetensors::save(&w, d.join("model.safetensors")).unwrap();
        std::fs::copy(tiny_cfg_path(), d.join("config.json")).unwrap();
    };
    let base = dir.join("base");
    save(&base, &weights, DType::F32);
    let mut tuned = weights.clone();
    let name = "model.layers.1.self_attn.q_proj.weight";
    let (m, n) = tuned[name].dims2().unwrap();
    let delta = randn(&[m, r], scale, 40).matmul(&randn(&[r, n], scale, 41)).unwrap().to_dtype(DType::F32).unwrap();
    tuned.insert(name.into(), (&tuned[name] + delta).unwrap());
    let t = dir.join("tuned");
    save(&t, &tuned, dtype);
    (base, t)
}

#[test]
fn a_full_model_pair_gives_the_rank_of_its_change_and_a_zero_noise_floor_in_f32() {
    let dir = std::env::temp_dir().join(format!("loralab-spectrum-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (base, tuned) = pair(&dir, 3, 0.05, DType::F32);
    let req = AnalyzeRequest {
        base: base.display().to_string(),
        tuned: tuned.display().to_string(),
        thresholds: vec![0.5, 0.9, 0.99],
        memory_mb: 1,
        ..Default::default()
    };
    let seen = std::sync::Mutex::new(vec![]);
    let a = analyze(&req, &|d, t, _| seen.lock().unwrap().push((d, t))).unwrap();
    assert_eq!(a.matrices.len(), 4 * 7);
    assert_eq!(seen.lock().unwrap().len(), 28);
    assert!(!a.low_precision, "{}", a.precision_note);
    for m in &a.matrices {
        let noise = m.noise_floor.as_ref().expect("dense pairs carry a noise floor");
        assert_eq!(noise.frobenius, 0.0, "f32 → f32 storage rounds nothing");
        if m.name == "model.layers.1.self_attn.q_proj.weight" {
            // beyond the rank-3 change only the f32 rounding of W_base + ΔW remains
            let sv = &m.delta.singular_values;
            assert!(sv[2] > 1e3 * sv[3], "{:?}", &sv[..5]);
            assert!(m.delta.rank_at["0.99"] <= 3);
            assert!(m.relative_change > 0.0);
            assert!(m.base.as_ref().unwrap().rank_at["0.9"] > 3 && m.tuned.is_some());
        } else {
            assert_eq!((m.delta.frobenius, m.delta.rank_at["0.9"]), (0.0, 0));
        }
    }
    // an update the size of a full-FT step at a small lr (entries ~4e-5), stored in bf16:
    // flagged, and the rounding noise (~1e-4 near |w| ≈ 0.02) dominates ΔW's rank
    let (base16, tuned16) = pair(&dir.join("bf16"), 3, 0.005, DType::BF16);
    let b = analyze(
        &AnalyzeRequest {
            base: base16.display().to_string(),
            tuned: tuned16.display().to_string(),
            modules: vec!["q_proj".into()],
            layers: vec![1],
            ..Default::default()
        },
        &|_, _, _| {},
    )
    .unwrap();
    assert!(b.low_precision && b.precision_note.contains("noise_floor"));
    let m = &b.matrices[0];
    assert_eq!(m.tuned_dtype, "BF16");
    assert!(m.noise_floor.as_ref().unwrap().rank_at["0.9"] > 3 * 5, "{:?}", m.noise_floor);
    assert!(m.delta.rank_at["0.9"] > 3, "bf16 rounding inflates ΔW's rank@90 %: {:?}", m.delta.rank_at);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_adapter_is_analysed_from_its_factors_and_matches_its_merged_model() {
    let dir = std::env::temp_dir().join(format!("loralab-spectrum-lora-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = LlamaConfig::from_file(&tiny_cfg_path()).unwrap();
    let mut model = Llama::random(cfg, DType::F32, &mut Rng::new(3)).unwrap();
    let full =
        loralab_core::config::MethodConfig { kind: loralab_core::config::MethodKind::Full, ..Default::default() };
    let tok = repo().join("datasets/tiny/tokenizer.json");
    let base = dir.join("base");
    loralab_core::checkpoint::save(&base, &model, &full, &tiny_cfg_path(), &tok, "", None, None).unwrap();
    let lora = loralab_core::config::MethodConfig {
        kind: loralab_core::config::MethodKind::Lora,
        rank: 4,
        ..Default::default()
    };
    model.apply_method(&lora, &mut Rng::new(5)).unwrap();
    for lin in model.linears_mut() {
        if let Some(l) = &lin.lora {
            l.b.set(&randn(l.b.dims(), 0.05, 9).to_dtype(DType::F32).unwrap()).unwrap();
        }
    }
    let adapter = dir.join("adapter");
    loralab_core::checkpoint::save(&adapter, &model, &lora, &tiny_cfg_path(), &tok, "base", None, None).unwrap();
    let merged = dir.join("merged");
    loralab_core::checkpoint::merge(&base, &adapter, &merged).unwrap();
    let by_factors = analyze(
        &AnalyzeRequest {
            base: base.display().to_string(),
            adapter: adapter.display().to_string(),
            intruders: true,
            ..Default::default()
        },
        &|_, _, _| {},
    )
    .unwrap();
    let dense = analyze(
        &AnalyzeRequest { base: base.display().to_string(), tuned: merged.display().to_string(), ..Default::default() },
        &|_, _, _| {},
    )
    .unwrap();
    assert_eq!(by_factors.kind, loralab_core::analyze::DeltaKind::Lora);
    assert_eq!(by_factors.matrices.len(), dense.matrices.len());
    for (f, d) in by_factors.matrices.iter().zip(&dense.matrices) {
        assert_eq!(f.name, d.name);
        assert!(f.delta.numerical_rank <= 4, "{}: {}", f.name, f.delta.numerical_rank);
        assert!(f.intruders.is_some() && f.noise_floor.is_none());
        // the merged model is stored in f32: its ΔW agrees with the exact factors to f32 rounding
        let s1 = f.delta.sigma_max;
        for (x, y) in f.delta.singular_values.iter().zip(&d.delta.singular_values).take(4) {
            assert!((x - y).abs() <= 1e-4 * s1, "{}: {x} vs {y}", f.name);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mismatched_pairs_and_foreign_adapters_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("loralab-spectrum-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (base, tuned) = pair(&dir, 2, 0.05, DType::F32);
    // another architecture
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(tiny_cfg_path()).unwrap()).unwrap();
    c["intermediate_size"] = serde_json::json!(c["intermediate_size"].as_u64().unwrap() * 2);
    std::fs::write(other.join("config.json"), c.to_string()).unwrap();
    std::fs::copy(tuned.join("model.safetensors"), other.join("model.safetensors")).unwrap();
    let err = analyze(
        &AnalyzeRequest { base: base.display().to_string(), tuned: other.display().to_string(), ..Default::default() },
        &|_, _, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("architecture") && err.contains("config.json"), "{err}");
    // a missing tensor
    let holes = dir.join("holes");
    std::fs::create_dir_all(&holes).unwrap();
    std::fs::copy(tiny_cfg_path(), holes.join("config.json")).unwrap();
    let mut w = candle_core::safetensors::load(tuned.join("model.safetensors"), &Device::Cpu).unwrap();
    w.remove("model.layers.2.mlp.up_proj.weight");
    candle_core::safetensors::save(&w, holes.join("model.safetensors")).unwrap();
    let err = analyze(
        &AnalyzeRequest { base: base.display().to_string(), tuned: holes.display().to_string(), ..Default::default() },
        &|_, _, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("model.layers.2.mlp.up_proj.weight"), "{err}");
    // an adapter for another base: its factors do not fit
    let foreign = dir.join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(
        foreign.join("adapter_config.json"),
        r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}"#,
    )
    .unwrap();
    let f: HashMap<String, Tensor> = [
        (
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".to_string(),
            Tensor::zeros((2, 7), DType::F32, &Device::Cpu).unwrap(),
        ),
        (
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight".to_string(),
            Tensor::zeros((9, 2), DType::F32, &Device::Cpu).unwrap(),
        ),
    ]
    .into_iter()
    .collect();
    candle_core::safetensors::save(&f, foreign.join("adapter_model.safetensors")).unwrap();
    let err = analyze(
        &AnalyzeRequest {
            base: base.display().to_string(),
            adapter: foreign.display().to_string(),
            ..Default::default()
        },
        &|_, _, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("another base model"), "{err}");
    let err = analyze(&AnalyzeRequest { base: base.display().to_string(), ..Default::default() }, &|_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("exactly one of"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_gguf_base_is_read_in_hugging_face_layout_so_its_own_hf_weights_differ_by_nothing() {
    // tests/reference/gguf_fixture.py: tiny_llama.gguf stores q/k permuted as llama.cpp does;
    // the same weights in HF layout, written as an HF directory, must give ΔW = 0 everywhere
    let dir = std::env::temp_dir().join(format!("loralab-spectrum-gguf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fx =
        candle_core::safetensors::load(repo().join("tests/reference/gguf_fixture.safetensors"), &Device::Cpu).unwrap();
    let hf: HashMap<String, Tensor> =
        fx.iter().filter_map(|(k, v)| k.strip_prefix("llama.").map(|n| (n.to_string(), v.clone()))).collect();
    candle_core::safetensors::save(&hf, dir.join("model.safetensors")).unwrap();
    let cfg = serde_json::json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 40, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 128, "tie_word_embeddings": false});
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let a = analyze(
        &AnalyzeRequest {
            base: repo().join("tests/reference/tiny_llama.gguf").display().to_string(),
            tuned: dir.display().to_string(),
            ..Default::default()
        },
        &|_, _, _| {},
    )
    .unwrap();
    assert_eq!(a.matrices.len(), 14);
    for m in &a.matrices {
        assert_eq!(m.delta.frobenius, 0.0, "{}: the GGUF's q/k must be un-permuted", m.name);
        assert!(m.base.as_ref().unwrap().frobenius > 0.0);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_browser_builds_small_jacobi_svd_equals_faer_to_1e_12_sigma_1() {
    // loralab-maths' one-sided Jacobi (what the report runs in WebAssembly) against faer
    for (m, n, seed) in [(20, 13, 1), (7, 31, 2), (16, 16, 3)] {
        let a = gaussian(m, n, seed);
        let rows: Vec<f64> = (0..m).flat_map(|i| (0..n).map(move |j| (i, j))).map(|(i, j)| a[(i, j)]).collect();
        let f = svals(a.as_ref());
        let j = loralab_maths::singular_values(&rows, m, n).unwrap();
        assert_eq!(f.len(), j.len());
        for (x, y) in f.iter().zip(&j) {
            assert!((x - y).abs() <= 1e-12 * f[0], "{m}×{n}: faer {f:?} vs jacobi {j:?}");
        }
    }
}
