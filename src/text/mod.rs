//! Prompt text → CLIP token ids and per-token weights, without any tensor library.
//!
//! Owns the two ways a Stable Diffusion front end turns a prompt into text-encoder input:
//! [`PromptSyntax::Plain`] (diffusers: BOS + the first 75 tokens + EOS, padded to 77, the rest
//! truncated) and [`PromptSyntax::A1111`] (AUTOMATIC1111's webui: attention syntax parsed by
//! [`prompt::parse_prompt_attention`], then `tokenize_line` of `sd_hijack_clip.py`: chunks of
//! 75 tokens with comma backtracking and `BREAK`). [`tokenizer`] owns the CLIP BPE itself.
//! Invariants: every [`Chunk`] has exactly [`CONTEXT_LEN`] ids and weights, starts with BOS,
//! and has EOS right after its text (or at the end when its 75 slots are full); there is at
//! least one chunk; nothing here panics, whatever the prompt.
//!
//! Not supported: textual-inversion embeddings (the webui replaces an embedding's name by its
//! vectors while chunking; here the name is tokenised as ordinary text), the webui's
//! `emphasis = None` option, and prompt editing / `AND` (see [`prompt`]).

pub mod prompt;
pub mod tokenizer;

pub use prompt::parse_prompt_attention;
pub use tokenizer::{ClipTokenizer, bytes_to_unicode};

use std::path::PathBuf;

/// Errors of tokenizer loading and prompt parsing.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error(
        "{dir}: no tokenizer files: looked for vocab.json + merges.txt, or tokenizer.json (give the model's diffusers tokenizer/ folder)"
    )]
    MissingFiles { dir: PathBuf },
    #[error("{path}: cannot read")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {message} (the file is damaged; copy it again from the model)")]
    Json { path: PathBuf, message: String },
    #[error("{path}: key '{key}' {what}")]
    Format {
        path: PathBuf,
        key: String,
        what: String,
    },
    #[error(
        "{path}:{line}: malformed merge '{text}': each line after '#version' must be two symbols separated by a space (the file is damaged; copy it again from the model)"
    )]
    MergeLine {
        path: PathBuf,
        line: usize,
        text: String,
    },
    #[error(
        "{origin}: the vocabulary has no '{token}' token, which every CLIP tokenizer has; is this the tokenizer of a Stable Diffusion 1.x/2.x model?"
    )]
    MissingSpecial { origin: String, token: &'static str },
    #[error(
        "{origin}: pad_token '{token}' is not in the vocabulary; set it to a vocabulary token ('<|endoftext|>' for SD 1.x, '!' for SD 2.x)"
    )]
    PadToken { origin: String, token: String },
    #[error(
        "prompt weight '{text}' is not a number: write it like (word:1.2), or escape the brackets as \\( \\) to keep them as text"
    )]
    Weight { text: String },
    #[error("internal error: CLIP's pre-tokenisation pattern did not compile: {message}")]
    Pattern { message: String },
    #[error(
        "internal error: the built-in CLIP vocabulary is damaged ({what}); rebuild sdtrace, or give the model's tokenizer/ folder with --tokenizer"
    )]
    BuiltinVocab { what: String },
}

/// Token slots of a chunk between BOS and EOS.
pub const CHUNK_TOKENS: usize = 75;
/// Tokens of a chunk with BOS and EOS (CLIP's context length).
pub const CONTEXT_LEN: usize = CHUNK_TOKENS + 2;
/// The webui's default `comma_padding_backtrack`.
pub const COMMA_PADDING_BACKTRACK: usize = 20;

/// How a prompt is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptSyntax {
    /// AUTOMATIC1111's webui: `(x)`, `[x]`, `(x:w)`, `BREAK`, chunks of 75 tokens.
    A1111,
    /// diffusers: the text as is, one chunk, truncated after 75 tokens.
    Plain,
}

/// One 77-token input of the text encoder.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    /// BOS, the tokens, EOS, padding — [`CONTEXT_LEN`] ids.
    pub ids: Vec<u32>,
    /// One multiplier per id: the webui's emphasis weights, 1.0 on BOS, EOS and padding (all
    /// 1.0 for [`PromptSyntax::Plain`]). The parser computes them as `f64`; the webui turns
    /// them into a tensor with `torch.asarray(batch_multipliers)`, which gives torch's default
    /// dtype, float32 — so these are the `f64` weights rounded to nearest `f32`, exactly the
    /// values the webui multiplies the encoder output with (an fp16 encoder output is
    /// promoted to float32 by that product).
    pub weights: Vec<f32>,
}

/// A tokenised prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptTokens {
    /// At least one chunk.
    pub chunks: Vec<Chunk>,
    /// A1111: the webui's count (75 per chunk before the last, plus the last chunk's tokens,
    /// padding slots left by a `BREAK` or comma backtrack included). Plain: the prompt's
    /// tokens, truncated ones included.
    pub token_count: usize,
    /// Tokens dropped by truncation (Plain only; the webui never truncates).
    pub truncated: usize,
}

