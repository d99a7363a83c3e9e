//! Divergence analysis end to end: traces written through the trace API with planted errors,
//! compared and judged; every metric against a hand computation.

mod common;

use common::{Rng, fixed_header, normal_vec, observe};
use sdtrace::DType;
use sdtrace::analysis::{
    Basis, CompareOptions, Comparison, FailOn, KeyMap, Status, TolConfig, TolSpec, VerdictClass,
    compare_paths, judge,
};
use sdtrace::probe::{Policy, Probe};
use sdtrace::trace::{TraceWriter, WriterOptions};
use std::path::{Path, PathBuf};

const STEPS: u32 = 6;
const UNET: [&str; 5] = [
    "unet.conv_in",
    "unet.down_blocks.0",
    "unet.mid_block",
    "unet.up_blocks.0",
    "unet.conv_out",
];

/// What to plant in a synthetic run.
#[derive(Clone, Default)]
struct Plant {
    /// Perturb this key at this step by relative error `eps`; every later record carries it.
    at: Option<(&'static str, u32)>,
    eps: f64,
    /// Latent error factor per step after the plant.
    growth: f64,
    /// The first `k` noise elements equal, the rest redrawn.
    noise_tail_from: Option<usize>,
    text_differs: bool,
    /// Put a NaN into this key at this step.
    nan_at: Option<(&'static str, u32)>,
    /// Capture rule for everything (`full`, `sketch`, `stats`).
    fidelity: &'static str,
    steps: Option<u32>,
    /// Rename `unet.` to this prefix.
    rename: Option<&'static str>,
    /// Uniform relative error on every stepped record (a "noise floor" run).
    floor: f64,
}

/// `base` with relative L2 error exactly `delta` (signs from `rng`): a_i = b_i (1 ± delta).
fn perturb(base: &[f64], delta: f64, rng: &mut Rng) -> Vec<f64> {
    base.iter()
        .map(|&b| {
            let s = if rng.next_u64() & 1 == 0 { 1.0 } else { -1.0 };
            b * (1.0 + s * delta)
        })
        .collect()
}

fn write_run(path: &Path, p: &Plant) {
    let mut policy = Policy::default();
    policy.push(
        format!(
            "*={}",
            if p.fidelity.is_empty() {
                "full"
            } else {
                p.fidelity
            }
        )
        .parse()
        .unwrap(),
    );
    let steps = p.steps.unwrap_or(STEPS);
    let mut header = fixed_header("planted");
    header.settings.steps = Some(steps);
    let writer = TraceWriter::create(path, &header, WriterOptions::default()).unwrap();
    let probe = Probe::new(writer, policy);
    let mut base_rng = Rng(7);
    let mut sign_rng = Rng(99);
    let shape = [1usize, 4, 8, 8];
    let name = |k: &str| match p.rename {
        Some(pre) => k.replacen("unet.", pre, 1),
        None => k.to_string(),
    };
    let mut noise = normal_vec(&mut base_rng, 256, 1.0);
    if let Some(k) = p.noise_tail_from {
        let mut r = Rng(12345);
        for v in &mut noise[k..] {
            *v = r.normal();
        }
    }
    observe(&probe, "noise.initial", DType::F32, &shape, &noise);
    let mut cond = normal_vec(&mut base_rng, 77 * 8, 0.5);
    if p.text_differs {
        cond[3] += 0.25;
    }
    observe(&probe, "text.cond", DType::F16, &[1, 77, 8], &cond);
    let mut delta = 0.0f64;
    let mut planted = false;
    for step in 0..steps {
        probe.set_step(Some(step), 0).unwrap();
        if planted {
            delta *= p.growth;
        }
        let mut record = |key: &str, base: Vec<f64>, delta: &mut f64, planted: &mut bool| {
            if p.at == Some((leak(key), step)) {
                *delta = p.eps;
                *planted = true;
            }
            let d = *delta + p.floor;
            let mut vals = if d > 0.0 {
                perturb(&base, d, &mut sign_rng)
            } else {
                base
            };
            if p.nan_at == Some((leak(key), step)) {
                vals[5] = f64::NAN;
            }
            observe(&probe, &name(key), DType::F32, &shape, &vals);
        };
        record(
            "sampler.x",
            normal_vec(&mut base_rng, 256, 1.0),
            &mut delta,
            &mut planted,
        );
        for k in UNET {
            record(
                k,
                normal_vec(&mut base_rng, 256, 1.0),
                &mut delta,
                &mut planted,
            );
        }
    }
    probe.set_step(None, 0).unwrap();
    let img: Vec<f64> = (0..3 * 16 * 16).map(|i| (i * 7 % 256) as f64).collect();
    observe(&probe, "image", DType::U8, &[1, 3, 16, 16], &img);
    probe.finish().unwrap();
}

/// Interned key names for comparing with `Plant::at` (keys are 'static in the test).
fn leak(key: &str) -> &'static str {
    for k in UNET.iter().chain(&["sampler.x"]) {
        if *k == key {
            return k;
        }
    }
    "?"
}

struct Pair {
    _dir: tempfile::TempDir,
    a: PathBuf,
    b: PathBuf,
}

fn pair(a: &Plant, b: &Plant) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (dir.path().join("a.sdt"), dir.path().join("b.sdt"));
    write_run(&pa, a);
    write_run(&pb, b);
    Pair {
        _dir: dir,
        a: pa,
        b: pb,
    }
}

