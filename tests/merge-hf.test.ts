// loralab's model outputs as a Hugging Face user loads them: `merge` of a LoRA run and the final
// model of a full-FT run are complete HF directories (tokenizer_config.json with the chat template
// and bos/eos, generation_config.json, config.json whose torch_dtype is what was written), which
// transformers' AutoTokenizer and AutoModelForCausalLM load, chat-template and generate from
// (tests/fixtures/load_hf.py, in the test venv of scripts/pyenv.ts). Every file is a plain 0644 one.
import { describe, expect, test } from "bun:test";
import {
  closeSync,
  copyFileSync,
  existsSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { ConfigError, merge, train } from "loralab";
import { fetchModel } from "../scripts/fetch.ts";
import { root, tempDir, testPython, tinyConfig } from "./helpers.ts";

/** What load_hf.py reports for one directory. */
interface Loaded {
  dir: string;
  eos_token: string | null;
  bos_token: string | null;
  chat?: string;
  chat_error?: string;
  dtype: string;
  new_tokens: number;
}

function loadInTransformers(dirs: string[]): Map<string, Loaded> {
  const p = Bun.spawnSync([testPython(), join(root, "tests/fixtures/load_hf.py"), ...dirs], {
    stdout: "pipe",
    stderr: "pipe",
    // nothing from the hub: every file comes from the directory
    env: { ...process.env, HF_HUB_OFFLINE: "1", TRANSFORMERS_VERBOSITY: "error", TOKENIZERS_PARALLELISM: "false" },
  });
  if (p.exitCode !== 0) throw new Error(`load_hf.py failed (exit ${p.exitCode}):\n${p.stderr.toString()}`);
  const rows = p.stdout
    .toString()
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as Loaded);
  return new Map(rows.map((r) => [r.dir, r]));
}

/** A safetensors file's tensor dtypes (from its JSON header) and the bytes of tensor data after the header. */
function safetensors(file: string): { dtypes: Set<string>; dataBytes: number } {
  const fd = openSync(file, "r");
  try {
    const len = Buffer.alloc(8);
    readSync(fd, len, 0, 8, 0);
    const header = Buffer.alloc(Number(len.readBigUInt64LE()));
    readSync(fd, header, 0, header.length, 8);
    const h = JSON.parse(header.toString()) as Record<string, { dtype: string }>;
    const dtypes = new Set(
      Object.entries(h)
        .filter(([k]) => k !== "__metadata__")
        .map(([, v]) => v.dtype),
    );
    return { dtypes, dataBytes: statSync(file).size - 8 - header.length };
  } finally {
    closeSync(fd);
  }
}

const json = (path: string) => JSON.parse(readFileSync(path, "utf8"));

/** A file's mode as a new file made here gets it: 0644 under the usual umask 022. */
const PLAIN = 0o666 & ~process.umask();

function expectPlainModes(dir: string): void {
  for (const f of readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile())) {
    const path = join(f.parentPath, f.name);
    expect(`${path} ${(statSync(path).mode & 0o777).toString(8)}`).toBe(`${path} ${PLAIN.toString(8)}`);
  }
}

const HF_FILES = [
  "model.safetensors",
  "config.json",
  "generation_config.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
];

// a tiny jinja template in the tiny vocabulary's special tokens, as a model's tokenizer_config.json ships it
const TEMPLATE =
  "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}{% if add_generation_prompt %}<s>assistant\n{% endif %}";

/** The bundled tiny model's config and tokenizer, with a tokenizer_config.json carrying a chat template. */
function chatTinyBase(): { config: string; tokenizer: string } {
  const dir = tempDir("chat-tiny");
  for (const f of ["config.json", "tokenizer.json"]) copyFileSync(join(root, "datasets/tiny", f), join(dir, f));
  writeFileSync(
    join(dir, "tokenizer_config.json"),
    JSON.stringify({
      tokenizer_class: "PreTrainedTokenizerFast",
      bos_token: "<s>",
      eos_token: "</s>",
      pad_token: "<pad>",
      chat_template: TEMPLATE,
    }),
  );
  return { config: join(dir, "config.json"), tokenizer: join(dir, "tokenizer.json") };
}

