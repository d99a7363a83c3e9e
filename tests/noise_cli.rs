//! `--rng` end to end: `sdtrace noise` files and comparisons, `record --rng/--ensd` on the tiny
//! synthetic model (the header, the initial and ancestral draws), noise files as input, and
//! `report` naming a GPU RNG wave between two recorded runs.

use sdtrace::sampling::rng::{FileNoise, TorchCpuNoise, TorchCudaNoise};
use sdtrace::trace::TraceReader;
mod common;

use common::sdtrace;
use std::path::Path;

fn model() -> &'static Path {
    common::tiny_model("noise-test-model")
}

fn record(args: &[&str], out: &Path) -> (i32, String) {
    let o = sdtrace()
        .arg("record")
        .arg("--model")
        .arg(model())
        .args(["--seed", "42", "--steps", "3", "--no-png", "-q"])
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

fn payload(r: &TraceReader, key: &str, step: Option<u32>) -> Vec<f32> {
    let e = r.find(key, step, 0).unwrap_or_else(|| panic!("no {key}"));
    let meta = r.read_meta(e).unwrap();
    r.read_payload(&meta)
        .unwrap()
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn noise_files_hold_the_generators_draw() {
    let dir = tempfile::tempdir().unwrap();
    for ext in ["npy", "safetensors"] {
        let out = dir.path().join(format!("x.{ext}"));
        sdtrace()
            .args([
                "noise",
                "--rng",
                "torch-cpu",
                "--seed",
                "5",
                "--size",
                "64x64",
                "-o",
            ])
            .arg(&out)
            .assert()
            .success();
        let mut f = FileNoise::open(&out).unwrap();
        assert_eq!(
            f.take(&[1, 4, 8, 8]).unwrap(),
            TorchCpuNoise::new(5).draw(256)
        );
    }
    let o = sdtrace()
        .args(["noise", "--rng", "torch-cuda:99999", "-o", "x.npy"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("1 to 4096"));
    let o = sdtrace()
        .args([
            "noise",
            "--compare",
            "gtx1070,t4,cpu",
            "--sizes",
            "512,704",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let pairs = v["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 6);
    let at = |size: &str, a: &str, b: &str| {
        pairs
            .iter()
            .find(|p| p["size"] == size && p["a"] == a && p["b"] == b)
            .unwrap()
            .clone()
    };
    assert_eq!(at("512x512", "gtx1070", "t4")["result"], "identical");
    let p = at("704x704", "gtx1070", "t4");
    assert_eq!(p["result"], "differs");
    assert_eq!(p["differs_from"], 30_720);
    assert_eq!(p["diagnosis"]["class"], "gpu-wave");
    assert_eq!(
        at("512x512", "t4", "cpu")["diagnosis"]["class"],
        "unrelated"
    );
}

#[test]
fn record_draws_initial_and_ancestral_noise_like_a1111() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.sdt");
    let (c, err) = record(
        &[
            "--size",
            "64x64",
            "--sampler",
            "euler-a",
            "--rng",
            "torch-cpu",
        ],
        &plain,
    );
    assert_eq!(c, 0, "{err}");
    let r = TraceReader::open(&plain).unwrap();
    let s = &r.header().settings;
    assert_eq!(s.rng.as_deref(), Some("torch-cpu"));
    assert_eq!(s.extra["rng_params"]["name"], "torch-cpu");
    assert_eq!(s.extra["rng_params"]["params"]["seed"], 42);
    assert_eq!(s.extra["rng_params"]["params"]["ensd"], 0);
    // The initial noise, then each step's noise continuing the same generator.
    let mut g = TorchCpuNoise::new(42);
    assert_eq!(payload(&r, "noise.initial", None), g.draw(256));
    assert_eq!(payload(&r, "sampler.noise", Some(0)), g.draw(256));
    assert_eq!(payload(&r, "sampler.noise", Some(1)), g.draw(256));

    // ENSD: the same initial noise; the ancestral draws come from seed + ENSD.
    let ensd = dir.path().join("ensd.sdt");
    let (c, err) = record(
        &[
            "--size",
            "64x64",
            "--sampler",
            "euler-a",
            "--rng",
            "torch-cpu",
            "--ensd",
            "31337",
        ],
        &ensd,
    );
    assert_eq!(c, 0, "{err}");
    let r = TraceReader::open(&ensd).unwrap();
    assert_eq!(
        r.header().settings.extra["rng_params"]["params"]["ensd"],
        31337
    );
    assert_eq!(
        payload(&r, "noise.initial", None),
        TorchCpuNoise::new(42).draw(256)
    );
    let mut g = TorchCpuNoise::new(42 + 31337);
    assert_eq!(payload(&r, "sampler.noise", Some(0)), g.draw(256));
    assert_eq!(payload(&r, "sampler.noise", Some(1)), g.draw(256));

    // The report blames the ancestral noise, not numeric drift.
    let o = sdtrace()
        .args(["report", "--format", "json"])
        .arg(&plain)
        .arg(&ensd)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verdict"]["class"], "noise-rng", "{}", v["verdict"]);
    assert!(
        v["verdict"]["summary"]
            .as_str()
            .unwrap()
            .contains("the ancestral noise step 0 sampler.noise differs"),
        "{}",
        v["verdict"]
    );
    let noise = v["noise"].as_array().unwrap();
    assert_eq!(noise[0]["label"], "noise.initial");
    assert_eq!(noise[0]["class"], "identical");
    assert_eq!(noise[1]["class"], "unrelated");
}

#[test]
fn report_names_the_gpu_wave_between_two_cards() {
    let dir = tempfile::tempdir().unwrap();
    // 72×72: 324 latent elements; a 1-SM, 256-thread card has a wave of 256, a 2-SM one 512.
    let (a, b) = (dir.path().join("a.sdt"), dir.path().join("b.sdt"));
    for (out, rng) in [(&a, "torch-cuda:1,256"), (&b, "torch-cuda:2,256")] {
        let (c, err) = record(
            &["--size", "72x72", "--sampler", "euler", "--rng", rng],
            out,
        );
        assert_eq!(c, 0, "{err}");
    }
    let r = TraceReader::open(&a).unwrap();
    assert_eq!(r.header().settings.rng.as_deref(), Some("torch-cuda:1,256"));
    assert_eq!(
        r.header().settings.extra["rng_params"]["params"]["wave_elements"],
        256
    );
    assert_eq!(
        payload(&r, "noise.initial", None),
        TorchCudaNoise::new(42, 1, 256, None).randn_n(324)
    );
    let o = sdtrace()
        .args(["report", "--format", "json"])
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verdict"]["class"], "noise-rng");
    assert_eq!(v["noise"][0]["class"], "gpu-wave");
    assert_eq!(v["noise"][0]["agree_prefix"], 256);
    assert_eq!(
        v["records"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == "noise.initial")
            .unwrap()["noise"]["wave"]["elements"],
        256
    );
    let text = sdtrace().arg("report").arg(&a).arg(&b).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains("GPU RNG wave of 256 elements")
            && flat.contains("Headers: settings.rng torch-cuda:1,256 vs torch-cuda:2,256")
            && text.contains(
                "noise     noise.initial: gpu-wave (the first 256 of 324 elements agree)"
            ),
        "{text}"
    );
}

#[test]
fn noise_from_a_file_and_its_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x_T.safetensors");
    sdtrace()
        .args([
            "noise",
            "--rng",
            "torch-cuda:t4",
            "--seed",
            "7",
            "--size",
            "64x64",
            "-o",
        ])
        .arg(&file)
        .assert()
        .success();
    let spec = format!("file:{}", file.display());
    let out = dir.path().join("f.sdt");
    let (c, err) = record(
        &["--size", "64x64", "--sampler", "euler", "--rng", &spec],
        &out,
    );
    assert_eq!(c, 0, "{err}");
    let r = TraceReader::open(&out).unwrap();
    assert_eq!(
        payload(&r, "noise.initial", None),
        TorchCudaNoise::new(7, 40, 1024, None).randn_n(256)
    );
    assert_eq!(r.header().settings.extra["rng_params"]["name"], "file");
    // Wrong size, missing ancestral draws, device on the CPU: refused before any trace exists.
    for (args, want) in [
        (
            vec!["--size", "128x64"],
            "has shape [1, 4, 8, 8] (a 64x64 image)",
        ),
        (
            vec!["--size", "64x64", "--sampler", "euler-a"],
            "draw 2 of shape [1, 4, 8, 8] is needed, but the file holds only noise.initial",
        ),
    ] {
        let bad = dir.path().join("bad.sdt");
        let mut all = args.clone();
        all.extend(["--rng", spec.as_str()]);
        let (c, err) = record(&all, &bad);
        assert_eq!(c, 2, "{err}");
        assert!(err.contains(want), "{err}");
        assert!(!bad.exists());
    }
    let bad = dir.path().join("dev.sdt");
    let (c, err) = record(&["--size", "64x64", "--rng", "device"], &bad);
    assert_eq!(c, 2, "{err}");
    assert!(err.contains("cannot be seeded"), "{err}");
    assert!(!bad.exists());
}

#[test]
fn noise_compare_concludes_each_pair_and_blames_compare_for_unknown_cards() {
    let o = sdtrace()
        .args(["noise", "--compare", "gtx1070,t4,cpu", "--sizes", "512,704"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    let tail = &lines[lines.len() - 3..];
    assert_eq!(
        tail,
        [
            "  gtx1070 vs t4: agree up to 696×696, differ from 704×704 (the first 30720 elements agree)",
            "  gtx1070 vs cpu: differ at every size (different generators)",
            "  t4 vs cpu: differ at every size (different generators)",
        ],
        "{out}"
    );
    let o = sdtrace()
        .args([
            "noise",
            "--compare",
            "gtx1070,t4",
            "--sizes",
            "512",
            "--json",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["conclusions"][0],
        "gtx1070 vs t4: agree up to 696×696, differ from 704×704 (the first 30720 elements agree)"
    );
    // An unknown card is --compare's fault, and the known names are listed.
    let o = sdtrace()
        .args(["noise", "--compare", "gtx1070,gtx9999"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--compare 'gtx9999': unknown generator") && err.contains("rtx3060"),
        "{err}"
    );
    assert!(!err.contains("--rng '"), "{err}");
}
