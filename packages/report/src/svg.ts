// Line charts as standalone SVG text: axes with ticks, optional log-scale y, a legend, and
// a grid of panels. Enough for the study's figures; nothing to install.

export interface Series {
  name: string;
  color: string;
  points: [number, number][];
  dashed?: boolean;
}

export interface Chart {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  logY?: boolean;
  width?: number;
  height?: number;
}

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

function ticks(lo: number, hi: number, n = 5): number[] {
  if (!(hi > lo)) return [lo];
  const step = 10 ** Math.floor(Math.log10((hi - lo) / n));
  const nice = [1, 2, 5, 10].map((m) => m * step).find((s) => (hi - lo) / s <= n) ?? step * 10;
  const out = [];
  for (let v = Math.ceil(lo / nice) * nice; v <= hi + 1e-9 * nice; v += nice) out.push(Number(v.toPrecision(12)));
  return out;
}

const fmt = (v: number) =>
  Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(0) : String(Number(v.toPrecision(4)));

/** One chart as an SVG group at (0, 0), width × height. */
function chartBody(c: Chart): string {
  const W = c.width ?? 420;
  const H = c.height ?? 300;
  const m = { l: 58, r: 12, t: 28, b: 44 };
  const pts = c.series.flatMap((s) => s.points).filter(([, y]) => Number.isFinite(y) && (!c.logY || y > 0));
  const xs = pts.map((p) => p[0]);
  const ys = pts.map((p) => (c.logY ? Math.log10(p[1]) : p[1]));
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (!pts.length) [x0, x1, y0, y1] = [0, 1, 0, 1];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) y1 = y0 + 1;
  if (!c.logY && y0 > 0) y0 = 0;
  const sx = (x: number) => m.l + ((x - x0) / (x1 - x0)) * (W - m.l - m.r);
  const sy = (y: number) => H - m.b - ((y - y0) / (y1 - y0)) * (H - m.t - m.b);
  const out: string[] = [];
  out.push(`<rect x="0" y="0" width="${W}" height="${H}" fill="white"/>`);
  out.push(`<text x="${W / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">${esc(c.title)}</text>`);
  out.push(
    `<line x1="${m.l}" y1="${H - m.b}" x2="${W - m.r}" y2="${H - m.b}" stroke="#333"/><line x1="${m.l}" y1="${m.t}" x2="${m.l}" y2="${H - m.b}" stroke="#333"/>`,
  );
  for (const t of ticks(x0, x1))
    out.push(
      `<line x1="${sx(t)}" y1="${H - m.b}" x2="${sx(t)}" y2="${H - m.b + 4}" stroke="#333"/><text x="${sx(t)}" y="${H - m.b + 16}" text-anchor="middle" font-size="10">${fmt(t)}</text>`,
    );
  // log axes: ticks at whole decades when the range spans two or more, else at nice values
  const yt =
    c.logY && Math.floor(y1) - Math.ceil(y0) >= 1
      ? ticks(Math.ceil(y0), Math.floor(y1)).filter(Number.isInteger)
      : ticks(y0, y1);
  for (const t of yt) {
    const label = c.logY ? (Number.isInteger(t) ? `1e${t}` : fmt(10 ** t)) : fmt(t);
    out.push(
      `<line x1="${m.l - 4}" y1="${sy(t)}" x2="${W - m.r}" y2="${sy(t)}" stroke="#eee"/><text x="${m.l - 6}" y="${sy(t) + 3}" text-anchor="end" font-size="10">${label}</text>`,
    );
  }
  out.push(`<text x="${(m.l + W - m.r) / 2}" y="${H - 8}" text-anchor="middle" font-size="11">${esc(c.xLabel)}</text>`);
  out.push(
    `<text transform="translate(13 ${(m.t + H - m.b) / 2}) rotate(-90)" text-anchor="middle" font-size="11">${esc(c.yLabel)}</text>`,
  );
  for (const s of c.series) {
    const p = s.points
      .filter(([, y]) => Number.isFinite(y) && (!c.logY || y > 0))
      .map(([x, y]) => `${sx(x).toFixed(1)},${sy(c.logY ? Math.log10(y) : y).toFixed(1)}`);
    if (p.length > 1)
      out.push(
        `<polyline fill="none" stroke="${s.color}" stroke-width="1.6"${s.dashed ? ' stroke-dasharray="4 3"' : ""} points="${p.join(" ")}"/>`,
      );
    else if (p.length === 1)
      out.push(`<circle cx="${p[0]!.split(",")[0]}" cy="${p[0]!.split(",")[1]}" r="2.5" fill="${s.color}"/>`);
  }
  const lw = Math.min(150, 24 + 5.5 * Math.max(0, ...c.series.map((s) => s.name.length)));
  c.series.forEach((s, i) => {
    const y = m.t + 6 + i * 12;
    const x = W - m.r - lw;
    out.push(
      `<rect x="${x - 2}" y="${y - 6}" width="${lw}" height="12" fill="white" fill-opacity="0.8"/><line x1="${x}" y1="${y}" x2="${x + 16}" y2="${y}" stroke="${s.color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="4 3"' : ""}/><text x="${x + 20}" y="${y + 3}" font-size="9">${esc(s.name)}</text>`,
    );
  });
  return out.join("\n");
}

function wrap(body: string, W: number, H: number): string {
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif">\n${body}\n</svg>\n`;
}

export function lineChart(c: Chart): string {
  return wrap(chartBody(c), c.width ?? 420, c.height ?? 300);
}

/** Charts in a grid, `cols` per row, with an overall title. */
export function panels(title: string, charts: Chart[], cols = 4): string {
  const W = charts[0]?.width ?? 420;
  const H = charts[0]?.height ?? 300;
  const rows = Math.ceil(charts.length / cols);
  const parts = charts.map(
    (c, i) => `<g transform="translate(${(i % cols) * W} ${30 + Math.floor(i / cols) * H})">${chartBody(c)}</g>`,
  );
  return wrap(
    `<text x="${(Math.min(cols, charts.length) * W) / 2}" y="20" text-anchor="middle" font-size="16" font-weight="bold">${esc(title)}</text>\n${parts.join("\n")}`,
    Math.min(cols, charts.length) * W,
    30 + rows * H,
  );
}

/** n colours from light to dark blue (training amount: early checkpoints light), as hex. */
export function colorRamp(n: number): string[] {
  const [a, b] = [
    [166, 206, 227],
    [8, 48, 107],
  ];
  return Array.from({ length: n }, (_, i) => {
    const t = n === 1 ? 1 : i / (n - 1);
    return (
      "#" +
      a
        .map((v, k) =>
          Math.round(v + (b[k]! - v) * t)
            .toString(16)
            .padStart(2, "0"),
        )
        .join("")
    );
  });
}
