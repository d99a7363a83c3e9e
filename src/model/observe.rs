//! The candle side of the probe: hand a module output to the [`Probe`] and apply a replacement.

use super::Result;
use crate::dtype::DType;
use crate::probe::{OwnedTensor, Probe, TensorView};
use candle_core::{Device, Tensor};

/// Our dtype for a candle dtype (all that a trace can store).
pub fn trace_dtype(d: candle_core::DType) -> Option<DType> {
    use candle_core::DType as C;
    Some(match d {
        C::F32 => DType::F32,
        C::F16 => DType::F16,
        C::BF16 => DType::BF16,
        C::F64 => DType::F64,
        C::I64 => DType::I64,
        C::U8 => DType::U8,
        _ => return None,
    })
}

/// candle's dtype for ours.
pub fn candle_dtype(d: DType) -> Option<candle_core::DType> {
    use candle_core::DType as C;
    Some(match d {
        DType::F32 => C::F32,
        DType::F16 => C::F16,
        DType::BF16 => C::BF16,
        DType::F64 => C::F64,
        DType::I64 => C::I64,
        DType::U8 => C::U8,
        DType::I32 => return None,
    })
}

/// A host copy of `t`: contiguous little-endian bytes in its own dtype.
pub fn host_copy(t: &Tensor) -> Result<OwnedTensor> {
    let dtype = trace_dtype(t.dtype()).ok_or_else(|| {
        candle_core::Error::Msg(format!("dtype {:?} cannot be traced", t.dtype()))
    })?;
    let flat = t.flatten_all()?.to_device(&Device::Cpu)?;
    fn bytes<T: candle_core::WithDType, const N: usize>(
        flat: &Tensor,
        f: impl Fn(T) -> [u8; N],
    ) -> Result<Vec<u8>> {
        Ok(flat.to_vec1::<T>()?.into_iter().flat_map(f).collect())
    }
    let data = match dtype {
        DType::F32 => bytes(&flat, f32::to_le_bytes)?,
        DType::F16 => bytes(&flat, half::f16::to_le_bytes)?,
        DType::BF16 => bytes(&flat, half::bf16::to_le_bytes)?,
        DType::F64 => bytes(&flat, f64::to_le_bytes)?,
        DType::I64 => bytes(&flat, i64::to_le_bytes)?,
        DType::U8 => flat.to_vec1::<u8>()?,
        DType::I32 => unreachable!("trace_dtype never yields i32"),
    };
    Ok(OwnedTensor {
        dtype,
        shape: t.dims().to_vec(),
        data,
    })
}

/// A tensor on `device` from an owned host tensor.
pub fn from_host(t: &OwnedTensor, device: &Device) -> Result<Tensor> {
    let dtype = candle_dtype(t.dtype).ok_or_else(|| {
        candle_core::Error::Msg(format!("dtype {} has no candle equivalent", t.dtype))
    })?;
    Ok(Tensor::from_raw_buffer(&t.data, dtype, &t.shape, device)?)
}

/// Run `f` on a little-endian byte view of `t`. A contiguous CPU tensor is viewed in place
/// (no copy); anything else is copied to the host first.
fn with_host_view<R>(t: &Tensor, f: impl FnOnce(TensorView<'_>) -> Result<R>) -> Result<R> {
    #[cfg(target_endian = "little")]
    if t.device().is_cpu() {
        use candle_core::{CpuStorage, Storage};
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            let bytes: Option<(DType, &[u8])> = match cpu {
                CpuStorage::F32(v) => Some((DType::F32, bytemuck::cast_slice(&v[start..end]))),
                CpuStorage::F16(v) => Some((DType::F16, bytemuck::cast_slice(&v[start..end]))),
                CpuStorage::BF16(v) => Some((DType::BF16, bytemuck::cast_slice(&v[start..end]))),
                CpuStorage::F64(v) => Some((DType::F64, bytemuck::cast_slice(&v[start..end]))),
                CpuStorage::I64(v) => Some((DType::I64, bytemuck::cast_slice(&v[start..end]))),
                CpuStorage::U8(v) => Some((DType::U8, &v[start..end])),
                _ => None,
            };
            if let Some((dtype, data)) = bytes {
                let view =
                    TensorView::new(dtype, t.dims(), data).map_err(candle_core::Error::Msg)?;
                return f(view);
            }
        }
    }
    let owned = host_copy(t)?;
    f(owned.view().map_err(candle_core::Error::Msg)?)
}

/// Observe `t` under `key`. Returns `t` itself unless an intervention replaced it (then the
/// replacement, on `t`'s device, checked to have `t`'s shape and dtype).
pub fn observe(probe: &Probe, key: &str, t: &Tensor) -> Result<Tensor> {
    if probe.plan(key).is_noop() {
        return Ok(t.clone());
    }
    match with_host_view(t, |view| Ok(probe.tensor(key, view)?))? {
        None => Ok(t.clone()),
        Some(r) => {
            let r = from_host(&r, t.device())?;
            if r.dims() != t.dims() || r.dtype() != t.dtype() {
                return Err(candle_core::Error::Msg(format!(
                    "replacement for '{key}' is {:?} {:?}, the tensor is {:?} {:?}",
                    r.dtype(),
                    r.dims(),
                    t.dtype(),
                    t.dims()
                ))
                .into());
            }
            Ok(r)
        }
    }
}
