// The sweep spec as a schema: snake_case keys like the run config, every key checked (an unknown
// one is refused with the nearest valid name), every value typed and bounded, before any work.
// `base` is a run config: its keys are checked against the config's own JSON Schema.
import { ConfigError, configSchema, nearestName, readConfigFile } from "@loralab/engine";
import type { StudySpec } from "./study.ts";

type Field =
  | { t: "string"; values?: readonly string[] }
  | { t: "number"; int?: boolean; min?: number; max?: number; gt?: number }
  | { t: "array"; of: Field; nonEmpty?: boolean }
  | { t: "object"; fields: Record<string, Field>; required?: readonly string[] }
  | { t: "record"; keys?: readonly string[]; of: Field }
  | { t: "targets" }
  | { t: "runconfig" }
  | { t: "any" };

const num = (o: Omit<Extract<Field, { t: "number" }>, "t"> = {}): Field => ({ t: "number", ...o });
const nums = (o: Omit<Extract<Field, { t: "number" }>, "t"> = {}): Field => ({
  t: "array",
  of: num(o),
  nonEmpty: true,
});
const METHODS = ["full", "lora", "hybrid"] as const;
const TASKS = ["humaneval", "gsm8k", "hellaswag", "winogrande", "arc_challenge"] as const;

/** The schema of a sweep file (see configs/sweep-example.toml). */
export const SPEC_SCHEMA: Field = {
  t: "object",
  required: ["name", "regime", "base", "methods", "lr", "durations", "eval"],
  fields: {
    name: { t: "string" },
    regime: { t: "string", values: ["ift", "cpt"] },
    base: { t: "runconfig" },
    methods: { t: "array", of: { t: "string", values: METHODS }, nonEmpty: true },
    lr: { t: "record", keys: [...METHODS, "full_wd", "full_dropout"], of: nums({ gt: 0 }) },
    ranks: nums({ int: true, min: 1 }),
    alpha_factors: nums({ gt: 0 }),
    rslora_alpha: num({ gt: 0 }),
    targets: { t: "array", of: { t: "targets" }, nonEmpty: true },
    seeds: nums({ int: true, min: 0, max: 2 ** 53 - 1 }),
    durations: nums({ gt: 0 }),
    regularizers: {
      t: "object",
      fields: { weight_decay: num({ min: 0 }), attention_dropout: num({ min: 0, max: 0.99 }) },
    },
    hybrid: {
      t: "object",
      required: ["lora_fraction", "full_targets", "rank"],
      fields: {
        lora_fraction: num({ gt: 0, max: 1 }),
        full_targets: { t: "array", of: { t: "string" }, nonEmpty: true },
        rank: num({ int: true, min: 1 }),
      },
    },
    records_per_epoch: num({ int: true, min: 1 }),
    eval: {
      t: "object",
      required: ["learning"],
      fields: {
        learning: { t: "string", values: ["humaneval", "gsm8k"] },
        data: { t: "record", keys: TASKS, of: { t: "string" } },
        limit: num({ int: true, min: 1 }),
        batch_size: num({ int: true, min: 1, max: 4096 }),
        shots: {
          t: "record",
          keys: ["hellaswag", "winogrande", "arc_challenge"],
          of: num({ int: true, min: 0, max: 25 }),
        },
        humaneval: {
          t: "object",
          fields: {
            n: num({ int: true, min: 1, max: 1000 }),
            temperature: num({ min: 0 }),
            top_p: num({ gt: 0, max: 1 }),
            max_length: num({ int: true, min: 8 }),
            ks: nums({ int: true, min: 1 }),
            seed: num({ int: true, min: 0 }),
          },
        },
        gsm8k: {
          t: "object",
          fields: { shots: num({ int: true, min: 0, max: 8 }), max_new_tokens: num({ int: true, min: 1 }) },
        },
      },
    },
  },
};

const show = (v: unknown) =>
  typeof v === "string"
    ? JSON.stringify(v)
    : Array.isArray(v)
      ? "a list"
      : v === null
        ? "null"
        : typeof v === "object"
          ? "a table"
          : String(v);

type Json = Record<string, unknown>;

/** Walk the run config's JSON Schema to the properties of an object node. */
function schemaProps(root: Json, node: unknown): Record<string, unknown> | undefined {
  let n = node as Json | undefined;
  for (let hops = 0; n && hops < 8; hops++) {
    if (typeof n.$ref === "string") {
      const path = n.$ref.replace(/^#\//, "").split("/");
      n = path.reduce<Json | undefined>((o, k) => o?.[k] as Json | undefined, root);
      continue;
    }
    const inner = (n.allOf ?? n.anyOf ?? n.oneOf) as unknown[] | undefined;
    if (!n.properties && inner) {
      n = inner.find((x) => (x as Json).$ref || (x as Json).properties) as Json | undefined;
      continue;
    }
    return n.properties as Record<string, unknown> | undefined;
  }
  return undefined;
}

function checkRunConfig(
  v: unknown,
  path: string,
  fail: (p: string, m: string) => never,
  root: Json,
  node: unknown = root,
): void {
  const props = schemaProps(root, node);
  if (!props) return;
  if (typeof v !== "object" || v === null || Array.isArray(v)) fail(path, `expected a table, got ${show(v)}`);
  for (const [k, x] of Object.entries(v as Json)) {
    if (!(k in props)) {
      const near = nearestName(k, Object.keys(props));
      fail(
        `${path}.${k}`,
        `unknown key \`${k}\` (hint: ${near ? `did you mean \`${near}\`? ` : ""}\`loralab train --help\` lists every run config field)`,
      );
    }
    if (typeof x === "object" && x !== null && !Array.isArray(x))
      checkRunConfig(x, `${path}.${k}`, fail, root, props[k]);
  }
}

