//! Our UNet against candle-transformers' on the tiny config, probing as a pure observation,
//! attention implementations, precision, load errors, and finite activations over a sampling run.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use sdtrace::model::attention::{AttentionImpl, Numerics};
use sdtrace::model::config::UNetConfig;
use sdtrace::model::synth::unet_weights;
use sdtrace::model::unet::UNet;
use sdtrace::probe::{Policy, Probe};
use sdtrace::trace::{RunHeader, TraceReader, TraceWriter, WriterOptions};
use std::collections::HashMap;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = common::Rng(seed | 1);
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn bytes(t: &Tensor) -> Vec<u8> {
    sdtrace::model::observe::host_copy(t).unwrap().data
}

struct Fixture {
    cfg: UNetConfig,
    weights: HashMap<String, Tensor>,
    latent: Tensor,
    context: Tensor,
}

fn fixture() -> Fixture {
    fixture_for(UNetConfig::tiny())
}

fn fixture_for(cfg: UNetConfig) -> Fixture {
    let weights = unet_weights(&cfg, 7).unwrap().into_iter().collect();
    Fixture {
        latent: randn(&[2, 4, 8, 8], 1),
        context: randn(&[2, 77, cfg.cross_attention_dim], 2),
        cfg,
        weights,
    }
}

impl Fixture {
    fn unet(&self, dtype: DType, numerics: Numerics, attention: AttentionImpl) -> UNet {
        let vb = VarBuilder::from_tensors(self.weights.clone(), dtype, &Device::Cpu);
        UNet::new(vb, &self.cfg, numerics, attention, "unet").unwrap()
    }
}

#[test]
fn matches_candle_transformers_unet_on_tiny_config() {
    let f = fixture();
    let ours = f.unet(DType::F32, Numerics::CANDLE, AttentionImpl::Full);
    let vb = VarBuilder::from_tensors(f.weights.clone(), DType::F32, &Device::Cpu);
    let theirs = candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModel::new(
        vb,
        4,
        4,
        false,
        f.cfg.to_candle(),
    )
    .unwrap();
    for t in [999.0, 500.25, 1.0] {
        let a = ours
            .forward(&f.latent, t, &f.context, &Probe::disabled())
            .unwrap();
        let b = theirs.forward(&f.latent, t, &f.context).unwrap();
        let err = common::rel_l2(&a, &b);
        assert!(err <= 1e-5, "t={t}: relative L2 {err:e}");
    }
    // SD 2.x style: linear projections and per-level head counts.
    let mut sd2 = UNetConfig::tiny();
    sd2.use_linear_projection = true;
    sd2.blocks[0].heads = 1;
    sd2.blocks[1].heads = 2;
    let g = fixture_for(sd2);
    assert!(
        g.weights["down_blocks.0.attentions.0.proj_in.weight"]
            .dims()
            .len()
            == 2
    );
    let ours2 = g.unet(DType::F32, Numerics::CANDLE, AttentionImpl::Full);
    let vb = VarBuilder::from_tensors(g.weights.clone(), DType::F32, &Device::Cpu);
    let theirs2 =
        candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModel::new(
            vb,
            4,
            4,
            false,
            g.cfg.to_candle(),
        )
        .unwrap();
    let err = common::rel_l2(
        &ours2
            .forward(&g.latent, 250.0, &g.context, &Probe::disabled())
            .unwrap(),
        &theirs2.forward(&g.latent, 250.0, &g.context).unwrap(),
    );
    assert!(err <= 1e-5, "linear projection: relative L2 {err:e}");
    // PyTorch numerics (erf GELU) are a different function: measurably, slightly different.
    let erf = f
        .unet(DType::F32, Numerics::PYTORCH, AttentionImpl::Full)
        .forward(&f.latent, 500.0, &f.context, &Probe::disabled())
        .unwrap();
    let tanh = ours
        .forward(&f.latent, 500.0, &f.context, &Probe::disabled())
        .unwrap();
    let err = common::rel_l2(&erf, &tanh);
    assert!(err > 1e-7 && err < 1e-2, "erf vs tanh GELU: {err:e}");
}

