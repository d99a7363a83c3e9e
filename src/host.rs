//! Facts about the machine this process runs on, for the trace header.
//!
//! Only what can be read cheaply and without privileges: OS, architecture, CPU model (from
//! `/proc/cpuinfo` on Linux), the ISA extensions that change numerics (FMA, AVX2, AVX-512,
//! F16C, NEON) and the logical CPU count. GPU facts are filled in by the device code that
//! opened the GPU, never from a table.

use crate::trace::DeviceFacts;

/// A field of `/proc/self/status` given in kB (`VmHWM`: peak resident memory, `VmRSS`), in
/// bytes; `None` where there is no such file or field (not Linux).
pub fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find(|l| l.split(':').next() == Some(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_e`, v2 and v3 alike; the -sys
/// crate has no constant for it).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// For binaries whose global allocator is mimalloc (`sdtrace` itself and the benchmarks): keep
/// freed memory for reuse instead of returning it to the kernel. candle allocates a fresh
/// buffer per tensor op; returned memory comes back as new pages the kernel zero-fills one by
/// one, which was a fifth of a UNet forward's CPU time with the system allocator. The cost is
/// that the process keeps its peak footprint until it exits.
pub fn keep_freed_memory() {
    // SAFETY: plain option calls into the linked mimalloc; reading back the option's default
    // (10 ms) first guards the index.
    unsafe {
        if libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) == 10 {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
        }
    }
}

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
