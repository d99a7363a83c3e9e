//! `sdtrace report`: compare two traces (or re-judge a saved comparison, or two sweep folders
//! size by size) and render the verdict in one of the report formats.

use super::emit;
use anyhow::{Context, Result, bail};
use sdtrace::analysis::{Comparison, PairRecord, compare_paths, judge};
use sdtrace::exit::ExitStatus;
use sdtrace::export::write_atomic;
use sdtrace::image::ImageTensor;
use sdtrace::report::{
    Format, ReportExtras, ReportImages, ReportNoise, noise_picture_record, render,
};
use sdtrace::trace::TraceReader;
use std::path::{Path, PathBuf};

/// The help text after the flags; the default tolerances come from the table that applies them
/// ([`sdtrace::analysis::defaults_text`]).
pub fn help() -> String {
    let text = format!(
        "Records pair by (step, eval, key). A record fails when its relative L2 error exceeds rel \
         AND its absolute error exceeds abs; default tolerances per dtype: {}. The JSON schema \
         is in docs/REPORT.md.",
        sdtrace::analysis::defaults_text()
    );
    sdtrace::report::wrap(&text, 96)
}

/// Flags of `sdtrace report`.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Trace A, the reference (.sdt)
    #[arg(required_unless_present = "from")]
    a: Option<PathBuf>,
    /// Trace B, the run under test (.sdt)
    #[arg(required_unless_present = "from")]
    b: Option<PathBuf>,
    /// Output format
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = super::values::ReportFormat::Text)]
    format: super::values::ReportFormat,
    /// Write the report to FILE instead of stdout
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    #[command(flatten)]
    judge: super::judge::JudgeArgs,
    /// Also save all metrics as JSON, to re-judge later with --from
    #[arg(long, value_name = "FILE")]
    save: Option<PathBuf>,
    /// Re-judge a comparison saved with --save instead of reading traces
    #[arg(long, value_name = "FILE", conflicts_with_all = ["a", "b", "noise_floor", "map"])]
    from: Option<PathBuf>,
    /// A and B are folders of traces (sdtrace sweep -o DIR): compare them size by size and
    /// print the size × verdict table (text, json or markdown)
    #[arg(long, conflicts_with_all = ["from", "save", "noise_floor"])]
    matrix: bool,
}

/// Run the command.
pub fn run(args: ReportArgs) -> Result<ExitStatus> {
    let ReportArgs {
        a,
        b,
        format,
        output,
        judge: flags,
        save,
        from,
        matrix,
    } = args;
    let format = Format::from(format);
    let tols = flags.tolerances()?;
    let criteria = flags.criteria()?;
    if matrix {
        let (Some(a), Some(b)) = (&a, &b) else {
            bail!("report --matrix needs two folders: DIR_A DIR_B");
        };
        let m = sdtrace::report::matrix::matrix(a, b, &flags.compare_options()?, &tols, &criteria)?;
        let text = match format {
            Format::Text => sdtrace::report::matrix::render_matrix_text(&m),
            Format::Json => sdtrace::report::matrix::render_matrix_json(&m),
            Format::Markdown => sdtrace::report::matrix::render_matrix_markdown(&m),
            _ => bail!("report --matrix writes text, json or markdown"),
        };
        match &output {
            Some(path) => write_atomic(path, text.as_bytes())
                .with_context(|| format!("-o {}", path.display()))?,
            None => emit(&text)?,
        }
        return Ok(m.status());
    }
    let comparison = match (&from, &a, &b) {
        (Some(f), _, _) => Comparison::load(f)?,
        (None, Some(a), Some(b)) => compare_paths(
            a,
            b,
            flags.noise_floor.as_deref(),
            &flags.compare_options()?,
        )?,
        _ => bail!("report needs two traces (A B) or --from FILE"),
    };
    if let Some(path) = &save {
        write_atomic(path, comparison.to_json().as_bytes())
            .with_context(|| format!("--save {}", path.display()))?;
    }
    let judgement = judge(&comparison, &tols, &criteria);
    let extras = match (format, &from, &a, &b) {
        (Format::Html, None, Some(a), Some(b)) => ReportExtras {
            images: report_images(a, b),
            noise: noise_picture_record(&comparison, &judgement)
                .and_then(|i| report_noise(a, b, &comparison.records[i])),
        },
        _ => ReportExtras::default(),
    };
    let text = render(format, &comparison, &judgement, &extras);
    match &output {
        Some(path) => {
            write_atomic(path, text.as_bytes())
                .with_context(|| format!("-o {}", path.display()))?;
            eprintln!(
                "{}: {} (exit {}); report written to {}",
                judgement.verdict.class.name(),
                if judgement.verdict.passed {
                    "within tolerance"
                } else {
                    "see the report"
                },
                judgement.verdict.exit_code,
                path.display()
            );
        }
        None => emit(&text)?,
    }
    Ok(judgement.verdict.status())
}