describe("HF model directories", () => {
  test("merge (bf16, f16, f32) and full FT write complete HF dirs that transformers loads, chats with and generates from", async () => {
    const out = tempDir("merge-hf");
    const chat = chatTinyBase();
    const lora = await train(
      tinyConfig(out, {
        run_id: "lora",
        model: chat,
        method: { kind: "lora", rank: 4 },
        train: { steps: 2, checkpoint_every: 1 },
      }),
    );
    const full = await train(
      tinyConfig(out, {
        run_id: "full",
        model: chat,
        method: { kind: "full" },
        train: { steps: 2, checkpoint_every: 1 },
      }),
    );
    const base = join(lora.run_dir, "base");
    const merged: Record<string, string> = {};
    for (const dtype of ["bf16", "f16", "f32"] as const) {
      merged[dtype] = join(out, `merged-${dtype}`);
      const r = await merge(base, lora.output, merged[dtype]!, { dtype });
      expect(r).toEqual({ dtype, notes: [] });
    }

    // the files, their dtypes and sizes
    const torchName = { bf16: "bfloat16", f16: "float16", f32: "float32" } as const;
    const stName = { bf16: "BF16", f16: "F16", f32: "F32" } as const;
    for (const [dtype, dir] of Object.entries(merged) as [keyof typeof torchName, string][]) {
      for (const f of HF_FILES) expect(existsSync(join(dir, f))).toBe(true);
      expect(json(join(dir, "config.json")).torch_dtype).toBe(torchName[dtype]);
      expect(safetensors(join(dir, "model.safetensors")).dtypes).toEqual(new Set([stName[dtype]]));
      const tc = json(join(dir, "tokenizer_config.json"));
      expect([tc.chat_template, tc.eos_token, tc.bos_token]).toEqual([TEMPLATE, "</s>", "<s>"]);
      expect(json(join(dir, "generation_config.json"))).toMatchObject({ bos_token_id: 0, eos_token_id: 1 });
    }
    // 2 bytes a weight in bf16 and f16, 4 in f32
    const data = (d: string) => safetensors(join(d, "model.safetensors")).dataBytes;
    expect(data(merged.f16!)).toBe(data(merged.bf16!));
    expect(data(merged.f32!)).toBe(2 * data(merged.bf16!));
    // full FT's final model (and its checkpoints): f32, the tokenizer files with it
    for (const f of HF_FILES) expect(existsSync(join(full.output, f))).toBe(true);
    expect(json(join(full.output, "config.json")).torch_dtype).toBe("float32");
    expect(safetensors(join(full.output, "model.safetensors")).dtypes).toEqual(new Set(["F32"]));
    expect(json(join(full.output, "tokenizer_config.json")).chat_template).toBe(TEMPLATE);

    // every file loralab wrote, safetensors and JSON alike, has a plain file's mode
    for (const d of [...Object.values(merged), lora.run_dir, full.run_dir]) expectPlainModes(d);

    // a base without a chat template: the merge says so, and the merged tokenizer has none (none is made up)
    const plain = await train(
      tinyConfig(out, { run_id: "plain", method: { kind: "lora", rank: 4 }, train: { steps: 1, checkpoint_every: 0 } }),
    );
    const plainMerged = join(out, "merged-plain");
    const r = await merge(join(plain.run_dir, "base"), plain.output, plainMerged, { dtype: "bf16" });
    expect(r.notes.length).toBe(1);
    expect(r.notes[0]).toContain("no chat template");
    expect(r.notes[0]).toContain("hint:");
    const tc = json(join(plainMerged, "tokenizer_config.json"));
    expect(tc.chat_template).toBeUndefined();
    expect([tc.eos_token, tc.bos_token]).toEqual(["</s>", "<s>"]); // from config.json's ids

    // as a Hugging Face user loads them
    const loaded = loadInTransformers([merged.bf16!, full.output, plainMerged]);
    const bf16 = loaded.get(merged.bf16!)!;
    expect(bf16).toMatchObject({ eos_token: "</s>", bos_token: "<s>", dtype: "bfloat16", new_tokens: 5 });
    expect(bf16.chat).toBe("<s>user\nhi</s>\n<s>assistant\n");
    expect(loaded.get(full.output)).toMatchObject({
      eos_token: "</s>",
      dtype: "float32",
      new_tokens: 5,
      chat: "<s>user\nhi</s>\n<s>assistant\n",
    });
    const p = loaded.get(plainMerged)!;
    expect(p).toMatchObject({ eos_token: "</s>", dtype: "bfloat16", new_tokens: 5 });
    expect(p.chat_error).toContain("chat_template is not set");
  }, 600_000);

  test("an unknown dtype is a ConfigError on `dtype` with a hint, and writes nothing", async () => {
    const out = tempDir("merge-dtype");
    const run = await train(
      tinyConfig(out, { run_id: "l", method: { kind: "lora", rank: 2 }, train: { steps: 1, checkpoint_every: 0 } }),
    );
    const e = await merge(join(run.run_dir, "base"), run.output, join(out, "m"), { dtype: "int8" as "bf16" }).catch(
      (e: unknown) => e,
    );
    expect(e).toBeInstanceOf(ConfigError);
    expect((e as ConfigError).field).toBe("dtype");
    expect((e as Error).message).toContain("hint: bf16, f16 or f32");
    expect(existsSync(join(out, "m"))).toBe(false);
  }, 120_000);

  test("SmolLM2 from its GGUF: the merged model's tokenizer_config carries the GGUF's chat template and special tokens", async () => {
    const gguf = await fetchModel("smollm2");
    const out = tempDir("merge-gguf");
    const cfg = tinyConfig(out, {
      run_id: "s",
      model: { path: gguf, config: "", tokenizer: "" },
      data: { seq_len: 16 },
      method: { kind: "lora", rank: 2, targets: ["q_proj"] },
      train: { steps: 1, micro_batch: 1, checkpoint_every: 0 },
    });
    const run = await train(cfg);
    const dir = join(out, "merged");
    expect(await merge(gguf, run.output, dir, { dtype: "bf16" })).toEqual({ dtype: "bf16", notes: [] });
    const tc = json(join(dir, "tokenizer_config.json"));
    expect(tc.chat_template).toContain("<|im_start|>");
    expect([tc.bos_token, tc.eos_token]).toEqual(["<|im_start|>", "<|im_end|>"]);
    expect(json(join(dir, "config.json")).torch_dtype).toBe("bfloat16");
    expect(json(join(dir, "generation_config.json"))).toMatchObject({ bos_token_id: 1, eos_token_id: 2 });
    expectPlainModes(dir);
    const m = loadInTransformers([dir]).get(dir)!;
    expect(m).toMatchObject({ eos_token: "<|im_end|>", dtype: "bfloat16", new_tokens: 5 });
    expect(m.chat).toContain("<|im_start|>user\nhi<|im_end|>\n");
    expect(m.chat!.endsWith("<|im_start|>assistant\n")).toBe(true);
  }, 600_000);
});
