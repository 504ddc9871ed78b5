//! `pnn sweep`: the grid's checks, the statistics behind its intervals, and a sweep end to end,
//! one run at a time and several at once, with the same numbers.

mod common;

use std::process::Command;

use common::{TINY_LENET, metrics_without_timing, write_tiny_mnist};
use pnn::config::{Config, TrainArgs};
use pnn::report::flags::command_args;
use pnn::report::stats::{Difference, Stat, t_975};
use pnn::sweep::Grid;

fn pnn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pnn"))
}

fn grid(specs: &[&str]) -> anyhow::Result<Grid> {
    Grid::parse(&specs.iter().map(|s| s.to_string()).collect::<Vec<_>>())
}

fn grid_error(specs: &[&str]) -> String {
    format!("{:#}", grid(specs).unwrap_err())
}

#[test]
fn t_quantiles_match_the_printed_tables() {
    for (df, q) in [(1.0, 12.706), (2.0, 4.303), (4.0, 2.776), (30.0, 2.042), (1e6, 1.960)] {
        assert!((t_975(df) - q).abs() < 1e-3, "df {df}: {}", t_975(df));
    }
}

#[test]
fn the_interval_of_a_mean_uses_student_t_with_n_minus_1_degrees() {
    let ci = Stat::of(&[84.0, 85.0, 86.0]).ci95().unwrap();
    // 85 ± 4.303 · 1 / √3
    assert!(
        (ci.low - (85.0 - 2.4843)).abs() < 1e-3 && (ci.high - (85.0 + 2.4843)).abs() < 1e-3,
        "{ci:?}"
    );
    assert_eq!(Stat::of(&[72.5]).ci95(), None);
}

#[test]
fn welch_difference_matches_a_hand_computed_case() {
    // Equal spreads and sizes: se = √(2/3), df = 4, t(0.975, 4) = 2.776, t = 2.449, p = 0.0705.
    let d = Difference::welch(&[1.0, 2.0, 3.0], &[3.0, 4.0, 5.0]);
    assert_eq!(d.mean, -2.0);
    assert!((d.df.unwrap() - 4.0).abs() < 1e-9);
    let ci = d.ci95.unwrap();
    assert!(
        (ci.low + 4.2666).abs() < 1e-3 && (ci.high - 0.2666).abs() < 1e-3,
        "{ci:?}"
    );
    assert!((d.p_value.unwrap() - 0.0705).abs() < 1e-3, "{:?}", d.p_value);
    assert!(!d.excludes_zero());
    // Unequal spreads: the degrees of freedom fall below n1 + n2 - 2.
    let d = Difference::welch(&[10.0, 10.1, 9.9, 10.0], &[5.0, 9.0, 1.0, 7.0]);
    assert!(d.df.unwrap() < 4.0, "{:?}", d.df);
    // One seed: no interval.
    assert_eq!(Difference::welch(&[1.0], &[2.0, 3.0]).ci95, None);
    // A clear difference excludes zero.
    assert!(Difference::welch(&[90.0, 90.2, 89.9], &[85.0, 85.3, 84.8]).excludes_zero());
}

#[test]
fn a_grid_is_every_combination_of_its_values() {
    let g = grid(&["level=0.05,0.1,0.2", "optim-method=sgd,Adam"]).unwrap();
    let points = g.points();
    assert_eq!(points.len(), 6);
    assert_eq!(points[0].label(), "--level 0.05 --optim-method SGD");
    assert_eq!(points[5].label(), "--level 0.2 --optim-method Adam");
    assert_eq!(points[1].slug(), "level-0.05_optim-method-Adam");
    let base = TrainArgs::parse_flags(["--net-type", "lenet"])
        .unwrap()
        .to_config()
        .unwrap();
    let c = points[3].apply(&base).unwrap();
    assert_eq!(
        (c.level, Config::value_name(&c.optim_method)),
        (0.1, "Adam".to_string())
    );
    assert_eq!(Config::value_name(&c.net_type), "lenet");
    // Spellings as on the command line, and on/off flags.
    let g = grid(&["--first_filter_size=3,0", "mix_maps=true,false"]).unwrap();
    assert_eq!(g.points()[1].label(), "--first_filter_size 3 --no-mix_maps");
    // No grid: the base configuration alone.
    assert_eq!(grid(&[]).unwrap().points().len(), 1);
    // Flags varied together (a recipe) are one axis.
    let g = grid(&[
        "optim-method:learning-rate:level=SGD:1e-3:0.5,Adam:1e-4:0.1",
        "filter_size=1,0",
    ])
    .unwrap();
    let points = g.points();
    assert_eq!(points.len(), 4);
    assert_eq!(
        points[2].label(),
        "--optim-method Adam --learning-rate 0.0001 --level 0.1 --filter_size 1"
    );
    assert_eq!(points[0].only_difference(&points[2]), Some(0));
    assert_eq!(points[0].only_difference(&points[1]), Some(1));
    assert_eq!(points[0].only_difference(&points[3]), None);
    assert_eq!(
        points[2].axis_label(&g, 0),
        "--optim-method Adam --learning-rate 0.0001 --level 0.1"
    );
}

