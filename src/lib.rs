//! sdtrace: a tensor-trace differential debugger for Stable Diffusion.
//!
//! Data flows one way: model → [`probe`] → [`trace`] file → analysis → views. This crate's
//! trace, stats, probe and inspection modules never touch a tensor library: the probe takes a
//! neutral [`probe::TensorView`] (dtype, shape, little-endian bytes).

pub mod analysis;
pub mod dtype;
pub mod explain;
pub mod export;
pub mod glob;
pub mod host;
pub mod image;
pub mod inspect;
pub mod model;
pub mod params;
pub mod pipeline;
pub mod probe;
pub mod report;
pub mod sampling;
pub mod stats;
pub mod text;
pub mod trace;
pub mod tui;

pub use dtype::DType;
