//! `cargo xtask wasm`: builds the browser's e2ee module from scratch on a fresh machine.
//!
//! Adds the wasm32 target, installs wasm-bindgen-cli at exactly the version Cargo.lock holds for the
//! `wasm-bindgen` crate, builds `cloister-e2ee-wasm` with the size-tuned `wasm-release` profile, generates the
//! `web` and `nodejs` bindings (TypeScript types included) under `target/wasm/`, and reports raw and gzip sizes,
//! failing above 2.5 MB raw or 900 KB gzip. No wasm-opt pass: Debian's binaryen (108) turns wasm-bindgen's externref
//! table into one the engine refuses at load (measured 2026-12-07), and the module that ships is the one the Node
//! tests ran.

use anyhow::{bail, Context as _};
use std::path::PathBuf;
use std::process::Command;

const MAX_RAW: u64 = 2_500_000;
const MAX_GZIP: u64 = 900_000;

fn output(cmd: &mut Command) -> Option<String> {
    cmd.output().ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The `wasm-bindgen` crate version in Cargo.lock.
fn locked_bindgen_version() -> anyhow::Result<String> {
    let lock = std::fs::read_to_string(crate::root().join("Cargo.lock")).context("read Cargo.lock")?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "name = \"wasm-bindgen\"" {
            if let Some(v) = lines.next().and_then(|l| l.trim().strip_prefix("version = \"")) {
                return Ok(v.trim_end_matches('"').to_owned());
            }
        }
    }
    bail!("no wasm-bindgen in Cargo.lock")
}

fn ensure_tools() -> anyhow::Result<()> {
    let targets = output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if !targets.lines().any(|t| t.trim() == "wasm32-unknown-unknown") {
        crate::run(Command::new("rustup").args(["target", "add", "wasm32-unknown-unknown"]))?;
    }
    let want = locked_bindgen_version()?;
    let have = output(Command::new("wasm-bindgen").arg("--version")).unwrap_or_default();
    if have.split_whitespace().nth(1) != Some(want.as_str()) {
        eprintln!("xtask: installing wasm-bindgen-cli {want} (have: {:?})", have.trim());
        let version = format!("={want}");
        // --locked first (the CLI's own lockfile); if the registry lacks one of its pinned versions, resolve anew.
        if crate::run(Command::new("cargo").args(["install", "wasm-bindgen-cli", "--version", &version, "--locked"]))
            .is_err()
        {
            crate::run(Command::new("cargo").args(["install", "wasm-bindgen-cli", "--version", &version]))?;
        }
    }
    Ok(())
}

fn gzip_len(path: &std::path::Path) -> anyhow::Result<u64> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -9 -c '{}' | wc -c", path.display()))
        .output()
        .context("gzip")?;
    String::from_utf8_lossy(&out.stdout).trim().parse().context("gzip size")
}

/// Builds the module; returns the directory of the `nodejs` bindings.
pub fn build() -> anyhow::Result<PathBuf> {
    ensure_tools()?;
    crate::run(crate::cargo().args([
        "build",
        "--locked",
        "-p",
        "cloister-e2ee-wasm",
        "--target",
        "wasm32-unknown-unknown",
        "--profile",
        "wasm-release",
    ]))?;
    let wasm = crate::target_dir().join("wasm32-unknown-unknown/wasm-release/cloister_e2ee_wasm.wasm");
    let out = crate::target_dir().join("wasm");
    for target in ["web", "nodejs"] {
        let dir = out.join(target);
        let _ = std::fs::remove_dir_all(&dir);
        crate::run(Command::new("wasm-bindgen").arg(&wasm).args(["--target", target, "--out-dir"]).arg(&dir))?;
    }
    let bg = out.join("web/cloister_e2ee_wasm_bg.wasm");
    let raw = std::fs::metadata(&bg)?.len();
    let gz = gzip_len(&bg)?;
    println!("wasm: {} bytes raw, {} bytes gzip -9 (limits {MAX_RAW} / {MAX_GZIP})", raw, gz);
    if raw > MAX_RAW || gz > MAX_GZIP {
        bail!("the e2ee wasm module is over its size budget");
    }
    Ok(out.join("nodejs"))
}

/// Builds the module and runs its Node tests.
pub fn test() -> anyhow::Result<()> {
    if output(Command::new("node").arg("--version")).is_none() {
        crate::apt_install(&["nodejs"])?;
    }
    let pkg = build()?;
    crate::run(
        Command::new("node")
            .args(["--test", "crates/cloister-e2ee-wasm/tests/"])
            .current_dir(crate::root())
            .env("CLOISTER_WASM_NODE_PKG", &pkg),
    )
}
