//! The policy in force, and its hot reload.
//!
//! Everything built from the policy file lives in one [`Live`] value behind an
//! `Arc`: a request takes the current one when it starts and keeps it to the
//! end, so a reload never changes the rules under a request in flight. A reload
//! (the file changed, or SIGHUP) builds a whole new `Live` off the async
//! threads and swaps it in; a file with problems is rejected, each problem
//! logged with its line and column, and the previous policy keeps serving.
//! So does a file that is deleted: that is logged, and so is its return, when
//! it is loaded again.
//! Loaded local models whose configuration did not change are carried over.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::auth::ClientKeys;
use crate::backends::Backends;
use crate::policy::{LadderConfig, Policy, PolicyError, Price, Problem};
use crate::routing::Routing;
use crate::routing::budget::{Ledger, SpendBook};
use crate::state::ratelimit::RateLimiter;
use crate::state::{SharedBudgets, Store};

/// The local model (path and load-time quantization) and the local model
/// the scoring artifact was trained for.
type ScoringPair = (
    PathBuf,
    switchyard_engine::model::weights::Quantization,
    Option<crate::routing::difficulty::TrainedFor>,
);

/// How often the policy file is checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Looks in a row at a policy file that cannot be read before that is logged:
/// one is an editor's save caught half-way, two (a whole tick) a file that is gone.
const UNREADABLE_TICKS_TO_WARN: u32 = 2;

pub struct Live {
    pub backends: Backends,
    pub routing: Routing,
    pub keys: ClientKeys,
    pub max_body_bytes: usize,
    /// One request's deadline across upstream attempts and fallbacks.
    pub request_deadline: Duration,
    /// Remote spend, when the policy sets budgets: in this process, or in
    /// the shared store.
    pub ledger: Option<SpendBook>,
    /// The shared state store (`state.backend: redis`), set up once at
    /// start: a reload that changes `state` is refused.
    pub store: Option<Arc<Store>>,
    /// `rate_limits`.
    pub limiter: RateLimiter,
    pub ladder: LadderConfig,
    /// The all-cloud baseline's backend and prices.
    pub baseline: Option<(String, Price)>,
    /// `server.metrics`: serve `/metrics` and keep the counters.
    pub metrics_enabled: bool,
}

impl Live {
    /// Builds what a checked policy describes, sharing what `previous` already
    /// has: loaded local models, and the spend ledger when its file is the same.
    /// What stops it is a problem of the policy, like those its check finds.
    /// The daemon's own: its ledger keeps the budget state file for itself
    /// (see [`Ledger::open_exclusive`]).
    pub fn build(policy: &Policy, previous: Option<&Live>, store: Option<&Arc<Store>>) -> Result<Live, PolicyError> {
        let live = Live::build_with(policy, previous, Ledger::open_exclusive, store)?;
        // Once per pair: a reload that changes neither hashes nothing again.
        if let Some(pair) = live.scoring_pair()
            && previous.is_none_or(|p| p.scoring_pair().as_ref() != Some(&pair))
        {
            check_difficulty_model(pair);
        }
        Ok(live)
    }

    /// The local model's path and the local model the scoring artifact was
    /// trained for: what [`Live::check_difficulty_model`] compares.
    fn scoring_pair(&self) -> Option<ScoringPair> {
        let local = self.routing.local_backend().and_then(|b| b.as_local())?;
        Some((
            local.model_path().to_path_buf(),
            local.quant(),
            self.routing.difficulty_model().trained_for.clone(),
        ))
    }

    /// For the command-line tools (`audit`, `route explain`, ...): the same,
    /// reading the budget state without keeping the file, so they run beside
    /// the daemon.
    pub fn build_offline(policy: &Policy) -> Result<Live, PolicyError> {
        let mut live = Live::build_with(policy, None, Ledger::open, None)?;
        live.routing.assume_remotes_ready();
        Ok(live)
    }

