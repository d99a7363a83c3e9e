//! `sdtrace record` on the tiny synthetic SDXL model (`synth --size sdxl-tiny`): both text
//! encoders' keys, the added conditioning (`unet.add_embedding`, pooled text), the size and
//! crop facts in the header, the samplers and batchings, f16, infotext round trips, and the
//! refusals (refiners, SDXL-only flags on SD 1.x).

mod common;

use common::sdtrace;
use sdtrace::model::synth::{SynthSize, write_model};
use sdtrace::trace::{Fidelity, RunStatus, TraceReader};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn model() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sdxl-test-model");
        write_model(&dir, SynthSize::SdxlTiny, 5).unwrap();
        dir
    })
}

/// `record` on `model` at 96x64 (latent 8×12: width and height apart), 3 steps.
fn record_with(model: &Path, args: &[&str], out: &Path) -> (i32, String) {
    let o = sdtrace()
        .arg("record")
        .arg("--model")
        .arg(model)
        .args(["--size", "96x64", "--seed", "7", "--steps", "3"])
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

fn record(args: &[&str], out: &Path) -> (i32, String) {
    record_with(model(), args, out)
}

const PROMPT: [&str; 4] = [
    "--prompt",
    "a (red:1.3) house, [sky]",
    "--negative",
    "blurry",
];

/// Every record's summary (its statistics and, for full payloads, the bits hash), by
/// (key, step, eval).
fn hashes(path: &Path) -> Vec<(String, String)> {
    let r = TraceReader::open(path).unwrap();
    r.entries()
        .iter()
        .map(|e| {
            let s = r.read_meta(e).unwrap().summary;
            (e.id().to_string(), format!("{s:?}"))
        })
        .collect()
}

#[test]
fn an_sdxl_recording_holds_both_encoders_and_the_added_conditioning() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("xl.sdt");
    let (c, err) = record(&PROMPT, &out);
    assert_eq!(c, 0, "{err}");
    assert!(dir.path().join("xl.png").is_file(), "no image");
    let r = TraceReader::open(&out).unwrap();
    assert_eq!(r.run_end().unwrap().status, RunStatus::Complete);
    let shape = |key: &str, step: Option<u32>, eval: u32| {
        r.find(key, step, eval)
            .unwrap_or_else(|| panic!("no {key} at {step:?}/{eval}"))
            .shape
            .clone()
    };
    // Both encoders, once for the negative (eval 0) and once for the prompt (eval 1).
    for eval in [0, 1] {
        assert_eq!(
            shape("text_encoder.encoder.layers.1", None, eval),
            [1, 77, 32]
        );
        assert_eq!(
            shape("text_encoder.final_layer_norm", None, eval),
            [1, 77, 32]
        );
        assert_eq!(
            shape("text_encoder_2.encoder.layers.1", None, eval),
            [1, 77, 32]
        );
        assert_eq!(shape("text_encoder_2.text_projection", None, eval), [1, 32]);
    }
    // The two penultimate states side by side; the pooled embedding of text_encoder_2.
    assert_eq!(shape("text.cond", None, 0), [1, 77, 64]);
    assert_eq!(shape("text.uncond", None, 0), [1, 77, 64]);
    assert_eq!(shape("text.pooled.cond", None, 0), [1, 32]);
    let pooled = r.find("text.pooled.cond", None, 0).unwrap();
    assert_eq!(pooled.fidelity, Fidelity::Full);
    let projection = r.find("text_encoder_2.text_projection", None, 1).unwrap();
    assert_eq!(
        r.read_meta(pooled).unwrap().summary.bits_hash,
        r.read_meta(projection).unwrap().summary.bits_hash,
        "the pooled cond is the prompt's projection, unweighted"
    );
    for step in 0..3 {
        assert_eq!(shape("unet.add_embedding", Some(step), 0), [2, 128]);
        assert_eq!(shape("sampler.eps.cond", Some(step), 0), [1, 4, 8, 12]);
    }
    assert_eq!(shape("image", None, 0), [1, 3, 64, 96]);

    // The header: the size and crop conditioning as the webui sets it, the second encoder's
    // hash.
    let s = &r.header().settings;
    let xl = &s.extra["sdxl"];
    assert_eq!(xl["original_size"], serde_json::json!([64, 96]), "{xl}");
    assert_eq!(xl["crop_coords_top_left"], serde_json::json!([0, 0]));
    assert_eq!(xl["target_size"], serde_json::json!([64, 96]));
    assert_eq!(xl["time_ids"], serde_json::json!([64, 96, 0, 0, 64, 96]));
    assert_eq!(xl["zero_negative"], false);
    assert!(s.model_hashes.contains_key("text_encoder_2_xxh3"));

    // The planned records are the ones written (`vae.post_quant_conv` is not planned, for
    // SD 1.x alike).
    let planned: usize = err
        .lines()
        .find_map(|l| l.strip_prefix("capture: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no plan in {err}"));
    assert_eq!(planned + 1, r.entries().len(), "{err}");

    // Same seed and settings: bit-identical records.
    let again = dir.path().join("again.sdt");
    let (c, err) = record(&[&PROMPT[..], &["--no-png"]].concat(), &again);
    assert_eq!(c, 0, "{err}");
    assert_eq!(hashes(&out), hashes(&again));
}

