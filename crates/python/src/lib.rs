//! `sdtrace._native`: the Python extension over `sdtrace-core`, so that a Python host writes,
//! reads and judges traces with the very code `sdtrace record` and `sdtrace report` run — one
//! implementation of the format, the summaries and the judge.
//!
//! What crosses the boundary: plain Python values and JSON text (headers, run-ends, summaries,
//! reports), and tensor bytes, which cross once — from a `bytes` object or, for the package's
//! own torch/numpy bridge, from the address of a contiguous CPU buffer the caller keeps alive —
//! and are summarised with the GIL released. f16 and bf16 stay 16-bit patterns throughout.
//! Errors are [`SdtraceError`] (a Python exception) naming the file, key or argument at fault.

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use sdtrace_core::DType;
use sdtrace_core::analysis::{AllowMissing, CompareOptions, Criteria, FailOn, TolConfig};
use sdtrace_core::errors::chain_text;
use sdtrace_core::probe::{Policy, Probe, TensorView};
use sdtrace_core::trace::{RunEnd, RunHeader, RunStatus, TraceReader, TraceWriter, WriterOptions};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::RwLock;

mod keys;

pyo3::create_exception!(
    _native,
    SdtraceError,
    pyo3::exceptions::PyException,
    "An sdtrace error: a file, key or argument that cannot be used, with what to do about it."
);

fn err(msg: impl std::fmt::Display) -> PyErr {
    SdtraceError::new_err(msg.to_string())
}

/// An error as an exception: its message and every cause of its chain, each once (a trace
/// error names the file, its source the OS's reason).
fn fail(e: impl std::error::Error + 'static) -> PyErr {
    err(chain_text(&e))
}

fn dtype_of(name: &str) -> PyResult<DType> {
    name.parse::<DType>()
        .map_err(|e| err(format!("dtype '{name}': {e}")))
}

fn run_status(name: &str) -> PyResult<RunStatus> {
    match name {
        "complete" => Ok(RunStatus::Complete),
        "interrupted" => Ok(RunStatus::Interrupted),
        "failed" => Ok(RunStatus::Failed),
        _ => Err(err(format!(
            "status '{name}': expected complete, interrupted or failed"
        ))),
    }
}

/// A trace being written: the Rust probe (policy + summaries + background writer) behind a
/// lock, so `finish` can take it while other calls share it.
/// The run end's own fields (FORMAT.md §2.6), which extra fields may not name.
const RUN_END_FIELDS: [&str; 6] = [
    "status",
    "reason",
    "steps_completed",
    "steps_planned",
    "elapsed_ms",
    "nonfinite",
];

#[pyclass(module = "sdtrace._native")]
struct Recorder {
    probe: RwLock<Option<Probe>>,
    /// The probe's policy, to answer "would this key be recorded at that step" up front.
    policy: Policy,
    path: PathBuf,
}

impl Recorder {
    fn with<T>(&self, f: impl FnOnce(&Probe) -> PyResult<T>) -> PyResult<T> {
        let guard = self
            .probe
            .read()
            .map_err(|_| err("the recorder is poisoned by an earlier panic"))?;
        match guard.as_ref() {
            Some(p) => f(p),
            None => Err(err(format!(
                "{}: the trace is already finished",
                self.path.display()
            ))),
        }
    }
}

#[pymethods]
impl Recorder {
    /// Create `path` with the run header `header_json` (FORMAT.md §2.1) and the capture setting
    /// `capture` (`light`, `full`, `stats`, `sketch`, `off`, or a preset followed by rules).
    #[new]
    fn new(path: PathBuf, header_json: &str, capture: &str) -> PyResult<Self> {
        let header = RunHeader::from_json(header_json.as_bytes())
            .map_err(|e| err(format!("run header: {e}")))?;
        let policy =
            Policy::from_spec(capture).map_err(|e| err(format!("capture '{capture}': {e}")))?;
        let writer = TraceWriter::create(&path, &header, WriterOptions::default()).map_err(fail)?;
        Ok(Recorder {
            probe: RwLock::new(Some(Probe::new(writer, policy.clone()))),
            policy,
            path,
        })
    }

