//! The run directory (docs/run-directory.md), the one place its layout lives: the paths of
//! its files, `run.json` (written atomically, times as [`utc_stamp`]), its checkpoints and
//! which is the last, and the "interrupted" marker a supervisor writes for a dead worker.
//! The TypeScript side reads it through the engine (`run_directory`, `mark_interrupted`).
use crate::base::error::{Error, Result};
use crate::config::{utc_stamp, MethodKind, RunConfig};
use crate::io::checkpoint::FORMAT_VERSION;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub fn run_json(dir: &Path) -> PathBuf {
    dir.join("run.json")
}
pub fn config_json(dir: &Path) -> PathBuf {
    dir.join("config.json")
}
pub fn data_json(dir: &Path) -> PathBuf {
    dir.join("data.json")
}
pub fn metrics_jsonl(dir: &Path) -> PathBuf {
    dir.join("metrics.jsonl")
}
pub fn lock_file(dir: &Path) -> PathBuf {
    dir.join(".lock")
}
pub fn checkpoints_dir(dir: &Path) -> PathBuf {
    dir.join("checkpoints")
}
/// `checkpoints/step-NNNNNN`.
pub fn checkpoint_dir(dir: &Path, step: usize) -> PathBuf {
    checkpoints_dir(dir).join(format!("step-{step:06}"))
}
/// The final model (full FT, HF layout) or adapter (LoRA, PEFT layout).
pub fn output_dir(dir: &Path, method: MethodKind) -> PathBuf {
    dir.join(if method == MethodKind::Full { "model" } else { "adapter" })
}
/// The randomly initialised base's weights (runs from `model.config`).
pub fn base_dir(dir: &Path) -> PathBuf {
    dir.join("base")
}

/// What a run's status is in `run.json`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Completed,
    Cancelled,
    Failed,
    /// The worker process died mid-run (written by its supervisor).
    Interrupted,
}

/// One complete checkpoint (it has its trainer_state.json).
#[derive(Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct CheckpointEntry {
    pub step: usize,
    pub path: String,
    /// Tokens trained when it was written (its trainer_state.json).
    pub tokens: u64,
}

/// A run directory as readers see it.
#[derive(Serialize, Clone, Debug, schemars::JsonSchema)]
pub struct RunDirectory {
    pub run_dir: String,
    /// run.json, as written (null when absent or unreadable).
    #[schemars(with = "Option<serde_json::Map<String, Value>>")]
    pub run: Option<Value>,
    pub status: Option<RunStatus>,
    /// config.json: the resolved config (null when absent).
    #[schemars(with = "Option<serde_json::Map<String, Value>>")]
    pub config: Option<Value>,
    /// Complete checkpoints by step.
    pub checkpoints: Vec<CheckpointEntry>,
    /// The last of them ("" when none).
    pub last_checkpoint: String,
    /// The final model or adapter directory ("" until the run has completed).
    pub output: String,
    /// The random base's directory ("" when the run started from a pretrained model).
    pub base: String,
    /// The step the run trains to (its last metrics line's `total_steps`; null before a step).
    pub total_steps: Option<usize>,
}

/// Complete checkpoints, by step.
pub fn checkpoints(dir: &Path) -> Vec<CheckpointEntry> {
    let Ok(rd) = std::fs::read_dir(checkpoints_dir(dir)) else { return vec![] };
    let mut out: Vec<CheckpointEntry> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            let digits = name.strip_prefix("step-")?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let step = digits.parse().ok()?;
            // complete = it has its trainer state; a damaged one is restore's to name, not a
            // reason to fall back to an older checkpoint here
            let state = p.join("trainer_state.json");
            if !state.is_file() {
                return None;
            }
            let tokens = read_json(&state).and_then(|s| s.get("tokens")?.as_u64()).unwrap_or(0);
            Some(CheckpointEntry { step, path: p.to_string_lossy().into(), tokens })
        })
        .collect();
    out.sort_by_key(|c| c.step);
    out
}

/// The newest complete checkpoint, if any.
pub fn last_checkpoint(dir: &Path) -> Option<PathBuf> {
    checkpoints(dir).pop().map(|c| PathBuf::from(c.path))
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn status_of(run: &Value) -> Option<RunStatus> {
    serde_json::from_value(run.get("status")?.clone()).ok()
}

/// The status run.json records, if it can be read.
pub fn status(dir: &Path) -> Option<RunStatus> {
    status_of(&read_json(&run_json(dir))?)
}

/// `total_steps` of the last line of metrics.jsonl, read from the file's tail (it grows by a
/// line per logged step).
fn total_steps(dir: &Path) -> Option<usize> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(metrics_jsonl(dir)).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut bytes = vec![];
    f.read_to_end(&mut bytes).ok()?;
    let tail = String::from_utf8_lossy(&bytes);
    let last: Value = serde_json::from_str(tail.lines().rev().find(|l| !l.trim().is_empty())?).ok()?;
    last.get("total_steps")?.as_u64().map(|n| n as usize)
}

