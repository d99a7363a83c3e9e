//! A1111 infotext → recording settings: infotext lines as the webui wrote them across its
//! versions (and malformed ones, which must fail with the field named), the original report's
//! settings, and `sdtrace record --params / --params-file / --from-png` end to end on the tiny
//! model, with the A1111 compatibility switches recorded in the header.

mod common;

use common::sdtrace;

use sdtrace::params::InfotextSettings;
use sdtrace::sampling::SamplerKind;
use sdtrace::trace::TraceReader;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The original report's generation (research/domain-facts.md: anything-v3, old hash
/// 2700c435, DPM++ 2M Karras, 20 steps, CFG 7, seed 1744694513, ENSD 31337, clip skip 1, from
/// 576x576 up) in the webui's early-2023 layout. The prompt text was not published with the
/// settings; an anime-model prompt of the time stands in for it.
const REPORT: &str = "masterpiece, best quality, 1girl, solo, long hair, looking at viewer, smile, school uniform, cherry blossoms, outdoors
Negative prompt: lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry
Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1744694513, Size: 576x576, Model hash: 2700c435, Model: anything-v3, ENSD: 31337";

#[test]
fn the_original_reports_infotext_parses() {
    let s = InfotextSettings::parse(REPORT).unwrap();
    assert!(
        s.prompt
            .as_deref()
            .unwrap()
            .starts_with("masterpiece, best quality")
    );
    assert!(s.negative.as_deref().unwrap().ends_with("username, blurry"));
    assert_eq!(s.steps, Some(20));
    assert_eq!(s.sampler, Some(SamplerKind::DpmPp2mKarras));
    assert_eq!(s.cfg_scale, Some(7.0));
    assert_eq!(s.seed, Some(1_744_694_513));
    assert_eq!(s.size, Some((576, 576)));
    assert_eq!(s.model_hash.as_deref(), Some("2700c435"));
    assert_eq!(s.clip_skip, None);
    let not: Vec<&str> = s.not_applied.iter().map(|f| f.key.as_str()).collect();
    // No RNG field: the webui's GPU, which sdtrace asks about instead of guessing.
    assert_eq!(not, ["Model", "ENSD", "RNG"]);
    assert!(s.gpu_source);
    assert!(s.unknown.is_empty());
}

/// (infotext, steps, sampler, cfg, seed, size, clip skip, model hash, unknown keys)
type Case = (
    &'static str,
    u32,
    Option<SamplerKind>,
    f64,
    u64,
    (u32, u32),
    Option<u32>,
    Option<&'static str>,
    &'static [&'static str],
);