#[test]
fn a_bad_grid_is_refused_naming_the_problem() {
    let e = grid_error(&["levle=0.1"]);
    assert!(e.contains("no flag --levle") && e.contains("level"), "{e}");
    let e = grid_error(&["level="]);
    assert!(e.contains("no values") && e.contains("--level"), "{e}");
    let e = grid_error(&["dataroot=a,b"]);
    assert!(e.contains("--dataroot cannot vary"), "{e}");
    let e = grid_error(&["manual-seed=1,2"]);
    assert!(e.contains("--seeds"), "{e}");
    let e = grid_error(&["level=0.1", "level=0.2"]);
    assert!(e.contains("already varied"), "{e}");
    let e = grid_error(&["optim-method:level=SGD:0.1,Adam"]);
    assert!(e.contains("1 part(s) for 2 flag(s)"), "{e}");
    let e = grid_error(&["level=0.1,0.1"]);
    assert!(e.contains("listed twice"), "{e}");
    let e = grid_error(&["level=abc"]);
    assert!(e.contains("--level abc"), "{e}");
    let e = grid_error(&["optim-method=SGD,Lion"]);
    assert!(e.contains("Lion"), "{e}");
    let e = grid_error(&["use_act=maybe"]);
    assert!(e.contains("true or false"), "{e}");
    let e = grid_error(&["level"]);
    assert!(e.contains("FLAG=VALUE"), "{e}");
    // A point the models cannot honour is refused before any run, naming the point.
    let base = TrainArgs::parse_flags(["--net-type", "lenet"])
        .unwrap()
        .to_config()
        .unwrap();
    let g = grid(&["nmasks=1,0"]).unwrap();
    let e = format!("{:#}", g.points()[1].apply(&base).unwrap_err());
    assert!(e.contains("--nmasks 0") && e.contains("at least 1"), "{e}");
}

#[test]
fn a_configuration_written_as_flags_parses_back_to_itself() {
    for flags in [
        vec![
            "--net-type",
            "lenet",
            "--level",
            "0.1",
            "--no-unique_masks",
            "--train-subset",
            "100",
        ],
        vec![
            "--code",
            "update",
            "--optim-method",
            "Adam",
            "--learning-rate",
            "1e-4",
            "--mix_maps",
        ],
        vec!["--dataroot", "/tmp/a folder", "--no-download", "--scale_noise", "-2.5"],
    ] {
        let c = TrainArgs::parse_flags(&flags).unwrap().to_config().unwrap();
        let back = TrainArgs::parse_flags(command_args(&c)).unwrap().to_config().unwrap();
        assert_eq!(back, c, "{flags:?}");
    }
}

fn sweep_args<'a>(data: &'a str, out: &'a str, jobs: &'a str) -> Vec<&'a str> {
    let mut args = vec![
        "sweep",
        "--dataroot",
        data,
        "--out",
        out,
        "--nepochs",
        "1",
        "--seeds",
        "2",
        "--jobs",
        jobs,
        "--grid",
        "level=0.1,0.5",
        "--device",
        "cpu",
        "--train-subset",
        "120",
    ];
    args.extend(TINY_LENET);
    args
}

fn run_ok(args: &[&str]) -> String {
    run_ok_with_threads(args, 1)
}

