//! Running a planned set of training runs, each in its own folder: skipping finished ones,
//! resuming unfinished ones, refusing a folder that holds other settings, and (`--jobs N`)
//! running N at once, each a `pnn train` process with its share of the CPU threads.
//!
//! Parallel runs are separate processes, not threads of this one: burn's CPU backend draws
//! every random number (weights, masks, dropout) from one generator per process, so two runs
//! sharing a process would interleave their draws and neither would be reproducible.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::config::Config;
use crate::device::Backend;
use crate::report::flags::command_args;
use crate::train::checkpoint;
use crate::train::interrupt::{EXIT_INTERRUPTED, StopFlag};
use crate::train::run_dir::RunSummaryFile;
use crate::train::{self, RunOptions};

/// What to do with one run folder.
#[derive(Debug, Clone, PartialEq)]
pub enum RunStatus {
    Finished,
    /// Resume from this checkpoint folder.
    Resume(PathBuf),
    Fresh,
}

/// Decides whether a run folder holds a finished run of `config`, one to resume, or nothing
/// usable. A folder holding a run of other settings is an error: its results are never
/// overwritten.
pub fn run_status(dir: &Path, config: &Config) -> Result<RunStatus> {
    let other = |what: String| {
        anyhow::anyhow!(
            "{} holds a run with other settings ({what}): give another --out, or move that folder away",
            dir.display()
        )
    };
    if let Some(saved) = RunSummaryFile::load(dir)? {
        let mismatches = config.resume_mismatches(&saved.config);
        if !mismatches.is_empty() {
            return Err(other(format!("differs in {}", mismatches.join(", "))));
        }
        if saved.epochs_done > config.nepochs {
            return Err(other(format!(
                "{} epochs done, --nepochs {} asked",
                saved.epochs_done, config.nepochs
            )));
        }
        if saved.epochs_done == config.nepochs {
            return Ok(RunStatus::Finished);
        }
    }
    let last = dir.join("checkpoint-last");
    if last.is_dir() || crate::train::files::recover_replaced_dir(&last).is_ok_and(|r| r.is_some()) {
        let state = checkpoint::load_state(&last)?;
        let mismatches = config.resume_mismatches(&state.config);
        if !mismatches.is_empty() {
            return Err(other(format!("differs in {}", mismatches.join(", "))));
        }
        return Ok(RunStatus::Resume(last));
    }
    Ok(RunStatus::Fresh)
}

/// One run of a sweep or reproduce: its name in progress lines, its configuration, its folder.
#[derive(Debug, Clone)]
pub struct PlannedRun {
    pub name: String,
    /// The flags that make it, as printed before it starts.
    pub flags: String,
    pub config: Config,
    pub dir: PathBuf,
    pub status: RunStatus,
}

impl PlannedRun {
    /// Plans a run, reading what its folder already holds.
    pub fn new(name: String, flags: String, config: Config, dir: PathBuf) -> Result<Self> {
        let status = run_status(&dir, &config)?;
        Ok(Self {
            name,
            flags,
            config,
            dir,
            status,
        })
    }

    /// Where a parallel run's output goes: beside its folder, `seed1.log` for `seed1/`.
    pub fn log_path(&self) -> PathBuf {
        self.dir.with_extension("log")
    }
}

/// How runs are carried out.
pub struct Execution {
    pub backend: Backend,
    /// The `--device` text given, passed on to parallel runs.
    pub device: String,
    /// Runs at once (1: one after another in this process).
    pub jobs: usize,
    /// The `pnn` program that parallel runs start (this process's own executable).
    pub program: Option<PathBuf>,
    pub verbose: bool,
    pub stop: StopFlag,
}

/// Runs stopped by Ctrl-C / SIGTERM, each with a checkpoint: the same command resumes them.
#[derive(Debug, Clone)]
pub struct RunsInterrupted {
    pub stopped: usize,
}

impl fmt::Display for RunsInterrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stopped on request: {} run(s) in progress wrote a checkpoint of where they were",
            self.stopped
        )
    }
}

impl std::error::Error for RunsInterrupted {}

/// Runs every planned run that is not finished: one after another, or `jobs` at once.
pub fn execute(runs: &[PlannedRun], ex: &Execution) -> Result<()> {
    let todo: Vec<&PlannedRun> = runs.iter().filter(|r| r.status != RunStatus::Finished).collect();
    if ex.verbose {
        let done = runs.len() - todo.len();
        if done > 0 {
            println!("{done} of {} runs finished before: skipped", runs.len());
        }
    }
    if ex.jobs <= 1 || todo.len() <= 1 {
        return execute_in_turn(&todo, ex);
    }
    execute_in_parallel(&todo, ex)
}

fn resume_of(run: &PlannedRun) -> Option<PathBuf> {
    match &run.status {
        RunStatus::Resume(from) => Some(from.clone()),
        _ => None,
    }
}

