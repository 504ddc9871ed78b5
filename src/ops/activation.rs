//! The activations the hand-written operations compute, in one place: their constants, the
//! set of them ([`FusedAct`]), and each as a type ([`act`]) for the CPU loops, which are
//! compiled once per activation. The GPU kernels (`perturb/gpu.rs`) and the theory's features
//! (`theory/features.rs`, in f64) write the same formulas with these constants; a test checks
//! all of them against each other over a grid of inputs (`tests/fused.rs`).
//!
//! The model-level activation module, with PReLU's parameter and RReLU's randomness, is
//! `layer::Activation`.

use crate::config::Act;

/// SELU's scale and alpha, as PyTorch writes them.
pub const SELU_SCALE: f32 = 1.050_700_987_355_480_5;
pub const SELU_ALPHA: f32 = 1.673_263_242_354_377_3;
/// The same two in f64, for the theory's least-squares features.
pub const SELU_SCALE_F64: f64 = 1.050_700_987_355_480_5;
pub const SELU_ALPHA_F64: f64 = 1.673_263_242_354_377_3;
/// Leaky ReLU's negative slope (PyTorch's default), and in f64.
pub const LRELU_SLOPE: f32 = 0.01;
pub const LRELU_SLOPE_F64: f64 = 0.01;

/// The activations the fused perturbation layer computes (and differentiates) itself. (Hash: the
/// GPU kernels take it as a compile-time parameter.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FusedAct {
    /// No activation after the perturbation (`--use_act` off in a first layer).
    Identity,
    Relu,
    Lrelu,
    Elu,
    Selu,
    Tanh,
    Sigmoid,
}

impl FusedAct {
    /// The fused form of `act` (applied only if `use_act`); `None` for PReLU and RReLU.
    pub fn of(act: Act, use_act: bool) -> Option<Self> {
        if !use_act {
            return Some(Self::Identity);
        }
        match act {
            Act::Relu => Some(Self::Relu),
            Act::Lrelu => Some(Self::Lrelu),
            Act::Elu => Some(Self::Elu),
            Act::Selu => Some(Self::Selu),
            Act::Tanh => Some(Self::Tanh),
            Act::Sigmoid => Some(Self::Sigmoid),
            Act::Prelu | Act::Rrelu => None,
        }
    }

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Self {
        [
            Self::Identity,
            Self::Relu,
            Self::Lrelu,
            Self::Elu,
            Self::Selu,
            Self::Tanh,
            Self::Sigmoid,
        ][code as usize]
    }
}

/// An activation as a type: `apply`, and its derivative from the input `v` and output `a`.
pub trait ActivationFn: Copy + Send + Sync {
    fn apply(v: f32) -> f32;
    fn derivative(v: f32, a: f32) -> f32;
}

pub mod act {
    use super::{ActivationFn, LRELU_SLOPE, SELU_ALPHA, SELU_SCALE};

    #[derive(Clone, Copy)]
    pub struct Identity;
    #[derive(Clone, Copy)]
    pub struct Relu;
    #[derive(Clone, Copy)]
    pub struct Lrelu;
    #[derive(Clone, Copy)]
    pub struct Elu;
    #[derive(Clone, Copy)]
    pub struct Selu;
    #[derive(Clone, Copy)]
    pub struct Tanh;
    #[derive(Clone, Copy)]
    pub struct Sigmoid;

    impl ActivationFn for Identity {
        #[inline(always)]
        fn apply(v: f32) -> f32 {
            v
        }
        #[inline(always)]
        fn derivative(_: f32, _: f32) -> f32 {
            1.0
        }
    }
    impl ActivationFn for Relu {
        #[inline(always)]
        fn apply(v: f32) -> f32 {
            v.max(0.0)
        }
        #[inline(always)]
        fn derivative(v: f32, _: f32) -> f32 {
            if v > 0.0 { 1.0 } else { 0.0 }
        }
    }
    impl ActivationFn for Lrelu {
        #[inline(always)]
        fn apply(v: f32) -> f32 {
            if v > 0.0 { v } else { LRELU_SLOPE * v }
        }
        #[inline(always)]
        fn derivative(v: f32, _: f32) -> f32 {
            if v > 0.0 { 1.0 } else { LRELU_SLOPE }
        }
    }
    impl ActivationFn for Elu {
        #[inline(always)]
        fn apply(v: f32) -> f32 {
            if v > 0.0 { v } else { v.exp_m1() }
        }
        #[inline(always)]
        fn derivative(v: f32, a: f32) -> f32 {
            if v > 0.0 { 1.0 } else { a + 1.0 }
        }
    }
    impl ActivationFn for Selu {
        #[inline(always)]
        fn apply(v: f32) -> f32 {
            if v > 0.0 {
                SELU_SCALE * v
            } else {
                SELU_SCALE * SELU_ALPHA * v.exp_m1()
            }
        }
        #[inline(always)]
        fn derivative(v: f32, a: f32) -> f32 {
            if v > 0.0 {
                SELU_SCALE
            } else {
                a + SELU_SCALE * SELU_ALPHA
            }
        }
    }
    impl ActivationFn for Tanh {
        #[inline(always)]
        fn apply(v: f32) -> f32 {
            v.tanh()
        }
        #[inline(always)]
        fn derivative(_: f32, a: f32) -> f32 {
            1.0 - a * a
        }
    }
    impl ActivationFn for Sigmoid {
        #[inline(always)]
        fn apply(v: f32) -> f32 {
            1.0 / (1.0 + (-v).exp())
        }
        #[inline(always)]
        fn derivative(_: f32, a: f32) -> f32 {
            a * (1.0 - a)
        }
    }
}

/// `act(v)` for an activation chosen at run time: the CPU types' arithmetic, for callers that
/// are not compiled per activation (tests, diagnostics).
pub fn apply(which: FusedAct, v: f32) -> f32 {
    use act::*;
    match which {
        FusedAct::Identity => Identity::apply(v),
        FusedAct::Relu => Relu::apply(v),
        FusedAct::Lrelu => Lrelu::apply(v),
        FusedAct::Elu => Elu::apply(v),
        FusedAct::Selu => Selu::apply(v),
        FusedAct::Tanh => Tanh::apply(v),
        FusedAct::Sigmoid => Sigmoid::apply(v),
    }
}

/// `act'(v)` for an activation chosen at run time (see [`apply`]).
pub fn derivative(which: FusedAct, v: f32) -> f32 {
    use act::*;
    let a = apply(which, v);
    match which {
        FusedAct::Identity => Identity::derivative(v, a),
        FusedAct::Relu => Relu::derivative(v, a),
        FusedAct::Lrelu => Lrelu::derivative(v, a),
        FusedAct::Elu => Elu::derivative(v, a),
        FusedAct::Selu => Selu::derivative(v, a),
        FusedAct::Tanh => Tanh::derivative(v, a),
        FusedAct::Sigmoid => Sigmoid::derivative(v, a),
    }
}
