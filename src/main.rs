//! The `sdtrace` command line: clap parsing, output at the edge, exit codes.
//!
//! Exit codes are an API: 0 success, 1 divergence found (`report`, later), 2 bad usage or
//! unreadable input. Nothing below `main` calls `process::exit`.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use sdtrace::export::{ExportFormat, to_npy, to_safetensors, write_atomic};
use sdtrace::inspect::{LsFilter, info_json, ls_json, ls_rows, render_info, render_ls, trace_info};
use sdtrace::trace::TraceReader;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the traces diverge beyond tolerance (report)
  2  bad usage, or an input file that cannot be read or is damaged";

#[derive(Parser)]
#[command(name = "sdtrace", version, about = "Tensor-trace differential debugger for Stable Diffusion", after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a trace's run header, record counts, steps, keys and stored bytes
    #[command(after_help = EXIT_CODES)]
    Info {
        /// Trace file (.sdt)
        trace: PathBuf,
        /// Also read every record and payload and check all checksums
        #[arg(long)]
        verify: bool,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// List records, one line each with their main summary values
    #[command(after_help = EXIT_CODES)]
    Ls {
        /// Trace file (.sdt)
        trace: PathBuf,
        /// Only keys matching this glob (`*` any run of characters, `?` one character)
        #[arg(long, value_name = "GLOB")]
        key: Option<String>,
        /// Only records of this sampler step
        #[arg(long, value_name = "N")]
        step: Option<u32>,
        /// Print a JSON array instead of text
        #[arg(long)]
        json: bool,
    },
    /// Write a deterministic random-weight model in the diffusers folder layout (tests, demos,
    /// benchmarks; no download)
    #[command(after_help = EXIT_CODES)]
    Synth {
        /// Output folder (created; existing files in it are replaced)
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// tiny: SD 1.x structure at tiny widths; sd15: SD 1.5's real shapes (3.4 GB of f32)
        #[arg(long, default_value = "tiny", value_name = "SIZE")]
        size: sdtrace::model::synth::SynthSize,
        /// Seed of the weights
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Write one record's tensor to .npy or .safetensors (chosen by the output's extension)
    #[command(after_help = EXIT_CODES)]
    Export {
        /// Trace file (.sdt)
        trace: PathBuf,
        /// Probe key, e.g. noise.initial or sampler.x
        key: String,
        /// Sampler step (leave out for records outside the sampling loop)
        #[arg(long, value_name = "N")]
        step: Option<u32>,
        /// Model evaluation within the step
        #[arg(long, value_name = "E", default_value_t = 0)]
        eval: u32,
        /// Output file: NAME.npy or NAME.safetensors
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Print to stdout; a closed pipe (`| head`) is not an error.
fn emit(text: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("cannot write to stdout"),
    }
}

fn json_text(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info {
            trace,
            verify,
            json,
        } => {
            let r = TraceReader::open(&trace)?;
            let mut info = trace_info(&r);
            if verify {
                info.verified = Some(r.verify()?);
            }
            emit(&if json {
                json_text(&info_json(&info))
            } else {
                render_info(&info)
            })
        }
        Command::Ls {
            trace,
            key,
            step,
            json,
        } => {
            let r = TraceReader::open(&trace)?;
            let rows = ls_rows(&r, &LsFilter { key, step })?;
            emit(&if json {
                json_text(&ls_json(&rows))
            } else {
                render_ls(&rows)
            })
        }
        Command::Synth { out, size, seed } => {
            sdtrace::model::synth::write_model(&out, size, seed)?;
            eprintln!("wrote a synthetic {size:?} model to {}", out.display());
            Ok(())
        }
        Command::Export {
            trace,
            key,
            step,
            eval,
            output,
        } => export(&trace, &key, step, eval, &output),
    }
}

fn export(trace: &Path, key: &str, step: Option<u32>, eval: u32, output: &Path) -> Result<()> {
    let format = ExportFormat::from_path(output)?;
    let r = TraceReader::open(trace)?;
    let Some(entry) = r.find(key, step, eval) else {
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
            bail!(
                "{}: no record with key '{key}'; list the keys with `sdtrace ls {}`",
                trace.display(),
                trace.display()
            );
        }
        let shown = steps.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
        bail!(
            "{}: '{key}' was not recorded {at}; it was recorded with {shown}{}",
            trace.display(),
            if steps.len() > 8 { ", …" } else { "" }
        );
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
