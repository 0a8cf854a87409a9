//! Secret files kept beside the database, never in it (the email pepper, the audit signing key, the delivery
//! service's external-sender key): read only when no one else can read them, created once with mode 0600.

use anyhow::{bail, Context as _};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use zeroize::Zeroizing;

/// The file's bytes, or `None` when it does not exist; refused when its mode lets others read it.
pub fn read_private(path: &Path, what: &str) -> anyhow::Result<Option<Zeroizing<Vec<u8>>>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                bail!("{what} {} is readable by others (mode {mode:o}); chmod 600 it", path.display());
            }
            Ok(Some(bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {what} {}", path.display())),
    }
}

/// Creates the file with `bytes` (mode 0600, never over an existing file) and syncs it.
pub fn create_private(path: &Path, bytes: &[u8], what: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {what} {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}
