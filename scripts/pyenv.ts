// The Python the tests check loralab's outputs with (transformers loading a merged model, PEFT an
// adapter): a venv made once per lock file under the cache, `pyenv-<hash of the lock>`, with
// `python3 -m venv` and pip installing scripts/python-test-requirements.txt (every package pinned
// with its sha256, --no-deps: what is installed is the lock, nothing resolved at install time).
// A new lock gets a new venv; an old one stays until removed by hand.
//   bun scripts/pyenv.ts        make it when missing; prints its python's path
//   bun scripts/pyenv.ts lock   re-resolve python-test-requirements.in into the lock
// scripts/test.ts calls ensurePyenv() and hands the path to the tests as LORALAB_TEST_PYTHON.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cacheDir } from "./fetch.ts";

const here = new URL(".", import.meta.url).pathname;
export const LOCK = join(here, "python-test-requirements.txt");
const INPUT = join(here, "python-test-requirements.in");
/** Packages PyPI has as source only (lm-eval's pure-Python dependencies, and llama-cpp-python,
 *  whose sdist compiles llama.cpp: 3 min 20 s measured on 2 cores, once per lock): built from their sdist,
 *  hash-pinned like the wheels. */
const SOURCE_ONLY = ["sqlitedict", "rouge-score", "word2number", "llama-cpp-python"];
/** llama.cpp's build for llama-cpp-python: the library alone (no curl, no tools or tests), for
 *  AVX2 and not -march=native: these machines report AMX, which the sandbox's kernel does not
 *  grant, and a native build dies with SIGILL in the Q8_0 matmul. */
const LLAMA_CMAKE =
  "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_CURL=OFF -DGGML_OPENMP=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF";
/** Written last: a venv without it is a half-made one (an interrupted install) and is made again. */
const MARKER = ".loralab-complete";
/** Imported once made, so a venv that cannot run what the tests use is never marked complete. */
const CHECK =
  "import torch, transformers, safetensors, tokenizers, jinja2, peft, schemathesis, lm_eval.tasks, gguf, llama_cpp, mlflow, tensorboard, wandb";

function lockHash(): string {
  return new Bun.CryptoHasher("sha256").update(readFileSync(LOCK)).digest("hex").slice(0, 12);
}

/** The venv's folder for the current lock (made or not). */
export function pyenvDir(): string {
  return join(cacheDir(), `pyenv-${lockHash()}`);
}

