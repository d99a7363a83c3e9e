//! The probe: the only seam between model code and traces.
//!
//! Model code calls [`Probe::plan`] with a key (a diffusers module path such as
//! `unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1`, or a pipeline point such as
//! `noise.initial`). Only when the plan asks for something does it hand over a [`TensorView`]
//! with [`Probe::tensor`], so a disabled probe or an `off` rule costs a branch, not a device→host
//! copy. The [`Policy`] (ordered rules, the last match wins) decides the fidelity and codec per
//! key and step; [`Intervention`]s may return a replacement tensor (perturbation, replay). The
//! fine points (attention `…to_q`/`to_k`/`to_v`/`probs`) are off unless a rule names them
//! ([`names_fine_points`]); broad rules do not reach them.
//!
//! Invariants: the probe never changes a tensor unless an intervention returns a replacement;
//! recording is a pure observation, so outputs are bit-identical whatever the policy.

use crate::dtype::{DType, byte_len};
use crate::glob;
use crate::stats::{SummaryBuilder, sketch::DEFAULT_K, sketch::SketchBuilder};
use crate::trace::{
    Codec, Fidelity, NonFinite, RecordId, RecordInput, RunEnd, TraceError, TraceWriter,
    WrittenTrace,
};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard};

/// Errors of the probe and its policy.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "capture rule '{rule}': {what}. Rules look like GLOB[@STEPS]=LEVEL[:CODEC], e.g. 'unet.*@0-4=full:zstd' (LEVEL: off, stats, sketch, full; CODEC: raw, zstd; STEPS: N, N-M, N-, -M)"
    )]
    BadRule { rule: String, what: String },
    #[error(
        "unknown capture preset '{0}' (expected one of: light (= default), full, stats, sketch, off, or rules GLOB[@STEPS]=LEVEL)"
    )]
    BadPreset(String),
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error("intervention at {id}: {what}")]
    Intervention { id: String, what: String },
}

/// A tensor as the probe sees it: dtype, shape and contiguous little-endian bytes.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    dtype: DType,
    shape: &'a [usize],
    data: &'a [u8],
}

impl<'a> TensorView<'a> {
    /// A view, checked: `data` must hold exactly the elements of `shape`.
    pub fn new(dtype: DType, shape: &'a [usize], data: &'a [u8]) -> Result<Self, String> {
        let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        match byte_len(dtype, &dims) {
            Some(n) if n == data.len() as u64 => Ok(TensorView { dtype, shape, data }),
            n => Err(format!(
                "{} bytes given for shape {shape:?} of {dtype}, which needs {n:?}",
                data.len()
            )),
        }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn shape(&self) -> &'a [usize] {
        self.shape
    }
    pub fn data(&self) -> &'a [u8] {
        self.data
    }
}

/// An owned tensor, as returned by interventions.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl OwnedTensor {
    pub fn view(&self) -> Result<TensorView<'_>, String> {
        TensorView::new(self.dtype, &self.shape, &self.data)
    }
}

/// Something that may replace a probed tensor (fault injection, replaying a recorded input).
pub trait Intervention: Send {
    /// Cheap check: does this intervention act at `id`?
    fn wants(&self, id: &RecordId) -> bool;
    /// The replacement for the tensor at `id`, or `None` to leave it as is.
    fn apply(
        &mut self,
        id: &RecordId,
        tensor: TensorView<'_>,
    ) -> Result<Option<OwnedTensor>, String>;
}

/// Which sampler steps a rule covers (inclusive bounds). A bounded range never matches
/// records outside the sampling loop (no step).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StepRange {
    pub first: Option<u32>,
    pub last: Option<u32>,
}

impl StepRange {
    pub fn all() -> Self {
        StepRange::default()
    }

    pub fn contains(&self, step: Option<u32>) -> bool {
        match (step, self.first, self.last) {
            (_, None, None) => true,
            (None, _, _) => false,
            (Some(s), f, l) => f.is_none_or(|f| s >= f) && l.is_none_or(|l| s <= l),
        }
    }
}

/// What a rule asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Off,
    Capture(Fidelity, Codec),
}

/// One capture rule: keys matching `pattern` at steps in `steps` get `action`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub pattern: String,
    pub steps: StepRange,
    pub action: Action,
}

impl Rule {
    pub fn new(pattern: &str, action: Action) -> Self {
        Rule {
            pattern: pattern.to_string(),
            steps: StepRange::all(),
            action,
        }
    }
}

