//! Shared state across replicas (issue 30): three daemons on one policy share
//! their budgets, sticky sessions and rate limits through a real Redis; a Redis
//! that dies, freezes or comes back, and a replica that dies mid-call, change
//! nothing that was promised: no request hangs, the money stays within the
//! budget (and within the fail-safe allowance while the store is away), and
//! what was spent is written down once.
//!
//! Remote calls are priced per call (`per_call_usd`, no token prices), so a
//! call's worst case, what the budget holds for it, is exactly what it costs:
//! how many calls a budget admits is then a matter of arithmetic, not of timing.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_e2e::daemon::scratch_dir;
use switchyard_e2e::netns::Network;
use switchyard_e2e::{
    CloudDouble, DOUBLE_API_KEY, Daemon, RedisServer, default_model, http_client, python_says_ok, sample, sample_with,
    without_reasoning,
};

/// What one remote call costs, and the most it may cost.
const CALL_USD: f64 = 0.001;
/// How long a test client waits for an answer: none may take this long.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
const HOLD_TTL_S: u64 = 3;
const ALL_REMOTE: &str = "{ local_below: 0.0, remote_above: 0.0, ambiguous: remote }";
const ALL_LOCAL: &str = "{ local_below: 1.0, remote_above: 1.0, ambiguous: local-reasoning }";

/// A key prefix of its own for each test (each also has its own server).
fn prefix(test: &str) -> String {
    format!("sy{}-{test}", std::process::id())
}

/// The policy's `state` section: Redis at `$SWITCHYARD_REDIS_URL`.
fn state_section(prefix: &str, allowance_usd: f64) -> String {
    format!(
        "state:
  backend: redis
  url_env: SWITCHYARD_REDIS_URL
  key_prefix: {prefix}
  timeout_ms: 250
  hold_ttl_s: {HOLD_TTL_S}
  failsafe:
    remote_allowance_usd: {allowance_usd}
"
    )
}

/// A remote backend on the double, named after its upstream model, priced
/// [`CALL_USD`] a call.
fn remote(double: &CloudDouble, model: &str) -> String {
    format!(
        "    - name: {model}
      base_url: {url}
      api_key_env: DOUBLE_API_KEY
      model: {model}
      price: {{ input_per_mtok_usd: 0, output_per_mtok_usd: 0, per_call_usd: {CALL_USD} }}
      timeouts: {{ connect_ms: 1000, first_byte_ms: 5000, idle_ms: 5000, total_ms: 120000 }}
      retry: {{ max_attempts: 1 }}
",
        url = double.base_url()
    )
}

/// No local model: `echo` (and `slow-stream`, one tick every 100 ms for a
/// minute) on the double, every routed request remote; `extra` appended.
fn remote_only_policy(double: &CloudDouble, extra: &str) -> String {
    format!(
        "backends:\n  remote:\n{}{}routing:\n  remote_backends: [echo]\n  thresholds: {ALL_REMOTE}\n  sessions: {{ sticky: false }}\n{extra}",
        remote(double, "echo"),
        remote(double, "slow-stream"),
    )
}

/// The embedded model as local backend `smollm2` and `echo` on the double,
/// routed requests on `thresholds`; `extra` appended.
fn local_and_remote_policy(double: &CloudDouble, thresholds: &str, routing: &str, extra: &str) -> String {
    format!(
        "backends:
  local:
    - name: smollm2
      model_path: {model}
      threads: 1
      context_length: 1024
      queue_capacity: 32
      default_max_tokens: 4
      reasoning_max_tokens: 16
  remote:
{echo}routing:
  local_backend: smollm2
  remote_backends: [echo]
  thresholds: {thresholds}
{routing}{extra}",
        model = default_model().display(),
        echo = remote(double, "echo"),
    )
}

/// One Redis, one cloud double, and three replicas on one policy. Each
/// replica is a host of its own (a network namespace on a bridge, where the
/// Redis and the double listen), or where namespaces cannot be made, a
/// loopback port of this machine.
struct Cluster {
    redis: RedisServer,
    double: CloudDouble,
    replicas: Vec<Daemon>,
    prefix: String,
    policy: String,
    env: Vec<(String, String)>,
    /// Last, so that it is taken down after the replicas on it.
    network: Option<Network>,
}

/// `policy` with `server.allow_unauthenticated: true`: replicas listening on
/// their hosts' addresses are refused without client keys unless the network
/// is the boundary, as the test's own bridge is.
fn network_is_the_boundary(policy: &str) -> String {
    const SETTING: &str = "  allow_unauthenticated: true\n";
    match policy.find("\nserver:\n") {
        Some(at) => {
            let end = at + "\nserver:\n".len();
            format!("{}{SETTING}{}", &policy[..end], &policy[end..])
        }
        None => format!("{policy}server:\n{SETTING}"),
    }
}

/// A network for a cluster's replicas, unless namespaces cannot be made here
/// (or `SWITCHYARD_TEST_NETNS=off`): then the replicas share loopback.
fn replicas_network() -> Option<Network> {
    if std::env::var("SWITCHYARD_TEST_NETNS").is_ok_and(|v| v == "off") {
        return None;
    }
    match Network::create() {
        Ok(network) => Some(network),
        Err(why) => {
            eprintln!("the replicas share this machine's loopback: no network namespaces ({why})");
            None
        }
    }
}

impl Cluster {
    /// Starts Redis, then three replicas of `policy(double, prefix)` at once
    /// (each may load a model), with `env` besides the double's key and the
    /// Redis URL; returns once each has reached the store.
    async fn start(test: &str, policy: impl Fn(&CloudDouble, &str) -> String, env: &[(&str, &str)]) -> Cluster {
        let network = replicas_network();
        let gateway = network.as_ref().map(Network::gateway);
        let redis = RedisServer::start_also_on(&scratch_dir(&format!("{test}-redis")), gateway.as_deref());
        let double = CloudDouble::start_on(gateway.as_deref().unwrap_or("127.0.0.1"));
        let prefix = prefix(test);
        let mut policy = policy(&double, &prefix);
        if network.is_some() {
            policy = network_is_the_boundary(&policy);
        }
        let mut env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        env.push(("DOUBLE_API_KEY".into(), DOUBLE_API_KEY.into()));
        env.push(("SWITCHYARD_REDIS_URL".into(), redis.shared_url()));
        let mut cluster = Cluster {
            redis,
            double,
            replicas: Vec::new(),
            prefix,
            policy,
            env,
            network,
        };
        cluster.replicas = std::thread::scope(|scope| {
            let starting: Vec<_> = (0..3).map(|_| scope.spawn(|| cluster.spawn_replica())).collect();
            starting.into_iter().map(|s| s.join().unwrap()).collect()
        });
        // A replica counts the store as down until its first probe answers
        // (it serves meanwhile, fail-safe).
        for daemon in &cluster.replicas {
            until_store(daemon, true, Duration::from_secs(10)).await;
        }
        cluster
    }

