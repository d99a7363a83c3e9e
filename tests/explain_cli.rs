//! `sdtrace explain A.png B.png` end to end on tiny PNGs written here: the webui's and
//! ComfyUI's parameters, the noise prediction with and without --cards, the exit codes, and
//! refusals that name the file.

mod common;

use common::sdtrace;
use sdtrace::image::encode_png;
use std::path::{Path, PathBuf};

/// A 2×2 PNG with the given text chunks.
fn png(dir: &Path, name: &str, text: &[(&str, &str)]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, encode_png(2, 2, &[128; 12], text).unwrap()).unwrap();
    path
}

const WEBUI: &str = "masterpiece, 1girl\nNegative prompt: lowres\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1744694513, Size: 832x832, Model hash: 2700c435, Model: anything-v3, Version: v1.10.1";

fn comfy(seed: u64) -> String {
    serde_json::json!({
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": 20, "cfg": 7, "sampler_name": "dpmpp_2m", "scheduler": "karras",
            "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "anything-v3.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 832, "height": 832, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "masterpiece, 1girl", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "lowres", "clip": ["4", 1]}},
    })
    .to_string()
}

fn explain(a: &Path, b: &Path, extra: &[&str]) -> (i32, String, String) {
    let o = sdtrace()
        .arg("explain")
        .arg(a)
        .arg(b)
        .args(extra)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The original report: the same webui settings on a GTX 1070 and a T4 at 832×832.
#[test]
fn two_webui_gpus_part_past_the_smaller_wave() {
    let dir = tempfile::tempdir().unwrap();
    let a = png(dir.path(), "gtx1070.png", &[("parameters", WEBUI)]);
    let b = png(dir.path(), "t4.png", &[("parameters", WEBUI)]);
    let (c, out, err) = explain(&a, &b, &["--cards", "gtx1070,t4"]);
    assert_eq!(c, 1, "{out}{err}");
    for want in [
        "A: GPU: no RNG field, the webui's default source",
        "A's card (--cards): gtx1070: 15 SMs × 2048 threads/SM = a wave of 30 720 elements",
        "B's card (--cards): t4: 40 SMs × 1024 threads/SM = a wave of 40 960 elements",
        "gtx1070 and t4 agree up to 696x696 and differ from 704x704",
        "the images' 832x832 (43 264 elements per draw) is past it: the noise differs from flat index 30 720",
        "Settings → Sampler parameters → Random number generator source: CPU (or NV",
        "--rng torch-cpu",
        "result: the settings agree; the noise differs",
    ] {
        assert!(out.contains(want), "{want}\n{out}");
    }
    // Below the smaller wave the same cards agree: exit 0.
    let small = WEBUI.replace("832x832", "640x640");
    let a = png(dir.path(), "a640.png", &[("parameters", &small)]);
    let b = png(dir.path(), "b640.png", &[("parameters", &small)]);
    let (c, out, _) = explain(&a, &b, &["--cards", "gtx1070,t4"]);
    assert_eq!(c, 0, "{out}");
    assert!(
        out.contains("result: the settings agree; the noise agrees"),
        "{out}"
    );
    // Without --cards: the table of common cards, and the answer depends on them.
    let a = png(dir.path(), "a.png", &[("parameters", WEBUI)]);
    let (c, out, _) = explain(&a, &a, &[]);
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains("gtx1070          15 × 2048    30 720  696x696      704x704      its own from index 30 720"),
        "{out}"
    );
    assert!(out.contains("name them with --cards A,B"), "{out}");
    assert!(
        out.contains("the noise may differ (depends on the cards)"),
        "{out}"
    );
}

