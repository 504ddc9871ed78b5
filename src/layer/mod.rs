//! Building blocks shared by the models: the perturbation layer and what it is made of.

pub mod activation;
pub mod batchnorm;
pub mod batchnorm_cpu;
pub mod blocks;
pub mod buffer;
pub mod classifier;
pub mod conv;
pub mod conv_cpu;
pub mod flex_tensor;
pub mod fused;
pub mod fused_cpu;
#[cfg(feature = "gpu")]
pub mod fused_cube;
#[cfg(feature = "gpu")]
pub mod fused_gpu;
pub mod lanes;
pub mod maxpool_cpu;
pub mod norm_conv;
pub mod perturb;
pub mod pointwise;
pub mod pool;
pub mod relu_cpu;

pub use activation::Activation;
pub use batchnorm::BatchNorm;
pub use classifier::ClassifierHead;
pub use norm_conv::{ConvBn, global_average_pool, projection_shortcut, residual_relu};
pub use perturb::{PerturbLayer, PerturbSpec};
pub use pool::Pool;