impl std::str::FromStr for Rule {
    type Err = ProbeError;
    /// `GLOB[@STEPS]=LEVEL[:CODEC]`.
    fn from_str(text: &str) -> Result<Self, ProbeError> {
        let bad = |what: &str| ProbeError::BadRule {
            rule: text.to_string(),
            what: what.to_string(),
        };
        let (lhs, rhs) = text.rsplit_once('=').ok_or_else(|| bad("missing '='"))?;
        let (pattern, steps) = match lhs.split_once('@') {
            Some((p, s)) => (p, parse_steps(s).map_err(|w| bad(&w))?),
            None => (lhs, StepRange::all()),
        };
        if pattern.is_empty() {
            return Err(bad("empty key pattern"));
        }
        let (level, codec) = match rhs.split_once(':') {
            Some((l, c)) => (l, Some(c.parse::<Codec>().map_err(|w| bad(&w))?)),
            None => (rhs, None),
        };
        let action = match level {
            "off" if codec.is_none() => Action::Off,
            "off" => return Err(bad("'off' takes no codec")),
            l => {
                let f: Fidelity = l.parse().map_err(|w: String| bad(&w))?;
                if codec.is_some() && f != Fidelity::Full {
                    return Err(bad("a codec only applies to 'full'"));
                }
                Action::Capture(f, codec.unwrap_or_default())
            }
        };
        Ok(Rule {
            pattern: pattern.to_string(),
            steps,
            action,
        })
    }
}

fn parse_steps(s: &str) -> Result<StepRange, String> {
    let num = |t: &str| {
        t.parse::<u32>()
            .map_err(|_| format!("'{t}' is not a step number"))
    };
    let opt = |t: &str| {
        if t.is_empty() {
            Ok(None)
        } else {
            num(t).map(Some)
        }
    };
    let r = match s.split_once('-') {
        Some((a, b)) => StepRange {
            first: opt(a)?,
            last: opt(b)?,
        },
        None => {
            let n = num(s)?;
            StepRange {
                first: Some(n),
                last: Some(n),
            }
        }
    };
    if let (Some(a), Some(b)) = (r.first, r.last)
        && a > b
    {
        return Err(format!("step range {a}-{b} is empty"));
    }
    Ok(r)
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.pattern)?;
        let r = self.steps;
        if r.first.is_some() || r.last.is_some() {
            let n = |v: Option<u32>| v.map(|x| x.to_string()).unwrap_or_default();
            if r.first == r.last {
                write!(f, "@{}", n(r.first))?;
            } else {
                write!(f, "@{}-{}", n(r.first), n(r.last))?;
            }
        }
        match self.action {
            Action::Off => write!(f, "=off"),
            Action::Capture(Fidelity::Full, Codec::ShuffleZstd) => write!(f, "=full:zstd"),
            Action::Capture(fid, _) => write!(f, "={fid}"),
        }
    }
}

/// A record computed from a tensor, waiting for its payload (when `full`) and the writer.
type PendingRecord = (RecordInput, Codec);

/// The CFG row order every trace stores (header field `cfg_rows_stored`), whatever order the
/// host batched them in (`cfg_rows`); see [`Probe::set_cond_first`].
pub const CFG_ROWS_STORED: &str = "uncond,cond";

/// The two halves of `t`'s first dimension, to be read in swapped order ([cond; uncond] as
/// [uncond; cond]); `None` when that dimension is odd (not a CFG batch).
fn cfg_halves<'a>(t: &TensorView<'a>) -> Option<[&'a [u8]; 2]> {
    let rows = *t.shape().first()?;
    if rows < 2 || rows % 2 != 0 {
        return None;
    }
    let (first, second) = t.data.split_at(t.data.len() / 2);
    Some([second, first])
}

/// Key patterns of the fine probe points, off in every preset.
pub const FINE_POINTS: [&str; 4] = ["*.to_q", "*.to_k", "*.to_v", "*.probs"];

/// The last key component of each fine probe point.
const FINE_NAMES: [&str; 4] = ["to_q", "to_k", "to_v", "probs"];

/// Is `key` a fine probe point (attention q/k/v or probabilities: its last component is
/// `to_q`, `to_k`, `to_v` or `probs`)?
pub fn is_fine_point(key: &str) -> bool {
    FINE_POINTS.iter().any(|p| glob::matches(p, key))
}