/// Tokenise `prompt` for the text encoder; A1111 uses the default comma backtrack of
/// [`COMMA_PADDING_BACKTRACK`] tokens.
///
/// # Errors
/// [`TextError::Weight`] for an A1111 weight that is not a number, as in `(word:1.2.3)`.
pub fn tokenize_prompt(
    tok: &ClipTokenizer,
    prompt: &str,
    syntax: PromptSyntax,
) -> Result<PromptTokens, TextError> {
    match syntax {
        PromptSyntax::A1111 => tokenize_a1111(tok, prompt, COMMA_PADDING_BACKTRACK),
        PromptSyntax::Plain => Ok(tokenize_plain(tok, prompt)),
    }
}

/// diffusers' tokenisation: BOS + the first 75 tokens + EOS, padded to 77 with the pad token.
pub fn tokenize_plain(tok: &ClipTokenizer, prompt: &str) -> PromptTokens {
    let ids = tok.encode(prompt);
    let kept = ids.len().min(CHUNK_TOKENS);
    let mut framed = Vec::with_capacity(CONTEXT_LEN);
    framed.push(tok.bos());
    framed.extend_from_slice(&ids[..kept]);
    framed.push(tok.eos());
    framed.resize(CONTEXT_LEN, tok.pad());
    PromptTokens {
        chunks: vec![Chunk {
            ids: framed,
            weights: vec![1.0; CONTEXT_LEN],
        }],
        token_count: ids.len(),
        truncated: ids.len() - kept,
    }
}

/// The webui's `tokenize_line` state.
struct Chunker<'a> {
    tok: &'a ClipTokenizer,
    chunks: Vec<Chunk>,
    ids: Vec<u32>,
    weights: Vec<f64>,
    token_count: usize,
    last_comma: Option<usize>,
}

impl Chunker<'_> {
    /// The webui's `next_chunk`: pad the current chunk's slots with EOS, frame it with BOS and
    /// EOS, start an empty one. Where the pad token is not EOS (SD 2.x), everything after the
    /// first EOS becomes pad, as the webui's `process_tokens` does.
    fn next_chunk(&mut self, is_last: bool) {
        self.token_count += if is_last {
            self.ids.len()
        } else {
            CHUNK_TOKENS
        };
        let (eos, pad) = (self.tok.eos(), self.tok.pad());
        let mut ids = Vec::with_capacity(CONTEXT_LEN);
        ids.push(self.tok.bos());
        ids.append(&mut self.ids);
        ids.resize(CONTEXT_LEN - 1, eos);
        ids.push(eos);
        if pad != eos
            && let Some(first_eos) = ids.iter().position(|&id| id == eos)
        {
            for id in &mut ids[first_eos + 1..] {
                *id = pad;
            }
        }
        let mut weights = Vec::with_capacity(CONTEXT_LEN);
        weights.push(1.0);
        weights.extend(self.weights.drain(..).map(|w| w as f32));
        weights.resize(CONTEXT_LEN, 1.0);
        self.last_comma = None;
        self.chunks.push(Chunk { ids, weights });
    }
}

/// The webui's tokenisation with an explicit `comma_padding_backtrack` (0 disables it): when a
/// chunk is full and its last comma is at most that many tokens back, the tokens after the
/// comma move to the next chunk.
///
/// # Errors
/// [`TextError::Weight`] for a weight that is not a number.
pub fn tokenize_a1111(
    tok: &ClipTokenizer,
    prompt: &str,
    comma_padding_backtrack: usize,
) -> Result<PromptTokens, TextError> {
    let parsed = parse_prompt_attention(prompt)?;
    let comma = tok.comma_id();
    let mut c = Chunker {
        tok,
        chunks: Vec::new(),
        ids: Vec::with_capacity(CHUNK_TOKENS),
        weights: Vec::with_capacity(CHUNK_TOKENS),
        token_count: 0,
        last_comma: None,
    };
    for (text, weight) in &parsed {
        if prompt::is_break(text, *weight) {
            c.next_chunk(false);
            continue;
        }
        for token in tok.encode(text) {
            if Some(token) == comma {
                c.last_comma = Some(c.ids.len());
            } else if comma_padding_backtrack != 0
                && c.ids.len() == CHUNK_TOKENS
                && let Some(last_comma) = c.last_comma
                && c.ids.len() - last_comma <= comma_padding_backtrack
            {
                let cut = last_comma + 1;
                let moved_ids = c.ids.split_off(cut);
                let moved_weights = c.weights.split_off(cut);
                c.next_chunk(false);
                c.ids = moved_ids;
                c.weights = moved_weights;
            }
            if c.ids.len() == CHUNK_TOKENS {
                c.next_chunk(false);
            }
            c.ids.push(token);
            c.weights.push(*weight);
        }
    }
    if !c.ids.is_empty() || c.chunks.is_empty() {
        c.next_chunk(true);
    }
    Ok(PromptTokens {
        chunks: c.chunks,
        token_count: c.token_count,
        truncated: 0,
    })
}
