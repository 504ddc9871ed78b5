//! Configurations written back as the command-line flags that produce them, so that a table
//! column or a legend entry reads like the command a researcher would type.

use serde_json::Value;

use crate::config::Config;

/// Fields of `Config` whose flag is spelled with hyphens in the reference (`--net-type`); the
/// others keep underscores (`--first_filter_size`).
const HYPHENATED: [&str; 12] = [
    "dataset_train",
    "dataset_test",
    "net_type",
    "batch_size",
    "manual_seed",
    "train_subset",
    "test_subset",
    "optim_method",
    "learning_rate",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
];

/// Fields left out of descriptions: they say where things are, not what was computed.
const NOT_DESCRIBED: [&str; 4] = ["dataroot", "download", "nthreads", "debug"];

/// The command-line name of a configuration field: `net-type`, `first_filter_size`.
pub fn flag_name(field: &str) -> String {
    if HYPHENATED.contains(&field) {
        field.replace('_', "-")
    } else {
        field.to_string()
    }
}

/// The flag that sets `field` to `value`: `--nmasks 64`, `--no-unique_masks`, `--mix_maps`.
pub fn flag(field: &str, value: &Value) -> String {
    let name = flag_name(field);
    match value {
        Value::Bool(true) => format!("--{name}"),
        Value::Bool(false) => format!("--no-{name}"),
        Value::Null => format!("(no --{name})"),
        Value::String(s) => format!("--{name} {s}"),
        other => format!("--{name} {other}"),
    }
}

/// For each configuration, the flags on which the configurations differ (`--net-type` first),
/// e.g. `--nmasks 64 --no-unique_masks`. Empty strings when all are alike.
pub fn differing_flags(configs: &[&Config]) -> Vec<String> {
    let mut fields: Vec<String> = Config::differing_fields(configs)
        .into_iter()
        .filter(|f| !NOT_DESCRIBED.contains(&f.as_str()))
        .collect();
    fields.sort_by_key(|f| f != "net_type");
    configs
        .iter()
        .map(|c| {
            let values = c.fields();
            fields.iter().map(|f| flag(f, &values[f])).collect::<Vec<_>>().join(" ")
        })
        .collect()
}

/// The flags among `keys` on which all configurations agree (unset options left out): the
/// common part of a comparison, e.g. `--net-type cifarnet --dataset-train Cifar10 --nepochs 1`.
pub fn common_flags(configs: &[&Config], keys: &[&str]) -> String {
    let differing = Config::differing_fields(configs);
    let Some(first) = configs.first() else {
        return String::new();
    };
    let values = first.fields();
    keys.iter()
        .filter(|k| !differing.iter().any(|d| d == *k))
        .filter_map(|k| values.get(*k).filter(|v| !v.is_null()).map(|v| flag(k, v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `pnn train` arguments that give exactly this configuration (each flag and value its own
/// argument, every field spelled out), for running it in another process.
pub fn command_args(config: &Config) -> Vec<String> {
    let mut args = Vec::new();
    for (field, value) in config.fields() {
        push_flag(&mut args, &field, value);
    }
    args
}

/// The `pnn train` arguments that differ from the defaults: the short form of
/// [`command_args`], giving the same configuration.
pub fn non_default_args(config: &Config) -> Vec<String> {
    let defaults = Config::default_fields();
    let mut args = Vec::new();
    for (field, value) in config.fields() {
        if defaults.get(&field) != Some(&value) {
            push_flag(&mut args, &field, value);
        }
    }
    args
}

fn push_flag(args: &mut Vec<String>, field: &str, value: Value) {
    let name = flag_name(field);
    match value {
        Value::Null => {}
        Value::Bool(true) => args.push(format!("--{name}")),
        Value::Bool(false) => args.push(format!("--no-{name}")),
        Value::String(s) => args.extend([format!("--{name}"), s]),
        other => args.extend([format!("--{name}"), other.to_string()]),
    }
}
