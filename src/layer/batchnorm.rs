//! BatchNorm with PyTorch's semantics.
//!
//! burn's `BatchNorm` updates the running variance with the biased batch variance; PyTorch uses
//! the unbiased one (n / (n - 1)). Over a long run the difference shows in every evaluation, so
//! the reference's numbers need PyTorch's rule: momentum 0.1, eps 1e-5, batch statistics in
//! training, running statistics in evaluation.

use burn::module::{Module, Param, RunningState};
use burn::tensor::{Device, Tensor, activation, s};

use crate::ops;

pub const BN_MOMENTUM: f64 = 0.1;
pub const BN_EPSILON: f64 = 1e-5;

/// `nn.BatchNorm1d` / `nn.BatchNorm2d`: works on any input of shape [N, C, ...].
#[derive(Module, Debug)]
pub struct BatchNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub running_mean: RunningState<Tensor<1>>,
    pub running_var: RunningState<Tensor<1>>,
}

impl BatchNorm {
    /// Weight 1 and bias 0: both PyTorch's default and the reference's `weights_init`.
    pub fn new(num_features: usize, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([num_features], device)),
            bias: Param::from_tensor(Tensor::zeros([num_features], device)),
            running_mean: RunningState::new(Tensor::zeros([num_features], device)),
            running_var: RunningState::new(Tensor::ones([num_features], device)),
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.forward_then(x, false)
    }

    /// `relu(self.forward(x))`, in one pass where the CPU kernel runs.
    pub fn forward_relu<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.forward_then(x, true)
    }

    fn forward_then<const D: usize>(&self, x: Tensor<D>, relu: bool) -> Tensor<D> {
        if x.device().is_autodiff() {
            return self.forward_train(x, relu);
        }
        let y = burn::tensor::module::batch_norm(
            x,
            self.weight.val(),
            self.bias.val(),
            self.running_mean.value(),
            self.running_var.value(),
            BN_EPSILON,
        );
        if relu { activation::relu(y) } else { y }
    }

    /// Training mode, followed by a ReLU when `relu` (in the same pass on the CPU backend).
    fn forward_train<const D: usize>(&self, x: Tensor<D>, relu: bool) -> Tensor<D> {
        let dims = x.dims();
        // Values per channel that the batch statistics were computed over.
        let n: usize = dims
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, d)| d)
            .product();
        let (output, batch_mean, batch_var) = if ops::hand_written(&x.device()) {
            let (output, moments) =
                ops::batchnorm::batch_norm_train(x, self.weight.val(), self.bias.val(), BN_EPSILON, relu);
            let [mean, variance] = [0, 1].map(|i| moments.clone().slice(s![i, ..]).reshape([-1]));
            (output, mean, variance)
        } else {
            let result = burn::tensor::module::batch_norm_train(x, self.weight.val(), self.bias.val(), BN_EPSILON);
            let output = if relu {
                activation::relu(result.output)
            } else {
                result.output
            };
            (output, result.mean, result.variance)
        };
        self.update_running(batch_mean, batch_var, n);
        output
    }

    /// Moves the running statistics towards a batch's (PyTorch's rule: the unbiased variance).
    fn update_running(&self, batch_mean: Tensor<1>, batch_var: Tensor<1>, n: usize) {
        let unbias = if n > 1 { n as f64 / (n as f64 - 1.0) } else { 1.0 };
        let mean = self.running_mean.value_sync();
        let var = self.running_var.value_sync();
        let mean = mean
            .mul_scalar(1.0 - BN_MOMENTUM)
            .add(batch_mean.detach().mul_scalar(BN_MOMENTUM));
        let var = var
            .mul_scalar(1.0 - BN_MOMENTUM)
            .add(batch_var.detach().mul_scalar(BN_MOMENTUM * unbias));
        self.running_mean.update(mean.detach());
        self.running_var.update(var.detach());
    }

    /// This BatchNorm as `scale * (v - center) + bias` per channel, for maps whose statistics
    /// are computed elsewhere: in training the batch's `(mean, biased variance, values per
    /// channel)`, which also move the running statistics as [`Self::forward`] does; in
    /// evaluation (`None`) the running statistics. Returns `(scale, center)`.
    pub fn scale_and_center(&self, batch: Option<(Tensor<1>, Tensor<1>, usize)>) -> (Tensor<1>, Tensor<1>) {
        let (center, var) = match batch {
            Some((mean, var, n)) => {
                self.update_running(mean.clone(), var.clone(), n);
                (mean, var)
            }
            None => (self.running_mean.value(), self.running_var.value()),
        };
        (self.weight.val() / var.add_scalar(BN_EPSILON).sqrt(), center)
    }
}