function check(v: unknown, f: Field, path: string, fail: (p: string, m: string) => never): void {
  switch (f.t) {
    case "any":
    case "runconfig":
      return;
    case "string":
      if (typeof v !== "string") fail(path, `expected a string, got ${show(v)}`);
      if (f.values && !f.values.includes(v as string)) {
        const near = nearestName(v as string, f.values);
        fail(path, `${show(v)} is not one of ${f.values.join(", ")}${near ? ` (hint: did you mean "${near}"?)` : ""}`);
      }
      return;
    case "number": {
      if (typeof v !== "number" || !Number.isFinite(v)) fail(path, `expected a number, got ${show(v)}`);
      const n = v as number;
      if (f.int && !Number.isInteger(n)) fail(path, `expected an integer, got ${n}`);
      if (f.min !== undefined && n < f.min) fail(path, `must be ≥ ${f.min} (got ${n})`);
      if (f.gt !== undefined && !(n > f.gt)) fail(path, `must be > ${f.gt} (got ${n})`);
      if (f.max !== undefined && n > f.max) fail(path, `must be ≤ ${f.max} (got ${n})`);
      return;
    }
    case "array":
      if (!Array.isArray(v)) fail(path, `expected a list, got ${show(v)}`);
      if (f.nonEmpty && (v as unknown[]).length === 0) fail(path, "must not be empty");
      for (const [i, x] of (v as unknown[]).entries()) check(x, f.of, `${path}[${i}]`, fail);
      return;
    case "targets":
      if (typeof v === "string") return;
      if (Array.isArray(v) && v.length && v.every((x) => typeof x === "string")) return;
      fail(path, `expected "all", "attention", "mlp" or a list of module names, got ${show(v)}`);
      return;
    case "record":
    case "object": {
      if (typeof v !== "object" || v === null || Array.isArray(v)) fail(path, `expected a table, got ${show(v)}`);
      const o = v as Json;
      const keys = f.t === "object" ? Object.keys(f.fields) : f.keys;
      for (const [k, x] of Object.entries(o)) {
        const p = path ? `${path}.${k}` : k;
        if (keys && !keys.includes(k)) {
          const near = nearestName(k, keys);
          fail(
            p,
            `unknown key \`${k}\` (hint: ${near ? `did you mean \`${near}\`? ` : ""}valid keys here: ${keys.join(", ")})`,
          );
        }
        check(x, f.t === "object" ? f.fields[k]! : f.of, p, fail);
      }
      if (f.t === "object")
        for (const r of f.required ?? [])
          if (o[r] === undefined) fail(path ? `${path}.${r}` : r, "is required (hint: see configs/sweep-example.toml)");
      return;
    }
  }
}

/** Validate a parsed sweep spec; throws ConfigError naming the file and the key's path. */
export function validateStudySpec(raw: unknown, file: string): StudySpec {
  const fail = (p: string, m: string): never => {
    throw new ConfigError(`sweep spec ${file}: ${p || "(top level)"}: ${m}`, p);
  };
  check(raw, SPEC_SCHEMA, "", fail);
  const spec = raw as StudySpec;
  checkRunConfig(spec.base, "base", fail, configSchema() as Json);
  for (const m of Object.keys(spec.lr))
    if (!["full_wd", "full_dropout"].includes(m) && !spec.methods.includes(m as never))
      fail(`lr.${m}`, `an LR grid for ${m}, which is not in methods (hint: add it to methods or drop lr.${m})`);
  for (const m of spec.methods)
    if (m !== "hybrid" && !spec.lr[m]?.length)
      fail(`lr.${m}`, `method ${m} needs an LR grid (hint: lr.${m} = [1e-4, 2e-4])`);
  if (spec.methods.includes("hybrid") && !spec.hybrid)
    fail("hybrid", "method hybrid needs a hybrid section (lora_fraction, full_targets, rank)");
  if (spec.methods.includes("hybrid") && !spec.lr.hybrid?.length) fail("lr.hybrid", "method hybrid needs an LR grid");
  if (spec.regime === "ift" && spec.records_per_epoch === undefined)
    fail(
      "records_per_epoch",
      "IFT durations are epochs: give the training examples per epoch (hint: records_per_epoch = 110000)",
    );
  if (spec.regime === "ift")
    for (const [i, d] of spec.durations.entries())
      if (!Number.isInteger(d)) fail(`durations[${i}]`, `IFT durations are whole epochs (got ${d})`);
  return spec;
}

/** Read (TOML, YAML or JSON) and validate a sweep spec. */
export function loadStudySpec(file: string): StudySpec {
  let raw: unknown;
  try {
    raw = readConfigFile(file);
  } catch (e) {
    throw new ConfigError((e as Error).message, "");
  }
  return validateStudySpec(raw, file);
}

/** JSON with every object's keys sorted: one spec, one text (jsonb reorders keys). */
export const canonical = (v: unknown): string =>
  JSON.stringify(v, (_, x) =>
    x && typeof x === "object" && !Array.isArray(x)
      ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : x,
  );