fn run(p: &Pair, tol: &TolConfig) -> (Comparison, sdtrace::analysis::Judgement) {
    let opts = CompareOptions {
        tol: tol.clone(),
        ..Default::default()
    };
    let c = compare_paths(&p.a, &p.b, None, &opts).unwrap();
    let j = judge(&c, tol, &FailOn::FirstExceed.into());
    (c, j)
}

#[test]
fn identical_traces_report_identity() {
    for fidelity in ["full", "sketch", "stats"] {
        let plant = Plant {
            fidelity,
            ..Default::default()
        };
        let p = pair(&plant, &plant);
        let (c, j) = run(&p, &TolConfig::default());
        assert_eq!(c.records.len(), 2 + 6 * STEPS as usize + 1);
        assert!(c.only_a.is_empty() && c.only_b.is_empty() && c.header_diffs.is_empty());
        assert_eq!(j.verdict.class, VerdictClass::Identical, "{fidelity}");
        assert_eq!(j.verdict.exit_code, 0);
        assert!(j.source.is_none() && j.first_non_identical.is_none());
        assert_eq!(j.counts.identical, c.records.len());
    }
}

#[test]
fn planted_error_names_its_key_and_step_as_source() {
    for (fidelity, key, step) in [
        ("full", "unet.mid_block", 2),
        ("full", "unet.conv_in", 0),
        ("full", "sampler.x", 3),
        ("sketch", "unet.up_blocks.0", 2),
        ("sketch", "unet.down_blocks.0", 1),
    ] {
        let a = Plant {
            fidelity,
            ..Default::default()
        };
        let b = Plant {
            fidelity,
            at: Some((key, step)),
            eps: 1e-4,
            growth: 1.8,
            ..Default::default()
        };
        let p = pair(&a, &b);
        let (c, j) = run(&p, &TolConfig::default());
        let what = format!("{fidelity} {key}@{step}");
        let src = j
            .source
            .as_ref()
            .unwrap_or_else(|| panic!("no source for {what}"));
        assert_eq!((src.key.as_str(), src.step), (key, Some(step)), "{what}");
        assert!(src.over_tolerance, "{what}");
        assert_eq!(src.error_in, 0.0, "{what}");
        let expect_basis = if fidelity == "full" {
            Basis::Payload
        } else {
            Basis::Sketch
        };
        let first = j.first_non_identical.unwrap();
        assert_eq!(
            (c.records[first].key.as_str(), c.records[first].step),
            (key, Some(step))
        );
        assert_eq!(c.records[first].basis, expect_basis);
        assert_eq!(j.first_over_tolerance, Some(first));
        // Exactly one creator: everything downstream carries.
        let creators: Vec<String> = (0..c.records.len())
            .filter(|&i| j.records[i].creates)
            .map(|i| c.records[i].label())
            .collect();
        assert_eq!(creators.len(), 1, "{what}: {creators:?}");
        let amp = j
            .amplification
            .unwrap_or_else(|| panic!("no amplification for {what}"));
        assert!(amp.onset_step >= step, "{what}: onset {}", amp.onset_step);
        assert!((amp.rate_per_step - 1.8).abs() < 0.15, "{what}: {amp:?}");
        assert!(amp.r2 > 0.95, "{what}: {amp:?}");
        assert_eq!(j.verdict.class, VerdictClass::NumericDrift);
        assert_eq!(j.verdict.exit_code, 1);
        assert!(
            j.verdict.summary.contains(&format!("step {step} {key}")),
            "{}",
            j.verdict.summary
        );
        // The image is identical in this model: `--fail-on image` passes.
        let ji = judge(&c, &TolConfig::default(), &FailOn::Image.into());
        assert_eq!(ji.verdict.exit_code, 0, "{what}");
        // A loose tolerance passes everything, and the smallest passing tolerance is the max.
        let worst = (0..c.records.len())
            .filter_map(|i| j.records[i].required)
            .map(|q| q.rel)
            .fold(0.0, f64::max);
        let loose = TolConfig {
            global: Some(TolSpec {
                rel: Some(worst),
                abs: None,
            }),
            ..Default::default()
        };
        assert_eq!(
            judge(&c, &loose, &FailOn::FirstExceed.into())
                .verdict
                .exit_code,
            0,
            "{what}"
        );
    }
}

