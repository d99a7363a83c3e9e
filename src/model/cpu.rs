//! CPU kernels for the UNet's hot paths in f32: convolution (im2col tiles + gemm, bias, time
//! embedding and residual fused), linear layers and the transformer's 1×1 projections (bias and
//! residual fused, permutes folded into gemm's strides), GroupNorm with an optional fused SiLU,
//! the GEGLU feed-forward in blocks of rows, and attention in query blocks (scores, softmax
//! and the value product per block, so attention memory stays bounded at any image size).
//!
//! candle composes these from many whole-tensor passes, each with a fresh allocation (GroupNorm
//! alone is ten), converts convolution inputs to NHWC element by element, and evaluates exp, erf
//! and tanh with scalar libm calls; these kernels make one or two cache-friendly passes and
//! evaluate the transcendental functions with vectorised polynomials.
//!
//! Invariants:
//! - Each entry point returns `None` when it does not apply (not on the CPU, not f32, an input
//!   not contiguous) and the caller then uses candle's op, so other devices and dtypes are
//!   unchanged.
//! - Results do not depend on the thread count: work is cut into pieces whose boundaries depend
//!   only on the shapes, each output element is computed by exactly one piece in a fixed order,
//!   and gemm never splits the reduction dimension.
//! - Vector code is chosen at run time (AVX-512 or AVX2+FMA on x86-64 where the CPU has them,
//!   portable code otherwise), so one binary runs on any x86-64; results may differ in the last
//!   bits between the paths, never between runs on one machine. gemm dispatches the same way
//!   (its `x86-v4` feature adds the AVX-512 kernels).
//! - Accuracy: exp within ~2 ulp, GELU within ~5e-7 relative of the exact function (more in the far
//!   negative tail, where the values are below 1e-5); every
//!   kernel is checked against candle's composition in the tests below.

use candle_core::{CpuStorage, DType, Device, Result, Storage, StorageRef, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// The elements of a contiguous f32 CPU tensor, borrowed (its storage's read lock is held).
struct F32s<'a> {
    storage: StorageRef<'a>,
    start: usize,
    end: usize,
}

impl std::ops::Deref for F32s<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match &*self.storage {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.start..self.end],
            _ => &[], // not reached: `f32s` checks the storage
        }
    }
}

/// The elements of `t` when it is a contiguous f32 CPU tensor; `None` for anything else.
fn f32s(t: &Tensor) -> Option<F32s<'_>> {
    if !t.device().is_cpu() || t.dtype() != DType::F32 {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout.contiguous_offsets()?;
    matches!(&*storage, Storage::Cpu(CpuStorage::F32(_))).then_some(F32s {
        storage,
        start,
        end,
    })
}

/// [`f32s`] of an optional tensor: `Some(None)` for no tensor, `None` when it is not applicable.
fn opt_f32s(t: Option<&Tensor>) -> Option<Option<F32s<'_>>> {
    match t {
        None => Some(None),
        Some(t) => f32s(t).map(Some),
    }
}

fn tensor(data: Vec<f32>, dims: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(data, dims, &Device::Cpu)
}

/// A raw pointer that worker threads write disjoint parts of.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: every user writes a region no other piece of work touches (see each call site).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// The widest vector code the CPU runs: 2 for AVX-512 (F, VL) with AVX2+FMA, 1 for AVX2+FMA,
/// 0 for neither.
#[cfg(target_arch = "x86_64")]
#[inline]
fn x86_level() -> u8 {
    use std::is_x86_feature_detected as has;
    match (
        has!("avx2") && has!("fma"),
        has!("avx512f") && has!("avx512vl"),
    ) {
        (true, true) => 2,
        (true, false) => 1,
        _ => 0,
    }
}

/// Define `fn $name(args)` whose body is compiled three times: for AVX-512 and for AVX2+FMA
/// (chosen at run time when the CPU has them) and for the baseline target. Inside the body
/// `FMA` is a `const bool`.
macro_rules! simd_fn {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body<const FMA: bool>($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    body::<true>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    body::<true>($($arg),*)
                }
                match x86_level() {
                    // SAFETY: the CPU has the features each function is compiled for.
                    2 => return unsafe { avx512($($arg),*) },
                    1 => return unsafe { avx2($($arg),*) },
                    _ => {}
                }
            }
            body::<false>($($arg),*)
        }
    };
}

/// `a·b + c`, fused where the CPU has FMA (a libm call otherwise, so it is not used there).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// e^x for f32 (Cephes' expf polynomial; inputs clamped to [-87, 88]; NaN stays NaN). Written
/// without branches or table look-ups so that loops over it vectorise.
#[inline(always)]
#[allow(clippy::excessive_precision)] // Cephes' coefficients as published
fn exp<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding and subtracting it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = madd::<FMA>(n, -LN2_LO, madd::<FMA>(n, -LN2_HI, x));
    let mut p = 1.987_569_1e-4;
    p = madd::<FMA>(p, r, 1.398_199_9e-3);
    p = madd::<FMA>(p, r, 8.333_452e-3);
    p = madd::<FMA>(p, r, 4.166_579_6e-2);
    p = madd::<FMA>(p, r, 1.666_666_5e-1);
    p = madd::<FMA>(p, r, 5.000_000_1e-1);
    let e = madd::<FMA>(p, r * r, r) + 1.0;
    // 2^n from the rounded sum's low mantissa bits (they hold n exactly): integer lane
    // arithmetic, where `n as i32` would be a scalar, saturating conversion. A NaN input makes
    // `e` NaN, so the garbage exponent it gives here does not matter.
    let n_bits = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    e * f32::from_bits((n_bits.wrapping_add(127) << 23) as u32)
}

/// x·σ(x).
#[inline(always)]
fn silu<const FMA: bool>(x: f32) -> f32 {
    x / (1.0 + exp::<FMA>(-x))
}

