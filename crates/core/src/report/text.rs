//! The text report: a verdict paragraph, the noise diagnoses, then the key table, failing records
//! with the smallest passing tolerance, and what did not pair up.

use super::{Labels, failing, key_rows, sci};
use crate::analysis::{Comparison, Judgement};
use crate::escape::printable;
use std::fmt::Write;

/// Most failing records listed one by one.
const MAX_FAILING: usize = 20;

/// Most noise diagnoses listed one by one.
const MAX_NOISE: usize = 5;

/// `text` broken into lines of at most `width` columns at whitespace (a word longer than
/// `width` stands on its own line).
pub fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut col = 0;
    for word in text.split_whitespace() {
        let n = word.chars().count();
        if col > 0 && col + 1 + n > width {
            out.push('\n');
            col = 0;
        } else if col > 0 {
            out.push(' ');
            col += 1;
        }
        out.push_str(word);
        col += n;
    }
    out
}

pub fn render_text(c: &Comparison, j: &Judgement) -> String {
    let mut s = String::new();
    let labels = Labels::new(c);
    overview(&mut s, c, j);
    key_table(&mut s, c, j, &labels);
    failing_lines(&mut s, c, j, &labels);
    only_lines(&mut s, c);
    s
}

/// The traces, the verdict, the counts, the tolerance, and what differs in the headers, the
/// completeness and the noise.
fn overview(s: &mut String, c: &Comparison, j: &Judgement) {
    let v = &j.verdict;
    let outcome = v.outcome_loud();
    let _ = writeln!(
        s,
        "sdtrace report: A = {} [{}]{}  B = {} [{}]{}",
        printable(&c.a.path),
        printable(&c.a.host()),
        printable(&c.a.incomplete_note()),
        printable(&c.b.path),
        printable(&c.b.host()),
        printable(&c.b.incomplete_note())
    );
    let _ = writeln!(
        s,
        "verdict: {} — {outcome} (exit {})",
        v.class.name(),
        v.exit_code
    );
    let _ = writeln!(s, "\n{}\n", wrap(&v.summary, 100));
    let k = &j.counts;
    let _ = writeln!(
        s,
        "records   {} paired: {} identical, {} pass, {} FAIL, {} unknown, {} not compared; {} only in A, {} only in B",
        c.records.len(),
        k.identical,
        k.pass,
        k.fail,
        k.unknown,
        k.not_compared,
        c.only_a.len(),
        c.only_b.len()
    );
    let _ = writeln!(
        s,
        "tolerance {}; fail on {}",
        j.tolerance,
        j.criteria.fail_on.name()
    );
    for g in &j.gaps {
        let _ = writeln!(
            s,
            "{}   {}",
            if g.fails { "missing" } else { "allowed" },
            printable(&g.describe())
        );
    }
    if let Some(f) = &c.noise_floor {
        let _ = writeln!(
            s,
            "floor     {} (k = {})",
            printable(&f.path),
            c.compare_tol.floor_k
        );
    }
    for d in &c.header_diffs {
        let _ = writeln!(
            s,
            "header    {} differs: {} vs {}{}",
            printable(&d.field),
            printable(d.a.as_deref().unwrap_or("-")),
            printable(d.b.as_deref().unwrap_or("-")),
            if d.structural { " (structural)" } else { "" }
        );
    }
    for (r, d) in c
        .records
        .iter()
        .filter_map(|r| Some((r, r.noise.as_ref()?)))
        .filter(|(_, d)| d.class != crate::analysis::NoiseClass::Identical)
        .take(MAX_NOISE)
    {
        let _ = writeln!(
            s,
            "noise     {}: {}{}",
            r.label(),
            d.class.name(),
            d.agree_prefix
                .filter(|&k| k > 0)
                .map_or(String::new(), |k| format!(
                    " (the first {k} of {} elements agree)",
                    d.count
                ))
        );
    }
}

