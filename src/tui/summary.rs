//! The overview's summary pane as text: title, verdict, the verdict's explanation, findings and
//! header differences, word-wrapped to a width.
//!
//! [`lines`] is the one place that decides what the pane says and on which row, so the layout
//! sizes the pane from it ([`Summary::height`]), the renderer draws it ([`draw`]) and a mouse
//! click maps a row back to its finding ([`Summary::finding_at`]) without the three
//! disagreeing. Invariants: no line is wider than the width it was made for (a single word
//! longer than that is cut by the drawing, never wrapped into nothing); every finding has at
//! least one row; the explanation is cut (ending in `…`) only to `max_explain` rows, and a
//! finding only in compact mode.

use super::app::{Analysis, App, Pane};
use super::render::put;
use crate::analysis::{Comparison, Status};
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Modifier, Style};

/// A run of text in one style.
pub type Span = (String, Style);

/// The pane's rows, and which finding each row belongs to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub rows: Vec<Vec<Span>>,
    /// For each row, the index of the finding it shows (in [`App::findings`] order).
    pub finding: Vec<Option<usize>>,
}

impl Summary {
    pub fn height(&self) -> u16 {
        self.rows.len().min(u16::MAX as usize) as u16
    }

    /// The finding shown on row `k` of the pane.
    pub fn finding_at(&self, k: usize) -> Option<usize> {
        self.finding.get(k).copied().flatten()
    }

    fn push(&mut self, rows: Vec<Vec<Span>>, finding: Option<usize>) {
        self.finding
            .extend(std::iter::repeat_n(finding, rows.len()));
        self.rows.extend(rows);
    }
}

/// Word-wrap styled spans to `width` columns; continuation rows start with `indent` spaces.
pub fn wrap(spans: &[Span], width: usize, indent: usize) -> Vec<Vec<Span>> {
    let width = width.max(1);
    let mut rows: Vec<Vec<Span>> = Vec::new();
    let mut row: Vec<Span> = Vec::new();
    let mut used = 0usize;
    for (text, style) in spans {
        // Words keep the spaces before them, so styles change exactly where the text says.
        let mut words: Vec<String> = Vec::new();
        for (i, w) in text.split(' ').enumerate() {
            match (i, words.last_mut()) {
                (0, _) => words.push(w.to_string()),
                (_, Some(last)) if last.trim().is_empty() => {
                    last.push(' ');
                    last.push_str(w);
                }
                _ => words.push(format!(" {w}")),
            }
        }
        for word in words {
            let n = word.chars().count();
            if used + n > width && used > indent && !word.trim().is_empty() {
                rows.push(std::mem::take(&mut row));
                let w = word.trim_start().to_string();
                used = indent + w.chars().count();
                row.push((" ".repeat(indent), Style::new()));
                row.push((w, *style));
            } else {
                used += n;
                match row.last_mut() {
                    Some((t, s)) if s == style => t.push_str(&word),
                    _ => row.push((word, *style)),
                }
            }
        }
    }
    if !row.is_empty() {
        rows.push(row);
    }
    rows
}

/// Cut `rows` to at most `max` rows, ending the last kept one with `…`.
fn cut(mut rows: Vec<Vec<Span>>, max: usize, width: usize) -> Vec<Vec<Span>> {
    if rows.len() <= max {
        return rows;
    }
    rows.truncate(max);
    if let Some(last) = rows.last_mut() {
        let n: usize = last.iter().map(|(t, _)| t.chars().count()).sum();
        if n + 1 > width
            && let Some((t, _)) = last.last_mut()
        {
            t.pop();
        }
        if let Some((t, _)) = last.last_mut() {
            t.push('…');
        }
    }
    rows
}

/// The summary pane for a pane `width` columns wide (text starts one column in). The
/// explanation gets at most `max_explain` rows; `compact` gives each finding one row (cut
/// with `…`), for small screens where the heatmap needs the rows.
pub fn lines(app: &App, width: u16, max_explain: usize, compact: bool) -> Summary {
    let p = app.palette();
    let w = width.saturating_sub(2) as usize;
    let focused = app.pane() == Pane::Summary;
    let head = if focused {
        p.accent().add_modifier(Modifier::REVERSED)
    } else {
        p.accent()
    };
    let mut out = Summary::default();
    let Some(a) = app.analysis() else {
        out.push(vec![vec![(" Summary ".into(), head)]], None);
        out.push(
            wrap(
                &[(
                    "reading the record summaries of both traces…".into(),
                    p.dim(),
                )],
                w,
                0,
            ),
            None,
        );
        return out;
    };
    let (c, j) = (&a.comparison, &a.judgement);
    // The title's row starts at the pane's edge, the others one column in.
    out.push(
        wrap(
            &[
                (" Summary ".into(), head),
                (
                    format!(
                        " tolerance: {} · fail on {}",
                        j.tolerance,
                        j.criteria.fail_on.name()
                    ),
                    p.dim(),
                ),
            ],
            w + 1,
            10,
        ),
        None,
    );
    let v = &j.verdict;
    out.push(wrap(&verdict_spans(app, a), w, 2), None);
    if !v.summary.is_empty() && max_explain > 0 {
        out.push(
            cut(
                wrap(&[(v.summary.clone(), Style::new())], w, 0),
                max_explain,
                w,
            ),
            None,
        );
    }
    for (i, f) in app.findings().iter().enumerate() {
        let sel = focused && i == app.summary_sel();
        let base = if sel {
            Style::new().add_modifier(Modifier::REVERSED)
        } else {
            Style::new()
        };
        let st = match f.record {
            Some(r) => p.status(j.records.get(r).map(|r| r.status)),
            None => p.dim(),
        };
        let rows = wrap(
            &[
                (format!("{:<11}", f.name), base.patch(p.accent())),
                (f.text.clone(), base.patch(st)),
            ],
            w,
            11,
        );
        out.push(if compact { cut(rows, 1, w) } else { rows }, Some(i));
    }
    let notes = header_notes(c);
    if !notes.is_empty() {
        out.push(
            wrap(
                &[(format!("headers: {}", notes.join(" · ")), p.dim())],
                w,
                2,
            ),
            None,
        );
    }
    out
}

