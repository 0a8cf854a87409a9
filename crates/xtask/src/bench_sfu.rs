//! `cargo xtask bench sfu [--quick] [--window S]`: the SFU load benchmark beside Janus (BENCHMARKS.md, "SFU").
//!
//! 1. Builds `cloister-bench` (release): `sfu-host` (the `cloister-sfu` crate behind a stdin/stdout signaling
//!    line protocol) and `sfu-load` (the str0m load generator). Installs Debian's `janus` if it is missing.
//! 2. Janus's ICE (libnice) will not use the loopback interface, so both SFUs and the generator use a local
//!    address on a veth made for the run (`clbench0`, 10.203.0.1/32). The kernel routes a local address through the
//!    loopback device (`ip route get 10.203.0.1` says `local ... dev lo`): nothing leaves the machine, and the path
//!    is the loopback path. Without root both fall back to 127.0.0.1 and Janus is skipped.
//! 3. Measures the floors (one `send_to` of 1,200 bytes from core 0 while core 1 drains, and the same bytes four
//!    datagrams to a UDP GSO send, as the SFU sends a frame to one subscriber), then for N in 25, 100,
//!    400, 1,000 runs each SFU (alternating at each N) pinned to core 0 with the generator pinned to core 1, then
//!    bisects, for each SFU, between the largest
//!    N that meets the bar (seq-gap loss and undelivered packets each at most 0.1%, p99 added latency at most 5 ms,
//!    every subscriber connected) and the next grid point that does not.
//! 4. Prints a Markdown table; every run's JSON goes to `$TARGET/bench-sfu.jsonl`.

use anyhow::Context as _;
use serde_json::Value;
use std::process::Command;

const IP: &str = "10.203.0.1";
const GRID: [usize; 4] = [25, 100, 400, 1000];

fn veth() -> bool {
    let _ = Command::new("ip").args(["link", "del", "clbench0"]).output();
    let ok = |args: &[&str]| Command::new("ip").args(args).status().is_ok_and(|s| s.success());
    ok(&["link", "add", "clbench0", "type", "veth", "peer", "name", "clbench1"])
        && ok(&["addr", "add", &format!("{IP}/32"), "dev", "clbench0"])
        && ok(&["link", "set", "clbench0", "up"])
        && ok(&["link", "set", "clbench1", "up"])
}

fn janus_installed() -> bool {
    if Command::new("janus").arg("--version").output().is_ok() {
        return true;
    }
    eprintln!("xtask: installing Debian's janus");
    let apt = |args: &[&str]| {
        Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive").status().is_ok_and(|s| s.success())
    };
    (apt(&["install", "-y", "janus"]) || (apt(&["update"]) && apt(&["install", "-y", "janus"])))
        && Command::new("janus").arg("--version").output().is_ok()
}

fn load(args: &[&str]) -> anyhow::Result<Value> {
    let bin = crate::target_dir().join("release/sfu-load");
    let out = Command::new("taskset")
        .args(["-c", "1"])
        .arg(&bin)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| {
        format!("sfu-load {args:?} printed no result: {}", String::from_utf8_lossy(&out.stderr).trim())
    })
}

fn passes(v: &Value) -> bool {
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    v["connected"].as_u64() == v["n"].as_u64()
        && f("loss") <= 0.001
        && f("delivery") >= 0.999
        && v["added_latency_us"]["p99"].as_f64().unwrap_or(f64::INFINITY) <= 5_000.0
}

struct Target {
    name: &'static str,
    args: Vec<String>,
    runs: Vec<Value>,
}

impl Target {
    fn run(&mut self, n: usize, window: u64, ip: &str, log: &mut std::fs::File) -> anyhow::Result<Value> {
        use std::io::Write as _;
        let (n_s, w_s) = (n.to_string(), window.to_string());
        let mut args: Vec<&str> = vec!["run", "--n", &n_s, "--window", &w_s, "--ip", ip, "--sfu-cpu", "0"];
        args.extend(self.args.iter().map(String::as_str));
        let v = load(&args)?;
        writeln!(log, "{v}")?;
        eprintln!(
            "xtask: {} N={n}: {:.1} us/packet, p99 {} us, loss {:.4}%, delivered {:.3}%, core {:.0}% -> {}",
            self.name,
            v["cpu_us_per_egress_packet"].as_f64().unwrap_or(0.0),
            v["added_latency_us"]["p99"],
            v["loss"].as_f64().unwrap_or(1.0) * 100.0,
            v["delivery"].as_f64().unwrap_or(0.0) * 100.0,
            v["sfu_cpu_util"].as_f64().unwrap_or(0.0) * 100.0,
            if passes(&v) { "meets the bar" } else { "misses the bar" }
        );
        self.runs.push(v.clone());
        Ok(v)
    }

