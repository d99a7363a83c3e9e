//! `sdtrace diff`: the interactive comparison (the TUI); this module only turns flags into
//! [`sdtrace::tui::DiffOptions`].

use anyhow::Result;
use sdtrace::exit::ExitStatus;
use std::path::PathBuf;

/// The help text after the flags; the keys come from the key table the viewer runs on
/// ([`sdtrace::tui::keys::summary`]).
pub fn help() -> String {
    let text = format!(
        "Shows the same analysis as `sdtrace report`. Payload metrics are computed in the \
         background (progress in the title bar); a trace still being recorded is followed as it \
         grows. NO_COLOR turns colour off. Keys: arrows/hjkl move, {}; 1-5 switch views and ? \
         lists every key.",
        sdtrace::tui::keys::summary().join(", ")
    );
    sdtrace::report::wrap(&text, 96)
}

/// Flags of `sdtrace diff`.
#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    /// Trace A, the reference (.sdt)
    a: PathBuf,
    /// Trace B, the run under test (.sdt)
    b: PathBuf,
    #[command(flatten)]
    judge: super::judge::JudgeArgs,
    /// Do not capture the mouse (clicks select cells otherwise)
    #[arg(long)]
    no_mouse: bool,
    /// Folder that `e` exports the selected tensors to
    #[arg(long, value_name = "DIR", default_value = ".")]
    export_dir: PathBuf,
    /// Terminal graphics for the image view
    #[arg(long, value_enum, value_name = "PROTOCOL", default_value_t = super::values::Graphics::Auto)]
    graphics: super::values::Graphics,
}

/// Run the command.
pub fn run(args: DiffArgs) -> Result<ExitStatus> {
    let DiffArgs {
        a,
        b,
        judge,
        no_mouse,
        export_dir,
        graphics,
    } = args;
    let compare = judge.compare_options()?;
    let criteria = judge.criteria()?;
    let opts = sdtrace::tui::DiffOptions {
        tol: compare.tol,
        map: compare.map,
        a,
        b,
        floor: judge.noise_floor,
        criteria,
        threads: judge.threads,
        mouse: !no_mouse,
        export_dir,
        poll: std::time::Duration::from_millis(500),
        timings: std::env::var_os("SDTRACE_DIFF_TIMINGS").map(PathBuf::from),
        graphics: graphics.protocol(),
    };
    Ok(sdtrace::tui::run(opts)?)
}
