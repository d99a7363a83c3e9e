//! The `sdtrace` binary as a user runs it: output, files written, exit codes, error messages.

mod common;

use common::sdtrace;

use assert_cmd::Command;
use std::path::{Path, PathBuf};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("traces/example.sdt")
}

fn stdout(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Run expecting exit code 2; returns stderr.
fn fails(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn info_shows_header_steps_keys_and_bytes() {
    let text = stdout(sdtrace().arg("info").arg(example()));
    for want in [
        "status    complete",
        "seed        1744694513",
        "records   36",
        "steps     4 (0..=3)",
        "unet",
        "stored by fidelity",
        "full",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let verified = stdout(sdtrace().args(["info", "--verify"]).arg(example()));
    assert!(
        verified.contains("verified  all checksums of 36 records"),
        "{verified}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&stdout(sdtrace().args(["info", "--json"]).arg(example()))).unwrap();
    assert_eq!(json["records"], 36);
    assert_eq!(json["integrity"]["complete"], true);
    assert_eq!(json["header"]["settings"]["seed"], 1_744_694_513u64);
    assert_eq!(json["by_fidelity"]["full"]["records"], 24);
}

#[test]
fn ls_filters_and_json() {
    let text = stdout(
        sdtrace()
            .args(["ls", "--key", "sampler.*", "--step", "2"])
            .arg(example()),
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + 4, "{text}");
    assert!(lines[0].starts_with("order") && lines.iter().skip(1).all(|l| l.contains("sampler.")));
    let json: serde_json::Value = serde_json::from_str(&stdout(
        sdtrace()
            .args(["ls", "--json", "--key", "noise.*"])
            .arg(example()),
    ))
    .unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["key"], "noise.initial");
    assert_eq!(rows[0]["step"], serde_json::Value::Null);
    assert_eq!(rows[0]["shape"], serde_json::json!([1, 4, 8, 8]));
    assert_eq!(rows[0]["summary"]["count"], 256);
    assert_eq!(
        rows[0]["summary"]["log2_hist"].as_array().unwrap().len(),
        64
    );
}

#[test]
fn export_npy_and_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("noise.npy");
    sdtrace()
        .args(["export"])
        .arg(example())
        .args(["noise.initial", "-o"])
        .arg(&npy)
        .assert()
        .success();
    let b = std::fs::read(&npy).unwrap();
    assert_eq!(&b[..6], b"\x93NUMPY");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    assert!(
        std::str::from_utf8(&b[10..10 + hlen])
            .unwrap()
            .contains("'shape': (1, 4, 8, 8)")
    );
    assert_eq!(b.len() - 10 - hlen, 256 * 4);

    let st = dir.path().join("denoised.safetensors");
    sdtrace()
        .args(["export"])
        .arg(example())
        .args(["sampler.denoised", "--step", "3", "--output"])
        .arg(&st)
        .assert()
        .success();
    let bytes = std::fs::read(&st).unwrap();
    let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(t.tensor("sampler.denoised").unwrap().shape(), &[1, 4, 8, 8]);
    // Leaves no temporary files behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn export_errors_say_how_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.npy");
    let e = fails(
        sdtrace()
            .arg("export")
            .arg(example())
            .args(["unet.conv_in", "--step", "1", "-o"])
            .arg(&out),
    );
    assert!(
        e.contains("fidelity 'sketch'") && e.contains("unet.conv_in=full"),
        "{e}"
    );
    let e = fails(
        sdtrace()
            .arg("export")
            .arg(example())
            .args(["sampler.x", "-o"])
            .arg(&out),
    );
    assert!(e.contains("--step 0"), "{e}");
    let e = fails(
        sdtrace()
            .arg("export")
            .arg(example())
            .args(["nope", "-o"])
            .arg(&out),
    );
    assert!(
        e.contains("no record with key 'nope'") && e.contains("sdtrace ls"),
        "{e}"
    );
    let e = fails(
        sdtrace()
            .arg("export")
            .arg(example())
            .args(["noise.initial", "-o"])
            .arg(dir.path().join("x.pt")),
    );
    assert!(e.contains(".npy or .safetensors"), "{e}");
    let e = fails(
        sdtrace()
            .arg("export")
            .arg(example())
            .args(["misc.bf16", "-o"])
            .arg(&out),
    );
    assert!(e.contains("bfloat16"), "{e}");
    assert!(!out.exists());
}

#[test]
fn bad_input_exits_2_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.sdt");
    std::fs::write(&junk, b"hello world, certainly not a trace").unwrap();
    let e = fails(sdtrace().arg("info").arg(&junk));
    assert!(
        e.contains("junk.sdt") && e.contains("not an sdtrace trace"),
        "{e}"
    );
    let e = fails(sdtrace().arg("ls").arg(dir.path().join("missing.sdt")));
    assert!(e.contains("missing.sdt"), "{e}");
    fails(sdtrace().args(["info", "--bogus-flag"]).arg(example()));
    fails(sdtrace().args(["ls", "--step", "minus-one"]).arg(example()));
    fails(&mut sdtrace());
}

#[test]
fn truncated_trace_reports_survivors() {
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.sdt");
    let b = std::fs::read(example()).unwrap();
    std::fs::write(&cut, &b[..b.len() * 2 / 3]).unwrap();
    let text = stdout(sdtrace().arg("info").arg(&cut));
    assert!(
        text.contains("TRUNCATED") && text.contains("complete records survived"),
        "{text}"
    );
    stdout(sdtrace().arg("ls").arg(&cut));
    // A damaged record frame fails ls (exit 2) with the byte offset; the other records are
    // still listed.
    let mut flipped = b.clone();
    let r = sdtrace::trace::TraceReader::open(example()).unwrap();
    let at = r.entries()[3].record_offset as usize + 20;
    flipped[at] ^= 0x10;
    std::fs::write(&cut, &flipped).unwrap();
    let e = fails(sdtrace().arg("ls").arg(&cut));
    assert!(e.contains("byte offset") && e.contains("checksum"), "{e}");
    let out = sdtrace()
        .args(["info", "--verify"])
        .arg(&cut)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("DAMAGED") && text.contains("checksum"),
        "{text}"
    );
    // A file that only ends early is truncated, not damaged: --verify passes.
    std::fs::write(&cut, &b[..b.len() * 2 / 3]).unwrap();
    stdout(sdtrace().args(["info", "--verify"]).arg(&cut));
}

