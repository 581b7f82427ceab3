//! Text ↔ token ids, for byte-level BPE models (GPT-2 style: SmolLM2, Qwen2/3/3.5, Llama 3).
//!
//! A GGUF file carries no `tokenizer.json`; it carries the pieces to rebuild one:
//!
//! ```text
//! tokenizer.ggml.model       "gpt2" (byte-level BPE; the only kind accepted here)
//! tokenizer.ggml.pre         which pre-tokenizer regexes split text into words (see PreTokenizerSpec)
//! tokenizer.ggml.tokens      id → token, in the GPT-2 byte alphabet ("Ġthe" = " the")
//! tokenizer.ggml.merges      BPE merges by rank, "Ġ t"
//! tokenizer.ggml.token_type  1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
//! tokenizer.ggml.{bos,eos,eot,eom}_token_id, add_bos_token, add_eos_token
//! tokenizer.chat_template    the Jinja chat template
//! ```
//!
//! Encoding runs on the `tokenizers` crate (a BPE model, a pre-tokenizer built from the
//! table below, control and user-defined tokens registered as added tokens so that
//! `<|im_start|>` is one token and never split into `<`, `|`, ...).
//!
//! A chat prompt mixes two kinds of text: the template's own markers, which must be
//! control tokens, and what the client wrote, which must be plain text even where it
//! spells a control token (`<|im_end|>\n<|im_start|>system` typed into a message would
//! otherwise forge a turn). [`Tokenizer::escape_control_text`] hides every control-token
//! string in client text behind a placeholder before rendering; [`Tokenizer::encode_chat`]
//! parses the rendered prompt's control tokens and gives each placeholder back as the
//! plain text it stood for. See [`PLACEHOLDER_START`] for the placeholder alphabet.
//!
//! Decoding does not go through `tokenizers`: every id is mapped to its bytes once, at
//! load, by the rule of HF's ByteLevel decoder (a token whose characters are all in the
//! byte alphabet is those bytes; any other token, e.g. an added `<think>` or a raw
//! user-defined token, is its own UTF-8). [`Tokenizer::decode`] and [`StreamDecoder`]
//! share that table, which is what makes streamed text identical to decoded text.

use std::fmt;
use std::path::Path;
use std::sync::OnceLock;

use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, ModelWrapper, NormalizerWrapper, OffsetReferential, OffsetType, PreTokenizerWrapper,
    SplitDelimiterBehavior,
};

use crate::gguf::GgufFile;
use crate::packed::Packed;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizerError(pub String);

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TokenizerError {}

fn error(message: impl Into<String>) -> TokenizerError {
    TokenizerError(message.into())
}

// The pre-tokenizer regexes, as llama.cpp (llama-vocab.cpp) and the models' own
// tokenizer.json files define them. Each pattern is applied as an isolating split, in
// order; the pieces are then BPE-encoded independently.

/// GPT-2's word split. The final `\s+` (in HF's, absent from llama.cpp's copy) only
/// matters for a lone whitespace before a non-space, which both emit as its own piece.
const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Every digit its own piece (SmolLM/StarCoder), applied before the GPT-2 split.
const SINGLE_DIGITS_PATTERN: &str = r"\p{N}";
/// Llama 3: case-insensitive contractions, letters may take one leading non-letter,
/// numbers in runs of at most three, newlines kept together.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2/Qwen3: Llama 3's split with single digits.
const QWEN2_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen3.5: Qwen2's, but letter runs absorb combining marks (`\p{M}`), so "é" written as
/// e + U+0301 stays in its word instead of becoming a punctuation piece.
const QWEN35_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How one family of models splits text before BPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreTokenizerSpec {
    /// Isolating regex splits, applied in order.
    pub patterns: &'static [&'static str],
    /// Unicode NFC before splitting. Qwen's tokenizer.json files declare an NFC
    /// normalizer (llama.cpp skips it); it only changes text that is not already NFC.
    pub nfc: bool,
    /// A word that is itself in the vocabulary is that token, merges or not (Llama 3's
    /// tokenizer.json sets `ignore_merges`; llama.cpp does the same for its pre type).
    pub ignore_merges: bool,
    /// Whether a BOS is prepended when the file does not say (`add_bos_token` absent).
    pub default_add_bos: bool,
}

impl PreTokenizerSpec {
    const GPT2: PreTokenizerSpec = PreTokenizerSpec {
        patterns: &[GPT2_PATTERN],
        nfc: false,
        ignore_merges: false,
        default_add_bos: false,
    };

    /// The spec for a `tokenizer.ggml.pre` value, or `None` for one this table does not know.
    pub fn for_gguf_pre(pre: &str) -> Option<PreTokenizerSpec> {
        let spec = |patterns, nfc, ignore_merges, default_add_bos| PreTokenizerSpec {
            patterns,
            nfc,
            ignore_merges,
            default_add_bos,
        };
        Some(match pre {
            "default" | "gpt2" | "gpt-2" | "mpt" | "olmo" | "jais" => PreTokenizerSpec::GPT2,
            "smollm" | "starcoder" | "refact" | "codeshell" | "exaone" | "minerva" => {
                spec(&[SINGLE_DIGITS_PATTERN, GPT2_PATTERN], false, false, false)
            }
            "llama-bpe" | "llama3" | "llama-v3" | "falcon3" => spec(&[LLAMA3_PATTERN], false, true, true),
            "dbrx" | "smaug-bpe" => spec(&[LLAMA3_PATTERN], false, false, false),
            "qwen2" | "deepseek-r1-qwen" => spec(&[QWEN2_PATTERN], true, false, false),
            "qwen35" => spec(&[QWEN35_PATTERN], true, false, false),
            _ => return None,
        })
    }

    fn pre_tokenizer(&self) -> Result<PreTokenizerWrapper, TokenizerError> {
        let mut steps: Vec<PreTokenizerWrapper> = Vec::with_capacity(self.patterns.len() + 1);
        for pattern in self.patterns {
            let split = Split::new(
                SplitPattern::Regex(pattern.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| error(format!("pre-tokenizer regex {pattern:?} does not compile: {e}")))?;
            steps.push(split.into());
        }
        // The regexes above already split words; ByteLevel only maps bytes to the alphabet.
        steps.push(ByteLevel::new(false, false, false).into());
        Ok(Sequence::new(steps).into())
    }
}

/// What a token is, from GGUF `token_type` or HF's added-token flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    Normal,
    /// Control and unknown tokens: parsed from text only when asked, skipped by
    /// `decode(.., skip_special = true)`.
    Special,
    /// User-defined added tokens (Qwen's `<think>`): always parsed as one token, always decoded.
    UserDefined,
}

