//! Remote spend: what has been spent today and this month, globally and per
//! client key, kept in a small JSON file so that a restart does not reset the
//! budget, and the pacing level that spend implies.
//!
//! Pacing, not a wall: with `f` the spent fraction of the tightest budget and
//! `pacing_from` the fraction where pacing starts, the level is
//! `(f - pacing_from) / (1 - pacing_from)` clamped to 0..=1. The decision raises
//! the score a request needs to go remote in proportion to that level, so the
//! remaining money goes to the requests that need the strong model most. At
//! level 1 the budget is spent and remote is off.
//!
//! Spend counts money not yet spent too: each remote call holds a
//! [`Reservation`] of what it may cost (its prompt and its `max_tokens` at the
//! backend's prices) from before it is sent until its cost is recorded, so
//! requests admitted together cannot overrun a budget that each of them alone
//! would respect.
//!
//! Days and months are UTC calendar periods.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::policy::{BudgetsConfig, Limits};
pub use crate::state::budgets::Refusal;
pub(crate) use crate::state::budgets::today;
#[cfg(test)]
use crate::state::budgets::utc_date;
use crate::state::budgets::{self as shared, ScopeLimits, SharedBudgets};

/// The limits of a policy's `budgets` section, as the ledger applies them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetLimits {
    pub pacing_from: f64,
    pub global: Limits,
    pub per_key: Limits,
}

impl BudgetLimits {
    pub fn from_config(config: &BudgetsConfig) -> BudgetLimits {
        BudgetLimits {
            pacing_from: config.pacing_from(),
            global: config.global,
            per_key: config.per_key,
        }
    }
}

/// Spend recorded so far, shared by every policy generation (limits may be
/// reloaded; money spent stays spent).
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    state: Mutex<Books>,
    dirty: AtomicBool,
    /// Held for a whole flush. A flush that finds another one writing waits for
    /// it, so it never returns (and lets the process exit) before the file holds
    /// the spend it saw; and two writers never share the temporary file.
    writing: Mutex<()>,
    /// The open `STATE_FILE.lock`, whose advisory lock says this process keeps
    /// the file (see [`Ledger::open_exclusive`]); released when the ledger goes.
    _lock: Option<std::fs::File>,
}

/// What was spent (kept on disk) and what calls in flight may still spend.
#[derive(Debug, Default)]
struct Books {
    spent: SpendState,
    held: Held,
}

/// Reservations of the calls in flight.
#[derive(Debug, Default)]
struct Held {
    global: Hold,
    keys: HashMap<String, Hold>,
}

/// A sum of reservations, and how many: when the last goes the sum is exactly
/// zero again, whatever order the amounts were added and taken away in.
#[derive(Debug, Default, Clone, Copy)]
struct Hold {
    usd: f64,
    calls: usize,
}

impl Hold {
    fn add(&mut self, usd: f64) {
        self.usd += usd;
        self.calls += 1;
    }