#[test]
fn infotexts_of_every_webui_era_parse() {
    let cases: [Case; 7] = [
        // Autumn 2022: Euler a, clip skip 2, ENSD, 8-hex model hash.
        (
            "masterpiece, best quality, 1girl\nNegative prompt: lowres, bad anatomy\nSteps: 28, Sampler: Euler a, CFG scale: 12, Seed: 3450349066, Size: 512x768, Model hash: 925997e9, Clip skip: 2, ENSD: 31337",
            28,
            Some(SamplerKind::EulerA),
            12.0,
            3_450_349_066,
            (512, 768),
            Some(2),
            Some("925997e9"),
            &[],
        ),
        // 1.6: 10-hex hash, VAE, RNG, Version.
        (
            "a photo of a cat\nNegative prompt: blurry\nSteps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 42, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, VAE hash: 735e4c3a44, VAE: vae-ft-mse-840000-ema-pruned.safetensors, Clip skip: 2, RNG: CPU, Version: v1.6.0",
            30,
            Some(SamplerKind::DpmPp2mKarras),
            7.0,
            42,
            (512, 512),
            Some(2),
            Some("6ce0161689"),
            &[],
        ),
        // 1.9+: the schedule type split off, quoted Lora hashes, hires fix.
        (
            "portrait, (detailed eyes:1.2), <lora:detail:0.6>\nNegative prompt: (worst quality:1.4)\nSteps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5.5, Seed: 123, Size: 640x832, Model hash: 0123456789, Model: someMix_v2, Denoising strength: 0.45, Hires upscale: 2, Hires upscaler: Latent, Lora hashes: \"detail: 0123abcd, style: 89ef\", Version: v1.10.1",
            25,
            Some(SamplerKind::DpmPp2mKarras),
            5.5,
            123,
            (640, 832),
            None,
            Some("0123456789"),
            &[],
        ),
        // Multi-line prompt and negative; DDIM; no model hash.
        (
            "line one,\nline two\nNegative prompt: bad,\nworse\nSteps: 50, Sampler: DDIM, CFG scale: 7.5, Seed: 1, Size: 768x512",
            50,
            Some(SamplerKind::Ddim),
            7.5,
            1,
            (768, 512),
            None,
            None,
            &[],
        ),
        // No negative prompt line; plain DPM++ 2M before 1.9 (uniform schedule).
        (
            "a castle on a hill\nSteps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 7, Size: 512x512, Face restoration: CodeFormer, Tiling: True",
            20,
            Some(SamplerKind::DpmPp2m),
            7.0,
            7,
            (512, 512),
            None,
            None,
            &["Tiling"],
        ),
        // A sampler sdtrace lacks: kept aside, not an error.
        (
            "x\nSteps: 20, Sampler: DPM++ SDE Karras, CFG scale: 7, Seed: 9, Size: 512x512",
            20,
            None,
            7.0,
            9,
            (512, 512),
            None,
            None,
            &[],
        ),
        // Euler with an extension's fields.
        (
            "x\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 9, Size: 512x512, ADetailer model: face_yolov8n.pt, ControlNet 0: \"Module: none, Model: None\"",
            20,
            Some(SamplerKind::Euler),
            7.0,
            9,
            (512, 512),
            None,
            None,
            &["ADetailer model", "ControlNet 0"],
        ),
    ];
    for (text, steps, sampler, cfg, seed, size, clip, hash, unknown) in cases {
        let s = InfotextSettings::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(s.steps, Some(steps), "{text}");
        assert_eq!(s.sampler, sampler, "{text}");
        assert_eq!(s.cfg_scale, Some(cfg), "{text}");
        assert_eq!(s.seed, Some(seed), "{text}");
        assert_eq!(s.size, Some(size), "{text}");
        assert_eq!(s.clip_skip, clip, "{text}");
        assert_eq!(s.model_hash.as_deref(), hash, "{text}");
        let u: Vec<&str> = s.unknown.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(u, unknown, "{text}");
        assert!(s.prompt.is_some(), "{text}");
    }
    // A prompt alone (no parameter line) is a prompt.
    let s = InfotextSettings::parse("just a prompt, with commas").unwrap();
    assert_eq!(s.prompt.as_deref(), Some("just a prompt, with commas"));
    assert_eq!(s.steps, None);
}

#[test]
fn malformed_infotexts_fail_naming_the_field() {
    for (text, field) in [
        ("x\nSteps: twenty, Sampler: Euler, CFG scale: 7", "Steps"),
        ("x\nSteps: 20, Sampler: Euler, Size: 512by512", "Size"),
        ("x\nSteps: 20, Sampler: Euler, Seed: -5", "Seed"),
        (
            "x\nSteps: 20, Sampler: Euler, CFG scale: seven",
            "CFG scale",
        ),
        ("x\nSteps: 20, Sampler: Euler, CFG scale: nan", "CFG scale"),
        ("x\nSteps: 20, Sampler: Euler, Size: 500x500", "Size"),
        ("x\nSteps: 20, Sampler: Euler, Clip skip: two", "Clip skip"),
    ] {
        let e = InfotextSettings::parse(text).unwrap_err().to_string();
        assert!(e.contains(&format!("'{field}'")), "{text}: {e}");
    }
    // An unreadable model hash is set aside, not applied as an expected hash.
    let s = InfotextSettings::parse("x\nSteps: 2, Sampler: Euler, Model hash: zz-top").unwrap();
    assert_eq!(s.model_hash, None);
    assert_eq!(s.not_applied[0].key, "Model hash");
}

// ---------------------------------------------------------------- through `sdtrace record`

