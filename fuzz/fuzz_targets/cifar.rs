//! CIFAR-10 / CIFAR-100 binary record files. The first byte picks the kind.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pnn::data::ImageSet;
use pnn::data::cifar::{CifarKind, parse_records};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let kind = if kind & 1 == 0 {
        CifarKind::Cifar10
    } else {
        CifarKind::Cifar100
    };
    let mut set = ImageSet {
        images: Vec::new(),
        labels: Vec::new(),
        channels: 3,
        height: 32,
        width: 32,
        num_classes: kind.num_classes(),
    };
    if parse_records(kind, bytes, "fuzz", &mut set).is_ok() {
        common::use_set(set);
    }
});