fn run_ok_with_threads(args: &[&str], threads: usize) -> String {
    let out = pnn()
        .args(args)
        .env("RAYON_NUM_THREADS", threads.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "pnn {args:?}\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn a_sweep_runs_its_grid_summarises_it_and_gives_the_same_numbers_in_parallel() {
    let data = tempfile::tempdir().unwrap();
    write_tiny_mnist(data.path(), 120, 40);
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (tmp.path().join("one-at-a-time"), tmp.path().join("two-at-once"));
    let d = data.path().to_str().unwrap();
    // Two threads shared by two runs at once give each one thread: the same arithmetic as one
    // run at a time on one thread, so the same numbers to the last digit.
    run_ok_with_threads(&sweep_args(d, one.to_str().unwrap(), "1"), 1);
    let stdout = run_ok_with_threads(&sweep_args(d, two.to_str().unwrap(), "2"), 2);
    assert!(stdout.contains("2 at once, 1 CPU thread(s) each"), "{stdout}");

    // Four runs in the documented layout, the same numbers however they were run.
    for config in ["level-0.1", "level-0.5"] {
        for seed in ["seed1", "seed2"] {
            let (a, b) = (one.join(config).join(seed), two.join(config).join(seed));
            assert_eq!(
                metrics_without_timing(&a),
                metrics_without_timing(&b),
                "{}",
                a.display()
            );
            assert!(two.join(config).join(format!("{seed}.log")).is_file());
        }
    }
    // The seeds differ from each other.
    assert_ne!(
        metrics_without_timing(&one.join("level-0.1/seed1")),
        metrics_without_timing(&one.join("level-0.1/seed2"))
    );

    let summary = std::fs::read_to_string(one.join("summary.md")).unwrap();
    assert!(summary.contains("| --level 0.1 | 2 | 1 |"), "{summary}");
    assert!(summary.contains("--level 0.1 vs --level 0.5"), "{summary}");
    assert!(summary.contains("Welch"), "{summary}");
    let differences = std::fs::read_to_string(one.join("differences.csv")).unwrap();
    assert_eq!(differences.lines().count(), 2, "{differences}");
    for file in [
        "configurations.csv",
        "runs.csv",
        "sweep.json",
        "figures/curves.png",
        "figures/curves.svg",
    ] {
        assert!(one.join(file).is_file(), "{file} missing");
    }

    // Started again: nothing reruns.
    let metrics = std::fs::read_to_string(one.join("level-0.5/seed2/metrics.jsonl")).unwrap();
    let stdout = run_ok(&sweep_args(d, one.to_str().unwrap(), "1"));
    assert!(stdout.contains("4 of 4 runs finished before"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(one.join("level-0.5/seed2/metrics.jsonl")).unwrap(),
        metrics
    );

    // The same folder with other settings is refused before anything runs.
    let mut other = sweep_args(d, one.to_str().unwrap(), "1");
    let subset = other.iter().position(|a| *a == "120").unwrap();
    other[subset] = "100";
    let out = pnn().args(&other).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("other settings") && stderr.contains("train_subset"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(one.join("level-0.5/seed2/metrics.jsonl")).unwrap(),
        metrics
    );
}

#[test]
fn a_bad_grid_on_the_command_line_fails_before_any_run() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sweep");
    let o = pnn()
        .args([
            "sweep",
            "--out",
            out.to_str().unwrap(),
            "--grid",
            "dataroot=a,b",
            "--device",
            "cpu",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && stderr.contains("--dataroot cannot vary"),
        "{stderr}"
    );
    assert!(!out.exists(), "a refused sweep created {}", out.display());
}

/// Why the intervals use Student's t: over 3 seeds drawn from a normal distribution, the t
/// interval covers the true mean about 95% of the time, a percentile bootstrap of the mean
/// about 75% (docs/sweep.md).
#[test]
fn over_three_seeds_the_t_interval_covers_and_a_bootstrap_does_not() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let normal = |rng: &mut rand_chacha::ChaCha8Rng| {
        let (u, v): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random_range(0.0..1.0));
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    };
    let (trials, resamples) = (2000, 400);
    let (mut t_covers, mut bootstrap_covers) = (0, 0);
    for _ in 0..trials {
        let seeds: Vec<f64> = (0..3).map(|_| normal(&mut rng)).collect();
        if Stat::of(&seeds).ci95().unwrap().contains(0.0) {
            t_covers += 1;
        }
        let mut means: Vec<f64> = (0..resamples)
            .map(|_| (0..3).map(|_| seeds[rng.random_range(0..3)]).sum::<f64>() / 3.0)
            .collect();
        means.sort_by(f64::total_cmp);
        let (low, high) = (means[resamples * 25 / 1000], means[resamples * 975 / 1000 - 1]);
        if low <= 0.0 && 0.0 <= high {
            bootstrap_covers += 1;
        }
    }
    let (t, b) = (t_covers as f64 / trials as f64, bootstrap_covers as f64 / trials as f64);
    println!("coverage over {trials} trials: t {t:.3}, bootstrap {b:.3}");
    assert!((0.93..0.97).contains(&t), "t interval coverage {t}");
    assert!((0.65..0.85).contains(&b), "bootstrap coverage {b}");
}

