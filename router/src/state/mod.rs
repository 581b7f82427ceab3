//! The shared state store: a Redis 7 (or Valkey) server that replicas of
//! Switchyard share, so that budgets, sticky sessions and rate limits hold
//! across all of them (`state.backend: redis`). Without it every piece of
//! state stays in the process, as a single daemon needs.
//!
//! What lives where:
//! - [`Store`] (here): the connection, the keys, each operation's deadline
//!   and metrics, and whether the store is up. A replica that sees an
//!   operation fail or time out marks the store down and stops asking it
//!   (requests then run fail-safe, without waiting on it); a probe every
//!   second brings it back, after writing what the replica admitted
//!   meanwhile (the [`Journal`]).
//! - `budgets.rs`: remote spend held and settled atomically by server-side
//!   scripts, a pacing snapshot, and the hold renewal of live calls.
//! - `ratelimit.rs`: requests and tokens per minute (GCRA), in the store or
//!   in the process.
//! - Sticky sessions' store side sits with them (`routing::sessions`).
//!
//! Every write the scripts make carries an id, so an operation that timed
//! out (it may still have run) can be repeated without counting twice.

pub mod budgets;
pub mod ratelimit;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::metrics::metrics;
use crate::policy::StateConfig;

pub use budgets::SharedBudgets;

/// How often the store is probed, up or down.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Why a store operation gave no answer.
#[derive(Debug, Clone)]
pub enum StoreError {
    /// The store is known to be down: the operation was not tried.
    Down,
    /// It did not answer in time, or the connection failed.
    Unreachable(String),
    /// It answered with an error (a script fault, a read-only replica, ...).
    Refused(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Down => f.write_str("the state store is down"),
            StoreError::Unreachable(why) | StoreError::Refused(why) => f.write_str(why),
        }
    }
}

/// The store's health as this replica sees it.
#[derive(Debug, Clone)]
pub struct Health {
    pub up: bool,
    /// Why it is down, and since when.
    pub reason: Option<String>,
}

pub struct Store {
    config: StateConfig,
    con: ConnectionManager,
    prefix: String,
    timeout: Duration,
    up: AtomicBool,
    down: Mutex<Option<(SystemTime, String)>>,
    /// Settlements the store has not yet recorded, written before it is
    /// marked up again.
    pub(crate) journal: Journal,
    /// Said once per outage.
    warned: AtomicBool,
    /// Outages seen (each replica's fail-safe allowance is per outage).
    outages: AtomicU64,
    /// Operations that found the store unreachable.
    failures: AtomicU64,
    /// Settlements being written in the background.
    pub(crate) writing: std::sync::atomic::AtomicUsize,
    /// Since when the store has been up: a store down again within
    /// [`OUTAGE_SETTLE`] continues the same outage (a stall is not a fresh
    /// allowance).
    up_since: Mutex<Option<Instant>>,
}

/// How long the store must stay up for its next failure to count as a new
/// outage.
const OUTAGE_SETTLE: Duration = Duration::from_secs(300);

