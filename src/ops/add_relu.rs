//! ReLU on the CPU backend: the end of every ResNet block, `relu(y + shortcut)`, and
//! noiseresnet18's `relu(x + noise)`, as one operation with a hand-written backward, and ReLU's
//! backward pass shared with BatchNorm's kernel.
//!
//! Why: burn's addition and ReLU are two passes over the maps forward and two backward, and
//! on flex each ran on the main thread alone while the other cores waited (the profile is in
//! docs/speed.md). Here it is one pass each way, on rayon's threads:
//!
//!   forward   out = max(a + b, 0)            b of a's shape, or one sample broadcast over the batch
//!   backward  da = db = dy where out > 0, else 0   (db summed over the batch when broadcast)

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

use crate::ops::cpu::buffer::par_filled;
use crate::ops::cpu::flex_tensor::{contiguous, dims, tensor, values};

/// Values per rayon task of the elementwise passes: large enough that a task's overhead does
/// not show, small enough to split a 16 x 128 x 4 x 4 map between the threads.
const CHUNK: usize = 1 << 13;

#[backend_extension(Flex, Autodiff)]
pub trait AddReluOps: burn::backend::Backend {
    /// `max(a + b, 0)`, for b of a's shape, or of a's shape with a batch of 1 (then added to
    /// every sample).
    fn add_relu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;
}

#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "x86_64+avx", "aarch64+neon"))]
fn add_relu_values(out: &mut [MaybeUninit<f32>], a: &[f32], b: &[f32]) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        o.write((a + b).max(0.0));
    }
}

#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "x86_64+avx", "aarch64+neon"))]
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

/// Whether `b` is one sample added to each of a's (else it has a's shape); panics on any other
/// pair of shapes.
fn broadcast(a: &[usize], b: &[usize]) -> bool {
    if a == b {
        return false;
    }
    assert!(
        !a.is_empty() && a.len() == b.len() && b[0] == 1 && a[1..] == b[1..],
        "add_relu: {b:?} is neither {a:?} nor one sample of it"
    );
    true
}

fn forward_flex(a: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    let shape = dims(a);
    let per_sample = broadcast(&shape, &dims(b));
    let (a, b) = (contiguous(a), contiguous(b));
    let (a, b) = (values(&a), values(&b));
    let out = if per_sample {
        // SAFETY: add_relu_values writes every value of the sample.
        unsafe {
            par_filled(a.len(), b.len(), |n, out| {
                add_relu_values(out, &a[n * b.len()..][..out.len()], b);
            })
        }
    } else {
        // SAFETY: add_relu_values writes every value of its chunk.
        unsafe {
            par_filled(a.len(), CHUNK, |i, out| {
                let at = i * CHUNK;
                add_relu_values(out, &a[at..][..out.len()], &b[at..][..out.len()]);
            })
        }
    };
    tensor(out, shape)
}

/// The gradient of a broadcast operand: `grad` [N, ...] summed over its samples.
fn sum_over_samples(grad: &[f32], sample: usize) -> Vec<f32> {
    let n = grad.len() / sample.max(1);
    // SAFETY: each chunk is zeroed, then added into.
    unsafe {
        par_filled(sample, CHUNK, |i, d| {
            let d = crate::ops::cpu::buffer::zeroed(d);
            for s in 0..n {
                let src = &grad[s * sample + i * CHUNK..][..d.len()];
                d.iter_mut().zip(src).for_each(|(d, g)| *d += g);
            }
        })
    }
}

impl AddReluOps for Flex {
    fn add_relu(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        forward_flex(&a, &b)
    }
}

#[derive(Debug)]
struct AddReluBackward;

impl Backward<Flex, 2> for AddReluBackward {
    /// The output (the next layer keeps it as its input, so keeping it costs no memory) and
    /// b's shape.
    type State = (FlexTensor, Vec<usize>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_a, node_b] = ops.parents;
        let dy = contiguous(&grads.consume::<Flex>(&ops.node));
        let (out, b_shape) = ops.state;
        let out = contiguous(&out);
        let shape = dims(&out);
        let grad = through_relu(values(&dy), values(&out));
        if let Some(node) = node_b {
            let db = if broadcast(&shape, &b_shape) {
                tensor(sum_over_samples(&grad, b_shape.iter().product()), b_shape)
            } else {
                tensor(grad.clone(), b_shape)
            };
            grads.register::<Flex>(node.id, db);
        }
        if let Some(node) = node_a {
            grads.register::<Flex>(node.id, tensor(grad, shape));
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
            OpsKind::Tracked(prep) => prep.finish((out.clone(), dims(b.primitive())), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

/// `relu(a + b)` on the CPU backend, b of a's shape or one sample of it (see `residual_relu`
/// and noiseresnet18's noise layer, which decide).
pub fn add_relu(a: Tensor<4>, b: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as AddReluOps>::add_relu(a.into_dispatch(), b.into_dispatch()))
}
