//! `sdtrace demo --check` end to end (about a minute on two cores: the two 704×704 recordings):
//! both verdicts as expected, the card pair's boundary as the noise diagnosis computes it, and
//! plain progress lines when stderr is not a terminal (here a pipe): no carriage returns, no
//! escape sequences.

mod common;

use common::sdtrace;

#[test]
fn demo_checks_its_verdicts_and_logs_plain_lines() {
    let dir = tempfile::tempdir().unwrap();
    let o = sdtrace()
        .arg("demo")
        .arg("--dir")
        .arg(dir.path().join("demo"))
        .arg("--check")
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(!err.contains('\r') && !err.contains('\x1b'), "{err:?}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("  [1/4] emulated GTX 1070") && l.contains(": step 1/1 (")),
        "{err}"
    );
    assert!(err.contains("t4.sdt\n"), "{err}");
    assert!(out.contains("The card pair (same settings, different GPUs): noise/RNG"));
    assert!(out.contains("The precision pair (same noise, f32 vs f16): numeric drift"));
    let footer = out.lines().last().unwrap_or_default();
    assert!(
        footer.contains("agrees up to 696x696 and differs from 704x704 on"),
        "{footer}"
    );
}
