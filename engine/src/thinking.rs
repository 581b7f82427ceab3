//! Native thinking: models that reason inside `<think>…</think>` before they
//! answer (Qwen3, Qwen3.5, DeepSeek-R1's distillations).
//!
//! A generation with [`Thinking`] set splits what the model writes into two
//! channels: the reasoning (between the markers) and the answer (after them).
//! Where it starts is read off the prompt: a prompt whose last marker opens a
//! block (Qwen3.5's template writes `<think>\n` after the assistant header)
//! starts inside it; otherwise the model opens one itself, or not at all.
//!
//! A budget bounds the reasoning: once a block holds that many tokens, the
//! tokens of `\n</think>\n\n` are fed to the model as if it had written them,
//! and it goes on to answer. A budget of 0 is thinking off for a model that
//! opens a block anyway (or whose template cannot switch it off).
//!
//! Small models think in circles (Qwen3.5-2B's card warns of it): a block
//! whose last tokens repeat one short sequence over and over
//! ([`LOOP_MIN_SPAN`] tokens or three rounds of it, whichever is longer, for a
//! period of up to [`LOOP_MAX_PERIOD`] tokens) is closed the same way, as
//! if its budget had run out.
//!
//! The markers themselves are no one's text: they count as reasoning tokens,
//! and carry none. The whitespace the templates put around the reasoning
//! (`<think>\n…\n</think>\n\n`) is trimmed, as Qwen's own parsers do.

use std::collections::VecDeque;

use crate::tokenizer::Tokenizer;

/// A model's thinking markers, and what closes a block it is made to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinkingMarkers {
    pub open: u32,
    pub close: u32,
    /// Fed to end a block early: a line break, the close marker, a blank line.
    pub forced_close: Vec<u32>,
    /// Whether the chat template takes `enable_thinking` (otherwise thinking
    /// is whatever the template does, bounded by the budget).
    pub switchable: bool,
}

impl ThinkingMarkers {
    /// The markers of a model that thinks natively: `<think>` and `</think>`
    /// are single tokens of its vocabulary, and its chat template writes them.
    pub fn detect(tokenizer: &Tokenizer) -> Option<ThinkingMarkers> {
        let template = tokenizer.chat_template()?;
        if !template.contains("<think>") || !template.contains("</think>") {
            return None;
        }
        let open = tokenizer.token_id("<think>")?;
        let close = tokenizer.token_id("</think>")?;
        let newline = tokenizer.encode("\n", false).ok()?;
        let blank = tokenizer.encode("\n\n", false).ok()?;
        let forced_close = newline.into_iter().chain([close]).chain(blank).collect();
        Some(ThinkingMarkers {
            open,
            close,
            forced_close,
            switchable: template.contains("enable_thinking"),
        })
    }

    /// Whether generation after `prompt` starts inside a thinking block: the
    /// prompt's last marker opens one.
    pub fn open_after(&self, prompt: &[u32]) -> bool {
        prompt.iter().rev().find(|&&id| id == self.open || id == self.close) == Some(&self.open)
    }
}

/// The longest repeated sequence the loop guard looks for, in tokens.
pub const LOOP_MAX_PERIOD: usize = 64;
/// The fewest tokens of repetition that count as a loop.
pub const LOOP_MIN_SPAN: usize = 48;

/// Thinking for one generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thinking {
    pub markers: ThinkingMarkers,
    /// Reasoning tokens at most (markers included); `None`: unbounded.
    pub budget: Option<usize>,
}

/// Where a token of the output belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// A marker: counts as reasoning, shows no text.
    Marker,
    Reasoning,
    Answer,
}

/// Follows one generation through its thinking blocks: which channel each
/// token is in, and when to force a block closed.
#[derive(Debug)]
pub struct ThinkingTracker {
    thinking: Thinking,
    inside: bool,
    /// Tokens spent inside blocks so far.
    spent: usize,
    /// Forced tokens still to feed.
    forcing: VecDeque<u32>,
    /// The current block is being (or was) closed by force.
    forced: bool,
    /// The last token closed a block: the answer's leading whitespace goes.
    just_closed: bool,
    reasoning_text: TrimmedText,
    /// The current block's tokens (for the loop guard).
    block: Vec<u32>,
    /// Blocks closed because they looped.
    loops: usize,
}

impl ThinkingTracker {
    pub fn new(thinking: Thinking, prompt: &[u32]) -> ThinkingTracker {
        let inside = thinking.markers.open_after(prompt);
        ThinkingTracker {
            thinking,
            inside,
            spent: 0,
            forcing: VecDeque::new(),
            forced: false,
            just_closed: false,
            reasoning_text: TrimmedText::default(),
            block: Vec::new(),
            loops: 0,
        }
    }

