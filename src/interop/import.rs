//! `pnn import`: a PyTorch checkpoint of the reference's models into a pnn model. Both files the
//! reference writes are read: a `state_dict` and the whole model (`torch.save(model)`, as its
//! main.py saves every epoch); burn's reader parses the pickle without running any of it. A
//! safetensors file of the reference's names (as `pnn export` writes) is read too.
//!
//! Every key is accounted for: a tensor the model needs and the file lacks, a key the model has
//! no place for, a shape that differs, are each refused with the key named.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use anyhow::{Result, anyhow, bail};
use burn_store::{ModuleSnapshot, burn_pack};
use pytorch_reader::{DType, PytorchReader};

use super::names::{self, Entry, Layout};
use crate::models::Net;

/// Prefixes a whole file's keys may carry: `nn.DataParallel`'s `module.` (the reference's
/// main.py wraps the model with it on several GPUs) and a checkpoint dict's `state_dict.` or
/// `model.`.
const WRAPPERS: [&str; 3] = ["module.", "state_dict.", "model."];

/// Keys to list per kind of problem before "and N more".
const LISTED: usize = 8;

/// A checkpoint's tensors by key (wrapper prefixes removed): a PyTorch file, or a safetensors
/// file such as `pnn export` writes.
pub struct TorchFile {
    tensors: HashMap<String, Stored>,
}

/// One tensor of a file: where its bytes are and how they are encoded.
enum Stored {
    /// Read from the file when asked for.
    Pth(pytorch_reader::Tensor),
    /// A safetensors tensor, in memory.
    Raw {
        element: Element,
        shape: Vec<usize>,
        bytes: Vec<u8>,
    },
}

/// The element types a weight may come in; anything else is named in the error.
#[derive(Debug, Clone, PartialEq)]
enum Element {
    F32,
    F64,
    F16,
    BF16,
    Other(String),
}

impl Stored {
    fn shape(&self) -> &[usize] {
        match self {
            Stored::Pth(t) => t.shape(),
            Stored::Raw { shape, .. } => shape,
        }
    }

    fn element(&self) -> Element {
        match self {
            Stored::Pth(t) => match t.dtype() {
                DType::F32 => Element::F32,
                DType::F64 => Element::F64,
                DType::F16 => Element::F16,
                DType::BF16 => Element::BF16,
                other => Element::Other(format!("{other:?}")),
            },
            Stored::Raw { element, .. } => element.clone(),
        }
    }

    fn bytes(&self) -> std::io::Result<Vec<u8>> {
        match self {
            Stored::Pth(t) => t.read(),
            Stored::Raw { bytes, .. } => Ok(bytes.clone()),
        }
    }
}

/// Whether a file opens as safetensors does: a little-endian u64 header length, then `{`.
fn is_safetensors(path: &Path) -> bool {
    let mut head = [0u8; 9];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok()
        && head[8] == b'{'
        && u64::from_le_bytes(head[..8].try_into().expect("8 bytes")) < 100_000_000
}

fn read_safetensors(path: &Path) -> Result<HashMap<String, Stored>> {
    let data = std::fs::read(path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
    let file = safetensors::SafeTensors::deserialize(&data)
        .map_err(|e| anyhow!("{} is a damaged safetensors file ({e})", path.display()))?;
    Ok(file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let element = match view.dtype() {
                safetensors::Dtype::F32 => Element::F32,
                safetensors::Dtype::F64 => Element::F64,
                safetensors::Dtype::F16 => Element::F16,
                safetensors::Dtype::BF16 => Element::BF16,
                other => Element::Other(format!("{other:?}")),
            };
            let stored = Stored::Raw {
                element,
                shape: view.shape().to_vec(),
                bytes: view.data().to_vec(),
            };
            (name, stored)
        })
        .collect())
}

impl TorchFile {
    pub fn open(path: &Path) -> Result<Self> {
        if !path.is_file() {
            bail!("{} does not exist or is not a file", path.display());
        }
        let mut tensors = if is_safetensors(path) {
            read_safetensors(path)?
        } else {
            let reader = PytorchReader::new(path).map_err(|e| {
                anyhow!(
                    "{} is not a PyTorch checkpoint pnn can read ({e}): give a file written by torch.save \
                     (a state_dict or a whole model) or a safetensors file",
                    path.display()
                )
            })?;
            reader
                .into_tensors()
                .into_iter()
                .map(|(k, t)| (k, Stored::Pth(t)))
                .collect()
        };
        if tensors.is_empty() {
            bail!("{} holds no tensors: it is not a model's checkpoint", path.display());
        }
        while let Some(prefix) = WRAPPERS.iter().find(|p| tensors.keys().all(|k| k.starts_with(*p))) {
            tensors = tensors
                .into_iter()
                .map(|(k, t)| (k[prefix.len()..].to_string(), t))
                .collect();
        }
        Ok(Self { tensors })
    }

