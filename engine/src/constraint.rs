//! Constrained decoding: a grammar (a JSON Schema, any JSON object, a regular
//! expression) that every generated token must keep the output inside, so
//! that the answer parses whatever the model would have said.
//!
//! The automaton is llguidance's (see docs/constrained-decoding.md for why):
//! a [`Grammars`] per model holds the vocabulary as a token trie and compiles
//! grammars against it (milliseconds); a [`Constraint`] follows one answer.
//! Per step, the sampler's choice is checked first ([`Constraint::allows`], a
//! few µs) and the whole vocabulary's mask is computed only when the choice is
//! refused ([`Constraint::mask`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use llguidance::api::{GrammarWithLexer, TopLevelGrammar};
use llguidance::toktrie::{InferenceCapabilities, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

use crate::tokenizer::Tokenizer;

/// What an answer must be.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// Valid against this JSON Schema.
    JsonSchema(serde_json::Value),
    /// Any JSON object.
    JsonObject,
    /// A full match of this regular expression.
    Regex(String),
    /// A grammar in llguidance's Lark syntax (tool calls: free text, then
    /// calls whose arguments follow their tools' schemas).
    Lark(String),
}

impl Grammar {
    /// The grammar as one string, for the compiled-grammar cache.
    fn key(&self) -> String {
        match self {
            Grammar::JsonSchema(schema) => format!("schema:{schema}"),
            Grammar::JsonObject => "json_object".into(),
            Grammar::Regex(rx) => format!("regex:{rx}"),
            Grammar::Lark(lark) => format!("lark:{lark}"),
        }
    }
}

/// Compiled grammars kept per model: a client sends the same schema or tools
/// with every request, and compiling costs milliseconds where a step costs
/// microseconds. Past this many, the cache starts over.
const COMPILED_KEPT: usize = 256;

/// Our vocabulary as llguidance sees it.
struct Vocabulary {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        // Forced tokens are re-tokenized text the grammar fixes; a piece
        // that is not UTF-8 on its own is left to the byte-wise trie.
        match std::str::from_utf8(s) {
            Ok(text) => self.tokenizer.encode(text, false).unwrap_or_default(),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// A model's grammar compiler: its vocabulary, once.
#[derive(Clone)]
pub struct Grammars {
    factory: Arc<ParserFactory>,
    compiled: Arc<Mutex<HashMap<String, Constraint>>>,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Grammars")
    }
}

impl Grammars {
    /// As [`Grammars::new`], ending at the tokenizer's end-of-turn token.
    pub fn of(tokenizer: Arc<Tokenizer>, vocab_size: usize) -> Result<Grammars, String> {
        let end = tokenizer.end_of_turn_ids().first().copied().unwrap_or(0);
        Grammars::new(tokenizer, vocab_size, end)
    }

    /// The vocabulary of `tokenizer` padded to the model's `vocab_size` rows
    /// (ids past the tokenizer's are never allowed), ending at `end` (the
    /// end-of-turn token that closes a constrained answer).
    pub fn new(tokenizer: Arc<Tokenizer>, vocab_size: usize, end: u32) -> Result<Grammars, String> {
        let words: Vec<Vec<u8>> = (0..vocab_size as u32)
            .map(|id| {
                if tokenizer.is_special(id) {
                    let name = tokenizer.decode(&[id], false);
                    let mut word = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    word.extend_from_slice(name.as_bytes());
                    word
                } else {
                    tokenizer.token_bytes(id).map(<[u8]>::to_vec).unwrap_or_default()
                }
            })
            .collect();
        let info = TokRxInfo::new(vocab_size as u32, end);
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(Vocabulary { trie, tokenizer });
        let mut factory = ParserFactory::new(
            &env,
            InferenceCapabilities {
                ff_tokens: true,
                ..InferenceCapabilities::default()
            },
            &llguidance::earley::SlicedBiasComputer::general_slices(),
        )
        .map_err(|err| err.to_string())?;
        factory.set_stderr_log_level(0);
        Ok(Grammars {
            factory: Arc::new(factory),
            compiled: Arc::default(),
        })
    }

