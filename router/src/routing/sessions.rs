//! Sticky sessions: within one conversation the tier only goes up, so a
//! follow-up never bounces from the remote model back to the local one.
//!
//! A conversation is named by the client (`x-switchyard-session`) or, failing
//! that, recognised by its messages: each request is remembered under a hash of
//! all its messages, and a follow-up finds it by hashing its own messages
//! without the newest exchange (the last user turn and the assistant and tool
//! turns just before it), which is exactly what the previous request sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Script;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::outcome::Tier;
use crate::state::Store;

/// A conversation's name: SHA-256 of what identifies it, the same in
/// every replica and every build (a shared store keys sessions by it).
pub type SessionKey = [u8; 32];

pub struct Sessions {
    ttl: Duration,
    max_entries: usize,
    entries: Mutex<HashMap<SessionKey, Entry>>,
}

#[derive(Clone, Copy)]
struct Entry {
    tier: Tier,
    last_seen: Instant,
}

/// Where a request's conversation is looked up and remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionKeys {
    pub lookup: Option<SessionKey>,
    pub store: SessionKey,
}

impl SessionKeys {
    /// Keys for a client-named session, scoped to the caller so that two
    /// clients choosing the same name do not share a conversation.
    pub fn named(caller: &str, session: &str) -> SessionKeys {
        let mut hasher = Sha256::new();
        feed_str(&mut hasher, "session");
        feed_str(&mut hasher, caller);
        feed_str(&mut hasher, session);
        let key = hasher.finalize().into();
        SessionKeys {
            lookup: Some(key),
            store: key,
        }
    }

    /// Keys recognising a conversation by its messages.
    pub fn from_messages(caller: &str, messages: &[Value]) -> SessionKeys {
        let hash_of = |messages: &[Value]| -> SessionKey {
            let mut hasher = Sha256::new();
            feed_str(&mut hasher, "conversation");
            feed_str(&mut hasher, caller);
            for message in messages {
                match message.get("role").and_then(Value::as_str) {
                    Some(role) => {
                        hasher.update([1]);
                        feed_str(&mut hasher, role);
                    }
                    None => hasher.update([0]),
                }
                // Content is a string or an array of parts: hash it whole.
                feed_value(message.get("content").unwrap_or(&Value::Null), &mut hasher);
            }
            hasher.finalize().into()
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

/// A string, its length first, so that no two sequences of strings feed
/// the same bytes.
fn feed_str(hasher: &mut Sha256, text: &str) {
    hasher.update((text.len() as u64).to_le_bytes());
    hasher.update(text.as_bytes());
}

/// Feeds a JSON value as its structure: distinct values hash distinctly
/// (each kind and length is fed before its contents), and no text is built,
/// however large the value.
fn feed_value(value: &Value, hasher: &mut Sha256) {
    match value {
        Value::Null => hasher.update([0]),
        Value::Bool(b) => hasher.update([1, u8::from(*b)]),
        Value::Number(n) => {
            hasher.update([2]);
            // The number as written: 1 and 1.0 are told apart.
            feed_str(hasher, &n.to_string());
        }
        Value::String(s) => {
            hasher.update([3]);
            feed_str(hasher, s);
        }
        Value::Array(items) => {
            hasher.update([4]);
            hasher.update((items.len() as u64).to_le_bytes());
            items.iter().for_each(|item| feed_value(item, hasher));
        }
        Value::Object(fields) => {
            hasher.update([5]);
            hasher.update((fields.len() as u64).to_le_bytes());
            for (key, field) in fields {
                feed_str(hasher, key);
                feed_value(field, hasher);
            }
        }
    }
}

/// Sticky sessions as the daemon keeps them: in the process, or in the
/// shared store so that a conversation's next turn keeps its tier on any
/// replica. The process's table is kept either way: it answers while the
/// store is unreachable.
pub struct SessionStore {
    memory: Sessions,
    shared: Option<Arc<Store>>,
}

fn raise_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("../state/scripts/raise.lua")))
}

fn tier_number(tier: Tier) -> i64 {
    match tier {
        Tier::Local => 0,
        Tier::LocalReasoning => 1,
        Tier::Remote => 2,
    }
}

fn tier_of(number: i64) -> Option<Tier> {
    match number {
        0 => Some(Tier::Local),
        1 => Some(Tier::LocalReasoning),
        2 => Some(Tier::Remote),
        _ => None,
    }
}

impl SessionStore {
    pub fn new(ttl: Duration, max_entries: usize, shared: Option<Arc<Store>>) -> SessionStore {
        SessionStore {
            memory: Sessions::new(ttl, max_entries),
            shared,
        }
    }

    fn key(store: &Store, key: &SessionKey) -> String {
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        store.key(&format!("session:{hex}"))
    }

    /// The highest tier the conversation has reached, if it is known.
    pub async fn floor(&self, keys: SessionKeys) -> Option<Tier> {
        let local = self.memory.floor(keys);
        let (Some(store), Some(lookup)) = (&self.shared, keys.lookup) else {
            return local;
        };
        let key = SessionStore::key(store, &lookup);
        let shared = store
            .run("session", |mut con| async move {
                redis::cmd("GET").arg(&key).query_async::<Option<i64>>(&mut con).await
            })
            .await;
        match shared {
            Ok(number) => number.and_then(tier_of).max(local),
            Err(_) => local,
        }
    }

    /// Remembers the tier this request was answered at (in the store in the
    /// background).
    pub fn remember(&self, keys: SessionKeys, tier: Tier) {
        self.memory.remember(keys, tier);
        let Some(store) = self.shared.clone() else { return };
        if !store.is_up() {
            return;
        }
        let lookup = SessionStore::key(&store, &keys.lookup.unwrap_or(keys.store));
        let into = SessionStore::key(&store, &keys.store);
        let ttl_ms = self.memory.ttl.as_millis() as u64;
        tokio::spawn(async move {
            let _ = store
                .run("session", |mut con| async move {
                    raise_script()
                        .key(&lookup)
                        .key(&into)
                        .arg(tier_number(tier))
                        .arg(ttl_ms.max(1))
                        .invoke_async::<i64>(&mut con)
                        .await
                })
                .await;
        });
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
    fn evict(&self, entries: &mut HashMap<SessionKey, Entry>, now: Instant) {
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
        let keys: Vec<SessionKey> = contents.iter().cloned().map(key).collect();
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
