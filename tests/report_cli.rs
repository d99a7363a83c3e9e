//! `sdtrace report` as a user runs it: formats, files, exit codes, errors.

mod common;

use common::sdtrace;

use assert_cmd::Command;
use common::write_mini_run;
use std::path::Path;

fn code(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn identical_runs_exit_0_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.sdt"), dir.path().join("b.sdt"));
    write_mini_run(&a, 3, 11);
    write_mini_run(&b, 3, 11);
    let (c, out, err) = code(sdtrace().arg("report").arg(&a).arg(&b));
    assert_eq!(c, 0, "{err}");
    assert!(
        out.contains("verdict: identical — within tolerance (exit 0)"),
        "{out}"
    );
    for (fmt, want) in [
        ("json", "\"schema\": \"sdtrace.report/1\""),
        (
            "markdown",
            "## sdtrace report: ✅ within tolerance (identical)",
        ),
        ("junit", "<testsuites name=\"sdtrace report\""),
        ("html", "<!DOCTYPE html>"),
    ] {
        let file = dir.path().join(format!("r.{fmt}"));
        let (c, _, err) = code(
            sdtrace()
                .args(["report", "--format", fmt, "-o"])
                .arg(&file)
                .arg(&a)
                .arg(&b),
        );
        assert_eq!(c, 0, "{fmt}: {err}");
        assert!(err.contains("report written to"), "{err}");
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains(want), "{fmt}: {text}");
    }
}

#[test]
fn divergent_runs_exit_1_and_rejudge_from_saved() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.sdt"), dir.path().join("b.sdt"));
    // Different data seeds: every drawn tensor differs, the noise first.
    write_mini_run(&a, 3, 11);
    write_mini_run(&b, 3, 12);
    let saved = dir.path().join("cmp.json");
    let (c, out, _) = code(
        sdtrace()
            .arg("report")
            .arg(&a)
            .arg(&b)
            .arg("--save")
            .arg(&saved),
    );
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains("verdict: noise/RNG — DIVERGES (exit 1)"),
        "{out}"
    );
    // A noise verdict ends with the fix in each host's terms, and offers no looser tolerance.
    let flat = out.split_whitespace().collect::<Vec<_>>().join(" ");
    for want in [
        "Fix: draw the noise where it does not depend on the card.",
        "Settings → Sampler parameters → Random number generator source: CPU",
        "ComfyUI draws its noise on the CPU already",
        "--rng torch-cpu",
    ] {
        assert!(flat.contains(want), "missing {want:?} in {out}");
    }
    assert!(!flat.contains("would pass with"), "{out}");
    // Re-judged without the traces: the same verdict; with a huge tolerance, still the class
    // but within tolerance.
    let (c, out2, err) = code(sdtrace().arg("report").arg("--from").arg(&saved));
    assert_eq!(c, 1, "{err}");
    assert_eq!(out2, out);
    let (c, _, err) = code(
        sdtrace()
            .args([
                "report",
                "--tol",
                "rel=1e9,abs=1e9",
                "--tol-key",
                "misc.*=abs=1e9",
                "--tol-key",
                "image=abs=1e9",
                "--from",
            ])
            .arg(&saved),
    );
    assert_eq!(c, 0, "{err}");
}