/// Does a rule pattern name fine points? It does when it ends in a fine point's name, `?`
/// standing for one character: `*.to_q`, `unet.mid_block.*.attn1.probs`, `*.to_?`. Only such
/// rules reach the fine points: broad patterns (`*`, `unet.*`, `*attn1*`, `*.to_*`) neither
/// turn them on nor off.
pub fn names_fine_points(pattern: &str) -> bool {
    FINE_NAMES.iter().any(|name| {
        pattern
            .len()
            .checked_sub(name.len())
            .and_then(|at| pattern.get(at..))
            .is_some_and(|tail| !tail.contains('*') && glob::matches(tail, name))
    })
}

/// Ordered capture rules; the last rule that matches a record decides. Records no rule
/// matches get `stats`. Fine points ([`is_fine_point`]) are the exception: only rules that
/// name them ([`names_fine_points`]) apply to them, and with none they are off, so a broad rule
/// such as `unet.*=full` or `*=sketch` never records attention q/k/v or probabilities.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub rules: Vec<Rule>,
    /// CountSketch buckets for `sketch` and `full` records.
    pub sketch_k: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::preset("default").unwrap_or(Policy {
            rules: Vec::new(),
            sketch_k: DEFAULT_K,
        })
    }
}

impl Policy {
    /// Named presets. `default`: full payloads for the noise, text conditioning, sampler states
    /// and the image, sketches for every model probe. `stats`/`sketch`/`full`: that level for
    /// everything. `off`: nothing. Every preset leaves the [`FINE_POINTS`] off.
    pub fn preset(name: &str) -> Result<Self, ProbeError> {
        let all = |a| vec![Rule::new("*", a)];
        let full = Action::Capture(Fidelity::Full, Codec::Raw);
        let rules = match name {
            "default" => vec![
                Rule::new("*", Action::Capture(Fidelity::Sketch, Codec::Raw)),
                Rule::new("noise.*", full),
                Rule::new("text.*", full),
                Rule::new("sampler.*", full),
                Rule::new("image", full),
            ],
            "stats" => all(Action::Capture(Fidelity::Stats, Codec::Raw)),
            "sketch" => all(Action::Capture(Fidelity::Sketch, Codec::Raw)),
            "full" => all(full),
            "off" => all(Action::Off),
            other => return Err(ProbeError::BadPreset(other.to_string())),
        };
        let mut rules = rules;
        // Fine points (attention q/k/v and probabilities) are recorded only when a later rule
        // names them: they are large and, for probabilities, quadratic in the image size. (The
        // rules below only make that visible in the header: `action` applies no broad rule
        // to a fine point.)
        rules.extend(FINE_POINTS.iter().map(|p| Rule::new(p, Action::Off)));
        Ok(Policy {
            rules,
            sketch_k: DEFAULT_K,
        })
    }

    /// Parse a capture setting: a preset (`light` = `default`, `full`, `stats`, `sketch`,
    /// `off`), rules (`GLOB[@STEPS]=LEVEL[:CODEC]`, separated by commas or spaces) added to
    /// `light`, or a preset followed by rules (`sketch,sampler.*=full`).
    pub fn from_spec(text: &str) -> Result<Self, ProbeError> {
        let mut parts = text
            .split([',', ' ', '\n'])
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .peekable();
        let base = match parts.peek() {
            Some(&p) if !p.contains('=') => {
                parts.next();
                if p == "light" { "default" } else { p }
            }
            _ => "default",
        };
        let mut policy = Policy::preset(base)?;
        for p in parts {
            policy.push(p.parse()?);
        }
        Ok(policy)
    }

    /// Append a rule (it overrides earlier ones where both match).
    pub fn push(&mut self, rule: Rule) {
        self.rules.push(rule);
    }

    /// The action for `key` at `step`: the last matching rule's, where a fine point only
    /// heeds rules that name fine points (off without one).
    pub fn action(&self, key: &str, step: Option<u32>) -> Action {
        let fine = is_fine_point(key);
        self.rules
            .iter()
            .rev()
            .find(|r| {
                (!fine || names_fine_points(&r.pattern))
                    && r.steps.contains(step)
                    && glob::matches(&r.pattern, key)
            })
            .map_or(
                if fine {
                    Action::Off
                } else {
                    Action::Capture(Fidelity::Stats, Codec::Raw)
                },
                |r| r.action,
            )
    }

    /// The rules as one line, for the trace header.
    pub fn describe(&self) -> String {
        let rules: Vec<String> = self.rules.iter().map(Rule::to_string).collect();
        format!("{} (sketch k={})", rules.join(" "), self.sketch_k)
    }
}