/// Names of tokens that end an assistant turn in the chat formats we know, beyond the
/// file's own eos/eot/eom ids. Only those present as added tokens count.
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|im_end|>",            // ChatML: SmolLM2, Qwen
    "<|endoftext|>",         // GPT-2 style document end; Qwen's pad/eos
    "<|eot_id|>",            // Llama 3
    "<|eom_id|>",            // Llama 3.1 tool call
    "<|end_of_text|>",       // Llama 3 base
    "<end_of_turn>",         // Gemma
    "<|end|>",               // Phi-3
    "<|return|>",            // gpt-oss
    "<end_of_utterance>",    // SmolVLM
    "<｜end▁of▁sentence｜>", // DeepSeek
];

/// A byte-level BPE tokenizer with the special-token facts the engine needs.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// A copy of `inner` that reads special tokens as plain text, for
    /// `encode(.., parse_special = false)`. `tokenizers` keeps that switch inside the
    /// tokenizer, and `encode` takes `&self`; the copy (vocab and merges, tens of MB for
    /// Qwen) is made only if someone asks for it.
    literal_specials: OnceLock<tokenizers::Tokenizer>,
    /// id → the bytes it decodes to.
    token_bytes: Packed,
    kinds: Vec<TokenKind>,
    bos: Option<u32>,
    eos: Option<u32>,
    /// Further ids that end a turn by the model's own metadata (eot, eom, generation_config eos list).
    extra_stop_ids: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<String>,
    /// What escaping and measuring client text need, derived once from the vocabulary.
    text: TextFacts,
}

/// Facts of a vocabulary derived once at load, whatever format it came from.
struct TextFacts {
    /// The text of every control token, longest first (so that the longest match wins,
    /// as in `tokenizers`' own matcher), for [`Tokenizer::escape_control_text`].
    control_texts: Vec<String>,
    /// The characters an escape may start at: [`PLACEHOLDER_START`] and the first
    /// character of each control token (a handful: `<`, `[`, ...).
    escape_starts: Vec<char>,
    /// Whether text may be cut before a space between two ASCII letters (see
    /// [`Tokenizer::chunks`]): no added token holds a space (it could match across
    /// the cut) or ends with an ASCII letter and strips the whitespace after it
    /// (it would take the space behind the cut).
    cuttable: bool,
    /// The bytes of the longest token: no token covers more text than this, which is
    /// what bounds a text's token count from below ([`Tokenizer::fewest_tokens`]).
    longest_token_bytes: usize,
}

impl TextFacts {
    fn of(inner: &tokenizers::Tokenizer, token_bytes: &Packed) -> TextFacts {
        let control_texts = control_texts(inner);
        TextFacts {
            escape_starts: escape_starts(&control_texts),
            control_texts,
            cuttable: !inner.get_added_tokens_decoder().values().any(|token| {
                token.content.contains(' ')
                    || (token.rstrip && token.content.ends_with(|c: char| c.is_ascii_alphabetic()))
            }),
            longest_token_bytes: longest_token_bytes(token_bytes),
        }
    }
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

impl Tokenizer {
    /// Rebuilds the tokenizer from a GGUF file's `tokenizer.*` metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        let model = file
            .get_str("tokenizer.ggml.model")
            .ok_or_else(|| error("the GGUF file has no tokenizer.ggml.model: it carries no tokenizer"))?;
        if model != "gpt2" {
            return Err(error(format!(
                "tokenizer.ggml.model is {model:?}: only \"gpt2\" (byte-level BPE) tokenizers are supported"
            )));
        }