fn model() -> &'static PathBuf {
    static M: OnceLock<PathBuf> = OnceLock::new();
    M.get_or_init(|| {
        let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join("infotext-test-model.safetensors");
        sdtrace::model::synth::write_checkpoint_file(
            &p,
            sdtrace::model::synth::SynthSize::Tiny,
            5,
            candle_core::DType::F32,
        )
        .unwrap();
        p
    })
}

fn record(args: &[&str], out: &Path) -> (i32, String) {
    let o = sdtrace()
        .arg("record")
        .arg("--model")
        .arg(model())
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

const TINY: &str = "a (red:1.3) house, [blue] sky\nNegative prompt: blurry\nSteps: 3, Sampler: Euler a, CFG scale: 6.5, Seed: 1744694513, Size: 64x72, Model hash: 2700c435, Model: anything-v3, ENSD: 31337, Clip skip: 2, Hires upscale: 2, Foo: bar";

#[test]
fn params_set_the_recording_and_are_accounted_for() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a.sdt");
    // No RNG field: the webui's GPU, whose noise depends on the card. Refused before any work,
    // with both commands.
    let (c, err) = record(&["--params", TINY], &out);
    assert_eq!(c, 2, "{err}");
    assert!(
        err.contains("--params: the infotext has no RNG field")
            && err.contains("--card gtx1070")
            && err.contains("--rng torch-cuda:SMS,THREADS")
            && err.contains("--rng torch-cpu"),
        "{err}"
    );
    assert!(!out.exists());
    // The infotext's model hash is checked: this is another file.
    let (c, err) = record(&["--params", TINY, "--rng", "torch-cpu"], &out);
    assert_eq!(c, 2, "{err}");
    assert!(
        err.contains("2700c435") && err.contains("--expect-hash off"),
        "{err}"
    );
    assert!(!out.exists());
    let (c, err) = record(
        &[
            "--params",
            TINY,
            "--expect-hash",
            "off",
            "--steps",
            "2",
            "--rng",
            "torch-cpu",
        ],
        &out,
    );
    assert_eq!(c, 0, "{err}");
    assert!(err.contains("applied: Prompt"), "{err}");
    assert!(
        err.contains("RNG '(absent: GPU)' (the webui's GPU source, whose noise depends on the card; --rng given on the command line decides)"),
        "{err}"
    );
    assert!(
        err.contains("Steps '3' (--steps given on the command line wins)"),
        "{err}"
    );
    assert!(err.contains("ENSD '31337' (--ensd 31337)"), "{err}");
    assert!(err.contains("unknown (ignored): Foo 'bar'"), "{err}");
    let r = TraceReader::open(&out).unwrap();
    let s = &r.header().settings;
    assert_eq!(s.prompt.as_deref(), Some("a (red:1.3) house, [blue] sky"));
    assert_eq!(s.negative_prompt.as_deref(), Some("blurry"));
    assert_eq!(s.steps, Some(2));
    assert_eq!(s.sampler.as_deref(), Some("euler-a"));
    assert_eq!(s.cfg_scale, Some(6.5));
    assert_eq!(s.seed, Some(1_744_694_513));
    assert_eq!((s.width, s.height), (Some(64), Some(72)));
    assert_eq!(s.extra["clip_skip"], 2);
    assert_eq!(s.extra["rng_params"]["params"]["ensd"], 31337);
    let info = &s.extra["infotext"];
    assert_eq!(info["source"], "--params");
    assert_eq!(info["text"], TINY);
    assert_eq!(info["unknown"][0]["key"], "Foo");
    // The same from a file and from the PNG sdtrace wrote: the same run, bit for bit.
    let file = dir.path().join("params.txt");
    std::fs::write(&file, TINY).unwrap();
    let b = dir.path().join("b.sdt");
    let f = file.to_str().unwrap();
    let (c, err) = record(
        &[
            "--params-file",
            f,
            "--expect-hash",
            "off",
            "--steps",
            "2",
            "--rng",
            "torch-cpu",
        ],
        &b,
    );
    assert_eq!(c, 0, "{err}");
    let png = out.with_extension("png");
    // The PNG says RNG: CPU, so --from-png needs no choice.
    let text = sdtrace::params::parameters_of_png(&std::fs::read(&png).unwrap()).unwrap();
    assert!(text.contains("RNG: CPU"), "{text}");
    let p = png.to_str().unwrap();
    let cc = dir.path().join("c.sdt");
    let (c, err) = record(&["--from-png", p, "--no-png"], &cc);
    assert_eq!(c, 0, "{err}");
    let hash = |path: &Path, key: &str, step: Option<u32>| {
        let r = TraceReader::open(path).unwrap();
        let e = r.find(key, step, 0).unwrap();
        r.read_meta(e).unwrap().summary.bits_hash
    };
    for path in [&b, &cc] {
        assert_eq!(hash(&out, "image", None), hash(path, "image", None));
        assert_eq!(hash(&out, "text.cond", None), hash(path, "text.cond", None));
    }
    // Refusals: not a PNG, no parameters, a file too strange to be an infotext.
    let (c, err) = record(&["--from-png", f], &dir.path().join("x.sdt"));
    assert_eq!(c, 2, "{err}");
    assert!(err.contains("--from-png") && err.contains("PNG"), "{err}");
    let (c, err) = record(
        &[
            "--params",
            "x\nSteps: many, Sampler: Euler, Seed: 1",
            "--rng",
            "torch-cpu",
        ],
        &dir.path().join("x.sdt"),
    );
    assert_eq!(c, 2, "{err}");
    assert!(err.contains("'Steps'") && err.contains("--params"), "{err}");
    let (c, err) = record(
        &[
            "--params",
            "x\nSteps: 2, Sampler: DPM++ SDE, Seed: 1",
            "--card",
            "t4",
        ],
        &dir.path().join("x.sdt"),
    );
    assert_eq!(c, 2, "{err}");
    assert!(
        err.contains("DPM++ SDE") && err.contains("--sampler"),
        "{err}"
    );
}

