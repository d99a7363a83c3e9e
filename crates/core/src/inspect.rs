//! What `sdtrace info` and `sdtrace ls` show: data gathered from a reader, then pure renderers
//! from that data to text or JSON. The text renderers escape control characters in every string
//! that came from the trace ([`printable`]); the JSON ones need not (JSON escapes them).

use crate::dtype::DType;
use crate::escape::printable;
use crate::glob;
use crate::stats::Summary;
use crate::trace::{
    Codec, DeviceFacts, Fidelity, Integrity, RecordEntry, RunEnd, RunHeader, Settings, TraceError,
    TraceReader, format_unix_ms,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Overview of one trace.
#[derive(Clone, Debug)]
pub struct TraceInfo {
    pub path: String,
    pub file_len: u64,
    pub version: (u16, u16),
    pub integrity: Integrity,
    pub run_end: Option<RunEnd>,
    pub header: RunHeader,
    pub records: usize,
    /// Distinct sampler steps, in order.
    pub steps: Vec<u32>,
    /// Records outside the sampling loop.
    pub unstepped: usize,
    /// Per top-level key group (`unet`, `sampler`, ...): (distinct keys, records).
    pub groups: BTreeMap<String, (usize, usize)>,
    /// Per fidelity: (records, bytes on disk).
    pub by_fidelity: BTreeMap<Fidelity, (usize, u64)>,
    /// Records whose checksums were all verified, when asked.
    pub verified: Option<u64>,
    /// What failed its checks: frames skipped while opening, and (after
    /// [`TraceInfo::verify`]) records whose frame or payload does not check. Each line names
    /// the byte offset.
    pub damage: Vec<String>,
}

impl TraceInfo {
    /// Check every record and payload of `r` (`info --verify`): `verified` counts the records
    /// that check, `damage` gains one line per record that does not.
    pub fn verify(&mut self, r: &TraceReader) {
        let bad = r.verify_all();
        self.verified = Some((r.entries().len() - bad.len()) as u64);
        self.damage.extend(
            bad.into_iter()
                .map(|(i, e)| format!("{}: {}", r.entries()[i].id(), damage_line(&e))),
        );
    }
}

/// Gather the overview from the index (no record is read).
pub fn trace_info(r: &TraceReader) -> TraceInfo {
    let mut steps: Vec<u32> = r.entries().iter().filter_map(|e| e.step).collect();
    steps.sort_unstable();
    steps.dedup();
    let mut groups: BTreeMap<String, (std::collections::BTreeSet<&str>, usize)> = BTreeMap::new();
    let mut by_fidelity = BTreeMap::new();
    for e in r.entries() {
        let group = e.key.split('.').next().unwrap_or("").to_string();
        let g = groups.entry(group).or_default();
        g.0.insert(&e.key);
        g.1 += 1;
        let f: &mut (usize, u64) = by_fidelity.entry(e.fidelity).or_default();
        f.0 += 1;
        f.1 += e.stored_bytes();
    }
    TraceInfo {
        path: r.path().display().to_string(),
        file_len: r.file_len(),
        version: r.version(),
        integrity: r.integrity().clone(),
        run_end: r.run_end().cloned(),
        header: r.header().clone(),
        records: r.entries().len(),
        unstepped: r.entries().iter().filter(|e| e.step.is_none()).count(),
        steps,
        groups: groups
            .into_iter()
            .map(|(k, (keys, n))| (k, (keys.len(), n)))
            .collect(),
        by_fidelity,
        verified: None,
        damage: r
            .damage()
            .iter()
            .map(|d| format!("byte offset {}: {}", d.offset, d.what))
            .collect(),
    }
}

/// `1.5 MiB` style.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn steps_text(steps: &[u32]) -> String {
    match (steps.first(), steps.last()) {
        (Some(a), Some(b)) if steps.len() as u64 == (*b - *a) as u64 + 1 => {
            format!("{} ({a}..={b})", steps.len())
        }
        (Some(_), Some(_)) => format!("{} (not contiguous: {:?})", steps.len(), steps),
        _ => "none".into(),
    }
}

/// Most damage lines `info` prints as text.
const MAX_DAMAGE_LINES: usize = 10;

/// `sdtrace info` as text.
pub fn render_info(i: &TraceInfo) -> String {
    let mut s = String::new();
    let h = &i.header;
    let _ = writeln!(
        s,
        "trace     {} ({}, format {}.{})",
        printable(&i.path),
        human_bytes(i.file_len),
        i.version.0,
        i.version.1
    );
    status_lines(&mut s, i);
    provenance_lines(&mut s, h);
    section(
        &mut s,
        "settings",
        &settings_rows(&h.settings),
        &h.settings.extra,
    );
    section(&mut s, "device", &device_rows(&h.device), &h.device.extra);
    record_lines(&mut s, i);
    s
}

