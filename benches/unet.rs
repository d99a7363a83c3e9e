//! UNet benchmarks at SD 1.5 shapes (random weights), 512×512, batch 2, f32, CPU:
//! - correctness: our UNet vs candle-transformers' with the same weights (relative L2);
//! - speed: our forward with probing off vs candle-transformers' (target ≤ 1.05), with
//!   stats-only probing of every probe point (≤ 1.10) and full probing to a trace on disk (≤ 1.5).
//!
//! A plain harness (one forward takes tens of seconds on 2 cores): variants are interleaved,
//! each run `SDTRACE_BENCH_RUNS` times (default 2), and the median is reported.
//! Run: `cargo bench --bench unet`. Set `SDTRACE_BENCH_SIZE=tiny` for a quick smoke run.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use sdtrace::model::attention::{AttentionImpl, Numerics};
use sdtrace::model::config::UNetConfig;
use sdtrace::model::synth::unet_weights;
use sdtrace::model::unet::UNet;
use sdtrace::probe::{Policy, Probe};
use sdtrace::trace::{RunHeader, TraceWriter, WriterOptions};
use std::collections::HashMap;
use std::time::Instant;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut s = seed | 1;
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.4
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let tiny = std::env::var("SDTRACE_BENCH_SIZE").is_ok_and(|s| s == "tiny");
    let runs: usize = std::env::var("SDTRACE_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let (cfg, side) = if tiny {
        (UNetConfig::tiny(), 8)
    } else {
        (UNetConfig::sd15(), 64)
    };
    eprintln!(
        "building random weights ({} config)...",
        if tiny { "tiny" } else { "sd15" }
    );
    let t = Instant::now();
    let weights: HashMap<String, Tensor> = unet_weights(&cfg, 1).unwrap().into_iter().collect();
    eprintln!(
        "  {:.1} s, {} tensors",
        t.elapsed().as_secs_f64(),
        weights.len()
    );
    let vb = || VarBuilder::from_tensors(weights.clone(), DType::F32, &Device::Cpu);
    let ours = UNet::new(vb(), &cfg, Numerics::CANDLE, AttentionImpl::Full, "unet").unwrap();
    let theirs = candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModel::new(
        vb(),
        4,
        4,
        false,
        cfg.to_candle(),
    )
    .unwrap();
    let latent = randn(&[2, 4, side, side], 1);
    let context = randn(&[2, 77, cfg.cross_attention_dim], 2);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();

    let probe_for = |preset: &str, name: &str| {
        let w = TraceWriter::create(
            dir.path().join(name),
            &RunHeader::default(),
            WriterOptions {
                max_queue_bytes: 512 << 20,
            },
        )
        .unwrap();
        let p = Probe::new(w, Policy::preset(preset).unwrap());
        p.set_step(Some(0), 0).unwrap();
        p
    };
    let mut times: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut check = None;
    for run in 0..runs {
        let t = Instant::now();
        let b = theirs.forward(&latent, 500.0, &context).unwrap();
        times
            .entry("candle-transformers")
            .or_default()
            .push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let a = ours
            .forward(&latent, 500.0, &context, &Probe::disabled())
            .unwrap();
        times
            .entry("ours, probe off")
            .or_default()
            .push(t.elapsed().as_secs_f64());
        if run == 0 {
            let d = (&a - &b)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64;
            let n = b
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64;
            check = Some((d / n).sqrt());
        }
        let p = probe_for("stats", "stats.sdt");
        let t = Instant::now();
        ours.forward(&latent, 500.0, &context, &p).unwrap();
        p.finish().unwrap();
        times
            .entry("ours, stats probing")
            .or_default()
            .push(t.elapsed().as_secs_f64());
        let p = probe_for("full", "full.sdt");
        let t = Instant::now();
        ours.forward(&latent, 500.0, &context, &p).unwrap();
        let written = p.finish().unwrap().unwrap();
        times
            .entry("ours, full probing to disk")
            .or_default()
            .push(t.elapsed().as_secs_f64());
        if run == 0 {
            eprintln!(
                "  full trace: {} records, {:.1} MiB",
                written.records,
                written.bytes as f64 / (1 << 20) as f64
            );
        }
        eprintln!("run {run} done");
    }
    let base = median(times["candle-transformers"].clone());
    let off = median(times["ours, probe off"].clone());
    println!(
        "UNet forward, {} shapes, latent 2x4x{side}x{side}, f32, CPU, {runs} runs (median):",
        if tiny { "tiny" } else { "SD 1.5" }
    );
    println!(
        "  relative L2 ours vs candle-transformers: {:.2e}",
        check.unwrap_or(f64::NAN)
    );
    for name in [
        "candle-transformers",
        "ours, probe off",
        "ours, stats probing",
        "ours, full probing to disk",
    ] {
        let m = median(times[name].clone());
        println!(
            "  {name:<28} {m:8.3} s   {:.3} x candle-transformers   {:.3} x ours unprobed",
            m / base,
            m / off
        );
    }
}