#[test]
fn a1111_switches_change_the_run_and_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let base = [
        "--size",
        "64x64",
        "--steps",
        "2",
        "--seed",
        "1",
        "--no-png",
        "-q",
        "--prompt",
        "a (red:1.5) house",
        "--negative",
        "blurry",
    ];
    let run = |extra: &[&str], name: &str| {
        let out = dir.path().join(name);
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let (c, err) = record(&args, &out);
        assert_eq!(c, 0, "{err}");
        TraceReader::open(&out).unwrap()
    };
    let plain = run(&[], "a.sdt");
    let old = run(
        &[
            "--a1111-alphas-fp16",
            "--a1111-old-karras",
            "--emphasis",
            "no-norm",
        ],
        "b.sdt",
    );
    let s = &old.header().settings;
    assert_eq!(
        s.extra["a1111"]["alphas_cumprod"],
        "fp16 (webui before 1.8)"
    );
    assert_eq!(s.extra["a1111"]["emphasis"], "no-norm");
    assert_eq!(s.extra["sampler_params"]["alphas_cumprod"], "f16");
    assert_eq!(
        s.extra["sampler_params"]["karras_bounds"],
        serde_json::json!([0.1, 10.0])
    );
    assert!(
        s.extra["numerics"]["emphasis"]
            .as_str()
            .unwrap()
            .contains("no-norm")
    );
    let sig = |r: &TraceReader| r.header().settings.extra["sigmas"][0].as_f64().unwrap();
    assert_eq!(sig(&old), 10.0);
    assert!((sig(&plain) - 14.614_643).abs() < 1e-4);
    let hash = |r: &TraceReader, key: &str| {
        r.read_meta(r.find(key, None, 0).unwrap())
            .unwrap()
            .summary
            .bits_hash
    };
    assert_ne!(hash(&plain, "text.cond"), hash(&old, "text.cond"));
    // Weights of 1 everywhere: no-norm and original agree.
    assert_eq!(hash(&plain, "text.uncond"), hash(&old, "text.uncond"));
}