/// Whether the trace is whole, how its run ended, what was verified and what is damaged.
fn status_lines(s: &mut String, i: &TraceInfo) {
    match &i.integrity {
        Integrity::Complete => {
            let _ = writeln!(s, "status    complete");
        }
        Integrity::Recovered {
            reason,
            valid_len,
            file_len,
        } => {
            let what = if i.damage.is_empty() {
                "TRUNCATED"
            } else {
                "DAMAGED"
            };
            let _ = writeln!(s, "status    {what}: {}", printable(reason));
            let _ = writeln!(
                s,
                "          {} complete records survived in the first {valid_len} of {file_len} bytes",
                i.records
            );
        }
    }
    if let Some(end) = &i.run_end {
        let _ = writeln!(s, "run       {}", printable(&end.describe()));
        for n in end.nonfinite.iter().take(5) {
            let step = n.step.map_or("-".to_string(), |s| s.to_string());
            let _ = writeln!(
                s,
                "          non-finite: {} step {step}: {} NaN, {} +Inf, {} -Inf",
                printable(&n.key),
                n.nan,
                n.pos_inf,
                n.neg_inf
            );
        }
    }
    match (i.verified, i.damage.len()) {
        (Some(n), 0) => {
            let _ = writeln!(
                s,
                "verified  all checksums of {n} records and their payloads"
            );
        }
        (Some(n), _) => {
            let _ = writeln!(
                s,
                "verified  {n} of {} records and their payloads check",
                i.records
            );
        }
        (None, _) => {}
    }
    if !i.damage.is_empty() {
        let _ = writeln!(
            s,
            "DAMAGED   {} part{} of the file failed {} checks and {} left out:",
            i.damage.len(),
            if i.damage.len() == 1 { "" } else { "s" },
            if i.damage.len() == 1 { "its" } else { "their" },
            if i.damage.len() == 1 { "is" } else { "are" },
        );
        for d in i.damage.iter().take(MAX_DAMAGE_LINES) {
            let _ = writeln!(s, "          {}", printable(d));
        }
        if i.damage.len() > MAX_DAMAGE_LINES {
            let _ = writeln!(
                s,
                "          … and {} more (info --json lists all)",
                i.damage.len() - MAX_DAMAGE_LINES
            );
        }
    }
}

/// Which versions wrote the trace, and when.
fn provenance_lines(s: &mut String, h: &RunHeader) {
    let versions = [
        h.sdtrace_version.as_ref().map(|v| format!("sdtrace {v}")),
        h.candle_version.as_ref().map(|v| format!("candle {v}")),
    ];
    let versions: Vec<String> = versions.into_iter().flatten().collect();
    if !versions.is_empty() {
        let _ = writeln!(s, "written   by {}", printable(&versions.join(", ")));
    }
    if let Some(ms) = h.created_unix_ms {
        let _ = writeln!(s, "created   {}", format_unix_ms(ms));
    }
}