    /// The step (None outside the sampling loop) and evaluation the next records belong to.
    #[pyo3(signature = (step, eval=0))]
    fn set_step(&self, step: Option<u32>, eval: u32) -> PyResult<()> {
        self.with(|p| p.set_step(step, eval).map_err(fail))
    }

    /// Whether the model call about to run batches its CFG rows [cond; uncond] (the webui's
    /// order): while true, records with an even first dimension are stored with their halves
    /// swapped, so the trace holds [uncond; cond] (`cfg_rows_stored` in the header).
    fn set_cond_first(&self, cond_first: bool) -> PyResult<()> {
        self.with(|p| {
            p.set_cond_first(cond_first);
            Ok(())
        })
    }

    /// The fidelity `key` is recorded at now (`stats`, `sketch`, `full`), or None when the
    /// policy leaves it out — ask before copying a tensor off the device.
    fn plan(&self, key: &str) -> PyResult<Option<&'static str>> {
        self.with(|p| Ok(p.plan(key).capture.map(|(f, _)| f.name())))
    }

    /// Whether the policy records `key` at any of `steps` (None: outside the loop): a host
    /// installs a hook only on modules for which this is true.
    fn records_any(&self, key: &str, steps: Vec<Option<u32>>) -> bool {
        steps
            .into_iter()
            .any(|s| !matches!(self.policy.action(key, s), sdtrace_core::probe::Action::Off))
    }

    /// Record a tensor given as little-endian bytes of `dtype` in row-major `shape`.
    fn tensor(
        &self,
        py: Python<'_>,
        key: &str,
        dtype: &str,
        shape: Vec<usize>,
        data: &[u8],
    ) -> PyResult<()> {
        let dtype = dtype_of(dtype)?;
        let view = TensorView::new(dtype, &shape, data).map_err(|e| err(format!("{key}: {e}")))?;
        self.with(|p| {
            py.detach(|| p.tensor(key, view))
                .map(|_| ())
                .map_err(|e| err(format!("{key}: {}", chain_text(&e))))
        })
    }

    /// Record the `nbytes` bytes at `address`: a contiguous CPU buffer of `dtype` in `shape`
    /// (a torch tensor's `data_ptr()` or a numpy array's address), read once in place.
    ///
    /// The caller guarantees that the buffer is readable and stays alive and unchanged until
    /// this call returns; the `sdtrace` package only passes contiguous CPU tensors it holds a
    /// reference to. An address of 0 is refused.
    fn tensor_at(
        &self,
        py: Python<'_>,
        key: &str,
        dtype: &str,
        shape: Vec<usize>,
        address: usize,
        nbytes: usize,
    ) -> PyResult<()> {
        if address == 0 && nbytes > 0 {
            return Err(err(format!("{key}: null buffer address")));
        }
        let data: &[u8] = if nbytes == 0 {
            &[]
        } else {
            // SAFETY: the caller guarantees `nbytes` readable bytes at `address`, alive and
            // unchanged for the duration of this call (see the method docs); the slice does not
            // outlive the call.
            unsafe { std::slice::from_raw_parts(address as *const u8, nbytes) }
        };
        self.tensor(py, key, dtype, shape, data)
    }

    /// NaN/Inf records seen so far, as JSON (`[{key, step, eval, nan, pos_inf, neg_inf}]`).
    fn nonfinite_json(&self) -> PyResult<String> {
        self.with(|p| Ok(serde_json::to_string(&p.nonfinite().0).unwrap_or_else(|_| "[]".into())))
    }

    /// Close the trace with a run-end frame saying how the run ended; the file is whole after
    /// this, whatever the status. `extra_json`, a JSON object, adds free fields to the run end
    /// (what a host observed during the run, FORMAT.md §2.6).
    #[pyo3(signature = (status="complete", reason=None, steps_completed=None, steps_planned=None, elapsed_ms=None, extra_json=None))]
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        py: Python<'_>,
        status: &str,
        reason: Option<String>,
        steps_completed: Option<u32>,
        steps_planned: Option<u32>,
        elapsed_ms: Option<u64>,
        extra_json: Option<&str>,
    ) -> PyResult<u64> {
        let status = run_status(status)?;
        let extra = match extra_json {
            None => BTreeMap::new(),
            Some(text) => serde_json::from_str::<BTreeMap<String, serde_json::Value>>(text)
                .map_err(|e| {
                    err(format!(
                        "the run end's extra fields must be a JSON object: {e}"
                    ))
                })?,
        };
        if let Some(known) = extra.keys().find(|k| RUN_END_FIELDS.contains(&k.as_str())) {
            return Err(err(format!(
                "the run end's extra field '{known}' is one of its own fields; name it otherwise"
            )));
        }
        let probe = self
            .probe
            .write()
            .map_err(|_| err("the recorder is poisoned by an earlier panic"))?
            .take()
            .ok_or_else(|| {
                err(format!(
                    "{}: the trace is already finished",
                    self.path.display()
                ))
            })?;
        let nonfinite = probe.nonfinite().0;
        let end = RunEnd {
            status,
            reason,
            steps_completed,
            steps_planned,
            elapsed_ms,
            nonfinite,
            extra,
        };
        let written = py.detach(|| probe.finish_with(end)).map_err(fail)?;
        Ok(written.map_or(0, |w| w.records))
    }

    /// Whether `finish` has been called.
    #[getter]
    fn finished(&self) -> bool {
        self.probe.read().map_or(true, |p| p.is_none())
    }
}

