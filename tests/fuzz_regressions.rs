//! Inputs the fuzzers (fuzz/) found a failure with, kept so that the failure stays fixed. Each
//! is fed to the reader as its fuzz target feeds it; reading it must end in a value or an
//! error, not a panic or an abort.

use std::path::Path;

use pnn::data::folder::from_memory;

fn input(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_regressions")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A 973-byte JPEG whose header declares 224x65497 pixels. The image-folder reader reserved
/// room for 1024 images of the first image's size before decoding the rest: 45 GB, and the
/// process aborted. It now reserves for the images it has.
#[test]
fn a_small_jpeg_declaring_a_huge_size_does_not_abort_the_folder_reader() {
    let bytes = input("folder-jpeg-224x65497");
    let file = |class: &str| (class.to_string(), format!("{class}/0.jpg"), bytes.clone());
    match from_memory(vec![file("a")], vec![file("a")], "fuzz") {
        Ok(splits) => {
            assert_eq!(splits.train.len(), 1);
            assert_eq!(splits.train.images.len(), splits.train.image_len());
        }
        Err(e) => {
            let msg = format!("{e:#}");
            assert!(msg.contains("cannot be decoded") || msg.contains("do not fit"), "{msg}");
        }
    }
}
