use burn::tensor::{Device, Distribution, Tensor};
use pnn::layer::conv::ConvSpec;
use std::time::Instant;

fn main() {
    let device = Device::flex().autodiff();
    let (n, c, o, s) = (16, 128, 128, 32);
    let conv = ConvSpec::new(c, o, 1).init(&device);
    let x: Tensor<4> = Tensor::random([n, c, s, s], Distribution::Normal(0.0, 1.0), &device);
    for rep in 0..3 {
        let t = Instant::now();
        let xg = x.clone().require_grad();
        let y = conv.forward(xg.clone());
        let g = y.sum().backward();
        let _ = xg.grad(&g).unwrap().into_data();
        let t_conv = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let xg = x.clone().require_grad();
        let w = conv.weight.val().reshape([1, o, c]);
        let y = w.matmul(xg.clone().reshape([n, c, s * s])) + conv.bias.as_ref().unwrap().val().reshape([1, o, 1]);
        let g = y.sum().backward();
        let _ = xg.grad(&g).unwrap().into_data();
        let t_mm = t.elapsed().as_secs_f64();
        println!("rep {rep}: conv {:.1} ms, matmul {:.1} ms", t_conv * 1e3, t_mm * 1e3);
    }
}