/// What the probe will do with a key at the current step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub capture: Option<(Fidelity, Codec)>,
    pub intervene: bool,
}

impl Plan {
    /// Nothing to do: the caller need not materialise the tensor.
    pub fn is_noop(&self) -> bool {
        self.capture.is_none() && !self.intervene
    }
}

struct State {
    policy: Policy,
    writer: Option<TraceWriter>,
    interventions: Vec<Box<dyn Intervention>>,
    step: Option<u32>,
    eval: u32,
    /// Policy decisions for the current step, by key.
    cache: HashMap<String, Action>,
    /// Captured records that held NaN/Inf: the first [`MAX_NONFINITE_KEPT`], and how many.
    nonfinite: Vec<NonFinite>,
    nonfinite_total: u64,
    /// The model call in progress batches [cond; uncond]: records store its rows swapped.
    cond_first: bool,
}

/// Non-finite records a probe keeps the details of (the count goes on).
pub const MAX_NONFINITE_KEPT: usize = 1000;

/// The recording seam. `Probe::disabled()` costs one branch per call.
pub struct Probe {
    state: Option<Mutex<State>>,
}

impl Probe {
    /// A probe that records nothing and replaces nothing.
    pub fn disabled() -> Self {
        Probe { state: None }
    }

    /// A probe recording into `writer` under `policy`.
    pub fn new(writer: TraceWriter, policy: Policy) -> Self {
        Self::build(Some(writer), policy)
    }

    /// A probe with interventions only (no trace), for the tests of interventions.
    #[cfg(test)]
    pub fn interventions_only() -> Self {
        Self::build(None, Policy::preset("off").unwrap_or_default())
    }

    fn build(writer: Option<TraceWriter>, policy: Policy) -> Self {
        Probe {
            state: Some(Mutex::new(State {
                policy,
                writer,
                interventions: Vec::new(),
                step: None,
                eval: 0,
                cache: HashMap::new(),
                nonfinite: Vec::new(),
                nonfinite_total: 0,
                cond_first: false,
            })),
        }
    }

    /// Add an intervention (consulted in the order added; the first replacement wins).
    pub fn add_intervention(&mut self, i: Box<dyn Intervention>) {
        if let Some(s) = &self.state {
            lock(s).interventions.push(i);
        }
    }

    /// Captured records that held NaN/Inf so far: the first [`MAX_NONFINITE_KEPT`] in
    /// execution order, and the total count.
    pub fn nonfinite(&self) -> (Vec<NonFinite>, u64) {
        match &self.state {
            None => (Vec::new(), 0),
            Some(s) => {
                let s = lock(s);
                (s.nonfinite.clone(), s.nonfinite_total)
            }
        }
    }

    /// How many captured records held NaN/Inf so far (cheap; for polling during a run).
    pub fn nonfinite_count(&self) -> u64 {
        self.state.as_ref().map_or(0, |s| lock(s).nonfinite_total)
    }

    /// Enter sampler step `step` (or leave the loop with `None`) at model evaluation `eval`.
    /// Entering a new step flushes the trace so a crash loses at most the current step.
    pub fn set_step(&self, step: Option<u32>, eval: u32) -> Result<(), ProbeError> {
        let Some(s) = &self.state else { return Ok(()) };
        let mut s = lock(s);
        if s.step != step {
            s.cache.clear();
            if let Some(w) = s.writer.as_mut() {
                w.flush()?;
            }
        }
        s.step = step;
        s.eval = eval;
        Ok(())
    }

    /// Say that the model call about to run batches its CFG rows as [cond; uncond] (the
    /// webui's order), or no longer does. While set, every record whose first dimension is even
    /// is stored with its two halves swapped, so traces always hold [uncond; cond] (the header's
    /// `cfg_rows_stored`) and two hosts' records compare the right halves. Only the stored copy
    /// changes; the tensor the model goes on with is untouched.
    pub fn set_cond_first(&self, cond_first: bool) {
        if let Some(s) = &self.state {
            lock(s).cond_first = cond_first;
        }
    }

    /// What the probe would do with `key` now. Cheap; call it before copying a tensor to host.
    #[inline]
    pub fn plan(&self, key: &str) -> Plan {
        match &self.state {
            None => Plan {
                capture: None,
                intervene: false,
            },
            Some(s) => lock(s).plan(key),
        }
    }

