//! Final images as a user sees them: `sdtrace export … OUT.png` (pixels, A1111 parameters,
//! batch items, errors), the path from the VAE's `image` record to a PNG, and the final images
//! in `sdtrace report --format html`.

mod common;

use common::sdtrace;

use assert_cmd::Command;
use candle_core::{DType as CDType, Device, Tensor};
use sdtrace::DType;
use sdtrace::image::{PARAMETERS_KEY, parse_infotext, pixel, png_text};
use sdtrace::model::synth::{SynthSize, write_model};
use sdtrace::model::vae::Vae;
use sdtrace::probe::{Policy, Probe};
use sdtrace::trace::{TraceWriter, WriterOptions};
use std::path::Path;

fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A trace with full A1111-relevant settings and one f32 `image` record of `batch` items
/// (8×8), plus the latent it came from.
fn write_image_trace(path: &Path, batch: usize) -> Vec<f64> {
    let mut header = common::fixed_header("/models/v1-5-pruned-emaonly.safetensors");
    let s = &mut header.settings;
    s.sampler = Some("dpmpp-2m-karras".into());
    s.steps = Some(20);
    s.cfg_scale = Some(7.5);
    s.seed = Some(1000);
    s.width = Some(8);
    s.height = Some(8);
    s.negative_prompt = Some("blurry, lowres".into());
    s.model_hashes.insert(
        "sha256".into(),
        "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa".into(),
    );
    s.extra.insert("clip_skip".into(), serde_json::json!(2));
    let probe = Probe::new(
        TraceWriter::create(path, &header, WriterOptions::default()).unwrap(),
        Policy::preset("default").unwrap(),
    );
    let n = batch * 3 * 64;
    let vals: Vec<f64> = (0..n).map(|i| (i % 97) as f64 / 96.0).collect();
    common::observe(
        &probe,
        "sampler.x",
        DType::F32,
        &[batch, 4, 1, 1],
        &vec![0.5; batch * 4],
    );
    common::observe(&probe, "image", DType::F32, &[batch, 3, 8, 8], &vals);
    probe.finish().unwrap();
    vals
}

fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

#[test]
fn png_holds_the_pixels_and_a1111_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("run.sdt");
    let vals = write_image_trace(&trace, 2);
    let out = dir.path().join("second.png");
    let (c, err) = run(sdtrace()
        .arg("export")
        .arg(&trace)
        .arg("image")
        .arg(&out)
        .args(["--index", "1"]));
    assert_eq!(c, 0, "{err}");
    assert!(err.contains("batch item 1, with A1111 parameters"), "{err}");
    let bytes = std::fs::read(&out).unwrap();
    let (w, h, rgb) = decode_png(&bytes);
    assert_eq!((w, h), (8, 8));
    // Item 1, pixel (y=0, x=1): channel c at 192 + c·64 + 1.
    for c in 0..3 {
        assert_eq!(rgb[3 + c], pixel(vals[192 + c * 64 + 1] as f32));
    }
    let text = png_text(&bytes).unwrap();
    assert_eq!(text.len(), 1);
    assert_eq!(text[0].0, PARAMETERS_KEY);
    assert_eq!(
        text[0].1,
        "a photo of an astronaut riding a horse\nNegative prompt: blurry, lowres\n\
         Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 1001, \
         Size: 8x8, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, \
         sdtrace RNG: sdtrace (sdtrace's own generator; the webui cannot redraw this noise)"
    );
    let p = parse_infotext(&text[0].1).unwrap();
    assert_eq!(p.sampler.as_deref(), Some("dpmpp-2m-karras"));
    assert_eq!(p.seed, Some(1001));
    // -o still works and no temporary file is left behind.
    let first = dir.path().join("first.png");
    let (c, err) = run(sdtrace()
        .arg("export")
        .arg(&trace)
        .arg("image")
        .arg("-o")
        .arg(&first));
    assert_eq!(c, 0, "{err}");
    assert!(
        png_text(&std::fs::read(&first).unwrap()).unwrap()[0]
            .1
            .contains("Seed: 1000,")
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
}

