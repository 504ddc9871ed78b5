//! The IDX format of MNIST-style files: a 4-byte magic (0, 0, type, ndim), ndim big-endian u32
//! sizes, then the values. Files may be gzipped (as the official mirrors ship them).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{Context, Result, bail};
use flate2::read::GzDecoder;

/// IDX type code for unsigned bytes, the only one MNIST-style sets use.
const IDX_U8: u8 = 0x08;

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads a whole file, transparently un-gzipping it when it starts with the gzip magic.
pub fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut raw = Vec::new();
    reader
        .read_to_end(&mut raw)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(raw.as_slice()).read_to_end(&mut out).with_context(|| {
            format!(
                "{} looks gzipped but does not decompress: the file is damaged or truncated",
                path.display()
            )
        })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses IDX bytes. `expected_ndim` is 3 for images, 1 for labels.
pub fn parse_idx(bytes: &[u8], expected_ndim: usize, what: &str) -> Result<IdxArray> {
    if bytes.len() < 4 {
        bail!(
            "{what}: {} bytes is too short for an IDX file (it starts with a 4-byte magic number)",
            bytes.len()
        );
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        bail!(
            "{what}: wrong magic number {:02x} {:02x} {:02x} {:02x}: an IDX file starts with 00 00 08 {expected_ndim:02x}",
            bytes[0],
            bytes[1],
            bytes[2],
            bytes[3]
        );
    }
    if bytes[2] != IDX_U8 {
        bail!(
            "{what}: IDX value type 0x{:02x} is not supported: MNIST-style files hold unsigned bytes (0x08)",
            bytes[2]
        );
    }
    let ndim = bytes[3] as usize;
    if ndim != expected_ndim {
        bail!("{what}: IDX file has {ndim} dimensions, expected {expected_ndim} (magic 00 00 08 {expected_ndim:02x})");
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        bail!(
            "{what}: the file ends inside its header ({} of {header} bytes)",
            bytes.len()
        );
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    // Checked: three 32-bit sizes can multiply past 64 bits, and a wrapped product could
    // match the body's length by accident.
    let Some(expected) = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)) else {
        bail!("{what}: header says {dims:?}, more values than any file can hold: the file is damaged");
    };
    let body = &bytes[header..];
    if body.len() != expected {
        bail!(
            "{what}: header says {dims:?} = {expected} values but the file holds {}: the file is truncated or not this data set",
            body.len()
        );
    }
    Ok(IdxArray {
        dims,
        data: body.to_vec(),
    })
}

pub fn read_idx(path: &Path, expected_ndim: usize) -> Result<IdxArray> {
    let bytes = read_maybe_gzip(path)?;
    parse_idx(&bytes, expected_ndim, &path.display().to_string())
}

/// Encodes an IDX u8 array (used by tests and tools that write small data sets).
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, IDX_U8, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&(*d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}