#[test]
fn a1111_batching_follows_the_webui() {
    let dir = tempfile::tempdir().unwrap();
    let long = "red house, ".repeat(40);
    let run = |prompt: &str, extra: &[&str], name: &str| {
        let out = dir.path().join(name);
        let mut args = vec![
            "--size",
            "64x64",
            "--steps",
            "2",
            "--seed",
            "3",
            "--no-png",
            "-q",
            "--negative",
            "blurry",
            "--prompt",
            prompt,
        ];
        args.extend(extra);
        let (c, err) = record(&args, &out);
        assert_eq!(c, 0, "{err}");
        TraceReader::open(&out).unwrap()
    };
    let meta = |r: &TraceReader, key: &str, step: Option<u32>, eval: u32| {
        r.read_meta(
            r.find(key, step, eval)
                .unwrap_or_else(|| panic!("{key} {eval}")),
        )
        .unwrap()
    };
    // Equal token counts: one batch either way, in the other order; the same results.
    let ours = run("a (red:1.2) house", &[], "a.sdt");
    let webui = run("a (red:1.2) house", &["--a1111-cond-uncond"], "b.sdt");
    for key in ["sampler.eps.cond", "sampler.eps.uncond", "sampler.denoised"] {
        assert_eq!(
            meta(&ours, key, Some(1), 0).summary.bits_hash,
            meta(&webui, key, Some(1), 0).summary.bits_hash,
            "{key}"
        );
    }
    assert_eq!(
        meta(&webui, "unet.conv_out", Some(0), 0).shape,
        [2, 4, 8, 8]
    );
    // The webui's [cond; uncond] rows are stored [uncond; cond]: the UNet's records pair the
    // right halves, and the report finds nothing between the two batch orders.
    for key in ["unet.conv_in", "unet.mid_block", "unet.conv_out"] {
        let (a, b) = (meta(&ours, key, Some(0), 0), meta(&webui, key, Some(0), 0));
        assert_eq!(a.summary.bits_hash, b.summary.bits_hash, "{key}");
        assert_eq!(a.sketch, b.sketch, "{key}");
    }
    let s = &webui.header().settings.extra;
    assert_eq!(
        (s["cfg_rows"].as_str(), s["cfg_rows_stored"].as_str()),
        (Some("cond,uncond"), Some("uncond,cond"))
    );
    let report = sdtrace()
        .args(["report", "--format", "json"])
        .arg(dir.path().join("a.sdt"))
        .arg(dir.path().join("b.sdt"))
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(
        report.status.code(),
        Some(0),
        "{}",
        json["verdict"]["summary"]
    );
    assert!(
        json["header_diffs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["field"] == "settings.cfg_rows" && d["structural"] == false),
        "{}",
        json["header_diffs"]
    );
    assert!(
        webui.header().settings.extra["numerics"]["cond_uncond"]
            .as_str()
            .unwrap()
            .starts_with("a1111")
    );
    // A prompt of two chunks and a negative of one: the webui's two calls, no padding.
    let split = run(&long, &["--a1111-cond-uncond"], "c.sdt");
    assert_eq!(meta(&split, "text.cond", None, 0).shape, [1, 154, 32]);
    assert_eq!(meta(&split, "text.uncond", None, 0).shape, [1, 77, 32]);
    for eval in [0, 1] {
        assert_eq!(
            meta(&split, "unet.conv_out", Some(1), eval).shape,
            [1, 4, 8, 8]
        );
    }
    let tokens = &split.header().settings.extra["tokens"];
    assert_eq!(tokens["uncond"]["padding_chunks"], 0);
    assert_eq!(tokens["cond"]["chunks"], 2);
    // sdtrace's default pads the negative prompt with an empty chunk instead.
    let padded = run(&long, &[], "d.sdt");
    assert_eq!(meta(&padded, "text.uncond", None, 0).shape, [1, 154, 32]);
    assert_eq!(
        padded.header().settings.extra["tokens"]["uncond"]["padding_chunks"],
        1
    );
}

/// The generator survives record → PNG → --from-png: the webui's names where it has them, and
/// sdtrace's `sdtrace RNG` field (which the webui ignores) for an emulated card or sdtrace's own.
#[test]
fn the_png_names_its_generator_and_from_png_reads_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let base = [
        "--size",
        "64x64",
        "--steps",
        "1",
        "--seed",
        "5",
        "--prompt",
        "a house",
        "--sampler",
        "euler",
    ];
    for (choice, field, want) in [
        (
            &["--card", "gtx1070"][..],
            "sdtrace RNG: \"torch-cuda:gtx1070 (the webui's GPU source, as drawn on a GeForce GTX 1070)\"",
            "torch-cuda:15,2048",
        ),
        (
            &["--card", "12,1024"][..],
            "sdtrace RNG: \"torch-cuda:12,1024 (",
            "torch-cuda:12,1024",
        ),
        (&["--rng", "a1111-nv"][..], "RNG: NV", "a1111-nv"),
        (
            &["--rng", "sdtrace"][..],
            "sdtrace RNG: sdtrace (sdtrace's own generator; the webui cannot redraw this noise)",
            "sdtrace",
        ),
    ] {
        let first = dir.path().join("first.sdt");
        let args: Vec<&str> = base.iter().chain(choice).copied().collect();
        let (c, err) = record(&args, &first);
        assert_eq!(c, 0, "{err}");
        let png = first.with_extension("png");
        let text = sdtrace::params::parameters_of_png(&std::fs::read(&png).unwrap()).unwrap();
        assert!(text.contains(field), "{choice:?}: {text}");
        assert!(!text.contains("RNG: CPU"), "{choice:?}: {text}");
        let again = dir.path().join("again.sdt");
        let (c, err) = record(&["--from-png", png.to_str().unwrap(), "--no-png"], &again);
        assert_eq!(c, 0, "{choice:?}: {err}");
        let rng = |p: &Path| TraceReader::open(p).unwrap().header().settings.rng.clone();
        assert_eq!(rng(&again).as_deref(), Some(want), "{choice:?}");
        assert_eq!(rng(&first), rng(&again));
        let noise = |p: &Path| {
            let r = TraceReader::open(p).unwrap();
            let e = r.find("noise.initial", None, 0).unwrap();
            r.read_meta(e).unwrap().summary.bits_hash
        };
        assert_eq!(noise(&first), noise(&again), "{choice:?}");
    }
    // --card and --rng are one choice.
    let (c, err) = record(
        &["--card", "t4", "--rng", "torch-cpu"],
        &dir.path().join("x.sdt"),
    );
    assert_eq!(c, 2, "{err}");
    assert!(err.contains("--card") && err.contains("--rng"), "{err}");
    let (c, err) = record(&["--card", "gtx9999"], &dir.path().join("x.sdt"));
    assert_eq!(c, 2, "{err}");
    assert!(
        err.contains("--card 'gtx9999'") && err.contains("gtx1070"),
        "{err}"
    );
}

