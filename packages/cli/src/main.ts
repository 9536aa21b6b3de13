#!/usr/bin/env bun
// `loralab train [config.toml|yaml|json] [--key=value ...]`: one run with a progress display,
// or with no config the embedded tiny laboratory; and the other subcommands, each parsing its
// arguments with the one parser (args.ts) and answering `--help` with exit 0.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import {
  applyOverrides,
  ConfigError,
  exportModel,
  type ExportOptions,
  loadConfigFile,
  merge,
  type MergeOptions,
  type RunConfig,
} from "@loralab/engine";
import { cliArgs, splitOverrides } from "./args.ts";
import { configHelp } from "./help.ts";
import { progressReporter } from "./progress.ts";

const USAGE = `usage:
  loralab train [--quick|--full] [--seed=N]
                                        the laboratory: the whole study in miniature on this machine, ending with a
                                        summary table, the four findings decided at 95 % (exit 1 while one is
                                        undecided) and a report (docs/laboratory.md: its measured times);
                                        --quick: one seed, one LR each; --full: a 3000-question cloze, every epoch
                                        of every seed scored; --seed: its first training seed
  loralab train CONFIG [--key=value...] one run from a .toml/.yaml/.json config; --method.rank=64 style overrides;
                                        exit 130 when cancelled, 3 when train.forgetting_budget stopped it
  loralab train --help                  every config field, its default and why
  loralab eval --model M [--adapter A] | --run ID  [--tasks ...]
                                        learning (HumanEval, GSM8K) and forgetting (HellaSwag, WinoGrande, ARC-C)
                                        scores next to the base model's; --help for every option
  loralab fetch gsm8k|hellaswag|winogrande|arc_challenge|humaneval|all|ORG/NAME...
                                        benchmarks by name and models by Hub id into the Hugging Face cache; --help
  loralab analyze --base B --tuned T | --adapter A | --run ID
                                        the spectrum of the weight change (rank@90 %, noise floor, figures); --help
  loralab serve [--port 8080]           the HTTP API and dashboard: start, watch and keep runs; --help
  loralab import RUN_DIR...             runs trained outside the server (train, the library) into its store; --help
  loralab sweep FILE [--out DIR] [--queue --db URL]
                                        the study on your model and data: a grid of runs, every checkpoint evaluated,
                                        the report (configs/sweep-example.toml); --queue: cells as jobs for workers
  loralab worker --db URL [--cpu N | --gpus 0,1]
                                        train and evaluate queued sweep jobs on this host, one per slot
  loralab report DIR | RUN...           redraw a study's or the laboratory's report, or report over evaluated runs
  loralab merge BASE ADAPTER OUT [--dtype bf16|f16|f32]
                                        fold a PEFT adapter into its base (HF dir or .gguf), write an HF model
  loralab export SRC OUT --format hf|gguf|gguf-lora|vllm [--dtype D] [--base B]
                                        deployable copies: an HF model in bf16/f16, GGUF (f16, Q8_0) for llama.cpp,
                                        a GGUF LoRA (--lora), a vLLM adapter directory; --help
  loralab bench train|data|eval|svd|import
                                        side-by-side speed and memory measurements
  loralab --version                     the version of loralab and its engine
every subcommand takes --help`;

const SWEEP_USAGE = `usage: loralab sweep FILE.toml|yaml|json [--out DIR] [--queue --db URL [--retries N]]
       loralab sweep FILE --slurm --db URL [--partition P] [--gres G] [--time T] [--parallel K] [--sbatch-arg A]...
       loralab sweep status FILE --db URL   (cells and points by state, ETA from the measured step times)
       loralab sweep cell FILE I --out DIR --db URL   (a Slurm array task: train cell I)
  the study on your model and data (configs/sweep-example.toml); re-running resumes and skips finished cells;
  a cell that fails fails alone (the others train; exit 1 names it)
  --out DIR      where runs, points.json and the report go (default runs/sweep-NAME)
  --queue        one job per cell on the Postgres store's queue (pg-boss), trained by \`loralab worker\`s on any
                 host that shares DIR, and a job per checkpoint (and the base), evaluated and analysed by them
                 as cells finish; waits for them all, then draws the report here from the points they scored
  --db URL       the Postgres store (default $DATABASE_URL)
  --retries N    retries of a failing or lost cell before its dead-letter queue (default 2)
  --slurm        one sbatch --array=0-(N-1)%K job, task i training cell i against the store (--requeue on
                 preemption: it resumes from the checkpoint) and then scoring its checkpoints; waits for the
                 tasks, then scores the base and reports here`;