        let tokens = string_array(file, "tokenizer.ggml.tokens")?;
        if tokens.is_empty() || tokens.len() > u32::MAX as usize {
            return Err(error(format!("tokenizer.ggml.tokens has {} entries", tokens.len())));
        }
        let kinds = match file.metadata("tokenizer.ggml.token_type") {
            None => vec![TokenKind::Normal; tokens.len()],
            Some(value) => {
                let types = value
                    .as_array()
                    .ok_or_else(|| error("tokenizer.ggml.token_type is not an array"))?;
                if types.len() != tokens.len() {
                    return Err(error(format!(
                        "tokenizer.ggml.token_type has {} entries for {} tokens",
                        types.len(),
                        tokens.len()
                    )));
                }
                types
                    .iter()
                    .map(|t| match t.as_i64() {
                        Some(2 | 3) => Ok(TokenKind::Special),
                        Some(4) => Ok(TokenKind::UserDefined),
                        Some(_) => Ok(TokenKind::Normal),
                        None => Err(error("tokenizer.ggml.token_type holds a non-integer")),
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        let merges = match file.metadata("tokenizer.ggml.merges") {
            None => Merges::new(),
            Some(_) => string_array(file, "tokenizer.ggml.merges")?
                .iter()
                .map(|merge| {
                    merge
                        .split_once(' ')
                        .map(|(a, b)| (a.to_string(), b.to_string()))
                        .ok_or_else(|| error(format!("tokenizer.ggml.merges entry {merge:?} is not \"left right\"")))
                })
                .collect::<Result<Merges, _>>()?,
        };

        let pre = file.get_str("tokenizer.ggml.pre").unwrap_or("default");
        let spec = PreTokenizerSpec::for_gguf_pre(pre).unwrap_or_else(|| {
            // llama.cpp refuses unknown pre types; a gateway would rather serve the model
            // with the most common split than not at all. Ids can differ from the
            // model's own tokenizer around digits, contractions and newlines.
            tracing::warn!(
                pre,
                "unknown tokenizer.ggml.pre; falling back to the GPT-2 pre-tokenizer"
            );
            PreTokenizerSpec::GPT2
        });

        // Later duplicates win, as in llama.cpp; duplicates do not occur in converted HF vocabs.
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, t)| (t.to_string(), id as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(spec.ignore_merges)
            .build()
            .map_err(|e| error(format!("cannot build the BPE model: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        if spec.nfc {
            inner.with_normalizer(Some(NFC)).map_err(|e| error(e.to_string()))?;
        }
        inner.with_pre_tokenizer(Some(spec.pre_tokenizer()?));
        let added = tokens.iter().zip(&kinds).filter_map(|(token, kind)| match kind {
            TokenKind::Normal => None,
            TokenKind::Special => Some(AddedToken::from(token.to_string(), true).normalized(false)),
            TokenKind::UserDefined => Some(AddedToken::from(token.to_string(), false).normalized(false)),
        });
        inner
            .add_tokens(added)
            .map_err(|e| error(format!("cannot register added tokens: {e}")))?;

        let token_id = |key: &str| -> Result<Option<u32>, TokenizerError> {
            match file.metadata(key) {
                None => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(id) if id < tokens.len() as u64 => Ok(Some(id as u32)),
                    _ => Err(error(format!("{key} is {v:?}, not a token id below {}", tokens.len()))),
                },
            }
        };
        let bos = token_id("tokenizer.ggml.bos_token_id")?;
        let eos = token_id("tokenizer.ggml.eos_token_id")?;
        let extra_stop_ids = [
            token_id("tokenizer.ggml.eot_token_id")?,
            token_id("tokenizer.ggml.eom_token_id")?,
        ]
        .into_iter()
        .flatten();
        let add_bos = file
            .get_bool("tokenizer.ggml.add_bos_token")
            .unwrap_or(spec.default_add_bos);
        let add_eos = file.get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false);
        if (add_bos && bos.is_none()) || (add_eos && eos.is_none()) {
            return Err(error("add_bos_token/add_eos_token is set but the token id is not"));
        }

        let token_bytes: Packed = tokens.iter().map(|t| token_to_bytes(t)).collect();
        Ok(Tokenizer {
            text: TextFacts::of(&inner, &token_bytes),
            inner,
            literal_specials: OnceLock::new(),
            token_bytes,
            kinds,
            bos,
            eos,
            extra_stop_ids: extra_stop_ids.collect(),
            add_bos,
            add_eos,
            chat_template: file.get_str("tokenizer.chat_template").map(str::to_string),
        })
    }

    /// Loads a Hugging Face `tokenizer.json` (byte-level BPE only). Files next to it
    /// fill in what tokenizer.json does not say:
    /// - `tokenizer_config.json`: `bos_token`, `eos_token`, `add_bos_token`,
    ///   `add_eos_token`, `chat_template`;
    /// - `chat_template.jinja`: the chat template, preferred as transformers prefers it;
    /// - `generation_config.json`: `eos_token_id` (one id or a list), added to the end-of-turn ids.
    pub fn from_tokenizer_json(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| error(format!("cannot load {}: {e}", path.display())))?;
        if !matches!(inner.get_model(), ModelWrapper::BPE(_))
            || !matches!(inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_)))
        {
            return Err(error(format!(
                "{} is not a byte-level BPE tokenizer (BPE model with a ByteLevel decoder); only those are supported",
                path.display()
            )));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let config = read_json_if_present(&dir.join("tokenizer_config.json"))?;
        let generation_config = read_json_if_present(&dir.join("generation_config.json"))?;

        let vocab = inner.get_vocab(true);
        let vocab_size = vocab.values().max().map_or(0, |&max| max as usize + 1);
        let added = inner.get_added_tokens_decoder();
        let token_bytes: Packed = (0..vocab_size as u32)
            .map(|id| {
                inner
                    .id_to_token(id)
                    .map_or_else(Default::default, |t| token_to_bytes(&t))
            })
            .collect();
        let kinds = (0..vocab_size as u32)
            .map(|id| match added.get(&id) {
                None => TokenKind::Normal,
                Some(token) if token.special => TokenKind::Special,
                Some(_) => TokenKind::UserDefined,
            })
            .collect();

        let config_token = |key: &str| -> Option<u32> {
            let value = config.as_ref()?.get(key)?;
            let content = value.as_str().or_else(|| value.get("content")?.as_str())?;
            inner.token_to_id(content)
        };
        let bos = config_token("bos_token");
        let eos = config_token("eos_token");
        let config_flag = |key: &str| config.as_ref()?.get(key)?.as_bool();
        // Without an explicit flag, the post-processor decides, as it does in transformers:
        // encoding nothing with special tokens on shows what it adds.
        let probe = inner.encode_fast("", true).map_err(|e| error(e.to_string()))?;
        let probe = probe.get_ids();
        let add_bos = config_flag("add_bos_token").unwrap_or(bos.is_some() && probe.first() == bos.as_ref());
        let add_eos = config_flag("add_eos_token").unwrap_or(eos.is_some() && probe.last() == eos.as_ref());

        let extra_stop_ids = match generation_config.as_ref().and_then(|c| c.get("eos_token_id")) {
            Some(serde_json::Value::Array(ids)) => ids.iter().filter_map(|id| id.as_u64()).collect(),
            Some(id) => id.as_u64().into_iter().collect(),
            None => Vec::new(),
        };
        let extra_stop_ids = extra_stop_ids
            .into_iter()
            .filter(|&id| id < vocab_size as u64)
            .map(|id| id as u32);

        let template_file = dir.join("chat_template.jinja");
        let chat_template = if template_file.is_file() {
            Some(
                std::fs::read_to_string(&template_file)
                    .map_err(|e| error(format!("cannot read {}: {e}", template_file.display())))?,
            )
        } else {
            config
                .as_ref()
                .and_then(|c| chat_template_from_config(c.get("chat_template")?))
        };

        Ok(Tokenizer {
            text: TextFacts::of(&inner, &token_bytes),
            inner,
            literal_specials: OnceLock::new(),
            token_bytes,
            kinds,
            bos,
            eos,
            extra_stop_ids: extra_stop_ids.collect(),
            add_bos,
            add_eos,
            chat_template,
        })
    }

    /// Text → ids. With `parse_special`, special-token text such as `<|im_start|>` becomes
    /// its token (what a rendered chat prompt needs); without it, it is encoded as the
    /// plain characters it is (what untrusted user text needs). User-defined tokens are
    /// always parsed, as llama.cpp and HF do.
    ///
    /// BOS is prepended only when the model asks (`add_bos_token`), and not when the text
    /// already starts with it: chat templates often write `{{ bos_token }}` themselves,
    /// and a doubled BOS degrades output (llama.cpp strips it; HF skips adding it).
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let tokenizer = if parse_special { &self.inner } else { self.literal() };
        let encoding = tokenizer
            .encode_fast(text, false)
            .map_err(|e| error(format!("cannot encode: {e}")))?;
        Ok(self.with_bos_and_eos(encoding.get_ids()))
    }

