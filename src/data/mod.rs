//! Data sets: reading them from disk, and batching them for the model.

pub mod dataset;
pub mod idx;
pub mod loader;
pub mod mnist;

use anyhow::{Result, bail};

pub use dataset::{ImageSet, Normalization};
pub use loader::{Batch, Loader, Order};

use crate::config::{Config, DatasetName};

/// Training and test sets of a configuration, with the normalisation they are fed with.
pub struct Data {
    pub train: ImageSet,
    pub test: ImageSet,
    pub normalization: Normalization,
}

fn load_split(name: DatasetName, config: &Config, split: mnist::Split) -> Result<ImageSet> {
    match name {
        DatasetName::Mnist => mnist::load_mnist_layout(&config.dataroot, split, "MNIST"),
        DatasetName::FashionMnist => mnist::load_mnist_layout(&config.dataroot, split, "FashionMNIST"),
        DatasetName::Cifar10 | DatasetName::Cifar100 => bail!(
            "{name:?} is not readable yet in this version of pnn: use --dataset-train MNIST --dataset-test MNIST \
             (CIFAR and image folders are the next data milestone)"
        ),
    }
}

pub fn load(config: &Config) -> Result<Data> {
    let mut train = load_split(config.dataset_train, config, mnist::Split::Train)?;
    let mut test = load_split(config.dataset_test, config, mnist::Split::Test)?;
    if let Some(n) = config.train_subset {
        train = train.truncate(n);
    }
    if let Some(n) = config.test_subset {
        test = test.truncate(n);
    }
    if train.is_empty() || test.is_empty() {
        bail!("the training or test set is empty (check --train-subset / --test-subset and the data files)");
    }
    let normalization = match config.dataset_train {
        DatasetName::Mnist | DatasetName::FashionMnist => Normalization::mnist(),
        DatasetName::Cifar10 | DatasetName::Cifar100 => Normalization::cifar(),
    };
    Ok(Data {
        train,
        test,
        normalization,
    })
}
