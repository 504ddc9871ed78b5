//! The perturbation layer and its parts: gradients against finite differences, the grouped 1x1
//! convolution, fixed versus trainable masks, BatchNorm's PyTorch semantics.

use burn::module::{Module, Param};
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use pnn::config::{Act, NoiseType};
use pnn::layer::{BatchNorm, PerturbLayer, PerturbSpec};

fn spec(nmasks: usize, unique: bool, train_masks: bool, act: Act) -> PerturbSpec {
    PerturbSpec {
        in_channels: 2,
        out_channels: 4,
        filter_size: 0,
        nmasks,
        level: 0.5,
        noise_type: NoiseType::Uniform,
        use_act: true,
        act,
        unique_masks: unique,
        train_masks,
        mix_maps: false,
        input_size: 4,
        debug: false,
    }
}

/// Each part (output, then gradients) of a CPU operation equals burn's to float32 rounding:
/// |a - b| <= 1e-4 (1 + |b|).
/// burn draws random numbers from one generator per process, which the tests running on other
/// threads draw from too: a test that seeds it holds this lock while it draws, so that its seed
/// gives it the same numbers every run.
fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn assert_parts_close(fast: &[Vec<f32>], reference: &[Vec<f32>], what: &str) {
    assert_eq!(fast.len(), reference.len(), "{what}: number of parts");
    for (part, (a, b)) in fast.iter().zip(reference).enumerate() {
        assert_eq!(a.len(), b.len(), "{what}, part {part}: lengths");
        for (i, (p, q)) in a.iter().zip(b).enumerate() {
            assert!(
                (p - q).abs() <= 1e-4 * (1.0 + q.abs()),
                "{what}, part {part}[{i}]: {p} vs {q}"
            );
        }
    }
}

