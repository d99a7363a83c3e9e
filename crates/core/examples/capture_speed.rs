//! Micro-benchmark of what capture `light` costs per sampler step of an SD 1.5 UNet at 512²
//! with CFG (batch 2): the summary, sketch and thumbnail of ≈ 0.59 GB of UNet-shaped f32
//! outputs, each part timed alone and then the whole probe path (rows swapped as for a webui
//! `[cond; uncond]` batch, records handed to the background writer).
//!
//! `cargo run --release -p sdtrace-core --example capture_speed [ROUNDS]`; prints GB/s per part
//! (best of ROUNDS, default 3) from the thread's CPU time, which a loaded machine disturbs less
//! than wall time. The probe rows include the writer's background thread only where it
//! delays this one.

use sdtrace_core::DType;
use sdtrace_core::probe::{Policy, Probe, TensorView};
use sdtrace_core::stats::{SketchBuilder, SummaryBuilder, thumbnail};
use sdtrace_core::trace::{Fidelity, RunHeader, TraceWriter, WriterOptions};
use std::time::Instant;

/// The shapes of SD 1.5's light-capture UNet points for a batch of 2 at a 64×64 latent.
fn unet_shapes() -> Vec<Vec<usize>> {
    let levels = [(320, 64), (640, 32), (1280, 16), (1280, 8)];
    let mut shapes = vec![vec![2, 320, 64, 64], vec![2, 1280]];
    let nchw = |c: usize, r: usize| vec![2, c, r, r];
    let tokens = |c: usize, r: usize| vec![2, r * r, c];
    let attention = |s: &mut Vec<Vec<usize>>, c, r| {
        s.push(nchw(c, r));
        for _ in 0..3 {
            s.push(tokens(c, r));
        }
    };
    for (i, &(c, r)) in levels.iter().enumerate() {
        for _ in 0..2 {
            shapes.push(nchw(c, r));
            if i < 3 {
                attention(&mut shapes, c, r);
            }
        }
        if i < 3 {
            shapes.push(nchw(c, r / 2));
        }
        shapes.push(nchw(c, r));
    }
    shapes.push(nchw(1280, 8));
    attention(&mut shapes, 1280, 8);
    shapes.push(nchw(1280, 8));
    shapes.push(nchw(1280, 8));
    for (i, &(c, r)) in levels.iter().rev().enumerate() {
        for _ in 0..3 {
            shapes.push(nchw(c, r));
            if i > 0 {
                attention(&mut shapes, c, r);
            }
        }
        if i < 3 {
            shapes.push(nchw(c, r * 2));
        }
        shapes.push(nchw(c, r));
    }
    shapes.push(nchw(320, 64));
    shapes.push(nchw(4, 64));
    shapes
}

fn tensor_bytes(shape: &[usize], seed: u64) -> Vec<u8> {
    let n: usize = shape.iter().product();
    let mut z = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n * 4);
    for _ in 0..n {
        z ^= z << 13;
        z ^= z >> 7;
        z ^= z << 17;
        // Roughly unit-scale values of both signs and many magnitudes.
        let u = (z >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
        out.extend_from_slice(&(u * u * u * 40.0).to_le_bytes());
    }
    out
}

/// Seconds this thread has run on a CPU (Linux `schedstat`), so that time spent waiting for a
/// core on a loaded machine does not count; wall time elsewhere.
fn cpu_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e9)
}

fn best(rounds: usize, mut f: impl FnMut()) -> f64 {
    (0..rounds)
        .map(|_| {
            let (t, c) = (Instant::now(), cpu_seconds());
            f();
            match (c, cpu_seconds()) {
                (Some(a), Some(b)) => b - a,
                _ => t.elapsed().as_secs_f64(),
            }
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    let shapes = unet_shapes();
    let data: Vec<Vec<u8>> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| tensor_bytes(s, i as u64 + 1))
        .collect();
    let total: usize = data.iter().map(Vec::len).sum();
    let gb = total as f64 / 1e9;
    println!("{} tensors, {:.3} GB of f32", shapes.len(), gb);
    let dims = |s: &[usize]| s.iter().map(|&d| d as u64).collect::<Vec<u64>>();
    let report =
        |name: &str, secs: f64| println!("{name:28} {:7.1} ms  {:6.2} GB/s", secs * 1e3, gb / secs);
    report(
        "xxh3 only",
        best(rounds, || {
            for d in &data {
                std::hint::black_box(xxhash_rust::xxh3::xxh3_64(d));
            }
        }),
    );
    report(
        "summary",
        best(rounds, || {
            for d in &data {
                let mut b = SummaryBuilder::new(DType::F32);
                b.update(d);
                std::hint::black_box(b.finish());
            }
        }),
    );
    report(
        "summary + sketch",
        best(rounds, || {
            for (s, d) in shapes.iter().zip(&data) {
                let mut b = SummaryBuilder::new(DType::F32).with_sketch(SketchBuilder::new(
                    "unet.x",
                    &dims(s),
                    256,
                ));
                b.update(d);
                std::hint::black_box(b.finish());
            }
        }),
    );
    report(
        "summary + sketch + thumbnail",
        best(rounds, || {
            for (s, d) in shapes.iter().zip(&data) {
                let mut b = SummaryBuilder::new(DType::F32)
                    .with_sketch(SketchBuilder::new("unet.x", &dims(s), 256))
                    .with_thumbnail(&dims(s));
                b.update(d);
                std::hint::black_box(b.finish_all());
            }
        }),
    );
    report(
        "thumbnail alone",
        best(rounds, || {
            for (s, d) in shapes.iter().zip(&data) {
                std::hint::black_box(thumbnail(DType::F32, &dims(s), d));
            }
        }),
    );
    let dir = std::env::temp_dir().join(format!("sdtrace-capture-speed-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let header = RunHeader::from_json(br#"{"sdtrace_version":"bench","settings":{},"device":{}}"#)?;
    for cond_first in [false, true] {
        let secs = best(rounds, || {
            let path = dir.join("t.sdt");
            let run = || -> Result<(), Box<dyn std::error::Error>> {
                let w = TraceWriter::create(&path, &header, WriterOptions::default())?;
                let probe = Probe::new(w, Policy::from_spec("light")?);
                probe.set_step(Some(0), 0)?;
                probe.set_cond_first(cond_first);
                for (i, (s, d)) in shapes.iter().zip(&data).enumerate() {
                    let key = format!("unet.down_blocks.{i}");
                    debug_assert!(matches!(
                        probe.plan(&key).capture,
                        Some((Fidelity::Sketch, _))
                    ));
                    probe.tensor(&key, TensorView::new(DType::F32, s, d)?)?;
                }
                probe.finish()?;
                Ok(())
            };
            if let Err(e) = run() {
                eprintln!("probe run failed: {e}");
            }
        });
        report(&format!("probe light, cond_first={cond_first}"), secs);
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
