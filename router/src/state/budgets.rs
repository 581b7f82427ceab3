//! Budgets kept in the shared store: every replica's remote calls are held
//! and settled by one script each, so calls admitted together on different
//! replicas can never together spend more than a budget.
//!
//! - **Hold** (admission): a call's worst case is held against each of its
//!   scopes (`global`, `key:<name>`) only if, for each, spend of the UTC day
//!   and month plus what calls in flight hold plus this amount stays within
//!   the limit; nothing is written otherwise. Amounts are integer
//!   nano-dollars: holds return to exactly zero and limits compare exactly.
//! - **Settle**: the real cost replaces the hold. Idempotent by the call's
//!   id, so a settlement retried after a timeout (the first may have run)
//!   counts once.
//! - **Renew**: a replica extends the holds of its calls still running; a
//!   hold whose replica died expires after `hold_ttl_s` and is charged its
//!   worst case (a call that ended without a known cost is charged so
//!   in the process too); a late settlement corrects that charge.
//! - **Snapshot**: what is spent and held, read every quarter second, for
//!   pacing (the routing's soft brake) and the metrics; the hold is the hard
//!   gate.
//!
//! While the store is down, remote calls are admitted from a small
//! allowance of this replica's (per outage), their settlements journalled
//! and written, by the same idempotent script, before the store counts as
//! up again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::Script;

use super::{Settlement, Store, StoreError};
use crate::metrics::metrics;

const NANO: f64 = 1e9;
/// How long a day's and a month's spend keys outlive their period.
const DAY_TTL_S: u64 = 40 * 86_400;
const MONTH_TTL_S: u64 = 400 * 86_400;
/// How often the snapshot is read.
const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(250);

macro_rules! budget_script {
    ($file:literal) => {
        concat!(include_str!("scripts/budget_common.lua"), include_str!($file))
    };
}

struct Scripts {
    hold: Script,
    settle: Script,
    renew: Script,
    snapshot: Script,
    import: Script,
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        hold: Script::new(budget_script!("scripts/hold.lua")),
        settle: Script::new(budget_script!("scripts/settle.lua")),
        renew: Script::new(budget_script!("scripts/renew.lua")),
        snapshot: Script::new(budget_script!("scripts/snapshot.lua")),
        import: Script::new(budget_script!("scripts/import.lua")),
    })
}

/// The keys every budget script takes (see `scripts/budget_common.lua`),
/// with the spend of `day` and of its month.
fn budget_keys(store: &Store, day: &str) -> [String; 7] {
    let key = |name: &str| store.key(name);
    [
        key("held"),
        key("holds"),
        key("deadlines"),
        key("done"),
        key("expired"),
        key(&format!("spent:d:{day}")),
        key(&format!("spent:m:{}", &day[..7])),
    ]
}

/// A call of a budget script on `keys`, with the arguments all of them
/// take first (the time to live of the day's and the month's spend).
fn budget_call<'a>(script: &'a Script, keys: &[String; 7]) -> redis::ScriptInvocation<'a> {
    let mut call = script.prepare_invoke();
    for key in keys {
        call.key(key);
    }
    call.arg(DAY_TTL_S).arg(MONTH_TTL_S);
    call
}

/// Nano-dollars of an amount in USD (negative and non-finite amounts are 0).
pub fn nano(usd: f64) -> i64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * NANO).round() as i64
    } else {
        0
    }
}

fn usd(nano: i64) -> f64 {
    nano as f64 / NANO
}

/// The budget scope of a client key, or the global one.
pub fn scope(key: Option<&str>) -> String {
    match key {
        None => "global".to_string(),
        // Tabs separate scopes in a hold; other bytes are kept as they are.
        Some(key) => format!("key:{}", key.replace(['\t', '%'], "%")),
    }
}

/// One scope's spend brought into the store from elsewhere, in USD.
#[derive(Debug, Clone)]
pub struct Imported {
    pub scope: String,
    /// Of the day imported into.
    pub day_usd: f64,
    /// Of its month, the day's included.
    pub month_usd: f64,
}

