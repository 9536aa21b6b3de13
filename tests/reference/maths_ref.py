"""Independent reference for the analysis maths (crates/maths, reached as the addon and as
WebAssembly): numpy's values for the cases tests/report-wasm.test.ts asserts. Run once to
(re)make tests/reference/maths_ref.json:

    python3 -m venv /tmp/np && /tmp/np/bin/pip install numpy && /tmp/np/bin/python tests/reference/maths_ref.py

It shares no code with crates/maths: pass@k is Chen et al. 2021's numpy estimator (the
HumanEval paper, figure 3), the singular values are LAPACK's (np.linalg.svd), and the spectrum
statistics are their definitions written with numpy.
"""
import json, os, re
import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
MASK = 0xFFFFFFFF


def uniform(seed):
    """The test's xorshift stream (uniform() in report-wasm.test.ts), bit for bit."""
    s = (seed & MASK) or 1
    while True:
        s ^= (s << 13) & MASK
        s ^= s >> 17
        s ^= (s << 5) & MASK
        yield s / 2**32


def pass_at_k(n, c, k):
    """Chen et al. 2021: 1 - comb(n - c, k) / comb(n, k), as their stable product."""
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


# the grid the test walks: n, c in steps of max(1, n >> 3), k ≤ n
grid = []
for n in [1, 5, 10, 50, 200]:
    for c in range(0, n + 1, max(1, n >> 3)):
        for k in [k for k in [1, 2, 5, 10, 100] if k <= n]:
            grid.append([n, c, k, pass_at_k(n, c, k)])

# a 12×7 matrix from uniform(3), entries r() − 0.5, row-major
r = uniform(3)
a = np.array([next(r) - 0.5 for _ in range(12 * 7)]).reshape(12, 7)

# a spectrum with a zero tail, its statistics by definition
s = np.array([3.0, 2.0, 1.0, 0.5, 0.25, 0.0])
total = float((s**2).sum())
p = s[s > 0] / s.sum()
thresholds = [0.5, 0.9, 0.99, 1.0]
cum = np.cumsum(s**2) / total

ref = {
    "pass_at_k": grid,
    "matrix": {"seed": 3, "m": 12, "n": 7, "first": a.flatten()[:3].tolist(),
               "singular_values": np.linalg.svd(a, compute_uv=False).tolist()},
    "spectrum": {
        "sigma": s.tolist(),
        "total_sq": total,
        "explained_variance": cum.tolist(),
        # smallest k with cum[k-1] ≥ t
        "rank_at": {str(t): int(np.searchsorted(cum, t) + 1) for t in thresholds},
        "effective_rank": float(np.exp(-(p * np.log(p)).sum())),
        "stable_rank": float(total / s[0] ** 2),
    },
}
# one grid row a line
text = json.dumps(ref, indent=1)
text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)
with open(os.path.join(here, "maths_ref.json"), "w") as f:
    f.write(text + "\n")
print(json.dumps(ref["matrix"]), json.dumps(ref["spectrum"]))
