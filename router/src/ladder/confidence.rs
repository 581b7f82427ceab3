//! Whether a local answer looks weak, from what only an in-process engine sees
//! for free: the log-probability of every token it chose and the margin to the
//! runner-up, plus checks on the text (empty, cut by our own token limit,
//! looping, refusing).

use serde::Serialize;

use crate::policy::LadderConfig;
use crate::reply::{Event, Finished};
use switchyard_engine::generate::FinishReason;

/// Running statistics of a local answer.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Signals {
    /// Tokens seen (reasoning and answer).
    pub tokens: u32,
    pub mean_logprob: f32,
    pub min_logprob: f32,
    /// Mean of top-1 minus top-2 log-probability.
    pub mean_margin: f32,
    #[serde(skip)]
    sum_logprob: f64,
    #[serde(skip)]
    sum_margin: f64,
    #[serde(skip)]
    content: String,
    #[serde(skip)]
    finished: Option<Finished>,
}

/// Why a local answer was judged too weak to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Weakness {
    Empty,
    Truncated,
    Repetition,
    Refusal,
    LowConfidence,
}

/// Openings of a refusal to do the task.
const REFUSALS: &[&str] = &[
    "i'm sorry, but i can",
    "i am sorry, but i can",
    "sorry, i can't",
    "sorry, i cannot",
    "i cannot help",
    "i can't help",
    "i can't assist",
    "i cannot assist",
    "i'm unable to",
    "i am unable to",
    "i'm not able to",
    "as an ai",
];

impl Signals {
    pub fn observe(&mut self, event: &Event) {
        let (text, token) = match event {
            Event::Reasoning { token, .. } => (None, token),
            // A call's name and arguments are its answer.
            Event::Content { text, token }
            | Event::ToolCall { name: text, token, .. }
            | Event::ToolArguments { text, token, .. } => (Some(text), token),
            Event::Finished(finished) => {
                self.finished = Some(*finished);
                return;
            }
            Event::Failed(_) => return,
        };
        if let Some(text) = text {
            self.content.push_str(text);
        }
        let Some(token) = token else { return };
        self.tokens += 1;
        self.sum_logprob += f64::from(token.logprob);
        self.min_logprob = if self.tokens == 1 {
            token.logprob
        } else {
            self.min_logprob.min(token.logprob)
        };
        if let [first, second, ..] = token.top.as_slice() {
            self.sum_margin += f64::from(first.1 - second.1);
        }
        self.mean_logprob = (self.sum_logprob / f64::from(self.tokens)) as f32;
        self.mean_margin = (self.sum_margin / f64::from(self.tokens)) as f32;
    }

    pub fn is_finished(&self) -> bool {
        self.finished.is_some()
    }

    /// The first weakness found, if any. Checks that need the whole answer
    /// (empty, truncated) apply once it is finished; the others to what has
    /// been seen so far.
    pub fn judge(&self, config: &LadderConfig) -> Option<Weakness> {
        if let Some(finished) = self.finished {
            if self.content.trim().is_empty() {
                return Some(Weakness::Empty);
            }
            if finished.finish_reason == FinishReason::Length && !finished.client_limited {
                return Some(Weakness::Truncated);
            }
        }
        if is_looping(&self.content) {
            return Some(Weakness::Repetition);
        }
        let opening: String = self
            .content
            .trim_start()
            .chars()
            .take(80)
            .collect::<String>()
            .to_lowercase();
        if REFUSALS.iter().any(|r| opening.starts_with(r)) {
            return Some(Weakness::Refusal);
        }
        if self.tokens >= config.min_tokens() && f64::from(self.mean_logprob) < config.min_mean_logprob() {
            return Some(Weakness::LowConfidence);
        }
        None
    }
}

