//! `sdtrace info` and `sdtrace ls`: one trace's header, counts and records; damaged parts are
//! named after everything that checks is printed (exit 2).

use super::{emit, json_text};
use anyhow::Result;
use sdtrace::escape::printable;
use sdtrace::exit::ExitStatus;
use sdtrace::inspect::{LsFilter, info_json, ls_json, ls_rows, render_info, render_ls, trace_info};
use sdtrace::trace::TraceReader;
use std::path::PathBuf;

/// Flags of `sdtrace info`.
#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// Trace file (.sdt)
    trace: PathBuf,
    /// Also read every record and payload and check all checksums
    #[arg(long)]
    verify: bool,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

/// Run `info`.
pub fn run_info(args: InfoArgs) -> Result<ExitStatus> {
    let InfoArgs {
        trace,
        verify,
        json,
    } = args;
    let r = TraceReader::open(&trace)?;
    let mut info = trace_info(&r);
    if verify {
        info.verify(&r);
    }
    emit(&if json {
        json_text(&info_json(&info))
    } else {
        render_info(&info)
    })?;
    if verify && !info.damage.is_empty() {
        eprintln!(
            "error: {}: damaged: {} part{} failed {} checks (listed above); the other records are readable",
            printable(&trace.display().to_string()),
            info.damage.len(),
            if info.damage.len() == 1 { "" } else { "s" },
            if info.damage.len() == 1 {
                "its"
            } else {
                "their"
            },
        );
        return Ok(ExitStatus::Usage);
    }
    Ok(ExitStatus::Success)
}

/// Flags of `sdtrace ls`.
#[derive(clap::Args, Debug)]
pub struct LsArgs {
    /// Trace file (.sdt)
    trace: PathBuf,
    /// Only keys matching this glob (`*` any run of characters, `?` one character)
    #[arg(long, value_name = "GLOB")]
    key: Option<String>,
    /// Only records of this sampler step
    #[arg(long, value_name = "N")]
    step: Option<u32>,
    /// Print a JSON array instead of text
    #[arg(long)]
    json: bool,
}

/// Run `ls`.
pub fn run_ls(args: LsArgs) -> Result<ExitStatus> {
    let LsArgs {
        trace,
        key,
        step,
        json,
    } = args;
    let r = TraceReader::open(&trace)?;
    let listing = ls_rows(&r, &LsFilter { key, step });
    emit(&if json {
        json_text(&ls_json(&listing.rows))
    } else {
        render_ls(&listing.rows)
    })?;
    let damaged: Vec<String> = r
        .damage()
        .iter()
        .map(|d| format!("byte offset {}: {}", d.offset, d.what))
        .chain(listing.damaged)
        .collect();
    if !damaged.is_empty() {
        eprintln!(
            "error: {}: damaged: {} part{} failed {} checks and {} not listed; the {} listed records check:",
            printable(&trace.display().to_string()),
            damaged.len(),
            if damaged.len() == 1 { "" } else { "s" },
            if damaged.len() == 1 { "its" } else { "their" },
            if damaged.len() == 1 { "is" } else { "are" },
            listing.rows.len()
        );
        for d in &damaged {
            eprintln!("  {}", printable(d));
        }
        return Ok(ExitStatus::Usage);
    }
    Ok(ExitStatus::Success)
}
