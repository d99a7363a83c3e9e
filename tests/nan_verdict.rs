//! The NaN/Inf verdict in the VAE decoder (issue #25's known SDXL failure): one side's f16
//! decoder overflows, and every report format names the first decoder module that produced
//! non-finite values (in execution order, not by key name) and advises an f32 VAE.

mod common;

use common::{Rng, fixed_header, normal_vec, observe, sdtrace};
use sdtrace::DType;
use sdtrace::probe::{Policy, Probe};
use sdtrace::trace::{TraceWriter, WriterOptions};
use std::path::Path;

/// The decoder's records in execution order. The first to overflow, `up_blocks.1.resnets.0`,
/// sorts after `conv_out` and `image` by name, so only execution order finds it.
const DECODER: [&str; 7] = [
    "vae.post_quant_conv",
    "vae.decoder.conv_in",
    "vae.decoder.mid_block",
    "vae.decoder.up_blocks.0",
    "vae.decoder.up_blocks.1.resnets.0",
    "vae.decoder.up_blocks.1",
    "vae.decoder.conv_out",
];
const FIRST_BAD: usize = 4;

/// An f16 run of two steps and a decode; `overflow` puts ±∞ into the decoder from
/// [`FIRST_BAD`] on and NaN after it, as an f16 SDXL VAE does.
fn write_run(path: &Path, overflow: bool) {
    let mut policy = Policy::default();
    policy.push("*=full".parse().unwrap());
    let mut header = fixed_header("sdxl-tiny f16");
    header.settings.dtype = Some("f16".into());
    header.settings.steps = Some(2);
    let writer = TraceWriter::create(path, &header, WriterOptions::default()).unwrap();
    let probe = Probe::new(writer, policy);
    let mut rng = Rng(5);
    let latent = [1usize, 4, 8, 8];
    let x = normal_vec(&mut rng, 256, 1.0);
    observe(&probe, "noise.initial", DType::F16, &latent, &x);
    for step in 0..2 {
        probe.set_step(Some(step), 0).unwrap();
        observe(&probe, "sampler.x", DType::F16, &latent, &x);
        observe(&probe, "unet.conv_out", DType::F16, &latent, &x);
    }
    probe.set_step(None, 0).unwrap();
    for (i, key) in DECODER.iter().enumerate() {
        let mut vals = normal_vec(&mut rng, 256, 1.0);
        if overflow && i >= FIRST_BAD {
            vals[3] = if i == FIRST_BAD {
                f64::INFINITY
            } else {
                f64::NAN
            };
        }
        observe(&probe, key, DType::F16, &latent, &vals);
    }
    let image = normal_vec(&mut rng, 3 * 16 * 16, 0.2);
    let mut image: Vec<f64> = image.iter().map(|v| (v + 0.5).clamp(0.0, 1.0)).collect();
    if overflow {
        image[0] = f64::NAN;
    }
    observe(&probe, "image", DType::F16, &[1, 3, 16, 16], &image);
    probe.finish().unwrap();
}

fn report(a: &Path, b: &Path, format: &str) -> (i32, String) {
    let out = sdtrace()
        .args(["report", "--format", format])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn an_f16_vae_overflow_names_the_first_decoder_module_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.sdt"), dir.path().join("b.sdt"));
    write_run(&a, false);
    write_run(&b, true);
    let first = DECODER[FIRST_BAD];
    let (code, json) = report(&a, &b, "json");
    assert_eq!(code, 1, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let verdict = &v["verdict"];
    assert_eq!(verdict["class"], "nan-inf", "{verdict}");
    let summary = verdict["summary"].as_str().unwrap();
    assert!(
        summary.starts_with(&format!(
            "NaN/Inf: {first} has non-finite values where the other run has not (1 elements). \
             The first non-finite values come from the VAE decoder module {first}: the VAE \
             overflows in f16, the known SDXL f16 VAE overflow"
        )),
        "{summary}"
    );
    assert!(summary.contains("--no-half-vae"), "{summary}");
    assert!(summary.contains("--dtype f32"), "{summary}");
    for format in ["text", "markdown", "html", "junit"] {
        let (code, text) = report(&a, &b, format);
        assert_eq!(code, 1, "{format}");
        assert!(text.contains(first), "{format}: {text}");
        assert!(
            text.contains("the known SDXL f16 VAE overflow"),
            "{format}: {text}"
        );
        assert!(text.contains("--no-half-vae"), "{format}: {text}");
    }
}
