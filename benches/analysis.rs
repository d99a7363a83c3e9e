//! Analysis benchmarks (issue #6), read as ratios against baselines measured in the same run:
//! - `sketch_only/compare_judge_20x400`: compare + judge two traces of 20 steps × 400 keys
//!   recorded at sketch fidelity (8 000 records each; target < 200 ms);
//! - `payload/*`: full-payload comparison of two traces of 16 × 4 MiB f32 records against
//!   `payload/read_and_sum`, which reads the same payloads through the same reader and sums
//!   every element in one pass (target: throughput ≥ 0.5 of the baseline), with one worker and
//!   with one per core.
//!
//! Run: `cargo bench --bench analysis`. Results go to docs/PERFORMANCE.md.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sdtrace::DType;
use sdtrace::analysis::{CompareOptions, FailOn, TolConfig, compare, judge};
use sdtrace::probe::{Policy, Probe, TensorView};
use sdtrace::trace::{RunHeader, TraceReader, TraceWriter, WriterOptions};
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

fn values(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n)
        .flat_map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0).to_le_bytes()
        })
        .collect()
}

fn write(path: &Path, rule: &str, steps: u32, keys: usize, n: usize, seed: u64) {
    let mut policy = Policy::default();
    policy.push(rule.parse().unwrap());
    let w = TraceWriter::create(path, &RunHeader::default(), WriterOptions::default()).unwrap();
    let probe = Probe::new(w, policy);
    let shape = [n];
    for step in 0..steps {
        probe.set_step(Some(step), 0).unwrap();
        for k in 0..keys {
            // Identical data except for the last key of each step from step 10 on.
            let s = if k + 1 == keys && step >= 10 { seed } else { 1 }
                + (step as u64) * 1000
                + k as u64;
            let data = values(s, n);
            let view = TensorView::new(DType::F32, &shape, &data).unwrap();
            probe.tensor(&format!("unet.block.{k}"), view).unwrap();
        }
    }
    probe.finish().unwrap();
}

fn sketch_only(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (pa, pb) = (dir.path().join("a.sdt"), dir.path().join("b.sdt"));
    write(&pa, "*=sketch", 20, 400, 1024, 2);
    write(&pb, "*=sketch", 20, 400, 1024, 3);
    let mut g = c.benchmark_group("sketch_only");
    g.sample_size(10).measurement_time(Duration::from_secs(4));
    g.bench_function("compare_judge_20x400", |b| {
        b.iter(|| {
            let ra = TraceReader::open(&pa).unwrap();
            let rb = TraceReader::open(&pb).unwrap();
            let cmp = compare(&ra, &rb, None, &CompareOptions::default()).unwrap();
            black_box(judge(
                &cmp,
                &TolConfig::default(),
                &FailOn::FirstExceed.into(),
            ))
        })
    });
    g.finish();
}

fn payload(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (pa, pb) = (dir.path().join("a.sdt"), dir.path().join("b.sdt"));
    let n = (4 << 20) / 4;
    write(&pa, "*=full", 1, 16, n, 2);
    write(&pb, "*=full", 1, 16, n, 3);
    let ra = TraceReader::open(&pa).unwrap();
    let rb = TraceReader::open(&pb).unwrap();
    let bytes = 2 * 16 * (4u64 << 20);
    let mut g = c.benchmark_group("payload");
    g.throughput(Throughput::Bytes(bytes))
        .sample_size(10)
        .measurement_time(Duration::from_secs(6));
    g.bench_function("read_and_sum", |b| {
        b.iter(|| {
            let mut total = 0.0f32;
            for r in [&ra, &rb] {
                for e in r.entries() {
                    let meta = r.read_meta(e).unwrap();
                    r.payload_chunks(&meta, |piece| {
                        for x in piece.chunks_exact(4) {
                            total += f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
                        }
                        Ok(())
                    })
                    .unwrap();
                }
            }
            black_box(total)
        })
    });
    for (name, threads) in [("compare_1_thread", 1), ("compare_all_cores", 0)] {
        let opts = CompareOptions {
            threads,
            ..Default::default()
        };
        g.bench_function(name, |b| {
            b.iter(|| black_box(compare(&ra, &rb, None, &opts).unwrap()))
        });
    }
    g.finish();
}

/// Peak resident memory of a comparison of two large traces (24 × 64 MiB f32 records and a
/// 2048×2048 RGB f32 `image`, so PSNR/SSIM run too) with the most workers (16): the target is
/// under 256 MiB whatever the trace size. Linux only (peak reset through /proc/self/clear_refs).
fn memory(_: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (pa, pb) = (dir.path().join("a.sdt"), dir.path().join("b.sdt"));
    for (p, seed) in [(&pa, 2), (&pb, 3)] {
        write(p, "*=full", 1, 24, (64 << 20) / 4, seed);
        // Append the image to a second trace-sized run: one more record per trace.
        let w = TraceWriter::create(
            p.with_extension("img.sdt"),
            &RunHeader::default(),
            WriterOptions::default(),
        )
        .unwrap();
        let probe = Probe::new(w, Policy::preset("full").unwrap());
        let shape = [1usize, 3, 2048, 2048];
        let data: Vec<u8> = values(seed, 3 * 2048 * 2048)
            .chunks_exact(4)
            .flat_map(|c| (f32::from_le_bytes([c[0], c[1], c[2], c[3]]) / 8.0 + 0.5).to_le_bytes())
            .collect();
        probe
            .tensor("image", TensorView::new(DType::F32, &shape, &data).unwrap())
            .unwrap();
        probe.finish().unwrap();
    }
    let peak = |what: &str| -> u64 { sdtrace::host::proc_status_bytes(what).unwrap_or(0) };
    let opts = CompareOptions {
        threads: 64,
        ..Default::default()
    };
    for (name, a, b) in [
        ("24 x 64 MiB records", pa.clone(), pb.clone()),
        (
            "2048x2048 f32 image",
            pa.with_extension("img.sdt"),
            pb.with_extension("img.sdt"),
        ),
    ] {
        if std::fs::write("/proc/self/clear_refs", "5").is_err() {
            eprintln!("memory: cannot reset the peak RSS here; skipped");
            return;
        }
        let before = peak("VmRSS");
        let ra = TraceReader::open(&a).unwrap();
        let rb = TraceReader::open(&b).unwrap();
        let cmp = compare(&ra, &rb, None, &opts).unwrap();
        black_box(&cmp);
        let hwm = peak("VmHWM");
        println!(
            "memory/{name}: peak RSS {} MiB ({} MiB above the {} MiB before; target < 256 MiB)",
            hwm >> 20,
            hwm.saturating_sub(before) >> 20,
            before >> 20
        );
    }
}

criterion_group!(benches, sketch_only, payload, memory);
criterion_main!(benches);
