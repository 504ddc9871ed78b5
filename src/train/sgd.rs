//! SGD with momentum, Nesterov and L2 weight decay: burn's rule, in one parallel pass per
//! parameter on the CPU backend.
//!
//! burn's `Sgd` applies its rule as five to seven separate tensor operations per parameter
//! (weight decay, momentum, Nesterov, learning rate, subtraction), and on flex each of them runs
//! on the main thread alone while the other cores wait (docs/speed.md has the profile). Here the same arithmetic, in the same order, is one
//! pass over each parameter on rayon's threads:
//!
//!   d = p * weight_decay + g
//!   v = d * (1 - dampening) + v * momentum       (v = d at the first step)
//!   u = v * momentum + d  (Nesterov)   or   u = v
//!   p = p - u * lr
//!
//! Each line is what burn computes (the same f32 operations, without fused multiply-adds), so
//! the result is bit for bit burn's; a test checks it. On another backend, or for a tensor that
//! is not plain f32, the step falls back to tensor operations. The state is recorded under
//! burn's names (`momentum.velocity`), so checkpoints written with burn's `Sgd` load.

use std::mem::MaybeUninit;

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::optim::{LearningRate, Optimizer, RecordState, StateSink, StateSource, join_path};
use burn::tensor::{Device, Tensor};
use multiversion::multiversion;

use crate::ops::cpu::buffer::par_filled;
use crate::ops::cpu::flex_tensor::{contiguous, dims, tensor, values};

/// The rule's constants, as burn's `SgdConfig` takes them.
#[derive(Clone, Debug)]
pub struct Sgd {
    pub momentum: Option<Momentum>,
    /// The L2 penalty added to the gradient.
    pub weight_decay: Option<f32>,
}

#[derive(Clone, Copy, Debug)]
pub struct Momentum {
    pub momentum: f32,
    pub dampening: f64,
    pub nesterov: bool,
}

/// Per parameter: its velocity, once momentum has started.
#[derive(Clone)]
pub struct SgdState<const D: usize> {
    pub momentum: Option<MomentumState<D>>,
}

#[derive(Clone)]
pub struct MomentumState<const D: usize> {
    pub velocity: Tensor<D>,
}

impl<const D: usize> RecordState for MomentumState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        out.push_tensor(prefix, "velocity", self.velocity.clone().into_data());
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        let velocity = Tensor::from_data(src.take_tensor(prefix, "velocity")?, device);
        Some(Self { velocity })
    }
}

impl<const D: usize> RecordState for SgdState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        if let Some(momentum) = &self.momentum {
            momentum.state_flatten(&join_path(prefix, "momentum"), out);
        }
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        let path = join_path(prefix, "momentum");
        let momentum = if src.has_under(&path) {
            Some(MomentumState::state_unflatten(&path, src, device)?)
        } else {
            None
        };
        Some(Self { momentum })
    }
}

/// The constants of one step, as the f32 values burn's scalar operations use.
#[derive(Clone, Copy)]
struct Rule {
    lr: f32,
    weight_decay: Option<f32>,
    /// (momentum, 1 - dampening, nesterov)
    momentum: Option<(f32, f32, bool)>,
}

impl Sgd {
    fn rule(&self, lr: LearningRate) -> Rule {
        Rule {
            lr: lr as f32,
            weight_decay: self.weight_decay,
            momentum: self
                .momentum
                .map(|m| (m.momentum, (1.0 - m.dampening) as f32, m.nesterov)),
        }
    }
}

/// Values per rayon task: large enough that a task's overhead does not show.
const CHUNK: usize = 1 << 14;

/// One chunk of the rule: new parameters into `p_out`, new velocities into `v_out` (when
/// momentum is on). `v` is the previous velocity, absent at the first step.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma", "x86_64+avx", "aarch64+neon"))]
fn step_chunk(
    rule: Rule,
    p: &[f32],
    g: &[f32],
    v: Option<&[f32]>,
    p_out: &mut [MaybeUninit<f32>],
    v_out: Option<&mut [MaybeUninit<f32>]>,
) {
    let decayed = |i: usize| match rule.weight_decay {
        Some(wd) => p[i] * wd + g[i],
        None => g[i],
    };
    match (rule.momentum, v_out) {
        (Some((momentum, undamped, nesterov)), Some(v_out)) => {
            for i in 0..p.len() {
                let d = decayed(i);
                let velocity = match v {
                    Some(v) => d * undamped + v[i] * momentum,
                    None => d,
                };
                let update = if nesterov { velocity * momentum + d } else { velocity };
                v_out[i].write(velocity);
                p_out[i].write(p[i] - update * rule.lr);
            }
        }
        _ => {
            for i in 0..p.len() {
                p_out[i].write(p[i] - decayed(i) * rule.lr);
            }
        }
    }
}

