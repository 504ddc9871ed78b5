//! CIFAR-10 and CIFAR-100 in their official binary release: fixed-size records of label byte(s)
//! followed by 3,072 pixel bytes, channel-major (1,024 red, 1,024 green, 1,024 blue, rows in
//! order). CIFAR-10 records have one label byte; CIFAR-100 records have a coarse and a fine label
//! byte (pnn uses the fine label, 100 classes).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::archive::read_tar_gz_members;
use super::dataset::ImageSet;
use super::mnist::Split;

const SIDE: usize = 32;
const PIXELS: usize = 3 * SIDE * SIDE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarKind {
    Cifar10,
    Cifar100,
}

impl CifarKind {
    pub fn name(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "CIFAR-10",
            CifarKind::Cifar100 => "CIFAR-100",
        }
    }
    /// Folder of the unpacked release.
    pub fn folder(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "cifar-10-batches-bin",
            CifarKind::Cifar100 => "cifar-100-binary",
        }
    }
    /// The release archive.
    pub fn archive(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "cifar-10-binary.tar.gz",
            CifarKind::Cifar100 => "cifar-100-binary.tar.gz",
        }
    }
    fn label_bytes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 1,
            CifarKind::Cifar100 => 2,
        }
    }
    pub fn num_classes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 10,
            CifarKind::Cifar100 => 100,
        }
    }
    /// Files of a split, in the order their records are read.
    pub fn files(self, split: Split) -> Vec<String> {
        match (self, split) {
            (CifarKind::Cifar10, Split::Train) => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            (CifarKind::Cifar10, Split::Test) => vec!["test_batch.bin".into()],
            (CifarKind::Cifar100, Split::Train) => vec!["train.bin".into()],
            (CifarKind::Cifar100, Split::Test) => vec!["test.bin".into()],
        }
    }
}

/// Parses the records of one file, appending to `set`.
pub fn parse_records(kind: CifarKind, bytes: &[u8], what: &str, set: &mut ImageSet) -> Result<()> {
    let record = kind.label_bytes() + PIXELS;
    if bytes.is_empty() || !bytes.len().is_multiple_of(record) {
        bail!(
            "{what}: {} bytes is not a whole number of {} records ({record} bytes each: {} label byte(s) + 3,072 pixels): \
             the file is truncated or not from the {} binary release",
            bytes.len(),
            kind.name(),
            kind.label_bytes(),
            kind.name()
        );
    }
    for (i, rec) in bytes.chunks_exact(record).enumerate() {
        // CIFAR-100: [coarse, fine, pixels]; CIFAR-10: [label, pixels].
        let label = rec[kind.label_bytes() - 1] as usize;
        if label >= kind.num_classes() {
            bail!(
                "{what}: record {i} has label {label}, but {} has {} classes",
                kind.name(),
                kind.num_classes()
            );
        }
        set.labels.push(label as u16);
        set.images.extend_from_slice(&rec[kind.label_bytes()..]);
    }
    Ok(())
}

fn empty_set(kind: CifarKind) -> ImageSet {
    ImageSet {
        images: Vec::new(),
        labels: Vec::new(),
        channels: 3,
        height: SIDE,
        width: SIDE,
        num_classes: kind.num_classes(),
    }
}

/// Reads a split from the unpacked release folder `dir`.
pub fn load_dir(kind: CifarKind, dir: &Path, split: Split) -> Result<ImageSet> {
    let mut set = empty_set(kind);
    for file in kind.files(split) {
        let path = dir.join(&file);
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "{}: cannot read {} (the release folder {} must hold {})",
                kind.name(),
                path.display(),
                dir.display(),
                kind.files(split).join(", ")
            )
        })?;
        parse_records(kind, &bytes, &path.display().to_string(), &mut set)?;
    }
    Ok(set)
}

/// Reads a split straight from the release archive, without unpacking it.
pub fn load_archive(kind: CifarKind, archive: &Path, split: Split) -> Result<ImageSet> {
    let wanted: Vec<String> = kind
        .files(split)
        .iter()
        .map(|f| format!("{}/{f}", kind.folder()))
        .collect();
    let mut members: HashMap<String, Vec<u8>> = read_tar_gz_members(archive, |name| wanted.iter().any(|w| w == name))?;
    let mut set = empty_set(kind);
    for name in &wanted {
        let bytes = members.remove(name).with_context(|| {
            format!(
                "{} lacks {name}: it is not the {} binary release",
                archive.display(),
                kind.name()
            )
        })?;
        parse_records(kind, &bytes, &format!("{}:{name}", archive.display()), &mut set)?;
    }
    Ok(set)
}

/// Writes records in the release format (for tests and tools that make small sets).
pub fn encode_records(kind: CifarKind, labels: &[u8], images: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, &label) in labels.iter().enumerate() {
        if kind == CifarKind::Cifar100 {
            out.push(label / 5); // a coarse label; pnn reads the fine one
        }
        out.push(label);
        out.extend_from_slice(&images[i * PIXELS..(i + 1) * PIXELS]);
    }
    out
}