const WORKER_USAGE = `usage: loralab worker --db URL [--cpu N | --gpus 0,1,...] [--runs-dir DIR]
  trains queued sweep cells, one per slot, each in a sidecar process; heartbeats while it trains, so a cell of a
  worker that dies is retried on another one, resuming from its last checkpoint (DIR must be shared storage);
  evaluates and analyses the checkpoints' point jobs (first: they are ahead of training on the queue), on the
  slot's GPU
  --cpu N        N CPU slots (default 1)
  --gpus LIST    one slot per GPU index, trained with CUDA_VISIBLE_DEVICES set to it
  --runs-dir D   where this host's runs are, if not the path the sweep was queued with (then a lost cell resumes
                 only here, and the cells trained here are scored here, in their own job)`;
const REPORT_USAGE = `usage: loralab report SWEEP_DIR | RUN_DIR... [--out DIR]
  redraw a study's or the laboratory's report from its points.json, or report over evaluated run directories
  --out DIR   where a report over runs goes (default runs/report-STAMP)`;
const MERGE_USAGE = `usage: loralab merge BASE ADAPTER OUT [--dtype bf16|f16|f32]
  fold a PEFT adapter into its base model (HF directory or .gguf) and write a complete Hugging Face model
  directory: weights, config, tokenizer, tokenizer_config (chat template, eos), generation_config
  --dtype D   weights written as bf16, f16 or f32 (default f32)`;

const EXPORT_USAGE = `usage: loralab export SRC OUT --format hf|gguf|gguf-lora|vllm [--dtype D] [--base B] [--base-source ID]
  SRC: a run directory (its final model or adapter, and the run's base), a model (HF directory, .gguf, org/name)
  or a PEFT adapter directory; an adapter with --format hf or gguf is merged into its base first
  --format hf         a Hugging Face model directory (--dtype bf16|f16|f32, default f32)
  --format gguf       one llama.cpp GGUF file (--dtype f16|q8_0|bf16|f32, default f16)
  --format gguf-lora  a LoRA adapter for llama.cpp: llama-cli -m BASE.gguf --lora OUT (--dtype f16|f32, default f16)
  --format vllm       a PEFT adapter directory with the fields vLLM reads (--dtype bf16|f16|f32, default bf16)
  --base B            the base an adapter applies to (default: the run's)
  --base-source ID    the base's Hub id to record in a vLLM adapter (default: the base's pinned id, when it has one)`;

/** The version of the CLI, from the library's package.json. */
function version(): string {
  const pkg = JSON.parse(readFileSync(new URL("../../loralab/package.json", import.meta.url), "utf8")) as {
    version: string;
  };
  return `loralab ${pkg.version}`;
}

