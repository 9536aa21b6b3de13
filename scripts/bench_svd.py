"""numpy's side of `bun run bench svd`: seconds for np.linalg.svd(a, compute_uv=False) of a
random f32 M×N matrix with THREADS BLAS threads (threadpoolctl), best of the same number of
repetitions as loralab's side; prints JSON with threadpoolctl's report of the kernel it ran.
The runner unsets OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE for this process only.

    python3 scripts/bench_svd.py M N THREADS
"""
import json, sys, time
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

m, n, threads = (int(x) for x in sys.argv[1:4])
a = np.random.default_rng(11).standard_normal((m, n), dtype=np.float32)
reps = 3 if m * n <= 1 << 21 else 1
with threadpool_limits(limits=threads):
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        s = np.linalg.svd(a, compute_uv=False)
        best = min(best, time.perf_counter() - t)
    info = [{k: p.get(k) for k in ("internal_api", "version", "architecture", "num_threads", "threading_layer")} for p in threadpool_info()]
print(json.dumps({"m": m, "n": n, "threads": threads, "seconds": best, "reps": reps, "sigma_1": float(s[0]), "numpy": np.__version__, "blas": info}))
