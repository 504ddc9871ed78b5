//! Image folders: encoded PNG/JPEG files decoded into a split. The input holds up to four files
//! separated by the byte sequence "|pnn|"; they are given to classes and splits in turn.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pnn::data::folder::from_memory;

#[path = "common.rs"]
mod common;

const SEPARATOR: &[u8] = b"|pnn|";

fuzz_target!(|data: &[u8]| {
    let mut files: Vec<&[u8]> = Vec::new();
    let mut rest = data;
    while files.len() < 3 {
        match rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
            Some(at) => {
                files.push(&rest[..at]);
                rest = &rest[at + SEPARATOR.len()..];
            }
            None => break,
        }
    }
    files.push(rest);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (i, bytes) in files.iter().enumerate() {
        let class = if i % 2 == 0 { "a" } else { "b" };
        let entry = (class.to_string(), format!("{class}/{i}.png"), bytes.to_vec());
        if i < 2 {
            train.push(entry.clone())
        }
        // The test split gets every file too, so that one file is enough for both splits.
        test.push(entry);
    }
    if let Ok(splits) = from_memory(train, test, "fuzz") {
        common::use_set(splits.train);
        common::use_set(splits.test);
    }
});