#[test]
fn probing_never_changes_the_output() {
    let f = fixture();
    let unet = f.unet(DType::F32, Numerics::PYTORCH, AttentionImpl::Full);
    let plain = bytes(
        &unet
            .forward(&f.latent, 321.0, &f.context, &Probe::disabled())
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    for preset in ["stats", "sketch", "full"] {
        let mut policy = Policy::preset(preset).unwrap();
        policy.push("*.attn1.probs=full".parse().unwrap());
        let path = dir.path().join(format!("{preset}.sdt"));
        let probe = Probe::new(
            TraceWriter::create(&path, &RunHeader::default(), WriterOptions::default()).unwrap(),
            policy,
        );
        probe.set_step(Some(0), 0).unwrap();
        let out = unet.forward(&f.latent, 321.0, &f.context, &probe).unwrap();
        probe.finish().unwrap();
        assert_eq!(bytes(&out), plain, "{preset} probing changed the output");
        let r = TraceReader::open(&path).unwrap();
        let keys: Vec<&str> = r.entries().iter().map(|e| &*e.key).collect();
        for want in [
            "unet.time_embedding",
            "unet.conv_in",
            "unet.down_blocks.0.resnets.0",
            "unet.down_blocks.0.attentions.1",
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1",
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2",
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.ff",
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.probs",
            "unet.down_blocks.0.downsamplers.0",
            "unet.down_blocks.2",
            "unet.mid_block.resnets.1",
            "unet.mid_block.attentions.0",
            "unet.mid_block",
            "unet.up_blocks.0.resnets.2",
            "unet.up_blocks.0.upsamplers.0",
            "unet.up_blocks.2.attentions.2.transformer_blocks.0.ff",
            "unet.conv_norm_out",
            "unet.conv_out",
        ] {
            assert!(keys.contains(&want), "{preset}: no record for {want}");
        }
        assert!(
            !keys
                .iter()
                .any(|k| k.ends_with(".to_q") || k.ends_with("attn2.probs")),
            "{preset}: fine points recorded unasked"
        );
        // Execution order: conv_in before the first resnet, conv_out last.
        assert_eq!(*keys.last().unwrap(), "unet.conv_out");
    }
}

#[test]
fn attention_implementations_agree_with_full() {
    let f = fixture();
    let full = f
        .unet(DType::F32, Numerics::PYTORCH, AttentionImpl::Full)
        .forward(&f.latent, 700.0, &f.context, &Probe::disabled())
        .unwrap();
    for text in [
        "sliced:1",
        "sliced:3",
        "split:40KiB",
        "subquad:16,24",
        "subquad:64,77",
    ] {
        let imp = AttentionImpl::parse(text, None).unwrap();
        let out = f
            .unet(DType::F32, Numerics::PYTORCH, imp)
            .forward(&f.latent, 700.0, &f.context, &Probe::disabled())
            .unwrap();
        let err = common::rel_l2(&out, &full);
        assert!(err < 1e-5, "{text}: relative L2 {err:e}");
    }
    let tiny_budget = AttentionImpl::parse("split:1KiB", None).unwrap();
    let err = f
        .unet(DType::F32, Numerics::PYTORCH, tiny_budget)
        .forward(&f.latent, 700.0, &f.context, &Probe::disabled())
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("not enough memory")
            && err.to_string().contains("unet.down_blocks.0.attentions.0"),
        "{err}"
    );
}

#[test]
fn f16_runs_close_to_f32() {
    let f = fixture();
    let a = f
        .unet(DType::F32, Numerics::PYTORCH, AttentionImpl::Full)
        .forward(&f.latent, 400.0, &f.context, &Probe::disabled())
        .unwrap();
    let b = f
        .unet(DType::F16, Numerics::PYTORCH, AttentionImpl::Full)
        .forward(&f.latent, 400.0, &f.context, &Probe::disabled())
        .unwrap();
    assert_eq!(b.dtype(), DType::F16);
    let err = common::rel_l2(&b.to_dtype(DType::F32).unwrap(), &a);
    assert!(err > 0.0 && err < 1e-2, "f16 vs f32: {err:e}");
}