#[test]
fn size_and_crop_conditioning_are_flags_and_change_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.sdt"), dir.path().join("b.sdt"));
    assert_eq!(record(&[&PROMPT[..], &["--no-png"]].concat(), &a).0, 0);
    let flags = [
        "--sdxl-original-size",
        "1024x768",
        "--sdxl-crop",
        "8,16",
        "--no-png",
    ];
    let (c, err) = record(&[&PROMPT[..], &flags].concat(), &b);
    assert_eq!(c, 0, "{err}");
    let r = TraceReader::open(&b).unwrap();
    let xl = &r.header().settings.extra["sdxl"];
    assert_eq!(
        xl["time_ids"],
        serde_json::json!([768, 1024, 8, 16, 64, 96]),
        "{xl}"
    );
    let (ha, hb) = (hashes(&a), hashes(&b));
    let differ = |key: &str| {
        let h = |v: &[(String, String)]| {
            v.iter()
                .find(|(k, _)| k.ends_with(key))
                .map(|x| x.1.clone())
                .unwrap_or_else(|| panic!("no {key}"))
        };
        h(&ha) != h(&hb)
    };
    assert!(!differ("text.cond"), "the text does not depend on the size");
    assert!(differ("unet.add_embedding"));
    assert!(differ("image"));
    // Malformed values are refused by clap, naming the flag.
    let (c, err) = record(&["--sdxl-crop", "8"], &dir.path().join("x.sdt"));
    assert_eq!(c, 2);
    assert!(
        err.contains("--sdxl-crop") && err.contains("TOP,LEFT"),
        "{err}"
    );
}

/// An empty negative prompt conditions on zeros (text and pooled), as webui and diffusers do.
#[test]
fn an_empty_negative_prompt_conditions_on_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("z.sdt");
    let (c, err) = record(&["--prompt", "a house", "--no-png"], &out);
    assert_eq!(c, 0, "{err}");
    let r = TraceReader::open(&out).unwrap();
    assert_eq!(r.header().settings.extra["sdxl"]["zero_negative"], true);
    for key in ["text.uncond", "text.pooled.uncond"] {
        let s = r.read_meta(r.find(key, None, 0).unwrap()).unwrap().summary;
        assert_eq!(s.zeros, s.count, "{key}");
    }
    let s = r
        .read_meta(r.find("text.cond", None, 0).unwrap())
        .unwrap()
        .summary;
    assert!(s.zeros < s.count);
}

/// Every sampler implementation and batching runs the added conditioning, f16 too; the
/// webui's separate calls (a two-chunk prompt against a one-chunk negative) included.
#[test]
fn samplers_batchings_and_f16_run_sdxl() {
    let dir = tempfile::tempdir().unwrap();
    let long = "a house ".repeat(50);
    let cases: &[&[&str]] = &[
        &["--sampler", "euler-a"],
        &["--sampler", "euler", "--sampler-impl", "diffusers"],
        &[
            "--sampler",
            "dpmpp-2m-karras",
            "--sampler-impl",
            "diffusers",
        ],
        &[
            "--a1111-cond-uncond",
            "--prompt",
            &long,
            "--negative",
            "blurry",
        ],
        &[
            "--dtype",
            "f16",
            "--prompt",
            "a house",
            "--negative",
            "blurry",
        ],
    ];
    for (i, args) in cases.iter().enumerate() {
        let out = dir.path().join(format!("{i}.sdt"));
        let (c, err) = record(&[*args, &["--no-png"]].concat(), &out);
        assert_eq!(c, 0, "{args:?}: {err}");
        let r = TraceReader::open(&out).unwrap();
        assert_eq!(r.run_end().unwrap().status, RunStatus::Complete, "{args:?}");
        assert!(
            r.find("unet.add_embedding", Some(2), 0).is_some(),
            "{args:?}"
        );
        if args.contains(&"--a1111-cond-uncond") {
            // Two calls of batch 1: cond (eval 0, several chunks), then uncond (eval 1).
            let cond = &r.find("text.cond", None, 0).unwrap().shape;
            assert!(cond[1] > 77 && cond[1].is_multiple_of(77), "{cond:?}");
            assert_eq!(r.find("text.uncond", None, 0).unwrap().shape, [1, 77, 64]);
            let e = r.find("unet.add_embedding", Some(0), 1).unwrap();
            assert_eq!(e.shape, [1, 128], "{args:?}");
        }
    }
}

