//! Shadow mode: a profile in `mode: shadow` still sends every request to the
//! remote model and its client gets that answer, byte for byte; the routing's
//! own decision is recorded beside it (what it would have cost), and a
//! sampled share is also answered by the local model in the background and
//! compared with the remote answer.
//!
//! The local work never delays a client: a sampled request is compared only
//! while fewer than `shadow.max_concurrent` comparisons run and the local
//! model serves no one; a comparison running when a client's request arrives
//! at the local model is dropped there (`preempted`). Each comparison is
//! appended to `shadow.file` (JSON Lines, one write a line, rotated at
//! `max_file_mb`, `keep_files` kept), which `audit` and `calibrate` read: a
//! kill mid-write loses at most the line being written.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};

use crate::audit::{agreement, answer_text};
use crate::backends::Backend;
use crate::backends::local::{GreedyEnd, LocalBackend};
use crate::metrics::metrics;
use crate::openai::completion::Written;
use crate::openai::request::ChatRequest;
use crate::outcome::Tier;
use crate::policy::{Price, ShadowConfig};
use crate::reply::Usage;
use crate::routing::Decision;

/// A shadowed request: what the routing would have done, and what its
/// comparison needs.
pub struct Shadowed {
    would: Tier,
    reason: &'static str,
    score: Option<f32>,
    /// The local model that would have answered (absent: nothing to compare).
    local: Option<Arc<Backend>>,
    request: Arc<ChatRequest>,
    request_id: Arc<str>,
    primary_backend: String,
    primary_price: Price,
    config: ShadowConfig,
    log: PathBuf,
    sampled: bool,
}

impl Shadowed {
    /// `would` is the routing's decision; the request is answered by
    /// `primary_backend` instead. `log` is the shadow file's path.
    pub fn new(
        would: &Decision,
        request: &ChatRequest,
        request_id: &Arc<str>,
        primary: &Decision,
        config: &ShadowConfig,
        log: PathBuf,
    ) -> Shadowed {
        let local = match would.tier {
            Tier::Local | Tier::LocalReasoning => Some(would.backend.clone()),
            Tier::Remote => would.fallbacks.local.clone(),
        };
        Shadowed {
            would: would.tier,
            reason: would.reason.as_str(),
            score: would.score,
            local,
            request: Arc::new(request.clone()),
            request_id: request_id.clone(),
            primary_backend: primary.backend.name().to_string(),
            primary_price: crate::routing::price_of(&primary.backend),
            sampled: sampled(request_id, config.sample),
            config: config.clone(),
            log,
        }
    }

    /// The answer as written for the client, unchanged; its text and usage
    /// go to the comparison when it ends.
    pub fn watch(self, written: Written) -> Written {
        match written {
            Written::Whole {
                body,
                usage,
                headers,
                status,
            } => {
                let text = (self.sampled && status.is_success())
                    .then(|| {
                        serde_json::from_slice::<Value>(&body)
                            .ok()
                            .as_ref()
                            .and_then(answer_text)
                    })
                    .flatten();
                self.primary_done(text, usage);
                Written::Whole {
                    body,
                    usage,
                    headers,
                    status,
                }
            }
            Written::Stream { events, headers, usage } => {
                let tapped = Tap {
                    inner: events,
                    seen: Vec::new(),
                    usage: usage.clone(),
                    shadowed: Some(self),
                };
                Written::Stream {
                    events: tapped.boxed(),
                    headers,
                    usage,
                }
            }
        }
    }

