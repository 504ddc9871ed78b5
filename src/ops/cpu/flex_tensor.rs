//! Reading and making CPU-backend (flex) tensors for the hand-written kernels.

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, TensorData};

pub fn dims(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().to_vec()
}

/// `t` laid out contiguously in f32: the same storage (a reference-count bump) when it already
/// is, so the kernels read the operands in place.
pub fn contiguous(t: &FlexTensor) -> FlexTensor {
    assert_eq!(t.dtype(), DType::F32, "the hand-written CPU kernels compute in f32");
    if t.as_slice::<f32>().is_some() {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

/// The values of a tensor returned by [`contiguous`].
pub fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a contiguous f32 tensor")
}

pub fn tensor(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}
