//! The trace file: one append-only, checksummed file per recorded run.
//!
//! Layout (specified byte by byte in `docs/FORMAT.md`):
//!
//! ```text
//! file header (16 B)  "SDTRACE\0" major:u16 minor:u16 reserved:u32
//! frame*              kind:u8 flags:u8 reserved:u16 crc32:u32 body_len:u64 body pad-to-8
//!                     kinds: 1 run header (JSON), 2 record (postcard), 3 payload, 4 index
//! footer (24 B)       index_offset:u64 crc32:u32 reserved:u32 "SDTRIDX\0"
//! ```
//!
//! Invariants:
//! - The writer only appends, and writes a record's payload frame before the record frame
//!   that points to it, so a record is complete exactly when its record frame is.
//! - A file without a valid footer (a killed process, a full disk) is still readable: the
//!   reader scans frames from the start and keeps every complete record that checks, skipping
//!   damaged frames, and says so ([`Integrity::Recovered`], [`TraceReader::damage`]).
//! - Readers check every length against the file size before allocating and verify every
//!   checksum before trusting a body; damage yields a [`TraceError`] naming the byte offset.
//! - Nothing here depends on a tensor library.

mod codec;
mod format;
mod header;
mod reader;
mod record;
mod writer;

pub use codec::Codec;
pub use format::{FILE_MAGIC, FOOTER_MAGIC, FORMAT_MAJOR, FORMAT_MINOR, FrameKind};
pub use header::{
    DeviceFacts, GpuFacts, NonFinite, RunEnd, RunHeader, RunStatus, Settings, format_unix_ms,
};
pub use reader::{Damage, Integrity, RecordEntry, TraceReader};
pub use record::{Fidelity, PayloadRef, RecordId, RecordMeta};
pub use writer::{RecordInput, TraceWriter, WriterOptions, WrittenTrace};

use std::path::PathBuf;

/// Errors reading or writing traces. Each names the file and, for damage, the byte offset.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{path}: {op}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: not an sdtrace trace (the file does not start with \"SDTRACE\\0\"); pass a file written by `sdtrace record`"
    )]
    NotATrace { path: PathBuf },
    #[error(
        "{path}: it is {kind}, not a regular file; sdtrace reads and writes traces by position, so pass a trace file (copy a stream to a file first)"
    )]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error(
        "{path}: trace format version {major}.{minor} is newer than this sdtrace reads (major {supported}); upgrade sdtrace"
    )]
    UnsupportedVersion {
        path: PathBuf,
        major: u16,
        minor: u16,
        supported: u16,
    },
    #[error("{path}: damaged trace at byte offset {offset}: {what}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    #[error(
        "{path}: the trace holds no complete run header (only {len} bytes survived); the recording died before it started"
    )]
    NoHeader { path: PathBuf, len: u64 },
    #[error("trace writer for {path} failed earlier and stopped: {message}")]
    WriterFailed { path: PathBuf, message: String },
    #[error("invalid tensor for key '{key}': {what}")]
    InvalidTensor { key: String, what: String },
}

impl TraceError {
    fn io(path: &std::path::Path, op: &'static str, source: std::io::Error) -> Self {
        TraceError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }

    fn corrupt(path: &std::path::Path, offset: u64, what: impl Into<String>) -> Self {
        TraceError::Corrupt {
            path: path.to_path_buf(),
            offset,
            what: what.into(),
        }
    }
}

pub type Result<T, E = TraceError> = std::result::Result<T, E>;