#[test]
fn help_documents_exit_codes() {
    let text = stdout(sdtrace().arg("--help"));
    assert!(
        text.contains("Exit codes") && text.contains("2  bad usage"),
        "{text}"
    );
    // Each command lists exactly the codes it can return (generated from `ExitStatus`).
    let codes = |cmd: &str| -> Vec<String> {
        let help = stdout(sdtrace().args([cmd, "--help"]));
        let table = help
            .split("Exit codes:")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        table
            .lines()
            .filter_map(|l| l.strip_prefix("  "))
            .filter_map(|l| l.split(' ').next())
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect()
    };
    for (cmd, want) in [
        ("info", "0 2"),
        ("ls", "0 2"),
        ("export", "0 2"),
        ("synth", "0 2"),
        ("noise", "0 2"),
        ("explain", "0 1 2"),
        ("demo", "0 1 2"),
        ("report", "0 1 2 3 4"),
        ("diff", "0 2 130"),
        ("record", "0 2 4 5 6 130"),
        ("sweep", "0 2 4 5 6 130"),
    ] {
        assert_eq!(codes(cmd).join(" "), want, "{cmd} --help");
    }
}

#[test]
fn synth_writes_a_diffusers_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny");
    sdtrace()
        .args(["synth", "--out"])
        .arg(&out)
        .assert()
        .success();
    for f in [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "scheduler/scheduler_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let e = fails(
        sdtrace()
            .args(["synth", "--size", "huge", "--out"])
            .arg(&out),
    );
    assert!(
        e.contains("[possible values: tiny, sd15, sdxl-tiny, sdxl]"),
        "{e}"
    );
}

/// The error cases as a user meets them: each command line's exit code and its whole stderr,
/// compared with `tests/snapshots/errors.txt` (run with `SDTRACE_UPDATE_SNAPSHOTS=1` to rewrite
/// it, then review the diff). Runs in a scratch folder holding `example.sdt` and a copy with
/// one flipped byte, so the paths in the messages are stable.
#[test]
fn error_cases_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(example(), dir.path().join("example.sdt")).unwrap();
    let mut bytes = std::fs::read(example()).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(dir.path().join("damaged.sdt"), &bytes).unwrap();
    let cases: &[&[&str]] = &[
        &["diff", "nofile.sdt", "example.sdt"],
        &["report", "example.sdt", "nofile.sdt"],
        &["report", "--matrix", "nodir", "otherdir"],
        &["ls", "nofile.sdt"],
        &["info", "--verify", "damaged.sdt"],
        &["export", "example.sdt", "nokey", "out.npy"],
        &["export", "example.sdt", "image", "out.txt"],
        &["synth", "--out", "m", "--format", "bogus"],
        &["report", "example.sdt", "example.sdt", "--format", "xml"],
        &["diff", "example.sdt", "example.sdt", "--graphics", "sixel"],
        &["noise", "--compare", "cpu,t4", "--sizes", "512,640..576"],
        &[
            "sweep", "--sizes", "512,500", "-o", "out", "--model", "nomodel",
        ],
        &["explain", "nofile.png", "other.png"],
        &["report", "example.sdt", "example.sdt", "--map", "nomap.txt"],
        &["report", "example.sdt", "example.sdt", "--fail-on", "never"],
        &["export", "example.sdt", "image", "nodir/out.png"],
    ];
    let mut got = String::new();
    for args in cases {
        let out = sdtrace()
            .args(*args)
            .current_dir(dir.path())
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        got.push_str(&format!(
            "$ sdtrace {}\nexit {}\n{}\n",
            args.join(" "),
            out.status.code().map_or("signal".into(), |c| c.to_string()),
            String::from_utf8_lossy(&out.stderr).trim_end()
        ));
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/errors.txt");
    if std::env::var_os("SDTRACE_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        got == want,
        "stderr of the error cases changed; SDTRACE_UPDATE_SNAPSHOTS=1 rewrites {}\n--- got:\n{got}",
        path.display()
    );
}
