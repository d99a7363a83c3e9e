//! GPU facts and cuBLAS settings for recordings on a GPU.
//!
//! [`gpu_facts`] reads what the trace header says about the GPU from the device that was opened,
//! through the CUDA driver API that candle re-exports (cudarc): name, compute capability, SM
//! count, max threads per SM, total and free memory, the CUDA version the driver supports, the
//! cuBLAS version, UUID and PCI address; the kernel driver's version comes from
//! `/proc/driver/nvidia/version` on Linux. Nothing is taken from a table of known cards. Builds
//! without the `cuda` feature have no CUDA devices, so there it returns `None`.
//!
//! [`GemmPrecision`] is the `--gemm-reduced-precision` setting: candle's global switches that let
//! cuBLAS reduce precision in matrix products (TF32 tensor cores for f32, f16 accumulation for
//! f16, reduced bf16 accumulation for bf16). They matter for every matmul and, since candle
//! without cuDNN runs conv2d as im2col + GEMM, for every convolution too; [`GemmPrecision::apply`]
//! sets them and [`GemmPrecision::header`] says what was in effect.

use crate::trace::GpuFacts;
use candle_core::Device;
use serde_json::{Value, json};

/// Errors reading a GPU's facts.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(
        "--device {device}: cannot read the GPU's {what} from the CUDA driver: {message} (check the GPU with `nvidia-smi`, or record with --device cpu)"
    )]
    Driver {
        device: String,
        what: &'static str,
        message: String,
    },
    #[error(
        "--gemm-reduced-precision {given}: cuBLAS settings apply only to --device cuda; leave the flag out (or give 'none') for --device {device}"
    )]
    NotCuda { given: String, device: String },
}

/// Which GEMM dtypes cuBLAS may compute with reduced precision (candle's
/// `set_gemm_reduced_precision_{f32,f16,bf16}`; all off by default, as in PyTorch for f32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GemmPrecision {
    /// f32 GEMMs may use TF32 tensor cores (`CUBLAS_COMPUTE_32F_FAST_TF32`).
    pub f32_tf32: bool,
    /// f16 GEMMs accumulate in f16 (`CUBLAS_COMPUTE_16F`) instead of f32.
    pub f16: bool,
    /// bf16 GEMMs use `CUBLAS_COMPUTE_32F_FAST_16BF` instead of `CUBLAS_COMPUTE_32F`.
    pub bf16: bool,
}

impl std::str::FromStr for GemmPrecision {
    type Err = String;
    /// `none`, `all`, or a comma list of `f32` (alias `tf32`), `f16`, `bf16`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut p = GemmPrecision::default();
        for part in s.split(',').map(str::trim) {
            match part {
                "none" => {}
                "all" => {
                    p = GemmPrecision {
                        f32_tf32: true,
                        f16: true,
                        bf16: true,
                    }
                }
                "f32" | "tf32" => p.f32_tf32 = true,
                "f16" => p.f16 = true,
                "bf16" => p.bf16 = true,
                _ => {
                    return Err(format!(
                        "'{part}': expected none, all, or a comma list of f32 (TF32), f16, bf16"
                    ));
                }
            }
        }
        Ok(p)
    }
}

impl std::fmt::Display for GemmPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on: Vec<&str> = [
            (self.f32_tf32, "f32"),
            (self.f16, "f16"),
            (self.bf16, "bf16"),
        ]
        .into_iter()
        .filter_map(|(b, n)| b.then_some(n))
        .collect();
        if on.is_empty() {
            write!(f, "none")
        } else {
            write!(f, "{}", on.join(","))
        }
    }
}

impl GemmPrecision {
    /// Set candle's global cuBLAS switches for a run on `device` (a CUDA device gets exactly
    /// these settings, so an earlier run in the same process leaves nothing behind). Other
    /// devices accept only the default.
    pub fn apply(self, device: &Device) -> Result<(), GpuError> {
        if !device.is_cuda() {
            if self != GemmPrecision::default() {
                return Err(GpuError::NotCuda {
                    given: self.to_string(),
                    device: device_name(device),
                });
            }
            return Ok(());
        }
        candle_core::cuda::set_gemm_reduced_precision_f32(self.f32_tf32);
        candle_core::cuda::set_gemm_reduced_precision_f16(self.f16);
        candle_core::cuda::set_gemm_reduced_precision_bf16(self.bf16);
        Ok(())
    }

