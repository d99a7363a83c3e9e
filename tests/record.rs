//! `sdtrace record` end to end on the tiny synthetic model: what a trace holds, bit-identical
//! reruns, the size estimate, refusals, perturbations found by `report`, NaN and Ctrl-C
//! handling.

mod common;

use common::sdtrace;
use sdtrace::trace::{Fidelity, RunStatus, TraceReader};
use std::path::Path;
use std::time::Instant;

fn model() -> &'static Path {
    common::tiny_model("record-test-model")
}

fn run(args: &[&str], out: &Path) -> (i32, String) {
    let o = sdtrace()
        .arg("record")
        .arg("--model")
        .arg(model())
        .args(["--size", "64x64", "--seed", "42", "--steps", "4"])
        .args([
            "--prompt",
            "a (red:1.2) house, [sky]",
            "--negative",
            "blurry",
        ])
        .args(args)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_recording_holds_the_whole_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run.sdt");
    let (c, err) = run(&["--sampler", "euler-a"], &out);
    assert_eq!(c, 0, "{err}");
    assert!(err.contains("estimated trace"), "{err}");
    let r = TraceReader::open(&out).unwrap();
    assert!(r.integrity().is_complete());
    let end = r.run_end().unwrap();
    assert_eq!(end.status, RunStatus::Complete);
    assert_eq!((end.steps_completed, end.steps_planned), (Some(4), Some(4)));
    let full = |key: &str, step: Option<u32>| {
        let e = r
            .find(key, step, 0)
            .unwrap_or_else(|| panic!("no {key} at {step:?}"));
        assert_eq!(e.fidelity, Fidelity::Full, "{key}");
        e.shape.clone()
    };
    assert_eq!(full("noise.initial", None), [1, 4, 8, 8]);
    assert_eq!(full("text.cond", None), [1, 77, 32]);
    assert_eq!(full("text.uncond", None), [1, 77, 32]);
    for s in 0..4 {
        for key in [
            "sampler.x",
            "sampler.eps.uncond",
            "sampler.eps.cond",
            "sampler.denoised",
        ] {
            assert_eq!(full(key, Some(s)), [1, 4, 8, 8]);
        }
        let unet = r.find("unet.mid_block", Some(s), 0).unwrap();
        assert_eq!(unet.fidelity, Fidelity::Sketch);
    }
    // Euler a's noise at every step but the last (σ = 0 there).
    assert!(r.find("sampler.noise", Some(2), 0).is_some());
    assert!(r.find("sampler.noise", Some(3), 0).is_none());
    assert_eq!(full("sampler.x", Some(4)), [1, 4, 8, 8]);
    assert_eq!(full("image", None), [1, 3, 64, 64]);
    assert!(r.find("vae.decoder", None, 0).is_some());
    assert!(r.find("text_encoder.final_layer_norm", None, 1).is_some());
    // The header carries what determines the result.
    let s = &r.header().settings;
    assert_eq!(s.seed, Some(42));
    assert_eq!(s.sampler.as_deref(), Some("euler-a"));
    assert_eq!(s.prompt.as_deref(), Some("a (red:1.2) house, [sky]"));
    for k in [
        "sigmas",
        "timesteps",
        "attention_plan",
        "rng_params",
        "clip_skip",
        "tokens",
    ] {
        assert!(s.extra.contains_key(k), "header lacks {k}");
    }
    assert!(s.model_hashes.contains_key("unet_xxh3"));
    assert!(r.header().device.compute_threads.is_some());
    let (c, err) = run(&["--no-png", "--threads", "1"], &dir.path().join("t1.sdt"));
    assert_eq!(c, 0, "{err}");
    let t1 = TraceReader::open(dir.path().join("t1.sdt")).unwrap();
    assert_eq!(t1.header().device.compute_threads, Some(1));
    // The PNG with A1111 parameters.
    let png = std::fs::read(dir.path().join("run.png")).unwrap();
    let text = sdtrace::image::png_text(&png).unwrap();
    let params = &text.iter().find(|(k, _)| k == "parameters").unwrap().1;
    assert!(
        params.starts_with("a (red:1.2) house, [sky]\nNegative prompt: blurry\nSteps: 4, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 42, Size: 64x64, Model: record-test-model"),
        "{params}"
    );
}

