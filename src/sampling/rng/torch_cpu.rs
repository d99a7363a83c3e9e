//! `torch-cpu`: bit-exact `torch.manual_seed(s); torch.randn(shape)` on the CPU, and the state
//! carried from one `randn` call to the next.
//!
//! What PyTorch does (aten `CPUGeneratorImpl`, `TransformationHelper.h`, cpu
//! `DistributionTemplates.h`, `avx_mathfun.h`), re-expressed here:
//! - The engine is MT19937 seeded with the seed's low 32 bits; `manual_seed` also clears the
//!   cached second Box–Muller value.
//! - Float32 tensors of 16 or more elements (`normal_fill`, AVX2 kernel — the one every x86
//!   build runs, AVX-512 machines included, because `normal_stub` has no AVX-512 variant): one
//!   uniform per element, U = (r & 0xFFFFFF)·2⁻²⁴ from one 32-bit draw r, for all n elements in
//!   order; then each full block of 16 at i becomes, for j < 8, u₁ = 1 − U[i+j], u₂ = U[i+8+j],
//!   ρ = √(−2·log u₁), θ = float(2π)·u₂, out[i+j] = ρ·cos θ, out[i+8+j] = ρ·sin θ, with the
//!   float32 Cephes polynomials of `avx_mathfun.h` for log and sincos; when n is not a multiple
//!   of 16, 16 fresh uniforms overwrite the last 16 slots and that block is transformed again.
//! - Fewer than 16 elements: each element is `normal_distribution<double>`: from two 53-bit
//!   uniforms (each from two 32-bit draws, high word first) u₁, u₂, ρ = √(−2·log1p(−u₂)),
//!   θ = 2π·u₁; it returns ρ·cos θ and caches ρ·sin θ for the next scalar element (even in the
//!   next call), then rounds to float32.
//!
//! Invariant: the float32 arithmetic follows the compiled kernel operation by operation,
//! including the multiply–add pairs GCC contracts into FMAs in PyTorch's AVX2 build
//! (`-mfma`, `-ffp-contract=fast`); `tests/noise_golden.rs` checks every element of real
//! PyTorch output.

use super::super::{NoiseSource, Result, noise::numel};
use serde_json::{Value, json};

/// The 32-bit Mersenne Twister, as `std::mt19937` and PyTorch's `at::mt19937`.
#[derive(Clone)]
pub struct Mt19937 {
    state: Box<[u32; 624]>,
    index: usize,
}

impl Mt19937 {
    pub fn new(seed: u32) -> Self {
        let mut state = Box::new([0u32; 624]);
        state[0] = seed;
        for j in 1..624 {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        Mt19937 { state, index: 624 }
    }

    fn twist(&mut self) {
        let s = &mut self.state;
        for i in 0..624 {
            let y = (s[i] & 0x8000_0000) | (s[(i + 1) % 624] & 0x7fff_ffff);
            let mut v = s[(i + 397) % 624] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= 0x9908_b0df;
            }
            s[i] = v;
        }
        self.index = 0;
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }
}

/// `torch.randn` on the CPU, bit for bit.
#[derive(Clone)]
pub struct TorchCpuNoise {
    seed: u64,
    mt: Mt19937,
    /// The cached second value of the double Box–Muller (scalar path only).
    next_double: Option<f64>,
}

impl TorchCpuNoise {
    pub const NAME: &'static str = "torch-cpu";

    /// `torch.manual_seed(seed)` (the engine takes the low 32 bits).
    pub fn new(seed: u64) -> Self {
        TorchCpuNoise {
            seed,
            mt: Mt19937::new(seed as u32),
            next_double: None,
        }
    }

