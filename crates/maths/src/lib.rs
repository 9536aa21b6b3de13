//! The analysis maths, written once. The engine (crates/core) uses it for its spectra and
//! Bun reaches it through the addon (crates/node); the browser report reaches the same
//! code compiled to WebAssembly (crates/wasm). No dependencies, so it builds for any target.

/// Cumulative explained variance: entry k−1 is Σ_{i≤k} σ_i² / total, where `total` is
/// Σσ² over the whole spectrum (the stored values may be only its largest ones).
pub fn explained_variance(sigma: &[f64], total_sq: f64) -> Vec<f64> {
    let mut acc = 0.0;
    sigma
        .iter()
        .map(|s| {
            acc += s * s;
            if total_sq > 0.0 {
                acc / total_sq
            } else {
                0.0
            }
        })
        .collect()
}

/// Σσ² of a spectrum.
pub fn total_sq(sigma: &[f64]) -> f64 {
    sigma.iter().map(|s| s * s).sum()
}

/// Smallest k whose first k singular values explain `threshold` of `total_sq` (0 for a zero
/// matrix); None when the given values (the largest ones of a longer spectrum) never reach it.
pub fn rank_at(sigma: &[f64], total_sq: f64, threshold: f64) -> Option<usize> {
    if total_sq <= 0.0 {
        return Some(0);
    }
    let mut acc = 0.0;
    for (i, s) in sigma.iter().enumerate() {
        acc += s * s;
        // a relative tolerance: 0.9 of a sum that is exactly 0.9 must count as reached
        if acc >= threshold * total_sq * (1.0 - 1e-12) {
            return Some(i + 1);
        }
    }
    None
}

/// exp of the entropy of σ/Σσ (Roy & Vetterli 2007); 0 for a zero matrix.
pub fn effective_rank(sigma: &[f64]) -> f64 {
    let total: f64 = sigma.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    sigma.iter().filter(|&&s| s > 0.0).map(|s| -(s / total) * (s / total).ln()).sum::<f64>().exp()
}

/// Σσ² / σ₁² (σ sorted descending); 0 for a zero matrix.
pub fn stable_rank(sigma: &[f64]) -> f64 {
    match sigma.first() {
        Some(&s1) if s1 > 0.0 => total_sq(sigma) / (s1 * s1),
        _ => 0.0,
    }
}

/// Indices of the points not dominated when both coordinates are better higher (the
/// learning–forgetting frontier: learning up, forgetting score up), ordered by x ascending.
/// Ties: of equal x the higher y is kept; a point equal to a kept one is dropped.
pub fn pareto_frontier(x: &[f64], y: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..x.len().min(y.len())).filter(|&i| x[i].is_finite() && y[i].is_finite()).collect();
    order.sort_by(|&a, &b| x[b].total_cmp(&x[a]).then(y[b].total_cmp(&y[a])).then(a.cmp(&b)));
    let mut best = f64::NEG_INFINITY;
    let mut out: Vec<usize> = order
        .into_iter()
        .filter(|&i| {
            let keep = y[i] > best;
            if keep {
                best = y[i];
            }
            keep
        })
        .collect();
    out.reverse();
    out
}

/// Unbiased pass@k = 1 − C(n−c, k)/C(n, k), as a stable product (Chen et al. 2021).
pub fn pass_at_k(n: u64, c: u64, k: u64) -> Result<f64, String> {
    if k < 1 || c > n {
        return Err(format!("pass@k: need 0 ≤ c ≤ n and k ≥ 1 (n={n}, c={c}, k={k})"));
    }
    if k > n {
        return Err(format!("pass@{k} needs at least {k} samples per problem, not {n}"));
    }
    if n - c < k {
        return Ok(1.0);
    }
    let fail: f64 = (n - c + 1..=n).map(|i| 1.0 - k as f64 / i as f64).product();
    Ok(1.0 - fail)
}

