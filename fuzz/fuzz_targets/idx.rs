//! MNIST-style IDX files: an image file and a label file, parsed and assembled into a split.
//! The first two bytes of the input say where the image file ends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pnn::data::idx::parse_idx;
use pnn::data::mnist::assemble;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let split = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    let (images, labels) = data[2..].split_at(split);
    let (Ok(images), Ok(labels)) = (parse_idx(images, 3, "images"), parse_idx(labels, 1, "labels")) else {
        return;
    };
    if let Ok(set) = assemble(images, labels, "MNIST", "images", "labels") {
        common::use_set(set);
    }
});
