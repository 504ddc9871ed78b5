//! Data sets: finding them under `--dataroot` (or downloading them), reading them, and batching
//! them for the model.

pub mod archive;
pub mod augment;
pub mod cifar;
pub mod dataset;
pub mod download;
pub mod folder;
pub mod idx;
pub mod loader;
pub mod mnist;

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

pub use dataset::{ImageSet, Normalization};
pub use loader::{Batch, Loader, Order};

use crate::config::{Config, DatasetName};
use cifar::CifarKind;
use mnist::Split;

/// Seed of `--train-subset` / `--test-subset` draws: fixed, so every seed of an experiment
/// sees the same images.
const SUBSET_SEED: u64 = 0x5eed;

/// Training and test sets of a configuration, with how they are fed to the model.
pub struct Data {
    pub train: ImageSet,
    pub test: ImageSet,
    pub normalization: Normalization,
    /// Random crop and flip on the training set (the reference does it for CIFAR).
    pub augment: bool,
    /// Where the training set was read from, for the record.
    pub source: String,
}

impl Data {
    /// The training loader (shuffled each epoch from `seed`, augmented where the data set is)
    /// and the test loader (file order, never augmented).
    pub fn into_loaders(self, batch_size: usize, seed: u64) -> (Loader, Loader) {
        let train = Loader::new(
            std::sync::Arc::new(self.train),
            self.normalization.clone(),
            batch_size,
            Order::Shuffled { seed },
        )
        .with_augmentation(self.augment);
        let test = Loader::new(
            std::sync::Arc::new(self.test),
            self.normalization,
            batch_size,
            Order::Sequential,
        );
        (train, test)
    }
}

/// Both splits of one named data set.
struct Splits {
    train: ImageSet,
    test: ImageSet,
    source: String,
    /// Image folders list the test set class by class; the official files mix the classes.
    test_in_class_order: bool,
}

/// Seed of the fixed order given to a test set stored class by class (see `load`).
const TEST_ORDER_SEED: u64 = 0x7e57;

fn load_mnist_like(
    name: &str,
    root: &Path,
    resources: &[download::Resource],
    download_missing: bool,
) -> Result<Splits> {
    let exists = |split| mnist::load_mnist_layout(root, split, name);
    let (train, test) = match (exists(Split::Train), exists(Split::Test)) {
        (Ok(train), Ok(test)) => (train, test),
        (Err(e), _) | (_, Err(e)) if !download_missing => return Err(e),
        (Err(e), _) | (_, Err(e)) if e.to_string().contains("not found") => {
            let raw = root.join(name).join("raw");
            for resource in resources {
                download::fetch(resource, &raw)?;
            }
            (exists(Split::Train)?, exists(Split::Test)?)
        }
        (Err(e), _) | (_, Err(e)) => return Err(e),
    };
    Ok(Splits {
        train,
        test,
        source: root.display().to_string(),
        test_in_class_order: false,
    })
}

fn load_cifar(kind: CifarKind, root: &Path, download_missing: bool) -> Result<Splits> {
    let release_dir = [root.join(kind.folder()), root.to_path_buf()]
        .into_iter()
        .find(|d| d.join(&kind.files(Split::Test)[0]).is_file());
    if let Some(dir) = release_dir {
        let train = cifar::load_dir(kind, &dir, Split::Train)?;
        let test = cifar::load_dir(kind, &dir, Split::Test)?;
        return Ok(Splits {
            train,
            test,
            source: dir.display().to_string(),
            test_in_class_order: false,
        });
    }
    let archive = root.join(kind.archive());
    if archive.is_file() {
        return load_cifar_archive(kind, &archive);
    }
    // CIFAR-10 as an image-folder tree (for example the JPEG copy of the set).
    if kind == CifarKind::Cifar10
        && let Some(splits) = find_cifar10_folder(root)?
    {
        return Ok(splits);
    }
    if !download_missing {
        bail!(
            "{} not found under {}: put the binary release there ({} or its unpacked {} folder), \
             or drop --no-download to fetch it",
            kind.name(),
            root.display(),
            kind.archive(),
            kind.folder()
        );
    }
    let resource = if kind == CifarKind::Cifar10 {
        download::CIFAR10
    } else {
        download::CIFAR100
    };
    let archive = download::fetch(&resource, root)?;
    load_cifar_archive(kind, &archive)
}

fn load_cifar_archive(kind: CifarKind, archive: &Path) -> Result<Splits> {
    let train = cifar::load_archive(kind, archive, Split::Train)?;
    let test = cifar::load_archive(kind, archive, Split::Test)?;
    Ok(Splits {
        train,
        test,
        source: archive.display().to_string(),
        test_in_class_order: false,
    })
}

/// The ten CIFAR-10 classes in label order; sorted folder names give the same order.
const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

