//! The prepare step (nanoGPT's prepare.py idea): records are read, formatted,
//! tokenized once and written as token shards (u32 ids + u8 loss mask, one fixed-
//! length row per sequence), cached by (dataset, tokenizer, format, template,
//! seq_len). Training memory-maps them; the data position is a sample count.
use crate::base::error::{Error, Result};
use crate::base::rng::Rng;
use crate::config::{DataConfig, DataFormat};
use memmap2::Mmap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

pub use crate::io::tokenizer::{load_tokenizer, tokenizer_json};

/// The end-of-sequence id: from the model config, else the tokenizer's usual names.
pub fn eos_id(tok: &Tokenizer, from_config: Option<u32>) -> Result<u32> {
    if let Some(id) = from_config {
        return Ok(id);
    }
    for name in ["</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|im_end|>"] {
        if let Some(id) = tok.token_to_id(name) {
            return Ok(id);
        }
    }
    Err(Error::config("model.tokenizer", "no end-of-sequence token found (hint: set eos_token_id in config.json)"))
}

fn encode(tok: &Tokenizer, text: &str, special: bool) -> Result<Vec<u32>> {
    tok.encode(text, special)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| Error::config("model.tokenizer", format!("tokenization failed: {e}")))
}

/// The token count of each text under `tokenizer` (a tokenizer.json or .gguf), no special
/// tokens: what a recipe's token budget is counted in before the data is prepared. The last
/// tokenizer used is kept, so a stream of batches loads it once.
pub fn token_counts(tokenizer: &Path, texts: &[String]) -> Result<Vec<usize>> {
    use std::sync::{Mutex, OnceLock};
    static LAST: OnceLock<Mutex<Option<(PathBuf, std::time::SystemTime, Tokenizer)>>> = OnceLock::new();
    let stamp = std::fs::metadata(tokenizer).and_then(|m| m.modified()).map_err(|e| Error::file(tokenizer, e))?;
    let mut last = LAST.get_or_init(|| Mutex::new(None)).lock().unwrap_or_else(|p| p.into_inner());
    if !last.as_ref().is_some_and(|(p, t, _)| p == tokenizer && *t == stamp) {
        *last = Some((tokenizer.to_path_buf(), stamp, crate::io::tokenizer::load_tokenizer(tokenizer)?));
    }
    let tok = &last.as_ref().map(|(_, _, t)| t).ok_or_else(|| Error::file(tokenizer, "no tokenizer"))?;
    let enc = tok.encode_batch(texts.to_vec(), false).map_err(|e| Error::Tokenizer(e.to_string()))?;
    Ok(enc.iter().map(|e| e.len()).collect())
}

