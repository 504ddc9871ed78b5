//! The modules the models are built of: the perturbation layer and what it is made of, and the
//! ResNet pieces. On the CPU most of them run pnn's hand-written operations (`crate::ops`), on a
//! GPU burn's (the perturbation layer runs its own kernels there too).

pub mod activation;
pub mod batchnorm;
pub mod classifier;
pub mod conv;
pub mod norm_conv;
pub mod perturb;
pub mod perturb_first;
pub mod pool;

pub use activation::Activation;
pub use batchnorm::BatchNorm;
pub use classifier::ClassifierHead;
pub use norm_conv::{ConvBn, global_average_pool, projection_shortcut, residual_relu};
pub use perturb::{PerturbLayer, PerturbSpec};
pub use perturb_first::PerturbFirst;
pub use pool::Pool;