/// `--sampler` takes the webui's names too, through the same table as the infotext's Sampler.
#[test]
fn sampler_takes_the_webuis_names_and_suggests_the_nearest() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a.sdt");
    let (c, err) = record(
        &[
            "--sampler",
            "DPM++ 2M",
            "--schedule",
            "karras",
            "--size",
            "64x64",
            "--steps",
            "1",
            "--seed",
            "1",
            "--no-png",
            "-q",
        ],
        &out,
    );
    assert_eq!(c, 0, "{err}");
    let r = TraceReader::open(&out).unwrap();
    assert_eq!(
        r.header().settings.sampler.as_deref(),
        Some("dpmpp-2m-karras")
    );
    for (args, want) in [
        (
            &["--sampler", "dpm++2m karas"][..],
            "--sampler: unknown sampler 'dpm++2m karas'; did you mean 'DPM++ 2M Karras'?",
        ),
        (
            &["--sampler", "DPM++ SDE Karras"][..],
            "the webui's sampler 'DPM++ SDE' with schedule type 'Karras' has no sdtrace equivalent",
        ),
        (
            &["--sampler", "dpmpp-2m", "--schedule", "karras"][..],
            "'dpmpp-2m' is sdtrace's name and includes its schedule",
        ),
    ] {
        let x = dir.path().join("x.sdt");
        let (c, err) = record(args, &x);
        assert_eq!(c, 2, "{err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!x.exists());
    }
}