    /// `uniform_real_distribution<float>(0, 1)`: the low 24 bits of one draw.
    fn uniform24(&mut self) -> f32 {
        (self.mt.next_u32() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    /// `normal_distribution<double>(0, 1)` with PyTorch's cached second value.
    fn normal_double(&mut self) -> f64 {
        if let Some(v) = self.next_double.take() {
            return v + 0.0;
        }
        let mut uniform53 = || {
            let hi = self.mt.next_u32() as u64;
            let lo = self.mt.next_u32() as u64;
            (((hi << 32) | lo) & ((1u64 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
        };
        let u1 = uniform53();
        let u2 = uniform53();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double = Some(r * theta.sin());
        r * theta.cos() + 0.0
    }

    /// The next `torch.randn` of `n` elements.
    pub fn draw(&mut self, n: usize) -> Vec<f32> {
        if n < 16 {
            return (0..n).map(|_| self.normal_double() as f32).collect();
        }
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform24()).collect();
        let full = n / 16 * 16;
        transform_blocks(&mut data[..full]);
        if !n.is_multiple_of(16) {
            let tail = &mut data[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform24();
            }
            transform_blocks(tail);
        }
        data
    }
}

/// Transform whole blocks of 16 uniforms in place, in parallel for large inputs.
fn transform_blocks(data: &mut [f32]) {
    const PARALLEL_FROM: usize = 1 << 15;
    let workers = if data.len() >= PARALLEL_FROM {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
    } else {
        1
    };
    if workers <= 1 {
        data.chunks_exact_mut(16).for_each(block16);
        return;
    }
    let per = (data.len() / 16).div_ceil(workers) * 16;
    std::thread::scope(|s| {
        for part in data.chunks_mut(per) {
            s.spawn(move || part.chunks_exact_mut(16).for_each(block16));
        }
    });
}

/// `normal_fill_16_AVX2` with mean 0 and std 1 (the final `fmadd(n, 1, 0)` turns −0 into +0).
fn block16(data: &mut [f32]) {
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    for j in 0..8 {
        let u1 = 1.0 - data[j];
        let u2 = data[j + 8];
        let radius = (-2.0f32 * log_ps(u1)).sqrt();
        let (sin, cos) = sincos_ps(two_pi * u2);
        data[j] = radius * cos + 0.0;
        data[j + 8] = radius * sin + 0.0;
    }
}

// Cephes constants as `avx_mathfun.h` writes them (double literals rounded to float).
const SQRTHF: f32 = std::f64::consts::FRAC_1_SQRT_2 as f32;
const LOG_P: [f32; 9] = [
    7.037_683_629_2e-2_f64 as f32,
    -1.151_461_031_0e-1_f64 as f32,
    1.167_699_874_0e-1_f64 as f32,
    -1.242_014_084_6e-1_f64 as f32,
    1.424_932_278_7e-1_f64 as f32,
    -1.666_805_766_5e-1_f64 as f32,
    2.000_071_476_5e-1_f64 as f32,
    -2.499_999_399_3e-1_f64 as f32,
    3.333_333_117_4e-1_f64 as f32,
];
const LOG_Q1: f32 = -2.121_944_40e-4_f64 as f32;
const LOG_Q2: f32 = 0.693_359_375_f64 as f32;
#[allow(clippy::excessive_precision)]
const MINUS_DP: [f32; 3] = [
    -0.785_156_25_f64 as f32,
    -2.418_756_484_985_351_562_5e-4_f64 as f32,
    -3.774_894_977_445_941_08e-8_f64 as f32,
];
const SIN_P: [f32; 3] = [
    -1.951_529_589_1e-4_f64 as f32,
    8.332_160_873_6e-3_f64 as f32,
    -1.666_665_461_1e-1_f64 as f32,
];
const COS_P: [f32; 3] = [
    2.443_315_711_809_948e-5_f64 as f32,
    -1.388_731_625_493_765e-3_f64 as f32,
    4.166_664_568_298_827e-2_f64 as f32,
];
const FOPI: f32 = 1.273_239_544_735_16_f64 as f32;

#[inline(always)]
fn fma(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}

/// `log256_ps` for one lane of a positive normal argument.
#[inline(always)]
fn log_ps(x: f32) -> f32 {
    let x = x.max(f32::MIN_POSITIVE);
    let bits = x.to_bits();
    let exponent = (bits >> 23) as i32 - 0x7f;
    let mut x = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    let mut e = exponent as f32 + 1.0;
    let below = x < SQRTHF;
    let tmp = if below { x } else { 0.0 };
    x -= 1.0;
    e -= if below { 1.0 } else { 0.0 };
    x += tmp;
    let z = x * x;
    let mut y = LOG_P[0];
    for &p in &LOG_P[1..] {
        y = fma(y, x, p);
    }
    y *= x;
    y = fma(y, z, e * LOG_Q1);
    y -= z * 0.5;
    x += y;
    fma(e, LOG_Q2, x)
}

/// `sincos256_ps` for one lane: (sin x, cos x).
#[inline(always)]
fn sincos_ps(x: f32) -> (f32, f32) {
    let sign_sin = x.to_bits() & 0x8000_0000;
    let x = x.abs();
    let j = (((x * FOPI) as i32).wrapping_add(1)) & !1;
    let y = j as f32;
    let swap_sin = ((j & 4) as u32) << 29;
    let poly = (j & 2) == 0;
    let x = fma(y, MINUS_DP[2], fma(y, MINUS_DP[1], fma(y, MINUS_DP[0], x)));
    let sign_cos = ((!(j.wrapping_sub(2)) & 4) as u32) << 29;
    let sign_sin = sign_sin ^ swap_sin;
    let z = x * x;
    let mut yc = fma(COS_P[0], z, COS_P[1]);
    yc = fma(yc, z, COS_P[2]);
    yc *= z;
    yc = fma(yc, z, -(z * 0.5));
    yc += 1.0;
    let mut ys = fma(SIN_P[0], z, SIN_P[1]);
    ys = fma(ys, z, SIN_P[2]);
    ys *= z;
    ys = fma(ys, x, x);
    // Select with masks and additions, as the kernel does (they turn −0 into +0).
    let (ysin2, ysin1) = if poly { (ys, 0.0) } else { (0.0, yc) };
    let sin = ysin1 + ysin2;
    let cos = (yc - ysin1) + (ys - ysin2);
    (
        f32::from_bits(sin.to_bits() ^ sign_sin),
        f32::from_bits(cos.to_bits() ^ sign_cos),
    )
}

impl NoiseSource for TorchCpuNoise {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn params(&self) -> Value {
        json!({
            "seed": self.seed,
            "algorithm": "torch.manual_seed(seed); torch.randn(shape) on the CPU: mt19937 (low 32 bits of the seed), 24-bit float uniforms, AVX2 16-wide Box-Muller (avx_mathfun) for >= 16 elements with the tail block redrawn, normal_distribution<double> with a cached value below 16",
        })
    }

    fn randn(&mut self, shape: &[usize]) -> Result<Vec<f32>> {
        Ok(self.draw(numel(shape)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_known_answers() {
        // The C++ standard's check: the 10 000th output of the default-seeded engine.
        let mut mt = Mt19937::new(5489);
        assert_eq!(mt.next_u32(), 3_499_211_612);
        for _ in 1..9_999 {
            mt.next_u32();
        }
        assert_eq!(mt.next_u32(), 4_123_659_995);
    }

    #[test]
    fn cephes_log_and_sincos_are_accurate() {
        for i in 1..=4096u32 {
            let u = i as f32 / 4096.0;
            let l = log_ps(u) as f64;
            assert!((l - (u as f64).ln()).abs() < 2e-7, "log {u}");
            let t = u * (2.0 * std::f64::consts::PI) as f32;
            let (s, c) = sincos_ps(t);
            assert!((s as f64 - (t as f64).sin()).abs() < 3e-7, "sin {t}");
            assert!((c as f64 - (t as f64).cos()).abs() < 3e-7, "cos {t}");
        }
        assert_eq!(log_ps(1.0), 0.0);
        assert_eq!(sincos_ps(0.0), (0.0, 1.0));
    }

    #[test]
    fn paths_state_and_shapes() {
        // The scalar path caches its second value across calls: 7 + 7 elements draw 7 pairs.
        let mut a = TorchCpuNoise::new(3);
        let mut two = a.draw(7);
        two.extend(a.draw(7));
        let mut b = TorchCpuNoise::new(3);
        let mut pairs = Vec::new();
        for _ in 0..7 {
            pairs.push(b.normal_double() as f32);
            pairs.push(b.normal_double() as f32);
        }
        assert_eq!(two, pairs);
        // The block path does not touch the cache and uses one draw per element (n = 32).
        let mut c = TorchCpuNoise::new(3);
        let v = c.draw(32);
        let mut d = TorchCpuNoise::new(3);
        for _ in 0..32 {
            d.mt.next_u32();
        }
        assert_eq!(c.mt.next_u32(), d.mt.next_u32());
        assert!(v.iter().all(|x| x.is_finite()));
        // n = 17: 17 uniforms, then 16 more for the tail block; element 0 is from block 0.
        let mut e = TorchCpuNoise::new(3);
        let w = e.draw(17);
        assert_eq!(w[0], v[0]);
        assert_ne!(w[16], v[16]);
        assert!(TorchCpuNoise::new(3).draw(0).is_empty());
    }

    #[test]
    fn moments_are_standard_normal() {
        let v = TorchCpuNoise::new(11).draw(1 << 18);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(
            mean.abs() < 0.01 && (var - 1.0).abs() < 0.01,
            "{mean} {var}"
        );
    }
}