    /// The header's `cublas` setting: the switches as candle reads them now (after
    /// [`apply`](Self::apply)) and the cuBLAS compute type each GEMM dtype gets from them.
    pub fn header() -> Value {
        let f32_on = candle_core::cuda::gemm_reduced_precision_f32();
        let f16_on = candle_core::cuda::gemm_reduced_precision_f16();
        let bf16_on = candle_core::cuda::gemm_reduced_precision_bf16();
        json!({
            "gemm_reduced_precision": {"f32": f32_on, "f16": f16_on, "bf16": bf16_on},
            "compute_type": {
                "f32": if f32_on { "CUBLAS_COMPUTE_32F_FAST_TF32" } else { "CUBLAS_COMPUTE_32F" },
                "f16": if f16_on { "CUBLAS_COMPUTE_16F" } else { "CUBLAS_COMPUTE_32F" },
                "bf16": if bf16_on { "CUBLAS_COMPUTE_32F_FAST_16BF" } else { "CUBLAS_COMPUTE_32F" },
            },
            "gemm_algo": "CUBLAS_GEMM_DEFAULT_TENSOR_OP",
            "conv2d": "im2col + cuBLAS GEMM (candle without cuDNN)",
        })
    }
}

fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// The kernel driver's version (`580.95.05`) from `/proc/driver/nvidia/version`, when there.
pub fn nvidia_driver_version() -> Option<String> {
    let text = std::fs::read_to_string("/proc/driver/nvidia/version").ok()?;
    parse_driver_version(&text)
}

