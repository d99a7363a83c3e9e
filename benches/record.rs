//! End-to-end `record` benchmarks (issue #4), in process through `sdtrace::pipeline::record`:
//! - tiny synthetic model, 20 steps, 64×64, light capture: wall time (target < 30 s);
//! - SD 1.5 shapes (random weights) at 512×512, 1 step, f32 CPU: light capture vs capture off,
//!   runs interleaved (target ratio ≤ 1.10).
//!
//! A plain harness (one SD 1.5 run takes about a minute on 2 cores); each variant runs
//! `SDTRACE_BENCH_RUNS` times (default 3 tiny / 2 SD 1.5) and the median is reported. The SD 1.5
//! model (3.4 GB) is written once to `target/bench-models/sd15`. Run: `cargo bench --bench
//! record`; `SDTRACE_BENCH_SIZE=tiny` runs the tiny part only.

use sdtrace::model::synth::{SynthSize, write_model};
use sdtrace::pipeline::{DeviceChoice, ModelDType, Quiet, RecordSpec, record};
use sdtrace::probe::Policy;
use sdtrace::sampling::{RngSpec, SamplerKind};
use sdtrace::text::PromptSyntax;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn spec(model: &Path, steps: u32, side: u32, capture: &str) -> RecordSpec {
    RecordSpec {
        model: model.to_path_buf(),
        prompt: "a photograph of an astronaut riding a horse".into(),
        negative: "blurry".into(),
        syntax: PromptSyntax::A1111,
        steps,
        sampler: SamplerKind::DpmPp2mKarras,
        sampler_impl: Default::default(),
        cfg_scale: 7.0,
        seed: 1,
        rng: RngSpec::Sdtrace,
        ensd: 0,
        width: side,
        height: side,
        clip_skip: 1,
        device: DeviceChoice::Cpu,
        dtype: ModelDType::F32,
        gemm_reduced_precision: Default::default(),
        attention: sdtrace::model::attention::AttentionImpl::Full,
        threads: None,
        policy: Policy::from_spec(capture).unwrap(),
        capture: capture.into(),
        perturb: Vec::new(),
        stop_on_nan: false,
        max_trace_size: u64::MAX,
        model_options: Default::default(),
        a1111: Default::default(),
        size_conditioning: Default::default(),
    }
}

/// CPU seconds (user + system) this process has used, all threads (0 where unknown).
#[cfg(not(unix))]
fn cpu_seconds() -> f64 {
    0.0
}

/// CPU seconds (user + system) this process has used, all threads.
#[cfg(unix)]
fn cpu_seconds() -> f64 {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the buffer completely when it returns 0.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr()) } != 0 {
        return 0.0;
    }
    // SAFETY: initialised by the successful call above.
    let u = unsafe { u.assume_init() };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 * 1e-6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Wall seconds, CPU seconds and trace bytes of one recording.
fn time(spec: &RecordSpec, out: &Path) -> (f64, f64, u64) {
    let (t, c) = (Instant::now(), cpu_seconds());
    let rec = record(spec, out, &mut Quiet).unwrap();
    (
        t.elapsed().as_secs_f64(),
        cpu_seconds() - c,
        rec.trace.bytes,
    )
}

fn model_dir(size: SynthSize, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/bench-models")
        .join(name);
    if !dir
        .join("unet/diffusion_pytorch_model.safetensors")
        .exists()
    {
        eprintln!("writing the {name} model to {} ...", dir.display());
        write_model(&dir, size, 1).unwrap();
    }
    dir
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let tiny_only = std::env::var("SDTRACE_BENCH_SIZE").is_ok_and(|s| s == "tiny");
    let runs = |default: usize| {
        std::env::var("SDTRACE_BENCH_RUNS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("bench.sdt");

    let tiny = model_dir(SynthSize::Tiny, "tiny");
    let s = spec(&tiny, 20, 64, "light");
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..runs(3) {
        let (t, _, b) = time(&s, &out);
        times.push(t);
        bytes = b;
    }
    println!(
        "record tiny 64x64, 20 steps, light capture: {:.3} s median of {} ({} KiB trace)",
        median(times),
        runs(3),
        bytes / 1024
    );
    if tiny_only {
        return;
    }

    let sd15 = model_dir(SynthSize::Sd15, "sd15");
    let (light, off) = (spec(&sd15, 1, 512, "light"), spec(&sd15, 1, 512, "off"));
    // One untimed run warms the page cache for the 3.4 GB of weights (skip with
    // SDTRACE_BENCH_WARM=1 when it is warm already).
    if std::env::var("SDTRACE_BENCH_WARM").is_err() {
        time(&off, &out);
    }
    // Wall time moves with whatever else the machine runs; CPU time (all threads, the writer's
    // included) much less, so both are reported.
    let (mut w_light, mut w_off, mut c_light, mut c_off) = (vec![], vec![], vec![], vec![]);
    let mut light_bytes = 0;
    for i in 0..runs(2) {
        let (w, c, _) = time(&off, &out);
        w_off.push(w);
        c_off.push(c);
        let (w, c, b) = time(&light, &out);
        w_light.push(w);
        c_light.push(c);
        light_bytes = b;
        eprintln!(
            "run {i}: off {:.1} s wall / {:.1} s CPU, light {w:.1} s wall / {c:.1} s CPU",
            w_off[i], c_off[i]
        );
    }
    let (wl, wo, cl, co) = (
        median(w_light),
        median(w_off),
        median(c_light),
        median(c_off),
    );
    println!(
        "record SD 1.5 shapes 512x512, 1 step, f32 CPU ({} MiB light trace): capture off {wo:.1} s wall / {co:.1} s CPU, light {wl:.1} s / {cl:.1} s: ratio {:.3} wall, {:.3} CPU (target <= 1.10)",
        light_bytes >> 20,
        wl / wo,
        cl / co
    );
}
