//! Philox4x32-10 generators: `torch-cuda` (an emulation of `torch.randn(shape, device="cuda")`
//! on a card with a given SM count) and `a1111-nv` (AUTOMATIC1111's "NV" source, the same
//! stream without the grid cap).
//!
//! `torch-cuda` (PyTorch `DistributionTemplates.h`, curand `curand_kernel.h`,
//! `curand_philox4x32_x.h`, `curand_normal.h`, re-expressed here):
//! - For n elements PyTorch launches 256-thread blocks, grid = min(⌈n/256⌉, SMs·⌊threads/256⌋),
//!   T = 256·grid threads. Thread g seeds curand with (seed, subsequence g, offset): key =
//!   (seed low, seed high), counter = (offset/4 + j) in the low 64 bits and g in the high 64
//!   bits for its j-th loop iteration. Each iteration takes one Philox block (x, y, z, w) and
//!   writes element g + T·(4j + i) from word i, for every such index below n.
//! - `randn`: `curand_normal4` = Box–Muller on (x, y) and (z, w): u = a·2⁻³² + 2⁻³³,
//!   v = b·c + c/2 with c = float(2π)·2⁻³² (one FMA), s = √(−2·log u) in float, giving
//!   (s·sin v, s·cos v). `rand`: `curand_uniform4`, u = a·2⁻³² + 2⁻³³ in float, and PyTorch maps
//!   a value of exactly 1 to 0.
//! - The offset starts at 0 after `manual_seed` and grows by 4·⌈n/(4T)⌉ per call.
//!
//! The Philox words and the layout are exact, so `rand` is bit-exact. The GPU evaluates sin and
//! cos with its approximate `__sincosf`; here they (and log) are evaluated in f64 and rounded,
//! which keeps `randn` within 4·10⁻⁶ of the device's values (checked against an H100 in
//! `tests/noise_golden.rs`) but not bit-equal.
//!
//! `a1111-nv` (A1111 `modules/rng_philox.py`): element i of call k (k = 0, 1, …) is the sine
//! half of the Box–Muller pair of words (x, y) of Philox(counter (k, 0, i, 0), key (seed low,
//! seed high)), computed in f64 (u = x·2⁻³² + 2⁻³³, v = y·c + c/2 with c the float32 nearest
//! 2.3283064e-10·6.2831855) and rounded to f32. Invariant of both: the output depends only on
//! the parameters and the sequence of element counts; large draws are split over threads with
//! identical results.

use super::super::{NoiseSource, Result, noise::numel};
use serde_json::{Value, json};

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox4x32 with 10 rounds: counter (x, y, z, w), key (k0, k1).
#[inline]
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (ctr, key);
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let p0 = M0 as u64 * c[0] as u64;
        let p1 = M1 as u64 * c[2] as u64;
        c = [
            (p1 >> 32) as u32 ^ c[1] ^ k[0],
            p1 as u32,
            (p0 >> 32) as u32 ^ c[3] ^ k[1],
            p0 as u32,
        ];
    }
    c
}

fn key_of(seed: u64) -> [u32; 2] {
    [seed as u32, (seed >> 32) as u32]
}

/// curand's 2⁻³² (`CURAND_2POW32_INV`, which rounds to exactly 2⁻³²).
const INV32: f32 = 2.328_306_4e-10;
/// curand's `CURAND_2POW32_INV_2PI` = 2⁻³²·float(2π), computed in float.
const INV32_2PI: f32 = INV32 * 6.283_185_5;

/// `_curand_box_muller(a, b)`: (s·sin v, s·cos v), transcendental functions via f64.
#[inline]
fn box_muller_cuda(a: u32, b: u32) -> (f32, f32) {
    let u = a as f32 * INV32 + INV32 / 2.0;
    let v = (b as f32).mul_add(INV32_2PI, INV32_2PI / 2.0);
    let s = (-2.0f32 * ((u as f64).ln() as f32)).sqrt();
    let (sin, cos) = (v as f64).sin_cos();
    (sin as f32 * s, cos as f32 * s)
}

