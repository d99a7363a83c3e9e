//! Element types of recorded tensors.
//!
//! A [`DType`] names how a tensor's bytes are laid out: every dtype is stored little-endian,
//! contiguous, in row-major order. Its one-byte code is part of the trace format
//! (`docs/FORMAT.md`), so codes are never reused or renumbered; new dtypes get new codes.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Element type of a recorded tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    U8,
}

impl DType {
    /// Every dtype, in code order.
    pub const ALL: [DType; 7] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::F64,
        DType::I64,
        DType::I32,
        DType::U8,
    ];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::U8 => 1,
            DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
        }
    }

    /// The code stored in trace files.
    pub fn code(self) -> u8 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::BF16 => 2,
            DType::F64 => 3,
            DType::I64 => 4,
            DType::I32 => 5,
            DType::U8 => 6,
        }
    }

    /// The dtype with this code, if any.
    pub fn from_code(code: u8) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.code() == code)
    }

    /// Lower-case name as used by PyTorch/numpy-like tools (`f32`, `bf16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F64 => "f64",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::U8 => "u8",
        }
    }

    /// True for floating-point dtypes.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16 | DType::F64)
    }

    /// The element whose little-endian bytes are `b` (exactly [`size`](Self::size) bytes; a
    /// shorter slice reads as 0), as f64: exact for every float dtype and for integers up to
    /// 2⁵³. The one decoder of element bytes; only the summaries' and the metrics' inner
    /// loops keep their own, specialised per dtype for speed (`stats::decode_chunk`,
    /// `analysis::metrics`), and tests check them against this one.
    #[inline]
    pub fn decode(self, b: &[u8]) -> f64 {
        fn le<const N: usize>(b: &[u8]) -> [u8; N] {
            b.get(..N).and_then(|b| b.try_into().ok()).unwrap_or([0; N])
        }
        match self {
            DType::F32 => f32::from_le_bytes(le(b)) as f64,
            DType::F16 => half::f16::from_le_bytes(le(b)).to_f64(),
            DType::BF16 => half::bf16::from_le_bytes(le(b)).to_f64(),
            DType::F64 => f64::from_le_bytes(le(b)),
            DType::I64 => i64::from_le_bytes(le(b)) as f64,
            DType::I32 => i32::from_le_bytes(le(b)) as f64,
            DType::U8 => le::<1>(b)[0] as f64,
        }
    }

    /// Every whole element of `bytes` as f64 ([`decode`](Self::decode)).
    pub fn decode_all(self, bytes: &[u8]) -> Vec<f64> {
        bytes
            .chunks_exact(self.size())
            .map(|b| self.decode(b))
            .collect()
    }

    /// Every whole element of a float tensor as f32 (f16 and bf16 exactly; f64 rounded),
    /// `None` for integer dtypes.
    pub fn decode_floats(self, bytes: &[u8]) -> Option<Vec<f32>> {
        self.is_float().then(|| {
            bytes
                .chunks_exact(self.size())
                .map(|b| self.decode(b) as f32)
                .collect()
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<DType> for u8 {
    fn from(d: DType) -> u8 {
        d.code()
    }
}

impl TryFrom<u8> for DType {
    type Error = String;
    fn try_from(code: u8) -> Result<Self, Self::Error> {
        DType::from_code(code).ok_or_else(|| format!("unknown dtype code {code}"))
    }
}

impl std::str::FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DType::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| {
                format!("unknown dtype '{s}' (expected one of f32, f16, bf16, f64, i64, i32, u8)")
            })
    }
}

/// Number of elements of `shape`, or `None` if the product overflows `u64`.
pub fn element_count(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
}

/// Byte length of a tensor of `shape` and `dtype`, or `None` on overflow.
pub fn byte_len(dtype: DType, shape: &[u64]) -> Option<u64> {
    element_count(shape)?.checked_mul(dtype.size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_stable() {
        for d in DType::ALL {
            assert_eq!(DType::from_code(d.code()), Some(d));
            assert_eq!(d.name().parse::<DType>(), Ok(d));
        }
        // Codes are part of the file format.
        assert_eq!(DType::F32.code(), 0);
        assert_eq!(DType::BF16.code(), 2);
        assert_eq!(DType::U8.code(), 6);
        assert_eq!(DType::from_code(200), None);
    }

    #[test]
    fn decode_reads_each_dtype_little_endian() {
        let cases: [(DType, Vec<u8>, f64); 7] = [
            (DType::F32, 1.5f32.to_le_bytes().to_vec(), 1.5),
            (
                DType::F16,
                half::f16::from_f64(-2.0).to_le_bytes().to_vec(),
                -2.0,
            ),
            (
                DType::BF16,
                half::bf16::from_f64(3.0).to_le_bytes().to_vec(),
                3.0,
            ),
            (DType::F64, 0.1f64.to_le_bytes().to_vec(), 0.1),
            (DType::I64, (-7i64).to_le_bytes().to_vec(), -7.0),
            (DType::I32, 9i32.to_le_bytes().to_vec(), 9.0),
            (DType::U8, vec![200], 200.0),
        ];
        for (d, bytes, want) in cases {
            assert_eq!(d.decode(&bytes), want, "{d}");
            let two = [bytes.clone(), bytes].concat();
            assert_eq!(d.decode_all(&two), vec![want; 2], "{d}");
        }
        assert_eq!(DType::F32.decode(&[1, 2]), 0.0, "a short slice reads as 0");
        assert_eq!(DType::I32.decode_floats(&[0; 8]), None);
        let f16 = half::f16::from_f64(0.25).to_le_bytes();
        assert_eq!(DType::F16.decode_floats(&f16), Some(vec![0.25f32]));
    }

    #[test]
    fn byte_len_checks_overflow() {
        assert_eq!(byte_len(DType::F16, &[2, 3]), Some(12));
        assert_eq!(byte_len(DType::F32, &[]), Some(4));
        assert_eq!(byte_len(DType::F64, &[u64::MAX, 2]), None);
    }
}