#[test]
fn activations_stay_finite_and_alive_through_20_steps() {
    let f = fixture();
    let unet = f.unet(DType::F32, Numerics::PYTORCH, AttentionImpl::Full);
    // Euler over a geometric σ schedule from SD's σ_max to σ_min, t spread over 999..0.
    let sigmas: Vec<f64> = (0..=20)
        .map(|i| {
            if i == 20 {
                0.0
            } else {
                14.6146 * (0.0292 / 14.6146f64).powf(i as f64 / 19.0)
            }
        })
        .collect();
    let mut x = (randn(&[2, 4, 8, 8], 9) * sigmas[0]).unwrap();
    for i in 0..20 {
        let c_in = 1.0 / (sigmas[i] * sigmas[i] + 1.0).sqrt();
        let eps = unet
            .forward(
                &(&x * c_in).unwrap(),
                999.0 * (1.0 - i as f64 / 19.0),
                &f.context,
                &Probe::disabled(),
            )
            .unwrap();
        let v: Vec<f32> = eps.flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            v.iter().all(|x| x.is_finite()),
            "step {i}: non-finite UNet output"
        );
        let std = (v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        assert!(std > 1e-2 && std < 1e3, "step {i}: UNet output std {std}");
        x = (&x + (&eps * (sigmas[i + 1] - sigmas[i])).unwrap()).unwrap();
    }
    let v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|x| x.is_finite()));
}

#[test]
fn bad_weights_name_the_key_shapes_and_file() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("diffusion_pytorch_model.safetensors");
    let mut w = f.weights.clone();
    w.remove("down_blocks.1.resnets.0.conv1.weight");
    candle_core::safetensors::save(&w, &path).unwrap();
    let e = UNet::load(
        &path,
        &f.cfg,
        DType::F32,
        &Device::Cpu,
        Numerics::PYTORCH,
        AttentionImpl::Full,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("down_blocks.1.resnets.0.conv1.weight")
            && e.contains("diffusion_pytorch_model.safetensors"),
        "{e}"
    );
    let mut w = f.weights.clone();
    w.insert(
        "conv_in.weight".into(),
        Tensor::zeros((32, 4, 1, 1), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&w, &path).unwrap();
    let e = UNet::load(
        &path,
        &f.cfg,
        DType::F32,
        &Device::Cpu,
        Numerics::PYTORCH,
        AttentionImpl::Full,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("conv_in.weight") && e.contains("[32, 4, 3, 3]") && e.contains("[32, 4, 1, 1]"),
        "{e}"
    );
    std::fs::write(&path, b"not safetensors").unwrap();
    let e = UNet::load(
        &path,
        &f.cfg,
        DType::F32,
        &Device::Cpu,
        Numerics::PYTORCH,
        AttentionImpl::Full,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("diffusion_pytorch_model.safetensors"), "{e}");
    // f16 weights load into an f32 model and the reverse.
    let w16: HashMap<String, Tensor> = f
        .weights
        .iter()
        .map(|(k, v)| (k.clone(), v.to_dtype(DType::F16).unwrap()))
        .collect();
    candle_core::safetensors::save(&w16, &path).unwrap();
    let unet = UNet::load(
        &path,
        &f.cfg,
        DType::F32,
        &Device::Cpu,
        Numerics::PYTORCH,
        AttentionImpl::Full,
    )
    .unwrap();
    unet.forward(&f.latent, 10.0, &f.context, &Probe::disabled())
        .unwrap();
}

#[test]
fn synthetic_model_folder_loads_and_is_deterministic() {
    use sdtrace::model::synth::{SynthSize, write_model};
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    write_model(&a, SynthSize::Tiny, 3).unwrap();
    write_model(&b, SynthSize::Tiny, 3).unwrap();
    let weights = "unet/diffusion_pytorch_model.safetensors";
    assert_eq!(
        std::fs::read(a.join(weights)).unwrap(),
        std::fs::read(b.join(weights)).unwrap()
    );
    let cfg = UNetConfig::from_diffusers_file(&a.join("unet/config.json")).unwrap();
    assert_eq!(cfg, UNetConfig::tiny());
    let unet = UNet::load(
        &a.join(weights),
        &cfg,
        DType::F32,
        &Device::Cpu,
        Numerics::PYTORCH,
        AttentionImpl::Full,
    )
    .unwrap();
    let out = unet
        .forward(
            &randn(&[1, 4, 8, 8], 4),
            250.0,
            &randn(&[1, 77, 32], 5),
            &Probe::disabled(),
        )
        .unwrap();
    assert_eq!(out.dims(), &[1, 4, 8, 8]);
    // The VAE decodes an 8×8 latent to a 64×64 image with finite, non-trivial values.
    let vae_cfg = sdtrace::model::synth::vae_config(SynthSize::Tiny);
    let vae_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("vae/config.json")).unwrap()).unwrap();
    assert_eq!(vae_json["scaling_factor"], 0.18215);
    // SAFETY: a test file that nothing else touches.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[a.join("vae/diffusion_pytorch_model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
    }
    .unwrap();
    let vae =
        candle_transformers::models::stable_diffusion::vae::AutoEncoderKL::new(vb, 3, 3, vae_cfg)
            .unwrap();
    let image = vae
        .decode(&(randn(&[1, 4, 8, 8], 6) / 0.18215).unwrap())
        .unwrap();
    assert_eq!(image.dims(), &[1, 3, 64, 64]);
    let v: Vec<f32> = image.flatten_all().unwrap().to_vec1().unwrap();
    let std = (v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
    assert!(
        v.iter().all(|x| x.is_finite()) && std > 1e-3 && std < 1e3,
        "decoded image std {std}"
    );
    // A different seed gives different weights.
    write_model(&b, SynthSize::Tiny, 4).unwrap();
    assert_ne!(
        std::fs::read(a.join(weights)).unwrap(),
        std::fs::read(b.join(weights)).unwrap()
    );
}

