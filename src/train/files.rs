//! Writing result files so that a crash never leaves a half-written one: write a temporary file
//! beside the target, then rename it over the target (atomic on one file system).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let result = (|| -> Result<()> {
        let mut file = fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        file.write_all(bytes)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("cannot flush {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Fills a fresh temporary folder with `fill`, then puts it in place of `dir`: the previous
/// content of `dir` stays intact until the new one is complete. Between the two renames `dir`
/// is absent; a process killed there leaves the previous content beside it, which
/// [`recover_replaced_dir`] puts back.
pub fn replace_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_path(dir);
    let old = dir.with_file_name(format!(
        ".{}.old-{}",
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    if let Err(e) = fill(&tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        fs::rename(dir, &old).with_context(|| format!("cannot move aside {}", dir.display()))?;
    }
    fs::rename(&tmp, dir).with_context(|| format!("cannot move {} to {}", tmp.display(), dir.display()))?;
    let _ = fs::remove_dir_all(&old);
    Ok(())
}

/// Puts back the previous content of `dir` when a process was killed while
/// [`replace_dir_atomic`] replaced it (after moving it aside, before moving the new one in).
/// Returns the folder it put back, if any.
pub fn recover_replaced_dir(dir: &Path) -> Result<Option<PathBuf>> {
    if dir.exists() {
        return Ok(None);
    }
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Ok(None);
    };
    let prefix = format!(".{}.old-", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    }) else {
        return Ok(None);
    };
    let newest = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix) && e.path().is_dir())
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
    let Some(old) = newest else {
        return Ok(None);
    };
    fs::rename(old.path(), dir)
        .with_context(|| format!("cannot put {} back as {}", old.path().display(), dir.display()))?;
    Ok(Some(old.path()))
}

/// `e` with "the disk is full" put first when an I/O error in its chain says so (ENOSPC, or
/// EDQUOT: a quota reached), so that the reason is the first thing read.
pub fn name_full_disk(e: anyhow::Error) -> anyhow::Error {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    // Some libraries pass the I/O error on as text (burn's recorder), so its words count too.
    let full = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| matches!(io.raw_os_error(), Some(ENOSPC | EDQUOT)))
            || c.to_string().contains("No space left on device")
            || c.to_string().contains("Disk quota exceeded")
    });
    if full { e.context("the disk is full") } else { e }
}
