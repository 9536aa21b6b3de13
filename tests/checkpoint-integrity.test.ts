// Checkpoints carry a manifest (every file's size and sha256, written when the checkpoint is):
// a changed or truncated file is refused on load, naming the file (issue 16, item 10).
import { expect, test } from "bun:test";
import { existsSync, readFileSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { evalLoss, train } from "loralab";
import { tempDir, tinyConfig } from "./helpers.ts";

test("a bit-flipped adapter tensor and a truncated optimizer state are refused, naming the file", async () => {
  const out = tempDir("integrity");
  const s = await train(
    tinyConfig(out, { run_id: "r", method: { kind: "lora", rank: 4 }, train: { steps: 2, checkpoint_every: 2 } }),
  );
  const ck = join(s.run_dir, "checkpoints", "step-000002");
  const manifest = JSON.parse(readFileSync(join(ck, "loralab_manifest.json"), "utf8")) as {
    files: Record<string, { bytes: number; sha256: string }>;
  };
  for (const f of ["adapter_model.safetensors", "adapter_config.json", "optimizer.safetensors", "trainer_state.json"])
    expect(manifest.files[f]?.sha256).toMatch(/^[0-9a-f]{64}$/);
  expect(existsSync(join(s.output, "loralab_manifest.json"))).toBe(true); // the final adapter too
  const data = { ...tinyConfig(out).data!, seq_len: 32 };
  const base = join(s.run_dir, "base");
  // intact: loads
  expect(Number.isFinite((await evalLoss({ model: base, adapter: ck, data })).loss)).toBe(true);
  // one bit of one tensor's data (past the header) flipped
  const file = join(ck, "adapter_model.safetensors");
  const bytes = readFileSync(file);
  bytes[bytes.length - 3]! ^= 0x10;
  writeFileSync(file, bytes);
  const refused = async (p: Promise<unknown>) => {
    try {
      await p;
    } catch (e) {
      return (e as Error).message;
    }
    return "loaded";
  };
  expect(await refused(evalLoss({ model: base, adapter: ck, data }))).toMatch(
    /adapter_model\.safetensors: damaged: sha256 [0-9a-f]{64}, the manifest says .*hint: /,
  );
  const resume = () =>
    train(
      tinyConfig(out, {
        run_id: "r2",
        method: { kind: "lora", rank: 4 },
        train: { steps: 4, checkpoint_every: 2, resume_from: ck },
      }),
    );
  expect(await refused(resume())).toContain("adapter_model.safetensors: damaged");
  // restored, then the optimizer state truncated
  bytes[bytes.length - 3]! ^= 0x10;
  writeFileSync(file, bytes);
  truncateSync(join(ck, "optimizer.safetensors"), 100);
  expect(await refused(resume())).toMatch(/optimizer\.safetensors: damaged: 100 bytes, the manifest says \d+ \(hint: /);
}, 120_000);