/// As [`assert_parts_close`], with each part's error measured against the part's largest value:
/// for Winograd's F(4x4, 3x3), whose rounding error is about 1e-5 of the values it sums (its
/// transforms multiply by up to 8 and 5), so a value that is a near-cancelling sum can differ
/// from a direct convolution's by more than 1e-4 of itself. A wrong transform is off by the
/// size of the values.
fn assert_parts_close_to_scale(fast: &[Vec<f32>], reference: &[Vec<f32>], what: &str) {
    assert_eq!(fast.len(), reference.len(), "{what}: number of parts");
    for (part, (a, b)) in fast.iter().zip(reference).enumerate() {
        assert_eq!(a.len(), b.len(), "{what}, part {part}: lengths");
        let scale = b.iter().fold(1f32, |m, q| m.max(q.abs()));
        for (i, (p, q)) in a.iter().zip(b).enumerate() {
            assert!(
                (p - q).abs() <= 1e-4 * scale,
                "{what}, part {part}[{i}]: {p} vs {q} (largest {scale})"
            );
        }
    }
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// A smooth scalar function of the layer output: sum(layer(x) * r).
fn objective(layer: &PerturbLayer, x: Tensor<4>, r: &Tensor<4>) -> Tensor<1> {
    (layer.forward(x) * r.clone()).sum()
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_scalar::<f32>() as f64
}

/// Central finite difference of the objective along coordinate `i` of a tensor that `rebuild`
/// puts into a copy of the layer (or the input).
fn finite_difference(eval: impl Fn(Vec<f32>) -> f64, base: &[f32], i: usize, eps: f32) -> f64 {
    let mut plus = base.to_vec();
    plus[i] += eps;
    let mut minus = base.to_vec();
    minus[i] -= eps;
    (eval(plus) - eval(minus)) / (2.0 * eps as f64)
}

fn assert_close(analytic: f64, numeric: f64, what: &str) {
    let tol = 2e-2 * (1.0 + analytic.abs().max(numeric.abs()));
    assert!(
        (analytic - numeric).abs() <= tol,
        "{what}: analytic {analytic} vs finite difference {numeric}"
    );
}

fn check_gradients(train_masks: bool, nmasks: usize, unique: bool) {
    let device = Device::flex().autodiff();
    let _rng = rng_lock();
    device.seed(7);
    let layer = spec(nmasks, unique, train_masks, Act::Tanh).init(&device);
    let x_shape = [3, 2, 4, 4];
    let x_values = to_vec(Tensor::<4>::random(x_shape, Distribution::Normal(0.0, 1.0), &device));
    let r = Tensor::<4>::random([3, 4, 4, 4], Distribution::Normal(0.0, 1.0), &device);

    let x = tensor(x_values.clone(), x_shape, &device).require_grad();
    let grads = objective(&layer, x.clone(), &r).backward();
    let gx = to_vec(x.grad(&grads).expect("input gradient"));
    let gw = to_vec(layer.conv.weight.val().grad(&grads).expect("weight gradient"));
    let gb = to_vec(
        layer
            .conv
            .bias
            .as_ref()
            .unwrap()
            .val()
            .grad(&grads)
            .expect("bias gradient"),
    );
    let noise = layer.noise.as_ref().unwrap().val();
    let g_noise = noise.grad(&grads);
    assert_eq!(
        g_noise.is_some(),
        train_masks,
        "noise gets a gradient exactly when masks are trained"
    );

    // Input.
    let eval_x = |v: Vec<f32>| scalar(objective(&layer, tensor(v, x_shape, &device), &r));
    for i in [0, 5, 17, 40, 95] {
        assert_close(
            gx[i] as f64,
            finite_difference(eval_x, &x_values, i, 1e-2),
            &format!("d/dx[{i}]"),
        );
    }
    // 1x1 convolution weight and bias.
    let w_shape: [usize; 4] = layer.conv.weight.val().dims();
    let w_values = to_vec(layer.conv.weight.val());
    let eval_w = |v: Vec<f32>| {
        let mut l = layer.clone();
        l.conv.weight = Param::from_tensor(tensor(v, w_shape, &device));
        scalar(objective(&l, tensor(x_values.clone(), x_shape, &device), &r))
    };
    for i in [0, 3, w_values.len() - 1] {
        assert_close(
            gw[i] as f64,
            finite_difference(eval_w, &w_values, i, 1e-2),
            &format!("d/dw[{i}]"),
        );
    }
    let b_values = to_vec(layer.conv.bias.as_ref().unwrap().val());
    let eval_b = |v: Vec<f32>| {
        let mut l = layer.clone();
        l.conv.bias = Some(Param::from_tensor(tensor(v, [4], &device)));
        scalar(objective(&l, tensor(x_values.clone(), x_shape, &device), &r))
    };
    for i in 0..4 {
        // BatchNorm removes a per-channel constant: the true gradient is 0, numerically too.
        assert_close(
            gb[i] as f64,
            finite_difference(eval_b, &b_values, i, 1e-2),
            &format!("d/db[{i}]"),
        );
    }
    // Noise masks, when trained.
    if let Some(g_noise) = g_noise {
        let n_shape: [usize; 5] = noise.dims();
        let n_values = to_vec(noise.clone());
        let g_noise = to_vec(g_noise);
        let eval_n = |v: Vec<f32>| {
            let mut l = layer.clone();
            l.noise = Some(Param::from_tensor(tensor(v, n_shape, &device)));
            scalar(objective(&l, tensor(x_values.clone(), x_shape, &device), &r))
        };
        for i in [0, 7, n_values.len() - 1] {
            assert_close(
                g_noise[i] as f64,
                finite_difference(eval_n, &n_values, i, 1e-2),
                &format!("d/dnoise[{i}]"),
            );
        }
    }
}

#[test]
fn gradients_match_finite_differences_with_fixed_masks() {
    check_gradients(false, 1, true);
    check_gradients(false, 3, true);
}

#[test]
fn gradients_match_finite_differences_with_trained_masks() {
    check_gradients(true, 1, true);
    check_gradients(true, 3, false);
}

fn sgd_step(layer: PerturbLayer, device: &Device) -> PerturbLayer {
    let x = Tensor::<4>::random([4, 2, 4, 4], Distribution::Normal(0.0, 1.0), device);
    let loss = layer.forward(x).powi_scalar(2).sum();
    let grads = GradientsParams::from_grads(loss.backward(), &layer);
    SgdConfig::new().init().step(0.1, layer, grads)
}

#[test]
fn fixed_masks_stay_fixed_and_trained_masks_move_after_a_step() {
    let device = Device::flex().autodiff();
    let _rng = rng_lock();
    device.seed(3);
    for train_masks in [false, true] {
        let layer = spec(2, true, train_masks, Act::Relu).init(&device);
        let noise_before = to_vec(layer.noise.as_ref().unwrap().val());
        let weight_before = to_vec(layer.conv.weight.val());
        let layer = sgd_step(layer, &device);
        let noise_after = to_vec(layer.noise.as_ref().unwrap().val());
        assert_ne!(weight_before, to_vec(layer.conv.weight.val()), "weights are trained");
        if train_masks {
            assert_ne!(noise_before, noise_after, "--train_masks: masks change");
        } else {
            assert_eq!(noise_before, noise_after, "fixed masks never change");
        }
    }
}

/// The layer in evaluation mode (fresh BatchNorm: mean 0, variance 1), computed by hand:
/// y[n, o] = act(sum_m W[o, m] * act(x[n, g] + level * noise[g or 0, m]) + b[o]) / sqrt(1 + eps))
/// with g the input channel whose group output o belongs to.
#[test]
fn grouped_one_by_one_convolution_combines_each_channels_own_masks() {
    let device = Device::flex();
    let _rng = rng_lock();
    device.seed(11);
    for (nmasks, unique) in [(3, true), (3, false), (1, true)] {
        let layer = spec(nmasks, unique, false, Act::Relu).init(&device);
        let (n, c, hw, out) = (2, 2, 16, 4);
        let x = Tensor::<4>::random([n, c, 4, 4], Distribution::Normal(0.0, 1.0), &device);
        let got = to_vec(layer.forward(x.clone()));
        let xv = to_vec(x);
        let noise = to_vec(layer.noise.as_ref().unwrap().val());
        let w = to_vec(layer.conv.weight.val()); // [out, c*nmasks/groups, 1, 1]
        let b = to_vec(layer.conv.bias.as_ref().unwrap().val());
        let groups = if nmasks > 1 { c } else { 1 };
        let in_per_group = c * nmasks / groups;
        let out_per_group = out / groups;
        let scale = 1.0 / (1.0f32 + 1e-5).sqrt();
        for img in 0..n {
            for o in 0..out {
                let g = o / out_per_group;
                for p in 0..hw {
                    let mut acc = b[o];
                    for k in 0..in_per_group {
                        let flat = g * in_per_group + k; // index into the C*nmasks maps
                        let (ch, m) = (flat / nmasks, flat % nmasks);
                        let noise_ch = if unique { ch } else { 0 };
                        let v = xv[(img * c + ch) * hw + p] + 0.5 * noise[(noise_ch * nmasks + m) * hw + p];
                        acc += w[o * in_per_group + k] * v.max(0.0);
                    }
                    let expected = (acc * scale).max(0.0);
                    let actual = got[(img * out + o) * hw + p];
                    assert!(
                        (expected - actual).abs() < 1e-4,
                        "nmasks {nmasks}: out {o} pixel {p}: {expected} vs {actual}"
                    );
                }
            }
        }
    }
}

#[test]
fn noise_shape_follows_unique_masks_and_input_size() {
    let device = Device::flex();
    let unique = spec(5, true, false, Act::Relu).init(&device);
    assert_eq!(unique.noise.as_ref().unwrap().val().dims(), [1, 2, 5, 4, 4]);
    let shared = spec(5, false, false, Act::Relu).init(&device);
    assert_eq!(shared.noise.as_ref().unwrap().val().dims(), [1, 1, 5, 4, 4]);
    assert_eq!(
        shared.conv.groups, 2,
        "nmasks > 1 groups the 1x1 convolution by input channel"
    );
    assert_eq!(spec(1, true, false, Act::Relu).init(&device).conv.groups, 1);
    let uniform = to_vec(unique.noise.as_ref().unwrap().val());
    assert!(
        uniform.iter().all(|v| (-1.0..=1.0).contains(v)),
        "uniform masks lie in [-1, 1]"
    );
}

#[test]
fn batchnorm_tracks_the_unbiased_variance_like_pytorch() {
    let device = Device::flex().autodiff();
    let bn = BatchNorm::new(1, &device);
    // One channel, values 1, 2, 3, 4: mean 2.5, biased variance 1.25, unbiased 5/3.
    let x = tensor(vec![1.0, 2.0, 3.0, 4.0], [2, 1, 2, 1], &device);
    let y = to_vec(bn.forward(x.clone()));
    let expected: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0]
        .iter()
        .map(|v| (v - 2.5) / (1.25f32 + 1e-5).sqrt())
        .collect();
    for (a, b) in y.iter().zip(&expected) {
        assert!((a - b).abs() < 1e-5, "training mode normalises with batch statistics");
    }
    let mean = to_vec(bn.running_mean.value_sync())[0];
    let var = to_vec(bn.running_var.value_sync())[0];
    assert!(
        (mean - 0.25).abs() < 1e-6,
        "running mean 0.9 * 0 + 0.1 * 2.5, got {mean}"
    );
    assert!(
        (var - (0.9 + 0.1 * 5.0 / 3.0)).abs() < 1e-6,
        "running var uses the unbiased variance, got {var}"
    );
    // Evaluation uses the running statistics.
    let eval = BatchNorm::valid(&bn);
    let y = to_vec(eval.forward(tensor(vec![1.0, 2.0, 3.0, 4.0], [2, 1, 2, 1], &Device::flex())));
    let expected = (1.0 - mean) / (var + 1e-5).sqrt();
    assert!(
        (y[0] - expected).abs() < 1e-5,
        "evaluation mode: {} vs {expected}",
        y[0]
    );
}

