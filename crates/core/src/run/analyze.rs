//! `loralab analyze`: the spectrum of the weight change between a base model and a tuned
//! one (a full model or a PEFT adapter), matrix by matrix. Matrices are read one at a time
//! from the memory-mapped checkpoints (or dequantized from GGUF), ΔW is formed in f64, and
//! matrices are processed in parallel within a memory budget, so a 7B pair never has both
//! models in memory. Every ΔW comes with its noise floor: the same statistics for the
//! rounding error of W_base to the tuned checkpoint's storage dtype, because between bf16
//! or quantized checkpoints ΔW is largely rounding noise.
use crate::base::error::{Error, Result};
use crate::io::checkpoint::{self, Adapter};
use crate::model::LlamaConfig;
use crate::run::spectrum::{self, Intruders, SpectrumStats};
use candle_core::quantized::gguf_file::Content;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

pub const MODULES: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

#[derive(Serialize, Deserialize, Clone, Debug, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyzeRequest {
    /// Base model: Hugging Face directory or .gguf.
    pub base: String,
    /// Tuned full model (HF directory, .gguf, or a full-FT checkpoint directory); or empty with `adapter`.
    pub tuned: String,
    /// PEFT adapter directory: ΔW = scale·B·A, analysed from its factors.
    pub adapter: String,
    /// Module types (default all seven).
    pub modules: Vec<String>,
    /// Layers (default all).
    pub layers: Vec<usize>,
    /// Explained-variance thresholds for rank@ (default 0.9).
    pub thresholds: Vec<f64>,
    /// Singular values stored per spectrum (the summary statistics use all of them).
    pub keep: usize,
    /// Also the spectra of W_base and W_tuned (not only ΔW).
    pub spectra: bool,
    /// Intruder dimensions (needs singular vectors: several times the cost).
    pub intruders: bool,
    pub intruder_top_k: usize,
    pub intruder_threshold: f64,
    /// Memory budget for matrices in flight, MiB.
    pub memory_mb: usize,
    /// Threads (0: all).
    pub threads: usize,
}

impl Default for AnalyzeRequest {
    fn default() -> Self {
        Self {
            base: String::new(),
            tuned: String::new(),
            adapter: String::new(),
            modules: vec![],
            layers: vec![],
            thresholds: vec![0.9],
            keep: 256,
            spectra: true,
            intruders: false,
            intruder_top_k: 10,
            intruder_threshold: 0.5,
            memory_mb: 4096,
            threads: 0,
        }
    }
}

#[derive(Serialize, Clone, Debug, schemars::JsonSchema)]
pub struct MatrixAnalysis {
    pub name: String,
    pub layer: usize,
    pub module: String,
    /// (out, in)
    pub shape: [usize; 2],
    /// Storage dtype of the tuned matrix (for an adapter: its factors').
    pub tuned_dtype: String,
    pub base: Option<SpectrumStats>,
    pub tuned: Option<SpectrumStats>,
    pub delta: SpectrumStats,
    /// ‖ΔW‖_F / ‖W_base‖_F
    pub relative_change: f64,
    /// Statistics of round(W_base → tuned storage dtype) − W_base; None for adapters (ΔW is exact in its factors).
    pub noise_floor: Option<SpectrumStats>,
    pub intruders: Option<Intruders>,
}

#[derive(Serialize, Clone, Debug, schemars::JsonSchema)]
pub struct Analysis {
    pub base: String,
    pub tuned: String,
    pub adapter: String,
    pub kind: DeltaKind,
    pub thresholds: Vec<f64>,
    /// Either checkpoint stores weights in bf16, f16 or a quantized type.
    pub low_precision: bool,
    pub precision_note: String,
    pub matrices: Vec<MatrixAnalysis>,
    pub seconds: f64,
}

/// How ΔW was formed.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeltaKind {
    /// W_tuned − W_base.
    Dense,
    /// scale·B·A, from the adapter's factors.
    Lora,
}