fn execute_in_turn(todo: &[&PlannedRun], ex: &Execution) -> Result<()> {
    let start = Instant::now();
    for (i, run) in todo.iter().enumerate() {
        let resume = resume_of(run);
        if ex.verbose {
            let how = if resume.is_some() { "resuming" } else { "starting" };
            println!(
                "\n[{}/{}] {}: {how}, {:.0} s in",
                i + 1,
                todo.len(),
                run.name,
                start.elapsed().as_secs_f64()
            );
            println!("  pnn train {}", run.flags);
        }
        train_here(run, resume, ex).with_context(|| format!("{} (run folder {})", run.name, run.dir.display()))?;
    }
    Ok(())
}

/// Trains one planned run in this process, in its folder, resuming from `resume` if given.
pub fn train_here(run: &PlannedRun, resume: Option<PathBuf>, ex: &Execution) -> Result<train::RunSummary> {
    train::train(
        &run.config,
        RunOptions {
            resume,
            backend: ex.backend.clone(),
            verbose: ex.verbose,
            stop: ex.stop.clone(),
            ..RunOptions::quiet(Some(run.dir.clone()))
        },
    )
}

/// CPU threads each of `jobs` parallel runs gets: this process's thread pool (the machine's
/// cores, or `RAYON_NUM_THREADS`), shared out evenly. A run's last digits depend on its thread
/// count (sums are split differently), so a run gives the same numbers in a sweep of
/// `--jobs N` as alone with that many threads.
pub fn threads_per_job(jobs: usize) -> usize {
    (rayon::current_num_threads() / jobs.max(1)).max(1)
}

struct Running<'a> {
    run: &'a PlannedRun,
    child: Child,
    started: Instant,
    number: usize,
}

fn execute_in_parallel(todo: &[&PlannedRun], ex: &Execution) -> Result<()> {
    let program = ex
        .program
        .clone()
        .context("parallel runs need the pnn program's path")?;
    prepare_data(todo)?;
    let threads = threads_per_job(ex.jobs);
    if ex.verbose {
        println!(
            "{} runs, {} at once, {threads} CPU thread(s) each; each run's output goes to a .log beside its folder",
            todo.len(),
            ex.jobs
        );
    }
    let mut queue = todo.iter().enumerate();
    let mut running: Vec<Running> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut interrupted = 0;
    loop {
        let stopping = ex.stop.is_requested() || !failures.is_empty();
        while running.len() < ex.jobs && !stopping {
            let Some((i, run)) = queue.next() else { break };
            running.push(spawn(run, i + 1, todo.len(), &program, threads, ex)?);
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut still = Vec::new();
        for mut r in running {
            match r.child.try_wait()? {
                None => still.push(r),
                Some(status) if status.success() => {
                    if ex.verbose {
                        let result = RunSummaryFile::load(&r.run.dir)
                            .ok()
                            .flatten()
                            .and_then(|s| s.final_test_acc)
                            .map_or(String::new(), |a| format!(": final correct accuracy {a:.2}%"));
                        println!(
                            "[{}/{}] {} finished in {:.0} s{result}",
                            r.number,
                            todo.len(),
                            r.run.name,
                            r.started.elapsed().as_secs_f64()
                        );
                    }
                }
                Some(status) if status.code() == Some(EXIT_INTERRUPTED.into()) => interrupted += 1,
                Some(status) => failures.push(format!(
                    "{} failed ({status}); its output: {}{}",
                    r.run.name,
                    r.run.log_path().display(),
                    last_lines(&r.run.log_path())
                )),
            }
        }
        running = still;
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    if interrupted > 0 || ex.stop.is_requested() {
        return Err(RunsInterrupted { stopped: interrupted }.into());
    }
    Ok(())
}

/// Reads each data set the runs use once, here, before they start: a missing set is then
/// downloaded by one process instead of raced for by several, and unreadable data stops the
/// sweep before any run.
fn prepare_data(todo: &[&PlannedRun]) -> Result<()> {
    let mut seen = Vec::new();
    for run in todo {
        let key = (run.config.dataset_train, run.config.dataset_test);
        if !seen.contains(&key) {
            seen.push(key);
            crate::data::load(&run.config).with_context(|| format!("the data of {}", run.name))?;
        }
    }
    Ok(())
}

fn spawn<'a>(
    run: &'a PlannedRun,
    number: usize,
    total: usize,
    program: &Path,
    threads: usize,
    ex: &Execution,
) -> Result<Running<'a>> {
    let log_path = run.log_path();
    if let Some(parent) = log_path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let log = File::create(&log_path).with_context(|| format!("cannot write {}", log_path.display()))?;
    let mut command = Command::new(program);
    command
        .arg("train")
        .args(command_args(&run.config))
        .arg("--save")
        .arg(&run.dir)
        .args(["--device", &ex.device])
        .env("RAYON_NUM_THREADS", threads.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let resume = resume_of(run);
    if let Some(from) = &resume {
        command.arg("--resume").arg(from);
    }
    if ex.verbose {
        let how = if resume.is_some() { "resuming" } else { "starting" };
        println!("[{number}/{total}] {}: {how} (pnn train {})", run.name, run.flags);
    }
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    Ok(Running {
        run,
        child,
        started: Instant::now(),
        number,
    })
}

/// The end of a failed run's log, indented, for the error message.
fn last_lines(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(3)..];
    tail.iter().map(|l| format!("\n  {l}")).collect()
}
