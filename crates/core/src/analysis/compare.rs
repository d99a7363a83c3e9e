//! The comparison pass: align two traces, then measure every aligned pair once.
//!
//! Each pair is measured on the best basis both sides allow: `payload` (both tensors stored:
//! exact metrics in one streaming pass), `sketch` (both CountSketches: relative L2 estimated
//! with its one-sigma error bar, absolute error as the RMS difference), `summary` (bit identity
//! from the bits hash, summary deltas, a lower bound of the relative L2), or `none` (shapes
//! differ: summaries only). Payload streaming holds at most a few MiB per worker: small A
//! payloads (≤ 4 MiB) are read whole and B streamed against them; larger ones are streamed
//! side by side, A's pieces coming from a helper thread over a two-slot channel. Pairs are
//! spread over `threads` workers, largest first. [`compare_with`] can stop short of the payloads
//! ([`Depth::Summaries`]) and reports each measured pair and the bytes done as it goes, so an
//! interactive view shows the summary-based picture at once and refines it live.

use super::align::{HeaderDiff, KeyMap, RecordRef, header_diffs, run_end_diffs};
use super::metrics::{
    ImageMetrics, PairAccumulator, PayloadMetrics, SummaryDelta, decode_all, image_metrics_bytes,
};
use super::noise::{NoiseDiagnosis, diagnose, is_noise_key};
use super::tolerance::TolConfig;
use super::{AnalysisError, jf64};
use crate::dtype::DType;
use crate::trace::{
    Integrity, RecordEntry, RecordMeta, RunEnd, RunHeader, RunStatus, TraceError, TraceReader,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Schema tag of a saved comparison (`report --save`).
pub const COMPARISON_SCHEMA: &str = "sdtrace.comparison/1";

/// A payloads up to this size are read whole; larger ones are streamed piecewise.
const WHOLE_LIMIT: u64 = 4 << 20;

/// Images larger than this (per side) get no PSNR/SSIM (48 MiB: 2048×2048 RGB in f32).
const IMAGE_LIMIT: u64 = 48 << 20;

/// Most payload-comparison workers.
const MAX_WORKERS: usize = 16;

/// Noise payloads larger than this (per side) get no noise diagnosis.
const NOISE_LIMIT: u64 = 16 << 20;

/// What the metrics of a pair were computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Basis {
    Payload,
    Sketch,
    Summary,
    /// Not comparable element by element (shapes differ).
    None,
}

/// One trace as the comparison saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceSide {
    pub path: String,
    pub records: u64,
    /// The file is whole and the run did all its steps ([`TraceSide::shortfall`] is `None`).
    pub complete: bool,
    pub header: RunHeader,
    /// How the run ended, when the trace says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_end: Option<RunEnd>,
    /// Why the file is not whole, when the reader had to recover its records by scanning
    /// (a truncated or damaged file): only the records before the damage were read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damage: Option<String>,
    /// The format writes a run-end frame (1.1 and later), so a whole file without one comes
    /// from a recorder that never said the run finished.
    #[serde(default)]
    pub expects_run_end: bool,
}

impl TraceSide {
    fn of(r: &TraceReader) -> Self {
        let damage = match r.integrity() {
            Integrity::Complete => None,
            Integrity::Recovered {
                reason,
                valid_len,
                file_len,
            } => Some(format!(
                "{reason}; records read from the first {valid_len} of {file_len} bytes"
            )),
        };
        let mut side = TraceSide {
            path: r.path().display().to_string(),
            records: r.entries().len() as u64,
            complete: false,
            header: r.header().clone(),
            run_end: r.run_end().cloned(),
            damage,
            expects_run_end: r.version() >= (1, 1),
        };
        side.complete = side.shortfall().is_none();
        side
    }

    /// Note records that failed their checks while being compared (`label (byte offset N:
    /// what)`); the trace then counts as damaged, so the comparison is incomplete.
    fn add_damaged_records(&mut self, bad: &[String]) {
        if bad.is_empty() {
            return;
        }
        const SHOWN: usize = 5;
        let mut note = format!(
            "{} damaged record{} left out: {}",
            bad.len(),
            if bad.len() == 1 { "" } else { "s" },
            bad[..bad.len().min(SHOWN)].join("; ")
        );
        if bad.len() > SHOWN {
            note += &format!("; … and {} more", bad.len() - SHOWN);
        }
        self.damage = Some(match self.damage.take() {
            Some(d) => format!("{d}; {note}"),
            None => note,
        });
        self.complete = false;
    }

