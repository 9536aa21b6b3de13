// Progress display for a training run: a redrawn bar on a terminal, plain lines when piped.
import type { ProgressEvent } from "loralab";

function clock(s: number): string {
  if (!Number.isFinite(s)) return "--:--";
  const m = Math.floor(s / 60);
  return `${m}:${String(Math.floor(s % 60)).padStart(2, "0")}`;
}

export function progressLine(p: ProgressEvent, startStep: number, t0: number): string {
  const done = p.step - startStep;
  const left = p.total_steps - p.step;
  const perStep = (performance.now() - t0) / 1000 / Math.max(done, 1);
  return (
    `step ${p.step}/${p.total_steps}  loss ${p.loss.toFixed(4)}  lr ${p.lr.toExponential(2)}  ` +
    `|g| ${p.grad_norm.toFixed(3)}  ${Math.round(p.tokens_per_s).toLocaleString("en-US")} tok/s  ETA ${clock(left * perStep)}`
  );
}

/** Returns the progress callback for one run, labelled `label`. */
export function progressReporter(label: string, out: NodeJS.WriteStream = process.stdout) {
  const tty = out.isTTY === true;
  let t0 = performance.now();
  let startStep = 0;
  let started = false;
  let open = false; // a bar is drawn on the current terminal line
  return {
    onProgress(p: ProgressEvent) {
      if (!started) {
        started = true;
        startStep = p.step - 1;
        t0 = performance.now();
      }
      const line = progressLine(p, startStep, t0);
      if (tty) {
        const width = 24;
        const filled = Math.round((width * p.step) / p.total_steps);
        out.write(`\r\x1b[2K${label} [${"#".repeat(filled)}${".".repeat(width - filled)}] ${line}`);
        open = p.step !== p.total_steps;
        if (!open) out.write("\n");
      } else {
        const every = Math.max(1, Math.ceil(p.total_steps / 20));
        if (p.step % every === 0 || p.step === p.total_steps || p.step === startStep + 1) out.write(`${label} ${line}\n`);
      }
    },
    end() {
      if (tty && open) out.write("\n"); // cancelled mid-run: leave the last bar visible
      open = false;
    },
  };
}

/** Progress of counted work under changing labels (eval tasks, analysed matrices): a redrawn
 * bar on a terminal, a line at each quarter when piped. */
export function countBars(out: NodeJS.WriteStream = process.stdout) {
  const tty = out.isTTY === true;
  let last = "";
  let lastPct = -1;
  return (label: string, done: number, total: number, detail = "") => {
    const pct = Math.floor((100 * done) / Math.max(1, total));
    if (tty) {
      if (last && last !== label) out.write("\n");
      const f = Math.round((24 * done) / Math.max(1, total));
      out.write(`\r\x1b[2K${label.padEnd(14)} [${"#".repeat(f)}${".".repeat(24 - f)}] ${done}/${total} ${detail}`);
      if (done >= total) out.write("\n");
    } else if (label !== last || pct >= lastPct + 25 || done >= total) {
      out.write(`${label} ${done}/${total}\n`);
      lastPct = label !== last ? 0 : pct;
    }
    last = done >= total ? "" : label;
  };
}