async function cmdTrain(args: string[], signal: AbortSignal): Promise<number> {
  const { overrides, rest } = splitOverrides(args);
  const { values, positionals: files } = cliArgs(
    "train",
    rest,
    { quick: { type: "boolean" }, full: { type: "boolean" } },
    USAGE,
  );
  if (values.help) {
    console.log(`${USAGE}\n\nconfig fields (TOML/YAML sections, or --section.field=value):\n${configHelp()}`);
    return 0;
  }
  // the laboratory: no config file; --seed=N (its first training seed) is its only override
  if (files.length === 0 && overrides.every((o) => o.startsWith("--seed="))) {
    const given = overrides.at(-1)?.slice("--seed=".length);
    const seed = given === undefined ? 0 : Number(given);
    if (!Number.isSafeInteger(seed) || seed < 0 || !/^\d+$/.test(given ?? "0"))
      throw new ConfigError(`--seed=${given}: the laboratory's seed is a whole number ≥ 0 (hint: --seed=3)`, "seed");
    if (values.quick && values.full)
      throw new ConfigError("--quick and --full: the laboratory runs one of them (hint: bun run train --full)", "full");
    const { runLaboratory } = await import("./study.ts");
    return runLaboratory(values.quick ? "quick" : values.full ? "full" : "default", seed);
  }
  for (const flag of ["quick", "full"] as const)
    if (values[flag])
      throw new ConfigError(`--${flag} is for the laboratory (no config file) (hint: bun run train --${flag})`, flag);
  if (files.length > 1) throw new ConfigError(`expected one config file, got ${files.join(", ")}`, "");
  const base: RunConfig = files[0] ? await loadConfigFile(files[0]) : {};
  const cfg = applyOverrides(base, overrides);
  const bar = progressReporter(cfg.name ?? "run");
  // train.eval_tasks: scored while it trains (the evaluation package runs them)
  const { trainWithEval } = await import("@loralab/eval");
  const summary = await trainWithEval(cfg, {
    signal,
    log: (line) => bar.note(line),
    onProgress: bar.onProgress,
    onEvent: (e) => {
      if (e.type === "prepared")
        console.log(
          `data: ${e.documents.toLocaleString("en-US")} records → ${e.rows.toLocaleString("en-US")} rows of ${e.seq_len} tokens ` +
            `(${e.tokens.toLocaleString("en-US")} tokens, ${e.loss_tokens.toLocaleString("en-US")} with loss; ${e.truncated} truncated, ${e.dropped} dropped, ${e.dropped_tokens.toLocaleString("en-US")} tokens unused)`,
        );
      if (e.type === "start")
        console.log(
          `run ${e.run_id} → ${e.run_dir} (${e.trainable_params.toLocaleString("en-US")} of ${e.params.toLocaleString("en-US")} parameters train)`,
        );
      if (e.type === "validation")
        bar.note(`step ${e.step}: val_loss ${e.val_loss.toFixed(4)}${e.best ? " (best)" : ""}`);
    },
  });
  bar.end();
  const fs = summary.forgettingStop;
  if (fs) {
    console.log(
      `stopped early at step ${fs.step}: the forgetting score fell ${fs.drop.toFixed(2)} points below the base's, past train.forgetting_budget = ${fs.budget}`,
    );
    console.log(
      summary.best_checkpoint
        ? `${summary.keptBy ? `best checkpoint within the budget (${summary.keptBy})` : "last checkpoint within the budget"}: ${summary.best_checkpoint}`
        : "no checkpoint was within the budget",
    );
    console.log(`scores: ${join(summary.run_dir, "evals.jsonl")}`);
    return 3;
  }
  if (summary.evals.length) console.log(`scores while training: ${join(summary.run_dir, "evals.jsonl")}`);
  if (summary.stopped_early_at != null)
    console.log(
      `stopped early at step ${summary.stopped_early_at}: val_loss stopped improving (train.early_stop_patience)`,
    );
  if (summary.best_checkpoint)
    console.log(`best checkpoint (${summary.keptBy || "val_loss"}): ${summary.best_checkpoint}`);
  console.log(
    `${summary.status}: ${summary.steps}/${summary.total_steps} steps, ${summary.first_loss == null ? "no step left to train (resumed at the end)" : `loss ${summary.first_loss.toFixed(4)} → ${(summary.final_loss ?? NaN).toFixed(4)}`}, ` +
      `${Math.round(summary.tokens_per_s)} tok/s, ${summary.elapsed_s.toFixed(1)} s\n${summary.output ? `output: ${summary.output}` : `last checkpoint: ${summary.last_checkpoint}`}`,
  );
  return summary.status === "cancelled" ? 130 : 0;
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  const abort = new AbortController();
  if (cmd === "train")
    process.on("SIGINT", () => {
      if (abort.signal.aborted) process.exit(130);
      console.error("\ncancelling after this step (Ctrl-C again to quit now)...");
      abort.abort();
    });
  switch (cmd) {
    case "train":
      return cmdTrain(rest, abort.signal);
    case "eval": {
      const { cmdEval } = await import("./eval.ts");
      return cmdEval(rest);
    }
    case "fetch": {
      const { cmdFetch } = await import("./fetch.ts");
      return cmdFetch(rest);
    }
    case "analyze": {
      const { cmdAnalyze } = await import("./analyze.ts");
      return cmdAnalyze(rest);
    }
    case "serve": {
      const { cmdServe } = await import("./serve.ts");
      return cmdServe(rest);
    }
    case "import": {
      const { cmdImport } = await import("./import.ts");
      return cmdImport(rest);
    }
    case "sweep": {
      const { values, positionals } = cliArgs(
        "sweep",
        rest,
        {
          out: { type: "string" },
          queue: { type: "boolean" },
          db: { type: "string" },
          retries: { type: "string" },
          slurm: { type: "boolean" },
          partition: { type: "string" },
          gres: { type: "string" },
          time: { type: "string" },
          parallel: { type: "string" },
          "sbatch-arg": { type: "string", multiple: true },
        },
        SWEEP_USAGE,
      );
      if (values.help) {
        console.log(SWEEP_USAGE);
        return 0;
      }
      const status = positionals[0] === "status";
      const cell = positionals[0] === "cell";
      const files = status ? positionals.slice(1) : cell ? positionals.slice(1, 2) : positionals;
      if (files.length !== 1 || (cell && positionals.length !== 3))
        throw new ConfigError(
          `loralab sweep: expected one spec file${cell ? " and a cell index" : ""}\n${SWEEP_USAGE}`,
          "",
        );
      const db = (values.db as string | undefined) ?? process.env.DATABASE_URL ?? "";
      if ((values.queue || values.slurm || status || cell) && !/^postgres(ql)?:\/\//.test(db))
        throw new ConfigError(
          `loralab sweep: --queue, --slurm, status and cell need the Postgres store its workers share (hint: --db postgres://… or DATABASE_URL)\n${SWEEP_USAGE}`,
          "db",
        );
      const retries = values.retries === undefined ? 2 : Number(values.retries);
      if (!Number.isInteger(retries) || retries < 0)
        throw new ConfigError(`loralab sweep: --retries is a whole number ≥ 0 (got ${values.retries})`, "retries");
      const study = await import("./study.ts");
      if (status) return study.cmdSweepStatus(files[0]!, db);
      if (cell) {
        const i = Number(positionals[2]);
        if (!Number.isInteger(i) || i < 0)
          throw new ConfigError(`loralab sweep cell: the cell index is a whole number ≥ 0`, "cell");
        // Slurm preempts with SIGTERM (then SIGKILL after KillWait): the cell stops after its
        // step with a checkpoint, and its requeued task resumes from it
        const abort = new AbortController();
        for (const sig of ["SIGINT", "SIGTERM"] as const) process.on(sig, () => abort.abort());
        return study.cmdSweepCell(files[0]!, i, values.out as string | undefined, db, abort.signal);
      }
      if (values.slurm) {
        const parallel = values.parallel === undefined ? undefined : Number(values.parallel);
        if (parallel !== undefined && (!Number.isInteger(parallel) || parallel < 1))
          throw new ConfigError(`loralab sweep: --parallel is a whole number ≥ 1 (got ${values.parallel})`, "parallel");
        return study.cmdSweepSlurm(files[0]!, values.out as string | undefined, db, {
          ...(values.partition ? { partition: values.partition as string } : {}),
          ...(values.gres ? { gres: values.gres as string } : {}),
          ...(values.time ? { time: values.time as string } : {}),
          ...(parallel ? { parallel } : {}),
          ...(values["sbatch-arg"] ? { extra: values["sbatch-arg"] as string[] } : {}),
        });
      }
      if (values.queue) return study.cmdSweepQueued(files[0]!, values.out as string | undefined, db, retries);
      return study.cmdSweep(files[0]!, values.out as string | undefined);
    }
    case "worker": {
      const { values, positionals } = cliArgs(
        "worker",
        rest,
        { db: { type: "string" }, cpu: { type: "string" }, gpus: { type: "string" }, "runs-dir": { type: "string" } },
        WORKER_USAGE,
      );
      if (values.help) {
        console.log(WORKER_USAGE);
        return 0;
      }
      if (positionals.length) throw new ConfigError(`loralab worker: no positional arguments\n${WORKER_USAGE}`, "");
      const db = (values.db as string | undefined) ?? process.env.DATABASE_URL ?? "";
      if (!/^postgres(ql)?:\/\//.test(db))
        throw new ConfigError(
          `loralab worker: the Postgres store is needed (hint: --db postgres://… or DATABASE_URL)`,
          "db",
        );
      let devices: string[];
      if (values.gpus !== undefined) {
        devices = String(values.gpus).split(",");
        if (!devices.every((d) => /^\d+$/.test(d)))
          throw new ConfigError(
            `loralab worker: --gpus is a list of GPU indices, e.g. 0,1 (got ${values.gpus})`,
            "gpus",
          );
      } else {
        const n = values.cpu === undefined ? 1 : Number(values.cpu);
        if (!Number.isInteger(n) || n < 1)
          throw new ConfigError(`loralab worker: --cpu is a whole number ≥ 1 (got ${values.cpu})`, "cpu");
        devices = Array.from({ length: n }, () => "cpu");
      }
      // stop claiming on SIGINT/SIGTERM; the jobs in hand go back to the queue, a cell's after its
      // sidecar stopped at a step with a checkpoint (as it does when the signal reaches it too,
      // sent to the group); a second signal quits at once
      for (const sig of ["SIGINT", "SIGTERM"] as const)
        process.on(sig, () => {
          if (abort.signal.aborted) process.exit(130);
          console.error(`worker: ${sig}: putting the jobs in hand back in the queue (again to quit now)`);
          abort.abort();
        });
      const { cmdWorker } = await import("./study.ts");
      const code = await cmdWorker(db, devices, values["runs-dir"] as string | undefined, abort.signal);
      // an evaluation put back in the queue may still run in its sidecar: not waited for
      return process.exit(code);
    }
    case "report": {
      const { values, positionals } = cliArgs("report", rest, { out: { type: "string" } }, REPORT_USAGE);
      if (values.help) {
        console.log(REPORT_USAGE);
        return 0;
      }
      if (!positionals.length) throw new ConfigError(`loralab report: expected a directory\n${REPORT_USAGE}`, "");
      const { cmdReport } = await import("./study.ts");
      return cmdReport(positionals, values.out);
    }
    case "merge": {
      const { values, positionals } = cliArgs("merge", rest, { dtype: { type: "string" } }, MERGE_USAGE);
      if (values.help) {
        console.log(MERGE_USAGE);
        return 0;
      }
      if (positionals.length !== 3)
        throw new ConfigError(
          `loralab merge: expected BASE ADAPTER OUT, got ${positionals.length} paths\n${MERGE_USAGE}`,
          "",
        );
      const [base, adapter, out] = positionals as [string, string, string];
      const r = await merge(
        base,
        adapter,
        out,
        values.dtype === undefined ? {} : { dtype: values.dtype as MergeOptions["dtype"] },
      );
      for (const n of r.notes) console.log(`note: ${n}`);
      console.log(`merged model: ${out} (${r.dtype})`);
      return 0;
    }
    case "export": {
      const { values, positionals } = cliArgs(
        "export",
        rest,
        {
          format: { type: "string" },
          dtype: { type: "string" },
          base: { type: "string" },
          "base-source": { type: "string" },
        },
        EXPORT_USAGE,
      );
      if (values.help) {
        console.log(EXPORT_USAGE);
        return 0;
      }
      if (positionals.length !== 2)
        throw new ConfigError(`loralab export: expected SRC OUT, got ${positionals.length} paths\n${EXPORT_USAGE}`, "");
      const format = values.format as ExportOptions["format"] | undefined;
      if (!format || !["hf", "gguf", "gguf-lora", "vllm"].includes(format))
        throw new ConfigError(
          `loralab export: --format is one of hf, gguf, gguf-lora, vllm (got ${format ?? "none"})\n${EXPORT_USAGE}`,
          "format",
        );
      const [src, out] = positionals as [string, string];
      const r = await exportModel(src, out, {
        format,
        ...(values.dtype === undefined ? {} : { dtype: values.dtype as string }),
        ...(values.base === undefined ? {} : { base: values.base as string }),
        ...(values["base-source"] === undefined ? {} : { baseSource: values["base-source"] as string }),
      });
      for (const n of r.notes) console.log(`note: ${n}`);
      const types = Object.entries(r.tensor_types)
        .map(([t, n]) => `${n} ${t}`)
        .join(", ");
      console.log(`exported: ${r.path} (${r.format}, ${r.dtype}${types ? `; tensors ${types}` : ""})`);
      return 0;
    }
    case "bench": {
      const { runBench } = await import("./bench.ts");
      return runBench(rest);
    }
    case "--version":
    case "-V":
    case "version":
      console.log(version());
      return 0;
    default:
      if (cmd === undefined || cmd === "--help" || cmd === "-h" || cmd === "help") {
        console.log(USAGE);
        return 0;
      }
      console.error(`loralab: unknown command \`${cmd}\`\n${USAGE}`);
      return 2;
  }
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (e) {
  // the one top-level handler: config problems exit 2, everything else 1; never a stack trace
  const err = e as Error;
  console.error(`\nloralab: ${err.message}`);
  process.exitCode = err instanceof ConfigError ? 2 : 1;
}
