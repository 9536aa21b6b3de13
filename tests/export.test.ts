// Exports users deploy (`loralab export`), read back by what is not loralab: the `gguf`
// package reads every tensor of each GGUF file and scripts/gguf_check.py compares it with the
// Hugging Face side computed in numpy; llama.cpp itself (llama-cpp-python) runs each model and
// each GGUF LoRA, and its logits are compared with transformers' and PEFT's. loralab's own GGUF
// loader gives the source's log-likelihoods back; the refusals say what to do.
import { beforeAll, describe, expect, test } from "bun:test";
import { cpSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Model } from "@loralab/eval";
import { type ExportOptions, exportModel, train } from "loralab";
import { root, tempDir, testPython, tinyConfig, tinyModel } from "./helpers.ts";

let model: string; // a tiny full-FT model (HF directory)
let run: string; // a LoRA run on it
let adapter: string;
let out: string;

const TEXTS = [
  "def add(a, b):\n    return a + b\n",
  "The quick brown fox jumps over the lazy dog. 12345 + 678 = ?",
  "for i in range(10):\n\tprint(i ** 2)  # squares",
];

beforeAll(async () => {
  model = await tinyModel();
  out = tempDir("export");
  // a high learning rate, so the adapter moves the logits well past the tolerances below
  const s = await train(
    tinyConfig(out, {
      run_id: "lora",
      model: { path: model },
      method: { kind: "lora", rank: 4 },
      optim: { lr: 2e-2 },
      train: { steps: 6, checkpoint_every: 0 },
    }),
  );
  run = s.run_dir;
  adapter = s.output;
}, 120_000);

async function logliks(path: string, adapterDir = ""): Promise<number[]> {
  const m = await Model.load({ model: path, ...(adapterDir ? { adapter: adapterDir } : {}) });
  try {
    return (await m.loglikelihood(TEXTS.map((t) => ({ context: t.slice(0, 12), continuation: t.slice(12) })))).map(
      (r) => r.logprob,
    );
  } finally {
    await m.close();
  }
}

const ex = (src: string, name: string, o: ExportOptions) => exportModel(src, join(out, name), o);

