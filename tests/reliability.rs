//! Damaged inputs and hostile environments, one test per finding of the reliability campaign
//! (issue #23): a huge key, FIFOs and devices, `--threads`, `--perturb` targets, a full disk,
//! terminal escapes in keys, one damaged record, SIGTERM, and infotext/size refusals. Every
//! damaged input is built here from a trace this test writes, then corrupted.

mod common;

use common::{Rng, encode, fixed_header, sdtrace, tiny_model, write_mini_run};
use sdtrace::DType;
use sdtrace::probe::{TensorView, capture};
use sdtrace::trace::{Codec, Fidelity, RunStatus, TraceReader, TraceWriter, WriterOptions};
use std::path::Path;

/// A small complete trace whose records are keyed by `keys` (steps 0, 1, …), full f32 payloads.
fn write_keys(path: &Path, keys: &[(&str, Option<u32>)]) {
    let mut w = TraceWriter::create(path, &fixed_header("keys"), WriterOptions::default()).unwrap();
    let mut rng = Rng(5);
    for &(key, step) in keys {
        let vals: Vec<f64> = (0..16).map(|_| rng.normal()).collect();
        let data = encode(DType::F32, &vals);
        let view = TensorView::new(DType::F32, &[16], &data).unwrap();
        w.write(capture(key, step, 0, view, Fidelity::Full, Codec::Raw, 8))
            .unwrap();
    }
    w.finish().unwrap();
}

fn stdout_of(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).into_owned()
}

fn stderr_of(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).into_owned()
}

/// Item 1: a key of 70 000 bytes is listed (it once panicked in the column padding).
#[test]
fn a_key_over_65535_bytes_is_listed_without_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.sdt");
    let long = "k".repeat(70_000);
    write_keys(&path, &[("noise.initial", None), (&long, Some(0))]);
    let a = sdtrace().arg("ls").arg(&path).assert().success();
    assert!(stdout_of(&a).contains(&long));
    sdtrace().arg("info").arg(&path).assert().success();
}

/// Item 2: a FIFO (no writer) and a device are refused at once, by readers and the writer.
#[cfg(unix)]
#[test]
fn fifos_and_devices_are_refused_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("f.sdt");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let good = dir.path().join("good.sdt");
    write_mini_run(&good, 2, 1);
    let t = std::time::Duration::from_secs(20);
    for args in [
        vec!["info".into(), fifo.clone()],
        vec!["info".into(), "--verify".into(), fifo.clone()],
        vec!["ls".into(), fifo.clone()],
        vec![
            "export".into(),
            fifo.clone(),
            "image".into(),
            dir.path().join("x.npy"),
        ],
        vec!["report".into(), good.clone(), fifo.clone()],
        vec!["report".into(), good.clone(), "/dev/zero".into()],
        vec![
            "report".into(),
            good.clone(),
            good.clone(),
            "--map".into(),
            fifo.clone(),
        ],
    ] {
        let a = sdtrace().args(&args).timeout(t).assert().code(2);
        let err = stderr_of(&a);
        assert!(
            err.contains("FIFO") || err.contains("character device"),
            "{args:?}: {err}"
        );
    }
    let a = sdtrace()
        .args(["record", "--model"])
        .arg(tiny_model("reliability-model"))
        .args(["--steps", "1", "--size", "64x64", "--prompt", "x", "-o"])
        .arg(&fifo)
        .timeout(t)
        .assert()
        .code(2);
    assert!(stderr_of(&a).contains("FIFO (named pipe), not a regular file"));
    let rng = format!("file:{}", fifo.display());
    let a = sdtrace()
        .args([
            "noise", "--rng", &rng, "--seed", "1", "--size", "64x64", "-o",
        ])
        .arg(dir.path().join("n.npy"))
        .timeout(t)
        .assert()
        .code(2);
    assert!(stderr_of(&a).contains("FIFO"), "{}", stderr_of(&a));
}