#[test]
fn png_export_errors_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("run.sdt");
    write_image_trace(&trace, 1);
    let out = dir.path().join("x.png");
    for (args, want) in [
        (
            vec!["image", "--index", "1"],
            "holds 1 image(s); use --index 0 to 0",
        ),
        (
            vec!["sampler.x", "--step", "0"],
            "'sampler.x' was not recorded",
        ),
        (vec!["sampler.x"], "its shape is [1, 4, 1, 1]"),
    ] {
        let (c, err) = run(sdtrace().arg("export").arg(&trace).args(&args).arg(&out));
        assert_eq!(c, 2, "{args:?}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert!(!out.exists());
    // The example trace's u8 image exports; its header has no CFG scale, so no parameters.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("traces/example.sdt");
    let (c, err) = run(sdtrace().arg("export").arg(&example).arg("image").arg(&out));
    assert_eq!(c, 0, "{err}");
    assert!(err.contains("settings.cfg_scale"), "{err}");
    let bytes = std::fs::read(&out).unwrap();
    assert!(png_text(&bytes).unwrap().is_empty());
    let (w, h, rgb) = decode_png(&bytes);
    assert_eq!((w, h), (16, 16));
    // The mini run's image is i % 256 in channel-major order over 256-pixel planes: every
    // channel of pixel p is p.
    assert_eq!(&rgb[3..6], &[1, 1, 1]);
    assert_eq!(&rgb[3 * 200..3 * 200 + 3], &[200, 200, 200]);
}

#[test]
fn vae_image_record_exports_to_png() {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), SynthSize::Tiny, 5).unwrap();
    let vae = Vae::load(&dir.path().join("vae"), CDType::F32, &Device::Cpu).unwrap();
    let trace = dir.path().join("vae.sdt");
    let mut policy = Policy::preset("default").unwrap();
    policy.push("vae.decoder=full".parse().unwrap());
    let probe = Probe::new(
        TraceWriter::create(
            &trace,
            &common::fixed_header("tiny"),
            WriterOptions::default(),
        )
        .unwrap(),
        policy,
    );
    let z = Tensor::ones((1, 4, 8, 8), CDType::F32, &Device::Cpu).unwrap();
    let img = vae.decode(&z, &probe).unwrap();
    probe.finish().unwrap();
    let out = dir.path().join("vae.png");
    let (c, err) = run(sdtrace().arg("export").arg(&trace).arg("image").arg(&out));
    assert_eq!(c, 0, "{err}");
    let (w, h, rgb) = decode_png(&std::fs::read(&out).unwrap());
    assert_eq!((w, h), (64, 64));
    let want: Vec<f32> = img.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(rgb[0], pixel(want[0]));
    assert_eq!(rgb[3 * 64 * 64 - 1], pixel(want[3 * 64 * 64 - 1]));
    // The decoder output (in [-1, 1]) is not an image.
    let (c, err) = run(sdtrace()
        .arg("export")
        .arg(&trace)
        .arg("vae.decoder")
        .arg(dir.path().join("d.png")));
    assert_eq!(c, 2);
    assert!(
        err.contains("'vae.decoder' is not an image") && err.contains("outside [0, 1]"),
        "{err}"
    );
}

#[test]
fn html_report_shows_both_final_images_and_their_difference() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a.sdt"),
        dir.path().join("b.sdt"),
        dir.path().join("c.sdt"),
    );
    // Mini runs: u8 images, equal for the same data seed (the image does not depend on it).
    common::write_mini_run(&a, 2, 11);
    common::write_mini_run(&b, 2, 12);
    let html = dir.path().join("r.html");
    let report = |x: &Path, y: &Path, extra: &[&str]| {
        let out = sdtrace()
            .args(["report", "--format", "html", "-o"])
            .arg(&html)
            .args(extra)
            .arg(x)
            .arg(y)
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stderr).into_owned(),
            std::fs::read_to_string(&html).unwrap_or_default(),
        )
    };
    // The "Final images" section, up to the next heading ("" without one).
    let final_images = |h: &str| -> String {
        let Some(at) = h.find("<h2>Final images</h2>") else {
            return String::new();
        };
        let rest = &h[at + 5..];
        rest[..rest.find("<h2>").unwrap_or(rest.len())].to_string()
    };
    let (err, h) = report(&a, &b, &[]);
    assert_eq!(h.matches("<h2>Final image").count(), 1, "{err}");
    let f = final_images(&h);
    assert!(f.contains("The images are equal"));
    assert_eq!(f.matches("data:image/png;base64,").count(), 3);
    // The two runs' noise differs (other data seeds): its picture is read from both traces.
    assert!(
        h.contains("<h2>Noise: which elements differ (noise.initial)</h2>")
            && h.contains("alt=\"noise difference\""),
        "{err}"
    );
    // f32 images that differ: the scale is stated.
    write_image_trace(&a, 1);
    write_image_trace(&c, 1);
    let mut header = common::fixed_header("/models/v1-5-pruned-emaonly.safetensors");
    header.settings.sampler = Some("dpmpp-2m-karras".into());
    header.settings.steps = Some(20);
    header.settings.width = Some(8);
    header.settings.height = Some(8);
    let probe = Probe::new(
        TraceWriter::create(&b, &header, WriterOptions::default()).unwrap(),
        Policy::preset("default").unwrap(),
    );
    let mut vals: Vec<f64> = (0..192).map(|i| (i % 97) as f64 / 96.0).collect();
    vals[5] -= 0.004;
    common::observe(&probe, "sampler.x", DType::F32, &[1, 4, 1, 1], &[0.5; 4]);
    common::observe(&probe, "image", DType::F32, &[1, 3, 8, 8], &vals);
    probe.finish().unwrap();
    let (err, h) = report(&c, &b, &["--tol", "rel=1,abs=1"]);
    assert!(h.contains("<h2>Final images</h2>"), "{err}");
    assert!(h.contains("Difference: |A − B| × 250.0 per channel"), "{h}");
    assert!(h.contains("4.00e-3 on the [0, 1] scale"), "{h}");
    // Images of different sizes: a note, the report is still written.
    let (err, h) = report(&a, &common_mini(&dir), &[]);
    assert!(
        err.contains("no final images") && err.contains("differ in size"),
        "{err}"
    );
    assert!(h.contains("<!DOCTYPE html>"));
    assert!(!final_images(&h).contains("data:image/png"), "{h}");
}

fn common_mini(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let p = dir.path().join("mini.sdt");
    common::write_mini_run(&p, 2, 11);
    p
}