    /// Text → ids as the model's tokenizer prepares a text on its own (an
    /// embedding input, as transformers' `tokenizer(text)` does): through the
    /// `tokenizer.json` post-processor when there is one (Qwen3-Embedding's
    /// appends `<|endoftext|>`, the token its last-token pooling reads), else
    /// by the BOS/EOS flags (a GGUF's `add_bos_token`/`add_eos_token`, as
    /// llama.cpp reads them).
    pub fn encode_document(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        if self.inner.get_post_processor().is_none() {
            return self.encode(text, true);
        }
        let encoding = self
            .inner
            .encode_fast(text, true)
            .map_err(|e| error(format!("cannot encode: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// `text` with every control-token string in it (`<|im_end|>`, ...) and every
    /// [`PLACEHOLDER_START`] replaced by a placeholder, or `None` when it holds neither
    /// (the common case, which costs one scan and no copy). Apply it to every string a
    /// client supplied before it goes through a chat template, then encode the rendered
    /// prompt with [`Tokenizer::encode_chat`], which reads each placeholder back as the
    /// plain text it replaced. User-defined tokens (`<think>`) are left alone: HF and
    /// llama.cpp parse them in any text, and they cannot end a turn.
    pub fn escape_control_text(&self, text: &str) -> Option<String> {
        let mut out: Option<String> = None;
        let mut copied_up_to = 0;
        let mut at = 0;
        while let Some(found) = text[at..].find(|c: char| self.text.escape_starts.contains(&c)) {
            let start = at + found;
            let rest = &text[start..];
            let replaced = if rest.starts_with(PLACEHOLDER_START) {
                Some((PLACEHOLDER_START.len_utf8(), None))
            } else {
                self.text
                    .control_texts
                    .iter()
                    .position(|control| rest.starts_with(control.as_str()))
                    .map(|index| (self.text.control_texts[index].len(), Some(index)))
            };
            match replaced {
                Some((matched_bytes, index)) => {
                    let out = out.get_or_insert_with(|| String::with_capacity(text.len() + 16));
                    out.push_str(&text[copied_up_to..start]);
                    out.push(PLACEHOLDER_START);
                    if let Some(index) = index {
                        out.push_str(&index.to_string());
                    }
                    out.push(PLACEHOLDER_END);
                    at = start + matched_bytes;
                    copied_up_to = at;
                }
                None => at = start + rest.chars().next().map_or(1, char::len_utf8),
            }
        }
        let mut out = out?;
        out.push_str(&text[copied_up_to..]);
        Some(out)
    }

    /// [`Tokenizer::escape_control_text`] applied to every string in `value` (messages,
    /// template kwargs), object keys included: any of them may be printed by some
    /// template (content, names, tool-call arguments through `tojson`, ...). Recursion is
    /// as deep as the JSON, which `serde_json` parses to a depth of 128 at most.
    pub fn escape_control_text_in(&self, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(text) => {
                if let Some(escaped) = self.escape_control_text(text) {
                    *text = escaped;
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|item| self.escape_control_text_in(item)),
            serde_json::Value::Object(fields) => {
                if fields.keys().any(|key| self.escape_control_text(key).is_some()) {
                    *fields = std::mem::take(fields)
                        .into_iter()
                        .map(|(key, value)| (self.escape_control_text(&key).unwrap_or(key), value))
                        .collect();
                }
                fields.values_mut().for_each(|field| self.escape_control_text_in(field));
            }
            serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => {}
        }
    }

    /// Ids of a chat prompt rendered from text escaped with
    /// [`Tokenizer::escape_control_text`]: the control tokens the template wrote are
    /// parsed, every placeholder is encoded as the plain text it replaced. The result is
    /// what `encode(prompt, true)` gives for the template's text and
    /// `encode(text, false)` gives for the client's, in one sequence: `tokenizers`
    /// encodes the text between added tokens piece by piece anyway, so the pieces here
    /// are the pieces it would see. BOS/EOS as in [`Tokenizer::encode`].
    ///
    /// Before any work, the prompt's text is measured: when it is at least
    /// `token_limit` tokens long by [`Tokenizer::fewest_tokens`], nothing is encoded
    /// and the answer is [`ChatEncodeError::TooLong`]. The prompt is then split into
    /// added tokens and text, and the text encoded, a chunk at a time (see
    /// `Tokenizer::chunks`), and encoding stops as soon as the ids reach
    /// `token_limit`: a prompt too long for the context costs the work and memory of
    /// about one context's worth of text, not of all of it.
    pub fn encode_chat(&self, rendered: &str, token_limit: usize) -> Result<Vec<u32>, ChatEncodeError> {
        // Every token's text, control tokens' included, is at most the longest
        // token's bytes: the whole prompt's text bounds its tokens.
        if let Some(fewest) = self.fewest_tokens(self.restored_len(rendered))
            && fewest >= token_limit
        {
            return Err(ChatEncodeError::TooLong {
                at_least_tokens: fewest,
            });
        }
        let literal = self.literal();
        let mut body = Vec::new();
        for chunk in self.chunks(rendered) {
            // Splitting out the added tokens holds ~20 bytes per byte of text
            // (offsets for every byte): one chunk's worth at a time.
            let pieces = self
                .inner
                .get_added_vocabulary()
                .extract_and_normalize(None::<&NormalizerWrapper>, chunk);
            for (text, _, tokens) in pieces.get_splits(OffsetReferential::Original, OffsetType::Byte) {
                match tokens {
                    Some(tokens) => body.extend(tokens.iter().map(|t| t.id)),
                    None => {
                        let text = self.restore_control_text(text);
                        let encoding = literal
                            .encode_fast(text.as_ref(), false)
                            .map_err(|e| ChatEncodeError::Tokenizer(error(format!("cannot encode: {e}"))))?;
                        body.extend_from_slice(encoding.get_ids());
                    }
                }
            }
            // Chunks encode exactly as the whole would, so the ids so far are a
            // prefix of the prompt's: at least this many tokens.
            if body.len() >= token_limit {
                return Err(ChatEncodeError::TooLong {
                    at_least_tokens: body.len(),
                });
            }
        }
        Ok(self.with_bos_and_eos(&body))
    }

    /// `text` cut into pieces of about [`TOKENIZE_CHUNK_BYTES`] that split into
    /// added tokens and encode, one after the other, to exactly the ids of the
    /// whole. Cuts fall only before a space that sits between two ASCII letters
    /// (`word| word`): every pre-tokenizer here ends a word at that space and
    /// starts the next with it (GPT-2's ` ?\p{L}+`, Llama 3's and Qwen's
    /// `[^\r\n\p{L}\p{N}]?\p{L}+`), no lookahead reaches across it, NFC
    /// composes nothing across it, and no added token matches across it unless
    /// one holds a space or strips the whitespace after it (see
    /// [`TextFacts::cuttable`]). Text with no such space (a single huge word, CJK
    /// without spaces) is one piece; so is all text when the vocabulary is not
    /// cuttable.
    fn chunks<'t>(&self, text: &'t str) -> impl Iterator<Item = &'t str> {
        let cuttable = self.text.cuttable;
        let mut rest = text;
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let cut = if cuttable && rest.len() > TOKENIZE_CHUNK_BYTES {
                word_boundary_after(rest, TOKENIZE_CHUNK_BYTES).unwrap_or(rest.len())
            } else {
                rest.len()
            };
            let (chunk, after) = rest.split_at(cut);
            rest = after;
            Some(chunk)
        })
    }