#[test]
fn payload_metrics_match_hand_computation() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, vals: &[f64], fid: &str| {
        let path = dir.path().join(name);
        let mut policy = Policy::default();
        policy.push(format!("*={fid}").parse().unwrap());
        let w =
            TraceWriter::create(&path, &fixed_header("hand"), WriterOptions::default()).unwrap();
        let probe = Probe::new(w, policy);
        observe(&probe, "unet.mid_block", DType::F32, &[2, 3], vals);
        probe.finish().unwrap();
        path
    };
    let a = [1.0, -2.0, 3.0, f64::NAN, 0.5, f64::INFINITY];
    let b = [1.0, -2.5, 3.0, 4.0, 0.25, f64::INFINITY];
    for fid in ["full", "sketch"] {
        let pa = write(&format!("a{fid}.sdt"), &a, fid);
        let pb = write(&format!("b{fid}.sdt"), &b, fid);
        let tol = TolConfig {
            global: Some(TolSpec {
                rel: Some(0.3),
                abs: Some(0.0),
            }),
            ..Default::default()
        };
        let opts = CompareOptions {
            tol: tol.clone(),
            ..Default::default()
        };
        let c = compare_paths(&pa, &pb, None, &opts).unwrap();
        let r = &c.records[0];
        // Finite on both sides: indices 0, 1, 2, 4. d = [0, 0.5, 0, 0.25]; b = [1, -2.5, 3, 0.25].
        let diff_l2 = (0.25f64 + 0.0625).sqrt();
        let nb = (1.0f64 + 6.25 + 9.0 + 0.0625).sqrt();
        if fid == "full" {
            let m = r.payload.as_ref().unwrap();
            assert_eq!((m.count, m.compared), (6, 4));
            assert_eq!((m.max_abs, m.max_abs_index), (0.5, 1));
            assert_eq!(m.mean_abs, 0.75 / 4.0);
            assert!((m.rel_l2 - diff_l2 / nb).abs() < 1e-15);
            let na = (1.0f64 + 4.0 + 9.0 + 0.25).sqrt();
            assert!((m.cosine - (1.0 + 5.0 + 9.0 + 0.125) / (na * nb)).abs() < 1e-15);
            // |d| > 0.3|b|: 0.5 > 0.75? no; 0.25 > 0.075 yes.
            assert_eq!(m.beyond, 1);
            assert_eq!(m.nonfinite_mismatch, 1);
            assert_eq!(m.first_nonfinite_mismatch, Some(3));
            assert_eq!(m.first_diff_index, Some(1));
            // -2 vs -2.5: 2^21 ULPs; 0.5 vs 0.25: 2^23.
            assert_eq!(m.ulp_max, Some(1 << 23));
            assert!(!m.bit_identical);
        } else {
            assert_eq!(r.basis, Basis::Sketch);
            // The sketch skips non-finite elements on each side, so index 3 (NaN vs 4) adds
            // 4 to ‖a−b‖: estimate ≈ √(0.3125 + 16) / ‖b‖ where ‖b‖ counts the 4 too.
            let nb_all = (nb * nb + 16.0).sqrt();
            let want = (0.3125f64 + 16.0).sqrt() / nb_all;
            let got = r.rel_l2.unwrap();
            assert!(
                (got - want).abs() <= 4.0 * r.rel_l2_error.unwrap() * want,
                "{got} vs {want}"
            );
            // NaN count differs by one: a lower bound from the summaries.
            assert_eq!(r.nonfinite_mismatch, 1);
        }
        let j = judge(&c, &tol, &FailOn::FirstExceed.into());
        assert_eq!(j.records[0].status, Status::Fail);
        assert_eq!(j.verdict.class, VerdictClass::NanInf);
    }
}