#[test]
fn same_settings_give_bit_identical_traces_for_any_thread_count_and_the_estimate_holds() {
    let dir = tempfile::tempdir().unwrap();
    let runs = [
        ("a.sdt", &["--no-png"][..]),
        ("b.sdt", &["--no-png"][..]),
        ("t1.sdt", &["--no-png", "--threads", "1"][..]),
        ("t3.sdt", &["--no-png", "--threads", "3"][..]),
    ];
    for (name, args) in runs {
        let (c, err) = run(args, &dir.path().join(name));
        assert_eq!(c, 0, "{err}");
    }
    let a = dir.path().join("a.sdt");
    let ra = TraceReader::open(&a).unwrap();
    for (name, _) in &runs[1..] {
        let rb = TraceReader::open(dir.path().join(name)).unwrap();
        assert_eq!(ra.entries().len(), rb.entries().len());
        for (x, y) in ra.entries().iter().zip(rb.entries()) {
            assert_eq!(x.id(), y.id());
            let (mx, my) = (ra.read_meta(x).unwrap(), rb.read_meta(y).unwrap());
            assert_eq!(
                mx.summary.bits_hash,
                my.summary.bits_hash,
                "{name}: {}",
                x.id()
            );
        }
    }
    // The size printed before the run is within 25 % of the file written.
    let (_, err) = run(&["--no-png"], &dir.path().join("c.sdt"));
    let est = err
        .lines()
        .find_map(|l| l.split("estimated trace ").nth(1))
        .unwrap()
        .to_string();
    let actual = std::fs::metadata(&a).unwrap().len() as f64;
    let (num, unit) = est.split_once(' ').unwrap();
    let mult = match &unit[..3] {
        "KiB" => 1024.0,
        "MiB" => 1048576.0,
        u => panic!("{u}"),
    };
    let est = num.parse::<f64>().unwrap() * mult;
    assert!(
        (est / actual - 1.0).abs() < 0.25,
        "estimate {est} vs {actual}"
    );
}

#[test]
fn refusals_are_clear_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.sdt");
    let cases: &[(&[&str], &str)] = &[
        (&["--max-trace-size", "10KiB"], "--max-trace-size"),
        (&["--size", "60x64"], "multiple of 8"),
        (&["--dtype", "bf16"], "bf16"),
        (&["--device", "cuda"], "--features cuda"),
        (&["--capture", "unet.*=loud"], "capture rule"),
        (&["--perturb", "unet.mid_block@x=1"], "KEY@STEP=EPS"),
        (&["--clip-skip", "9"], "--clip-skip"),
        (&["--attention", "split:1"], "not enough memory"),
        (&["--attention", "bogus"], "--attention"),
        (&["--clip-skip", "0"], "--clip-skip 0"),
        (&["--dtype", "int8"], "[possible values: f32, f16, bf16]"),
    ];
    for (args, want) in cases {
        let (c, err) = run(args, &out);
        assert_eq!(c, 2, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} left a file");
    }
    let o = sdtrace()
        .args(["record", "--model", "/nonexistent/model", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2));
    assert!(err.contains("/nonexistent/model"), "{err}");
}

/// cuBLAS settings are CUDA-only: the CPU refuses anything but the default, and a CPU trace
/// carries no GPU facts and no cuBLAS settings.
#[test]
fn gpu_settings_are_refused_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.sdt");
    let cases: &[(&[&str], &str)] = &[
        (
            &["--gemm-reduced-precision", "f32"],
            "only to --device cuda",
        ),
        (&["--gemm-reduced-precision", "fp8"], "f32 (TF32)"),
    ];
    for (args, want) in cases {
        let (c, err) = run(args, &out);
        assert_eq!(c, 2, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} left a file");
    }
    let (c, err) = run(&["--gemm-reduced-precision", "none", "--steps", "1"], &out);
    assert_eq!(c, 0, "{err}");
    let h = TraceReader::open(&out).unwrap().header().clone();
    assert_eq!(h.device.device.as_deref(), Some("cpu"));
    assert!(h.device.gpu.is_none());
    assert!(!h.settings.extra.contains_key("cublas"));
}

