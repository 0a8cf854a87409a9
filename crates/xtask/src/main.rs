//! `cargo xtask`: the project's automation (matklad's cargo-xtask pattern). Every command installs what it needs.
//!
//! - `cargo xtask run [SERVE FLAGS]`: build and start `cloister serve` on the embedded database.
//! - `cargo xtask test`: install test prerequisites (PostgreSQL), then fmt, clippy, docs and every test.
//! - `cargo xtask wasm`: build the browser's e2ee module (wasm-bindgen, size budget).
//! - `cargo xtask web [test]`: build the browser classroom (wasm core, npm packages, Vite) [and run its browser
//!   tests in Debian's Chromium].
//! - `cargo xtask fuzz [--seconds N] [TARGET ...]`: the e2ee core's fuzz targets (cargo-fuzz), N seconds each.
//! - `cargo xtask bench`: account benchmarks (argon2id, logins/s, `GET /api/v1/me` latency); see BENCHMARKS.md.
//! - `cargo xtask bench sfu [--quick]`: the SFU load benchmark beside Janus's videoroom; see BENCHMARKS.md.
//! - `cargo xtask bench web [--rounds N]`: time from opening the session URL to the first decoded teacher frame.

mod bench;
mod bench_sfu;
mod fuzz;
mod wasm;
mod web;

use anyhow::{bail, Context as _};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).expect("xtask lives at crates/xtask").to_path_buf()
}

/// The cargo target directory (`$CARGO_TARGET_DIR`, relative to the workspace root if relative, else `target/`).
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root().join(dir),
        _ => root().join("target"),
    }
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: {:?}", cmd);
    let status = cmd.status().with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} failed with {status}", cmd.get_program());
    }
    Ok(())
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program} >/dev/null 2>&1"))
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Installs Debian packages (`apt-get`, as root or through `sudo -n`).
fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let apt = |args: &[&str]| {
        let mut argv: Vec<&str> = if is_root() { vec![] } else { vec!["sudo", "-n"] };
        argv.push("apt-get");
        argv.extend_from_slice(args);
        let mut c = Command::new(argv[0]);
        c.args(&argv[1..]).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run(&mut apt(&["-q", "update"]))?;
    let mut args = vec!["-q", "-y", "--no-install-recommends", "install"];
    args.extend_from_slice(packages);
    run(&mut apt(&args))
}

fn postgres_installed() -> bool {
    std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.path().join("bin/initdb").exists() && e.path().join("bin/postgres").exists())
        || have("initdb") && have("postgres")
}

fn ensure_postgres() -> anyhow::Result<()> {
    if !postgres_installed() {
        eprintln!("xtask: PostgreSQL is not installed; installing Debian's postgresql for the tests");
        apt_install(&["postgresql", "postgresql-contrib"])?;
    }
    if !postgres_installed() {
        bail!("PostgreSQL is still missing after apt-get install postgresql");
    }
    Ok(())
}

fn test(args: &[String]) -> anyhow::Result<()> {
    ensure_postgres()?;
    let quick = args.iter().any(|a| a == "--quick");
    if !quick {
        run(cargo().args(["fmt", "--all", "--", "--check"]))?;
        run(cargo().args(["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"]))?;
        run(cargo().args(["doc", "--workspace", "--no-deps", "--locked"]).env("RUSTDOCFLAGS", "-D warnings"))?;
    }
    // The system tests start the real binary; build it first so they do not race to build it themselves.
    build_binaries(false)?;
    let extra: Vec<&String> = args.iter().filter(|a| *a != "--quick").collect();
    run(cargo()
        .args(["test", "--workspace", "--locked"])
        .args(extra)
        .env("CLOISTER_BIN", target_dir().join("debug/cloister")))?;
    // The browser's e2ee module: built from scratch, size-checked, and exercised in Node.
    wasm::test()?;
    // The browser classroom: built (TypeScript strict, Vite) and driven in Debian's Chromium against the binary.
    web::build_app()?;
    web::test()?;
    // The parsers of untrusted bytes, fuzzed briefly on every run (longer by hand: `cargo xtask fuzz --seconds 600`).
    if !quick {
        fuzz::main(&["--seconds".to_owned(), "30".to_owned()])?;
    }
    Ok(())
}

/// Builds the `cloister` and `cloister-client` binaries (debug, or release) in one cargo run.
fn build_binaries(release: bool) -> anyhow::Result<()> {
    let bins = ["-p", "cloister-server", "--bin", "cloister", "-p", "cloister-client", "--bin", "cloister-client"];
    let mut c = cargo();
    c.args(["build", "--locked"]);
    if release {
        c.arg("--release");
    }
    run(c.args(bins))
}

fn run_server(args: &[String]) -> anyhow::Result<()> {
    let args = args.strip_prefix(&["--".to_owned()]).unwrap_or(args);
    // The browser classroom first, so the one URL the server prints opens it.
    web::build()?;
    run(cargo().args(["build", "--release", "--locked", "-p", "cloister-server", "--bin", "cloister"]))?;
    let mut cmd = Command::new(target_dir().join("release/cloister"));
    cmd.arg("serve");
    if !args.iter().any(|a| a.starts_with("--data-dir")) && std::env::var_os("CLOISTER_DATA_DIR").is_none() {
        cmd.args(["--data-dir", "cloister-data"]);
    }
    cmd.args(args).current_dir(root());
    eprintln!("xtask: starting cloister; open the printed URL (self-signed certificate: compare its fingerprint)");
    run(&mut cmd)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") => run_server(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("bench") if args.get(1).is_some_and(|a| a == "sfu") => bench_sfu::main(&args[2..]),
        Some("bench") if args.get(1).is_some_and(|a| a == "web") => web::bench(&args[2..]),
        Some("bench") => bench::main(&args[1..]),
        Some("wasm") => wasm::build().map(|_| ()),
        Some("web") => web::main(&args[1..]),
        Some("fuzz") => fuzz::main(&args[1..]),
        Some("install-postgres") => ensure_postgres(),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\
                 \x20 run [FLAGS]       build and start `cloister serve` (embedded database in ./cloister-data)\n\
                 \x20 test [--quick]    install test prerequisites, then fmt, clippy, docs and all tests\n\
                 \x20 bench             account benchmarks (argon2id, logins/s, GET /api/v1/me)\n\
                 \x20 bench sfu [--quick]  SFU load benchmark beside Janus (root; installs janus)\n\
                 \x20 bench web [--rounds N]  first decoded teacher frame after opening the session URL, 10 students in\n\
                 \x20 fuzz [--seconds N] [TARGET..]  run the e2ee fuzz targets N seconds each (default 30)
                 \x20 wasm              build the browser e2ee module (target/wasm/{{web,nodejs}}), check its size\n\
                 \x20 web [test]        build the browser classroom (crates/cloister-web/dist) [and run its browser tests]\n\
                 \x20 install-postgres  install Debian's PostgreSQL if missing"
            );
            bail!("unknown or missing command")
        }
    }
}
