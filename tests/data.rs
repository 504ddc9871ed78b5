//! Data: the IDX reader on files the test writes, MNIST layout discovery, the batch loader.

use std::io::Write;
use std::sync::Arc;

use flate2::Compression;
use flate2::write::GzEncoder;
use pnn::data::idx::{encode_idx, parse_idx, read_idx};
use pnn::data::mnist::{Split, load_mnist_layout};
use pnn::data::{ImageSet, Loader, Normalization, Order};

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[test]
fn idx_round_trip_plain_and_gzipped() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
    let bytes = encode_idx(&[2, 3, 4], &data);
    assert_eq!(&bytes[..4], &[0, 0, 8, 3]);
    std::fs::write(dir.path().join("plain"), &bytes).unwrap();
    std::fs::write(dir.path().join("packed.gz"), gzip(&bytes)).unwrap();
    for name in ["plain", "packed.gz"] {
        let a = read_idx(&dir.path().join(name), 3).unwrap();
        assert_eq!(a.dims, vec![2, 3, 4]);
        assert_eq!(a.data, data);
    }
}

#[test]
fn idx_errors_name_the_problem() {
    let good = encode_idx(&[3], &[1, 2, 3]);
    let err = |bytes: &[u8], ndim| parse_idx(bytes, ndim, "f").unwrap_err().to_string();
    assert!(err(&[0, 0], 1).contains("too short"));
    let mut bad_magic = good.clone();
    bad_magic[0] = 7;
    assert!(err(&bad_magic, 1).contains("wrong magic number"));
    let mut bad_type = good.clone();
    bad_type[2] = 0x0d;
    assert!(err(&bad_type, 1).contains("value type"));
    assert!(
        err(&good, 3).contains("expected 3"),
        "a labels file where images are expected"
    );
    assert!(err(&good[..good.len() - 1], 1).contains("truncated"));
    assert!(err(&good[..6], 1).contains("header"));
    let mut long = good.clone();
    long.push(9);
    assert!(err(&long, 1).contains("holds 4"));
    // Sizes whose product passes 64 bits: 2^32-1 cubed. Unchecked, this panicked in a debug
    // build and wrapped silently in a release build.
    let mut huge = vec![0, 0, 8, 3];
    for _ in 0..3 {
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
    }
    assert!(err(&huge, 3).contains("more values than any file can hold"));
}

#[test]
fn idx_images_of_zero_pixels_are_refused() {
    use pnn::data::mnist::assemble;
    let images = parse_idx(&encode_idx(&[2, 0, 5], &[]), 3, "images").unwrap();
    let labels = parse_idx(&encode_idx(&[2], &[1, 2]), 1, "labels").unwrap();
    let err = assemble(images, labels, "MNIST", "images", "labels")
        .unwrap_err()
        .to_string();
    assert!(err.contains("images of 5x0 pixels"), "{err}");
}

fn write_mnist(dir: &std::path::Path, n_train: usize, n_test: usize, gz: bool) {
    for (prefix, n) in [("train", n_train), ("t10k", n_test)] {
        let images: Vec<u8> = (0..n * 28 * 28).map(|i| (i % 251) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        for (name, bytes) in [
            (format!("{prefix}-images-idx3-ubyte"), encode_idx(&[n, 28, 28], &images)),
            (format!("{prefix}-labels-idx1-ubyte"), encode_idx(&[n], &labels)),
        ] {
            if gz {
                std::fs::write(dir.join(format!("{name}.gz")), gzip(&bytes)).unwrap();
            } else {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
    }
}

#[test]
fn mnist_layout_is_found_in_the_root_or_torchvision_folder() {
    let dir = tempfile::tempdir().unwrap();
    write_mnist(dir.path(), 5, 3, true);
    let train = load_mnist_layout(dir.path(), Split::Train, "MNIST").unwrap();
    assert_eq!((train.len(), train.channels, train.height, train.width), (5, 1, 28, 28));
    assert_eq!(train.labels, vec![0, 1, 2, 3, 4]);
    let tv = tempfile::tempdir().unwrap();
    let raw = tv.path().join("MNIST/raw");
    std::fs::create_dir_all(&raw).unwrap();
    write_mnist(&raw, 4, 2, false);
    assert_eq!(load_mnist_layout(tv.path(), Split::Test, "MNIST").unwrap().len(), 2);
}

#[test]
fn mnist_errors_name_the_file_and_layout() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_mnist_layout(dir.path(), Split::Train, "MNIST")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("train-images-idx3-ubyte") && err.contains("--dataroot"),
        "{err}"
    );
    // Mismatched counts.
    write_mnist(dir.path(), 5, 3, false);
    std::fs::write(
        dir.path().join("train-labels-idx1-ubyte"),
        encode_idx(&[4], &[0, 1, 2, 3]),
    )
    .unwrap();
    let err = load_mnist_layout(dir.path(), Split::Train, "MNIST")
        .unwrap_err()
        .to_string();
    assert!(err.contains("5 images") && err.contains("4 labels"), "{err}");
    // A label outside 0-9.
    std::fs::write(
        dir.path().join("train-labels-idx1-ubyte"),
        encode_idx(&[5], &[0, 1, 2, 3, 12]),
    )
    .unwrap();
    let err = load_mnist_layout(dir.path(), Split::Train, "MNIST")
        .unwrap_err()
        .to_string();
    assert!(err.contains("label 12"), "{err}");
}

fn tiny_set(n: usize) -> ImageSet {
    ImageSet {
        images: (0..n * 3 * 2 * 2).map(|i| (i % 256) as u8).collect(),
        labels: (0..n).map(|i| (i % 10) as u16).collect(),
        channels: 3,
        height: 2,
        width: 2,
        num_classes: 10,
    }
}

#[test]
fn loader_batches_cover_the_set_and_shuffle_reproducibly() {
    let set = Arc::new(tiny_set(10));
    let norm = Normalization {
        mean: vec![0.0, 0.5, 1.0],
        std: vec![1.0, 0.5, 0.25],
    };
    let test = Loader::new(set.clone(), norm.clone(), 4, Order::Sequential);
    let batches: Vec<_> = test.epoch(0).collect();
    assert_eq!(
        batches.iter().map(|b| b.len()).collect::<Vec<_>>(),
        vec![4, 4, 2],
        "last batch is short, not dropped"
    );
    let labels: Vec<i64> = batches.iter().flat_map(|b| b.labels.clone()).collect();
    assert_eq!(labels, (0..10).collect::<Vec<_>>(), "test order is file order");
    // Channel-major normalisation: image 0, channel 1, pixel 0 is byte 4.
    assert!((batches[0].images[4] - (4.0 / 255.0 - 0.5) / 0.5).abs() < 1e-6);

    let train = Loader::new(set, norm, 4, Order::Shuffled { seed: 1 });
    let e1 = train.indices(1);
    let mut sorted = e1.clone();
    sorted.sort();
    assert_eq!(sorted, (0..10).collect::<Vec<_>>(), "a permutation");
    assert_eq!(
        e1,
        train.indices(1),
        "same seed and epoch, same order (resume sees the same batches)"
    );
    assert_ne!(e1, train.indices(2), "a new order each epoch");
    let first: Vec<i64> = train.epoch(1).flat_map(|b| b.labels).collect();
    assert_eq!(first, e1.iter().map(|&i| (i % 10) as i64).collect::<Vec<_>>());
}
