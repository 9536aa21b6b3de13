// The dashboard's chart libraries, served from this server (the page's CSP allows no other
// origin): Vega and Vega-Lite's own browser builds, and Vega's expression interpreter (the
// CSP-safe evaluator: the page allows no eval), whose ES module is wrapped as a classic script
// over the vega global (vega re-exports the vega-util it imports). Read once, from the installed
// packages; a missing one is a 404 the dashboard reports with its hint.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";

const FILES: Record<string, [pkg: string, file: string]> = {
  "vega.js": ["vega", "build/vega.min.js"],
  "vega-lite.js": ["vega-lite", "build/vega-lite.min.js"],
  "vega-interpreter.js": ["vega-interpreter", "build/vega-interpreter.js"],
};

const cache = new Map<string, string | null>();

function read(name: string): string | null {
  const f = FILES[name]!;
  try {
    const text = readFileSync(join(dirname(Bun.resolveSync(`${f[0]}/package.json`, import.meta.dir)), f[1]), "utf8");
    if (name !== "vega-interpreter.js") return text.replace(/\/\/# sourceMappingURL=.*$/m, "");
    const m = /^import \{([^}]*)\} from 'vega-util';$/m.exec(text);
    if (!m || !text.includes("export { expression as expressionInterpreter };")) return null;
    return `(function () {\nconst {${m[1]}} = globalThis.vega;\n${text
      .replace(m[0], "")
      .replace("export { expression as expressionInterpreter };", "globalThis.vegaExpressionInterpreter = expression;")
      .replace(/\/\/# sourceMappingURL=.*$/m, "")}\n})();\n`;
  } catch {
    return null;
  }
}

/** A vendored script by its served name, or null (unknown, or its package is not installed). */
export function vendorScript(name: string): string | null {
  if (!Object.hasOwn(FILES, name)) return null;
  if (!cache.has(name)) cache.set(name, read(name));
  return cache.get(name)!;
}