    /// The primary answer is complete: count what the routing would have
    /// saved, and compare locally when sampled and the local model is free.
    fn primary_done(self, text: Option<String>, usage: Option<Usage>) {
        let m = metrics();
        let primary_cost = usage.map_or(0.0, |u| self.primary_price.cost_of(&u));
        if self.would != Tier::Remote {
            m.shadow_would_save.inc_by(primary_cost);
        }
        let outcome = |name: &str| m.shadow.with_label_values(&[self.would.as_str(), name]).inc();
        let (Some(text), true) = (text, self.sampled) else {
            outcome("unsampled");
            return;
        };
        // An answer with no text (tool calls only) has nothing to compare.
        if text.trim().is_empty() {
            outcome("no-text");
            return;
        }
        let Some(local) = self.local.clone() else {
            outcome("no-local-model");
            return;
        };
        let busy = local
            .as_local()
            .and_then(|l| l.load_figures())
            .is_none_or(|f| f.queued > 0 || f.in_flight > 0);
        let running = in_flight();
        if busy
            || running
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < self.config.max_concurrent).then_some(n + 1)
                })
                .is_err()
        {
            outcome("busy");
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            drop(Slot);
            return;
        };
        runtime.spawn(async move {
            // Released however the comparison ends, a panic included.
            let _slot = Slot;
            let result = self.compare(&local, &text, usage, primary_cost).await;
            let name = match result {
                Ok(line) => {
                    metrics()
                        .shadow_agreement
                        .observe(line["agreement"].as_f64().unwrap_or(0.0));
                    if let Err(err) = append(&self.log, &self.config, &line) {
                        tracing::warn!(file = %self.log.display(), "cannot write the shadow file: {err}");
                    }
                    "compared"
                }
                Err(outcome) => outcome,
            };
            metrics().shadow.with_label_values(&[self.would.as_str(), name]).inc();
        });
    }

    /// The local answer to the request, compared with the primary's `text`.
    async fn compare(
        &self,
        local: &Backend,
        text: &str,
        usage: Option<Usage>,
        primary_cost: f64,
    ) -> Result<Value, &'static str> {
        let local = local.as_local().ok_or("failed")?;
        let started = Instant::now();
        // A client's request waits for the local model: give way.
        let give_way = |local: &LocalBackend| local.load_figures().is_some_and(|f| f.queued > 0);
        let thinking = self.would == Tier::LocalReasoning;
        let request_id = format!("{}-shadow", self.request_id);
        let (answer, tokens) = local
            .greedy_answer(
                self.request.messages(),
                self.config.max_tokens,
                thinking,
                &request_id,
                give_way,
            )
            .await
            .map_err(|end| match end {
                GreedyEnd::Failed(_) => "failed",
                GreedyEnd::GaveWay => "preempted",
            })?;
        let (agreement, method) = agreement(&answer, text);
        Ok(json!({
            "at_unix_s": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
            "request_id": &*self.request_id,
            "score": self.score,
            "would_route": self.would.as_str(),
            "would_reason": self.reason,
            "primary_backend": self.primary_backend,
            "primary_cost_usd": primary_cost,
            "prompt_tokens": usage.map(|u| u.prompt_tokens),
            "completion_tokens": usage.map(|u| u.completion_tokens),
            "agreement": agreement,
            "method": method,
            "local_backend": local.name(),
            "local_completion_tokens": tokens,
            "local_latency_ms": started.elapsed().as_secs_f64() * 1e3,
        }))
    }
}

/// Comparisons running now, across policy generations.
fn in_flight() -> &'static AtomicUsize {
    static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
    &IN_FLIGHT
}

/// One comparison's place in [`in_flight`], given back when dropped.
struct Slot;

