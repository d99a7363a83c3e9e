//! `sdtrace sweep` and `sdtrace report --matrix` on the tiny model: one trace per size, the
//! same seed throughout, and the size × verdict table of two folders.

mod common;

use common::sdtrace;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn model() -> &'static PathBuf {
    static M: OnceLock<PathBuf> = OnceLock::new();
    M.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sweep-test-model");
        sdtrace::model::synth::write_model(&dir, sdtrace::model::synth::SynthSize::Tiny, 3)
            .unwrap();
        dir
    })
}

fn sweep(out: &Path, extra: &[&str]) -> (i32, String) {
    let o = sdtrace()
        .arg("sweep")
        .args([
            "--sizes",
            "64,72x64,96",
            "--steps",
            "2",
            "--prompt",
            "a house",
            "--negative",
            "blurry",
            "-q",
        ])
        .arg("--model")
        .arg(model())
        .args(extra)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn matrix(a: &Path, b: &Path, format: &str) -> (i32, String) {
    let o = sdtrace()
        .args(["report", "--matrix", "--format", format])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        o.stderr.is_empty() || o.status.code() == Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

#[test]
fn sweep_then_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let (a, a2, b) = (
        dir.path().join("a"),
        dir.path().join("a2"),
        dir.path().join("b"),
    );
    // No seed given: one random seed serves every size, and is recorded.
    let (c, err) = sweep(&a, &[]);
    assert_eq!(c, 0, "{err}");
    let seed = |p: &Path| {
        sdtrace::trace::TraceReader::open(p)
            .unwrap()
            .header()
            .settings
            .seed
            .unwrap()
    };
    let s = seed(&a.join("64x64.sdt"));
    for name in ["72x64.sdt", "96x96.sdt"] {
        assert_eq!(seed(&a.join(name)), s, "{name}");
        assert!(a.join(name).with_extension("png").is_file());
    }
    let s = s.to_string();
    assert_eq!(sweep(&a2, &["--seed", &s]).0, 0);
    let (c, err) = sweep(&b, &["--seed", &s, "--perturb", "unet.mid_block@1=1e-2"]);
    assert_eq!(c, 0, "{err}");
    let end = sdtrace::trace::TraceReader::open(b.join("96x96.sdt"))
        .unwrap()
        .run_end()
        .cloned()
        .unwrap();
    assert!(end.nonfinite.is_empty(), "{:?}", end.nonfinite);
    let (c, out) = matrix(&a, &a2, "text");
    assert_eq!(c, 0, "{out}");
    assert!(out.contains("3 of 3 sizes identical (exit 0)"), "{out}");
    let (c, out) = matrix(&a, &b, "text");
    assert_eq!(c, 1, "{out}");
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("numeric drift"))
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    // Ordered by area: 64x64, 72x64, 96x96.
    assert!(
        lines[0].starts_with("64x64 ")
            && lines[1].starts_with("72x64 ")
            && lines[2].starts_with("96x96 "),
        "{out}"
    );
    assert!(
        lines[0].contains("step 1 unet.mid_block") && lines[0].contains("PSNR"),
        "{out}"
    );
    let (c, out) = matrix(&a, &b, "json");
    assert_eq!(c, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["rows"].as_array().unwrap().len(), 3);
    assert_eq!(v["rows"][2]["size"], serde_json::json!([96, 96]));
    assert_eq!(v["rows"][2]["first_non_identical"], "step 1 unet.mid_block");
    // A folder with one trace less: the table says so, and is incomplete (exit 4).
    std::fs::remove_file(b.join("96x96.sdt")).unwrap();
    let (c, out) = matrix(&a, &b, "text");
    assert!(out.contains("only in A (not compared): 96x96.sdt"), "{out}");
    assert_eq!(c, 4, "{out}");
}

#[test]
fn sweep_and_matrix_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s");
    let (c, err) = sweep(&out, &["--size", "64x64"]);
    assert_eq!(c, 2, "{err}");
    assert!(err.contains("--sizes"), "{err}");
    let (c, err) = sweep(&dir.path().join("x.sdt"), &[]);
    assert_eq!(c, 2, "{err}");
    assert!(err.contains("folder"), "{err}");
    // -o is a folder: an existing file is refused and left alone.
    let file = dir.path().join("traces");
    std::fs::write(&file, b"keep").unwrap();
    let (c, err) = sweep(&file, &[]);
    assert_eq!(c, 2, "{err}");
    assert!(err.contains("is a file") && err.contains("folder"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    let help = sdtrace().args(["sweep", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("-o, --output <DIR>") && help.contains("Folder for the traces"),
        "{help}"
    );
    assert!(!help.contains("Trace file to write"), "{help}");
    let o = sdtrace()
        .args(["sweep", "--sizes", "500", "-o"])
        .arg(&out)
        .arg("--model")
        .arg(model())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("multiple of 8"));
    std::fs::create_dir_all(&out).unwrap();
    let (c, err) = matrix(&out, &out, "text");
    assert_eq!(c, 2, "{err}");
    assert!(err.contains("no .sdt traces"), "{err}");
}

/// An infotext without a generator is refused before the folder is made, whatever the seed.
#[test]
fn sweep_refuses_an_infotext_without_a_generator_before_any_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("runs");
    let text = "a house\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 64x64";
    let (c, err) = sweep(&out, &["--params", text, "--seed", "5"]);
    assert_eq!(c, 2, "{err}");
    assert!(
        err.contains("no RNG field") && err.contains("--card") && err.contains("--rng torch-cpu"),
        "{err}"
    );
    assert!(!out.exists());
}
