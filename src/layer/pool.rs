//! Max or average pooling, chosen by `--pool_type`, with PyTorch's padding rules.

use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::tensor::Tensor;

use crate::config::PoolType;
use crate::ops;

#[derive(Module, Debug)]
pub enum Pool {
    Max(MaxPool2d),
    /// `nn.AvgPool2d` counts the zero padding in the average (count_include_pad=True).
    Avg(AvgPool2d),
}

impl Pool {
    pub fn new(kind: PoolType, kernel: usize, stride: usize, padding: usize) -> Self {
        let pad = PaddingConfig2d::Explicit(padding, padding, padding, padding);
        match kind {
            PoolType::Max => Pool::Max(
                MaxPool2dConfig::new([kernel, kernel])
                    .with_strides([stride, stride])
                    .with_padding(pad)
                    .init(),
            ),
            PoolType::Avg => Pool::Avg(
                AvgPool2dConfig::new([kernel, kernel])
                    .with_strides([stride, stride])
                    .with_padding(pad)
                    .with_count_include_pad(true)
                    .init(),
            ),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Pool::Max(p) => match square_window(p) {
                Some((k, s, pad)) if ops::hand_written(&x.device()) => ops::maxpool::max_pool2d(x, k, s, pad),
                _ => p.forward(x),
            },
            Pool::Avg(p) => p.forward(x),
        }
    }
}

/// (kernel, stride, padding) of a max pooling the CPU kernel computes: square, symmetric
/// padding, no dilation, floor mode (every pooling the models build).
fn square_window(p: &MaxPool2d) -> Option<(usize, usize, usize)> {
    let [k, k2] = p.kernel_size;
    let [s, s2] = p.stride;
    let PaddingConfig2d::Explicit(a, b, c, d) = p.padding else {
        return None;
    };
    let plain = k == k2 && s == s2 && a == b && b == c && c == d && p.dilation == [1, 1] && !p.ceil_mode;
    plain.then_some((k, s, a))
}
