//! The routing's one entry point, `Routing::decide`, called as the HTTP
//! handler calls it, on a policy with the real local model and a remote
//! backend (no call is made: deciding sends nothing anywhere).

use std::time::Duration;

use serde_json::{Value, json};
use switchyard::auth::Caller;
use switchyard::live::Live;
use switchyard::openai::error::ApiError;
use switchyard::openai::request::ChatRequest;
use switchyard::outcome::{Reason, RouteError, Tier};
use switchyard::policy::Policy;
use switchyard::routing::sessions::Sessions;
use switchyard::routing::{Decision, Hints};
use switchyard_e2e::default_model;

/// A policy whose thresholds send everything scored to `tier_for_all`
/// (local: every score is under 1.0; remote: every score is over 0.0), with
/// the email detector on and a tiny daily budget kept in `state`.
fn policy(tier_for_all: Tier, state: &std::path::Path) -> Policy {
    let thresholds = match tier_for_all {
        Tier::Local => "{ local_below: 1.0, remote_above: 1.0, ambiguous: local-reasoning }",
        _ => "{ local_below: 0.0, remote_above: 0.0, ambiguous: remote }",
    };
    let text = format!(
        "backends:
  local:
    - name: smollm2
      model_path: {model}
      threads: 1
      context_length: 2048
  remote:
    - name: cloud
      base_url: http://127.0.0.1:9/v1
      model: cloud-large
      price: {{ input_per_mtok_usd: 2.5, output_per_mtok_usd: 10.0 }}
      max_output_tokens: 4096
routing:
  local_backend: smollm2
  remote_backends: [cloud]
  thresholds: {thresholds}
privacy:
  detectors: [email]
budgets:
  state_file: {state}
  global: {{ daily_usd: 1.0 }}
",
        model = default_model().display(),
        state = state.display(),
    );
    Policy::parse(&text).unwrap_or_else(|err| panic!("{err:?}\n{text}"))
}

struct Setup {
    live: Live,
    sessions: Sessions,
    dir: std::path::PathBuf,
}

impl Setup {
    fn new(tier_for_all: Tier) -> Setup {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "switchyard-decision-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let policy = policy(tier_for_all, &dir.join("spend.json"));
        Setup {
            live: Live::build(&policy, None, None).unwrap_or_else(|err| panic!("{err:?}")),
            sessions: Sessions::new(Duration::from_secs(60), 100),
            dir,
        }
    }

    fn decide(&self, body: Value, hints: &Hints) -> Result<Decision, ApiError> {
        let request = ChatRequest::parse(body.to_string().as_bytes()).unwrap();
        let live = &self.live;
        live.routing.decide_remembering(
            &request,
            &Caller::Anonymous,
            hints,
            &live.backends,
            live.ledger.as_ref(),
            &self.sessions,
        )
    }

