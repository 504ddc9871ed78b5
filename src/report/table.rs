//! `pnn compare`: a table of runs, Markdown for reading and CSV for analysis. Each row names the
//! model, the flags on which the runs differ, the model size, and the accuracies (best and final
//! correct, best reported) with the time they took; the notes under the table trace every row to
//! its build, machine and configuration file.

use serde::Serialize;

use super::flags::{common_flags, differing_flags};
use super::recorded::RecordedRun;
use crate::config::Config;
use crate::train::run_dir::CONFIG_FILE;

/// One row of `pnn compare`.
#[derive(Debug, Clone, Serialize)]
pub struct CompareRow {
    pub run: String,
    pub model: String,
    pub flags: String,
    pub parameters: usize,
    pub noise_values: usize,
    pub best_correct: f64,
    pub best_epoch: usize,
    pub final_correct: f64,
    pub best_reported: f64,
    pub final_reported: f64,
    pub epochs: usize,
    pub seconds_per_epoch: f64,
    pub images_per_sec: f64,
    pub wall_seconds: f64,
    pub pnn_version: String,
    pub pnn_commit: String,
    pub backend: String,
    pub cpu: String,
    pub cores: usize,
    /// The run's whole configuration, as JSON.
    pub config: String,
    pub dir: String,
}

pub fn compare_rows(runs: &[RecordedRun]) -> Vec<CompareRow> {
    let configs: Vec<&Config> = runs.iter().map(|r| &r.summary.config).collect();
    let flags = differing_flags(&configs);
    runs.iter()
        .zip(flags)
        .map(|(run, flags)| {
            let s = &run.summary;
            CompareRow {
                run: run.name(),
                model: Config::value_name(&s.config.net_type),
                flags,
                parameters: s.params.regular,
                noise_values: s.params.noise,
                best_correct: run.best_correct(),
                best_epoch: run.best_epoch(),
                final_correct: run.last().test_acc,
                best_reported: run.best_reported(),
                final_reported: run.last().test_acc_reported,
                epochs: run.history.len(),
                seconds_per_epoch: run.seconds_per_epoch(),
                images_per_sec: run.images_per_sec(),
                wall_seconds: s.wall_seconds,
                pnn_version: s.provenance.pnn_version.clone(),
                pnn_commit: s.provenance.pnn_commit.clone(),
                backend: s.provenance.backend.clone(),
                cpu: s.provenance.machine.cpu.clone(),
                cores: s.provenance.machine.cores,
                config: serde_json::to_string(&s.config).unwrap_or_default(),
                dir: run.dir.display().to_string(),
            }
        })
        .collect()
}

/// The comparison as Markdown: the table, the settings all runs share, and where each row
/// came from.
pub fn compare_markdown(runs: &[RecordedRun]) -> String {
    let rows = compare_rows(runs);
    let header = [
        "run",
        "model",
        "flags that differ",
        "parameters",
        "noise values",
        "best correct % (epoch)",
        "final correct %",
        "best reported %",
        "epochs",
        "s / epoch",
        "images/s",
    ];
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.run.clone(),
                r.model.clone(),
                if r.flags.is_empty() {
                    "(none)".into()
                } else {
                    format!("`{}`", r.flags)
                },
                thousands(r.parameters),
                thousands(r.noise_values),
                format!("{:.2} ({})", r.best_correct, r.best_epoch),
                format!("{:.2}", r.final_correct),
                format!("{:.2}", r.best_reported),
                r.epochs.to_string(),
                format!("{:.1}", r.seconds_per_epoch),
                format!("{:.1}", r.images_per_sec),
            ]
        })
        .collect();
    let mut out = markdown_table(&header, &body);
    let configs: Vec<&Config> = runs.iter().map(|r| &r.summary.config).collect();
    let shared = common_flags(&configs, &SHARED_KEYS);
    if !shared.is_empty() {
        out.push_str(&format!("\nShared by all runs: `{shared}`.\n"));
    }
    out.push_str(
        "\nCorrect accuracy: correct / total over the whole test set. Reported: what the original PNN code \
         would have printed (a 0.7 / 0.3 running average of per-batch accuracy).\n\nProvenance:\n",
    );
    for (run, row) in runs.iter().zip(&rows) {
        out.push_str(&format!(
            "- {}: {}; wall time {:.0} s; configuration in {}\n",
            row.run,
            run.summary.provenance.line(),
            row.wall_seconds,
            run.dir.join(CONFIG_FILE).display()
        ));
    }
    out
}

/// The comparison as CSV, one row per run with its full configuration and provenance.
pub fn compare_csv(runs: &[RecordedRun]) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for row in compare_rows(runs) {
        w.serialize(row)?;
    }
    Ok(w.into_inner()?)
}

/// Settings worth naming under a table when all runs share them.
pub const SHARED_KEYS: [&str; 10] = [
    "net_type",
    "dataset_train",
    "dataset_test",
    "train_subset",
    "test_subset",
    "batch_size",
    "optim_method",
    "learning_rate",
    "nepochs",
    "manual_seed",
];

/// A GitHub-flavoured Markdown table.
pub fn markdown_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n", header.join(" | "));
    out.push_str(&format!("|{}\n", "---|".repeat(header.len())));
    for row in rows {
        out.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    out
}

/// 5284982 -> "5,284,982".
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