    /// The token to feed instead of sampling, while a block is being closed by force.
    pub fn forced_token(&mut self) -> Option<u32> {
        let over_budget = self.thinking.budget.is_some_and(|budget| self.spent >= budget);
        let looping = self.inside && !self.forced && repeats(&self.block);
        if self.inside && !self.forced && (over_budget || looping) {
            self.forced = true;
            self.loops += usize::from(looping && !over_budget);
            self.forcing = self.thinking.markers.forced_close.iter().copied().collect();
        }
        self.forcing.pop_front()
    }

    /// Blocks closed early because their last tokens went round in a loop.
    pub fn loops_closed(&self) -> usize {
        self.loops
    }

    /// Whether the model may open a thinking block now: it is outside one,
    /// with budget left (none when thinking is off).
    pub fn may_open(&self) -> bool {
        !self.inside && self.thinking.budget.is_none_or(|budget| self.spent < budget)
    }

    /// The marker that opens a block.
    pub fn open_marker(&self) -> u32 {
        self.thinking.markers.open
    }

    /// Whether the next token is inside a thinking block.
    pub fn inside(&self) -> bool {
        self.inside
    }

    /// Takes the next token (sampled or forced): its channel.
    pub fn take(&mut self, id: u32) -> Channel {
        let markers = &self.thinking.markers;
        self.just_closed = false;
        if id == markers.open && !self.inside {
            self.inside = true;
            self.forced = false;
            self.spent += 1;
            self.block.clear();
            return Channel::Marker;
        }
        if id == markers.close && self.inside {
            self.inside = false;
            self.spent += 1;
            self.just_closed = true;
            // A forced close is done with its marker; the blank line after it
            // is still fed.
            return Channel::Marker;
        }
        if self.inside {
            self.spent += 1;
            self.block.push(id);
            Channel::Reasoning
        } else {
            Channel::Answer
        }
    }

    /// Reasoning tokens so far (markers included).
    pub fn spent(&self) -> usize {
        self.spent
    }

    /// Whether the token before this one closed a block.
    pub fn just_closed(&self) -> bool {
        self.just_closed
    }

    /// Reasoning text as it becomes final, trimmed at both ends of each block.
    pub fn reasoning(&mut self, piece: &str) -> String {
        self.reasoning_text.push(piece)
    }

    /// A block ended (closed, or the generation ended inside it): whitespace
    /// held back at its end is dropped, and the next block starts afresh.
    pub fn end_block(&mut self) {
        self.reasoning_text.end();
    }

    /// All reasoning text, blocks separated by a blank line.
    pub fn into_reasoning(self) -> String {
        self.reasoning_text.whole
    }
}

/// Whether `tokens` end in a loop: one sequence of up to [`LOOP_MAX_PERIOD`]
/// tokens repeated over the last [`LOOP_MIN_SPAN`] tokens, or three times
/// its length if longer.
fn repeats(tokens: &[u32]) -> bool {
    let n = tokens.len();
    (1..=LOOP_MAX_PERIOD).any(|period| {
        let span = LOOP_MIN_SPAN.max(3 * period);
        span <= n && (n - span + period..n).all(|i| tokens[i] == tokens[i - period])
    })
}

/// Text with its leading whitespace dropped and its trailing whitespace held
/// back until more text follows (or dropped when it ends).
#[derive(Debug, Default)]
struct TrimmedText {
    started: bool,
    held: String,
    /// Everything released, across blocks.
    whole: String,
    /// Blocks released so far (a new block is separated from the last).
    blocks: usize,
}

impl TrimmedText {
    fn push(&mut self, piece: &str) -> String {
        let piece = if self.started { piece } else { piece.trim_start() };
        if piece.is_empty() {
            return String::new();
        }
        let mut out = String::new();
        if !self.started {
            self.started = true;
            if self.blocks > 0 {
                out.push_str("\n\n");
            }
            self.blocks += 1;
        }
        let body = piece.trim_end();
        if !body.is_empty() {
            out.push_str(&std::mem::take(&mut self.held));
            out.push_str(body);
        }
        self.held.push_str(&piece[body.len()..]);
        self.whole.push_str(&out);
        out
    }

