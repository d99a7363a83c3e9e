//! `sdtrace synth`: a deterministic random-weight model (diffusers folder or one LDM file) for
//! tests, demos and benchmarks without downloads.

use anyhow::Result;
use sdtrace::exit::ExitStatus;
use std::path::PathBuf;

/// Flags of `sdtrace synth`.
#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// Output folder (created; existing files in it are replaced), or file with --format ldm
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Shapes of the model: tiny, sd15 (3.4 GB of f32), sdxl-tiny or sdxl (10 GB of f32); with
    /// --format ldm the SDXL sizes are written in the webui's SDXL layout
    /// (conditioner.embedders.0/1)
    #[arg(long, value_enum, default_value_t = super::values::SynthSizeArg::Tiny, value_name = "SIZE")]
    size: super::values::SynthSizeArg,
    /// Seed of the weights
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Layout of the model (both hold the same weights)
    #[arg(long, value_enum, default_value_t = super::values::SynthFormat::Diffusers, value_name = "FORMAT")]
    format: super::values::SynthFormat,
    /// Weight dtype of an ldm file: f32 or f16
    #[arg(long, default_value = "f32", value_parser = sdtrace::pipeline::parse_dtype)]
    dtype: sdtrace::pipeline::ModelDType,
}

/// Run the command.
pub fn run(args: SynthArgs) -> Result<ExitStatus> {
    let SynthArgs {
        out,
        size,
        seed,
        format,
        dtype,
    } = args;
    let size = sdtrace::model::synth::SynthSize::from(size);
    match format {
        super::values::SynthFormat::Ldm => {
            sdtrace::model::synth::write_checkpoint_file(&out, size, seed, dtype)?
        }
        super::values::SynthFormat::Diffusers => {
            sdtrace::model::synth::write_model(&out, size, seed)?
        }
    }
    eprintln!("wrote a synthetic {size:?} model to {}", out.display());
    Ok(ExitStatus::Success)
}
