//! Convolutions initialised as the reference's `weights_init`.

use burn::module::Param;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::{Device, Distribution, Tensor, s};

use crate::ops;
use crate::ops::conv1x1::pointwise_conv;

/// Geometry of one 2-D convolution.
#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
    pub bias: bool,
}

impl ConvSpec {
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel,
            stride: 1,
            padding: 0,
            groups: 1,
            bias: true,
        }
    }
    pub fn stride(mut self, stride: usize) -> Self {
        self.stride = stride;
        self
    }
    pub fn padding(mut self, padding: usize) -> Self {
        self.padding = padding;
        self
    }
    pub fn groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }
    pub fn bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// Builds the convolution. Weights ~ N(0, sqrt(2 / (k * k * out_channels))) as the
    /// reference's `weights_init`; the bias keeps PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    pub fn init(self, device: &Device) -> Conv2d {
        let k = self.kernel;
        let fan_in = self.in_channels / self.groups * k * k;
        let std = (2.0 / (k * k * self.out_channels) as f64).sqrt();
        let weight = Tensor::random(
            [self.out_channels, self.in_channels / self.groups, k, k],
            Distribution::Normal(0.0, std),
            device,
        );
        let bound = 1.0 / (fan_in as f64).sqrt();
        let bias = self.bias.then(|| {
            Param::from_tensor(Tensor::random(
                [self.out_channels],
                Distribution::Uniform(-bound, bound),
                device,
            ))
        });
        let p = self.padding;
        Conv2d {
            weight: Param::from_tensor(weight),
            bias,
            stride: [self.stride, self.stride],
            kernel_size: [k, k],
            dilation: [1, 1],
            groups: self.groups,
            padding: PaddingConfig2d::Explicit(p, p, p, p),
        }
    }
}

/// PyTorch's default `nn.Linear` init: weight and bias ~ U(-1/sqrt(in), 1/sqrt(in)).
pub fn linear(in_features: usize, out_features: usize, device: &Device) -> burn::nn::Linear {
    burn::nn::LinearConfig::new(in_features, out_features).init(device)
}

/// `conv.forward(x)`, computed on the CPU backend by pnn's own operations (`PNN_UNFUSED=1`
/// turns them off): 1x1 convolutions by the pointwise operation (`ops/conv1x1.rs`; flex's
/// convolution took 2-3x longer for them, forward and backward; a stride is taken by keeping
/// every stride-th pixel first, which is what a 1x1 convolution with that stride computes), the
/// other square ones by im2col and a strided matrix product (`ops/conv.rs`).
pub fn forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let [o, _, kh, kw] = conv.weight.dims();
    let pointwise = kh == 1
        && kw == 1
        && conv.groups == 1
        && conv.dilation == [1, 1]
        && matches!(
            conv.padding,
            PaddingConfig2d::Explicit(0, 0, 0, 0) | PaddingConfig2d::Valid
        )
        && ops::hand_written(&x.device());
    if !pointwise {
        return match square_window(conv) {
            Some((stride, padding)) if ops::hand_written(&x.device()) => {
                let y = ops::conv::conv2d(x, conv.weight.val(), stride, padding);
                match &conv.bias {
                    Some(b) => y + b.val().reshape([1, o, 1, 1]),
                    None => y,
                }
            }
            _ => conv.forward(x),
        };
    }
    let [sh, sw] = conv.stride;
    let bias = match &conv.bias {
        Some(b) => b.val(),
        None => Tensor::zeros([o], &x.device()),
    };
    if sh == sw {
        return pointwise_conv(x, conv.weight.val(), bias, sh);
    }
    // Unequal strides (no model builds them): keep every stride-th pixel first.
    let [_, _, h, w] = x.dims();
    let x = x.slice(s![.., .., 0..h;sh as isize, 0..w;sw as isize]);
    pointwise_conv(x, conv.weight.val(), bias, 1)
}

/// (stride, padding) of a convolution the CPU operation computes: square kernel, ungrouped, no
/// dilation, the same stride and padding on every side (every convolution the models build).
fn square_window(conv: &Conv2d) -> Option<(usize, usize)> {
    let [_, _, kh, kw] = conv.weight.dims();
    let [sh, sw] = conv.stride;
    let PaddingConfig2d::Explicit(a, b, c, d) = conv.padding else {
        return None;
    };
    let plain = kh == kw && sh == sw && a == b && b == c && c == d && conv.groups == 1 && conv.dilation == [1, 1];
    plain.then_some((sh, a))
}
