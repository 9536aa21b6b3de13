//! The spectrum of a weight matrix and of a weight change (STUDY.md §7), on faer's SVD:
//! singular values, cumulative explained variance Σ_{i≤k} σ_i² / Σ σ_i², the smallest k
//! reaching each threshold, effective rank (entropy) and stable rank; LoRA deltas
//! s·B·A exactly from their factors (QR of B and Aᵀ, then an r×r SVD); intruder
//! dimensions (Shuttleworth et al. 2024); the study's random-matrix control. The statistics
//! themselves live in loralab-maths, shared with the browser build (crates/wasm).
use crate::base::error::{Error, Result};
use crate::base::rng::Rng;
use faer::{Mat, MatRef, Par};
use serde::Serialize;
use std::collections::BTreeMap;

/// A thread budget for one decomposition (faer's own parallelism); 0: every thread.
pub fn par(threads: usize) -> Par {
    match threads {
        0 => Par::rayon(rayon::current_num_threads()),
        1 => Par::Seq,
        n => Par::rayon(n),
    }
}

fn svd_err(e: impl std::fmt::Debug) -> Error {
    Error::config("analyze", format!("the SVD did not converge: {e:?}"))
}

/// Singular values, non-increasing, min(m, n) of them (no vectors: the cheap path).
pub fn singular_values<T: faer::traits::RealField>(a: MatRef<'_, T>, par: Par) -> Result<Vec<T>> {
    use faer::dyn_stack::{MemBuffer, MemStack};
    use faer::linalg::svd::{svd, svd_scratch, ComputeSvdVectors};
    let k = a.nrows().min(a.ncols());
    let mut s = faer::diag::Diag::<T>::zeros(k);
    if k == 0 {
        return Ok(vec![]);
    }
    let params = Default::default();
    let mut buf = MemBuffer::new(svd_scratch::<T>(
        a.nrows(),
        a.ncols(),
        ComputeSvdVectors::No,
        ComputeSvdVectors::No,
        par,
        params,
    ));
    svd(a, s.as_mut(), None, None, par, MemStack::new(&mut buf), params).map_err(svd_err)?;
    Ok(s.column_vector().iter().cloned().collect())
}

/// Singular values of s·B·A (B: m×r, A: r×n) without forming it: B = Q_B R_B, Aᵀ = Q_A R_A,
/// so s·B·A = Q_B (s·R_B R_Aᵀ) Q_Aᵀ and its singular values are those of the small core.
/// Padded with zeros to min(m, n).
pub fn lora_singular_values(b: MatRef<'_, f64>, a: MatRef<'_, f64>, scale: f64, par: Par) -> Result<Vec<f64>> {
    if b.ncols() != a.nrows() {
        return Err(Error::config(
            "analyze",
            format!(
                "lora_B is {}×{} but lora_A is {}×{}: the ranks differ",
                b.nrows(),
                b.ncols(),
                a.nrows(),
                a.ncols()
            ),
        ));
    }
    let rb = b.qr().thin_R().to_owned();
    let ra = a.transpose().qr().thin_R().to_owned();
    let core: Mat<f64> = (&rb * ra.transpose()) * faer::Scale(scale);
    let mut s = singular_values(core.as_ref(), par)?;
    s.resize(b.nrows().min(a.ncols()), 0.0);
    Ok(s)
}

/// What is kept of one spectrum.
#[derive(Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct SpectrumStats {
    /// min(m, n): the largest possible rank.
    pub max_rank: usize,
    /// Smallest k with Σ_{i≤k} σ_i² / Σ σ_i² ≥ threshold, per threshold ("0.9": k).
    pub rank_at: BTreeMap<String, usize>,
    /// exp of the entropy of σ/Σσ (Roy & Vetterli 2007).
    pub effective_rank: f64,
    /// Σ σ_i² / σ_1².
    pub stable_rank: f64,
    /// Singular values above max(m, n)·ε·σ₁ (ε of the arithmetic used).
    pub numerical_rank: usize,
    pub sigma_max: f64,
    /// Frobenius norm (√Σσ²).
    pub frobenius: f64,
    /// The largest singular values, at most `keep` of them.
    pub singular_values: Vec<f64>,
}