    /// Observe `tensor` under `key`: record it as the policy says and return a replacement if an
    /// intervention makes one. A `full` record copies the bytes; see [`Probe::tensor_owned`].
    pub fn tensor(
        &self,
        key: &str,
        tensor: TensorView<'_>,
    ) -> Result<Option<OwnedTensor>, ProbeError> {
        let (replacement, pending) = self.observe(key, tensor)?;
        if let Some((rec, codec)) = pending {
            let data = || match &replacement {
                Some(r) => (r.data.clone(), codec),
                None => (tensor.data.to_vec(), codec),
            };
            self.commit(rec, data)?;
        }
        Ok(replacement)
    }

    /// Like [`Probe::tensor`] for a tensor the caller owns (e.g. just copied off a GPU): a
    /// `full` record takes the bytes instead of copying them.
    pub fn tensor_owned(
        &self,
        key: &str,
        tensor: OwnedTensor,
    ) -> Result<Option<OwnedTensor>, ProbeError> {
        let view = tensor.view().map_err(|what| TraceError::InvalidTensor {
            key: key.to_string(),
            what,
        })?;
        let (replacement, pending) = self.observe(key, view)?;
        if let Some((rec, codec)) = pending {
            let data = || match &replacement {
                Some(r) => (r.data.clone(), codec),
                None => (tensor.data, codec),
            };
            self.commit(rec, data)?;
        }
        Ok(replacement)
    }

    /// Interventions (they see the original tensor), then the record without its payload. The
    /// record describes the tensor used onwards: the replacement when an intervention made one.
    fn observe(
        &self,
        key: &str,
        tensor: TensorView<'_>,
    ) -> Result<(Option<OwnedTensor>, Option<PendingRecord>), ProbeError> {
        let Some(s) = &self.state else {
            return Ok((None, None));
        };
        let mut s = lock(s);
        let plan = s.plan(key);
        let mut replacement = None;
        if plan.intervene {
            let id = RecordId {
                step: s.step,
                eval: s.eval,
                key: key.to_string(),
            };
            for i in s.interventions.iter_mut().filter(|i| i.wants(&id)) {
                replacement = i
                    .apply(&id, tensor)
                    .map_err(|what| ProbeError::Intervention {
                        id: id.to_string(),
                        what,
                    })?;
                if replacement.is_some() {
                    break;
                }
            }
        }
        let recorded = match &replacement {
            Some(r) => r.view().map_err(|what| TraceError::InvalidTensor {
                key: key.to_string(),
                what,
            })?,
            None => tensor,
        };
        // The stored bytes: the tensor's, or its CFG halves swapped (read in place, copied
        // together only when the record keeps them).
        let halves = if s.cond_first {
            cfg_halves(&recorded)
        } else {
            None
        };
        let whole = [recorded.data];
        let pending = match plan.capture {
            None => None,
            Some((fidelity, codec)) => {
                let parts = halves.as_ref().map_or(&whole[..], |h| &h[..]);
                let mut rec = summarize_tensor(
                    key,
                    s.step,
                    s.eval,
                    recorded,
                    parts,
                    fidelity,
                    s.policy.sketch_k,
                );
                if fidelity == Fidelity::Full && halves.is_some() {
                    rec.payload = Some((parts.concat(), codec));
                }
                Some((rec, codec))
            }
        };
        if let Some((rec, _)) = &pending {
            let sum = &rec.summary;
            if sum.nan + sum.pos_inf + sum.neg_inf > 0 {
                let st = &mut *s;
                st.nonfinite_total += 1;
                if st.nonfinite.len() < MAX_NONFINITE_KEPT {
                    st.nonfinite.push(NonFinite {
                        key: key.to_string(),
                        step: st.step,
                        eval: st.eval,
                        nan: sum.nan,
                        pos_inf: sum.pos_inf,
                        neg_inf: sum.neg_inf,
                    });
                }
            }
        }
        Ok((replacement, pending))
    }

    /// Hand a record to the writer, attaching the payload when its fidelity is `full` (unless
    /// it has one already).
    fn commit(
        &self,
        mut rec: RecordInput,
        payload: impl FnOnce() -> (Vec<u8>, Codec),
    ) -> Result<(), ProbeError> {
        if rec.fidelity == Fidelity::Full && rec.payload.is_none() {
            rec.payload = Some(payload());
        }
        if let Some(s) = &self.state
            && let Some(w) = lock(s).writer.as_mut()
        {
            w.write(rec)?;
        }
        Ok(())
    }

