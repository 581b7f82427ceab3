//! Sticky sessions: within one conversation the tier only goes up, so a
//! follow-up never bounces from the remote model back to the local one.
//!
//! A conversation is named by the client (`x-switchyard-session`) or, failing
//! that, recognised by its messages: each request is remembered under a hash of
//! all its messages, and a follow-up finds it by hashing its own messages
//! without the newest exchange (the last user turn and the assistant and tool
//! turns just before it), which is exactly what the previous request sent.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::outcome::Tier;

pub struct Sessions {
    ttl: Duration,
    max_entries: usize,
    entries: Mutex<HashMap<u64, Entry>>,
}

#[derive(Clone, Copy)]
struct Entry {
    tier: Tier,
    last_seen: Instant,
}

/// Where a request's conversation is looked up and remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionKeys {
    pub lookup: Option<u64>,
    pub store: u64,
}

impl SessionKeys {
    /// Keys for a client-named session, scoped to the caller so that two
    /// clients choosing the same name do not share a conversation.
    pub fn named(caller: &str, session: &str) -> SessionKeys {
        let mut hasher = std::hash::DefaultHasher::new();
        ("session", caller, session).hash(&mut hasher);
        let key = hasher.finish();
        SessionKeys {
            lookup: Some(key),
            store: key,
        }
    }

    /// Keys recognising a conversation by its messages.
    pub fn from_messages(caller: &str, messages: &[Value]) -> SessionKeys {
        let hash_of = |messages: &[Value]| {
            let mut hasher = std::hash::DefaultHasher::new();
            ("conversation", caller).hash(&mut hasher);
            for message in messages {
                message.get("role").and_then(Value::as_str).hash(&mut hasher);
                // Content is a string or an array of parts: hash it whole.
                hash_value(message.get("content").unwrap_or(&Value::Null), &mut hasher);
            }
            hasher.finish()
        };
        fn role(m: &Value) -> &str {
            m.get("role").and_then(Value::as_str).unwrap_or("")
        }
        let mut prefix = messages.len();
        if prefix > 0 && role(&messages[prefix - 1]) == "user" {
            prefix -= 1;
            while prefix > 0 && matches!(role(&messages[prefix - 1]), "assistant" | "tool") {
                prefix -= 1;
            }
        }
        let has_history = prefix < messages.len().saturating_sub(1);
        SessionKeys {
            lookup: has_history.then(|| hash_of(&messages[..prefix])),
            store: hash_of(messages),
        }
    }
}

/// Feeds a JSON value to `hasher` as its structure: distinct values hash
/// distinctly (each kind and length is hashed before its contents), and no
/// text is built, however large the value.
fn hash_value(value: &Value, hasher: &mut impl Hasher) {
    match value {
        Value::Null => 0u8.hash(hasher),
        Value::Bool(b) => (1u8, b).hash(hasher),
        Value::Number(n) => (2u8, n.as_f64().map(f64::to_bits), n.as_i64(), n.as_u64()).hash(hasher),
        Value::String(s) => (3u8, s).hash(hasher),
        Value::Array(items) => {
            (4u8, items.len()).hash(hasher);
            items.iter().for_each(|item| hash_value(item, hasher));
        }
        Value::Object(fields) => {
            (5u8, fields.len()).hash(hasher);
            for (key, field) in fields {
                key.hash(hasher);
                hash_value(field, hasher);
            }
        }
    }
}