/// The sine half of `_curand_box_muller(a, b)` alone.
#[inline]
fn box_muller_cuda_sin(a: u32, b: u32) -> f32 {
    let u = a as f32 * INV32 + INV32 / 2.0;
    let v = (b as f32).mul_add(INV32_2PI, INV32_2PI / 2.0);
    let s = (-2.0f32 * ((u as f64).ln() as f32)).sqrt();
    (v as f64).sin() as f32 * s
}

/// `curand_normal4` of one Philox block; only the first `need` values are computed (a thread
/// whose later components fall past the end of the tensor skips their transcendentals).
#[inline]
fn normal4(w: [u32; 4], need: usize) -> [f32; 4] {
    let half = |x: u32, y: u32, need: usize| match need {
        0 => (0.0, 0.0),
        1 => (box_muller_cuda_sin(x, y), 0.0),
        _ => box_muller_cuda(x, y),
    };
    let (a, b) = half(w[0], w[1], need);
    let (c, d) = half(w[2], w[3], need.saturating_sub(2));
    [a, b, c, d]
}

/// `curand_uniform4` of one Philox block, with PyTorch's 1 → 0.
#[inline]
fn uniform4(w: [u32; 4], _need: usize) -> [f32; 4] {
    w.map(|x| {
        let u = x as f32 * INV32 + INV32 / 2.0;
        if u == 1.0 { 0.0 } else { u }
    })
}

/// Threads to split a draw of `n` elements over.
fn workers_for(n: usize) -> usize {
    if n < 1 << 15 {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |w| w.get().min(8))
    }
}

/// `torch.randn` / `torch.rand` on a CUDA card with `sms` SMs of `threads_per_sm` threads.
#[derive(Clone, Debug)]
pub struct TorchCudaNoise {
    seed: u64,
    sms: u32,
    threads_per_sm: u32,
    preset: Option<&'static str>,
    /// PyTorch's Philox offset (a multiple of 4).
    offset: u64,
}

impl TorchCudaNoise {
    pub const NAME: &'static str = "torch-cuda";

    /// `torch.manual_seed(seed)` on a card with `sms` SMs and `threads_per_sm` threads per SM
    /// (callers check both; at least 1 and 256).
    pub fn new(seed: u64, sms: u32, threads_per_sm: u32, preset: Option<&'static str>) -> Self {
        TorchCudaNoise {
            seed,
            sms: sms.max(1),
            threads_per_sm: threads_per_sm.max(256),
            preset,
            offset: 0,
        }
    }

    /// Elements per wave: SMs × ⌊threads/256⌋ × 256.
    pub fn wave(&self) -> u64 {
        self.sms as u64 * (self.threads_per_sm as u64 / 256) * 256
    }

    /// Threads T of the grid PyTorch launches for `n` elements.
    pub fn threads_for(&self, n: usize) -> usize {
        let blocks = (n as u64).div_ceil(256).min(self.wave() / 256).max(1);
        (blocks * 256) as usize
    }

    /// The Philox offset the next call starts from.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next `torch.randn` of `n` elements.
    pub fn randn_n(&mut self, n: usize) -> Vec<f32> {
        self.grid_draw(n, normal4)
    }

    /// The next `torch.rand` of `n` elements (bit-exact).
    pub fn rand_n(&mut self, n: usize) -> Vec<f32> {
        self.grid_draw(n, uniform4)
    }