    /// One more replica on the cluster's policy, in a directory of its own,
    /// once it has reached the store.
    async fn start_replica(&self) -> Daemon {
        let daemon = self.spawn_replica();
        until_store(&daemon, true, Duration::from_secs(10)).await;
        daemon
    }

    fn spawn_replica(&self) -> Daemon {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        match &self.network {
            Some(network) => Daemon::start_on(network.host(), scratch_dir("replica"), &self.policy, &env),
            None => Daemon::start_in(scratch_dir("replica"), &self.policy, &env),
        }
    }

    /// Every key in the server: all must be the cluster's, in its hash tag.
    fn keys(&self) -> Vec<String> {
        let keys = self.redis.keys("*");
        let tagged = self.key("");
        let stray: Vec<&String> = keys.iter().filter(|k| !k.starts_with(&tagged)).collect();
        assert!(stray.is_empty(), "keys outside {tagged}*: {stray:?}");
        keys
    }

    /// The cluster's Redis key `name`: `<prefix>:{<prefix>}:name`.
    fn key(&self, name: &str) -> String {
        format!("{0}:{{{0}}}:{name}", self.prefix)
    }

    /// How many holds expired in Redis, charged their worst case.
    fn expired_holds(&self) -> String {
        self.redis.command(&["HLEN", &self.key("expired")])
    }

    /// Today's global spend and what calls in flight hold globally, in USD,
    /// as Redis has them (amounts are nano-dollars in hashes by scope).
    fn redis_books(&self) -> (f64, f64) {
        let keys = self.keys();
        let nano = |text: String| {
            if text.is_empty() {
                0.0
            } else {
                text.parse::<f64>().unwrap() / 1e9
            }
        };
        let spent = keys
            .iter()
            .filter(|k| k.contains(":spent:d:"))
            .map(|k| nano(self.redis.command(&["HGET", k, "global"])))
            .sum();
        let held = nano(self.redis.command(&["HGET", &self.key("held"), "global"]));
        (spent, held)
    }

    /// Waits until Redis holds `usd` spent today and nothing held.
    async fn until_redis_spent(&self, usd: f64) {
        eventually(Duration::from_secs(10), || async move {
            match self.redis_books() {
                (spent, held) if same_usd(spent, usd) && held == 0.0 => Ok(()),
                books => Err(format!("Redis has (spent, held) {books:?}, not ({usd}, 0)")),
            }
        })
        .await;
    }

    /// The tiers Redis remembers for conversations (0 local, 1 local with
    /// reasoning, 2 remote).
    fn session_tiers(&self) -> Vec<String> {
        self.keys()
            .iter()
            .filter(|k| k.contains(":session:"))
            .map(|k| self.redis.command(&["GET", k]))
            .collect()
    }

    /// Waits until the remembered tiers are as `wanted` says (a replica
    /// remembers a turn's tier in the store just after answering it).
    async fn until_sessions(&self, what: &str, wanted: impl Fn(&[String]) -> bool) {
        let wanted = &wanted;
        eventually(Duration::from_secs(10), || async move {
            let tiers = self.session_tiers();
            if wanted(&tiers) {
                Ok(())
            } else {
                Err(format!("{what}: Redis remembers the tiers {tiers:?}"))
            }
        })
        .await;
    }

    /// The replicas' logs, for a failure's message.
    fn logs(&self) -> String {
        self.replicas
            .iter()
            .enumerate()
            .map(|(i, d)| format!("--- replica {i} ---\n{}", d.log()))
            .collect()
    }
}

/// A chat request for `model`, `max_tokens` 4.
fn ask(model: &str, content: &str) -> Value {
    json!({ "model": model, "max_tokens": 4, "temperature": 0, "messages": [{ "role": "user", "content": content }] })
}

/// An HTTP answer: its status, headers and body.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn code(&self) -> Option<&str> {
        self.body["error"]["code"].as_str()
    }

    fn route(&self) -> &str {
        self.header("x-switchyard-route").unwrap_or("")
    }

    fn reason(&self) -> &str {
        self.header("x-switchyard-reason").unwrap_or("")
    }

    fn cost(&self) -> f64 {
        self.header("x-switchyard-cost-usd")
            .map_or(0.0, |c| c.parse().expect("a number"))
    }
}

/// `POST /v1/chat/completions` on `base` (`http://ADDR`) with `headers`:
/// the answer, or why none came within [`CLIENT_TIMEOUT`].
async fn post(base: &str, body: &Value, headers: &[(&str, &str)]) -> Result<Answer, String> {
    post_with(&http_client(), base, body, headers).await
}

