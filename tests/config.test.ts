// The one config schema: bad configs fail before any work naming the field and the
// fix; the TypeScript types are generated from the engine's schema and current; every
// shipped config parses; overrides and --help work.
import { describe, expect, test } from "bun:test";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { applyOverrides, ConfigError, configSchema, loadConfigFile, resolveConfig, train } from "loralab";
import { configTypes, protocolTypes } from "../scripts/gen-config-types.ts";
import { root, tempDir, tinyConfig } from "./helpers.ts";

describe("config", () => {
  const out = tempDir("config");
  const bad: [string, Record<string, unknown>, string, string][] = [
    ["unknown key", { method: { rnk: 4 } }, "method.rnk", "unknown field `rnk`"],
    ["wrong type", { train: { steps: "ten" } }, "train.steps", "invalid type"],
    ["rank 0", { method: { kind: "lora", rank: 0 } }, "method.rank", "must be ≥ 1"],
    ["negative rank", { method: { kind: "lora", rank: -2 } }, "method.rank", "invalid value"],
    [
      "unknown target",
      { method: { kind: "lora", targets: ["q_proj", "embed_tokens"] } },
      "method.targets",
      "unknown target module `embed_tokens`",
    ],
    ["missing file", { data: { train: "/no/such/file.jsonl" } }, "data.train", "file not found"],
    ["unknown method", { method: { kind: "dora" } }, "method.kind", "unknown variant"],
  ];
  for (const [label, over, field, text] of bad) {
    test(`${label} → ConfigError naming ${field}`, async () => {
      const cfg = tinyConfig(out, over as never);
      expect(() => resolveConfig(cfg)).toThrow(ConfigError);
      try {
        resolveConfig(cfg);
      } catch (e) {
        expect((e as ConfigError).field).toBe(field);
        expect((e as Error).message).toContain(text);
      }
      // train refuses the same config before writing anything
      await expect(train({ ...cfg, run_id: `bad-${label.replace(/ /g, "-")}` })).rejects.toThrow(ConfigError);
      expect(await Bun.file(join(out, `bad-${label.replace(/ /g, "-")}`, "run.json")).exists()).toBe(false);
    });
  }

  test("resolve fills every default, with the study's choices", () => {
    const r = resolveConfig(tinyConfig(out, { method: { kind: "lora", rank: 8 }, optim: { lr: null as never } }));
    expect(r.method.alpha).toBe(16); // alpha = 2·rank
    expect(r.optim.lr).toBe(1e-4); // LoRA default lr ≈ 10× full FT's 1e-5
    expect(r.optim.betas).toEqual([0.9, 0.95]);
    expect(r.run_id.startsWith("t-")).toBe(true);
  });

  test("the generated TypeScript config and protocol types are current", async () => {
    const committed = await Bun.file(join(root, "packages/engine/src/config.gen.ts")).text();
    expect(committed).toBe(await configTypes());
    const protocol = await Bun.file(join(root, "packages/engine/src/protocol.gen.ts")).text();
    expect(protocol).toBe(await protocolTypes());
    // every op of the engine's table is typed: a reply and request for each
    for (const op of ["load", "train", "eval_loss", "analyze", "merge", "run_directory", "cancel", "shutdown"])
      expect(protocol).toMatch(new RegExp(`^    ${op}: \\w+`, "m"));
  });

  test("the committed addon typings are what napi-rs generates from the binding", () => {
    // scripts/setup.ts rebuilt crates/node (regenerating index.d.ts) before the tests ran
    const diff = Bun.spawnSync(["git", "diff", "--stat", "--", "crates/node/index.d.ts"], {
      cwd: root,
      stdout: "pipe",
    });
    expect(diff.exitCode).toBe(0);
    expect(diff.stdout.toString()).toBe("");
  });

  test("every field in the schema has a description (the reason for its default)", () => {
    const s = configSchema() as { $defs: Record<string, { properties?: Record<string, { description?: string }> }> };
    const missing: string[] = [];
    for (const [name, def] of Object.entries(s.$defs))
      for (const [k, p] of Object.entries(def.properties ?? {}))
        if (!p.description && !("$ref" in p)) missing.push(`${name}.${k}`);
    expect(missing).toEqual([]);
  });

  test("every shipped config parses; the study templates lack only the user's files", async () => {
    // (configs/smollm2-lora.toml needs `bun run fetch smollm2`, which `bun run test` does first)
    // (sweep-example.toml is a sweep spec, not a run config: tests/study-configs.test.ts reads it)
    const files = readdirSync(join(root, "configs")).filter((f) => f.endsWith(".toml") && f !== "sweep-example.toml");
    expect(files.length).toBeGreaterThanOrEqual(11);
    for (const f of files) {
      const text = await Bun.file(join(root, "configs", f)).text();
      expect(text.startsWith(`# bun run train configs/${f}`)).toBe(true); // each opens with its launch line
      const cfg = await loadConfigFile(join(root, "configs", f));
      process.chdir(root);
      try {
        resolveConfig(cfg);
      } catch (e) {
        expect(e).toBeInstanceOf(ConfigError);
        const msg = (e as Error).message;
        // the study templates name the user's files; smollm2's config names the default cache,
        // which a LORALAB_CACHE elsewhere leaves empty
        const userFiles = msg.includes("file not found: /path/to/");
        const elsewhere = process.env.LORALAB_CACHE !== undefined && msg.includes("/.cache/loralab/models/");
        expect(userFiles || elsewhere).toBe(true);
      }
    }
  });

  test("overrides set nested fields with JSON values", () => {
    const c = applyOverrides({ method: { kind: "full" } }, [
      "--method.kind=lora",
      "--method.rank=64",
      '--method.targets=["q_proj"]',
      "--name=x",
    ]);
    expect(c).toEqual({ method: { kind: "lora", rank: 64, targets: ["q_proj"] }, name: "x" });
    expect(() => applyOverrides({}, ["--method"])).toThrow(ConfigError);
  });
});