#[test]
fn streams_large_payloads_side_by_side() {
    // 6 MiB per side: over the whole-read limit, so A streams through the helper thread.
    let dir = tempfile::tempdir().unwrap();
    let n = 1_572_864usize;
    let mut rng = Rng(3);
    let b: Vec<f64> = (0..n).map(|_| rng.uniform() + 1.0).collect();
    let mut a = b.clone();
    a[n - 10] += 0.5;
    let mut paths = Vec::new();
    for (name, vals) in [("a.sdt", &a), ("b.sdt", &b)] {
        let path = dir.path().join(name);
        let mut policy = Policy::default();
        policy.push("*=full:zstd".parse().unwrap());
        let w = TraceWriter::create(&path, &fixed_header("big"), WriterOptions::default()).unwrap();
        let probe = Probe::new(w, policy);
        observe(&probe, "unet.mid_block", DType::F32, &[n], vals);
        probe.finish().unwrap();
        paths.push(path);
    }
    let c = compare_paths(&paths[0], &paths[1], None, &CompareOptions::default()).unwrap();
    let m = c.records[0].payload.as_ref().unwrap();
    let d = (a[n - 10] as f32 - b[n - 10] as f32) as f64;
    assert_eq!(
        (m.max_abs, m.max_abs_index, m.compared),
        (d, (n - 10) as u64, n as u64)
    );
    assert_eq!(m.first_diff_index, Some((n - 10) as u64));
}

#[test]
fn verdict_classes() {
    let base = Plant::default();
    // Noise: the first 100 elements agree.
    let p = pair(
        &base,
        &Plant {
            noise_tail_from: Some(100),
            ..Default::default()
        },
    );
    let (_, j) = run(&p, &TolConfig::default());
    assert_eq!(j.verdict.class, VerdictClass::NoiseRng);
    assert!(
        j.verdict
            .summary
            .contains("The first 100 elements are bit-identical"),
        "{}",
        j.verdict.summary
    );
    // Conditioning.
    let p = pair(
        &base,
        &Plant {
            text_differs: true,
            ..Default::default()
        },
    );
    let (c, j) = run(&p, &TolConfig::default());
    assert_eq!(j.verdict.class, VerdictClass::Conditioning);
    assert_eq!(c.records[j.source.as_ref().unwrap().index].key, "text.cond");
    // NaN.
    let p = pair(
        &base,
        &Plant {
            nan_at: Some(("unet.mid_block", 3)),
            ..Default::default()
        },
    );
    let (c, j) = run(&p, &TolConfig::default());
    assert_eq!(j.verdict.class, VerdictClass::NanInf);
    assert_eq!(
        c.records[j.first_nonfinite.unwrap()].label(),
        "step 3 unet.mid_block"
    );
    // Structural: a different number of steps.
    let p = pair(
        &base,
        &Plant {
            steps: Some(4),
            ..Default::default()
        },
    );
    let (c, j) = run(&p, &TolConfig::default());
    assert_eq!(j.verdict.class, VerdictClass::Structural);
    assert_eq!(j.verdict.exit_code, 3);
    assert_eq!(c.only_a.len(), 2 * 6);
    assert!(
        c.header_diffs
            .iter()
            .any(|d| d.field == "settings.steps" && d.structural)
    );
}