/// A stored tensor: dtype name, shape, bytes.
type Payload<'py> = (&'static str, Vec<u64>, Bound<'py, PyBytes>);

/// A trace opened for reading.
#[pyclass(module = "sdtrace._native")]
struct Trace {
    reader: TraceReader,
}

#[pymethods]
impl Trace {
    /// The run header as JSON.
    fn header_json(&self) -> String {
        String::from_utf8_lossy(&self.reader.header().to_json()).into_owned()
    }

    /// The run-end as JSON, or None when the trace has none.
    fn run_end_json(&self) -> Option<String> {
        self.reader
            .run_end()
            .map(|e| String::from_utf8_lossy(&e.to_json()).into_owned())
    }

    /// None for a whole file, else why the reader had to recover the records by scanning.
    fn damage(&self) -> Option<String> {
        match self.reader.integrity() {
            sdtrace_core::trace::Integrity::Complete => None,
            sdtrace_core::trace::Integrity::Recovered { reason, .. } => Some(reason.clone()),
        }
    }

    /// Number of records.
    fn __len__(&self) -> usize {
        self.reader.entries().len()
    }

    /// Every record's metadata (key, step, eval, order, dtype and fidelity names, shape,
    /// summary, whether it holds a payload) as a JSON array, in execution order. Reads every
    /// record frame once.
    fn records_json(&self, py: Python<'_>) -> PyResult<String> {
        py.detach(|| {
            let metas = self
                .reader
                .entries()
                .iter()
                .map(|e| {
                    let m = self.reader.read_meta(e)?;
                    Ok(serde_json::json!({
                        "key": m.key,
                        "step": m.step,
                        "eval": m.eval,
                        "order": m.order,
                        "dtype": m.dtype.name(),
                        "shape": m.shape,
                        "fidelity": m.fidelity.name(),
                        "summary": m.summary,
                        "payload": m.payload.is_some(),
                    }))
                })
                .collect::<Result<Vec<_>, sdtrace_core::trace::TraceError>>()
                .map_err(fail)?;
            serde_json::to_string(&metas).map_err(err)
        })
    }

