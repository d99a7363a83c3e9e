//! sdtrace-core: everything a recorder or a reader of sdtrace traces needs that touches no tensor
//! library — the one implementation of the format that sdtrace's candle pipeline and its Python
//! hosts share.
//!
//! Data flows one way: a host's tensors → [`probe`] (policy: what is kept at which fidelity) →
//! [`stats`] (summaries, sketches, thumbnails) → [`trace`] file → [`analysis`] (alignment,
//! metrics, judgement) → [`report`] (text, JSON, Markdown, JUnit, HTML). [`inspect`] and
//! [`export`] read traces for people and for other tools; [`image`] decodes final images and
//! reads and writes PNGs with their generation parameters; [`cards`] names the GPUs whose
//! noise layouts the analysis recognises; [`ldm`] maps the module paths of LDM-structured hosts
//! (AUTOMATIC1111, Forge, ComfyUI, single-file checkpoints) to sdtrace's keys.
//!
//! Invariants: no candle, no ratatui (`cargo tree -p sdtrace-core` shows neither); the probe
//! takes a neutral [`probe::TensorView`] (dtype, shape, little-endian bytes); no input, however
//! damaged, makes a reader panic.

pub mod analysis;
pub mod cards;
pub mod dtype;
pub mod errors;
pub mod escape;
pub mod exit;
pub mod export;
pub mod files;
pub mod glob;
pub mod image;
pub mod inspect;
pub mod ldm;
pub mod probe;
pub mod report;
pub mod stats;
pub mod trace;

pub use dtype::DType;