pub fn describe(dir: &Path) -> RunDirectory {
    let run = read_json(&run_json(dir));
    let config = read_json(&config_json(dir));
    let status = run.as_ref().and_then(status_of);
    let method: Option<MethodKind> =
        config.as_ref().and_then(|c| serde_json::from_value(c.get("method")?.get("kind")?.clone()).ok());
    let output = method
        .map(|m| output_dir(dir, m))
        .filter(|p| ["loralab_manifest.json", "config.json", "adapter_config.json"].iter().any(|f| p.join(f).is_file()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let base = Some(base_dir(dir)).filter(|p| p.is_dir()).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    let checkpoints = checkpoints(dir);
    let last_checkpoint = checkpoints.last().map(|c| c.path.clone()).unwrap_or_default();
    let total_steps = total_steps(dir);
    RunDirectory {
        run_dir: dir.to_string_lossy().into(),
        run,
        status,
        config,
        checkpoints,
        last_checkpoint,
        output,
        base,
        total_steps,
    }
}

fn write_atomically(path: &Path, v: &Value) -> Result<()> {
    // a temp name of this writer's own: the trainer and a supervisor may write at once
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let tmp = path.with_extension(format!("json.tmp-{}-{nanos}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(v)?).map_err(|e| Error::file(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::file(path, e))
}

/// Write run.json for `cfg` with `status` (the training loop, at start and end).
pub fn write_run(dir: &Path, cfg: &RunConfig, status: RunStatus, started: &str, error: Option<&str>) -> Result<()> {
    let git =
        std::process::Command::new("git").args(["rev-parse", "HEAD"]).output().ok().filter(|o| o.status.success());
    let v = serde_json::json!({
        "format_version": FORMAT_VERSION,
        "run_id": cfg.run_id,
        "name": cfg.name,
        "status": status,
        "method": cfg.method.kind,
        "device": cfg.train.device,
        "seed": cfg.seed,
        // what the run was trained from, pinned: a Hub id's commit, or the path as given
        "inputs": {
            "model": if cfg.model.source.is_empty() { &cfg.model.path } else { &cfg.model.source },
            "data": if cfg.data.source.is_empty() { &cfg.data.train } else { &cfg.data.source },
        },
        "git_revision": git.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()),
        "loralab_version": env!("CARGO_PKG_VERSION"),
        "started_at": started,
        "updated_at": utc_stamp(),
        "error": error,
    });
    write_atomically(&run_json(dir), &v)
}

/// A supervisor's word for a run whose worker died: a run.json still saying "running" gets
/// `status` (interrupted, or cancelled when it was stopped on purpose) and `error`. Returns
/// whether it changed anything (a run that ended on its own keeps its own status).
pub fn mark_interrupted(dir: &Path, status: RunStatus, error: &str) -> Result<bool> {
    let Some(mut run) = read_json(&run_json(dir)) else { return Ok(false) };
    if run.get("status").and_then(Value::as_str) != Some("running") {
        return Ok(false);
    }
    run["status"] = serde_json::to_value(status)?;
    run["error"] = if status == RunStatus::Cancelled { Value::Null } else { Value::String(error.into()) };
    run["updated_at"] = Value::String(utc_stamp());
    write_atomically(&run_json(dir), &run)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_are_those_with_a_trainer_state_and_total_steps_comes_from_the_tail() {
        let dir = std::env::temp_dir().join(format!("loralab-rundir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (step, state) in [(2, Some(r#"{"tokens": 64}"#)), (10, Some("{damaged")), (12, None)] {
            let ck = checkpoint_dir(&dir, step);
            std::fs::create_dir_all(&ck).unwrap();
            if let Some(s) = state {
                std::fs::write(ck.join("trainer_state.json"), s).unwrap();
            }
        }
        std::fs::create_dir_all(checkpoints_dir(&dir).join("step-x")).unwrap();
        // step 12 has no trainer state: not complete; step 10's is damaged: still the last
        // (restore names the damage), with its tokens unknown; sorted by step, not by name
        let cks = checkpoints(&dir);
        assert_eq!(cks.iter().map(|c| (c.step, c.tokens)).collect::<Vec<_>>(), vec![(2, 64), (10, 0)]);
        assert_eq!(last_checkpoint(&dir), Some(checkpoint_dir(&dir, 10)));
        // a metrics file far longer than the tail read: the last line's total_steps
        let lines: String = (1..=500).map(|s| format!("{{\"step\":{s},\"total_steps\":{}}}\n", 500 + s)).collect();
        std::fs::write(metrics_jsonl(&dir), lines).unwrap();
        assert_eq!(describe(&dir).total_steps, Some(1000));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
