//! The grid of a sweep: `--grid level=0.05,0.1,0.2 --grid optim-method=SGD,Adam`, parsed and
//! checked against the training flags, and its points (one configuration each).

use anyhow::{Result, bail};
use serde_json::Value;

use crate::config::{Config, TrainArgs};
use crate::report::flags::{flag, flag_name};

/// Fields a grid may not vary: they say where data and logs live or how a run is watched, not
/// what it computes, or (the seed) are varied by `--seeds`.
const FIXED: [(&str, &str); 5] = [
    ("dataroot", "all runs of a sweep read the same data"),
    ("download", "it does not change what a run computes"),
    ("nthreads", "it does not change what a run computes"),
    ("debug", "it only prints values"),
    ("manual_seed", "give --seeds K to run every configuration with K seeds"),
];

/// One axis of the grid: a flag and its values, or several flags varied together
/// (`optim-method:learning-rate=SGD:1e-3,Adam:1e-4`, a recipe). Values are checked and written
/// as the configuration records them (`Adam`, `0.1`, `true`).
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub fields: Vec<String>,
    /// One entry per value of the axis, with a value for each of its fields.
    pub values: Vec<Vec<Value>>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Grid {
    pub axes: Vec<Axis>,
}

/// One configuration of the grid: a value for each field, and which value of each axis it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub settings: Vec<(String, Value)>,
    pub choice: Vec<usize>,
}

impl Grid {
    /// Parses `FLAG=V1,V2,...` specifications (`FLAG1:FLAG2=A1:A2,B1:B2` for flags varied
    /// together). Refuses an unknown flag, a flag that cannot vary, a flag given twice, an empty
    /// value list or a value the flag does not take, naming it.
    pub fn parse(specs: &[String]) -> Result<Grid> {
        let known = Config::default_fields();
        let mut axes: Vec<Axis> = Vec::new();
        for spec in specs {
            let Some((names, list)) = spec.split_once('=') else {
                bail!("--grid {spec}: write FLAG=VALUE,VALUE,... (for example --grid level=0.05,0.1,0.2)");
            };
            let mut fields = Vec::new();
            for name in names.split(':') {
                let shown = name.trim().trim_start_matches("--");
                let field = shown.replace('-', "_");
                if !known.contains_key(&field) {
                    let names: Vec<String> = known.keys().map(|f| flag_name(f)).collect();
                    bail!(
                        "--grid {spec}: pnn train has no flag --{shown} (its flags: {})",
                        names.join(", ")
                    );
                }
                if let Some((_, why)) = FIXED.iter().find(|(f, _)| *f == field) {
                    bail!(
                        "--grid {spec}: --{} cannot vary within a sweep: {why}",
                        flag_name(&field)
                    );
                }
                if fields.contains(&field) || axes.iter().any(|a| a.fields.contains(&field)) {
                    bail!("--grid {spec}: --{} is already varied", flag_name(&field));
                }
                fields.push(field);
            }
            let raw: Vec<&str> = list.split(',').map(str::trim).filter(|v| !v.is_empty()).collect();
            if raw.is_empty() {
                bail!("--grid {spec}: no values given for --{}", flag_name(&fields[0]));
            }
            let mut values = Vec::new();
            for v in raw {
                let parts: Vec<&str> = v.split(':').map(str::trim).collect();
                if parts.len() != fields.len() {
                    bail!(
                        "--grid {spec}: the value {v} has {} part(s) for {} flag(s): separate the flags' values by ':'",
                        parts.len(),
                        fields.len()
                    );
                }
                let value = fields
                    .iter()
                    .zip(parts)
                    .map(|(f, part)| parse_value(f, &known[f], part))
                    .collect::<Result<Vec<_>>>()
                    .map_err(|e| anyhow::anyhow!("--grid {spec}: {e}"))?;
                if values.contains(&value) {
                    bail!("--grid {spec}: the value {v} is listed twice");
                }
                values.push(value);
            }
            axes.push(Axis { fields, values });
        }
        Ok(Grid { axes })
    }

    /// Every combination of the axes' values, the last axis varying fastest. A grid without
    /// axes has one point: the base configuration.
    pub fn points(&self) -> Vec<Point> {
        let mut points = vec![Point {
            settings: Vec::new(),
            choice: Vec::new(),
        }];
        for axis in &self.axes {
            points = points
                .into_iter()
                .flat_map(|p| {
                    axis.values.iter().enumerate().map(move |(k, values)| {
                        let mut point = p.clone();
                        point
                            .settings
                            .extend(axis.fields.iter().cloned().zip(values.iter().cloned()));
                        point.choice.push(k);
                        point
                    })
                })
                .collect();
        }
        points
    }
}

/// A value as the flag parses it: the flag given alone to `pnn train`'s parser, its field read
/// back, so that a grid takes exactly what the command line takes (`adam` is `Adam`).
fn parse_value(field: &str, default: &Value, text: &str) -> Result<Value> {
    let name = flag_name(field);
    let args: Vec<String> = if default.is_boolean() {
        match text.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" => vec![format!("--{name}")],
            "false" | "no" | "off" => vec![format!("--no-{name}")],
            _ => bail!("--{name} is on or off: give true or false, not {text}"),
        }
    } else {
        vec![format!("--{name}"), text.to_string()]
    };
    let parsed = TrainArgs::parse_flags(&args).map_err(|e| {
        let first = e
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_string();
        anyhow::anyhow!("--{name} {text}: {first}")
    })?;
    // The opposite flag folded in, as `to_config` does, without validating the rest.
    Ok(parsed.folded().fields().remove(field).unwrap_or(Value::Null))
}

impl Point {
    /// `base` with this point's settings, validated as `pnn train` validates its flags.
    pub fn apply(&self, base: &Config) -> Result<Config> {
        let mut fields: serde_json::Map<String, Value> = base.fields().into_iter().collect();
        for (field, value) in &self.settings {
            fields.insert(field.clone(), value.clone());
        }
        let config: Config = serde_json::from_value(Value::Object(fields))?;
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.label()))?;
        Ok(config)
    }

    /// The point as flags: `--level 0.1 --optim-method Adam`; `(base)` for the empty grid.
    pub fn label(&self) -> String {
        if self.settings.is_empty() {
            return "(base)".into();
        }
        self.settings
            .iter()
            .map(|(f, v)| flag(f, v))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A folder name for the point: `level-0.1_optim-method-Adam`; `base` for the empty grid.
    pub fn slug(&self) -> String {
        if self.settings.is_empty() {
            return "base".into();
        }
        let part = |(f, v): &(String, Value)| {
            let value = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let raw = format!("{}-{value}", flag_name(f));
            raw.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-.".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        };
        self.settings.iter().map(part).collect::<Vec<_>>().join("_")
    }

    /// The one axis on which two points of a grid differ, if they differ on exactly one.
    pub fn only_difference(&self, other: &Point) -> Option<usize> {
        let differing: Vec<usize> = (0..self.choice.len())
            .filter(|&i| self.choice[i] != other.choice[i])
            .collect();
        match differing.as_slice() {
            [axis] => Some(*axis),
            _ => None,
        }
    }

    /// The settings of one axis as flags: `--optim-method Adam --learning-rate 0.0001`.
    pub fn axis_label(&self, grid: &Grid, axis: usize) -> String {
        let fields = &grid.axes[axis].fields;
        self.settings
            .iter()
            .filter(|(f, _)| fields.contains(f))
            .map(|(f, v)| flag(f, v))
            .collect::<Vec<_>>()
            .join(" ")
    }
}