impl Store {
    /// Connects to `url` (the address `config` gives) lazily: a store that
    /// is down at start-up only makes the replica start fail-safe. Starts
    /// the probe; needs a Tokio runtime.
    pub fn connect(config: &StateConfig, url: &str) -> Result<Arc<Store>, String> {
        // For rediss:// addresses, as for the HTTPS clients.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = redis::Client::open(url).map_err(|err| {
            format!(
                "the state store address does not parse: {}",
                redact(&err.to_string(), url)
            )
        })?;
        let timeout = config.timeout();
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let con = ConnectionManager::new_lazy_with_config(client, manager).map_err(|err| {
            format!(
                "cannot set up the state store connection: {}",
                redact(&err.to_string(), url)
            )
        })?;
        let prefix = config.key_prefix();
        let store = Arc::new(Store {
            config: config.clone(),
            con,
            prefix: format!("{prefix}:{{{prefix}}}:"),
            timeout,
            // Down until the first probe answers: nothing waits on a store
            // that was never reached.
            up: AtomicBool::new(false),
            down: Mutex::new(Some((SystemTime::now(), "not reached yet".to_string()))),
            journal: Journal::default(),
            warned: AtomicBool::new(false),
            outages: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            writing: std::sync::atomic::AtomicUsize::new(0),
            up_since: Mutex::new(None),
        });
        metrics().state_store_up.with_label_values(&["redis"]).set(0);
        tokio::spawn(probe(Arc::downgrade(&store)));
        Ok(store)
    }

    /// The `state` section it was set up from.
    pub fn config(&self) -> &StateConfig {
        &self.config
    }

    /// A key of this deployment.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Settlements this replica has not yet written to the store.
    pub fn unreconciled(&self) -> usize {
        self.journal.len()
    }

    /// Outages this replica has seen; a new one starts a new allowance.
    pub fn outages(&self) -> u64 {
        self.outages.load(Ordering::Acquire)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn health(&self) -> Health {
        let down = self.down.lock().expect("store health lock");
        Health {
            up: self.is_up(),
            reason: down.as_ref().map(|(since, why)| {
                let since = time::OffsetDateTime::from(*since)
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                format!("down since {since}: {why}")
            }),
        }
    }

    /// Runs one operation within the deadline, counted in the metrics; a
    /// failure to reach the store marks it down. Not tried while it is down.
    pub async fn run<T, F>(&self, op: &'static str, work: impl FnOnce(ConnectionManager) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        if !self.is_up() {
            return Err(StoreError::Down);
        }
        self.attempt(op, work).await
    }

    /// As [`Store::run`], tried whatever the store's state (the probe, and
    /// the writes that bring it back).
    async fn attempt<T, F>(&self, op: &'static str, work: impl FnOnce(ConnectionManager) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.timeout, work(self.con.clone())).await;
        metrics()
            .state_store_seconds
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        let error = match outcome {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(err)) if is_unreachable(&err) => StoreError::Unreachable(err.to_string()),
            Ok(Err(err)) => StoreError::Refused(err.to_string()),
            Err(_) => StoreError::Unreachable(format!("no answer within {} ms", self.timeout.as_millis())),
        };
        metrics().state_store_errors.with_label_values(&[op]).inc();
        match &error {
            StoreError::Unreachable(why) => self.mark_down(op, why),
            StoreError::Refused(why) => tracing::error!(op, "the state store refused an operation: {why}"),
            StoreError::Down => {}
        }
        Err(error)
    }

    fn mark_down(&self, op: &str, why: &str) {
        self.failures.fetch_add(1, Ordering::AcqRel);
        let mut down = self.down.lock().expect("store health lock");
        if let Some((_, reason)) = down.as_mut() {
            // The same outage (or the start-up's "not reached yet"): since
            // when is kept, the reason is the latest one.
            why.clone_into(reason);
        } else {
            *down = Some((SystemTime::now(), why.to_string()));
            let settled = self
                .up_since
                .lock()
                .expect("store health lock")
                .is_some_and(|since| since.elapsed() >= OUTAGE_SETTLE);
            if settled {
                self.outages.fetch_add(1, Ordering::AcqRel);
            }
        }
        self.up.store(false, Ordering::Release);
        metrics().state_store_up.with_label_values(&["redis"]).set(0);
        if !self.warned.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                op,
                "the state store is unreachable ({why}): this replica runs fail-safe (remote calls within its allowance, routed requests local, limits and sessions per replica) until it is back"
            );
        }
    }

    fn mark_up(&self) {
        *self.up_since.lock().expect("store health lock") = Some(Instant::now());
        *self.down.lock().expect("store health lock") = None;
        self.up.store(true, Ordering::Release);
        self.warned.store(false, Ordering::Release);
        metrics().state_store_up.with_label_values(&["redis"]).set(1);
    }

    /// One probe: a write (a store that answers but refuses writes cannot
    /// keep budgets), then the journal's settlements; up only when both went
    /// through, so that budgets read from the store count them.
    async fn probe_once(&self) {
        // A failure seen while this probe runs keeps the store down.
        let failures = self.failures.load(Ordering::Acquire);
        let key = self.key("probe");
        let ping = self
            .attempt("ping", |mut con| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("PX")
                    .arg(10_000)
                    .query_async::<()>(&mut con)
                    .await
            })
            .await;
        if ping.is_err() {
            return;
        }
        // Settlements that missed the store (it was down, or one failed) are
        // written on every probe, not only when it comes back.
        if (!self.journal.is_empty() || !self.is_up())
            && let Err(err) = budgets::write_journal(self).await
        {
            tracing::warn!(
                "the state store answers, but the spend admitted while it was down is not written yet: {err}"
            );
            return;
        }
        if !self.is_up() && self.failures.load(Ordering::Acquire) == failures {
            if self.outages() == 0 && self.up_since.lock().expect("store health lock").is_none() {
                tracing::info!("the state store answers; budgets, sessions and rate limits are shared through it");
            } else {
                tracing::info!("the state store is back; this replica uses it again");
            }
            self.mark_up();
        }
    }

    /// At shutdown: waits (within `within`) for the settlements being
    /// written and writes the journal, so that a replica that stops does not
    /// leave its calls' holds to expire (charged their worst case) nor lose
    /// the spend it admitted while the store was down. What cannot be
    /// written is logged with its amount.
    pub async fn drain(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.writing.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !self.journal.is_empty() {
            let _ = tokio::time::timeout_at(deadline, budgets::write_journal(self)).await;
        }
        let left = self.journal.take();
        if !left.is_empty() {
            let nusd: i64 = left.iter().map(|s| s.cost_nusd).sum();
            tracing::error!(
                calls = left.len(),
                usd = nusd as f64 / 1e9,
                "stopping with remote spend not written to the state store: calls it held are charged their worst case when their holds expire; calls admitted while it was down are not counted"
            );
        }
    }

    /// Probes once now (at start-up, so that a replica whose store answers
    /// does not begin fail-safe).
    pub async fn first_probe(&self) {
        self.probe_once().await;
    }
}