#[test]
fn convolution_layers_follow_the_reference_geometry() {
    let device = Device::flex();
    let mut s = spec(1, true, false, Act::Relu);
    for (k, out_side, bias) in [(1, 8, true), (3, 8, false), (5, 6, false), (7, 4, false)] {
        s.filter_size = k;
        s.input_size = 8;
        let layer = s.init(&device);
        assert!(layer.noise.is_none());
        assert_eq!(layer.conv.bias.is_some(), bias, "bias of the {k}x{k} layer");
        let y = layer.forward(Tensor::zeros([1, 2, 8, 8], &device));
        assert_eq!(y.dims(), [1, 4, out_side, out_side], "output of the {k}x{k} layer");
    }
}

/// A convolution's output shape and values, then the gradients of its input (when `track_x`),
/// weight and bias, for a fixed objective; by pnn's CPU operations (`conv::forward`) or by
/// burn's own convolution.
fn conv_parts(layer: &burn::nn::conv::Conv2d, x: &Tensor<4>, track_x: bool, pnn_ops: bool) -> Vec<Vec<f32>> {
    conv_parts_by(layer, x, track_x, |x| {
        if pnn_ops {
            pnn::layer::conv::forward(layer, x)
        } else {
            layer.forward(x)
        }
    })
}

/// [`conv_parts`] with the layer's output computed by `forward`.
fn conv_parts_by(
    layer: &burn::nn::conv::Conv2d,
    x: &Tensor<4>,
    track_x: bool,
    forward: impl Fn(Tensor<4>) -> Tensor<4>,
) -> Vec<Vec<f32>> {
    let x = if track_x { x.clone().require_grad() } else { x.clone() };
    let y = forward(x.clone());
    let r = Tensor::<4>::ones(y.dims(), &y.device()).cumsum(3).sin();
    let grads = (y.clone() * r).sum().backward();
    let mut out = vec![y.dims().iter().map(|&d| d as f32).collect(), to_vec(y)];
    if track_x {
        out.push(to_vec(x.grad(&grads).unwrap()));
    }
    out.push(to_vec(layer.weight.grad(&grads).unwrap()));
    if let Some(b) = &layer.bias {
        out.push(to_vec(b.grad(&grads).unwrap()));
    }
    out
}