#[test]
fn key_map_pairs_renamed_keys() {
    let p = pair(
        &Plant::default(),
        &Plant {
            rename: Some("model.diffusion_model."),
            ..Default::default()
        },
    );
    let (c, _) = run(&p, &TolConfig::default());
    assert_eq!(c.only_a.len(), 5 * STEPS as usize);
    let map = KeyMap::parse("model.diffusion_model.* => unet.*\n", Path::new("m")).unwrap();
    let opts = CompareOptions {
        map,
        ..Default::default()
    };
    let c = compare_paths(&p.a, &p.b, None, &opts).unwrap();
    assert!(c.only_a.is_empty() && c.only_b.is_empty());
    assert_eq!(
        judge(&c, &TolConfig::default(), &FailOn::FirstExceed.into())
            .verdict
            .class,
        VerdictClass::Identical
    );
}

#[test]
fn noise_floor_sets_the_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb, pf) = (
        dir.path().join("a.sdt"),
        dir.path().join("b.sdt"),
        dir.path().join("f.sdt"),
    );
    write_run(&pa, &Plant::default());
    write_run(
        &pb,
        &Plant {
            floor: 2e-4,
            ..Default::default()
        },
    );
    write_run(
        &pf,
        &Plant {
            floor: 1e-4,
            ..Default::default()
        },
    );
    let tol = TolConfig::default();
    let c = compare_paths(&pa, &pb, None, &CompareOptions::default()).unwrap();
    assert_eq!(
        judge(&c, &tol, &FailOn::FirstExceed.into())
            .verdict
            .exit_code,
        1
    );
    let c = compare_paths(&pa, &pb, Some(&pf), &CompareOptions::default()).unwrap();
    let j = judge(&c, &tol, &FailOn::FirstExceed.into());
    assert_eq!(j.verdict.exit_code, 0, "{}", j.verdict.summary);
    let i = c
        .records
        .iter()
        .position(|r| r.key == "unet.mid_block")
        .unwrap();
    let f = c.records[i].floor.unwrap();
    assert!((f.rel_l2 - 1e-4).abs() < 1e-6, "{f:?}");
    assert!((j.records[i].tol.rel - 3.0 * f.rel_l2).abs() < 1e-15);
    // k = 1.5 makes the floor too tight: 2e-4 > 1.5e-4.
    let tight = TolConfig {
        floor_k: 1.5,
        ..Default::default()
    };
    assert_eq!(
        judge(&c, &tight, &FailOn::FirstExceed.into())
            .verdict
            .exit_code,
        1
    );
}

#[test]
fn saved_comparison_round_trips() {
    let p = pair(
        &Plant::default(),
        &Plant {
            at: Some(("unet.mid_block", 2)),
            eps: 1e-3,
            growth: 1.5,
            ..Default::default()
        },
    );
    let (c, j) = run(&p, &TolConfig::default());
    let path = p._dir.path().join("cmp.json");
    std::fs::write(&path, c.to_json()).unwrap();
    let back = Comparison::load(&path).unwrap();
    assert!(back == c, "the saved comparison reads back exactly");
    assert_eq!(
        judge(&back, &TolConfig::default(), &FailOn::FirstExceed.into()),
        j
    );
    std::fs::write(&path, "{\"schema\":\"other/9\"}").unwrap();
    let e = Comparison::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("schema 'other/9'") && e.contains("report --save"),
        "{e}"
    );
}
