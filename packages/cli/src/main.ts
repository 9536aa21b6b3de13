#!/usr/bin/env bun
// `loralab train [config.toml|json] [--key=value ...]`: one run with a progress display,
// or with no config the embedded tiny laboratory. Also `loralab bench train`.
import { applyOverrides, ConfigError, loadConfigFile, merge, train, type RunConfig } from "loralab";
import { configHelp } from "./help.ts";
import { progressReporter } from "./progress.ts";

const USAGE = `usage:
  loralab train [--quick]               the laboratory: the whole study in miniature on this machine (≤ 10 min;
                                        --quick: a minute or two), ending with a summary table and a report
  loralab train CONFIG [--key=value...] one run from a .toml/.json config; --method.rank=64 style overrides
  loralab train --help                  every config field, its default and why
  loralab eval --model M [--adapter A] | --run ID  [--tasks ...]
                                        learning (HumanEval, GSM8K) and forgetting (HellaSwag, WinoGrande, ARC-C)
                                        scores next to the base model's; --help for every option
  loralab analyze --base B --tuned T | --adapter A | --run ID
                                        the spectrum of the weight change (rank@90 %, noise floor, figures); --help
  loralab serve [--port 8080]           the HTTP API and dashboard: start, watch and keep runs; --help
  loralab sweep FILE [--out DIR]        the study on your model and data: a grid of runs, every checkpoint evaluated,
                                        the report (configs/sweep-example.toml)
  loralab report DIR | RUN...           redraw a study's or the laboratory's report, or report over evaluated runs
  loralab merge BASE ADAPTER OUT        fold a PEFT adapter into its base (HF dir or .gguf), write an HF model
  loralab bench train|data|eval|svd     side-by-side speed and memory measurements`;

async function cmdTrain(args: string[], signal: AbortSignal): Promise<number> {
  if (args.includes("--help") || args.includes("-h")) {
    console.log(`${USAGE}\n\nconfig fields (TOML sections, or --section.field=value):\n${configHelp()}`);
    return 0;
  }
  const files = args.filter((a) => !a.startsWith("--"));
  const overrides = args.filter((a) => a.startsWith("--"));
  if (files.length === 0 && overrides.every((o) => o === "--quick")) {
    const { runLaboratory } = await import("./study.ts");
    return runLaboratory(overrides.includes("--quick"));
  }
  if (files.length > 1) throw new ConfigError(`expected one config file, got ${files.join(", ")}`, "");
  const base: RunConfig = files[0] ? await loadConfigFile(files[0]) : {};
  const cfg = applyOverrides(base, overrides);
  const bar = progressReporter(cfg.name ?? "run");
  const summary = await train(cfg, {
    signal,
    onProgress: bar.onProgress,
    onEvent: (e) => {
      if (e.type === "prepared")
        console.log(
          `data: ${e.documents.toLocaleString("en-US")} records → ${e.rows.toLocaleString("en-US")} rows of ${e.seq_len} tokens ` +
            `(${e.tokens.toLocaleString("en-US")} tokens, ${e.loss_tokens.toLocaleString("en-US")} with loss; ${e.truncated} truncated, ${e.dropped} dropped, ${e.dropped_tokens.toLocaleString("en-US")} tokens unused)`,
        );
      if (e.type === "start") console.log(`run ${e.run_id} → ${e.run_dir} (${e.trainable_params.toLocaleString("en-US")} of ${e.params.toLocaleString("en-US")} parameters train)`);
    },
  });
  bar.end();
  console.log(
    `${summary.status}: ${summary.steps}/${summary.total_steps} steps, loss ${summary.first_loss.toFixed(4)} → ${summary.final_loss.toFixed(4)}, ` +
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
    case "analyze": {
      const { cmdAnalyze } = await import("./analyze.ts");
      return cmdAnalyze(rest);
    }
    case "serve": {
      const { cmdServe } = await import("./serve.ts");
      return cmdServe(rest);
    }
    case "sweep": {
      const { cmdSweep } = await import("./study.ts");
      return cmdSweep(rest);
    }
    case "report": {
      const { cmdReport } = await import("./study.ts");
      return cmdReport(rest);
    }
    case "merge": {
      if (rest.length !== 3) throw new ConfigError("usage: loralab merge BASE ADAPTER OUT", "");
      const [base, adapter, out] = rest as [string, string, string];
      await merge(base, adapter, out);
      console.log(`merged model: ${out}`);
      return 0;
    }
    case "bench": {
      const { runBench } = await import("./bench.ts");
      return runBench(rest);
    }
    default:
      console.log(USAGE);
      return cmd === undefined || cmd === "--help" || cmd === "help" ? 0 : 2;
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
