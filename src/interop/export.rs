//! `pnn export`: a model's tensors under the reference's `state_dict` names and layouts, in a
//! safetensors file that the reference's models.py loads with `load_state_dict`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use burn_store::ModuleSnapshot;
use safetensors::Dtype;
use safetensors::tensor::TensorView;

use super::names::{self, Layout};
use crate::models::Net;
use crate::train::files::write_atomic;

/// A tensor in the reference's layout, as float32 values.
pub struct TorchTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Every tensor of `model` by its reference key (a module registered twice in the reference
/// appears under each of its keys). Fails only if pnn's table misses one of the model's tensors.
pub fn state_dict(model: &Net) -> Result<BTreeMap<String, TorchTensor>> {
    let table = names::table(model);
    let by_path: HashMap<&str, &names::Entry> = table.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut out = BTreeMap::new();
    let mut seen = 0;
    for snapshot in model.collect(None, None, true) {
        let entry = by_path.get(snapshot.name.as_str()).ok_or_else(|| {
            anyhow!(
                "pnn has no PyTorch name for the tensor {} of this model: this is a bug in pnn's \
                 table of names (src/interop/names.rs)",
                snapshot.name
            )
        })?;
        seen += 1;
        let shape = snapshot.shape.to_vec();
        let name = snapshot.name.clone();
        let bytes = snapshot
            .into_bytes()
            .map_err(|e| anyhow!("cannot read the tensor {name} of the model: {e:?}"))?;
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let tensor = to_torch(&shape, values, entry.layout);
        for key in &entry.keys {
            out.insert(
                key.clone(),
                TorchTensor {
                    shape: tensor.shape.clone(),
                    values: tensor.values.clone(),
                },
            );
        }
    }
    if seen != table.len() {
        bail!(
            "pnn's table of PyTorch names lists {} tensors but the model has {seen}: this is a bug in \
             src/interop/names.rs",
            table.len()
        );
    }
    Ok(out)
}

/// A pnn tensor in PyTorch's layout.
pub fn to_torch(shape: &[usize], values: Vec<f32>, layout: Layout) -> TorchTensor {
    let torch_shape = layout.torch_shape(shape);
    let values = match layout {
        Layout::Transposed => transpose(&values, shape[0], shape[1]),
        Layout::Same | Layout::LeadingOne => values,
    };
    TorchTensor {
        shape: torch_shape,
        values,
    }
}

/// A row-major [rows, cols] matrix as [cols, rows].
pub fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// Writes `tensors` to a safetensors file (float32, with `metadata`, and `labels` as an int64
/// tensor when given), atomically: an existing file is replaced only once the new one is
/// complete.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, TorchTensor>,
    metadata: HashMap<String, String>,
    labels: Option<&[i64]>,
) -> Result<()> {
    let mut bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, t)| {
            let data = t.values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (k.clone(), Dtype::F32, t.shape.clone(), data)
        })
        .collect();
    if let Some(labels) = labels {
        let data = labels.iter().flat_map(|v| v.to_le_bytes()).collect();
        bytes.push(("labels".to_string(), Dtype::I64, vec![labels.len()], data));
    }
    let views = bytes
        .iter()
        .map(|(k, dtype, shape, b)| Ok((k.as_str(), TensorView::new(*dtype, shape.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| anyhow!("cannot lay out the safetensors file: {e}"))?;
    let file = safetensors::serialize(views, Some(metadata)).map_err(|e| anyhow!("cannot encode safetensors: {e}"))?;
    write_atomic(path, &file).with_context(|| format!("cannot write {}", path.display()))
}
