//! Test support for Cloister's crates: a real, throwaway PostgreSQL cluster per test process, and canary strings.
//!
//! [`postgres`] starts one cluster the first time a test asks (or uses `CLOISTER_TEST_PG_URL` when the test runner
//! started one already), and [`PgCluster::fresh_database`] gives every test its own database in it. The cluster runs
//! as an ordinary user (the `postgres` system user when the tests run as root, as PostgreSQL refuses root), listens on
//! a free loopback port, and dies with the test process. When PostgreSQL is not installed the tests fail with a clear
//! message; they are never skipped. `cargo xtask test` installs it from Debian's packages.
//!
//! Not for production use: fsync is off.

use rand::RngCore;
use sqlx::Connection;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A random canary: `prefix` + 24 hex digits. Tests plant it in requests and search for it where it must not be.
pub fn canary(prefix: &str) -> String {
    let mut b = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("{prefix}{}", hex::encode(b))
}

/// A running PostgreSQL cluster for tests.
#[derive(Debug)]
pub struct PgCluster {
    admin_url: String,
    data_dir: Option<PathBuf>,
}

static CLUSTER: OnceLock<PgCluster> = OnceLock::new();

/// The process's test cluster, started on first use.
///
/// # Panics
/// When PostgreSQL is not installed or does not start: the message says how to install it.
pub fn postgres() -> &'static PgCluster {
    CLUSTER.get_or_init(|| match std::env::var("CLOISTER_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => PgCluster { admin_url: url, data_dir: None },
        _ => start_cluster().unwrap_or_else(|e| panic!("cannot start a PostgreSQL test cluster: {e}")),
    })
}

impl PgCluster {
    /// URL of the cluster's maintenance database (`postgres`).
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// The cluster's data directory, when this process started the cluster (tests search it for canaries).
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }

    /// Creates an empty database with a random name and returns its URL.
    pub async fn fresh_database(&self) -> String {
        let name = canary("t_");
        let mut conn = sqlx::PgConnection::connect(&self.admin_url).await.expect("connect to the test cluster");
        sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&mut conn).await.expect("create a test database");
        let _ = conn.close().await;
        let base = self.admin_url.rsplit_once('/').map(|(b, _)| b).unwrap_or(&self.admin_url);
        format!("{base}/{name}")
    }
}

/// Where initdb, pg_ctl and postgres are: `$CLOISTER_PG_BIN`, the newest /usr/lib/postgresql/*/bin, or `PATH`.
pub fn postgres_bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("CLOISTER_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).find(|p| p.join("initdb").exists() && p.join("postgres").exists())
    })
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `(uid, gid)` to run PostgreSQL as: ourselves, or the `postgres` user when we are root.
fn run_as() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| e.to_string())?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == "postgres" {
            let uid = f[2].parse().map_err(|_| "bad /etc/passwd".to_string())?;
            let gid = f[3].parse().map_err(|_| "bad /etc/passwd".to_string())?;
            return Ok(Some((uid, gid)));
        }
    }
    Err("running as root and there is no 'postgres' user to run PostgreSQL as (install Debian's postgresql)".into())
}

fn remove_stale_dirs(tmp: &Path) {
    for entry in std::fs::read_dir(tmp).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("cloister-pg-")).and_then(|p| p.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn start_cluster() -> Result<PgCluster, String> {
    let bin = postgres_bin_dir().ok_or(
        "PostgreSQL is not installed (no initdb found). Run `cargo xtask test`, which installs it, \
         or `apt-get install postgresql`",
    )?;
    let tmp = std::env::temp_dir();
    remove_stale_dirs(&tmp);
    let root = tmp.join(format!("cloister-pg-{}-{}", std::process::id(), canary("")));
    let data = root.join("data");
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    let user = run_as()?;
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&root, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
    }
    let as_user = |cmd: &mut Command| {
        if let Some((uid, gid)) = user {
            cmd.uid(uid).gid(gid);
        }
        cmd.current_dir(&root).env("LC_ALL", "C");
    };
    let mut initdb = Command::new(bin.join("initdb"));
    initdb.args(["-A", "trust", "-U", "cloister", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions", "-D"]);
    initdb.arg(&data).stdout(Stdio::null()).stderr(Stdio::piped());
    as_user(&mut initdb);
    let out = initdb.output().map_err(|e| format!("initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let port = free_port().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin.join("postgres"));
    cmd.arg("-D").arg(&data).arg("-k").arg(&root).arg("-p").arg(port.to_string());
    for setting in [
        "listen_addresses=127.0.0.1",
        "fsync=off",
        "full_page_writes=off",
        "synchronous_commit=off",
        "max_connections=300",
        "shared_buffers=64MB",
        "log_min_messages=warning",
    ] {
        cmd.arg("-c").arg(setting);
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    as_user(&mut cmd);
    // The cluster must die with this process. PR_SET_PDEATHSIG fires when the *thread* that spawned the child ends,
    // so a dedicated thread spawns it and then waits on it for the life of the process.
    // SAFETY: the closure runs between fork and exec and calls only prctl, which is async-signal-safe.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("postgres-test-cluster".into())
        .spawn(move || match cmd.spawn() {
            Ok(mut child) => {
                let _ = tx.send(Ok(()));
                let _ = child.wait();
            }
            Err(e) => {
                let _ = tx.send(Err(format!("postgres: {e}")));
            }
        })
        .map_err(|e| e.to_string())?;
    rx.recv().map_err(|e| e.to_string())??;
    let admin_url = format!("postgres://cloister@127.0.0.1:{port}/postgres");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "cloister", "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(true);
            if ready {
                return Ok(PgCluster { admin_url, data_dir: Some(data) });
            }
        }
        if Instant::now() > deadline {
            return Err(format!("postgres did not accept connections on port {port} within 60 s"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
