//! Privacy rules: detectors for personal data and secrets, and the policy's own
//! patterns. A request that matches any rule never leaves the machine.
//!
//! Each detector is a cheap regex that finds candidates, then a check that
//! throws out look-alikes where the format has one (Luhn for card numbers,
//! mod-97 for IBANs), so that order numbers and timestamps do not pin traffic
//! to the local model. Only the rule's name is ever reported, never the match.

use regex::{Match, Regex};
use serde_json::{Map, Value};

use crate::policy::{Detector, PrivacyConfig};

pub struct PrivacyRules {
    rules: Vec<Rule>,
}

struct Rule {
    name: String,
    regex: Regex,
    /// Whether a candidate (the text searched, the regex's match) is the real thing.
    check: fn(&str, Match<'_>) -> bool,
}

impl PrivacyRules {
    /// Builds the rules of a checked policy (its regexes are known to compile).
    pub fn from_config(config: &PrivacyConfig) -> Result<PrivacyRules, regex::Error> {
        let mut rules = Vec::new();
        let mut detectors: Vec<Detector> = config.detectors().collect();
        detectors.dedup();
        for detector in detectors {
            let (pattern, check): (&str, fn(&str, Match<'_>) -> bool) = match detector {
                Detector::Email => (r"(?i)\b[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}\b", accept),
                // International (+CC ...) or national numbers with separators;
                // the digit count is checked below.
                Detector::Phone => (
                    r"(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]?\d{2,4}){2,4}\b",
                    is_phone_number,
                ),
                // Runs of digit groups; the card number may be any part of one
                // (`4111 1111 1111 1111 12/26`), see `holds_card_number`.
                Detector::Card => (r"\b\d+(?:(?: {1,2}|[.-])\d+)*\b", holds_card_number),
                Detector::Iban => (
                    r"(?i)\b[a-z]{2}\d{2}(?:[ ]?[a-z0-9]{4}){2,7}(?:[ ]?[a-z0-9]{1,4})?\b",
                    |_, m| is_iban(m.as_str()),
                ),
                Detector::Secret => (SECRET_PATTERN, accept),
            };
            rules.push(Rule {
                name: detector.name().to_string(),
                regex: Regex::new(pattern)?,
                check,
            });
        }
        for pattern in &config.patterns {
            rules.push(Rule {
                name: pattern.name().to_string(),
                regex: Regex::new(pattern.regex())?,
                check: accept,
            });
        }
        Ok(PrivacyRules { rules })
    }

    /// The name of the first rule the text matches.
    pub fn first_match(&self, text: &str) -> Option<&str> {
        self.rules
            .iter()
            .find(|rule| rule.regex.find_iter(text).any(|m| (rule.check)(text, m)))
            .map(|rule| rule.name.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// Well-known key and token shapes: OpenAI/Anthropic-style `sk-...`, AWS access
/// key ids, GitHub and Slack tokens, Google API keys, JWTs, PEM private keys.
const SECRET_PATTERN: &str = concat!(
    r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}",
    r"|\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",
    r"|\bgh[pousr]_[A-Za-z0-9]{36,}\b",
    r"|\bgithub_pat_[A-Za-z0-9_]{40,}\b",
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}",
    r"|\bAIza[0-9A-Za-z_-]{35}\b",
    r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    r"|-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----",
);

fn accept(_: &str, _: Match<'_>) -> bool {
    true
}

/// Every text a request would carry off the machine, one per line: each
/// string and number in its body (messages and their parts, tool calls and
/// their arguments, tool definitions, `user`, `metadata`, ...), except the
/// fields that only name things (`model`, `role`, `type`) and inline images.
pub fn egress_text(body: &Map<String, Value>) -> String {
    fn walk(value: &Value, out: &mut String) {
        match value {
            Value::String(s) if !s.starts_with("data:") => {
                out.push_str(s);
                out.push('\n');
            }
            Value::Number(n) => {
                out.push_str(&n.to_string());
                out.push('\n');
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            Value::Object(fields) => walk_fields(fields, out),
            _ => {}
        }
    }
    fn walk_fields(fields: &Map<String, Value>, out: &mut String) {
        fields
            .iter()
            .filter(|(key, _)| !matches!(key.as_str(), "model" | "role" | "type"))
            .for_each(|(_, v)| walk(v, out));
    }
    let mut out = String::new();
    walk_fields(body, &mut out);
    out
}

fn digits(text: &str) -> Vec<u8> {
    text.bytes().filter(u8::is_ascii_digit).map(|b| b - b'0').collect()
}

fn is_phone_number(text: &str, m: Match<'_>) -> bool {
    let candidate = m.as_str();
    let n = digits(candidate).len();
    // Bare digit runs are more often ids or amounts than phone numbers; a
    // number written with a country code or separators is a phone number.
    let written_as_phone = candidate.starts_with('+') || candidate.contains([' ', '-', '.', '(']);
    // Part of something longer: a clock time (`2024-01-15 10:30:45`), an
    // address or version (`10.0.0.12`, `1.2.3.4567`), a word or a number.
    let before = text[..m.start()].chars().next_back();
    let mut after = text[m.end()..].chars();
    let continued =
        matches!(after.next(), Some(':' | '.' | ',' | '/')) && after.next().is_some_and(|c| c.is_ascii_digit());
    let embedded = before.is_some_and(|c| c.is_alphanumeric() || matches!(c, '.' | ':' | '/' | '_'));
    (9..=15).contains(&n)
        && written_as_phone
        && !continued
        && !embedded
        && !is_dotted_quad(candidate)
        && !starts_with_date(candidate)
        && !is_card_number(candidate)
}

/// An IPv4 address: four dot-separated numbers up to 255.
fn is_dotted_quad(candidate: &str) -> bool {
    let parts: Vec<&str> = candidate.split('.').collect();
    parts.len() == 4 && parts.iter().all(|p| p.len() <= 3 && p.parse::<u8>().is_ok())
}

/// A run that opens with a calendar date, `2024-01-15` or `2024.10.15`.
fn starts_with_date(candidate: &str) -> bool {
    let b = candidate.as_bytes();
    let year = b.len() >= 8 && b[..4].iter().all(u8::is_ascii_digit) && matches!(&b[..2], b"19" | b"20");
    year && matches!(b[4], b'-' | b'.' | b'/') && {
        let rest = &candidate[5..];
        let month: String = rest.chars().take_while(char::is_ascii_digit).collect();
        month.parse::<u8>().is_ok_and(|m| (1..=12).contains(&m)) && rest[month.len()..].starts_with(['-', '.', '/'])
    }
}

/// Whether a run of digit groups holds a card number: the whole run written
/// without separators, or consecutive groups written the way cards are
/// (a group of four, then groups of three to six: 4-4-4-4, 4-6-5, 4-4-4-4-3),
/// 13 to 19 digits with a valid Luhn digit. Other groups around it (an expiry
/// date, a CVV, a count before it) do not hide it; a number found inside a
/// longer run must also open like a major network's card (2221-2720, 3-6), so
/// that lists of years or amounts are not read as cards one window at a time.
fn holds_card_number(_: &str, m: Match<'_>) -> bool {
    let groups: Vec<&str> = m
        .as_str()
        .split(|c: char| !c.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .collect();
    if groups.len() == 1 {
        return is_card_number(groups[0]);
    }
    (0..groups.len()).filter(|&i| groups[i].len() == 4).any(|start| {
        let mut joined = String::from(groups[start]);
        for (end, group) in groups.iter().enumerate().skip(start + 1) {
            if !(3..=6).contains(&group.len()) {
                return false;
            }
            joined.push_str(group);
            if joined.len() > 19 {
                return false;
            }
            let whole_run = start == 0 && end == groups.len() - 1;
            if joined.len() >= 13 && is_card_number(&joined) && (whole_run || opens_like_a_card(&joined)) {
                return true;
            }
        }
        false
    })
}

fn opens_like_a_card(number: &str) -> bool {
    let prefix: u32 = number[..4].parse().unwrap_or(0);
    matches!(number.as_bytes()[0], b'3'..=b'6') || (2221..=2720).contains(&prefix)
}

fn is_card_number(candidate: &str) -> bool {
    let digits = digits(candidate);
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn is_iban(candidate: &str) -> bool {
    let compact: Vec<u8> = candidate
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .map(|b| b.to_ascii_uppercase())
        .collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    // Move the country code and check digits to the end, read letters as
    // 10..35, and the whole number must be 1 modulo 97.
    let rearranged = compact[4..].iter().chain(&compact[..4]);
    let mut remainder: u32 = 0;
    for &b in rearranged {
        let value = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(detectors: &str, patterns: &str) -> PrivacyRules {
        let yaml = format!("detectors: [{detectors}]\npatterns: [{patterns}]\n");
        let config: PrivacyConfig = serde_saphyr::from_str(&yaml).unwrap();
        PrivacyRules::from_config(&config).unwrap()
    }

    #[test]
    fn card_numbers_need_a_valid_luhn_digit() {
        let r = rules("card", "");
        assert_eq!(r.first_match("my card is 4111 1111 1111 1111, thanks"), Some("card"));
        assert_eq!(r.first_match("card 5500-0000-0000-0004"), Some("card"));
        assert_eq!(r.first_match("order 4111 1111 1111 1112 shipped"), None);
        assert_eq!(r.first_match("the year 2024 had 366 days"), None);
        // Written with what usually surrounds it, or other separators.
        assert_eq!(r.first_match("Card 4111 1111 1111 1111 12/26 CVV 123"), Some("card"));
        assert_eq!(r.first_match("Cards: 1 4111 1111 1111 1111"), Some("card"));
        assert_eq!(r.first_match("4111.1111.1111.1111"), Some("card"));
        assert_eq!(r.first_match("4111  1111  1111  1111"), Some("card"));
        assert_eq!(r.first_match("amex 3782 822463 10005 exp 01/27"), Some("card"));
        assert_eq!(
            r.first_match("years 2017 2018 2019 2020 2021 2022 2023 2024 2025"),
            None
        );
        assert_eq!(r.first_match("pi is 3.14159 and e is 2.71828"), None);
    }

    #[test]
    fn ibans_need_a_valid_check_sum() {
        let r = rules("iban", "");
        assert_eq!(r.first_match("pay to DE89 3704 0044 0532 0130 00 today"), Some("iban"));
        assert_eq!(r.first_match("GB82WEST12345698765432"), Some("iban"));
        assert_eq!(r.first_match("GB82WEST12345698765433"), None);
    }

    #[test]
    fn emails_phones_and_secrets_are_found() {
        let r = rules("email, phone, secret", "");
        assert_eq!(r.first_match("write to jane.doe@example.co.uk"), Some("email"));
        assert_eq!(r.first_match("call +44 20 7946 0958 tomorrow"), Some("phone"));
        assert_eq!(r.first_match("call (555) 123-4567"), Some("phone"));
        assert_eq!(r.first_match("key sk-proj-abcdefghijklmnopqrstuvwx123"), Some("secret"));
        assert_eq!(r.first_match("AKIAIOSFODNN7EXAMPLE is the id"), Some("secret"));
        assert_eq!(r.first_match("-----BEGIN RSA PRIVATE KEY-----\nMII"), Some("secret"));
        assert_eq!(r.first_match("What is 12 times 13? Explain 3.14."), None);
        assert_eq!(r.first_match("order number 123456789012"), None);
        // Timestamps, addresses and versions are not phone numbers.
        assert_eq!(r.first_match("Log line at 2024-01-15 10:30:45 says timeout"), None);
        assert_eq!(r.first_match("ping 192.168.100.200 fails"), None);
        assert_eq!(r.first_match("version 2024.10.15.1234 is out"), None);
        assert_eq!(r.first_match("call 555.123.4567 or 06 12 34 56 78"), Some("phone"));
    }

    #[test]
    fn everything_a_request_sends_is_searched() {
        let body: Value = serde_json::from_str(
            r#"{"model": "gpt-4o", "user": "u-1", "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hi"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,4111111111111111"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": "pay", "arguments": "{\"card\": \"4111 1111 1111 1111\"}"}}]}],
                "metadata": {"account": 4000056655665556}}"#,
        )
        .unwrap();
        let text = egress_text(body.as_object().unwrap());
        assert!(text.contains("4111 1111 1111 1111") && text.contains("4000056655665556"));
        assert!(!text.contains("gpt-4o") && !text.contains("data:image"));
        assert_eq!(rules("card", "").first_match(&text), Some("card"));
    }

    #[test]
    fn custom_patterns_are_named_and_detectors_are_opt_in() {
        let r = rules("", "{ name: codename, regex: '(?i)\\bproject bluebird\\b' }");
        assert_eq!(r.first_match("status of Project Bluebird?"), Some("codename"));
        assert_eq!(r.first_match("jane.doe@example.com"), None);
    }
}
