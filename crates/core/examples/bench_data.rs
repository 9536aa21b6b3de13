//! `bun run bench data`: the prepare step's throughput (records/s, tokens/s, MB/s) on a
//! generated JSONL corpus of 50 MB and of 200 MB, and its peak heap, which must stay flat
//! as the file grows (records are streamed, rows written as they are made).
#[path = "common/alloc.rs"]
mod alloc;
use alloc::{mib, peak, reset_peak};
use loralab_core::config::{DataConfig, DataFormat};
use loralab_core::data::{load_tokenizer, prepare};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A corpus of small Python-like documents, `mb` megabytes, deterministic.
fn corpus(path: &Path, mb: usize) -> std::io::Result<usize> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    let (mut bytes, mut n) = (0usize, 0usize);
    let mut r = loralab_core::rng::Rng::new(1);
    while bytes < mb << 20 {
        let k = r.next_u64() % 9 + 1;
        let names = ["x", "value", "count", "total", "width"];
        let a = names[(r.next_u64() % 5) as usize];
        let body: String = (0..12).map(|i| format!("def add_{k}_{i}({a}):\n    return {a} + {k}\n")).collect();
        let line = serde_json::json!({ "content": body }).to_string();
        bytes += line.len() + 1;
        n += 1;
        writeln!(w, "{line}")?;
    }
    Ok(n)
}

fn main() -> loralab_core::Result<()> {
    alloc::keep_freed_pages();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tok_path = root.join("datasets/tiny/tokenizer.json");
    let tok = load_tokenizer(&tok_path)?;
    let dir = std::env::temp_dir().join(format!("loralab-bench-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!("prepare (CPT, seq_len 256, the bundled 512-token BPE), one run each, this machine:");
    println!(
        "{:>8}{:>12}{:>14}{:>12}{:>14}{:>10}{:>14}",
        "file MB", "records", "records/s", "tokens (M)", "tokens/s", "MB/s", "peak heap MiB"
    );
    let mut peaks = vec![];
    for mb in [50usize, 200] {
        let file = dir.join(format!("corpus-{mb}.jsonl"));
        let records = corpus(&file, mb)?;
        let cfg = DataConfig {
            format: DataFormat::Cpt,
            train: file.to_string_lossy().into_owned(),
            text_field: "content".into(),
            seq_len: 256,
            cache_dir: dir.join("cache").to_string_lossy().into_owned(),
            ..Default::default()
        };
        let base = reset_peak();
        let t0 = Instant::now();
        let shards = prepare(&cfg, &tok, &tok_path, 1, None)?;
        let s = t0.elapsed().as_secs_f64();
        let p = (peak() - base) as f64;
        peaks.push(p);
        println!(
            "{mb:>8}{records:>12}{:>14.0}{:>12.1}{:>14.0}{:>10.1}{:>14}",
            records as f64 / s,
            shards.report.tokens as f64 / 1e6,
            shards.report.tokens as f64 / s,
            mb as f64 / s,
            mib(p)
        );
        drop(shards);
        let _ = std::fs::remove_file(&file);
    }
    println!("peak heap 200 MB / 50 MB: {:.2}× (flat = 1)", peaks[1] / peaks[0]);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