#[test]
fn attention_plan_matches_what_runs() {
    let f = fixture();
    let budget = AttentionImpl::parse("split:40KiB", None).unwrap();
    let unet = f.unet(DType::F32, Numerics::PYTORCH, budget);
    let plan = unet.attention_plan(2, 8, 8, 77).unwrap();
    // 2 down levels × 2 attentions + mid + 2 up levels × 3 attentions, each with attn1 and attn2.
    assert_eq!(plan.len(), (2 * 2 + 1 + 2 * 3) * 2);
    let (key, c) = &plan[0];
    assert_eq!(
        key,
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    );
    // 2·2 heads × 64 × 64 × 4 B × 2.5 = 160 KiB needed against 40 KiB: 4 query slices.
    assert_eq!((c.rows, c.queries, c.keys), (4, 16, 64));
    let mid = plan
        .iter()
        .find(|(k, _)| k == "unet.mid_block.attentions.0.transformer_blocks.0.attn2")
        .unwrap();
    assert_eq!(mid.1.keys, 77);
    // Impossible chunking is an error naming the layer, before anything runs.
    let e = f
        .unet(
            DType::F32,
            Numerics::PYTORCH,
            AttentionImpl::parse("split:100", None).unwrap(),
        )
        .attention_plan(2, 8, 8, 77)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1")
            && e.contains("not enough memory"),
        "{e}"
    );
}

/// `probe_points` lists exactly the records a forward pass makes with every point captured,
/// in order and with their shapes, also for odd latent sides and both downsample paddings.
#[test]
fn probe_points_match_a_real_forward_pass() {
    let dir = tempfile::tempdir().unwrap();
    for (cfg, (h, w)) in [
        (UNetConfig::tiny(), (8, 8)),
        (UNetConfig::tiny(), (5, 7)),
        (
            UNetConfig {
                downsample_padding: 0,
                ..UNetConfig::tiny()
            },
            (7, 6),
        ),
    ] {
        let f = fixture_for(cfg);
        let unet = f.unet(DType::F32, Numerics::PYTORCH, AttentionImpl::Full);
        let path = dir.path().join("all.sdt");
        // Every point: `*` for the module outputs, and rules that name the fine points (a
        // broad rule does not reach them).
        let policy = Policy::from_spec("stats,*=stats,*.to_?=stats,*.probs=stats").unwrap();
        let probe = Probe::new(
            TraceWriter::create(&path, &RunHeader::default(), WriterOptions::default()).unwrap(),
            policy,
        );
        probe.set_step(Some(0), 0).unwrap();
        let latent = randn(&[2, 4, h, w], 3);
        unet.forward(&latent, 500.0, &f.context, &probe).unwrap();
        probe.finish().unwrap();
        let r = TraceReader::open(&path).unwrap();
        let recorded: Vec<(String, Vec<usize>)> = r
            .entries()
            .iter()
            .map(|e| {
                (
                    e.key.to_string(),
                    e.shape.iter().map(|&d| d as usize).collect(),
                )
            })
            .collect();
        assert_eq!(unet.probe_points(2, h, w, 77), recorded, "latent {h}x{w}");
    }
}
