//! Noise generators behind one interface, [`NoiseSource`], and sdtrace's own device-independent
//! generator [`SdtraceNoise`].
//!
//! A source produces standard normal f32 variates on the host for a requested shape (row-major
//! order); [`randn`] moves them to the device. The shape is passed because torch-compatible
//! generators (later) depend on it, not just on the element count. Invariant: a source's output
//! is a pure function of its parameters (recorded in the trace header through
//! [`NoiseSource::params`]) and of the sequence of shapes requested, whatever the device
//! (the `device` generator of [`super::rng`] is the one deliberate exception).
//! candle's own `randn` is never used: it cannot be seeded.

use super::{Result, SamplingError};
use candle_core::{Device, Tensor};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde_json::{Value, json};

/// A seeded stream of standard normal variates.
pub trait NoiseSource {
    /// Generator name (`sdtrace`, `torch-cpu`, `torch-cuda`, ...).
    fn name(&self) -> &'static str;
    /// The `--rng` value that makes this generator again (the header's `settings.rng`), e.g.
    /// `torch-cuda:15,2048`; the name when the generator has no parameters besides the seed.
    fn spec(&self) -> String {
        self.name().to_string()
    }
    /// Everything needed to reproduce the stream (seed, algorithm parameters).
    fn params(&self) -> Value;
    /// Check, without drawing, that the next draws of `shapes` will succeed (noise files hold
    /// a fixed set of tensors; generators always can).
    fn check_draws(&self, _shapes: &[Vec<usize>]) -> Result<()> {
        Ok(())
    }
    /// The next standard normal variates for a tensor of `shape`, row-major.
    fn randn(&mut self, shape: &[usize]) -> Result<Vec<f32>>;
}

/// Standard normal noise of `shape` from `source`, as an f32 tensor on `device`.
pub fn randn(source: &mut dyn NoiseSource, shape: &[usize], device: &Device) -> Result<Tensor> {
    let v = source.randn(shape)?;
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?.to_device(device)?)
}

/// Element count of `shape`, refusing overflow and absurd sizes (over 2³² elements).
pub(crate) fn numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= 1 << 32)
        .ok_or_else(|| SamplingError::BadShape(shape.to_vec()))
}

/// sdtrace's default generator: ChaCha20 words through Box–Muller.
///
/// Algorithm (reproducible from this description alone):
/// 1. Words: the ChaCha20 keystream (20 rounds, RFC 7539 block function with a 64-bit block
///    counter starting at 0 and a 64-bit nonce of 0) under the 256-bit key whose first 8 bytes
///    are the seed as a little-endian u64 and the rest zero, read as little-endian u32 words in
///    order (this is `rand_chacha::ChaCha20Rng::from_seed(key)` and its `next_u32`).
/// 2. Each call for n elements takes ⌈n/2⌉ pairs of consecutive words (a, b) from where the
///    previous call stopped and computes in f64: u₁ = (a + ½)·2⁻³², u₂ = b·2⁻³²,
///    r = √(−2 ln u₁), z₀ = r·cos(2π u₂), z₁ = r·sin(2π u₂), each rounded to f32.
/// 3. Element 2k is z₀ and element 2k + 1 is z₁ of pair k; for odd n the last z₁ is dropped.
///
/// f64 libm results may differ by an ulp between platforms, which survives rounding to f32
/// only in rare near-ties; within one build the stream is bit-exact on every device.
#[derive(Clone, Debug)]
pub struct SdtraceNoise {
    seed: u64,
    rng: ChaCha20Rng,
}

impl SdtraceNoise {
    pub const NAME: &'static str = "sdtrace";

    pub fn new(seed: u64) -> Self {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        SdtraceNoise {
            seed,
            rng: ChaCha20Rng::from_seed(key),
        }
    }

    /// One Box–Muller pair from two keystream words.
    pub fn pair(a: u32, b: u32) -> (f32, f32) {
        const SCALE: f64 = 1.0 / 4_294_967_296.0;
        let u1 = (a as f64 + 0.5) * SCALE;
        let u2 = b as f64 * SCALE;
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        ((r * c) as f32, (r * s) as f32)
    }
}

