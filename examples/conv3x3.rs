//! The 3x3 convolutions of `resnet18 --nfilters 44` at one batch size, forward + backward on the
//! CPU: burn's `Conv2d::forward` (flex's convolution) against pnn's im2col and gemm and, for the
//! stride-1 ones, pnn's Winograd F(4x4, 3x3), side by side, with the rate each reaches in
//! GFLOP/s (2 x the multiply-adds of a direct convolution, x3 for the forward, input-gradient
//! and weight-gradient products; Winograd does fewer, so its rate can pass the CPU's peak):
//!
//!   cargo run --release --example conv3x3 -- [batch] [nfilters]
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use pnn::layer::conv::ConvSpec;
use pnn::ops::conv::{ConvAlgorithm, conv2d_with};

/// The allocator of the `pnn` command, so the timings match its training steps.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    pnn::allocator::keep_freed_memory();
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("a number")).collect();
    let (n, f) = (args.first().copied().unwrap_or(16), args.get(1).copied().unwrap_or(44));
    let device = Device::flex().autodiff();
    // (in channels, out channels, input size, stride): resnet18's stages on 32x32 images.
    let shapes = [
        // The first layer, from the image's 3 channels.
        (3, f, 32, 1),
        (f, f, 32, 1),
        (f, 2 * f, 32, 2),
        (2 * f, 2 * f, 16, 1),
        (2 * f, 4 * f, 16, 2),
        (4 * f, 4 * f, 8, 1),
        (4 * f, 8 * f, 8, 2),
        (8 * f, 8 * f, 4, 1),
    ];
    println!("batch {n}, forward + backward, median of 7 runs");
    for (c, o, s, stride) in shapes {
        let layer = ConvSpec::new(c, o, 3).stride(stride).padding(1).init(&device);
        let x: Tensor<4> = Tensor::random([n, c, s, s], Distribution::Normal(0.0, 1.0), &device);
        // None: flex's convolution; Some(algorithm): pnn's.
        let time = |algorithm: Option<ConvAlgorithm>| {
            let mut times: Vec<f64> = (0..7)
                .map(|_| {
                    let start = Instant::now();
                    let xg = x.clone().require_grad();
                    let y = match algorithm {
                        Some(a) => conv2d_with(xg.clone(), layer.weight.val(), stride, 1, a),
                        None => layer.forward(xg.clone()),
                    };
                    let grads = y.sum().backward();
                    let _ = xg.grad(&grads).expect("a gradient").into_data();
                    start.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            times.sort_by(f64::total_cmp);
            times[3]
        };
        let (flex, im2col) = (time(None), time(Some(ConvAlgorithm::Im2col)));
        let out = s / stride;
        let gflop = 3.0 * 2.0 * (n * o * out * out * c * 9) as f64 / 1e9;
        let rate = |ms: f64| gflop / ms * 1e3;
        let winograd = if stride == 1 {
            let ms = time(Some(ConvAlgorithm::Winograd));
            format!("winograd {ms:6.1} ms ({:5.1}), {:.2}x im2col", rate(ms), im2col / ms)
        } else {
            String::new()
        };
        println!(
            "{c:>4} -> {o:>4}, {s:>2}x{s:<2} stride {stride}: flex {flex:6.1} ms ({:5.1} GFLOP/s), im2col {im2col:6.1} ms ({:5.1}), {winograd}",
            rate(flex),
            rate(im2col),
        );
    }
}
