//! MNIST and Fashion-MNIST from their IDX files.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::dataset::ImageSet;
use super::idx::{IdxArray, read_idx};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// Finds `name` or `name.gz` in `root` or in the sub-folders torchvision uses.
fn find_file(root: &Path, subdirs: &[&str], name: &str) -> Option<PathBuf> {
    let mut dirs = vec![root.to_path_buf()];
    dirs.extend(subdirs.iter().map(|s| root.join(s)));
    for dir in &dirs {
        for candidate in [name.to_string(), format!("{name}.gz")] {
            let path = dir.join(&candidate);
            if path.is_file() {
                return Some(path);
            }
        }
    }
    None
}

/// Loads one split of an MNIST-layout set from `root`. `set_name` names it in messages and
/// decides where torchvision would have put it (`<root>/<set_name>/raw`).
pub fn load_mnist_layout(root: &Path, split: Split, set_name: &str) -> Result<ImageSet> {
    let subdirs = [format!("{set_name}/raw"), set_name.to_string(), set_name.to_lowercase()];
    let subdirs: Vec<&str> = subdirs.iter().map(String::as_str).collect();
    let images_name = format!("{}-images-idx3-ubyte", split.prefix());
    let labels_name = format!("{}-labels-idx1-ubyte", split.prefix());
    let locate = |name: &str| {
        find_file(root, &subdirs, name).with_context(|| {
            format!(
                "{set_name}: {name} (or {name}.gz) not found in {} (nor in its {set_name}/raw folder). \
                 Put the four IDX files of the {set_name} release (train-images-idx3-ubyte, train-labels-idx1-ubyte, \
                 t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, gzipped or not) there, or point --dataroot at them",
                root.display()
            )
        })
    };
    let images_path = locate(&images_name)?;
    let labels_path = locate(&labels_name)?;
    let images = read_idx(&images_path, 3)?;
    let labels = read_idx(&labels_path, 1)?;
    assemble(
        images,
        labels,
        set_name,
        &images_path.display().to_string(),
        &labels_path.display().to_string(),
    )
}

/// One split from its parsed image and label files (named in messages by `images_name` and
/// `labels_name`), checked for agreeing counts, labels 0-9 and a usable image size.
pub fn assemble(
    images: IdxArray,
    labels: IdxArray,
    set_name: &str,
    images_name: &str,
    labels_name: &str,
) -> Result<ImageSet> {
    if images.dims[0] != labels.dims[0] {
        bail!(
            "{set_name}: {images_name} holds {} images but {labels_name} holds {} labels: the files are from different releases or damaged",
            images.dims[0],
            labels.dims[0]
        );
    }
    if images.dims[1] == 0 || images.dims[2] == 0 {
        bail!(
            "{set_name}: {images_name} holds images of {}x{} pixels: the file is damaged or not an image file",
            images.dims[2],
            images.dims[1]
        );
    }
    if let Some(bad) = labels.data.iter().find(|&&l| l >= 10) {
        bail!("{set_name}: {labels_name} holds label {bad}, expected 0-9");
    }
    Ok(ImageSet {
        images: images.data,
        labels: labels.data.iter().map(|&l| l as u16).collect(),
        channels: 1,
        height: images.dims[1],
        width: images.dims[2],
        num_classes: 10,
    })
}
