"""loralab's bridge to wandb's own client: one JSON request per stdin line, one answer line each.

  {"op": "init", "project", "dir", "name", "id", "config"}  -> {"ok": true, "dir": run dir}
  {"op": "log", "step", "data": {metric: value}}             -> (no answer: fire and forget)
  {"op": "artifact", "name", "type", "paths": [...]}          -> {"ok": true}
  {"op": "finish", "exit_code"}                               -> {"ok": true}, then exit

wandb runs offline (WANDB_MODE=offline, synced later with `wandb sync`) unless WANDB_MODE says
otherwise. Without the wandb package the first line says so and the bridge exits 3.

wandb's steps only go forward, and scores of a checkpoint (eval/*) come after the run has gone on
past it, several at once at its end: every log is its own wandb step (a counter), and the
training step is a metric, `train/step` for train/* and val/*, `eval/step` for eval/*, the
x axes wandb is told to chart them by (define_metric).
"""

import json
import os
import sys


def answer(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    try:
        import wandb
    except ImportError as e:
        answer({"ok": False, "missing": True, "error": str(e)})
        return 3
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    run = None
    logged = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        op = req.get("op")
        try:
            if op == "init":
                run = wandb.init(
                    project=req["project"],
                    dir=req["dir"],
                    name=req["name"],
                    id=req["id"],
                    config=req.get("config") or {},
                    # a resumed loralab run continues its wandb run; a new one starts one
                    resume="allow" if req.get("resumed") else None,
                )
                for axis, series in (("train/step", ("train/*", "val/*")), ("eval/step", ("eval/*",))):
                    run.define_metric(axis)
                    for pattern in series:
                        run.define_metric(pattern, step_metric=axis)
                # a resumed run's wandb history goes on after its last row
                logged = run.step or 0
                answer({"ok": True, "dir": run.dir})
            elif op == "log":
                # JSON has no NaN or infinities: they come as the strings "NaN", "Infinity", "-Infinity"
                data = {k: float(v) if isinstance(v, str) else v for k, v in req["data"].items()}
                step = int(req["step"])
                data["eval/step" if any(k.startswith("eval/") for k in data) else "train/step"] = step
                run.log(data, step=logged)
                logged += 1
            elif op == "artifact":
                art = wandb.Artifact(req["name"], type=req.get("type", "model"))
                for p in req["paths"]:
                    if os.path.isdir(p):
                        art.add_dir(p, name=os.path.basename(p.rstrip("/")))
                    else:
                        art.add_file(p)
                run.log_artifact(art)
                answer({"ok": True})
            elif op == "finish":
                run.finish(exit_code=int(req.get("exit_code", 0)))
                answer({"ok": True})
                return 0
        except Exception as e:  # the run goes on: the Bun side warns once
            if op != "log":
                answer({"ok": False, "error": f"{type(e).__name__}: {e}"})
            else:
                sys.stderr.write(f"wandb: log failed: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
