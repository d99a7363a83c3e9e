//! A comparison never passes what it did not compare: truncated files, interrupted and failed
//! runs, and records on one side only make `sdtrace report` say `incomplete` (exit 4) unless
//! `--allow-missing` allows them, in every format.

mod common;

use common::{sdtrace, write_mini_run, write_mini_run_with};
use sdtrace::trace::{RunEnd, RunStatus};
use std::path::{Path, PathBuf};

fn report(args: &[&str], a: &Path, b: &Path) -> (i32, String) {
    let out = sdtrace()
        .arg("report")
        .arg(a)
        .arg(b)
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// A whole mini run of 3 steps, and the folder it is in.
fn whole() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.sdt");
    write_mini_run(&a, 3, 11);
    (dir, a)
}

#[test]
fn the_same_trace_passes_against_itself() {
    let (_dir, a) = whole();
    let (code, out) = report(&[], &a, &a);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("verdict: identical — within tolerance (exit 0)"),
        "{out}"
    );
    assert!(!out.contains("missing"), "{out}");
}

#[test]
fn truncation_at_any_offset_is_incomplete_unless_allowed() {
    let (dir, a) = whole();
    let bytes = std::fs::read(&a).unwrap();
    let len = bytes.len();
    // Inside the records, just before the run-end/index, and one byte short of the footer.
    for cut in [len / 4, len / 2, 3 * len / 4, len - 200, len - 1] {
        let b = dir.path().join(format!("cut{cut}.sdt"));
        std::fs::write(&b, &bytes[..cut]).unwrap();
        let (code, out) = report(&[], &a, &b);
        assert_eq!(code, 4, "cut at {cut}: {out}");
        assert!(
            out.contains("verdict: incomplete — INCOMPLETE (exit 4)"),
            "{out}"
        );
        let flat = out.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(flat.contains("is a truncated or damaged file"), "{out}");
        assert!(out.contains("missing   B ("), "{out}");
        // The truncated side may be either.
        let (code, out) = report(&[], &b, &a);
        assert_eq!(code, 4, "cut at {cut}, reversed: {out}");
        assert!(out.contains("missing   A ("), "{out}");
        // JUnit: the verdict is the first case and fails with its explanation.
        let (code, xml) = report(&["--format", "junit"], &a, &b);
        assert_eq!(code, 4);
        let first = xml.lines().find(|l| l.contains("<testcase")).unwrap();
        assert!(
            first.contains("name=\"verdict\"")
                && first.contains(
                    "<failure message=\"incomplete: incomplete (exit 4)\">Incomplete: B ("
                ),
            "{first}"
        );
        assert!(xml.contains("name=\"trace B is a whole run\""), "{xml}");
        assert!(
            xml.contains("errors=\"0\"") && xml.contains(" time=\""),
            "{xml}"
        );
        // What pairs up is identical: with everything allowed it passes, and says what it let go.
        let (code, out) = report(&["--allow-missing", "all"], &a, &b);
        assert_eq!(code, 0, "cut at {cut}, allowed: {out}");
        assert!(out.contains("allowed   B ("), "{out}");
        let flat = out.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            flat.contains("Not compared, as --allow-missing all allows"),
            "{out}"
        );
    }
    // Records lost in the middle of the run say how far the truncated side got.
    let b = dir.path().join(format!("cut{}.sdt", len / 2));
    let (_, out) = report(&["--format", "json"], &a, &b);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verdict"]["class"], "incomplete");
    assert_eq!(v["verdict"]["compared"], "identical");
    let gap = &v["gaps"][0];
    assert_eq!(gap["side"], "B");
    assert!(gap["missing"].as_u64().unwrap() > 0);
    assert_eq!(gap["other_last_step"], 2);
    assert!(gap["last_step"].as_u64().unwrap_or(0) < 2, "{gap}");
    // A key list does not excuse a truncated file.
    let (code, _) = report(&["--allow-missing", "*"], &a, &b);
    assert_eq!(code, 4);
}

