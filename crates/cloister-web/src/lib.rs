//! The browser classroom's build, as the server finds and serves it.
//!
//! The web app itself is TypeScript under `app/` (strict mode, built with Vite by `cargo xtask web` into `dist/`,
//! the e2ee core included as wasm). This crate only says where that build is and which headers go with it; the
//! server (`cloister serve`) serves the files.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

/// The `dist/` directory of this checkout (where `cargo xtask web` writes the build).
pub fn default_dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dist")
}

/// Whether `dir` holds a build (its `index.html`).
pub fn is_built(dir: &Path) -> bool {
    dir.join("index.html").is_file()
}

/// The Content-Security-Policy of every answer: scripts, styles, workers, wasm and connections from this origin
/// only, no inline script, no framing. `'wasm-unsafe-eval'` lets the page compile the e2ee module; it allows no
/// JavaScript `eval`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; \
     style-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; worker-src 'self'; \
     manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `Permissions-Policy`: the camera, microphone and screen capture for this origin only, nothing else.
pub const PERMISSIONS_POLICY: &str =
    "camera=(self), microphone=(self), display-capture=(self), geolocation=(), payment=(), usb=()";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_forbids_inline_script_and_framing() {
        assert!(CONTENT_SECURITY_POLICY.contains("script-src 'self' 'wasm-unsafe-eval';"));
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-inline"));
        assert!(CONTENT_SECURITY_POLICY.contains("frame-ancestors 'none'"));
        assert!(default_dist().ends_with("cloister-web/dist"));
    }
}