    /// Finish the trace of a run that did everything it set out to do: a run-end frame with
    /// status `complete`, the index and the footer. `Ok(None)` when there was no trace.
    pub fn finish(self) -> Result<Option<WrittenTrace>, ProbeError> {
        self.finish_with(RunEnd::default())
    }

    /// Finish the trace saying how the run ended (see [`RunEnd`]); a run stopped early says so
    /// here, and readers then treat the trace as incomplete.
    pub fn finish_with(self, end: RunEnd) -> Result<Option<WrittenTrace>, ProbeError> {
        let Some(s) = self.state else { return Ok(None) };
        let s = s.into_inner().unwrap_or_else(|e| e.into_inner());
        let Some(w) = s.writer else { return Ok(None) };
        Ok(Some(w.finish_with(end)?))
    }
}

fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    fn plan(&mut self, key: &str) -> Plan {
        let action = match self.cache.get(key) {
            Some(a) => *a,
            None => {
                let a = self.policy.action(key, self.step);
                self.cache.insert(key.to_string(), a);
                a
            }
        };
        let capture = match action {
            Action::Capture(f, c) if self.writer.is_some() => Some((f, c)),
            _ => None,
        };
        let intervene = !self.interventions.is_empty() && {
            let id = RecordId {
                step: self.step,
                eval: self.eval,
                key: key.to_string(),
            };
            self.interventions.iter().any(|i| i.wants(&id))
        };
        Plan { capture, intervene }
    }
}

/// Compute a record of `tensor` at `fidelity`: summary always, sketch and thumbnail from
/// `sketch` up, a copy of the bytes at `full`.
pub fn capture(
    key: &str,
    step: Option<u32>,
    eval: u32,
    tensor: TensorView<'_>,
    fidelity: Fidelity,
    codec: Codec,
    sketch_k: usize,
) -> RecordInput {
    let mut rec = summarize_tensor(key, step, eval, tensor, &[tensor.data], fidelity, sketch_k);
    if fidelity == Fidelity::Full {
        rec.payload = Some((tensor.data.to_vec(), codec));
    }
    rec
}