    fn remove(&mut self, usd: f64) {
        self.calls = self.calls.saturating_sub(1);
        self.usd = if self.calls == 0 {
            0.0
        } else {
            (self.usd - usd).max(0.0)
        };
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
struct SpendState {
    /// `YYYY-MM-DD` of the day the daily amounts belong to.
    day: String,
    /// `YYYY-MM` of the month the monthly amounts belong to.
    month: String,
    global: Spend,
    keys: HashMap<String, Spend>,
}

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Spend {
    pub daily_usd: f64,
    pub monthly_usd: f64,
}

impl SpendState {
    /// The first entry no ledger could have written, described with its path
    /// in the file (`keys."team-a".daily_usd is -3`), if any.
    fn first_impossible_entry(&self) -> Option<String> {
        let mut scopes: Vec<(String, Spend)> = vec![("global".to_string(), self.global)];
        let mut keys: Vec<_> = self.keys.iter().collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        scopes.extend(keys.into_iter().map(|(key, spend)| (format!("keys.{key:?}"), *spend)));
        // Every charge is added to both the day's and the month's sum, and
        // both restart together at a new month; f64 addition is monotonic, so
        // a day's sum never exceeds its month's, rounding included.
        scopes.into_iter().find_map(|(scope, spend)| {
            for (field, usd) in [("daily_usd", spend.daily_usd), ("monthly_usd", spend.monthly_usd)] {
                if !usd.is_finite() {
                    return Some(format!("{scope}.{field} is {usd}, not a finite amount"));
                }
                if usd < 0.0 {
                    return Some(format!("{scope}.{field} is {usd}: spend cannot be negative"));
                }
            }
            (spend.daily_usd > spend.monthly_usd).then(|| {
                format!(
                    "{scope}.daily_usd is {} but its month's spend, {scope}.monthly_usd, is only {}",
                    spend.daily_usd, spend.monthly_usd
                )
            })
        })
    }

    /// Starts a new day or month when the calendar has moved on.
    fn roll_to(&mut self, day: &str) {
        let month = &day[..7];
        if self.month != month {
            self.month = month.to_string();
            self.global.monthly_usd = 0.0;
            self.keys.values_mut().for_each(|s| s.monthly_usd = 0.0);
        }
        if self.day != day {
            self.day = day.to_string();
            self.global.daily_usd = 0.0;
            self.keys.values_mut().for_each(|s| s.daily_usd = 0.0);
            self.keys.retain(|_, s| s.monthly_usd > 0.0);
        }
    }
}

/// `STATE_FILE.lock`, whose advisory lock a daemon keeping the file holds.
fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// A ledger's spend as recorded (see [`Ledger::recorded`]).
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `YYYY-MM-DD` the daily amounts are of (empty when nothing was spent).
    pub day: String,
    /// `YYYY-MM` the monthly amounts are of.
    pub month: String,
    pub global: Spend,
    pub keys: Vec<(String, Spend)>,
}

/// How close to its budgets a request's caller is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pacing {
    /// 0 = no pacing, 1 = a budget is spent.
    pub level: f64,
}

impl Pacing {
    pub const OFF: Pacing = Pacing { level: 0.0 };

    pub fn exhausted(self) -> bool {
        self.level >= 1.0
    }
}

/// One budget's state, for metrics and the status page.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetStatus {
    pub scope: &'static str,
    pub period: &'static str,
    pub limit_usd: f64,
    pub spent_usd: f64,
}

/// Money a remote call in flight may spend, counted against the budgets from
/// its admission until its cost is known.
///
/// [`settle`](Reservation::settle) records the call's real cost in its place;
/// [`release`](Reservation::release) lets it go for a call that was never
/// billed (the upstream refused it). Dropped otherwise (the client went away
/// mid-call, or the answer had no usage), the worst case is charged: the
/// upstream bills what it generated, and the budget must not be the one to guess low.
pub struct Reservation {
    backing: Backing,
    key: Option<String>,
    usd: f64,
    open: bool,
}

/// Where a reservation is held.
enum Backing {
    File(Arc<Ledger>),
    /// In the shared store, or from this replica's fail-safe allowance
    /// (`None` once closed).
    Shared(Arc<SharedBudgets>, Option<shared::Hold>),
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("key", &self.key)
            .field("usd", &self.usd)
            .field("open", &self.open)
            .finish()
    }
}

impl Reservation {
    /// The worst-case cost held.
    pub fn usd(&self) -> f64 {
        self.usd
    }

    /// Records the call's real cost and lets the hold go, in one step.
    pub fn settle(mut self, cost_usd: f64) {
        self.close(cost_usd);
    }

    /// Lets the hold go without charging anything.
    pub fn release(mut self) {
        self.close(0.0);
    }