/// Planted divergences on real recorded traces: for perturbations at several keys and steps,
/// `report` names exactly the perturbed record as the first non-identical, the first over
/// tolerance and the source; the amplification onset, when one is found, is not before it; the
/// verdict class fits the place.
#[test]
fn report_localises_planted_perturbations() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.sdt");
    let (c, err) = run(&["--no-png"], &a);
    assert_eq!(c, 0, "{err}");
    let cases = [
        (
            "unet.down_blocks.1.attentions.0",
            Some(2),
            "1e-2",
            "numeric-drift",
        ),
        ("unet.mid_block", Some(1), "1e-3", "numeric-drift"),
        (
            "unet.up_blocks.1.resnets.0",
            Some(3),
            "1e-2",
            "numeric-drift",
        ),
        ("unet.conv_in", Some(0), "1e-4", "numeric-drift"),
        ("sampler.denoised", Some(2), "1e-3", "numeric-drift"),
        ("text.cond", None, "1e-3", "conditioning"),
        ("noise.initial", None, "1e-3", "noise-rng"),
    ];
    for (key, step, eps, class) in cases {
        let b = dir.path().join("b.sdt");
        let spec = match step {
            Some(s) => format!("{key}@{s}={eps}"),
            None => format!("{key}={eps}"),
        };
        let (c, err) = run(&["--no-png", "--perturb", &spec], &b);
        assert_eq!(c, 0, "{err}");
        let header = TraceReader::open(&b).unwrap().header().clone();
        assert_eq!(
            header.settings.extra["perturb"][0],
            spec.replace(eps, &eps.parse::<f64>().unwrap().to_string())
        );
        let o = sdtrace()
            .args(["report", "--format", "json"])
            .arg(&a)
            .arg(&b)
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(1),
            "{spec}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let loc = &v["localisation"];
        let label = match step {
            Some(s) => format!("step {s} {key}"),
            None => key.to_string(),
        };
        assert_eq!(loc["first_non_identical"], label, "{spec}: {loc}");
        assert_eq!(loc["first_over_tolerance"], label, "{spec}: {loc}");
        assert_eq!(loc["source"]["label"], label, "{spec}: {loc}");
        if let Some(onset) = loc["amplification"]["onset_step"].as_u64() {
            assert!(onset >= u64::from(step.unwrap_or(0u32)), "{spec}: {loc}");
        }
        assert_eq!(v["verdict"]["class"], class, "{spec}");
    }
}

#[test]
fn nan_is_flagged_and_can_stop_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nan.sdt");
    let blowup = ["--perturb", "unet.mid_block@1=1e39"];
    let (c, err) = run(&[&["--no-png"][..], &blowup].concat(), &out);
    assert_eq!(c, 0, "{err}");
    assert!(
        err.contains("warning: non-finite values in unet.mid_block at step 1"),
        "{err}"
    );
    let (c, err) = run(&[&["--stop-on-nan"][..], &blowup].concat(), &out);
    assert_eq!(c, 4, "{err}");
    let r = TraceReader::open(&out).unwrap();
    assert!(r.integrity().is_complete());
    let end = r.run_end().unwrap();
    assert_eq!(end.status, RunStatus::Interrupted);
    assert_eq!(end.steps_completed, Some(2));
    assert!(end.reason.as_deref().unwrap().contains("--stop-on-nan"));
    assert_eq!(end.nonfinite[0].key, "unet.mid_block");
    assert!(!dir.path().join("nan.png").exists());
}

#[cfg(unix)]
#[test]
fn ctrl_c_closes_the_trace_marked_interrupted() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("int.sdt");
    let mut child = std::process::Command::new(common::sdtrace_bin())
        .arg("record")
        .arg("--model")
        .arg(model())
        .args([
            "--size", "64x64", "--seed", "1", "--steps", "200", "--no-png", "-o",
        ])
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        if line.unwrap().starts_with("step 3/200") {
            break;
        }
    }
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let rest: Vec<String> = lines.map_while(|l| l.ok()).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(4), "{rest:?}");
    let r = TraceReader::open(&out).unwrap();
    assert!(r.integrity().is_complete());
    let end = r.run_end().unwrap();
    assert_eq!(end.status, RunStatus::Interrupted);
    assert!(end.steps_completed.unwrap() < 200);
    assert!(end.reason.as_deref().unwrap().contains("Ctrl-C"));
}

/// The speed target: tiny model, 20 steps, 64×64, light capture, under 30 s on a
/// 2-core machine (asserted with a generous margin; the exact figure is benchmarked).
#[test]
fn tiny_twenty_steps_is_fast() {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let o = sdtrace()
        .arg("record")
        .arg("--model")
        .arg(model())
        .args(["--size", "64x64", "--steps", "20", "--seed", "5", "-o"])
        .arg(dir.path().join("t.sdt"))
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let s = t.elapsed().as_secs_f64();
    assert!(s < 60.0, "{s} s");
}

/// A prompt over 75 tokens takes two chunks; the negative prompt is padded to match; f16 runs
/// on the CPU with f32 conditioning (A1111's emphasis promotes it).
#[test]
fn long_prompts_chunk_and_f16_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("long.sdt");
    let long = "a very long prompt about a house on a hill, ".repeat(3);
    let (c, err) = run(&["--no-png", "--dtype", "f16", "--prompt", &long], &out);
    assert_eq!(c, 0, "{err}");
    let r = TraceReader::open(&out).unwrap();
    for key in ["text.cond", "text.uncond"] {
        let e = r.find(key, None, 0).unwrap();
        assert_eq!(e.shape, [1, 154, 32], "{key}");
        assert_eq!(e.dtype, sdtrace::DType::F32, "{key}");
    }
    let tokens = &r.header().settings.extra["tokens"];
    assert_eq!(tokens["cond"]["chunks"], 2);
    assert_eq!(tokens["uncond"]["padding_chunks"], 1);
    assert_eq!(
        r.find("unet.mid_block", Some(0), 0).unwrap().dtype,
        sdtrace::DType::F16
    );
    // Four encoder calls: the negative prompt's two chunks, then the prompt's.
    assert!(r.find("text_encoder.final_layer_norm", None, 3).is_some());
}

