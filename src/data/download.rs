//! Downloading the standard data sets from their official locations, as torchvision does:
//! to a partial file, with a progress bar, renamed into place only after its published MD5
//! checksum matches. `PNN_DATA_MIRROR=<base url>` fetches the same file names from a mirror.

use std::fs;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use md5::{Digest, Md5};

/// A file of a data set release and its published checksum.
#[derive(Debug, Clone, Copy)]
pub struct Resource {
    pub base_url: &'static str,
    pub file: &'static str,
    pub md5: &'static str,
}

pub const MNIST: [Resource; 4] = [
    Resource {
        base_url: MNIST_URL,
        file: "train-images-idx3-ubyte.gz",
        md5: "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    },
    Resource {
        base_url: MNIST_URL,
        file: "train-labels-idx1-ubyte.gz",
        md5: "d53e105ee54ea40749a09fcbcd1e9432",
    },
    Resource {
        base_url: MNIST_URL,
        file: "t10k-images-idx3-ubyte.gz",
        md5: "9fb629c4189551a2d022fa330f9573f3",
    },
    Resource {
        base_url: MNIST_URL,
        file: "t10k-labels-idx1-ubyte.gz",
        md5: "ec29112dd5afa0611ce80d1b7f02629c",
    },
];
const MNIST_URL: &str = "https://ossci-datasets.s3.amazonaws.com/mnist/";

pub const FASHION_MNIST: [Resource; 4] = [
    Resource {
        base_url: FASHION_URL,
        file: "train-images-idx3-ubyte.gz",
        md5: "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    },
    Resource {
        base_url: FASHION_URL,
        file: "train-labels-idx1-ubyte.gz",
        md5: "25c81989df183df01b3e8a0aad5dffbe",
    },
    Resource {
        base_url: FASHION_URL,
        file: "t10k-images-idx3-ubyte.gz",
        md5: "bef4ecab320f06d8554ea6380940ec79",
    },
    Resource {
        base_url: FASHION_URL,
        file: "t10k-labels-idx1-ubyte.gz",
        md5: "bb300cfdad3c16e7a12a480ee83cd310",
    },
];
const FASHION_URL: &str = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/";

pub const CIFAR10: Resource = Resource {
    base_url: CIFAR_URL,
    file: "cifar-10-binary.tar.gz",
    md5: "c32a1d4ab5d03f1284b67883e8d87530",
};
pub const CIFAR100: Resource = Resource {
    base_url: CIFAR_URL,
    file: "cifar-100-binary.tar.gz",
    md5: "03b5dce01913d631647c71ecec9e9cb8",
};
const CIFAR_URL: &str = "https://www.cs.toronto.edu/~kriz/";

impl Resource {
    /// The URL to fetch: the official one, or the same file name under `PNN_DATA_MIRROR`.
    pub fn url(&self) -> String {
        match std::env::var("PNN_DATA_MIRROR") {
            Ok(base) if !base.is_empty() => format!("{}/{}", base.trim_end_matches('/'), self.file),
            _ => format!("{}{}", self.base_url, self.file),
        }
    }
}

/// MD5 of a file, as lowercase hex.
pub fn md5_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// Downloads `resource` into `dir`, unless it is already there. Returns its path.
pub fn fetch(resource: &Resource, dir: &Path) -> Result<PathBuf> {
    let dest = dir.join(resource.file);
    if dest.is_file() {
        return Ok(dest);
    }
    fetch_url(&resource.url(), &dest, resource.md5)?;
    Ok(dest)
}

/// Downloads `url` to `dest` through `dest.partial`, checking the MD5 before the rename.
pub fn fetch_url(url: &str, dest: &Path, md5: &str) -> Result<()> {
    let by_hand = || {
        format!(
            "download it yourself from {url} (md5 {md5}) and put it at {}, or rerun with network access",
            dest.display()
        )
    };
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let partial = dest.with_extension(format!(
        "{}partial",
        dest.extension()
            .map(|e| format!("{}.", e.to_string_lossy()))
            .unwrap_or_default()
    ));
    eprintln!("Downloading {url}");
    let response = ureq::get(url)
        .call()
        .map_err(|e| anyhow::anyhow!("cannot download {url}: {e}. Instead, {}", by_hand()))?;
    let total = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(total.unwrap_or(0))
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bytes}/{total_bytes} [{bar:30}] {bytes_per_sec} eta {eta}")
            .expect("valid progress template")
            .progress_chars("=> "),
    );
    let mut reader = response.into_body().into_reader();
    let result = (|| -> Result<u64> {
        let mut out = fs::File::create(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
        let mut buf = vec![0u8; 1 << 16];
        let mut written = 0u64;
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| anyhow::anyhow!("the download of {url} broke off: {e}"))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
            written += n as u64;
            bar.set_position(written);
        }
        out.sync_all()?;
        Ok(written)
    })();
    bar.finish_and_clear();
    let written = match result {
        Ok(w) => w,
        Err(e) => {
            let _ = fs::remove_file(&partial);
            bail!("{e:#}. Instead, {}", by_hand());
        }
    };
    if let Some(total) = total
        && written != total
    {
        let _ = fs::remove_file(&partial);
        bail!(
            "the download of {url} ended after {written} of {total} bytes. Instead, {}",
            by_hand()
        );
    }
    let got = md5_file(&partial)?;
    if got != md5 {
        let _ = fs::remove_file(&partial);
        bail!(
            "the file downloaded from {url} has md5 {got}, not the published {md5}: it is damaged or not the official file, \
             and was not kept. Instead, {}",
            by_hand()
        );
    }
    fs::rename(&partial, dest).with_context(|| format!("cannot move {} to {}", partial.display(), dest.display()))?;
    Ok(())
}