    fn close(&mut self, charge_usd: f64) {
        if !std::mem::replace(&mut self.open, false) {
            return;
        }
        match &mut self.backing {
            Backing::File(ledger) => {
                let mut books = ledger.state.lock().expect("ledger lock");
                books.held.global.remove(self.usd);
                if let Some(key) = &self.key
                    && let Some(hold) = books.held.keys.get_mut(key)
                {
                    hold.remove(self.usd);
                    if hold.calls == 0 {
                        books.held.keys.remove(key);
                    }
                }
                ledger.charge(&mut books, &today(), self.key.as_deref(), charge_usd);
            }
            Backing::Shared(budgets, hold) => {
                if let Some(hold) = hold.take() {
                    budgets.settle(&today(), hold, self.usd, charge_usd.max(0.0));
                }
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.open {
            tracing::warn!(
                worst_case_usd = self.usd,
                "a remote call ended without a known cost; its worst case is charged to the budget"
            );
            self.close(self.usd);
        }
    }
}

/// The spend books a policy's budgets are kept in: this process's ledger
/// (and its state file), or the store shared by replicas.
#[derive(Clone)]
pub enum SpendBook {
    File(Arc<Ledger>),
    Shared(Arc<SharedBudgets>),
}

impl SpendBook {
    /// Admits a remote call that may cost up to `usd`, holding it against
    /// the caller's budgets until the reservation ends; refused when the
    /// hold would take a budget past its limit.
    pub async fn reserve(&self, limits: &BudgetLimits, key: Option<&str>, usd: f64) -> Result<Reservation, Refusal> {
        let usd = if usd.is_finite() { usd.max(0.0) } else { 0.0 };
        let backing = match self {
            SpendBook::File(ledger) => {
                let reservation = ledger.try_reserve(limits, key, usd).ok_or(Refusal::Exhausted)?;
                return Ok(reservation);
            }
            SpendBook::Shared(budgets) => {
                let mut scopes = vec![ScopeLimits {
                    scope: shared::scope(None),
                    daily_usd: limits.global.daily_usd,
                    monthly_usd: limits.global.monthly_usd,
                }];
                if let Some(key) = key {
                    scopes.push(ScopeLimits {
                        scope: shared::scope(Some(key)),
                        daily_usd: limits.per_key.daily_usd,
                        monthly_usd: limits.per_key.monthly_usd,
                    });
                }
                let hold = budgets.hold(&today(), &scopes, usd).await?;
                Backing::Shared(budgets.clone(), Some(hold))
            }
        };
        Ok(Reservation {
            backing,
            key: key.map(str::to_string),
            usd,
            open: true,
        })
    }

    /// The pacing level for a caller, counting calls in flight as spent.
    /// With the shared store unreachable, remote is off for routed
    /// requests (level 1): only the fail-safe allowance admits calls.
    pub fn pacing(&self, limits: &BudgetLimits, key: Option<&str>) -> Pacing {
        match self {
            SpendBook::File(ledger) => ledger.pacing(limits, key),
            SpendBook::Shared(budgets) => {
                if !budgets.store().is_up() {
                    return Pacing { level: 1.0 };
                }
                let snapshot = budgets.snapshot();
                let today = today();
                let spend = |scope: &str| {
                    let (daily_usd, monthly_usd) = snapshot.spend_on(scope, &today, true);
                    Spend { daily_usd, monthly_usd }
                };
                let mut fraction = fullest(spend(&shared::scope(None)), limits.global);
                if let Some(key) = key {
                    fraction = fraction.max(fullest(spend(&shared::scope(Some(key))), limits.per_key));
                }
                Pacing {
                    level: level_from(fraction, limits.pacing_from),
                }
            }
        }
    }

    /// Whether the books cannot be read now (the shared store is down):
    /// admission then decides alone, from the fail-safe allowance.
    pub fn degraded(&self) -> bool {
        match self {
            SpendBook::File(_) => false,
            SpendBook::Shared(budgets) => !budgets.store().is_up(),
        }
    }

    /// What calls in flight hold against the global budgets.
    pub fn reserved_usd(&self) -> f64 {
        match self {
            SpendBook::File(ledger) => ledger.reserved_usd(),
            SpendBook::Shared(budgets) => budgets.snapshot().held_usd(&shared::scope(None)),
        }
    }

    /// The global budgets' state.
    pub fn status(&self, limits: &BudgetLimits) -> Vec<BudgetStatus> {
        match self {
            SpendBook::File(ledger) => ledger.status(limits),
            SpendBook::Shared(budgets) => {
                let snapshot = budgets.snapshot();
                let (day, month) = snapshot.spend_on(&shared::scope(None), &today(), false);
                statuses(
                    limits,
                    Spend {
                        daily_usd: day,
                        monthly_usd: month,
                    },
                )
            }
        }
    }

    /// Adds the cost of a finished remote call that held nothing.
    pub fn record(&self, key: Option<&str>, cost_usd: f64) {
        match self {
            SpendBook::File(ledger) => ledger.record(key, cost_usd),
            SpendBook::Shared(budgets) => {
                let mut scopes = vec![shared::scope(None)];
                scopes.extend(key.map(|k| shared::scope(Some(k))));
                budgets.record(&today(), scopes, cost_usd);
            }
        }
    }

    /// The file ledger, when the spend is kept in the process.
    pub fn file(&self) -> Option<&Arc<Ledger>> {
        match self {
            SpendBook::File(ledger) => Some(ledger),
            SpendBook::Shared(_) => None,
        }
    }
}

impl Ledger {
    /// Opens the spend file, or starts empty when there is none. A file that
    /// cannot be parsed, or that holds a spend no ledger of ours could have
    /// written (negative, not finite, a day's spend above its month's), is an
    /// error naming the entry: silently resetting spend would lift the budget,
    /// and guessing which figure is right would be as bad. The daemon refuses
    /// to start on it, so the operator learns the ledger is corrupt before any
    /// money moves, rather than from a budget that misbehaves later.
    pub fn open(path: &Path) -> Result<Ledger, String> {
        Ledger::read(path, None)
    }

    /// As [`Ledger::open`], for the daemon that keeps the file: it takes an
    /// advisory lock on `STATE_FILE.lock` (flock, released when the process
    /// ends, however it ends) and refuses when another process holds it. Two
    /// daemons sharing one state file would each keep their own ledger and
    /// overwrite each other's spend, together spending the budget twice.
    pub fn open_exclusive(path: &Path) -> Result<Ledger, String> {
        use std::io::{Seek, Write};
        use std::os::fd::AsRawFd;
        let lock_path = lock_path(path);
        // The state file's folder may not exist yet (the first flush makes it).
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
        }
        let mut lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(|err| format!("cannot open {}: {err}", lock_path.display()))?;
        // SAFETY: flock on a descriptor this function owns, open until the ledger drops it.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let holder = std::fs::read_to_string(&lock_path).unwrap_or_default();
            let holder = holder.trim();
            return Err(format!(
                "budget state file {} is kept by another running Switchyard{}: two daemons with one state file each keep their own ledger and overwrite the other's spend, spending the budget twice. Give each daemon its own state_file (each then has its own budget); replicas that share budgets keep them in a shared store: set state.backend: redis in the policy",
                path.display(),
                if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                }
            ));
        }
        let pid = std::process::id().to_string();
        let written = lock
            .set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| lock.write_all(pid.as_bytes()));
        if let Err(err) = written {
            tracing::warn!(file = %lock_path.display(), "cannot write the pid into the lock file: {err}");
        }
        Ledger::read(path, Some(lock))
    }

    /// As [`Ledger::open`], for a file no daemon keeps now: refused while
    /// one holds its lock (see [`Ledger::open_exclusive`]); until the ledger
    /// goes, no daemon can start on the file. Creates nothing (a daemon that
    /// never ran on the file left no lock).
    pub fn open_unkept(path: &Path) -> Result<Ledger, String> {
        use std::os::fd::AsRawFd;
        let lock_path = lock_path(path);
        let lock = match std::fs::File::open(&lock_path) {
            Ok(lock) => lock,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ledger::read(path, None),
            Err(err) => return Err(format!("cannot open {}: {err}", lock_path.display())),
        };
        // SAFETY: flock on a descriptor this function owns, open until the ledger drops it.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let holder = std::fs::read_to_string(&lock_path).unwrap_or_default();
            return Err(format!(
                "budget state file {} is kept by a running Switchyard{}: stop it first",
                path.display(),
                match holder.trim() {
                    "" => String::new(),
                    pid => format!(" (pid {pid})"),
                }
            ));
        }
        Ledger::read(path, Some(lock))
    }

    fn read(path: &Path, lock: Option<std::fs::File>) -> Result<Ledger, String> {
        let state: SpendState = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|err| format!("budget state file {} is not valid: {err}", path.display()))?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => SpendState::default(),
            Err(err) => return Err(format!("cannot read budget state file {}: {err}", path.display())),
        };
        if let Some(impossible) = state.first_impossible_entry() {
            return Err(format!(
                "budget state file {} is corrupt: {impossible}; correct or remove that entry (removing it forgets that spend)",
                path.display()
            ));
        }
        Ok(Ledger {
            path: path.to_path_buf(),
            state: Mutex::new(Books {
                spent: state,
                held: Held::default(),
            }),
            dirty: AtomicBool::new(false),
            writing: Mutex::new(()),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the file records as spent: the day and month it is of, and each
    /// scope's spend then (keys sorted by name).
    pub fn recorded(&self) -> Recorded {
        let books = self.state.lock().expect("ledger lock");
        let spent = &books.spent;
        let mut keys: Vec<(String, Spend)> = spent.keys.iter().map(|(k, s)| (k.clone(), *s)).collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        Recorded {
            day: spent.day.clone(),
            month: spent.month.clone(),
            global: spent.global,
            keys,
        }
    }

    /// Adds the cost of a finished remote call.
    pub fn record(&self, key: Option<&str>, cost_usd: f64) {
        self.record_on(&today(), key, cost_usd);
    }

    fn record_on(&self, day: &str, key: Option<&str>, cost_usd: f64) {
        let mut books = self.state.lock().expect("ledger lock");
        self.charge(&mut books, day, key, cost_usd);
    }

    fn charge(&self, books: &mut Books, day: &str, key: Option<&str>, cost_usd: f64) {
        if !(cost_usd.is_finite() && cost_usd > 0.0) {
            return;
        }
        let state = &mut books.spent;
        state.roll_to(day);
        state.global.daily_usd += cost_usd;
        state.global.monthly_usd += cost_usd;
        if let Some(key) = key {
            let spend = state.keys.entry(key.to_string()).or_default();
            spend.daily_usd += cost_usd;
            spend.monthly_usd += cost_usd;
        }
        self.dirty.store(true, Ordering::Release);
    }

    /// Admits a remote call that may cost up to `usd`: refused (`None`) when
    /// the caller's budgets, counting what calls in flight hold, would be
    /// exceeded by it;
    /// else the amount is held against them until the reservation ends. The
    /// check and the hold are one step, so calls admitted together cannot all
    /// see the same money left.
    pub fn try_reserve(self: &Arc<Self>, limits: &BudgetLimits, key: Option<&str>, usd: f64) -> Option<Reservation> {
        self.try_reserve_on(&today(), limits, key, usd)
    }

    fn try_reserve_on(
        self: &Arc<Self>,
        day: &str,
        limits: &BudgetLimits,
        key: Option<&str>,
        usd: f64,
    ) -> Option<Reservation> {
        let usd = if usd.is_finite() { usd.max(0.0) } else { 0.0 };
        let mut books = self.state.lock().expect("ledger lock");
        if !fits(&mut books, day, limits, key, usd) {
            return None;
        }
        books.held.global.add(usd);
        if let Some(key) = key {
            books.held.keys.entry(key.to_string()).or_default().add(usd);
        }
        Some(Reservation {
            backing: Backing::File(self.clone()),
            key: key.map(str::to_string),
            usd,
            open: true,
        })
    }

    /// What calls in flight hold against the global budgets.
    pub fn reserved_usd(&self) -> f64 {
        self.state.lock().expect("ledger lock").held.global.usd
    }

    /// The pacing level for a caller under these limits, counting the
    /// reservations of calls in flight as spent.
    pub fn pacing(&self, config: &BudgetLimits, key: Option<&str>) -> Pacing {
        self.pacing_on(&today(), config, key)
    }

    fn pacing_on(&self, day: &str, config: &BudgetLimits, key: Option<&str>) -> Pacing {
        let mut books = self.state.lock().expect("ledger lock");
        Pacing {
            level: level_of(&mut books, day, config, key),
        }
    }

    /// The global budgets' state.
    pub fn status(&self, config: &BudgetLimits) -> Vec<BudgetStatus> {
        let global = {
            let mut books = self.state.lock().expect("ledger lock");
            books.spent.roll_to(&today());
            books.spent.global
        };
        statuses(config, global)
    }

    /// Writes the spend file if anything changed since the last write: to a
    /// temporary file first, then renamed over, so a crash never leaves half a file.
    pub fn flush(&self) -> std::io::Result<()> {
        let _writing = self.writing.lock().expect("ledger write lock");
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let json = {
            let books = self.state.lock().expect("ledger lock");
            serde_json::to_vec_pretty(&books.spent).expect("spend state serializes")
        };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = self.path.with_extension("json.tmp");
            std::fs::write(&tmp, &json)?;
            std::fs::rename(&tmp, &self.path)
        };
        write().inspect_err(|_| self.dirty.store(true, Ordering::Release))
    }
}