    fn spend_the_budget(&self) {
        self.live
            .ledger
            .as_ref()
            .expect("the policy sets budgets")
            .record(None, 5.0);
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ask(model: &str, text: &str) -> Value {
    json!({ "model": model, "messages": [{ "role": "user", "content": text }] })
}

fn route(decision: &Decision) -> (Tier, Reason, &str) {
    (decision.tier, decision.reason, decision.backend.name())
}

fn refusal(result: Result<Decision, ApiError>) -> RouteError {
    match result {
        Err(ApiError::Route(refused)) => refused,
        Err(other) => panic!("refused otherwise: {other:?}"),
        Ok(decision) => panic!("not refused: {:?}", route(&decision)),
    }
}

#[test]
fn a_routed_request_is_scored_and_sent_where_its_score_falls() {
    let none = Hints::default();
    let local = Setup::new(Tier::Local);
    let decision = local
        .decide(ask("auto", "What is the capital of France?"), &none)
        .unwrap();
    assert_eq!(route(&decision), (Tier::Local, Reason::ScoreLow, "smollm2"));
    let score = decision.score.expect("a routed request is scored");
    assert!((0.0..=1.0).contains(&score), "{score}");
    // Where it may go if the local model fails: the remote, since it may leave.
    assert!(decision.fallbacks.remotes.iter().any(|b| b.name() == "cloud"));
    assert!(decision.budget.is_some(), "the policy sets budgets");

    let remote = Setup::new(Tier::Remote);
    let decision = remote
        .decide(ask("auto", "Prove the Riemann hypothesis."), &none)
        .unwrap();
    assert_eq!(route(&decision), (Tier::Remote, Reason::ScoreHigh, "cloud"));
    // A client's tier header overrides the score.
    let local_please = Hints {
        tier: Some(Tier::Local),
        ..Hints::default()
    };
    let decision = remote
        .decide(ask("auto", "Prove the Riemann hypothesis."), &local_please)
        .unwrap();
    assert_eq!(route(&decision), (Tier::Local, Reason::TierOverride, "smollm2"));
}

#[test]
fn a_pinned_request_goes_to_the_backend_it_names_unscored() {
    let setup = Setup::new(Tier::Local);
    let none = Hints::default();
    for (model, tier, backend) in [
        ("smollm2", Tier::Local, "smollm2"),
        ("cloud", Tier::Remote, "cloud"),
        // A backend's upstream model name pins it too.
        ("cloud-large", Tier::Remote, "cloud"),
    ] {
        let decision = setup.decide(ask(model, "Hello"), &none).unwrap();
        assert_eq!(route(&decision), (tier, Reason::ModelPinned, backend), "{model}");
        assert_eq!(decision.score, None, "{model}");
        assert!(decision.fallbacks.remotes.is_empty() && decision.fallbacks.local.is_none());
    }
    match setup.decide(ask("gpt-17-ultra", "Hello"), &none) {
        Err(ApiError::ModelNotFound(model)) => assert_eq!(model, "gpt-17-ultra"),
        other => panic!("{:?}", other.map(|d| route(&d).0)),
    }
    // A cost limit under the pinned remote call's worst case refuses it.
    let cheap = Hints {
        max_cost_usd: Some(0.000_001),
        ..Hints::default()
    };
    assert!(matches!(
        refusal(setup.decide(ask("cloud", "Hello"), &cheap)),
        RouteError::MaxCostExceeded {
            why: Reason::ModelPinned,
            ..
        }
    ));
}

#[test]
fn a_privacy_rule_keeps_a_request_on_the_machine_or_refuses_it() {
    let setup = Setup::new(Tier::Remote);
    let none = Hints::default();
    let private = "Write to jane.doe@example.com about the meeting.";
    // Scored hard, kept on the machine: the local model, reasoning.
    let decision = setup.decide(ask("auto", private), &none).unwrap();
    assert_eq!(route(&decision), (Tier::LocalReasoning, Reason::PrivacyRule, "smollm2"));
    assert!(
        decision.fallbacks.remotes.is_empty(),
        "it may not leave by a fallback either"
    );
    match refusal(setup.decide(ask("cloud", private), &none)) {
        RouteError::PrivacyUnservable { rule, why } => assert_eq!((rule.as_str(), why), ("email", Reason::ModelPinned)),
        other => panic!("{other:?}"),
    }
    // The local model pinned: nothing leaves, nothing to refuse.
    let decision = setup.decide(ask("smollm2", private), &none).unwrap();
    assert_eq!(route(&decision), (Tier::Local, Reason::ModelPinned, "smollm2"));
}

#[test]
fn a_spent_budget_keeps_requests_local_and_refuses_pinned_remote_calls() {
    let setup = Setup::new(Tier::Remote);
    let none = Hints::default();
    setup.spend_the_budget();
    let decision = setup
        .decide(ask("auto", "Prove the Riemann hypothesis."), &none)
        .unwrap();
    assert_eq!(
        route(&decision),
        (Tier::LocalReasoning, Reason::BudgetExhausted, "smollm2")
    );
    assert!(matches!(
        refusal(setup.decide(ask("cloud", "Hello"), &none)),
        RouteError::BudgetExhausted {
            why: Reason::ModelPinned
        }
    ));
    // What the local model cannot serve has nowhere to go: a 402.
    let mut tools = ask("auto", "What's the weather?");
    tools["tools"] = json!([{ "type": "function", "function": { "name": "weather", "parameters": {} } }]);
    assert!(matches!(
        refusal(setup.decide(tools, &none)),
        RouteError::BudgetExhausted {
            why: Reason::IneligibleTools
        }
    ));
}

#[test]
fn what_the_local_model_cannot_serve_goes_remote_whatever_its_score() {
    let setup = Setup::new(Tier::Local);
    let none = Hints::default();
    let mut tools = ask("auto", "What's the weather in Paris?");
    tools["tools"] = json!([{ "type": "function", "function": { "name": "weather", "parameters": {} } }]);
    let decision = setup.decide(tools, &none).unwrap();
    assert_eq!(route(&decision), (Tier::Remote, Reason::IneligibleTools, "cloud"));
    assert!(
        decision.fallbacks.local.is_none(),
        "the local model is no fallback for it"
    );
    // JSON the local model can be held to stays local; a schema it cannot
    // (a keyword its grammar compiler lacks) goes remote.
    let mut json_mode = ask("auto", "List three colours.");
    json_mode["response_format"] = json!({ "type": "json_object" });
    assert_eq!(route(&setup.decide(json_mode, &none).unwrap()).0, Tier::Local);
    let mut unique = ask("auto", "List three colours.");
    unique["response_format"] = json!({ "type": "json_schema",
        "json_schema": { "name": "colours", "schema": { "type": "array", "uniqueItems": true } } });
    assert_eq!(
        route(&setup.decide(unique, &none).unwrap()),
        (Tier::Remote, Reason::IneligibleJson, "cloud")
    );
    let long = ask("auto", &"word ".repeat(20_000));
    assert_eq!(
        route(&setup.decide(long, &none).unwrap()),
        (Tier::Remote, Reason::IneligibleContext, "cloud")
    );
    // Private and unservable locally: refused, naming both.
    let mut private_tools = ask("auto", "Mail jane.doe@example.com the forecast.");
    private_tools["tools"] = json!([{ "type": "function", "function": { "name": "mail", "parameters": {} } }]);
    assert!(matches!(
        refusal(setup.decide(private_tools, &none)),
        RouteError::PrivacyUnservable {
            why: Reason::IneligibleTools,
            ..
        }
    ));
}

#[tokio::test]
async fn a_call_admitted_ahead_is_the_ladders_to_take_or_is_let_go_charging_nothing() {
    let setup = Setup::new(Tier::Remote);
    let none = Hints::default();
    let ledger = setup.live.ledger.clone().expect("the policy sets budgets");
    let mut pinned = ask("cloud", "Hello");
    pinned["max_tokens"] = json!(2000);

    // Taken by the first admission of its backend: held once, not twice.
    let decision = setup.decide(pinned.clone(), &none).unwrap();
    let claim = decision.budget.as_ref().expect("the policy sets budgets");
    claim.admit_ahead(&decision.backend).await;
    let held = ledger.reserved_usd();
    assert!(held > 0.0, "a priced call is held ahead");
    let reservation = claim
        .admit(&decision.backend)
        .await
        .expect("admitted ahead")
        .expect("priced");
    assert_eq!(ledger.reserved_usd(), held, "the ladder took the hold made ahead");
    // Taken once: a second call (a retry) is held on its own.
    let again = claim.admit(&decision.backend).await.unwrap().unwrap();
    assert!((ledger.reserved_usd() - 2.0 * held).abs() < 1e-12);
    again.release();
    reservation.settle(0.25);
    assert_eq!(ledger.reserved_usd(), 0.0);
    assert_eq!(ledger.status(setup.live.routing.budgets().unwrap())[0].spent_usd, 0.25);

    // Never taken (the request was rate limited, or went away): let go when
    // the decision goes, charging nothing.
    let decision = setup.decide(pinned.clone(), &none).unwrap();
    decision.budget.as_ref().unwrap().admit_ahead(&decision.backend).await;
    assert_eq!(ledger.reserved_usd(), held);
    drop(decision);
    assert_eq!(ledger.reserved_usd(), 0.0);
    assert_eq!(ledger.status(setup.live.routing.budgets().unwrap())[0].spent_usd, 0.25);

    // Without max_tokens, the hold is what the backend's model may write at
    // most (its max_output_tokens, 4096 here): 4096 tokens at 10 USD a
    // million, and the prompt's few.
    let decision = setup.decide(ask("cloud", "Hello"), &none).unwrap();
    let claim = decision.budget.as_ref().unwrap();
    let unbounded = claim.admit(&decision.backend).await.unwrap().unwrap();
    let output_usd = 4096.0 * 10.0 / 1e6;
    assert!(
        unbounded.usd() > output_usd && unbounded.usd() < output_usd + 0.001,
        "{}",
        unbounded.usd()
    );
    unbounded.release();

    // A refusal ahead is the ladder's too: refused while another call held
    // 0.74 of the 0.75 left, it stays refused after that call let go (a
    // fresh admission would now pass).
    let decision = setup.decide(pinned, &none).unwrap();
    assert_eq!(route(&decision), (Tier::Remote, Reason::ModelPinned, "cloud"));
    let limits = setup.live.routing.budgets().unwrap();
    let other = ledger.reserve(limits, None, 0.74).await.expect("fits");
    let claim = decision.budget.as_ref().unwrap();
    claim.admit_ahead(&decision.backend).await;
    other.release();
    assert_eq!(ledger.reserved_usd(), 0.0);
    assert!(matches!(
        claim.admit(&decision.backend).await,
        Err(ApiError::Route(RouteError::BudgetExhausted {
            why: Reason::ModelPinned
        }))
    ));
    let fresh = claim
        .admit(&decision.backend)
        .await
        .expect("the refusal was taken once");
    fresh.expect("priced").release();
}
