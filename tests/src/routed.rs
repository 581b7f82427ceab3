//! One chat request to the daemon and what its headers say about the route.

use serde_json::Value;

use crate::{Daemon, http_client};

/// A chat answer with Switchyard's routing headers.
pub struct Routed {
    pub status: u16,
    pub route: String,
    pub reason: String,
    pub backend: String,
    pub score: Option<f64>,
    pub cost: Option<f64>,
    /// The JSON body; `Null` when the body is not JSON (a stream: see `text`).
    pub body: Value,
    /// The body as sent: the SSE events of a streamed answer.
    pub text: String,
    pub degraded: Option<String>,
    pub retry_after: Option<String>,
    pub escalated_from: Option<String>,
}

pub async fn send(daemon: &Daemon, body: &Value, headers: &[(&str, &str)]) -> Routed {
    let mut request = http_client().post(daemon.url("/v1/chat/completions")).json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_string());
    let routed = Routed {
        status: response.status().as_u16(),
        route: header("x-switchyard-route").unwrap_or_default(),
        reason: header("x-switchyard-reason").unwrap_or_default(),
        backend: header("x-switchyard-backend").unwrap_or_default(),
        score: header("x-switchyard-score").map(|s| s.parse().unwrap()),
        cost: header("x-switchyard-cost-usd").map(|s| s.parse().unwrap()),
        degraded: header("x-switchyard-degraded"),
        retry_after: header("retry-after"),
        escalated_from: header("x-switchyard-escalated-from"),
        body: Value::Null,
        text: String::new(),
    };
    let text = response.text().await.unwrap();
    Routed {
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
        ..routed
    }
}
