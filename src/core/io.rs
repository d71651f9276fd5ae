//! Output files are written whole or not at all.

use crate::error::{CmlError, Result};
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to a temporary file in the target's folder (created as needed), then renames
/// it over `path`: readers see the old file or the new one, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically_with(path, bytes, || Ok(()))
}

/// [`write_atomically`] with a hook run between writing the temporary file and renaming it:
/// an error there stands for a crash mid-write (tests use it to show the old file survives).
pub fn write_atomically_with(
    path: &Path,
    bytes: &[u8],
    before_rename: impl FnOnce() -> std::io::Result<()>,
) -> Result<()> {
    let io_err = |action, source| CmlError::Io {
        action,
        path: path.into(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| io_err("cannot create the folder of", e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        before_rename()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err("cannot write", e));
    }
    Ok(())
}