    fn build_with(
        policy: &Policy,
        previous: Option<&Live>,
        open_ledger: fn(&Path) -> Result<Ledger, String>,
        store: Option<&Arc<Store>>,
    ) -> Result<Live, PolicyError> {
        let invalid = |problem| PolicyError::Invalid(vec![problem]);
        let keys = ClientKeys::from_config(&policy.auth).map_err(invalid)?;
        if let Some(store) = store
            && store.config() != &policy.state
        {
            return Err(invalid(policy.state.problem(
                "the state section changed: the shared state store is set up at start, so this takes effect when the daemon restarts",
            )));
        }
        let ledger = match (&policy.budgets, store) {
            (None, _) => None,
            // Spend in the shared store: the same books across reloads.
            (Some(_), Some(store)) => Some(
                previous
                    .and_then(|p| p.ledger.clone())
                    .filter(|l| matches!(l, SpendBook::Shared(_)))
                    .unwrap_or_else(|| {
                        SpendBook::Shared(SharedBudgets::new(
                            store.clone(),
                            policy.state.hold_ttl(),
                            policy.state.failsafe.remote_allowance_usd(),
                        ))
                    }),
            ),
            // A command-line tool reading a policy whose spend is in the
            // store: it has none to read.
            (Some(budgets), None) => match budgets.state_file() {
                None => None,
                Some(file) => {
                    let path = policy.base_dir.join(file);
                    match previous
                        .and_then(|p| p.ledger.as_ref())
                        .and_then(SpendBook::file)
                        .filter(|l| same_file(l.path(), &path))
                    {
                        Some(ledger) => Some(SpendBook::File(ledger.clone())),
                        None => Some(SpendBook::File(Arc::new(
                            open_ledger(&path).map_err(|err| invalid(budgets.state_file_problem(err)))?,
                        ))),
                    }
                }
            },
        };
        let limiter = RateLimiter::new(&policy.rate_limits, store.cloned(), previous.map(|p| &p.limiter));
        let backends = Backends::from_policy(policy, previous.map(|p| &p.backends));
        let routing = Routing::new(policy, &backends).map_err(|err| invalid(Problem::whole(err)))?;
        Ok(Live {
            backends,
            routing,
            keys,
            max_body_bytes: policy.server.max_body_bytes(),
            request_deadline: policy.server.request_deadline(),
            ledger,
            store: store.cloned(),
            limiter,
            ladder: policy.ladder.clone(),
            baseline: policy.baseline().map(|(name, price)| (name.to_string(), price)),
            metrics_enabled: policy.server.metrics,
        })
    }
}

/// Logs, off the async threads, whether the difficulty model was trained on
/// the local model's own answers (it hashes the model's weights).
fn check_difficulty_model((path, quant, trained_for): ScoringPair) {
    let model = match &trained_for {
        Some(t) => t.model.clone(),
        None => "cloud model pairs".to_string(),
    };
    let spawned = std::thread::Builder::new()
        .name("difficulty-check".into())
        .spawn(move || match crate::routing::difficulty::fits(trained_for.as_ref(), &path, quant) {
            Ok(()) => tracing::info!(model = %path.display(), trained_for = model, "the difficulty model was trained on this local model's answers"),
            Err(why) => tracing::warn!(model = %path.display(), trained_for = model, "{why}"),
        });
    if let Err(err) = spawned {
        tracing::warn!(reason = %err, "cannot check the difficulty model against the local model");
    }
}

/// Whether two paths name the same file (`spend.json` and `./spend.json`),
/// whether or not it exists yet.
fn same_file(a: &Path, b: &Path) -> bool {
    let canonical = |p: &Path| {
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        dir.canonicalize()
            .ok()
            .map(|dir| dir.join(p.file_name().unwrap_or_default()))
    };
    a == b || matches!((canonical(a), canonical(b)), (Some(x), Some(y)) if x == y)
}

/// Where the daemon listens, and what set it (`server.listen`, or `--listen`
/// overriding it). Bound once at start: a reload cannot move it, so each
/// policy loaded later is checked against it.
#[derive(Debug, Clone, Copy)]
pub struct ListenAddress {
    pub addr: SocketAddr,
    pub origin: &'static str,
}

impl ListenAddress {
    /// Refuses a policy that would leave this address open to anyone: no
    /// client keys on a non-loopback address, unless the policy allows it.
    pub fn admits(&self, policy: &Policy) -> Result<(), PolicyError> {
        match policy.unauthenticated_exposure(self.addr, self.origin) {
            Some(problem) => Err(PolicyError::Invalid(vec![problem])),
            None => Ok(()),
        }
    }
}

/// The current [`Live`], swappable.
pub struct LivePolicy {
    path: PathBuf,
    listen: ListenAddress,
    current: RwLock<Arc<Live>>,
}

/// What a reload attempt came to (also a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    Applied,
    Rejected,
}

impl ReloadOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadOutcome::Applied => "applied",
            ReloadOutcome::Rejected => "rejected",
        }
    }
}