    fn grid_draw(&mut self, n: usize, f: fn([u32; 4], usize) -> [f32; 4]) -> Vec<f32> {
        if n == 0 {
            return Vec::new();
        }
        let t = self.threads_for(n);
        let loops = (n - 1) / (4 * t) + 1;
        let base = self.offset / 4;
        self.offset += 4 * loops as u64;
        let key = key_of(self.seed);
        let rows = 4 * loops;
        // Thread range [g0, g1) → its values as rows of g1 − g0, row q = 4j + i.
        let run = |g0: usize, g1: usize| -> Vec<f32> {
            let w = g1 - g0;
            let mut buf = vec![0f32; rows * w];
            for j in 0..loops {
                let ctr = base + j as u64;
                for g in g0..g1 {
                    let first = g + t * 4 * j;
                    if first >= n {
                        break;
                    }
                    let block = philox4x32_10(
                        [
                            ctr as u32,
                            (ctr >> 32) as u32,
                            g as u32,
                            (g as u64 >> 32) as u32,
                        ],
                        key,
                    );
                    let need = (n - first).div_ceil(t).min(4);
                    for (i, v) in f(block, need).into_iter().take(need).enumerate() {
                        buf[(4 * j + i) * w + g - g0] = v;
                    }
                }
            }
            buf
        };
        let workers = workers_for(n).min(t);
        let per = t.div_ceil(workers);
        let ranges: Vec<(usize, usize)> = (0..t)
            .step_by(per)
            .map(|g0| (g0, (g0 + per).min(t)))
            .collect();
        let parts: Vec<Vec<f32>> = if ranges.len() == 1 {
            vec![run(0, t)]
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = ranges
                    .iter()
                    .map(|&(g0, g1)| s.spawn(move || run(g0, g1)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_default())
                    .collect()
            })
        };
        let mut out = vec![0f32; n];
        for (&(g0, g1), buf) in ranges.iter().zip(&parts) {
            let w = g1 - g0;
            for q in 0..rows {
                let start = q * t + g0;
                if start >= n {
                    break;
                }
                let len = w.min(n - start);
                if let (Some(dst), Some(src)) =
                    (out.get_mut(start..start + len), buf.get(q * w..q * w + len))
                {
                    dst.copy_from_slice(src);
                }
            }
        }
        out
    }
}

impl NoiseSource for TorchCudaNoise {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn spec(&self) -> String {
        format!("{}:{},{}", Self::NAME, self.sms, self.threads_per_sm)
    }

    fn params(&self) -> Value {
        json!({
            "seed": self.seed,
            "sms": self.sms,
            "threads_per_sm": self.threads_per_sm,
            "preset": self.preset,
            "wave_elements": self.wave(),
            "algorithm": "emulated torch.manual_seed(seed); torch.randn(shape, device='cuda'): curand Philox4x32-10 (subsequence = thread, counter offset per call), curand_normal4 Box-Muller (sin/cos/log in f64, rounded), grid-stride layout with grid = min(ceil(n/256), sms*floor(threads_per_sm/256)) blocks of 256",
        })
    }

    fn randn(&mut self, shape: &[usize]) -> Result<Vec<f32>> {
        Ok(self.randn_n(numel(shape)?))
    }
}

/// A1111's "NV" generator (`rng_philox.Generator`): uncapped, f64 Box–Muller, sine only.
#[derive(Clone, Debug)]
pub struct A1111NvNoise {
    seed: u64,
    /// Calls made (A1111's `offset`).
    offset: u32,
}

impl A1111NvNoise {
    pub const NAME: &'static str = "a1111-nv";

    pub fn new(seed: u64) -> Self {
        A1111NvNoise { seed, offset: 0 }
    }

    /// The next `randn` of `n` elements.
    pub fn randn_n(&mut self, n: usize) -> Vec<f32> {
        let key = key_of(self.seed);
        let offset = self.offset;
        self.offset = self.offset.wrapping_add(1);
        let c1 = INV32 as f64;
        let c2 = (2.328_306_4e-10_f64 * 6.283_185_5_f64) as f32 as f64;
        let one = |i: usize| -> f32 {
            let w = philox4x32_10([offset, 0, i as u32, 0], key);
            let u = w[0] as f64 * c1 + c1 / 2.0;
            let v = w[1] as f64 * c2 + c2 / 2.0;
            ((-2.0 * u.ln()).sqrt() * v.sin()) as f32
        };
        let workers = workers_for(n);
        if workers <= 1 {
            return (0..n).map(one).collect();
        }
        let mut out = vec![0f32; n];
        let per = n.div_ceil(workers);
        std::thread::scope(|s| {
            for (k, part) in out.chunks_mut(per).enumerate() {
                s.spawn(move || {
                    for (i, v) in part.iter_mut().enumerate() {
                        *v = one(k * per + i);
                    }
                });
            }
        });
        out
    }
}

