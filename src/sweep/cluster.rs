//! Sweeps and experiment tables on a cluster: a Slurm job array with one run per task (or any
//! scheduler's indexed tasks, such as Kubernetes Indexed Jobs), and a job that collects the
//! report once they are done. Each run keeps its own resumable folder, whose lock keeps two
//! tasks from training it at once. A task asked to stop before its time limit or on preemption
//! (SIGUSR1, or SIGTERM) writes a checkpoint where it is and requeues itself; the requeued task
//! resumes from there.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;

use super::runner::{Execution, PlannedRun, RunStatus, train_here};
use crate::train::files::write_atomic;
use crate::train::interrupt::{Interrupted, shell_quote};

/// How a sweep or an experiment table is spread over a cluster.
#[derive(Debug, Clone, Default, Args)]
pub struct ClusterFlags {
    /// Write a Slurm job array script to FILE, one task per run, and beside it FILE's collect
    /// job (`<FILE>.collect`), then exit (or submit both with --submit).
    #[arg(long, value_name = "FILE")]
    pub slurm: Option<PathBuf>,
    /// With --slurm: submit the array and, to run after it, the collect job (sbatch), and print
    /// their job ids.
    #[arg(long, requires = "slurm")]
    pub submit: bool,
    /// Run only run K of the plan (0-based, in the order --list prints) [default with no K:
    /// $SLURM_ARRAY_TASK_ID, else $JOB_COMPLETION_INDEX].
    #[arg(long = "task-index", value_name = "K", num_args = 0..=1, default_missing_value = "")]
    pub task_index: Option<String>,
    /// Write the report from the runs that have finished, listing the missing ones with the
    /// state of their folders and their logs.
    #[arg(long)]
    pub collect: bool,
    /// Slurm: tasks running at once (the array's %P) [default: no limit].
    #[arg(long = "max-parallel", value_name = "P")]
    pub max_parallel: Option<usize>,
    /// Slurm: partition.
    #[arg(long)]
    pub partition: Option<String>,
    /// Slurm: time limit per task, e.g. 12:00:00.
    #[arg(long)]
    pub time: Option<String>,
    /// Slurm: GPUs per task.
    #[arg(long = "gpus-per-task")]
    pub gpus_per_task: Option<String>,
    /// Slurm: CPU cores per task.
    #[arg(long = "cpus-per-task")]
    pub cpus_per_task: Option<usize>,
    /// Slurm: memory per task, e.g. 16G.
    #[arg(long)]
    pub mem: Option<String>,
    /// Slurm: a further sbatch option for both jobs, e.g. --sbatch=--account=lab (repeatable).
    #[arg(long = "sbatch", value_name = "OPTION", allow_hyphen_values = true)]
    pub sbatch: Vec<String>,
    /// Slurm: seconds before a task's time limit at which it is asked to checkpoint and requeue
    /// itself.
    #[arg(long = "signal-before", value_name = "SECONDS", default_value_t = 120)]
    pub signal_before: u32,
}

/// Flags of the cluster machinery that a task's own command line must not repeat.
const SCRIPT_ONLY: [&str; 2] = ["--slurm", "--submit"];

impl ClusterFlags {
    /// The task this process is to run, if it is one.
    pub fn task(&self) -> Result<Option<usize>> {
        let Some(given) = &self.task_index else {
            return Ok(None);
        };
        let (text, source) = if given.is_empty() {
            match ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"]
                .into_iter()
                .find_map(|v| std::env::var(v).ok().map(|x| (x, v)))
            {
                Some((x, v)) => (x, format!("${v}")),
                None => bail!(
                    "--task-index without a number needs $SLURM_ARRAY_TASK_ID (a Slurm array task) or \
                     $JOB_COMPLETION_INDEX (a Kubernetes Indexed Job): give the index, --task-index K"
                ),
            }
        } else {
            (given.clone(), "--task-index".to_string())
        };
        let index = text
            .trim()
            .parse()
            .map_err(|_| anyhow!("{source} is {text:?}, not a task number (0, 1, ...)"))?;
        Ok(Some(index))
    }
}

