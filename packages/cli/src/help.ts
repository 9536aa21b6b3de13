// `loralab train --help`: every config field with its default and the reason for it,
// read from the engine's JSON Schema (the one definition of the config).
import { configSchema } from "@loralab/engine";

type Schema = {
  type?: string | string[];
  properties?: Record<string, Schema>;
  $ref?: string;
  description?: string;
  default?: unknown;
  enum?: unknown[];
  oneOf?: Schema[];
  const?: unknown;
  anyOf?: Schema[];
};

export function configHelp(): string {
  const root = configSchema() as Schema & { $defs?: Record<string, Schema> };
  const defs = root.$defs ?? {};
  const deref = (s: Schema): Schema => (s.$ref ? (defs[s.$ref.split("/").pop()!] ?? s) : s);
  const lines: string[] = [];
  const walk = (s: Schema, prefix: string, defaults: Record<string, unknown> | undefined) => {
    // plain fields first, then sections, so a field never reads as part of the section above it
    const entries = Object.entries(s.properties ?? {}).sort(
      ([, a], [, b]) => Number(!!deref(a).properties) - Number(!!deref(b).properties),
    );
    for (const [key, raw] of entries) {
      const field = deref(raw);
      const name = prefix ? `${prefix}.${key}` : key;
      const def = defaults?.[key] ?? raw.default ?? field.default;
      if (field.properties) {
        lines.push(`\n[${name}]${raw.description ? `  ${raw.description}` : ""}`);
        walk(field, name, def as Record<string, unknown>);
        continue;
      }
      const choices = field.enum ?? field.oneOf?.map((o) => o.const ?? o.enum?.[0]).filter((v) => v !== undefined);
      const desc = raw.description ?? field.description ?? "";
      lines.push(
        `  ${name.padEnd(30)} = ${JSON.stringify(def ?? null)}${choices?.length ? `  (${choices.join(" | ")})` : ""}`,
      );
      if (desc) lines.push(`      ${desc}`);
    }
  };
  walk(root, "", root.default as Record<string, unknown> | undefined);
  return lines.join("\n");
}
