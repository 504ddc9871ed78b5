//! Image-folder trees, as torchvision's ImageFolder: `<root>/{train,test}/<class>/*.{png,jpg,jpeg}`,
//! classes in sorted order, each image decoded once (in parallel) and kept in memory as RGB u8.
//! The tree may also be read straight from a .tar.gz archive of it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use rayon::prelude::*;

use super::archive::for_each_member;
use super::dataset::ImageSet;

fn is_image(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".png") || lower.ends_with(".jpg") || lower.ends_with(".jpeg")
}

/// Encoded images of one split, by class name.
type Encoded = BTreeMap<String, Vec<(String, Vec<u8>)>>;

/// Both splits of a tree found in a folder or archive.
pub struct FolderSplits {
    pub train: ImageSet,
    pub test: ImageSet,
    pub classes: Vec<String>,
}

/// Reads `<dir>/train` and `<dir>/test`.
pub fn load_dir(dir: &Path) -> Result<FolderSplits> {
    let mut splits = [Encoded::new(), Encoded::new()];
    for (i, split) in ["train", "test"].iter().enumerate() {
        let split_dir = dir.join(split);
        let entries = std::fs::read_dir(&split_dir).with_context(|| {
            format!(
                "cannot read {}: an image folder needs {0}/train/<class>/*.jpg and {0}/test/<class>/*.jpg",
                split_dir.display(),
            )
        })?;
        for class_dir in entries {
            let class_dir = class_dir?.path();
            if !class_dir.is_dir() {
                continue;
            }
            let class = class_dir.file_name().unwrap().to_string_lossy().to_string();
            let files = splits[i].entry(class.clone()).or_default();
            let mut names: Vec<_> = std::fs::read_dir(&class_dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            names.sort();
            for path in names {
                let name = path.to_string_lossy().to_string();
                if path.is_file() && is_image(&name) {
                    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {name}"))?;
                    files.push((name, bytes));
                }
            }
        }
    }
    let [train, test] = splits;
    decode_splits(train, test, &dir.display().to_string())
}

/// Reads a .tar.gz of such a tree (any leading folders: `x/train/<class>/file.jpg`).
pub fn load_archive(archive: &Path) -> Result<FolderSplits> {
    let (mut train, mut test) = (Encoded::new(), Encoded::new());
    for_each_member(archive, is_image, |name, bytes| {
        let parts: Vec<&str> = name.split('/').collect();
        if parts.len() >= 3 {
            let (split, class) = (parts[parts.len() - 3], parts[parts.len() - 2]);
            let target = match split {
                "train" => &mut train,
                "test" => &mut test,
                _ => return Ok(()),
            };
            target
                .entry(class.to_string())
                .or_default()
                .push((name.to_string(), bytes));
        }
        Ok(())
    })?;
    for files in train.values_mut().chain(test.values_mut()) {
        files.sort_by(|a, b| a.0.cmp(&b.0));
    }
    decode_splits(train, test, &archive.display().to_string())
}

/// Builds both splits from encoded files held in memory: (class, file name, bytes) each. The
/// same checks and decoding as a folder on disk (the fuzz target uses it).
pub fn from_memory(
    train: Vec<(String, String, Vec<u8>)>,
    test: Vec<(String, String, Vec<u8>)>,
    source: &str,
) -> Result<FolderSplits> {
    let group = |files: Vec<(String, String, Vec<u8>)>| {
        let mut map = Encoded::new();
        for (class, name, bytes) in files {
            map.entry(class).or_default().push((name, bytes));
        }
        map
    };
    decode_splits(group(train), group(test), source)
}

fn decode_splits(train: Encoded, test: Encoded, source: &str) -> Result<FolderSplits> {
    if train.is_empty() {
        bail!("{source}: no training images found: expected train/<class>/*.{{png,jpg,jpeg}}");
    }
    if test.is_empty() {
        bail!("{source}: no test images found: expected test/<class>/*.{{png,jpg,jpeg}}");
    }
    let classes: Vec<String> = train.keys().cloned().collect();
    let test_classes: BTreeSet<&String> = test.keys().collect();
    if test_classes != classes.iter().collect() {
        let extra: Vec<_> = test_classes.iter().filter(|c| !train.contains_key(**c)).collect();
        let missing: Vec<_> = classes.iter().filter(|c| !test.contains_key(*c)).collect();
        bail!(
            "{source}: the test set's classes differ from the training set's (only in test: {extra:?}, only in train: {missing:?}): \
             both must have the same class folders"
        );
    }
    for (split, map) in [("train", &train), ("test", &test)] {
        if let Some((class, _)) = map.iter().find(|(_, files)| files.is_empty()) {
            bail!("{source}: the class folder {split}/{class} holds no .png/.jpg/.jpeg image: remove it or add images");
        }
    }
    let train = decode(train, &classes, source)?;
    let test = decode(test, &classes, source)?;
    if (train.height, train.width) != (test.height, test.width) {
        bail!(
            "{source}: training images are {}x{} but test images are {}x{}: all images must have one size",
            train.width,
            train.height,
            test.width,
            test.height
        );
    }
    Ok(FolderSplits { train, test, classes })
}

fn decode(split: Encoded, classes: &[String], source: &str) -> Result<ImageSet> {
    let items: Vec<(u16, String, Vec<u8>)> = split
        .into_iter()
        .flat_map(|(class, files)| {
            let label = classes.iter().position(|c| *c == class).unwrap() as u16;
            files.into_iter().map(move |(name, bytes)| (label, name, bytes))
        })
        .collect();
    let decoded: Vec<Result<(u16, image::RgbImage)>> = items
        .into_par_iter()
        .map(|(label, name, bytes)| {
            let img = image::load_from_memory(&bytes)
                .with_context(|| format!("{name} cannot be decoded as an image (damaged, or not PNG/JPEG)"))?;
            Ok((label, img.to_rgb8()))
        })
        .collect();
    let mut set = ImageSet {
        images: Vec::new(),
        labels: Vec::new(),
        channels: 3,
        height: 0,
        width: 0,
        num_classes: classes.len(),
    };
    let count = decoded.len();
    for item in decoded {
        let (label, img) = item?;
        let (w, h) = (img.width() as usize, img.height() as usize);
        if set.labels.is_empty() {
            set.width = w;
            set.height = h;
            // Room for exactly this split. (It reserved room for 1024 images of the first one's
            // size: the folder fuzzer's 973-byte JPEG declaring 224x65497 pixels asked for 45 GB.)
            let bytes = (w * h * 3)
                .checked_mul(count)
                .with_context(|| format!("{source}: {count} images of {w}x{h} pixels do not fit in memory"))?;
            set.images
                .try_reserve_exact(bytes)
                .map_err(|_| anyhow::anyhow!("{source}: {count} images of {w}x{h} pixels do not fit in memory"))?;
        } else if (w, h) != (set.width, set.height) {
            bail!(
                "{source}: images have different sizes ({}x{} and {w}x{h}): resize them to one size",
                set.width,
                set.height
            );
        }
        // HWC (interleaved RGB) -> CHW, the layout of every set in pnn.
        let raw = img.into_raw();
        let plane = w * h;
        let start = set.images.len();
        set.images.resize(start + 3 * plane, 0);
        for (p, px) in raw.chunks_exact(3).enumerate() {
            for c in 0..3 {
                set.images[start + c * plane + p] = px[c];
            }
        }
        set.labels.push(label);
    }
    Ok(set)
}
