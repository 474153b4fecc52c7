//! The tokenizer and chat template of a GGUF model, rebuilt from its own metadata (`tokenizer.ggml.*`,
//! `tokenizer.chat_template`), so the model file is all the server needs.
//!
//! Message text is tokenized without special tokens: a user who types `<|im_end|>` gets those characters,
//! never the control token (no prompt injection through the tokenizer). Only the template's own text can
//! produce control tokens.

use candle_core::quantized::gguf_file::{Content, Value};
use confab_llm::{ChatMessage, Role};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::LocalError;

/// GPT-2's pre-tokenizer pattern (what llama.cpp uses for `gpt2` and, after splitting digits, `smollm`).
const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// GGUF token types (`tokenizer.ggml.token_type`).
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;

/// ChatML, for models that carry no template.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + \
                      '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Private-use characters that mark where message text goes in a rendered template.
const MARK_OPEN: char = '\u{F8F0}';
const MARK_CLOSE: char = '\u{F8F1}';

pub struct ChatTokenizer {
    /// Knows the special tokens: for the template's own text, and for decoding.
    special: Tokenizer,
    /// The same vocabulary and rules without special tokens: for message text.
    plain: Tokenizer,
    template: String,
    bos: String,
    eos: String,
    /// Tokens that end the assistant's turn (end-of-turn and end-of-text).
    stop_ids: Vec<u32>,
}

/// A prompt: its token ids and the exact text they stand for.
#[derive(Debug)]
pub struct Prompt {
    pub ids: Vec<u32>,
    pub text: String,
}

fn strings(ct: &Content, key: &str) -> Result<Vec<String>, LocalError> {
    let v = ct
        .metadata
        .get(key)
        .ok_or_else(|| LocalError::Model(format!("the model has no {key}")))?;
    v.to_vec()
        .and_then(|items| items.iter().map(|s| s.to_string().cloned()).collect())
        .map_err(|e| LocalError::Model(format!("{key}: {e}")))
}

fn string(ct: &Content, key: &str) -> Option<String> {
    ct.metadata.get(key).and_then(|v| v.to_string().ok().cloned())
}

fn token_id(ct: &Content, key: &str) -> Option<u32> {
    ct.metadata.get(key).and_then(|v| match v {
        Value::U32(n) => Some(*n),
        Value::I32(n) => u32::try_from(*n).ok(),
        Value::U64(n) => u32::try_from(*n).ok(),
        Value::I64(n) => u32::try_from(*n).ok(),
        _ => None,
    })
}

fn tok_err(e: impl std::fmt::Display) -> LocalError {
    LocalError::Model(format!("tokenizer: {e}"))
}

