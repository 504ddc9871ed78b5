//! The activations of the reference's `act_fn`, with PyTorch's constants.

use burn::module::{Module, Param};
use burn::tensor::Device;
use burn::tensor::{Distribution, Tensor, activation};

use crate::config::Act;

/// PyTorch RReLU bounds: slopes drawn from U(1/8, 1/3) in training, their mean in evaluation.
const RRELU_LOWER: f64 = 1.0 / 8.0;
const RRELU_UPPER: f64 = 1.0 / 3.0;
/// PyTorch LeakyReLU default slope.
const LRELU_SLOPE: f64 = 0.01;
/// PyTorch PReLU initial slope.
const PRELU_INIT: f64 = 0.25;

/// An activation. PReLU carries one learnable slope, as `nn.PReLU()` does, so the parameter
/// counts match the reference for every `--act`.
#[derive(Module, Debug)]
pub struct Activation {
    #[module(skip)]
    pub kind: Act,
    pub prelu_alpha: Option<Param<Tensor<1>>>,
}

impl Activation {
    pub fn new(kind: Act, device: &Device) -> Self {
        let prelu_alpha = (kind == Act::Prelu).then(|| Param::from_tensor(Tensor::full([1], PRELU_INIT, device)));
        Self { kind, prelu_alpha }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        apply(self.kind, x, self.prelu_alpha.as_ref().map(|a| a.val()))
    }
}

/// Applies `kind` to `x`. Training mode (random RReLU slopes) is taken from the tensor: a tensor
/// on an autodiff device is being trained, as for burn's own dropout.
pub fn apply<const D: usize>(kind: Act, x: Tensor<D>, prelu_alpha: Option<Tensor<1>>) -> Tensor<D> {
    match kind {
        Act::Relu => activation::relu(x),
        Act::Lrelu => activation::leaky_relu(x, LRELU_SLOPE),
        Act::Prelu => {
            let alpha = prelu_alpha.expect("PReLU activation is built with its slope parameter");
            activation::prelu(x, alpha)
        }
        Act::Rrelu => {
            if x.device().is_autodiff() {
                let slopes = x.random_like(Distribution::Uniform(RRELU_LOWER, RRELU_UPPER));
                activation::relu(x.clone()) + x.clamp_max(0.0) * slopes
            } else {
                activation::leaky_relu(x, (RRELU_LOWER + RRELU_UPPER) / 2.0)
            }
        }
        Act::Elu => activation::elu(x, 1.0),
        Act::Selu => activation::selu(x),
        Act::Tanh => activation::tanh(x),
        Act::Sigmoid => activation::sigmoid(x),
    }
}