/// Spend recorded after the last flush (by requests cut at the end of the
/// shutdown drain, or still in flight into a ledger a reload replaced) is
/// written when the last holder lets go of the ledger.
impl Drop for Ledger {
    fn drop(&mut self) {
        if let Err(err) = self.flush() {
            tracing::error!(path = %self.path.display(), "cannot write budget state: {err}");
        }
    }
}

/// The global budgets that are set, with their spend.
fn statuses(config: &BudgetLimits, global: Spend) -> Vec<BudgetStatus> {
    let mut out = Vec::new();
    if let Some(limit) = config.global.daily_usd {
        out.push(BudgetStatus {
            scope: "global",
            period: "day",
            limit_usd: limit,
            spent_usd: global.daily_usd,
        });
    }
    if let Some(limit) = config.global.monthly_usd {
        out.push(BudgetStatus {
            scope: "global",
            period: "month",
            limit_usd: limit,
            spent_usd: global.monthly_usd,
        });
    }
    out
}

/// Whether a hold of `usd` keeps every budget of the caller within its
/// limit, counting spend and what calls in flight hold. A budget is never
/// exceeded by calls admitted together: each fits in what the others left.
fn fits(books: &mut Books, day: &str, config: &BudgetLimits, key: Option<&str>, usd: f64) -> bool {
    books.spent.roll_to(day);
    let within = |spend: Spend, held: f64, limits: Limits| {
        [
            (spend.daily_usd, limits.daily_usd),
            (spend.monthly_usd, limits.monthly_usd),
        ]
        .into_iter()
        .all(|(spent, limit)| {
            // A spent budget refuses even a call whose cost is not
            // bounded in advance (held at zero).
            limit.is_none_or(|limit| spent + held < limit && spent + held + usd <= limit * (1.0 + 1e-12))
        })
    };
    let mut ok = within(books.spent.global, books.held.global.usd, config.global);
    if let Some(key) = key {
        let spent = books.spent.keys.get(key).copied().unwrap_or_default();
        let held = books.held.keys.get(key).map_or(0.0, |h| h.usd);
        ok &= within(spent, held, config.per_key);
    }
    ok
}