    pub fn keys(&self) -> BTreeSet<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    /// The key's shape, or None when absent (or empty, as noiseresnet18's never-drawn noise).
    fn shape(&self, key: &str) -> Option<&[usize]> {
        self.tensors
            .get(key)
            .map(|t| t.shape())
            .filter(|s| s.iter().product::<usize>() > 0)
    }

    /// The key's values as float32.
    fn read(&self, key: &str, path: &Path) -> Result<Vec<f32>> {
        let tensor = &self.tensors[key];
        let bytes = tensor.bytes().map_err(|e| {
            anyhow!(
                "{}: cannot read {key} (the file is damaged or truncated): {e}",
                path.display()
            )
        })?;
        Ok(match tensor.element() {
            Element::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Element::F64 => bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                .collect(),
            Element::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Element::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Element::Other(name) => bail!(
                "{}: {key} holds {name} values, not floating point: it is not a weight of this model",
                path.display()
            ),
        })
    }
}

/// What an import found.
#[derive(Debug, Default)]
pub struct ImportReport {
    /// Tensors taken from the file.
    pub loaded: usize,
    /// Optional tensors the file lacks, kept as pnn drew them (noiseresnet18's noise).
    pub kept: Vec<String>,
}

/// Loads `file`'s tensors into `model` (built with the flags the file was trained with).
pub fn load_into(model: Net, file: &TorchFile, path: &Path) -> Result<(Net, ImportReport)> {
    let table = names::table(&model);
    let shapes = pnn_shapes(&model);
    let mut missing = Vec::new();
    let mut misshaped = Vec::new();
    let mut found: Vec<(&Entry, &str)> = Vec::new();
    let mut report = ImportReport::default();
    for entry in &table {
        let pnn_shape = &shapes[&entry.path];
        let expected = entry.layout.torch_shape(pnn_shape);
        match entry.keys.iter().find(|k| file.shape(k).is_some()) {
            Some(key) => {
                let got = file.shape(key).expect("present");
                if got != expected.as_slice() {
                    misshaped.push(format!("{key} (the file has {got:?}, the model needs {expected:?})"));
                } else {
                    found.push((entry, key.as_str()));
                }
            }
            None if entry.optional => report.kept.push(entry.keys[0].clone()),
            None => missing.push(entry.keys[0].clone()),
        }
    }
    let known: BTreeSet<&str> = table.iter().flat_map(|e| e.keys.iter().map(String::as_str)).collect();
    let unexpected: Vec<String> = file
        .keys()
        .into_iter()
        .filter(|k| !known.contains(k) && !names::is_batch_counter(k))
        .map(str::to_string)
        .collect();
    if !(missing.is_empty() && misshaped.is_empty() && unexpected.is_empty()) {
        let mut text = format!("{} does not fit the model these flags build:", path.display());
        for (what, keys) in [
            ("keys the model needs that the file lacks", &missing),
            ("keys the model has no place for", &unexpected),
            ("keys of another shape", &misshaped),
        ] {
            if !keys.is_empty() {
                text += &format!("\n  {what} ({}): {}", keys.len(), listed(keys));
            }
        }
        text += "\nBuild the model with the flags the file was trained with: --net-type, --code, --nfilters, \
                 --nmasks, --filter_size, --first_filter_size, --unique_masks, --mix_maps, --act and the data set \
                 (its image size and classes).";
        bail!(text);
    }
    let mut tensors = Vec::with_capacity(found.len());
    for (entry, key) in found {
        let values = file.read(key, path)?;
        let shape = &shapes[&entry.path];
        let values = match entry.layout {
            Layout::Transposed => super::export::transpose(&values, shape[1], shape[0]),
            Layout::Same | Layout::LeadingOne => values,
        };
        let bytes = burn_pack::Bytes::from_elems(values);
        tensors.push(burn_pack::Tensor::new(
            entry.path.clone(),
            burn_pack::DType::F32,
            shape.clone(),
            None,
            bytes,
        ));
    }
    report.loaded = tensors.len();
    let mut model = model;
    let result = model.apply(tensors, None, None, true);
    if !result.errors.is_empty() || !result.unused.is_empty() {
        bail!(
            "{}: pnn could not place every tensor ({:?}; unused: {:?}): this is a bug in src/interop/names.rs",
            path.display(),
            result.errors,
            result.unused
        );
    }
    Ok((model, report))
}

/// Each tensor's shape by its pnn path.
fn pnn_shapes(model: &Net) -> BTreeMap<String, Vec<usize>> {
    model
        .collect(None, None, true)
        .into_iter()
        .map(|t| (t.name.clone(), t.shape.to_vec()))
        .collect()
}

fn listed(keys: &[String]) -> String {
    let mut text = keys.iter().take(LISTED).cloned().collect::<Vec<_>>().join(", ");
    if keys.len() > LISTED {
        text += &format!(" and {} more", keys.len() - LISTED);
    }
    text
}