/// The verdict and the pair counts.
fn verdict_spans(app: &App, a: &Analysis) -> Vec<Span> {
    let p = app.palette();
    let (c, j) = (&a.comparison, &a.judgement);
    let v = &j.verdict;
    let vstyle = p.status(Some(if v.passed { Status::Pass } else { Status::Fail }));
    let k = &j.counts;
    vec![
        (
            format!("verdict: {} — {}", v.class.name(), v.outcome_loud()),
            vstyle.add_modifier(Modifier::BOLD),
        ),
        (
            format!(
                " · {} pairs: {} identical, {} pass, {} fail, {} unknown · {} only A, {} only B",
                c.records.len(),
                k.identical,
                k.pass,
                k.fail,
                k.unknown,
                c.only_a.len(),
                c.only_b.len()
            ),
            p.dim(),
        ),
    ]
}

/// Header fields that differ, and what either trace lacks.
fn header_notes(c: &Comparison) -> Vec<String> {
    let mut notes: Vec<String> = c
        .header_diffs
        .iter()
        .map(|d| {
            format!(
                "{} {} ≠ {}",
                d.field,
                d.a.as_deref().unwrap_or("-"),
                d.b.as_deref().unwrap_or("-")
            )
        })
        .collect();
    // Traces from different recorders (a webui or ComfyUI add-on, the diffusers recorder,
    // `sdtrace record`): name both, first.
    let (host_a, host_b) = (c.a.host(), c.b.host());
    if host_a != host_b {
        notes.insert(0, format!("recorded by {host_a} ≠ {host_b}"));
    }
    for (name, side) in [("A", &c.a), ("B", &c.b)] {
        let n = side.incomplete_note();
        if !n.is_empty() {
            notes.push(format!("{name}{n}"));
        }
    }
    notes
}

/// Draw `s` into `area`: the first row from the pane's edge, the others one column in.
pub fn draw(s: &Summary, area: Rect, buf: &mut Buffer) {
    for (k, row) in s.rows.iter().enumerate().take(area.height as usize) {
        let y = area.y + k as u16;
        let mut x = if k == 0 { area.x } else { area.x + 1 };
        for (text, style) in row {
            x = put(buf, area, x, y, text, *style);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(rows: &[Vec<Span>]) -> Vec<String> {
        rows.iter()
            .map(|r| r.iter().map(|(t, _)| t.as_str()).collect())
            .collect()
    }

    #[test]
    fn traces_from_different_recorders_are_named_first() {
        let mut c = crate::report::fixture::comparison();
        assert!(
            !header_notes(&c)
                .iter()
                .any(|n| n.starts_with("recorded by"))
        );
        c.b.header.settings.extra.insert(
            "host".into(),
            serde_json::json!({"name": "webui", "version": "v1.10.1"}),
        );
        let a = c.a.host();
        assert_eq!(
            header_notes(&c).first().map(String::as_str),
            Some(format!("recorded by {a} ≠ webui v1.10.1").as_str())
        );
    }

    #[test]
    fn wrap_fits_the_width_and_keeps_styles() {
        let bold = Style::new().add_modifier(Modifier::BOLD);
        let rows = wrap(
            &[
                ("verdict: drift".into(), bold),
                (" · 10 pairs: 4 identical, 6 fail".into(), Style::new()),
            ],
            20,
            2,
        );
        assert_eq!(
            text(&rows),
            ["verdict: drift · 10", "  pairs: 4", "  identical, 6 fail"]
        );
        assert!(rows.iter().flatten().all(|(t, _)| t.chars().count() <= 20));
        assert_eq!(rows[0][0], ("verdict: drift".to_string(), bold));
        // A word longer than the width keeps a row of its own (the drawing clips it).
        let long = wrap(&[("a verylongword b".into(), Style::new())], 6, 0);
        assert_eq!(text(&long), ["a", "verylongword", "b"]);
        // Cutting ends the last kept row with an ellipsis, within the width.
        let cut_rows = cut(wrap(&[("one two three four".into(), bold)], 8, 0), 1, 8);
        assert_eq!(text(&cut_rows), ["one two…"]);
    }
}