/// Runs task `index` of `runs`: skips it if finished, else trains it (resuming what is there).
/// Stopped by a signal inside a Slurm job, it requeues the job, whose next start resumes it.
pub fn run_task(runs: &[PlannedRun], index: usize, ex: &Execution) -> Result<()> {
    let run = runs.get(index).ok_or_else(|| {
        anyhow!(
            "task {index} does not exist: this plan has {} runs, tasks 0 to {}",
            runs.len(),
            runs.len().saturating_sub(1)
        )
    })?;
    println!("task {index}: {} in {}", run.name, run.dir.display());
    let resume = match &run.status {
        RunStatus::Finished => {
            println!("already finished: nothing to do");
            return Ok(());
        }
        RunStatus::Resume(from) => {
            println!("resuming from {}", from.display());
            Some(from.clone())
        }
        RunStatus::Fresh => None,
    };
    println!("  pnn train {}", run.flags);
    match train_here(run, resume, ex) {
        Ok(_) => Ok(()),
        Err(e) => match (e.downcast_ref::<Interrupted>(), slurm_job()) {
            (Some(stopped), Some(job)) => {
                println!("{stopped}");
                requeue(&job)
            }
            _ => Err(e.context(format!("{} (run folder {})", run.name, run.dir.display()))),
        },
    }
}

/// This process's Slurm job as `scontrol` names it (`<array job>_<task>` for an array task).
fn slurm_job() -> Option<String> {
    let var = |v: &str| std::env::var(v).ok().filter(|x| !x.is_empty());
    match (var("SLURM_ARRAY_JOB_ID"), var("SLURM_ARRAY_TASK_ID")) {
        (Some(array), Some(task)) => Some(format!("{array}_{task}")),
        _ => var("SLURM_JOB_ID"),
    }
}

fn requeue(job: &str) -> Result<()> {
    println!("requeueing Slurm job {job}: its next start resumes from the checkpoint");
    let status = Command::new("scontrol")
        .args(["requeue", job])
        .status()
        .context("cannot run scontrol to requeue the job")?;
    if !status.success() {
        bail!("scontrol requeue {job} failed ({status}): resume the run by submitting the task again");
    }
    Ok(())
}

/// The command line of a task: this one without the script-only flags, with the program's full
/// path, and `extra` added.
fn task_command(extra: &str) -> Result<String> {
    let exe = std::env::current_exe().context("cannot tell where the pnn program is")?;
    let mut args: Vec<String> = vec![exe.display().to_string()];
    let mut skip_value = false;
    for arg in std::env::args().skip(1) {
        if skip_value {
            skip_value = false;
            continue;
        }
        if SCRIPT_ONLY.contains(&arg.as_str()) {
            skip_value = arg == "--slurm";
            continue;
        }
        if SCRIPT_ONLY.iter().any(|f| arg.starts_with(&format!("{f}="))) {
            continue;
        }
        args.push(arg);
    }
    args.push(extra.to_string());
    Ok(args.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" "))
}

/// The `#SBATCH` lines both jobs share: working folder and the resources asked for.
fn shared_options(flags: &ClusterFlags) -> Result<Vec<String>> {
    let cwd = std::env::current_dir().context("cannot tell the current folder")?;
    let mut lines = vec![format!("--chdir={}", cwd.display())];
    let pass = [
        ("partition", flags.partition.clone()),
        ("time", flags.time.clone()),
        ("gpus-per-task", flags.gpus_per_task.clone()),
        ("cpus-per-task", flags.cpus_per_task.map(|n| n.to_string())),
        ("mem", flags.mem.clone()),
    ];
    lines.extend(pass.into_iter().filter_map(|(k, v)| v.map(|v| format!("--{k}={v}"))));
    lines.extend(flags.sbatch.iter().cloned());
    Ok(lines)
}