    /// As [`Grammars::constraint`], compiled once per grammar and kept (see
    /// `COMPILED_KEPT`); errors are not kept. What it returns shares the
    /// kept grammar's state: an answer takes a [`Constraint::fresh`] copy
    /// before it advances it (the generate loop does), so checking a grammar
    /// or carrying it in a request costs no copy of that state.
    pub fn cached(&self, grammar: &Grammar) -> Result<Constraint, String> {
        let key = grammar.key();
        if let Some(constraint) = self.compiled.lock().expect("grammar cache").get(&key) {
            return Ok(constraint.clone());
        }
        let constraint = self.constraint(grammar)?;
        let mut compiled = self.compiled.lock().expect("grammar cache");
        if compiled.len() >= COMPILED_KEPT {
            compiled.clear();
        }
        compiled.insert(key, constraint.clone());
        Ok(constraint)
    }

    /// A constraint for one answer; an error names what the grammar asks
    /// that cannot be compiled (an unsupported schema keyword, a bad regex).
    pub fn constraint(&self, grammar: &Grammar) -> Result<Constraint, String> {
        let top = match grammar {
            Grammar::JsonSchema(schema) => TopLevelGrammar::from_json_schema(laid_out(schema.clone())),
            Grammar::JsonObject => TopLevelGrammar::from_json_schema(laid_out(serde_json::json!({"type": "object"}))),
            Grammar::Regex(rx) => TopLevelGrammar::from_grammar(GrammarWithLexer::from_regex(rx)),
            Grammar::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
        };
        let parser = self.factory.create_parser(top).map_err(|err| err.to_string())?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(err) = matcher.get_error() {
            return Err(err);
        }
        Ok(Constraint { matcher })
    }
}

/// `schema` with the layout of the JSON it allows (unless it sets its own
/// `x-guidance`): `, ` between items and `: ` after keys, no other
/// whitespace. It is how models write JSON in their training (Python's
/// `json.dumps`, the tool-call examples of their chat templates), and without
/// a fixed layout a weak model can pad an answer with whitespace until it runs
/// out of tokens.
pub fn laid_out(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(object) = schema.as_object_mut() {
        object.entry("x-guidance").or_insert_with(
            || serde_json::json!({ "whitespace_flexible": false, "item_separator": ", ", "key_separator": ": " }),
        );
    }
    schema
}

/// One answer's progress through its grammar.
#[derive(Clone)]
pub struct Constraint {
    matcher: Matcher,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Constraint")
    }
}

impl Constraint {
    /// A fresh copy for another answer (the grammar's state is not shared).
    pub fn fresh(&self) -> Constraint {
        Constraint {
            matcher: self.matcher.deep_clone(),
        }
    }

    /// Whether `token` may come next.
    pub fn allows(&mut self, token: u32) -> bool {
        self.matcher.validate_tokens(&[token]).is_ok_and(|n| n == 1)
    }

    /// Sets every refused token's logit to −∞. `false` if the grammar allows
    /// nothing (it is in error), when the answer must end.
    pub fn mask(&mut self, logits: &mut [f32]) -> bool {
        let Ok(mask) = self.matcher.compute_mask() else {
            return false;
        };
        let mut any = false;
        for (id, logit) in logits.iter_mut().enumerate() {
            if mask.is_allowed(id as u32) {
                any = true;
            } else {
                *logit = f32::NEG_INFINITY;
            }
        }
        any
    }

    /// Advances past `token`, which must be allowed.
    pub fn accept(&mut self, token: u32) -> Result<(), String> {
        self.matcher.consume_token(token).map_err(|err| err.to_string())
    }

    /// Tokens the grammar fixes from here (text with one continuation).
    pub fn forced(&mut self) -> Vec<u32> {
        self.matcher.compute_ff_tokens()
    }

    /// The answer is complete: nothing more may follow.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// The answer may end here.
    pub fn may_end(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }
}
