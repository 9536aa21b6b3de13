//! Tokenizers from a tokenizer.json file or a .gguf file's metadata.
use crate::base::error::{Error, Result};
use crate::base::formats::is_gguf;
use std::path::Path;
use tokenizers::Tokenizer;

/// The tokenizer.json text for a tokenizer.json file, or built from a .gguf file's metadata.
pub fn tokenizer_json(path: &Path) -> Result<Vec<u8>> {
    if is_gguf(path) {
        return Ok(crate::io::gguf::tokenizer_json(path)?.into_bytes());
    }
    std::fs::read(path).map_err(|e| Error::file(path, e))
}

pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_bytes(tokenizer_json(path)?)
        .map_err(|e| Error::file(path, format!("cannot load tokenizer: {e} (hint: a Hugging Face tokenizer.json)")))
}