/// The PNG's infotext brings the same run back.
#[test]
fn the_infotext_of_an_sdxl_image_applies() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.sdt"), dir.path().join("b.sdt"));
    let (c, err) = record(&[&PROMPT[..], &["--sampler", "euler-a"]].concat(), &a);
    assert_eq!(c, 0, "{err}");
    let png = dir.path().join("a.png");
    let o = sdtrace()
        .arg("record")
        .arg("--model")
        .arg(model())
        .arg("--from-png")
        .arg(&png)
        .args(["--no-png", "-o"])
        .arg(&b)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let key = |path: &Path| {
        hashes(path)
            .into_iter()
            .filter(|(k, _)| k == "image" || k.starts_with("text."))
            .collect::<Vec<_>>()
    };
    let (ka, kb) = (key(&a), key(&b));
    assert!(ka.len() >= 5, "{ka:?}");
    assert_eq!(ka, kb);
}

/// A copy of the tiny SDXL folder (small: its weights are a few hundred KiB).
fn copy_model(to: &Path) {
    let mut stack = vec![model().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(model()).unwrap();
            if p.is_dir() {
                std::fs::create_dir_all(to.join(rel)).unwrap();
                stack.push(p);
            } else {
                std::fs::copy(&p, to.join(rel)).unwrap();
            }
        }
    }
}

#[test]
fn refiners_and_sdxl_flags_on_other_models_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.sdt");
    // A refiner by its model_index.json.
    let refiner = dir.path().join("refiner");
    copy_model(&refiner);
    let index = refiner.join("model_index.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    v["requires_aesthetics_score"] = serde_json::json!(true);
    std::fs::write(&index, v.to_string()).unwrap();
    let (c, err) = record_with(&refiner, &[], &out);
    assert_eq!(c, 2, "{err}");
    assert!(
        err.contains("refiner") && err.contains("requires_aesthetics_score"),
        "{err}"
    );
    // A refiner by its encoders: text_encoder_2 only.
    v["requires_aesthetics_score"] = serde_json::json!(false);
    std::fs::write(&index, v.to_string()).unwrap();
    std::fs::remove_dir_all(refiner.join("text_encoder")).unwrap();
    let (c, err) = record_with(&refiner, &[], &out);
    assert_eq!(c, 2, "{err}");
    assert!(
        err.contains("refiner") && err.contains("no text_encoder/"),
        "{err}"
    );
    assert!(!out.exists());
    // SDXL's flags on an SD 1.x model.
    let sd = common::tiny_model("sdxl-test-sd1-model");
    let (c, err) = record_with(sd, &["--sdxl-crop", "0,8"], &out);
    assert_eq!(c, 2, "{err}");
    assert!(err.contains("not an SDXL model"), "{err}");
    assert!(!out.exists());
}

/// The same SDXL weights as a diffusers folder and as the webui's single file (`synth --format
/// ldm`: `conditioner.embedders.0/1`, OpenCLIP's fused in-projection, `label_emb`) record
/// bit-identical traces. The prompts are one-letter words, which OpenAI's vocabulary (the single
/// file's built-in tokenizers) and the folder's byte-level one give the same ids.
#[test]
fn folder_and_single_file_sdxl_record_bit_identical_traces() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("xl.safetensors");
    sdtrace::model::synth::write_checkpoint_file(
        &file,
        SynthSize::SdxlTiny,
        5,
        candle_core::DType::F32,
    )
    .unwrap();
    let args = [
        "--prompt",
        "a b c",
        "--negative",
        "x y",
        "--capture",
        "full",
        "--no-png",
    ];
    let (a, b) = (dir.path().join("a.sdt"), dir.path().join("b.sdt"));
    let (c, err) = record(&args, &a);
    assert_eq!(c, 0, "{err}");
    let (c, err) = record_with(&file, &args, &b);
    assert_eq!(c, 0, "{err}");
    let (ha, hb) = (hashes(&a), hashes(&b));
    assert!(ha.len() > 100, "{} records", ha.len());
    assert!(ha.iter().any(|(id, _)| id.contains("text_encoder_2.")));
    for ((ia, sa), (ib, sb)) in ha.iter().zip(&hb) {
        assert_eq!((ia, sa), (ib, sb));
    }
    assert_eq!(ha.len(), hb.len());
    let h = TraceReader::open(&b).unwrap().header().clone();
    let f = &h.settings.extra["model_format"];
    let n = |k: &str| f[k].as_u64().unwrap();
    assert_eq!(n("used") + n("other_ignored"), n("tensors"), "{f}");
    assert_eq!(f["unknown_ignored"], serde_json::json!([]), "{f}");
    assert!(
        f["text_encoder_2"].as_str().unwrap().contains("OpenCLIP"),
        "{f}"
    );
}