/// The 1x1 convolutions computed as a matrix product (`pnn::layer::conv::forward`) give what
/// burn's convolution gives: output and the gradients of input, weight and bias, with and
/// without a stride (odd map sizes included) and a bias.
#[test]
fn pointwise_convolution_as_a_matrix_product_matches_the_convolution() {
    use pnn::layer::conv::ConvSpec;
    let device = Device::flex().autodiff();
    let _rng = rng_lock();
    device.seed(7);
    // Maps of at most 64 pixels take the batched path, larger ones the per-sample path, 1x1
    // maps (size 1, or size 2 at stride 2) the fully connected path.
    for (c_in, c_out, stride, bias, size) in [
        (5, 3, 1, true, 1),
        (3, 4, 2, false, 2),
        (3, 5, 1, true, 6),
        (4, 6, 2, false, 7),
        (2, 3, 2, true, 8),
        (3, 5, 1, true, 9),
        (4, 2, 2, false, 19),
    ] {
        let layer = ConvSpec::new(c_in, c_out, 1).stride(stride).bias(bias).init(&device);
        let x: Tensor<4> = Tensor::random([3, c_in, size, size], Distribution::Normal(0.0, 1.0), &device);
        let run = |pointwise: bool| conv_parts(&layer, &x, true, pointwise);
        let (fast, reference) = (run(true), run(false));
        assert_parts_close(&fast, &reference, &format!("stride {stride}"));
    }
}