/// The webui on its GPU against ComfyUI (which draws on the CPU), then with the webui on CPU.
#[test]
fn webui_against_comfyui() {
    let dir = tempfile::tempdir().unwrap();
    let w = png(dir.path(), "webui.png", &[("parameters", WEBUI)]);
    let prompt = comfy(1_744_694_513);
    let workflow = r#"{"nodes": [], "links": []}"#;
    let c = png(
        dir.path(),
        "comfy.png",
        &[("prompt", &prompt), ("workflow", workflow)],
    );
    let (code, out, err) = explain(&w, &c, &[]);
    assert_eq!(code, 1, "{out}{err}");
    for want in [
        "B: ",
        "(ComfyUI)",
        "ComfyUI draws the noise on the CPU",
        "GPU noise and CPU noise never agree",
        "ComfyUI already draws the noise on the CPU: set the webui's generator to CPU",
        "? Version",
        "≠ RNG source",
    ] {
        assert!(out.contains(want), "{want}\n{out}");
    }
    // The webui set to CPU: the same generator, the same settings (Version only on one side).
    let cpu = format!("{WEBUI}, RNG: CPU");
    let w = png(dir.path(), "webui-cpu.png", &[("parameters", &cpu)]);
    let (code, out, _) = explain(&w, &c, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("result: the settings agree; the noise agrees"),
        "{out}"
    );
    // A setting that differs is marked and fails the comparison.
    let steps = cpu.replace("Steps: 20", "Steps: 30");
    let w = png(dir.path(), "webui-30.png", &[("parameters", &steps)]);
    let (code, out, _) = explain(&w, &c, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("≠ Steps"), "{out}");
    assert!(
        out.contains("result: 1 setting differs; the noise agrees"),
        "{out}"
    );
}

#[test]
fn bad_inputs_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = png(dir.path(), "good.png", &[("parameters", WEBUI)]);
    let bare = png(dir.path(), "bare.png", &[("Software", "paint")]);
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "not an image").unwrap();
    for (file, want) in [
        (&bare, "no generation parameters"),
        (&text, "not a PNG file"),
    ] {
        let (c, out, err) = explain(&good, file, &[]);
        assert_eq!(c, 2, "{out}{err}");
        assert!(
            err.contains(&file.display().to_string()) && err.contains(want),
            "{err}"
        );
    }
    let (c, _, err) = explain(&good, &dir.path().join("missing.png"), &[]);
    assert_eq!(c, 2);
    assert!(err.contains("missing.png"), "{err}");
    let (c, _, err) = explain(&good, &good, &["--cards", "gtx1070"]);
    assert_eq!(c, 2);
    assert!(err.contains("--cards 'gtx1070': give two cards"), "{err}");
    let (c, _, err) = explain(&good, &good, &["--cards", "gtx1070,gtx9999"]);
    assert_eq!(c, 2);
    assert!(
        err.contains("--cards 'gtx9999'") && err.contains("rtx3060"),
        "{err}"
    );
    let bad = png(dir.path(), "bad.png", &[("prompt", "{not json")]);
    let (c, _, err) = explain(&good, &bad, &[]);
    assert_eq!(c, 2);
    assert!(
        err.contains("bad.png") && err.contains("ComfyUI 'prompt' text"),
        "{err}"
    );
}

/// PNGs `sdtrace record` wrote name their generator: an emulated card is read back from the
/// `sdtrace RNG` field, so no --cards is needed.
#[test]
fn sdtrace_pngs_name_their_cards() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model("explain-test-model");
    let record = |choice: &[&str], name: &str| {
        let out = dir.path().join(format!("{name}.sdt"));
        let o = sdtrace()
            .arg("record")
            .arg("--model")
            .arg(model)
            .args(["--size", "64x64", "--steps", "1", "--seed", "7", "-q"])
            .args(["--prompt", "a house"])
            .args(choice)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        out.with_extension("png")
    };
    let gtx = record(&["--card", "gtx1070"], "gtx1070");
    let t4 = record(&["--card", "t4"], "t4");
    let cpu = record(&["--rng", "torch-cpu"], "cpu");
    let (c, out, err) = explain(&gtx, &t4, &[]);
    assert_eq!(c, 0, "{out}{err}");
    assert!(
        out.contains("A: GPU, emulated by sdtrace as torch-cuda:gtx1070")
            && out.contains("gtx1070 and t4 agree up to 696x696")
            && out.contains("within it: the same noise"),
        "{out}"
    );
    assert!(out.contains("A: ") && out.contains("(sdtrace)"), "{out}");
    let (c, out, _) = explain(&gtx, &cpu, &[]);
    assert_eq!(c, 1, "{out}");
    assert!(
        out.contains("gtx1070 and cpu are different generators"),
        "{out}"
    );
}
