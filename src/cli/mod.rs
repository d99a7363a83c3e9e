//! The subcommands, one module each with its `Args` and `run`: flags, terminal output and exit
//! codes at the edge; and the output helpers they share.

pub mod demo;
pub mod diff;
pub mod exit;
pub mod explain;
pub mod export;
pub mod inspect;
pub mod judge;
pub mod noise;
pub mod record;
pub mod report;
pub mod sweep;
pub mod synth;
pub mod values;

use anyhow::{Context, Result};
use sdtrace::escape::printable;
use std::io::Write;

/// An error for the terminal: its chain of causes, each said once (an I/O error's text is
/// often part of the message that wraps it), with control characters escaped (messages quote
/// keys and paths from the inputs; the message's own line breaks stay).
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    let lines: Vec<_> = text.split('\n').map(printable).collect();
    lines.join("\n")
}

/// Print to stdout; a closed pipe (`| head`) is not an error.
pub fn emit(text: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("cannot write to stdout"),
    }
}

pub fn json_text(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}
