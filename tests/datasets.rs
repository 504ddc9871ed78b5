//! CIFAR binary files, release archives, image folders, augmentation and downloads, on small
//! files the tests make themselves (and a local HTTP server on 127.0.0.1).

use std::path::Path;

mod common;

use common::{images, pixel, serve, write_cifar10_release};
use flate2::Compression;
use flate2::write::GzEncoder;
use pnn::data::augment::random_crop_flip;
use pnn::data::cifar::{self, CifarKind, encode_records};
use pnn::data::download::{fetch_url, md5_file};
use pnn::data::folder;
use pnn::data::mnist::Split;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Pixel value of image `i`, channel `c`, position `p`: distinct across channels and images.
#[test]
fn cifar10_records_are_read_channel_major_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10_release(dir.path(), 3);
    let train = cifar::load_dir(CifarKind::Cifar10, dir.path(), Split::Train).unwrap();
    let test = cifar::load_dir(CifarKind::Cifar10, dir.path(), Split::Test).unwrap();
    assert_eq!(
        (train.len(), test.len()),
        (15, 3),
        "five training files of 3 records, one test file"
    );
    assert_eq!(
        (train.channels, train.height, train.width, train.num_classes),
        (3, 32, 32, 10)
    );
    assert_eq!(
        &train.labels[..6],
        &[0, 1, 2, 1, 2, 3],
        "labels of data_batch_1 then data_batch_2"
    );
    // Record 2 of data_batch_1, green channel (c = 1), pixel (row 3, column 5).
    assert_eq!(train.image(2)[1024 + 3 * 32 + 5], pixel(2, 1, 3 * 32 + 5));
    assert_eq!(test.labels, vec![5, 6, 7]);
}

#[test]
fn cifar100_uses_the_fine_label() {
    let labels = [0u8, 57, 99];
    let bytes = encode_records(CifarKind::Cifar100, &labels, &images(3));
    assert_eq!(bytes.len(), 3 * 3074);
    assert_eq!(&bytes[..2], &[0, 0]);
    assert_eq!(&bytes[3074..3076], &[57 / 5, 57], "coarse then fine label byte");
    let mut set = pnn::data::ImageSet {
        images: vec![],
        labels: vec![],
        channels: 3,
        height: 32,
        width: 32,
        num_classes: 100,
    };
    cifar::parse_records(CifarKind::Cifar100, &bytes, "t", &mut set).unwrap();
    assert_eq!(set.labels, vec![0, 57, 99]);
    assert_eq!(set.image(1)[2048], pixel(1, 2, 0));
}

#[test]
fn cifar_format_errors_name_the_problem() {
    let mut set = pnn::data::ImageSet {
        images: vec![],
        labels: vec![],
        channels: 3,
        height: 32,
        width: 32,
        num_classes: 10,
    };
    let mut bytes = encode_records(CifarKind::Cifar10, &[1, 2], &images(2));
    bytes.pop();
    let err = cifar::parse_records(CifarKind::Cifar10, &bytes, "odd", &mut set)
        .unwrap_err()
        .to_string();
    assert!(err.contains("whole number of") && err.contains("3073"), "{err}");
    let bytes = encode_records(CifarKind::Cifar10, &[1, 12], &images(2));
    let err = cifar::parse_records(CifarKind::Cifar10, &bytes, "label", &mut set)
        .unwrap_err()
        .to_string();
    assert!(err.contains("record 1 has label 12"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let err = cifar::load_dir(CifarKind::Cifar10, dir.path(), Split::Train)
        .unwrap_err()
        .to_string();
    assert!(err.contains("data_batch_1.bin"), "{err}");
}

fn tar_gz(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, bytes.as_slice()).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

#[test]
fn cifar_release_archive_is_read_without_unpacking() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10_release(&dir.path().join("cifar-10-batches-bin"), 2);
    let members: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.path().join("cifar-10-batches-bin"))
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                format!("cifar-10-batches-bin/{}", p.file_name().unwrap().to_string_lossy()),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    let archive = dir.path().join("cifar-10-binary.tar.gz");
    std::fs::write(&archive, tar_gz(&members)).unwrap();
    let from_dir = cifar::load_dir(
        CifarKind::Cifar10,
        &dir.path().join("cifar-10-batches-bin"),
        Split::Train,
    )
    .unwrap();
    let from_archive = cifar::load_archive(CifarKind::Cifar10, &archive, Split::Train).unwrap();
    assert_eq!(from_dir.labels, from_archive.labels);
    assert_eq!(from_dir.images, from_archive.images);
    // A truncated archive is an error, not a panic.
    let bytes = std::fs::read(&archive).unwrap();
    std::fs::write(&archive, &bytes[..bytes.len() / 2]).unwrap();
    let err = cifar::load_archive(CifarKind::Cifar10, &archive, Split::Train)
        .unwrap_err()
        .to_string();
    assert!(err.contains("damaged or truncated") || err.contains("lacks"), "{err}");
}

