//! The policy file: one YAML document that says where Switchyard listens, who may
//! call it, and which backends answer.
//!
//! Loading is two steps, and every problem from either step carries the
//! `line:column` it came from:
//!
//! 1. **Shape** — serde turns the YAML into the typed structs below. Unknown keys
//!    are rejected (`deny_unknown_fields` everywhere), so a typo such as
//!    `api_key_evn` fails loudly instead of silently falling back to a default.
//! 2. **Meaning** — [`Policy::problems`] checks what types cannot express: unique
//!    backend names, well-formed URLs, sane timeouts, that `auto` points at a
//!    backend that exists. It reports *all* problems at once, not just the first,
//!    so `switchyard policy check` is useful as an editor loop.
//!
//! Values that need a location for step 2 are wrapped in
//! [`Spanned`](serde_saphyr::Spanned). The wrapper stays inside `policy/`:
//! those fields are private to this module, and the rest of the crate reads
//! plain values through accessors (`name()`, `threads()`, a `Duration` for a
//! field in milliseconds or seconds), so it never depends on the parser's
//! types. A fault found only when the daemon builds what the policy
//! describes (a client key's variable unset, the budget state file not
//! opening) is still reported at its line: the config makes the located
//! problem ([`ClientKeyConfig::problem`], [`BudgetsConfig::state_file_problem`]).
//! The file never holds secrets: upstream keys and client keys are named by the
//! environment variable that holds them (client keys may also be given as a
//! SHA-256 digest).
//!
//! Each section's schema sits beside its checks: `server.rs` (`server`,
//! `auth`), `backends.rs`, `routing.rs` (`routing`, `ladder`, `privacy`,
//! `budgets`), `state.rs` (`state`, `rate_limits`); `problem.rs` holds the located problems and the parser's errors
//! made into them. Everything is re-exported here.

mod backends;
pub mod edit;
mod problem;
mod routing;
mod server;
mod state;

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

pub use backends::*;
pub use problem::*;
pub use routing::*;
pub use server::*;
pub use state::*;

/// Default request body limit. OpenAI itself accepts bodies far larger than any
/// sane chat request; 4 MiB holds ~1M tokens of text, well past any context window
/// we route to, while bounding what one request can make us buffer.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The model alias that lets Switchyard choose the backend.
pub const AUTO_MODEL: &str = "auto";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    pub backends: BackendsConfig,
    pub routing: RoutingConfig,
    #[serde(default)]
    pub privacy: PrivacyConfig,
    pub budgets: Option<BudgetsConfig>,
    #[serde(default)]
    pub ladder: LadderConfig,
    /// Where budgets, sticky sessions and rate limits are kept.
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub rate_limits: RateLimitsConfig,
    /// The directory of the policy file: relative paths in it are resolved from here.
    #[serde(skip)]
    pub base_dir: std::path::PathBuf,
}

impl Policy {
    /// Reads, parses and checks a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(PolicyError::Read)?;
        let mut policy = Policy::parse(&text)?;
        policy.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(policy)
    }

    /// Parses and checks policy text.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let policy: Policy =
            serde_saphyr::from_str(text).map_err(|err| PolicyError::Invalid(vec![shape_problem(&err, text)]))?;
        let problems = policy.problems();
        if problems.is_empty() {
            Ok(policy)
        } else {
            Err(PolicyError::Invalid(problems))
        }
    }

    /// Every problem of meaning in an already well-shaped policy, section by
    /// section.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        self.server_problems(&mut problems);
        self.auth.problems(&mut problems);
        let backend_names = self.backends.problems(&mut problems);
        self.routing_problems(&backend_names, &mut problems);
        self.ladder.problems(&mut problems);
        self.privacy_problems(&mut problems);
        if let Some(budgets) = &self.budgets {
            budget_problems(budgets, self.state.backend(), &mut problems);
        }
        self.state_problems(&mut problems);
        problems
    }
}

