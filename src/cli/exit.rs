//! Exit statuses at the edge: the one total mapping from errors to [`ExitStatus`], and each
//! subcommand's "Exit codes:" help table, generated from the statuses that command can return.
//!
//! A command's `run` returns `Result<ExitStatus>`: `Ok` carries the status of a run that
//! finished (a verdict, an interrupted recording), `Err` is mapped by [`of`]. The tables below
//! are the only place a command's codes are described, so `synth --help` lists only what
//! `synth` can return.

use sdtrace::exit::{ExitStatus, table};
use sdtrace::pipeline::PipelineError;

/// The exit status of an error that ended a command: a recording that failed mid-run is 5 (6
/// when its trace could not be closed either); everything else — bad flags, unreadable or
/// damaged inputs, unwritable outputs — is 2.
pub fn of(e: &anyhow::Error) -> ExitStatus {
    e.chain()
        .find_map(|c| c.downcast_ref::<PipelineError>())
        .map_or(ExitStatus::Usage, pipeline)
}

/// The exit status of a pipeline error: [`ExitStatus::RunFailed`] for a run that failed after
/// its trace opened, [`ExitStatus::Unclosed`] when closing the trace failed too, otherwise
/// [`ExitStatus::Usage`] (nothing was recorded).
pub fn pipeline(e: &PipelineError) -> ExitStatus {
    match e {
        PipelineError::Run { .. } => ExitStatus::RunFailed,
        PipelineError::Unclosed { .. } => ExitStatus::Unclosed,
        _ => ExitStatus::Usage,
    }
}

use ExitStatus::{
    Diverged, Incomplete, Interrupted, NotComparable, RunFailed, Success, Unclosed, Usage,
};

/// `info` and `ls`: they read one trace.
pub const READ: &[(ExitStatus, &str)] = &[
    (Success, "success"),
    (
        Usage,
        "bad usage, or a trace that cannot be read or is damaged (ls and info --verify still\nprint every record that checks, then name the damaged ones)",
    ),
];

/// `synth` and `export`: they write one output.
pub const WRITE: &[(ExitStatus, &str)] = &[
    (Success, "success"),
    (
        Usage,
        "bad usage, an input that cannot be read, or an output that cannot be written",
    ),
];

/// `report`.
pub const REPORT: &[(ExitStatus, &str)] = &[
    (Success, "the traces agree within tolerance"),
    (
        Diverged,
        "the traces diverge (what counts is chosen by --fail-on)",
    ),
    (
        Usage,
        "bad usage, or an input file that cannot be read or is damaged",
    ),
    (
        NotComparable,
        "the traces are not comparable: different model, size, sampler, steps or shapes",
    ),
    (
        Incomplete,
        "incomplete: records on one side only, a truncated or damaged file (a record that fails\nits checks counts as missing), or a run that was interrupted, failed or never said it\nfinished (--allow-missing relaxes this; the report says so)",
    ),
];

/// `diff`.
pub const DIFF: &[(ExitStatus, &str)] = &[
    (Success, "quit with q (or Ctrl-c)"),
    (
        Usage,
        "bad usage, no terminal, or a trace that cannot be read",
    ),
    (Interrupted, "interrupted by SIGINT"),
];

/// `record`.
pub const RECORD: &[(ExitStatus, &str)] = &[
    (Success, "the run completed; trace and PNG written"),
    (
        Usage,
        "bad usage or model files, or the trace would not fit (nothing written); or, after a\ncomplete run, the PNG could not be written (the trace is complete; the message says so)",
    ),
    (
        Incomplete,
        "stopped early by Ctrl-C, SIGTERM or --stop-on-nan: the trace is valid and marked\ninterrupted",
    ),
    (
        RunFailed,
        "an error during the run: the trace is valid and marked failed",
    ),
    (
        Unclosed,
        "an error during the run, and the trace could not be closed either (a full disk): it\nholds every record written before the error (sdtrace reads it as truncated), but no\nrun-end and no index",
    ),
    (
        Interrupted,
        "a second Ctrl-C: quit at once (the trace is readable up to the last step)",
    ),
];

/// `sweep`.
pub const SWEEP: &[(ExitStatus, &str)] = &[
    (Success, "every run completed"),
    (Usage, "bad usage (nothing recorded)"),
    (
        Incomplete,
        "stopped by Ctrl-C, SIGTERM or --stop-on-nan (the traces so far are valid)",
    ),
    (
        RunFailed,
        "an error during a run (its trace is marked failed; the sweep stops)",
    ),
    (
        Unclosed,
        "an error during a run after which its trace could not be closed either (a full disk:\nit reads as truncated; the sweep stops)",
    ),
    (
        Interrupted,
        "a second Ctrl-C: quit at once (the trace being recorded is readable up to the last step)",
    ),
];

/// `demo`.
pub const DEMO: &[(ExitStatus, &str)] = &[
    (
        Success,
        "the demo ran (with --check: and both verdicts are the expected ones)",
    ),
    (
        Diverged,
        "--check: a verdict is not the expected one (printed)",
    ),
    (Usage, "bad usage, or --dir cannot be written"),
];

/// `explain`.
pub const EXPLAIN: &[(ExitStatus, &str)] = &[
    (Success, "the settings and the predicted noise agree"),
    (
        Diverged,
        "a setting differs, or the noise differs (or may differ: the cards are not known)",
    ),
    (
        Usage,
        "bad usage, or a file that is not a PNG or holds no generation parameters",
    ),
];

/// `noise`.
pub const NOISE: &[(ExitStatus, &str)] = &[
    (Success, "success"),
    (
        Usage,
        "bad usage, or a generator or file that cannot be used",
    ),
];

/// A command's help epilogue: its own text, then its exit-code table.
pub fn help(text: &str, rows: &[(ExitStatus, &str)]) -> String {
    if text.is_empty() {
        table(rows)
    } else {
        format!("{text}\n\n{}", table(rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_is_in_code_order_and_starts_with_success() {
        for rows in [
            READ, WRITE, REPORT, DIFF, RECORD, SWEEP, DEMO, EXPLAIN, NOISE,
        ] {
            assert_eq!(rows[0].0, Success);
            assert!(rows.windows(2).all(|w| w[0].0 < w[1].0));
            assert!(rows.iter().any(|r| r.0 == Usage), "every command can fail");
        }
    }

    #[test]
    fn errors_map_to_usage_unless_a_recording_failed() {
        assert_eq!(of(&anyhow::anyhow!("bad flag")), Usage);
        let io = std::io::Error::other("disk");
        assert_eq!(of(&anyhow::Error::from(io).context("-o x")), Usage);
        let run = |close: Option<&str>| {
            let source = Box::new(PipelineError::Setting("nan".into()));
            let trace = "t.sdt".into();
            match close {
                None => PipelineError::Run { trace, source },
                Some(c) => PipelineError::Unclosed {
                    trace,
                    source,
                    close: c.into(),
                },
            }
        };
        assert_eq!(of(&anyhow::Error::from(run(None))), RunFailed);
        assert_eq!(
            of(&anyhow::Error::from(run(Some("disk full"))).context("record -o t.sdt")),
            Unclosed
        );
    }
}
