//! loralab-maths for the browser: the interactive report recomputes ranks, the Pareto
//! frontier and pass@k with the very code the engine and the addon use. Thin: argument
//! conversion only; the maths is crates/maths.
use wasm_bindgen::prelude::*;

/// Unbiased pass@k = 1 − C(n−c, k)/C(n, k).
#[wasm_bindgen(js_name = passAtK)]
pub fn pass_at_k(n: u32, c: u32, k: u32) -> Result<f64, JsError> {
    loralab_maths::pass_at_k(n as u64, c as u64, k as u64).map_err(|e| JsError::new(&e))
}

/// Indices of the points not dominated with both coordinates better higher, by x ascending.
#[wasm_bindgen(js_name = paretoFrontier)]
pub fn pareto_frontier(x: &[f64], y: &[f64]) -> Result<Vec<u32>, JsError> {
    if x.len() != y.len() {
        return Err(JsError::new(&format!("pareto frontier: {} x values for {} y values", x.len(), y.len())));
    }
    Ok(loralab_maths::pareto_frontier(x, y).into_iter().map(|i| i as u32).collect())
}

/// Smallest k whose first k of `sigma` explain `threshold` of `total_sq` (Σσ² of the whole
/// spectrum; default Σ of `sigma`); undefined when the stored values never reach it.
#[wasm_bindgen(js_name = rankAt)]
pub fn rank_at(sigma: &[f64], threshold: f64, total_sq: Option<f64>) -> Option<u32> {
    let total = total_sq.unwrap_or_else(|| loralab_maths::total_sq(sigma));
    loralab_maths::rank_at(sigma, total, threshold).map(|k| k as u32)
}

/// Cumulative explained variance of `sigma` against `total_sq` (default Σ of `sigma`).
#[wasm_bindgen(js_name = explainedVariance)]
pub fn explained_variance(sigma: &[f64], total_sq: Option<f64>) -> Vec<f64> {
    let total = total_sq.unwrap_or_else(|| loralab_maths::total_sq(sigma));
    loralab_maths::explained_variance(sigma, total)
}

/// exp of the entropy of σ/Σσ.
#[wasm_bindgen(js_name = effectiveRank)]
pub fn effective_rank(sigma: &[f64]) -> f64 {
    loralab_maths::effective_rank(sigma)
}

/// Σσ² / σ₁².
#[wasm_bindgen(js_name = stableRank)]
pub fn stable_rank(sigma: &[f64]) -> f64 {
    loralab_maths::stable_rank(sigma)
}

/// Singular values (descending) of a small row-major m×n matrix.
#[wasm_bindgen(js_name = singularValues)]
pub fn singular_values(a: &[f64], m: u32, n: u32) -> Result<Vec<f64>, JsError> {
    loralab_maths::singular_values(a, m as usize, n as usize).map_err(|e| JsError::new(&e))
}
