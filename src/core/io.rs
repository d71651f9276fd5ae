//! Output files are written whole or not at all.

use crate::error::{CmlError, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

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

/// Writes a CSV (header plus rows) whole or not at all, and records it.
pub fn write_csv(path: &Path, header: &str, rows: &[String], files: &mut Vec<PathBuf>) -> Result<()> {
    // Fields are not quoted: a row whose field count differs from the header's (a name with a
    // comma) would shift its columns, so it is an error before anything is written.
    let columns = header.split(',').count();
    if let Some(bad) = rows.iter().find(|r| r.split(',').count() != columns) {
        return Err(CmlError::invalid(
            format!("a row of {}", path.display()),
            bad,
            format!("{columns} comma-separated fields, as in the header {header}"),
        ));
    }
    let mut text = format!("{header}\n");
    for r in rows {
        text.push_str(r);
        text.push('\n');
    }
    write_atomically(path, text.as_bytes())?;
    files.push(path.to_path_buf());
    Ok(())
}
