//! `sdtrace report --matrix DIR_A DIR_B`: two folders of traces (from `sdtrace sweep`, one per
//! image size) compared size by size — the original report's table: for each size the verdict,
//! the first record that differs, the first over tolerance, and how far apart the final images
//! are.
//!
//! Traces pair by file name; rows are ordered by image area (names `WxH.sdt`), other names
//! after them alphabetically. A pair that cannot be compared (a damaged trace) is a row with its
//! error, not a failure of the whole table. A trace in one folder only makes the table
//! incomplete (exit 4, as `report` for records on one side only) unless `--allow-missing all`.
//! The renderers are pure functions of a [`Matrix`].

use crate::analysis::{
    AllowMissing, CompareOptions, Criteria, TolConfig, VerdictClass, compare_paths, judge,
};
use crate::exit::ExitStatus;
use serde::Serialize;
use serde_json::json;
use std::path::{Path, PathBuf};

/// Schema tag of the JSON matrix.
pub const MATRIX_SCHEMA: &str = "sdtrace.matrix/1";

/// Errors of reading the folders.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    #[error("report --matrix: {}: {what}", dir.display())]
    Dir { dir: PathBuf, what: String },
}

/// How far apart two final images are.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ImageSummary {
    pub bit_identical: bool,
    /// PSNR in dB (infinite when identical), when both images were kept in full.
    pub psnr_db: Option<f64>,
    pub ssim: Option<f64>,
}

/// One size.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MatrixRow {
    /// The trace file name both folders share.
    pub name: String,
    /// `(width, height)` when the name is `WxH.sdt`.
    pub size: Option<(u32, u32)>,
    /// Verdict class (`identical`, `noise/RNG`, …), or `error`.
    pub verdict: String,
    pub exit_code: u8,
    pub first_non_identical: Option<String>,
    pub first_over_tolerance: Option<String>,
    /// The record that creates the error (as opposed to carrying it), when one was found.
    pub source: Option<String>,
    pub image: Option<ImageSummary>,
    /// Why this pair could not be compared.
    pub error: Option<String>,
}

/// The whole table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Matrix {
    pub a: PathBuf,
    pub b: PathBuf,
    pub rows: Vec<MatrixRow>,
    /// Trace names in only one folder.
    pub only_a: Vec<String>,
    pub only_b: Vec<String>,
    /// 0 all within tolerance, 1 a divergence, 2 a pair unreadable, 3 a pair not comparable
    /// (the largest over the rows).
    pub exit_code: u8,
}

impl Matrix {
    /// The exit status of `report --matrix`: the worst over the rows (an unknown code, which
    /// no row holds, counts as unreadable).
    pub fn status(&self) -> ExitStatus {
        ExitStatus::from_code(self.exit_code).unwrap_or(ExitStatus::Usage)
    }
}

fn size_of(name: &str) -> Option<(u32, u32)> {
    let (w, h) = name.strip_suffix(".sdt")?.split_once('x')?;
    Some((w.parse().ok()?, h.parse().ok()?))
}

