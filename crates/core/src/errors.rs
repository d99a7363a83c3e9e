//! How an error is told to a person: its message, then each cause in its `source()` chain,
//! joined by `: `, each said once.
//!
//! The invariant this relies on, kept by every error type of the workspace: a message never
//! repeats its own source (no `{source}` in an `#[error]` string next to a `#[source]` field);
//! a wrapper that adds nothing is `#[error(transparent)]`. So the chain, walked in full, names
//! every cause exactly once, and every renderer — the command line's `error:` line, the Python
//! extension's exceptions, a failed run's reason in its trace — uses [`chain_text`].

use std::error::Error;

/// `e`'s message followed by each cause of its chain: `x.sdt: cannot open trace: No such file
/// or directory (os error 2)`.
pub fn chain_text(e: &(dyn Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TraceError;

    #[test]
    fn an_io_error_is_named_once_after_the_file() {
        let e = TraceError::Io {
            path: "x.sdt".into(),
            op: "cannot open trace",
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        };
        assert_eq!(chain_text(&e), "x.sdt: cannot open trace: gone");
        let wrapped = crate::analysis::AnalysisError::from(e);
        assert_eq!(chain_text(&wrapped), "x.sdt: cannot open trace: gone");
    }
}