/// Broad capture rules leave the fine points (attention q/k/v and probabilities) off; a rule
/// whose pattern ends in their name records them, as `record --help` says.
#[test]
fn only_rules_naming_fine_points_record_them() {
    let dir = tempfile::tempdir().unwrap();
    let keys = |capture: &str, name: &str| {
        let out = dir.path().join(name);
        let (c, err) = run(
            &[
                "--steps",
                "1",
                "--attention",
                "full",
                "--no-png",
                "--capture",
                capture,
            ],
            &out,
        );
        assert_eq!(c, 0, "{err}");
        let r = TraceReader::open(&out).unwrap();
        r.entries()
            .iter()
            .map(|e| e.key.to_string())
            .collect::<Vec<_>>()
    };
    let fine = |k: &String| {
        [".to_q", ".to_k", ".to_v", ".probs"]
            .iter()
            .any(|s| k.ends_with(s))
    };
    for capture in ["full", "unet.*=full", "sketch,*=sketch"] {
        let k = keys(capture, "broad.sdt");
        assert!(k.iter().any(|k| k.ends_with(".attn1")), "{capture}");
        assert!(
            !k.iter().any(fine),
            "{capture}: {:?}",
            k.iter().find(|k| fine(k))
        );
    }
    let k = keys("*.to_?=sketch,*.attn1.probs=stats", "named.sdt");
    for s in [".attn1.to_q", ".attn2.to_k", ".attn2.to_v", ".attn1.probs"] {
        assert!(k.iter().any(|k| k.ends_with(s)), "no {s}");
    }
    assert!(!k.iter().any(|k| k.ends_with(".attn2.probs")));
}

/// The folder's `scheduler_config.json` is validated on every recording: nonsense is refused
/// with the file and key named; betas that are not SD's are refused by the k-diffusion sampler
/// and followed by `--sampler-impl diffusers`, whose header says what it ran.
#[test]
fn the_scheduler_config_is_validated_and_followed() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("model");
    sdtrace::model::synth::write_model(&folder, sdtrace::model::synth::SynthSize::Tiny, 3).unwrap();
    let config = folder.join("scheduler/scheduler_config.json");
    let original = std::fs::read_to_string(&config).unwrap();
    let record = |args: &[&str], out: &str| {
        let o = sdtrace()
            .arg("record")
            .arg("--model")
            .arg(&folder)
            .args([
                "--size", "64x64", "--steps", "3", "--seed", "1", "-q", "--no-png",
            ])
            .args(args)
            .arg("-o")
            .arg(dir.path().join(out))
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    for (from, to, key) in [
        ("\"beta_start\":0.00085", "\"beta_start\":-1", "beta_start"),
        (
            "\"num_train_timesteps\":1000",
            "\"num_train_timesteps\":0",
            "num_train_timesteps",
        ),
        (
            "\"prediction_type\":\"epsilon\"",
            "\"prediction_type\":\"sample\"",
            "prediction_type",
        ),
    ] {
        let compact = original.replace([' ', '\n'], "");
        assert!(compact.contains(from), "{compact}");
        std::fs::write(&config, compact.replace(from, to)).unwrap();
        let (code, err) = record(&[], "bad.sdt");
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("scheduler_config.json") && err.contains(key),
            "{err}"
        );
        assert!(!dir.path().join("bad.sdt").exists());
    }
    std::fs::write(&config, original.replace("0.00085", "0.001")).unwrap();
    let (code, err) = record(&[], "kd.sdt");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--sampler-impl diffusers"), "{err}");
    let (code, err) = record(
        &["--sampler", "ddim", "--sampler-impl", "diffusers"],
        "d.sdt",
    );
    assert_eq!(code, 0, "{err}");
    let t = TraceReader::open(dir.path().join("d.sdt")).unwrap();
    let s = &t.header().settings;
    assert_eq!(s.extra["sampler_impl"], "diffusers");
    assert_eq!(s.extra["sampler_params"]["scheduler"]["beta_start"], 0.001);
    assert_eq!(s.extra["timesteps"], serde_json::json!([667.0, 334.0, 1.0]));
    assert_eq!(s.extra["init_sigma"], 1.0);
    for (args, what) in [
        (
            &["--sampler", "euler-a", "--sampler-impl", "diffusers"][..],
            "euler-a",
        ),
        (
            &["--sampler-impl", "diffusers", "--cfg", "1"][..],
            "--cfg above 1",
        ),
    ] {
        let (code, err) = record(args, "no.sdt");
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(what), "{err}");
    }
}