/// The pacing level of a spent fraction: `pacing_from..1` mapped to `0..1`.
fn level_from(fraction: f64, from: f64) -> f64 {
    ((fraction - from) / (1.0 - from)).clamp(0.0, 1.0)
}

/// The pacing level of `key` (or the global one): spend plus holds, as the
/// largest fraction of any limit, mapped from `pacing_from..1` to `0..1`.
fn level_of(books: &mut Books, day: &str, config: &BudgetLimits, key: Option<&str>) -> f64 {
    books.spent.roll_to(day);
    let with_held = |spend: Spend, held: f64| Spend {
        daily_usd: spend.daily_usd + held,
        monthly_usd: spend.monthly_usd + held,
    };
    let mut fraction = fullest(with_held(books.spent.global, books.held.global.usd), config.global);
    if let Some(key) = key {
        let spent = books.spent.keys.get(key).copied().unwrap_or_default();
        let held = books.held.keys.get(key).map_or(0.0, |h| h.usd);
        fraction = fraction.max(fullest(with_held(spent, held), config.per_key));
    }
    level_from(fraction, config.pacing_from)
}

/// The largest spent fraction of the limits that are set.
fn fullest(spend: Spend, limits: Limits) -> f64 {
    [
        (spend.daily_usd, limits.daily_usd),
        (spend.monthly_usd, limits.monthly_usd),
    ]
    .into_iter()
    .filter_map(|(spent, limit)| limit.map(|l| spent / l))
    .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> BudgetLimits {
        BudgetLimits::from_config(&serde_saphyr::from_str(yaml).unwrap())
    }

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("switchyard-budget-{}-{name}.json", std::process::id()))
    }

    #[test]
    fn one_ledger_keeps_a_state_file_at_a_time() {
        let dir = std::env::temp_dir().join(format!("switchyard-budget-{}-new-folder", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let fresh = Ledger::open_exclusive(&dir.join("state/spend.json"));
        assert!(fresh.is_ok(), "a folder not made yet is made: {:?}", fresh.err());
        drop(fresh);
        std::fs::remove_dir_all(&dir).unwrap();
        let path = temp_path("exclusive");
        let first = Ledger::open_exclusive(&path).unwrap();
        let refused = Ledger::open_exclusive(&path).unwrap_err();
        assert!(refused.contains("kept by another running Switchyard"), "{refused}");
        assert!(Ledger::open(&path).is_ok(), "reading without keeping is allowed");
        drop(first);
        assert!(
            Ledger::open_exclusive(&path).is_ok(),
            "free again once the first is gone"
        );
        let mut lock = path.into_os_string();
        lock.push(".lock");
        let _ = std::fs::remove_file(lock);
    }

    #[test]
    fn dates_are_utc_calendar_days() {
        let day = |days: i64| utc_date(time::OffsetDateTime::from_unix_timestamp(days * 86_400).unwrap());
        assert_eq!(day(0), "1970-01-01");
        assert_eq!(day(19_723), "2024-01-01");
        assert_eq!(day(19_782), "2024-02-29");
        assert_eq!(day(20_781), "2026-11-24");
    }

    #[test]
    fn pacing_rises_smoothly_from_pacing_from_to_the_limit() {
        let config = config("state_file: x\npacing_from: 0.5\nglobal: { daily_usd: 10 }\n");
        let _ = std::fs::remove_file(temp_path("pacing"));
        let ledger = Ledger::open(&temp_path("pacing")).unwrap();
        let level = |ledger: &Ledger| ledger.pacing_on("2026-11-24", &config, None).level;
        assert_eq!(level(&ledger), 0.0);
        ledger.record_on("2026-11-24", None, 5.0);
        assert_eq!(level(&ledger), 0.0);
        ledger.record_on("2026-11-24", None, 2.5);
        assert!((level(&ledger) - 0.5).abs() < 1e-12);
        ledger.record_on("2026-11-24", None, 2.5);
        assert!(ledger.pacing_on("2026-11-24", &config, None).exhausted());
        // A new day starts with a fresh daily budget.
        assert_eq!(ledger.pacing_on("2026-11-25", &config, None).level, 0.0);
        // Unflushed spend is written when the ledger goes.
        drop(ledger);
        let on_disk: SpendState = serde_json::from_slice(&std::fs::read(temp_path("pacing")).unwrap()).unwrap();
        assert_eq!(on_disk.global.monthly_usd, 10.0);
        std::fs::remove_file(temp_path("pacing")).unwrap();
    }

    #[test]
    fn a_key_is_paced_by_the_tighter_of_its_own_and_the_global_budget() {
        let config = config("state_file: x\npacing_from: 0\nglobal: { monthly_usd: 100 }\nper_key: { daily_usd: 1 }\n");
        let _ = std::fs::remove_file(temp_path("keys"));
        let ledger = Ledger::open(&temp_path("keys")).unwrap();
        ledger.record_on("2026-11-24", Some("team-a"), 0.5);
        let a = ledger.pacing_on("2026-11-24", &config, Some("team-a")).level;
        let b = ledger.pacing_on("2026-11-24", &config, Some("team-b")).level;
        assert!((a - 0.5).abs() < 1e-12, "{a}");
        assert!((b - 0.005).abs() < 1e-12, "{b}");
        // The month carries over a day change; the day does not.
        let next_day = ledger.pacing_on("2026-11-25", &config, Some("team-a")).level;
        assert!((next_day - 0.005).abs() < 1e-12, "{next_day}");
        drop(ledger);
        std::fs::remove_file(temp_path("keys")).unwrap();
    }

    #[test]
    fn calls_in_flight_count_against_the_budget_until_their_cost_is_known() {
        let config = config("state_file: x\npacing_from: 0\nglobal: { daily_usd: 1 }\nper_key: { daily_usd: 0.5 }\n");
        let _ = std::fs::remove_file(temp_path("held"));
        let ledger = Arc::new(Ledger::open(&temp_path("held")).unwrap());
        let day = &today();
        let level = |key| ledger.pacing_on(day, &config, key).level;
        let admit = |key, usd| ledger.try_reserve_on(day, &config, key, usd);
        let a = admit(Some("a"), 0.25).unwrap();
        let b = admit(None, 0.5).unwrap();
        assert!((level(None) - 0.75).abs() < 1e-12);
        assert!(
            (level(Some("a")) - 0.75).abs() < 1e-12,
            "the global budget is the tighter"
        );
        let a2 = admit(Some("a"), 0.25).unwrap();
        assert!(admit(Some("a"), 0.01).is_none(), "a's own half is held");
        assert!(admit(None, 0.01).is_none(), "and so is the global budget");
        assert!((level(None) - 1.0).abs() < 1e-12, "a refused call holds nothing");
        // A call the upstream refused is not billed.
        b.release();
        assert!((level(None) - 0.5).abs() < 1e-12);
        assert!(admit(Some("a"), 0.01).is_none(), "a's half is still held");
        admit(Some("b"), 0.01).expect("b may go").release();
        // The real cost replaces the hold...
        a.settle(0.1);
        assert!((level(Some("a")) - 0.7).abs() < 1e-12, "{}", level(Some("a")));
        // ...and a call that ended without one is charged its worst case.
        drop(a2);
        assert!((level(Some("a")) - 0.7).abs() < 1e-12, "{}", level(Some("a")));
        assert!((level(None) - 0.35).abs() < 1e-12, "{}", level(None));
        assert_eq!(ledger.reserved_usd(), 0.0);
        assert!(ledger.state.lock().unwrap().held.keys.is_empty());
        drop(Arc::into_inner(ledger).unwrap());
        std::fs::remove_file(temp_path("held")).unwrap();
    }

    #[test]
    fn holds_return_to_exactly_zero_whatever_the_order() {
        let config = config("state_file: x\nglobal: { daily_usd: 1000 }\n");
        let _ = std::fs::remove_file(temp_path("zero"));
        let ledger = Arc::new(Ledger::open(&temp_path("zero")).unwrap());
        let mut held: Vec<_> = (1..=40)
            .map(|p| {
                ledger
                    .try_reserve(&config, Some("k"), (f64::from(p) * 2.5 + 40.0) / 1e6)
                    .unwrap()
            })
            .collect();
        // Let them go in another order than they came.
        while !held.is_empty() {
            held.swap_remove(held.len() / 3).release();
        }
        assert_eq!(ledger.reserved_usd(), 0.0);
        assert!(ledger.state.lock().unwrap().held.keys.is_empty());
        drop(Arc::into_inner(ledger).unwrap());
        let _ = std::fs::remove_file(temp_path("zero"));
    }

    #[test]
    fn spend_survives_a_restart_and_a_corrupt_file_is_refused() {
        let path = temp_path("restart");
        let _ = std::fs::remove_file(&path);
        let ledger = Ledger::open(&path).unwrap();
        ledger.record(Some("k"), 1.25);
        ledger.flush().unwrap();
        let reopened = Ledger::open(&path).unwrap();
        assert_eq!(
            reopened.state.lock().unwrap().spent,
            ledger.state.lock().unwrap().spent,
            "spend read back as written"
        );
        std::fs::write(&path, b"{not json").unwrap();
        assert!(Ledger::open(&path).unwrap_err().contains("not valid"));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_file_with_an_impossible_spend_is_refused_naming_the_file_and_the_entry() {
        let path = temp_path("impossible");
        let good = r#"{"day":"2026-11-24","month":"2026-11","global":{"daily_usd":1,"monthly_usd":3},"keys":{"team-a":{"daily_usd":0.5,"monthly_usd":2}}}"#;
        for (bad_from, bad_to, entry) in [
            (
                r#""daily_usd":0.5"#,
                r#""daily_usd":-0.5"#,
                r#"keys."team-a".daily_usd is -0.5"#,
            ),
            (r#""monthly_usd":3"#, r#""monthly_usd":-3"#, "global.monthly_usd is -3"),
            // JSON cannot write an infinite amount; the parser says where it is.
            (
                r#""monthly_usd":3"#,
                r#""monthly_usd":1e999"#,
                "number out of range at line 1",
            ),
            (r#""daily_usd":1,"#, r#""daily_usd":5,"#, "global.daily_usd is 5 but"),
        ] {
            let text = good.replacen(bad_from, bad_to, 1);
            assert_ne!(text, good);
            std::fs::write(&path, &text).unwrap();
            let err = Ledger::open(&path).unwrap_err();
            assert!(
                err.contains(&path.display().to_string()) && err.contains(entry),
                "{text}: {err}"
            );
        }
        std::fs::write(&path, good).unwrap();
        assert!(Ledger::open(&path).is_ok());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_flush_returns_only_once_the_file_holds_what_it_saw() {
        // Another flush (the periodic one) may be writing when the shutdown
        // flush runs; the latter must not return before the file is complete.
        let path = temp_path("concurrent");
        let _ = std::fs::remove_file(&path);
        let ledger = std::sync::Arc::new(Ledger::open(&path).unwrap());
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let background = {
            let (ledger, stop) = (ledger.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    ledger.flush().unwrap();
                }
            })
        };
        for n in 1..=500 {
            ledger.record_on("2026-11-24", None, 1.0);
            ledger.flush().unwrap();
            let on_disk: SpendState = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            assert_eq!(on_disk.global.daily_usd, f64::from(n), "after {n} records");
        }
        stop.store(true, Ordering::Relaxed);
        background.join().unwrap();
        std::fs::remove_file(&path).unwrap();
    }
}