/// Exact-erf GELU, 0.5·x·erfc(−x/√2), with Numerical Recipes' erfc (fractional error below
/// 1.2e-7 everywhere) so that the negative tail keeps its relative accuracy.
#[inline(always)]
// The coefficients are quoted with the source's digits.
#[allow(clippy::excessive_precision)]
fn gelu_erf<const FMA: bool>(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / madd::<FMA>(0.5, z, 1.0);
    let mut p = 0.170_872_77;
    for c in [
        -0.822_152_23,
        1.488_515_87,
        -1.135_203_98,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_68,
        -1.265_512_23,
    ] {
        p = madd::<FMA>(p, t, c);
    }
    let erfc_z = t * exp::<FMA>(madd::<FMA>(-z, z, p));
    let erfc_minus = if x >= 0.0 { 2.0 - erfc_z } else { erfc_z };
    0.5 * x * erfc_minus
}

/// The tanh approximation of GELU (candle's `gelu`): 0.5·x·(1 + tanh(y)) with
/// y = √(2/π)(x + 0.044715x³), evaluated as x / (1 + e^{−2y}) (the same value, without the
/// cancellation of 1 + tanh(y) in the negative tail).
#[inline(always)]
fn gelu_tanh<const FMA: bool>(x: f32) -> f32 {
    const K: f32 = 0.797_884_6; // √(2/π)
    let y = K * madd::<FMA>(0.044_715 * x, x * x, x);
    x / (1.0 + exp::<FMA>(-2.0 * y))
}

simd_fn! {
    /// `out[i] = e^{x[i]}` (for the tests of the polynomial).
    #[cfg(test)]
    fn exp_slice(x: &[f32], out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = exp::<FMA>(v);
        }
    }
}

/// e^x elementwise, for the tests of the SIMD exp.
#[cfg(test)]
fn exp_f32(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    exp_slice(x, &mut out);
    out
}

simd_fn! {
    /// Sum and sum of squared deviations from `mean` of `x`, in f64 over 8 lanes.
    fn moments(x: &[f32], mean: f64, out: &mut [f64; 2]) {
        let mut s = [0f64; 8];
        let mut q = [0f64; 8];
        let chunks = x.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            for l in 0..8 {
                let d = c[l] as f64 - mean;
                s[l] += d;
                q[l] += d * d;
            }
        }
        let (mut st, mut qt) = (s.iter().sum::<f64>(), q.iter().sum::<f64>());
        for &v in rest {
            let d = v as f64 - mean;
            st += d;
            qt += d * d;
        }
        *out = [st, qt];
    }
}

simd_fn! {
    /// `out = (x − mean)·a + b`, then SiLU when `act`.
    fn scale_shift(x: &[f32], mean: f32, a: f32, b: f32, act: bool, out: &mut [f32]) {
        if act {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = silu::<FMA>(madd::<FMA>(v - mean, a, b));
            }
        } else {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = madd::<FMA>(v - mean, a, b);
            }
        }
    }
}

/// GroupNorm over `x` `[B, C, …]` with per-channel `weight`/`bias` `[C]`, then SiLU when `silu`.
/// Statistics per (batch, group) in f64: the mean first, then the squared deviations from it.
pub fn group_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Option<Result<Tensor>> {
    let dims = x.dims().to_vec();
    if dims.len() < 3 || groups == 0 || !dims[1].is_multiple_of(groups) {
        return None;
    }
    let c = dims[1];
    let plane: usize = dims[2..].iter().product();
    let per_group = c / groups * plane;
    let (xs, w, b) = (f32s(x)?, f32s(weight)?, f32s(bias)?);
    if w.len() != c || b.len() != c || per_group == 0 {
        return None;
    }
    let mut out = vec![0f32; xs.len()];
    out.par_chunks_mut(per_group)
        .zip(xs.par_chunks(per_group))
        .enumerate()
        .for_each(|(i, (o, xg))| {
            let n = xg.len() as f64;
            let mut m = [0f64; 2];
            moments(xg, 0.0, &mut m);
            let mean = m[0] / n;
            moments(xg, mean, &mut m);
            // Σ(x−mean) is ~0 but not exactly: the usual correction term.
            let var = ((m[1] - m[0] * m[0] / n) / n).max(0.0);
            let inv = 1.0 / (var + eps).sqrt();
            let c0 = (i % groups) * (c / groups);
            for (j, (oc, xc)) in o.chunks_mut(plane).zip(xg.chunks(plane)).enumerate() {
                let a = (w[c0 + j] as f64 * inv) as f32;
                scale_shift(xc, mean as f32, a, b[c0 + j], silu, oc);
            }
        });
    Some(tensor(out, &dims))
}

simd_fn! {
    /// GEGLU over rows of `h` (2·`inner` wide), each row plus the projection's `bias`
    /// (2·`inner`) first.
    fn geglu_rows(h: &[f32], bias: &[f32], inner: usize, erf: bool, out: &mut [f32]) {
        let (ba, bg) = bias.split_at(inner);
        for (o, r) in out.chunks_mut(inner).zip(h.chunks(2 * inner)) {
            let (a, g) = r.split_at(inner);
            let rows = o.iter_mut().zip(a.iter().zip(ba)).zip(g.iter().zip(bg));
            if erf {
                for ((o, (&a, &ba)), (&g, &bg)) in rows {
                    *o = (a + ba) * gelu_erf::<FMA>(g + bg);
                }
            } else {
                for ((o, (&a, &ba)), (&g, &bg)) in rows {
                    *o = (a + ba) * gelu_tanh::<FMA>(g + bg);
                }
            }
        }
    }
}

