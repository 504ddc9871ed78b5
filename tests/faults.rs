//! The fault catalogue: what a user, a machine or a cluster can do to a run, done to `pnn` as a
//! process, with what is left checked afterwards. Each case prints one line (what was done,
//! what pnn said, what was checked) and the last line counts them; any failure fails the test.
//!
//! `cargo test --release --test faults -- --nocapture` prints the catalogue.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{TINY_LENET, metrics_without_timing, write_cifar10_release, write_tiny_mnist};
use rand::{Rng, SeedableRng};

/// What a case found: what pnn said and what was checked.
struct Found {
    said: String,
    checked: String,
}

type CaseResult = Result<Found, String>;

#[derive(Default)]
struct Catalogue {
    cases: usize,
    failed: Vec<String>,
    not_run: Vec<String>,
}

impl Catalogue {
    fn case(&mut self, name: &str, did: &str, run: impl FnOnce() -> CaseResult) {
        self.cases += 1;
        match run() {
            Ok(found) => println!("pass  {name}: {did} | pnn: {} | checked: {}", found.said, found.checked),
            Err(why) => {
                println!("FAIL  {name}: {did} | {why}");
                self.failed.push(format!("{name}: {why}"));
            }
        }
    }

    /// A case this machine cannot run, with the reason (printed and counted, not hidden).
    fn not_run(&mut self, name: &str, why: &str) {
        println!("n/a   {name}: {why}");
        self.not_run.push(format!("{name}: {why}"));
    }
}

fn pnn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pnn"))
}

/// What pnn said: its `error:` line if it refused, else stderr's last non-empty line; shortened
/// for the catalogue.
fn said(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .find(|l| l.contains("error:"))
        .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("")
        .trim();
    shorten(line, 170)
}

fn shorten(line: &str, n: usize) -> String {
    if line.chars().count() > n {
        format!("{}...", line.chars().take(n).collect::<String>())
    } else {
        line.to_string()
    }
}

/// An error exit that is pnn's (status 1, or 2 for a value the command line cannot parse, with an
/// `error:` line), not a panic or a signal.
fn refused(out: &Output) -> Result<(), String> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("panicked") || out.status.code() == Some(101) {
        return Err(format!("panicked: {}", shorten(&stderr, 300)));
    }
    match out.status.code() {
        Some(1 | 2) if stderr.contains("error:") => Ok(()),
        other => Err(format!(
            "expected a refusal (status 1 and a message), got {other:?}: {}",
            said(out)
        )),
    }
}

