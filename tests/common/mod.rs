//! Helpers shared by the integration tests.

#![allow(dead_code)] // each test file uses a part of them

pub mod fused_check;
pub mod gpu_models;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use pnn::data::cifar::{CifarKind, encode_records};
use pnn::data::idx::encode_idx;
use pnn::data::mnist::Split;

/// Held by a test whose assertions depend on the exact values it draws from burn's generator.
/// That generator is one per device, shared by every test of a binary, and cargo runs those
/// tests in parallel: a test that seeds it and then builds a model (whose parameters are drawn
/// at their first read, maybe much later) can get draws another test asked for, or a seed
/// another test set. A loss that must fall after three steps then fails now and then: seen in
/// CI as cifarnet's 2.24 -> 2.58 in tests/models.rs, a test that passes alone.
pub fn rng_lock() -> MutexGuard<'static, ()> {
    static RNG: Mutex<()> = Mutex::new(());
    // A failed test poisons the lock; the others still run.
    RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A one-shot HTTP server on 127.0.0.1 serving `routes` (path -> body, declared length).
pub fn serve(routes: Vec<(&'static str, Vec<u8>, usize)>, connections: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(connections) {
            let mut stream = stream.unwrap();
            let mut buf = [0u8; 2048];
            let n = stream.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
            match routes.iter().find(|(p, _, _)| *p == path) {
                Some((_, body, declared)) => {
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n");
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(body);
                }
                None => {
                    let _ =
                        stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                }
            }
        }
    });
    format!("http://{addr}")
}

/// A deterministic pixel value of image `i`, channel `c`, position `p`.
pub fn pixel(i: usize, c: usize, p: usize) -> u8 {
    ((i * 7 + c * 85 + p) % 256) as u8
}

/// `n` CIFAR-sized (3x32x32) images of `pixel` values, channel-major.
pub fn images(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| (0..3).flat_map(move |c| (0..1024).map(move |p| pixel(i, c, p))))
        .collect()
}

/// A CIFAR-10 binary release (`data_batch_1..5.bin`, `test_batch.bin`) with `per_file` images each.
pub fn write_cifar10_release(dir: &Path, per_file: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let files = CifarKind::Cifar10
        .files(Split::Train)
        .into_iter()
        .chain(CifarKind::Cifar10.files(Split::Test));
    for (f, name) in files.enumerate() {
        let labels: Vec<u8> = (0..per_file).map(|i| ((i + f) % 10) as u8).collect();
        std::fs::write(
            dir.join(name),
            encode_records(CifarKind::Cifar10, &labels, &images(per_file)),
        )
        .unwrap();
    }
}

/// lenet flags for the set of [`write_tiny_mnist`]: an epoch trains in a moment. Its dropout
/// draws random numbers every step, so a wrong random state on resume shows in the numbers.
pub const TINY_LENET: [&str; 13] = [
    "--net-type",
    "lenet",
    "--dataset-train",
    "MNIST",
    "--dataset-test",
    "MNIST",
    "--nfilters",
    "8",
    "--batch-size",
    "16",
    "--learning-rate",
    "0.05",
    "--use_act",
];

/// A tiny MNIST-layout set: class k has a bright square at a position that depends on k, so a
/// model can learn it in one epoch.
pub fn write_tiny_mnist(dir: &Path, n_train: usize, n_test: usize) {
    for (prefix, n) in [("train", n_train), ("t10k", n_test)] {
        let mut images = vec![0u8; n * 28 * 28];
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        for (i, &label) in labels.iter().enumerate() {
            let (r0, c0) = (2 + 2 * label as usize, 4 + (label as usize % 3) * 6);
            for r in r0..r0 + 4 {
                for c in c0..c0 + 4 {
                    images[i * 784 + r * 28 + c] = 255;
                }
            }
        }
        std::fs::write(
            dir.join(format!("{prefix}-images-idx3-ubyte")),
            encode_idx(&[n, 28, 28], &images),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{prefix}-labels-idx1-ubyte")),
            encode_idx(&[n], &labels),
        )
        .unwrap();
    }
}

/// The lines of a run's `metrics.jsonl` without the fields that measure time.
pub fn metrics_without_timing(run: &Path) -> Vec<serde_json::Value> {
    let jsonl = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    jsonl
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let obj = v.as_object_mut().unwrap();
            obj.remove("epoch_seconds");
            obj.remove("train_images_per_sec");
            v
        })
        .collect()
}