    /// The largest N meeting the bar: from the grid's runs, then a bisection to the next grid point that misses it.
    fn largest(&mut self, window: u64, ip: &str, steps: usize, log: &mut std::fs::File) -> anyhow::Result<usize> {
        let mut best = 0;
        let mut fail = None;
        for n in GRID {
            let run = self.runs.iter().find(|v| v["n"].as_u64() == Some(n as u64));
            if run.is_some_and(passes) {
                best = n;
            } else {
                fail = Some(n);
                break;
            }
        }
        let Some(mut hi) = fail else { return Ok(best) };
        let mut lo = best;
        for _ in 0..steps {
            let mid = (lo + hi) / 2;
            if mid <= lo || hi - lo <= (lo / 10).max(2) {
                break;
            }
            if passes(&self.run(mid, window, ip, log)?) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }
}

fn row(v: &Value) -> String {
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    format!(
        "| {} | {} | {:.2} | {:.0} | {} / {} | {:.3}% | {:.3}% | {:.0}% | {:.0}% | {:.0} |",
        v["target"].as_str().unwrap_or("?"),
        v["n"],
        f("cpu_us_per_egress_packet"),
        f("egress_packets_per_cpu_s"),
        v["added_latency_us"]["p50"],
        v["added_latency_us"]["p99"],
        f("loss") * 100.0,
        (1.0 - f("delivery")).max(0.0) * 100.0,
        f("sfu_cpu_util") * 100.0,
        f("gen_busy_util") * 100.0,
        f("rss_per_sub") / 1024.0,
    )
}

pub fn main(args: &[String]) -> anyhow::Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let window: u64 = args
        .iter()
        .position(|a| a == "--window")
        .and_then(|i| args.get(i + 1))
        .and_then(|w| w.parse().ok())
        .unwrap_or(if quick { 5 } else { 10 });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    anyhow::ensure!(cores >= 2, "the SFU benchmark pins the SFU and the generator to two different cores");
    crate::run(crate::cargo().args(["build", "--release", "--locked", "-p", "cloister-bench"]))?;
    let host = crate::target_dir().join("release/sfu-host");
    let ip = if veth() { IP } else { "127.0.0.1" };
    let janus = ip == IP && janus_installed();
    if !janus {
        eprintln!("xtask: Janus is skipped (needs root for the veth address, and Debian's janus package)");
    }
    let log_path = crate::target_dir().join("bench-sfu.jsonl");
    let mut log = std::fs::File::create(&log_path)?;
    let floor = load(&["floor", "--sfu-cpu", "0", "--ip", ip])?;
    let floor_us = floor["us_per_send"].as_f64().unwrap_or(f64::NAN);
    let gso_floor_us = floor["gso4_us_per_datagram"].as_f64().unwrap_or(f64::NAN);
    eprintln!("xtask: loopback floor {floor_us:.2} us per 1,200-byte send_to, {gso_floor_us:.2} us per datagram in GSO sends of 4");
    let mut targets = vec![Target {
        name: "cloister",
        args: vec!["--target".into(), "cloister".into(), "--host".into(), host.display().to_string()],
        runs: Vec::new(),
    }];
    if janus {
        // One event loop: Janus's own setting for a fixed thread pool, and its best on one core (its default, a
        // thread per handle, measured 2.4x the CPU per packet at N=100 on this machine; BENCHMARKS.md).
        targets.push(Target {
            name: "janus",
            args: vec!["--target".into(), "janus".into(), "--janus-loops".into(), "1".into()],
            runs: Vec::new(),
        });
    }
    // The grid with the two SFUs interleaved (this VM's speed drifts between minutes), then each one's bisection.
    for n in GRID {
        for t in &mut targets {
            t.run(n, window, ip, &mut log)?;
        }
    }
    let steps = if quick { 0 } else { 4 };
    let mut largest = Vec::new();
    for t in &mut targets {
        largest.push(t.largest(window, ip, steps, &mut log)?);
    }
    if ip == IP {
        let _ = Command::new("ip").args(["link", "del", "clbench0"]).status();
    }
    println!(
        "\nloopback floor: {floor_us:.2} us per send_to of 1,200 bytes, {gso_floor_us:.2} us per datagram in GSO sends of 4 \
         ({floor})\n"
    );
    println!(
        "| SFU | N | CPU us / egress packet | egress packets / CPU-second | added latency p50 / p99 (us) | seq loss | \
         undelivered | SFU core | generator busy | RSS / subscriber (KiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for t in &targets {
        let mut runs = t.runs.clone();
        runs.sort_by_key(|v| v["n"].as_u64().unwrap_or(0));
        for v in &runs {
            println!("{}", row(v));
        }
    }
    println!();
    for (t, n) in targets.iter().zip(&largest) {
        println!("{}: largest N meeting the bar: {n}", t.name);
    }
    if janus {
        for n in GRID {
            let at = |t: &Target| {
                t.runs.iter().find(|v| v["n"].as_u64() == Some(n as u64)).and_then(|v| {
                    let us = v["cpu_us_per_egress_packet"].as_f64()?;
                    (us > 0.0).then_some(us)
                })
            };
            if let (Some(ours), Some(theirs)) = (at(&targets[0]), at(&targets[1])) {
                println!(
                    "N={n}: CPU per egress packet ours / Janus = {:.2}; ours / floor = {:.2}; ours / GSO floor = {:.2}",
                    ours / theirs,
                    ours / floor_us,
                    ours / gso_floor_us
                );
            }
        }
    }
    println!("\nruns: {}", log_path.display());
    Ok(())
}