/// Item 3: `--threads` above 4 per logical CPU (and 0) is refused with the limit.
#[test]
fn threads_beyond_four_per_cpu_are_refused() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for n in [0, 4 * cpus + 1, 100_000] {
        let a = sdtrace()
            .args(["record", "--model", "nowhere", "--threads"])
            .arg(n.to_string())
            .args(["-o", "never.sdt"])
            .assert()
            .code(2);
        let err = stderr_of(&a);
        assert!(err.contains("--threads"), "{err}");
        if n > 0 {
            assert!(err.contains(&format!("at most {}", 4 * cpus)), "{err}");
        }
    }
    assert!(!Path::new("never.sdt").exists());
}

/// Item 4: a perturbation no probe point matches is refused before anything is written.
#[test]
fn perturbations_of_unknown_keys_or_steps_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.sdt");
    for (p, want) in [
        (
            "unet.nope@0=0.1",
            "no probe point of this model is named 'unet.nope'",
        ),
        (
            "sampler.x@99=0.1",
            "step 99 is past this run's last step (3",
        ),
        ("sampler.x=0.1", "only recorded inside the sampling loop"),
        (
            "noise.initial@1=0.1",
            "outside the sampling loop: leave out @STEP",
        ),
    ] {
        let a = sdtrace()
            .args(["record", "--model"])
            .arg(tiny_model("reliability-model"))
            .args([
                "--prompt", "a cat", "--seed", "1", "--steps", "3", "--size", "64x64",
            ])
            .args(["--perturb", p, "-q", "-o"])
            .arg(&out)
            .assert()
            .code(2);
        let err = stderr_of(&a);
        assert!(
            err.contains(&format!("--perturb {p}")) && err.contains(want),
            "{err}"
        );
        assert!(!out.exists(), "{p}: a trace was written");
    }
    // A glob that matches is accepted.
    sdtrace()
        .args(["record", "--model"])
        .arg(tiny_model("reliability-model"))
        .args([
            "--prompt", "a cat", "--seed", "1", "--steps", "2", "--size", "64x64",
        ])
        .args([
            "--perturb",
            "unet.mid_block*@1=1e-3",
            "-q",
            "--no-png",
            "-o",
        ])
        .arg(&out)
        .assert()
        .success();
}

/// Item 5: a disk that fills mid-run (here: a file size limit) gives exit 6 and says what is
/// on disk; the file reads as a truncated trace. The label is not "conditioning:".
#[cfg(unix)]
#[test]
fn a_full_disk_mid_run_exits_6_and_leaves_a_readable_prefix() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("full.sdt");
    let mut cmd = std::process::Command::new(common::sdtrace_bin());
    cmd.args(["record", "--model"])
        .arg(tiny_model("reliability-model"))
        .args([
            "--prompt", "a cat", "--seed", "1", "--steps", "20", "--size", "64x64",
        ])
        .args(["-q", "--no-png", "-o"])
        .arg(&out);
    // SAFETY: between fork and exec only async-signal-safe calls (setrlimit, signal) run,
    // touching no memory of the parent but the stack value passed by pointer.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 300 << 10,
                rlim_max: 300 << 10,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
            // Writes past the limit then fail with EFBIG, as on a full disk, instead of
            // killing the process.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let a = assert_cmd::Command::from_std(cmd).assert().code(6);
    let err = stderr_of(&a);
    assert!(
        err.contains("could not be closed either") && err.contains("no run-end and no index"),
        "{err}"
    );
    assert!(!err.contains("conditioning:"), "{err}");
    let r = TraceReader::open(&out).unwrap();
    assert!(!r.integrity().is_complete());
    assert!(r.entries().len() > 10, "{}", r.entries().len());
    assert!(r.damage().is_empty(), "{:?}", r.damage());
    r.verify().unwrap();
}

