//! Where a number came from: the pnn version and commit, the machine and the backend. Every
//! result file (run summaries, comparison tables, figures) records this beside the configuration.

use serde::{Deserialize, Serialize};

/// The pnn build that produced a result.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Git commit of the build (`+modified` when the tree had uncommitted changes, `unknown`
/// outside a checkout).
pub const COMMIT: &str = env!("PNN_GIT_COMMIT");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model name as the OS reports it.
    pub cpu: String,
    /// Logical cores available to this process.
    pub cores: usize,
    /// Physical memory, GiB.
    pub memory_gib: f64,
    pub os: String,
    pub arch: String,
}

impl Machine {
    pub fn this() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let line = m.lines().find(|l| l.starts_with("MemTotal:"))?.to_string();
                line.split_whitespace().nth(1)?.parse::<f64>().ok()
            })
            .map_or(0.0, |kib| (kib / (1024.0 * 1024.0) * 10.0).round() / 10.0);
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib,
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
        }
    }
}

/// The software, machine and backend of a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub pnn_version: String,
    pub pnn_commit: String,
    /// The compute backend and device, e.g. `cpu (burn flex)`.
    pub backend: String,
    pub machine: Machine,
}

impl Provenance {
    pub fn this(backend: &str) -> Self {
        Self {
            pnn_version: VERSION.into(),
            pnn_commit: COMMIT.into(),
            backend: backend.into(),
            machine: Machine::this(),
        }
    }

    /// One line for figure footers and table notes.
    pub fn line(&self) -> String {
        format!(
            "pnn {} ({}), {}, {} ({} cores)",
            self.pnn_version, self.pnn_commit, self.backend, self.machine.cpu, self.machine.cores
        )
    }
}
