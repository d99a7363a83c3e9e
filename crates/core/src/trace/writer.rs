//! The trace writer: appends frames on a background thread behind a byte-bounded queue.
//!
//! The caller's thread computes summaries and hands finished records over; encoding payloads,
//! writing frames and building the index happen on the I/O thread, so recording overlaps model
//! computation. The queue holds at most [`WriterOptions::max_queue_bytes`] of payload (a record
//! larger than that still goes through, alone), so a slow disk slows the model instead of
//! exhausting memory. The first I/O error stops the writer: later calls return it with the
//! path, and the file keeps a valid prefix that readers recover.

use super::codec::{Codec, encode_shuffle_zstd};
use super::format::{FrameKind, file_header, footer, write_frame};
use super::header::{RunEnd, RunHeader};
use super::record::{Fidelity, IndexBody, IndexRow, PayloadRef, RecordMeta};
use super::{Result, TraceError};
use crate::dtype::{DType, byte_len};
use crate::stats::{Sketch, Summary, Thumbnail};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Tuning of a [`TraceWriter`].
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Most payload bytes waiting for the I/O thread before `write` blocks.
    pub max_queue_bytes: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            max_queue_bytes: 256 << 20,
        }
    }
}

/// One record as handed to the writer; the writer assigns `order` and the payload location.
#[derive(Clone, Debug)]
pub struct RecordInput {
    pub key: String,
    pub step: Option<u32>,
    pub eval: u32,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub fidelity: Fidelity,
    pub summary: Summary,
    pub sketch: Option<Sketch>,
    pub thumbnail: Option<Thumbnail>,
    /// The tensor's little-endian bytes and how to store them; required for `Full`.
    pub payload: Option<(Vec<u8>, Codec)>,
}

/// What a finished writer produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenTrace {
    pub path: PathBuf,
    pub records: u64,
    pub bytes: u64,
}

enum Job {
    Record(u64, Box<RecordInput>),
    Flush,
    /// Write the run-end frame (if any), the index and the footer, then stop.
    Finish(Option<Box<RunEnd>>),
    /// Flush what was written and stop without an index (the file reads as truncated).
    Abort,
}

/// Bytes a queued record counts against the queue bound.
fn queued_size(rec: &RecordInput) -> usize {
    rec.payload.as_ref().map_or(0, |(b, _)| b.len()) + 1024
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    bytes: usize,
    error: Option<String>,
}