/// One row per key group: records, failures, the worst error and where, the status.
fn key_table(s: &mut String, c: &Comparison, j: &Judgement, labels: &Labels) {
    let rows = key_rows(c, j);
    let keys: Vec<String> = rows
        .iter()
        .map(|r| printable(&r.key).into_owned())
        .collect();
    // Padded by hand below: a format width cannot exceed 65 535.
    let kw = keys
        .iter()
        .map(|k| k.chars().count())
        .max()
        .unwrap_or(3)
        .max(3);
    let pad = |k: &str| format!("{k}{}", " ".repeat(kw - k.chars().count().min(kw)));
    let _ = writeln!(
        s,
        "\n{}  {:>5}  {:>5}  {:>9}  {:<22}  {:<12}  source",
        pad("key"),
        "recs",
        "fail",
        "worst",
        "at",
        "status"
    );
    for (r, key) in rows.iter().zip(&keys) {
        let (worst, at) = match r.worst {
            Some((e, i)) => (sci(Some(e)), labels.at(&c.records[i])),
            None => ("-".to_string(), String::new()),
        };
        let line = format!(
            "{}  {:>5}  {:>5}  {:>9}  {:<22}  {:<12}  {}",
            pad(key),
            r.records,
            r.fail,
            worst,
            at,
            r.status(),
            if r.source { "<- source" } else { "" }
        );
        let _ = writeln!(s, "{}", line.trim_end());
    }
}

/// The failing records with the smallest tolerance that would have passed each.
fn failing_lines(s: &mut String, c: &Comparison, j: &Judgement, labels: &Labels) {
    let fails = failing(j);
    if !fails.is_empty() {
        let _ = writeln!(
            s,
            "\nfailing records (smallest tolerance that would have passed):"
        );
        for &i in fails.iter().take(MAX_FAILING) {
            let r = &c.records[i];
            let rj = &j.records[i];
            let need = rj.required.map_or(String::new(), |q| {
                format!(
                    "needs rel ≥ {} or abs ≥ {}",
                    sci(Some(q.rel)),
                    sci(Some(q.abs))
                )
            });
            let _ = writeln!(
                s,
                "  {}: rel L2 {}{} ({}), abs {}; {need}{}",
                labels.of(r),
                sci(r.rel_l2),
                r.rel_l2_error
                    .map_or(String::new(), |e| format!(" ±{:.0}%", e * 100.0)),
                serde_json::to_value(r.basis)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                sci(r.abs_error),
                rj.reason
                    .as_ref()
                    .map_or(String::new(), |w| format!(" [{w}]"))
            );
        }
        if fails.len() > MAX_FAILING {
            let _ = writeln!(s, "  … and {} more", fails.len() - MAX_FAILING);
        }
    }
}

/// The records only one trace holds.
fn only_lines(s: &mut String, c: &Comparison) {
    for (side, list) in [("A", &c.only_a), ("B", &c.only_b)] {
        if list.is_empty() {
            continue;
        }
        let shown: Vec<String> = list.iter().take(10).map(|r| r.label()).collect();
        let _ = writeln!(
            s,
            "\nonly in {side} ({}): {}{}",
            list.len(),
            shown.join(", "),
            if list.len() > 10 {
                format!(", … and {} more", list.len() - 10)
            } else {
                String::new()
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture;

    #[test]
    fn text_report_snapshot_lines() {
        let (c, j) = fixture::judged();
        let t = render_text(&c, &j);
        let flat = t.split_whitespace().collect::<Vec<_>>().join(" ");
        for want in [
            "verdict: numeric drift — DIVERGES (exit 1)",
            "Numeric drift (device.device cpu vs cuda:0) from step 1 unet.mid_block.",
            "Error is created at step 1 unet.mid_block: relative L2 1.00e-3 from an identical input, over tolerance.",
            "The latent error grows from step 2 to step 4, ×4.00 per step (R² 1.00).",
            "records   10 paired: 4 identical, 0 pass, 6 FAIL, 0 unknown, 0 not compared; 0 only in A, 1 only in B",
            "header    device.device differs: cpu vs cuda:0",
            "tolerance per-dtype defaults; fail on first-exceed",
            "noise.initial       1      0          0                          identical\n",
            "unet.mid_block      4      3    1.60e-2  step 3                  FAIL          <- source",
            "  step 1 unet.mid_block: rel L2 1.00e-3 ±4% (sketch), abs 2.00e-3; needs rel ≥ 1.00e-3 or abs ≥ 2.00e-3",
            "only in B (1): vae.decoder",
        ] {
            assert!(
                t.contains(want) || flat.contains(want),
                "missing {want:?} in\n{t}"
            );
        }
        assert!(wrap(&"word ".repeat(50), 20).lines().all(|l| l.len() <= 20));
    }
}
