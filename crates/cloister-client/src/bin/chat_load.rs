//! `cloister-chat-load`: the delivery service's load benchmark with N native clients in this one process against a
//! real `cloister serve` it starts itself (release build, SQLite or `--database-url`, loopback, plain HTTP).
//!
//! Phases, each reported:
//! 1. join: a teacher hosts, N-1 students ask to join at once; the time from the first join request until every
//!    member has processed the final epoch (full roster, one safety code), and how many epochs it took;
//! 2. fan-out latency: `--messages` chat lines at `--rate` per second from random members; send-to-receipt latency
//!    at every other member (p50, p99, max);
//! 3. saturation: `--burst-senders` members each queue `--burst` lines at once; messages per second the service
//!    ordered and delivered to every member (measured at the last member to get them all).
//!
//! Usage: `cargo run --release -p cloister-client --bin cloister-chat-load -- --clients 100`.

use anyhow::{bail, Context as _};
use clap::Parser;
use cloister_client::{Api, AppMessage, Event, Login, Participant, Role};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Members in the session, teacher included.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Chat lines in the latency phase.
    #[arg(long, default_value_t = 200)]
    messages: usize,
    /// Lines per second in the latency phase.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Members sending in the saturation phase.
    #[arg(long, default_value_t = 20)]
    burst_senders: usize,
    /// Lines each of them queues at once.
    #[arg(long, default_value_t = 100)]
    burst: usize,
    /// The `cloister` binary (default: beside this one).
    #[arg(long)]
    cloister: Option<std::path::PathBuf>,
    /// PostgreSQL URL (default: the embedded SQLite in a temporary data dir).
    #[arg(long)]
    database_url: Option<String>,
}