    /// The bytes of `rendered` once its placeholders are read back, counted
    /// without building it.
    fn restored_len(&self, rendered: &str) -> usize {
        let mut len = rendered.len();
        let mut rest = rendered;
        while let Some(start) = rest.find(PLACEHOLDER_START) {
            let after = &rest[start + PLACEHOLDER_START.len_utf8()..];
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            rest = after;
            if !after[digits..].starts_with(PLACEHOLDER_END) {
                continue;
            }
            let restored = match digits {
                0 => Some(PLACEHOLDER_START.len_utf8()),
                _ => after[..digits]
                    .parse::<usize>()
                    .ok()
                    .and_then(|index| self.text.control_texts.get(index))
                    .map(String::len),
            };
            if let Some(restored) = restored {
                let placeholder = PLACEHOLDER_START.len_utf8() + digits + PLACEHOLDER_END.len_utf8();
                len = len - placeholder + restored;
                rest = &after[digits + PLACEHOLDER_END.len_utf8()..];
            }
        }
        len
    }

    /// The text a piece of a rendered prompt stood for before
    /// [`Tokenizer::escape_control_text`]. A placeholder the template cut or altered is
    /// left as it is: private-use characters and digits, plain text either way.
    fn restore_control_text<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        if !text.contains(PLACEHOLDER_START) {
            return std::borrow::Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find(PLACEHOLDER_START) {
            out.push_str(&rest[..start]);
            let after = &rest[start + PLACEHOLDER_START.len_utf8()..];
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            let restored = match after[digits..].starts_with(PLACEHOLDER_END) {
                false => None,
                true if digits == 0 => Some(PLACEHOLDER_START.to_string()),
                true => after[..digits]
                    .parse::<usize>()
                    .ok()
                    .and_then(|index| self.text.control_texts.get(index).cloned()),
            };
            match restored {
                Some(restored) => {
                    out.push_str(&restored);
                    rest = &after[digits + PLACEHOLDER_END.len_utf8()..];
                }
                None => {
                    out.push(PLACEHOLDER_START);
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        std::borrow::Cow::Owned(out)
    }

    /// The fewest tokens `text_bytes` bytes of text can encode to, or `None` when this
    /// tokenizer's normalizer may shrink text by a factor we cannot bound.
    ///
    /// Byte-level BPE is lossless: the tokens' bytes, end to end, are the (normalized)
    /// text, and no token holds more than `longest_token_bytes`; so B bytes are at least
    /// ⌈B / longest⌉ tokens, whatever the text. That bound is sound (it never refuses a
    /// text that would fit), unlike a bytes-per-token average measured on real text,
    /// which a run of spaces or `=` beats by 10x or more. NFC (Qwen) composes up to
    /// three characters into one, the worst being a Hangul syllable written as its
    /// three 3-byte jamo (9 bytes to 3), so it divides the bound by 3.
    pub fn fewest_tokens(&self, text_bytes: usize) -> Option<usize> {
        let shrink = match self.inner.get_normalizer() {
            None => 1,
            Some(NormalizerWrapper::NFC(_)) => NFC_WORST_SHRINK,
            Some(_) => return None,
        };
        Some(text_bytes.div_ceil(self.text.longest_token_bytes.max(1) * shrink))
    }

    /// The bytes of the longest token (see [`Tokenizer::fewest_tokens`]).
    pub fn longest_token_bytes(&self) -> usize {
        self.text.longest_token_bytes
    }

    fn literal(&self) -> &tokenizers::Tokenizer {
        self.literal_specials.get_or_init(|| {
            let mut literal = self.inner.clone();
            literal.set_encode_special_tokens(true);
            literal
        })
    }

    fn with_bos_and_eos(&self, body: &[u32]) -> Vec<u32> {
        let mut ids = Vec::with_capacity(body.len() + 2);
        if let Some(bos) = self.bos.filter(|&bos| self.add_bos && body.first() != Some(&bos)) {
            ids.push(bos);
        }
        ids.extend_from_slice(body);
        if let Some(eos) = self.eos.filter(|&eos| self.add_eos && body.last() != Some(&eos)) {
            ids.push(eos);
        }
        ids
    }

    /// Ids → text. Bytes that are not valid UTF-8 (a multi-byte character cut by the end
    /// of `ids`) become U+FFFD. With `skip_special`, control tokens (BOS, `<|im_end|>`, ...)
    /// are left out; user-defined tokens such as `<think>` are kept. Ids outside the
    /// vocabulary decode to nothing.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            bytes.extend_from_slice(self.bytes_for(id, skip_special));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The bytes of one token (what it contributes to decoded text).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.token_bytes.get(id as usize)
    }

    fn bytes_for(&self, id: u32, skip_special: bool) -> &[u8] {
        match self.token_bytes.get(id as usize) {
            Some(_) if skip_special && self.is_special(id) => &[],
            Some(bytes) => bytes,
            None => &[],
        }
    }

    /// Number of token ids (rows of the embedding), including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// The id of a token by its vocabulary string: the byte-alphabet form for normal
    /// tokens (`"Ġthe"`), the literal text for added ones (`"<|im_end|>"`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Control (and unknown) tokens: the ones `decode(.., true)` leaves out.
    pub fn is_special(&self, id: u32) -> bool {
        self.kinds.get(id as usize) == Some(&TokenKind::Special)
    }

    pub fn bos_token(&self) -> Option<(u32, String)> {
        self.bos.map(|id| (id, self.decode(&[id], false)))
    }

    pub fn eos_token(&self) -> Option<(u32, String)> {
        self.eos.map(|id| (id, self.decode(&[id], false)))
    }

    /// Whether `encode` prepends BOS.
    pub fn add_bos_token(&self) -> bool {
        self.add_bos
    }

    /// Tokens that end a turn: eos, the file's eot/eom (and generation_config's eos list),
    /// and the end-of-turn tokens of the chat formats we know (`<|im_end|>`,
    /// `<|endoftext|>`, `<|eot_id|>`, `<end_of_turn>`, ...) when the vocabulary has them as
    /// added tokens. Sorted, without duplicates.
    pub fn end_of_turn_ids(&self) -> Vec<u32> {
        let named = END_OF_TURN_TOKENS
            .iter()
            .filter_map(|name| self.token_id(name))
            .filter(|&id| {
                self.kinds
                    .get(id as usize)
                    .is_some_and(|kind| *kind != TokenKind::Normal)
            });
        let mut ids: Vec<u32> = self
            .eos
            .into_iter()
            .chain(self.extra_stop_ids.iter().copied())
            .chain(named)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The model's Jinja chat template, if the file has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
}

/// Starts a placeholder in escaped client text; [`PLACEHOLDER_END`] ends it. Between
/// them: the index of a control token in the tokenizer's list (the placeholder stands
/// for that token's text), or nothing (it stands for a `PLACEHOLDER_START` the client
/// wrote). Since every `PLACEHOLDER_START` in client text is itself escaped, each one
/// in a rendered prompt starts a placeholder or was written by the template, and the
/// mapping back is exact. Private-use characters: no template writes them, and no
/// special token contains them.
pub const PLACEHOLDER_START: char = '\u{E000}';
/// Ends a placeholder (see [`PLACEHOLDER_START`]).
pub const PLACEHOLDER_END: char = '\u{E001}';

/// Long text is encoded in chunks of about this many bytes (see
/// [`Tokenizer::encode_chat`]). `tokenizers` holds ~100 bytes of working memory
/// per byte of text (offsets for every byte, a string per token), so a chunk
/// costs a few MB; and a context window of prose (8192 tokens at ~4.5 bytes a
/// token, ~36 KB) is one or two chunks, so a prompt that fits is barely cut.
pub const TOKENIZE_CHUNK_BYTES: usize = 64 * 1024;

/// The first cut at or after `from` bytes into `text`: the byte offset of a space
/// between two ASCII letters.
fn word_boundary_after(text: &str, from: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    (from.max(1)..bytes.len().saturating_sub(1))
        .find(|&i| bytes[i] == b' ' && bytes[i - 1].is_ascii_alphabetic() && bytes[i + 1].is_ascii_alphabetic())
}

/// The most NFC can shrink a text's UTF-8 bytes: a Hangul syllable's three
/// 3-byte jamo compose into one 3-byte syllable.
const NFC_WORST_SHRINK: usize = 3;

/// Why a chat prompt was not encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatEncodeError {
    /// The prompt is at least this many tokens, not under the limit asked for.
    TooLong {
        at_least_tokens: usize,
    },
    Tokenizer(TokenizerError),
}

impl fmt::Display for ChatEncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChatEncodeError::TooLong { at_least_tokens } => {
                write!(f, "the prompt is at least {at_least_tokens} tokens")
            }
            ChatEncodeError::Tokenizer(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for ChatEncodeError {}

/// The text of every control token (added as special), longest first.
fn control_texts(inner: &tokenizers::Tokenizer) -> Vec<String> {
    let mut texts: Vec<String> = inner
        .get_added_tokens_decoder()
        .into_values()
        .filter(|token| token.special && !token.content.is_empty())
        .map(|token| token.content)
        .collect();
    texts.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    texts.dedup();
    texts
}

fn escape_starts(control_texts: &[String]) -> Vec<char> {
    let mut starts: Vec<char> = control_texts.iter().filter_map(|text| text.chars().next()).collect();
    starts.push(PLACEHOLDER_START);
    starts.sort_unstable();
    starts.dedup();
    starts
}

fn longest_token_bytes(token_bytes: &Packed) -> usize {
    (0..token_bytes.len())
        .filter_map(|id| token_bytes.get(id).map(<[u8]>::len))
        .max()
        .unwrap_or(1)
}

/// Decodes ids pushed one at a time and returns only complete UTF-8 text: a character
/// whose bytes are spread over several tokens (common for CJK and emoji in byte-level
/// BPE) is held back until its last byte arrives, so a client never sees U+FFFD for a
/// character that was merely split. The concatenation of everything returned by
/// [`push`](Self::push) and [`finish`](Self::finish) equals [`Tokenizer::decode`] of the same ids.
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    skip_special: bool,
    /// Bytes of an incomplete character at the end of what was pushed (at most 3).
    pending: Vec<u8>,
}

impl<'a> StreamDecoder<'a> {
    /// A decoder that leaves control tokens out, as a reply to a client should.
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self::with_skip_special(tokenizer, true)
    }

    pub fn with_skip_special(tokenizer: &'a Tokenizer, skip_special: bool) -> Self {
        StreamDecoder {
            tokenizer,
            skip_special,
            pending: Vec::new(),
        }
    }

    /// Adds one token; returns the text it completes (often empty mid-character).
    pub fn push(&mut self, id: u32) -> String {
        self.pending
            .extend_from_slice(self.tokenizer.bytes_for(id, self.skip_special));
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).expect("checked by valid_up_to"));
                    match e.error_len() {
                        // Bytes that can never become a character: replaced, as from_utf8_lossy does.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                        // A character still missing bytes: keep them for the next push.
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        self.pending.drain(..self.pending.len() - keep);
        out
    }

