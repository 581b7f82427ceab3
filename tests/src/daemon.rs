//! Starts the real `switchyard` binary on a policy, on a free port (loopback, or
//! a network namespace's address: [`crate::netns`]), with
//! its log captured to a file; stops it on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::netns::Host;

pub struct Daemon {
    child: Child,
    pub addr: String,
    pub dir: PathBuf,
    log_path: PathBuf,
    /// The network namespace it runs in, if not the machine's own; deleted
    /// after the daemon has stopped.
    _host: Option<Host>,
}

/// The binary under test: `SWITCHYARD_BIN`, else the workspace's debug build
/// (which the README's test command builds before running the tests).
pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("SWITCHYARD_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/switchyard");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (tests/run.sh does)",
        bin.display()
    );
    // `cargo test` builds the tests, not the daemon: a binary older than the
    // code it is built from would test yesterday's daemon.
    static STALE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let stale = STALE.get_or_init(|| {
        let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok()?;
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        // What cargo rebuilds the binary for: sources, manifests, the embedded assets.
        [
            "router/src",
            "router/assets",
            "router/Cargo.toml",
            "engine/src",
            "engine/Cargo.toml",
        ]
        .iter()
        .flat_map(|part| newer_than(&root.join(part), built))
        .next()
    });
    if let Some(source) = stale {
        panic!(
            "{} is older than {}: run `cargo build --workspace --bins` first (tests/run.sh does)",
            bin.display(),
            source.display()
        );
    }
    bin
}

/// `path`, or the files under it, if changed after `time`.
fn newer_than(path: &std::path::Path, time: std::time::SystemTime) -> Vec<PathBuf> {
    match std::fs::read_dir(path) {
        Ok(entries) => entries.flatten().flat_map(|e| newer_than(&e.path(), time)).collect(),
        Err(_)
            if std::fs::metadata(path)
                .and_then(|m| m.modified())
                .is_ok_and(|m| m > time) =>
        {
            vec![path.to_path_buf()]
        }
        Err(_) => Vec::new(),
    }
}

/// A fresh directory for one test's files.
pub fn scratch_dir(label: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "switchyard-e2e-{}-{}-{label}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Daemon {
    /// Starts the daemon on `policy` (YAML) with extra environment variables.
    pub fn start(policy: &str, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_in(scratch_dir("daemon"), policy, env)
    }

    /// Starts the daemon in a given directory (the policy file and the log are
    /// written there), e.g. the directory of a previous run, to restart it.
    pub fn start_in(dir: PathBuf, policy: &str, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_listening(dir, "127.0.0.1:0", policy, env)
    }

    /// Starts the daemon with `--listen listen` (a port of 0 picks a free one).
    pub fn start_listening(dir: PathBuf, listen: &str, policy: &str, env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn(dir, None, listen, policy, env)
    }

    /// Starts the daemon inside `host`'s network namespace, listening on its
    /// address; the namespace is deleted when the daemon is dropped.
    pub fn start_on(host: Host, dir: PathBuf, policy: &str, env: &[(&str, &str)]) -> Daemon {
        let listen = format!("{}:0", host.ip);
        Daemon::spawn(dir, Some(host), &listen, policy, env)
    }

    fn spawn(dir: PathBuf, host: Option<Host>, listen: &str, policy: &str, env: &[(&str, &str)]) -> Daemon {
        let (child, log_path) = spawn_serve(&dir, host.as_ref(), listen, policy, env);
        let mut daemon = Daemon {
            child,
            addr: String::new(),
            dir,
            log_path,
            _host: host,
        };
        daemon.addr = daemon.wait_for_listen_address();
        daemon
    }

    fn wait_for_listen_address(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("switchyard exited with {status} before listening:\n{}", self.log());
            }
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.contains("switchyard is serving")) {
                let addr = line
                    .split("listen=")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .expect("listen= in log");
                // Listening on every interface includes loopback.
                return addr.replace("0.0.0.0:", "127.0.0.1:");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("switchyard did not start listening within 20 s:\n{}", self.log());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `GET path`, its body parsed as JSON, whatever the status.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        crate::http_client()
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// What `GET /metrics` shows now.
    pub async fn metrics(&self) -> String {
        let response = crate::http_client().get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200, "/metrics");
        response.text().await.unwrap()
    }

    /// Everything the daemon has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; panics with the log after 10 s.
    pub async fn until_logged(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().contains(needle) {
            assert!(Instant::now() < deadline, "{needle:?} was not logged:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The directory holding the policy file and the log.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The policy file the daemon serves (and watches).
    pub fn policy_path(&self) -> PathBuf {
        self.dir.join("policy.yaml")
    }

    /// Kills the daemon at once (SIGKILL), as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "switchyard did not exit within {within:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `switchyard serve --policy DIR/policy.yaml --listen LISTEN`, logging to
/// `DIR/switchyard.log`.
fn spawn_serve(
    dir: &std::path::Path,
    host: Option<&Host>,
    listen: &str,
    policy: &str,
    env: &[(&str, &str)],
) -> (Child, PathBuf) {
    let policy_path = dir.join("policy.yaml");
    std::fs::write(&policy_path, policy).unwrap();
    let log_path = dir.join("switchyard.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut command = match host {
        Some(host) => host.command(&binary()),
        None => Command::new(binary()),
    };
    let child = command
        .args(["serve", "--policy"])
        .arg(&policy_path)
        .args(["--listen", listen])
        .env("SWITCHYARD_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("switchyard starts");
    (child, log_path)
}

/// Runs `switchyard serve` as [`Daemon::start_listening`] would, for a start
/// that must be refused: its exit code and everything it printed. Panics if
/// it starts serving instead, or neither exits nor serves within 20 s.
pub fn refused_start(dir: PathBuf, listen: &str, policy: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let (mut child, log_path) = spawn_serve(&dir, None, listen, policy, env);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let exited = child.try_wait().unwrap();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(status) = exited {
            return (status.code(), log);
        }
        if log.contains("switchyard is serving") || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("switchyard was expected to refuse to start:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `switchyard policy check` on a file holding `text`: whether it passed, and
/// what it printed, with the file's path written `FILE`.
pub fn policy_check(text: &str) -> (bool, String) {
    let dir = scratch_dir("policy-check");
    let path = dir.join("policy.yaml");
    std::fs::write(&path, text).unwrap();
    let output = Command::new(binary())
        .args(["policy", "check"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    (
        output.status.success(),
        text.replace(&path.display().to_string(), "FILE"),
    )
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