/// Runs a command to its end, killing it after `limit` (a hang is a failure).
fn run_with_limit(mut command: Command, limit: Duration) -> Result<Output, String> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    loop {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            return child.wait_with_output().map_err(|e| e.to_string());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            return Err(format!("still running after {limit:?}: killed"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `pnn train` on the tiny MNIST set in `data`, with `extra` flags.
fn train(data: &Path, extra: &[&str]) -> Command {
    let mut c = pnn();
    c.arg("train")
        .args(TINY_LENET)
        .arg("--dataroot")
        .arg(data)
        .args(["--device", "cpu"])
        .args(extra);
    c
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn signal(pid: u32, name: &str) {
    // The process may have ended on its own a moment before: kill's complaint is not ours.
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Finishes a run left in `dir` by a killed process: resumes from its checkpoint if it has one,
/// else starts it again (`--force`: its folder may hold the first epoch's metrics). Returns what
/// the resuming process said.
fn finish(data: &Path, dir: &Path, nepochs: &str) -> Result<String, String> {
    let last = dir.join("checkpoint-last");
    let has_checkpoint = pnn::train::checkpoint::load_state(&last).is_ok();
    let cmd = if has_checkpoint {
        train(data, &["--nepochs", nepochs, "--resume", path(&last)])
    } else {
        train(data, &["--nepochs", nepochs, "--save", path(dir), "--force"])
    };
    let out = run_with_limit(cmd, Duration::from_secs(300))?;
    if !out.status.success() {
        return Err(format!("finishing the run failed: {}", said(&out)));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let note = stdout
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
        .find(|l| l.contains("taking it over") || l.contains("put back"))
        .map(|l| shorten(l.trim(), 120))
        .unwrap_or_default();
    Ok(format!(
        "{}{}",
        if has_checkpoint {
            "resumed"
        } else {
            "started again (no checkpoint yet)"
        },
        if note.is_empty() {
            String::new()
        } else {
            format!("; {note}")
        }
    ))
}

/// What the process left in a run folder: the epochs of its checkpoint, and whether a
/// checkpoint was being written.
fn left_behind(dir: &Path) -> String {
    let epochs = pnn::train::checkpoint::load_state(&dir.join("checkpoint-last"))
        .map(|s| {
            format!(
                "checkpoint at epoch {}{}",
                s.epochs_done,
                if s.partial.is_some() { " and a part" } else { "" }
            )
        })
        .unwrap_or_else(|_| "no checkpoint".into());
    let writing = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .any(|e| is_checkpoint_write(&e.file_name().to_string_lossy()))
        })
        .unwrap_or(false);
    if writing {
        format!("{epochs}, a checkpoint write cut short")
    } else {
        epochs
    }
}

/// A checkpoint folder being written (`.checkpoint-last.tmp-<pid>`) or set aside
/// (`.checkpoint-last.old-<pid>`).
fn is_checkpoint_write(name: &str) -> bool {
    name.starts_with(".checkpoint-") && (name.contains(".tmp-") || name.contains(".old-"))
}

fn same_metrics(dir: &Path, reference: &[serde_json::Value]) -> Result<String, String> {
    let got = metrics_without_timing(dir);
    if got != reference {
        return Err(format!(
            "metrics differ from the run left alone: {} epochs vs {}",
            got.len(),
            reference.len()
        ));
    }
    Ok(format!("{} epochs' metrics equal the run left alone's", got.len()))
}

#[test]
fn fault_catalogue() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("mnist");
    std::fs::create_dir_all(&data).unwrap();
    write_tiny_mnist(&data, 200, 50);
    let mut cat = Catalogue::default();

    kills(&mut cat, work.path(), &data);
    kills_inside_checkpoint_writes(&mut cat, work.path(), &data);
    interrupts(&mut cat, work.path());
    full_disk_and_read_only(&mut cat, work.path(), &data);
    two_processes(&mut cat, work.path(), &data);
    damaged_checkpoints(&mut cat, work.path(), &data);
    data_readers(&mut cat, work.path());
    flag_values(&mut cat, work.path(), &data);
    closed_output(&mut cat);

    println!(
        "fault catalogue: {} cases, {} passed, {} failed, {} not run on this machine",
        cat.cases + cat.not_run.len(),
        cat.cases - cat.failed.len(),
        cat.failed.len(),
        cat.not_run.len()
    );
    assert!(cat.failed.is_empty(), "failed cases:\n{}", cat.failed.join("\n"));
}

/// SIGKILL at 20 random moments of a 3-epoch run (some inside checkpoint writes); what is left
/// is resumed (or started again) and must end with the metrics of a run left alone.
fn kills(cat: &mut Catalogue, work: &Path, data: &Path) {
    let reference = work.join("kill-reference");
    let started = Instant::now();
    let out = train(data, &["--nepochs", "3", "--save", path(&reference)])
        .output()
        .unwrap();
    assert!(out.status.success(), "the reference run failed: {}", said(&out));
    let duration = started.elapsed();
    let expected = metrics_without_timing(&reference);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(28);
    for k in 0..20 {
        let dir = work.join(format!("kill-{k}"));
        let delay = duration.mul_f64(rng.random_range(0.05..0.8));
        let did = format!("SIGKILL {} ms into a 3-epoch run", delay.as_millis());
        cat.case(&format!("kill {}", k + 1), &did, || {
            let mut child = train(data, &["--nepochs", "3", "--save", path(&dir)])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?;
            std::thread::sleep(delay);
            let finished_first = child.try_wait().map_err(|e| e.to_string())?.is_some();
            signal(child.id(), "KILL");
            child.wait().map_err(|e| e.to_string())?;
            let left = if finished_first {
                "it had finished".to_string()
            } else {
                left_behind(&dir)
            };
            let said = finish(data, &dir, "3")?;
            Ok(Found {
                said: format!("left {left}; {said}"),
                checked: same_metrics(&dir, &expected)?,
            })
        });
    }
}

/// SIGKILL while a checkpoint folder is being written: the run folder is watched until a
/// checkpoint's temporary folder appears, and the process is killed then. A larger lenet makes
/// the write long enough to catch.
fn kills_inside_checkpoint_writes(cat: &mut Catalogue, work: &Path, data: &Path) {
    let big = ["--nfilters", "96", "--nepochs", "3"];
    let with = |extra: &[&str]| {
        let mut c = pnn();
        let mut base: Vec<&str> = TINY_LENET.to_vec();
        if let Some(at) = base.iter().position(|a| *a == "--nfilters") {
            base.drain(at..at + 2);
        }
        c.arg("train")
            .args(&base)
            .arg("--dataroot")
            .arg(data)
            .args(["--device", "cpu"])
            .args(big)
            .args(extra);
        c
    };
    let reference = work.join("write-kill-reference");
    let out = with(&["--save", path(&reference)]).output().unwrap();
    assert!(out.status.success(), "{}", said(&out));
    let expected = metrics_without_timing(&reference);
    for k in 0..3 {
        let dir = work.join(format!("write-kill-{k}"));
        let did = "SIGKILL as soon as a checkpoint's temporary folder appears (lenet, 96 filters)";
        cat.case(&format!("kill in a checkpoint write {}", k + 1), did, || {
            let mut caught = false;
            for _attempt in 0..10 {
                let _ = std::fs::remove_dir_all(&dir);
                let mut child = with(&["--save", path(&dir)])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| e.to_string())?;
                // Skip k checkpoint writes, so that the cases catch different epochs.
                let mut seen = 0;
                let mut writing = false;
                while child.try_wait().map_err(|e| e.to_string())?.is_none() {
                    let now = std::fs::read_dir(&dir)
                        .map(|es| {
                            es.filter_map(|e| e.ok())
                                .any(|e| is_checkpoint_write(&e.file_name().to_string_lossy()))
                        })
                        .unwrap_or(false);
                    if now && !writing {
                        if seen == k {
                            signal(child.id(), "KILL");
                            caught = true;
                            break;
                        }
                        seen += 1;
                    }
                    writing = now;
                }
                child.wait().map_err(|e| e.to_string())?;
                if caught {
                    break;
                }
            }
            if !caught {
                return Err("no checkpoint write was caught in 10 runs".into());
            }
            let left = left_behind(&dir);
            let finish_cmd = |resume: bool| {
                let last = dir.join("checkpoint-last");
                if resume {
                    with(&["--resume", path(&last)])
                } else {
                    with(&["--save", path(&dir), "--force"])
                }
            };
            let resumable = pnn::train::checkpoint::load_state(&dir.join("checkpoint-last")).is_ok();
            let out = run_with_limit(finish_cmd(resumable), Duration::from_secs(300))?;
            if !out.status.success() {
                return Err(format!("finishing the run failed: {}", said(&out)));
            }
            Ok(Found {
                said: format!("left {left}; {}", if resumable { "resumed" } else { "started again" }),
                checked: same_metrics(&dir, &expected)?,
            })
        });
    }
}

/// Ctrl-C (SIGINT) at random moments of a run whose test pass takes most of its time: pnn stops
/// with status 130 and a checkpoint, and the resumed run matches the one left alone.
fn interrupts(cat: &mut Catalogue, work: &Path) {
    let data = work.join("mnist-big-test");
    std::fs::create_dir_all(&data).unwrap();
    write_tiny_mnist(&data, 64, 3000);
    let reference = work.join("int-reference");
    let started = Instant::now();
    let out = train(&data, &["--nepochs", "2", "--save", path(&reference)])
        .output()
        .unwrap();
    assert!(out.status.success(), "the reference run failed: {}", said(&out));
    let duration = started.elapsed();
    let expected = metrics_without_timing(&reference);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(130);
    for k in 0..5 {
        let dir = work.join(format!("int-{k}"));
        let delay = duration.mul_f64(rng.random_range(0.2..0.9));
        let did = format!(
            "Ctrl-C {} ms into a 2-epoch run (64 training, 3,000 test images)",
            delay.as_millis()
        );
        cat.case(&format!("Ctrl-C {}", k + 1), &did, || {
            let child = train(&data, &["--nepochs", "2", "--save", path(&dir)])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| e.to_string())?;
            std::thread::sleep(delay);
            signal(child.id(), "INT");
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            let code = out.status.code();
            if code != Some(130) && code != Some(0) {
                return Err(format!("exit status {code:?} after Ctrl-C: {}", said(&out)));
            }
            let stopped = if code == Some(130) {
                left_behind(&dir)
            } else {
                "it had finished".into()
            };
            let resumed = finish(&data, &dir, "2")?;
            Ok(Found {
                said: format!("status {}, {stopped}; {resumed}", code.unwrap_or(-1)),
                checked: same_metrics(&dir, &expected)?,
            })
        });
    }
}

/// A shell script run in its own mount namespace, so that it may mount a small tmpfs (as root,
/// or through an unprivileged user namespace); None when this machine allows neither.
fn in_mount_namespace(script: &str, probe: &Path) -> Option<Output> {
    std::fs::create_dir_all(probe).ok()?;
    let mount = format!("mount -t tmpfs -o size=64k none {}", path(probe));
    let ok = Command::new("unshare")
        .args(["-rm", "sh", "-c", &mount])
        .output()
        .ok()?
        .status
        .success();
    if !ok {
        return None;
    }
    Command::new("unshare").args(["-rm", "sh", "-c", script]).output().ok()
}

/// The disk filling up during a checkpoint write, and a read-only run folder.
fn full_disk_and_read_only(cat: &mut Catalogue, work: &Path, data: &Path) {
    let reference = work.join("disk-reference");
    let out = train(data, &["--nepochs", "2", "--save", path(&reference)])
        .output()
        .unwrap();
    assert!(out.status.success());
    let expected = metrics_without_timing(&reference);
    let flags = {
        let mut f: Vec<String> = TINY_LENET.iter().map(|s| s.to_string()).collect();
        f.extend(["--dataroot".into(), path(data).into(), "--device".into(), "cpu".into()]);
        f.join(" ")
    };
    let exe = env!("CARGO_BIN_EXE_pnn");
    let mnt = work.join("mnt");
    let out_dir = work.join("from-mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&out_dir).unwrap();
    let (m, o) = (path(&mnt), path(&out_dir));

    // Epoch 1 fits; then the disk is filled but for half a checkpoint, so that epoch 2's
    // checkpoint cannot be written; then space is freed and the run resumed.
    let script = format!(
        "set -u; mount -t tmpfs -o size=4m none {m} || exit 90
         {exe} train {flags} --nepochs 1 --save {m}/run > {o}/first.log 2>&1 || exit 91
         avail=$(df -k --output=avail {m} | tail -1); ck=$(du -sk {m}/run/checkpoint-last | cut -f1)
         dd if=/dev/zero of={m}/filler bs=1k count=$((avail - ck / 2)) 2>/dev/null
         {exe} train {flags} --nepochs 2 --resume {m}/run/checkpoint-last > {o}/full.out 2> {o}/full.err; echo $? > {o}/full.status
         cp -r {m}/run {o}/run-after-full
         rm {m}/filler
         {exe} train {flags} --nepochs 2 --resume {m}/run/checkpoint-last > {o}/freed.log 2>&1; echo $? > {o}/freed.status
         cp -r {m}/run {o}/run-final"
    );
    let did = "the disk fills up (a 4 MiB tmpfs) during epoch 2's checkpoint, then space is freed";
    match in_mount_namespace(&script, &work.join("probe")) {
        None => cat.not_run(
            "disk full",
            "no tmpfs can be mounted here (neither root nor user namespaces)",
        ),
        Some(ran) => cat.case("disk full", did, || {
            if !ran.status.success() {
                return Err(format!(
                    "the script failed ({:?}): {}",
                    ran.status.code(),
                    String::from_utf8_lossy(&ran.stderr)
                ));
            }
            let read = |f: &str| std::fs::read_to_string(out_dir.join(f)).unwrap_or_default();
            let err = read("full.err");
            if read("full.status").trim() != "1" {
                return Err(format!(
                    "the run on a full disk ended with status {}: {err}",
                    read("full.status").trim()
                ));
            }
            if !err.contains("the disk is full") || !err.contains("checkpoint-last intact") {
                return Err(format!(
                    "the message does not say the disk is full and the checkpoint is intact: {err}"
                ));
            }
            let kept = pnn::train::checkpoint::load_state(&out_dir.join("run-after-full/checkpoint-last"))
                .map_err(|e| format!("the previous checkpoint is not intact: {e:#}"))?;
            if kept.epochs_done != 1 {
                return Err(format!("the checkpoint holds {} epochs, not 1", kept.epochs_done));
            }
            if read("freed.status").trim() != "0" {
                return Err(format!("resuming after freeing space failed: {}", read("freed.log")));
            }
            let line = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
            Ok(Found {
                said: shorten(line.trim(), 170),
                checked: format!(
                    "the epoch-1 checkpoint intact and loadable; resumed after freeing space: {}",
                    same_metrics(&out_dir.join("run-final"), &expected)?
                ),
            })
        }),
    }

    let ro_out = work.join("from-ro");
    std::fs::create_dir_all(&ro_out).unwrap();
    let r = path(&ro_out);
    let script = format!(
        "set -u; mount -t tmpfs -o size=4m none {m} || exit 90
         {exe} train {flags} --nepochs 1 --save {m}/run > {r}/first.log 2>&1 || exit 91
         mount -o remount,ro {m} || exit 92
         {exe} train {flags} --nepochs 2 --resume {m}/run/checkpoint-last > {r}/ro.out 2> {r}/ro.err; echo $? > {r}/ro.status
         cp -r {m}/run {r}/run-after"
    );
    match in_mount_namespace(&script, &work.join("probe")) {
        None => cat.not_run(
            "read-only run folder",
            "no tmpfs can be mounted here (neither root nor user namespaces)",
        ),
        Some(ran) => cat.case(
            "read-only run folder",
            "resume a run whose folder is on a read-only file system",
            || {
                if !ran.status.success() {
                    return Err(format!(
                        "the script failed ({:?}): {}",
                        ran.status.code(),
                        String::from_utf8_lossy(&ran.stderr)
                    ));
                }
                let read = |f: &str| std::fs::read_to_string(ro_out.join(f)).unwrap_or_default();
                let err = read("ro.err");
                if read("ro.status").trim() != "1" || !err.contains("error:") {
                    return Err(format!("status {}: {err}", read("ro.status").trim()));
                }
                let kept = pnn::train::checkpoint::load_state(&ro_out.join("run-after/checkpoint-last"))
                    .map_err(|e| format!("the checkpoint is not intact: {e:#}"))?;
                Ok(Found {
                    said: shorten(
                        err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim(),
                        170,
                    ),
                    checked: format!(
                        "refused before training; the checkpoint (epoch {}) intact",
                        kept.epochs_done
                    ),
                })
            },
        ),
    }
}

/// Two processes given one run folder.
fn two_processes(cat: &mut Catalogue, work: &Path, data: &Path) {
    use std::io::{BufRead, BufReader};
    let dir = work.join("shared-folder");
    cat.case(
        "two processes",
        "a second pnn train on a live run's folder, then the first killed",
        || {
            let mut first = train(data, &["--nepochs", "1000", "--save", path(&dir)])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?;
            let mut stdout = BufReader::new(first.stdout.take().unwrap());
            let mut line = String::new();
            while !line.contains("Epoch 1/1000") {
                line.clear();
                if stdout.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                    return Err("the first run ended early".into());
                }
            }
            let second = train(data, &["--nepochs", "1000", "--save", path(&dir), "--force"])
                .output()
                .map_err(|e| e.to_string())?;
            let result = refused(&second).and_then(|_| {
                if said(&second).contains(&format!("pid {}", first.id())) {
                    Ok(())
                } else {
                    Err(format!("the refusal does not name the owner: {}", said(&second)))
                }
            });
            signal(first.id(), "KILL");
            let _ = first.wait();
            result?;
            Ok(Found {
                said: said(&second),
                checked: "the second refused before writing; the first's lock named it".into(),
            })
        },
    );
}

/// A checkpoint truncated, bit-flipped, rewritten by hand or of another model.
fn damaged_checkpoints(cat: &mut Catalogue, work: &Path, data: &Path) {
    let source = work.join("ckpt-source");
    let out = train(data, &["--nepochs", "1", "--save", path(&source)])
        .output()
        .unwrap();
    assert!(out.status.success());
    type Damage = fn(&Path);
    let cases: [(&str, &str, Damage, &[&str]); 5] = [
        (
            "truncated model",
            "model.bpk cut to half its length",
            |c| cut(&c.join("model.bpk")),
            &[],
        ),
        (
            "bit flip",
            "one bit of optimizer.bpk flipped",
            |c| flip(&c.join("optimizer.bpk")),
            &[],
        ),
        (
            "edited state",
            "state.json rewritten by hand (epochs_done 7)",
            |c| edit_state(c),
            &[],
        ),
        (
            "garbage state",
            "state.json replaced by garbage",
            |c| std::fs::write(c.join("state.json"), b"\x00\x01 not json").unwrap(),
            &[],
        ),
        (
            "another model",
            "resumed with --nfilters 16 (trained with 8)",
            |_| {},
            &["--nfilters", "16"],
        ),
    ];
    for (k, (name, did, damage, extra)) in cases.into_iter().enumerate() {
        let dir = work.join(format!("ckpt-{k}"));
        copy_dir(&source, &dir);
        let last = dir.join("checkpoint-last");
        damage(&last);
        let before = snapshot(&dir);
        cat.case(&format!("checkpoint: {name}"), did, || {
            let mut args = vec!["--nepochs", "2", "--resume", path(&last)];
            args.extend_from_slice(extra);
            // A flag given twice is refused by clap: put the extra flag in place of TINY_LENET's.
            let mut cmd = pnn();
            let mut base: Vec<&str> = TINY_LENET.to_vec();
            for pair in extra.chunks(2) {
                if let Some(at) = base.iter().position(|a| *a == pair[0]) {
                    base.drain(at..at + 2);
                }
            }
            cmd.arg("train")
                .args(&base)
                .arg("--dataroot")
                .arg(data)
                .args(["--device", "cpu"])
                .args(&args);
            let out = run_with_limit(cmd, Duration::from_secs(120))?;
            refused(&out)?;
            let eval = run_with_limit(
                {
                    let mut c = pnn();
                    c.args(["eval", path(&last), "--device", "cpu", "--out"])
                        .arg(work.join(format!("eval-{k}")));
                    c
                },
                Duration::from_secs(120),
            )?;
            if name != "another model" {
                refused(&eval).map_err(|e| format!("pnn eval: {e}"))?;
            }
            if snapshot(&dir) != before {
                return Err("the refused command changed the run folder".into());
            }
            Ok(Found {
                said: said(&out),
                checked: "refused by train --resume and by eval; the run folder unchanged".into(),
            })
        });
    }
}

/// The file cut short in the middle of a record (a cut at a record's end looks like a smaller
/// file of the same format).
fn cut(file: &Path) {
    let bytes = std::fs::read(file).unwrap();
    std::fs::write(file, &bytes[..bytes.len() / 2 - 5]).unwrap();
}

fn flip(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let at = bytes.len() * 2 / 3;
    bytes[at] ^= 0x10;
    std::fs::write(file, bytes).unwrap();
}

fn edit_state(dir: &Path) {
    let file = dir.join("state.json");
    let text = std::fs::read_to_string(&file).unwrap();
    let mut state: serde_json::Value = serde_json::from_str(&text).unwrap();
    state["epochs_done"] = 7.into();
    std::fs::write(file, serde_json::to_string_pretty(&state).unwrap()).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Every file under `dir` with its contents (the lock excluded), to see that nothing changed.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n != "pnn.lock") {
                files.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    files.sort();
    files
}

/// Every data reader given truncated, empty and foreign files.
fn data_readers(cat: &mut Catalogue, work: &Path) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let foreign: Vec<u8> = (0..5000).map(|_| rng.random()).collect();
    type Setup = Box<dyn Fn(&Path)>;
    let mnist = |file: &'static str, damage: fn(&Path)| -> Setup {
        Box::new(move |root: &Path| {
            std::fs::create_dir_all(root).unwrap();
            write_tiny_mnist(root, 40, 20);
            damage(&root.join(file));
        })
    };
    let foreign_bytes = foreign.clone();
    let cases: Vec<(&str, &str, &str, Setup)> = vec![
        (
            "MNIST images truncated",
            "MNIST",
            "train-images-idx3-ubyte",
            mnist("train-images-idx3-ubyte", cut),
        ),
        (
            "MNIST images empty",
            "MNIST",
            "train-images-idx3-ubyte",
            mnist("train-images-idx3-ubyte", |f| std::fs::write(f, b"").unwrap()),
        ),
        (
            "MNIST labels truncated",
            "MNIST",
            "t10k-labels-idx1-ubyte",
            mnist("t10k-labels-idx1-ubyte", cut),
        ),
        (
            "MNIST images foreign",
            "MNIST",
            "train-images-idx3-ubyte",
            Box::new(move |root: &Path| {
                std::fs::create_dir_all(root).unwrap();
                write_tiny_mnist(root, 40, 20);
                std::fs::write(root.join("train-images-idx3-ubyte"), &foreign_bytes).unwrap();
            }),
        ),
        (
            "CIFAR-10 batch truncated",
            "CIFAR10",
            "data_batch_3.bin",
            Box::new(|root: &Path| {
                write_cifar10_release(root, 20);
                cut(&root.join("data_batch_3.bin"));
            }),
        ),
        (
            "CIFAR-10 batch empty",
            "CIFAR10",
            "test_batch.bin",
            Box::new(|root: &Path| {
                write_cifar10_release(root, 20);
                std::fs::write(root.join("test_batch.bin"), b"").unwrap();
            }),
        ),
        (
            "CIFAR-10 archive foreign",
            "CIFAR10",
            "cifar-10-binary.tar.gz",
            Box::new(move |root: &Path| {
                std::fs::create_dir_all(root).unwrap();
                std::fs::write(
                    root.join("cifar-10-binary.tar.gz"),
                    b"\x1f\x8b this is not a gzip stream",
                )
                .unwrap();
            }),
        ),
        (
            "folder: an undecodable image",
            "Folder",
            "broken.png",
            Box::new(|root: &Path| {
                write_folder(root);
                std::fs::write(root.join("train/cat/broken.png"), b"\x89PNG\r\n\x1a\n cut").unwrap();
            }),
        ),
        (
            "folder: a truncated image",
            "Folder",
            "0.png",
            Box::new(|root: &Path| {
                write_folder(root);
                cut(&root.join("test/dog/0.png"));
            }),
        ),
        (
            "folder: an empty class",
            "Folder",
            "bird",
            Box::new(|root: &Path| {
                write_folder(root);
                std::fs::create_dir_all(root.join("train/bird")).unwrap();
            }),
        ),
        (
            "folder: no test split",
            "Folder",
            "test",
            Box::new(|root: &Path| {
                write_folder(root);
                std::fs::remove_dir_all(root.join("test")).unwrap();
            }),
        ),
    ];
    for (k, (name, dataset, named, setup)) in cases.into_iter().enumerate() {
        let root = work.join(format!("data-{k}"));
        setup(&root);
        let did = format!("{dataset} with {name}");
        cat.case(&format!("data: {name}"), &did, || {
            let mut cmd = pnn();
            cmd.args([
                "train",
                "--net-type",
                "lenet",
                "--nfilters",
                "4",
                "--nepochs",
                "1",
                "--no-download",
            ])
            .args(["--dataset-train", dataset, "--dataset-test", dataset, "--device", "cpu"])
            .arg("--dataroot")
            .arg(&root)
            .arg("--save")
            .arg(work.join(format!("data-run-{k}")));
            let out = run_with_limit(cmd, Duration::from_secs(120))?;
            refused(&out)?;
            if !said(&out).contains(named) {
                return Err(format!("the message does not name {named}: {}", said(&out)));
            }
            Ok(Found {
                said: said(&out),
                checked: format!("refused, naming {named}"),
            })
        });
    }
}

