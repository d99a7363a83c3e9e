//! `device`: the device's own generator (candle's: cuRAND through cudarc on CUDA, candle's
//! kernel on Metal), to reproduce "the GPU draws different noise" on purpose.
//!
//! Invariant: it is refused on the CPU, whose candle generator cannot be seeded, so every
//! accepted `device` run is reproducible on the same device, driver and candle version. The
//! values are not PyTorch's: for PyTorch-compatible noise use `torch-cuda` or `torch-cpu`.

use super::RngError;
use candle_core::{Device, Tensor};
use serde_json::{Value, json};

/// Noise from the device's seeded generator.
#[derive(Clone, Debug)]
pub struct DeviceNoise {
    seed: u64,
    device: Device,
}

impl DeviceNoise {
    pub const NAME: &'static str = "device";

    /// Seed `device`'s generator; refused on the CPU.
    pub fn new(seed: u64, device: &Device) -> Result<Self, RngError> {
        if device.is_cpu() {
            return Err(RngError::DeviceOnCpu);
        }
        device.set_seed(seed).map_err(|e| RngError::Device {
            what: format!("cannot seed the device's generator: {e}"),
        })?;
        Ok(DeviceNoise {
            seed,
            device: device.clone(),
        })
    }

    pub fn draw(&mut self, shape: &[usize]) -> Result<Vec<f32>, RngError> {
        let fail = |e: candle_core::Error| RngError::Device {
            what: format!("drawing {shape:?} on the device failed: {e}"),
        };
        Tensor::randn(0f32, 1f32, shape, &self.device)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(fail)
    }

    pub fn params(&self) -> Value {
        let backend = match self.device {
            Device::Cuda(_) => "cuda (cuRAND via cudarc, candle's default generator)",
            Device::Metal(_) => "metal (candle's Metal generator)",
            Device::Cpu => "cpu",
        };
        json!({"seed": self.seed, "backend": backend})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_on_the_cpu_with_the_reason() {
        let e = DeviceNoise::new(1, &Device::Cpu).unwrap_err().to_string();
        assert!(
            e.contains("cannot be seeded") && e.contains("torch-cpu") && e.contains("--device"),
            "{e}"
        );
    }
}
