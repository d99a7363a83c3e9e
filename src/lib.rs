//! sdtrace: a tensor-trace differential debugger for Stable Diffusion.
//!
//! Data flows one way: model → [`probe`] → [`trace`] file → analysis → views. This crate holds
//! the candle side — the instrumented model, sampling, the pipeline behind `sdtrace record` —
//! and the views (CLI, TUI). The format, summaries, probe policy, analysis and report
//! renderers live in `sdtrace-core` (no tensor library) and are re-exported here under their
//! usual names, so `sdtrace::trace`, `sdtrace::analysis`, … are the same modules the Python
//! package uses.

pub use sdtrace_core::{
    DType, analysis, dtype, errors, escape, exit, export, files, glob, image, inspect, probe,
    report, stats, trace,
};

pub mod explain;
pub mod host;
pub mod model;
pub mod params;
pub mod pipeline;
pub mod sampling;
pub mod text;
pub mod tui;