/// 64-bit FNV-1a: a stable content hash for the shard cache key.
pub fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, b| (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3))
}
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Call `f` with each record's text fields, read from .jsonl (streamed line by line) or .txt;
/// returns the number of records. Chat records arrive as (rendered prompt, last turn).
fn for_each_record(
    cfg: &DataConfig,
    chat: Option<&crate::io::chat::ChatTemplate>,
    mut f: impl FnMut(String, String) -> Result<()>,
) -> Result<usize> {
    let path = Path::new(&cfg.train);
    if path.extension().is_some_and(|e| e == "txt") {
        if cfg.format != DataFormat::Cpt {
            return Err(Error::config(
                "data.train",
                "a .txt file holds raw text for cpt (hint: use .jsonl with prompt/response fields for ift)",
            ));
        }
        f(std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?, String::new())?;
        return Ok(1);
    }
    let file = std::fs::File::open(path).map_err(|e| Error::file(path, e))?;
    let mut n = 0;
    for (i, line) in std::io::BufReader::with_capacity(1 << 20, file).lines().enumerate() {
        let line = line.map_err(|e| Error::file(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let row = i + 1;
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| Error::DataRow {
            path: path.into(),
            row,
            msg: format!("not valid JSON: {e} (hint: one JSON object per line)"),
        })?;
        let field = |name: &str| -> Result<String> {
            match v.get(name) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(Error::DataRow {
                    path: path.into(),
                    row,
                    msg: format!("field `{name}` is {} not a string", kind(other)),
                }),
                None => Err(Error::DataRow {
                    path: path.into(),
                    row,
                    msg: format!(
                        "no field `{name}` (hint: set data.{} to one of {:?})",
                        field_key(cfg, name),
                        v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default()
                    ),
                }),
            }
        };
        match cfg.format {
            DataFormat::Cpt => f(field(&cfg.text_field)?, String::new())?,
            DataFormat::Ift => f(field(&cfg.prompt_field)?, field(&cfg.response_field)?)?,
            DataFormat::Chat => {
                let bad = |msg: String| Error::DataRow { path: path.into(), row, msg };
                let turns: Vec<(String, String)> = v
                    .get(&cfg.messages_field)
                    .and_then(|m| m.as_array())
                    .ok_or_else(|| bad(format!("no list `{}` (hint: set data.messages_field)", cfg.messages_field)))?
                    .iter()
                    .map(|t| {
                        match (t.get("role").and_then(|r| r.as_str()), t.get("content").and_then(|c| c.as_str())) {
                            (Some(r), Some(c)) => Ok((r.to_string(), c.to_string())),
                            _ => Err(bad("every turn needs string `role` and `content`".into())),
                        }
                    })
                    .collect::<Result<_>>()?;
                let Some(((role, last), context)) = turns.split_last() else {
                    return Err(bad("an empty conversation".into()));
                };
                if role != "assistant" || context.is_empty() {
                    return Err(bad("a conversation must end with an assistant turn after at least one other (hint: the last turn is what the model learns)".into()));
                }
                let chat = chat.ok_or_else(|| Error::config("data.format", "chat needs the model's chat template, and this model ships none (hint: use ift with data.template)"))?;
                f(chat.render(context)?, last.clone())?
            }
        }
        n += 1;
        if cfg.max_records > 0 && n >= cfg.max_records {
            break;
        }
    }
    if n == 0 {
        return Err(Error::file(path, "no records (hint: the file is empty)"));
    }
    Ok(n)
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn field_key(cfg: &DataConfig, name: &str) -> &'static str {
    if name == cfg.text_field && cfg.format == DataFormat::Cpt {
        "text_field"
    } else if name == cfg.prompt_field {
        "prompt_field"
    } else {
        "response_field"
    }
}

/// Prepared token rows: `rows` sequences of `seq_len` ids and loss masks.
pub struct Shards {
    pub dir: PathBuf,
    pub rows: usize,
    pub seq_len: usize,
    tokens: Mmap,
    mask: Mmap,
    /// What the prepare step did (also the shard directory's meta.json).
    pub report: PrepareReport,
}

/// The prepare step's account of the data, kept in meta.json and reported by every run.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, schemars::JsonSchema)]
pub struct PrepareReport {
    pub format_version: u32,
    pub source: String,
    /// Records read.
    pub documents: usize,
    /// Token rows (sequences of seq_len) written.
    pub rows: usize,
    pub seq_len: usize,
    /// Tokens the records tokenized to (CPT: with the EOS between documents).
    pub tokens: u64,
    /// Tokens that carry loss (positions 1.. of each row whose target is masked in).
    pub loss_tokens: u64,
    /// IFT examples cut at seq_len (their response is partly lost).
    pub truncated: usize,
    /// IFT examples dropped because the prompt alone fills seq_len.
    pub dropped: usize,
    /// Tokens not in any row: CPT's tail shorter than seq_len, IFT's cut and dropped tokens.
    pub dropped_tokens: u64,
}

/// Tokenize and write shards once; later calls with the same inputs reuse them.
pub fn prepare(
    cfg: &DataConfig,
    tok: &Tokenizer,
    tokenizer_path: &Path,
    eos: u32,
    chat: Option<&crate::io::chat::ChatTemplate>,
) -> Result<Shards> {
    let chat = match cfg.format {
        DataFormat::Ift if cfg.chat_template => chat,
        DataFormat::Chat => chat,
        _ => None,
    };
    let tok_bytes = tokenizer_json(tokenizer_path)?;
    let mut h = FNV_OFFSET;
    {
        // the dataset's content, streamed (it may be larger than memory)
        use std::io::Read;
        let mut f = std::fs::File::open(&cfg.train).map_err(|e| Error::file(&cfg.train, e))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(|e| Error::file(&cfg.train, e))?;
            if n == 0 {
                break;
            }
            h = fnv1a(h, &buf[..n]);
        }
    }
    h = fnv1a(h, &tok_bytes);
    let key = serde_json::to_string(&(
        cfg.format,
        &cfg.text_field,
        &cfg.prompt_field,
        &cfg.response_field,
        &cfg.messages_field,
        &cfg.template,
        cfg.seq_len,
        cfg.max_records,
        cfg.max_tokens,
        eos,
        chat.map(|c| &c.source),
        4u32,
    ))?;
    h = fnv1a(h, key.as_bytes());
    let dir = Path::new(&cfg.cache_dir).join(format!("{h:016x}"));
    if !dir.join("meta.json").is_file() {
        write_shards(cfg, tok, eos, chat, &dir)?;
    }
    open_shards(&dir)
}

