//! The shared store's budget scripts, driven through the library against a
//! real `redis-server`: several replicas' books (each its own connection) on
//! one server. The daemons' end-to-end behaviour is in `shared_state.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::policy::{Limits, Policy};
use switchyard::routing::budget::{BudgetLimits, Refusal, SpendBook};
use switchyard::state::budgets::{Hold, SharedBudgets, nano, today};
use switchyard::state::{Store, StoreError};
use switchyard_e2e::daemon::scratch_dir;
use switchyard_e2e::redis::RedisServer;

fn policy(url: &str, prefix: &str, hold_ttl_s: u64) -> Policy {
    Policy::parse(&format!(
        "backends:
  remote:
    - name: cloud
      base_url: http://127.0.0.1:9/v1
      model: cloud-large
      price: {{ input_per_mtok_usd: 2.5, output_per_mtok_usd: 10.0 }}
routing:
  remote_backends: [cloud]
state:
  backend: redis
  url: {url}
  key_prefix: {prefix}
  hold_ttl_s: {hold_ttl_s}
  failsafe: {{ remote_allowance_usd: 0.05 }}
"
    ))
    .unwrap_or_else(|err| panic!("{err:?}"))
}

/// One replica's books on the server, once its store answers.
async fn replica(policy: &Policy) -> (Arc<Store>, Arc<SharedBudgets>) {
    let store = Store::connect(&policy.state, &policy.state.url().unwrap()).unwrap();
    let budgets = SharedBudgets::new(store.clone(), policy.state.hold_ttl(), 0.05);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.is_up() {
        assert!(Instant::now() < deadline, "the store never came up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (store, budgets)
}

fn limits(daily_usd: f64) -> BudgetLimits {
    BudgetLimits {
        pacing_from: 0.5,
        global: Limits {
            daily_usd: Some(daily_usd),
            monthly_usd: None,
        },
        per_key: Limits::default(),
    }
}

/// A scope's spend of today and what calls in flight hold, in nano-USD.
fn books(redis: &RedisServer, prefix: &str, scope: &str) -> (i64, i64) {
    let read = |key: String| {
        let text = redis.command(&["HGET", &key, scope]);
        text.trim().parse::<i64>().unwrap_or(0)
    };
    (
        read(format!("{prefix}:{{{prefix}}}:spent:d:{}", today())),
        read(format!("{prefix}:{{{prefix}}}:held")),
    )
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_admitted_together_on_three_replicas_never_exceed_a_budget() {
    let redis = RedisServer::start(&scratch_dir("budgets-race"));
    let policy = policy(&redis.url(), "race", 60);
    let mut books_of = Vec::new();
    for _ in 0..3 {
        books_of.push(SpendBook::Shared(replica(&policy).await.1));
    }
    // $1.00 a day; each call may cost $0.03: 33 fit, and 100 ask at once.
    let limits = limits(1.0);
    let calls = (0..100).map(|i| {
        let book = books_of[i % 3].clone();
        tokio::spawn(async move { book.reserve(&limits, None, 0.03).await })
    });
    let mut admitted = Vec::new();
    let mut refused = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(reservation) => admitted.push(reservation),
            Err(Refusal::Exhausted) => refused += 1,
            Err(other) => panic!("unexpected refusal: {other:?}"),
        }
    }
    assert_eq!((admitted.len(), refused), (33, 67));
    assert_eq!(books(&redis, "race", "global"), (0, nano(0.99)));
    // Each settles at its worst case: the day's spend is exactly what was held.
    for reservation in admitted {
        reservation.settle(0.03);
    }
    until("every settlement is written", || {
        books(&redis, "race", "global") == (nano(0.99), 0)
    })
    .await;
    // A budget with less left than a call's worst case refuses it, and a
    // spent one refuses even a call held at zero.
    assert!(matches!(
        books_of[0].reserve(&limits, None, 0.02).await,
        Err(Refusal::Exhausted)
    ));
    books_of[1].reserve(&limits, None, 0.01).await.unwrap().settle(0.01);
    until("the last cent is spent", || {
        books(&redis, "race", "global").0 == nano(1.0)
    })
    .await;
    assert!(matches!(
        books_of[2].reserve(&limits, None, 0.0).await,
        Err(Refusal::Exhausted)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replicas_hold_expires_charged_its_worst_case_and_a_late_settlement_corrects_it() {
    let redis = RedisServer::start(&scratch_dir("budgets-expiry"));
    let policy = policy(&redis.url(), "expiry", 2);
    let scopes = vec![switchyard::state::budgets::ScopeLimits {
        scope: "global".to_string(),
        daily_usd: Some(10.0),
        monthly_usd: None,
    }];
    let (_store, dead) = replica(&policy).await;
    let hold = dead.hold(&today(), &scopes, 0.40).await.unwrap();
    let Hold::Stored {
        id,
        scopes: held_scopes,
    } = hold
    else {
        panic!("held in the store")
    };
    assert_eq!(books(&redis, "expiry", "global"), (0, nano(0.40)));
    // The replica dies: nothing renews its hold.
    drop(dead);
    drop(_store);
    let (_store, alive) = replica(&policy).await;
    until("the hold expires, charged its worst case", || {
        books(&redis, "expiry", "global") == (nano(0.40), 0)
    })
    .await;
    // Its settlement arrives late (the dead replica's journal, replayed):
    // the charge becomes the real cost, once however often it is sent.
    for _ in 0..3 {
        alive.settle(
            &today(),
            Hold::Stored {
                id: id.clone(),
                scopes: held_scopes.clone(),
            },
            0.40,
            0.15,
        );
    }
    until("the late settlement corrects the charge", || {
        books(&redis, "expiry", "global") == (nano(0.15), 0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(books(&redis, "expiry", "global"), (nano(0.15), 0), "counted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_store_down_calls_are_admitted_from_the_allowance_and_written_when_it_is_back() {
    let mut redis = RedisServer::start(&scratch_dir("budgets-failsafe"));
    let policy = policy(&redis.url(), "failsafe", 60);
    let (store, budgets) = replica(&policy).await;
    let book = SpendBook::Shared(budgets);
    let limits = limits(10.0);
    redis.stop_process();
    // The first call finds the store silent (within the timeout) and goes to
    // the allowance; the store is then down, and nothing waits on it.
    let started = Instant::now();
    let first = book.reserve(&limits, None, 0.03).await.expect("within the allowance");
    assert!(!store.is_up());
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    match book.reserve(&limits, None, 0.03).await {
        Err(Refusal::StoreDown { allowance_usd, .. }) => assert_eq!(allowance_usd, 0.05),
        other => panic!("the allowance ($0.05) has room for one $0.03 call: {other:?}"),
    }
    first.settle(0.01);
    // Settled at $0.01, the allowance has $0.04 left.
    let second = book.reserve(&limits, None, 0.03).await.expect("room again");
    second.settle(0.02);
    until("both settlements are journalled", || store.unreconciled() == 2).await;
    assert!(matches!(store.health(), h if !h.up && h.reason.is_some()));
    redis.cont_process();
    until("the store is back", || store.is_up()).await;
    assert_eq!(store.unreconciled(), 0);
    assert_eq!(books(&redis, "failsafe", "global"), (nano(0.03), 0));
    assert!(matches!(
        StoreError::Down.to_string().as_str(),
        "the state store is down"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correction_from_another_day_leaves_the_worst_case_where_it_was_charged() {
    let redis = RedisServer::start(&scratch_dir("budgets-days"));
    let policy = policy(&redis.url(), "days", 2);
    let scopes = vec![switchyard::state::budgets::ScopeLimits {
        scope: "global".to_string(),
        daily_usd: Some(10.0),
        monthly_usd: None,
    }];
    let (store, dead) = replica(&policy).await;
    let Hold::Stored { id, scopes: held } = dead.hold(&today(), &scopes, 0.40).await.unwrap() else {
        panic!("held in the store")
    };
    drop((dead, store));
    let (_store, alive) = replica(&policy).await;
    until("the hold expires, charged today", || {
        books(&redis, "days", "global") == (nano(0.40), 0)
    })
    .await;
    // Its settlement, replayed from a journal, says another day: today's
    // charge is not moved there, nor corrected (over-counting is the safe side).
    let expired = |id: &str| redis.command(&["HEXISTS", "days:{days}:expired", id]).trim() == "1";
    assert!(expired(&id), "the expired hold is kept for a correction");
    alive.settle(
        "2020-01-01",
        Hold::Stored {
            id: id.clone(),
            scopes: held,
        },
        0.40,
        0.15,
    );
    until("the settlement is written", || !expired(&id)).await;
    assert_eq!(books(&redis, "days", "global"), (nano(0.40), 0));
    let old_day = redis.command(&["HGET", "days:{days}:spent:d:2020-01-01", "global"]);
    assert!(old_day.trim().is_empty() || old_day.trim() == "0", "{old_day}");
}