fn png(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([seed, (x * 10) as u8, (y * 10) as u8]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn write_tree(root: &Path, layout: &[(&str, &str, usize)]) {
    for (split, class, n) in layout {
        let dir = root.join(split).join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..*n {
            std::fs::write(dir.join(format!("{i:04}.png")), png(4, 4, (i * 40) as u8)).unwrap();
        }
    }
}

#[test]
fn image_folder_classes_are_sorted_and_pixels_channel_major() {
    let dir = tempfile::tempdir().unwrap();
    write_tree(
        dir.path(),
        &[
            ("train", "zebra", 2),
            ("train", "ant", 3),
            ("test", "ant", 1),
            ("test", "zebra", 1),
        ],
    );
    let splits = folder::load_dir(dir.path()).unwrap();
    assert_eq!(splits.classes, vec!["ant", "zebra"]);
    assert_eq!(splits.train.labels, vec![0, 0, 0, 1, 1]);
    assert_eq!(
        (splits.train.channels, splits.train.height, splits.train.width),
        (3, 4, 4)
    );
    // Image 1 of "ant": red = 40 everywhere, green = 10x, blue = 10y; pixel (x=2, y=3).
    let img = splits.train.image(1);
    assert_eq!((img[3 * 4 + 2], img[16 + 3 * 4 + 2], img[32 + 3 * 4 + 2]), (40, 20, 30));
    // The same tree as a .tar.gz archive.
    let mut members = Vec::new();
    for (split, class, n) in [
        ("train", "zebra", 2),
        ("train", "ant", 3),
        ("test", "ant", 1),
        ("test", "zebra", 1),
    ] {
        for i in 0..n {
            members.push((format!("set/{split}/{class}/{i:04}.png"), png(4, 4, (i * 40) as u8)));
        }
    }
    let archive = dir.path().join("set.tar.gz");
    std::fs::write(&archive, tar_gz(&members)).unwrap();
    let from_archive = folder::load_archive(&archive).unwrap();
    assert_eq!(from_archive.train.images, splits.train.images);
    assert_eq!(from_archive.test.labels, splits.test.labels);
}

#[test]
fn a_folder_test_set_is_read_in_one_fixed_mixed_order() {
    // Stored class by class, the original code's running-average accuracy would measure the last
    // class only; loaded, the test set is permuted once, the same way every time.
    let root = tempfile::tempdir().unwrap();
    write_tree(
        root.path(),
        &[("train", "a", 2), ("train", "b", 2), ("test", "a", 8), ("test", "b", 8)],
    );
    let flags = format!(
        "--dataset-train Folder --dataset-test Folder --dataroot {}",
        root.path().display()
    );
    let config = pnn::config::TrainArgs::parse_flags(flags.split_whitespace())
        .unwrap()
        .to_config()
        .unwrap();
    let first = pnn::data::load(&config).unwrap().test;
    let again = pnn::data::load(&config).unwrap().test;
    assert_eq!(first.labels, again.labels);
    assert_eq!(first.images, again.images);
    let ones = first.labels.iter().filter(|&&l| l == 1).count();
    assert_eq!((first.labels.len(), ones), (16, 8));
    let mut sorted = first.labels.clone();
    sorted.sort();
    assert_ne!(first.labels, sorted, "the test set is not left in class order");
}

#[test]
fn image_folder_errors_name_the_problem() {
    let err = |layout: &[(&str, &str, usize)], extra: &dyn Fn(&Path)| {
        let dir = tempfile::tempdir().unwrap();
        write_tree(dir.path(), layout);
        extra(dir.path());
        folder::load_dir(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let none = |_: &Path| {};
    let e = err(&[("train", "a", 1), ("test", "a", 1), ("test", "b", 1)], &none);
    assert!(e.contains("classes differ") && e.contains("\"b\""), "{e}");
    let e = err(
        &[("train", "a", 1), ("train", "b", 0), ("test", "a", 1), ("test", "b", 1)],
        &none,
    );
    assert!(e.contains("train/b holds no"), "{e}");
    let e = err(&[("train", "a", 1), ("test", "a", 1)], &|p| {
        std::fs::write(p.join("train/a/bad.jpg"), b"not a jpeg").unwrap()
    });
    assert!(e.contains("bad.jpg cannot be decoded"), "{e}");
    let e = err(&[("train", "a", 1), ("test", "a", 1)], &|p| {
        std::fs::write(p.join("train/a/big.png"), png(8, 8, 1)).unwrap()
    });
    assert!(e.contains("different sizes"), "{e}");
    let e = err(&[("train", "a", 1)], &none);
    assert!(e.contains("test"), "{e}");
}

#[test]
fn augmentation_is_a_padded_crop_with_optional_flip() {
    let (c, h, w) = (3, 8, 8);
    let image: Vec<u8> = (0..c * h * w).map(|i| (i % 250 + 1) as u8).collect();
    let mut seen_flip = [false, false];
    for seed in 0..40 {
        let mut out = vec![0u8; image.len()];
        random_crop_flip(&image, c, h, w, &mut ChaCha8Rng::seed_from_u64(seed), &mut out);
        let mut again = vec![0u8; image.len()];
        random_crop_flip(&image, c, h, w, &mut ChaCha8Rng::seed_from_u64(seed), &mut again);
        assert_eq!(out, again, "same seed, same augmentation");
        // Find the offset and flip that explain the output exactly.
        let mut explained = false;
        for flip in [false, true] {
            for dy in -4i32..=4 {
                for dx in -4i32..=4 {
                    let ok = (0..c).all(|ch| {
                        (0..h as i32).all(|y| {
                            (0..w as i32).all(|x| {
                                let sx = if flip { w as i32 - 1 - x } else { x } + dx;
                                let sy = y + dy;
                                let expected = if (0..h as i32).contains(&sy) && (0..w as i32).contains(&sx) {
                                    image[ch * h * w + (sy as usize) * w + sx as usize]
                                } else {
                                    0
                                };
                                out[ch * h * w + y as usize * w + x as usize] == expected
                            })
                        })
                    });
                    if ok {
                        explained = true;
                        seen_flip[flip as usize] = true;
                    }
                }
            }
        }
        assert!(explained, "seed {seed}: output is a 4-pixel padded crop, maybe flipped");
    }
    assert_eq!(seen_flip, [true, true], "both flipped and unflipped images occur");
}

#[test]
fn downloads_keep_only_files_whose_checksum_matches() {
    let good: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("reference"), &good).unwrap();
    let md5 = md5_file(&dir.path().join("reference")).unwrap();
    let mut corrupt = good.clone();
    corrupt[5000] ^= 0xff;
    let base = serve(
        vec![
            ("/good.bin", good.clone(), good.len()),
            ("/corrupt.bin", corrupt, good.len()),
            ("/truncated.bin", good[..40_000].to_vec(), good.len()),
        ],
        4,
    );
    let dest = dir.path().join("data.bin");
    let leftovers = |d: &Path| {
        std::fs::read_dir(d)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name() != "reference")
            .count()
    };

    let err = fetch_url(&format!("{base}/corrupt.bin"), &dest, &md5)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not the published") && err.contains("download it yourself"),
        "{err}"
    );
    assert_eq!(leftovers(dir.path()), 0, "a corrupted download leaves nothing behind");

    let err = fetch_url(&format!("{base}/truncated.bin"), &dest, &md5)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("truncated.bin") && err.contains("download it yourself"),
        "{err}"
    );
    assert_eq!(leftovers(dir.path()), 0, "a truncated download leaves nothing behind");

    let err = fetch_url(&format!("{base}/missing.bin"), &dest, &md5)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("404") && err.contains(&dest.display().to_string()),
        "{err}"
    );

    fetch_url(&format!("{base}/good.bin"), &dest, &md5).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), good);
    assert_eq!(leftovers(dir.path()), 1, "only the checked file, no partial file");
}

