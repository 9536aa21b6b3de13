"""The peers' side of `bun run bench svd`: seconds for the singular values (no vectors) of a
random M×N matrix in DTYPE (f32 or f64) with numpy (`np.linalg.svd(a, compute_uv=False)`,
LAPACK's gesdd) or scipy (`scipy.linalg.svd(a, compute_uv=False, lapack_driver="gesdd")`),
once, with THREADS BLAS threads (threadpoolctl); prints JSON with threadpoolctl's report of the
kernel it ran. The matrix is N(0, 1) entries, drawn in f32 and widened for f64, as loralab's
side does. The runner repeats it in rounds, interleaved with loralab's, each in its own process.

    python scripts/bench_svd.py numpy|scipy M N THREADS f32|f64
"""
import json, sys, time
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

tool = sys.argv[1]
m, n, threads = (int(x) for x in sys.argv[2:5])
dtype = sys.argv[5]
a = np.random.default_rng(11).standard_normal((m, n), dtype=np.float32).astype(np.float64 if dtype == "f64" else np.float32)
if tool == "scipy":
    import scipy
    import scipy.linalg

    svd = lambda x: scipy.linalg.svd(x, compute_uv=False, lapack_driver="gesdd", check_finite=False)
    version = scipy.__version__
else:
    svd = lambda x: np.linalg.svd(x, compute_uv=False)
    version = np.__version__
with threadpool_limits(limits=threads):
    t = time.perf_counter()
    s = svd(a)
    seconds = time.perf_counter() - t
    info = [{k: p.get(k) for k in ("internal_api", "version", "architecture", "num_threads", "threading_layer")} for p in threadpool_info()]
print(json.dumps({"tool": tool, "version": version, "m": m, "n": n, "dtype": dtype, "threads": threads, "seconds": seconds, "sigma_1": float(s[0]), "blas": info}))
