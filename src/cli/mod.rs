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

/// An error for the terminal: its chain of causes, each said once
/// ([`sdtrace::errors::chain_text`]), with control characters escaped (messages quote keys and
/// paths from the inputs; the message's own line breaks stay).
pub fn error_text(e: &anyhow::Error) -> String {
    let text = sdtrace::errors::chain_text(e.as_ref());
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

#[cfg(test)]
mod tests {
    /// The help texts are generated from the tables that implement them and wrapped.
    #[test]
    fn help_texts_come_from_their_tables() {
        let report = super::report::help().replace('\n', " ");
        assert!(
            report.contains(&sdtrace::analysis::defaults_text()),
            "{report}"
        );
        let diff = super::diff::help();
        for item in sdtrace::tui::keys::summary() {
            assert!(diff.replace('\n', " ").contains(&item), "{item}: {diff}");
        }
        assert!(diff.contains("q/Ctrl-c quit"), "{diff}");
        for text in [super::report::help(), diff] {
            assert!(text.lines().all(|l| l.chars().count() <= 96), "{text}");
        }
        assert_eq!(sdtrace::report::wrap("a bb  ccc", 4), "a bb\nccc");
    }
}
