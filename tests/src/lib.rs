//! Whole-system test support: start the real `cloister` binary on port 0 against SQLite or a throwaway PostgreSQL
//! database, capture its stdout and stderr, stop it with SIGTERM. The scenarios are in `tests/tests/*.rs`.

#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test, with its message

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Which database the server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded SQLite file in the data dir.
    Sqlite,
    /// A fresh database in the test process's PostgreSQL cluster.
    Postgres,
}

/// Writes a server config file into `dir` that lifts the sign-up and login throttles (tests sign up many accounts
/// from one address) and returns its path.
pub fn relaxed_throttle_config(dir: &Path) -> PathBuf {
    let config = dir.join("cloister.toml");
    std::fs::write(
        &config,
        "[accounts.throttle]\nsignup_per_ip = { burst = 1000.0, refill_per_sec = 100.0 }\n\
         login_per_ip = { burst = 1000.0, refill_per_sec = 100.0 }\n",
    )
    .unwrap();
    config
}

/// Runs `cargo build -p package --bin bin` (for a binary a test needs that is not built yet).
pub fn cargo_build_bin(package: &str, bin: &str) {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "-p", package, "--bin", bin])
        .status()
        .unwrap();
    assert!(status.success(), "building {bin} failed");
}

/// Path of the `cloister` binary: `$CLOISTER_BIN`, or `target/<profile>/cloister` beside this test executable
/// (built with `cargo build` if missing).
pub fn cloister_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("CLOISTER_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
        let bin = profile_dir.join("cloister");
        if !bin.exists() {
            cargo_build_bin("cloister-server", "cloister");
        }
        bin
    })
}

/// A running `cloister serve`.
pub struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT` or `https://...`.
    pub base: String,
    /// The data dir (kept across restarts of the same [`Server`]).
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    /// PostgreSQL URL when on PostgreSQL.
    pub database_url: Option<String>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    extra: Vec<String>,
    logs_before: String,
    /// `127.0.0.1:0` until the first start, then the port it got (a restart keeps the address).
    listen: String,
}

impl Server {
    /// Starts a server with plain HTTP on loopback and the given extra flags.
    pub async fn start(backend: Backend, extra: &[&str]) -> Self {
        Self::start_on(backend, "127.0.0.1:0", extra).await
    }

    /// Starts a server listening on `listen` (a non-loopback address needs `--https` and a certificate in `extra`).
    pub async fn start_on(backend: Backend, listen: &str, extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let database_url = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(cloister_testkit::postgres().fresh_database().await),
        };
        let mut s = Self {
            child: None,
            base: String::new(),
            data_dir: tmp.path().join("data"),
            stdout_path: tmp.path().join("stdout.log"),
            stderr_path: tmp.path().join("stderr.log"),
            _tmp: Some(tmp),
            database_url,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            logs_before: String::new(),
            listen: listen.into(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        if let Err(logs) = self.try_start() {
            panic!("cloister exited before listening:\n{logs}");
        }
    }

    /// Everything the server printed so far (stdout and stderr, across restarts).
    pub fn logs(&self) -> String {
        let mut s = self.logs_before.clone();
        for p in [&self.stdout_path, &self.stderr_path] {
            let mut f = String::new();
            if let Ok(mut file) = std::fs::File::open(p) {
                let mut bytes = Vec::new();
                let _ = file.read_to_end(&mut bytes);
                f = String::from_utf8_lossy(&bytes).into_owned();
            }
            s.push_str(&f);
        }
        s
    }

    /// Stdout only.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        self.stop_after_signal()
    }

