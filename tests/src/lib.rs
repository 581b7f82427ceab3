//! Support for Switchyard's end-to-end tests: a loopback cloud provider double
//! and a handle on the real daemon binary.

pub mod cloud_double;
pub mod daemon;
pub mod netns;
pub mod redis;
pub mod routed;

pub use cloud_double::CloudDouble;
pub use daemon::Daemon;
pub use redis::RedisServer;

/// `policy` with its local backend's `reasoning` turned off (the backend must
/// set `reasoning_max_tokens: 16`, as the tests' policies do).
pub fn without_reasoning(policy: &str) -> String {
    let changed = policy.replace(
        "reasoning_max_tokens: 16\n",
        "reasoning_max_tokens: 16\n      reasoning: false\n",
    );
    assert_ne!(changed, policy, "no local backend with reasoning_max_tokens: 16");
    changed
}

/// A policy with one remote backend per behaviour of the cloud double, named
/// after the behaviour, each called once (no retries: these policies test how
/// one upstream answer is relayed). `extra` is appended verbatim (for `auth:`, say).
pub fn policy_for(double_url: &str, extra: &str) -> String {
    let behaviours = [
        "echo",
        "rate-limited",
        "server-error",
        "html-error",
        "slow-first-byte",
        "cut-stream",
        "slow-stream",
    ];
    let mut policy =
        String::from("server:\n  max_body_bytes: 4194304\n  shutdown_drain_ms: 5000\nbackends:\n  remote:\n");
    for name in behaviours {
        policy.push_str(&format!(
            "    - name: {name}\n      base_url: {double_url}\n      api_key_env: DOUBLE_API_KEY\n      model: {name}\n      price: {{ input_per_mtok_usd: 2.5, output_per_mtok_usd: 10.0 }}\n      max_output_tokens: 4096\n      timeouts: {{ connect_ms: 1000, first_byte_ms: 1000, idle_ms: 2000, total_ms: 120000 }}\n      retry: {{ max_attempts: 1 }}\n"
        ));
    }
    policy.push_str(
        "    - name: unreachable\n      base_url: http://127.0.0.1:9/v1\n      model: nothing\n      price: { input_per_mtok_usd: 1, output_per_mtok_usd: 1 }\n      retry: { max_attempts: 1 }\n",
    );
    policy.push_str(
        "routing:\n  remote_backends: [echo]\n  thresholds: { local_below: 0.3, remote_above: 0.7, ambiguous: remote }\n",
    );
    policy.push_str(extra);
    policy
}

/// A policy with the embedded model as local backend `smollm2` (2 threads;
/// `local` adds settings to its entry, one per line) and the double's `echo`
/// backend, the routing naming both (`routing` adds lines to it), and `extra`
/// appended (ladder, privacy, budgets, ...).
pub fn local_and_echo_policy(double_url: &str, local: &[&str], routing: &[&str], extra: &str) -> String {
    let indented =
        |lines: &[&str], indent: &str| lines.iter().map(|line| format!("{indent}{line}\n")).collect::<String>();
    format!(
        "backends:
  local:
    - name: smollm2
      model_path: {model}
      threads: 2
{local}  remote:
{remote}routing:
  local_backend: smollm2
  remote_backends: [echo]
{routing}{extra}",
        model = default_model().display(),
        local = indented(local, "      "),
        remote = echo_remote(double_url),
        routing = indented(routing, "  "),
    )
}

/// A policy's remote backend `echo` on the double at `double_url` (for a
/// `backends:` section's `remote:` list, indented as one).
pub fn echo_remote(double_url: &str) -> String {
    format!(
        "    - name: echo
      base_url: {double_url}
      api_key_env: DOUBLE_API_KEY
      model: echo
      price: {{ input_per_mtok_usd: 2.5, output_per_mtok_usd: 10.0 }}
"
    )
}

/// The upstream key the tests give the daemon; it must never leak.
pub const DOUBLE_API_KEY: &str = "sk-double-SECRET-7f3a9c";