/// Rows stream to disk as they are made: memory stays flat whatever the dataset's size.
struct RowWriter {
    tokens: std::io::BufWriter<std::fs::File>,
    mask: std::io::BufWriter<std::fs::File>,
    rows: usize,
    loss_tokens: u64,
}

impl RowWriter {
    fn row(&mut self, ids: &[u32], mask: &[u8]) -> Result<()> {
        for id in ids {
            self.tokens.write_all(&id.to_le_bytes())?;
        }
        self.mask.write_all(mask)?;
        // loss tokens: positions 1..t of each row predict from the previous one
        self.loss_tokens += mask[1..].iter().map(|&v| v as u64).sum::<u64>();
        self.rows += 1;
        Ok(())
    }
}

fn write_shards(
    cfg: &DataConfig,
    tok: &Tokenizer,
    eos: u32,
    chat: Option<&crate::io::chat::ChatTemplate>,
    dir: &Path,
) -> Result<()> {
    let t = cfg.seq_len;
    // a tmp of this process's own: runs sharing the cache (a sweep's cells, in several processes)
    // may prepare the same shards at once; the first to finish publishes, the others use it
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let tmp = dir.with_extension(format!("tmp-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| Error::file(&tmp, e))?;
    let create = |name: &str| -> Result<std::io::BufWriter<std::fs::File>> {
        Ok(std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(tmp.join(name)).map_err(|e| Error::file(&tmp, e))?,
        ))
    };
    let mut w = RowWriter { tokens: create("tokens.u32")?, mask: create("mask.u8")?, rows: 0, loss_tokens: 0 };
    let (mut truncated, mut dropped, mut total, mut dropped_tokens) = (0usize, 0usize, 0u64, 0u64);
    let ones = vec![1u8; t];
    let mut pending: Vec<u32> = Vec::with_capacity(2 * t); // CPT: tokens not yet in a full row
    let mut over_budget = 0usize; // records after data.max_tokens was reached: read, not used
    let result = for_each_record(cfg, chat, |a, b| {
        if cfg.max_tokens > 0 && total >= cfg.max_tokens {
            over_budget += 1;
            return Ok(());
        }
        match cfg.format {
            DataFormat::Cpt => {
                // documents joined by EOS, cut into seq_len blocks; the tail is dropped at the end
                pending.extend(encode(tok, &a, true)?);
                pending.push(eos);
                while pending.len() >= t {
                    w.row(&pending[..t], &ones)?;
                    total += t as u64;
                    pending.drain(..t);
                }
            }
            DataFormat::Ift | DataFormat::Chat => {
                // a chat template writes its own special tokens (BOS included), as apply_chat_template
                let p = match (cfg.format, chat) {
                    (DataFormat::Chat, _) => encode(tok, &a, false)?, // rendered by for_each_record
                    (_, Some(c)) => encode(tok, &c.render_user(&a)?, false)?,
                    (_, None) => encode(tok, &cfg.template.replace("{prompt}", &a), true)?,
                };
                let mut r = encode(tok, &b, false)?;
                r.push(eos);
                total += (p.len() + r.len()) as u64;
                if p.len() >= t {
                    dropped += 1; // the prompt alone fills the window: no response token to learn from
                    dropped_tokens += (p.len() + r.len()) as u64;
                    return Ok(());
                }
                if p.len() + r.len() > t {
                    truncated += 1;
                    dropped_tokens += (p.len() + r.len() - t) as u64;
                }
                let mut row: Vec<u32> = p.iter().chain(r.iter()).copied().take(t).collect();
                let mut m: Vec<u8> = (0..row.len()).map(|i| u8::from(i >= p.len())).collect();
                row.resize(t, eos);
                m.resize(t, 0);
                w.row(&row, &m)?;
            }
        }
        Ok(())
    });
    let documents = match result {
        Ok(n) => n - over_budget,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp); // nothing half-written is left looking valid
            return Err(e);
        }
    };
    if cfg.format == DataFormat::Cpt {
        total += pending.len() as u64;
        dropped_tokens = pending.len() as u64;
    }
    w.tokens.flush()?;
    w.mask.flush()?;
    if w.rows == 0 {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::config(
            "data.train",
            if dropped > 0 {
                format!("{}: no training sequence: all {dropped} examples' prompts fill data.seq_len = {t} (hint: raise data.seq_len; a chat template's system prompt counts too)", cfg.train)
            } else {
                format!(
                    "{}: no complete training sequence of {t} tokens (hint: lower data.seq_len or add data)",
                    cfg.train
                )
            },
        ));
    }
    let source = if cfg.source.is_empty() { cfg.train.clone() } else { cfg.source.clone() };
    let meta = PrepareReport {
        format_version: 1,
        source,
        documents,
        rows: w.rows,
        seq_len: t,
        tokens: total,
        loss_tokens: w.loss_tokens,
        truncated,
        dropped,
        dropped_tokens,
    };
    std::fs::write(tmp.join("meta.json"), serde_json::to_vec_pretty(&meta)?)?;
    if dir.join("meta.json").is_file() {
        // another process published the same shards first (same key: same content)
        let _ = std::fs::remove_dir_all(&tmp);
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(dir); // a half-made one without its meta.json
    if let Err(e) = std::fs::rename(&tmp, dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.join("meta.json").is_file() {
            return Err(Error::file(dir, e));
        }
    }
    Ok(())
}