/// The generation settings of the header, in `info`'s order.
fn settings_rows(st: &Settings) -> Vec<(&'static str, Option<String>)> {
    let mut rows: Vec<(&'static str, Option<String>)> = vec![("model", st.model.clone())];
    rows.extend(
        st.model_hashes
            .iter()
            .map(|(name, hash)| ("model hash", Some(format!("{name} {hash}")))),
    );
    rows.extend([
        ("prompt", st.prompt.clone()),
        ("negative", st.negative_prompt.clone()),
        ("sampler", st.sampler.clone()),
        ("steps", st.steps.map(|v| v.to_string())),
        ("cfg scale", st.cfg_scale.map(|v| v.to_string())),
        ("seed", st.seed.map(|v| v.to_string())),
        (
            "size",
            st.width.zip(st.height).map(|(w, h)| format!("{w}x{h}")),
        ),
        ("batch", st.batch_size.map(|v| v.to_string())),
        ("dtype", st.dtype.clone()),
        ("rng", st.rng.clone()),
        ("attention", st.attention.clone()),
        ("capture", st.capture.clone()),
    ]);
    rows
}

/// The device facts of the header (and its GPU's, when it ran on one).
fn device_rows(d: &DeviceFacts) -> Vec<(&'static str, Option<String>)> {
    let mut rows: Vec<(&'static str, Option<String>)> = vec![
        ("device", d.device.clone()),
        (
            "os",
            d.os.clone()
                .map(|os| format!("{os} {}", d.arch.clone().unwrap_or_default())),
        ),
        ("cpu", d.cpu_model.clone()),
        (
            "isa",
            (!d.cpu_features.is_empty()).then(|| d.cpu_features.join(" ")),
        ),
        (
            "threads",
            d.compute_threads.map(|t| {
                format!(
                    "{t} compute of {} logical",
                    d.logical_cpus.map_or("?".into(), |n| n.to_string())
                )
            }),
        ),
    ];
    if let Some(g) = &d.gpu {
        rows.extend([
            ("gpu", g.name.clone()),
            ("compute cap", g.compute_capability.clone()),
            (
                "SMs",
                g.sm_count.map(|n| {
                    format!(
                        "{n} × {} threads",
                        g.max_threads_per_sm.map_or("?".into(), |t| t.to_string())
                    )
                }),
            ),
            (
                "vram",
                g.vram_total_bytes.map(|t| {
                    format!(
                        "{} total, {} free",
                        human_bytes(t),
                        g.vram_free_bytes.map_or("?".into(), human_bytes)
                    )
                }),
            ),
            ("driver", g.driver_version.clone()),
            ("cuda", g.cuda_version.clone()),
        ]);
    }
    rows
}

/// Record counts, steps, key groups and the bytes stored per fidelity.
fn record_lines(s: &mut String, i: &TraceInfo) {
    let _ = writeln!(
        s,
        "\nrecords   {} ({} outside the sampling loop)",
        i.records, i.unstepped
    );
    let _ = writeln!(s, "steps     {}", steps_text(&i.steps));
    let _ = writeln!(s, "keys");
    for (g, (keys, n)) in &i.groups {
        let _ = writeln!(
            s,
            "  {} {keys:>5} keys {n:>8} records",
            pad(&printable(g), 14, true)
        );
    }
    let _ = writeln!(s, "stored by fidelity");
    for (f, (n, b)) in &i.by_fidelity {
        let _ = writeln!(
            s,
            "  {:<14} {n:>5} records {:>12}",
            f.name(),
            human_bytes(*b)
        );
    }
}

/// A titled block of `name value` lines; absent values are left out, unknown fields follow.
fn section(
    s: &mut String,
    title: &str,
    rows: &[(&str, Option<String>)],
    extra: &BTreeMap<String, Value>,
) {
    let _ = writeln!(s, "\n{title}");
    for (k, v) in rows.iter().filter_map(|(k, v)| v.as_ref().map(|v| (k, v))) {
        let _ = writeln!(s, "  {k:<11} {}", printable(v));
    }
    for (k, v) in extra {
        let _ = writeln!(
            s,
            "  {} {}",
            pad(&printable(k), 11, true),
            printable(&compact(v))
        );
    }
}

/// A header value on one line; long ones are cut (`info --json` has them whole).
fn compact(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    if s.chars().count() <= 160 {
        return s;
    }
    let head: String = s.chars().take(120).collect();
    let what = match v {
        Value::Object(m) => format!("{} entries", m.len()),
        Value::Array(a) => format!("{} items", a.len()),
        _ => format!("{} characters", s.chars().count()),
    };
    format!("{head}… ({what}; info --json shows all)")
}

/// `sdtrace info --json`.
pub fn info_json(i: &TraceInfo) -> Value {
    let integrity = match &i.integrity {
        Integrity::Complete => json!({"complete": true}),
        Integrity::Recovered {
            reason,
            valid_len,
            file_len,
        } => {
            json!({"complete": false, "reason": reason, "valid_len": valid_len, "file_len": file_len})
        }
    };
    json!({
        "path": i.path,
        "file_len": i.file_len,
        "format_version": [i.version.0, i.version.1],
        "integrity": integrity,
        "run_end": i.run_end,
        "verified_records": i.verified,
        "damage": i.damage,
        "header": i.header,
        "records": i.records,
        "unstepped_records": i.unstepped,
        "steps": i.steps,
        "groups": i.groups.iter().map(|(g, (k, n))| (g.clone(), json!({"keys": k, "records": n}))).collect::<serde_json::Map<_, _>>(),
        "by_fidelity": i.by_fidelity.iter().map(|(f, (n, b))| (f.name().to_string(), json!({"records": n, "bytes": b}))).collect::<serde_json::Map<_, _>>(),
    })
}

/// Which records `ls` lists.
#[derive(Clone, Debug, Default)]
pub struct LsFilter {
    pub key: Option<String>,
    pub step: Option<u32>,
}

impl LsFilter {
    pub fn matches(&self, e: &RecordEntry) -> bool {
        self.key.as_deref().is_none_or(|g| glob::matches(g, &e.key))
            && self.step.is_none_or(|s| e.step == Some(s))
    }
}

/// One `ls` line.
#[derive(Clone, Debug)]
pub struct LsRow {
    pub order: u64,
    pub step: Option<u32>,
    pub eval: u32,
    pub key: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub fidelity: Fidelity,
    pub codec: Option<Codec>,
    pub stored_bytes: u64,
    pub summary: Summary,
    pub sketch_k: Option<usize>,
}

fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v == 0.0 || (1e-3..1e5).contains(&v.abs()) {
        format!("{v:.4}")
    } else {
        format!("{v:.3e}")
    }
}

