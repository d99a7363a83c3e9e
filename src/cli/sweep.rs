//! `sdtrace sweep`: the original report's experiment — the same generation at a series of image
//! sizes, one trace per size in one folder (`832x832.sdt`, …), to compare with another
//! machine's folder by `sdtrace report --matrix`.

use super::record::{RecordArgs, stop_flag};
use anyhow::{Context, Result, bail};
use clap::Args;
use sdtrace::exit::ExitStatus;
use std::sync::atomic::Ordering;
use std::time::Instant;

pub const SWEEP_HELP: &str = "\
Sizes: comma-separated items, each N (NxN), WxH, or A..B/STEP (squares from A to B, both
included, every STEP pixels): --sizes 384..1024/64, --sizes 512,576,832x640. Every size must be
a multiple of 8. The record flags apply to every run; -o DIR names a folder (created if
missing; an existing file is refused), which gets one WxH.sdt (and WxH.png) per size. One seed serves every run (a random one is picked once when
none is given).";

/// Flags of `sdtrace sweep`.
#[derive(Args, Debug)]
pub struct SweepArgs {
    /// Image sizes (see below)
    #[arg(long, value_name = "SIZES")]
    sizes: String,
    #[command(flatten)]
    record: RecordArgs,
}

/// Parse `--sizes`.
pub fn parse_sizes(text: &str) -> Result<Vec<(u32, u32)>, String> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Some((range, step)) = item.split_once('/') {
            let (a, b) = range
                .split_once("..")
                .ok_or_else(|| format!("'{item}': a range is A..B/STEP, e.g. 384..1024/64"))?;
            let num = |s: &str| {
                s.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("'{item}': '{s}' is not a number"))
            };
            let (a, b, step) = (num(a)?, num(b)?, num(step)?);
            if step == 0 || a > b {
                return Err(format!("'{item}': needs A <= B and STEP > 0"));
            }
            let n = (b - a) / step + 1;
            if n > 256 {
                return Err(format!("'{item}': {n} sizes; a sweep takes at most 256"));
            }
            for i in 0..n {
                let s = a + i * step;
                out.push(sdtrace::pipeline::parse_size(&format!("{s}x{s}"))?);
            }
        } else if item.contains(['x', 'X']) {
            out.push(sdtrace::pipeline::parse_size(item)?);
        } else {
            out.push(sdtrace::pipeline::parse_size(&format!("{item}x{item}"))?);
        }
    }
    if out.is_empty() {
        return Err(format!("'{text}': no sizes"));
    }
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|s| seen.insert(*s));
    Ok(out)
}

impl SweepArgs {
    /// The record flags every run shares.
    pub fn record(&self) -> &RecordArgs {
        &self.record
    }
}

pub fn run(args: SweepArgs) -> Result<ExitStatus> {
    let sizes = parse_sizes(&args.sizes).map_err(|e| anyhow::anyhow!("--sizes {e}"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_sizes("384..1024/64").unwrap().len(), 11);
        assert_eq!(
            parse_sizes("512, 576,832x640,512").unwrap(),
            vec![(512, 512), (576, 576), (832, 640)]
        );
        assert!(parse_sizes("500").unwrap_err().contains("multiple of 8"));
        assert!(parse_sizes("64..8/8").is_err());
        assert!(
            parse_sizes("8..100000/8")
                .unwrap_err()
                .contains("at most 256")
        );
        assert!(parse_sizes("a..b/8").is_err());
        assert!(parse_sizes("").is_err());
    }
}
