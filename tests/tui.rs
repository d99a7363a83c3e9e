//! `sdtrace diff`: the background comparison (same result as `report`, live traces), and the
//! real binary driven in a terminal (tmux) on two recorded tiny-model traces with a planted
//! divergence.

mod common;

use common::{Rng, fixed_header, normal_vec, observe, write_mini_run};
use sdtrace::DType;
use sdtrace::analysis::{CompareOptions, compare_paths};
use sdtrace::probe::{Policy, Probe};
use sdtrace::trace::{TraceWriter, WriterOptions};
use sdtrace::tui::app::Phase;
use sdtrace::tui::loader::{AnalysisJob, LoaderMsg, spawn_analysis};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn job(a: &Path, b: &Path) -> AnalysisJob {
    AnalysisJob {
        a: a.to_path_buf(),
        b: b.to_path_buf(),
        floor: None,
        opts: CompareOptions::default(),
        poll: Duration::from_millis(50),
    }
}

/// Messages until `done` says stop (or 60 s pass).
fn collect(
    rx: &mpsc::Receiver<LoaderMsg>,
    mut done: impl FnMut(&LoaderMsg) -> bool,
) -> Vec<LoaderMsg> {
    let t = Instant::now();
    let mut out = Vec::new();
    while t.elapsed() < Duration::from_secs(60) {
        if let Ok(m) = rx.recv_timeout(Duration::from_millis(100)) {
            let stop = done(&m);
            out.push(m);
            if stop {
                return out;
            }
        }
    }
    panic!("timed out after {} messages", out.len());
}

#[test]
fn background_comparison_is_the_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.sdt"), dir.path().join("b.sdt"));
    write_mini_run(&a, 3, 1);
    write_mini_run(&b, 3, 2);
    let (tx, rx) = mpsc::channel();
    let w = spawn_analysis(job(&a, &b), None, tx);
    let msgs = collect(&rx, |m| {
        matches!(
            m,
            LoaderMsg::Comparison {
                phase: Phase::Done,
                ..
            }
        )
    });
    let phases: Vec<&Phase> = msgs
        .iter()
        .filter_map(|m| match m {
            LoaderMsg::Comparison { phase, .. } => Some(phase),
            _ => None,
        })
        .collect();
    assert_eq!(phases, [&Phase::Payloads, &Phase::Done]);
    let pairs = msgs
        .iter()
        .filter(|m| matches!(m, LoaderMsg::Pair { .. }))
        .count();
    let LoaderMsg::Comparison {
        comparison: last, ..
    } = msgs.last().unwrap()
    else {
        unreachable!()
    };
    assert_eq!(pairs, last.records.len());
    let mut report = compare_paths(&a, &b, None, &CompareOptions::default()).unwrap();
    // Everything but the wall time it took.
    report.elapsed_s = last.elapsed_s;
    assert_eq!(**last, report, "the TUI shows the report's comparison");
    assert_eq!(
        w.progress.pairs_done.load(Ordering::Relaxed),
        report.records.len()
    );
    let done = w.progress.bytes_done.load(Ordering::Relaxed);
    assert!(done > 0 && done == w.progress.bytes_total.load(Ordering::Relaxed));
    w.handle.join().unwrap();
}

/// Step records of a small run, written through the probe so the file grows step by step.
fn step(probe: &Probe, rng: &mut Rng, s: u32) {
    probe.set_step(Some(s), 0).unwrap();
    let latent = [1usize, 4, 8, 8];
    observe(
        probe,
        "sampler.x",
        DType::F32,
        &latent,
        &normal_vec(rng, 256, 1.0),
    );
    observe(
        probe,
        "unet.conv_in",
        DType::F32,
        &[2, 8, 8, 8],
        &normal_vec(rng, 1024, 1.0),
    );
}

fn steps_of(m: &LoaderMsg) -> Option<usize> {
    match m {
        LoaderMsg::Comparison { comparison, .. } => {
            let mut s: Vec<u32> = comparison.records.iter().filter_map(|r| r.step).collect();
            s.sort_unstable();
            s.dedup();
            Some(s.len())
        }
        _ => None,
    }
}

