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
//! Days and months are UTC calendar periods.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::policy::{BudgetsConfig, Limits};

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
            pacing_from: config.pacing_from.value,
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
    state: Mutex<SpendState>,
    dirty: AtomicBool,
    /// Held for a whole flush. A flush that finds another one writing waits for
    /// it, so it never returns (and lets the process exit) before the file holds
    /// the spend it saw; and two writers never share the temporary file.
    writing: Mutex<()>,
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

impl Ledger {
    /// Opens the spend file, or starts empty when there is none. A file that
    /// cannot be parsed is an error: silently resetting spend would lift the budget.
    pub fn open(path: &Path) -> Result<Ledger, String> {
        let state = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|err| format!("budget state file {} is not valid: {err}", path.display()))?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => SpendState::default(),
            Err(err) => return Err(format!("cannot read budget state file {}: {err}", path.display())),
        };
        Ok(Ledger {
            path: path.to_path_buf(),
            state: Mutex::new(state),
            dirty: AtomicBool::new(false),
            writing: Mutex::new(()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds the cost of a finished remote call.
    pub fn record(&self, key: Option<&str>, cost_usd: f64) {
        self.record_on(&today(), key, cost_usd);
    }

    fn record_on(&self, day: &str, key: Option<&str>, cost_usd: f64) {
        if !(cost_usd.is_finite() && cost_usd > 0.0) {
            return;
        }
        let mut state = self.state.lock().expect("ledger lock");
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

    fn spent_on(&self, day: &str, key: Option<&str>) -> (Spend, Spend) {
        let mut state = self.state.lock().expect("ledger lock");
        state.roll_to(day);
        let by_key = key.and_then(|k| state.keys.get(k).copied()).unwrap_or_default();
        (state.global, by_key)
    }

    /// The pacing level for a caller under these limits.
    pub fn pacing(&self, config: &BudgetLimits, key: Option<&str>) -> Pacing {
        self.pacing_on(&today(), config, key)
    }

    fn pacing_on(&self, day: &str, config: &BudgetLimits, key: Option<&str>) -> Pacing {
        let (global, by_key) = self.spent_on(day, key);
        let mut fraction = fullest(global, config.global);
        if key.is_some() {
            fraction = fraction.max(fullest(by_key, config.per_key));
        }
        let from = config.pacing_from;
        Pacing {
            level: ((fraction - from) / (1.0 - from)).clamp(0.0, 1.0),
        }
    }

    /// The global budgets' state.
    pub fn status(&self, config: &BudgetLimits) -> Vec<BudgetStatus> {
        let (global, _) = self.spent_on(&today(), None);
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

    /// Writes the spend file if anything changed since the last write: to a
    /// temporary file first, then renamed over, so a crash never leaves half a file.
    pub fn flush(&self) -> std::io::Result<()> {
        let _writing = self.writing.lock().expect("ledger write lock");
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let json = {
            let state = self.state.lock().expect("ledger lock");
            serde_json::to_vec_pretty(&*state).expect("spend state serializes")
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

/// Today's UTC date as `YYYY-MM-DD`.
fn today() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The proleptic Gregorian date of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
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
    fn dates_are_utc_calendar_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_781), (2026, 11, 24));
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
    fn spend_survives_a_restart_and_a_corrupt_file_is_refused() {
        let path = temp_path("restart");
        let _ = std::fs::remove_file(&path);
        let ledger = Ledger::open(&path).unwrap();
        ledger.record(Some("k"), 1.25);
        ledger.flush().unwrap();
        let reopened = Ledger::open(&path).unwrap();
        assert_eq!(
            *reopened.state.lock().unwrap(),
            *ledger.state.lock().unwrap(),
            "spend read back as written"
        );
        std::fs::write(&path, b"{not json").unwrap();
        assert!(Ledger::open(&path).unwrap_err().contains("not valid"));
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
