//! Noise generator benchmarks (issue #5): one 2×4×128×128 draw (a 1024×1024 batch of two,
//! 131 072 elements) from each PyTorch emulation; target < 50 ms each on the 2-core dev
//! machine. `sdtrace` (ChaCha20 + f64 Box–Muller, single-threaded) is listed for scale.
//!
//! Run: `cargo bench --bench noise`. Results go to docs/PERFORMANCE.md.

use criterion::{Criterion, criterion_group, criterion_main};
use sdtrace::sampling::NoiseSource;
use sdtrace::sampling::SdtraceNoise;
use sdtrace::sampling::rng::{A1111NvNoise, TorchCpuNoise, TorchCudaNoise};
use std::hint::black_box;

const SHAPE: [usize; 4] = [2, 4, 128, 128];

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("noise_2x4x128x128");
    g.sample_size(30);
    g.bench_function("torch_cpu", |b| {
        b.iter(|| black_box(TorchCpuNoise::new(1_744_694_513).randn(&SHAPE).unwrap()))
    });
    // An H100 draws the whole tensor in one wave; a GTX 1070 in five grid-stride loops.
    g.bench_function("torch_cuda_h100", |b| {
        b.iter(|| {
            black_box(
                TorchCudaNoise::new(1_744_694_513, 132, 2048, None)
                    .randn(&SHAPE)
                    .unwrap(),
            )
        })
    });
    g.bench_function("torch_cuda_gtx1070", |b| {
        b.iter(|| {
            black_box(
                TorchCudaNoise::new(1_744_694_513, 15, 2048, None)
                    .randn(&SHAPE)
                    .unwrap(),
            )
        })
    });
    g.bench_function("a1111_nv", |b| {
        b.iter(|| black_box(A1111NvNoise::new(1_744_694_513).randn(&SHAPE).unwrap()))
    });
    g.bench_function("sdtrace", |b| {
        b.iter(|| black_box(SdtraceNoise::new(1_744_694_513).randn(&SHAPE).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
