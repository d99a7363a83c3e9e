//! Screen geometry: where each pane of a view goes for a given terminal size.
//!
//! One function ([`Layout::new`]) decides the rectangles, and both the renderers and the mouse
//! hit-testing ([`Layout::hit`]) read them, so a click always lands on what is drawn there.
//! The overview fits 80×24 (summary on top, heatmap below); from 120 columns the summary and
//! the cell detail move to a right-hand column and the heatmap takes the full height, keeping
//! the width its cells can use and leaving the rest to the summary. The summary's height is
//! that of its text at the chosen width ([`summary::lines`]).
//! Invariant: every rectangle lies within the screen area (possibly empty).

use super::app::{App, Pane, View};
use super::summary;
use ratatui::layout::Rect;

/// Width of the right-hand column on wide screens.
const SIDE: u16 = 46;
/// From this width the overview uses the side column.
const WIDE: u16 = 120;

/// What a screen position shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hit {
    /// A heatmap cell: row index into `App::rows`, column index of the grid.
    Cell { row: usize, col: usize },
    /// A key tree label.
    Label { row: usize },
    /// A line of the summary's findings list.
    Finding(usize),
}

/// Rectangles of one frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub title: Rect,
    pub footer: Rect,
    /// Everything between the title and the footer.
    pub body: Rect,
    pub summary: Rect,
    /// Step numbers above the cells.
    pub header: Rect,
    /// Tree labels (one per row).
    pub labels: Rect,
    /// Heatmap cells.
    pub grid: Rect,
    pub legend: Rect,
    /// The selected cell's numbers.
    pub detail: Rect,
    /// Columns per heatmap cell (1 to 6: wide terminals give few steps wide cells).
    pub cw: u16,
    /// Rows the summary gives the verdict's explanation.
    pub explain: usize,
    /// The summary gives each finding one row.
    pub compact: bool,
}

fn take_top(r: &mut Rect, h: u16) -> Rect {
    let h = h.min(r.height);
    let out = Rect::new(r.x, r.y, r.width, h);
    r.y += h;
    r.height -= h;
    out
}

fn take_bottom(r: &mut Rect, h: u16) -> Rect {
    let h = h.min(r.height);
    r.height -= h;
    Rect::new(r.x, r.y + r.height, r.width, h)
}

fn take_left(r: &mut Rect, w: u16) -> Rect {
    let w = w.min(r.width);
    let out = Rect::new(r.x, r.y, w, r.height);
    r.x += w;
    r.width -= w;
    out
}

fn take_right(r: &mut Rect, w: u16) -> Rect {
    let w = w.min(r.width);
    r.width -= w;
    Rect::new(r.x + r.width, r.y, w, r.height)
}

/// Display width of the widest tree label (over all nodes, so that folding does not move
/// the heatmap; over the matching keys while filtering).
pub fn label_width(app: &App) -> u16 {
    let Some(a) = app.analysis() else { return 12 };
    let filtered = !app.filter().is_empty();
    let rows: Vec<usize> = if filtered {
        app.rows()
    } else {
        (0..a.grid.nodes.len()).collect()
    };
    rows.iter()
        .map(|&n| {
            let node = &a.grid.nodes[n];
            let text = if filtered {
                node.path.chars().count()
            } else {
                node.label.chars().count() + 2 * node.depth
            };
            // status mark + space + fold mark + space + text + space
            (text + 5) as u16
        })
        .max()
        .unwrap_or(12)
}

impl Layout {
    pub fn new(area: Rect, app: &App) -> Self {
        let mut rest = area;
        let mut l = Layout {
            title: take_top(&mut rest, 1),
            footer: take_bottom(&mut rest, 1),
            cw: 1,
            ..Layout::default()
        };
        l.body = rest;
        if app.view() != View::Overview {
            return l;
        }
        let mut heat = rest;
        let focused = app.pane() == Pane::Summary;
        if area.width >= WIDE {
            // The heatmap keeps what its cells can use; the summary gets the rest (at least
            // SIDE, at most half the screen), so the verdict is not clipped beside empty space.
            let ncols = app.analysis().map_or(0, |a| a.grid.columns()) as u16;
            let need = label_width(app)
                .min(44)
                .saturating_add(ncols.saturating_mul(6))
                .saturating_add(2);
            let side_w = area.width.saturating_sub(need).clamp(SIDE, area.width / 2);
            let mut side = take_right(&mut heat, side_w);
            let base = summary::lines(app, side_w, 0, false).height();
            // Keep five rows for the cell detail below.
            l.explain = side.height.saturating_sub(base + 1 + 5).max(2) as usize;
            let h = summary::lines(app, side_w, l.explain, false).height();
            l.summary = take_top(&mut side, h + 1);
            l.detail = side;
        } else {
            // Unfocused, two rows of the explanation and one per finding (the heatmap needs
            // the room); with Tab, everything that leaves the heatmap a few rows.
            l.compact = !focused;
            let base = summary::lines(app, area.width, 0, l.compact).height();
            let room = heat.height.saturating_sub(base + 8) as usize;
            l.explain = if focused { room.max(2) } else { 2 };
            let h = summary::lines(app, area.width, l.explain, l.compact).height();
            l.summary = take_top(&mut heat, h);
            l.detail = take_bottom(&mut heat, 2);
        }
        l.legend = take_bottom(&mut heat, 1);
        // Block title line of the heatmap, then the step header.
        let _title = take_top(&mut heat, 1);
        l.header = take_top(&mut heat, 1);
        let ncols = app.analysis().map_or(0, |a| a.grid.columns()) as u16;
        let lw = label_width(app)
            .max(12)
            .min(heat.width.saturating_mul(9) / 20)
            .min(44);
        l.labels = take_left(&mut heat, lw);
        l.grid = heat;
        l.header = Rect::new(l.grid.x, l.header.y, l.grid.width, l.header.height);
        l.cw = l.grid.width.checked_div(ncols).map_or(1, |w| w.clamp(1, 6));
        l
    }

    /// Heatmap rows that fit.
    pub fn heat_rows(&self) -> usize {
        self.grid.height as usize
    }

    /// Heatmap columns that fit.
    pub fn heat_cols(&self) -> usize {
        (self.grid.width / self.cw.max(1)) as usize
    }

    /// What is at screen position (x, y) of the overview.
    pub fn hit(&self, x: u16, y: u16, app: &App) -> Option<Hit> {
        let inside = |r: Rect| x >= r.x && x < r.x + r.width && y >= r.y && y < r.y + r.height;
        if inside(self.grid) {
            let row = app.scroll_row() + (y - self.grid.y) as usize;
            let col = app.scroll_col() + ((x - self.grid.x) / self.cw.max(1)) as usize;
            let ncols = app.analysis().map_or(0, |a| a.grid.columns());
            if row < app.rows().len() && col < ncols {
                return Some(Hit::Cell { row, col });
            }
            return None;
        }
        if inside(self.labels) {
            let row = app.scroll_row() + (y - self.labels.y) as usize;
            return (row < app.rows().len()).then_some(Hit::Label { row });
        }
        if inside(self.summary) {
            let k = (y - self.summary.y) as usize;
            return summary::lines(app, self.summary.width, self.explain, self.compact)
                .finding_at(k)
                .map(Hit::Finding);
        }
        None
    }
}
