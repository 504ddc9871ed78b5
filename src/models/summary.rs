//! Parameter counts as the reference prints them: regular parameters and noise mask values.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// Counts of a model's values, split as the reference's `Model size` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ParamCount {
    /// Learnable parameters other than noise masks (PyTorch's `named_parameters` minus masks).
    pub regular: usize,
    /// Noise mask values (parameters named `noise`, trainable or not).
    pub noise: usize,
    /// Regular parameters that are never trained (the update's frozen first convolution).
    #[serde(default)]
    pub frozen: usize,
}

impl ParamCount {
    pub fn of<M: Module>(model: &M) -> Self {
        let mut counter = Counter::default();
        // A model on a device without autodiff keeps which parameters it would train, but tells
        // only once in training mode (burn applies the setting there).
        model.clone().train().visit(&mut counter);
        counter.count
    }

    /// The reference's line: `Model size: 0.30M regular parameters, 0.03M noise mask values`,
    /// with the exact counts beside.
    pub fn model_size_line(&self) -> String {
        let frozen = if self.frozen > 0 {
            format!(", {} of the regular parameters frozen", self.frozen)
        } else {
            String::new()
        };
        format!(
            "Model size: {:.2}M regular parameters, {:.2}M noise mask values ({} regular parameters, {} noise mask values{frozen})",
            self.regular as f64 / 1e6,
            self.noise as f64 / 1e6,
            self.regular,
            self.noise
        )
    }
}

#[derive(Default)]
struct Counter {
    path: Vec<String>,
    count: ParamCount,
}

impl ModuleVisitor for Counter {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let n = param.shape().num_elements();
        match self.path.last().map(String::as_str) {
            // Buffers in PyTorch, not parameters: BatchNorm running statistics, and the fixed
            // noise of the original authors' NoiseLayer.
            Some("running_mean" | "running_var" | "noise_buffer") => {}
            Some("noise") => self.count.noise += n,
            _ => {
                self.count.regular += n;
                if !param.is_require_grad() {
                    self.count.frozen += n;
                }
            }
        }
    }
}