    /// Why this trace is not a whole run, or `None` when it is: a truncated or damaged file,
    /// a run-end that says interrupted or failed, or (format 1.1 and later) no run-end at all.
    pub fn shortfall(&self) -> Option<String> {
        if let Some(d) = &self.damage {
            return Some(format!("a truncated or damaged file ({d})"));
        }
        match &self.run_end {
            Some(e) if e.status != RunStatus::Complete => {
                let article = if e.status == RunStatus::Interrupted {
                    "an"
                } else {
                    "a"
                };
                let mut why = format!("{article} {} run", e.status.name());
                match (e.steps_completed, e.steps_planned) {
                    (Some(d), Some(n)) => why += &format!(", {d} of {n} steps done"),
                    (Some(d), None) => why += &format!(", {d} steps done"),
                    _ => {}
                }
                if let Some(r) = &e.reason {
                    why += &format!(" ({r})");
                }
                Some(why)
            }
            Some(_) => None,
            None if self.expects_run_end => Some(
                "a run without a run-end record (the recorder never said that the run finished)"
                    .into(),
            ),
            None => None,
        }
    }

    /// Which program recorded the trace, for report headers: the host a Python recorder names
    /// in `settings.host` (`webui v1.10.1`, `comfyui`, `diffusers`), `sdtrace record`
    /// for the command line's traces (they carry candle's version), else `unknown recorder`.
    pub fn host(&self) -> String {
        let host = self.header.settings.extra.get("host");
        let field = |k: &str| {
            host.and_then(|h| h.get(k))
                .and_then(|v| v.as_str())
                .filter(|v| !v.is_empty())
        };
        match field("name") {
            Some(name) => match field("version") {
                Some(v) => format!("{name} {v}"),
                None => name.to_string(),
            },
            None if host.is_some() => "a Python host".to_string(),
            None if self.header.candle_version.is_some() => "sdtrace record".to_string(),
            None => "unknown recorder".to_string(),
        }
    }

    /// `""`, or why the trace is not a whole run (for report headers).
    pub fn incomplete_note(&self) -> String {
        self.shortfall()
            .map_or(String::new(), |why| format!(" (incomplete: {why})"))
    }
}

/// A record's noise floor: its error between trace A and the noise-floor trace.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FloorMetrics {
    #[serde(with = "jf64")]
    pub rel_l2: f64,
    #[serde(with = "jf64")]
    pub abs: f64,
    pub basis: Basis,
}

/// One aligned pair and its raw metrics (no judgement).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairRecord {
    pub step: Option<u32>,
    pub eval: u32,
    /// Key after `--map` renaming.
    pub key: String,
    pub order_a: u64,
    pub order_b: u64,
    pub dtype_a: String,
    pub dtype_b: String,
    pub shape_a: Vec<u64>,
    pub shape_b: Vec<u64>,
    pub basis: Basis,
    /// `None` when it cannot be told (shapes differ).
    pub bit_identical: Option<bool>,
    /// ‖a−b‖/‖b‖: exact (payload), estimated (sketch), 0 (identical by hash) or unknown.
    #[serde(with = "jf64::opt")]
    pub rel_l2: Option<f64>,
    /// Relative one-sigma error of a sketch estimate of `rel_l2`.
    #[serde(with = "jf64::opt")]
    pub rel_l2_error: Option<f64>,
    /// max |a−b| (payload) or the RMS difference ‖a−b‖/√n (sketch; a lower bound of max).
    #[serde(with = "jf64::opt")]
    pub abs_error: Option<f64>,
    /// Positional NaN/Inf mismatches (payload), or the difference of the non-finite counts
    /// (a lower bound, without payloads).
    pub nonfinite_mismatch: u64,
    pub payload: Option<PayloadMetrics>,
    pub summary: SummaryDelta,
    pub image: Option<ImageMetrics>,
    pub floor: Option<FloorMetrics>,
    pub note: Option<String>,
    /// For `noise.*` and `sampler.noise` pairs: what kind of difference lies between the two
    /// noise tensors (both payloads kept, or shapes that differ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<NoiseDiagnosis>,
}