/// Everything of a record but its payload (which a `full` record still needs attached), for
/// `tensor`'s dtype and shape and the bytes `parts` (concatenated: the tensor's own, or its CFG
/// halves swapped; read in place either way).
fn summarize_tensor(
    key: &str,
    step: Option<u32>,
    eval: u32,
    tensor: TensorView<'_>,
    parts: &[&[u8]],
    fidelity: Fidelity,
    sketch_k: usize,
) -> RecordInput {
    let shape: Vec<u64> = tensor.shape.iter().map(|&d| d as u64).collect();
    let mut b = SummaryBuilder::new(tensor.dtype);
    if fidelity >= Fidelity::Sketch {
        b = b
            .with_sketch(SketchBuilder::new(key, &shape, sketch_k))
            .with_thumbnail(&shape);
    }
    for part in parts {
        b.update(part);
    }
    let (summary, sketch, thumbnail) = b.finish_all();
    RecordInput {
        key: key.to_string(),
        step,
        eval,
        dtype: tensor.dtype,
        shape,
        fidelity,
        summary,
        sketch,
        thumbnail,
        payload: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_print() {
        for text in [
            "unet.*=sketch",
            "sampler.*@0-4=full:zstd",
            "noise.initial=full",
            "*@3=off",
            "x@5-=stats",
            "y@-2=full",
        ] {
            let r: Rule = text.parse().unwrap();
            assert_eq!(r.to_string(), text);
        }
        for bad in [
            "unet.*",
            "=full",
            "a=loud",
            "a@x=full",
            "a@5-2=full",
            "a=sketch:zstd",
            "a=off:raw",
            "a=full:lz9",
        ] {
            let e = bad.parse::<Rule>().unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("GLOB[@STEPS]"), "{e}");
        }
    }

    #[test]
    fn last_matching_rule_wins() {
        let p = Policy::default();
        let full = Action::Capture(Fidelity::Full, Codec::Raw);
        assert_eq!(p.action("noise.initial", None), full);
        let fine = "unet.mid_block.attentions.0.transformer_blocks.0.attn1.probs";
        assert_eq!(
            Policy::preset("full").unwrap().action(fine, Some(0)),
            Action::Off
        );
        let mut asked = Policy::preset("full").unwrap();
        asked.push("*.attn1.probs@0=sketch".parse().unwrap());
        assert_eq!(
            asked.action(fine, Some(0)),
            Action::Capture(Fidelity::Sketch, Codec::Raw)
        );
        assert_eq!(p.action("sampler.x", Some(3)), full);
        assert_eq!(
            p.action("unet.conv_in", Some(3)),
            Action::Capture(Fidelity::Sketch, Codec::Raw)
        );
        let mut p = p;
        p.push("unet.*@2-3=off".parse().unwrap());
        assert_eq!(p.action("unet.conv_in", Some(3)), Action::Off);
        assert_eq!(
            p.action("unet.conv_in", Some(4)),
            Action::Capture(Fidelity::Sketch, Codec::Raw)
        );
        assert_eq!(
            p.action("unet.conv_in", None),
            Action::Capture(Fidelity::Sketch, Codec::Raw)
        );
        assert_eq!(
            Policy {
                rules: vec![],
                sketch_k: 4
            }
            .action("a", None),
            Action::Capture(Fidelity::Stats, Codec::Raw)
        );
        assert!(Policy::preset("loud").is_err());
    }

    #[test]
    fn only_rules_that_name_fine_points_reach_them() {
        let attn = "unet.mid_block.attentions.0.transformer_blocks.0.attn1";
        let [q, k, v, probs] = ["to_q", "to_k", "to_v", "probs"].map(|s| format!("{attn}.{s}"));
        let sketch = Action::Capture(Fidelity::Sketch, Codec::Raw);
        let full = Action::Capture(Fidelity::Full, Codec::Raw);
        let act = |spec: &str, key: &str| Policy::from_spec(spec).unwrap().action(key, Some(0));
        for key in [&q, &k, &v, &probs] {
            assert!(is_fine_point(key));
            // Presets and broad rules leave them off, whatever the level.
            for spec in [
                "light",
                "full",
                "sketch",
                "stats",
                "unet.*=full",
                "*=sketch",
            ] {
                assert_eq!(act(spec, key), Action::Off, "{spec} {key}");
            }
            for spec in [
                "*attn1*=full",
                "*.to_*=full",
                "full,unet.mid_block.*=full:zstd",
            ] {
                assert_eq!(act(spec, key), Action::Off, "{spec} {key}");
            }
        }
        // The broad rules still apply to everything else.
        assert_eq!(act("unet.*=full", attn), full);
        assert_eq!(act("*=sketch", "unet.conv_in"), sketch);
        // A rule ending in a fine point's name turns on that point only.
        assert_eq!(act("*.to_q=full", &q), full);
        assert_eq!(act("*.to_q=full", &k), Action::Off);
        assert_eq!(act("*.to_?=sketch", &v), sketch);
        assert_eq!(act("*.to_?=sketch", &probs), Action::Off);
        assert_eq!(act("unet.mid_block.*.attn1.probs=full", &probs), full);
        assert_eq!(act("*probs=full", &probs), full);
        assert_eq!(act("*.attn2.probs=full", &probs), Action::Off);
        // Broad rules do not turn a named fine point off again either; a naming one does.
        assert_eq!(act("*.to_q=full,unet.*=off", &q), full);
        assert_eq!(act("*.to_q=full,*.to_q@1-=off", &q), full);
        assert_eq!(
            Policy::from_spec("*.to_q=full,*.to_q@1-=off")
                .unwrap()
                .action(&q, Some(1)),
            Action::Off
        );
        // With no rules at all a fine point is off, anything else stats.
        let empty = Policy {
            rules: vec![],
            sketch_k: 4,
        };
        assert_eq!(empty.action(&q, None), Action::Off);
        assert!(!is_fine_point("unet.mid_block.attentions.0.proj_out"));
        assert!(!names_fine_points("*") && !names_fine_points("probs*"));
        assert!(!names_fine_points("é") && names_fine_points("é.probs"));
    }

    struct Negate;
    impl Intervention for Negate {
        fn wants(&self, id: &RecordId) -> bool {
            id.key == "x" && id.step == Some(1)
        }
        fn apply(
            &mut self,
            _: &RecordId,
            t: TensorView<'_>,
        ) -> Result<Option<OwnedTensor>, String> {
            let data = t
                .data()
                .chunks_exact(4)
                .flat_map(|b| (-f32::from_le_bytes(b.try_into().unwrap())).to_le_bytes())
                .collect();
            Ok(Some(OwnedTensor {
                dtype: t.dtype(),
                shape: t.shape().to_vec(),
                data,
            }))
        }
    }

    #[test]
    fn disabled_probe_does_nothing_and_interventions_replace() {
        let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let shape = [2usize];
        let view = TensorView::new(DType::F32, &shape, &data).unwrap();
        let p = Probe::disabled();
        assert!(p.plan("x").is_noop());
        assert!(p.tensor("x", view).unwrap().is_none());

        let mut p = Probe::interventions_only();
        p.add_intervention(Box::new(Negate));
        assert!(p.plan("x").is_noop());
        p.set_step(Some(1), 0).unwrap();
        let plan = p.plan("x");
        assert!(plan.intervene && plan.capture.is_none());
        let t = p.tensor("x", view).unwrap().unwrap();
        assert_eq!(&t.data[..4], &(-1.0f32).to_le_bytes());
        assert!(p.tensor("y", view).unwrap().is_none());
    }

    #[test]
    fn owned_and_borrowed_tensors_record_the_same() {
        let dir = std::env::temp_dir().join(format!("sdtrace-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let data: Vec<u8> = (0..24u8).collect();
        let shape = [2usize, 3];
        let mut metas = Vec::new();
        for owned in [false, true] {
            let path = dir.join(format!("o{owned}.sdt"));
            let w =
                crate::trace::TraceWriter::create(&path, &Default::default(), Default::default())
                    .unwrap();
            let p = Probe::new(w, Policy::preset("full").unwrap());
            if owned {
                let t = OwnedTensor {
                    dtype: DType::F32,
                    shape: shape.to_vec(),
                    data: data.clone(),
                };
                p.tensor_owned("x", t).unwrap();
            } else {
                p.tensor("x", TensorView::new(DType::F32, &shape, &data).unwrap())
                    .unwrap();
            }
            p.finish().unwrap();
            let r = crate::trace::TraceReader::open(&path).unwrap();
            let m = r.read_meta(&r.entries()[0]).unwrap();
            assert_eq!(r.read_payload(&m).unwrap().unwrap(), data);
            metas.push(m);
        }
        assert_eq!(metas[0], metas[1]);
        let bad = OwnedTensor {
            dtype: DType::F32,
            shape: vec![7],
            data: vec![0; 4],
        };
        assert!(Probe::disabled().tensor_owned("x", bad).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cond_first_records_equal_the_swapped_tensor() {
        // A CFG batch read as its two halves in swapped order must record exactly what the
        // swapped copy records: summary, sketch, thumbnail and payload. Each half (3·40·33
        // elements) ends inside a summary chunk, and one half holds a NaN.
        let dir = std::env::temp_dir().join(format!("sdtrace-probe-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let shape = [2usize, 3, 40, 33];
        let n: usize = shape.iter().product();
        let mut vals: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1009) as f32 / 9.0 - 50.0)
            .collect();
        vals[n / 2 + 17] = f32::NAN;
        let bytes: Vec<u8> = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
        let half = bytes.len() / 2;
        let swapped = [&bytes[half..], &bytes[..half]].concat();
        for preset in ["sketch", "full"] {
            let path = dir.join(format!("{preset}.sdt"));
            let w =
                crate::trace::TraceWriter::create(&path, &Default::default(), Default::default())
                    .unwrap();
            let p = Probe::new(w, Policy::preset(preset).unwrap());
            p.set_step(Some(0), 0).unwrap();
            p.set_cond_first(true);
            p.tensor("x", TensorView::new(DType::F32, &shape, &bytes).unwrap())
                .unwrap();
            p.set_step(Some(1), 0).unwrap();
            p.set_cond_first(false);
            p.tensor("x", TensorView::new(DType::F32, &shape, &swapped).unwrap())
                .unwrap();
            p.finish().unwrap();
            let r = crate::trace::TraceReader::open(&path).unwrap();
            let m: Vec<_> = r
                .entries()
                .iter()
                .map(|e| r.read_meta(e).unwrap())
                .collect();
            assert_eq!(m[0].summary, m[1].summary, "{preset}");
            assert_eq!(m[0].summary.nan, 1);
            assert_eq!(m[0].sketch, m[1].sketch, "{preset}");
            assert!(m[0].thumbnail.is_some());
            assert_eq!(m[0].thumbnail, m[1].thumbnail, "{preset}");
            let payloads: Vec<_> = m.iter().map(|m| r.read_payload(m).unwrap()).collect();
            assert_eq!(payloads[0], payloads[1]);
            assert_eq!(payloads[0].is_some(), preset == "full");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn views_are_checked() {
        assert!(TensorView::new(DType::F16, &[3], &[0; 6]).is_ok());
        assert!(TensorView::new(DType::F16, &[3], &[0; 5]).is_err());
    }
}