/// Whether the text ends in a loop: its last words are one phrase of 1 to 12
/// words repeated at least three times back to back, over at least 12 words.
fn is_looping(text: &str) -> bool {
    let words: Vec<&str> = text.split_whitespace().collect();
    (1..=12).any(|period| {
        let mut repeats = 1;
        while words.len() >= (repeats + 1) * period {
            let end = words.len() - repeats * period;
            if words[end - period..end] != words[words.len() - period..] {
                break;
            }
            repeats += 1;
        }
        repeats >= 3 && repeats * period >= 12
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::Usage;
    use switchyard_engine::sampling::SampledToken;

    fn config() -> LadderConfig {
        serde_saphyr::from_str("min_mean_logprob: -2.0\nmin_tokens: 3\n").unwrap()
    }

    fn content(text: &str, logprob: f32) -> Event {
        Event::Content {
            text: text.to_string(),
            token: Some(SampledToken {
                id: 1,
                logprob,
                top: vec![(1, logprob), (2, logprob - 0.5)],
            }),
        }
    }

    fn finished(reason: FinishReason, client_limited: bool) -> Event {
        Event::Finished(Finished {
            finish_reason: reason,
            usage: Usage::default(),
            reasoning_tokens: 0,
            cached_tokens: 0,
            client_limited,
            tool_calls: 0,
        })
    }

    fn judge(events: &[Event]) -> Option<Weakness> {
        let mut signals = Signals::default();
        events.iter().for_each(|p| signals.observe(p));
        signals.judge(&config())
    }

    #[test]
    fn confident_complete_answers_pass() {
        let answer = [
            content("Paris", -0.1),
            content(" is", -0.2),
            content(" the capital.", -0.3),
        ];
        assert_eq!(judge(&answer), None);
        let mut whole = answer.to_vec();
        whole.push(finished(FinishReason::Stop, false));
        assert_eq!(judge(&whole), None);
        let mut signals = Signals::default();
        whole.iter().for_each(|p| signals.observe(p));
        assert!((signals.mean_logprob + 0.2).abs() < 1e-6 && (signals.mean_margin - 0.5).abs() < 1e-6);
    }

    #[test]
    fn each_weakness_is_recognised() {
        assert_eq!(
            judge(&[content("  ", -0.1), finished(FinishReason::Stop, false)]),
            Some(Weakness::Empty)
        );
        let cut = [content("The answer is", -0.1), finished(FinishReason::Length, false)];
        assert_eq!(judge(&cut), Some(Weakness::Truncated));
        let asked = [content("The answer is", -0.1), finished(FinishReason::Length, true)];
        assert_eq!(judge(&asked), None, "cut where the client asked is not a weakness");
        let looping = content(&"and then the cat ".repeat(5), -0.1);
        assert_eq!(judge(&[looping]), Some(Weakness::Repetition));
        let refusal = content("I'm sorry, but I can't help with that.", -0.1);
        assert_eq!(judge(&[refusal]), Some(Weakness::Refusal));
        let unsure = [content("Maybe", -3.0), content(" it", -2.5), content(" is", -2.8)];
        assert_eq!(judge(&unsure), Some(Weakness::LowConfidence));
        assert_eq!(judge(&unsure[..2]), None, "too few tokens to judge confidence");
    }

    /// A tool call is an answer: not empty, and its arguments' tokens are
    /// judged like text.
    #[test]
    fn tool_calls_are_judged_by_their_arguments() {
        let token = |logprob: f32| {
            Some(SampledToken {
                id: 1,
                logprob,
                top: vec![(1, logprob), (2, logprob - 0.5)],
            })
        };
        let call = |logprob: f32| {
            vec![
                Event::ToolCall {
                    index: 0,
                    id: "call_0".into(),
                    name: "get_weather".into(),
                    token: token(logprob),
                },
                Event::ToolArguments {
                    index: 0,
                    text: "{\"city\": ".into(),
                    token: token(logprob),
                },
                Event::ToolArguments {
                    index: 0,
                    text: "\"Paris\"}".into(),
                    token: token(logprob),
                },
                finished(FinishReason::Stop, false),
            ]
        };
        assert_eq!(judge(&call(-0.1)), None);
        assert_eq!(judge(&call(-3.0)), Some(Weakness::LowConfidence));
    }

    #[test]
    fn loops_need_three_repeats_over_twelve_words() {
        assert!(is_looping(&"yes ".repeat(12)));
        assert!(!is_looping(&"yes ".repeat(11)));
        assert!(!is_looping("a b c d a b c d e f g h"));
        assert!(is_looping(
            "start: one two three four one two three four one two three four"
        ));
    }
}
