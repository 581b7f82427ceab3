//! Client authentication against the keys listed in the policy.
//!
//! Keys are held only as SHA-256 digests and compared in constant time, so
//! neither a memory dump of the key table nor response timing reveals a key.
//! The caller's *name* (never the key) is what logs and budgets see.

use sha2::{Digest, Sha256};

use crate::openai::error::ApiError;
use crate::policy::{AuthConfig, Problem};

#[derive(Debug, Clone)]
pub struct ClientKeys {
    entries: Vec<ClientKey>,
}

#[derive(Debug, Clone)]
struct ClientKey {
    name: String,
    digest: [u8; 32],
}

/// Who made a request: a named client, or anyone when auth is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
    Client(String),
}

impl ClientKeys {
    /// Resolves every key source now, so a missing environment variable stops
    /// start-up instead of silently locking a client out (or worse, opening up).
    pub fn from_config(config: &AuthConfig) -> Result<ClientKeys, Problem> {
        let mut entries = Vec::with_capacity(config.keys.len());
        for key in &config.keys {
            let digest = match (key.key_env(), key.key_sha256()) {
                (Some(env), _) => match std::env::var(env) {
                    Ok(secret) if !secret.is_empty() => sha256(secret.as_bytes()),
                    _ => {
                        return Err(key.problem(format!(
                            "client key {:?}: environment variable {env} is not set",
                            key.name()
                        )));
                    }
                },
                (None, Some(hex)) => parse_hex_digest(hex).ok_or_else(|| {
                    key.problem(format!("client key {:?}: key_sha256 is not 64 hex digits", key.name()))
                })?,
                (None, None) => {
                    return Err(key.problem(format!("client key {:?} has no source", key.name())));
                }
            };
            entries.push(ClientKey {
                name: key.name().to_string(),
                digest,
            });
        }
        Ok(ClientKeys { entries })
    }

    pub fn is_enabled(&self) -> bool {
        !self.entries.is_empty()
    }

    /// Checks an `Authorization` header value.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Caller, ApiError> {
        if self.entries.is_empty() {
            return Ok(Caller::Anonymous);
        }
        let Some(header) = authorization else {
            return Err(ApiError::Unauthorized(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
            ));
        };
        let token = bearer_token(header).ok_or(ApiError::Unauthorized(
            "The Authorization header must be 'Bearer YOUR_KEY'.",
        ))?;
        let digest = sha256(token);
        // Check every entry, whatever matches, so timing says nothing about which.
        let mut found = None;
        for entry in &self.entries {
            if constant_time_eq(&entry.digest, &digest) {
                found = Some(entry.name.clone());
            }
        }
        found
            .map(Caller::Client)
            .ok_or(ApiError::Unauthorized("Incorrect API key provided."))
    }
}

/// The token of a `Bearer` credential, as RFC 7235 writes one:
/// `auth-scheme 1*SP token68`. The scheme is case-insensitive (`bearer`,
/// `BEARER`); one or more spaces may follow it, nothing else (no tab, no
/// missing space). Whitespace around the whole value is not part of it
/// (RFC 7230's OWS around a field value).
fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.trim_ascii().split_at_checked(b"Bearer".len())?;
    let spaces = rest.iter().take_while(|&&b| b == b' ').count();
    let token = &rest[spaces..];
    (scheme.eq_ignore_ascii_case(b"Bearer") && spaces > 0 && !token.is_empty()).then_some(token)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_hex_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_with(secret: &str) -> ClientKeys {
        ClientKeys {
            entries: vec![ClientKey {
                name: "team-a".into(),
                digest: sha256(secret.as_bytes()),
            }],
        }
    }

    #[test]
    fn no_keys_means_auth_is_off() {
        let keys = ClientKeys { entries: vec![] };
        assert_eq!(keys.authenticate(None).unwrap(), Caller::Anonymous);
    }

    #[test]
    fn the_right_key_names_its_client() {
        let keys = keys_with("sk-test-123");
        assert_eq!(
            keys.authenticate(Some(b"Bearer sk-test-123")).unwrap(),
            Caller::Client("team-a".into())
        );
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_may_be_followed_by_several_spaces() {
        let keys = keys_with("sk-test-123");
        for header in [
            "bearer sk-test-123",
            "BEARER sk-test-123",
            "bEaReR sk-test-123",
            "Bearer   sk-test-123",
        ] {
            assert_eq!(
                keys.authenticate(Some(header.as_bytes())).unwrap(),
                Caller::Client("team-a".into()),
                "{header:?}"
            );
        }
    }

    #[test]
    fn nothing_looser_than_one_or_more_spaces_separates_scheme_and_key() {
        let keys = keys_with("sk-test-123");
        for header in [
            "Bearersk-test-123",
            "Bearer\tsk-test-123",
            "Bearer \tsk-test-123",
            "Bearer ",
            "Bearer",
            "Bearers sk-test-123",
        ] {
            assert_eq!(
                keys.authenticate(Some(header.as_bytes())).unwrap_err().status(),
                401,
                "{header:?}"
            );
        }
    }

    #[test]
    fn missing_wrong_or_malformed_keys_are_401() {
        let keys = keys_with("sk-test-123");
        for header in [
            None,
            Some(&b"Bearer nope"[..]),
            Some(&b"sk-test-123"[..]),
            Some(&b"Basic abc"[..]),
        ] {
            assert_eq!(keys.authenticate(header).unwrap_err().status(), 401);
        }
    }

    #[test]
    fn hex_digests_round_trip() {
        let hex: String = sha256(b"k").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(parse_hex_digest(&hex), Some(sha256(b"k")));
        assert_eq!(parse_hex_digest("zz"), None);
    }
}