/// The version in `/proc/driver/nvidia/version`'s first line (`NVRM version: NVIDIA UNIX
/// x86_64 Kernel Module  580.95.05  Thu Sep 18 ...`, or `... Open Kernel Module for x86_64 ...`).
fn parse_driver_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("NVRM version"))?;
    line.split_whitespace()
        .find(|w| {
            w.contains('.')
                && w.split('.').count() >= 2
                && w.split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(String::from)
}

/// `13000` → `13.0` (the CUDA driver API's version numbers).
pub fn cuda_version_string(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// Facts about the GPU behind `device`, read from it now; `None` for other devices. Call it
/// right after opening the device: `vram_free_bytes` is then what the run found free.
pub fn gpu_facts(device: &Device) -> Result<Option<GpuFacts>, GpuError> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        return cuda::facts(dev).map(Some);
    }
    let _ = device;
    Ok(None)
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::{GpuError, cuda_version_string, nvidia_driver_version};
    use crate::trace::GpuFacts;
    use candle_core::cuda::CudaDevice;
    use candle_core::cuda::cudarc::cublas;
    use candle_core::cuda::cudarc::driver::sys::{self, CUdevice_attribute as A};
    use serde_json::json;

    /// Maps a driver error to [`GpuError::Driver`] for the fact `what`.
    fn drv<E: std::fmt::Display>(device: &str, what: &'static str) -> impl FnOnce(E) -> GpuError {
        let device = device.to_string();
        move |e| GpuError::Driver {
            device,
            what,
            message: e.to_string(),
        }
    }

    pub(super) fn facts(dev: &CudaDevice) -> Result<GpuFacts, GpuError> {
        let stream = dev.cuda_stream();
        let ctx = stream.context();
        let name = format!("cuda:{}", ctx.ordinal());
        let attr = |a: A, what: &'static str| ctx.attribute(a).map_err(drv(&name, what));
        let (major, minor) = ctx
            .compute_capability()
            .map_err(drv(&name, "compute capability"))?;
        let (free, total) = ctx.mem_get_info().map_err(drv(&name, "memory"))?;
        let mut driver_cuda = 0i32;
        // SAFETY: cuDriverGetVersion writes one int through a valid pointer; the driver is
        // initialised (the context exists).
        unsafe { sys::cuDriverGetVersion(&mut driver_cuda) }
            .result()
            .map_err(drv(&name, "CUDA version"))?;
        let mut facts = GpuFacts {
            name: Some(ctx.name().map_err(drv(&name, "name"))?),
            compute_capability: Some(format!("{major}.{minor}")),
            sm_count: Some(attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, "SM count")? as u32),
            max_threads_per_sm: Some(attr(
                A::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR,
                "max threads per SM",
            )? as u32),
            vram_total_bytes: Some(total as u64),
            vram_free_bytes: Some(free as u64),
            driver_version: nvidia_driver_version(),
            cuda_version: Some(cuda_version_string(driver_cuda)),
            extra: Default::default(),
        };
        let mut extra = |k: &str, v: serde_json::Value| {
            facts.extra.insert(k.into(), v);
        };
        extra("ordinal", json!(ctx.ordinal()));
        if let Ok(uuid) = ctx.uuid() {
            let b: Vec<u8> = uuid.bytes.iter().map(|&c| c as u8).collect();
            let hex = |r: std::ops::Range<usize>| {
                b[r].iter().map(|x| format!("{x:02x}")).collect::<String>()
            };
            extra(
                "uuid",
                json!(format!(
                    "GPU-{}-{}-{}-{}-{}",
                    hex(0..4),
                    hex(4..6),
                    hex(6..8),
                    hex(8..10),
                    hex(10..16)
                )),
            );
        }
        if let (Ok(dom), Ok(bus), Ok(devn)) = (
            attr(A::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID, "PCI domain"),
            attr(A::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, "PCI bus"),
            attr(A::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID, "PCI device"),
        ) {
            extra(
                "pci_bus_id",
                json!(format!("{dom:04x}:{bus:02x}:{devn:02x}.0")),
            );
        }
        for (key, a) in [
            ("clock_khz", A::CU_DEVICE_ATTRIBUTE_CLOCK_RATE),
            ("memory_clock_khz", A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE),
            ("l2_cache_bytes", A::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE),
            ("ecc_enabled", A::CU_DEVICE_ATTRIBUTE_ECC_ENABLED),
        ] {
            if let Ok(v) = attr(a, "attribute") {
                extra(key, json!(v));
            }
        }
        let mut cublas_version = 0i32;
        let blas = dev.cublas_handle();
        // SAFETY: the handle is live (held by `blas`) and the out-pointer is valid.
        let rc = unsafe { cublas::sys::cublasGetVersion_v2(*blas.handle(), &mut cublas_version) };
        if rc.result().is_ok() {
            let v = cublas_version;
            extra(
                "cublas_version",
                json!(format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100)),
            );
        }
        // How this binary was built (cuda-env.sh and candle's build scripts read these).
        if let Some(v) = option_env!("CUDARC_CUDA_VERSION").and_then(|v| v.parse::<i32>().ok()) {
            extra("cuda_build_version", json!(cuda_version_string(v)));
        }
        if let Some(cc) = option_env!("CUDA_COMPUTE_CAP") {
            extra("kernels_compute_cap", json!(cc));
        }
        Ok(facts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_precision_parses_and_prints() {
        assert_eq!("none".parse(), Ok(GemmPrecision::default()));
        let p: GemmPrecision = "tf32,f16".parse().unwrap();
        assert!(p.f32_tf32 && p.f16 && !p.bf16);
        assert_eq!(p.to_string(), "f32,f16");
        assert_eq!(
            "all".parse::<GemmPrecision>().unwrap().to_string(),
            "f32,f16,bf16"
        );
        assert_eq!(GemmPrecision::default().to_string(), "none");
        let e = "fp8".parse::<GemmPrecision>().unwrap_err();
        assert!(e.contains("'fp8'") && e.contains("f32 (TF32)"), "{e}");
    }

    #[test]
    fn the_cpu_takes_only_the_default() {
        assert!(GemmPrecision::default().apply(&Device::Cpu).is_ok());
        let e = "f32"
            .parse::<GemmPrecision>()
            .unwrap()
            .apply(&Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--gemm-reduced-precision f32") && e.contains("--device cpu"),
            "{e}"
        );
        assert_eq!(gpu_facts(&Device::Cpu).unwrap(), None);
    }

    #[test]
    fn header_names_the_compute_types() {
        let h = GemmPrecision::header();
        assert!(
            h["compute_type"]["f32"]
                .as_str()
                .unwrap()
                .starts_with("CUBLAS_COMPUTE_32F")
        );
        assert!(h["gemm_reduced_precision"]["f16"].is_boolean());
    }

    #[test]
    fn driver_versions() {
        let proc_text = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.95.05  Thu Sep 18 19:35:52 UTC 2025\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n";
        assert_eq!(
            parse_driver_version(proc_text).as_deref(),
            Some("580.95.05")
        );
        let open = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  (dvs-builder@U16-I3-B03-4-3)  Thu Jan 23 2025\n";
        assert_eq!(parse_driver_version(open).as_deref(), Some("570.86.15"));
        assert_eq!(parse_driver_version("nothing"), None);
        assert_eq!(cuda_version_string(13000), "13.0");
        assert_eq!(cuda_version_string(12080), "12.8");
    }
}
