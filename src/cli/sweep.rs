//! `sdtrace sweep`: the original report's experiment — the same generation at a series of image
//! sizes, one trace per size in one folder (`832x832.sdt`, …), to compare with another
//! machine's folder by `sdtrace report --matrix`.

use super::record::{RecordArgs, stop_flag};
use anyhow::{Context, Result, bail};
use clap::Args;
use sdtrace::exit::ExitStatus;
use std::sync::atomic::Ordering;
use std::time::Instant;

const SWEEP_TEXT: &str = "\
The record flags apply to every run; -o DIR names a folder (created if missing; an existing file
is refused), which gets one WxH.sdt (and WxH.png) per size. One seed serves every run (a random
one is picked once when none is given).";

/// Most sizes one sweep records.
const MAX_SIZES: usize = 256;

/// The help text after the flags: the `--sizes` grammar, then the sweep's own notes.
pub fn help() -> String {
    format!("{}\n\n{SWEEP_TEXT}", sdtrace::pipeline::SIZES_HELP)
}

/// Flags of `sdtrace sweep`.
#[derive(Args, Debug)]
pub struct SweepArgs {
    /// Image sizes, e.g. 384..1024/64 or 512,576,832x640 (see below)
    #[arg(long, value_name = "SIZES")]
    sizes: String,
    #[command(flatten)]
    record: RecordArgs,
}

impl SweepArgs {
    /// The record flags every run shares.
    pub fn record(&self) -> &RecordArgs {
        &self.record
    }
}

pub fn run(args: SweepArgs) -> Result<ExitStatus> {
    let sizes = sdtrace::pipeline::parse_sizes(&args.sizes, MAX_SIZES)
        .map_err(|e| anyhow::anyhow!("--sizes {e}"))?;
    let runs = args.record.sweep_runs(&sizes)?;
    let dir = args.record.output();
    if dir.extension().is_some_and(|e| e == "sdt") {
        bail!(
            "sweep -o {}: names a folder for the traces, not a .sdt file",
            dir.display()
        );
    }
    if dir.exists() && !dir.is_dir() {
        bail!(
            "sweep -o {}: is a file; -o names a folder for the traces (one WxH.sdt per size)",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("sweep -o {}", dir.display()))?;
    let started = Instant::now();
    let n = runs.len();
    for (i, run) in runs.into_iter().enumerate() {
        let (w, h) = sizes[i];
        eprintln!("sweep {}/{n}: {w}x{h} → {}", i + 1, run.output().display());
        let status = super::record::run(run)?;
        if status != ExitStatus::Success {
            eprintln!("sweep stopped at {w}x{h}; the traces written so far are valid");
            return Ok(status);
        }
        if stop_flag().load(Ordering::SeqCst) {
            eprintln!("sweep stopped after {w}x{h} (Ctrl-C or SIGTERM)");
            return Ok(ExitStatus::Incomplete);
        }
    }
    eprintln!(
        "sweep done: {n} traces in {} ({:.1} s); compare with another machine's folder: sdtrace report --matrix {} OTHER",
        dir.display(),
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(ExitStatus::Success)
}
