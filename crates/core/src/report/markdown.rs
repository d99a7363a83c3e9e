//! The Markdown report, sized for a CI step summary (`$GITHUB_STEP_SUMMARY`): verdict, the
//! localisation facts, failing keys first in the key table (at most 40 rows), failing records
//! in a collapsed section.

use super::{Labels, failing, key_rows, sci};
use crate::analysis::{Comparison, Judgement};
use crate::exit::ExitStatus;
use std::fmt::Write;

const MAX_ROWS: usize = 40;

/// Most failing records listed in the collapsed section.
const MAX_FAILING: usize = 100;

/// Escape table cell text.
fn cell(s: &str) -> String {
    crate::escape::printable(s).replace('|', "\\|")
}

pub fn render_markdown(c: &Comparison, j: &Judgement) -> String {
    let mut s = String::new();
    overview(&mut s, c, j);
    key_table(&mut s, c, j);
    failing_table(&mut s, c, j);
    s
}

/// The heading with the outcome, the verdict, and the table of traces, counts, tolerance,
/// completeness, localisation and header differences.
fn overview(s: &mut String, c: &Comparison, j: &Judgement) {
    let v = &j.verdict;
    let mark = format!(
        "{} {}",
        match v.status() {
            ExitStatus::Success => "✅",
            ExitStatus::NotComparable => "⚠️",
            _ => "❌",
        },
        v.outcome()
    );
    let _ = writeln!(s, "## sdtrace report: {mark} ({})\n", v.class.name());
    let _ = writeln!(s, "{}\n", cell(&v.summary));
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(
        s,
        "| A | `{}` ({}){} |",
        cell(&c.a.path),
        cell(&c.a.host()),
        cell(&c.a.incomplete_note())
    );
    let _ = writeln!(
        s,
        "| B | `{}` ({}){} |",
        cell(&c.b.path),
        cell(&c.b.host()),
        cell(&c.b.incomplete_note())
    );
    let k = &j.counts;
    let _ = writeln!(
        s,
        "| records | {} paired: {} identical, {} pass, {} fail, {} unknown; {} only in A, {} only in B |",
        c.records.len(),
        k.identical,
        k.pass,
        k.fail,
        k.unknown,
        c.only_a.len(),
        c.only_b.len()
    );
    let _ = writeln!(s, "| tolerance | {} |", cell(&j.tolerance));
    for g in &j.gaps {
        let _ = writeln!(
            s,
            "| {} | {} |",
            if g.fails {
                "missing"
            } else {
                "allowed missing"
            },
            cell(&g.describe())
        );
    }
    let lbl = |i: Option<usize>| i.map_or("-".to_string(), |i| c.records[i].label());
    let _ = writeln!(
        s,
        "| first non-identical | {} |",
        lbl(j.first_non_identical)
    );
    let _ = writeln!(
        s,
        "| first over tolerance | {} |",
        lbl(j.first_over_tolerance)
    );
    let _ = writeln!(
        s,
        "| source | {} |",
        lbl(j.source.as_ref().map(|x| x.index))
    );
    if let Some(a) = &j.amplification {
        let _ = writeln!(
            s,
            "| amplification | from step {} to {}, ×{:.2}/step (R² {:.2}) |",
            a.onset_step, a.end_step, a.rate_per_step, a.r2
        );
    }
    for d in &c.header_diffs {
        let _ = writeln!(
            s,
            "| header `{}` | {} vs {}{} |",
            cell(&d.field),
            cell(d.a.as_deref().unwrap_or("-")),
            cell(d.b.as_deref().unwrap_or("-")),
            if d.structural { " (structural)" } else { "" }
        );
    }
}

/// The key groups, failing ones first, at most [`MAX_ROWS`].
fn key_table(s: &mut String, c: &Comparison, j: &Judgement) {
    let mut rows = key_rows(c, j);
    rows.sort_by_key(|r| (r.fail == 0, r.first_fail));
    let _ = writeln!(
        s,
        "\n| key | records | fail | worst rel L2 | at | status |\n|---|---:|---:|---:|---|---|"
    );
    for r in rows.iter().take(MAX_ROWS) {
        let (w, at) = r.worst.map_or(("-".into(), "-".into()), |(e, i)| {
            (sci(Some(e)), c.records[i].label())
        });
        let _ = writeln!(
            s,
            "| `{}`{} | {} | {} | {w} | {} | {} |",
            cell(&r.key),
            if r.source { " **(source)**" } else { "" },
            r.records,
            r.fail,
            cell(&at),
            r.status()
        );
    }
    if rows.len() > MAX_ROWS {
        let _ = writeln!(
            s,
            "\n… {} more keys (see the JSON or HTML report).",
            rows.len() - MAX_ROWS
        );
    }
}

/// The failing records in a folded table, with the smallest passing tolerance of each.
fn failing_table(s: &mut String, c: &Comparison, j: &Judgement) {
    let fails = failing(j);
    if !fails.is_empty() {
        let _ = writeln!(
            s,
            "\n<details><summary>{} failing records (smallest passing tolerance)</summary>\n",
            fails.len()
        );
        let _ = writeln!(s, "| record | rel L2 | abs | needs |\n|---|---:|---:|---|");
        let labels = Labels::new(c);
        for &i in fails.iter().take(MAX_FAILING) {
            let r = &c.records[i];
            let need = j.records[i].required.map_or("-".into(), |q| {
                format!("rel ≥ {} or abs ≥ {}", sci(Some(q.rel)), sci(Some(q.abs)))
            });
            let _ = writeln!(
                s,
                "| {} | {} | {} | {need} |",
                cell(&labels.of(r)),
                sci(r.rel_l2),
                sci(r.abs_error)
            );
        }
        if fails.len() > MAX_FAILING {
            let _ = writeln!(
                s,
                "\n… and {} more (see the JSON or HTML report).",
                fails.len() - MAX_FAILING
            );
        }
        let _ = writeln!(s, "\n</details>");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture;

    #[test]
    fn markdown_report() {
        let (c, j) = fixture::judged();
        let m = render_markdown(&c, &j);
        assert!(
            m.starts_with("## sdtrace report: ❌ diverges (numeric drift)\n"),
            "{m}"
        );
        for want in [
            "| source | step 1 unet.mid_block |",
            "| amplification | from step 2 to 4, ×4.00/step (R² 1.00) |",
            "| `unet.mid_block` **(source)** | 4 | 3 | 1.60e-2 | step 3 unet.mid_block | FAIL |",
            "<details><summary>6 failing records",
        ] {
            assert!(m.contains(want), "missing {want:?} in\n{m}");
        }
        // Failing keys come first.
        let first_row = m.lines().find(|l| l.starts_with("| `")).unwrap();
        assert!(first_row.contains("unet.mid_block"), "{first_row}");
    }
}