/// The CPU backend's BatchNorm (`ops::batchnorm`) gives what burn's generic training-mode
/// BatchNorm gives: output, batch mean and variance, and the gradients of input, gamma and
/// beta, for 4-D and 3-D maps and 2-D features; and with its ReLU fused in, what burn's
/// BatchNorm followed by burn's ReLU gives.
#[test]
fn cpu_batchnorm_matches_burns_batchnorm() {
    use pnn::ops;
    let device = Device::flex().autodiff();
    let _rng = rng_lock();
    device.seed(11);
    fn check<const D: usize>(shape: [usize; D], device: &Device) {
        for relu in [false, true] {
            check_with::<D>(shape, relu, device);
        }
    }
    fn check_with<const D: usize>(shape: [usize; D], relu: bool, device: &Device) {
        let c = shape[1];
        let x: Tensor<D> = Tensor::random(shape, Distribution::Normal(0.5, 2.0), device);
        let gamma: Tensor<1> = Tensor::random([c], Distribution::Uniform(0.5, 1.5), device);
        let beta: Tensor<1> = Tensor::random([c], Distribution::Normal(0.0, 1.0), device);
        let r: Tensor<D> = Tensor::random(shape, Distribution::Normal(0.0, 1.0), device);
        let run = |cpu: bool| {
            let (x, gamma, beta) = (
                x.clone().require_grad(),
                gamma.clone().require_grad(),
                beta.clone().require_grad(),
            );
            let (y, mean, var) = if cpu {
                let (y, m) = ops::batchnorm::batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5, relu);
                (y, to_vec(m.clone().slice([0..1, 0..c])), to_vec(m.slice([1..2, 0..c])))
            } else {
                let t = burn::tensor::module::batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5);
                let y = if relu {
                    burn::tensor::activation::relu(t.output)
                } else {
                    t.output
                };
                (y, to_vec(t.mean), to_vec(t.variance))
            };
            let grads = (y.clone() * r.clone()).sum().backward();
            vec![
                to_vec(y),
                mean,
                var,
                to_vec(x.grad(&grads).unwrap()),
                to_vec(gamma.grad(&grads).unwrap()),
                to_vec(beta.grad(&grads).unwrap()),
            ]
        };
        let (cpu, generic) = (run(true), run(false));
        if relu {
            // The ReLU must have cut something and passed something, or it tested nothing.
            let zeros = cpu[0].iter().filter(|&&v| v == 0.0).count();
            assert!(
                zeros > 0 && zeros < cpu[0].len(),
                "{shape:?}: {zeros} of {} cut",
                cpu[0].len()
            );
        }
        assert_parts_close(&cpu, &generic, &format!("{shape:?}, relu {relu}"));
    }
    // Maps of fewer than 64 values per channel take the sample-by-sample path, larger ones the
    // per-channel path: both sides of the boundary, 1x1 maps and 2-D features.
    check([4, 3, 5, 7], &device);
    check([2, 6, 9, 9], &device);
    check([5, 4], &device);
    check([3, 5, 1, 1], &device);
    check([7, 3, 2, 2], &device);
    check([3, 2, 63], &device);
    check([2, 4, 8, 8], &device);
}

/// The end of a ResNet block on the CPU backend (`ops::add_relu`) gives what burn's addition
/// and ReLU give: output and both operands' gradients, also where only one operand is tracked,
/// on sizes below, at and across the kernel's chunks, and with the second operand one sample
/// broadcast over the batch (noiseresnet18's noise).
#[test]
fn cpu_add_relu_matches_burns_add_and_relu() {
    use pnn::ops;
    let device = Device::flex().autodiff();
    let _rng = rng_lock();
    device.seed(17);
    for (shape, b_shape) in [
        ([2, 3, 4, 4], [2, 3, 4, 4]),
        ([3, 5, 33, 31], [3, 5, 33, 31]),
        ([1, 1, 1, 1], [1, 1, 1, 1]),
        ([3, 5, 33, 31], [1, 5, 33, 31]),
        ([4, 2, 3, 3], [1, 2, 3, 3]),
    ] {
        let a: Tensor<4> = Tensor::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let b: Tensor<4> = Tensor::random(b_shape, Distribution::Normal(0.0, 1.0), &device);
        let r: Tensor<4> = Tensor::random(shape, Distribution::Normal(0.0, 1.0), &device);
        for track_b in [true, false] {
            let run = |cpu: bool| {
                let a = a.clone().require_grad();
                let b = if track_b { b.clone().require_grad() } else { b.clone() };
                let y = if cpu {
                    ops::add_relu::add_relu(a.clone(), b.clone())
                } else {
                    burn::tensor::activation::relu(a.clone() + b.clone())
                };
                let grads = (y.clone() * r.clone()).sum().backward();
                let mut parts = vec![to_vec(y), to_vec(a.grad(&grads).unwrap())];
                if track_b {
                    parts.push(to_vec(b.grad(&grads).unwrap()));
                } else {
                    assert!(b.grad(&grads).is_none(), "an untracked operand got a gradient");
                }
                parts
            };
            let (cpu, generic) = (run(true), run(false));
            if shape == b_shape {
                assert_eq!(cpu, generic, "{shape:?}, operand b tracked: {track_b}");
            } else {
                // The broadcast operand's gradient is a sum over the batch, in another order.
                assert_parts_close(
                    &cpu,
                    &generic,
                    &format!("{shape:?} + {b_shape:?}, b tracked: {track_b}"),
                );
            }
        }
    }
}

