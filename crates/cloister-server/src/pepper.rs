//! Loading (or creating) the email pepper, which lives outside the database.

use anyhow::{bail, Context as _};
use cloister_accounts::EmailHasher;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use zeroize::Zeroizing;

/// Loads the pepper from `CLOISTER_PEPPER` (the text itself) or from `path`, creating the file with mode 0600 and a
/// fresh random key when it does not exist. A file readable by group or others is refused.
pub fn load_or_create(path: &Path) -> anyhow::Result<(EmailHasher, bool)> {
    if let Ok(text) = std::env::var("CLOISTER_PEPPER") {
        let text = Zeroizing::new(text);
        return Ok((EmailHasher::from_pepper_text(&text).context("CLOISTER_PEPPER is not a valid pepper")?, false));
    }
    match std::fs::metadata(path) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                bail!("pepper file {} is readable by others; run chmod 600 on it", path.display());
            }
            let text = Zeroizing::new(
                std::fs::read_to_string(path).with_context(|| format!("cannot read pepper file {}", path.display()))?,
            );
            let hasher = EmailHasher::from_pepper_text(&text)
                .with_context(|| format!("pepper file {} is not valid", path.display()))?;
            Ok((hasher, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = EmailHasher::generate_pepper_text("k1").context("generate pepper")?;
            crate::keyfile::create_private(path, text.as_bytes(), "pepper file")?;
            Ok((EmailHasher::from_pepper_text(&text).context("generated pepper")?, true))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read pepper file {}", path.display())),
    }
}
