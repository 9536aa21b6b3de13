#!/usr/bin/env python3
"""The GPU check of the CUDA sidecar, driven through its stdio protocol (docs/sidecar-protocol.md).

Run by scripts/gpu-check.sh on a GPU machine (no Bun, Rust or registries needed there: the
sidecar binary is carried; PyTorch, transformers and PEFT are used when present).

  (a) tiny models (head dims 32 and 64): the first 3 steps' losses on CUDA against the CPU
      engine's f32: f32 with loralab's CUDA kernels (docs/kernels.md), f32 with them turned
      off (LORALAB_CUDA_KERNELS=0: candle's ops), and bf16 (attention on tensor cores);
  (b) a Llama-3.2-1B-like model (random weights made here, shared by both sides), seq 2048,
      micro-batch 4: loralab's training tokens/s and peak GPU memory, full FT and LoRA r=16 on
      all modules;
  (c) the same two with PyTorch + transformers + PEFT (eager, attn_implementation="sdpa"),
      printed as ratios;
  (d) the PEFT round trip: a loralab adapter loaded into PEFT scores text as loralab does;
  (e) loralab LoRA on the 1B model with its kernels turned off: what the kernels buy, as ratios.
Results go to results.json after every part (a timeout keeps what was measured).

`--device cpu --small` runs the same script on a CPU with a small model: how it is tested
without a GPU (the figures it prints then say nothing about GPUs).
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "datasets" / "tiny"
RESULTS = {}


def log(*a):
    print(*a, flush=True)


class Sidecar:
    """One loralab-sidecar process; call(op, ...) sends a request and waits for its answer."""

    def __init__(self, path, env=None):
        self.p = subprocess.Popen([str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env={**os.environ, **(env or {})})
        line = self.p.stdout.readline()
        if not line:
            raise SystemExit(f"sidecar {path} exited at start (code {self.p.wait()}); run it by hand to see why")
        self.ready = json.loads(line)
        assert self.ready.get("event") == "ready" and self.ready.get("protocol") == 2, line
        self.n = 0

    @property
    def pid(self):
        return self.p.pid

    def call(self, op, on_progress=None, **params):
        self.n += 1
        rid = self.n
        self.p.stdin.write(json.dumps({"v": 2, "id": rid, "op": op, **params}) + "\n")
        self.p.stdin.flush()
        for line in self.p.stdout:
            ev = json.loads(line)
            if ev.get("id") != rid:
                continue
            if ev["event"] == "progress":
                if on_progress:
                    on_progress(ev["data"])
            elif ev["event"] == "result":
                return ev["data"]
            else:
                e = ev["error"]
                raise RuntimeError(f"{op}: {e['code']}: {e['message']}")
        raise RuntimeError(f"sidecar exited during {op} (code {self.p.wait()})")

    def close(self):
        try:
            self.call("shutdown")
        except RuntimeError:
            pass
        self.p.wait(timeout=60)


class PeakMemory:
    """Peak GPU memory of one process, from nvidia-smi every 100 ms (what the driver charges it)."""

    def __init__(self, pid, enabled):
        self.pid, self.peak_mib, self.stop = pid, 0, threading.Event()
        self.t = threading.Thread(target=self.poll, daemon=True) if enabled else None
        if self.t:
            self.t.start()

    def poll(self):
        while not self.stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5).stdout
                for row in out.strip().splitlines():
                    pid, mib = [x.strip() for x in row.split(",")]
                    if int(pid) == self.pid:
                        self.peak_mib = max(self.peak_mib, int(mib))
            except Exception:
                pass
            self.stop.wait(0.1)

    def done(self):
        self.stop.set()
        if self.t:
            self.t.join()
        return self.peak_mib / 1024


def tiny_config(out, run_id, device, dtype, kind="full", steps=3, lr=1e-3, model_config=TINY / "config.json"):
    return {
        "name": "gpu-check", "out_dir": str(out), "run_id": run_id, "seed": 5,
        "model": {"config": str(model_config), "tokenizer": str(TINY / "tokenizer.json"), "dtype": dtype},
        "data": {"train": str(TINY / "code.jsonl"), "text_field": "content", "seq_len": 32, "cache_dir": str(Path(out) / "cache")},
        "method": {"kind": kind, "rank": 4, "targets": "all"},
        "optim": {"name": "adamw", "lr": lr},
        "train": {"steps": steps, "micro_batch": 4, "grad_accum": 1, "checkpoint_every": 0, "device": device},
    }


def losses(run_dir):
    return [json.loads(l)["loss"] for l in Path(run_dir, "metrics.jsonl").read_text().splitlines()]


def check_a(sc, portable, out, device):
    log("\n== (a) first 3 steps on tiny models: CPU f32 vs", device, "(kernels on and off) f32 and bf16")
    # the tiny model (head dim 32), and the same width with 2 heads (head dim 64, as the 1B model)
    hd64 = Path(out) / "tiny-hd64.json"
    hd64.write_text(json.dumps({**json.loads((TINY / "config.json").read_text()), "num_attention_heads": 2, "num_key_value_heads": 1}))
    ok = True
    for name, mc in (("hd32", TINY / "config.json"), ("hd64", hd64)):
        ref = losses(sc.call("train", config=tiny_config(out, f"a-{name}-cpu-f32", "cpu", "f32", model_config=mc))["run_dir"])
        log(f"  {name} cpu f32                 {['%.5f' % x for x in ref]}")
        for side, dtype, tol in (("kernels", "f32", 1e-3), ("candle ops", "f32", 1e-3), ("kernels", "bf16", 2e-2)):
            run_id = f"a-{name}-{device.replace(':', '')}-{dtype}-{side.split()[0]}"
            got = losses((sc if side == "kernels" else portable).call("train", config=tiny_config(out, run_id, device, dtype, model_config=mc))["run_dir"])
            worst = max(abs(a - b) / abs(a) for a, b in zip(ref, got))
            ok &= worst <= tol
            log(f"  {name} {device} {dtype:4s} {side:10s}  {['%.5f' % x for x in got]}  worst rel diff {worst:.2e} (tolerance {tol:g}) {'ok' if worst <= tol else 'FAIL'}")
    RESULTS["a_losses_match"] = ok
    return ok


def llama_1b(small):
    """Llama-3.2-1B's shape (without its rope scaling), or a small one for the CPU test."""
    if small:
        return dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, vocab_size=4096)
    return dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)


