//! The VAE decoder on the tiny synthetic model: shape and range of the image, agreement with
//! candle-transformers' own decode, dtypes (bf16 on the CPU refused clearly), probe keys, and
//! load errors that name the file and the tensor.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKL;
use sdtrace::model::synth::{SynthSize, vae_config, write_model};
use sdtrace::model::vae::Vae;
use sdtrace::probe::{Policy, Probe};
use sdtrace::trace::{RunHeader, TraceReader, TraceWriter, WriterOptions};
use std::path::Path;

fn latent(seed: u64) -> Tensor {
    let mut rng = common::Rng(seed | 1);
    let v: Vec<f32> = (0..256).map(|_| rng.normal() as f32).collect();
    Tensor::from_vec(v, (1, 4, 8, 8), &Device::Cpu).unwrap()
}

fn model() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), SynthSize::Tiny, 3).unwrap();
    dir
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn decodes_a_latent_to_an_image_in_unit_range_like_candle() {
    let dir = model();
    let vae = Vae::load(&dir.path().join("vae"), DType::F32, &Device::Cpu).unwrap();
    let z = latent(1);
    let img = vae.decode(&z, &Probe::disabled()).unwrap();
    assert_eq!(img.dims(), &[1, 3, 64, 64]);
    assert_eq!(img.dtype(), DType::F32);
    let v = values(&img);
    assert!(v.iter().all(|x| x.is_finite() && (0.0..=1.0).contains(x)));
    let spread = v.iter().fold(0f32, |m, x| m.max(*x)) - v.iter().fold(1f32, |m, x| m.min(*x));
    assert!(spread > 0.1, "a flat image: spread {spread}");
    // candle-transformers' whole decode (its own post-quant convolution) on the same weights.
    let weights = dir.path().join("vae/diffusion_pytorch_model.safetensors");
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &Device::Cpu) }
        .unwrap();
    let theirs = AutoEncoderKL::new(vb, 3, 3, vae_config(SynthSize::Tiny)).unwrap();
    let x = theirs.decode(&(&z / 0.18215).unwrap()).unwrap();
    let want = ((x / 2.0).unwrap() + 0.5)
        .unwrap()
        .clamp(0f32, 1f32)
        .unwrap();
    assert_eq!(values(&img), values(&want));
}

#[test]
fn f16_decodes_on_the_cpu_and_bf16_is_refused_with_advice() {
    let dir = model();
    let z = latent(2);
    let f32_img = Vae::load(&dir.path().join("vae"), DType::F32, &Device::Cpu)
        .unwrap()
        .decode(&z, &Probe::disabled())
        .unwrap();
    let vae = Vae::load(&dir.path().join("vae"), DType::F16, &Device::Cpu).unwrap();
    let img = vae.decode(&z, &Probe::disabled()).unwrap();
    assert_eq!((img.dims(), img.dtype()), (&[1, 3, 64, 64][..], DType::F32));
    assert!(values(&img).iter().all(|x| (0.0..=1.0).contains(x)));
    let err = common::rel_l2(&img, &f32_img);
    assert!(err < 2e-2, "f16 vs f32: relative L2 {err:e}");
    // f16 latents are accepted by an f32 model too.
    let z16 = z.to_dtype(DType::F16).unwrap();
    let f32_vae = Vae::load(&dir.path().join("vae"), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(
        f32_vae.decode(&z16, &Probe::disabled()).unwrap().dims(),
        &[1, 3, 64, 64]
    );
    let e = Vae::load(&dir.path().join("vae"), DType::BF16, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "bf16 convolutions are not supported on the CPU backend; use --dtype f32 or f16"
        ),
        "{e}"
    );
}

#[test]
fn records_post_quant_conv_decoder_and_image() {
    let dir = model();
    let vae = Vae::load(&dir.path().join("vae"), DType::F16, &Device::Cpu).unwrap();
    let z = latent(3);
    let plain = values(&vae.decode(&z, &Probe::disabled()).unwrap());
    let path = dir.path().join("t.sdt");
    let probe = Probe::new(
        TraceWriter::create(&path, &RunHeader::default(), WriterOptions::default()).unwrap(),
        Policy::preset("full").unwrap(),
    );
    let img = vae.decode(&z, &probe).unwrap();
    probe.finish().unwrap();
    assert_eq!(values(&img), plain, "probing changed the image");
    let r = TraceReader::open(&path).unwrap();
    let got: Vec<(String, String, Vec<u64>)> = r
        .entries()
        .iter()
        .map(|e| {
            (
                e.key.to_string(),
                e.dtype.name().to_string(),
                e.shape.clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("vae.post_quant_conv".into(), "f16".into(), vec![1, 4, 8, 8]),
            ("vae.decoder".into(), "f16".into(), vec![1, 3, 64, 64]),
            ("image".into(), "f32".into(), vec![1, 3, 64, 64]),
        ]
    );
    let e = r.find("image", None, 0).unwrap();
    let data = r.read_payload(&r.read_meta(e).unwrap()).unwrap().unwrap();
    let rec: Vec<f32> = data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(rec, plain);
}

fn expect_err(dir: &Path, wants: &[&str]) {
    let e = Vae::load(dir, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    for w in wants {
        assert!(e.contains(w), "missing '{w}' in: {e}");
    }
}

#[test]
fn load_errors_name_the_file_and_tensor() {
    let dir = model();
    let vae_dir = dir.path().join("vae");
    let full = vae_dir.join("diffusion_pytorch_model.safetensors");
    let fp16 = vae_dir.join("diffusion_pytorch_model.fp16.safetensors");
    // The fp16 variant is found when the plain file is absent.
    std::fs::rename(&full, &fp16).unwrap();
    let vae = Vae::load(&vae_dir, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(
        vae.decode(&latent(4), &Probe::disabled()).unwrap().dims(),
        &[1, 3, 64, 64]
    );
    let wrong = vae.decode(
        &Tensor::zeros((1, 3, 8, 8), DType::F32, &Device::Cpu).unwrap(),
        &Probe::disabled(),
    );
    assert!(
        wrong.unwrap_err().to_string().contains("[1, 3, 8, 8]"),
        "latent shape not named"
    );
    let mut tensors = candle_core::safetensors::load(&fp16, &Device::Cpu).unwrap();
    std::fs::remove_file(&fp16).unwrap();
    expect_err(
        &vae_dir,
        &["diffusion_pytorch_model.safetensors", "cannot find"],
    );
    // A missing tensor.
    let removed = tensors.remove("decoder.conv_in.weight").unwrap();
    candle_core::safetensors::save(&tensors, &full).unwrap();
    expect_err(
        &vae_dir,
        &[
            "diffusion_pytorch_model.safetensors",
            "decoder.conv_in.weight",
        ],
    );
    // A tensor of the wrong shape.
    tensors.insert(
        "decoder.conv_in.weight".into(),
        removed.narrow(0, 0, 16).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &full).unwrap();
    expect_err(
        &vae_dir,
        &[
            "diffusion_pytorch_model.safetensors",
            "decoder.conv_in.weight",
        ],
    );
    // A config the reader refuses.
    std::fs::write(
        vae_dir.join("config.json"),
        r#"{"block_out_channels": [32], "shift_factor": 0.1}"#,
    )
    .unwrap();
    expect_err(&vae_dir, &["config.json", "shift_factor"]);
    std::fs::remove_file(vae_dir.join("config.json")).unwrap();
    expect_err(&vae_dir, &["config.json", "cannot read"]);
}
