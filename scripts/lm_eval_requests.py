"""Every request lm-eval 0.4.4 builds for a task, from local records: its own task YAML
(process_docs, doc_to_text, doc_to_choice, target_delimiter, fewshot_delimiter and
its ContextSampler), with only the dataset swapped for the given JSONL files and the few-shot
seed lm-eval's simple_evaluate sets (1234). tests/lm-eval-parity.test.ts compares loralab's
requests with these.

    python scripts/lm_eval_requests.py TASK SHOTS EVAL.jsonl TRAIN.jsonl OUT.json
    python scripts/lm_eval_requests.py JOBS.json     # [{task, shots, eval, train, out}, ...], one process

OUT.json: one entry per document, in order: [[context, continuation], ...] for the
log-likelihood tasks, [context, until] for gsm8k."""
import json
import logging
import sys

logging.disable(logging.WARNING)

from lm_eval.api.task import ConfigurableTask  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from lm_eval.utils import load_yaml_config  # noqa: E402

EVAL_SPLIT = {"gsm8k": "test", "hellaswag": "validation", "winogrande": "validation", "arc_challenge": "test"}


def build(tm, task, shots, eval_file, train_file, out):
    cfg = load_yaml_config(tm.task_index[task]["yaml_path"], mode="full")
    cfg.pop("group", None)
    cfg.pop("tag", None)
    cfg["dataset_path"] = "json"
    cfg["dataset_name"] = None
    cfg["dataset_kwargs"] = {"data_files": {EVAL_SPLIT[task]: eval_file, "train": train_file}}
    cfg["num_fewshot"] = shots
    t = ConfigurableTask(config=cfg)
    t.set_fewshot_seed(seed=1234)
    t.build_all_requests(limit=None, rank=0, world_size=1)
    by_doc = {}
    for inst in sorted(t.instances, key=lambda i: (i.doc_id, i.idx)):
        args = inst.arguments
        if inst.request_type == "generate_until":
            by_doc[inst.doc_id] = [args[0], list(args[1]["until"])]
        else:
            by_doc.setdefault(inst.doc_id, []).append([args[0], args[1]])
    with open(out, "w", encoding="utf-8") as f:
        json.dump([by_doc[i] for i in sorted(by_doc)], f, ensure_ascii=False)


def main():
    tm = TaskManager()
    if len(sys.argv) == 2:
        with open(sys.argv[1], encoding="utf-8") as f:
            for j in json.load(f):
                build(tm, j["task"], int(j["shots"]), j["eval"], j["train"], j["out"])
    else:
        build(tm, sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])


if __name__ == "__main__":
    main()