/// Training batches of CIFAR are augmented (the reference's random crop and flip), MNIST's and
/// every test batch are not. The training loader once lost its augmentation while the log line
/// still announced it.
#[test]
fn training_batches_are_augmented_where_the_data_set_is_and_test_batches_never() {
    use pnn::data::loader::make_batch;
    let root = tempfile::tempdir().unwrap();
    write_cifar10_release(root.path(), 20);
    let flags = format!(
        "--dataset-train CIFAR10 --dataset-test CIFAR10 --no-download --dataroot {}",
        root.path().display()
    );
    let config = pnn::config::TrainArgs::parse_flags(flags.split_whitespace())
        .unwrap()
        .to_config()
        .unwrap();
    let data = pnn::data::load(&config).unwrap();
    assert!(data.augment);
    let (train_set, test_set, norm) = (data.train.clone(), data.test.clone(), data.normalization.clone());
    let (train, test) = data.into_loaders(16, 1);
    let indices = train.indices(1);
    let batch = train.epoch(1).next().unwrap();
    let plain = make_batch(&train_set, &norm, &indices[..16], None);
    assert_eq!(batch.labels, plain.labels, "the same images, in the epoch's order");
    assert_ne!(batch.images, plain.images, "cropped and flipped");
    let batch = test.epoch(0).next().unwrap();
    let plain = make_batch(&test_set, &norm, &(0..batch.len()).collect::<Vec<_>>(), None);
    assert_eq!(batch.images, plain.images, "the test set is never augmented");
}
