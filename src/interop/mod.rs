//! PyTorch interoperability: pnn's models under the reference's `state_dict` names and layouts
//! (`names`), written as safetensors (`export`) and read from the reference's PyTorch
//! checkpoints (`import`); `cli` holds the commands.

pub mod cli;
pub mod export;
pub mod import;
pub mod names;
