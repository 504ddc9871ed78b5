//! ReLU on the CPU backend: the end of every ResNet block, `relu(y + shortcut)`, as one
//! operation with a hand-written backward, and ReLU's backward pass shared with BatchNorm's
//! kernel.
//!
//! Why: burn's addition and ReLU are two passes over the maps forward and two backward, and
//! on flex each ran on the main thread alone (float_add, relu and its backward were 5% of a
//! `perturb_resnet18 --filter_size 1` step's samples in perf, while the other core waited).
//! Here it is one pass each way, on rayon's threads:
//!
//!   forward   out = max(a + b, 0)
//!   backward  da = db = dy where out > 0, else 0

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;
use multiversion::multiversion;
use std::mem::MaybeUninit;

use crate::layer::buffer::par_filled;
use crate::layer::flex_tensor::{contiguous, dims, tensor, values};

/// Values per rayon task of the elementwise passes: large enough that a task's overhead does
/// not show, small enough to split a 16 x 128 x 4 x 4 map between the threads.
const CHUNK: usize = 1 << 13;

#[backend_extension(Flex, Autodiff)]
pub trait AddReluOps: burn::backend::Backend {
    /// `max(a + b, 0)`, for a and b of the same shape.
    fn add_relu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;
}

#[multiversion(targets("x86_64+avx2+fma", "x86_64+avx", "aarch64+neon"))]
fn add_relu_values(out: &mut [MaybeUninit<f32>], a: &[f32], b: &[f32]) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        o.write((a + b).max(0.0));
    }
}

#[multiversion(targets("x86_64+avx2+fma", "x86_64+avx", "aarch64+neon"))]
fn relu_mask(d: &mut [MaybeUninit<f32>], dy: &[f32], out: &[f32]) {
    for ((d, &g), &o) in d.iter_mut().zip(dy).zip(out) {
        d.write(if o > 0.0 { g } else { 0.0 });
    }
}

/// ReLU's backward pass: the gradient `dy` of a ReLU whose output was `out`, passed on where
/// the output was positive (as PyTorch and burn do: 0 at 0).
pub fn through_relu(dy: &[f32], out: &[f32]) -> Vec<f32> {
    assert_eq!(dy.len(), out.len(), "through_relu: gradient and output differ in size");
    // SAFETY: relu_mask writes every value of its chunk.
    unsafe {
        par_filled(dy.len(), CHUNK, |i, d| {
            let at = i * CHUNK;
            relu_mask(d, &dy[at..][..d.len()], &out[at..][..d.len()]);
        })
    }
}

fn forward_flex(a: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    let shape = dims(a);
    assert_eq!(shape, dims(b), "add_relu: the two operands differ in shape");
    let (a, b) = (contiguous(a), contiguous(b));
    let (a, b) = (values(&a), values(&b));
    // SAFETY: add_relu_values writes every value of its chunk.
    let out = unsafe {
        par_filled(a.len(), CHUNK, |i, out| {
            let at = i * CHUNK;
            add_relu_values(out, &a[at..][..out.len()], &b[at..][..out.len()]);
        })
    };
    tensor(out, shape)
}

impl AddReluOps for Flex {
    fn add_relu(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        forward_flex(&a, &b)
    }
}

#[derive(Debug)]
struct AddReluBackward;

impl Backward<Flex, 2> for AddReluBackward {
    /// The output: the next layer keeps it as its input, so keeping it costs no memory.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_a, node_b] = ops.parents;
        let dy = contiguous(&grads.consume::<Flex>(&ops.node));
        let out = contiguous(&ops.state);
        let grad = tensor(through_relu(values(&dy), values(&out)), dims(&out));
        // Both operands receive the same gradient: one buffer, shared.
        if let Some(node) = node_a {
            grads.register::<Flex>(node.id, grad.clone());
        }
        if let Some(node) = node_b {
            grads.register::<Flex>(node.id, grad);
        }
    }
}

impl<C: CheckpointStrategy> AddReluOps for Autodiff<Flex, C> {
    fn add_relu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let prep = AddReluBackward
            .prepare::<C>([a.node(), b.node()])
            .compute_bound()
            .stateful();
        let out = forward_flex(a.primitive(), b.primitive());
        match prep {
            OpsKind::Tracked(prep) => prep.finish(out.clone(), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

/// `relu(a + b)` on the CPU backend, a and b of the same shape (see `residual_relu`, which
/// decides).
pub fn add_relu(a: Tensor<4>, b: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as AddReluOps>::add_relu(a.into_dispatch(), b.into_dispatch()))
}
