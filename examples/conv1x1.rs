//! One 1x1 convolution, forward + backward on the CPU: burn's `Conv2d::forward` (flex's
//! convolution) against `pnn::layer::conv::forward` (the pointwise operation), side by side:
//!
//!   cargo run --release --example conv1x1 -- [channels] [size] [batch]
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use pnn::layer::conv::{self, ConvSpec};

/// The allocator of the `pnn` command, so the timings match its training steps.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    pnn::allocator::keep_freed_memory();
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("a number")).collect();
    let arg = |i: usize, default: usize| args.get(i).copied().unwrap_or(default);
    let (c, s, n) = (arg(0, 128), arg(1, 32), arg(2, 16));
    let device = Device::flex().autodiff();
    let layer = ConvSpec::new(c, c, 1).init(&device);
    let x: Tensor<4> = Tensor::random([n, c, s, s], Distribution::Normal(0.0, 1.0), &device);
    let time = |pointwise: bool| {
        let mut times: Vec<f64> = (0..7)
            .map(|_| {
                let start = Instant::now();
                let xg = x.clone().require_grad();
                let y = if pointwise {
                    conv::forward(&layer, xg.clone())
                } else {
                    layer.forward(xg.clone())
                };
                let grads = y.sum().backward();
                let _ = xg.grad(&grads).expect("a gradient").into_data();
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        times[3]
    };
    let (flex, pointwise) = (time(false), time(true));
    println!(
        "1x1 convolution {c}->{c}, {s}x{s}, batch {n}, forward + backward (median of 7): flex {flex:.1} ms, pointwise {pointwise:.1} ms ({:.1}x)",
        flex / pointwise
    );
}