/// The CPU backend's max pooling (`ops::maxpool`) gives what burn's gives, output and input
/// gradient, for the windows the models use (3/2/1 and 2/2/0) on even and odd map sizes.
#[test]
fn cpu_max_pooling_matches_burns_max_pooling() {
    use burn::nn::PaddingConfig2d;
    use burn::nn::pool::MaxPool2dConfig;
    use pnn::ops;
    let device = Device::flex().autodiff();
    let _rng = rng_lock();
    device.seed(5);
    for (k, s, pad, size) in [(3, 2, 1, 8), (3, 2, 1, 7), (2, 2, 0, 8), (2, 2, 0, 5), (3, 1, 1, 4)] {
        let pool = MaxPool2dConfig::new([k, k])
            .with_strides([s, s])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .init();
        let x: Tensor<4> = Tensor::random([2, 3, size, size], Distribution::Normal(0.0, 1.0), &device);
        let run = |cpu: bool| {
            let x = x.clone().require_grad();
            let y = if cpu {
                ops::maxpool::max_pool2d(x.clone(), k, s, pad)
            } else {
                pool.forward(x.clone())
            };
            let r = Tensor::<4>::ones(y.dims(), &device).cumsum(3).cos();
            let grads = (y.clone() * r).sum().backward();
            (y.dims(), to_vec(y), to_vec(x.grad(&grads).unwrap()))
        };
        let (fast, reference) = (run(true), run(false));
        assert_eq!(fast.0, reference.0, "window {k}/{s}/{pad} on {size}: shape");
        assert_eq!(fast.1, reference.1, "window {k}/{s}/{pad} on {size}: values");
        for (i, (a, b)) in fast.2.iter().zip(&reference.2).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5,
                "window {k}/{s}/{pad} on {size}: gradient[{i}] {a} vs {b}"
            );
        }
    }
}

/// The k x k convolutions computed by the CPU operation (`ops::conv`, through
/// `pnn::layer::conv::forward`) give what burn's convolution gives: output and the gradients of
/// input, weight and bias, for the kernels, strides and paddings the models use, odd sizes too.
#[test]
fn cpu_convolution_matches_burns_convolution() {
    use pnn::layer::conv::ConvSpec;
    let device = Device::flex().autodiff();
    let _rng = rng_lock();
    device.seed(13);
    for (c_in, c_out, k, stride, pad, bias, size) in [
        (3, 4, 3, 1, 1, false, 8),
        (2, 3, 3, 2, 1, true, 9),
        (3, 2, 7, 2, 3, false, 11),
        (2, 2, 5, 1, 1, true, 7),
        // Maps smaller than the kernel, patches made only of padding, strides past a pixel.
        (2, 3, 5, 3, 2, false, 2),
        (1, 2, 3, 1, 0, false, 5),
        (2, 2, 3, 2, 0, true, 4),
        (2, 2, 3, 3, 2, false, 5),
        // Output maps over 64 pixels take the per-sample path, the others the batch-wide one.
        (3, 4, 3, 1, 1, false, 9),
        (2, 3, 3, 2, 1, true, 17),
        (3, 2, 7, 2, 3, false, 19),
    ] {
        let layer = ConvSpec::new(c_in, c_out, k)
            .stride(stride)
            .padding(pad)
            .bias(bias)
            .init(&device);
        let x: Tensor<4> = Tensor::random([3, c_in, size, size], Distribution::Normal(0.0, 1.0), &device);
        // Also with an input that needs no gradient, as the images entering the first layer.
        for track_x in [true, false] {
            let run = |cpu: bool| conv_parts(&layer, &x, track_x, cpu);
            let (fast, reference) = (run(true), run(false));
            assert_parts_close(
                &fast,
                &reference,
                &format!("k {k} s {stride} p {pad} size {size} x tracked {track_x}"),
            );
        }
    }
}