/// Item 6: control characters in keys and header strings are escaped in ls, info and the
/// text and Markdown reports; JSON carries them JSON-escaped.
#[test]
fn escape_sequences_in_keys_never_reach_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let evil = "evil\u{1b}[2J\u{1b}[31mRED\nfake line\u{7}";
    let a = dir.path().join("a.sdt");
    let b = dir.path().join("b.sdt");
    write_keys(&a, &[("noise.initial", None), (evil, Some(0))]);
    write_keys(&b, &[("noise.initial", None)]);
    let runs: [(&[&str], Option<i32>); 5] = [
        (&["ls"], Some(0)),
        (&["info"], Some(0)),
        (&["info", "--verify"], Some(0)),
        (&["report", "B", "A"], Some(4)),
        (&["report", "--format", "markdown", "B", "A"], Some(4)),
    ];
    for (args, code) in runs {
        let mut cmd = sdtrace();
        for arg in args {
            match *arg {
                "A" => cmd.arg(&a),
                "B" => cmd.arg(&b),
                s => cmd.arg(s),
            };
        }
        if !args.contains(&"A") {
            cmd.arg(&a);
        }
        let out = cmd.assert().code(code.unwrap_or(0));
        let text = stdout_of(&out) + &stderr_of(&out);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}') && !text.contains("\nfake line"),
            "{args:?}: raw control characters in\n{text}"
        );
        if !args.contains(&"info") {
            assert!(text.contains("evil\\x1b[2J"), "{args:?}: {text}");
        }
    }
    let json = sdtrace().arg("ls").arg("--json").arg(&a).assert().success();
    assert!(stdout_of(&json).contains("evil\\u001b[2J"));
}

/// The record frame of `key` in `path`: (offset, length of the frame).
fn record_frame(path: &Path, key: &str, step: Option<u32>) -> (usize, usize) {
    let r = TraceReader::open(path).unwrap();
    let e = r.find(key, step, 0).unwrap();
    (e.record_offset as usize, e.record_len as usize)
}

/// Item 7: one flipped bit in one record: ls lists every other record and names the damaged
/// one (exit 2), info --verify exits 2, report treats it as missing (incomplete, exit 4).
#[test]
fn one_damaged_record_is_named_and_the_rest_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.sdt");
    let n = write_mini_run(&good, 3, 7) as usize;
    let bad = dir.path().join("bad.sdt");
    let mut bytes = std::fs::read(&good).unwrap();
    let (at, _) = record_frame(&good, "unet.mid_block", Some(1));
    bytes[at + 16 + 3] ^= 0x10;
    std::fs::write(&bad, &bytes).unwrap();

    let a = sdtrace().arg("ls").arg(&bad).assert().code(2);
    let listed = stdout_of(&a).lines().count() - 1;
    assert_eq!(listed, n - 1);
    let err = stderr_of(&a);
    assert!(
        err.contains("1 part failed its checks")
            && err.contains("step 1 eval 0 unet.mid_block")
            && err.contains(&format!("byte offset {at}"))
            && err.contains("checksum"),
        "{err}"
    );
    // A filter that leaves the damaged record out is not affected.
    sdtrace()
        .arg("ls")
        .arg(&bad)
        .args(["--key", "sampler.*"])
        .assert()
        .success();

    sdtrace().arg("info").arg(&bad).assert().success();
    let v = sdtrace()
        .args(["info", "--verify"])
        .arg(&bad)
        .assert()
        .code(2);
    let out = stdout_of(&v);
    assert!(
        out.contains(&format!("verified  {} of {n} records", n - 1)) && out.contains("DAMAGED"),
        "{out}"
    );
    sdtrace()
        .args(["info", "--verify"])
        .arg(&good)
        .assert()
        .success();

    let r = sdtrace()
        .arg("report")
        .arg(&good)
        .arg(&bad)
        .assert()
        .code(4);
    let text = stdout_of(&r);
    assert!(
        text.contains("verdict: incomplete") && text.contains("1 damaged record left out"),
        "{text}"
    );
    // Damaged payloads count the same way.
    let mut bytes = std::fs::read(&good).unwrap();
    let rd = TraceReader::open(&good).unwrap();
    let e = rd.find("sampler.x", Some(2), 0).unwrap().clone();
    let p = rd.read_meta(&e).unwrap().payload.unwrap();
    bytes[p.frame_offset as usize + 16 + 7] ^= 1;
    std::fs::write(&bad, &bytes).unwrap();
    sdtrace().arg("ls").arg(&bad).assert().success();
    sdtrace()
        .args(["info", "--verify"])
        .arg(&bad)
        .assert()
        .code(2);
    let r = sdtrace()
        .arg("report")
        .arg(&good)
        .arg(&bad)
        .assert()
        .code(4);
    assert!(stdout_of(&r).contains("only in A (1): step 2 sampler.x"));
}