fn traces(dir: &Path) -> Result<Vec<String>, MatrixError> {
    let err = |what: String| MatrixError::Dir {
        dir: dir.to_path_buf(),
        what,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| err(format!("cannot read the folder: {e}")))? {
        let entry = entry.map_err(|e| err(e.to_string()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".sdt") && entry.path().is_file() {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Err(err(
            "holds no .sdt traces (write them with sdtrace sweep -o DIR)".into(),
        ));
    }
    Ok(names)
}

fn order(name: &str) -> (u8, u64, u32, String) {
    match size_of(name) {
        Some((w, h)) => (0, u64::from(w) * u64::from(h), w, name.to_string()),
        None => (1, 0, 0, name.to_string()),
    }
}

fn row(
    name: String,
    a: &Path,
    b: &Path,
    opts: &CompareOptions,
    tol: &TolConfig,
    criteria: &Criteria,
) -> MatrixRow {
    let mut r = MatrixRow {
        size: size_of(&name),
        name,
        verdict: "error".into(),
        exit_code: ExitStatus::Usage.code(),
        first_non_identical: None,
        first_over_tolerance: None,
        source: None,
        image: None,
        error: None,
    };
    let c = match compare_paths(a, b, None, opts) {
        Ok(c) => c,
        Err(e) => {
            r.error = Some(e.to_string());
            return r;
        }
    };
    let j = judge(&c, tol, criteria);
    let label = |i: Option<usize>| i.and_then(|i| c.records.get(i)).map(|p| p.label());
    r.verdict = j.verdict.class.name().into();
    r.exit_code = j.verdict.exit_code;
    r.first_non_identical = label(j.first_non_identical);
    r.first_over_tolerance = label(j.first_over_tolerance);
    r.source = label(j.source.as_ref().map(|s| s.index));
    r.image = j
        .image
        .and_then(|i| c.records.get(i))
        .map(|p| ImageSummary {
            bit_identical: p.bit_identical == Some(true),
            psnr_db: p.image.as_ref().map(|m| m.psnr_db),
            ssim: p.image.as_ref().map(|m| m.ssim),
        });
    if j.verdict.class == VerdictClass::Identical {
        r.image.get_or_insert(ImageSummary {
            bit_identical: true,
            psnr_db: None,
            ssim: None,
        });
    }
    r
}

/// Compare the traces `dir_a` and `dir_b` share, size by size.
pub fn matrix(
    dir_a: &Path,
    dir_b: &Path,
    opts: &CompareOptions,
    tol: &TolConfig,
    criteria: &Criteria,
) -> Result<Matrix, MatrixError> {
    let (na, nb) = (traces(dir_a)?, traces(dir_b)?);
    let mut both: Vec<String> = na.iter().filter(|n| nb.contains(n)).cloned().collect();
    if both.is_empty() {
        return Err(MatrixError::Dir {
            dir: dir_b.to_path_buf(),
            what: format!(
                "shares no trace name with {} (sweep both machines with the same --sizes)",
                dir_a.display()
            ),
        });
    }
    both.sort_by_key(|n| order(n));
    let rows: Vec<MatrixRow> = both
        .into_iter()
        .map(|n| {
            let (a, b) = (dir_a.join(&n), dir_b.join(&n));
            row(n, &a, &b, opts, tol, criteria)
        })
        .collect();
    let mut only_a: Vec<String> = na.iter().filter(|n| !nb.contains(n)).cloned().collect();
    let mut only_b: Vec<String> = nb.iter().filter(|n| !na.contains(n)).cloned().collect();
    only_a.sort_by_key(|n| order(n));
    only_b.sort_by_key(|n| order(n));
    let unpaired =
        !(only_a.is_empty() && only_b.is_empty()) && criteria.allow_missing != AllowMissing::All;
    Ok(Matrix {
        a: dir_a.to_path_buf(),
        b: dir_b.to_path_buf(),
        exit_code: rows
            .iter()
            .map(|r| r.exit_code)
            .chain(unpaired.then_some(ExitStatus::Incomplete.code()))
            .max()
            .unwrap_or(ExitStatus::Success.code()),
        rows,
        only_a,
        only_b,
    })
}

fn image_text(i: &Option<ImageSummary>) -> String {
    match i {
        None => "-".into(),
        Some(ImageSummary {
            bit_identical: true,
            ..
        }) => "identical".into(),
        Some(ImageSummary {
            psnr_db: Some(p),
            ssim: Some(s),
            ..
        }) => format!("PSNR {p:.1} dB, SSIM {s:.4}"),
        Some(_) => "differs".into(),
    }
}

/// The table as text.
pub fn render_matrix_text(m: &Matrix) -> String {
    let mut out = format!(
        "sdtrace report --matrix: A = {}  B = {}\n\n",
        m.a.display(),
        m.b.display()
    );
    let dash = || "-".to_string();
    let rows: Vec<[String; 5]> = m
        .rows
        .iter()
        .map(|r| {
            [
                r.size
                    .map_or_else(|| r.name.clone(), |(w, h)| format!("{w}x{h}")),
                r.verdict.clone(),
                r.first_non_identical.clone().unwrap_or_else(dash),
                r.first_over_tolerance.clone().unwrap_or_else(dash),
                r.error.clone().unwrap_or_else(|| image_text(&r.image)),
            ]
        })
        .collect();
    let head = [
        "size",
        "verdict",
        "first difference",
        "first over tolerance",
        "final image",
    ];
    let mut width = head.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            if i + 1 == cells.len() {
                s += c;
            } else {
                s += &format!("{c:<w$}  ");
            }
        }
        s.trim_end().to_string() + "\n"
    };
    out += &line(&head.map(String::from));
    for r in &rows {
        out += &line(r);
    }
    for (side, list) in [("A", &m.only_a), ("B", &m.only_b)] {
        if !list.is_empty() {
            out += &format!("\nonly in {side} (not compared): {}\n", list.join(", "));
        }
    }
    let diverged: Vec<String> = m
        .rows
        .iter()
        .filter(|r| r.verdict != "identical")
        .map(|r| {
            r.size
                .map_or_else(|| r.name.clone(), |(w, h)| format!("{w}x{h}"))
        })
        .collect();
    out += &format!(
        "\n{} of {} sizes identical{} (exit {})\n",
        m.rows.len() - diverged.len(),
        m.rows.len(),
        if diverged.is_empty() {
            String::new()
        } else {
            format!("; differ from {}", diverged[0])
        },
        m.exit_code
    );
    out
}