/// A sweep on a cluster: the array script, one run per task (by --task-index or Slurm's
/// variable), a finished task skipped, and the report collected from what has finished with the
/// missing runs listed.
#[test]
fn a_sweep_as_indexed_tasks_with_a_slurm_script_and_a_collected_report() {
    let data = tempfile::tempdir().unwrap();
    write_tiny_mnist(data.path(), 64, 16);
    let out = tempfile::tempdir().unwrap();
    let sweep_out = out.path().join("sweep");
    let mut common: Vec<String> = vec!["sweep".into()];
    common.extend(TINY_LENET.iter().map(|s| s.to_string()));
    common.extend(
        [
            "--dataroot",
            data.path().to_str().unwrap(),
            "--nepochs",
            "1",
            "--grid",
            "level=0.1,0.3",
            "--seeds",
            "2",
            "--device",
            "cpu",
            "--out",
            sweep_out.to_str().unwrap(),
        ]
        .map(String::from),
    );
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut c = pnn();
        c.args(&common).args(extra);
        for (k, v) in env {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.success(), text)
    };

    let script = out.path().join("sweep.sbatch");
    let (ok, text) = run(
        &[
            "--slurm",
            script.to_str().unwrap(),
            "--max-parallel",
            "2",
            "--time",
            "1:00:00",
        ],
        &[],
    );
    assert!(ok, "{text}");
    let body = std::fs::read_to_string(&script).unwrap();
    for line in [
        "#SBATCH --array=0-3%2",
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --requeue",
        "#SBATCH --time=1:00:00",
    ] {
        assert!(body.contains(line), "{line} missing from:\n{body}");
    }
    let exec = body.lines().find(|l| l.starts_with("exec ")).unwrap();
    assert!(exec.ends_with("--task-index") && !exec.contains("--slurm"), "{exec}");
    let collect = std::fs::read_to_string(format!("{}.collect", script.display())).unwrap();
    assert!(
        collect
            .lines()
            .any(|l| l.starts_with("exec ") && l.ends_with("--collect")),
        "{collect}"
    );

    // Task 1 from Slurm's variable, task 2 by number; task 1 again is skipped.
    let (ok, text) = run(&["--task-index"], &[("SLURM_ARRAY_TASK_ID", "1")]);
    assert!(ok && text.contains("task 1: --level 0.1, seed 2"), "{text}");
    let (ok, text) = run(&["--task-index", "2"], &[]);
    assert!(ok && text.contains("task 2: --level 0.3, seed 1"), "{text}");
    let (ok, text) = run(&["--task-index", "1"], &[]);
    assert!(ok && text.contains("already finished"), "{text}");
    let (ok, text) = run(&["--task-index", "4"], &[]);
    assert!(!ok && text.contains("tasks 0 to 3"), "{text}");

    let (ok, text) = run(&["--collect"], &[]);
    assert!(ok, "{text}");
    assert!(text.contains("2 run(s) not finished"), "{text}");
    assert!(
        text.contains("task 0: --level 0.1, seed 1") && text.contains("not started"),
        "{text}"
    );
    let summary = std::fs::read_to_string(sweep_out.join("summary.md")).unwrap();
    assert!(
        summary.contains("--level 0.1") && summary.contains("--level 0.3"),
        "{summary}"
    );
}