/// Threads gemm may use for one call when the work around it is not already split.
fn gemm_parallelism(pieces: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 && pieces < 2 * threads {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// A strided gemm operand: element (i, j) at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    rs: usize,
    cs: usize,
}

impl Mat {
    /// A row-major matrix with rows `rs` apart.
    fn rows(ptr: *const f32, rs: usize) -> Self {
        Mat { ptr, rs, cs: 1 }
    }
    /// The transpose of a row-major matrix with rows `rs` apart.
    fn cols(ptr: *const f32, rs: usize) -> Self {
        Mat { ptr, rs: 1, cs: rs }
    }
}

/// `dst` (m×n, rows `dst_rs` apart) = `scale`·`lhs`·`rhs`, added to what `dst` holds when `acc`.
/// gemm never splits the reduction, so the result does not depend on `par`.
///
/// # Safety
/// `dst`, `lhs` (m×k) and `rhs` (k×n) address valid memory with the strides given, and no other
/// thread writes the m×n elements of `dst` meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    acc: bool,
    lhs: Mat,
    rhs: Mat,
    scale: f32,
    par: Parallelism,
) {
    // SAFETY: as promised by the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            acc,
            lhs.ptr,
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.ptr,
            rhs.cs as isize,
            rhs.rs as isize,
            if acc { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            par,
        )
    }
}

/// A new buffer of `rows` rows (`n` wide), each a copy of `bias` (written in parallel), or
/// zeros without one.
fn bias_rows(n: usize, rows: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let mut out = vec![0f32; n * rows];
    if let Some(b) = bias {
        out.par_chunks_mut((n * 256).max(1))
            .for_each(|c| c.chunks_mut(n).for_each(|r| r.copy_from_slice(b)));
    }
    out
}

/// A linear layer: `x` `[.., K]` · `w`ᵀ (`w` `[N, K]`) + `bias` `[N]` → `[.., N]`, as one gemm over all
/// rows that adds the product to the bias rows written first.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Option<Result<Tensor>> {
    let (nout, k) = w.dims2().ok()?;
    let mut dims = x.dims().to_vec();
    if dims.last() != Some(&k) || k == 0 {
        return None;
    }
    *dims.last_mut()? = nout;
    let (xs, ws, bs) = (f32s(x)?, f32s(w)?, opt_f32s(bias)?);
    if bs.as_ref().is_some_and(|b| b.len() != nout) {
        return None;
    }
    let m = xs.len() / k;
    let mut out = bias_rows(nout, m, bs.as_deref());
    // SAFETY: x is m×k and w is nout×k (checked above); `out` is m×nout and ours alone.
    unsafe {
        gemm_into(
            (m, nout, k),
            out.as_mut_ptr(),
            nout,
            bs.is_some(),
            Mat::rows(xs.as_ptr(), k),
            Mat::cols(ws.as_ptr(), k),
            1.0,
            gemm_parallelism(1),
        );
    }
    Some(tensor(out, &dims))
}

/// The weights of a 1×1 convolution or linear layer, [Cout, C] or [Cout, C, 1, 1], as
/// (Cout, C).
fn pointwise_dims(w: &Tensor) -> Option<(usize, usize)> {
    match *w.dims() {
        [co, c] | [co, c, 1, 1] => Some((co, c)),
        _ => None,
    }
}

/// Rows per feed-forward block: enough that gemm's packing of the weights (once per block)
/// stays a few per cent of the block's work, few enough that the hidden rows are a small,
/// reused buffer instead of a fresh full-size tensor.
const FF_ROWS: usize = 1024;

/// diffusers' GEGLU FeedForward: `x` [.., C] → GEGLU(x·`w1`ᵀ + `b1`)·`w2`ᵀ + `b2` → [.., Cout]
/// (`w1` [2·inner, C], `w2` [Cout, inner]), with exact-erf (`erf`) or tanh GELU. Rows go in
/// blocks of `FF_ROWS`: each block's hidden rows are computed, gated and projected through
/// two buffers reused from block to block (each gemm on all threads), so the 2·inner-wide
/// hidden tensor is never allocated whole.
pub fn feed_forward(
    x: &Tensor,
    (w1, b1): (&Tensor, Option<&Tensor>),
    (w2, b2): (&Tensor, Option<&Tensor>),
    erf: bool,
) -> Option<Result<Tensor>> {
    let (hidden, c) = w1.dims2().ok()?;
    let (cout, inner) = w2.dims2().ok()?;
    let mut dims = x.dims().to_vec();
    if dims.last() != Some(&c) || c == 0 || hidden != 2 * inner || inner == 0 {
        return None;
    }
    *dims.last_mut()? = cout;
    let (xs, w1s, w2s) = (f32s(x)?, f32s(w1)?, f32s(w2)?);
    let (b1s, b2s) = (opt_f32s(b1)?, opt_f32s(b2)?);
    if b1s.as_ref().is_some_and(|b| b.len() != hidden)
        || b2s.as_ref().is_some_and(|b| b.len() != cout)
    {
        return None;
    }
    let zeros = vec![0f32; if b1s.is_some() { 0 } else { hidden }];
    let b1s = b1s.as_deref().unwrap_or(&zeros);
    let m = xs.len() / c;
    let rows = FF_ROWS.min(m).max(1);
    let mut out = bias_rows(cout, m, b2s.as_deref());
    let (mut h, mut g) = (vec![0f32; rows * hidden], vec![0f32; rows * inner]);
    let par = gemm_parallelism(1);
    for (o, xb) in out.chunks_mut(rows * cout).zip(xs.chunks(rows * c)) {
        let r = xb.len() / c;
        let (h, g) = (&mut h[..r * hidden], &mut g[..r * inner]);
        // SAFETY: xb is r×c, w1 hidden×c, h r×hidden; g is r×inner, w2 cout×inner and o (this
        // block's rows of `out`) r×cout.
        unsafe {
            let (xm, w1m) = (Mat::rows(xb.as_ptr(), c), Mat::cols(w1s.as_ptr(), c));
            gemm_into(
                (r, hidden, c),
                h.as_mut_ptr(),
                hidden,
                false,
                xm,
                w1m,
                1.0,
                par,
            );
        }
        const GATE_ROWS: usize = 64;
        g.par_chunks_mut(GATE_ROWS * inner)
            .zip(h.par_chunks(GATE_ROWS * hidden))
            .for_each(|(g, h)| geglu_rows(h, b1s, inner, erf, g));
        // SAFETY: as above.
        unsafe {
            let (gm, w2m) = (Mat::rows(g.as_ptr(), inner), Mat::cols(w2s.as_ptr(), inner));
            let acc = b2s.is_some();
            gemm_into(
                (r, cout, inner),
                o.as_mut_ptr(),
                cout,
                acc,
                gm,
                w2m,
                1.0,
                par,
            );
        }
    }
    Some(tensor(out, &dims))
}