impl LivePolicy {
    pub fn new(path: &Path, live: Live, listen: ListenAddress) -> LivePolicy {
        LivePolicy {
            path: path.to_path_buf(),
            listen,
            current: RwLock::new(Arc::new(live)),
        }
    }

    pub fn current(&self) -> Arc<Live> {
        self.current.read().expect("live policy lock").clone()
    }

    /// Reads the policy file again and swaps it in if it is good. Blocking:
    /// loading a new local model takes a while.
    pub fn reload(&self, trigger: &str) -> ReloadOutcome {
        let path = self.path.display();
        let previous = self.current();
        // A file that reads well but cannot be applied is rejected the same way.
        let applied = Policy::load(&self.path).and_then(|policy| {
            self.listen.admits(&policy)?;
            Live::build(&policy, Some(&previous), previous.store.as_ref())
        });
        match applied {
            Ok(live) => {
                if let Some(old) = previous.ledger.as_ref().and_then(SpendBook::file)
                    && let Err(err) = old.flush()
                {
                    tracing::error!(path = %old.path().display(), "cannot write budget state: {err}");
                }
                *self.current.write().expect("live policy lock") = Arc::new(live);
                tracing::info!(trigger, policy = %path, "policy reloaded");
                ReloadOutcome::Applied
            }
            Err(PolicyError::Invalid(problems)) => {
                for problem in &problems {
                    tracing::error!(
                        trigger,
                        policy = %path,
                        line = problem.line,
                        column = problem.column,
                        "{path}:{problem}"
                    );
                }
                tracing::error!(trigger, policy = %path, "policy reload rejected; the previous policy keeps serving");
                ReloadOutcome::Rejected
            }
            Err(err @ PolicyError::Read(_)) => {
                tracing::error!(trigger, policy = %path, "policy reload rejected: {err}");
                ReloadOutcome::Rejected
            }
        }
    }

    /// Reloads on SIGHUP and whenever the file's content changes (and then
    /// stays the same for a tick), until the process ends. `on_reload` sees every outcome.
    pub async fn watch(self: Arc<Self>, on_reload: impl Fn(ReloadOutcome) + Send + 'static) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(err) => {
                tracing::warn!("cannot listen for SIGHUP ({err}); the policy file is still watched");
                None
            }
        };
        let path = self.path.display().to_string();
        let mut seen = fingerprint(&self.path).ok();
        // A changed file is read again once it has stayed the same for a
        // tick: an editor or a tool that rewrites it in place is not caught
        // half-way (a spurious rejection in the log and the metrics).
        let mut settling = None;
        // Ticks in a row the file could not be read. An editor that saves by
        // delete-and-rename leaves it missing for a moment: one tick is that;
        // two are a file that is gone, which the operator is told about.
        let mut unreadable_ticks = 0u32;
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let trigger = tokio::select! {
                Some(()) = async { hangup.as_mut()?.recv().await } => "sighup",
                _ = tick.tick() => {
                    let now = match fingerprint(&self.path) {
                        Ok(now) => Some(now),
                        Err(err) => {
                            unreadable_ticks += 1;
                            if unreadable_ticks == UNREADABLE_TICKS_TO_WARN {
                                tracing::warn!(
                                    policy = %path,
                                    "policy file cannot be read ({err}); the policy in force stays until it is back"
                                );
                                // Whatever comes back is loaded, even the same text.
                                seen = None;
                            }
                            settling = None;
                            continue;
                        }
                    };
                    if std::mem::take(&mut unreadable_ticks) >= UNREADABLE_TICKS_TO_WARN {
                        tracing::info!(policy = %path, "policy file is back; it is reloaded once it stays the same for a tick");
                    }
                    if now == seen {
                        settling = None;
                        continue;
                    }
                    if now != settling {
                        settling = now;
                        continue;
                    }
                    seen = now;
                    "file-change"
                }
            };
            if trigger == "sighup" {
                seen = fingerprint(&self.path).ok();
                settling = None;
            }
            let this = self.clone();
            let outcome = tokio::task::spawn_blocking(move || this.reload(trigger))
                .await
                .unwrap_or(ReloadOutcome::Rejected);
            on_reload(outcome);
        }
    }
}

/// A hash of the file's content.
fn fingerprint(path: &Path) -> std::io::Result<u64> {
    let bytes = std::fs::read(path)?;
    let mut hasher = std::hash::DefaultHasher::new();
    bytes.hash(&mut hasher);
    Ok(hasher.finish())
}
