//! Real processes dying mid-write: SIGKILL, and a file-size limit that makes writes fail
//! (as a full disk does). The child is this test binary re-run on an ignored helper test.

mod common;

use common::{encode, fixed_header};
use sdtrace::DType;
use sdtrace::probe::{Policy, Probe, TensorView};
use sdtrace::trace::{Integrity, TraceReader, TraceWriter, WriterOptions};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "SDTRACE_TEST_CHILD_TRACE";

/// Child side: writes steps of 64 KiB full records until killed, or until a write fails (then
/// prints the error and exits 3). Run only by the tests below.
#[test]
#[ignore = "helper process for the crash tests; they run it"]
fn child_writer() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let w = TraceWriter::create(&path, &fixed_header("child"), WriterOptions::default()).unwrap();
    let probe = Probe::new(w, Policy::preset("full").unwrap());
    let data = encode(DType::F32, &vec![0.25; 16 * 1024]);
    for step in 0..1_000_000u32 {
        if let Err(e) = probe.set_step(Some(step), 0) {
            eprintln!("child error: {e}");
            std::process::exit(3);
        }
        let view = TensorView::new(DType::F32, &[16, 1024], &data).unwrap();
        if let Err(e) = probe.tensor("unet.conv_in", view) {
            eprintln!("child error: {e}");
            std::process::exit(3);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn child(path: &std::path::Path) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", "child_writer", "--ignored", "--nocapture"])
        .env(CHILD_ENV, path);
    c
}

#[test]
fn sigkill_mid_write_leaves_every_complete_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("killed.sdt");
    let mut proc = child(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while std::fs::metadata(&path).map_or(0, |m| m.len()) < 2 << 20
        && t.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    proc.kill().unwrap(); // SIGKILL on Unix
    proc.wait().unwrap();
    let r = TraceReader::open(&path).unwrap();
    assert!(matches!(r.integrity(), Integrity::Recovered { .. }));
    assert!(
        r.entries().len() >= 10,
        "only {} records",
        r.entries().len()
    );
    r.verify().unwrap();
}

#[cfg(unix)]
#[test]
fn failing_writes_reach_the_caller_with_the_path_and_leave_a_valid_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("limited.sdt");
    // A 1 MiB file-size limit: writes past it fail with EFBIG (SIGXFSZ ignored), like a full disk.
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 1024; exec \"$0\" --exact child_writer --ignored --nocapture")
        .arg(exe)
        .env(CHILD_ENV, &path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");
    assert!(stderr.contains("limited.sdt"), "{stderr}");
    let r = TraceReader::open(&path).unwrap();
    assert!(!r.integrity().is_complete());
    assert!(!r.entries().is_empty());
    r.verify().unwrap();
}