async fn probe(store: Weak<Store>) {
    let mut ticks = tokio::time::interval(PROBE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(store) = store.upgrade() else { return };
        store.probe_once().await;
    }
}

/// Whether an error means the store cannot keep state now: not reached,
/// or reached but refusing writes (full under `noeviction`, a read-only
/// replica after a failover, loading its data, busy with a script) or
/// refusing this replica (its password).
fn is_unreachable(err: &redis::RedisError) -> bool {
    // A store that refuses writes cannot keep budgets; one that refuses
    // this replica (no password, a wrong one) cannot be used at all: both
    // count as down, with the reason. (An ACL refusing one command, NOPERM,
    // is that operation's refusal: the probe's write may still pass.)
    let unusable = [
        "OOM",
        "READONLY",
        "MASTERDOWN",
        "LOADING",
        "BUSY",
        "NOREPLICAS",
        "MISCONF",
        "NOAUTH",
        "WRONGPASS",
    ]
    .iter()
    .any(|code| err.code() == Some(code));
    err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_unrecoverable_error()
        || unusable
}

/// An error's text without the store's address (it may hold a password).
fn redact(text: &str, url: &str) -> String {
    text.replace(url, "<state store address>")
}

/// A remote call's settlement the store has not recorded yet.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub id: String,
    pub cost_nusd: i64,
    /// The budget scopes it counts against (`global`, `key:<name>`).
    pub scopes: Vec<String>,
    /// Its UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Whether the store granted its hold (else it was admitted from the
    /// allowance, or had no hold).
    pub held: bool,
    /// Times the store refused it (a fault, not an outage).
    pub refusals: u32,
}

/// Settlements waiting for the store, oldest first.
#[derive(Debug, Default)]
pub struct Journal {
    entries: Mutex<Vec<Settlement>>,
}

impl Journal {
    pub fn push(&self, settlement: Settlement) {
        let mut entries = self.entries.lock().expect("journal lock");
        entries.push(settlement);
        metrics().failsafe_unreconciled.set(entries.len() as i64);
    }

    fn take(&self) -> Vec<Settlement> {
        std::mem::take(&mut *self.entries.lock().expect("journal lock"))
    }

    /// Puts back what could not be written, before anything newer.
    fn restore(&self, mut unwritten: Vec<Settlement>) {
        let mut entries = self.entries.lock().expect("journal lock");
        unwritten.append(&mut entries);
        *entries = unwritten;
        metrics().failsafe_unreconciled.set(entries.len() as i64);
    }

    pub fn len(&self) -> usize {
        self.entries.lock().expect("journal lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