/// `v` padded with spaces to `width` characters, on the right when `left` (left-aligned) or on
/// the left. By hand, not with a format width, which panics above 65 535 (a key can be longer).
fn pad(v: &str, width: usize, left: bool) -> String {
    let fill = " ".repeat(width.saturating_sub(v.chars().count()));
    if left {
        format!("{v}{fill}")
    } else {
        format!("{fill}{v}")
    }
}

/// `sdtrace ls` as aligned text.
pub fn render_ls(rows: &[LsRow]) -> String {
    let head = [
        "order",
        "step",
        "eval",
        "key",
        "dtype",
        "shape",
        "fidelity",
        "min",
        "max",
        "mean",
        "std",
        "absmax",
        "nonfinite",
    ];
    let mut table: Vec<Vec<String>> = vec![head.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        let shape: Vec<String> = r.shape.iter().map(u64::to_string).collect();
        let s = &r.summary;
        table.push(vec![
            r.order.to_string(),
            r.step.map_or("-".into(), |v| v.to_string()),
            r.eval.to_string(),
            printable(&r.key).into_owned(),
            r.dtype.to_string(),
            format!("[{}]", shape.join(",")),
            match r.codec {
                Some(Codec::ShuffleZstd) => "full:zstd".into(),
                _ => r.fidelity.to_string(),
            },
            fmt_num(s.min),
            fmt_num(s.max),
            fmt_num(s.mean),
            fmt_num(s.std),
            fmt_num(s.abs_max),
            (s.nan + s.pos_inf + s.neg_inf).to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..head.len())
        .map(|c| {
            table
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &table {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, v)| pad(v, widths[c], matches!(c, 3..=6)))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `sdtrace ls --json`: an array of objects.
pub fn ls_json(rows: &[LsRow]) -> Value {
    Value::Array(
        rows.iter()
            .map(|r| {
                json!({
                    "order": r.order, "step": r.step, "eval": r.eval, "key": r.key,
                    "dtype": r.dtype.name(), "shape": r.shape, "fidelity": r.fidelity.name(),
                    "codec": r.codec.map(|c| c.name()), "stored_bytes": r.stored_bytes,
                    "sketch_k": r.sketch_k, "summary": summary_json(&r.summary),
                })
            })
            .collect(),
    )
}

/// Summary as JSON, with non-finite floats as strings (JSON has no NaN).
pub fn summary_json(s: &Summary) -> Value {
    let f = |v: f64| {
        if v.is_finite() {
            json!(v)
        } else {
            json!(v.to_string())
        }
    };
    json!({
        "count": s.count, "nan": s.nan, "pos_inf": s.pos_inf, "neg_inf": s.neg_inf, "zeros": s.zeros,
        "min": f(s.min), "max": f(s.max), "mean": f(s.mean), "std": f(s.std), "l2": f(s.l2),
        "abs_max": f(s.abs_max), "abs_max_index": s.abs_max_index,
        "log2_hist": s.log2_hist, "bits_hash": format!("{:016x}", s.bits_hash),
    })
}

/// A record's damage for a list under the file's name: `byte offset N: what` (the path once,
/// in the list's heading).
fn damage_line(e: &TraceError) -> String {
    match e {
        TraceError::Corrupt { offset, what, .. } => format!("byte offset {offset}: {what}"),
        e => e.to_string(),
    }
}

/// What `ls` lists: the rows of the records that check, and the ones that do not.
#[derive(Clone, Debug, Default)]
pub struct LsListing {
    pub rows: Vec<LsRow>,
    /// One line per selected record whose frame does not check (it names the byte offset).
    pub damaged: Vec<String>,
}

/// Read the records `filter` selects (their metadata frames) into `ls` rows; a record whose
/// frame fails its checks is left out and named in [`LsListing::damaged`], the others listed.
pub fn ls_rows(r: &TraceReader, filter: &LsFilter) -> LsListing {
    let mut out = LsListing::default();
    for e in r.entries().iter().filter(|e| filter.matches(e)) {
        match r.read_meta(e) {
            Ok(m) => out.rows.push(LsRow {
                order: m.order,
                step: m.step,
                eval: m.eval,
                key: m.key,
                dtype: m.dtype,
                shape: m.shape,
                fidelity: m.fidelity,
                codec: m.payload.map(|p| p.codec),
                stored_bytes: e.stored_bytes(),
                summary: m.summary,
                sketch_k: m.sketch.map(|s| s.values.len()),
            }),
            Err(err) => out
                .damaged
                .push(format!("{}: {}", e.id(), damage_line(&err))),
        }
    }
    out
}
