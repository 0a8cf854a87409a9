//! `cargo xtask fuzz [--seconds N] [TARGET ...]`: runs the e2ee core's cargo-fuzz targets (crates/cloister-e2ee/fuzz,
//! a workspace of its own) for N seconds each (default 30), as the test command does on every run.
//!
//! Installs cargo-fuzz at a pinned version into `$HOME/.cache/cloister-tools` when missing. The machine's one toolchain
//! is stable, and cargo-fuzz needs nightly flags (`-Zsanitizer=address`): `RUSTC_BOOTSTRAP=1` allows them. The fuzz
//! build goes into `<target dir>/fuzz`. A crash fails the command and leaves the input under
//! crates/cloister-e2ee/fuzz/artifacts/; the committed seeds are in crates/cloister-e2ee/fuzz/seeds/.

use anyhow::{bail, Context as _};
use std::path::PathBuf;
use std::process::Command;

const CARGO_FUZZ_VERSION: &str = "0.13.2";
pub const TARGETS: [&str; 3] = ["frame_open", "app_message", "group_process"];

fn tools_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/cloister-tools")
}

fn cargo_fuzz() -> anyhow::Result<PathBuf> {
    let bin = tools_dir().join("bin/cargo-fuzz");
    let current =
        Command::new(&bin).arg("--version").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if !current.is_some_and(|v| v.contains(CARGO_FUZZ_VERSION)) {
        eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} into {}", tools_dir().display());
        crate::run(
            Command::new("cargo")
                .args(["install", "cargo-fuzz", "--locked", "--version", CARGO_FUZZ_VERSION])
                .arg("--root")
                .arg(tools_dir()),
        )?;
    }
    Ok(bin)
}

pub fn main(args: &[String]) -> anyhow::Result<()> {
    let mut seconds: u64 = 30;
    let mut targets: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => seconds = it.next().context("--seconds needs a value")?.parse().context("--seconds N")?,
            t if TARGETS.contains(&t) => targets.push(t.to_owned()),
            other => bail!("unknown fuzz argument {other:?} (targets: {})", TARGETS.join(", ")),
        }
    }
    if targets.is_empty() {
        targets = TARGETS.iter().map(|t| (*t).to_owned()).collect();
    }
    let bin = cargo_fuzz()?;
    let dir = crate::root().join("crates/cloister-e2ee/fuzz");
    for target in &targets {
        let corpus = dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let mut cmd = Command::new(&bin);
        cmd.current_dir(&dir)
            .env("RUSTC_BOOTSTRAP", "1")
            .env("CARGO_TARGET_DIR", crate::target_dir().join("fuzz"))
            .args(["fuzz", "run", target])
            .arg(&corpus)
            .arg(dir.join("seeds").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-print_final_stats=1");
        crate::run(&mut cmd).with_context(|| {
            format!("fuzz target {target} failed (see crates/cloister-e2ee/fuzz/artifacts/{target}/)")
        })?;
    }
    Ok(())
}
