//! Background work of `sdtrace diff`: the comparison, details for the views, exports.
//!
//! [`spawn_analysis`] runs the comparison on a worker thread in two passes through
//! [`compare_with`]: first without payloads (record frames only, so the heatmap appears at
//! once), then in full, sending each pair as it is measured and counting bytes in a shared
//! [`Progress`]. When either trace is still being written (no footer yet) it then watches both
//! files and starts a new *generation* whenever they grow (the payload pass runs once the files
//! stop growing for a poll interval). Messages carry their generation so the UI drops stale
//! ones. [`spawn_detail`] and [`spawn_export`] read payloads for one record on a short-lived
//! thread. Nothing here blocks the UI thread; every failure becomes a message, never a panic.

use super::app::{Detail, Phase, Request};
use super::detail::{image_detail, noise_detail, tensor_detail};
use crate::analysis::{
    AnalysisError, CompareOptions, Comparison, Depth, Hooks, PairRecord, Progress, compare_with,
};
use crate::dtype::DType;
use crate::export::{to_npy, to_safetensors, write_atomic};
use crate::trace::{RecordEntry, RecordMeta, TraceError, TraceReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::Duration;

/// Largest payload (per side) the views read whole.
pub const VIEW_LIMIT: u64 = 512 << 20;

/// Both traces, as one generation of the comparison read them.
pub struct Readers {
    pub a: TraceReader,
    pub b: TraceReader,
}

/// What the background threads report.
pub enum LoaderMsg {
    Comparison {
        generation: u64,
        comparison: Box<Comparison>,
        phase: Phase,
        readers: Arc<Readers>,
    },
    Pair {
        generation: u64,
        index: usize,
        record: Box<PairRecord>,
    },
    Phase {
        generation: u64,
        phase: Phase,
    },
    Failed {
        error: String,
    },
    Detail {
        request: Request,
        result: Result<Detail, String>,
    },
    Exported {
        result: Result<String, String>,
    },
}

/// What to compare.
#[derive(Clone, Debug)]
pub struct AnalysisJob {
    pub a: PathBuf,
    pub b: PathBuf,
    pub floor: Option<PathBuf>,
    pub opts: CompareOptions,
    /// How often a trace still being recorded is checked for growth.
    pub poll: Duration,
}

/// Handles to the comparison thread.
pub struct Worker {
    pub progress: Arc<Progress>,
    pub stop: Arc<AtomicBool>,
    pub handle: std::thread::JoinHandle<()>,
}

fn complete(r: &TraceReader) -> bool {
    r.integrity().is_complete()
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

/// Sleep `d` in small steps; false when told to stop.
fn nap(d: Duration, stop: &AtomicBool) -> bool {
    let step = Duration::from_millis(20);
    let mut left = d;
    while !left.is_zero() {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
    !stop.load(Ordering::Relaxed)
}

/// Start the comparison of `job`; `first` are readers already opened for it (generation 0).
pub fn spawn_analysis(
    job: AnalysisJob,
    first: Option<(TraceReader, TraceReader)>,
    tx: Sender<LoaderMsg>,
) -> Worker {
    let progress = Arc::new(Progress::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (p, s) = (progress.clone(), stop.clone());
    let handle = std::thread::spawn(move || run_analysis(&job, first, &tx, &p, &s));
    Worker {
        progress,
        stop,
        handle,
    }
}

fn run_analysis(
    job: &AnalysisJob,
    first: Option<(TraceReader, TraceReader)>,
    tx: &Sender<LoaderMsg>,
    progress: &Progress,
    stop: &AtomicBool,
) {
    let mut generation = 0u64;
    let mut opened = first;
    let fail = |e: String| {
        let _ = tx.send(LoaderMsg::Failed { error: e });
    };
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let (ra, rb) = match opened.take() {
            Some(r) => r,
            None => match (TraceReader::open(&job.a), TraceReader::open(&job.b)) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) => {
                    // A trace being created may not have its header yet: try again.
                    fail(crate::errors::chain_text(&e));
                    if !nap(job.poll, stop) {
                        return;
                    }
                    continue;
                }
            },
        };
        let floor = match job.floor.as_deref().map(TraceReader::open).transpose() {
            Ok(f) => f,
            Err(e) => {
                fail(crate::errors::chain_text(&e));
                return;
            }
        };
        // The lengths the readers saw: any growth after them starts a new generation.
        let sizes = (ra.file_len(), rb.file_len());
        let live = !(complete(&ra) && complete(&rb));
        let readers = Arc::new(Readers { a: ra, b: rb });
        let hooks = Hooks {
            cancel: Some(stop),
            ..Hooks::default()
        };
        match compare_with(
            &readers.a,
            &readers.b,
            floor.as_ref(),
            &job.opts,
            Depth::Summaries,
            hooks,
        ) {
            Ok(c) => {
                let _ = tx.send(LoaderMsg::Comparison {
                    generation,
                    comparison: Box::new(c),
                    phase: if live {
                        Phase::Following
                    } else {
                        Phase::Payloads
                    },
                    readers: readers.clone(),
                });
            }
            Err(AnalysisError::Cancelled) => return,
            Err(e) => {
                fail(crate::errors::chain_text(&e));
                if !live {
                    return;
                }
            }
        }
        // While a trace grows, show the summary pass and wait for it to settle.
        let settled =
            !live || (nap(job.poll, stop) && sizes == (file_len(&job.a), file_len(&job.b)));
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if settled {
            for c in [&progress.pairs_done, &progress.pairs_total] {
                c.store(0, Ordering::Relaxed);
            }
            for c in [&progress.bytes_done, &progress.bytes_total] {
                c.store(0, Ordering::Relaxed);
            }
            let g = generation;
            let on_pair = move |index: usize, r: &PairRecord| {
                let _ = tx.send(LoaderMsg::Pair {
                    generation: g,
                    index,
                    record: Box::new(r.clone()),
                });
            };
            let hooks = Hooks {
                on_pair: Some(&on_pair),
                progress: Some(progress),
                cancel: Some(stop),
            };
            if live {
                // The payload pass runs now (with progress).
                let _ = tx.send(LoaderMsg::Phase {
                    generation,
                    phase: Phase::Payloads,
                });
            }
            match compare_with(
                &readers.a,
                &readers.b,
                floor.as_ref(),
                &job.opts,
                Depth::Full,
                hooks,
            ) {
                Ok(c) => {
                    let _ = tx.send(LoaderMsg::Comparison {
                        generation,
                        comparison: Box::new(c),
                        phase: if live { Phase::Following } else { Phase::Done },
                        readers: readers.clone(),
                    });
                }
                Err(AnalysisError::Cancelled) => return,
                Err(e) => fail(crate::errors::chain_text(&e)),
            }
            if !live {
                return;
            }
        }
        // Wait for either file to change.
        loop {
            if sizes != (file_len(&job.a), file_len(&job.b)) {
                break;
            }
            if !nap(job.poll, stop) {
                return;
            }
        }
        generation += 1;
    }
}

/// The entry of `r` with execution order `order`.
fn entry_by_order(r: &TraceReader, order: u64) -> Result<&RecordEntry, String> {
    let e = r.entries();
    e.binary_search_by_key(&order, |x| x.order)
        .ok()
        .and_then(|i| e.get(i))
        .or_else(|| e.iter().find(|x| x.order == order))
        .ok_or_else(|| {
            format!(
                "{}: no record with order {order} (the trace changed?)",
                r.path().display()
            )
        })
}

fn meta(r: &TraceReader, order: u64) -> Result<RecordMeta, String> {
    let e = entry_by_order(r, order)?;
    r.read_meta(e).map_err(|e| e.to_string())
}

fn payload(r: &TraceReader, m: &RecordMeta) -> Result<Option<Vec<u8>>, String> {
    match m.payload {
        Some(p) if p.raw_len > VIEW_LIMIT => Err(format!(
            "{}: '{}' holds {} bytes, more than the {} a view reads",
            r.path().display(),
            m.key,
            p.raw_len,
            VIEW_LIMIT
        )),
        _ => r.read_payload(m).map_err(|e: TraceError| e.to_string()),
    }
}

/// Load what the view of `req` needs for `pair` (record `req`'s index).
pub fn load_detail(readers: &Readers, req: Request, pair: &PairRecord) -> Result<Detail, String> {
    let ma = meta(&readers.a, pair.order_a)?;
    let mb = meta(&readers.b, pair.order_b)?;
    match req {
        Request::Tensor(i) => {
            let payloads = match (payload(&readers.a, &ma), payload(&readers.b, &mb)) {
                (Ok(Some(a)), Ok(Some(b))) => Some((a, b)),
                (Err(e), _) | (_, Err(e)) => {
                    let mut d = tensor_detail(i, pair.label(), &ma, &mb, None);
                    d.note = Some(e);
                    return Ok(Detail::Tensor(Box::new(d)));
                }
                _ => None,
            };
            let d = tensor_detail(
                i,
                pair.label(),
                &ma,
                &mb,
                payloads.as_ref().map(|(a, b)| (a.as_slice(), b.as_slice())),
            );
            Ok(Detail::Tensor(Box::new(d)))
        }
        Request::Noise(i) => {
            let (Some(a), Some(b)) = (payload(&readers.a, &ma)?, payload(&readers.b, &mb)?) else {
                return Err(format!(
                    "noise.initial was recorded without its tensor ({} / {}); record it at full fidelity",
                    ma.fidelity.name(),
                    mb.fidelity.name()
                ));
            };
            Ok(Detail::Noise(Box::new(noise_detail(
                i, pair, ma.dtype, &a, mb.dtype, &b,
            ))))
        }
        Request::Image(i) => {
            let (Some(a), Some(b)) = (payload(&readers.a, &ma)?, payload(&readers.b, &mb)?) else {
                return Err("the image was recorded without its pixels".into());
            };
            image_detail(i, ma.dtype, &ma.shape, &a, mb.dtype, &mb.shape, &b)
                .map(|d| Detail::Image(Box::new(d)))
        }
    }
}

/// Load a detail on its own thread.
pub fn spawn_detail(
    readers: Arc<Readers>,
    request: Request,
    pair: PairRecord,
    tx: Sender<LoaderMsg>,
) {
    std::thread::spawn(move || {
        let result = load_detail(&readers, request, &pair);
        let _ = tx.send(LoaderMsg::Detail { request, result });
    });
}

/// A file name for a record: `unet.mid_block@s3.a.npy`.
pub fn export_name(pair: &PairRecord, side: &str, dtype: DType) -> String {
    let key: String = pair
        .key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let at = match (pair.step, pair.eval) {
        (Some(s), 0) => format!("@s{s}"),
        (Some(s), e) => format!("@s{s}e{e}"),
        (None, 0) => String::new(),
        (None, e) => format!("@e{e}"),
    };
    let ext = if dtype == DType::BF16 {
        "safetensors"
    } else {
        "npy"
    };
    format!("{key}{at}.{side}.{ext}")
}

/// Export both sides of `pair` into `dir` with the export module's writers.
pub fn export_pair(readers: &Readers, pair: &PairRecord, dir: &Path) -> Result<String, String> {
    let mut written = Vec::new();
    let mut notes = Vec::new();
    for (side, r, order) in [
        ("a", &readers.a, pair.order_a),
        ("b", &readers.b, pair.order_b),
    ] {
        let m = meta(r, order)?;
        let Some(data) = r.read_payload(&m).map_err(|e| e.to_string())? else {
            notes.push(format!(
                "{}: stored at fidelity '{}', no tensor",
                side.to_uppercase(),
                m.fidelity.name()
            ));
            continue;
        };
        let name = export_name(pair, side, m.dtype);
        let bytes = if m.dtype == DType::BF16 {
            let md = vec![("sdtrace.trace".to_string(), r.path().display().to_string())];
            to_safetensors(&m.key, m.dtype, &m.shape, &data, &md)
        } else {
            to_npy(&m.key, m.dtype, &m.shape, &data)
        }
        .map_err(|e| crate::errors::chain_text(&e))?;
        let path = dir.join(&name);
        write_atomic(&path, &bytes).map_err(|e| crate::errors::chain_text(&e))?;
        written.push(path.display().to_string());
    }
    if written.is_empty() {
        return Err(format!(
            "nothing exported: {}; record '{}' at full fidelity",
            notes.join("; "),
            pair.key
        ));
    }
    let mut msg = format!("exported {}", written.join(", "));
    if !notes.is_empty() {
        msg.push_str(&format!(" ({})", notes.join("; ")));
    }
    Ok(msg)
}

/// Export on its own thread.
pub fn spawn_export(readers: Arc<Readers>, pair: PairRecord, dir: PathBuf, tx: Sender<LoaderMsg>) {
    std::thread::spawn(move || {
        let result = export_pair(&readers, &pair, &dir);
        let _ = tx.send(LoaderMsg::Exported { result });
    });
}