impl Policy {
    /// Listening on `listen` (a non-loopback address) with no client keys, unless
    /// `server.allow_unauthenticated` allows it, is a problem located at
    /// `server.listen`; `origin` says where the address came from
    /// (`server.listen`, or `--listen` when the command line overrides it).
    /// Start, reload and `policy check` all ask this one question.
    pub fn unauthenticated_exposure(&self, listen: SocketAddr, origin: &str) -> Option<Problem> {
        if listen.ip().is_loopback() || !self.auth.keys.is_empty() || self.server.allow_unauthenticated {
            return None;
        }
        Some(Problem::at(
            &self.server.listen,
            format!(
                "{origin} {listen} is not a loopback address and auth.keys lists no client key: anyone who can reach it could spend your upstream budget; list client keys, or set server.allow_unauthenticated: true if the network is the boundary"
            ),
        ))
    }

    /// The all-cloud baseline: the backend named by `routing.baseline_backend`,
    /// else the first of `routing.remote_backends`, else the first remote backend.
    pub fn baseline(&self) -> Option<(&str, Price)> {
        let by_name = |name: &str| self.backends.remote.iter().find(|b| b.name.value == name);
        self.routing
            .baseline_backend
            .as_ref()
            .or(self.routing.remote_backends.first())
            .and_then(|n| by_name(&n.value))
            .or(self.backends.remote.first())
            .map(|b| (b.name.value.as_str(), b.price))
    }
}

#[cfg(test)]
mod tests {
    use switchyard_engine::model::weights::Quantization;
    use switchyard_engine::quant::QuantFormat;
    use switchyard_engine::sampling::SamplingHints;

    use super::*;

    const MINIMAL: &str = "\
backends:
  remote:
    - name: cloud
      base_url: https://api.example.com/v1
      api_key_env: EXAMPLE_API_KEY
      model: big-model
      price: { input_per_mtok_usd: 1.0, output_per_mtok_usd: 2.0 }
routing:
  remote_backends: [cloud]
  thresholds: { local_below: 0.3, remote_above: 0.7, ambiguous: remote }
";

    #[test]
    fn a_misindented_key_is_pointed_at() {
        for (from, to, line) in [
            ("      model: big-model", "     model: big-model", 6),
            ("      model: big-model", "    model: big-model", 6),
        ] {
            let text = MINIMAL.replace(from, to);
            let at = problems(&text);
            assert!(
                at[0].message.contains("missing field `model`")
                    && at[0].message.contains(&format!("line {line} sets `model` indented")),
                "{at:?}"
            );
        }
    }

