// The load side of `bun run bench server`, in its own process: N connections each polling
// GET /api/runs/:id once a second (N req/s in all) for D seconds, plus S Server-Sent Events
// clients on the same run. Prints one JSON line: latencies, errors, events received.
//
//   bun scripts/bench-server-load.ts URL TOKEN RUN_ID N S D
export {};
const [url, token, id, n, s, d] = process.argv.slice(2) as [string, string, string, string, string, string];
const [conns, sse, seconds] = [Number(n), Number(s), Number(d)];
const headers = { Authorization: `Bearer ${token}` };
const lat: number[] = [];
let errors = 0;
let events = 0;
const end = performance.now() + seconds * 1000;

async function poller(offset: number) {
  await Bun.sleep(offset); // spread the connections over the second
  let next = performance.now();
  while (performance.now() < end) {
    const t0 = performance.now();
    try {
      const r = await fetch(`${url}/api/runs/${id}`, { headers });
      if (r.status !== 200) errors++;
      await r.arrayBuffer();
      lat.push(performance.now() - t0);
    } catch {
      errors++;
    }
    next += 1000;
    const wait = next - performance.now();
    if (wait > 0) await Bun.sleep(wait);
  }
}

async function listener() {
  const ctl = new AbortController();
  setTimeout(() => ctl.abort(), seconds * 1000);
  try {
    const r = await fetch(`${url}/api/runs/${id}/events`, { headers, signal: ctl.signal });
    if (r.status !== 200) errors++;
    const dec = new TextDecoder();
    for await (const chunk of r.body!) events += (dec.decode(chunk).match(/^event: /gm) ?? []).length;
  } catch (e) {
    if ((e as Error).name !== "AbortError") errors++;
  }
}

await Promise.all([
  ...Array.from({ length: conns }, (_, i) => poller((1000 * i) / conns)),
  ...Array.from({ length: sse }, listener),
]);
lat.sort((a, b) => a - b);
const q = (p: number) => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] ?? NaN;
console.log(
  JSON.stringify({
    requests: lat.length,
    errors,
    rate: lat.length / seconds,
    p50_ms: q(0.5),
    p99_ms: q(0.99),
    max_ms: lat[lat.length - 1],
    sse_events: events,
  }),
);