impl PairRecord {
    pub fn dtypes(&self) -> (DType, DType) {
        (
            self.dtype_a.parse().unwrap_or(DType::F64),
            self.dtype_b.parse().unwrap_or(DType::F64),
        )
    }

    /// `step 3 eval 0 unet.mid_block` or `noise.initial`.
    pub fn label(&self) -> String {
        super::align::label(self.step, self.eval, &self.key)
    }
}

/// Everything measured between two traces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// [`COMPARISON_SCHEMA`].
    pub schema: String,
    pub a: TraceSide,
    pub b: TraceSide,
    pub noise_floor: Option<TraceSide>,
    pub header_diffs: Vec<HeaderDiff>,
    pub only_a: Vec<RecordRef>,
    pub only_b: Vec<RecordRef>,
    /// Aligned pairs in A's execution order.
    pub records: Vec<PairRecord>,
    /// The tolerance settings `beyond` counts were made with.
    pub compare_tol: TolConfig,
    /// Wall time of the comparison pass, in seconds.
    #[serde(default)]
    pub elapsed_s: f64,
}

impl Comparison {
    /// Load a comparison saved with `report --save`.
    pub fn load(path: &Path) -> Result<Self, AnalysisError> {
        let err = |what: String| AnalysisError::SavedComparison {
            path: path.to_path_buf(),
            what,
        };
        let text = read_regular(path).map_err(|e| err(e.to_string()))?;
        let v: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| err(format!("not JSON: {e}")))?;
        match v.get("schema").and_then(|s| s.as_str()) {
            Some(COMPARISON_SCHEMA) => {}
            Some(other) => {
                return Err(err(format!(
                    "schema '{other}', this sdtrace reads '{COMPARISON_SCHEMA}'"
                )));
            }
            None => return Err(err("no \"schema\" field".into())),
        }
        let c: Comparison = serde_json::from_value(v).map_err(|e| err(e.to_string()))?;
        for r in &c.records {
            for d in [&r.dtype_a, &r.dtype_b] {
                d.parse::<DType>()
                    .map_err(|e| err(format!("record '{}': {e}", r.label())))?;
            }
        }
        Ok(c)
    }

    /// JSON text of this comparison.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }
}

/// Settings of the comparison pass.
#[derive(Clone, Debug, Default)]
pub struct CompareOptions {
    pub map: KeyMap,
    /// Used only for the `beyond` count of payload metrics.
    pub tol: TolConfig,
    /// Worker threads; 0 = one per available core (never more than 16).
    pub threads: usize,
}

/// How much of the work [`compare_with`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// Read no payload: every pair is measured on its sketch or summary basis. Fast (record
    /// frames only), for a first look while the payloads are compared.
    Summaries,
    /// Everything [`compare`] does.
    Full,
}

/// Live progress of a comparison, readable from other threads while it runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Pairs to measure and measured (A against B; a noise floor is not counted).
    pub pairs_total: AtomicUsize,
    pub pairs_done: AtomicUsize,
    /// Payload bytes on disk (both sides) of the pairs to measure, and of those measured.
    pub bytes_total: AtomicU64,
    pub bytes_done: AtomicU64,
}

/// Called with (index of the pair, the measured pair): its index in `Comparison::records`,
/// unless a pair before it was left out as damaged (callers match the pair's identity too).
pub type PairHook<'a> = &'a (dyn Fn(usize, &PairRecord) + Sync);

/// Hooks into a running comparison, for interactive views.
#[derive(Clone, Copy, Default)]
pub struct Hooks<'a> {
    /// Called from worker threads with (index of the pair, the measured pair) as each A–B pair
    /// is done (before a noise floor is attached); see [`PairHook`] for the index.
    pub on_pair: Option<PairHook<'a>>,
    pub progress: Option<&'a Progress>,
    /// Set it to stop early: the comparison then ends with [`AnalysisError::Cancelled`].
    pub cancel: Option<&'a AtomicBool>,
}

/// A whole regular file (a FIFO or device is refused before it is opened).
fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    crate::files::require_regular(path)?;
    std::fs::read(path)
}

/// Open the traces and compare them.
pub fn compare_paths(
    a: &Path,
    b: &Path,
    floor: Option<&Path>,
    opts: &CompareOptions,
) -> Result<Comparison, AnalysisError> {
    let ra = TraceReader::open(a)?;
    let rb = TraceReader::open(b)?;
    let rf = floor.map(TraceReader::open).transpose()?;
    compare(&ra, &rb, rf.as_ref(), opts)
}