/// Item 7: a record frame that checks but disagrees with its index row names both.
#[test]
fn an_index_row_that_disagrees_with_its_record_says_both() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.sdt");
    let b = dir.path().join("b.sdt");
    write_keys(&a, &[("noise.initial", None), ("sampler.x", Some(0))]);
    write_keys(&b, &[("noise.initial", None), ("sampler.x", Some(3))]);
    // B's record frame (step 3, a valid checksum) in A's place (A's index: step 0).
    let (at, len) = record_frame(&a, "sampler.x", Some(0));
    assert_eq!(record_frame(&b, "sampler.x", Some(3)), (at, len));
    let mut bytes = std::fs::read(&a).unwrap();
    bytes[at..at + len].copy_from_slice(&std::fs::read(&b).unwrap()[at..at + len]);
    std::fs::write(&a, &bytes).unwrap();
    let out = sdtrace().arg("ls").arg(&a).assert().code(2);
    let err = stderr_of(&out);
    assert!(
        err.contains(
            "the record frame holds step 3 eval 0 sampler.x (order 1), but the index lists step 0 eval 0 sampler.x (order 1) there"
        ),
        "{err}"
    );
}

/// Item 9: SIGTERM stops a recording like Ctrl-C: exit 4, a closed trace marked interrupted.
#[cfg(unix)]
#[test]
fn sigterm_closes_the_trace_marked_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("term.sdt");
    let mut child = std::process::Command::new(common::sdtrace_bin())
        .args(["record", "--model"])
        .arg(tiny_model("reliability-model"))
        .args([
            "--prompt", "a cat", "--seed", "1", "--steps", "5000", "--size", "64x64",
        ])
        .args(["-q", "--no-png", "--capture", "stats", "-o"])
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until sampling has begun (the file grows past its header), then terminate.
    let start = std::time::Instant::now();
    while std::fs::metadata(&out).map_or(0, |m| m.len()) < 200_000 {
        assert!(
            start.elapsed().as_secs() < 60,
            "the recording did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(4));
    let r = TraceReader::open(&out).unwrap();
    assert!(r.integrity().is_complete());
    let end = r.run_end().unwrap();
    assert_eq!(end.status, RunStatus::Interrupted);
    assert!(
        end.reason.as_deref().unwrap_or("").contains("SIGTERM"),
        "{end:?}"
    );
}

/// Item 8 (infotext and size): a settings line that does not parse is refused, and size
/// suggestions stay within the limits.
#[test]
fn unparsable_settings_lines_and_oversized_sizes_are_refused() {
    let a = sdtrace()
        .args([
            "record",
            "--model",
            "nowhere",
            "--params",
            "Steps: abc, Size: 0x0",
        ])
        .args(["-o", "never.sdt"])
        .assert()
        .code(2);
    let err = stderr_of(&a);
    assert!(
        err.contains("--params") && err.contains("names Steps, Size"),
        "{err}"
    );
    let a = sdtrace()
        .args(["record", "--model", "nowhere", "--size", "100000x100000"])
        .args(["-o", "never.sdt"])
        .assert()
        .code(2);
    let err = stderr_of(&a);
    assert!(
        err.contains("try 16384") && !err.contains("100008"),
        "{err}"
    );
    assert!(!Path::new("never.sdt").exists());
}

/// Item 7, without an index: the scan resynchronises after a frame whose length field is
/// damaged (too long to fit, or fitting but failing its checksum) and keeps every later record.
#[test]
fn a_scan_resynchronises_after_a_damaged_length_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.sdt");
    let n = write_mini_run(&good, 3, 7) as usize;
    let (at, _) = record_frame(&good, "unet.conv_in", Some(1));
    let bytes = std::fs::read(&good).unwrap();
    // No footer: the reader must scan.
    let unfooted = &bytes[..bytes.len() - 24];
    for (flip, what) in [(at + 15, "claims"), (at + 8, "checksum mismatch")] {
        let mut b = unfooted.to_vec();
        b[flip] ^= 0x01;
        let path = dir.path().join("resync.sdt");
        std::fs::write(&path, &b).unwrap();
        let r = TraceReader::open(&path).unwrap();
        assert_eq!(r.entries().len(), n - 1, "{what}");
        assert!(r.find("unet.conv_in", Some(1), 0).is_none());
        assert!(r.find("sampler.x", Some(2), 0).is_some());
        assert!(
            r.run_end().is_some(),
            "the run-end after the damage is found"
        );
        assert!(
            r.damage()
                .iter()
                .any(|d| d.offset == at as u64 && d.what.contains(what)),
            "{:?}",
            r.damage()
        );
        r.verify().unwrap();
        let a = sdtrace().arg("ls").arg(&path).assert().code(2);
        assert_eq!(stdout_of(&a).lines().count() - 1, n - 1);
    }
}