/// The array job: one task per run, each `exec`-ing pnn so that Slurm's signal reaches it.
pub fn array_script(flags: &ClusterFlags, runs: usize, name: &str, out: &Path) -> Result<String> {
    if runs == 0 {
        bail!("the plan has no runs: nothing to submit");
    }
    let logs = out.join("slurm");
    let mut array = format!("0-{}", runs - 1);
    if let Some(p) = flags.max_parallel {
        array += &format!("%{p}");
    }
    let mut options = vec![
        format!("--job-name=pnn-{name}"),
        format!("--array={array}"),
        format!("--output={}/task-%a.log", logs.display()),
        // A requeued task writes on after its earlier starts.
        "--open-mode=append".to_string(),
        "--requeue".to_string(),
        // To the batch shell, which is pnn itself (exec below).
        format!("--signal=B:USR1@{}", flags.signal_before),
    ];
    options.extend(shared_options(flags)?);
    Ok(script(
        &format!("{runs} runs of a pnn {name}, one per task of a Slurm job array"),
        &options,
        &task_command("--task-index")?,
    ))
}

/// The collect job: the report from what has finished.
pub fn collect_script(flags: &ClusterFlags, name: &str, out: &Path) -> Result<String> {
    let mut options = vec![
        format!("--job-name=pnn-{name}-collect"),
        format!("--output={}/collect.log", out.join("slurm").display()),
    ];
    options.extend(shared_options(flags)?);
    Ok(script(
        &format!("the report of a pnn {name} from the runs that finished"),
        &options,
        &task_command("--collect")?,
    ))
}

fn script(what: &str, options: &[String], command: &str) -> String {
    let mut text = format!("#!/bin/bash\n# Written by pnn: {what}.\n");
    for o in options {
        text += &format!("#SBATCH {o}\n");
    }
    text += &format!("exec {command}\n");
    text
}

/// Writes the two scripts (and with `submit` submits them); returns what to print.
pub fn write_scripts(flags: &ClusterFlags, runs: usize, name: &str, out: &Path) -> Result<Vec<String>> {
    let file = flags.slurm.as_ref().expect("--slurm given");
    let collect = PathBuf::from(format!("{}.collect", file.display()));
    std::fs::create_dir_all(out.join("slurm"))
        .with_context(|| format!("cannot create {}", out.join("slurm").display()))?;
    write_atomic(file, array_script(flags, runs, name, out)?.as_bytes())?;
    write_atomic(&collect, collect_script(flags, name, out)?.as_bytes())?;
    let mut said = vec![
        format!("wrote {} ({runs} tasks)", file.display()),
        format!("wrote {}", collect.display()),
    ];
    if !flags.submit {
        said.push(format!(
            "submit with: sbatch {} and then sbatch --dependency=afterany:<its job id> {} (or add --submit)",
            file.display(),
            collect.display()
        ));
        return Ok(said);
    }
    let array = sbatch(&[file.display().to_string()])?;
    let after = sbatch(&[format!("--dependency=afterany:{array}"), collect.display().to_string()])?;
    said.push(format!(
        "submitted the array as job {array} and the collect job as {after}"
    ));
    Ok(said)
}

/// Submits with `sbatch --parsable` and returns the job id.
fn sbatch(args: &[String]) -> Result<String> {
    let out = Command::new("sbatch")
        .arg("--parsable")
        .args(args)
        .output()
        .context("cannot run sbatch: is this a Slurm login node?")?;
    if !out.status.success() {
        bail!(
            "sbatch {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // `<id>` or `<id>;<cluster>`.
    Ok(text.trim().split(';').next().unwrap_or("").to_string())
}

/// A line per run that has not finished: its folder's state and its task's log.
pub fn missing_runs(runs: &[PlannedRun], out: &Path) -> Vec<String> {
    runs.iter()
        .enumerate()
        .filter(|(_, r)| r.status != RunStatus::Finished)
        .map(|(k, r)| {
            let state = match &r.status {
                RunStatus::Resume(from) => match crate::train::checkpoint::load_state(from) {
                    Ok(s) => format!("unfinished, {} of {} epochs done", s.epochs_done, r.config.nepochs),
                    Err(_) => "unfinished, its checkpoint unreadable".into(),
                },
                _ if r.dir.exists() => "started, no epoch finished".into(),
                _ => "not started".into(),
            };
            let log = out.join("slurm").join(format!("task-{k}.log"));
            let log = if log.is_file() {
                format!("; log {}", log.display())
            } else if r.log_path().is_file() {
                format!("; log {}", r.log_path().display())
            } else {
                String::new()
            };
            format!("task {k}: {} ({}): {state}{log}", r.name, r.dir.display())
        })
        .collect()
}