#[test]
fn usage_errors_exit_2_and_name_the_flag_or_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.sdt");
    write_mini_run(&a, 2, 1);
    let missing = dir.path().join("missing.sdt");
    for (args, want) in [
        (vec!["--tol", "rel=abc"], "--tol 'rel=abc'"),
        (vec!["--tol-key", "rel=1"], "--tol-key 'rel=1'"),
        (vec!["--fail-on", "never"], "--fail-on"),
        (
            vec!["--format", "pdf"],
            "[possible values: text, json, markdown, junit, html]",
        ),
    ] {
        let (c, _, err) = code(sdtrace().arg("report").args(&args).arg(&a).arg(&a));
        assert_eq!(c, 2, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let (c, _, err) = code(sdtrace().arg("report").arg(&a).arg(&missing));
    assert_eq!(c, 2);
    assert!(err.contains("missing.sdt"), "{err}");
    let bad_map = dir.path().join("map.txt");
    std::fs::write(&bad_map, "no arrow here\n").unwrap();
    let (c, _, err) = code(
        sdtrace()
            .arg("report")
            .arg("--map")
            .arg(&bad_map)
            .arg(&a)
            .arg(&a),
    );
    assert_eq!(c, 2);
    assert!(err.contains("map.txt: line 1"), "{err}");
    let (c, _, err) = code(
        sdtrace()
            .arg("report")
            .arg("--from")
            .arg(Path::new("/nonexistent/cmp.json")),
    );
    assert_eq!(c, 2);
    assert!(err.contains("report --save"), "{err}");
    let (c, out, _) = code(sdtrace().args(["report", "--help"]));
    assert_eq!(c, 0);
    assert!(out.contains("3  the traces are not comparable"), "{out}");
}

#[test]
fn different_step_counts_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.sdt"), dir.path().join("b.sdt"));
    write_mini_run(&a, 3, 11);
    write_mini_run(&b, 2, 11);
    let (c, out, _) = code(sdtrace().arg("report").arg(&a).arg(&b));
    assert_eq!(c, 3, "{out}");
    assert!(out.contains("structural mismatch"), "{out}");
    assert!(out.contains("settings.steps 3 vs 2"), "{out}");
}

/// The HTML report's noise picture is read from both traces; noise kept without its payload
/// gives a note on stderr and a report that says why there is no picture.
#[test]
fn html_noise_picture_needs_both_payloads() {
    use sdtrace::DType;
    use sdtrace::probe::{Policy, Probe};
    use sdtrace::trace::{TraceWriter, WriterOptions};
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, capture: &str, tail: f64| {
        let path = dir.path().join(name);
        let w = TraceWriter::create(
            &path,
            &common::fixed_header("noise"),
            WriterOptions::default(),
        )
        .unwrap();
        let probe = Probe::new(w, Policy::from_spec(capture).unwrap());
        let mut vals: Vec<f64> = (0..256)
            .map(|i| ((i * 37 % 101) as f64 - 50.0) / 25.0)
            .collect();
        vals[200..].iter_mut().for_each(|v| *v = -*v + tail);
        common::observe(&probe, "noise.initial", DType::F32, &[1, 4, 8, 8], &vals);
        probe.finish().unwrap();
        path
    };
    let a = write("a.sdt", "light", 0.0);
    let b = write("b.sdt", "light", 0.5);
    let html = dir.path().join("r.html");
    let report = |x: &Path, y: &Path| {
        let (c, _, err) = code(
            sdtrace()
                .args(["report", "--format", "html", "-o"])
                .arg(&html)
                .arg(x)
                .arg(y),
        );
        (c, err, std::fs::read_to_string(&html).unwrap_or_default())
    };
    let (c, err, h) = report(&a, &b);
    assert_eq!(c, 1, "{err}");
    assert!(h.contains("(noise/RNG)"), "{h}");
    assert!(h.contains("alt=\"noise difference\""), "{err}");
    assert!(h.contains("56 of 256 elements differ"), "{h}");
    assert!(h.contains("<title>first difference: flat index 200</title>"));
    // Noise kept as a sketch in B: no picture, a note, the report still written.
    let s = write("s.sdt", "light,noise.*=sketch", 0.5);
    let (c, err, h) = report(&a, &s);
    assert_eq!(c, 1, "{err}");
    assert!(
        err.contains("no noise picture") && err.contains("without its payload"),
        "{err}"
    );
    assert!(h.contains("<h2>Noise") && h.contains("No picture"), "{h}");
    assert!(!h.contains("alt=\"noise difference\""));
}