impl Drop for Slot {
    fn drop(&mut self) {
        in_flight().fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether a request is in the sample: a hash of its id under `share`.
fn sampled(request_id: &str, share: f64) -> bool {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    request_id.hash(&mut hasher);
    (hasher.finish() as f64 / u64::MAX as f64) < share
}

/// A streamed primary answer on its way to the client: its bytes pass as
/// they are; a sampled one's are kept (up to a bound) to read its text when
/// it ends.
struct Tap {
    inner: BoxStream<'static, Bytes>,
    seen: Vec<u8>,
    usage: crate::reply::UsageCell,
    shadowed: Option<Shadowed>,
}

/// The most of a streamed answer kept for its comparison.
const TAP_MAX_BYTES: usize = 1 << 20;

impl Tap {
    fn end(&mut self, whole: bool) {
        if let Some(shadowed) = self.shadowed.take() {
            let usage = *self.usage.lock().expect("usage cell");
            let text = (whole && shadowed.sampled).then(|| sse_text(&self.seen));
            shadowed.primary_done(text, usage);
        }
    }
}

impl Stream for Tap {
    type Item = Bytes;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Bytes>> {
        let polled = self.inner.poll_next_unpin(cx);
        match &polled {
            std::task::Poll::Ready(Some(chunk)) => {
                let keep = self.shadowed.as_ref().is_some_and(|s| s.sampled);
                if keep && self.seen.len() + chunk.len() <= TAP_MAX_BYTES {
                    self.seen.extend_from_slice(chunk);
                }
            }
            std::task::Poll::Ready(None) => self.end(true),
            std::task::Poll::Pending => {}
        }
        polled
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.end(false);
    }
}

/// The text a stream carried, in any of the three APIs' forms: a chat
/// chunk's `delta.content`, a legacy completion chunk's `text`, a Responses
/// `response.output_text.delta` event's `delta`.
fn sse_text(bytes: &[u8]) -> String {
    let mut text = String::new();
    for line in String::from_utf8_lossy(bytes).lines() {
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let Ok(event) = serde_json::from_str::<Value>(data.trim()) else {
            continue;
        };
        let choice = &event["choices"][0];
        let piece = if event["type"] == "response.output_text.delta" {
            event["delta"].as_str()
        } else {
            choice["delta"]["content"].as_str().or_else(|| choice["text"].as_str())
        };
        text.push_str(piece.unwrap_or(""));
    }
    text
}

/// The open shadow file, by path (a reload may move it).
fn log_file() -> &'static Mutex<Option<(PathBuf, File)>> {
    static FILE: OnceLock<Mutex<Option<(PathBuf, File)>>> = OnceLock::new();
    FILE.get_or_init(Mutex::default)
}

/// Appends `line` in one write, rotating the file first when it is full.
fn append(path: &Path, config: &ShadowConfig, line: &Value) -> std::io::Result<()> {
    let mut text = line.to_string();
    text.push('\n');
    let mut open = log_file().lock().expect("shadow file lock");
    let size = std::fs::metadata(path).map(|m| m.len());
    if size.is_err() {
        // Moved or deleted under us (logrotate, a person): start a new one.
        *open = None;
    }
    let full = size.is_ok_and(|len| len + text.len() as u64 > config.max_file_mb << 20);
    if full {
        *open = None;
        for k in (1..config.keep_files).rev() {
            let _ = std::fs::rename(rotated(path, k), rotated(path, k + 1));
        }
        if config.keep_files == 0 {
            std::fs::remove_file(path)?;
        } else {
            std::fs::rename(path, rotated(path, 1))?;
        }
    }
    if open.as_ref().is_none_or(|(p, _)| p != path) {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        *open = Some((path.to_path_buf(), file));
    }
    let (_, file) = open.as_mut().expect("opened");
    file.write_all(text.as_bytes())
}

fn rotated(path: &Path, k: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{k}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_text_is_read_from_its_chunks() {
        let stream = b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\ndata: [DONE]\n\n";
        assert_eq!(sse_text(stream), "Hello");
        let responses = b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\nevent: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{}}\n\n";
        assert_eq!(sse_text(responses), "Hi");
        let legacy = b"data: {\"choices\":[{\"text\":\"Once\"}]}\n\ndata: {\"choices\":[{\"text\":\" upon\"}]}\n\ndata: [DONE]\n\n";
        assert_eq!(sse_text(legacy), "Once upon");
    }

    #[test]
    fn the_file_rotates_and_keeps_what_it_is_told() {
        let dir = std::env::temp_dir().join(format!("switchyard-shadow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("shadow.jsonl");
        let config = ShadowConfig {
            max_file_mb: 1,
            keep_files: 2,
            ..ShadowConfig::default()
        };
        let line = json!({ "pad": "x".repeat(300 << 10) });
        for _ in 0..10 {
            append(&path, &config, &line).unwrap();
        }
        // Deleted under the daemon: the next line starts a new file.
        std::fs::remove_file(rotated(&path, 2)).unwrap();
        std::fs::rename(&path, rotated(&path, 2)).unwrap();
        append(&path, &config, &json!({ "after": "a move" })).unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().contains("a move"));
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        assert!(size(&path) <= 1 << 20 && size(&rotated(&path, 1)) <= 1 << 20);
        assert!(size(&rotated(&path, 2)) > 0 && size(&rotated(&path, 3)) == 0);
        for file in [path.clone(), rotated(&path, 1), rotated(&path, 2)] {
            for text in std::fs::read_to_string(&file).unwrap().lines() {
                serde_json::from_str::<Value>(text).unwrap();
            }
        }
        *log_file().lock().unwrap() = None;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sampling_follows_the_share() {
        let picked = (0..10_000).filter(|i| sampled(&format!("req-{i}"), 0.25)).count();
        assert!((2_300..2_700).contains(&picked), "{picked}");
        assert!((0..100).all(|i| sampled(&format!("req-{i}"), 1.0)));
        assert!((0..100).all(|i| !sampled(&format!("req-{i}"), 0.0)));
    }
}