#[test]
fn a_trace_still_being_recorded_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.sdt"), dir.path().join("live.sdt"));
    // A: a finished run of 3 steps. B: the same run, being recorded.
    let start = |path: &PathBuf| {
        let w = TraceWriter::create(path, &fixed_header("live"), WriterOptions::default()).unwrap();
        (Probe::new(w, Policy::default()), Rng(7))
    };
    let (pa, mut ra) = start(&a);
    for s in 0..3 {
        step(&pa, &mut ra, s);
    }
    pa.finish().unwrap().unwrap();
    let (pb, mut rb) = start(&b);
    step(&pb, &mut rb, 0);
    pb.set_step(Some(1), 0).unwrap();
    let (tx, rx) = mpsc::channel();
    let w = spawn_analysis(job(&a, &b), None, tx);
    // The partial trace is shown and followed.
    let msgs = collect(&rx, |m| steps_of(m) == Some(1));
    assert!(matches!(
        msgs.last(),
        Some(LoaderMsg::Comparison {
            phase: Phase::Following,
            ..
        })
    ));
    // A new step appears as it is written.
    step(&pb, &mut rb, 1);
    pb.set_step(Some(2), 0).unwrap();
    collect(&rx, |m| steps_of(m) == Some(2));
    // Finishing the recording ends the follow with the full comparison.
    pb.finish().unwrap().unwrap();
    let msgs = collect(&rx, |m| {
        matches!(
            m,
            LoaderMsg::Comparison {
                phase: Phase::Done,
                ..
            }
        )
    });
    let Some(LoaderMsg::Comparison { comparison, .. }) = msgs.last() else {
        unreachable!()
    };
    assert!(comparison.b.complete);
    assert!(
        comparison
            .records
            .iter()
            .all(|r| r.bit_identical == Some(true))
    );
    // Step 2 was never recorded in B: A's records there are reported unmatched.
    assert!(comparison.only_a.iter().any(|r| r.step == Some(2)));
    w.handle.join().unwrap();
}

#[test]
fn export_writes_both_sides_with_the_export_writers() {
    use sdtrace::trace::TraceReader;
    use sdtrace::tui::loader::{Readers, export_pair};
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.sdt"), dir.path().join("b.sdt"));
    write_mini_run(&a, 2, 1);
    write_mini_run(&b, 2, 2);
    let c = compare_paths(&a, &b, None, &CompareOptions::default()).unwrap();
    let readers = Readers {
        a: TraceReader::open(&a).unwrap(),
        b: TraceReader::open(&b).unwrap(),
    };
    let pair = |key: &str, step: Option<u32>| {
        c.records
            .iter()
            .find(|r| r.key == key && r.step == step)
            .unwrap()
    };
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let msg = export_pair(&readers, pair("sampler.x", Some(1)), &out).unwrap();
    assert!(msg.contains("sampler.x@s1.a.npy"), "{msg}");
    for side in ["a", "b"] {
        let bytes = std::fs::read(out.join(format!("sampler.x@s1.{side}.npy"))).unwrap();
        assert!(bytes.starts_with(b"\x93NUMPY"));
    }
    // bfloat16 goes to .safetensors; stats-only records have nothing to export.
    export_pair(&readers, pair("misc.bf16", None), &out).unwrap();
    assert!(out.join("misc.bf16.a.safetensors").exists());
    let e = export_pair(&readers, pair("unet.mid_block", Some(0)), &out).unwrap_err();
    assert!(e.contains("nothing exported"), "{e}");
}