    /// Kills the server with SIGKILL (no shutdown at all) and waits for it to be gone.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("server is running");
        let _ = child.kill();
        let _ = child.wait();
        self.logs_before = self.logs();
    }

    /// Starts a stopped or killed server again on the same address, data dir and database.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Waits for the exit of a server that was already signalled.
    pub fn stop_after_signal(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server is running");
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("cloister did not stop within 40 s of SIGTERM:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops (if running) and starts again on the same data dir and database.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            let status = self.stop();
            assert!(status.success(), "clean exit on SIGTERM: {status}");
        }
        self.logs_before = self.logs();
        self.spawn();
    }

    /// Runs `cloister ARGS --data-dir DIR [--database-url URL]` (an operator command against this server's data) and
    /// returns its output.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(cloister_bin());
        cmd.args(args).arg("--data-dir").arg(&self.data_dir);
        if let Some(url) = &self.database_url {
            cmd.args(["--database-url", url]);
        }
        cmd.env_remove("CLOISTER_PEPPER").stdin(Stdio::null()).output().unwrap()
    }

    /// Stops the server (SIGTERM, clean exit asserted) without starting it again.
    pub fn shut_down(&mut self) {
        let status = self.stop();
        assert!(status.success(), "clean exit on SIGTERM: {status}");
        self.logs_before = self.logs();
    }

    /// Starts a stopped server again on the same data; `Err(logs)` when it exits before listening.
    pub fn try_start(&mut self) -> Result<(), String> {
        let stdout = std::fs::File::create(&self.stdout_path).unwrap();
        let stderr = std::fs::File::create(&self.stderr_path).unwrap();
        let mut cmd = Command::new(cloister_bin());
        cmd.args(["serve", "--listen", &self.listen, "--data-dir"]).arg(&self.data_dir);
        if !self.extra.iter().any(|a| a == "--https") {
            cmd.arg("--plain-http");
        }
        cmd.args(self.extra.iter().filter(|a| *a != "--https"));
        if let Some(url) = &self.database_url {
            cmd.args(["--database-url", url]);
        }
        // Log everything the server would ever log, so the canary tests see it all.
        cmd.env("RUST_LOG", "debug").env_remove("CLOISTER_PEPPER").stdout(stdout).stderr(stderr).stdin(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = std::fs::read_to_string(&self.stdout_path).unwrap_or_default();
            if let Some(line) = out.lines().find(|l| l.starts_with("listening on ")) {
                self.base = line.trim_start_matches("listening on ").trim().to_owned();
                self.listen = self.base.rsplit("://").next().unwrap_or_default().to_owned();
                self.child = Some(child);
                return Ok(());
            }
            if let Some(status) = child.try_wait().unwrap() {
                return Err(format!("exit {status}\n{}", self.logs()));
            }
            assert!(Instant::now() < deadline, "cloister did not listen within 60 s:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// An HTTP client for this server.
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(cloister_wire::CLIENT_POOL_IDLE_SECS))
            .build()
            .unwrap()
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every file below `dir` (recursively) whose bytes, ASCII-lower-cased, contain any of `needles` (lower-cased).
pub fn files_containing(dir: &Path, needles: &[String]) -> Vec<(PathBuf, String)> {
    let needles: Vec<Vec<u8>> = needles.iter().map(|n| n.to_ascii_lowercase().into_bytes()).collect();
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                let lower = bytes.to_ascii_lowercase();
                for n in &needles {
                    if lower.windows(n.len()).any(|w| w == n.as_slice()) {
                        hits.push((p.clone(), String::from_utf8_lossy(n).into_owned()));
                    }
                }
            }
        }
    }
    hits
}

/// Whether `haystack`, ASCII-lower-cased, contains `needle` lower-cased.
pub fn contains_ci(haystack: &str, needle: &str) -> bool {
    haystack.to_ascii_lowercase().contains(&needle.to_ascii_lowercase())
}

/// Runs `$body` with `$pool` bound to a fresh connection pool on the server's database (SQLite file or
/// PostgreSQL), closing it afterwards. The calling test crate needs `sqlx` as a dependency.
#[macro_export]
macro_rules! with_db {
    ($server:expr, $pool:ident => $body:expr) => {{
        match &$server.database_url {
            None => {
                let url = format!("sqlite://{}", $server.data_dir.join("cloister.sqlite3").display());
                let owned = sqlx::SqlitePool::connect(&url).await.unwrap();
                let out = {
                    let $pool = &owned;
                    $body
                };
                owned.close().await;
                out
            }
            Some(url) => {
                let owned = sqlx::PgPool::connect(url).await.unwrap();
                let out = {
                    let $pool = &owned;
                    $body
                };
                owned.close().await;
                out
            }
        }
    }};
}
