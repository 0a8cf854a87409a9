//! `cargo xtask web`: builds the browser classroom (crates/cloister-web) from scratch on a fresh machine.
//!
//! Builds the e2ee wasm module (`cargo xtask wasm`), installs Node.js and npm from Debian if missing, installs the
//! web client's npm packages exactly as package-lock.json pins them (`npm ci`), copies the wasm-bindgen output into
//! `app/src/wasm/` and runs the strict TypeScript check and the Vite build into `crates/cloister-web/dist` (with a
//! gzip copy of each asset), which `cloister serve` serves. `cargo xtask web test` then runs the browser tests in Debian's Chromium.

use anyhow::{bail, Context as _};
use std::path::PathBuf;
use std::process::Command;

fn web_dir() -> PathBuf {
    crate::root().join("crates/cloister-web")
}

fn npm() -> Command {
    let mut c = Command::new("npm");
    c.current_dir(web_dir()).env("CI", "true");
    c
}

/// Node.js and npm (Debian's), if missing.
fn ensure_node() -> anyhow::Result<()> {
    if !crate::have("node") || !crate::have("npm") {
        crate::apt_install(&["nodejs", "npm"])?;
    }
    Ok(())
}

/// Debian's Chromium for the browser tests, if missing.
pub fn ensure_chromium() -> anyhow::Result<()> {
    if !std::path::Path::new("/usr/bin/chromium").exists() {
        eprintln!("xtask: installing Debian's chromium for the browser tests");
        crate::apt_install(&["chromium"])?;
    }
    Ok(())
}

/// Builds the web client (wasm core included) into `crates/cloister-web/dist`.
pub fn build() -> anyhow::Result<()> {
    crate::wasm::build()?;
    build_app()
}

/// Builds the web client around the wasm module `cargo xtask wasm` last built.
pub fn build_app() -> anyhow::Result<()> {
    ensure_node()?;
    let dir = web_dir();
    crate::run(npm().args(["ci", "--no-audit", "--no-fund"]))?;
    let pkg = crate::target_dir().join("wasm/web");
    let dest = dir.join("app/src/wasm");
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::create_dir_all(&dest)?;
    for e in std::fs::read_dir(&pkg).with_context(|| format!("read {}", pkg.display()))? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), dest.join(e.file_name()))?;
        }
    }
    crate::run(npm().args(["run", "build"]))?;
    if !cloister_web_built(&dir) {
        bail!("the web build wrote no dist/index.html");
    }
    gzip_assets(&dir.join("dist/assets"))?;
    println!("web: built {}", dir.join("dist").display());
    Ok(())
}

/// A gzip copy beside each script, style sheet and wasm module (`x.js.gz`), which `cloister serve` sends to browsers
/// that accept gzip; Debian's gzip, reproducible (`-n`: no name or time stamp).
fn gzip_assets(assets: &std::path::Path) -> anyhow::Result<()> {
    for e in std::fs::read_dir(assets).with_context(|| format!("read {}", assets.display()))? {
        let path = e?.path();
        let compressible = path.extension().is_some_and(|x| x == "js" || x == "css" || x == "wasm");
        if compressible {
            crate::run(Command::new("gzip").args(["-9", "-k", "-n", "-f"]).arg(&path))?;
        }
    }
    Ok(())
}

fn cloister_web_built(dir: &std::path::Path) -> bool {
    dir.join("dist/index.html").is_file()
}

/// Runs the browser tests (the web client must be built, the `cloister` and `cloister-client` binaries too).
pub fn test() -> anyhow::Result<()> {
    ensure_chromium()?;
    let bin = crate::target_dir().join("debug");
    crate::run(
        npm()
            .args(["test"])
            .env("CLOISTER_BIN", bin.join("cloister"))
            .env("CLOISTER_CLIENT_BIN", bin.join("cloister-client")),
    )
}

/// `cargo xtask bench web [--rounds N] [--students N]`: the first-frame benchmark (release builds).
pub fn bench(args: &[String]) -> anyhow::Result<()> {
    build()?;
    ensure_chromium()?;
    crate::build_binaries(true)?;
    let bin = crate::target_dir().join("release");
    crate::run(
        Command::new("node")
            .arg("bench/first-frame.mjs")
            .args(args)
            .current_dir(web_dir())
            .env("CLOISTER_BIN", bin.join("cloister"))
            .env("CLOISTER_CLIENT_BIN", bin.join("cloister-client")),
    )
}

pub fn main(args: &[String]) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        None => build(),
        Some("test") => {
            build()?;
            crate::build_binaries(false)?;
            test()
        }
        Some(other) => bail!("unknown `xtask web` argument {other:?} (none, or test)"),
    }
}