/// Item 7 (`dtype_9.sdt`): a record frame with a valid checksum but an unknown dtype code is a
/// damaged record — through the index and through a scan — and `info --verify` exits 2.
#[test]
fn a_checksum_valid_record_with_an_unknown_dtype_is_damaged_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dtype.sdt");
    write_keys(
        &path,
        &[
            ("noise.initial", None),
            ("sampler.x", Some(0)),
            ("sampler.x", Some(1)),
        ],
    );
    let (at, _) = record_frame(&path, "sampler.x", Some(0));
    let mut b = std::fs::read(&path).unwrap();
    // Body: key (1 + 9 bytes), step Some(0) (2), eval (1), order (1), then the dtype code.
    let dtype_at = at + 16 + 1 + 9 + 2 + 1 + 1;
    assert_eq!(b[dtype_at], 0, "the dtype code of f32");
    b[dtype_at] = 9;
    let len = u64::from_le_bytes(b[at + 8..at + 16].try_into().unwrap()) as usize;
    let mut h = crc32fast::Hasher::new();
    h.update(&b[at..at + 4]);
    h.update(&b[at + 8..at + 16 + len]);
    b[at + 4..at + 8].copy_from_slice(&h.finalize().to_le_bytes());
    std::fs::write(&path, &b).unwrap();

    let a = sdtrace().arg("ls").arg(&path).assert().code(2);
    assert_eq!(stdout_of(&a).lines().count() - 1, 2);
    assert!(
        stderr_of(&a).contains("does not decode"),
        "{}",
        stderr_of(&a)
    );
    let v = sdtrace()
        .args(["info", "--verify"])
        .arg(&path)
        .assert()
        .code(2);
    assert!(
        stdout_of(&v).contains("verified  2 of 3 records"),
        "{}",
        stdout_of(&v)
    );
    // Without the footer the scan skips the record and keeps the one after it.
    std::fs::write(&path, &b[..b.len() - 24]).unwrap();
    let r = TraceReader::open(&path).unwrap();
    assert_eq!(r.entries().len(), 2);
    assert!(r.find("sampler.x", Some(1), 0).is_some());
    assert!(
        r.damage().iter().any(|d| d.offset == at as u64),
        "{:?}",
        r.damage()
    );
}

/// Campaign notes (cosmetic): an OS error is said once, and a PNG that cannot be written after a
/// complete run says that the trace is complete.
#[test]
fn os_errors_are_said_once_and_a_failed_png_says_the_trace_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sdt");
    let a = sdtrace().arg("info").arg(&missing).assert().code(2);
    let err = stderr_of(&a);
    assert_eq!(err.matches("(os error").count(), 1, "{err}");
    let out = dir.path().join("t.sdt");
    let a = sdtrace()
        .args(["record", "--model"])
        .arg(tiny_model("reliability-model"))
        .args([
            "--prompt", "a cat", "--steps", "1", "--size", "64x64", "-q", "-o",
        ])
        .arg(&out)
        .arg("--png")
        .arg(dir.path().join("no-such-dir/x.png"))
        .assert()
        .code(2);
    let err = stderr_of(&a);
    assert!(
        err.contains("is complete, only the PNG is missing")
            && err.matches("(os error").count() == 1,
        "{err}"
    );
    TraceReader::open(&out).unwrap().verify().unwrap();
}