fn find_cifar10_folder(root: &Path) -> Result<Option<Splits>> {
    let dirs = [root.join("cifar10-jpeg"), root.join("cifar10"), root.to_path_buf()];
    let found = if let Some(dir) = dirs
        .iter()
        .find(|d| d.join("train").is_dir() && d.join("test").is_dir())
    {
        Some((folder::load_dir(dir)?, dir.clone()))
    } else if let Some(archive) = ["cifar10-jpeg.tar.gz", "cifar10.tar.gz"]
        .iter()
        .map(|n| root.join(n))
        .find(|p| p.is_file())
    {
        Some((folder::load_archive(&archive)?, archive))
    } else {
        None
    };
    let Some((splits, path)) = found else { return Ok(None) };
    if splits.classes != CIFAR10_CLASSES {
        bail!(
            "{} is an image folder but not CIFAR-10: its classes are {:?}",
            path.display(),
            splits.classes
        );
    }
    if (splits.train.height, splits.train.width) != (32, 32) {
        bail!(
            "{} holds {}x{} images, CIFAR-10 images are 32x32",
            path.display(),
            splits.train.width,
            splits.train.height
        );
    }
    Ok(Some(Splits {
        train: splits.train,
        test: splits.test,
        source: path.display().to_string(),
        test_in_class_order: true,
    }))
}

fn load_folder(root: &Path) -> Result<Splits> {
    let splits = if root.is_file() {
        folder::load_archive(root)?
    } else if root.join("train").is_dir() {
        folder::load_dir(root)?
    } else {
        bail!(
            "--dataset-train Folder reads an image folder: {} must contain train/<class>/*.jpg and test/<class>/*.jpg \
             (or be a .tar.gz of such a tree)",
            root.display()
        );
    };
    Ok(Splits {
        train: splits.train,
        test: splits.test,
        source: root.display().to_string(),
        test_in_class_order: true,
    })
}

fn load_named(name: DatasetName, root: &Path, download_missing: bool) -> Result<Splits> {
    match name {
        DatasetName::Mnist => load_mnist_like("MNIST", root, &download::MNIST, download_missing),
        DatasetName::FashionMnist => {
            // Debian's dataset-fashion-mnist package installs the set here.
            let debian = PathBuf::from("/usr/share/datasets/fashion-mnist");
            if mnist::load_mnist_layout(root, Split::Test, "FashionMNIST").is_err() && debian.is_dir() {
                return load_mnist_like("FashionMNIST", &debian, &download::FASHION_MNIST, false);
            }
            load_mnist_like("FashionMNIST", root, &download::FASHION_MNIST, download_missing)
        }
        DatasetName::Cifar10 => load_cifar(CifarKind::Cifar10, root, download_missing),
        DatasetName::Cifar100 => load_cifar(CifarKind::Cifar100, root, download_missing),
        DatasetName::Folder => load_folder(root),
    }
}

pub fn load(config: &Config) -> Result<Data> {
    let root = &config.dataroot;
    let first = load_named(config.dataset_train, root, config.download)?;
    let (train, test, source, class_order) = if config.dataset_test == config.dataset_train {
        (first.train, first.test, first.source, first.test_in_class_order)
    } else {
        let other = load_named(config.dataset_test, root, config.download)?;
        (first.train, other.test, first.source, other.test_in_class_order)
    };
    if (train.channels, train.height, train.width) != (test.channels, test.height, test.width) {
        bail!(
            "training images are {}x{}x{} but test images are {}x{}x{}: test on a set with the same image size",
            train.channels,
            train.height,
            train.width,
            test.channels,
            test.height,
            test.width
        );
    }
    if train.num_classes != test.num_classes {
        bail!(
            "the training set has {} classes but the test set {}: use sets with the same classes",
            train.num_classes,
            test.num_classes
        );
    }
    let train = match config.train_subset {
        Some(n) => train.subset(n, SUBSET_SEED),
        None => train,
    };
    let test = match config.test_subset {
        Some(n) => test.subset(n, SUBSET_SEED),
        None => test,
    };
    // The correct accuracy does not depend on the order of the test batches, but the original
    // code's running average does: on a test set sorted by class it would mostly measure the
    // last class. A folder's test set is therefore put in a fixed mixed order, as the classes
    // are in the official CIFAR and MNIST test files.
    let test = if class_order {
        test.permuted(TEST_ORDER_SEED)
    } else {
        test
    };
    if train.is_empty() || test.is_empty() {
        bail!("the training or test set is empty (check --train-subset / --test-subset and the data files)");
    }
    let (normalization, augment) = match config.dataset_train {
        DatasetName::Mnist | DatasetName::FashionMnist => (Normalization::mnist(), false),
        DatasetName::Cifar10 | DatasetName::Cifar100 => (Normalization::cifar(), true),
        // The reference normalises image folders with mean 0.5 and std 0.5, without augmentation.
        DatasetName::Folder => (Normalization::half(train.channels), false),
    };
    Ok(Data {
        train,
        test,
        normalization,
        augment,
        source,
    })
}