#[test]
fn interrupted_and_failed_runs_are_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.sdt");
    write_mini_run(&a, 3, 11);
    for (status, reason, want) in [
        (
            RunStatus::Interrupted,
            "interrupted (Ctrl-C)",
            "an interrupted run, 2 of 3 steps done (interrupted (Ctrl-C))",
        ),
        (
            RunStatus::Failed,
            "disk full",
            "a failed run, 2 of 3 steps done (disk full)",
        ),
    ] {
        // Two steps recorded of three planned, closed cleanly with a run-end that says so.
        let b = dir.path().join(format!("{}.sdt", status.name()));
        let end = RunEnd {
            status,
            reason: Some(reason.into()),
            steps_completed: Some(2),
            steps_planned: Some(3),
            ..RunEnd::default()
        };
        write_mini_run_with(&b, 3, 11, &[], end.clone());
        let (code, out) = report(&[], &a, &b);
        assert_eq!(code, 4, "{out}");
        let flat = out.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(flat.contains(want), "{out}");
        assert!(
            flat.contains("its last sampler step is 1 where A's is 2"),
            "{out}"
        );
        // Even when every record is there, a run that says it stopped early is incomplete.
        let c = dir.path().join(format!("{}-whole.sdt", status.name()));
        let end = RunEnd {
            steps_completed: Some(3),
            ..end
        };
        write_mini_run_with(&c, 3, 11, &[], end);
        let (code, out) = report(&[], &a, &c);
        assert_eq!(code, 4, "{out}");
        let (code, out) = report(&["--allow-missing", "all"], &a, &c);
        assert_eq!(code, 0, "{out}");
    }
}

#[test]
fn keys_filtered_out_on_one_side_fail_until_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.sdt"), dir.path().join("b.sdt"));
    write_mini_run(&a, 3, 11);
    write_mini_run_with(&b, 3, 11, &["unet.mid_block=off"], RunEnd::default());
    let (code, out) = report(&[], &a, &b);
    assert_eq!(code, 4, "{out}");
    let flat = out.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains("B (")
            && flat.contains("lacks 3 of A's records (first: step 0 unet.mid_block)"),
        "{out}"
    );
    let (_, xml) = report(&["--format", "junit"], &a, &b);
    assert!(
        xml.contains("name=\"unet.mid_block (missing in B)\" time=\"0.000\"><failure message=\"3 of A&apos;s records are missing in B, first at step 0 unet.mid_block\">"),
        "{xml}"
    );
    let (_, md) = report(&["--format", "markdown"], &a, &b);
    assert!(
        md.starts_with("## sdtrace report: ❌ incomplete (incomplete)"),
        "{md}"
    );
    // Allowing the key (or a glob over it) passes, and the report says what it allowed.
    for allow in ["unet.mid_block", "unet.*,vae.*"] {
        let (code, out) = report(&["--allow-missing", allow], &a, &b);
        assert_eq!(code, 0, "{allow}: {out}");
        let flat = out.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            flat.contains(&format!(
                "Not compared, as --allow-missing {allow} allows: B ("
            )),
            "{out}"
        );
        let (_, xml) = report(&["--format", "junit", "--allow-missing", allow], &a, &b);
        assert!(
            xml.contains("<skipped message=\"3 of A&apos;s records are missing in B"),
            "{xml}"
        );
    }
    // Another key does not cover it.
    let (code, _) = report(&["--allow-missing", "vae.*"], &a, &b);
    assert_eq!(code, 4);
    let (code, out) = report(&["--allow-missing", ","], &a, &b);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--allow-missing ','"), "{out}");
}

#[test]
fn image_thresholds_judge_the_final_image() {
    let (_dir, a) = whole();
    // Identical images pass any threshold; thresholds need the image criterion.
    let (code, out) = report(&["--min-psnr", "40", "--min-ssim", "0.99"], &a, &a);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("fail on image"), "{out}");
    let (code, out) = report(&["--min-psnr", "40", "--fail-on", "amplify"], &a, &a);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--fail-on image"), "{out}");
    let (code, out) = report(&["--min-ssim", "2"], &a, &a);
    assert_eq!(code, 2, "{out}");
}