/// Adds spend kept outside the store (a single daemon's state file, before
/// its budgets moved to the store) to the books of `day` and its month:
/// per scope, only what exceeds what earlier imports brought in for that
/// day and month, so importing the same spend twice adds nothing. Returns
/// what was added.
pub async fn import(store: &Store, day: &str, scopes: &[Imported]) -> Result<Vec<Imported>, StoreError> {
    let keys = budget_keys(store, day);
    let imported = [
        store.key(&format!("imported:d:{day}")),
        store.key(&format!("imported:m:{}", &day[..7])),
    ];
    let added: Vec<i64> = store
        .run("import", |mut con| {
            let mut call = budget_call(&scripts().import, &keys);
            call.key(&imported[0]).key(&imported[1]);
            for s in scopes {
                let day = nano(s.day_usd);
                call.arg(&s.scope).arg(day).arg(nano(s.month_usd).max(day));
            }
            async move { call.invoke_async(&mut con).await }
        })
        .await?;
    Ok(scopes
        .iter()
        .zip(added.chunks(2))
        .map(|(s, added)| Imported {
            scope: s.scope.clone(),
            day_usd: usd(added[0]),
            month_usd: usd(added.get(1).copied().unwrap_or(0)),
        })
        .collect())
}

/// One scope's limits for a hold, in USD.
#[derive(Debug, Clone)]
pub struct ScopeLimits {
    pub scope: String,
    pub daily_usd: Option<f64>,
    pub monthly_usd: Option<f64>,
}

/// How a hold was granted.
#[derive(Debug)]
pub enum Hold {
    /// Held in the store.
    Stored { id: String, scopes: Vec<String> },
    /// From this replica's allowance while the store was down.
    Allowance { id: String, scopes: Vec<String> },
}

/// Why a remote call was not admitted (by the shared store, or by the
/// process's own ledger, which refuses only for the first reason).
#[derive(Debug, Clone)]
pub enum Refusal {
    /// A budget (counting calls in flight) would be exceeded.
    Exhausted,
    /// The shared store is unreachable and this replica's fail-safe
    /// allowance is used up.
    StoreDown { allowance_usd: f64, reason: String },
}

/// What the store held and had spent at the last snapshot.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub held: HashMap<String, i64>,
    pub day: HashMap<String, i64>,
    pub month: HashMap<String, i64>,
    /// The UTC day it was read for.
    pub on: String,
}

impl Snapshot {
    fn amount(map: &HashMap<String, i64>, scope: &str) -> f64 {
        usd(map.get(scope).copied().unwrap_or(0))
    }

    /// One scope's spend of `day` and of its month, in USD, with what calls
    /// in flight hold when `with_held`. A snapshot read for another day
    /// counts nothing for that day, and one of another month nothing for
    /// the month.
    pub fn spend_on(&self, scope: &str, day: &str, with_held: bool) -> (f64, f64) {
        let held = if with_held { self.held_usd(scope) } else { 0.0 };
        let of = |map, same: bool| if same { Snapshot::amount(map, scope) } else { 0.0 };
        let same_month = self.on.get(..7).is_some_and(|month| day.starts_with(month));
        (of(&self.day, self.on == day) + held, of(&self.month, same_month) + held)
    }

    /// What calls in flight hold against one scope, in USD.
    pub fn held_usd(&self, scope: &str) -> f64 {
        Snapshot::amount(&self.held, scope)
    }
}

/// Spend admitted from the allowance during one outage.
#[derive(Debug, Default)]
struct Allowance {
    outage: u64,
    used_nusd: i64,
}

pub struct SharedBudgets {
    store: Arc<Store>,
    hold_ttl: Duration,
    allowance_nusd: i64,
    snapshot: Mutex<Snapshot>,
    /// Ids of this replica's calls in flight held in the store: renewed.
    open: Mutex<HashSet<String>>,
    allowance: Mutex<Allowance>,
    next_id: AtomicU64,
    replica: String,
}

