//! `sdtrace export`: one record's tensor to .npy or .safetensors, or an image record to .png
//! with A1111's generation parameters.

use anyhow::{Context, Result, bail};
use sdtrace::exit::ExitStatus;
use sdtrace::export::{ExportFormat, to_npy, to_png, to_safetensors, write_atomic};
use sdtrace::trace::{RecordMeta, TraceReader};
use std::path::{Path, PathBuf};

/// Flags of `sdtrace export`.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Trace file (.sdt)
    trace: PathBuf,
    /// Probe key, e.g. noise.initial, sampler.x or image
    key: String,
    /// Output file: NAME.npy, NAME.safetensors or NAME.png (or give it with -o)
    #[arg(
        value_name = "OUT",
        required_unless_present = "output",
        conflicts_with = "output"
    )]
    out: Option<PathBuf>,
    /// Sampler step (leave out for records outside the sampling loop)
    #[arg(long, value_name = "N")]
    step: Option<u32>,
    /// Model evaluation within the step
    #[arg(long, value_name = "E", default_value_t = 0)]
    eval: u32,
    /// Output file: NAME.npy, NAME.safetensors or NAME.png
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Batch item to write to a .png
    #[arg(long, value_name = "I", default_value_t = 0)]
    index: usize,
}

/// Run the command.
pub fn run(args: ExportArgs) -> Result<ExitStatus> {
    let ExportArgs {
        trace,
        key,
        out,
        step,
        eval,
        output,
        index,
    } = args;
    let Some(output) = out.or(output) else {
        bail!("export needs an output file: sdtrace export TRACE KEY OUT");
    };
    export(&trace, &key, step, eval, &output, index)?;
    Ok(ExitStatus::Success)
}

fn export(
    trace: &Path,
    key: &str,
    step: Option<u32>,
    eval: u32,
    output: &Path,
    index: usize,
) -> Result<()> {
    let format = ExportFormat::from_path(output)?;
    if index != 0 && format != ExportFormat::Png {
        bail!(
            "--index {index}: only a .png export picks one batch item; .npy and .safetensors hold the whole tensor"
        );
    }
    let r = TraceReader::open(trace)?;
    let Some(entry) = r.find(key, step, eval) else {
        return Err(not_recorded(&r, trace, key, step, eval));
    };
    let meta = r.read_meta(entry)?;
    let Some(data) = r.read_payload(&meta)? else {
        bail!(
            "{}: '{}' was recorded at fidelity '{}', which keeps no tensor; record it again with a capture rule such as '{}=full' to export it",
            trace.display(),
            meta.id(),
            meta.fidelity,
            key
        );
    };
    let bytes = match format {
        ExportFormat::Npy => to_npy(key, meta.dtype, &meta.shape, &data)?,
        ExportFormat::Safetensors => {
            let mut md = vec![
                ("sdtrace.trace".to_string(), trace.display().to_string()),
                ("sdtrace.eval".to_string(), eval.to_string()),
            ];
            if let Some(s) = step {
                md.push(("sdtrace.step".to_string(), s.to_string()));
            }
            to_safetensors(key, meta.dtype, &meta.shape, &data, &md)?
        }
        ExportFormat::Png => return export_png(&r, trace, &meta, &data, output, index),
    };
    write_atomic(output, &bytes)?;
    eprintln!(
        "wrote {} ({} {:?}, {} bytes)",
        output.display(),
        meta.dtype,
        meta.shape,
        bytes.len()
    );
    Ok(())
}

/// Why `key` at (`step`, `eval`) is not in the trace: no record of that key at all, or the
/// steps and evals it was recorded at.
fn not_recorded(
    r: &TraceReader,
    trace: &Path,
    key: &str,
    step: Option<u32>,
    eval: u32,
) -> anyhow::Error {
    let steps: Vec<String> = r
        .entries()
        .iter()
        .filter(|e| &*e.key == key)
        .map(|e| match e.step {
            Some(s) => format!("--step {s} --eval {}", e.eval),
            None => "(no --step)".into(),
        })
        .collect();
    let at = step.map_or("outside the sampling loop".into(), |s| {
        format!("at step {s} eval {eval}")
    });
    if steps.is_empty() {
        return anyhow::anyhow!(
            "{}: no record with key '{key}'; list the keys with `sdtrace ls {}`",
            trace.display(),
            trace.display()
        );
    }
    let shown = steps.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
    anyhow::anyhow!(
        "{}: '{key}' was not recorded {at}; it was recorded with {shown}{}",
        trace.display(),
        if steps.len() > 8 { ", …" } else { "" }
    )
}

/// Write an image record's batch item `index` as a PNG with A1111's generation parameters.
fn export_png(
    r: &TraceReader,
    trace: &Path,
    meta: &RecordMeta,
    data: &[u8],
    output: &Path,
    index: usize,
) -> Result<()> {
    let png = to_png(
        &meta.key,
        meta.dtype,
        &meta.shape,
        data,
        index,
        &r.header().settings,
    )
    .with_context(|| format!("{}: record '{}'", trace.display(), meta.id()))?;
    write_atomic(output, &png.bytes)?;
    for note in &png.notes {
        eprintln!("note: {note}");
    }
    eprintln!(
        "wrote {} ({}×{} RGB, batch item {index}{}, {} bytes)",
        output.display(),
        png.width,
        png.height,
        if png.parameters.is_some() {
            ", with A1111 parameters"
        } else {
            ""
        },
        png.bytes.len()
    );
    Ok(())
}