/// diffusers' `proj_in` without the permute: a 1×1 convolution (or linear layer, weights
/// [Cout, C] or [Cout, C, 1, 1]) of the feature map `x` [B, C, H, W] written token-major as
/// [B, H·W, Cout], gemm reading `x` transposed through its strides.
pub fn pointwise_to_tokens(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
) -> Option<Result<Tensor>> {
    let (b, c, h, wd) = x.dims4().ok()?;
    let (co, c2) = pointwise_dims(w)?;
    let p = h * wd;
    if c != c2 || c == 0 || p == 0 {
        return None;
    }
    let (xs, ws, bs) = (f32s(x)?, f32s(w)?, opt_f32s(bias)?);
    if bs.as_ref().is_some_and(|v| v.len() != co) {
        return None;
    }
    let mut out = bias_rows(co, b * p, bs.as_deref());
    for bi in 0..b {
        // SAFETY: image `bi` of x is C×P (read as P×C), w is Cout×C (read as C×Cout); rows
        // [bi·P, (bi+1)·P) of `out` (P×Cout) are written by this call alone.
        unsafe {
            gemm_into(
                (p, co, c),
                out.as_mut_ptr().add(bi * p * co),
                co,
                bs.is_some(),
                Mat::cols(xs.as_ptr().add(bi * c * p), p),
                Mat::cols(ws.as_ptr(), c),
                1.0,
                gemm_parallelism(1),
            );
        }
    }
    Some(tensor(out, &[b, p, co]))
}

/// diffusers' `proj_out` and the transformer's residual without the permute: `residual`
/// [B, Cout, H, W] + the 1×1 convolution (or linear layer) of the tokens `t` [B, H·W, C],
/// written channel-major, gemm reading `t` transposed through its strides.
pub fn pointwise_from_tokens(
    t: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    residual: &Tensor,
) -> Option<Result<Tensor>> {
    let (b, p, c) = t.dims3().ok()?;
    let (co, c2) = pointwise_dims(w)?;
    let (rb, rc, h, wd) = residual.dims4().ok()?;
    if c != c2 || c == 0 || p == 0 || (rb, rc, h * wd) != (b, co, p) {
        return None;
    }
    let (ts, ws, bs, rs) = (f32s(t)?, f32s(w)?, opt_f32s(bias)?, f32s(residual)?);
    if bs.as_ref().is_some_and(|v| v.len() != co) {
        return None;
    }
    let mut out = vec![0f32; rs.len()];
    out.par_chunks_mut(p)
        .zip(rs.par_chunks(p))
        .enumerate()
        .for_each(|(i, (o, r))| {
            let v = bs.as_ref().map_or(0.0, |bs| bs[i % co]);
            o.iter_mut().zip(r).for_each(|(o, &r)| *o = r + v);
        });
    for bi in 0..b {
        // SAFETY: w is Cout×C, image `bi` of t is P×C (read as C×P); image `bi` of `out`
        // (Cout×P) is written by this call alone.
        unsafe {
            gemm_into(
                (co, p, c),
                out.as_mut_ptr().add(bi * co * p),
                p,
                true,
                Mat::rows(ws.as_ptr(), c),
                Mat::cols(ts.as_ptr().add(bi * p * c), c),
                1.0,
                gemm_parallelism(1),
            );
        }
    }
    Some(tensor(out, &[b, co, h, wd]))
}