type Id = (Option<u32>, u32, String);

fn record_ref(e: &RecordEntry, key: String) -> RecordRef {
    RecordRef {
        step: e.step,
        eval: e.eval,
        key,
        order: e.order,
        dtype: e.dtype.name().to_string(),
        shape: e.shape.clone(),
    }
}

/// Pair A's entries with B's: (pairs as (index in A, index in B), only A, only B).
fn align(
    a: &TraceReader,
    b: &TraceReader,
    map: &KeyMap,
) -> (Vec<(usize, usize)>, Vec<RecordRef>, Vec<RecordRef>) {
    let mut in_b: HashMap<Id, usize> = HashMap::new();
    for (i, e) in b.entries().iter().enumerate() {
        in_b.entry((e.step, e.eval, map.apply(&e.key))).or_insert(i);
    }
    let mut used = vec![false; b.entries().len()];
    let mut pairs = Vec::new();
    let mut only_a = Vec::new();
    for (i, e) in a.entries().iter().enumerate() {
        let key = map.apply(&e.key);
        match in_b.get(&(e.step, e.eval, key.clone())) {
            Some(&j) if !used[j] => {
                used[j] = true;
                pairs.push((i, j));
            }
            _ => only_a.push(record_ref(e, key)),
        }
    }
    let only_b = b
        .entries()
        .iter()
        .zip(&used)
        .filter(|(_, u)| !**u)
        .map(|(e, _)| record_ref(e, map.apply(&e.key)))
        .collect();
    (pairs, only_a, only_b)
}

/// Compare two open traces; `floor` is an optional noise-floor trace (a repeat run of A).
pub fn compare(
    a: &TraceReader,
    b: &TraceReader,
    floor: Option<&TraceReader>,
    opts: &CompareOptions,
) -> Result<Comparison, AnalysisError> {
    compare_with(a, b, floor, opts, Depth::Full, Hooks::default())
}