def make_model(out, small, device):
    """Random weights (seed 0), written once as an HF directory both sides load."""
    d = Path(out) / "model"
    shape = llama_1b(small)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 8192,
           "tie_word_embeddings": True, "initializer_range": 0.02, "bos_token_id": 0, "eos_token_id": 1, "hidden_act": "silu", "torch_dtype": "bfloat16", **shape}
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    with torch.device(device):
        m = LlamaForCausalLM(LlamaConfig(**cfg)).to(torch.bfloat16)
    m.save_pretrained(d, safe_serialization=True)
    del m
    if device == "cuda":
        torch.cuda.empty_cache()
    return d, cfg


def make_data(out, seq_len, rows):
    """Pseudo-text of common words: enough tokens for `rows` packed rows of the tiny tokenizer."""
    rng = random.Random(0)
    words = "the of and to in is that for it as with was on be by at this from have or not are but an which one all were".split()
    path = Path(out) / "data.jsonl"
    with open(path, "w") as f:
        for _ in range(rows):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(seq_len * 2))}) + "\n")
    return path


def check_b(sc, out, device, model_dir, data, seq, mb, steps, kinds=("full", "lora"), tag="loralab"):
    log(f"\n== ({'b' if tag == 'loralab' else 'e'}) {tag} on the {'1B' if seq == 2048 else 'small'} model, seq {seq}, micro-batch {mb}, bf16, {device}")
    for kind, lr in (("full", 1e-5), ("lora", 1e-4)):
        if kind not in kinds:
            continue
        cfg = {
            "name": "gpu-check", "out_dir": str(out), "run_id": f"{tag}-{kind}", "seed": 0,
            "model": {"path": str(model_dir), "tokenizer": str(TINY / "tokenizer.json"), "dtype": "bf16"},
            "data": {"train": str(data), "text_field": "text", "seq_len": seq, "cache_dir": str(Path(out) / "cache")},
            "method": {"kind": kind, "rank": 16, "alpha": 32, "dropout": 0.05, "targets": "all"},  # the study's LoRA (PEFT's too, in c)
            "optim": {"name": "adamw", "lr": lr},
            "train": {"steps": steps, "micro_batch": mb, "grad_accum": 1, "checkpoint_every": 0, "device": device},
        }
        stamps = []
        mem = PeakMemory(sc.pid, device.startswith("cuda"))
        try:
            summary = sc.call("train", config=cfg, on_progress=lambda e: e.get("type") == "progress" and stamps.append((time.perf_counter(), e["tokens"])))
        except RuntimeError as e:
            if "oom" not in str(e):
                raise
            # out of memory: the same run with gradient checkpointing (and so the PyTorch side too)
            log(f"  {kind}: {str(e)[:200]}\n  {kind}: again with train.gradient_checkpointing = true")
            cfg["run_id"] += "-ckpt"
            cfg["train"]["gradient_checkpointing"] = True
            stamps.clear()
            summary = sc.call("train", config=cfg, on_progress=lambda e: e.get("type") == "progress" and stamps.append((time.perf_counter(), e["tokens"])))
        peak = mem.done()
        # steady state: from the end of step 2 (after warm-up and allocation) to the last step
        (t0, n0), (t1, n1) = stamps[1], stamps[-1]
        tps = (n1 - n0) / (t1 - t0)
        ckpt = cfg["train"].get("gradient_checkpointing", False)
        RESULTS[f"{tag}_{kind}"] = {"tokens_per_s": tps, "peak_gib": peak, "final_loss": summary["final_loss"], "checkpointing": ckpt}
        log(f"  {kind:4s}: {tps:10.0f} tokens/s   peak {peak:6.1f} GiB   loss {summary['first_loss']:.3f} → {summary['final_loss']:.3f}{'   (gradient checkpointing)' if ckpt else ''}")


