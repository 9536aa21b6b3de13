// The laboratory's base model is committed as f16 safetensors, gzipped
// (datasets/lab/base/model.f16.safetensors.gz, 1.9 MB: f32 would be 4.2 MB), and expanded once
// into an f32 model.safetensors beside it (ignored by git). The expanded weights are the f16
// values exactly, so fine-tuning starts from them and ΔW against them is exact.
import { existsSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";

type Header = Record<
  string,
  { dtype: string; shape: number[]; data_offsets: [number, number] } | Record<string, string>
>;

/** Rewrite a safetensors buffer with every F32 tensor as F16 (or F16 as F32). */
function convert(file: Uint8Array, from: "F32" | "F16", to: "F32" | "F16"): Uint8Array<ArrayBuffer> {
  const buf = new Uint8Array(file); // a plain copy: a Node Buffer's slice() would share memory
  const n = Number(new DataView(buf.buffer, buf.byteOffset, 8).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(buf.subarray(8, 8 + n))) as Header;
  const data = buf.subarray(8 + n);
  const out: Header = {};
  const parts: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__") {
      out[name] = t;
      continue;
    }
    const info = t as { dtype: string; shape: number[]; data_offsets: [number, number] };
    let bytes = data.slice(info.data_offsets[0], info.data_offsets[1]);
    let dtype = info.dtype;
    if (dtype === from) {
      const src = from === "F32" ? new Float32Array(bytes.buffer) : new Float16Array(bytes.buffer);
      bytes = new Uint8Array((to === "F32" ? new Float32Array(src) : new Float16Array(src)).buffer);
      dtype = to;
    }
    out[name] = { dtype, shape: info.shape, data_offsets: [offset, offset + bytes.length] };
    parts.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(out);
  json += " ".repeat((8 - ((json.length + 8) % 8)) % 8); // data starts 8-aligned
  const head = new TextEncoder().encode(json);
  const res = new Uint8Array(8 + head.length + offset);
  new DataView(res.buffer).setBigUint64(0, BigInt(head.length), true);
  res.set(head, 8);
  let at = 8 + head.length;
  for (const p of parts) {
    res.set(p, at);
    at += p.length;
  }
  return res;
}

/** `bun run lab:pretrain`'s last step: the trained f32 weights as the committed f16 gzip. */
export function packLabBase(dir: string): string {
  const gz = join(dir, "model.f16.safetensors.gz");
  writeFileSync(gz, Bun.gzipSync(convert(readFileSync(join(dir, "model.safetensors")), "F32", "F16"), { level: 9 }));
  return gz;
}

/** The f32 model.safetensors, expanded from the committed gzip when missing or older. */
export function ensureLabBase(dir: string): void {
  const gz = join(dir, "model.f16.safetensors.gz");
  const f32 = join(dir, "model.safetensors");
  if (!existsSync(gz)) throw new Error(`${gz} is missing (hint: it is committed; \`bun run lab:pretrain\` remakes it)`);
  if (existsSync(f32) && statSync(f32).mtimeMs >= statSync(gz).mtimeMs) return;
  writeFileSync(`${f32}.tmp`, convert(Bun.gunzipSync(readFileSync(gz)), "F16", "F32"));
  renameSync(`${f32}.tmp`, f32);
}
