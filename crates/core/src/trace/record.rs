//! Record metadata and the index, both postcard-encoded.
//!
//! Extension rule: postcard is not self-describing, so these structs only ever *gain fields at
//! the end*. Readers decode the fields they know and ignore any bytes after them, so older
//! readers keep working on newer files.

use super::codec::Codec;
use crate::dtype::DType;
use crate::stats::{Sketch, Summary, Thumbnail};
use serde::{Deserialize, Serialize};
use std::fmt;

/// How much of a tensor a record keeps. Each level includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum Fidelity {
    /// Summary only.
    Stats,
    /// Summary, CountSketch and (for NCHW tensors) a thumbnail.
    Sketch,
    /// All of the above plus the tensor itself.
    Full,
}

impl Fidelity {
    pub const ALL: [Fidelity; 3] = [Fidelity::Stats, Fidelity::Sketch, Fidelity::Full];

    pub fn code(self) -> u8 {
        match self {
            Fidelity::Stats => 0,
            Fidelity::Sketch => 1,
            Fidelity::Full => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Fidelity::Stats => "stats",
            Fidelity::Sketch => "sketch",
            Fidelity::Full => "full",
        }
    }
}

impl fmt::Display for Fidelity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<Fidelity> for u8 {
    fn from(f: Fidelity) -> u8 {
        f.code()
    }
}

impl TryFrom<u8> for Fidelity {
    type Error = String;
    fn try_from(c: u8) -> Result<Self, String> {
        Fidelity::ALL
            .into_iter()
            .find(|f| f.code() == c)
            .ok_or_else(|| format!("unknown fidelity code {c}"))
    }
}

impl std::str::FromStr for Fidelity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Fidelity::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("unknown fidelity '{s}' (expected stats, sketch or full)"))
    }
}

/// Identity of a record: `(step, eval, key)`. `step` is `None` outside the sampling loop
/// (text conditioning, initial noise, VAE, image); `eval` counts model evaluations within a
/// step (0 for one-evaluation samplers).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId {
    pub step: Option<u32>,
    pub eval: u32,
    pub key: String,
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // For people: control characters in the key are escaped.
        let key = crate::escape::printable(&self.key);
        match self.step {
            Some(s) => write!(f, "step {s} eval {} {key}", self.eval),
            None => write!(f, "{key}"),
        }
    }
}

/// Where a record's tensor bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadRef {
    /// File offset of the payload frame (its frame header).
    pub frame_offset: u64,
    pub codec: Codec,
    /// Length of the payload frame's body.
    pub stored_len: u64,
    /// Length of the decoded tensor bytes (= element count × dtype size).
    pub raw_len: u64,
}

/// Everything one record frame holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordMeta {
    pub key: String,
    pub step: Option<u32>,
    pub eval: u32,
    /// Position in execution order (0-based, increasing through the file).
    pub order: u64,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub fidelity: Fidelity,
    pub summary: Summary,
    pub sketch: Option<Sketch>,
    pub thumbnail: Option<Thumbnail>,
    pub payload: Option<PayloadRef>,
}

impl RecordMeta {
    pub fn id(&self) -> RecordId {
        RecordId {
            step: self.step,
            eval: self.eval,
            key: self.key.clone(),
        }
    }
}

/// One index row: enough to list and find a record without reading it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct IndexRow {
    /// Position in the index's key table.
    pub key: u32,
    pub step: Option<u32>,
    pub eval: u32,
    pub order: u64,
    pub dtype: DType,
    pub fidelity: Fidelity,
    pub shape: Vec<u64>,
    /// File offset of the record frame.
    pub record_offset: u64,
    /// Total bytes of the record frame, header and padding included.
    pub record_len: u64,
    /// Total bytes of the payload frame (0 without payload).
    pub payload_len: u64,
}

/// Body of the index frame.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct IndexBody {
    pub keys: Vec<String>,
    pub rows: Vec<IndexRow>,
}