/// [`compare`] to the given depth, reporting progress through `hooks`. At [`Depth::Full`] with
/// no cancellation the result is exactly [`compare`]'s.
pub fn compare_with(
    a: &TraceReader,
    b: &TraceReader,
    floor: Option<&TraceReader>,
    opts: &CompareOptions,
    depth: Depth,
    hooks: Hooks<'_>,
) -> Result<Comparison, AnalysisError> {
    let started = std::time::Instant::now();
    let payloads = depth == Depth::Full;
    let (pairs, only_a, only_b) = align(a, b, &opts.map);
    if let Some(p) = hooks.progress {
        let bytes: u64 = pairs
            .iter()
            .map(|&(i, j)| (&a.entries()[i], &b.entries()[j]))
            .filter(|(ea, eb)| payloads && ea.payload_len > 0 && eb.payload_len > 0)
            .map(|(ea, eb)| ea.payload_len + eb.payload_len)
            .sum();
        p.pairs_total.store(pairs.len(), Ordering::Relaxed);
        p.bytes_total.store(bytes, Ordering::Relaxed);
    }
    let (mut records, damaged) = measure_all(a, b, &pairs, opts, payloads, hooks)?;
    let (mut only_a, mut only_b) = (only_a, only_b);
    let (mut side_a, mut side_b) = (TraceSide::of(a), TraceSide::of(b));
    let (mut bad_a, mut bad_b) = (Vec::new(), Vec::new());
    for d in &damaged {
        let (ia, ib) = pairs[d.pair];
        let (ea, eb) = (&a.entries()[ia], &b.entries()[ib]);
        // A damaged record is a missing one: its partner is then on one side only.
        match (d.in_a, d.in_b) {
            (true, false) => only_b.push(record_ref(eb, opts.map.apply(&eb.key))),
            (false, true) => only_a.push(record_ref(ea, opts.map.apply(&ea.key))),
            _ => {}
        }
        if d.in_a || !d.in_b {
            bad_a.push(format!("{} ({})", ea.id(), d.what));
        }
        if d.in_b {
            bad_b.push(format!("{} ({})", eb.id(), d.what));
        }
    }
    only_a.sort_by_key(|r| r.order);
    only_b.sort_by_key(|r| r.order);
    side_a.add_damaged_records(&bad_a);
    side_b.add_damaged_records(&bad_b);
    if let Some(f) = floor {
        let (fpairs, _, _) = align(a, f, &opts.map);
        let floor_hooks = Hooks {
            cancel: hooks.cancel,
            ..Hooks::default()
        };
        // A damaged floor record only leaves its record without a floor.
        let (floor_recs, _) = measure_all(a, f, &fpairs, opts, payloads, floor_hooks)?;
        let by_id: HashMap<Id, FloorMetrics> = floor_recs
            .into_iter()
            .filter_map(|r| {
                let m = FloorMetrics {
                    rel_l2: r.rel_l2?,
                    abs: r.abs_error?,
                    basis: r.basis,
                };
                Some(((r.step, r.eval, r.key), m))
            })
            .collect();
        for r in &mut records {
            r.floor = by_id.get(&(r.step, r.eval, r.key.clone())).copied();
        }
    }
    Ok(Comparison {
        schema: COMPARISON_SCHEMA.to_string(),
        a: side_a,
        b: side_b,
        noise_floor: floor.map(TraceSide::of),
        header_diffs: {
            let mut d = header_diffs(a.header(), b.header());
            d.extend(run_end_diffs(a.run_end(), b.run_end()));
            d
        },
        only_a,
        only_b,
        records,
        compare_tol: opts.tol.clone(),
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// A pair left out because a record of it failed its checks: which sides, and why.
struct DamagedPair {
    pair: usize,
    in_a: bool,
    in_b: bool,
    what: String,
}

/// Measure every pair in parallel (without payloads unless `payloads`); results in A's order.
/// A pair whose record frame or payload is damaged on either side is not measured: it comes
/// back as a [`DamagedPair`] (the comparison then treats that side's record as missing).
fn measure_all(
    a: &TraceReader,
    b: &TraceReader,
    pairs: &[(usize, usize)],
    opts: &CompareOptions,
    payloads: bool,
    hooks: Hooks<'_>,
) -> Result<(Vec<PairRecord>, Vec<DamagedPair>), AnalysisError> {
    // At most MAX_WORKERS, whatever was asked: each holds up to WHOLE_LIMIT plus stream
    // buffers, and one may hold two images (IMAGE_LIMIT each), which keeps the whole
    // comparison under 256 MiB.
    let threads = match opts.threads {
        // Without payloads the work is small reads: a few more threads hide read latency.
        0 if !payloads => 8,
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .min(MAX_WORKERS)
    .min(pairs.len().max(1));
    let mut todo: Vec<usize> = (0..pairs.len()).collect();
    if payloads {
        // Largest first, so one big tensor does not start last.
        todo.sort_by_key(|&i| std::cmp::Reverse(a.entries()[pairs[i].0].payload_len));
    }
    // Without payloads: file order, so a cold read of the record frames runs forward.
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let results: Mutex<Vec<Option<PairRecord>>> = Mutex::new(vec![None; pairs.len()]);
    let damaged: Mutex<Vec<DamagedPair>> = Mutex::new(Vec::new());
    let first_error: Mutex<Option<AnalysisError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    if hooks.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                        stop.store(true, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(AnalysisError::Cancelled);
                        break;
                    }
                    let t = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = todo.get(t) else { break };
                    let (ia, ib) = pairs[i];
                    let (ea, eb) = (&a.entries()[ia], &b.entries()[ib]);
                    match measure(a, ea, b, eb, opts, payloads) {
                        Ok(r) => {
                            if let Some(f) = hooks.on_pair {
                                f(i, &r);
                            }
                            if let Some(p) = hooks.progress {
                                if r.basis == Basis::Payload {
                                    p.bytes_done.fetch_add(
                                        ea.payload_len + eb.payload_len,
                                        Ordering::Relaxed,
                                    );
                                }
                                p.pairs_done.fetch_add(1, Ordering::Relaxed);
                            }
                            results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                        }
                        Err(AnalysisError::Trace(TraceError::Corrupt { path, offset, what })) => {
                            let p = DamagedPair {
                                pair: i,
                                in_a: path == a.path(),
                                in_b: path == b.path(),
                                what: format!("byte offset {offset}: {what}"),
                            };
                            damaged.lock().unwrap_or_else(|e| e.into_inner()).push(p);
                        }
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            first_error
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut damaged = damaged.into_inner().unwrap_or_else(|e| e.into_inner());
    damaged.sort_by_key(|d| d.pair);
    let mut bad = damaged.iter().map(|d| d.pair).peekable();
    let mut records = Vec::with_capacity(results.len());
    for (i, r) in results.into_iter().enumerate() {
        if bad.next_if_eq(&i).is_some() {
            continue;
        }
        records.push(r.ok_or_else(|| AnalysisError::Worker {
            what: "a comparison worker stopped without a result".into(),
        })?);
    }
    Ok((records, damaged))
}

/// Measure one pair (from its payloads only when `payloads`).
fn measure(
    ra: &TraceReader,
    ea: &RecordEntry,
    rb: &TraceReader,
    eb: &RecordEntry,
    opts: &CompareOptions,
    payloads: bool,
) -> Result<PairRecord, AnalysisError> {
    let ma = ra.read_meta(ea)?;
    let mb = rb.read_meta(eb)?;
    let key = opts.map.apply(&ma.key);
    let summary = SummaryDelta::new(&ma.summary, &mb.summary);
    let (sa, sb) = (&ma.summary, &mb.summary);
    let count_mismatch =
        sa.nan.abs_diff(sb.nan) + sa.pos_inf.abs_diff(sb.pos_inf) + sa.neg_inf.abs_diff(sb.neg_inf);
    let same_dtype = ma.dtype == mb.dtype;
    let mut rec = PairRecord {
        step: ma.step,
        eval: ma.eval,
        key: key.clone(),
        order_a: ma.order,
        order_b: mb.order,
        dtype_a: ma.dtype.name().into(),
        dtype_b: mb.dtype.name().into(),
        shape_a: ma.shape.clone(),
        shape_b: mb.shape.clone(),
        basis: Basis::Summary,
        bit_identical: Some(same_dtype && summary.hash_equal),
        rel_l2: None,
        rel_l2_error: None,
        abs_error: None,
        nonfinite_mismatch: count_mismatch,
        payload: None,
        summary,
        image: None,
        floor: None,
        note: None,
        noise: None,
    };
    if ma.shape != mb.shape {
        rec.basis = Basis::None;
        rec.bit_identical = None;
        rec.note = Some(format!(
            "shapes differ (A {:?}, B {:?}): only summaries compared",
            ma.shape, mb.shape
        ));
        if is_noise_key(&key) {
            rec.noise = Some(diagnose::<f64>(&ma.shape, &[], &mb.shape, &[]));
        }
        return Ok(rec);
    }
    if rec.bit_identical == Some(true) {
        rec.rel_l2 = Some(0.0);
        rec.abs_error = Some(0.0);
    }
    let n = ma.summary.count.max(1) as f64;
    if payloads && ma.payload.is_some() && mb.payload.is_some() {
        let tol = opts.tol.resolve(&key, ma.dtype, mb.dtype, None);
        let mut acc = PairAccumulator::new(ma.dtype, mb.dtype, tol);
        stream_pair(ra, &ma, rb, &mb, &mut acc)?;
        let m = acc.finish();
        rec.basis = Basis::Payload;
        rec.bit_identical = Some(m.bit_identical);
        rec.rel_l2 = Some(m.rel_l2);
        rec.abs_error = Some(m.max_abs);
        rec.nonfinite_mismatch = m.nonfinite_mismatch;
        rec.payload = Some(m);
        if is_noise_key(&key) {
            let size = ma
                .payload
                .map_or(0, |p| p.raw_len)
                .max(mb.payload.map_or(0, |p| p.raw_len));
            if size > NOISE_LIMIT {
                rec.note = Some(format!(
                    "noise of {size} bytes is over {NOISE_LIMIT} bytes: no noise diagnosis"
                ));
            } else if let (Some(pa), Some(pb)) = (ra.read_payload(&ma)?, rb.read_payload(&mb)?) {
                rec.noise = Some(diagnose(
                    &ma.shape,
                    &decode_all(ma.dtype, &pa),
                    &mb.shape,
                    &decode_all(mb.dtype, &pb),
                ));
            }
        }
        if key == "image" {
            let size = ma.payload.map_or(0, |p| p.raw_len);
            if size <= IMAGE_LIMIT {
                let (Some(pa), Some(pb)) = (ra.read_payload(&ma)?, rb.read_payload(&mb)?) else {
                    return Ok(rec);
                };
                rec.image = image_metrics_bytes(ma.dtype, mb.dtype, &mb.shape, &pa, &pb);
            } else {
                rec.note = Some(format!(
                    "image of {size} bytes is over {IMAGE_LIMIT} bytes: no PSNR/SSIM"
                ));
            }
        }
    } else if let (Some(ka), Some(kb)) = (&ma.sketch, &mb.sketch) {
        rec.basis = Basis::Sketch;
        if rec.bit_identical != Some(true) {
            match ka.diff_norm(kb) {
                Some(est) => {
                    let l2b = mb.summary.l2;
                    rec.rel_l2 = Some(if est.value == 0.0 {
                        0.0
                    } else if l2b == 0.0 {
                        f64::INFINITY
                    } else {
                        est.value / l2b
                    });
                    rec.rel_l2_error = Some(est.rel_error);
                    rec.abs_error = Some(est.value / n.sqrt());
                }
                None => {
                    rec.basis = Basis::Summary;
                    rec.note = Some("sketches have different seeds or sizes".into());
                }
            }
        }
    }
    Ok(rec)
}

/// Stream both payloads through `acc` in matching pieces.
fn stream_pair(
    ra: &TraceReader,
    ma: &RecordMeta,
    rb: &TraceReader,
    mb: &RecordMeta,
    acc: &mut PairAccumulator,
) -> Result<(), AnalysisError> {
    let (sa, sb) = (ma.dtype.size(), mb.dtype.size());
    let short = |what: &str| TraceError::Corrupt {
        path: ra.path().to_path_buf(),
        offset: ma.payload.map_or(0, |p| p.frame_offset),
        what: format!("payload of '{}' {what}", ma.key),
    };
    let raw_a = ma.payload.map_or(0, |p| p.raw_len);
    if raw_a <= WHOLE_LIMIT {
        let a = ra.read_payload(ma)?.unwrap_or_default();
        let mut pos = 0usize;
        rb.payload_chunks(mb, |piece| {
            let need = piece.len() / sb * sa;
            let Some(part) = a.get(pos..pos + need) else {
                return Err(short("is shorter than its pair's"));
            };
            acc.update(part, piece);
            pos += need;
            Ok(())
        })?;
        return Ok(());
    }
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
        let producer = s.spawn(move || {
            ra.payload_chunks(ma, |p| {
                tx.send(p.to_vec())
                    .map_err(|_| short("was not consumed (the other side stopped)"))
            })
        });
        let mut pending: Vec<u8> = Vec::new();
        let mut off = 0usize;
        let consumed = rb.payload_chunks(mb, |piece| {
            let need = piece.len() / sb * sa;
            while pending.len() - off < need {
                match rx.recv() {
                    Ok(p) => {
                        pending.drain(..off);
                        off = 0;
                        pending.extend_from_slice(&p);
                    }
                    Err(_) => return Err(short("ended early")),
                }
            }
            acc.update(&pending[off..off + need], piece);
            off += need;
            Ok(())
        });
        drop(rx);
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err(short("reader thread panicked")));
        match (consumed, produced) {
            (Ok(_), Ok(_)) => Ok(()),
            // A's own error explains B's "ended early".
            (_, Err(e)) if !matches!(e, TraceError::Corrupt { ref what, .. } if what.contains("was not consumed")) => {
                Err(e.into())
            }
            (Err(e), _) => Err(e.into()),
            (Ok(_), Err(e)) => Err(e.into()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(header: &str) -> TraceSide {
        TraceSide {
            path: "t.sdt".into(),
            records: 0,
            complete: true,
            header: RunHeader::from_json(header.as_bytes()).unwrap(),
            run_end: None,
            damage: None,
            expects_run_end: false,
        }
    }

    #[test]
    fn the_recorder_of_a_trace_is_named() {
        let webui =
            r#"{"settings": {"host": {"name": "webui", "version": "v1.10.1"}}, "device": {}}"#;
        assert_eq!(side(webui).host(), "webui v1.10.1");
        let comfy = r#"{"settings": {"host": {"name": "comfyui", "version": null}}, "device": {}}"#;
        assert_eq!(side(comfy).host(), "comfyui");
        let cli = r#"{"candle_version": "0.11", "settings": {}, "device": {}}"#;
        assert_eq!(side(cli).host(), "sdtrace record");
        assert_eq!(
            side(r#"{"settings": {}, "device": {}}"#).host(),
            "unknown recorder"
        );
    }
}