/// Winograd's F(4x4, 3x3) (`ops::winograd`, chosen through `ConvAlgorithm::Winograd`) gives
/// what burn's convolution gives, output and the gradients of input and weight: maps whose size
/// is a multiple of the 4x4 tile and maps that end in a tile cut short, maps smaller than a
/// tile, channel counts below, past and not a multiple of one vector's lanes, and ranges of one
/// block and of several.
#[test]
fn winograd_convolution_matches_burns_convolution() {
    use pnn::layer::conv::ConvSpec;
    use pnn::ops::conv::{ConvAlgorithm, conv2d_with};
    let device = Device::flex().autodiff();
    let _rng = rng_lock();
    device.seed(17);
    for (n, c_in, c_out, size) in [
        (2, 3, 4, 8),
        (3, 2, 5, 9),
        (1, 1, 1, 1),
        (2, 4, 3, 2),
        (2, 3, 2, 3),
        (4, 7, 6, 16),
        (2, 5, 3, 13),
        // Maps of a few tiles.
        (5, 4, 4, 4),
        (3, 6, 5, 6),
        (3, 3, 2, 7),
        // Channels past one vector's lanes and not a multiple of them.
        (3, 20, 24, 12),
        (2, 17, 33, 5),
        // Ranges of several blocks (three samples to a block here).
        (8, 64, 64, 32),
    ] {
        let layer = ConvSpec::new(c_in, c_out, 3).padding(1).bias(false).init(&device);
        let x: Tensor<4> = Tensor::random([n, c_in, size, size], Distribution::Normal(0.0, 1.0), &device);
        for track_x in [true, false] {
            let run = |winograd: bool| {
                conv_parts_by(&layer, &x, track_x, |x| {
                    if winograd {
                        conv2d_with(x, layer.weight.val(), 1, 1, ConvAlgorithm::Winograd)
                    } else {
                        layer.forward(x)
                    }
                })
            };
            assert_parts_close_to_scale(
                &run(true),
                &run(false),
                &format!("n {n} c {c_in} -> {c_out} size {size} x tracked {track_x}"),
            );
        }
    }
}

/// The kernels' output buffers: `par_filled` hands out every chunk once, in order of index;
/// `zeroed` and `write_copy` initialise what they are given.
#[test]
fn output_buffers_are_filled_chunk_by_chunk() {
    use pnn::ops::cpu::buffer::{assume_init, par_filled, write_copy, zeroed};
    use std::mem::MaybeUninit;
    // SAFETY: each chunk is written whole.
    let v = unsafe {
        par_filled(10, 3, |i, chunk| {
            for (j, x) in chunk.iter_mut().enumerate() {
                x.write((i * 3 + j) as f32);
            }
        })
    };
    assert_eq!(v, (0..10).map(|i| i as f32).collect::<Vec<_>>());
    let mut raw = vec![MaybeUninit::new(f32::NAN); 4];
    assert_eq!(zeroed(&mut raw), &[0.0; 4]);
    write_copy(&mut raw, &[1.0, 2.0, 3.0, 4.0]);
    // SAFETY: all four were written.
    assert_eq!(unsafe { assume_init(&mut raw) }, &[1.0, 2.0, 3.0, 4.0]);
}

/// The unzeroed output buffers rely on gemm never reading the destination when it does not
/// accumulate: a destination full of NaN must not leak into the product, on one thread or
/// several.
#[test]
fn matrix_products_into_fresh_memory_ignore_what_was_there() {
    use pnn::ops::cpu::matmul::{Mat, matmul_into, matmul_threaded_into};
    use std::mem::MaybeUninit;
    let (m, n, k) = (7, 33, 5);
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.5).collect();
    let expected: Vec<f32> = (0..m * n)
        .map(|ij| (0..k).map(|p| a[ij / n * k + p] * b[p * n + ij % n]).sum())
        .collect();
    for threaded in [false, true] {
        let mut dst = vec![MaybeUninit::new(f32::NAN); m * n];
        let (a, b) = (Mat::row_major(a.as_ptr(), k), Mat::row_major(b.as_ptr(), n));
        // SAFETY: dst is m x n, a m x k, b k x n.
        unsafe {
            if threaded {
                matmul_threaded_into(&mut dst, m, n, k, a, b)
            } else {
                matmul_into(&mut dst, m, n, k, a, b)
            }
        };
        // SAFETY: filled with NaN, then overwritten.
        let got = unsafe { pnn::ops::cpu::buffer::assume_init(&mut dst) };
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e).abs() < 1e-4, "threaded {threaded}: {g} vs {e}");
        }
    }
}