/// Singular values (descending) of a small dense m×n matrix, row-major, by one-sided Jacobi
/// rotations (Hestenes) in f64: accurate to a few ulps of σ₁, and O(mn·min(m,n)) per sweep,
/// so for the small matrices the browser report handles (the engine uses faer for large ones).
pub fn singular_values(a: &[f64], m: usize, n: usize) -> Result<Vec<f64>, String> {
    if a.len() != m * n {
        return Err(format!("singular values: {} numbers for a {m}×{n} matrix", a.len()));
    }
    if a.iter().any(|v| !v.is_finite()) {
        return Err("singular values: the matrix has a NaN or infinite entry".into());
    }
    // work on the columns of the wider orientation's transpose: p columns of length q, p ≤ q
    let (p, q) = if n <= m { (n, m) } else { (m, n) };
    let mut cols: Vec<Vec<f64>> =
        (0..p).map(|j| (0..q).map(|i| if n <= m { a[i * n + j] } else { a[j * n + i] }).collect()).collect();
    for _sweep in 0..60 {
        let mut rotated = false;
        for j in 0..p {
            for k in j + 1..p {
                let (alpha, beta, gamma) = cols[j]
                    .iter()
                    .zip(&cols[k])
                    .fold((0.0, 0.0, 0.0), |(a, b, g), (x, y)| (a + x * x, b + y * y, g + x * y));
                if gamma == 0.0 || gamma.abs() <= 1e-15 * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let t = if zeta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                let (left, right) = cols.split_at_mut(k);
                for (x, y) in left[j].iter_mut().zip(right[0].iter_mut()) {
                    let (xv, yv) = (*x, *y);
                    *x = c * xv - s * yv;
                    *y = s * xv + c * yv;
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let mut sigma: Vec<f64> = cols.iter().map(|c| c.iter().map(|v| v * v).sum::<f64>().sqrt()).collect();
    sigma.sort_by(|a, b| b.total_cmp(a));
    Ok(sigma)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_at_k_matches_the_closed_form() {
        // 1 − C(n−c, k)/C(n, k) by hand: n=10, c=3, k=2 → 1 − 21/45
        assert!((pass_at_k(10, 3, 2).unwrap() - (1.0 - 21.0 / 45.0)).abs() < 1e-15);
        assert_eq!(pass_at_k(5, 0, 1).unwrap(), 0.0);
        assert_eq!(pass_at_k(5, 5, 3).unwrap(), 1.0);
        assert!((pass_at_k(50, 7, 1).unwrap() - 7.0 / 50.0).abs() < 1e-15);
        assert!(pass_at_k(3, 4, 1).is_err() && pass_at_k(3, 1, 4).is_err() && pass_at_k(3, 1, 0).is_err());
    }

    #[test]
    fn pareto_frontier_keeps_the_undominated() {
        let x = [0.1, 0.5, 0.3, 0.5, 0.2, f64::NAN];
        let y = [0.9, 0.2, 0.6, 0.1, 0.5, 1.0];
        // (0.5,0.1) is dominated by (0.5,0.2); (0.2,0.5) by (0.3,0.6); NaN is ignored
        assert_eq!(pareto_frontier(&x, &y), vec![0, 2, 1]);
        assert!(pareto_frontier(&[], &[]).is_empty());
    }

    #[test]
    fn ranks_of_a_known_spectrum() {
        let s = [3.0, 2.0, 1.0, 0.0];
        let t = total_sq(&s); // 14
        assert_eq!(rank_at(&s, t, 0.5), Some(1)); // 9/14
        assert_eq!(rank_at(&s, t, 0.9), Some(2)); // 13/14
        assert_eq!(rank_at(&s, t, 1.0), Some(3));
        assert_eq!(rank_at(&s[..2], t, 0.95), None); // the stored top 2 never reach it
        assert_eq!(rank_at(&[0.0], 0.0, 0.9), Some(0));
        assert!((stable_rank(&s) - 14.0 / 9.0).abs() < 1e-15);
        assert!((effective_rank(&[1.0, 1.0, 1.0, 1.0]) - 4.0).abs() < 1e-12);
        assert_eq!(explained_variance(&s, t), vec![9.0 / 14.0, 13.0 / 14.0, 1.0, 1.0]);
    }

    #[test]
    fn jacobi_singular_values_of_known_matrices() {
        // diag(3, 2) padded, both orientations; and a rank-1 outer product u·vᵀ with σ = |u||v|
        let a = [3.0, 0.0, 0.0, 2.0, 0.0, 0.0];
        for (m, n) in [(3, 2), (2, 3)] {
            let mut t = vec![0.0; 6];
            for i in 0..3 {
                for j in 0..2 {
                    if (m, n) == (3, 2) {
                        t[i * 2 + j] = a[i * 2 + j]
                    } else {
                        t[j * 3 + i] = a[i * 2 + j]
                    }
                }
            }
            let s = singular_values(&t, m, n).unwrap();
            assert!((s[0] - 3.0).abs() < 1e-14 && (s[1] - 2.0).abs() < 1e-14, "{s:?}");
        }
        let (u, v) = ([1.0, 2.0, 2.0], [3.0, 4.0]);
        let outer: Vec<f64> = u.iter().flat_map(|a| v.iter().map(move |b| a * b)).collect();
        let s = singular_values(&outer, 3, 2).unwrap();
        assert!((s[0] - 15.0).abs() < 1e-13 && s[1].abs() < 1e-12, "{s:?}");
        assert!(singular_values(&[1.0, 2.0], 2, 2).is_err());
    }
}
