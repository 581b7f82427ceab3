//! Where requests are answered. Each backend kind is one variant of [`Backend`]
//! (a closed set, dispatched by `match`): a remote OpenAI-compatible endpoint
//! ([`remote`], with its circuit [`breaker`]) or the in-process engine
//! ([`local`]). [`Backends`] is the catalogue: it knows which client-facing
//! model names map to which backend. A backend answers with a
//! [`ChatReply`] (typed events, or an upstream's bytes relayed) or a
//! [`BackendError`]; writing either for the client is `openai`'s business.

pub mod breaker;
pub mod local;
pub mod remote;

use std::collections::HashMap;
use std::sync::Arc;

use switchyard_engine::model::ModelInfo;

use crate::openai::request::ChatRequest;
use crate::outcome::BackendError;
use crate::policy::Policy;
use crate::reply::ChatReply;
use local::LocalBackend;
use remote::RemoteBackend;

// Built once at start-up and kept behind an Arc: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    Remote(RemoteBackend),
    Local(LocalBackend),
}

impl Backend {
    pub fn name(&self) -> &str {
        match self {
            Backend::Remote(remote) => remote.name(),
            Backend::Local(local) => local.name(),
        }
    }

    /// Whether the backend can take requests now, and if not, why.
    pub fn readiness(&self) -> Result<(), String> {
        match self {
            Backend::Remote(remote) => remote.readiness(),
            Backend::Local(local) => local.readiness(),
        }
    }

    /// Answers the request within `deadline`: remote calls are retried within
    /// it, a local generation still running at it is stopped.
    pub async fn chat(
        &self,
        request: &ChatRequest,
        request_id: &str,
        deadline: tokio::time::Instant,
    ) -> Result<ChatReply, BackendError> {
        match self {
            Backend::Remote(remote) => remote.chat(request, request_id, deadline).await,
            Backend::Local(local) => local.chat(request, request_id, deadline).await,
        }
    }

    /// The remote backend, for what only it does (passing other endpoints through).
    pub fn as_remote(&self) -> Option<&RemoteBackend> {
        match self {
            Backend::Remote(remote) => Some(remote),
            Backend::Local(_) => None,
        }
    }

    /// The local backend, for what only it does (the ladder's rungs).
    pub fn as_local(&self) -> Option<&LocalBackend> {
        match self {
            Backend::Local(local) => Some(local),
            Backend::Remote(_) => None,
        }
    }
}

pub struct Backends {
    all: Vec<Arc<Backend>>,
    by_model: HashMap<String, usize>,
}

/// One entry of `GET /v1/models`.
pub struct ModelEntry<'a> {
    pub id: &'a str,
    pub backend: &'a str,
    /// What the model is, for a local model that loaded.
    pub local: Option<&'a ModelInfo>,
}

impl Backends {
    /// Builds every backend of the policy; local models are loaded now, which
    /// takes a moment, except those `previous` already has with the same
    /// configuration, which are shared (a policy reload keeps loaded models).
    pub fn from_policy(policy: &Policy, previous: Option<&Backends>) -> Backends {
        let mut all: Vec<Arc<Backend>> = policy
            .backends
            .remote
            .iter()
            .map(|config| {
                let breaker = previous
                    .into_iter()
                    .flat_map(|p| &p.all)
                    .find_map(|b| match b.as_ref() {
                        Backend::Remote(remote) if remote.name() == config.name() => Some(remote.breaker_handle()),
                        _ => None,
                    });
                Arc::new(Backend::Remote(RemoteBackend::new(config, breaker)))
            })
            .collect();
        for config in &policy.backends.local {
            let identity = LocalBackend::identity_of(config, &policy.base_dir);
            let loaded = previous.into_iter().flat_map(|p| &p.all).find(|b| match b.as_ref() {
                Backend::Local(local) => local.identity() == identity,
                Backend::Remote(_) => false,
            });
            all.push(match loaded {
                Some(backend) => backend.clone(),
                None => Arc::new(Backend::Local(LocalBackend::load(config, &policy.base_dir))),
            });
        }
        let mut by_model = HashMap::new();
        // Later entries never override earlier ones: backend names first, then
        // upstream model names (first backend wins). Routing profiles (`auto`
        // and its aliases) are the routing's, not a backend's.
        for (i, backend) in all.iter().enumerate() {
            by_model.insert(backend.name().to_string(), i);
        }
        for (i, config) in policy.backends.remote.iter().enumerate() {
            by_model.entry(config.model().to_string()).or_insert(i);
        }
        Backends { all, by_model }
    }

    /// The backend that serves a client-facing model name.
    pub fn resolve(&self, model: &str) -> Option<&Arc<Backend>> {
        self.by_model.get(model).map(|&i| &self.all[i])
    }

    pub fn all(&self) -> &[Arc<Backend>] {
        &self.all
    }

    /// Every model name clients may ask for, sorted, with the backend behind it.
    pub fn models(&self) -> Vec<ModelEntry<'_>> {
        let mut models: Vec<ModelEntry<'_>> = self
            .by_model
            .iter()
            .map(|(id, &i)| ModelEntry {
                id,
                backend: self.all[i].name(),
                local: self.all[i].as_local().and_then(LocalBackend::info),
            })
            .collect();
        models.sort_by(|a, b| a.id.cmp(b.id));
        models
    }
}
