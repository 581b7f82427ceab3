//! Privacy rules: detectors for personal data and secrets, and the policy's own
//! patterns. A request that matches any rule never leaves the machine.
//!
//! Each detector is a cheap regex that finds candidates, then a check that
//! throws out look-alikes where the format has one (Luhn for card numbers,
//! mod-97 for IBANs), so that order numbers and timestamps do not pin traffic
//! to the local model. Only the rule's name is ever reported, never the match.

use regex::Regex;

use crate::policy::{Detector, PrivacyConfig};

pub struct PrivacyRules {
    rules: Vec<Rule>,
}

struct Rule {
    name: String,
    regex: Regex,
    check: fn(&str) -> bool,
}

impl PrivacyRules {
    /// Builds the rules of a checked policy (its regexes are known to compile).
    pub fn from_config(config: &PrivacyConfig) -> Result<PrivacyRules, regex::Error> {
        let mut rules = Vec::new();
        let mut detectors: Vec<Detector> = config.detectors.iter().map(|d| d.value).collect();
        detectors.dedup();
        for detector in detectors {
            let (pattern, check): (&str, fn(&str) -> bool) = match detector {
                Detector::Email => (r"(?i)\b[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}\b", accept),
                // International (+CC ...) or national numbers with separators;
                // the digit count is checked below.
                Detector::Phone => (
                    r"(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]?\d{2,4}){2,4}\b",
                    is_phone_number,
                ),
                Detector::Card => (r"\b\d(?:[ -]?\d){12,18}\b", is_card_number),
                Detector::Iban => (
                    r"(?i)\b[a-z]{2}\d{2}(?:[ ]?[a-z0-9]{4}){2,7}(?:[ ]?[a-z0-9]{1,4})?\b",
                    is_iban,
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
                name: pattern.name.value.clone(),
                regex: Regex::new(&pattern.regex.value)?,
                check: accept,
            });
        }
        Ok(PrivacyRules { rules })
    }

    /// The name of the first rule the text matches.
    pub fn first_match(&self, text: &str) -> Option<&str> {
        self.rules
            .iter()
            .find(|rule| rule.regex.find_iter(text).any(|m| (rule.check)(m.as_str())))
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

fn accept(_: &str) -> bool {
    true
}

fn digits(text: &str) -> Vec<u8> {
    text.bytes().filter(u8::is_ascii_digit).map(|b| b - b'0').collect()
}

fn is_phone_number(candidate: &str) -> bool {
    let n = digits(candidate).len();
    // Bare digit runs are more often ids or amounts than phone numbers; a
    // number written with a country code or separators is a phone number.
    let written_as_phone = candidate.starts_with('+') || candidate.contains([' ', '-', '.', '(']);
    (9..=15).contains(&n) && written_as_phone && !is_card_number(candidate)
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
    }

    #[test]
    fn custom_patterns_are_named_and_detectors_are_opt_in() {
        let r = rules("", "{ name: codename, regex: '(?i)\\bproject bluebird\\b' }");
        assert_eq!(r.first_match("status of Project Bluebird?"), Some("codename"));
        assert_eq!(r.first_match("jane.doe@example.com"), None);
    }
}
