//! File conventions every layer shares.
use std::path::{Path, PathBuf};

/// A llama.cpp model file (by its extension).
pub fn is_gguf(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "gguf")
}

/// Where a base model's tokenizer is: the GGUF file's own metadata, or `<dir>/tokenizer.json`.
pub fn default_tokenizer(base: &Path) -> PathBuf {
    if is_gguf(base) {
        base.to_path_buf()
    } else {
        base.join("tokenizer.json")
    }
}