impl NoiseSource for SdtraceNoise {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn params(&self) -> Value {
        json!({
            "seed": self.seed,
            "algorithm": "chacha20 keystream (key = seed u64 LE, zero-padded; nonce 0; counter 0), u32 word pairs, Box-Muller in f64 -> f32 (cos, sin)",
        })
    }

    fn randn(&mut self, shape: &[usize]) -> Result<Vec<f32>> {
        let n = numel(shape)?;
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let (a, b) = (self.rng.next_u32(), self.rng.next_u32());
            let (z0, z1) = Self::pair(a, b);
            out.extend([z0, z1]);
        }
        out.truncate(n);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer_from_the_chacha20_test_vector() {
        // RFC 7539 / draft-nir test vector 1: key 0, nonce 0, block 0 begins with these words.
        let words = [0xade0b876u32, 0x903df1a0, 0xe56a5d40, 0x28bd8653];
        let z = |a: u32, b: u32| {
            let u1 = (a as f64 + 0.5) / 2f64.powi(32);
            let u2 = b as f64 / 2f64.powi(32);
            let r = (-2.0 * u1.ln()).sqrt();
            let th = 2.0 * std::f64::consts::PI * u2;
            [(r * th.cos()) as f32, (r * th.sin()) as f32]
        };
        let mut want = z(words[0], words[1]).to_vec();
        want.extend(z(words[2], words[3]));
        let got = SdtraceNoise::new(0).randn(&[4]).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= f32::EPSILON * w.abs(),
                "{got:?} vs {want:?}"
            );
        }
        // The same values computed independently (Python, f64).
        let pinned = [-0.810_606_5f32, -0.341_418_15, 0.253_044_6, 0.394_022_7];
        for (g, w) in got.iter().zip(pinned) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
        // Key layout: the seed is the first 8 key bytes, little-endian.
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        let mut c = ChaCha20Rng::from_seed(key);
        let (a, b) = (c.next_u32(), c.next_u32());
        let (z0, z1) = SdtraceNoise::pair(a, b);
        assert_eq!(
            SdtraceNoise::new(0x0102_0304_0506_0708)
                .randn(&[2])
                .unwrap(),
            vec![z0, z1]
        );
    }

    #[test]
    fn same_seed_same_stream_and_calls_continue_it() {
        let a = SdtraceNoise::new(42).randn(&[2, 3, 5]).unwrap();
        let b = SdtraceNoise::new(42).randn(&[2, 3, 5]).unwrap();
        assert_eq!(
            a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        assert_ne!(a, SdtraceNoise::new(43).randn(&[30]).unwrap());
        // Even-sized calls split the stream exactly; an odd call drops its last z₁.
        let mut s = SdtraceNoise::new(42);
        let mut parts = s.randn(&[10]).unwrap();
        parts.extend(s.randn(&[20]).unwrap());
        assert_eq!(parts, a);
        let mut s = SdtraceNoise::new(42);
        assert_eq!(s.randn(&[3]).unwrap(), a[..3]);
        assert_eq!(s.randn(&[2]).unwrap(), a[4..6]);
    }

    #[test]
    fn moments_are_standard_normal() {
        let v = SdtraceNoise::new(7).randn(&[200_000]).unwrap();
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let kurt = v.iter().map(|&x| (x as f64 - mean).powi(4)).sum::<f64>() / n / var / var;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
        assert!((kurt - 3.0).abs() < 0.05, "kurtosis {kurt}");
        assert!(v.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn absurd_shapes_are_errors() {
        let mut s = SdtraceNoise::new(1);
        assert!(matches!(
            s.randn(&[usize::MAX, 2]),
            Err(SamplingError::BadShape(_))
        ));
        assert!(s.randn(&[0, 4]).unwrap().is_empty());
    }

    #[test]
    fn tensors_carry_the_host_values() {
        let t = randn(&mut SdtraceNoise::new(5), &[1, 4, 2, 2], &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 4, 2, 2]);
        let want = SdtraceNoise::new(5).randn(&[16]).unwrap();
        assert_eq!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
    }
}