/// A two-class image folder of 28x28 grey PNGs.
fn write_folder(root: &Path) {
    for split in ["train", "test"] {
        for (c, class) in ["cat", "dog"].into_iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..4 {
                let img =
                    image::GrayImage::from_fn(28, 28, |x, y| image::Luma([((x + y) as usize * (c + 1) + i) as u8]));
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

/// Every numeric flag given out-of-range, NaN, infinite, negative and absurdly large values:
/// each is refused naming the flag, or accepted and run to its end; none panics or hangs.
fn flag_values(cat: &mut Catalogue, work: &Path, data: &Path) {
    let flags = [
        "--nfilters",
        "--nmasks",
        "--level",
        "--scale_noise",
        "--dropout",
        "--batch-size",
        "--nepochs",
        "--learning-rate",
        "--momentum",
        "--weight-decay",
        "--adam-beta1",
        "--adam-beta2",
        "--train-subset",
        "--test-subset",
        "--nthreads",
        "--manual-seed",
        "--filter_size",
        "--first_filter_size",
        "--log-every",
        "--memory-budget",
        "--learning-rate-decay",
    ];
    let values = ["-1", "0", "nan", "inf", "1e300", "99999999999"];
    // Values that are valid and mean a run of that length: the user's to ask for.
    let long_runs = [("--nepochs", "99999999999")];
    let mut k = 0;
    for flag in flags {
        let (mut refusals, mut runs) = (0, 0);
        let mut problems = Vec::new();
        let mut example = String::new();
        for value in values {
            if long_runs.contains(&(flag, value)) {
                continue;
            }
            k += 1;
            let dir = work.join(format!("flag-{k}"));
            let mut base: Vec<&str> = TINY_LENET.to_vec();
            if let Some(at) = base.iter().position(|a| *a == flag) {
                base.drain(at..at + 2);
            }
            let mut cmd = pnn();
            cmd.arg("train")
                .args(&base)
                .arg("--dataroot")
                .arg(data)
                .args(["--device", "cpu"]);
            if flag != "--nepochs" {
                cmd.args(["--nepochs", "1"]);
            }
            cmd.args([flag, value]).arg("--save").arg(&dir);
            match run_with_limit(cmd, Duration::from_secs(120)) {
                Err(e) => problems.push(format!("{value}: {e}")),
                Ok(out) if out.status.success() => runs += 1,
                Ok(out) => match refused(&out) {
                    Err(e) => problems.push(format!("{value}: {e}")),
                    Ok(()) => {
                        let message = said(&out);
                        let stderr = String::from_utf8_lossy(&out.stderr);
                        let name = flag.trim_start_matches("--");
                        let names_it = stderr.contains(name) || stderr.contains(&name.replace('-', "_"));
                        if names_it {
                            refusals += 1;
                            if example.is_empty() {
                                example = format!("{value}: {message}");
                            }
                        } else {
                            problems.push(format!("{value}: the refusal does not name {flag}: {message}"));
                        }
                    }
                },
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        let did = format!("{flag} {}", values.join(", "));
        cat.case(&format!("flag {flag}"), &did, || {
            if !problems.is_empty() {
                return Err(problems.join("; "));
            }
            Ok(Found {
                said: shorten(&example, 150),
                checked: format!("{refusals} refused naming the flag, {runs} accepted and run to the end"),
            })
        });
    }
}

/// Output piped into a reader that stops early (`pnn info | head -1`): pnn ends quietly (by
/// SIGPIPE, as other Unix tools), without a panic.
fn closed_output(cat: &mut Catalogue) {
    cat.case(
        "closed output",
        "pnn info | head -1 (the reader stops after one line)",
        || {
            let mut child = pnn()
                .args(["info", "--net-type", "resnet18", "--device", "cpu"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| e.to_string())?;
            drop(child.stdout.take());
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("panicked") || out.status.code() == Some(101) {
                return Err(format!("panicked: {}", shorten(&stderr, 200)));
            }
            Ok(Found {
                said: if stderr.trim().is_empty() {
                    "nothing".into()
                } else {
                    shorten(stderr.trim(), 120)
                },
                checked: format!("ended without a panic ({})", out.status),
            })
        },
    );
}