    /// Ends the stream: bytes of a character that never completed become one U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

/// The 68 bytes GPT-2 does not show as themselves, in the order they get the
/// characters U+0100, U+0101, ...: control bytes and space, DEL through NBSP, soft hyphen.
const SHIFTED_BYTES: [u8; 68] = {
    let mut table = [0u8; 68];
    let mut n = 0;
    let mut b = 0usize;
    while b < 256 {
        if !is_shown_as_itself(b as u8) {
            table[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    table
};

/// Printable Latin-1 bytes ('!'..='~', '¡'..='¬', '®'..='ÿ') are their own character in
/// GPT-2's byte alphabet.
const fn is_shown_as_itself(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The byte a character of GPT-2's byte alphabet stands for.
fn alphabet_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 256 && is_shown_as_itself(cp as u8) {
        Some(cp as u8)
    } else {
        cp.checked_sub(256).and_then(|i| SHIFTED_BYTES.get(i as usize).copied())
    }
}

/// HF ByteLevel decoding of one token: its bytes if every character is in the alphabet,
/// else its own UTF-8 (added tokens are stored as plain text).
fn token_to_bytes(token: &str) -> Box<[u8]> {
    token
        .chars()
        .map(alphabet_byte)
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_else(|| token.as_bytes().to_vec())
        .into_boxed_slice()
}

fn string_array<'f>(file: &'f GgufFile, key: &str) -> Result<Vec<&'f str>, TokenizerError> {
    let strings = file
        .metadata(key)
        .ok_or_else(|| error(format!("the GGUF file has no {key}")))?
        .as_strings()
        .ok_or_else(|| error(format!("{key} is not an array of strings")))?;
    Ok(strings.iter().collect())
}

fn read_json_if_present(path: &Path) -> Result<Option<serde_json::Value>, TokenizerError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| error(format!("{} is not JSON: {e}", path.display())))
}

/// `chat_template` in tokenizer_config.json is a string, or a list of named templates of
/// which "default" is the chat one.
fn chat_template_from_config(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(named) => named
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str())
            .map(str::to_string),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::Value;
    use crate::gguf::writer::GgufWriter;
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    fn text(s: &str) -> Value {
        Value::String(s.to_string())
    }