/// The update's first layer's fused operation (`ops::perturb_norm`) gives what its composition
/// in burn's operations gives: output and the gradients of every operand, over more masks than
/// one block of the kernel holds.
#[test]
fn cpu_perturb_norm_matches_its_reference() {
    use pnn::ops::perturb_norm;
    let device = Device::flex().autodiff();
    let _rng = rng_lock();
    device.seed(23);
    let (n, c, m, og, side) = (3, 2, 150, 3, 4);
    let x: Tensor<4> = Tensor::random([n, c, side, side], Distribution::Normal(0.0, 1.0), &device);
    let scale: Tensor<2> = Tensor::random([c, m], Distribution::Uniform(0.5, 1.5), &device);
    let shift: Tensor<4> = Tensor::random([c, m, side, side], Distribution::Normal(0.0, 1.0), &device);
    let weight: Tensor<4> = Tensor::random([c * og, m, 1, 1], Distribution::Normal(0.0, 0.1), &device);
    let bias: Tensor<1> = Tensor::random([c * og], Distribution::Normal(0.0, 1.0), &device);
    let r: Tensor<4> = Tensor::random([n, c * og, side, side], Distribution::Normal(0.0, 1.0), &device);
    let run = |fused: bool| {
        let [x, scale, shift, weight, bias] = [
            &x,
            &scale.clone().reshape([c, m, 1, 1]),
            &shift,
            &weight,
            &bias.clone().reshape([c * og, 1, 1, 1]),
        ]
        .map(|t| t.clone().require_grad());
        let (s2, b1) = (scale.clone().reshape([c, m]), bias.clone().reshape([c * og]));
        let y = if fused {
            perturb_norm::combine(x.clone(), s2, shift.clone(), weight.clone(), b1)
        } else {
            perturb_norm::reference(x.clone(), s2, shift.clone(), weight.clone(), b1)
        };
        let grads = (y.clone() * r.clone()).sum().backward();
        let mut parts = vec![to_vec(y)];
        parts.extend([x, scale, shift, weight, bias].map(|t| to_vec(t.grad(&grads).unwrap())));
        parts
    };
    assert_parts_close(&run(true), &run(false), "perturb_norm");
}

/// The update's first layer, fused and as the update writes it (BatchNorm over the formed
/// perturbed maps): the same output, gradients and running statistics in training, the same
/// output in evaluation; with unique and with shared masks.
#[test]
fn the_updates_first_layer_is_the_same_function_fused_and_unfused() {
    use pnn::layer::perturb_first::{PerturbFirst, PerturbFirstLayer};
    for unique in [true, false] {
        let _rng = rng_lock();
        let device = Device::flex().autodiff();
        let spec = PerturbSpec {
            in_channels: 3,
            out_channels: 4,
            filter_size: 0,
            level: 0.1,
            unique_masks: unique,
            input_size: 5,
            ..spec(1, unique, false, Act::Relu)
        };
        let build = || {
            device.seed(5);
            let block = PerturbFirst::new(&spec, &device);
            match block.layer {
                PerturbFirstLayer::Noise(layer) => layer,
                PerturbFirstLayer::Conv(_) => panic!("filter size 0 builds the noise path"),
            }
        };
        let (fused, unfused) = (build(), build());
        let x: Tensor<4> = Tensor::random([6, 3, 5, 5], Distribution::Normal(0.2, 1.0), &device);
        let r: Tensor<4> = Tensor::random([6, 12, 5, 5], Distribution::Normal(0.0, 1.0), &device);
        let run = |layer: &pnn::layer::perturb_first::PerturbFirstNoise, fused: bool| {
            let x = x.clone().require_grad();
            let y = if fused {
                layer.combine_fused(x.clone())
            } else {
                layer.combine_unfused(x.clone())
            };
            let grads = (y.clone() * r.clone()).sum().backward();
            let bn = &layer.bn_perturbed;
            vec![
                to_vec(y),
                to_vec(x.grad(&grads).unwrap()),
                to_vec(layer.conv.weight.grad(&grads).unwrap()),
                to_vec(layer.conv.bias.as_ref().unwrap().grad(&grads).unwrap()),
                to_vec(bn.weight.grad(&grads).unwrap()),
                to_vec(bn.bias.grad(&grads).unwrap()),
                to_vec(bn.running_mean.value()),
                to_vec(bn.running_var.value()),
            ]
        };
        let what = format!("unique masks {unique}");
        assert_parts_close(&run(&fused, true), &run(&unfused, false), &what);
        // Evaluation: the running statistics, no autodiff.
        let (fused, unfused) = (fused.valid(), unfused.valid());
        let x = x.clone().inner();
        let eval = |layer: &pnn::layer::perturb_first::PerturbFirstNoise, f: bool| {
            to_vec(if f {
                layer.combine_fused(x.clone())
            } else {
                layer.combine_unfused(x.clone())
            })
        };
        assert_parts_close(
            &[eval(&fused, true)],
            &[eval(&unfused, false)],
            &format!("{what}, evaluation"),
        );
    }
}