impl Sessions {
    pub fn new(ttl: Duration, max_entries: usize) -> Sessions {
        Sessions {
            ttl,
            max_entries,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The highest tier the conversation has reached, if it is known.
    pub fn floor(&self, keys: SessionKeys) -> Option<Tier> {
        let key = keys.lookup?;
        let entries = self.entries.lock().expect("sessions lock");
        entries
            .get(&key)
            .filter(|entry| entry.last_seen.elapsed() < self.ttl)
            .map(|entry| entry.tier)
    }

    /// Remembers the tier this request was answered at.
    pub fn remember(&self, keys: SessionKeys, tier: Tier) {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("sessions lock");
        let tier = keys
            .lookup
            .and_then(|k| entries.get(&k))
            .map_or(tier, |previous| previous.tier.max(tier));
        entries.insert(keys.store, Entry { tier, last_seen: now });
        if entries.len() > self.max_entries {
            self.evict(&mut entries, now);
        }
    }

    /// Drops expired conversations, then the least recently seen tenth, so that
    /// eviction runs once per many inserts rather than on every one.
    fn evict(&self, entries: &mut HashMap<u64, Entry>, now: Instant) {
        entries.retain(|_, e| now.duration_since(e.last_seen) < self.ttl);
        if entries.len() > self.max_entries {
            let mut seen: Vec<Instant> = entries.values().map(|e| e.last_seen).collect();
            let keep = self.max_entries - self.max_entries / 10;
            let cut_at = seen.len() - keep;
            let (_, &mut cutoff, _) = seen.select_nth_unstable(cut_at);
            entries.retain(|_, e| e.last_seen >= cutoff);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.lock().expect("sessions lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conversation(turns: &[(&str, &str)]) -> Vec<Value> {
        turns.iter().map(|(r, c)| json!({"role": r, "content": c})).collect()
    }

    #[test]
    fn contents_are_told_apart_by_their_structure() {
        let key =
            |content: Value| SessionKeys::from_messages("a", &[json!({"role": "user", "content": content})]).store;
        let contents = [
            json!("ab"),
            json!("a b"),
            json!(["ab"]),
            json!([{"type": "text", "text": "ab"}]),
            json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]),
            json!([{"type": "text", "text": "ab", "cache": true}]),
            json!(null),
            json!(1),
            json!(1.0),
        ];
        let keys: Vec<u64> = contents.iter().cloned().map(key).collect();
        for (i, a) in keys.iter().enumerate() {
            for (j, b) in keys.iter().enumerate().skip(i + 1) {
                assert_ne!(a, b, "{} and {}", contents[i], contents[j]);
            }
        }
        assert_eq!(key(json!("ab")), key(json!("ab")));
    }

    #[test]
    fn a_follow_up_finds_the_request_it_continues() {
        let first = conversation(&[("system", "be brief"), ("user", "prove it")]);
        let second = conversation(&[
            ("system", "be brief"),
            ("user", "prove it"),
            ("assistant", "proof..."),
            ("user", "and the converse?"),
        ]);
        let k1 = SessionKeys::from_messages("a", &first);
        let k2 = SessionKeys::from_messages("a", &second);
        assert_eq!(k1.lookup, None, "a first turn has no history");
        assert_eq!(k2.lookup, Some(k1.store));
        assert_ne!(
            SessionKeys::from_messages("b", &second).lookup,
            k2.lookup,
            "callers are apart"
        );
    }

    #[test]
    fn the_tier_only_goes_up_within_a_conversation() {
        let sessions = Sessions::new(Duration::from_secs(60), 100);
        let first = conversation(&[("user", "hard question")]);
        let second = conversation(&[("user", "hard question"), ("assistant", "a"), ("user", "thanks")]);
        let third = conversation(&[
            ("user", "hard question"),
            ("assistant", "a"),
            ("user", "thanks"),
            ("assistant", "b"),
            ("user", "bye"),
        ]);
        sessions.remember(SessionKeys::from_messages("c", &first), Tier::Remote);
        let k2 = SessionKeys::from_messages("c", &second);
        assert_eq!(sessions.floor(k2), Some(Tier::Remote));
        sessions.remember(k2, Tier::Local);
        assert_eq!(
            sessions.floor(SessionKeys::from_messages("c", &third)),
            Some(Tier::Remote)
        );
    }

    #[test]
    fn named_sessions_expire_and_the_table_stays_bounded() {
        let sessions = Sessions::new(Duration::from_millis(0), 10);
        let keys = SessionKeys::named("c", "s1");
        sessions.remember(keys, Tier::Remote);
        assert_eq!(sessions.floor(keys), None, "expired at once with a zero ttl");
        let sessions = Sessions::new(Duration::from_secs(60), 10);
        for i in 0..100 {
            sessions.remember(SessionKeys::named("c", &i.to_string()), Tier::Local);
        }
        assert!(sessions.len() <= 10, "{}", sessions.len());
        assert_eq!(sessions.floor(SessionKeys::named("c", "99")), Some(Tier::Local));
    }
}