    /// A GGUF whose vocabulary is the 256 byte tokens, a few merges, and ChatML specials.
    fn tiny_gguf(pre: &str, extra: &[(&str, Value)]) -> GgufFile {
        let mut tokens: Vec<String> = (0..=255u8).map(byte_char).map(String::from).collect();
        let mut types = vec![1i32; 256];
        for (token, kind) in [
            ("Ġw", 1),
            ("or", 1),
            ("Ġwor", 1),
            ("<|im_start|>", 3),
            ("<|im_end|>", 3),
            ("<think>", 4),
        ] {
            tokens.push(token.to_string());
            types.push(kind);
        }
        let mut writer = GgufWriter::new()
            .meta("tokenizer.ggml.model", text("gpt2"))
            .meta("tokenizer.ggml.pre", text(pre))
            .meta(
                "tokenizer.ggml.tokens",
                Value::Array(tokens.into_iter().map(Value::String).collect()),
            )
            .meta(
                "tokenizer.ggml.token_type",
                Value::Array(types.into_iter().map(Value::I32).collect()),
            )
            .meta(
                "tokenizer.ggml.merges",
                Value::Array(vec![text("Ġ w"), text("o r"), text("Ġw or")]),
            )
            .meta("tokenizer.ggml.bos_token_id", Value::U32(257 + 2))
            .meta("tokenizer.ggml.eos_token_id", Value::U32(257 + 3));
        for (key, value) in extra {
            writer = writer.meta(key, value.clone());
        }
        GgufFile::from_vec(writer.build()).unwrap()
    }

    fn byte_char(b: u8) -> char {
        if is_shown_as_itself(b) {
            b as char
        } else {
            let i = SHIFTED_BYTES.iter().position(|&s| s == b).unwrap();
            char::from_u32(256 + i as u32).unwrap()
        }
    }

    /// The pieces a spec's regexes cut `text` into (before byte mapping).
    fn pieces(spec: PreTokenizerSpec, text: &str) -> Vec<String> {
        let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
        for pattern in spec.patterns {
            steps.push(
                Split::new(
                    SplitPattern::Regex(pattern.to_string()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .unwrap()
                .into(),
            );
        }
        let mut pre = PreTokenizedString::from(text);
        Sequence::new(steps).pre_tokenize(&mut pre).unwrap();
        pre.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(s, _, _)| s.to_string())
            .collect()
    }

    #[test]
    fn a_document_is_encoded_through_the_tokenizers_post_processor() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen/qwen3_thinking");
        let plain = Tokenizer::from_tokenizer_json(&fixture.join("tokenizer.json")).unwrap();
        let text = "an embedding's input";
        assert_eq!(plain.encode_document(text).unwrap(), plain.encode(text, true).unwrap());
        // Qwen3-Embedding's tokenizer.json: the text, then <|endoftext|>.
        let dir = std::env::temp_dir().join(format!("switchyard-tokenizer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(fixture.join("tokenizer_config.json"), dir.join("tokenizer_config.json")).unwrap();
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture.join("tokenizer.json")).unwrap()).unwrap();
        json["post_processor"] = serde_json::json!({
            "type": "TemplateProcessing",
            "single": [{ "Sequence": { "id": "A", "type_id": 0 } }, { "SpecialToken": { "id": "<|endoftext|>", "type_id": 0 } }],
            "pair": [{ "Sequence": { "id": "A", "type_id": 0 } }, { "Sequence": { "id": "B", "type_id": 1 } }],
            "special_tokens": { "<|endoftext|>": { "id": "<|endoftext|>", "ids": [0], "tokens": ["<|endoftext|>"] } },
        });
        std::fs::write(dir.join("tokenizer.json"), json.to_string()).unwrap();
        let embedding = Tokenizer::from_tokenizer_json(&dir.join("tokenizer.json")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let mut expected = plain.encode(text, true).unwrap();
        expected.push(0);
        assert_eq!(embedding.encode_document(text).unwrap(), expected);
    }

    #[test]
    fn a_tokenizer_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Tokenizer>();
    }

    #[test]
    fn byte_alphabet_covers_every_byte_once() {
        let chars: std::collections::HashSet<char> = (0..=255u8).map(byte_char).collect();
        assert_eq!(chars.len(), 256);
        assert_eq!(byte_char(b' '), 'Ġ');
        assert_eq!(byte_char(b'\n'), 'Ċ');
        for b in 0..=255u8 {
            assert_eq!(alphabet_byte(byte_char(b)), Some(b));
        }
    }

    #[test]
    fn a_non_gpt2_model_is_refused_by_name() {
        let file = GgufFile::from_vec(GgufWriter::new().meta("tokenizer.ggml.model", text("llama")).build()).unwrap();
        let err = Tokenizer::from_gguf(&file).unwrap_err();
        assert!(err.0.contains("\"llama\"") && err.0.contains("gpt2"), "{err}");
    }

    #[test]
    fn a_file_without_tokenizer_is_refused() {
        let file = GgufFile::from_vec(GgufWriter::new().build()).unwrap();
        assert!(
            Tokenizer::from_gguf(&file)
                .unwrap_err()
                .0
                .contains("tokenizer.ggml.model")
        );
    }

