//! The traces README uses. `traces/example.sdt` is exactly what the generator below writes;
//! `traces/f32.sdt` and `traces/f16.sdt` are recordings of the tiny synthetic model that differ
//! only in precision, and must keep giving the verdict README shows (recordings depend on the
//! CPU's kernels, so their bytes are not compared). Regenerate all three after a deliberate
//! format, generator or model change with:
//!
//!     SDTRACE_REGENERATE=1 cargo test --test example_trace

mod common;

use common::sdtrace;
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

/// Record the example pair with the binary, as README's regeneration command says.
fn record_pair(dir: &Path) {
    let model = common::tiny_model("example_trace");
    for dtype in ["f32", "f16"] {
        sdtrace()
            .arg("record")
            .arg("--model")
            .arg(model)
            .args([
                "--prompt",
                "a portrait of an old sea captain, oil painting, dramatic light",
                "--negative",
                "blurry, lowres",
                "--prompt-syntax",
                "plain",
                "--steps",
                "4",
                "--seed",
                "1744694513",
                "--rng",
                "torch-cuda:gtx1070",
                "--size",
                "64x64",
                "--threads",
                "1",
                "--dtype",
                dtype,
                "--no-png",
                "-q",
                "-o",
            ])
            .arg(dir.join(format!("{dtype}.sdt")))
            .assert()
            .success();
    }
}

#[test]
fn committed_precision_pair_gives_the_documented_verdict() {
    let traces = Path::new(env!("CARGO_MANIFEST_DIR")).join("traces");
    if std::env::var_os("SDTRACE_REGENERATE").is_some() {
        record_pair(&traces);
    }
    for name in ["f32.sdt", "f16.sdt"] {
        let len = std::fs::metadata(traces.join(name)).unwrap().len();
        assert!(len < 1 << 20, "traces/{name} must stay under 1 MiB ({len})");
        sdtrace()
            .args(["info", "--verify"])
            .arg(traces.join(name))
            .assert()
            .success();
    }
    let o = sdtrace()
        .args(["report", "--format", "json"])
        .arg(traces.join("f32.sdt"))
        .arg(traces.join("f16.sdt"))
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verdict"]["class"], "numeric-drift", "{v}");
    let source = v["localisation"]["source"]["label"]
        .as_str()
        .unwrap_or_default();
    assert!(
        source.starts_with("text_encoder.encoder.layers.0"),
        "{source}"
    );
    assert_eq!(v["header_diffs"][0]["field"], "settings.dtype", "{v}");
    let summary = v["verdict"]["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("Final images visually identical (PSNR"),
        "{summary}"
    );
    // Judged by the final image alone: it passes a PSNR/SSIM bar it reaches, fails one it
    // does not, and says by how much.
    let image = |args: &[&str]| {
        let o = sdtrace()
            .arg("report")
            .arg(traces.join("f32.sdt"))
            .arg(traces.join("f16.sdt"))
            .args(args)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let (code, out) = image(&["--min-psnr", "45", "--min-ssim", "0.999"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = image(&["--fail-on", "image", "--min-psnr", "90"]);
    assert_eq!(code, Some(1), "{out}");
    let flat = out.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains("Fails: the final image misses its threshold: PSNR"),
        "{out}"
    );
    assert!(flat.contains("dB < 90 dB"), "{out}");
    // The text encoder's two calls (negative prompt first) are told apart by name.
    assert!(
        out.contains("text_encoder.encoder.layers.1 (uncond)"),
        "{out}"
    );
}
