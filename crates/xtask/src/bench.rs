//! `cargo xtask bench`: account figures for BENCHMARKS.md.
//!
//! 1. argon2id hash time at the default parameters (p50/p95 over 40 hashes, in this process).
//! 2. The release `cloister` binary on loopback (plain HTTP, embedded SQLite, throttle raised so it measures work):
//!    logins/s with 8 concurrent clients for 10 s, and `GET /api/v1/me` p50/p99 and requests/s at 64 concurrent
//!    connections for 10 s. Server and load generator share the machine's cores; the figures say so.

use anyhow::{bail, Context as _};
use cloister_accounts::{Argon2Config, PasswordHasher};
use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn argon2_figures() -> (f64, f64) {
    let h = PasswordHasher::new(Argon2Config::default()).expect("default parameters are valid");
    let _ = h.hash("warm-up-password");
    let mut times: Vec<f64> = (0..40)
        .map(|i| {
            let t = Instant::now();
            let _ = h.hash(&format!("benchmark-password-{i}"));
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (percentile(&times, 0.5), percentile(&times, 0.95))
}

struct Server {
    child: std::process::Child,
    base: String,
    dir: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_server() -> anyhow::Result<Server> {
    crate::run(crate::cargo().args(["build", "--release", "--locked", "-p", "cloister-server", "--bin", "cloister"]))?;
    let dir = std::env::temp_dir().join(format!("cloister-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("bench.toml");
    std::fs::write(
        &config,
        "[accounts.throttle]\nmax_buckets = 100000\n\
         login_per_account = { burst = 1e9, refill_per_sec = 1e9 }\n\
         login_per_ip = { burst = 1e9, refill_per_sec = 1e9 }\n\
         signup_per_ip = { burst = 1e9, refill_per_sec = 1e9 }\n",
    )?;
    let mut child = Command::new(crate::target_dir().join("release/cloister"))
        .args(["serve", "--plain-http", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start cloister")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let base = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(url) = line.strip_prefix("listening on ") {
                    break url.to_owned();
                }
            }
            _ => bail!("cloister exited before listening"),
        }
    };
    Ok(Server { child, base, dir })
}

async fn load<F, Fut>(concurrency: usize, duration: Duration, make: F) -> (Vec<f64>, usize, f64)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let make = Arc::new(make);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            while Instant::now() < deadline {
                let t = Instant::now();
                if make().await {
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((lat, e)) = t.await {
            all.extend(lat);
            errors += e;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    (all, errors, secs)
}

pub fn main(_args: &[String]) -> anyhow::Result<()> {
    let (a50, a95) = argon2_figures();
    println!(
        "machine: {} cores; server and load generator share them",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("argon2id m=19456 KiB t=2 p=1: hash p50 {a50:.1} ms, p95 {a95:.1} ms (40 hashes, one thread)");
    let server = start_server()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(128)
            .pool_idle_timeout(Duration::from_secs(cloister_wire::CLIENT_POOL_IDLE_SECS))
            .build()?;
        let creds = serde_json::json!({"email": "bench@example.org", "password": "benchmark-password"});
        let r = client.post(format!("{}/api/v1/accounts", server.base)).json(&creds).send().await?;
        if r.status() != 201 {
            bail!("sign-up failed: {}", r.status());
        }
        let (c, b, j) = (client.clone(), server.base.clone(), creds.clone());
        let (lat, errors, secs) = load(8, Duration::from_secs(10), move || {
            let (c, b, j) = (c.clone(), b.clone(), j.clone());
            async move {
                matches!(c.post(format!("{b}/api/v1/sessions")).json(&j).send().await, Ok(r) if r.status() == 201)
            }
        })
        .await;
        println!(
            "login: {:.1} req/s ({} ok, {errors} errors in {secs:.1} s, 8 concurrent), latency p50 {:.1} ms p99 {:.1} ms",
            lat.len() as f64 / secs,
            lat.len(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
        // Enumeration resistance: an unknown email must cost what a wrong password costs. Interleaved, so drift in
        // machine load hits both alike.
        let cases = [
            ("wrong password", serde_json::json!({"email": "bench@example.org", "password": "wrong-password"})),
            ("unknown email", serde_json::json!({"email": "nobody@example.org", "password": "wrong-password"})),
        ];
        let mut lat: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..60 {
            for (i, (label, body)) in cases.iter().enumerate() {
                let t = Instant::now();
                let r = client.post(format!("{}/api/v1/sessions", server.base)).json(body).send().await?;
                lat[i].push(t.elapsed().as_secs_f64() * 1e3);
                if r.status() != 401 {
                    bail!("{label}: expected 401, got {}", r.status());
                }
            }
        }
        for (i, (label, _)) in cases.iter().enumerate() {
            lat[i].sort_by(f64::total_cmp);
            println!(
                "login 401 ({label}): p50 {:.1} ms, p95 {:.1} ms (60 each, interleaved)",
                percentile(&lat[i], 0.5),
                percentile(&lat[i], 0.95)
            );
        }
        let r = client.post(format!("{}/api/v1/sessions", server.base)).json(&creds).send().await?;
        let token = r.json::<serde_json::Value>().await?["token"].as_str().context("token")?.to_owned();
        let (c, b) = (client.clone(), server.base.clone());
        let (lat, errors, secs) = load(64, Duration::from_secs(10), move || {
            let (c, b, t) = (c.clone(), b.clone(), token.clone());
            async move { matches!(c.get(format!("{b}/api/v1/me")).bearer_auth(t).send().await, Ok(r) if r.status() == 200) }
        })
        .await;
        println!(
            "GET /api/v1/me: {:.0} req/s ({} ok, {errors} errors in {secs:.1} s, 64 concurrent connections), \
             latency p50 {:.2} ms p99 {:.2} ms",
            lat.len() as f64 / secs,
            lat.len(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
        anyhow::Ok(())
    })?;
    drop(server);
    Ok(())
}
