//! The flags `report` and `diff` share: tolerances, key maps, what fails the verdict.

use anyhow::Result;
use sdtrace::analysis::{AllowMissing, CompareOptions, Criteria, FailOn, KeyMap, TolConfig};
use std::path::PathBuf;

/// How two traces are compared and judged: the flags `report` and `diff` share.
#[derive(clap::Args, Debug)]
pub struct JudgeArgs {
    /// Tolerance for every record, e.g. rel=1e-3,abs=1e-5 (default: per dtype; in diff, `t`
    /// edits it)
    #[arg(long, value_name = "rel=R,abs=A")]
    pub tol: Option<String>,
    /// Tolerance for keys matching GLOB, e.g. 'unet.*=rel=1e-2' (repeatable; last match wins)
    #[arg(long = "tol-key", value_name = "GLOB=rel=R,abs=A")]
    tol_key: Vec<String>,
    /// A repeat run of A (same machine) or an f64 reference: tolerance = k × its error
    #[arg(long, value_name = "TRACE")]
    pub noise_floor: Option<PathBuf>,
    /// The k of --noise-floor
    #[arg(long, value_name = "K", default_value_t = 3.0)]
    floor_k: f64,
    /// Key renaming file (`FROM => TO` per line) for traces of other implementations
    #[arg(long, value_name = "FILE")]
    pub map: Option<PathBuf>,
    /// What fails the verdict (report: exit 1); default first-exceed, or image with
    /// --min-psnr/--min-ssim
    #[arg(long, value_enum, value_name = "WHAT")]
    fail_on: Option<super::values::FailOnArg>,
    /// Tolerate records that only one trace holds: comma-separated key globs ('vae.*,image'),
    /// or `all`, which also accepts a truncated, interrupted or failed run. Without it any of
    /// these makes the verdict `incomplete` (report: exit 4). The report lists what it allowed.
    #[arg(long, value_name = "KEYS|all")]
    allow_missing: Option<AllowMissing>,
    /// With --fail-on image: the final images pass from this PSNR (dB) on
    #[arg(long, value_name = "DB")]
    min_psnr: Option<f64>,
    /// With --fail-on image: the final images pass from this SSIM (0..1) on
    #[arg(long, value_name = "X")]
    min_ssim: Option<f64>,
    /// Worker threads for payload comparison (0: one per core)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub threads: usize,
}

impl JudgeArgs {
    pub fn tolerances(&self) -> Result<TolConfig> {
        Ok(TolConfig::from_flags(
            self.tol.as_deref(),
            &self.tol_key,
            self.floor_k,
        )?)
    }

    /// What decides the verdict besides tolerances; --min-psnr/--min-ssim judge the final image.
    pub fn criteria(&self) -> Result<Criteria> {
        Ok(Criteria::from_flags(
            self.fail_on.map(FailOn::from),
            self.allow_missing.clone(),
            self.min_psnr,
            self.min_ssim,
        )?)
    }

    pub fn compare_options(&self) -> Result<CompareOptions> {
        Ok(CompareOptions {
            map: self
                .map
                .as_deref()
                .map(KeyMap::load)
                .transpose()?
                .unwrap_or_default(),
            tol: self.tolerances()?,
            threads: self.threads,
        })
    }
}