impl SharedBudgets {
    /// Budgets in `store`; starts the snapshot and renewal tasks (a Tokio
    /// runtime is needed).
    pub fn new(store: Arc<Store>, hold_ttl: Duration, allowance_usd: f64) -> Arc<SharedBudgets> {
        let budgets = Arc::new(SharedBudgets {
            store,
            hold_ttl,
            allowance_nusd: nano(allowance_usd),
            snapshot: Mutex::new(Snapshot::default()),
            open: Mutex::new(HashSet::new()),
            allowance: Mutex::new(Allowance::default()),
            next_id: AtomicU64::new(0),
            replica: uuid::Uuid::new_v4().simple().to_string(),
        });
        tokio::spawn(refresh(Arc::downgrade(&budgets)));
        tokio::spawn(renew(Arc::downgrade(&budgets)));
        budgets
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn new_id(&self) -> String {
        format!("{}-{}", self.replica, self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Admits a call that may cost `usd`, against each scope's limits.
    pub async fn hold(self: &Arc<Self>, day: &str, scopes: &[ScopeLimits], usd: f64) -> Result<Hold, Refusal> {
        let id = self.new_id();
        let names: Vec<String> = scopes.iter().map(|s| s.scope.clone()).collect();
        // A hold sent but not answered (the request went away meanwhile, or
        // the store did not answer in time, and no allowance took the call)
        // may still be made: released, by a settlement of nothing, unless
        // disarmed.
        let mut unanswered = Unanswered(Some((
            self.clone(),
            Settlement {
                id: id.clone(),
                cost_nusd: 0,
                scopes: names.clone(),
                day: day.to_string(),
                held: false,
                refusals: 0,
            },
        )));
        let amount = nano(usd);
        let limit = |l: Option<f64>| l.map_or(-1, nano);
        let keys = budget_keys(&self.store, day);
        let ttl_ms = self.hold_ttl.as_millis() as u64;
        let answer = self
            .store
            .run("hold", |mut con| {
                let mut call = budget_call(&scripts().hold, &keys);
                call.arg(&id).arg(amount).arg(ttl_ms);
                for s in scopes {
                    call.arg(&s.scope).arg(limit(s.daily_usd)).arg(limit(s.monthly_usd));
                }
                async move { call.invoke_async::<Vec<redis::Value>>(&mut con).await }
            })
            .await;
        match answer {
            Ok(values) => {
                unanswered.disarm();
                if matches!(values.first(), Some(redis::Value::Int(1))) {
                    self.open.lock().expect("open holds lock").insert(id.clone());
                    self.note_held(&names, amount);
                    Ok(Hold::Stored { id, scopes: names })
                } else {
                    Err(Refusal::Exhausted)
                }
            }
            Err(err) => {
                if matches!(err, StoreError::Down) {
                    // Not sent: nothing to release.
                    unanswered.disarm();
                }
                let admitted = self.hold_from_allowance(day, scopes, id, names, amount, &err);
                if admitted.is_ok() {
                    // Its own settlement (unheld, same id) releases whatever
                    // hold the store may have made.
                    unanswered.disarm();
                }
                admitted
            }
        }
    }

    /// The store could not be asked: the allowance decides, by the same rule
    /// as a hold (a used-up allowance refuses even a call held at zero), and
    /// never past a budget the last snapshot of the day already shows spent
    /// (counting what the allowance has admitted since).
    fn hold_from_allowance(
        &self,
        day: &str,
        limits: &[ScopeLimits],
        id: String,
        scopes: Vec<String>,
        amount: i64,
        err: &StoreError,
    ) -> Result<Hold, Refusal> {
        let mut allowance = self.allowance.lock().expect("allowance lock");
        let outage = self.store.outages();
        if allowance.outage != outage {
            *allowance = Allowance { outage, used_nusd: 0 };
        }
        let used = allowance.used_nusd;
        let over_allowance = used >= self.allowance_nusd || used + amount > self.allowance_nusd;
        let snapshot = self.snapshot();
        let over_budget = limits.iter().any(|scope| {
            let (day_used, month_used) = snapshot.spend_on(&scope.scope, day, true);
            [(day_used, scope.daily_usd), (month_used, scope.monthly_usd)]
                .into_iter()
                .any(|(spent, limit)| limit.is_some_and(|limit| nano(spent) + used + amount > nano(limit)))
        });
        if over_allowance || over_budget {
            let reason = match err {
                StoreError::Down => self.store.health().reason.unwrap_or_else(|| "unreachable".to_string()),
                other => other.to_string(),
            };
            return Err(Refusal::StoreDown {
                allowance_usd: usd(self.allowance_nusd),
                reason,
            });
        }
        allowance.used_nusd += amount;
        metrics().failsafe_spent.set(usd(allowance.used_nusd));
        Ok(Hold::Allowance { id, scopes })
    }

    /// Counts a hold in the snapshot at once, so that pacing sees it before
    /// the next read.
    fn note_held(&self, scopes: &[String], amount: i64) {
        let mut snapshot = self.snapshot.lock().expect("snapshot lock");
        for scope in scopes {
            *snapshot.held.entry(scope.clone()).or_default() += amount;
        }
    }

    /// Replaces a hold by its call's cost in the snapshot at once (the next
    /// read has both from the store), so that a hold let go, by a call
    /// refused or cheaper than its worst case, does not brake pacing until then.
    fn note_settled(&self, day: &str, scopes: &[String], held: i64, cost: i64) {
        let mut snapshot = self.snapshot.lock().expect("snapshot lock");
        let (same_day, same_month) = (snapshot.on == day, snapshot.on.get(..7) == day.get(..7));
        for scope in scopes {
            if let Some(amount) = snapshot.held.get_mut(scope) {
                *amount = (*amount - held).max(0);
            }
            if same_day {
                *snapshot.day.entry(scope.clone()).or_default() += cost;
            }
            if same_month {
                *snapshot.month.entry(scope.clone()).or_default() += cost;
            }
        }
    }

    /// Ends a hold of `held_usd` with the call's real cost (its worst case
    /// when unknown); the store is written in the background.
    pub fn settle(self: &Arc<Self>, day: &str, hold: Hold, held_usd: f64, cost_usd: f64) {
        let cost = nano(cost_usd);
        let (id, scopes, held) = match hold {
            Hold::Stored { id, scopes } => {
                self.open.lock().expect("open holds lock").remove(&id);
                self.note_settled(day, &scopes, nano(held_usd), cost);
                (id, scopes, true)
            }
            Hold::Allowance { id, scopes } => {
                let mut allowance = self.allowance.lock().expect("allowance lock");
                if allowance.outage == self.store.outages() {
                    allowance.used_nusd += cost - nano(held_usd);
                    metrics().failsafe_spent.set(usd(allowance.used_nusd));
                }
                (id, scopes, false)
            }
        };
        self.write_later(Settlement {
            id,
            cost_nusd: cost,
            scopes,
            day: day.to_string(),
            held,
            refusals: 0,
        });
    }

    /// Spend of a call that had no hold (recorded after the fact).
    pub fn record(self: &Arc<Self>, day: &str, scopes: Vec<String>, cost_usd: f64) {
        if nano(cost_usd) == 0 {
            return;
        }
        self.write_later(Settlement {
            id: self.new_id(),
            cost_nusd: nano(cost_usd),
            scopes,
            day: day.to_string(),
            held: false,
            refusals: 0,
        });
    }

    /// Writes a settlement in the background; journalled while the store
    /// cannot take it.
    fn write_later(self: &Arc<Self>, settlement: Settlement) {
        let store = self.store.clone();
        store.writing.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            if let Err(err) = settle_in(&store, &settlement, false).await {
                tracing::debug!("a settlement waits for the state store: {err}");
                store.journal.push(settlement);
            }
            store.writing.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// The last snapshot, for pacing and the status; empty while the store
    /// has not been read.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.lock().expect("snapshot lock").clone()
    }

    async fn read_snapshot(&self, day: &str) -> Result<Snapshot, StoreError> {
        let keys = budget_keys(&self.store, day);
        let (held, spent_day, spent_month): (HashMap<String, i64>, HashMap<String, i64>, HashMap<String, i64>) = self
            .store
            .run("snapshot", |mut con| {
                let call = budget_call(&scripts().snapshot, &keys);
                async move { call.invoke_async(&mut con).await }
            })
            .await?;
        Ok(Snapshot {
            held,
            day: spent_day,
            month: spent_month,
            on: day.to_string(),
        })
    }

    async fn renew_open(&self) -> Result<(), StoreError> {
        let ids: Vec<String> = self.open.lock().expect("open holds lock").iter().cloned().collect();
        if ids.is_empty() {
            return Ok(());
        }
        let keys = budget_keys(&self.store, &today());
        let ttl_ms = self.hold_ttl.as_millis() as u64;
        self.store
            .run("renew", |mut con| {
                let mut call = budget_call(&scripts().renew, &keys);
                call.arg(ttl_ms);
                for id in &ids {
                    call.arg(id);
                }
                async move { call.invoke_async::<i64>(&mut con).await }
            })
            .await
            .map(|_| ())
    }
}

/// Today's UTC date as `YYYY-MM-DD`.
pub fn today() -> String {
    utc_date(time::OffsetDateTime::now_utc())
}

/// The UTC calendar day of `at` as `YYYY-MM-DD`: the day budgets count in.
pub(crate) fn utc_date(at: time::OffsetDateTime) -> String {
    let date = at.to_offset(time::UtcOffset::UTC).date();
    format!("{:04}-{:02}-{:02}", date.year(), u8::from(date.month()), date.day())
}

/// The settlement of a hold that may have been made without an answer,
/// written when dropped armed (`Some`).
struct Unanswered(Option<(Arc<SharedBudgets>, Settlement)>);

impl Unanswered {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some((budgets, settlement)) = self.0.take() {
            budgets.write_later(settlement);
        }
    }
}

/// Runs the settle script for one settlement; `always`: even while the
/// store is marked down (the journal's writes, before it is up again).
async fn settle_in(store: &Store, settlement: &Settlement, always: bool) -> Result<(), StoreError> {
    let keys = budget_keys(store, &settlement.day);
    let work = |mut con: redis::aio::ConnectionManager| {
        let mut call = budget_call(&scripts().settle, &keys);
        call.arg(&settlement.id)
            .arg(settlement.cost_nusd)
            .arg(match (settlement.held, settlement.day == today()) {
                (true, true) => "held",
                (false, true) => "unheld",
                (true, false) => "held:past",
                (false, false) => "unheld:past",
            });
        for scope in &settlement.scopes {
            call.arg(scope);
        }
        async move { call.invoke_async::<i64>(&mut con).await }
    };
    if always {
        store.attempt("settle", work).await.map(|_| ())
    } else {
        store.run("settle", work).await.map(|_| ())
    }
}

/// Writes the journal's settlements, oldest first; what fails is kept.
/// Writes the journal's settlements, oldest first. An unreachable store
/// stops it, keeping the rest; a settlement the store refuses (a fault of
/// the script or of the data) is tried again at the next probe, and set
/// aside with an error after [`MAX_REFUSALS`], so that one bad entry
/// neither keeps the store down nor blocks the others.
pub(super) async fn write_journal(store: &Store) -> Result<(), StoreError> {
    let pending = store.journal.take();
    let mut refused = Vec::new();
    let mut rest = pending.into_iter();
    while let Some(mut settlement) = rest.next() {
        match settle_in(store, &settlement, true).await {
            Ok(()) => {}
            Err(StoreError::Refused(why)) => {
                settlement.refusals += 1;
                if settlement.refusals >= MAX_REFUSALS {
                    tracing::error!(
                        usd = settlement.cost_nusd as f64 / NANO,
                        "the state store refuses a settlement ({why}); it is set aside, its spend not counted"
                    );
                } else {
                    refused.push(settlement);
                }
            }
            Err(err) => {
                refused.push(settlement);
                refused.extend(rest);
                store.journal.restore(refused);
                return Err(err);
            }
        }
    }
    store.journal.restore(refused);
    Ok(())
}

/// Times the store may refuse a journalled settlement before it is set aside.
const MAX_REFUSALS: u32 = 5;

async fn refresh(budgets: Weak<SharedBudgets>) {
    let mut ticks = tokio::time::interval(SNAPSHOT_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(budgets) = budgets.upgrade() else { return };
        if !budgets.store.is_up() {
            continue;
        }
        let day = today();
        if let Ok(snapshot) = budgets.read_snapshot(&day).await {
            *budgets.snapshot.lock().expect("snapshot lock") = snapshot;
        }
    }
}

async fn renew(budgets: Weak<SharedBudgets>) {
    let every = match budgets.upgrade() {
        Some(b) => (b.hold_ttl / 3).max(Duration::from_millis(500)),
        None => return,
    };
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(budgets) = budgets.upgrade() else { return };
        let started = Instant::now();
        if let Err(err) = budgets.renew_open().await {
            tracing::debug!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "holds not renewed: {err}"
            );
        }
    }
}