/// [`post`] with a client of the caller's (a load's worker keeps one).
async fn post_with(
    client: &reqwest::Client,
    base: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> Result<Answer, String> {
    let mut request = client
        .post(format!("{base}/v1/chat/completions"))
        .timeout(CLIENT_TIMEOUT)
        .json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.map_err(|e| format!("{e:?}"))?;
    Ok(Answer {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    })
}

/// [`post`] to a replica; an answer must come.
async fn chat(daemon: &Daemon, body: &Value, headers: &[(&str, &str)]) -> Answer {
    post(&daemon.url(""), body, headers)
        .await
        .unwrap_or_else(|e| panic!("no answer: {e}\n{}", daemon.log()))
}

/// Probes until `probe` returns `Ok`, for at most `within`; panics with its
/// last `Err` after that.
async fn eventually<T, F, Fut>(within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(why) if Instant::now() > deadline => panic!("not within {within:?}: {why}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The global daily spend a replica's metrics show.
fn spent_today(metrics: &str) -> f64 {
    sample_with(metrics, "switchyard_budget_spent_usd", r#"period="day",scope="global""#)
}

/// Whether two amounts of money are the same, but for rounding.
fn same_usd(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// Waits until every replica's metrics show `usd` spent today globally.
async fn until_spent_everywhere(replicas: &[&Daemon], usd: f64, within: Duration) {
    for (i, daemon) in replicas.iter().enumerate() {
        eventually(within, || async move {
            let metrics = daemon.metrics().await;
            let spent = spent_today(&metrics);
            if same_usd(spent, usd) {
                Ok(())
            } else {
                Err(format!(
                    "replica {i} shows {spent} spent today, not {usd}:\n{}",
                    metrics
                        .lines()
                        .filter(|l| l.contains("budget") || l.contains("state_store") || l.contains("failsafe"))
                        .collect::<Vec<_>>()
                        .join("\n")
                ))
            }
        })
        .await;
    }
}

/// `GET /readyz`: its status and body.
async fn readyz(daemon: &Daemon) -> (u16, Value) {
    let response = http_client().get(daemon.url("/readyz")).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Waits until a replica's readiness says the store is `up` (or not), and
/// its `switchyard_state_store_up` gauge agrees. Readiness itself stays 200:
/// the backends are ready.
async fn until_store(daemon: &Daemon, up: bool, within: Duration) -> Value {
    eventually(within, || async move {
        let (status, ready) = readyz(daemon).await;
        let store = &ready["state_store"];
        if status != 200 || store["backend"] != "redis" || store["up"] != up {
            return Err(format!("/readyz {status}: {ready}"));
        }
        let metrics = daemon.metrics().await;
        let gauge = sample_with(&metrics, "switchyard_state_store_up", r#"backend="redis""#);
        if !metrics.contains("\nswitchyard_state_store_up{") || gauge != if up { 1.0 } else { 0.0 } {
            return Err(format!(
                "switchyard_state_store_up is {gauge} (up: {up}) while /readyz says {ready}"
            ));
        }
        // The status page reads the same.
        let status = daemon.get_json("/status.json").await;
        if status["state_store"]["up"] != up || status["state_store"]["reason"].is_null() != up {
            return Err(format!("/status.json says {}", status["state_store"]));
        }
        Ok(ready)
    })
    .await
}

/// Budgets: every remote call is held against `daily_usd`, shared by the replicas.
fn budget_section(daily_usd: f64) -> String {
    format!("budgets:\n  global: {{ daily_usd: {daily_usd} }}\n")
}

#[tokio::test]
async fn a_budget_is_shared_by_the_replicas_and_concurrent_calls_cannot_overspend_it() {
    // 20.5 calls' worth: 20 fit, the 21st does not.
    let budget = 20.5 * CALL_USD;
    let cluster = Cluster::start(
        "budget",
        |double, prefix| remote_only_policy(double, &(budget_section(budget) + &state_section(prefix, 0.0))),
        &[],
    )
    .await;
    let bases: Vec<String> = cluster.replicas.iter().map(|d| d.url("")).collect();
    let body = ask("echo", "hello");
    let answers = futures_util::future::join_all((0..60).map(|i| post(&bases[i % 3], &body, &[]))).await;
    let answers: Vec<Answer> = answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|e| panic!("no answer: {e}\n{}", cluster.logs())))
        .collect();
    let admitted: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
    for answer in &refused {
        assert_eq!(
            (answer.status, answer.code()),
            (402, Some("budget_exhausted")),
            "{answer:?}"
        );
    }
    // Each replica alone would admit 20: together they admit 20.
    assert_eq!(
        admitted.len(),
        20,
        "{} calls were admitted across the replicas:\n{}",
        admitted.len(),
        cluster.logs()
    );
    let spent: f64 = admitted.iter().map(|a| a.cost()).sum();
    assert!(same_usd(spent, 20.0 * CALL_USD), "the answers cost {spent}");
    assert!(spent <= budget);
    assert_eq!(cluster.double.calls("echo"), 20, "refused calls never went out");
    // Every replica reports the shared spend (none of its own), nothing held.
    until_spent_everywhere(
        &cluster.replicas.iter().collect::<Vec<_>>(),
        spent,
        Duration::from_secs(10),
    )
    .await;
    for daemon in &cluster.replicas {
        let metrics = daemon.metrics().await;
        assert_eq!(
            sample(&metrics, "switchyard_budget_reserved_usd"),
            0.0,
            "{}",
            daemon.log()
        );
    }
    // And the next call, wherever it lands, is refused.
    for daemon in &cluster.replicas {
        let answer = chat(daemon, &body, &[]).await;
        assert_eq!(
            (answer.status, answer.code()),
            (402, Some("budget_exhausted")),
            "{answer:?}"
        );
    }
    cluster.until_redis_spent(spent).await;
}

#[tokio::test]
async fn a_conversation_stays_on_its_tier_whichever_replica_it_lands_on() {
    let cluster = Cluster::start(
        "sticky",
        |double, prefix| {
            local_and_remote_policy(
                double,
                ALL_LOCAL,
                "  sessions: { sticky: true, ttl_s: 600 }\n",
                &state_section(prefix, 0.0),
            )
        },
        &[],
    )
    .await;
    let [one, two, three] = [&cluster.replicas[0], &cluster.replicas[1], &cluster.replicas[2]];
    let question = "Prove that there are infinitely many primes.";
    let first = chat(one, &ask("auto", question), &[("x-switchyard-tier", "remote")]).await;
    assert_eq!((first.status, first.route()), (200, "remote"), "{first:?}");
    let answer = first.body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    cluster
        .until_sessions("the remote turn is remembered", |tiers| tiers.iter().any(|t| t == "2"))
        .await;
    let follow_up = json!({ "model": "auto", "max_tokens": 4, "messages": [
        { "role": "user", "content": question },
        { "role": "assistant", "content": answer },
        { "role": "user", "content": "thanks!" },
    ]});
    // Alone, the follow-up would stay local (every score is local here) ...
    let alone = chat(three, &ask("auto", "thanks!"), &[]).await;
    assert_eq!((alone.status, alone.route()), (200, "local"), "{alone:?}");
    // ... but its conversation went remote on another replica.
    let r = chat(two, &follow_up, &[]).await;
    assert_eq!(
        (r.status, r.route(), r.reason()),
        (200, "remote", "sticky-session"),
        "{r:?}\n{}",
        cluster.logs()
    );
    let r = chat(three, &follow_up, &[]).await;
    assert_eq!((r.route(), r.reason()), ("remote", "sticky-session"), "{r:?}");

    // A client-named session: set on one replica, kept on the others, and it only rises.
    let session = ("x-switchyard-session", "support-ticket-42");
    let r = chat(
        three,
        &ask("auto", "hi"),
        &[session, ("x-switchyard-tier", "local-reasoning")],
    )
    .await;
    assert_eq!((r.status, r.route()), (200, "local-reasoning"), "{r:?}");
    cluster
        .until_sessions("the named session is remembered", |tiers| {
            tiers.iter().any(|t| t == "1")
        })
        .await;
    let r = chat(one, &ask("auto", "something else entirely"), &[session]).await;
    assert_eq!(
        (r.status, r.route(), r.reason()),
        (200, "local-reasoning", "sticky-session"),
        "{r:?}"
    );
    let r = chat(
        two,
        &ask("auto", "and now the hard part"),
        &[session, ("x-switchyard-tier", "remote")],
    )
    .await;
    assert_eq!((r.status, r.route()), (200, "remote"), "{r:?}");
    cluster
        .until_sessions("the named session rose to remote", |tiers| {
            !tiers.iter().any(|t| t == "1")
        })
        .await;
    for daemon in [one, three] {
        let r = chat(daemon, &ask("auto", "ok"), &[session]).await;
        assert_eq!((r.route(), r.reason()), ("remote", "sticky-session"), "{r:?}");
    }

    // What Redis holds names no conversation: keys are digests, and they expire.
    let keys = cluster.keys();
    assert!(
        keys.iter().any(|k| k.contains(":session:")),
        "the sessions are in Redis: {keys:?}"
    );
    for key in &keys {
        assert!(
            !key.contains("support-ticket") && !key.contains("primes"),
            "a key names the conversation: {key}"
        );
        if !key.contains(":session:") {
            continue;
        }
        let ttl: i64 = cluster.redis.command(&["TTL", key]).parse().unwrap();
        assert!(
            (1..=600).contains(&ttl),
            "{key} expires in {ttl} s, not within the sessions' ttl_s"
        );
    }
}

/// The Go duration format OpenAI uses in `x-ratelimit-reset-*`: `1s`,
/// `6m0s`, `120ms`, `1.5s`, `1h2m3s`.
fn is_go_duration(text: &str) -> bool {
    let mut rest = text;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 || rest[..digits].parse::<f64>().is_err() {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ms", "h", "m", "s"].into_iter().find(|u| rest.starts_with(u));
        let Some(unit) = unit else { return false };
        rest = &rest[unit.len()..];
        parts += 1;
    }
    parts > 0
}

const RATE_LIMIT_CHECK: &str = r#"
import sys

import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0, timeout=30)
# The key's minute is spent; a slot comes back every 6 s, so on a slow
# machine one call may pass before the next is refused.
for _ in range(3):
    try:
        client.chat.completions.create(model="echo", max_tokens=4, messages=[{"role": "user", "content": "hello"}])
    except openai.RateLimitError as err:
        assert err.status_code == 429, err
        assert err.code == "rate_limit_exceeded", err.body
        assert err.type == "requests", err.body
        assert int(err.response.headers["retry-after"]) >= 1, dict(err.response.headers)
        print("ok")
        break
else:
    print("the calls were not rate limited")
"#;

#[tokio::test]
async fn rate_limits_hold_across_the_replicas() {
    let limits = "auth:
  keys:
    - name: team-a
      key_env: TEAM_A_KEY
    - name: team-b
      key_env: TEAM_B_KEY
rate_limits:
  per_key:
    requests_per_minute: 10
    tokens_per_minute: 200000
  global:
    requests_per_minute: 1000
    tokens_per_minute: 5000
";
    let cluster = Cluster::start(
        "ratelimit",
        |double, prefix| {
            remote_only_policy(
                double,
                &(limits.to_string() + &budget_section(100.0) + &state_section(prefix, 0.0)),
            )
        },
        &[("TEAM_A_KEY", "sk-team-a"), ("TEAM_B_KEY", "sk-team-b")],
    )
    .await;
    let team_a = ("authorization", "Bearer sk-team-a");
    let mut answers = Vec::new();
    for i in 0..30 {
        answers.push(chat(&cluster.replicas[i % 3], &ask("echo", "hello"), &[team_a]).await);
    }
    let admitted: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
    let limited: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
    // Ten a minute, whichever replica takes them (one more if a slot came
    // back while they were sent, 6 s apart).
    assert!(
        (10..=11).contains(&admitted.len()),
        "{} of 30 admitted: {:?}\n{}",
        admitted.len(),
        answers.iter().map(|a| a.status).collect::<Vec<_>>(),
        cluster.logs()
    );
    // The first ten are the ones admitted.
    assert!(answers[..10].iter().all(|a| a.status == 200));
    for (i, answer) in admitted.iter().enumerate() {
        assert_eq!(answer.header("x-ratelimit-limit-requests"), Some("10"), "{answer:?}");
        let remaining: i64 = answer
            .header("x-ratelimit-remaining-requests")
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            remaining <= 10 - (i as i64 + 1) + 1 && remaining >= 0,
            "answer {i}: {remaining} remaining"
        );
        // The tighter of the key's and the global token limits.
        assert_eq!(answer.header("x-ratelimit-limit-tokens"), Some("5000"), "{answer:?}");
        for name in ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"] {
            let reset = answer.header(name).unwrap_or_else(|| panic!("{name}: {answer:?}"));
            assert!(is_go_duration(reset), "{name}: {reset}");
        }
        assert!(answer.header("x-ratelimit-remaining-tokens").is_some(), "{answer:?}");
    }
    assert_eq!(answers[0].header("x-ratelimit-remaining-requests"), Some("9"));
    for answer in &limited {
        assert_eq!(
            (answer.status, answer.code()),
            (429, Some("rate_limit_exceeded")),
            "{answer:?}"
        );
        let error = &answer.body["error"];
        assert_eq!(error["type"], "requests", "{answer:?}");
        assert!(error.get("param").is_some_and(Value::is_null), "{answer:?}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.starts_with("Rate limit reached for ")
                && message.contains(" on requests per min: Limit 10, Requested 1. Please try again in "),
            "{message}"
        );
        let seconds: u64 = answer.header("retry-after").expect("retry-after").parse().unwrap();
        let ms: u64 = answer
            .header("retry-after-ms")
            .expect("retry-after-ms")
            .parse()
            .unwrap();
        assert!((1..=6000).contains(&ms), "retry-after-ms {ms}");
        assert_eq!(
            seconds,
            ms.div_ceil(1000),
            "retry-after {seconds} s, retry-after-ms {ms}"
        );
        assert_eq!(answer.header("x-ratelimit-remaining-requests"), Some("0"), "{answer:?}");
        assert_eq!(answer.header("x-ratelimit-limit-requests"), Some("10"), "{answer:?}");
    }
    assert_eq!(
        cluster.double.calls("echo"),
        admitted.len(),
        "limited calls never went out"
    );
    // A call's budget hold is asked for in the same round trip as its rate
    // limits: a limited call's hold is let go, charging nothing.
    let replicas: Vec<&Daemon> = cluster.replicas.iter().collect();
    until_spent_everywhere(&replicas, admitted.len() as f64 * CALL_USD, Duration::from_secs(10)).await;
    for daemon in &cluster.replicas {
        eventually(Duration::from_secs(10), || async move {
            let reserved = sample(&daemon.metrics().await, "switchyard_budget_reserved_usd");
            if reserved == 0.0 {
                Ok(())
            } else {
                Err(format!("{reserved} USD still held"))
            }
        })
        .await;
    }
    let mut counted = 0.0;
    for daemon in &cluster.replicas {
        counted += sample_with(
            &daemon.metrics().await,
            "switchyard_rate_limited_total",
            r#"limit="requests",scope="key""#,
        );
    }
    assert_eq!(counted, limited.len() as f64, "switchyard_rate_limited_total");

    // The official SDK sees OpenAI's own error.
    python_says_ok(
        &cluster.replicas[1],
        &["-c", RATE_LIMIT_CHECK, &cluster.replicas[1].url("/v1"), "sk-team-a"],
    );
    // The same limits guard the other endpoints that generate.
    for (path, body) in [
        (
            "/v1/completions",
            json!({ "model": "echo", "prompt": "hello", "max_tokens": 4 }),
        ),
        (
            "/v1/responses",
            json!({ "model": "echo", "input": "hello", "max_output_tokens": 16 }),
        ),
        ("/v1/embeddings", json!({ "model": "echo", "input": "hello" })),
    ] {
        let response = http_client()
            .post(cluster.replicas[2].url(path))
            .bearer_auth("sk-team-a")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let limit = response
            .headers()
            .get("x-ratelimit-limit-requests")
            .map(|v| v.to_str().unwrap().to_string());
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(
            (status, body["error"]["code"].as_str(), limit.as_deref()),
            (429, Some("rate_limit_exceeded"), Some("10")),
            "{path}: {body}"
        );
    }

    // Another key has its own ten requests, and all keys share the global
    // tokens: a request costs its prompt and max_tokens.
    let team_b = ("authorization", "Bearer sk-team-b");
    let mut big = ask("echo", "hello");
    big["max_tokens"] = json!(4000);
    let r = chat(&cluster.replicas[0], &big, &[team_b]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = chat(&cluster.replicas[2], &big, &[team_b]).await;
    assert_eq!((r.status, r.code()), (429, Some("rate_limit_exceeded")), "{r:?}");
    assert_eq!(r.body["error"]["type"], "tokens", "{r:?}");
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(" on tokens per min: Limit 5000, Requested 40"),
        "{message}"
    );
    // A small one still fits.
    let r = chat(&cluster.replicas[1], &ask("echo", "hello"), &[team_b]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!cluster.keys().is_empty(), "the limits are in Redis");
}

/// What the load of one worker saw of one request.
#[derive(Debug)]
struct Outcome {
    replica: usize,
    pinned: bool,
    sent: Instant,
    done: Instant,
    answer: Result<Answer, String>,
}

/// Workers sending requests to the replicas in turn, half routed (`auto`),
/// half pinned remote (`echo`), until told to stop.
struct Load {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(replicas: &[Daemon], workers: usize) -> Load {
        let bases: Arc<Vec<String>> = Arc::new(replicas.iter().map(|d| d.url("")).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let workers = (0..workers)
            .map(|w| {
                let (bases, stop, outcomes) = (bases.clone(), stop.clone(), outcomes.clone());
                tokio::spawn(async move {
                    let client = http_client();
                    let mut n = w;
                    while !stop.load(Ordering::SeqCst) {
                        let replica = n % bases.len();
                        let pinned = (n / bases.len() + w) % 2 == 0;
                        let body = ask(if pinned { "echo" } else { "auto" }, "hello");
                        let sent = Instant::now();
                        let answer = post_with(&client, &bases[replica], &body, &[]).await;
                        outcomes.lock().unwrap().push(Outcome {
                            replica,
                            pinned,
                            sent,
                            done: Instant::now(),
                            answer,
                        });
                        n += 1;
                        // A steady load, not a flood that starves the local model.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            outcomes,
            workers,
        }
    }

    async fn until(&self, within: Duration, what: &str, done: impl Fn(&[Outcome]) -> bool) {
        let deadline = Instant::now() + within;
        while !done(&self.outcomes.lock().unwrap()) {
            assert!(Instant::now() < deadline, "{what} did not happen within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        for worker in self.workers {
            worker.await.unwrap();
        }
        std::mem::take(&mut self.outcomes.lock().unwrap())
    }
}

fn is_store_unavailable(answer: &Answer) -> bool {
    (answer.status, answer.code()) == (503, Some("state_store_unavailable"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_killed_mid_load_stops_no_request_and_its_return_reconciles_the_spend() {
    // Three calls' worth per replica while the store is away.
    let allowance = 3.5 * CALL_USD;
    let mut cluster = Cluster::start(
        "redis-kill",
        |double, prefix| {
            // Local answers without reasoning: 4 tokens, quick.
            without_reasoning(&local_and_remote_policy(
                double,
                ALL_REMOTE,
                "  sessions: { sticky: false }\n",
                &(budget_section(10.0) + &state_section(prefix, allowance)),
            ))
        },
        &[],
    )
    .await;
    let replicas = &cluster.replicas;
    let load = Load::start(replicas, 6);
    // Warm: routed and pinned calls answered remote on every replica.
    load.until(Duration::from_secs(30), "remote answers on every replica", |outcomes| {
        (0..3).all(|r| {
            [true, false].iter().all(|&pinned| {
                outcomes.iter().any(|o| {
                    o.replica == r
                        && o.pinned == pinned
                        && o.answer
                            .as_ref()
                            .is_ok_and(|a| a.status == 200 && a.route() == "remote")
                })
            })
        })
    })
    .await;

    let killed = Instant::now();
    cluster.redis.kill9();
    let mut down_since = Vec::new();
    for daemon in replicas {
        let ready = until_store(daemon, false, Duration::from_secs(10)).await;
        let reason = ready["state_store"]["reason"].as_str().unwrap_or("");
        assert!(!reason.is_empty(), "a store that is down says why: {ready}");
        down_since.push(Instant::now());
    }
    // The load runs on until each replica has spent its allowance and refused
    // a pinned call for want of the store.
    load.until(
        Duration::from_secs(30),
        "a 503 state_store_unavailable from every replica",
        |outcomes| {
            (0..3).all(|r| {
                outcomes
                    .iter()
                    .any(|o| o.replica == r && o.answer.as_ref().is_ok_and(is_store_unavailable))
            })
        },
    )
    .await;
    // And routed requests answered locally meanwhile.
    load.until(Duration::from_secs(30), "local answers during the outage", |outcomes| {
        (0..3).all(|r| {
            outcomes.iter().any(|o| {
                o.replica == r
                    && !o.pinned
                    && o.sent > down_since[r]
                    && o.answer.as_ref().is_ok_and(|a| a.status == 200)
            })
        })
    })
    .await;
    for daemon in replicas.iter() {
        let metrics = daemon.metrics().await;
        assert!(
            sample(&metrics, "switchyard_state_store_errors_total") > 0.0,
            "store errors are counted"
        );
        let used = sample(&metrics, "switchyard_failsafe_spent_usd");
        assert!(used <= allowance + 1e-12, "the allowance was overspent: {used}");
    }

    let restarted = Instant::now();
    cluster.redis.restart();
    for daemon in replicas {
        until_store(daemon, true, Duration::from_secs(10)).await;
    }
    let outcomes = load.finish().await;

    // Every request was answered: remote or local, or refused for want of the store.
    let mut remote_spend = 0.0;
    for o in &outcomes {
        let answer = o
            .answer
            .as_ref()
            .unwrap_or_else(|e| panic!("a request got no answer: {o:?}: {e}\n{}", cluster.logs()));
        match answer.status {
            200 if answer.route() == "remote" => remote_spend += answer.cost(),
            200 => {
                assert!(!o.pinned, "{o:?}");
                assert!(answer.route().starts_with("local"), "{o:?}");
                assert_eq!(answer.cost(), 0.0, "{o:?}");
            }
            _ => assert!(o.pinned && is_store_unavailable(answer), "{o:?}"),
        }
    }
    // Routed requests sent while the store was known to be down stayed local.
    for o in &outcomes {
        if !o.pinned && o.sent > down_since[o.replica] && o.done < restarted {
            let answer = o.answer.as_ref().unwrap();
            assert!(answer.route().starts_with("local"), "{o:?}");
        }
    }
    // Remote calls sent and answered while Redis was dead (pinned, or routed
    // before the replica knew) were admitted from the allowance: no replica
    // admitted more than it.
    for r in 0..3 {
        let outage_calls = outcomes
            .iter()
            .filter(|o| o.replica == r && o.sent > killed && o.done < restarted)
            .filter(|o| {
                o.answer
                    .as_ref()
                    .is_ok_and(|a| a.status == 200 && a.route() == "remote")
            })
            .count();
        assert!(
            outage_calls as f64 * CALL_USD <= allowance + 1e-12,
            "replica {r} answered {outage_calls} remote calls while the store was away"
        );
    }

    // On recovery the spend of the outage is written to Redis, once: every
    // replica reports what all remote answers cost, and it stays so once the
    // holds of calls in flight at the kill have expired.
    for daemon in replicas {
        eventually(Duration::from_secs(15), || async move {
            let metrics = daemon.metrics().await;
            match sample(&metrics, "switchyard_failsafe_unreconciled_calls") {
                0.0 => Ok(()),
                n => Err(format!("{n} calls of the outage are not in the store")),
            }
        })
        .await;
    }
    until_spent_everywhere(
        &replicas.iter().collect::<Vec<_>>(),
        remote_spend,
        Duration::from_secs(15),
    )
    .await;
    cluster.until_redis_spent(remote_spend).await;
    tokio::time::sleep(Duration::from_secs(HOLD_TTL_S + 1)).await;
    until_spent_everywhere(
        &replicas.iter().collect::<Vec<_>>(),
        remote_spend,
        Duration::from_secs(5),
    )
    .await;
    cluster.until_redis_spent(remote_spend).await;
    // A replica started now reads the same.
    let fresh = cluster.start_replica().await;
    until_spent_everywhere(&[&fresh], remote_spend, Duration::from_secs(10)).await;
}

/// A pinned streamed call to the `slow-stream` backend (a tick every 100 ms
/// for a minute), read until the client is dropped.
fn slow_call(daemon: &Daemon) -> tokio::task::JoinHandle<()> {
    let url = daemon.url("/v1/chat/completions");
    let body = json!({ "model": "slow-stream", "max_tokens": 4, "stream": true,
                       "messages": [{ "role": "user", "content": "hello" }] });
    tokio::spawn(async move {
        use futures_util::StreamExt;
        if let Ok(response) = http_client().post(url).json(&body).send().await {
            let mut stream = response.bytes_stream();
            while let Some(Ok(_)) = stream.next().await {}
        }
    })
}

/// `n` slow calls on the first replica, once the double has them all.
async fn slow_calls(cluster: &Cluster, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    let slow = (0..n).map(|_| slow_call(&cluster.replicas[0])).collect();
    let double = &cluster.double;
    eventually(Duration::from_secs(10), || async move {
        match double.calls("slow-stream") {
            calls if calls == n => Ok(()),
            calls => Err(format!("{calls} of {n} slow calls reached the double")),
        }
    })
    .await;
    slow
}

#[tokio::test]
async fn the_holds_of_a_replica_killed_mid_call_expire_and_are_charged_their_worst_case() {
    // Three slow calls held and one quick call fit; a fifth does not.
    let budget = 4.5 * CALL_USD;
    let mut cluster = Cluster::start(
        "replica-kill",
        |double, prefix| remote_only_policy(double, &(budget_section(budget) + &state_section(prefix, 0.0))),
        &[],
    )
    .await;
    let slow = slow_calls(&cluster, 3).await;
    let (one, two) = (&cluster.replicas[1], &cluster.replicas[2]);
    // The other replicas count what the first holds.
    let r = chat(one, &ask("echo", "hello"), &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = chat(two, &ask("echo", "hello"), &[]).await;
    assert_eq!(
        (r.status, r.code()),
        (402, Some("budget_exhausted")),
        "the slow calls' holds count on every replica: {r:?}"
    );
    // A live replica renews its holds: they outlast hold_ttl_s.
    tokio::time::sleep(Duration::from_secs(HOLD_TTL_S + 1)).await;
    for daemon in [one, two] {
        let metrics = daemon.metrics().await;
        assert!(
            same_usd(spent_today(&metrics), CALL_USD),
            "only the quick call is spent while the slow ones run: {}",
            spent_today(&metrics)
        );
        assert!(
            same_usd(sample(&metrics, "switchyard_budget_reserved_usd"), 3.0 * CALL_USD),
            "the slow calls are still held: {}",
            sample(&metrics, "switchyard_budget_reserved_usd")
        );
    }

    let killed = Instant::now();
    cluster.replicas[0].kill();
    for task in slow {
        let _ = task.await;
    }
    // Nobody renews them now: after hold_ttl_s they are charged their worst
    // case (the upstream bills calls cut mid-way), and nothing is held.
    let (one, two) = (&cluster.replicas[1], &cluster.replicas[2]);
    until_spent_everywhere(&[one, two], 4.0 * CALL_USD, Duration::from_secs(HOLD_TTL_S + 10)).await;
    // (A hold's deadline is its last renewal, every hold_ttl_s / 3, plus hold_ttl_s.)
    assert!(
        killed.elapsed() >= Duration::from_secs(HOLD_TTL_S) - Duration::from_millis(1500),
        "the holds expired {:?} after the kill, before hold_ttl_s",
        killed.elapsed()
    );
    cluster.until_redis_spent(4.0 * CALL_USD).await;
    for daemon in [one, two] {
        let metrics = daemon.metrics().await;
        assert_eq!(
            sample(&metrics, "switchyard_budget_reserved_usd"),
            0.0,
            "nothing is held once the dead replica's holds expired"
        );
    }
    // Four of 4.5 calls' worth are spent: nothing more fits.
    let r = chat(one, &ask("echo", "hello"), &[]).await;
    assert_eq!((r.status, r.code()), (402, Some("budget_exhausted")), "{r:?}");
}

#[tokio::test]
async fn a_replica_stopped_mid_call_settles_its_calls_in_the_store_before_it_exits() {
    let mut cluster = Cluster::start(
        "replica-stop",
        |double, prefix| {
            remote_only_policy(
                double,
                &("server:\n  shutdown_drain_ms: 300\n".to_string()
                    + &budget_section(1.0)
                    + &state_section(prefix, 0.0)),
            )
        },
        &[],
    )
    .await;
    let slow = slow_calls(&cluster, 3).await;
    let (spent, held) = cluster.redis_books();
    assert!(
        spent == 0.0 && same_usd(held, 3.0 * CALL_USD),
        "the three calls are held: ({spent}, {held})"
    );
    // SIGTERM: the calls are cut at the drain's end, and the replica writes
    // their settlements (each its worst case: the upstream bills a call cut
    // mid-way) before it exits. Nothing is left held to expire.
    let status = cluster.replicas[0].terminate(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    for task in slow {
        let _ = task.await;
    }
    let (spent, held) = cluster.redis_books();
    assert!(
        same_usd(spent, 3.0 * CALL_USD) && held == 0.0,
        "at exit Redis has (spent, held) ({spent}, {held}), not ({}, 0)",
        3.0 * CALL_USD
    );
    assert_eq!(cluster.expired_holds(), "0", "no hold of the stopped replica expired");
}

#[tokio::test]
async fn a_single_daemons_spend_is_imported_into_the_shared_budgets_and_again_only_what_it_gained() {
    // The day's budget leaves room for two and a half calls past what the
    // single daemon spent before the move.
    let day = switchyard::state::budgets::today();
    let month = &day[..7];
    let cluster = Cluster::start(
        "import",
        |double, prefix| {
            remote_only_policy(
                double,
                &(budget_section(0.26 + 2.5 * CALL_USD) + &state_section(prefix, 0.0)),
            )
        },
        &[],
    )
    .await;
    let dir = scratch_dir("import");
    let state_file = dir.join("spend.json");
    // What the single daemon spent in all (team-a its share of it).
    let write_spent = |daily_usd: f64, monthly_usd: f64| {
        let spend = json!({ "day": day, "month": month,
            "global": { "daily_usd": daily_usd, "monthly_usd": monthly_usd },
            "keys": { "team-a": { "daily_usd": 0.1, "monthly_usd": 0.2 } } });
        std::fs::write(&state_file, spend.to_string()).unwrap();
    };
    write_spent(0.25, 0.75);
    let policy = dir.join("replicas.yaml");
    std::fs::write(&policy, &cluster.policy).unwrap();
    let import = |file: &std::path::Path| {
        let output = std::process::Command::new(switchyard_e2e::daemon::binary())
            .args(["budgets", "import", "--policy"])
            .arg(&policy)
            .arg(file)
            .envs(cluster.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), text)
    };

    let (ok, text) = import(&state_file);
    assert!(ok, "{text}");
    assert!(text.contains("global") && text.contains("key:team-a"), "{text}");
    if switchyard::state::budgets::today() != day {
        return; // Midnight (UTC) passed meanwhile: the day's part went nowhere.
    }
    let replicas: Vec<&Daemon> = cluster.replicas.iter().collect();
    until_spent_everywhere(&replicas, 0.25, Duration::from_secs(10)).await;
    // In nano-dollars, by scope, as the scripts keep them.
    let month_key = cluster.key(&format!("spent:m:{month}"));
    for (scope, nano) in [("global", "750000000"), ("key:team-a", "200000000")] {
        assert_eq!(cluster.redis.command(&["HGET", &month_key, scope]), nano, "{scope}");
    }
    let day_key = cluster.key(&format!("spent:d:{day}"));
    assert_eq!(cluster.redis.command(&["HGET", &day_key, "key:team-a"]), "100000000");
    // The same file again adds nothing; grown since, it adds the difference.
    let (ok, text) = import(&state_file);
    assert!(ok && text.contains("already in the shared budgets"), "{text}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    until_spent_everywhere(&replicas, 0.25, Duration::from_secs(10)).await;
    write_spent(0.26, 0.76);
    let (ok, text) = import(&state_file);
    assert!(ok && text.contains("0.010000"), "{text}");
    until_spent_everywhere(&replicas, 0.26, Duration::from_secs(10)).await;
    assert_eq!(cluster.redis.command(&["HGET", &month_key, "global"]), "760000000");
    // The imported spend counts: two more calls fit, the third does not.
    let mut statuses = Vec::new();
    for i in 0..4 {
        statuses.push(chat(&cluster.replicas[i % 3], &ask("echo", "hello"), &[]).await.status);
    }
    assert_eq!(statuses, [200, 200, 402, 402], "{}", cluster.logs());

    // A daemon still keeping the file: refused, nothing imported.
    let other = dir.join("other.json");
    std::fs::copy(&state_file, &other).unwrap();
    let keeper = Daemon::start(
        &remote_only_policy(
            &cluster.double,
            &format!(
                "budgets:\n  state_file: {}\n  global: {{ daily_usd: 1.0 }}\n",
                other.display()
            ),
        ),
        &[("DOUBLE_API_KEY", DOUBLE_API_KEY)],
    );
    let (ok, text) = import(&other);
    assert!(!ok && text.contains("is kept by a running Switchyard"), "{text}");
    drop(keeper);
    let (spent, _) = cluster.redis_books();
    assert!(same_usd(spent, 0.26 + 2.0 * CALL_USD), "{spent}");
}

#[tokio::test]
async fn spend_survives_the_death_of_every_replica_and_of_redis() {
    let budget = 6.5 * CALL_USD;
    let mut cluster = Cluster::start(
        "kill-all",
        |double, prefix| remote_only_policy(double, &(budget_section(budget) + &state_section(prefix, 0.0))),
        &[],
    )
    .await;
    for i in 0..5 {
        let r = chat(&cluster.replicas[i % 3], &ask("echo", "hello"), &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let spent = 5.0 * CALL_USD;
    until_spent_everywhere(
        &cluster.replicas.iter().collect::<Vec<_>>(),
        spent,
        Duration::from_secs(10),
    )
    .await;

    cluster.until_redis_spent(spent).await;

    for daemon in &mut cluster.replicas {
        daemon.kill();
    }
    cluster.redis.kill9();
    cluster.redis.restart();
    // Every acknowledged write was on disk (appendfsync always).
    let (kept, held) = cluster.redis_books();
    assert!(
        same_usd(kept, spent) && held == 0.0,
        "Redis kept {kept} spent, {held} held"
    );
    let survivor = cluster.start_replica().await;
    until_spent_everywhere(&[&survivor], spent, Duration::from_secs(10)).await;
    // One more call fits in 6.5 calls' worth, not two.
    let r = chat(&survivor, &ask("echo", "hello"), &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = chat(&survivor, &ask("echo", "hello"), &[]).await;
    assert_eq!((r.status, r.code()), (402, Some("budget_exhausted")), "{r:?}");
}

#[tokio::test]
async fn a_frozen_redis_is_a_store_down_no_request_waits_on_it() {
    let allowance = 2.5 * CALL_USD;
    let mut cluster = Cluster::start(
        "redis-frozen",
        |double, prefix| remote_only_policy(double, &(budget_section(10.0) + &state_section(prefix, allowance))),
        &[],
    )
    .await;
    let daemon = &cluster.replicas[0];
    let r = chat(daemon, &ask("echo", "hello"), &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    // Its cost is in the store before the store freezes.
    cluster.until_redis_spent(CALL_USD).await;
    cluster.redis.stop_process();
    let daemon = &cluster.replicas[0];
    // Two calls' worth of allowance, then refusals naming the store; none
    // waits much longer than the store's timeout (250 ms).
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let started = Instant::now();
        let r = chat(daemon, &ask("echo", "hello"), &[]).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "an answer took {:?} with the store frozen",
            started.elapsed()
        );
        if r.status != 200 {
            assert!(is_store_unavailable(&r), "{r:?}");
            let message = r.body["error"]["message"].as_str().unwrap();
            assert!(message.contains("shared state store"), "{message}");
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses, [200, 200, 503, 503], "{}", daemon.log());
    until_store(daemon, false, Duration::from_secs(10)).await;
    let metrics = daemon.metrics().await;
    assert!(
        same_usd(sample(&metrics, "switchyard_failsafe_spent_usd"), 2.0 * CALL_USD),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "switchyard_failsafe_unreconciled_calls"),
        2.0,
        "{metrics}"
    );

    cluster.redis.cont_process();
    let daemon = &cluster.replicas[0];
    until_store(daemon, true, Duration::from_secs(10)).await;
    eventually(Duration::from_secs(10), || async move {
        match sample(&daemon.metrics().await, "switchyard_failsafe_unreconciled_calls") {
            0.0 => Ok(()),
            n => Err(format!("{n} calls of the outage are not in the store")),
        }
    })
    .await;
    until_spent_everywhere(
        &cluster.replicas.iter().collect::<Vec<_>>(),
        3.0 * CALL_USD,
        Duration::from_secs(10),
    )
    .await;
    cluster.until_redis_spent(3.0 * CALL_USD).await;
    // What the frozen server ran late (a hold whose caller had given up on
    // it) is not charged again when its hold would expire.
    tokio::time::sleep(Duration::from_secs(HOLD_TTL_S + 1)).await;
    cluster.until_redis_spent(3.0 * CALL_USD).await;
    let r = chat(daemon, &ask("echo", "hello"), &[]).await;
    assert_eq!(r.status, 200, "back to the shared budget: {r:?}");
}

#[tokio::test]
async fn a_hold_sent_to_a_frozen_redis_and_refused_meanwhile_is_released_when_it_thaws() {
    // No allowance: a call whose hold gets no answer is refused.
    let mut cluster = Cluster::start(
        "unanswered",
        |double, prefix| remote_only_policy(double, &(budget_section(10.0) + &state_section(prefix, 0.0))),
        &[],
    )
    .await;
    // One call first: the store then knows the hold script, and runs a
    // hold sent while it is frozen once it thaws.
    let r = chat(&cluster.replicas[0], &ask("echo", "hello"), &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    cluster.until_redis_spent(CALL_USD).await;
    cluster.redis.stop_process();
    let r = chat(&cluster.replicas[0], &ask("echo", "hello"), &[]).await;
    assert!(is_store_unavailable(&r), "{r:?}");
    assert_eq!(cluster.double.calls("echo"), 1, "refused before it went out");
    // The thawed server runs the late hold; the replica's settlement of
    // nothing, sent after it, lets it go. Without that settlement the hold
    // would expire after hold_ttl_s and be charged its worst case.
    cluster.redis.cont_process();
    until_store(&cluster.replicas[0], true, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(HOLD_TTL_S + 1)).await;
    let (spent, held) = cluster.redis_books();
    assert!(
        same_usd(spent, CALL_USD) && held == 0.0,
        "({spent}, {held})\n{}",
        cluster.logs()
    );
    assert_eq!(cluster.expired_holds(), "0", "the late hold did not expire");
}

#[tokio::test]
async fn a_redis_that_refuses_the_replica_is_a_store_down_with_its_reason_and_is_used_once_it_lets_it_in() {
    let redis = RedisServer::start(&scratch_dir("redis-auth-redis"));
    let double = CloudDouble::start();
    redis.query(&["CONFIG", "SET", "requirepass", "s3cret"]);
    let policy = remote_only_policy(
        &double,
        &(budget_section(10.0) + &state_section(&prefix("redis-auth"), 0.0)),
    );
    // The replica is given the address without the password.
    let daemon = Daemon::start_in(
        scratch_dir("replica"),
        &policy,
        &[
            ("DOUBLE_API_KEY", DOUBLE_API_KEY),
            ("SWITCHYARD_REDIS_URL", &redis.url()),
        ],
    );
    let ready = until_store(&daemon, false, Duration::from_secs(10)).await;
    let reason = ready["state_store"]["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("Authentication required"), "{reason}");
    // Fail-safe with no allowance: a pinned remote call is refused, naming the store.
    let r = chat(&daemon, &ask("echo", "hello"), &[]).await;
    assert!(is_store_unavailable(&r), "{r:?}");
    // Probed every second, said once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = daemon.log();
    assert_eq!(log.matches("the state store is unreachable").count(), 1, "{log}");
    assert!(!log.contains("refused an operation"), "{log}");

    let lifted = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port().to_string(), "--no-auth-warning", "-a", "s3cret"])
        .args(["CONFIG", "SET", "requirepass", ""])
        .output()
        .expect("redis-cli runs");
    assert_eq!(String::from_utf8_lossy(&lifted.stdout).trim(), "OK", "{lifted:?}");
    until_store(&daemon, true, Duration::from_secs(10)).await;
    let r = chat(&daemon, &ask("echo", "hello"), &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn policy_check_accepts_the_state_and_rate_limits_sections() {
    let double = CloudDouble::start();
    let sections = "state:
  backend: redis
  url_env: SWITCHYARD_REDIS_URL
  key_prefix: switchyard
  timeout_ms: 250
  hold_ttl_s: 120
  failsafe:
    remote_allowance_usd: 0.10
rate_limits:
  per_key:
    requests_per_minute: 600
    tokens_per_minute: 200000
  global:
    requests_per_minute: 5000
    tokens_per_minute: 2000000
";
    let (ok, text) =
        switchyard_e2e::daemon::policy_check(&remote_only_policy(&double, &(budget_section(5.0) + sections)));
    assert!(ok, "{text}");
    // With the shared store, spend lives in the store: a policy that still
    // names a state file is told so (its spend would otherwise be silently
    // left behind), at the line of the file.
    let with_file = remote_only_policy(
        &double,
        &(budget_section(5.0).replace("budgets:\n", "budgets:\n  state_file: spend.json\n") + sections),
    );
    let (ok, text) = switchyard_e2e::daemon::policy_check(&with_file);
    assert!(!ok && text.contains("remove budgets.state_file"), "{text}");
    // An address inline holds no password.
    let inline = sections.replace(
        "url_env: SWITCHYARD_REDIS_URL",
        "url: redis://:hunter2@127.0.0.1:6379/0",
    );
    let (ok, text) = switchyard_e2e::daemon::policy_check(&remote_only_policy(&double, &inline));
    assert!(!ok && !text.contains("hunter2"), "{text}");
}