/// Largest image payload the HTML report reads per trace.
const REPORT_IMAGE_LIMIT: u64 = 64 << 20;

/// The last `image` record of a trace, when it was kept in full.
fn final_image(path: &Path) -> Result<Option<ImageTensor>> {
    let r = TraceReader::open(path)?;
    let Some(entry) = r.entries().iter().rev().find(|e| &*e.key == "image") else {
        return Ok(None);
    };
    let meta = r.read_meta(entry)?;
    match meta.payload {
        None => return Ok(None),
        Some(p) if p.raw_len > REPORT_IMAGE_LIMIT => {
            bail!(
                "{}: the image is {} bytes, over the report's {REPORT_IMAGE_LIMIT}",
                path.display(),
                p.raw_len
            )
        }
        Some(_) => {}
    }
    let Some(data) = r.read_payload(&meta)? else {
        return Ok(None);
    };
    Ok(Some(
        ImageTensor::from_record(meta.dtype, &meta.shape, &data)
            .with_context(|| format!("{}: record 'image'", path.display()))?,
    ))
}

/// Both traces' final images for the HTML report; a problem is a note, not an error.
fn report_images(a: &Path, b: &Path) -> Option<ReportImages> {
    let result = (|| -> Result<Option<ReportImages>> {
        let (Some(ia), Some(ib)) = (final_image(a)?, final_image(b)?) else {
            return Ok(None);
        };
        Ok(Some(
            ReportImages::from_records(&ia, &ib).map_err(anyhow::Error::msg)?,
        ))
    })();
    result.unwrap_or_else(|e| {
        eprintln!("note: the report shows no final images: {e:#}");
        None
    })
}

/// Largest noise payload the HTML report reads per trace (the noise diagnosis' limit).
const REPORT_NOISE_LIMIT: u64 = 16 << 20;

/// Both traces' payloads of the noise record `rec` (found by execution order, so key maps do
/// not matter) for the HTML report's noise picture; a problem is a note, not an error.
fn report_noise(a: &Path, b: &Path, rec: &PairRecord) -> Option<ReportNoise> {
    let read = |path: &Path, order: u64| -> Result<(sdtrace::DType, Vec<u64>, Vec<u8>)> {
        let r = TraceReader::open(path)?;
        let entry = r
            .entries()
            .iter()
            .find(|e| e.order == order)
            .with_context(|| format!("{}: no record {}", path.display(), rec.label()))?;
        let meta = r.read_meta(entry)?;
        match meta.payload {
            None => bail!(
                "{}: {} was recorded without its payload",
                path.display(),
                rec.label()
            ),
            Some(p) if p.raw_len > REPORT_NOISE_LIMIT => bail!(
                "{}: {} is {} bytes, over the report's {REPORT_NOISE_LIMIT}",
                path.display(),
                rec.label(),
                p.raw_len
            ),
            Some(_) => {}
        }
        let data = r
            .read_payload(&meta)?
            .with_context(|| format!("{}: {} has no payload", path.display(), rec.label()))?;
        Ok((meta.dtype, meta.shape.clone(), data))
    };
    let result = (|| -> Result<ReportNoise> {
        let (da, sa, pa) = read(a, rec.order_a)?;
        let (db, sb, pb) = read(b, rec.order_b)?;
        Ok(ReportNoise::from_payloads(
            &rec.label(),
            (da, &sa, &pa),
            (db, &sb, &pb),
        )?)
    })();
    result
        .map_err(|e| eprintln!("note: the report shows no noise picture: {e:#}"))
        .ok()
}
