//! Helpers shared by the integration tests: deterministic data and a varied example trace.
#![allow(dead_code)]

use sdtrace::DType;
use sdtrace::probe::{Policy, Probe, TensorView};
use sdtrace::trace::{DeviceFacts, RunEnd, RunHeader, Settings, TraceWriter, WriterOptions};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The `sdtrace` binary, for driving it as a user does.
pub fn sdtrace() -> assert_cmd::Command {
    assert_cmd::Command::new(sdtrace_bin())
}

/// The path of the `sdtrace` binary, for a test that spawns it itself (signals, a terminal).
pub fn sdtrace_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sdtrace"))
}

/// The tiny synthetic model (seed 3), written once per test binary under the target's tmp dir
/// in the folder `name` (one folder per binary, so binaries running at once never share one).
pub fn tiny_model(name: &str) -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        sdtrace::model::synth::write_model(&dir, sdtrace::model::synth::SynthSize::Tiny, 3)
            .unwrap();
        dir
    })
}

/// xorshift64* — deterministic test data without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-300);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Little-endian bytes of `vals` converted to `dtype`.
pub fn encode(dtype: DType, vals: &[f64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(vals.len() * dtype.size());
    for &v in vals {
        match dtype {
            DType::F32 => out.extend((v as f32).to_le_bytes()),
            DType::F16 => out.extend(half::f16::from_f64(v).to_le_bytes()),
            DType::BF16 => out.extend(half::bf16::from_f64(v).to_le_bytes()),
            DType::F64 => out.extend(v.to_le_bytes()),
            DType::I64 => out.extend((v.round() as i64).to_le_bytes()),
            DType::I32 => out.extend((v.round() as i32).to_le_bytes()),
            DType::U8 => out.push(v.abs().round().min(255.0) as u8),
        }
    }
    out
}

pub fn normal_vec(rng: &mut Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| rng.normal() * scale).collect()
}

/// A header with fixed, synthetic facts (no clock, no host probing) so traces are reproducible.
pub fn fixed_header(label: &str) -> RunHeader {
    RunHeader {
        sdtrace_version: Some(env!("CARGO_PKG_VERSION").into()),
        candle_version: None,
        created_unix_ms: Some(1_795_700_000_000),
        settings: Settings {
            model: Some(label.into()),
            prompt: Some("a photo of an astronaut riding a horse".into()),
            sampler: Some("euler".into()),
            steps: Some(3),
            seed: Some(1_744_694_513),
            width: Some(64),
            height: Some(64),
            dtype: Some("f32".into()),
            rng: Some("sdtrace".into()),
            attention: Some("full".into()),
            ..Default::default()
        },
        device: DeviceFacts {
            device: Some("cpu".into()),
            os: Some("linux".into()),
            arch: Some("x86_64".into()),
            compute_threads: Some(1),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Observe one tensor of `vals` as `dtype` under `key`.
pub fn observe(probe: &Probe, key: &str, dtype: DType, shape: &[usize], vals: &[f64]) {
    let data = encode(dtype, vals);
    let view = TensorView::new(dtype, shape, &data).expect("valid view");
    probe.tensor(key, view).expect("probe accepts the tensor");
}

/// A miniature run: noise and text conditioning, `steps` sampler steps with model probes, an
/// image. Every dtype appears; the policy mixes stats, sketch, full raw and full zstd.
pub fn write_mini_run(path: &Path, steps: u32, seed: u64) -> u64 {
    write_mini_run_with(path, steps, seed, &[], RunEnd::default())
}

/// [`write_mini_run`] with more capture rules after the usual ones (`unet.mid_block=off`
/// leaves those records out) and the given run-end (an interrupted or failed run records only
/// its `steps_completed` steps of the `steps` in its header).
pub fn write_mini_run_with(path: &Path, steps: u32, seed: u64, rules: &[&str], end: RunEnd) -> u64 {
    let mut policy = Policy::default();
    for rule in [
        "unet.mid_block=stats",
        "sampler.denoised=full:zstd",
        "misc.*=full",
    ]
    .iter()
    .chain(rules)
    {
        policy.push(rule.parse().unwrap());
    }
    let mut header = fixed_header("synthetic mini run");
    header.settings.steps = Some(steps);
    let writer = TraceWriter::create(path, &header, WriterOptions::default()).unwrap();
    let probe = Probe::new(writer, policy);
    let mut rng = Rng(seed | 1);
    let latent = [1usize, 4, 8, 8];
    let n_lat = 256;
    let mut x = normal_vec(&mut rng, n_lat, 1.0);
    observe(&probe, "noise.initial", DType::F32, &latent, &x);
    observe(
        &probe,
        "text.cond",
        DType::F16,
        &[1, 77, 16],
        &normal_vec(&mut rng, 77 * 16, 0.5),
    );
    observe(
        &probe,
        "text.uncond",
        DType::F16,
        &[1, 77, 16],
        &normal_vec(&mut rng, 77 * 16, 0.5),
    );
    observe(
        &probe,
        "misc.tokens",
        DType::I64,
        &[77],
        &(0..77).map(|i| (i * 13 % 500) as f64).collect::<Vec<_>>(),
    );
    observe(
        &probe,
        "misc.mask",
        DType::I32,
        &[2, 3],
        &[1.0, 0.0, -1.0, 2.0, 3.0, 4.0],
    );
    observe(
        &probe,
        "misc.bf16",
        DType::BF16,
        &[3, 5],
        &normal_vec(&mut rng, 15, 2.0),
    );
    observe(
        &probe,
        "misc.f64",
        DType::F64,
        &[4],
        &normal_vec(&mut rng, 4, 1e3),
    );
    for step in 0..end.steps_completed.unwrap_or(steps) {
        probe.set_step(Some(step), 0).unwrap();
        observe(&probe, "sampler.x", DType::F32, &latent, &x);
        let h = normal_vec(&mut rng, 2 * 8 * 8 * 8, 1.0);
        observe(&probe, "unet.conv_in", DType::F32, &[2, 8, 8, 8], &h);
        observe(
            &probe,
            "unet.down_blocks.0.resnets.0",
            DType::F32,
            &[2, 8, 8, 8],
            &h.iter().map(|v| v * 0.9).collect::<Vec<_>>(),
        );
        observe(
            &probe,
            "unet.mid_block",
            DType::F32,
            &[2, 8, 4, 4],
            &normal_vec(&mut rng, 256, 1.0),
        );
        let eps = normal_vec(&mut rng, n_lat, 1.0);
        observe(&probe, "sampler.eps.uncond", DType::F32, &latent, &eps);
        observe(
            &probe,
            "sampler.eps.cond",
            DType::F32,
            &latent,
            &eps.iter().map(|v| v * 1.1).collect::<Vec<_>>(),
        );
        let denoised: Vec<f64> = x.iter().zip(&eps).map(|(a, e)| a - 0.5 * e).collect();
        observe(&probe, "sampler.denoised", DType::F32, &latent, &denoised);
        x = denoised;
    }
    probe.set_step(None, 0).unwrap();
    observe(
        &probe,
        "image",
        DType::U8,
        &[1, 3, 16, 16],
        &(0..768).map(|i| (i % 256) as f64).collect::<Vec<_>>(),
    );
    probe.finish_with(end).unwrap().unwrap().records
}

/// Relative L2 distance ‖a − b‖ / ‖b‖ of two candle tensors, computed in f64.
pub fn rel_l2(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f64 {
    let a = a.to_dtype(candle_core::DType::F64).unwrap();
    let b = b.to_dtype(candle_core::DType::F64).unwrap();
    let d = (&a - &b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let n = b
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    (d / n).sqrt()
}
