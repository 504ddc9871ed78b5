//! Ctrl-C, SIGTERM and SIGUSR1 during training. The first signal asks the training loop to stop after
//! the step it is in and write a checkpoint of that point; a second one ends the process at once
//! (result files are written whole and renamed into place, so nothing half-written is left, and
//! the previous checkpoint stays).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Exit status of a run stopped by a signal (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// A request to stop, shared between a signal handler (or a test) and the training loop.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Installs the SIGINT/SIGTERM handler for this process and returns the flag it raises. Only
/// the first call installs it; the command-line program calls it once.
pub fn install_handler() -> anyhow::Result<StopFlag> {
    let flag = StopFlag::default();
    let handler_flag = flag.clone();
    ctrlc::set_handler(move || {
        if handler_flag.is_requested() {
            eprintln!("\nSecond interrupt: stopping now. The last checkpoint written is intact.");
            std::process::exit(EXIT_INTERRUPTED.into());
        }
        eprintln!(
            "\nInterrupted: finishing the current step and writing a checkpoint (interrupt again to stop at once)"
        );
        handler_flag.request();
    })
    .map_err(|e| anyhow::anyhow!("cannot install the Ctrl-C handler: {e}"))?;
    // SIGUSR1: what a scheduler sends ahead of a time limit (Slurm's --signal), asking the run to
    // checkpoint where it is; the same stop as a first Ctrl-C.
    #[cfg(unix)]
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, flag.0.clone())
        .map_err(|e| anyhow::anyhow!("cannot install the SIGUSR1 handler: {e}"))?;
    Ok(flag)
}

/// The error a training run returns when it stopped on request, after saving a checkpoint.
#[derive(Debug, Clone)]
pub struct Interrupted {
    pub checkpoint: PathBuf,
    /// The epoch in progress (1-based) and the training steps of it that are done.
    pub epoch: usize,
    pub steps_done: usize,
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "training stopped on request during epoch {} after {} steps; the checkpoint {} holds that point: \
             resume with the same command and --resume {}",
            self.epoch,
            self.steps_done,
            self.checkpoint.display(),
            self.checkpoint.display()
        )
    }
}

impl std::error::Error for Interrupted {}

/// The command line to resume with: the one given, with any `--resume` replaced by `checkpoint`.
pub fn resume_command(args: &[String], checkpoint: &std::path::Path) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut skip_value = false;
    for arg in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        if arg == "--resume" {
            skip_value = true;
            continue;
        }
        if arg.starts_with("--resume=") {
            continue;
        }
        out.push(arg.clone());
    }
    out.push("--resume".into());
    out.push(checkpoint.display().to_string());
    out.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")
}

/// Quotes an argument for a POSIX shell where it needs it.
pub fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}