struct Shared {
    queue: Mutex<Queue>,
    not_empty: Condvar,
    not_full: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A poisoned lock only means the I/O thread panicked; the queue itself is still sound.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Appends records to a trace file. Call [`finish`](Self::finish) to write the index; a writer
/// dropped without it flushes what it has and leaves a file that reads as truncated.
pub struct TraceWriter {
    path: PathBuf,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Result<WrittenTrace>>>,
    max_queue_bytes: usize,
    next_order: u64,
}

impl TraceWriter {
    /// Create (or truncate) `path`, write the file header and run header, start the I/O thread.
    pub fn create(path: impl AsRef<Path>, header: &RunHeader, opts: WriterOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        // Opening a FIFO for writing blocks until a reader comes; a device would swallow it.
        crate::files::check_regular(&path).map_err(|kind| TraceError::NotRegular {
            path: path.clone(),
            kind,
        })?;
        let file = File::create(&path)
            .map_err(|e| TraceError::io(&path, "cannot create trace file", e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut offset = 16u64;
        out.write_all(&file_header())
            .and_then(|_| write_frame(&mut out, FrameKind::Header, &header.to_json()))
            .and_then(|n| {
                offset += n;
                out.flush()
            })
            .map_err(|e| TraceError::io(&path, "cannot write trace header", e))?;
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
        });
        let io = IoThread {
            path: path.clone(),
            out,
            offset,
            keys: Vec::new(),
            key_ids: HashMap::new(),
            rows: Vec::new(),
        };
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sdtrace-writer".into())
            .spawn(move || io.run(&thread_shared))
            .map_err(|e| TraceError::io(&path, "cannot start the writer thread", e))?;
        Ok(TraceWriter {
            path,
            shared,
            thread: Some(thread),
            max_queue_bytes: opts.max_queue_bytes,
            next_order: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queue a record; returns its execution-order index. Blocks while the queue is full.
    pub fn write(&mut self, rec: RecordInput) -> Result<u64> {
        validate(&rec)?;
        let size = queued_size(&rec);
        let order = self.next_order;
        let mut q = self.shared.lock();
        while q.error.is_none() && q.bytes > 0 && q.bytes + size > self.max_queue_bytes {
            q = self
                .shared
                .not_full
                .wait(q)
                .unwrap_or_else(|e| e.into_inner());
        }
        self.check(&q)?;
        q.bytes += size;
        q.jobs.push_back(Job::Record(order, Box::new(rec)));
        drop(q);
        self.shared.not_empty.notify_one();
        self.next_order += 1;
        Ok(order)
    }

    /// Ask the I/O thread to hand everything queued so far to the OS (used at step boundaries).
    pub fn flush(&mut self) -> Result<()> {
        self.push(Job::Flush)
    }

    /// Write the index and footer, flush everything to the OS, and stop the I/O thread.
    pub fn finish(mut self) -> Result<WrittenTrace> {
        self.push(Job::Finish(None))?;
        self.join()
    }

    /// Like [`finish`](Self::finish), recording how the run ended first (a run-end frame), so
    /// a run stopped early still gives a valid file that says it is incomplete.
    pub fn finish_with(mut self, end: RunEnd) -> Result<WrittenTrace> {
        self.push(Job::Finish(Some(Box::new(end))))?;
        self.join()
    }

    fn push(&self, job: Job) -> Result<()> {
        let mut q = self.shared.lock();
        self.check(&q)?;
        q.jobs.push_back(job);
        drop(q);
        self.shared.not_empty.notify_one();
        Ok(())
    }

    fn check(&self, q: &Queue) -> Result<()> {
        match &q.error {
            Some(m) => Err(TraceError::WriterFailed {
                path: self.path.clone(),
                message: m.clone(),
            }),
            None => Ok(()),
        }
    }

    fn join(&mut self) -> Result<WrittenTrace> {
        let handle = self.thread.take().ok_or_else(|| TraceError::WriterFailed {
            path: self.path.clone(),
            message: "the writer was already finished".into(),
        })?;
        handle.join().unwrap_or_else(|_| {
            Err(TraceError::WriterFailed {
                path: self.path.clone(),
                message: "the writer thread panicked".into(),
            })
        })
    }
}

impl Drop for TraceWriter {
    fn drop(&mut self) {
        if self.thread.is_some() {
            // No index: an unfinished run must not look whole. Everything queued is still written.
            self.shared.lock().jobs.push_back(Job::Abort);
            self.shared.not_empty.notify_one();
            let _ = self.join();
        }
    }
}

fn validate(rec: &RecordInput) -> Result<()> {
    let bad = |what: String| {
        Err(TraceError::InvalidTensor {
            key: rec.key.clone(),
            what,
        })
    };
    if rec.key.is_empty() {
        return bad("the key is empty".into());
    }
    let Some(expected) = byte_len(rec.dtype, &rec.shape) else {
        return bad(format!("shape {:?} overflows", rec.shape));
    };
    match (&rec.payload, rec.fidelity) {
        (Some((bytes, _)), _) if bytes.len() as u64 != expected => bad(format!(
            "payload is {} bytes but shape {:?} of {} needs {expected}",
            bytes.len(),
            rec.shape,
            rec.dtype
        )),
        (None, Fidelity::Full) => bad("fidelity full needs a payload".into()),
        _ => Ok(()),
    }
}

struct IoThread {
    path: PathBuf,
    out: BufWriter<File>,
    offset: u64,
    keys: Vec<String>,
    key_ids: HashMap<String, u32>,
    rows: Vec<IndexRow>,
}

impl IoThread {
    fn run(mut self, shared: &Shared) -> Result<WrittenTrace> {
        loop {
            let job = {
                let mut q = shared.lock();
                loop {
                    if let Some(job) = q.jobs.pop_front() {
                        break job;
                    }
                    q = shared.not_empty.wait(q).unwrap_or_else(|e| e.into_inner());
                }
            };
            let failed = shared.lock().error.clone();
            let result = match job {
                Job::Record(order, rec) => {
                    let size = queued_size(&rec);
                    let r = if failed.is_some() {
                        Ok(())
                    } else {
                        self.record(order, *rec)
                    };
                    shared.lock().bytes -= size;
                    shared.not_full.notify_all();
                    r
                }
                Job::Flush if failed.is_none() => {
                    self.out.flush().map_err(|e| self.err("cannot write", e))
                }
                Job::Flush => Ok(()),
                Job::Finish(end) => {
                    let r = match failed {
                        Some(message) => Err(TraceError::WriterFailed {
                            path: self.path.clone(),
                            message,
                        }),
                        None => self.finish(end.as_deref()),
                    };
                    if let Err(e) = &r {
                        shared
                            .lock()
                            .error
                            .get_or_insert_with(|| crate::errors::chain_text(e));
                    }
                    return r;
                }
                Job::Abort => {
                    let _ = self.out.flush();
                    return Err(TraceError::WriterFailed {
                        path: self.path.clone(),
                        message: "not finished".into(),
                    });
                }
            };
            if let Err(e) = result {
                shared.lock().error = Some(crate::errors::chain_text(&e));
                shared.not_full.notify_all();
                let _ = self.out.flush();
            }
        }
    }

    fn err(&self, op: &'static str, e: std::io::Error) -> TraceError {
        TraceError::io(&self.path, op, e)
    }

    fn frame(&mut self, kind: FrameKind, body: &[u8]) -> Result<u64> {
        let at = self.offset;
        let n = write_frame(&mut self.out, kind, body).map_err(|e| self.err("cannot write", e))?;
        self.offset += n;
        Ok(at)
    }

    fn record(&mut self, order: u64, rec: RecordInput) -> Result<()> {
        let mut payload = None;
        let mut payload_len = 0;
        if let Some((bytes, codec)) = &rec.payload {
            let encoded;
            let body: &[u8] = match codec {
                Codec::Raw => bytes,
                Codec::ShuffleZstd => {
                    encoded = encode_shuffle_zstd(bytes, rec.dtype.size())
                        .map_err(|e| self.err("cannot compress payload", e))?;
                    &encoded
                }
            };
            let at = self.frame(FrameKind::Payload, body)?;
            payload_len = self.offset - at;
            payload = Some(PayloadRef {
                frame_offset: at,
                codec: *codec,
                stored_len: body.len() as u64,
                raw_len: bytes.len() as u64,
            });
        }
        let key_id = match self.key_ids.get(&rec.key) {
            Some(&id) => id,
            None => {
                let id = self.keys.len() as u32;
                self.keys.push(rec.key.clone());
                self.key_ids.insert(rec.key.clone(), id);
                id
            }
        };
        let meta = RecordMeta {
            key: rec.key,
            step: rec.step,
            eval: rec.eval,
            order,
            dtype: rec.dtype,
            shape: rec.shape,
            fidelity: rec.fidelity,
            summary: rec.summary,
            sketch: rec.sketch,
            thumbnail: rec.thumbnail,
            payload,
        };
        let body = postcard::to_stdvec(&meta).map_err(|e| TraceError::WriterFailed {
            path: self.path.clone(),
            message: format!("cannot encode record '{}': {e}", meta.key),
        })?;
        let at = self.frame(FrameKind::Record, &body)?;
        self.rows.push(IndexRow {
            key: key_id,
            step: meta.step,
            eval: meta.eval,
            order,
            dtype: meta.dtype,
            fidelity: meta.fidelity,
            shape: meta.shape,
            record_offset: at,
            record_len: self.offset - at,
            payload_len,
        });
        Ok(())
    }

    fn finish(&mut self, end: Option<&RunEnd>) -> Result<WrittenTrace> {
        let run_end_len = match end {
            Some(end) => {
                let before = self.offset;
                self.frame(FrameKind::RunEnd, &end.to_json())?;
                u32::try_from(self.offset - before).map_err(|_| TraceError::WriterFailed {
                    path: self.path.clone(),
                    message: "the run-end record is over 4 GiB".into(),
                })?
            }
            None => 0,
        };
        let index = IndexBody {
            keys: std::mem::take(&mut self.keys),
            rows: std::mem::take(&mut self.rows),
        };
        let body = postcard::to_stdvec(&index).map_err(|e| TraceError::WriterFailed {
            path: self.path.clone(),
            message: format!("cannot encode the index: {e}"),
        })?;
        let at = self.frame(FrameKind::Index, &body)?;
        self.out
            .write_all(&footer(at, run_end_len))
            .map_err(|e| self.err("cannot write", e))?;
        self.offset += 24;
        self.out.flush().map_err(|e| self.err("cannot write", e))?;
        Ok(WrittenTrace {
            path: self.path.clone(),
            records: index.rows.len() as u64,
            bytes: self.offset,
        })
    }
}