    /// The stored tensor of a record kept in `full`: (dtype, shape, bytes); None when the record
    /// has no payload; an error when there is no such record.
    #[pyo3(signature = (key, step=None, eval=0))]
    fn payload<'py>(
        &self,
        py: Python<'py>,
        key: &str,
        step: Option<u32>,
        eval: u32,
    ) -> PyResult<Option<Payload<'py>>> {
        let entry = self.reader.find(key, step, eval).ok_or_else(|| {
            err(format!(
                "{}: no record '{key}' at step {step:?}, eval {eval}",
                self.reader.path().display()
            ))
        })?;
        let meta = self.reader.read_meta(entry).map_err(fail)?;
        let data = py
            .detach(|| self.reader.read_payload(&meta))
            .map_err(fail)?;
        Ok(data.map(|d| (meta.dtype.name(), meta.shape.clone(), PyBytes::new(py, &d))))
    }
}

/// Open a trace for reading (a damaged one is read up to the damage).
#[pyfunction]
fn open_trace(path: PathBuf) -> PyResult<Trace> {
    Ok(Trace {
        reader: TraceReader::open(&path).map_err(fail)?,
    })
}

/// The summary `sdtrace record` stores for these bytes, as JSON.
#[pyfunction]
fn summarize(py: Python<'_>, dtype: &str, data: &[u8]) -> PyResult<String> {
    let dtype = dtype_of(dtype)?;
    if !data.len().is_multiple_of(dtype.size()) {
        return Err(err(format!(
            "{} bytes are not a whole number of {} elements",
            data.len(),
            dtype.name()
        )));
    }
    let s = py.detach(|| sdtrace_core::stats::summarize(dtype, data));
    serde_json::to_string(&s).map_err(err)
}

/// Compare and judge two traces as `sdtrace report` does; returns its JSON report.
#[pyfunction]
#[pyo3(signature = (a, b, tol=None, tol_key=Vec::new(), allow_missing=None, fail_on=None, min_psnr=None, min_ssim=None))]
#[allow(clippy::too_many_arguments)]
fn compare(
    py: Python<'_>,
    a: PathBuf,
    b: PathBuf,
    tol: Option<String>,
    tol_key: Vec<String>,
    allow_missing: Option<String>,
    fail_on: Option<String>,
    min_psnr: Option<f64>,
    min_ssim: Option<f64>,
) -> PyResult<String> {
    let tols = TolConfig::from_flags(tol.as_deref(), &tol_key, 3.0).map_err(err)?;
    let fail_on = fail_on
        .as_deref()
        .map(str::parse::<FailOn>)
        .transpose()
        .map_err(err)?;
    let allow_missing = allow_missing
        .as_deref()
        .map(str::parse::<AllowMissing>)
        .transpose()
        .map_err(err)?;
    let criteria = Criteria::from_flags(fail_on, allow_missing, min_psnr, min_ssim).map_err(err)?;
    let opts = CompareOptions {
        tol: tols.clone(),
        ..CompareOptions::default()
    };
    py.detach(|| {
        let c = sdtrace_core::analysis::compare_paths(&a, &b, None, &opts).map_err(fail)?;
        let j = sdtrace_core::analysis::judge(&c, &tols, &criteria);
        serde_json::to_string(&sdtrace_core::report::report_json(&c, &j)).map_err(err)
    })
}

/// The sdtrace version this extension was built from.
#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("SdtraceError", m.py().get_type::<SdtraceError>())?;
    m.add_class::<Recorder>()?;
    m.add_class::<Trace>()?;
    m.add_class::<keys::PyLdmMap>()?;
    m.add_function(wrap_pyfunction!(open_trace, m)?)?;
    m.add_function(wrap_pyfunction!(summarize, m)?)?;
    m.add_function(wrap_pyfunction!(compare, m)?)?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    Ok(())
}