async function sh(cmd: string[], what: string): Promise<void> {
  // pip's output goes to stderr: stdout of `bun scripts/pyenv.ts` is the python path alone
  const p = Bun.spawn(cmd, {
    stdout: 2,
    stderr: "inherit",
    env: {
      ...process.env,
      PIP_DISABLE_PIP_VERSION_CHECK: "1",
      CMAKE_ARGS: LLAMA_CMAKE,
      CMAKE_BUILD_PARALLEL_LEVEL: process.env.CMAKE_BUILD_PARALLEL_LEVEL ?? "2",
    },
  });
  const code = await p.exited;
  if (code !== 0)
    throw new Error(
      `pyenv: ${what}: \`${cmd.join(" ")}\` failed (exit ${code}) (hint: python3 with the venv module and access to PyPI are needed; a hash mismatch means this machine's Python or platform differs from the lock's: run \`bun scripts/pyenv.ts lock\`)`,
    );
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The venv's python when it is made for the current lock (and runs); undefined otherwise. Makes nothing. */
export function madePyenv(): string | undefined {
  const dir = pyenvDir();
  const python = join(dir, "bin", "python");
  return existsSync(join(dir, MARKER)) && Bun.spawnSync([python, "-c", ""]).exitCode === 0 ? python : undefined;
}

/** The venv's python, made first when missing (minutes, once per machine and lock); a no-op when it exists. */
export async function ensurePyenv(): Promise<string> {
  const made = madePyenv();
  if (made) return made;
  const dir = pyenvDir();
  const python = join(dir, "bin", "python");
  // one maker at a time (two test runs at once): mkdir is atomic; a lock older than an hour is a dead maker's
  mkdirSync(cacheDir(), { recursive: true });
  const lock = `${dir}.lock`;
  for (;;) {
    try {
      mkdirSync(lock);
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      if (existsSync(join(dir, MARKER))) return python;
      if (Date.now() - statSync(lock).mtimeMs > 3600_000) rmSync(lock, { recursive: true, force: true });
      else await sleep(2000);
    }
  }
  try {
    if (madePyenv()) return python;
    rmSync(dir, { recursive: true, force: true });
    const t0 = performance.now();
    console.error(`pyenv: making ${dir} from ${LOCK} (once; a few minutes: torch brings ~3 GB of CUDA wheels)`);
    await sh(["python3", "-m", "venv", dir], "venv");
    // --no-cache-dir: the venv is the cache; pip's own would hold the same 3 GB a second time
    await sh(
      [
        python,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-cache-dir",
        "--no-deps",
        "--require-hashes",
        "--only-binary=:all:",
        `--no-binary=${SOURCE_ONLY.join(",")}`,
        "-r",
        LOCK,
      ],
      "install",
    );
    await sh([python, "-c", CHECK], "import check");
    const took = (performance.now() - t0) / 1000;
    writeFileSync(
      join(dir, MARKER),
      `${JSON.stringify({ lock: lockHash(), made: new Date().toISOString(), seconds: Math.round(took) })}\n`,
    );
    console.error(`pyenv: made in ${took.toFixed(0)} s`);
    return python;
  } finally {
    rmSync(lock, { recursive: true, force: true });
  }
}

interface Report {
  install: {
    metadata: { name: string; version: string };
    download_info: { url: string; archive_info?: { hashes?: Record<string, string> } };
  }[];
}

/** Resolve python-test-requirements.in with pip (in a throwaway venv, nothing installed) into the lock. */
export async function lock(): Promise<void> {
  const tmp = mkdtempSync(join(tmpdir(), "loralab-pylock-"));
  try {
    await sh(["python3", "-m", "venv", join(tmp, "venv")], "venv");
    const py = join(tmp, "venv", "bin", "python");
    const report = join(tmp, "report.json");
    await sh(
      [
        py,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--dry-run",
        "--ignore-installed",
        "--only-binary=:all:",
        `--no-binary=${SOURCE_ONLY.join(",")}`,
        "--report",
        report,
        "-r",
        INPUT,
      ],
      "resolve",
    );
    const r = JSON.parse(readFileSync(report, "utf8")) as Report;
    const lines = r.install
      .map((i) => {
        const sha = i.download_info.archive_info?.hashes?.sha256;
        if (!sha) throw new Error(`pyenv: ${i.metadata.name}: pip's report gives no sha256 for ${i.download_info.url}`);
        return `${i.metadata.name.toLowerCase().replace(/[-_.]+/g, "-")}==${i.metadata.version} \\\n    --hash=sha256:${sha}`;
      })
      .sort();
    const pyVersion = Bun.spawnSync([
      py,
      "-c",
      "import platform, sys; print(f'CPython {platform.python_version()} {sys.platform} {platform.machine()}')",
    ])
      .stdout.toString()
      .trim();
    const head = [
      "# Generated by `bun scripts/pyenv.ts lock` from python-test-requirements.in: do not edit by hand.",
      `# Resolved for ${pyVersion}; the hashes are of the wheels pip picked for it (sdists for ${SOURCE_ONLY.join(", ")}).`,
      "",
    ];
    writeFileSync(LOCK, `${head.concat(lines).join("\n")}\n`);
    console.error(`pyenv: locked ${lines.length} packages in ${LOCK}`);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

if (import.meta.main) {
  try {
    if (process.argv[2] === "lock") await lock();
    else if (process.argv[2] === undefined) console.log(await ensurePyenv());
    else {
      console.error("usage: bun scripts/pyenv.ts [lock]");
      process.exit(2);
    }
  } catch (e) {
    console.error((e as Error).message);
    process.exit(1);
  }
}