/// One checkpoint's weights, read a matrix at a time (two per analysis: their size is no matter).
#[allow(clippy::large_enum_variant)]
enum Source {
    Safetensors {
        st: MmapedSafetensors,
        path: PathBuf,
    },
    Gguf {
        path: PathBuf,
        content: Content,
        file: Mutex<std::fs::File>,
        names: HashMap<String, String>,
        cfg: LlamaConfig,
    },
}

impl Source {
    fn open(path: &Path) -> Result<Self> {
        if checkpoint::is_gguf(path) {
            let mut file = std::fs::File::open(path).map_err(|e| Error::file(path, e))?;
            let content =
                Content::read(&mut file).map_err(|e| Error::file(path, format!("not a readable GGUF file: {e}")))?;
            let cfg = crate::io::gguf::config_from_metadata(
                &content.metadata,
                path,
                !content.tensor_infos.contains_key("output.weight"),
            )?;
            let names = content
                .tensor_infos
                .keys()
                .filter_map(|g| crate::io::gguf::hf_name(g).map(|h| (h, g.clone())))
                .collect();
            return Ok(Source::Gguf { path: path.into(), content, file: Mutex::new(file), names, cfg });
        }
        let files = checkpoint::weight_files(path)?;
        // SAFETY: checkpoint files are not modified while mapped.
        let st = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| Error::file(path, e))?;
        Ok(Source::Safetensors { st, path: path.into() })
    }

    fn path(&self) -> &Path {
        match self {
            Source::Safetensors { path, .. } | Source::Gguf { path, .. } => path,
        }
    }

    fn dtype(&self, name: &str) -> Result<String> {
        match self {
            Source::Safetensors { st, path } => Ok(format!(
                "{:?}",
                st.get(name).map_err(|_| Error::MissingTensor { path: path.clone(), name: name.into() })?.dtype()
            )),
            Source::Gguf { path, content, names, .. } => {
                let g =
                    names.get(name).ok_or_else(|| Error::MissingTensor { path: path.clone(), name: name.into() })?;
                Ok(format!("{:?}", content.tensor_infos[g].ggml_dtype))
            }
        }
    }

    /// The matrix in Hugging Face layout as row-major f64, with its shape.
    fn matrix(&self, name: &str) -> Result<Dense> {
        let t = match self {
            Source::Safetensors { st, path } => {
                if st.get(name).is_err() {
                    return Err(Error::MissingTensor { path: path.clone(), name: name.into() });
                }
                st.load(name, &Device::Cpu).map_err(|e| Error::file(path, e))?
            }
            Source::Gguf { path, content, file, names, cfg } => {
                let g =
                    names.get(name).ok_or_else(|| Error::MissingTensor { path: path.clone(), name: name.into() })?;
                let mut f = file.lock().map_err(|_| Error::file(path, "file lock poisoned"))?;
                let q = content
                    .tensor(&mut *f, g, &Device::Cpu)
                    .map_err(|e| Error::file(path, format!("tensor {g}: {e}")))?;
                drop(f);
                let t = q.dequantize(&Device::Cpu).map_err(|e| Error::file(path, format!("tensor {g}: {e}")))?;
                crate::io::gguf::to_hf_layout(g, t, cfg)?
            }
        };
        let (m, n) = t.dims2()?;
        let v = if t.dtype() == DType::F64 {
            t.flatten_all()?.to_vec1::<f64>()?
        } else {
            t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f64::from).collect()
        };
        Ok(Dense { v, m, n })
    }
}

/// A row-major f64 matrix: one copy per matrix in flight, viewed by faer without another.
struct Dense {
    v: Vec<f64>,
    m: usize,
    n: usize,
}

impl Dense {
    fn view(&self) -> faer::MatRef<'_, f64> {
        faer::MatRef::from_row_major_slice(&self.v, self.m, self.n)
    }
    fn frobenius(&self) -> f64 {
        self.v.iter().map(|x| x * x).sum::<f64>().sqrt()
    }
}

fn is_low(dtype: &str) -> bool {
    !matches!(dtype, "F32" | "F64")
}