/// Smallest k whose first k singular values explain `threshold` of Σσ² (0 for a zero matrix).
pub fn rank_at(sigma: &[f64], threshold: f64) -> usize {
    loralab_maths::rank_at(sigma, loralab_maths::total_sq(sigma), threshold).unwrap_or(sigma.len())
}

pub fn stats(sigma: &[f64], shape: (usize, usize), thresholds: &[f64], keep: usize, eps: f64) -> SpectrumStats {
    let total2 = loralab_maths::total_sq(sigma);
    let s1 = sigma.first().copied().unwrap_or(0.0);
    let tol = shape.0.max(shape.1) as f64 * eps * s1;
    SpectrumStats {
        max_rank: shape.0.min(shape.1),
        rank_at: thresholds.iter().map(|t| (format!("{t}"), rank_at(sigma, *t))).collect(),
        effective_rank: loralab_maths::effective_rank(sigma),
        stable_rank: loralab_maths::stable_rank(sigma),
        numerical_rank: sigma.iter().filter(|&&s| s > tol && s > 0.0).count(),
        sigma_max: s1,
        frobenius: total2.sqrt(),
        singular_values: sigma.iter().take(keep).copied().collect(),
    }
}

/// Intruder dimensions: for each of the top-k left singular vectors of W_tuned, the largest
/// |cosine| with any left singular vector of W_base; those below `threshold` are intruders.
#[derive(Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct Intruders {
    pub top_k: usize,
    pub threshold: f64,
    pub count: usize,
    pub max_cosine: Vec<f64>,
}

pub fn intruders(base: MatRef<'_, f64>, tuned: MatRef<'_, f64>, top_k: usize, threshold: f64) -> Result<Intruders> {
    let ub = base.thin_svd().map_err(svd_err)?;
    let ut = tuned.thin_svd().map_err(svd_err)?;
    let k = top_k.min(ut.U().ncols());
    let sim = ut.U().get(.., ..k).transpose() * ub.U(); // k × min(m, n)
    let max_cosine: Vec<f64> =
        (0..k).map(|i| (0..sim.ncols()).map(|j| sim[(i, j)].abs()).fold(0.0, f64::max)).collect();
    Ok(Intruders { top_k: k, threshold, count: max_cosine.iter().filter(|&&c| c < threshold).count(), max_cosine })
}

/// The study's control: Gaussian A and B (n×n, entries N(0, 1/n)); how far the spectrum of
/// A + c·B moves from A's as c varies.
#[derive(Serialize, Clone, Debug, schemars::JsonSchema)]
pub struct RandomBaseline {
    pub n: usize,
    pub seed: u64,
    pub sigma_a: Vec<f64>,
    pub points: Vec<BaselinePoint>,
}

#[derive(Serialize, Clone, Debug, schemars::JsonSchema)]
pub struct BaselinePoint {
    pub c: f64,
    pub sigma_cb: Vec<f64>,
    pub sigma_sum: Vec<f64>,
    /// mean_i |σ_i(A + cB) − σ_i(A)|
    pub mean_abs_shift: f64,
    /// the same relative to mean σ(A)
    pub relative_shift: f64,
}

pub fn random_baseline(n: usize, cs: &[f64], seed: u64, threads: usize) -> Result<RandomBaseline> {
    let mut rng = Rng::new(seed);
    let sd = 1.0 / (n as f64).sqrt();
    let a = Mat::<f64>::from_fn(n, n, |_, _| rng.normal() * sd);
    let b = Mat::<f64>::from_fn(n, n, |_, _| rng.normal() * sd);
    let p = par(threads);
    let sigma_a = singular_values(a.as_ref(), p)?;
    let sigma_b = singular_values(b.as_ref(), p)?;
    let mean_a = sigma_a.iter().sum::<f64>() / n as f64;
    let mut points = vec![];
    for &c in cs {
        let sum = &a + &b * faer::Scale(c);
        let sigma_sum = singular_values(sum.as_ref(), p)?;
        let shift = sigma_sum.iter().zip(&sigma_a).map(|(x, y)| (x - y).abs()).sum::<f64>() / n as f64;
        points.push(BaselinePoint {
            c,
            sigma_cb: sigma_b.iter().map(|s| s * c.abs()).collect(),
            sigma_sum,
            mean_abs_shift: shift,
            relative_shift: shift / mean_a,
        });
    }
    Ok(RandomBaseline { n, seed, sigma_a, points })
}
