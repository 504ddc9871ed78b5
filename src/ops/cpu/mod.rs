//! What the hand-written CPU operations share.

pub mod blocks;
pub mod buffer;
pub mod flex_tensor;
pub mod lanes;
pub mod matmul;
pub mod reused;
