//! `switchyard budgets import`: the spend a single daemon kept in its
//! `budgets.state_file`, added to the shared store's books when its budgets
//! move there (`state.backend: redis`), so the month's spend so far is not
//! forgotten by the replicas that take over.

use std::path::PathBuf;
use std::process::ExitCode;

use switchyard::policy::{Policy, StateBackend};
use switchyard::routing::budget::{Ledger, Recorded};
use switchyard::state::budgets::{self, Imported, scope, today};
use switchyard::state::{Store, StoreError};

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The policy the replicas run: its `state` section names the store.
    #[arg(long)]
    policy: PathBuf,
    /// The `budgets.state_file` the single daemon kept. That daemon must be
    /// stopped (it would go on spending into the file); importing the file
    /// again adds only what it gained since.
    state_file: PathBuf,
}

pub fn import(args: &ImportArgs) -> ExitCode {
    super::exit_code("budgets import", import_file(args))
}

fn import_file(args: &ImportArgs) -> Result<(), String> {
    let policy = Policy::load(&args.policy).map_err(|err| err.in_file(&args.policy).to_string())?;
    if policy.state.backend() != StateBackend::Redis {
        return Err(format!(
            "{} keeps its budgets in the process (state.backend is not redis): there is no shared store to import into",
            args.policy.display()
        ));
    }
    let url = policy.state.url().map_err(|problem| problem.to_string())?;
    if !args.state_file.is_file() {
        return Err(format!("{} is not a file", args.state_file.display()));
    }
    // Held for the import: no daemon keeps the file meanwhile.
    let ledger = Ledger::open_unkept(&args.state_file)?;
    let day = today();
    let scopes = to_import(&ledger.recorded(), &day);
    if scopes.is_empty() {
        println!(
            "{} records no spend of this month ({}): nothing to import",
            args.state_file.display(),
            &day[..7]
        );
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start the runtime: {err}"))?;
    let added = runtime.block_on(async {
        let store = Store::connect(&policy.state, &url).map_err(|err| policy.state.problem(err).to_string())?;
        store.first_probe().await;
        if !store.is_up() {
            let why = store.health().reason.unwrap_or_default();
            return Err(format!("cannot reach the state store: {why}"));
        }
        budgets::import(&store, &day, &scopes).await.map_err(|err| match err {
            StoreError::Refused(why) => format!("the state store refused the import: {why}"),
            other => format!(
                "no answer from the state store ({other}): the import may have been made; run it again, it adds only what is missing"
            ),
        })
    })?;
    if added.iter().all(|s| s.day_usd == 0.0 && s.month_usd == 0.0) {
        println!(
            "{}: its spend is already in the shared budgets (imported before): nothing added",
            args.state_file.display()
        );
        return Ok(());
    }
    println!("added to the shared budgets (USD):");
    println!("{:<32} {:>14} {:>14}", "scope", &day, &day[..7]);
    for s in &added {
        println!("{:<32} {:>14.6} {:>14.6}", s.scope, s.day_usd, s.month_usd);
    }
    Ok(())
}

/// What of the file's spend counts on `day`: its month's, when it is
/// `day`'s month, and its day's, when it is `day`.
fn to_import(recorded: &Recorded, day: &str) -> Vec<Imported> {
    if recorded.month != day[..7] {
        return Vec::new();
    }
    let same_day = recorded.day == day;
    std::iter::once((None, recorded.global))
        .chain(recorded.keys.iter().map(|(key, spend)| (Some(key.as_str()), *spend)))
        .filter(|(_, spend)| spend.monthly_usd > 0.0)
        .map(|(key, spend)| Imported {
            scope: scope(key),
            day_usd: if same_day { spend.daily_usd } else { 0.0 },
            month_usd: spend.monthly_usd,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard::routing::budget::Spend;

    fn recorded(day: &str) -> Recorded {
        Recorded {
            day: day.to_string(),
            month: day[..7].to_string(),
            global: Spend {
                daily_usd: 1.5,
                monthly_usd: 4.0,
            },
            keys: vec![
                (
                    "team-a".to_string(),
                    Spend {
                        daily_usd: 1.5,
                        monthly_usd: 2.0,
                    },
                ),
                (
                    "idle".to_string(),
                    Spend {
                        daily_usd: 0.0,
                        monthly_usd: 0.0,
                    },
                ),
            ],
        }
    }

    fn amounts(scopes: &[Imported]) -> Vec<(&str, f64, f64)> {
        scopes
            .iter()
            .map(|s| (s.scope.as_str(), s.day_usd, s.month_usd))
            .collect()
    }

    #[test]
    fn only_this_months_spend_is_imported_and_the_days_only_on_its_day() {
        let file = recorded("2026-12-06");
        assert_eq!(
            amounts(&to_import(&file, "2026-12-06")),
            [("global", 1.5, 4.0), ("key:team-a", 1.5, 2.0)]
        );
        assert_eq!(
            amounts(&to_import(&file, "2026-12-07")),
            [("global", 0.0, 4.0), ("key:team-a", 0.0, 2.0)],
            "a later day of the month: the month's spend only"
        );
        assert!(to_import(&file, "2027-01-01").is_empty(), "a later month: nothing");
    }
}