def check_c(model_dir, cfg, device, seq, mb, steps):
    log(f"\n== (c) PyTorch + transformers + PEFT, eager, attn_implementation=sdpa, same shapes, {device}")
    try:
        import torch
        import peft
        import transformers
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        log(f"  skipped: {e} (this machine has no PyTorch/transformers/PEFT)")
        return
    log(f"  torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    on_gpu = device.startswith("cuda")
    for kind, lr in (("full", 1e-5), ("lora", 1e-4)):
        # the loralab recipe: bf16 compute; full FT trains f32 master weights; LoRA keeps the base in bf16, the adapters in f32
        m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32 if kind == "full" else torch.bfloat16, attn_implementation="sdpa").to(device)
        if kind == "lora":
            m = peft.get_peft_model(m, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
            for p in m.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
        if RESULTS.get(f"loralab_{kind}", {}).get("checkpointing"):
            m.gradient_checkpointing_enable()  # as loralab had to: same recomputation on both sides
        m.train()
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
        g = torch.Generator().manual_seed(0)
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        mem = PeakMemory(os.getpid(), on_gpu)
        stamps = []
        for step in range(steps):
            ids = torch.randint(2, cfg["vocab_size"], (mb, seq), generator=g).to(device)
            with torch.autocast(device_type="cuda" if on_gpu else "cpu", dtype=torch.bfloat16):
                loss = m(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in m.parameters() if p.requires_grad], 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if on_gpu:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
        peak = mem.done()
        tps = (len(stamps) - 2) * mb * seq / (stamps[-1] - stamps[1])
        ckpt = bool(RESULTS.get(f"loralab_{kind}", {}).get("checkpointing"))
        RESULTS[f"torch_{kind}"] = {"tokens_per_s": tps, "peak_gib": peak, "max_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else 0, "checkpointing": ckpt}
        log(f"  {kind:4s}: {tps:10.0f} tokens/s   peak {peak:6.1f} GiB (nvidia-smi){'   (gradient checkpointing)' if ckpt else ''}")
        del m, opt
        if on_gpu:
            torch.cuda.empty_cache()
    log("\n== ratios (loralab / PyTorch + PEFT, measured above in this one run)")
    for kind in ("full", "lora"):
        log_ratios(kind, f"loralab_{kind}", f"torch_{kind}")
    a, b = RESULTS.get("loralab_lora"), RESULTS.get("loralab_full")
    if a and b and b["peak_gib"]:
        log(f"  loralab LoRA peak / loralab full FT peak: {a['peak_gib'] / b['peak_gib']:.2f}× (goal ≤ 0.6×)")


def check_d(sc, out, device):
    log("\n== (d) PEFT round trip: a loralab LoRA adapter (trained on", device, ") loaded into PEFT")
    try:
        import torch
        import peft
        from tokenizers import Tokenizer
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        log(f"  skipped: {e}")
        return
    s = sc.call("train", config=tiny_config(out, "d-lora", device, "bf16" if device != "cpu" else "f32", kind="lora", steps=5, lr=1e-2))
    base, adapter = Path(s["run_dir"]) / "base", s["output"]
    pairs = [("def add(a, b):", "\n    return a + b"), ("for i in range(10):", " print(i)"), ("import os", "\nimport sys")]
    engine = sc.call("load", model=str(base), adapter=adapter)["engine"]
    ours = sc.call("loglik", engine=engine, requests=[{"context": c, "continuation": x} for c, x in pairs])
    tok = Tokenizer.from_file(str(TINY / "tokenizer.json"))
    m = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter).eval()
    plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()

    def loglik(model, ctx, cont):
        whole = tok.encode(ctx + cont, add_special_tokens=False).ids
        n = len(tok.encode(ctx, add_special_tokens=False).ids)
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
        return sum(lp[i - 1, whole[i]].item() for i in range(n, len(whole)))

    worst, moved = 0.0, 0.0
    for (c, x), o in zip(pairs, ours):
        theirs, base_lp = loglik(m, c, x), loglik(plain, c, x)
        worst = max(worst, abs(theirs - o["logprob"]))
        moved = max(moved, abs(theirs - base_lp))
        log(f"  {c!r:24s} loralab {o['logprob']:10.5f}   PEFT {theirs:10.5f}   base alone {base_lp:10.5f}")
    ok = worst <= 1e-3 and moved > 1e-2
    RESULTS["d_peft_round_trip"] = ok
    log(f"  worst |loralab − PEFT| = {worst:.2e} (≤ 1e-3), the adapter moves the score by up to {moved:.3f}: {'ok' if ok else 'FAIL'}")
    return ok


def save(out):
    Path(out, "results.json").write_text(json.dumps(RESULTS, indent=2))


def log_ratios(label, over, under):
    """tokens/s and peak memory of result `over` as ratios to `under`, when both were measured."""
    a, b = RESULTS.get(over), RESULTS.get(under)
    if a and b:
        mem = f"   peak memory {a['peak_gib'] / b['peak_gib']:.2f}×" if b["peak_gib"] else ""
        log(f"  {label:4s}: tokens/s {a['tokens_per_s'] / b['tokens_per_s']:.2f}×{mem}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sidecar", default=str(ROOT / "dist" / "cuda" / "loralab-sidecar"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="a small model and sequence (the CPU test of this script)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: a,b,c,d,e")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    seq, mb = (256, 2) if args.small else (2048, 4)
    t0 = time.perf_counter()
    out = Path(tempfile.mkdtemp(prefix="loralab-gpu-check-"))
    sc = Sidecar(args.sidecar)
    # a second sidecar with loralab's CUDA kernels turned off: candle's own ops (the portable path)
    portable = Sidecar(args.sidecar, env={"LORALAB_CUDA_KERNELS": "0"})
    log(f"sidecar {args.sidecar}: {sc.ready}")
    ok = True
    try:
        if "a" not in skip:
            ok &= check_a(sc, portable, out, args.device)
            save(out)
        if not {"b", "c", "e"} <= skip:
            model_dir, cfg = make_model(out, args.small, args.device)
            data = make_data(out, seq, rows=args.steps * mb + 8)
            if "b" not in skip:
                check_b(sc, out, args.device, model_dir, data, seq, mb, args.steps)
                save(out)
        if "d" not in skip:
            ok &= bool(check_d(sc, out, args.device))
            save(out)
    finally:
        sc.close()
    if "c" not in skip:
        check_c(model_dir, cfg, args.device, seq, mb, args.steps)
        save(out)
    try:
        if "e" not in skip:
            check_b(portable, out, args.device, model_dir, data, seq, mb, max(4, args.steps // 2), kinds=("lora",), tag="portable")
            log_ratios("kernels on / off, LoRA", "loralab_lora", "portable_lora")
            save(out)
    finally:
        portable.close()
    save(out)
    log(f"\nresults: {out / 'results.json'}; {time.perf_counter() - t0:.0f} s in all; correctness checks {'passed' if ok else 'FAILED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
