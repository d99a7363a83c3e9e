//! Samplers on the real (tiny, random-weight) UNet: finite, non-trivial latents in a few
//! seconds, and the `sampler.*` probe points written to a trace and read back.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use sdtrace::model::attention::{AttentionImpl, Numerics};
use sdtrace::model::config::UNetConfig;
use sdtrace::model::observe::host_copy;
use sdtrace::model::synth::unet_weights;
use sdtrace::model::unet::UNet;
use sdtrace::probe::{Policy, Probe};
use sdtrace::sampling::noise::randn;
use sdtrace::sampling::schedule::{AlphasPrecision, DiscreteSchedule};
use sdtrace::sampling::{Sampler, SamplerKind, SamplerSpec, SdtraceNoise, UNetDenoiser};
use sdtrace::trace::{RunHeader, Settings, TraceReader, TraceWriter, WriterOptions};

struct Fixture {
    unet: UNet,
    uncond: Tensor,
    cond: Tensor,
}

fn fixture() -> Fixture {
    let cfg = UNetConfig::tiny();
    let weights = unet_weights(&cfg, 7).unwrap().into_iter().collect();
    let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    let unet = UNet::new(vb, &cfg, Numerics::PYTORCH, AttentionImpl::Full, "unet").unwrap();
    let text = |seed| {
        let mut rng = common::Rng(seed);
        let v: Vec<f32> = (0..77 * cfg.cross_attention_dim)
            .map(|_| rng.normal() as f32)
            .collect();
        Tensor::from_vec(v, (1, 77, cfg.cross_attention_dim), &Device::Cpu).unwrap()
    };
    Fixture {
        unet,
        uncond: text(11),
        cond: text(12),
    }
}

/// Sample `kind` for `steps` steps from seed 1234 (initial noise first, then ancestral noise
/// from the same stream).
fn run(f: &Fixture, kind: SamplerKind, steps: u32, probe: &Probe) -> (Sampler, Tensor) {
    let sampler = Sampler::new(
        SamplerSpec::new(kind, steps, 7.0),
        &DiscreteSchedule::sd(AlphasPrecision::F32),
    )
    .unwrap();
    let mut rng = SdtraceNoise::new(1234);
    let noise = randn(&mut rng, &[1, 4, 8, 8], &Device::Cpu).unwrap();
    let mut model = UNetDenoiser::new(&f.unet, &f.uncond, &f.cond, probe).unwrap();
    let out = sampler.sample(&mut model, &noise, &mut rng, probe).unwrap();
    (sampler, out)
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn tiny_unet_gives_finite_nontrivial_latents() {
    let f = fixture();
    let start = std::time::Instant::now();
    let mut outs = vec![];
    for kind in [SamplerKind::EulerA, SamplerKind::DpmPp2mKarras] {
        let (_, out) = run(&f, kind, 20, &Probe::disabled());
        assert_eq!(out.dims(), &[1, 4, 8, 8]);
        let v = values(&out);
        assert!(
            v.iter().all(|x| x.is_finite()),
            "{}: non-finite",
            kind.name()
        );
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32).sqrt();
        // Random weights and CFG 7 give latents of sd ≈ 20–30 here: not collapsed, not blown up.
        assert!(sd > 1e-2 && sd < 1e3, "{}: sd {sd}", kind.name());
        outs.push(v);
    }
    assert_ne!(outs[0], outs[1]);
    assert!(start.elapsed().as_secs() < 30, "took {:?}", start.elapsed());
}

#[test]
fn wrong_conditioning_is_an_error() {
    let f = fixture();
    let probe = Probe::disabled();
    let short = f.cond.narrow(1, 0, 10).unwrap();
    assert!(UNetDenoiser::new(&f.unet, &f.uncond, &short, &probe).is_err());
}

#[test]
fn probe_records_the_sampler_points_of_every_step() {
    let f = fixture();
    let steps = 3;
    let (_, plain) = run(&f, SamplerKind::EulerA, steps, &Probe::disabled());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("euler-a.sdt");
    let mut settings = Settings::default();
    let sampler = Sampler::new(
        SamplerSpec::new(SamplerKind::EulerA, steps, 7.0),
        &DiscreteSchedule::sd(AlphasPrecision::F32),
    )
    .unwrap();
    sampler.fill_settings(&mut settings, &SdtraceNoise::new(1234));
    let header = RunHeader::new(settings, Default::default());
    let writer = TraceWriter::create(&path, &header, WriterOptions::default()).unwrap();
    let probe = Probe::new(writer, Policy::preset("default").unwrap());
    let (_, out) = run(&f, SamplerKind::EulerA, steps, &probe);
    probe.finish().unwrap();
    assert_eq!(
        host_copy(&out).unwrap().data,
        host_copy(&plain).unwrap().data,
        "probing changed the result"
    );

    let r = TraceReader::open(&path).unwrap();
    let sampler_keys = |step| -> Vec<String> {
        r.entries()
            .iter()
            .filter(|e| e.step == Some(step) && e.key.starts_with("sampler."))
            .map(|e| format!("{}@{}", e.key, e.eval))
            .collect()
    };
    for step in 0..steps {
        let mut want = vec![
            "sampler.x@0",
            "sampler.eps.uncond@0",
            "sampler.eps.cond@0",
            "sampler.denoised@0",
        ];
        if step + 1 < steps {
            want.push("sampler.noise@0"); // none on the last step, where σ₊ = 0
        }
        assert_eq!(sampler_keys(step), want, "step {step}");
        // The UNet ran inside the step, after the input was recorded.
        let unet = r.find("unet.conv_out", Some(step), 0).unwrap();
        assert!(unet.order > r.find("sampler.x", Some(step), 0).unwrap().order);
    }
    assert_eq!(sampler_keys(steps), vec!["sampler.x@0"]);

    // Payloads are full and exact: the last sampler.x is the returned latent, and each step's
    // ancestral noise continues the seed's stream after the initial noise.
    let payload = |key: &str, step| {
        let e = r.find(key, Some(step), 0).unwrap();
        r.read_payload(&r.read_meta(e).unwrap()).unwrap().unwrap()
    };
    assert_eq!(payload("sampler.x", steps), host_copy(&out).unwrap().data);
    let mut rng = SdtraceNoise::new(1234);
    use sdtrace::sampling::NoiseSource;
    let initial = rng.randn(&[1, 4, 8, 8]).unwrap();
    let first = rng.randn(&[1, 4, 8, 8]).unwrap();
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    assert_eq!(payload("sampler.noise", 0), bytes(&first));
    let sigma0 = sampler.sigmas()[0];
    let x0: Vec<f32> = initial.iter().map(|v| v * sigma0).collect();
    assert_eq!(payload("sampler.x", 0), bytes(&x0));
    assert_ne!(payload("sampler.x", 1), payload("sampler.x", 0));

    // The header carries the schedule.
    let extra = &r.header().settings.extra;
    let sigmas: Vec<f32> = serde_json::from_value(extra["sigmas"].clone()).unwrap();
    assert_eq!(sigmas, sampler.sigmas());
    assert_eq!(r.header().settings.sampler.as_deref(), Some("euler-a"));
}
