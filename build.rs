//! Records the git commit the binary is built from, so that every result file can name it.
//! Outside a git checkout (a source tarball, crates.io) the commit is "unknown".

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // Uncommitted changes to tracked files make the commit alone an incomplete description.
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let commit = if dirty && commit != "unknown" {
        format!("{commit}+modified")
    } else {
        commit
    };
    println!("cargo:rustc-env=PNN_GIT_COMMIT={commit}");
    // Re-run when the sources or the checked-out commit change (not on every unrelated file).
    for path in [
        "src",
        "tests",
        "Cargo.toml",
        "build.rs",
        ".git/HEAD",
        ".git/index",
        ".git/refs",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
}