/// What a convolution's output starts from besides its bias; the products are added to it.
#[derive(Clone, Copy, Default)]
pub enum Add<'a> {
    #[default]
    Nothing,
    /// One value per (image, output channel), [B, Cout]: a ResnetBlock's time embedding.
    PerImage(&'a Tensor),
    /// A tensor of the output's shape: a residual connection.
    Residual(&'a Tensor),
}

/// Elements of one im2col tile (8 MiB of f32): large enough for efficient gemm calls, small
/// enough to stay in the last-level cache.
const COL_TILE: usize = 2 << 20;

/// 2-D convolution, NCHW, groups 1, dilation 1: `x` [B, Cin, H, W], `w` [Cout, Cin, kh, kw],
/// optional `bias` `[Cout]`, plus `add`. Output rows are cut into tiles; each tile's im2col matrix
/// [Cin·kh·kw, pixels] is built in a per-thread buffer and multiplied by the weights with gemm
/// straight into the output, which was filled with the bias and `add` first. 1×1 stride-1
/// convolutions multiply the input itself.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    add: Add,
    stride: usize,
    padding: usize,
) -> Option<Result<Tensor>> {
    let (b, cin, h, wd) = x.dims4().ok()?;
    let (cout, cin2, kh, kw) = w.dims4().ok()?;
    if cin != cin2 || stride == 0 || h + 2 * padding < kh || wd + 2 * padding < kw {
        return None;
    }
    let ho = (h + 2 * padding - kh) / stride + 1;
    let wo = (wd + 2 * padding - kw) / stride + 1;
    let (p_in, p_out) = (h * wd, ho * wo);
    let (xs, ws, bs) = (f32s(x)?, f32s(w)?, opt_f32s(bias)?);
    let (per_image, residual) = match add {
        Add::Nothing => (None, None),
        Add::PerImage(t) if t.dims() == [b, cout] => (Some(f32s(t)?), None),
        Add::Residual(t) if t.dims() == [b, cout, ho, wo] => (None, Some(f32s(t)?)),
        _ => return None,
    };
    if bs.as_ref().is_some_and(|v| v.len() != cout) {
        return None;
    }
    let k = cin * kh * kw;
    let direct = kh == 1 && kw == 1 && stride == 1 && padding == 0;
    let rows = if direct {
        ho
    } else {
        // A whole number of gemm's 64-row micro-tiles (AVX-512; 32 for AVX2) per tile where
        // the rows allow, so the narrower remainder kernels run only on the last tile.
        let rows = (COL_TILE / (k * wo).max(1)).clamp(1, ho);
        let step = 64 / gcd(wo, 64);
        if rows >= step {
            rows / step * step
        } else {
            rows
        }
    };
    let tiles = ho.div_ceil(rows);
    let pieces = b * tiles;
    let par = gemm_parallelism(pieces);
    let prefilled = bs.is_some() || per_image.is_some() || residual.is_some();
    let mut out = vec![0f32; b * cout * p_out];
    let dst = SendPtr(out.as_mut_ptr());
    let work = |col: &mut Vec<f32>, piece: usize| {
        let (bi, t) = (piece / tiles, piece % tiles);
        let (r0, r1) = (t * rows, ((t + 1) * rows).min(ho));
        let n = (r1 - r0) * wo;
        let img = &xs[bi * cin * p_in..(bi + 1) * cin * p_in];
        let rhs = if direct {
            Mat::rows(img[r0 * wo..].as_ptr(), p_in)
        } else {
            col.resize(k * n, 0.0);
            let tile = (r0, r1, wo);
            im2col(img, (cin, h, wd), (kh, kw), stride, padding, tile, col);
            Mat::rows(col.as_ptr(), n)
        };
        let first = bi * cout * p_out + r0 * wo;
        // SAFETY: this piece writes output rows [r0, r1) of image `bi` for every output
        // channel, which no other piece writes; `out` outlives the loop.
        unsafe {
            let d = dst.get().add(first);
            if prefilled {
                for co in 0..cout {
                    let row = std::slice::from_raw_parts_mut(d.add(co * p_out), n);
                    let v = bs.as_ref().map_or(0.0, |bs| bs[co])
                        + per_image.as_ref().map_or(0.0, |t| t[bi * cout + co]);
                    match &residual {
                        Some(r) => {
                            let r = &r[first + co * p_out..][..n];
                            row.iter_mut().zip(r).for_each(|(o, &r)| *o = r + v);
                        }
                        None => row.fill(v),
                    }
                }
            }
            gemm_into(
                (cout, n, k),
                d,
                p_out,
                prefilled,
                Mat::rows(ws.as_ptr(), k),
                rhs,
                1.0,
                par,
            );
        }
    };
    if matches!(par, Parallelism::None) {
        (0..pieces)
            .into_par_iter()
            .for_each_init(Vec::new, |col, piece| work(col, piece));
    } else {
        let mut col = Vec::new();
        (0..pieces).for_each(|piece| work(&mut col, piece));
    }
    Some(tensor(out, &[b, cout, ho, wo]))
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The im2col matrix of output rows `[r0, r1)` (each `wo` wide) of one image: row
/// `(ci·kh + dy)·kw + dx`, column `(oy − r0)·wo + ox` holds `img[ci, oy·s + dy − p, ox·s + dx − p]`
/// or 0 outside the image.
fn im2col(
    img: &[f32],
    (cin, h, w): (usize, usize, usize),
    (kh, kw): (usize, usize),
    s: usize,
    p: usize,
    (r0, r1, wo): (usize, usize, usize),
    col: &mut [f32],
) {
    let n = (r1 - r0) * wo;
    for ci in 0..cin {
        let plane = &img[ci * h * w..(ci + 1) * h * w];
        for dy in 0..kh {
            for dx in 0..kw {
                let row = &mut col[((ci * kh + dy) * kw + dx) * n..][..n];
                // Output columns whose input column ox·s + dx − p lies inside [0, w).
                let ox_lo = p.saturating_sub(dx).div_ceil(s).min(wo);
                let ox_hi = if w + p > dx {
                    ((w + p - dx - 1) / s + 1).min(wo)
                } else {
                    0
                }
                .max(ox_lo);
                for (oy, out) in (r0..r1).zip(row.chunks_mut(wo)) {
                    let iy = (oy * s + dy) as isize - p as isize;
                    if iy < 0 || iy >= h as isize {
                        out.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * w..][..w];
                    out[..ox_lo].fill(0.0);
                    out[ox_hi..].fill(0.0);
                    if ox_hi == ox_lo {
                        continue;
                    }
                    let x0 = ox_lo * s + dx - p;
                    if s == 1 {
                        out[ox_lo..ox_hi].copy_from_slice(&src[x0..x0 + (ox_hi - ox_lo)]);
                    } else {
                        for (o, i) in out[ox_lo..ox_hi].iter_mut().zip((x0..).step_by(s)) {
                            *o = src[i];
                        }
                    }
                }
            }
        }
    }
}

simd_fn! {
    /// Each row of `s` (rows of `n`) ← e^{row − max(row)}, and `inv[r]` ← 1 / that row's sum
    /// (so softmax(row) = row · inv[r]), accumulated in f32 over 8 lanes.
    fn exp_rows(s: &mut [f32], n: usize, inv: &mut [f32]) {
        for (row, inv) in s.chunks_mut(n).zip(inv.iter_mut()) {
            // `>` rather than f32::max, whose NaN rule keeps the loop scalar; NaNs are skipped
            // either way.
            let mut lanes = [f32::NEG_INFINITY; 8];
            let mut chunks = row.chunks_exact(8);
            for c in &mut chunks {
                for l in 0..8 {
                    if c[l] > lanes[l] {
                        lanes[l] = c[l];
                    }
                }
            }
            let max = (chunks.remainder().iter().chain(&lanes))
                .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
            let mut lanes = [0f32; 8];
            let mut chunks = row.chunks_exact_mut(8);
            for c in &mut chunks {
                for l in 0..8 {
                    c[l] = exp::<FMA>(c[l] - max);
                    lanes[l] += c[l];
                }
            }
            let mut sum: f32 = lanes.iter().sum();
            for v in chunks.into_remainder() {
                *v = exp::<FMA>(*v - max);
                sum += *v;
            }
            *inv = 1.0 / sum;
        }
    }
}

/// Score elements one query block may hold (2 MiB of f32).
const SCORE_BLOCK: usize = 512 << 10;

/// Full attention softmax(q·kᵀ·scale)·v with `heads` heads over token-major tensors: `q`
/// [B, Nq, heads·d], `k`/`v` [B, Nk, heads·d] → [B, Nq, heads·d] (the heads are addressed by
/// stride, so no transposed copies are made). Work is cut into (batch, head, query block)
/// pieces; each computes its scores with one gemm, the exponentials of each row over all
/// keys, its output rows with a second gemm, and scales each output row by its softmax
/// normaliser. With `want_probs` the probabilities are returned too, as
/// [B·heads, Nq, Nk] (copied out block by block, so the output is the same either way).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    want_probs: bool,
) -> Option<Result<(Tensor, Option<Tensor>)>> {
    let (b, nq, hd) = q.dims3().ok()?;
    let (bk, nk, hdk) = k.dims3().ok()?;
    if bk != b || hdk != hd || v.dims() != k.dims() || heads == 0 || hd % heads != 0 || nk == 0 {
        return None;
    }
    let d = hd / heads;
    let qb = (SCORE_BLOCK / nk).clamp(16, nq.max(16)).min(nq.max(1));
    let blocks = nq.div_ceil(qb);
    let pieces = b * heads * blocks;
    let (qs, ks, vs) = (f32s(q)?, f32s(k)?, f32s(v)?);
    let mut out = vec![0f32; b * nq * hd];
    let dst = SendPtr(out.as_mut_ptr());
    let mut probs = if want_probs {
        vec![0f32; b * heads * nq * nk]
    } else {
        Vec::new()
    };
    let probs_dst = SendPtr(probs.as_mut_ptr());
    (0..pieces).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(scores, inv): &mut (Vec<f32>, Vec<f32>), piece| {
            let (bh, blk) = (piece / blocks, piece % blocks);
            let (bi, hh) = (bh / heads, bh % heads);
            let q0 = blk * qb;
            let m = qb.min(nq - q0);
            scores.resize(m * nk, 0.0);
            inv.resize(m, 0.0);
            let q_rows = Mat::rows(qs[bi * nq * hd + q0 * hd + hh * d..].as_ptr(), hd);
            let k_cols = Mat::cols(ks[bi * nk * hd + hh * d..].as_ptr(), hd);
            let v_rows = Mat::rows(vs[bi * nk * hd + hh * d..].as_ptr(), hd);
            let no = Parallelism::None;
            // SAFETY: the operands address rows of q, k, v inside their slices with the strides
            // given; this piece writes output rows [q0, q0+m) of (bi, hh), which no other piece
            // writes; `out` outlives the loop.
            unsafe {
                let sp = scores.as_mut_ptr();
                gemm_into((m, nk, d), sp, nk, false, q_rows, k_cols, scale as f32, no);
                exp_rows(scores, nk, inv);
                if want_probs {
                    // Rows [q0, q0+m) of (bi, hh): this piece's alone.
                    let p = std::slice::from_raw_parts_mut(
                        probs_dst.get().add((bh * nq + q0) * nk),
                        m * nk,
                    );
                    for ((p, e), &inv) in p.chunks_mut(nk).zip(scores.chunks(nk)).zip(inv.iter()) {
                        for (p, &e) in p.iter_mut().zip(e) {
                            *p = e * inv;
                        }
                    }
                }
                let o = dst.get().add(bi * nq * hd + q0 * hd + hh * d);
                let s_rows = Mat::rows(scores.as_ptr(), nk);
                gemm_into((m, d, nk), o, hd, false, s_rows, v_rows, 1.0, no);
                // The softmax's normalisation, applied to the m × d output rows rather than the
                // m × nk probabilities.
                for (r, &inv) in inv.iter().enumerate() {
                    for v in std::slice::from_raw_parts_mut(o.add(r * hd), d) {
                        *v *= inv;
                    }
                }
            }
        },
    );
    let finish = || {
        let probs = want_probs.then(|| tensor(probs, &[b * heads, nq, nk]));
        Ok((tensor(out, &[b, nq, hd])?, probs.transpose()?))
    };
    Some(finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Module};

    fn rand(shape: &[usize], seed: u64, amp: f32) -> Tensor {
        let mut s = seed | 1;
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.dims(), b.dims());
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        let d: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| ((x - y) as f64).powi(2))
            .sum();
        let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        (d / n).sqrt()
    }

    #[test]
    fn exp_is_accurate_over_its_range_and_keeps_nan() {
        let xs: Vec<f32> = (-8700..=8800).map(|i| i as f32 / 100.0).collect();
        let got = exp_f32(&xs);
        for (x, e) in xs.iter().zip(&got) {
            let want = (*x as f64).exp();
            let rel = ((*e as f64 - want) / want).abs();
            assert!(rel < 4e-7, "exp({x}) = {e}, want {want} (rel {rel:e})");
        }
        assert!(exp_f32(&[f32::NAN])[0].is_nan());
        assert_eq!(exp_f32(&[-1000.0])[0], (-87f32).exp());
        let big = exp_f32(&[1000.0])[0];
        assert!(big.is_finite() && big > 1e38);
    }

    #[test]
    fn gelu_polynomials_match_the_exact_functions() {
        let erfc = candle_core::cpu::erf::erfc_f64;
        // Both code paths: with FMA (as the AVX2 kernels run) and without (the portable ones).
        type Gelu = fn(f32) -> f32;
        let variants: [(Gelu, Gelu); 2] = [
            (gelu_erf::<true>, gelu_tanh::<true>),
            (gelu_erf::<false>, gelu_tanh::<false>),
        ];
        for (gelu_e, gelu_t) in variants {
            for i in -1200..=1200 {
                let x = i as f32 / 100.0;
                let xd = x as f64;
                let want = 0.5 * xd * erfc(-xd / std::f64::consts::SQRT_2);
                let e = gelu_e(x) as f64;
                // In the negative tail the relative error grows with x² (f32 rounding of the
                // exponent, −x²/2 or ≈ −1.6x); there the values are below 1e-5 and matter little.
                let tol = 5e-7 * (xd * xd).max(1.0);
                if want.abs() > 1e-30 {
                    let rel = (e - want).abs() / want.abs();
                    assert!(rel <= tol, "gelu_erf({x}) = {e}, want {want} (rel {rel:e})");
                }
                let y = (2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd.powi(3));
                let want_t = xd / (1.0 + (-2.0 * y).exp()); // = 0.5·x·(1 + tanh y), stably
                let t = gelu_t(x) as f64;
                let rel = (t - want_t).abs() / want_t.abs();
                assert!(
                    want_t.abs() < 1e-30 || rel <= tol,
                    "gelu_tanh({x}) = {t}, want {want_t} (rel {rel:e})"
                );
            }
        }
    }

    #[test]
    fn group_norm_matches_candle_with_and_without_silu() {
        for (dims, groups) in [
            (vec![2, 64, 9, 7], 32),
            (vec![1, 6, 5], 3),
            (vec![3, 32, 1, 1], 32),
        ] {
            let c = dims[1];
            let x = (rand(&dims, 1, 3.0) + 0.7).unwrap();
            let w = rand(&[c], 2, 1.0);
            let b = rand(&[c], 3, 0.5);
            let reference = candle_nn::GroupNorm::new(w.clone(), b.clone(), c, groups, 1e-5)
                .unwrap()
                .forward(&x)
                .unwrap();
            let got = group_norm(&x, &w, &b, groups, 1e-5, false)
                .unwrap()
                .unwrap();
            assert!(rel_l2(&got, &reference) < 1e-6, "{dims:?}");
            let got = group_norm(&x, &w, &b, groups, 1e-5, true).unwrap().unwrap();
            assert!(
                rel_l2(&got, &reference.silu().unwrap()) < 1e-6,
                "{dims:?} silu"
            );
        }
        // Not applicable: f16, non-contiguous.
        let x = rand(&[1, 4, 3, 3], 1, 1.0);
        let (w, b) = (rand(&[4], 2, 1.0), rand(&[4], 3, 1.0));
        assert!(group_norm(&x.to_dtype(DType::F16).unwrap(), &w, &b, 2, 1e-5, false).is_none());
        assert!(group_norm(&x.transpose(2, 3).unwrap(), &w, &b, 2, 1e-5, false).is_none());
    }

    #[test]
    fn conv2d_matches_candle_for_every_shape_the_unet_uses() {
        // (batch, cin, h, w, cout, kernel, stride, padding)
        for (b, cin, h, w, cout, kk, s, p) in [
            (2, 4, 9, 7, 8, 3, 1, 1),
            (2, 8, 10, 10, 8, 3, 2, 1),
            (1, 8, 9, 11, 4, 3, 2, 1),
            (1, 8, 9, 11, 4, 3, 2, 0),
            (2, 16, 6, 5, 12, 1, 1, 0),
            (1, 3, 4, 4, 5, 3, 1, 0),
            (1, 2, 1, 1, 3, 3, 1, 1),
            (2, 300, 16, 16, 7, 3, 1, 1), // several tiles per image
        ] {
            let x = rand(&[b, cin, h, w], 4, 1.0);
            let wt = rand(&[cout, cin, kk, kk], 5, 0.3);
            let bias = rand(&[cout], 6, 0.2);
            let cfg = candle_nn::Conv2dConfig {
                padding: p,
                stride: s,
                ..Default::default()
            };
            for with_bias in [true, false] {
                let bias_t = with_bias.then(|| bias.clone());
                let reference = candle_nn::Conv2d::new(wt.clone(), bias_t.clone(), cfg)
                    .forward(&x)
                    .unwrap();
                let bias_t = bias_t.as_ref();
                let got = conv2d(&x, &wt, bias_t, Add::Nothing, s, p)
                    .unwrap()
                    .unwrap();
                let err = rel_l2(&got, &reference);
                assert!(
                    err < 1e-6,
                    "{b} {cin} {h}x{w} → {cout} k{kk} s{s} p{p}: {err:e}"
                );
                // A time embedding per (image, channel), and a residual, added in the kernel.
                let temb = rand(&[b, cout], 11, 1.0);
                let want = reference
                    .broadcast_add(&temb.unsqueeze(2).unwrap().unsqueeze(3).unwrap())
                    .unwrap();
                let got = conv2d(&x, &wt, bias_t, Add::PerImage(&temb), s, p).unwrap();
                assert!(rel_l2(&got.unwrap(), &want) < 1e-6);
                let res = rand(reference.dims(), 12, 1.0);
                let want = (&reference + &res).unwrap();
                let got = conv2d(&x, &wt, bias_t, Add::Residual(&res), s, p).unwrap();
                assert!(rel_l2(&got.unwrap(), &want) < 1e-6);
                // Not applicable: an addend of another shape.
                let wrong = rand(&[b, cout + 1], 13, 1.0);
                assert!(conv2d(&x, &wt, bias_t, Add::PerImage(&wrong), s, p).is_none());
            }
        }
    }

    #[test]
    fn attention_matches_the_composed_ops() {
        for (b, nq, nk, heads, d) in [(2, 50, 37, 3, 8), (1, 300, 300, 2, 16), (2, 7, 77, 4, 5)] {
            let q = rand(&[b, nq, heads * d], 7, 1.5);
            let k = rand(&[b, nk, heads * d], 8, 1.5);
            let v = rand(&[b, nk, heads * d], 9, 1.0);
            let scale = 1.0 / (d as f64).sqrt();
            let split = |t: &Tensor, n: usize| {
                t.reshape((b, n, heads, d))
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .contiguous()
                    .unwrap()
            };
            let (qh, kh, vh) = (split(&q, nq), split(&k, nk), split(&v, nk));
            let probs = candle_nn::ops::softmax_last_dim(
                &(qh.matmul(&kh.t().unwrap()).unwrap() * scale).unwrap(),
            )
            .unwrap();
            let reference = probs
                .matmul(&vh)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((b, nq, heads * d))
                .unwrap();
            let (got, none) = attention(&q, &k, &v, heads, scale, false).unwrap().unwrap();
            assert!(none.is_none());
            let err = rel_l2(&got, &reference);
            assert!(err < 1e-6, "{b} {nq}x{nk} h{heads} d{d}: {err:e}");
            let (again, p) = attention(&q, &k, &v, heads, scale, true).unwrap().unwrap();
            assert_eq!(
                again.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "asking for the probabilities changed the output"
            );
            let p = p.unwrap().reshape((b, heads, nq, nk)).unwrap();
            assert!(rel_l2(&p, &probs) < 1e-6);
        }
    }

    #[test]
    fn feed_forward_matches_candle_with_and_without_biases() {
        // 1200 rows: a full block and a short last one.
        let (c, inner, cout) = (12, 24, 10);
        let x = rand(&[2, 600, c], 10, 2.0);
        let (w1, b1) = (rand(&[2 * inner, c], 11, 1.0), rand(&[2 * inner], 12, 1.0));
        let (w2, b2) = (rand(&[cout, inner], 13, 0.5), rand(&[cout], 14, 0.5));
        for (with_bias, erf) in [(true, true), (true, false), (false, true)] {
            let (b1, b2) = (with_bias.then(|| b1.clone()), with_bias.then(|| b2.clone()));
            let h = candle_nn::Linear::new(w1.clone(), b1.clone())
                .forward(&x)
                .unwrap();
            let parts = h.chunk(2, D::Minus1).unwrap();
            let gate = if erf {
                parts[1].gelu_erf().unwrap()
            } else {
                parts[1].gelu().unwrap()
            };
            let gated = (&parts[0] * gate).unwrap();
            let want = candle_nn::Linear::new(w2.clone(), b2.clone())
                .forward(&gated)
                .unwrap();
            let got = feed_forward(&x, (&w1, b1.as_ref()), (&w2, b2.as_ref()), erf);
            assert!(rel_l2(&got.unwrap().unwrap(), &want) < 1e-6, "erf={erf}");
        }
        // Not applicable: a hidden width that is not twice the output projection's input.
        let w1_odd = rand(&[2 * inner + 2, c], 11, 1.0);
        assert!(feed_forward(&x, (&w1_odd, None), (&w2, None), true).is_none());
    }

    #[test]
    fn linear_and_pointwise_projections_match_candle() {
        let (b, c, co, hh, ww) = (2, 24, 17, 5, 7);
        let w = rand(&[co, c], 14, 0.5);
        let bias = rand(&[co], 15, 0.5);
        let x = rand(&[b, hh * ww, c], 16, 1.0);
        for bias in [Some(&bias), None] {
            let lin = candle_nn::Linear::new(w.clone(), bias.cloned());
            let want = lin.forward(&x).unwrap();
            assert!(rel_l2(&linear(&x, &w, bias).unwrap().unwrap(), &want) < 1e-6);
            // proj_in: feature map → tokens, with 1×1-convolution weights.
            let map = rand(&[b, c, hh, ww], 17, 1.0);
            let tokens = map
                .flatten_from(2)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap();
            let want = lin.forward(&tokens).unwrap();
            let w4 = w.reshape((co, c, 1, 1)).unwrap();
            let got = pointwise_to_tokens(&map, &w4, bias).unwrap().unwrap();
            assert!(rel_l2(&got, &want) < 1e-6);
            // proj_out: tokens → feature map, plus the residual.
            let res = rand(&[b, co, hh, ww], 18, 1.0);
            let want = lin.forward(&x).unwrap().transpose(1, 2).unwrap();
            let want = (want.reshape((b, co, hh, ww)).unwrap() + &res).unwrap();
            let got = pointwise_from_tokens(&x, &w, bias, &res).unwrap().unwrap();
            assert!(rel_l2(&got, &want) < 1e-6);
        }
        // Not applicable: mismatched widths or a residual of another shape.
        assert!(linear(&x, &rand(&[co, c + 1], 1, 1.0), None).is_none());
        let res = rand(&[b, co, hh, ww + 1], 18, 1.0);
        assert!(pointwise_from_tokens(&x, &w, None, &res).is_none());
    }
}