/// The step on flex tensors: (new parameters, new velocity).
fn step_flex(rule: Rule, p: &FlexTensor, g: &FlexTensor, v: Option<&FlexTensor>) -> (FlexTensor, Option<FlexTensor>) {
    let shape = dims(p);
    let (p, g) = (contiguous(p), contiguous(g));
    let v = v.map(contiguous);
    let (p, g) = (values(&p), values(&g));
    assert_eq!(p.len(), g.len(), "sgd: parameter and gradient differ in size");
    let v = v.as_ref().map(values);
    let len = p.len();
    let mut velocity = rule.momentum.map(|_| Vec::<f32>::with_capacity(len));
    // The velocity buffer is split into the same chunks as the parameters, by address.
    let v_out_base = velocity
        .as_mut()
        .map(|buf| SendPtr(buf.spare_capacity_mut().as_mut_ptr()));
    // SAFETY: step_chunk writes every value of its parameter chunk, and with momentum every value
    // of the matching velocity chunk (a disjoint range of the velocity buffer, of the same length).
    let params = unsafe {
        par_filled(len, CHUNK, |i, p_out| {
            let at = i * CHUNK;
            let n = p_out.len();
            let v_out = v_out_base.map(|base| std::slice::from_raw_parts_mut(base.get().add(at), n));
            step_chunk(
                rule,
                &p[at..][..n],
                &g[at..][..n],
                v.map(|v| &v[at..][..n]),
                p_out,
                v_out,
            );
        })
    };
    let velocity = velocity.map(|mut buf| {
        // SAFETY: every chunk of the velocity was written above.
        unsafe { buf.set_len(len) };
        tensor(buf, shape.clone())
    });
    (tensor(params, shape), velocity)
}

/// A raw pointer that rayon's tasks may share: each writes only its own disjoint range.
#[derive(Clone, Copy)]
struct SendPtr(*mut MaybeUninit<f32>);

// SAFETY: see the type's comment; the buffer outlives the parallel loop.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so that closures capture the whole `SendPtr`, not its field).
    fn get(self) -> *mut MaybeUninit<f32> {
        self.0
    }
}

impl Optimizer for Sgd {
    type State<const D: usize> = SgdState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let velocity = state.and_then(|s| s.momentum).map(|m| m.velocity);
        let device = tensor.device();
        let on_flex = crate::ops::hand_written(&device) && !device.is_autodiff();
        let (tensor, velocity) = if on_flex {
            self.step_on_flex(lr, tensor, grad, velocity)
        } else {
            self.step_with_tensor_ops(lr, tensor, grad, velocity)
        };
        let momentum = velocity.map(|velocity| MomentumState { velocity });
        (tensor, Some(SgdState { momentum }))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        SgdState {
            momentum: state.momentum.map(|m| MomentumState {
                velocity: m.velocity.to_device(device),
            }),
        }
    }
}

impl Sgd {
    fn step_on_flex<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        velocity: Option<Tensor<D>>,
    ) -> (Tensor<D>, Option<Tensor<D>>) {
        let primitive = |t: Tensor<D>| {
            t.try_into_primitive::<Flex>()
                .expect("a tensor on the CPU backend is a flex tensor")
        };
        let v = velocity.map(primitive);
        let (p, v) = step_flex(self.rule(lr), &primitive(tensor), &primitive(grad), v.as_ref());
        (Tensor::from_primitive::<Flex>(p), v.map(Tensor::from_primitive::<Flex>))
    }

    /// burn's `Sgd::step`, operation for operation: for the GPU backends.
    fn step_with_tensor_ops<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        mut grad: Tensor<D>,
        velocity: Option<Tensor<D>>,
    ) -> (Tensor<D>, Option<Tensor<D>>) {
        if let Some(penalty) = self.weight_decay {
            grad = tensor.clone().mul_scalar(penalty).add(grad);
        }
        let mut new_velocity = None;
        if let Some(m) = &self.momentum {
            let velocity = match velocity {
                Some(v) => grad.clone().mul_scalar(1.0 - m.dampening).add(v.mul_scalar(m.momentum)),
                None => grad.clone(),
            };
            grad = if m.nesterov {
                velocity.clone().mul_scalar(m.momentum).add(grad)
            } else {
                velocity.clone()
            };
            new_velocity = Some(velocity);
        }
        (tensor - grad.mul_scalar(lr), new_velocity)
    }
}
