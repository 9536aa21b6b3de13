// MLflow through its tracking server's REST API (api/2.0/mlflow, and mlflow-artifacts for the
// files): an experiment found or made by name, a run with the config as params, metrics in
// batches of at most 1000 (log-batch's limit), the files as artifacts, and the end status.
import { readdirSync, statSync } from "node:fs";
import { join, relative } from "node:path";

export interface MlflowRun {
  runId: string;
  experimentId: string;
  artifactUri: string;
}

const TIMEOUT_MS = 30_000;

/** MLflow's own credential variables: a bearer token, or a user and password (basic auth). */
function auth(): Record<string, string> {
  const token = process.env.MLFLOW_TRACKING_TOKEN;
  if (token) return { authorization: `Bearer ${token}` };
  const user = process.env.MLFLOW_TRACKING_USERNAME;
  if (user)
    return {
      authorization: `Basic ${Buffer.from(`${user}:${process.env.MLFLOW_TRACKING_PASSWORD ?? ""}`).toString("base64")}`,
    };
  return {};
}

export class MlflowClient {
  constructor(readonly uri: string) {
    this.uri = uri.replace(/\/+$/, "");
  }

  private async call<T>(method: "GET" | "POST", path: string, body?: unknown): Promise<T> {
    const r = await fetch(`${this.uri}/api/2.0/mlflow/${path}`, {
      method,
      headers: { ...auth(), ...(body ? { "content-type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(TIMEOUT_MS),
    });
    const text = await r.text();
    if (!r.ok) {
      let code = "";
      try {
        code = (JSON.parse(text) as { error_code?: string }).error_code ?? "";
      } catch {}
      throw new MlflowError(
        `${method} ${path}: HTTP ${r.status}${code ? ` ${code}` : ""}: ${text.slice(0, 200)}`,
        code,
      );
    }
    return (text ? JSON.parse(text) : {}) as T;
  }

  /** The experiment's id, made when there is none by that name. */
  async experiment(name: string): Promise<string> {
    const get = () =>
      this.call<{ experiment: { experiment_id: string } }>(
        "GET",
        `experiments/get-by-name?experiment_name=${encodeURIComponent(name)}`,
      ).then((r) => r.experiment.experiment_id);
    try {
      return await get();
    } catch (e) {
      if ((e as MlflowError).code !== "RESOURCE_DOES_NOT_EXIST") throw e;
    }
    try {
      return (await this.call<{ experiment_id: string }>("POST", "experiments/create", { name })).experiment_id;
    } catch (e) {
      // another run made it meanwhile
      if ((e as MlflowError).code === "RESOURCE_ALREADY_EXISTS") return get();
      throw e;
    }
  }

  async createRun(experimentId: string, name: string, tags: Record<string, string>): Promise<MlflowRun> {
    const r = await this.call<{ run: { info: { run_id: string; artifact_uri: string } } }>("POST", "runs/create", {
      experiment_id: experimentId,
      run_name: name,
      start_time: Date.now(),
      tags: Object.entries(tags).map(([key, value]) => ({ key, value })),
    });
    return { runId: r.run.info.run_id, experimentId, artifactUri: r.run.info.artifact_uri };
  }

  /** Params (100 a request) and metrics (1000 a request), as log-batch takes them. */
  async logBatch(
    runId: string,
    o: { params?: [string, string][]; metrics?: { key: string; value: number; step: number; timestamp: number }[] },
  ): Promise<void> {
    const params = o.params ?? [];
    for (let i = 0; i < params.length; i += 100)
      await this.call("POST", "runs/log-batch", {
        run_id: runId,
        params: params.slice(i, i + 100).map(([key, value]) => ({ key, value })),
      });
    const metrics = (o.metrics ?? []).map((m) => ({ ...m, value: mlflowNumber(m.value) }));
    for (let i = 0; i < metrics.length; i += 1000)
      await this.call("POST", "runs/log-batch", { run_id: runId, metrics: metrics.slice(i, i + 1000) });
  }

  /** A resumed run's MLflow run, running again. */
  async resumeRun(runId: string): Promise<void> {
    await this.call("POST", "runs/update", { run_id: runId, status: "RUNNING" });
  }

  async endRun(runId: string, status: "FINISHED" | "FAILED" | "KILLED"): Promise<void> {
    await this.call("POST", "runs/update", { run_id: runId, status, end_time: Date.now() });
  }

  /** Upload a file or a directory's files under `into` of the run's artifacts (the server's
   *  artifact proxy: `mlflow server` serves artifacts by default). */
  async logArtifacts(run: MlflowRun, path: string, into: string): Promise<number> {
    const prefix = "mlflow-artifacts:/";
    if (!run.artifactUri.startsWith(prefix))
      throw new MlflowError(
        `the server keeps this run's artifacts at ${run.artifactUri}, which only its host writes (hint: start it with \`mlflow server --serve-artifacts\`, MLflow's default)`,
        "",
      );
    const base = run.artifactUri.slice(prefix.length).replace(/^\/+/, "");
    const files = statSync(path).isDirectory()
      ? walk(path).map((f) => [f, join(into, relative(path, f))])
      : [[path, into]];
    for (const [file, rel] of files) {
      const url = `${this.uri}/api/2.0/mlflow-artifacts/artifacts/${[...base.split("/"), ...rel!.split("/")].map(encodeURIComponent).join("/")}`;
      const r = await fetch(url, {
        method: "PUT",
        headers: auth(),
        body: Bun.file(file!),
        signal: AbortSignal.timeout(600_000),
      });
      if (!r.ok) throw new MlflowError(`PUT ${rel}: HTTP ${r.status}: ${(await r.text()).slice(0, 200)}`, "");
    }
    return files.length;
  }
}

export class MlflowError extends Error {
  override name = "MlflowError";
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
  }
}

/** JSON has no NaN or ±∞; MLflow's REST API takes them as these strings. */
const mlflowNumber = (x: number): number | string =>
  Number.isFinite(x) ? x : Number.isNaN(x) ? "NaN" : x > 0 ? "Infinity" : "-Infinity";

function walk(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true })
    .sort((a, b) => a.name.localeCompare(b.name))
    .flatMap((e) => (e.isDirectory() ? walk(join(dir, e.name)) : e.isFile() ? [join(dir, e.name)] : []));
}
