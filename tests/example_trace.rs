//! `traces/example.sdt`, the trace README uses, is exactly what the generator below writes.
//! Regenerate it after a deliberate format or generator change with:
//!
//!     SDTRACE_REGENERATE=1 cargo test --test example_trace

mod common;

use std::path::Path;

#[test]
fn committed_example_trace_is_current() {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("traces/example.sdt");
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("example.sdt");
    common::write_mini_run(&fresh, 4, 42);
    let fresh_bytes = std::fs::read(&fresh).unwrap();
    assert!(
        fresh_bytes.len() < 1 << 20,
        "the example trace must stay well under 1 MB"
    );
    if std::env::var_os("SDTRACE_REGENERATE").is_some() {
        std::fs::write(&committed, &fresh_bytes).unwrap();
    }
    let old = std::fs::read(&committed).unwrap_or_default();
    assert!(
        old == fresh_bytes,
        "traces/example.sdt is stale; regenerate it with `SDTRACE_REGENERATE=1 cargo test --test example_trace`"
    );
}