#[test]
fn diff_refuses_without_a_terminal_or_a_trace() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.sdt");
    write_mini_run(&a, 1, 1);
    let bin = common::sdtrace_bin();
    // Standard output is a pipe here.
    let o = Command::new(bin)
        .arg("diff")
        .arg(&a)
        .arg(&a)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("needs a terminal") && err.contains("sdtrace report"),
        "{err}"
    );
    let o = Command::new(bin)
        .arg("diff")
        .arg(&a)
        .arg(dir.path().join("missing.sdt"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing.sdt"));
}

// ----- the real binary in a terminal -----------------------------------------------------

fn tmux_available() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> String {
        let o = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.cmd(&["capture-pane", "-p", "-t", "diff"])
    }

    fn wait_for(&self, what: &str, secs: u64) -> String {
        let t = Instant::now();
        loop {
            let s = self.screen();
            if s.contains(what) {
                return s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "'{what}' did not appear:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

#[test]
fn diff_in_a_terminal_finds_the_planted_divergence() {
    if !tmux_available() {
        eprintln!("tmux is not installed: the terminal test is skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    // Seed 0 (what `sdtrace synth` writes by default) gives finite activations at 64×64.
    sdtrace::model::synth::write_model(&model, sdtrace::model::synth::SynthSize::Tiny, 0).unwrap();
    let bin = common::sdtrace_bin();
    let key = "unet.down_blocks.1.attentions.0";
    for (name, extra) in [
        ("a.sdt", vec![]),
        (
            "b.sdt",
            vec!["--perturb".to_string(), format!("{key}@2=1e-2")],
        ),
    ] {
        let o = Command::new(bin)
            .arg("record")
            .arg("--model")
            .arg(&model)
            .args(["--size", "64x64", "--steps", "4", "--seed", "1", "--no-png"])
            .args(&extra)
            .arg("-o")
            .arg(dir.path().join(name))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let t = Tmux {
        socket: format!("sdtrace-test-{}", std::process::id()),
    };
    // Run it twice: quit with q, then with Ctrl-c; after each, print the exit code and the
    // terminal modes.
    let modes = "stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e -icanon -e echo -e -echo | tr '\\n' ' '; echo";
    let script = format!(
        "cd '{}' && '{bin}' diff a.sdt b.sdt; echo EXIT=$?; {modes}; read go; '{bin}' diff --no-mouse a.sdt b.sdt; echo EXIT2=$?; {modes}; sleep 60",
        dir.path().display(),
        bin = bin.display()
    );
    t.cmd(&[
        "new-session",
        "-d",
        "-s",
        "diff",
        "-x",
        "100",
        "-y",
        "30",
        "sh",
        "-c",
        &script,
    ]);
    let s = t.wait_for("all metrics computed", 60);
    assert!(s.contains("verdict: numeric drift — DIVERGES"), "{s}");
    assert_eq!(
        t.cmd(&["display", "-p", "-t", "diff", "#{alternate_on}"])
            .trim(),
        "1"
    );
    // The first cursor stands on the first exceedance, found by the payload pass after the
    // first frame (#24: it stayed on whatever row the summaries pass had put it).
    t.wait_for(&format!("step 2 · {key} · FAIL"), 10);
    // Move away, then jump to the first exceedance.
    t.cmd(&["send-keys", "-t", "diff", "g"]);
    t.wait_for("· not recorded here", 10);
    t.cmd(&["send-keys", "-t", "diff", "f"]);
    let s = t.wait_for(&format!("step 2 · {key} · FAIL"), 10);
    // The detail line names the selected cell: the planted record.
    let detail = s
        .lines()
        .find(|l| l.starts_with("step 2 · "))
        .unwrap_or_default();
    assert_eq!(detail.trim_end(), format!("step 2 · {key} · FAIL"), "{s}");
    // The highlighted tree row is that key.
    let screen = t.cmd(&["capture-pane", "-p", "-e", "-t", "diff"]);
    let row = screen
        .lines()
        .find(|l| (l.contains("\x1b[7m") || l.contains(";7m")) && l.contains("attentions.0"))
        .unwrap_or_default();
    assert!(!row.is_empty(), "no highlighted row for {key}:\n{screen}");
    t.cmd(&["send-keys", "-t", "diff", "q"]);
    let s = t.wait_for("EXIT=", 10);
    assert!(s.contains("EXIT=0"), "{s}");
    // Terminal restored: main screen, cursor shown, no mouse reporting, cooked mode with echo.
    let flags = t.cmd(&[
        "display",
        "-p",
        "-t",
        "diff",
        "#{alternate_on} #{cursor_flag} #{mouse_any_flag}",
    ]);
    assert_eq!(flags.trim(), "0 1 0");
    let s = t.wait_for("icanon", 10);
    assert!(s.contains("icanon echo"), "{s}");
    assert!(!s.contains("-icanon") && !s.contains("-echo"), "{s}");
    // Second run, without mouse capture: Ctrl-c quits and restores the terminal as well.
    t.cmd(&["send-keys", "-t", "diff", "Enter"]);
    t.wait_for("all metrics computed", 60);
    let flags = t.cmd(&[
        "display",
        "-p",
        "-t",
        "diff",
        "#{alternate_on} #{mouse_any_flag}",
    ]);
    assert_eq!(flags.trim(), "1 0", "--no-mouse captures no mouse");
    t.cmd(&["send-keys", "-t", "diff", "C-c"]);
    let s = t.wait_for("EXIT2=", 10);
    assert!(s.contains("EXIT2=0"), "{s}");
    let flags = t.cmd(&[
        "display",
        "-p",
        "-t",
        "diff",
        "#{alternate_on} #{cursor_flag}",
    ]);
    assert_eq!(flags.trim(), "0 1");
    let s = t.screen();
    let after = s.split("EXIT2=").nth(1).unwrap_or_default();
    let t0 = Instant::now();
    let mut after = after.to_string();
    while !after.contains("icanon") && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        after = t
            .screen()
            .split("EXIT2=")
            .nth(1)
            .unwrap_or_default()
            .to_string();
    }
    assert!(after.contains("icanon echo"), "{after}");
}

/// Two multi-GB traces for the timings in docs/PERFORMANCE.md (not part of the suite):
/// `SDTRACE_BIG_DIR=/tmp/big cargo test --test tui -- --ignored large_traces`. 16 steps × 48
/// keys of 3 MiB f32, every record stored in full; B differs from step 5 of one key on.
#[test]
#[ignore]
fn large_traces_for_the_performance_doc() {
    let Some(dir) = std::env::var_os("SDTRACE_BIG_DIR").map(PathBuf::from) else {
        panic!("set SDTRACE_BIG_DIR");
    };
    std::fs::create_dir_all(&dir).unwrap();
    let keys: Vec<String> = (0..48)
        .map(|k| match k % 4 {
            0 => format!("unet.down_blocks.{}.resnets.{}", k / 16, k % 16 / 4),
            1 => format!(
                "unet.down_blocks.{}.attentions.{}.transformer_blocks.0.attn1",
                k / 16,
                k % 16 / 4
            ),
            2 => format!(
                "unet.down_blocks.{}.attentions.{}.transformer_blocks.0.ff",
                k / 16,
                k % 16 / 4
            ),
            _ => format!("unet.down_blocks.{}.attentions.{}", k / 16, k % 16 / 4),
        })
        .collect();
    let shape = [2usize, 96, 64, 64];
    let n: usize = shape.iter().product();
    for (name, diverge) in [("bigA.sdt", false), ("bigB.sdt", true)] {
        let mut policy = Policy::default();
        policy.push("*=full".parse().unwrap());
        let w = TraceWriter::create(
            dir.join(name),
            &fixed_header("large"),
            WriterOptions::default(),
        )
        .unwrap();
        let probe = Probe::new(w, policy);
        let mut rng = Rng(5);
        let base = normal_vec(&mut rng, n, 1.0);
        observe(
            &probe,
            "noise.initial",
            DType::F32,
            &[1, 4, 64, 64],
            &base[..16384],
        );
        for s in 0..16u32 {
            probe.set_step(Some(s), 0).unwrap();
            for (k, key) in keys.iter().enumerate() {
                let scale = 1.0 + (k as f64) * 0.01 + s as f64 * 0.001;
                let off = diverge && s >= 5 && k >= 9;
                let vals: Vec<f64> = base
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v * scale + if off && i % 7 == 0 { 1e-3 } else { 0.0 })
                    .collect();
                observe(&probe, key, DType::F32, &shape, &vals);
            }
        }
        probe.finish().unwrap().unwrap();
    }
}

/// Key response on an SD-sized comparison (50 steps × 700 keys = 35 000 records), in process:
/// `cargo test --release --test tui -- --ignored --nocapture key_response`.
#[test]
#[ignore]
fn key_response_on_an_sd_sized_comparison() {
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use ratatui::buffer::Buffer;
    use ratatui::layout::Rect;
    use sdtrace::analysis::{
        Basis, COMPARISON_SCHEMA, Comparison, Criteria, PairRecord, SummaryDelta, TolConfig,
        TraceSide,
    };
    use sdtrace::tui::app::{App, AppOptions};
    use sdtrace::tui::palette::{ColorMode, Palette};
    let keys: Vec<String> = (0..700)
        .map(|k| {
            format!(
                "unet.{}_blocks.{}.attentions.{}.transformer_blocks.0.attn{}",
                ["down", "up"][k % 2],
                k / 100,
                k / 10 % 10,
                k % 10
            )
        })
        .collect();
    let mut records = Vec::new();
    for s in 0..50u32 {
        for (k, key) in keys.iter().enumerate() {
            let rel = if s > 10 {
                1e-6 * (s as f64) * (k as f64 + 1.0)
            } else {
                0.0
            };
            records.push(PairRecord {
                step: Some(s),
                eval: 0,
                key: key.clone(),
                order_a: records.len() as u64,
                order_b: records.len() as u64,
                dtype_a: "f16".into(),
                dtype_b: "f16".into(),
                shape_a: vec![2, 320, 64, 64],
                shape_b: vec![2, 320, 64, 64],
                basis: Basis::Sketch,
                bit_identical: Some(rel == 0.0),
                rel_l2: Some(rel),
                rel_l2_error: Some(0.04),
                abs_error: Some(rel),
                nonfinite_mismatch: 0,
                payload: None,
                noise: None,
                summary: SummaryDelta {
                    hash_equal: rel == 0.0,
                    mean: 0.0,
                    std: 0.0,
                    min: 0.0,
                    max: 0.0,
                    l2: 0.0,
                    abs_max: 0.0,
                    l2_b: 100.0,
                    rel_l2_lower_bound: 0.0,
                    nonfinite_a: 0,
                    nonfinite_b: 0,
                },
                image: None,
                floor: None,
                note: None,
            });
        }
    }
    let side = || TraceSide {
        path: "x.sdt".into(),
        records: records.len() as u64,
        complete: true,
        header: Default::default(),
        run_end: None,
        damage: None,
        expects_run_end: false,
    };
    let c = Comparison {
        schema: COMPARISON_SCHEMA.into(),
        a: side(),
        b: side(),
        noise_floor: None,
        header_diffs: vec![],
        only_a: vec![],
        only_b: vec![],
        records,
        compare_tol: TolConfig::default(),
        elapsed_s: 0.0,
    };
    let mut app = App::new(AppOptions {
        a: "a".into(),
        b: "b".into(),
        tol: TolConfig::default(),
        criteria: Criteria::default(),
        palette: Palette::new(ColorMode::TrueColor),
        mouse: true,
    });
    let t = Instant::now();
    app.set_comparison(c, Phase::Done);
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let area = Rect::new(0, 0, 200, 60);
    app.resize(area);
    app.handle_key(KeyEvent::new(KeyCode::Char('+'), KeyModifiers::NONE));
    let mut times = Vec::new();
    for k in "jjjjjkkkllllhhhfsnnnNmmmmjjjjGgjjjj"
        .chars()
        .cycle()
        .take(200)
    {
        let t = Instant::now();
        app.handle_key(KeyEvent::new(KeyCode::Char(k), KeyModifiers::NONE));
        app.prepare();
        let mut buf = Buffer::empty(area);
        sdtrace::tui::render::render(&app, area, &mut buf);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    // A re-judge (one tolerance keystroke) on all 35 000 records.
    let t = Instant::now();
    app.handle_key(KeyEvent::new(KeyCode::Char('t'), KeyModifiers::NONE));
    app.handle_key(KeyEvent::new(KeyCode::Char('x'), KeyModifiers::NONE));
    app.handle_key(KeyEvent::new(KeyCode::Backspace, KeyModifiers::NONE));
    let rejudge_ms = t.elapsed().as_secs_f64() * 1e3;
    times.sort_by(f64::total_cmp);
    println!(
        "set_comparison {load_ms:.1} ms; key+render median {:.2} ms, p95 {:.2} ms, max {:.2} ms; tolerance keystroke (re-judge) {rejudge_ms:.1} ms",
        times[times.len() / 2],
        times[times.len() * 95 / 100],
        times[times.len() - 1]
    );
}
