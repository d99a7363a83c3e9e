//! The `sdtrace` command line: clap parsing, output at the edge, exit codes.
//!
//! Exit codes are an API, defined once in [`sdtrace::exit::ExitStatus`]: every command returns
//! one, errors are mapped to one by [`cli::exit::of`], and each command's help table is
//! generated from the statuses it can return ([`cli::exit`]). Nothing below `main` calls
//! `process::exit`, except the second Ctrl-C of a recording, which quits at once with 130.

use anyhow::Result;
use clap::{Parser, Subcommand};
use sdtrace::exit::ExitStatus;
use std::process::ExitCode;

mod cli;

#[derive(Parser)]
#[command(name = "sdtrace", version, about = "Tensor-trace differential debugger for Stable Diffusion", after_help = sdtrace::exit::full_table())]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a trace's run header, record counts, steps, keys and stored bytes
    #[command(after_help = cli::exit::help("", cli::exit::READ))]
    Info(cli::inspect::InfoArgs),
    /// List records, one line each with their main summary values
    #[command(after_help = cli::exit::help("", cli::exit::READ))]
    Ls(cli::inspect::LsArgs),
    /// The original report's case in miniature: record emulated GTX 1070 / Tesla T4 runs and an
    /// f32/f16 pair on a tiny synthetic model (no download), then judge them
    #[command(after_help = cli::exit::help(cli::demo::DEMO_HELP, cli::exit::DEMO))]
    Demo(cli::demo::DemoArgs),
    /// Run the text-to-image pipeline and record every probe point into a trace (and a PNG)
    #[command(after_help = cli::exit::help(cli::record::RECORD_HELP, cli::exit::RECORD), args_override_self = true)]
    Record(cli::record::RecordArgs),
    /// Record the same generation at a series of sizes, one trace per size in one folder (the
    /// original report's experiment; compare two folders with report --matrix)
    #[command(
        after_help = cli::exit::help(&cli::sweep::help(), cli::exit::SWEEP),
        args_override_self = true,
        mut_arg("output", |a| a
            .value_name("DIR")
            .help("Folder for the traces (created): one WxH.sdt, and WxH.png, per size"))
    )]
    Sweep(cli::sweep::SweepArgs),
    /// Write the initial latent noise a run would use, or compare generators (GPU cards, CPU)
    /// size by size, without a model
    #[command(after_help = cli::exit::help(&cli::noise::help(), cli::exit::NOISE))]
    Noise(cli::noise::NoiseArgs),
    /// Compare the generation parameters of two images (webui, Forge, ComfyUI, sdtrace PNGs):
    /// every setting that differs, and whether their noise can agree, from which size it cannot,
    /// and the fix. No model needed
    #[command(after_help = cli::exit::help(cli::explain::EXPLAIN_HELP, cli::exit::EXPLAIN))]
    Explain(cli::explain::ExplainArgs),
    /// Write a deterministic random-weight model in the diffusers folder layout, or as one
    /// single-file LDM checkpoint (tests, demos, benchmarks; no download)
    #[command(after_help = cli::exit::help("", cli::exit::WRITE))]
    Synth(cli::synth::SynthArgs),
    /// Write one record's tensor to .npy or .safetensors, or an image record to .png with A1111's
    /// generation parameters (chosen by the output's extension)
    #[command(after_help = cli::exit::help("", cli::exit::WRITE))]
    Export(cli::export::ExportArgs),
    /// Compare two traces: where the runs part, where the error grows, and why
    #[command(after_help = cli::exit::help(&cli::report::help(), cli::exit::REPORT))]
    Report(cli::report::ReportArgs),
    /// Explore a comparison interactively: summary, step × layer heatmap, layer, tensor,
    /// noise and image views (press ? for the keys)
    #[command(after_help = cli::exit::help(&cli::diff::help(), cli::exit::DIFF))]
    Diff(cli::diff::DiffArgs),
}

/// mimalloc, told to keep freed memory for reuse ([`sdtrace::host::keep_freed_memory`]).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    sdtrace::host::keep_freed_memory();
    let cli = Cli::parse();
    if let Command::Record(args) = &cli.command {
        cli::record::configure_threads(args);
    }
    if let Command::Sweep(args) = &cli.command {
        cli::record::configure_threads(args.record());
    }
    match run(cli) {
        Ok(status) => status.into(),
        Err(e) => {
            eprintln!("error: {}", cli::error_text(&e));
            cli::exit::of(&e).into()
        }
    }
}

fn run(cli: Cli) -> Result<ExitStatus> {
    match cli.command {
        Command::Info(args) => cli::inspect::run_info(args),
        Command::Ls(args) => cli::inspect::run_ls(args),
        Command::Demo(args) => cli::demo::run(args),
        Command::Record(args) => cli::record::run(args),
        Command::Sweep(args) => cli::sweep::run(args),
        Command::Noise(args) => cli::noise::run(args),
        Command::Explain(args) => cli::explain::run(args),
        Command::Synth(args) => cli::synth::run(args),
        Command::Export(args) => cli::export::run(args),
        Command::Report(args) => cli::report::run(args),
        Command::Diff(args) => cli::diff::run(args),
    }
}