/// The table as Markdown.
pub fn render_matrix_markdown(m: &Matrix) -> String {
    let esc = |s: &str| s.replace('|', "\\|");
    let mut out = format!(
        "### sdtrace size matrix\n\nA = `{}`, B = `{}`\n\n| size | verdict | first difference | first over tolerance | final image |\n|---|---|---|---|---|\n",
        m.a.display(),
        m.b.display()
    );
    for r in &m.rows {
        out += &format!(
            "| {} | {} | {} | {} | {} |\n",
            r.size
                .map_or_else(|| esc(&r.name), |(w, h)| format!("{w}x{h}")),
            esc(&r.verdict),
            esc(r.first_non_identical.as_deref().unwrap_or("-")),
            esc(r.first_over_tolerance.as_deref().unwrap_or("-")),
            esc(&r.error.clone().unwrap_or_else(|| image_text(&r.image)))
        );
    }
    out
}

/// The table as JSON ([`MATRIX_SCHEMA`]).
pub fn render_matrix_json(m: &Matrix) -> String {
    let mut v = json!({"schema": MATRIX_SCHEMA});
    if let (Some(obj), Ok(serde_json::Value::Object(rest))) =
        (v.as_object_mut(), serde_json::to_value(m))
    {
        obj.extend(rest);
    }
    // Infinite PSNR (identical images) is not JSON: serde writes null.
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_order_by_area() {
        let mut names = vec![
            "1024x1024.sdt",
            "b.sdt",
            "576x576.sdt",
            "512x768.sdt",
            "640x512.sdt",
        ];
        names.sort_by_key(|n| order(n));
        assert_eq!(
            names,
            // 327 680 < 331 776 < 393 216 pixels.
            [
                "640x512.sdt",
                "576x576.sdt",
                "512x768.sdt",
                "1024x1024.sdt",
                "b.sdt"
            ]
        );
        assert_eq!(size_of("832x832.sdt"), Some((832, 832)));
        assert_eq!(size_of("run.sdt"), None);
    }

    #[test]
    fn text_table() {
        let r = |n: &str, v: &str, code| MatrixRow {
            name: n.into(),
            size: size_of(n),
            verdict: v.into(),
            exit_code: code,
            first_non_identical: (v != "identical").then(|| "noise.initial".into()),
            first_over_tolerance: None,
            source: None,
            image: Some(ImageSummary {
                bit_identical: v == "identical",
                psnr_db: Some(21.5),
                ssim: Some(0.8),
            }),
            error: None,
        };
        let m = Matrix {
            a: "gpu".into(),
            b: "cpu".into(),
            rows: vec![
                r("512x512.sdt", "identical", 0),
                r("576x576.sdt", "noise/RNG", 1),
            ],
            only_a: vec!["640x640.sdt".into()],
            only_b: vec![],
            exit_code: 1,
        };
        let t = render_matrix_text(&m);
        assert!(t.contains("512x512  identical  -"), "{t}");
        assert!(t.contains("576x576  noise/RNG  noise.initial"), "{t}");
        assert!(t.contains("PSNR 21.5 dB, SSIM 0.8000"), "{t}");
        assert!(t.contains("only in A (not compared): 640x640.sdt"), "{t}");
        assert!(
            t.contains("1 of 2 sizes identical; differ from 576x576 (exit 1)"),
            "{t}"
        );
        let md = render_matrix_markdown(&m);
        assert!(
            md.contains("| 576x576 | noise/RNG | noise.initial | - |"),
            "{md}"
        );
        let j: serde_json::Value = serde_json::from_str(&render_matrix_json(&m)).unwrap();
        assert_eq!(j["schema"], MATRIX_SCHEMA);
        assert_eq!(j["rows"][1]["size"], json!([576, 576]));
    }
}