fn open_shards(dir: &Path) -> Result<Shards> {
    let meta: PrepareReport = serde_json::from_slice(&std::fs::read(dir.join("meta.json"))?).map_err(|e| {
        Error::file(
            dir.join("meta.json"),
            format!("{e} (hint: delete this cache directory; it is rebuilt on the next run)"),
        )
    })?;
    let map = |name: &str| -> Result<Mmap> {
        let f = std::fs::File::open(dir.join(name)).map_err(|e| Error::file(dir.join(name), e))?;
        // SAFETY: shard files are written once (atomically renamed into place) and never modified.
        unsafe { Mmap::map(&f) }.map_err(|e| Error::file(dir.join(name), e))
    };
    let (tokens, mask) = (map("tokens.u32")?, map("mask.u8")?);
    if tokens.len() != meta.rows * meta.seq_len * 4 || mask.len() != meta.rows * meta.seq_len {
        return Err(Error::file(
            dir,
            "token shards are truncated (hint: delete this cache directory; it is rebuilt on the next run)",
        ));
    }
    Ok(Shards { dir: dir.to_path_buf(), rows: meta.rows, seq_len: meta.seq_len, tokens, mask, report: meta })
}

impl Shards {
    pub fn row(&self, i: usize) -> (Vec<u32>, &[u8]) {
        let t = self.seq_len;
        let ids = self.tokens[i * t * 4..(i + 1) * t * 4]
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (ids, &self.mask[i * t..(i + 1) * t])
    }
}

/// The data order: sample k of the run is row perm_e[k mod rows] with e = k / rows,
/// each epoch's permutation drawn from the seed. A resume needs only k.
pub struct Sampler {
    seed: u64,
    rows: usize,
    epoch: usize,
    perm: Vec<usize>,
}

impl Sampler {
    pub fn new(seed: u64, rows: usize) -> Self {
        Self { seed, rows, epoch: usize::MAX, perm: vec![] }
    }
    pub fn row_of(&mut self, k: u64) -> usize {
        let e = (k / self.rows as u64) as usize;
        if e != self.epoch {
            self.perm = Rng::fork(self.seed, 1000 + e as u64).permutation(self.rows);
            self.epoch = e;
        }
        self.perm[(k % self.rows as u64) as usize]
    }
}
