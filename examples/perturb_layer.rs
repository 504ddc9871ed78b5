//! Forward + backward time of one perturbation layer on the CPU, for measuring kernels:
//!
//!   cargo run --release --example perturb_layer -- [use_act 0|1] [nmasks] [channels] [size] [batch]
//!
//! `PNN_UNFUSED=1` times burn's composition, `PNN_FUSED_GENERAL=1` the general fused kernel
//! where the linear path (no activation) would run.
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use pnn::config::{Act, NoiseType};
use pnn::layer::PerturbSpec;

/// The allocator of the `pnn` command, so the timings match its training steps.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    pnn::allocator::keep_freed_memory();
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("a number")).collect();
    let arg = |i: usize, default: usize| args.get(i).copied().unwrap_or(default);
    let (use_act, nmasks, channels, size, batch) = (arg(0, 1) == 1, arg(1, 64), arg(2, 128), arg(3, 32), arg(4, 16));
    let device = Device::flex().autodiff();
    let layer = PerturbSpec {
        in_channels: channels,
        out_channels: channels,
        filter_size: 0,
        nmasks,
        level: 0.1,
        noise_type: NoiseType::Uniform,
        use_act,
        act: Act::Relu,
        unique_masks: false,
        train_masks: false,
        mix_maps: false,
        input_size: size,
        debug: false,
    }
    .init(&device);
    let x: Tensor<4> = Tensor::random([batch, channels, size, size], Distribution::Normal(0.0, 1.0), &device);
    let mut times = Vec::new();
    for _ in 0..7 {
        let start = Instant::now();
        let x = x.clone().require_grad();
        let grads = layer.forward(x.clone()).sum().backward();
        let _ = x.grad(&grads).expect("a gradient").into_data();
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "perturbation layer {channels}->{channels}, {nmasks} masks, {size}x{size}, batch {batch}, use_act {use_act}: median {:.1} ms (forward + backward, incl. BatchNorm and activation)",
        times[times.len() / 2]
    );
}
