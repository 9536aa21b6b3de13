"""Read back what a run logged to its trackers, each with the tracker's own reader, as JSON.

  python trackers_read.py MLFLOW_URI RUN_NAME TB_DIR WANDB_DIR

MLflow: its client (params, every metric's history by step, the artifact tree, the status).
TensorBoard: tensorboard's EventAccumulator (scalars by tag, the config text).
wandb: the offline run file's records, each parsed with wandb's own Record protobuf.
"""

import glob
import json
import os
import sys


def mlflow_side(uri, name):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name("loralab")
    runs = c.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{name}'")
    r = runs[0]

    def tree(path=None):
        out = []
        for f in c.list_artifacts(r.info.run_id, path):
            out += tree(f.path) if f.is_dir else [f.path]
        return out

    metrics = {k: [[m.step, m.value] for m in c.get_metric_history(r.info.run_id, k)] for k in r.data.metrics}
    return {
        "runs": len(runs),
        "status": r.info.status,
        "params": r.data.params,
        "tags": {k: v for k, v in r.data.tags.items() if k.startswith("loralab")},
        "metrics": metrics,
        "artifacts": sorted(tree()),
    }


def tensorboard_side(d):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(d, size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    tags = ea.Tags()
    scalars = {t: [[e.step, e.value] for e in ea.Scalars(t)] for t in tags["scalars"]}
    texts = {t: ea.Tensors(t)[0].tensor_proto.string_val[0].decode() for t in tags["tensors"]}
    return {"scalars": scalars, "texts": texts}


def wandb_records(path):
    """The records of a .wandb file: wandb's transaction log (LevelDB's log format in 32 KiB
    blocks after a 7-byte ":W&B" header), each a `Record` of wandb's own protobuf. wandb 0.31
    reads it only from its Go core, so the framing is read here; the records are wandb's."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B", data[:7]
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(pending)
            yield rec
            pending = b""


def wandb_side(d):
    files = glob.glob(os.path.join(d, "wandb", "offline-run-*", "run-*.wandb"))
    history, config, artifacts, exit_code = [], {}, [], None
    for rec in wandb_records(files[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
        elif kind in ("config", "run"):
            for i in (rec.config if kind == "config" else rec.run.config).update:
                config[i.key] = json.loads(i.value_json)
        elif kind == "artifact":
            artifacts.append(rec.artifact.name)
        elif kind == "exit":
            exit_code = rec.exit.exit_code
    return {"files": len(files), "history": history, "config": config, "artifacts": artifacts, "exit_code": exit_code}


if __name__ == "__main__":
    uri, name, tb, wb = sys.argv[1:5]
    print(json.dumps({"mlflow": mlflow_side(uri, name), "tensorboard": tensorboard_side(tb), "wandb": wandb_side(wb)}))