    #[test]
    fn merges_apply_and_specials_are_single_tokens() {
        let tok = Tokenizer::from_gguf(&tiny_gguf("gpt2", &[])).unwrap();
        assert_eq!(tok.vocab_size(), 262);
        assert_eq!(tok.encode(" wor", true).unwrap(), vec![258]);
        assert_eq!(
            tok.encode("<|im_start|> wor<|im_end|>", true).unwrap(),
            vec![259, 258, 260]
        );
    }

    #[test]
    fn without_parse_special_special_text_is_plain_characters() {
        let tok = Tokenizer::from_gguf(&tiny_gguf("gpt2", &[])).unwrap();
        let ids = tok.encode("<|im_end|>", false).unwrap();
        assert!(ids.len() > 1 && !ids.contains(&260), "{ids:?}");
        assert_eq!(tok.decode(&ids, true), "<|im_end|>");
        // User-defined tokens are parsed either way.
        assert_eq!(tok.encode("<think>", false).unwrap(), vec![261]);
    }

    #[test]
    fn bos_is_added_only_when_asked_and_never_twice() {
        let plain = Tokenizer::from_gguf(&tiny_gguf("gpt2", &[])).unwrap();
        assert_eq!(plain.encode(" wor", true).unwrap(), vec![258]);
        let asks = Tokenizer::from_gguf(&tiny_gguf(
            "gpt2",
            &[("tokenizer.ggml.add_bos_token", Value::Bool(true))],
        ))
        .unwrap();
        assert_eq!(asks.encode(" wor", true).unwrap(), vec![259, 258]);
        assert_eq!(asks.encode("<|im_start|> wor", true).unwrap(), vec![259, 258]);
    }

    #[test]
    fn llama3_adds_bos_when_the_file_does_not_say() {
        let tok = Tokenizer::from_gguf(&tiny_gguf("llama-bpe", &[])).unwrap();
        assert_eq!(tok.encode(" wor", true).unwrap(), vec![259, 258]);
    }

    #[test]
    fn decode_skips_control_tokens_but_keeps_user_defined_ones() {
        let tok = Tokenizer::from_gguf(&tiny_gguf("gpt2", &[])).unwrap();
        let ids = [259, 261, 258, 260];
        assert_eq!(tok.decode(&ids, false), "<|im_start|><think> wor<|im_end|>");
        assert_eq!(tok.decode(&ids, true), "<think> wor");
    }

    #[test]
    fn end_of_turn_ids_include_eos_eot_and_known_names() {
        let tok = Tokenizer::from_gguf(&tiny_gguf("gpt2", &[("tokenizer.ggml.eot_token_id", Value::U32(10))])).unwrap();
        assert_eq!(tok.end_of_turn_ids(), vec![10, 260]);
        assert_eq!(tok.eos_token(), Some((260, "<|im_end|>".to_string())));
    }

    #[test]
    fn an_unknown_pre_tokenizer_falls_back_to_gpt2() {
        let tok = Tokenizer::from_gguf(&tiny_gguf("some-future-model", &[])).unwrap();
        assert_eq!(tok.encode(" wor", true).unwrap(), vec![258]);
    }

    #[test]
    fn an_out_of_range_special_id_is_an_error() {
        let err =
            Tokenizer::from_gguf(&tiny_gguf("gpt2", &[("tokenizer.ggml.eot_token_id", Value::U32(9999))])).unwrap_err();
        assert!(err.0.contains("eot_token_id"), "{err}");
    }

    #[test]
    fn stream_decoder_holds_a_split_character_until_complete() {
        let tok = Tokenizer::from_gguf(&tiny_gguf("gpt2", &[])).unwrap();
        let ids = tok.encode("é中", true).unwrap(); // no merges: one token per byte
        assert_eq!(ids.len(), 5);
        let mut stream = StreamDecoder::new(&tok);
        let pushed: Vec<String> = ids.iter().map(|&id| stream.push(id)).collect();
        assert_eq!(pushed, ["", "é", "", "", "中"]);
        assert_eq!(stream.finish(), "");
    }

    #[test]
    fn stream_decoder_replaces_invalid_and_unfinished_bytes_like_decode() {
        let tok = Tokenizer::from_gguf(&tiny_gguf("gpt2", &[])).unwrap();
        // 0xFF can never start a character; 0xE4 0xB8 is a character cut short.
        let ids: Vec<u32> = [b'a', 0xFF, b'b', 0xE4, 0xB8]
            .iter()
            .map(|&b| tok.token_id(&byte_char(b).to_string()).unwrap())
            .collect();
        let mut stream = StreamDecoder::new(&tok);
        let mut text: String = ids.iter().map(|&id| stream.push(id)).collect();
        text.push_str(&stream.finish());
        assert_eq!(text, tok.decode(&ids, true));
        assert_eq!(text, "a\u{FFFD}b\u{FFFD}");
    }

    #[test]
    fn smollm_splits_every_digit() {
        let spec = PreTokenizerSpec::for_gguf_pre("smollm").unwrap();
        assert_eq!(pieces(spec, "in 2024, x"), ["in", " ", "2", "0", "2", "4", ",", " x"]);
    }

    #[test]
    fn llama3_groups_digits_by_three_and_contractions_ignore_case() {
        let spec = PreTokenizerSpec::for_gguf_pre("llama-bpe").unwrap();
        assert_eq!(pieces(spec, "1234567 I'M"), ["123", "456", "7", " I", "'M"]);
    }

    #[test]
    fn qwen2_splits_single_digits_and_keeps_newline_runs() {
        let spec = PreTokenizerSpec::for_gguf_pre("qwen2").unwrap();
        assert_eq!(pieces(spec, "ab12\n\n  cd"), ["ab", "1", "2", "\n\n", " ", " cd"]);
    }

    #[test]
    fn qwen35_keeps_combining_marks_in_their_word() {
        let decomposed = "cafe\u{301} ok";
        let qwen2 = pieces(PreTokenizerSpec::for_gguf_pre("qwen2").unwrap(), decomposed);
        let qwen35 = pieces(PreTokenizerSpec::for_gguf_pre("qwen35").unwrap(), decomposed);
        assert_eq!(qwen2, ["cafe", "\u{301}", " ok"]);
        assert_eq!(qwen35, ["cafe\u{301}", " ok"]);
    }
}