impl NoiseSource for A1111NvNoise {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn params(&self) -> Value {
        json!({
            "seed": self.seed,
            "algorithm": "AUTOMATIC1111 rng_philox.Generator ('NV'): Philox4x32-10, counter (call, 0, element, 0), Box-Muller sine of words 0 and 1 in f64, no grid cap",
        })
    }

    fn randn(&mut self, shape: &[usize]) -> Result<Vec<f32>> {
        Ok(self.randn_n(numel(shape)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_known_answers() {
        // Random123's kat_vectors for philox4x32_10.
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn grid_layout_and_offsets() {
        // 1 SM of 256 threads: T = 256. n = 1000 → 1 loop (4·256 = 1024 ≥ 1000).
        let mut g = TorchCudaNoise::new(7, 1, 256, None);
        let v = g.rand_n(1000);
        assert_eq!(g.offset(), 4);
        let key = key_of(7);
        for li in [0usize, 255, 256, 511, 999] {
            let (thread, i) = (li % 256, li / 256);
            let w = philox4x32_10([0, 0, thread as u32, 0], key);
            assert_eq!(v[li], uniform4(w, 4)[i], "element {li}");
        }
        // n = 2000 → 2 loops, from offset 4: counters 1 and 2.
        let w = g.rand_n(2000);
        assert_eq!(g.offset(), 12);
        let b = philox4x32_10([1, 0, 5, 0], key);
        assert_eq!(w[5 + 256 * 2], uniform4(b, 4)[2]);
        let b = philox4x32_10([2, 0, 5, 0], key);
        assert_eq!(w[5 + 256 * 5], uniform4(b, 4)[1]);
        // Uncapped (big card): element i is component 0 of thread i; same as a1111-nv's words.
        let mut big = TorchCudaNoise::new(7, 132, 2048, None);
        assert_eq!(big.threads_for(1000), 1024);
        let r = big.randn_n(1000);
        for i in [0usize, 17, 999] {
            let w = philox4x32_10([0, 0, i as u32, 0], key);
            assert_eq!(r[i], box_muller_cuda(w[0], w[1]).0);
        }
        assert!(big.randn_n(0).is_empty());
        assert_eq!(big.offset(), 4);
    }

    #[test]
    fn threads_split_gives_the_same_values() {
        let mut a = TorchCudaNoise::new(1, 3, 1024, None);
        let n = 100_003;
        let v = a.randn_n(n);
        // Serial reference for a few elements.
        let t = a.threads_for(n);
        assert_eq!(t, 3 * 1024);
        let key = key_of(1);
        for li in [0usize, 3071, 3072, 50_000, n - 1] {
            let (g, q) = (li % t, li / t);
            let w = philox4x32_10([(q / 4) as u32, 0, g as u32, 0], key);
            assert_eq!(v[li], normal4(w, 4)[q % 4], "element {li}");
        }
        let nv = A1111NvNoise::new(9).randn_n(n);
        let w = philox4x32_10([0, 0, 77_777, 0], key_of(9));
        let u = w[0] as f64 * 2f64.powi(-32) + 2f64.powi(-33);
        let c = (2.328_306_4e-10_f64 * 6.283_185_5_f64) as f32 as f64;
        let want = ((-2.0 * u.ln()).sqrt() * (w[1] as f64 * c + c / 2.0).sin()) as f32;
        assert_eq!(nv[77_777], want);
    }

    #[test]
    fn nv_matches_the_uncapped_cuda_draw_closely() {
        let mut nv = A1111NvNoise::new(5);
        let mut cuda = TorchCudaNoise::new(5, 1000, 2048, None);
        for _ in 0..2 {
            let (a, b) = (nv.randn_n(5000), cuda.randn_n(5000));
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(worst < 2e-6, "{worst}");
        }
    }
}
