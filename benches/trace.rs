//! Foundation benchmarks (issue: trace format, probe, summaries). Each figure is meant to be read
//! as a ratio against a baseline measured in the same run:
//! - `summary/*`: summary and summary+sketch throughput vs a plain sequential sum, 64 MiB of f32;
//! - `write/*`: full-payload trace writing vs `std::fs::write` of the same bytes;
//! - `open/index_100k`: opening a trace of 10⁵ records (index only);
//! - `probe/*`: a small layer-sized computation with and without a disabled probe call.
//!
//! Run: `cargo bench --bench trace`. Results go to docs/PERFORMANCE.md.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sdtrace::DType;
use sdtrace::probe::{Policy, Probe, TensorView, capture};
use sdtrace::stats::{summarize, summarize_with_sketch};
use sdtrace::trace::{Codec, Fidelity, RunHeader, TraceReader, TraceWriter, WriterOptions};
use std::hint::black_box;
use std::time::Duration;

const BYTES: usize = 64 << 20;

fn data() -> (Vec<f32>, Vec<u8>) {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let vals: Vec<f32> = (0..BYTES / 4)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0
        })
        .collect();
    let bytes = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
    (vals, bytes)
}

fn summary(c: &mut Criterion) {
    let (vals, bytes) = data();
    let mut g = c.benchmark_group("summary");
    g.throughput(Throughput::Bytes(BYTES as u64))
        .sample_size(10)
        .measurement_time(Duration::from_secs(4));
    g.bench_function("plain_sum", |b| {
        b.iter(|| black_box(&vals).iter().sum::<f32>())
    });
    g.bench_function("summarize", |b| {
        b.iter(|| summarize(DType::F32, black_box(&bytes)))
    });
    g.bench_function("summarize_sketch256", |b| {
        b.iter(|| {
            summarize_with_sketch(
                DType::F32,
                black_box(&bytes),
                "unet.mid_block",
                &[BYTES as u64 / 4],
                256,
            )
        })
    });
    g.finish();
}

fn write(c: &mut Criterion) {
    let (_, bytes) = data();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("bench.sdt");
    let pieces = 16;
    let piece = BYTES / pieces;
    let shape = [piece / 4];
    let view = TensorView::new(DType::F32, &shape, &bytes[..piece]).unwrap();
    let template = capture("unet.x", Some(0), 0, view, Fidelity::Stats, Codec::Raw, 256);
    let mut g = c.benchmark_group("write");
    g.throughput(Throughput::Bytes(BYTES as u64))
        .sample_size(10)
        .measurement_time(Duration::from_secs(4));
    g.bench_function("std_fs_write", |b| {
        b.iter(|| std::fs::write(&path, black_box(&bytes)).unwrap())
    });
    for codec in [Codec::Raw, Codec::ShuffleZstd] {
        g.bench_with_input(
            BenchmarkId::new("trace_full", codec.name()),
            &codec,
            |b, &codec| {
                // Records arrive owned, as `Probe::tensor_owned` hands them over; building them is
                // setup, writing them (frames, CRCs, index, footer) is what is timed.
                let records = || {
                    bytes
                        .chunks(piece)
                        .enumerate()
                        .map(|(i, chunk)| {
                            let mut rec = template.clone();
                            rec.key = format!("unet.block.{i}");
                            rec.fidelity = Fidelity::Full;
                            rec.payload = Some((chunk.to_vec(), codec));
                            rec
                        })
                        .collect::<Vec<_>>()
                };
                b.iter_batched(
                    records,
                    |records| {
                        let mut w = TraceWriter::create(
                            &path,
                            &RunHeader::default(),
                            WriterOptions::default(),
                        )
                        .unwrap();
                        for rec in records {
                            w.write(rec).unwrap();
                        }
                        w.finish().unwrap()
                    },
                    criterion::BatchSize::PerIteration,
                )
            },
        );
    }
    g.finish();
}

fn open(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("many.sdt");
    let mut w =
        TraceWriter::create(&path, &RunHeader::default(), WriterOptions::default()).unwrap();
    let vals: Vec<u8> = (0..4096).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let view = TensorView::new(DType::F32, &[1, 4, 32, 32], &vals).unwrap();
    // Realistic records: sketch fidelity (summary, 256-bucket sketch, thumbnail).
    let rec = capture("k", None, 0, view, Fidelity::Sketch, Codec::Raw, 256);
    for i in 0..100_000u32 {
        let mut r = rec.clone();
        r.key = format!(
            "unet.up_blocks.{}.attentions.{}.transformer_blocks.0.attn{}",
            i % 4,
            i % 3,
            i % 2 + 1
        );
        r.step = Some(i / 500);
        r.eval = i % 2;
        w.write(r).unwrap();
    }
    w.finish().unwrap();
    let mut g = c.benchmark_group("open");
    g.sample_size(20);
    g.bench_function("index_100k", |b| {
        b.iter(|| TraceReader::open(&path).unwrap().entries().len())
    });
    g.finish();
}

/// A layer-sized piece of work: an affine map and ReLU over 64 Ki elements (≈ the smallest UNet
/// activation at 512², 320×… elements are far larger).
fn layer(x: &[f32], y: &mut [f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = (v * 1.0001 + 0.5).max(0.0);
    }
}

fn probe(c: &mut Criterion) {
    let x: Vec<f32> = (0..65_536).map(|i| i as f32 * 1e-3).collect();
    let mut y = vec![0.0f32; x.len()];
    let disabled = Probe::disabled();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let w = TraceWriter::create(
        dir.path().join("p.sdt"),
        &RunHeader::default(),
        WriterOptions::default(),
    )
    .unwrap();
    let mut off = Policy::preset("default").unwrap();
    off.push("unet.*=off".parse().unwrap());
    let enabled_off = Probe::new(w, off);
    let key = "unet.down_blocks.0.resnets.0";
    let mut g = c.benchmark_group("probe");
    g.bench_function("layer_alone", |b| b.iter(|| layer(black_box(&x), &mut y)));
    // The probe calls alone, to be read against `layer_alone`.
    g.bench_function("plan_disabled", |b| {
        b.iter(|| disabled.plan(black_box(key)).is_noop())
    });
    g.bench_function("plan_rule_off", |b| {
        b.iter(|| enabled_off.plan(black_box(key)).is_noop())
    });
    g.finish();
}

criterion_group!(benches, summary, write, open, probe);
criterion_main!(benches);