    fn end(&mut self) {
        self.held.clear();
        self.started = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: u32 = 10;
    const CLOSE: u32 = 11;
    const NEWLINE: u32 = 1;
    const BLANK: u32 = 2;

    fn thinking(budget: Option<usize>) -> Thinking {
        Thinking {
            markers: ThinkingMarkers {
                open: OPEN,
                close: CLOSE,
                forced_close: vec![NEWLINE, CLOSE, BLANK],
                switchable: true,
            },
            budget,
        }
    }

    /// Runs a model that would write `written` (forced tokens take the
    /// place of what it would have written next): the tokens fed and their channels.
    fn run(budget: Option<usize>, prompt: &[u32], written: &[u32]) -> Vec<(u32, Channel)> {
        let mut tracker = ThinkingTracker::new(thinking(budget), prompt);
        let mut written = written.iter().copied();
        let mut out = Vec::new();
        loop {
            let id = match tracker.forced_token() {
                Some(id) => id,
                None => match written.next() {
                    Some(id) => id,
                    None => break,
                },
            };
            out.push((id, tracker.take(id)));
        }
        out
    }

    #[test]
    fn a_block_the_model_opens_is_reasoning_and_the_rest_the_answer() {
        use Channel::*;
        let out = run(None, &[5, 6], &[OPEN, 20, 21, CLOSE, 30]);
        assert_eq!(
            out,
            [
                (OPEN, Marker),
                (20, Reasoning),
                (21, Reasoning),
                (CLOSE, Marker),
                (30, Answer)
            ]
        );
    }

    #[test]
    fn a_prompt_that_opens_a_block_starts_inside_it_and_a_closed_one_does_not() {
        assert!(thinking(None).markers.open_after(&[1, OPEN, NEWLINE]));
        assert!(!thinking(None).markers.open_after(&[1, OPEN, 3, CLOSE, BLANK]));
        assert!(!thinking(None).markers.open_after(&[1, 2]));
        let out = run(None, &[OPEN, NEWLINE], &[20, CLOSE, 30]);
        assert_eq!(out[0].1, Channel::Reasoning);
        assert_eq!(out[2].1, Channel::Answer);
    }

    #[test]
    fn the_budget_forces_the_block_closed_and_the_answer_follows() {
        use Channel::*;
        let out = run(Some(3), &[], &[OPEN, 20, 21, 22, 23, 24]);
        assert_eq!(
            out,
            [
                (OPEN, Marker),
                (20, Reasoning),
                (21, Reasoning),
                (NEWLINE, Reasoning),
                (CLOSE, Marker),
                (BLANK, Answer),
                (22, Answer),
                (23, Answer),
                (24, Answer)
            ]
        );
    }

    #[test]
    fn budget_zero_closes_a_block_the_prompt_opened_at_once() {
        let out = run(Some(0), &[OPEN], &[20, 21]);
        let ids: Vec<u32> = out.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [NEWLINE, CLOSE, BLANK, 20, 21]);
        assert_eq!(out[3].1, Channel::Answer);
    }

    #[test]
    fn a_block_going_round_in_a_loop_is_closed_and_varied_thinking_is_not() {
        // A 5-token sequence over and over: closed once 48 tokens repeat it.
        let cycle = [20, 21, 22, 23, 24];
        let written: Vec<u32> = std::iter::once(OPEN)
            .chain(cycle.iter().copied().cycle().take(200))
            .collect();
        let out = run(None, &[], &written);
        let close = out.iter().position(|&(id, _)| id == CLOSE).expect("closed");
        // The open marker, 48 tokens of the same 5 over and over, then the
        // forced line break.
        assert_eq!(close, 1 + LOOP_MIN_SPAN + 1, "{out:?}");
        // A long period needs three rounds.
        let long: Vec<u32> = (100..160).collect();
        let written: Vec<u32> = std::iter::once(OPEN)
            .chain(long.iter().copied().cycle().take(400))
            .collect();
        let close = run(None, &[], &written)
            .iter()
            .position(|&(id, _)| id == CLOSE)
            .unwrap();
        assert_eq!(close, 1 + 3 * 60 + 1);
        // Varied thinking runs to its end.
        let varied: Vec<u32> = std::iter::once(OPEN)
            .chain((0..300).map(|i| 100 + (i * 7919) % 97))
            .collect();
        assert!(run(None, &[], &varied).iter().all(|&(id, _)| id != CLOSE));
    }

    #[test]
    fn a_stray_close_outside_a_block_is_answer_text() {
        let out = run(None, &[], &[30, CLOSE]);
        assert_eq!(out[1].1, Channel::Answer);
    }

    #[test]
    fn reasoning_is_trimmed_at_both_ends_of_each_block_and_blocks_are_separated() {
        let mut text = TrimmedText::default();
        let mut out = String::new();
        for piece in ["\n", " Let", " me", " think", ".\n", "\n"] {
            out += &text.push(piece);
        }
        text.end();
        assert_eq!(out, " Let me think.".trim_start());
        for piece in ["\nMore", "  "] {
            out += &text.push(piece);
        }
        text.end();
        assert_eq!(out, "Let me think.\n\nMore");
        assert_eq!(text.whole, out);
    }
}
