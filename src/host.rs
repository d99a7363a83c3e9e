//! Facts about the machine this process runs on, for the trace header.
//!
//! Only what can be read cheaply and without privileges: OS, architecture, CPU model (from
//! `/proc/cpuinfo` on Linux), the ISA extensions that change numerics (FMA, AVX2, AVX-512,
//! F16C, NEON) and the logical CPU count. GPU facts are filled in by the device code that
//! opened the GPU, never from a table.

use crate::trace::DeviceFacts;

/// Facts about this host; `compute_threads` is what the computation was configured to use.
pub fn host_facts(compute_threads: Option<u32>) -> DeviceFacts {
    DeviceFacts {
        device: Some("cpu".into()),
        os: Some(std::env::consts::OS.into()),
        arch: Some(std::env::consts::ARCH.into()),
        cpu_model: cpu_model(),
        cpu_features: cpu_features(),
        logical_cpus: std::thread::available_parallelism()
            .ok()
            .map(|n| n.get() as u32),
        compute_threads,
        gpu: None,
        extra: Default::default(),
    }
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| {
            l.starts_with("model name") || l.starts_with("Model") || l.starts_with("Hardware")
        })
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

#[allow(unused_mut)]
fn cpu_features() -> Vec<String> {
    let mut f: Vec<&str> = Vec::new();
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        macro_rules! probe {
            ($($name:tt),*) => {$( if std::arch::is_x86_feature_detected!($name) { f.push($name); } )*};
        }
        probe!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512dq",
            "avx512vnni",
            "avx512bf16",
            "avx512fp16"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! probe {
            ($($name:tt),*) => {$( if std::arch::is_aarch64_feature_detected!($name) { f.push($name); } )*};
        }
        probe!("neon", "fp16", "bf16", "sve", "sve2");
    }
    f.into_iter().map(String::from).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_facts_are_filled() {
        let f = super::host_facts(Some(2));
        assert_eq!(f.compute_threads, Some(2));
        assert!(f.os.is_some() && f.arch.is_some() && f.logical_cpus.is_some());
        #[cfg(target_arch = "x86_64")]
        assert!(f.cpu_features.iter().any(|x| x == "sse4.2"));
    }
}
