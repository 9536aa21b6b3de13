// Progress display for a training run: a redrawn bar on a terminal, plain lines when piped.
import type { ProgressEvent } from "@loralab/engine";

function clock(s: number): string {
  if (!Number.isFinite(s)) return "--:--";
  const m = Math.floor(s / 60);
  return `${m}:${String(Math.floor(s % 60)).padStart(2, "0")}`;
}

/** Seconds per step, a moving average of each step's own time (its tokens over its rate), so
 *  the ETA is right from the first step and follows the run's pace. */
export function stepClock() {
  let ema = NaN;
  return (p: ProgressEvent): number => {
    const stepTokens = p.tokens / Math.max(1, p.step);
    const dt = p.tokens_per_s > 0 ? stepTokens / p.tokens_per_s : NaN;
    if (Number.isFinite(dt)) ema = Number.isFinite(ema) ? 0.7 * ema + 0.3 * dt : dt;
    return ema;
  };
}

export function progressLine(p: ProgressEvent, secondsPerStep: number): string {
  const left = p.total_steps - p.step;
  return (
    `step ${p.step}/${p.total_steps}  loss ${p.loss.toFixed(4)}  lr ${p.lr.toExponential(2)}  ` +
    `|g| ${p.grad_norm.toFixed(3)}  ${Math.round(p.tokens_per_s).toLocaleString("en-US")} tok/s  ETA ${clock(left * secondsPerStep)}`
  );
}

/** Returns the progress callback for one run, labelled `label`: a redrawn bar on a terminal,
 *  plain lines when piped (`lines` per run, and the first and last step). */
export function progressReporter(
  label: string,
  out: NodeJS.WriteStream = process.stdout,
  lines = 20,
  /** Redraw a bar (default: on a terminal); false prints lines (runs side by side). */
  tty = out.isTTY === true,
) {
  const pace = stepClock();
  let first = -1;
  let open = false; // a bar is drawn on the current terminal line
  return {
    onProgress(p: ProgressEvent) {
      if (first < 0) first = p.step;
      const line = progressLine(p, pace(p));
      if (tty) {
        const width = 24;
        const filled = Math.round((width * p.step) / p.total_steps);
        out.write(`\r\x1b[2K${label} [${"#".repeat(filled)}${".".repeat(width - filled)}] ${line}`);
        open = p.step !== p.total_steps;
        if (!open) out.write("\n");
      } else {
        const every = Math.max(1, Math.ceil(p.total_steps / lines));
        if (p.step % every === 0 || p.step === p.total_steps || p.step === first) out.write(`${label} ${line}\n`);
      }
    },
    /** A line of its own (a validation result), above the bar. */
    note(text: string) {
      out.write(`${tty && open ? "\r\x1b[2K" : ""}${label} ${text}\n`);
      open = false;
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