/// round(w → dtype) − w: what storing W_base in the tuned checkpoint's dtype alone changes
/// (None: nothing, as f32/f64 storage of an f32 base).
fn rounding_error(w: &Dense, dtype: &str) -> Result<Option<Dense>> {
    let v: Vec<f64> = match dtype {
        "F64" => return Ok(None),
        "F32" => w.v.iter().map(|&x| (x as f32) as f64 - x).collect(),
        "BF16" => w.v.iter().map(|&x| half::bf16::from_f64(x).to_f64() - x).collect(),
        "F16" => w.v.iter().map(|&x| half::f16::from_f64(x).to_f64() - x).collect(),
        q => {
            use candle_core::quantized::{GgmlDType, QTensor};
            let g = match q {
                "Q4_0" => GgmlDType::Q4_0,
                "Q4_1" => GgmlDType::Q4_1,
                "Q5_0" => GgmlDType::Q5_0,
                "Q5_1" => GgmlDType::Q5_1,
                "Q8_0" => GgmlDType::Q8_0,
                "Q2K" => GgmlDType::Q2K,
                "Q3K" => GgmlDType::Q3K,
                "Q4K" => GgmlDType::Q4K,
                "Q5K" => GgmlDType::Q5K,
                "Q6K" => GgmlDType::Q6K,
                "Q8K" => GgmlDType::Q8K,
                _ => return Ok(None),
            };
            let t = Tensor::from_vec(w.v.iter().map(|&x| x as f32).collect::<Vec<f32>>(), (w.m, w.n), &Device::Cpu)?;
            let r = QTensor::quantize(&t, g)?.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
            r.iter().zip(&w.v).map(|(&q, &x)| q as f64 - x).collect()
        }
    };
    if v.iter().all(|&x| x == 0.0) {
        return Ok(None);
    }
    Ok(Some(Dense { v, m: w.m, n: w.n }))
}

struct Job {
    name: String,
    module_path: String,
    layer: usize,
    module: String,
    shape: (usize, usize),
}