    fn problems(text: &str) -> Vec<Problem> {
        match Policy::parse(text) {
            Ok(_) => Vec::new(),
            Err(PolicyError::Invalid(problems)) => problems,
            Err(other) => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn built_in_thresholds_are_the_default_policys() {
        // A policy without `thresholds` must route like the shipped default
        // policy: both follow the shipped difficulty model's score.
        let minimal = MINIMAL.replace(
            "  thresholds: { local_below: 0.3, remote_above: 0.7, ambiguous: remote }\n",
            "",
        );
        assert_ne!(minimal, MINIMAL);
        let built_in = Policy::parse(&minimal).unwrap().routing.thresholds.value;
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/default.yaml");
        let shipped = Policy::load(Path::new(path)).unwrap().routing.thresholds.value;
        assert_eq!(
            (built_in.local_below, built_in.remote_above),
            (shipped.local_below, shipped.remote_above)
        );
    }

    #[test]
    fn the_passthrough_backend_is_the_first_remote_unless_named() {
        let policy = Policy::parse(MINIMAL).unwrap();
        assert_eq!(policy.routing.passthrough_backend(), Some("cloud"));
        let named = MINIMAL.replace("routing:\n", "routing:\n  passthrough_backend: cloud\n");
        assert_eq!(
            Policy::parse(&named).unwrap().routing.passthrough_backend(),
            Some("cloud")
        );
        let unknown = MINIMAL.replace("routing:\n", "routing:\n  passthrough_backend: files-only\n");
        let at = problems(&unknown);
        assert!(
            at.iter().any(|p| p
                .message
                .contains("passthrough_backend \"files-only\" is not a configured remote backend")),
            "{at:?}"
        );
    }

    #[test]
    fn endpoint_prices_match_by_path_and_model_in_order() {
        let priced = MINIMAL.replace(
            "      price: { input_per_mtok_usd: 1.0, output_per_mtok_usd: 2.0 }\n",
            "      price: { input_per_mtok_usd: 1.0, output_per_mtok_usd: 2.0 }
      endpoint_prices:
        - { endpoint: embeddings, model: small, input_per_mtok_usd: 0.02 }
        - { endpoint: embeddings, input_per_mtok_usd: 0.5 }
        - { endpoint: audio, per_minute_usd: 0.006 }
        - { endpoint: /images/generations/, per_call_usd: 0.04 }
",
        );
        let policy = Policy::parse(&priced).unwrap();
        let prices = &policy.backends.remote[0].endpoint_prices;
        let input = |price: Option<Price>| price.map(|p| p.input_per_mtok_usd);
        assert_eq!(input(prices.of("embeddings", Some("small"))), Some(0.02));
        assert_eq!(input(prices.of("embeddings", Some("large"))), Some(0.5));
        assert_eq!(input(prices.of("embeddings", None)), Some(0.5));
        assert_eq!(
            prices.of("audio/transcriptions", None).map(|p| p.per_minute_usd),
            Some(0.006)
        );
        assert_eq!(
            prices.of("images/generations", None).map(|p| p.per_call_usd),
            Some(0.04)
        );
        assert_eq!(prices.of("images/edits", None), None, "a sibling is not covered");
        assert_eq!(prices.of("audiobooks", None), None, "a segment is matched whole");
        assert_eq!(prices.of("files", None), None);
        assert!(prices.by_model("embeddings") && !prices.by_model("audio/speech"));
        assert_eq!(input(prices.first_for("embeddings")), Some(0.02));

        for (entry, message) in [
            (
                "{ endpoint: embeddings, per_call_usd: -1 }",
                "prices must be finite and not negative",
            ),
            (
                "{ endpoint: /v1/embeddings, per_call_usd: 1 }",
                "endpoint is the path after /v1/",
            ),
            ("{ endpoint: '', per_call_usd: 1 }", "endpoint is the path after /v1/"),
        ] {
            let text = MINIMAL.replace(
                "      price: { input_per_mtok_usd: 1.0, output_per_mtok_usd: 2.0 }\n",
                &format!(
                    "      price: {{ input_per_mtok_usd: 1.0, output_per_mtok_usd: 2.0 }}\n      endpoint_prices:\n        - {entry}\n"
                ),
            );
            let at = problems(&text);
            assert!(at.iter().any(|p| p.message.contains(message)), "{entry}: {at:?}");
        }
    }

    #[test]
    fn minimal_policy_loads_with_defaults() {
        let policy = Policy::parse(MINIMAL).unwrap();
        assert_eq!(policy.server.listen.value, "127.0.0.1:8080");
        assert_eq!(policy.server.max_body_bytes.value, DEFAULT_MAX_BODY_BYTES);
        assert!(policy.auth.keys.is_empty());
        assert_eq!(policy.backends.remote[0].timeouts.connect_ms.value, 5_000);
    }

    #[test]
    fn unknown_key_is_reported_with_its_line_and_column() {
        let text = MINIMAL.replace("api_key_env:", "api_key_evn:");
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].line, found[0].column), (5, 7), "{found:?}");
        assert!(found[0].message.contains("api_key_evn"), "{found:?}");
    }

    #[test]
    fn every_problem_of_meaning_is_reported_at_once() {
        let text = MINIMAL
            .replace("https://api.example.com/v1", "ftp://x")
            .replace("remote_backends: [cloud]", "remote_backends: [nowhere]")
            + "server:\n  listen: localhost\n";
        let found = problems(&text);
        let lines: Vec<u64> = found.iter().map(|p| p.line).collect();
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            lines.contains(&4) && lines.contains(&9) && lines.contains(&12),
            "{found:?}"
        );
    }

    #[test]
    fn duplicate_backend_names_are_rejected() {
        let second = "    - name: cloud\n      base_url: http://127.0.0.1:9/v1\n      model: m\n      price: { input_per_mtok_usd: 0, output_per_mtok_usd: 0 }\n";
        let text = MINIMAL.replace("routing:", &format!("{second}routing:"));
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].message.contains("duplicate backend name"));
        assert_eq!(found[0].line, 8);
    }

    #[test]
    fn client_keys_need_exactly_one_source() {
        let text = format!("{MINIMAL}auth:\n  keys:\n    - name: a\n    - name: b\n      key_sha256: XYZ\n");
        let found = problems(&text);
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn a_local_models_quant_is_read_and_an_unknown_one_is_pointed_at() {
        let local = |quant: &str| {
            MINIMAL.replace(
                "  remote:\n",
                &format!("  local:\n    - name: qwen\n      model_path: models/qwen3\n{quant}  remote:\n"),
            )
        };
        let policy = Policy::parse(&local("")).unwrap();
        assert_eq!(policy.backends.local[0].quant(), Quantization::To(QuantFormat::Q6_K));
        let policy = Policy::parse(&local("      quant: Q4_K\n")).unwrap();
        assert_eq!(policy.backends.local[0].quant(), Quantization::To(QuantFormat::Q4_K));
        let policy = Policy::parse(&local("      quant: none\n")).unwrap();
        assert_eq!(policy.backends.local[0].quant(), Quantization::Keep);
        let found = problems(&local("      quant: q3_k\n"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].line, found[0].column), (5, 14), "{found:?}");
        assert!(found[0].message.contains("q8_0, q6_k, q4_k, q4_0, none"), "{found:?}");
    }

    #[test]
    fn sampling_defaults_come_from_the_policy_then_the_model_then_openai() {
        let text = MINIMAL.replace(
            "  remote:\n",
            "  local:\n    - name: qwen\n      model_path: models/qwen3\n      sampling: { temperature: 0.3 }\n  remote:\n",
        );
        let policy = Policy::parse(&text).unwrap();
        let hints = SamplingHints {
            temperature: Some(0.6),
            top_p: Some(0.95),
            top_k: Some(20),
            ..SamplingHints::default()
        };
        let base = policy.backends.local[0].sampling.over(&hints);
        assert_eq!(
            (
                base.temperature,
                base.top_p,
                base.top_k,
                base.min_p,
                base.repetition_penalty
            ),
            (0.3, 0.95, 20, 0.0, 1.0)
        );
    }

    #[test]
    fn base_url_with_credentials_is_rejected() {
        let text = MINIMAL.replace("https://api.example.com/v1", "https://user:pw@api.example.com/v1");
        let found = problems(&text);
        assert!(found[0].message.contains("credentials"), "{found:?}");
    }

    /// MINIMAL with a local backend `small` whose last line is `setting`.
    fn with_local(setting: &str) -> String {
        let local = format!("  local:\n    - name: small\n      model_path: m.gguf\n      {setting}\n");
        MINIMAL.replace("  remote:\n", &format!("{local}  remote:\n"))
    }

    #[test]
    fn sampling_defaults_are_checked_like_request_parameters() {
        let found = problems(&with_local("sampling: { temperature: 3.0 }"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].message.contains("temperature"), "{found:?}");
        let found = problems(&with_local("thinking_sampling: { top_p: 1.5 }"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].message.contains("thinking_sampling: top_p"), "{found:?}");
    }

    #[test]
    fn a_zero_queue_wait_is_a_located_problem() {
        let found = problems(&with_local("max_queue_wait_ms: 0"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].message.contains("max_queue_wait_ms"), "{found:?}");
        assert_eq!((found[0].line, found[0].column), (5, 26), "{found:?}");
        assert_eq!(problems(&with_local("max_queue_wait_ms: 2000")), Vec::new());
    }

    #[test]
    fn the_batch_takes_eight_sequences_in_512_mib_unless_the_policy_says() {
        let policy = Policy::parse(&with_local("threads: 2")).unwrap();
        let local = &policy.backends.local[0];
        assert_eq!((local.max_sequences(), local.max_state_bytes()), (8, 512 << 20));
        let policy = Policy::parse(&with_local("max_sequences: 1")).unwrap();
        assert_eq!(policy.backends.local[0].max_sequences(), 1);
        let policy = Policy::parse(&with_local("max_state_mb: 64")).unwrap();
        assert_eq!(policy.backends.local[0].max_state_bytes(), 64 << 20);
    }

    #[test]
    fn an_empty_or_oversized_batch_is_a_located_problem() {
        for (setting, column, message) in [
            ("max_sequences: 0", 22, "max_sequences must be from 1 to 256"),
            ("max_sequences: 257", 22, "max_sequences must be from 1 to 256"),
            ("max_state_mb: 0", 21, "max_state_mb must be positive"),
        ] {
            let found = problems(&with_local(setting));
            assert_eq!(found.len(), 1, "{setting}: {found:?}");
            assert_eq!((found[0].line, found[0].column), (5, column), "{setting}: {found:?}");
            assert!(found[0].message.contains(message), "{setting}: {found:?}");
        }
        assert_eq!(problems(&with_local("max_sequences: 256")), Vec::new());
    }

    #[test]
    fn routing_privacy_and_budget_problems_are_located() {
        let text = MINIMAL.replace(
            "  thresholds: { local_below: 0.3, remote_above: 0.7, ambiguous: remote }\n",
            "  thresholds: { local_below: 0.8, remote_above: 0.7, ambiguous: remote }\n  aliases:\n    cloud: { local_below: 0.1, remote_above: 0.2, ambiguous: remote }\n",
        ) + "privacy:\n  detectors: [card]\n  patterns:\n    - name: bad\n      regex: '(unclosed'\nbudgets:\n  state_file: s.json\n  pacing_from: 1.5\n";
        let found = problems(&text);
        let at: Vec<(u64, &str)> = found.iter().map(|p| (p.line, p.message.as_str())).collect();
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(
            at[0].0 == 10 && at[0].1.contains("local_below <= remote_above"),
            "{at:?}"
        );
        assert!(at[1].0 == 12 && at[1].1.contains("alias \"cloud\""), "{at:?}");
        assert!(at[2].0 == 17 && at[2].1.starts_with("invalid regex"), "{at:?}");
        assert!(at[3].0 == 20 && at[3].1.contains("pacing_from"), "{at:?}");
    }

    #[test]
    fn state_and_rate_limit_problems_are_located() {
        let text = format!(
            "{MINIMAL}budgets:\n  state_file: s.json\n  global: {{ daily_usd: 5 }}\nstate:\n  backend: redis\n  url: redis://:hunter2@db:6379/0\n  url_env: REDIS_URL\n  key_prefix: 'a b'\n  timeout_ms: 5\nrate_limits:\n  per_key: {{ requests_per_minute: 0 }}\n"
        );
        let found = problems(&text);
        let messages: Vec<&str> = found.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(found.len(), 6, "{messages:?}");
        for expected in [
            "remove budgets.state_file",
            "url or url_env, not both",
            "never holds secrets",
            "key_prefix",
            "timeout_ms",
            "per-minute limit",
        ] {
            assert!(
                messages.iter().any(|m| m.contains(expected)),
                "{expected}: {messages:?}"
            );
        }
        assert!(!messages.iter().any(|m| m.contains("hunter2")), "{messages:?}");
        let memory_without_file = format!("{MINIMAL}budgets:\n  global: {{ daily_usd: 5 }}\n");
        let found = problems(&memory_without_file);
        assert!(found[0].message.contains("needs a state_file"), "{found:?}");
        let redis_without_address = format!("{MINIMAL}state:\n  backend: redis\n");
        let found = problems(&redis_without_address);
        assert!(found[0].message.contains("url_env"), "{found:?}");
        let good = format!(
            "{MINIMAL}budgets:\n  global: {{ daily_usd: 5 }}\nstate:\n  backend: redis\n  url_env: REDIS_URL\nrate_limits:\n  global: {{ tokens_per_minute: 100000 }}\n"
        );
        assert!(problems(&good).is_empty(), "{:?}", problems(&good));
    }

    #[test]
    fn routing_must_name_backends_of_the_right_kind() {
        let text = MINIMAL.replace("  remote_backends: [cloud]\n", "  local_backend: cloud\n");
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].message.contains("not a configured local backend"), "{found:?}");
        let neither = MINIMAL.replace("  remote_backends: [cloud]\n", "");
        let found = problems(&neither);
        assert!(found[0].message.contains("needs a local_backend"), "{found:?}");
        let unknown_detector = format!("{MINIMAL}privacy:\n  detectors: [passport]\n");
        let found = problems(&unknown_detector);
        assert_eq!((found.len(), found[0].line), (1, 12), "{found:?}");
    }

    #[test]
    fn an_unclosed_flow_mapping_is_reported_where_it_opens() {
        let text = MINIMAL.replace(
            "ambiguous: remote }",
            "ambiguous: remote\nserver:\n  listen: 127.0.0.1:8080\n",
        );
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].line, found[0].column), (10, 15), "{found:?}");
        assert!(found[0].message.contains("`{` is never closed"), "{found:?}");
        // At the end of the file too.
        let at_end = MINIMAL.replace("ambiguous: remote }", "ambiguous: remote");
        let found = problems(&at_end);
        assert_eq!((found[0].line, found[0].column), (10, 15), "{found:?}");
        // A bracket in a comment or a quoted scalar closes nothing.
        for closed_in_words in ["ambiguous: remote # }", "ambiguous: remote, x: 'a }'"] {
            let text = MINIMAL.replace("ambiguous: remote }", closed_in_words);
            let found = problems(&text);
            assert_eq!(
                (found[0].line, found[0].column),
                (10, 15),
                "{closed_in_words}: {found:?}"
            );
        }
    }

    #[test]
    fn listening_beyond_loopback_without_client_keys_is_a_located_problem_unless_allowed() {
        let open = format!("{MINIMAL}server:\n  listen: 0.0.0.0:8080\n");
        let found = problems(&open);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].line, found[0].column), (12, 11), "{found:?}");
        assert!(
            found[0].message.contains("server.listen 0.0.0.0:8080")
                && found[0].message.contains("allow_unauthenticated"),
            "{found:?}"
        );
        let allowed = format!("{open}  allow_unauthenticated: true\n");
        assert_eq!(problems(&allowed), Vec::new());
        let keyed = format!("{open}auth:\n  keys:\n    - name: a\n      key_env: A_KEY\n");
        assert_eq!(problems(&keyed), Vec::new());
        for loopback in ["127.0.0.1:8080", "'[::1]:8080'"] {
            assert_eq!(problems(&open.replace("0.0.0.0:8080", loopback)), Vec::new());
        }
    }

    #[test]
    fn cost_is_priced_per_million_tokens() {
        let price = Price {
            input_per_mtok_usd: 2.5,
            output_per_mtok_usd: 10.0,
            ..Price::FREE
        };
        assert!((price.cost_usd(1_000_000, 500_000) - 7.5).abs() < 1e-12);
        let per_call = Price {
            per_call_usd: 0.04,
            per_minute_usd: 0.006,
            ..price
        };
        let usage = crate::reply::Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 0,
            seconds: 90,
        };
        assert!((per_call.cost_of(&usage) - (2.5 + 0.04 + 0.009)).abs() < 1e-12);
    }
}
