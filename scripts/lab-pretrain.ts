// `bun run lab:pretrain`: pretrains the laboratory's base model on its source prose
// (datasets/lab/corpus.ts: Moby-Dick and the State of the Union addresses, held-out documents
// excluded) with loralab's own engine, and puts the result in datasets/lab/base/: committed as
// model.f16.safetensors.gz (1.9 MB), so `bun run train` spends its minutes on the study itself.
import { cpSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { train } from "loralab";
import { sourceDocs } from "../datasets/lab/corpus.ts";
import { packLabBase } from "../packages/study/src/labbase.ts";

const root = new URL("..", import.meta.url).pathname;
const lab = join(root, "datasets/lab");
const steps = Number(process.argv[2] ?? 1500);
const work = join(root, ".cache/loralab/lab-pretrain");
rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });
const docs = sourceDocs().filter((d) => !d.heldOut);
writeFileSync(join(work, "corpus.jsonl"), `${docs.map((d) => JSON.stringify({ text: d.text })).join("\n")}\n`);
console.log(
  `pretraining on ${docs.length} documents (${docs.reduce((a, d) => a + d.text.length, 0).toLocaleString("en-US")} characters), ${steps} steps`,
);
const s = await train(
  {
    name: "lab-pretrain",
    run_id: "base",
    out_dir: work,
    seed: 0,
    model: { config: join(lab, "config.json"), tokenizer: join(lab, "tokenizer.json") },
    data: { train: join(work, "corpus.jsonl"), format: "cpt", seq_len: 128, cache_dir: join(work, "cache") },
    method: { kind: "full" },
    optim: { name: "adamw", lr: 2e-3, weight_decay: 0.01 },
    schedule: { kind: "cosine", warmup_frac: 0.02, final_frac: 0.05 },
    train: { steps, micro_batch: 32, checkpoint_every: 0 },
  },
  {
    onProgress: (p) => {
      if (p.step % 50 === 0 || p.step === p.total_steps)
        console.log(`step ${p.step}/${p.total_steps} loss ${p.loss.toFixed(3)} ${Math.round(p.tokens_per_s)} tok/s`);
    },
  },
);
const out = join(lab, "base");
rmSync(out, { recursive: true, force: true });
cpSync(s.output, out, { recursive: true });
console.log(`committed form: ${packLabBase(out)}`);
console.log(
  `base model: ${out} (loss ${(s.first_loss ?? NaN).toFixed(3)} → ${(s.final_loss ?? NaN).toFixed(3)}, ${s.tokens.toLocaleString("en-US")} tokens, ${s.elapsed_s.toFixed(0)} s)`,
);