/// Analyse every chosen matrix; `progress(done, total, name)` after each.
pub fn analyze(req: &AnalyzeRequest, progress: &(dyn Fn(usize, usize, &str) + Sync)) -> Result<Analysis> {
    let t0 = std::time::Instant::now();
    if req.tuned.is_empty() == req.adapter.is_empty() {
        return Err(Error::config(
            "analyze",
            "give exactly one of `tuned` (a full model) and `adapter` (a PEFT adapter)",
        ));
    }
    for t in &req.thresholds {
        if !(*t > 0.0 && *t <= 1.0) {
            return Err(Error::config("analyze.thresholds", format!("{t} is not in (0, 1]")));
        }
    }
    let base = Source::open(Path::new(&req.base))?;
    let cfg = match &base {
        Source::Gguf { cfg, .. } => cfg.clone(),
        Source::Safetensors { .. } => LlamaConfig::from_file(&Path::new(&req.base).join("config.json"))?,
    };
    let tuned = if req.tuned.is_empty() { None } else { Some(Source::open(Path::new(&req.tuned))?) };
    if let Some(Source::Safetensors { .. }) = &tuned {
        let tc = Path::new(&req.tuned).join("config.json");
        if tc.is_file() {
            let c = LlamaConfig::from_file(&tc)?;
            let arch = |c: &LlamaConfig| {
                (
                    c.hidden_size,
                    c.intermediate_size,
                    c.num_hidden_layers,
                    c.num_attention_heads,
                    c.kv_heads(),
                    c.head_dim(),
                )
            };
            if arch(&c) != arch(&cfg) {
                return Err(Error::file(&tc, format!("its architecture (hidden, intermediate, layers, heads, kv heads, head dim) {:?} is not the base's {:?} (hint: analyze a model against the base it was tuned from)", arch(&c), arch(&cfg))));
            }
        }
    }
    let adapter = if req.adapter.is_empty() { None } else { Some(Adapter::open(Path::new(&req.adapter))?) };
    let modules: Vec<String> =
        if req.modules.is_empty() { MODULES.iter().map(|s| s.to_string()).collect() } else { req.modules.clone() };
    for m in &modules {
        if !MODULES.contains(&m.as_str()) {
            return Err(Error::config(
                "analyze.modules",
                format!("`{m}` is not a module type (hint: {})", MODULES.join(", ")),
            ));
        }
    }
    let layers: Vec<usize> =
        if req.layers.is_empty() { (0..cfg.num_hidden_layers).collect() } else { req.layers.clone() };
    if let Some(l) = layers.iter().find(|&&l| l >= cfg.num_hidden_layers) {
        return Err(Error::config(
            "analyze.layers",
            format!("layer {l} does not exist: the model has {}", cfg.num_hidden_layers),
        ));
    }
    let shapes: HashMap<String, Vec<usize>> = crate::model::hf_shapes(&cfg).into_iter().collect();
    let mut jobs = vec![];
    for &layer in &layers {
        for m in &modules {
            let part = if m.ends_with("_proj") && ["q_proj", "k_proj", "v_proj", "o_proj"].contains(&m.as_str()) {
                "self_attn"
            } else {
                "mlp"
            };
            let module_path = format!("model.layers.{layer}.{part}.{m}");
            let name = format!("{module_path}.weight");
            let s = &shapes[&name];
            jobs.push(Job { name, module_path, layer, module: m.clone(), shape: (s[0], s[1]) });
        }
    }
    let threads = if req.threads == 0 { rayon::current_num_threads() } else { req.threads };
    // a job holds W_base, W_tuned, ΔW and the SVD's workspace: about five f64 copies
    let biggest = jobs.iter().map(|j| j.shape.0 * j.shape.1).max().unwrap_or(1);
    let per_job = 5 * 8 * biggest;
    let workers = ((req.memory_mb << 20) / per_job).clamp(1, threads.max(1)).min(jobs.len().max(1));
    let inner = spectrum::par((threads / workers).max(1));
    let done = AtomicUsize::new(0);
    let total = jobs.len();
    let one = |j: &Job| -> Result<MatrixAnalysis> {
        let r = analyze_matrix(j, &base, tuned.as_ref(), adapter.as_ref(), req, inner);
        progress(done.fetch_add(1, Ordering::SeqCst) + 1, total, &j.name);
        r
    };
    let results: Vec<Result<MatrixAnalysis>> = if workers <= 1 {
        jobs.iter().map(one).collect()
    } else {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .build()
            .map_err(|e| Error::config("analyze", e.to_string()))?;
        pool.install(|| {
            use rayon::prelude::*;
            jobs.par_iter().map(one).collect()
        })
    };
    let matrices: Vec<MatrixAnalysis> = results.into_iter().collect::<Result<_>>()?;
    let base_low = jobs.first().map(|j| base.dtype(&j.name)).transpose()?.is_some_and(|d| is_low(&d));
    let tuned_low = matrices.iter().any(|m| is_low(&m.tuned_dtype));
    let low_precision = base_low || tuned_low;
    let precision_note = if low_precision {
        format!(
            "low-precision storage ({}): ΔW between such checkpoints is largely rounding noise (one bf16 step near |w| ≈ 0.02 is ~1e-4, the size of a full-FT update at lr 1e-5), which inflates rank@; read each ΔW against its noise_floor",
            [("base", base_low), ("tuned", tuned_low)].iter().filter(|x| x.1).map(|x| x.0).collect::<Vec<_>>().join(" and ")
        )
    } else {
        "f32/f64 storage: ΔW is formed in f64 from exact stored values".into()
    };
    Ok(Analysis {
        base: req.base.clone(),
        tuned: req.tuned.clone(),
        adapter: req.adapter.clone(),
        kind: if adapter.is_some() { DeltaKind::Lora } else { DeltaKind::Dense },
        thresholds: req.thresholds.clone(),
        low_precision,
        precision_note,
        matrices,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn analyze_matrix(
    j: &Job,
    base: &Source,
    tuned: Option<&Source>,
    adapter: Option<&Adapter>,
    req: &AnalyzeRequest,
    par: faer::Par,
) -> Result<MatrixAnalysis> {
    let th = &req.thresholds;
    let w_base = base.matrix(&j.name)?;
    let (m, n) = (w_base.m, w_base.n);
    if (m, n) != j.shape {
        return Err(Error::file(
            base.path(),
            format!("{} is {m}×{n}, the config says {}×{}", j.name, j.shape.0, j.shape.1),
        ));
    }
    let f64_stats = |s: &[f64]| spectrum::stats(s, (m, n), th, req.keep, f64::EPSILON);
    let svals = |d: &Dense| spectrum::singular_values(d.view(), par);
    let zero = || f64_stats(&vec![0.0; m.min(n)]);
    let base_fro = w_base.frobenius();
    let base_stats = if req.spectra { Some(f64_stats(&svals(&w_base)?)) } else { None };
    let mut out = MatrixAnalysis {
        name: j.name.clone(),
        layer: j.layer,
        module: j.module.clone(),
        shape: [m, n],
        tuned_dtype: "none".into(),
        base: base_stats,
        tuned: None,
        delta: zero(),
        relative_change: 0.0,
        noise_floor: None,
        intruders: None,
    };
    // W_tuned, kept only when its spectrum or intruders are asked for
    let w_tuned: Option<Dense> = match (tuned, adapter) {
        (Some(t), _) => {
            let mut w_t = t.matrix(&j.name)?;
            if (w_t.m, w_t.n) != (m, n) {
                return Err(Error::file(t.path(), format!("{} is {}×{} but the base's is {m}×{n} (hint: analyze a model against the base it was tuned from)", j.name, w_t.m, w_t.n)));
            }
            out.tuned_dtype = t.dtype(&j.name)?;
            out.noise_floor = Some(match rounding_error(&w_base, &out.tuned_dtype)? {
                Some(e) => f64_stats(&svals(&e)?),
                None => zero(),
            });
            if req.spectra {
                out.tuned = Some(f64_stats(&svals(&w_t)?));
            }
            let keep = req.intruders;
            let w_t_copy = if keep { Some(Dense { v: w_t.v.clone(), m, n }) } else { None };
            // ΔW in place: W_tuned's buffer becomes W_tuned − W_base (f64)
            w_t.v.iter_mut().zip(&w_base.v).for_each(|(t, b)| *t -= b);
            let delta = w_t;
            out.delta = f64_stats(&svals(&delta)?);
            w_t_copy
        }
        (None, Some(a)) => {
            let Some((fa, fb, scale)) = a.factors(&j.module_path, (n, m))? else { return Ok(out) }; // untouched: ΔW = 0
            out.tuned_dtype = format!("{:?}", fa.dtype()).to_uppercase();
            let (fa, fb) = (fa.to_dtype(DType::F64)?, fb.to_dtype(DType::F64)?);
            let (r, _) = fa.dims2()?;
            let a_v = fa.flatten_all()?.to_vec1::<f64>()?;
            let b_v = fb.flatten_all()?.to_vec1::<f64>()?;
            let sigma = spectrum::lora_singular_values(
                faer::MatRef::from_row_major_slice(&b_v, m, r),
                faer::MatRef::from_row_major_slice(&a_v, r, n),
                scale,
                par,
            )?;
            out.delta = f64_stats(&sigma);
            if req.spectra || req.intruders {
                let ba = (fb.matmul(&fa)? * scale)?.flatten_all()?.to_vec1::<f64>()?;
                let w_t = Dense { v: ba.iter().zip(&w_base.v).map(|(d, b)| d + b).collect(), m, n };
                if req.spectra {
                    out.tuned = Some(f64_stats(&svals(&w_t)?));
                }
                Some(w_t)
            } else {
                None
            }
        }
        (None, None) => unreachable!("checked by analyze"),
    };
    out.relative_change = if base_fro > 0.0 { out.delta.frobenius / base_fro } else { 0.0 };
    if let (Some(wt), true) = (&w_tuned, req.intruders) {
        out.intruders =
            Some(spectrum::intruders(w_base.view(), wt.view(), req.intruder_top_k, req.intruder_threshold)?);
    }
    Ok(out)
}