impl ChatTokenizer {
    /// Rebuilds the tokenizer of a `gpt2`-style (byte-level BPE) GGUF model.
    pub fn from_gguf(ct: &Content) -> Result<ChatTokenizer, LocalError> {
        let model = string(ct, "tokenizer.ggml.model").unwrap_or_default();
        if model != "gpt2" {
            return Err(LocalError::Model(format!(
                "tokenizer model {model:?} is not supported (only byte-level BPE, \"gpt2\")"
            )));
        }
        let tokens = strings(ct, "tokenizer.ggml.tokens")?;
        let merges = strings(ct, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) => Ok((a.to_owned(), b.to_owned())),
                None => Err(LocalError::Model(format!("bad merge {m:?}"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let types: Vec<i32> = match ct.metadata.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .and_then(|items| items.iter().map(|t| t.to_i32()).collect())
                .map_err(tok_err)?,
            None => Vec::new(),
        };
        let vocab: Vocab = tokens.iter().cloned().zip(0u32..).collect();
        let pre = string(ct, "tokenizer.ggml.pre").unwrap_or_default();
        let build = || -> Result<Tokenizer, LocalError> {
            let bpe = BPE::builder()
                .vocab_and_merges(vocab.clone(), merges.clone())
                .build()
                .map_err(tok_err)?;
            let mut t = Tokenizer::new(bpe);
            let gpt2 = Split::new(
                SplitPattern::Regex(GPT2_PATTERN.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(tok_err)?;
            let mut steps = Vec::new();
            if matches!(pre.as_str(), "smollm" | "starcoder" | "refact") {
                // Digits one by one, as llama.cpp does for these models.
                steps.push(PreTokenizerWrapper::Split(
                    Split::new(
                        SplitPattern::Regex(r"\p{N}".into()),
                        SplitDelimiterBehavior::Isolated,
                        false,
                    )
                    .map_err(tok_err)?,
                ));
            } else if !matches!(pre.as_str(), "" | "default" | "gpt2" | "gpt-2") {
                tracing::warn!(pre = %pre, "unknown pre-tokenizer; using GPT-2's (tokens may differ slightly)");
            }
            steps.push(PreTokenizerWrapper::Split(gpt2));
            steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)));
            t.with_pre_tokenizer(Some(Sequence::new(steps)));
            t.with_decoder(Some(ByteLevelDecoder::new(false, false, false)));
            Ok(t)
        };
        let plain = build()?;
        let mut special = build()?;
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(types.iter())
            .filter(|(_, t)| matches!(**t, TOKEN_CONTROL | TOKEN_USER_DEFINED))
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        special.add_special_tokens(specials).map_err(tok_err)?;
        let name_of = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize).cloned());
        let eos_id = token_id(ct, "tokenizer.ggml.eos_token_id");
        let eos = name_of(eos_id).unwrap_or_else(|| "<|endoftext|>".into());
        let bos = name_of(token_id(ct, "tokenizer.ggml.bos_token_id")).unwrap_or_default();
        let mut stop_ids: Vec<u32> = ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>"]
            .iter()
            .filter_map(|s| special.token_to_id(s))
            .collect();
        stop_ids.extend(eos_id);
        stop_ids.extend(token_id(ct, "tokenizer.ggml.eot_token_id"));
        stop_ids.sort_unstable();
        stop_ids.dedup();
        Ok(ChatTokenizer {
            special,
            plain,
            template: string(ct, "tokenizer.chat_template").unwrap_or_else(|| CHATML.into()),
            bos,
            eos,
            stop_ids,
        })
    }

    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.special
    }

    /// Token ids of message text (never a special token).
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>, LocalError> {
        Ok(self.plain.encode(text, false).map_err(tok_err)?.get_ids().to_vec())
    }

    /// Token ids of template text (special tokens recognised).
    pub fn encode_template(&self, text: &str) -> Result<Vec<u32>, LocalError> {
        Ok(self.special.encode(text, false).map_err(tok_err)?.get_ids().to_vec())
    }

    /// Text of token ids, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String, LocalError> {
        self.special.decode(ids, false).map_err(tok_err)
    }

    /// The model's chat template applied to a conversation, ending with the assistant's turn to speak.
    pub fn prompt(&self, system: Option<&str>, messages: &[ChatMessage]) -> Result<Prompt, LocalError> {
        let mut turns: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = system.filter(|s| !s.trim().is_empty()) {
            turns.push(("system", s));
        }
        for m in messages {
            let role = match m.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            turns.push((role, &m.content));
        }
        // Render with a marker in place of each message's text, then tokenize the template's text and the
        // messages' text apart.
        let marked: Vec<minijinja::Value> = turns
            .iter()
            .enumerate()
            .map(|(i, (role, _))| {
                minijinja::context! { role => *role, content => format!("{MARK_OPEN}{i}{MARK_CLOSE}") }
            })
            .collect();
        let mut env = minijinja::Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        let rendered = env
            .render_str(
                &self.template,
                minijinja::context! {
                    messages => marked,
                    add_generation_prompt => true,
                    bos_token => &self.bos,
                    eos_token => &self.eos,
                },
            )
            .map_err(|e| LocalError::Template(e.to_string()))?;
        let mut ids = Vec::new();
        let mut text = String::with_capacity(rendered.len());
        let mut rest = rendered.as_str();
        while let Some(open) = rest.find(MARK_OPEN) {
            let (before, after) = rest.split_at(open);
            ids.extend(self.encode_template(before)?);
            text.push_str(before);
            let after = &after[MARK_OPEN.len_utf8()..];
            let close = after
                .find(MARK_CLOSE)
                .ok_or_else(|| LocalError::Template("unbalanced message marker".into()))?;
            let i: usize = after[..close]
                .parse()
                .map_err(|_| LocalError::Template("bad message marker".into()))?;
            let content = turns
                .get(i)
                .ok_or_else(|| LocalError::Template("bad message marker".into()))?
                .1;
            ids.extend(self.encode_text(content)?);
            text.push_str(content);
            rest = &after[close + MARK_CLOSE.len_utf8()..];
        }
        ids.extend(self.encode_template(rest)?);
        text.push_str(rest);
        Ok(Prompt { ids, text })
    }
}