struct Server {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(args: &Args) -> anyhow::Result<Server> {
    let bin = match &args.cloister {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("cloister"),
    };
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("cloister.toml");
    std::fs::write(
        &config,
        "[accounts.throttle]\nsignup_per_ip = { burst = 100000.0, refill_per_sec = 10000.0 }\n\
         login_per_ip = { burst = 100000.0, refill_per_sec = 10000.0 }\n",
    )?;
    let out = dir.path().join("stdout");
    let mut cmd = Command::new(&bin);
    cmd.args(["serve", "--plain-http", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--ds-device-rate", "100000", "--ds-group-rate", "1000000"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out)?)
        .stderr(Stdio::inherit());
    if let Some(url) = &args.database_url {
        cmd.args(["--database-url", url]);
    }
    let child = cmd.spawn().with_context(|| format!("cannot start {}", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.starts_with("listening on ")) {
            let base = l.trim_start_matches("listening on ").trim().to_owned();
            return Ok(Server { child, base, _dir: dir });
        }
        if Instant::now() > deadline {
            bail!("the server did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn micros() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros())
}

struct Member {
    p: Participant,
    joined: bool,
    epoch: Option<(u64, usize, String)>,
    /// Chat lines received.
    got: usize,
    latencies: Vec<u64>,
    done_at: Option<Instant>,
}

fn drain(members: &mut [Member], index: usize, latency: bool) {
    let m = &mut members[index];
    while let Ok(e) = m.p.events.try_recv() {
        match e {
            Event::Joined { .. } => m.joined = true,
            Event::Epoch(info) => m.epoch = Some((info.epoch, info.roster.len(), info.safety_code)),
            Event::Said { message: AppMessage::Chat { text }, .. } => {
                m.got += 1;
                if latency {
                    let mut parts = text.split(' ');
                    let (Some(t), Some(from)) = (parts.next(), parts.next()) else { continue };
                    let (Ok(t), Ok(from)) = (t.parse::<u128>(), from.parse::<usize>()) else { continue };
                    if from != index {
                        m.latencies.push(u64::try_from(micros().saturating_sub(t)).unwrap_or(u64::MAX));
                    }
                }
            }
            Event::Refused { code, message } => eprintln!("member {index}: refused {code}: {message}"),
            _ => {}
        }
    }
}

async fn wait(
    members: &mut [Member],
    secs: u64,
    what: &str,
    latency: bool,
    done: impl Fn(&Member) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let mut all = true;
        for i in 0..members.len() {
            drain(members, i, latency);
            if done(&members[i]) {
                if members[i].done_at.is_none() {
                    members[i].done_at = Some(Instant::now());
                }
            } else {
                all = false;
            }
        }
        if all {
            return Ok(());
        }
        if Instant::now() > deadline {
            let behind = members.iter().filter(|m| !done(m)).count();
            bail!("{what}: {behind} members not done after {secs} s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let n = args.clients.max(2);
    let server = start_server(&args)?;
    let api = Api::new(&server.base, None)?;
    eprintln!("server at {}; signing up {n} accounts", server.base);
    let mut logins: Vec<Login> = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..n {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let email = format!("load{i}@example.org");
            api.sign_up(&email, "correct horse battery").await?;
            api.log_in(&email, "correct horse battery").await
        }));
    }
    for t in tasks {
        logins.push(t.await??);
    }
    let (course, session) = api.new_session(&logins[0], "load", 2, u32::try_from(n).unwrap_or(u32::MAX)).await?;
    let sid = session.id.clone();
    api.admit(&logins[0], &sid).await?;
    for l in &logins[1..] {
        api.enroll(l, &course).await?;
        api.admit(l, &sid).await?;
    }

    // Phase 1: joining.
    let mut members = vec![Member {
        p: Participant::start(api.clone(), logins[0].clone(), &sid, "load", Role::Host { committers: vec![] })?,
        joined: false,
        epoch: None,
        got: 0,
        latencies: vec![],
        done_at: None,
    }];
    wait(&mut members, 30, "the teacher's group", false, |m| m.joined).await?;
    let t0 = Instant::now();
    for l in &logins[1..] {
        members.push(Member {
            p: Participant::start(api.clone(), l.clone(), &sid, "load", Role::Join)?,
            joined: false,
            epoch: None,
            got: 0,
            latencies: vec![],
            done_at: None,
        });
    }
    let deadline = Instant::now() + Duration::from_secs(1800);
    let join_secs;
    let epochs;
    loop {
        for i in 0..members.len() {
            drain(&mut members, i, false);
        }
        let teacher = members[0].epoch.clone();
        if let Some((e, size, code)) = &teacher {
            if *size == n && members.iter().all(|m| m.epoch.as_ref().is_some_and(|x| x.0 == *e && &x.2 == code)) {
                join_secs = t0.elapsed().as_secs_f64();
                epochs = *e;
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("the class never converged");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("join: {n} members ({} joining) in {join_secs:.2} s, {epochs} epochs after the first", n - 1);

    // Phase 2: fan-out latency at a steady rate.
    let gap = Duration::from_secs_f64(1.0 / args.rate.max(0.1));
    let mut rng_state: u64 = 0x9e37_79b9_7f4a_7c15;
    let started = Instant::now();
    for k in 0..args.messages {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        let from = usize::try_from(rng_state % n as u64).unwrap_or(0);
        members[from].p.say(AppMessage::Chat { text: format!("{} {from} {k}", micros()) });
        let next = started + gap * u32::try_from(k + 1).unwrap_or(u32::MAX);
        while Instant::now() < next {
            for i in 0..members.len() {
                drain(&mut members, i, true);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let want = args.messages;
    wait(&mut members, 600, "latency phase", true, |m| m.got >= want).await?;
    let mut all: Vec<u64> = members.iter().flat_map(|m| m.latencies.iter().copied()).collect();
    all.sort_unstable();
    println!(
        "fan-out: {} lines at {}/s to {} members: {} receipts; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        args.messages,
        args.rate,
        n,
        all.len(),
        pct(&all, 0.5),
        pct(&all, 0.99),
        pct(&all, 1.0)
    );

    // Phase 3: saturation.
    for m in members.iter_mut() {
        m.done_at = None;
    }
    let senders = args.burst_senders.min(n);
    let total = senders * args.burst;
    let t1 = Instant::now();
    for (s, m) in members.iter().enumerate().take(senders) {
        for k in 0..args.burst {
            m.p.say(AppMessage::Chat { text: format!("burst {s} {k}") });
        }
    }
    let base = want;
    wait(&mut members, 1800, "saturation phase", false, |m| m.got >= base + total).await?;
    let last = members.iter().filter_map(|m| m.done_at).max().unwrap_or_else(Instant::now);
    let secs = (last - t1).as_secs_f64();
    println!(
        "saturation: {total} lines from {senders} senders ordered and delivered to all {n} members in {secs:.2} s: \
         {:.0} messages/s ordered, {:.0} deliveries/s",
        total as f64 / secs,
        (total * n) as f64 / secs
    );
    for m in members {
        m.p.close().await;
    }
    drop(server);
    Ok(())
}
