//! Chat templates for IFT prompts: the Jinja template a model ships (tokenizer_config.json's
//! `chat_template`, or `tokenizer.chat_template` in GGUF metadata), rendered with minijinja and
//! Python-compatible string methods, as transformers' apply_chat_template does. Called by data.rs.
use crate::base::error::{Error, Result};
use std::path::Path;

pub struct ChatTemplate {
    pub source: String,
    bos: String,
    eos: String,
    /// Compiled once: the prepare step renders one prompt per example.
    env: minijinja::Environment<'static>,
}

fn bad(e: minijinja::Error) -> Error {
    Error::config(
        "data.chat_template",
        format!("the model's chat template failed: {e} (hint: set data.chat_template = false and give data.template)"),
    )
}

fn compile(source: String, bos: String, eos: String) -> Result<ChatTemplate> {
    let mut env = minijinja::Environment::new();
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_template_owned("chat", source.clone()).map_err(bad)?;
    Ok(ChatTemplate { source, bos, eos, env })
}

fn token_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).unwrap_or_default().to_string(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// The model's chat template, if it ships one. `model_path`: an HF directory or a .gguf file.
    pub fn find(model_path: &str) -> Result<Option<ChatTemplate>> {
        if model_path.is_empty() {
            return Ok(None);
        }
        let path = Path::new(model_path);
        if path.extension().is_some_and(|e| e == "gguf") {
            let md = crate::io::gguf::metadata(path)?;
            let Some(source) = md.get("tokenizer.chat_template").and_then(|v| v.to_string().ok()).cloned() else {
                return Ok(None);
            };
            let tokens = md.get("tokenizer.ggml.tokens").and_then(|v| v.to_vec().ok());
            let text = |key: &str| -> String {
                let id = md.get(key).and_then(|v| v.to_u32().ok());
                match (id, tokens) {
                    (Some(i), Some(t)) => {
                        t.get(i as usize).and_then(|v| v.to_string().ok()).cloned().unwrap_or_default()
                    }
                    _ => String::new(),
                }
            };
            return Ok(Some(compile(
                source,
                text("tokenizer.ggml.bos_token_id"),
                text("tokenizer.ggml.eos_token_id"),
            )?));
        }
        let tc = path.join("tokenizer_config.json");
        if !tc.is_file() {
            return Ok(None);
        }
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&tc)?).map_err(|e| Error::file(&tc, e))?;
        let source = match &v["chat_template"] {
            serde_json::Value::String(s) => s.clone(),
            // a list of named templates: the default one
            serde_json::Value::Array(list) => {
                match list.iter().find(|t| t["name"] == "default").and_then(|t| t["template"].as_str()) {
                    Some(s) => s.to_string(),
                    None => return Err(Error::file(&tc, "chat_template lists no template named `default`")),
                }
            }
            _ => return Ok(None),
        };
        Ok(Some(compile(source, token_text(&v["bos_token"]), token_text(&v["eos_token"]))?))
    }

    /// A single user turn and the generation prompt: the text the response follows.
    pub fn render_user(&self, prompt: &str) -> Result<String> {
        self.render(&[("user".into(), prompt.into())])
    }

    /// A conversation (role, content) and the generation prompt: the text the next turn follows.
    pub fn render(&self, turns: &[(String, String)]) -> Result<String> {
        let messages: Vec<minijinja::Value> =
            turns.iter().map(|(role, content)| minijinja::context! { role => role, content => content }).collect();
        self.env
            .get_template("chat")
            .map_err(bad)?
            .render(minijinja::context! { messages => messages, add_generation_prompt => true, bos_token => &self.bos, eos_token => &self.eos })
            .map_err(bad)
    }
}