describe("loralab export", () => {
  test("a model as GGUF (f32, f16, Q8_0) and as a bf16 Hugging Face directory; loralab reads them back", async () => {
    const f32 = await ex(model, "tiny-f32.gguf", { format: "gguf", dtype: "f32" });
    expect(f32.tensor_types).toEqual({ F32: 38 });
    const q8 = await ex(model, "tiny-q8_0.gguf", { format: "gguf", dtype: "q8_0" });
    // norms stay F32, as llama.cpp's converter keeps them; every 2-D weight is Q8_0
    expect(q8.tensor_types).toEqual({ F32: 9, Q8_0: 29 });
    const f16 = await ex(model, "tiny-f16.gguf", { format: "gguf" });
    expect([f16.dtype, f16.tensor_types]).toEqual(["f16", { F32: 9, F16: 29 }]);
    const bf16 = await ex(model, "tiny-bf16", { format: "hf", dtype: "bf16" });
    expect(bf16.dtype).toBe("bf16");
    const header = readFileSync(join(out, "tiny-bf16", "model.safetensors"));
    const meta = JSON.parse(header.subarray(8, 8 + Number(header.readBigUInt64LE(0))).toString());
    expect(
      new Set(
        Object.values(meta).flatMap((t) => ((t as { dtype?: string }).dtype ? [(t as { dtype: string }).dtype] : [])),
      ),
    ).toEqual(new Set(["BF16"]));
    expect(JSON.parse(readFileSync(join(out, "tiny-bf16", "config.json"), "utf8")).torch_dtype).toBe("bfloat16");

    const want = await logliks(model);
    const close = (got: number[], tol: number) =>
      got.forEach((g, i) => {
        expect(Math.abs(g - want[i]!)).toBeLessThan(tol);
      });
    close(await logliks(join(out, "tiny-f32.gguf")), 1e-4); // f32: the same numbers
    close(await logliks(join(out, "tiny-f16.gguf")), 0.05);
    close(await logliks(join(out, "tiny-q8_0.gguf")), 0.5);
    close(await logliks(join(out, "tiny-bf16")), 0.5);
  }, 120_000);

  test("an adapter as a GGUF LoRA, merged into a GGUF, and as a vLLM directory; a run directory names its base", async () => {
    const lora = await ex(run, "lora.gguf", { format: "gguf-lora", dtype: "f32" });
    expect(lora.tensor_types).toEqual({ F32: 56 }); // 4 layers × 7 modules × (A, B)
    expect(lora.notes.join("\n")).toMatch(/llama-cli -m BASE.gguf --lora/);
    const merged = await ex(run, "merged-f32.gguf", { format: "gguf", dtype: "f32" });
    expect(merged.tensor_types).toEqual({ F32: 38 });
    // loralab: the merged GGUF scores as base + adapter does
    const want = await logliks(model, adapter);
    for (const [i, g] of (await logliks(join(out, "merged-f32.gguf"))).entries())
      expect(Math.abs(g - want[i]!)).toBeLessThan(1e-4);

    const v = await ex(run, "vllm", { format: "vllm", baseSource: `loralab/tiny@${"c".repeat(40)}` });
    const ac = JSON.parse(readFileSync(join(out, "vllm", "adapter_config.json"), "utf8"));
    expect(ac).toMatchObject({
      peft_type: "LORA",
      r: 4,
      bias: "none",
      use_dora: false,
      modules_to_save: null,
      fan_in_fan_out: false,
      base_model_name_or_path: "loralab/tiny",
      revision: "c".repeat(40),
    });
    expect(Array.isArray(ac.target_modules)).toBe(true);
    expect(v.notes.at(-1)).toMatch(/vllm serve loralab\/tiny --enable-lora --max-lora-rank 8 --lora-modules adapter=/);
    const st = readFileSync(join(out, "vllm", "adapter_model.safetensors"));
    const meta = JSON.parse(st.subarray(8, 8 + Number(st.readBigUInt64LE(0))).toString());
    const keys = Object.keys(meta).filter((k) => k !== "__metadata__");
    expect(
      keys.every((k) => /^base_model\.model\.model\.layers\.\d+\.(self_attn|mlp)\.\w+\.lora_[AB]\.weight$/.test(k)),
    ).toBe(true);
    expect(new Set(keys.map((k) => meta[k].dtype))).toEqual(new Set(["BF16"]));
  }, 120_000);

  test("read back by the gguf package and run by llama.cpp: the same tensors, the same logits as transformers and PEFT", async () => {
    // a second adapter whose modules differ in scale (alpha_pattern): each lora_b carries its own
    const patterned = join(out, "adapter-patterned");
    cpSync(adapter, patterned, { recursive: true });
    const acPath = join(patterned, "adapter_config.json");
    const ac = JSON.parse(readFileSync(acPath, "utf8"));
    writeFileSync(acPath, JSON.stringify({ ...ac, alpha_pattern: { q_proj: 3 * ac.lora_alpha, down_proj: 0.5 } }));
    Bun.spawnSync(["rm", "-f", join(patterned, "loralab_manifest.json")]);
    const lp = await ex(patterned, "lora-patterned.gguf", { format: "gguf-lora", base: model, dtype: "f32" });
    expect(lp.notes.join("\n")).toMatch(/alpha is 0/);
    await ex(run, "merged-f16.gguf", { format: "gguf" });
    // vLLM ignores PEFT's patterns: they are folded into each B, the adapter scaled by 1
    const vp = await ex(patterned, "vllm-patterned", { format: "vllm", dtype: "f32" });
    expect(vp.notes.join("\n")).toMatch(/patterns folded into each lora_B/);
    const vac = JSON.parse(readFileSync(join(out, "vllm-patterned", "adapter_config.json"), "utf8"));
    expect([vac.r, vac.lora_alpha, vac.use_rslora, vac.alpha_pattern]).toEqual([4, 4, false, {}]);
    for (const f of ["tiny-f32.gguf", "tiny-f16.gguf", "tiny-q8_0.gguf", "lora.gguf"])
      if (!existsSync(join(out, f))) throw new Error(`${f} missing: the tests above write it`);
    const job = join(out, "job.json");
    writeFileSync(
      job,
      JSON.stringify({
        hf: model,
        adapter,
        adapter_patterned: patterned,
        texts: TEXTS,
        gguf: { f32: join(out, "tiny-f32.gguf"), f16: join(out, "tiny-f16.gguf"), q8_0: join(out, "tiny-q8_0.gguf") },
        merged: join(out, "merged-f16.gguf"),
        lora: join(out, "lora.gguf"),
        lora_patterned: join(out, "lora-patterned.gguf"),
        vllm_patterned: join(out, "vllm-patterned"),
      }),
    );
    const p = Bun.spawn([testPython(), join(root, "scripts/gguf_check.py"), job], { stdout: "pipe", stderr: "pipe" });
    const [stdout, stderr, code] = await Promise.all([
      new Response(p.stdout).text(),
      new Response(p.stderr).text(),
      p.exited,
    ]);
    if (code !== 0) throw new Error(`gguf_check.py failed (${code}):\n${stderr.slice(-3000)}`);
    const r = JSON.parse(stdout.trim().split("\n").at(-1)!);
    console.log(JSON.stringify(r.llama_cpp), "lora effect", r.lora_effect);
    const files = r.files as Record<
      string,
      {
        missing: string[];
        extra: string[];
        max_rel_err: number;
        types: string[];
        norm_types: string[];
        metadata: Record<string, unknown>;
        n_tokens: number;
      }
    >;
    for (const [label, tol] of [
      ["f32", 1e-7],
      ["f16", 1e-3],
      ["q8_0", 1e-2],
      ["merged", 1e-3],
    ] as const) {
      const f = files[label]!;
      expect([label, f.missing, f.extra]).toEqual([label, [], []]);
      expect(f.max_rel_err).toBeLessThan(tol);
      expect(f.norm_types).toEqual(["F32"]);
      expect(f.n_tokens).toBe(512);
      expect(f.metadata).toMatchObject({
        "general.architecture": "llama",
        "llama.block_count": 4,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.embedding_length": 128,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.add_bos_token": true,
      });
    }
    expect(files.q8_0!.types).toEqual(["F32", "Q8_0"]);
    const lora = r.files.lora;
    expect(lora).toMatchObject({
      "general.type": "adapter",
      "adapter.type": "lora",
      architecture: "llama",
      missing: [],
      extra: [],
    });
    expect(lora.alpha).toBeCloseTo(ac.lora_alpha, 5); // one scale, one rank: alpha as PEFT's
    expect(lora.max_rel_err_delta).toBeLessThan(1e-6);
    expect(r.files.lora_patterned.alpha).toBe(0);
    expect(r.files.lora_patterned.max_rel_err_delta).toBeLessThan(1e-6);

    // llama.cpp: the same tokens as transformers, and the same logits (the LoRA's effect is far larger)
    const cpp = r.llama_cpp as Record<
      string,
      { max_abs_logit_diff: number; argmax_agree: number; tokens_equal: boolean }
    >;
    for (const [label, tol] of [
      ["f32", 1e-3],
      ["lora", 1e-3],
      ["lora_patterned", 1e-3],
      ["merged", 5e-3],
      ["q8_0", 0.05],
    ] as const) {
      expect([label, cpp[label]!.tokens_equal]).toEqual([label, true]);
      expect(cpp[label]!.max_abs_logit_diff).toBeLessThan(tol);
    }
    expect(cpp.f32!.argmax_agree).toBe(1);
    expect(r.lora_effect).toBeGreaterThan(20 * 1e-3);
    expect(r.vllm_patterned_diff).toBeLessThan(1e-4);
  }, 300_000);

  test("a GGUF made from a Hub model names it, so an adapter trained on that GGUF names a base PEFT can load", async () => {
    const g = await ex(model, "sourced.gguf", {
      format: "gguf",
      dtype: "f32",
      baseSource: `org/tiny@${"d".repeat(40)}`,
    });
    expect(g.tensor_types.F32).toBe(38);
    const loraOn = async (base: string, id: string) => {
      const s = await train(
        tinyConfig(out, {
          run_id: id,
          model: { path: base },
          method: { kind: "lora", rank: 2 },
          train: { steps: 1, checkpoint_every: 0 },
        }),
      );
      return JSON.parse(readFileSync(join(s.output, "adapter_config.json"), "utf8")).base_model_name_or_path;
    };
    expect(await loraOn(join(out, "sourced.gguf"), "on-gguf")).toBe("org/tiny");
    // without that metadata the .gguf stays named, for loralab to load
    expect(await loraOn(join(out, "tiny-f32.gguf"), "on-plain-gguf")).toBe(join(out, "tiny-f32.gguf"));
  }, 120_000);

  test("the output never replaces the source or the user's files; nothing half-written is left", async () => {
    const cwd = process.cwd();
    const here = tempDir("export-cwd");
    writeFileSync(join(here, "canary.txt"), "keep me");
    try {
      process.chdir(here);
      await expect(exportModel(model, ".", { format: "hf" })).rejects.toThrow(/names no file or directory of its own/);
      await expect(exportModel(model, "..", { format: "hf" })).rejects.toThrow(/names no file or directory of its own/);
    } finally {
      process.chdir(cwd);
    }
    expect(readFileSync(join(here, "canary.txt"), "utf8")).toBe("keep me");
    // a directory of the user's is refused; one loralab wrote is replaced
    await expect(exportModel(model, here, { format: "hf" })).rejects.toThrow(
      /was not written by loralab.*name a new directory/,
    );
    expect(readFileSync(join(here, "canary.txt"), "utf8")).toBe("keep me");
    await ex(model, "again-bf16", { format: "hf", dtype: "bf16" });
    await ex(model, "again-bf16", { format: "hf", dtype: "f16" });
    // `x.v1` is written beside, never by way of, a sibling `x.tmp`
    const sib = join(out, "x.tmp");
    Bun.spawnSync(["mkdir", "-p", sib]);
    writeFileSync(join(sib, "mine.txt"), "mine");
    await ex(run, "x.v1", { format: "vllm" });
    expect(readFileSync(join(sib, "mine.txt"), "utf8")).toBe("mine");
    // a GGUF is one *.gguf file: a directory is refused before anything is written
    await expect(exportModel(model, here, { format: "gguf" })).rejects.toThrow(/one file named \*\.gguf/);
    await expect(exportModel(model, join(out, "model.bin"), { format: "gguf" })).rejects.toThrow(/one file named/);
    // the source itself
    await expect(exportModel(run, adapter, { format: "vllm" })).rejects.toThrow(/is \(or holds\) the source/);
    await expect(
      exportModel(join(out, "tiny-f32.gguf"), join(out, "tiny-f32.gguf"), { format: "gguf" }),
    ).rejects.toThrow(/is \(or holds\) the source/);
    expect(existsSync(join(out, "tiny-f32.gguf"))).toBe(true);
    // a GGUF LoRA is not a model
    await expect(logliks(join(out, "lora.gguf"))).rejects.toThrow(/a GGUF LoRA adapter, not a model.*--lora/);
  }, 120_000);

  test("a Llama-3-style tokenizer (its BOS in a Sequence post-processor) keeps its BOS in llama.cpp", async () => {
    const l3 = join(out, "l3-model");
    cpSync(model, l3, { recursive: true });
    Bun.spawnSync(["rm", "-f", join(l3, "loralab_manifest.json")]);
    const tj = JSON.parse(readFileSync(join(l3, "tokenizer.json"), "utf8"));
    const seq = {
      type: "Sequence",
      processors: [
        { type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: true },
        tj.post_processor,
      ],
    };
    writeFileSync(join(l3, "tokenizer.json"), JSON.stringify({ ...tj, post_processor: seq }));
    await ex(l3, "l3.gguf", { format: "gguf", dtype: "f32" });
    const py = `
import sys, llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
print(llm._model.add_bos_token(), llm.tokenize(b"def f", add_bos=llm._model.add_bos_token(), special=False)[0])`;
    const p = Bun.spawnSync([testPython(), "-c", py, join(out, "l3.gguf")], { stdout: "pipe", stderr: "pipe" });
    expect([p.exitCode, p.stdout.toString().trim()]).toEqual([0, "True 0"]);
  }, 60_000);

  test("refusals say what to do", async () => {
    await expect(ex(model, "x.gguf", { format: "gguf-lora" })).rejects.toThrow(/a LoRA adapter, and this is a model/);
    await expect(ex(adapter, "x.gguf", { format: "gguf" })).rejects.toThrow(/needs its base model.*--base/);
    await expect(ex(model, "x.gguf", { format: "gguf", dtype: "q4_0" })).rejects.toThrow(/f32, f16, bf16, q8_0/);
    await expect(ex(run, "x.gguf", { format: "gguf-lora", dtype: "q8_0" })).rejects.toThrow(/f32, f16/);
    await expect(ex(model, "x", { format: "onnx" as never })).rejects.toThrow(/hf, gguf, gguf-lora or vllm/);
    await expect(ex(join(out, "nothing-here"), "x", { format: "hf" })).rejects.toThrow(
      /neither a model .* nor a PEFT adapter/,
    );
    // a SentencePiece tokenizer: GGUF needs its piece scores
    const sp = join(out, "sp-model");
    cpSync(model, sp, { recursive: true });
    Bun.spawnSync(["rm", "-f", join(sp, "loralab_manifest.json")]);
    const tj = JSON.parse(readFileSync(join(sp, "tokenizer.json"), "utf8"));
    writeFileSync(
      join(sp, "tokenizer.json"),
      JSON.stringify({ ...tj, pre_tokenizer: null, model: { ...tj.model, byte_fallback: true } }),
    );
    await expect(ex(sp, "sp.gguf", { format: "gguf" })).rejects.toThrow(/SentencePiece.*convert_hf_to_gguf.py/);
    // an adapter with a layer the base lacks is another base's: refused, not truncated
    const foreign = join(out, "adapter-foreign");
    cpSync(adapter, foreign, { recursive: true });
    Bun.spawnSync(["rm", "-f", join(foreign, "loralab_manifest.json")]);
    const st = readFileSync(join(foreign, "adapter_model.safetensors"));
    const n = Number(st.readBigUInt64LE(0));
    // the same bytes, one key renamed from layer 0 to layer 9 (same length: the header keeps its size)
    const header = st
      .subarray(8, 8 + n)
      .toString()
      .replace("layers.0.self_attn.q_proj.lora_A", "layers.9.self_attn.q_proj.lora_A");
    writeFileSync(
      join(foreign, "adapter_model.safetensors"),
      Buffer.concat([st.subarray(0, 8), Buffer.from(header), st.subarray(8 + n)]),
    );
    await expect(ex(foreign, "foreign.gguf", { format: "gguf-lora", base: model })).rejects.toThrow(
      /adapted module\(s\) this model does not have, e\.g\. model\.layers\.9\.self_attn\.q_proj.*another base/,
    );
    // and from the command line, with its usage
    const cli = Bun.spawnSync(["bun", join(root, "packages/cli/src/main.ts"), "export", model, join(out, "c.gguf")], {
      stderr: "pipe",
    });
    expect(cli.exitCode).not.toBe(0);
    expect(cli.stderr.toString()).toMatch(/--format is one of hf, gguf, gguf-lora, vllm/);
    const ok = Bun.spawnSync(
      ["bun", join(root, "packages/cli/src/main.ts"), "export", run, join(out, "c.gguf"), "--format", "gguf-lora"],
      { stdout: "pipe", stderr: "pipe" },
    );
    expect(ok.exitCode).toBe(0);
    expect(ok.stdout.toString()).toMatch(/exported: .*c\.gguf \(gguf-lora, f16; tensors 56 F16\)/);
  }, 120_000);
});
