//! A real `redis-server` (the Debian package's binary) for the shared-state
//! tests: on a free loopback port, persisting every write to an append-only
//! file in its own directory (`appendfsync always`), so that a `kill -9` and a
//! restart in the same directory keep what was acknowledged. It can be killed,
//! restarted on the same port, frozen (SIGSTOP) and thawed (SIGCONT); it is
//! killed when dropped. [`RedisServer::query`] speaks just enough RESP for a
//! test to look at what the daemons wrote.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// An address it listens on besides loopback (a network bridge's).
    also_on: Option<String>,
    /// Whether the process was sent SIGSTOP and not SIGCONT since.
    stopped: bool,
}

/// One RESP reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Status(String),
    Error(String),
    Integer(i64),
    Bulk(Option<String>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text, as `redis-cli --raw` prints it: one line per element.
    pub fn text(&self) -> String {
        match self {
            Reply::Status(s) | Reply::Error(s) => s.clone(),
            Reply::Integer(n) => n.to_string(),
            Reply::Bulk(Some(s)) => s.clone(),
            Reply::Bulk(None) | Reply::Array(None) => String::new(),
            Reply::Array(Some(items)) => items.iter().map(Reply::text).collect::<Vec<_>>().join("\n"),
        }
    }

    /// The elements of an array reply (empty for anything else).
    pub fn items(&self) -> Vec<Reply> {
        match self {
            Reply::Array(Some(items)) => items.clone(),
            _ => Vec::new(),
        }
    }

    /// The reply's strings: an array's elements, or the one value.
    pub fn strings(&self) -> Vec<String> {
        match self {
            Reply::Array(Some(items)) => items.iter().map(Reply::text).collect(),
            Reply::Array(None) | Reply::Bulk(None) => Vec::new(),
            other => vec![other.text()],
        }
    }
}

/// The `redis-server` binary: `SWITCHYARD_TEST_REDIS_SERVER`, else from PATH
/// (or /usr/bin, where Debian's package puts it; tests/run.sh installs it).
pub fn redis_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SWITCHYARD_TEST_REDIS_SERVER") {
        return PathBuf::from(path);
    }
    find_tool("redis-server")
}

fn find_tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed: apt-get install redis-server (tests/run.sh does)"))
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.local_addr().unwrap().port()
}

impl RedisServer {
    /// Starts `redis-server` with its data and log in `dir`, on a free port,
    /// and waits until it answers PING.
    pub fn start(dir: &Path) -> RedisServer {
        RedisServer::start_also_on(dir, None)
    }

