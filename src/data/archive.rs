//! Reading members of a .tar.gz release archive in memory, so a user never has to unpack one.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{Context, Result};
use flate2::read::GzDecoder;

/// Visits every regular file of the archive whose (normalised) path `want` accepts.
pub fn for_each_member(
    archive: &Path,
    mut want: impl FnMut(&str) -> bool,
    mut visit: impl FnMut(&str, Vec<u8>) -> Result<()>,
) -> Result<()> {
    let file = File::open(archive).with_context(|| format!("cannot open {}", archive.display()))?;
    let mut tar = tar::Archive::new(GzDecoder::new(BufReader::new(file)));
    let damaged = || format!("{} is damaged or truncated (not a complete .tar.gz)", archive.display());
    for entry in tar.entries().with_context(damaged)? {
        let mut entry = entry.with_context(damaged)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .with_context(damaged)?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if !want(&name) {
            continue;
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).with_context(damaged)?;
        visit(&name, bytes)?;
    }
    Ok(())
}

/// The wanted members, by path.
pub fn read_tar_gz_members(archive: &Path, want: impl FnMut(&str) -> bool) -> Result<HashMap<String, Vec<u8>>> {
    let mut out = HashMap::new();
    for_each_member(archive, want, |name, bytes| {
        out.insert(name.to_string(), bytes);
        Ok(())
    })?;
    Ok(out)
}