/// The embedded default model: `SWITCHYARD_TEST_MODEL`, else the workspace's
/// `models/` (scripts/fetch-default-model.sh puts it there; tests/run.sh runs it).
pub fn default_model() -> std::path::PathBuf {
    let path = std::env::var_os("SWITCHYARD_TEST_MODEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-default-model.sh (tests/run.sh does)",
        path.display()
    );
    path.canonicalize().expect("the model path resolves")
}

/// Runs the test Python (see [`python`]) with `args`: it must succeed and
/// print `ok`; otherwise the test fails showing its output and `daemon`'s log.
pub fn python_says_ok<S: AsRef<std::ffi::OsStr>>(daemon: &Daemon, args: &[S]) {
    let output = std::process::Command::new(python())
        .args(args)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.trim() == "ok",
        "{:?}: stdout:\n{stdout}\nstderr:\n{}\ndaemon log:\n{}",
        args.last().map(AsRef::as_ref),
        String::from_utf8_lossy(&output.stderr),
        daemon.log()
    );
}

/// The Python with the `openai` SDK: `SWITCHYARD_TEST_PYTHON`, else the
/// workspace's `.venv` that tests/run.sh creates.
pub fn python() -> std::path::PathBuf {
    let python = std::env::var_os("SWITCHYARD_TEST_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: run tests/run.sh, which creates the venv with the openai SDK",
        python.display()
    );
    python
}

/// An HTTP client for talking to the daemon.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// `GET path` on the daemon, as text.
pub async fn get_text(daemon: &Daemon, path: &str) -> String {
    let response = http_client().get(daemon.url(path)).send().await.unwrap();
    response.text().await.unwrap()
}

/// `GET path` on the daemon, as JSON.
pub async fn get_json(daemon: &Daemon, path: &str) -> serde_json::Value {
    serde_json::from_str(&get_text(daemon, path).await).unwrap()
}

/// A multipart form as the openai SDKs send an upload: the text `fields`,
/// then `bytes` as the `file` part named `file_name`.
pub fn upload_form(fields: &[(&str, &str)], file_name: &str, bytes: Vec<u8>) -> reqwest::multipart::Form {
    let form = fields
        .iter()
        .fold(reqwest::multipart::Form::new(), |form, (name, value)| {
            form.text(name.to_string(), value.to_string())
        });
    form.part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name(file_name.to_string()),
    )
}

/// Headless Chromium on `url` with `extra` flags (`--dump-dom`,
/// `--screenshot=FILE`), a window of `window` (`1400,1150`) and its profile
/// in `dir`: its output when it exits.
pub fn chromium(dir: &std::path::Path, window: &str, extra: &[String], url: &str) -> std::process::Output {
    std::process::Command::new(tool("chromium"))
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--window-size={window}"))
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .args(extra)
        .arg(url)
        .output()
        .unwrap()
}

/// The value of a Prometheus series in exposition text, summed over its label
/// sets (0 when absent).
pub fn sample(text: &str, series: &str) -> f64 {
    sample_with(text, series, "")
}

/// As [`sample`], over the label sets that hold `label` (`route="local"`).
pub fn sample_with(text: &str, series: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(series) && l[series.len()..].starts_with([' ', '{']) && l.contains(label))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// A system tool the tests need (promtool, prometheus, chromium), from PATH;
/// a clear failure when it is missing (`.ci/run` installs them).
pub fn tool(name: &str) -> std::path::PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    found.unwrap_or_else(|| panic!("{name} is not installed: apt-get install prometheus chromium (.ci/run does)"))
}

/// The `backends.remote` entries of a test policy: one backend per upstream
/// model of the cloud double, named after its model (`unreachable`: a closed
/// port), each with `timeouts` (a YAML flow mapping) and `extra` settings.
pub fn remote_backends_on(double: &CloudDouble, models: &[&str], timeouts: &str, extra: &str) -> String {
    let mut text = String::new();
    for model in models {
        let url = if *model == "unreachable" {
            "http://127.0.0.1:9/v1".to_string()
        } else {
            double.base_url()
        };
        text.push_str(&format!(
            "    - name: {model}\n      base_url: {url}\n      api_key_env: DOUBLE_API_KEY\n      model: {model}\n      price: {{ input_per_mtok_usd: 2.5, output_per_mtok_usd: 10.0 }}\n      timeouts: {timeouts}\n{extra}"
        ));
    }
    text
}