    /// [`RedisServer::start`], listening on `also_on` (an address of this
    /// machine, e.g. a network bridge's) besides loopback.
    pub fn start_also_on(dir: &Path, also_on: Option<&str>) -> RedisServer {
        std::fs::create_dir_all(dir).unwrap();
        // Another process may take the port between our probe and the
        // server's bind: then try another.
        let mut last_log = String::new();
        for _ in 0..5 {
            let mut server = RedisServer {
                child: None,
                port: free_port(),
                dir: dir.to_path_buf(),
                also_on: also_on.map(str::to_string),
                stopped: false,
            };
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(log) => last_log = log,
            }
        }
        panic!("redis-server did not start:\n{last_log}");
    }

    /// `redis://127.0.0.1:PORT/0`, for the daemons' `SWITCHYARD_REDIS_URL`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Its address for daemons on other hosts: on the address it was
    /// started [also on](RedisServer::start_also_on), else on loopback.
    pub fn shared_url(&self) -> String {
        let ip = self.also_on.as_deref().unwrap_or("127.0.0.1");
        format!("redis://{ip}:{}/0", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the server has logged (all its runs in this directory).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.log"))
            .unwrap();
        let child = Command::new(redis_server_binary())
            .args(["--port", &self.port.to_string()])
            .arg("--bind")
            .args(std::iter::once("127.0.0.1").chain(self.also_on.as_deref()))
            // Reached from other hosts without a password: only the test's
            // own bridge leads there.
            .args(["--protected-mode", "no"])
            .args(["--save", ""])
            .args(["--appendonly", "yes"])
            .args(["--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--enable-debug-command", "local"])
            .args(["--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        self.stopped = false;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!("redis-server exited with {status}:\n{}", self.log()));
            }
            if matches!(self.try_query(&["PING"]), Ok(Reply::Status(ref s)) if s == "PONG") {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill9();
                return Err(format!("redis-server did not answer PING within 20 s:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stopped = false;
    }

    /// Starts the server again, on the same port and in the same directory
    /// (its append-only file holds what it had acknowledged).
    pub fn restart(&mut self) {
        self.kill9();
        // The port may linger for a moment after the kill.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(log) if Instant::now() > deadline => panic!("redis-server did not restart:\n{log}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Freezes the process (SIGSTOP): it keeps its connections and answers
    /// nothing, as a server stuck in a long fork or a paused VM does.
    pub fn stop_process(&mut self) {
        self.signal("-STOP");
        self.stopped = true;
    }

    /// Thaws a frozen process (SIGCONT).
    pub fn cont_process(&mut self) {
        self.signal("-CONT");
        self.stopped = false;
    }

    fn signal(&self, signal: &str) {
        let pid = self.pid().expect("redis-server is running");
        let status = Command::new("kill").args([signal, &pid.to_string()]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Runs one command, e.g. `["HGETALL", "key"]`; panics on a failure to
    /// talk to the server (not on a Redis error reply, which is returned).
    pub fn query(&self, args: &[&str]) -> Reply {
        self.try_query(args)
            .unwrap_or_else(|err| panic!("redis {args:?}: {err}\n{}", self.log()))
    }

    /// [`RedisServer::query`] as text, as `redis-cli --raw` prints it.
    pub fn command(&self, args: &[&str]) -> String {
        self.query(args).text()
    }

    /// Every key matching `pattern` (SCAN, not KEYS), sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut cursor = "0".to_string();
        let mut keys = Vec::new();
        loop {
            let reply = self.query(&["SCAN", &cursor, "MATCH", pattern, "COUNT", "1000"]);
            let items = reply.items();
            assert_eq!(items.len(), 2, "SCAN: {reply:?}");
            cursor = items[0].text();
            keys.extend(items[1].strings());
            if cursor == "0" {
                break;
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }

    /// One command on a fresh connection, within 5 s.
    pub fn try_query(&self, args: &[&str]) -> std::io::Result<Reply> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        (&stream).write_all(&request)?;
        let mut reader = BufReader::new(stream);
        read_reply(&mut reader)
    }
}

fn read_reply(reader: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ));
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad RESP line {line:?}"));
    let (kind, rest) = line.split_at_checked(1).ok_or_else(bad)?;
    Ok(match kind {
        "+" => Reply::Status(rest.to_string()),
        "-" => Reply::Error(rest.to_string()),
        ":" => Reply::Integer(rest.parse().map_err(|_| bad())?),
        "$" => {
            let len: i64 = rest.parse().map_err(|_| bad())?;
            if len < 0 {
                Reply::Bulk(None)
            } else {
                let mut bytes = vec![0; len as usize + 2];
                reader.read_exact(&mut bytes)?;
                bytes.truncate(len as usize);
                Reply::Bulk(Some(String::from_utf8_lossy(&bytes).into_owned()))
            }
        }
        "*" => {
            let len: i64 = rest.parse().map_err(|_| bad())?;
            if len < 0 {
                Reply::Array(None)
            } else {
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(read_reply(reader)?);
                }
                Reply::Array(Some(items))
            }
        }
        _ => return Err(bad()),
    })
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.stopped {
            // A stopped process takes SIGKILL all the same; thaw it anyway so
            // nothing is left frozen should the kill fail.
            let _ = self
                .pid()
                .map(|pid| Command::new("kill").args(["-CONT", &pid.to_string()]).status());
        }
        self.kill9();
    }
}
