//! The application state of `sdtrace diff` and its transitions.
//!
//! [`App`] holds everything the screen shows: the current [`Comparison`] and its
//! [`Judgement`] (re-judged in place when the tolerance changes; never re-derived), the heatmap
//! [`Grid`], the cursor, the view stack, prompts, progress and loaded details. Input arrives as
//! crossterm events ([`App::handle_key`], [`App::handle_mouse`]) and results of background work
//! as method calls ([`App::set_comparison`], [`App::update_pair`], [`App::set_detail`]); each
//! returns an [`Effect`] for the caller to carry out (quit, load a tensor, export). No I/O
//! happens here, so every transition is testable without a terminal.
//!
//! Invariants: the cursor row indexes [`App::rows`] and the column [`Grid::columns`] (both
//! clamped after every change, and the scroll offsets show them); `judgement` always belongs
//! to `comparison` and the current tolerance. The fields are private, so only the transitions
//! here change them; the layout, the renderers and the run loop read them through accessors.

use super::keys::{Action, Scope, lookup};
use super::layout::{Hit, Layout};
use super::model::{CellStat, Findings, Grid, Metric, StatCache, decade_range};
use super::palette::Palette;
use crate::analysis::{
    Comparison, Criteria, Judgement, PairRecord, Status, TolConfig, TolSpec, judge,
};
use crossterm::event::{KeyEvent, KeyModifiers, MouseButton, MouseEvent, MouseEventKind};
use ratatui::layout::Rect;
use std::collections::{HashMap, HashSet};

/// The screens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum View {
    Overview,
    Layer,
    Tensor,
    Noise,
    Image,
}

/// Panes of the overview that Tab moves between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pane {
    Heatmap,
    Summary,
}

/// A line of text being typed.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    Filter { text: String, before: String },
    Tolerance { text: String, before: TolConfig },
}

impl Prompt {
    pub fn text(&self) -> &str {
        match self {
            Prompt::Filter { text, .. } | Prompt::Tolerance { text, .. } => text,
        }
    }

    fn text_mut(&mut self) -> &mut String {
        match self {
            Prompt::Filter { text, .. } | Prompt::Tolerance { text, .. } => text,
        }
    }
}

/// Readline's Ctrl-w: delete the separators at the end, then the word before them. Words are
/// separated by spaces and by the separators of keys and tolerances (`.`, `,`, `=`); the
/// separator before the deleted word stays, so `unet.mid_block` becomes `unet.`.
fn delete_word(text: &mut String) {
    let sep = |c: char| c == ' ' || c == '.' || c == ',' || c == '=';
    let end = text.trim_end_matches(sep).len();
    text.truncate(end);
    let keep = text.rfind(sep).map_or(0, |i| i + 1);
    text.truncate(keep);
}

/// Where the background comparison is.
#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    /// Reading record summaries (nothing to show yet).
    Summaries,
    /// Summaries shown; payload metrics being computed.
    Payloads,
    /// Everything measured.
    Done,
    /// Everything measured so far; the traces are still being recorded and are watched.
    Following,
    Failed(String),
}

/// Progress numbers of the payload pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub pairs_done: usize,
    pub pairs_total: usize,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// Background work the app asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Request {
    Tensor(usize),
    Noise(usize),
    Image(usize),
}

/// What the caller must do after a transition.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    None,
    Quit,
    Load(Request),
    /// Export record `i` of both traces.
    Export(usize),
}

/// A line shown in the footer until the next key.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub text: String,
    pub error: bool,
}

/// A detail being loaded or loaded.
#[derive(Clone, Debug, PartialEq)]
pub enum Loadable<T> {
    Loading,
    Ready(T),
    Failed(String),
}

/// Details computed from payloads or record frames by the loader.
#[derive(Clone, Debug, PartialEq)]
pub enum Detail {
    Tensor(Box<super::detail::TensorDetail>),
    Noise(Box<super::detail::NoiseDetail>),
    Image(Box<super::detail::ImageDetail>),
}

/// The comparison, its judgement and what is derived from them.
#[derive(Clone, Debug)]
pub struct Analysis {
    pub comparison: Comparison,
    pub judgement: Judgement,
    pub grid: Grid,
    pub findings: Findings,
}

/// Settings fixed for a session.
#[derive(Clone, Debug)]
pub struct AppOptions {
    pub a: String,
    pub b: String,
    pub tol: TolConfig,
    pub criteria: Criteria,
    pub palette: Palette,
    pub mouse: bool,
}

/// One item of the summary pane's findings list.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub name: &'static str,
    pub record: Option<usize>,
    pub text: String,
}

/// The state of one `sdtrace diff` session. Fields are private so that the invariants of the
/// module doc hold: they change only through the transitions below, and renderers read them
/// through the accessors.
pub struct App {
    opts: AppOptions,
    analysis: Option<Analysis>,
    tol: TolConfig,
    phase: Phase,
    counts: Counts,
    view: View,
    back: Vec<View>,
    pane: Pane,
    row: usize,
    col: usize,
    scroll_row: usize,
    scroll_col: usize,
    /// Groups whose expansion differs from the default (top level expanded, deeper collapsed).
    toggled: HashSet<String>,
    filter: String,
    prompt: Option<Prompt>,
    metric: Metric,
    help: bool,
    help_scroll: usize,
    summary_sel: usize,
    message: Option<Message>,
    details: HashMap<Request, Loadable<Detail>>,
    /// Screen size the last layout was made for.
    area: Rect,
    /// Pair updates arrived since the last judgement.
    stale: bool,
    /// Decade range of each metric over all records, cached per judgement.
    scales: HashMap<Metric, Option<(i32, i32)>>,
    /// Cell statistics of the current judgement and metric (empty when stale).
    cache: StatCache,
    /// The user has moved the cursor or left the overview: new findings no longer move it.
    user_moved: bool,
}

impl App {
    pub fn new(opts: AppOptions) -> Self {
        App {
            tol: opts.tol.clone(),
            opts,
            analysis: None,
            phase: Phase::Summaries,
            counts: Counts::default(),
            view: View::Overview,
            back: Vec::new(),
            pane: Pane::Heatmap,
            row: 0,
            col: 0,
            scroll_row: 0,
            scroll_col: 0,
            toggled: HashSet::new(),
            filter: String::new(),
            prompt: None,
            metric: Metric::RelL2,
            help: false,
            help_scroll: 0,
            summary_sel: 0,
            message: None,
            details: HashMap::new(),
            area: Rect::new(0, 0, 80, 24),
            stale: false,
            scales: HashMap::new(),
            cache: StatCache::default(),
            user_moved: false,
        }
    }

    pub fn palette(&self) -> Palette {
        self.opts.palette
    }

    // ----- read-only state, for the layout, the renderers and the run loop ---------------

    pub fn opts(&self) -> &AppOptions {
        &self.opts
    }

    /// The comparison, its judgement, grid and findings (`None` until the first arrives).
    pub fn analysis(&self) -> Option<&Analysis> {
        self.analysis.as_ref()
    }

    /// The tolerance the judgement was made with (the prompt's, while typing).
    pub fn tol(&self) -> &TolConfig {
        &self.tol
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    pub fn view(&self) -> View {
        self.view
    }

    pub fn pane(&self) -> Pane {
        self.pane
    }

    /// The cursor's row: an index into [`App::rows`] (0 when there are none).
    pub fn row(&self) -> usize {
        self.row
    }

    /// The cursor's column of the grid.
    pub fn col(&self) -> usize {
        self.col
    }

    /// The first heatmap row shown.
    pub fn scroll_row(&self) -> usize {
        self.scroll_row
    }

    /// The first heatmap column shown.
    pub fn scroll_col(&self) -> usize {
        self.scroll_col
    }

    /// The key filter (empty: the tree).
    pub fn filter(&self) -> &str {
        &self.filter
    }

    pub fn prompt(&self) -> Option<&Prompt> {
        self.prompt.as_ref()
    }

    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// The help overlay is open.
    pub fn help(&self) -> bool {
        self.help
    }

    pub fn help_scroll(&self) -> usize {
        self.help_scroll
    }

    /// The selected finding of the summary pane.
    pub fn summary_sel(&self) -> usize {
        self.summary_sel
    }

    pub fn message(&self) -> Option<&Message> {
        self.message.as_ref()
    }

    /// A detail asked for, loading or loaded.
    pub fn detail(&self, req: Request) -> Option<&Loadable<Detail>> {
        self.details.get(&req)
    }

    /// The screen size the layout is made for.
    pub fn area(&self) -> Rect {
        self.area
    }

    /// Pair updates arrived since the last judgement.
    pub fn stale(&self) -> bool {
        self.stale
    }

    // ----- data arriving from the background -------------------------------------------

    /// A new comparison: the summaries pass, the final payload pass, or a reload of a trace
    /// that grew. The cursor stays on the same key and step when they still exist.
    pub fn set_comparison(&mut self, c: Comparison, phase: Phase) {
        let here = self.cursor_place();
        let same_layout = self.analysis.as_ref().is_some_and(|a| {
            a.comparison.records.len() == c.records.len()
                && a.comparison.only_a.len() == c.only_a.len()
                && a.comparison.only_b.len() == c.only_b.len()
                && a.comparison
                    .records
                    .iter()
                    .zip(&c.records)
                    .all(|(x, y)| x.key == y.key && x.step == y.step && x.eval == y.eval)
        });
        let grid = match (&self.analysis, same_layout) {
            (Some(a), true) => a.grid.clone(),
            _ => {
                // Records indices may have moved: loaded details no longer match.
                self.details.clear();
                Grid::new(&c)
            }
        };
        let judgement = judge(&c, &self.tol, &self.opts.criteria);
        let findings = Findings::of(&c, &judgement);
        self.analysis = Some(Analysis {
            comparison: c,
            judgement,
            grid,
            findings,
        });
        self.scales.clear();
        self.cache = StatCache::default();
        self.stale = false;
        self.phase = phase;
        match here {
            Some((key, step)) if self.user_moved => self.place_cursor(&key, step),
            _ => self.clamp(),
        }
        self.follow_findings();
    }

    /// Until the user moves it, the cursor follows the findings as they arrive (the summaries
    /// pass, pair updates, the payload pass): it stands on the first exceedance, else the
    /// source, else the first difference, never on whatever row happened to be first.
    fn follow_findings(&mut self) {
        if self.user_moved {
            return;
        }
        let target = self.analysis.as_ref().and_then(|a| {
            let f = &a.findings;
            f.first_exceed.or(f.source).or(f.first_diff)
        });
        if let Some(i) = target {
            self.goto_record(i);
        }
    }

    /// One pair measured from its payloads (payload pass still running).
    pub fn update_pair(&mut self, i: usize, mut rec: PairRecord) {
        let Some(a) = &mut self.analysis else { return };
        let Some(slot) = a.comparison.records.get_mut(i) else {
            return;
        };
        if (slot.step, slot.eval, &slot.key) != (rec.step, rec.eval, &rec.key) {
            return;
        }
        rec.floor = slot.floor;
        *slot = rec;
        self.stale = true;
    }

    /// Re-judge after pair updates (the caller rate-limits this).
    pub fn rejudge_if_stale(&mut self) -> bool {
        if self.stale {
            self.rejudge();
            self.follow_findings();
            true
        } else {
            false
        }
    }

    fn rejudge(&mut self) {
        if let Some(a) = &mut self.analysis {
            a.judgement = judge(&a.comparison, &self.tol, &self.opts.criteria);
            a.findings = Findings::of(&a.comparison, &a.judgement);
        }
        self.scales.clear();
        self.cache = StatCache::default();
        self.stale = false;
    }

    pub fn set_progress(&mut self, counts: Counts) {
        self.counts = counts;
    }

    pub fn set_phase(&mut self, phase: Phase) {
        self.phase = phase;
    }

    pub fn set_detail(&mut self, req: Request, d: Result<Detail, String>) {
        self.details.insert(
            req,
            match d {
                Ok(d) => Loadable::Ready(d),
                Err(e) => Loadable::Failed(e),
            },
        );
    }

    pub fn say(&mut self, text: impl Into<String>, error: bool) {
        self.message = Some(Message {
            text: text.into(),
            error,
        });
    }

    // ----- derived state ---------------------------------------------------------------

    /// Compute what drawing needs (colour scale, cell statistics) for the current judgement
    /// and metric; call before rendering so a frame costs O(visible cells).
    pub fn prepare(&mut self) {
        let missing = match self.scales.get(&self.metric) {
            Some(_) => None,
            None => Some(self.compute_scale()),
        };
        if let Some(s) = missing {
            self.scales.insert(self.metric, s);
        }
        if self.cache.metric != Some(self.metric)
            && let Some(a) = &self.analysis
        {
            self.cache = StatCache::build(
                &a.grid,
                &a.comparison,
                &a.judgement,
                &a.findings,
                self.metric,
            );
        }
    }

    /// The decade range of the current metric over all records: computed once per judgement
    /// and metric by [`App::prepare`], computed here when not prepared.
    pub fn scale(&self) -> Option<(i32, i32)> {
        match self.scales.get(&self.metric) {
            Some(s) => *s,
            None => self.compute_scale(),
        }
    }

    fn compute_scale(&self) -> Option<(i32, i32)> {
        self.analysis.as_ref().and_then(|a| {
            decade_range((0..a.comparison.records.len()).filter_map(|i| {
                super::model::metric_value(&a.comparison, &a.judgement, i, self.metric)
            }))
        })
    }

    pub fn is_expanded(&self, n: usize) -> bool {
        let Some(a) = &self.analysis else {
            return false;
        };
        let Some(node) = a.grid.nodes.get(n) else {
            return false;
        };
        (node.depth == 0) != self.toggled.contains(&node.path)
    }

    fn set_expanded(&mut self, n: usize, on: bool) {
        if self.is_expanded(n) == on {
            return;
        }
        if let Some(path) = self
            .analysis
            .as_ref()
            .and_then(|a| a.grid.nodes.get(n))
            .map(|x| x.path.clone())
            && !self.toggled.remove(&path)
        {
            self.toggled.insert(path);
        }
    }

    /// Node indices of the visible rows.
    pub fn rows(&self) -> Vec<usize> {
        let Some(a) = &self.analysis else {
            return Vec::new();
        };
        let nodes = &a.grid.nodes;
        if !self.filter.is_empty() {
            let f = self.filter.to_lowercase();
            return (0..nodes.len())
                .filter(|&n| nodes[n].key.is_some() && nodes[n].path.to_lowercase().contains(&f))
                .collect();
        }
        let mut out = Vec::with_capacity(nodes.len());
        let mut skip_below: Option<usize> = None;
        for (n, node) in nodes.iter().enumerate() {
            if let Some(d) = skip_below {
                if node.depth > d {
                    continue;
                }
                skip_below = None;
            }
            out.push(n);
            if !node.children.is_empty() && !self.is_expanded(n) {
                skip_below = Some(node.depth);
            }
        }
        out
    }

    /// Keys covered by the row of node `n`.
    pub fn row_keys(&self, n: usize) -> &[usize] {
        match &self.analysis {
            Some(a) => a
                .grid
                .row_keys(n, !self.filter.is_empty() || self.is_expanded(n)),
            None => &[],
        }
    }

    /// The heatmap cell of node `n` at column `col`.
    pub fn stat(&self, n: usize, col: usize) -> CellStat {
        let own_only = !self.filter.is_empty() || self.is_expanded(n);
        if self.cache.metric == Some(self.metric)
            && let Some(a) = &self.analysis
            && let Some(st) = self
                .cache
                .get(&a.grid, n, a.grid.own_only(n, own_only), col)
        {
            return st;
        }
        match &self.analysis {
            Some(a) => a.grid.cell_stat(
                &a.comparison,
                &a.judgement,
                &a.findings,
                self.row_keys(n),
                col,
                self.metric,
            ),
            None => CellStat::default(),
        }
    }

    /// The node under the cursor.
    pub fn current_node(&self) -> Option<usize> {
        self.rows().get(self.row).copied()
    }

    /// The record the cursor's cell opens (the worst one it covers).
    pub fn current_record(&self) -> Option<usize> {
        self.current_node()
            .and_then(|n| self.stat(n, self.col).pick)
    }

    /// (key path of the cursor row, step of its column).
    fn cursor_place(&self) -> Option<(String, Option<u32>)> {
        let a = self.analysis.as_ref()?;
        let n = self.current_node()?;
        Some((a.grid.nodes[n].path.clone(), a.grid.step_of(self.col)))
    }

    fn place_cursor(&mut self, path: &str, step: Option<u32>) {
        let rows = self.rows();
        if let Some(a) = &self.analysis {
            if let Some(r) = rows.iter().position(|&n| a.grid.nodes[n].path == path) {
                self.row = r;
            }
            if let Some(c) = a.grid.column_of(step) {
                self.col = c;
            }
        }
        self.clamp();
    }

    /// Findings of the summary pane, in order.
    pub fn findings(&self) -> Vec<Finding> {
        let Some(a) = &self.analysis else {
            return Vec::new();
        };
        let (c, j) = (&a.comparison, &a.judgement);
        let label = |i: Option<usize>| {
            i.and_then(|i| c.records.get(i))
                .map_or("none".to_string(), |r| r.label())
        };
        let mut out = vec![
            Finding {
                name: "first ≠",
                record: j.first_non_identical,
                text: label(j.first_non_identical),
            },
            Finding {
                name: "first >tol",
                record: j.first_over_tolerance,
                text: match j.first_over_tolerance {
                    Some(i) => format!(
                        "{}{}",
                        label(Some(i)),
                        j.records[i]
                            .required
                            .filter(|_| crate::analysis::tolerance_helps(j.verdict.compared))
                            .map_or(String::new(), |q| format!(
                                " (passes at rel ≥ {} or abs ≥ {})",
                                crate::report::sci(Some(q.rel)),
                                crate::report::sci(Some(q.abs))
                            ))
                    ),
                    None => "none".into(),
                },
            },
            Finding {
                name: "source",
                record: j.source.as_ref().map(|s| s.index),
                text: match &j.source {
                    Some(s) => format!(
                        "{} · error {} {}",
                        label(Some(s.index)),
                        crate::report::sci(Some(s.error)),
                        if s.error_in == 0.0 {
                            "from an identical input".to_string()
                        } else {
                            format!(
                                "from {} (gain {:.1})",
                                crate::report::sci(Some(s.error_in)),
                                s.error / s.error_in
                            )
                        }
                    ),
                    None => "none".into(),
                },
            },
            Finding {
                name: "onset",
                record: a.findings.onset,
                text: match &j.amplification {
                    Some(amp) => format!(
                        "step {} → {} · ×{:.2} per step (R² {:.2}) in {}",
                        amp.onset_step,
                        amp.end_step,
                        amp.rate_per_step,
                        amp.r2,
                        j.latent_key.as_deref().unwrap_or("the latent")
                    ),
                    None => "no growing latent error".into(),
                },
            },
        ];
        if let Some(i) = j.image {
            let r = &c.records[i];
            let text = match (&r.image, r.bit_identical) {
                (_, Some(true)) => "bit-identical".to_string(),
                (Some(m), _) => format!("PSNR {:.1} dB · SSIM {:.4}", m.psnr_db, m.ssim),
                _ => format!("rel L2 {}", crate::report::sci(j.records[i].error)),
            };
            out.push(Finding {
                name: "image",
                record: Some(i),
                text,
            });
        }
        out
    }

    // ----- input -----------------------------------------------------------------------

    /// The scope keys are looked up in.
    pub fn scope(&self) -> Scope {
        if self.prompt.is_some() {
            Scope::Prompt
        } else {
            match (self.view, self.pane) {
                (View::Overview, Pane::Heatmap) => Scope::Heatmap,
                (View::Overview, Pane::Summary) => Scope::Summary,
                (View::Layer, _) => Scope::Layer,
                _ => Scope::Detail,
            }
        }
    }

    pub fn handle_key(&mut self, ev: KeyEvent) -> Effect {
        let before = (self.cursor_place(), self.view);
        let effect = self.key(ev);
        self.user_moved |= (self.cursor_place(), self.view) != before;
        effect
    }

    fn key(&mut self, ev: KeyEvent) -> Effect {
        self.message = None;
        let action = lookup(self.scope(), &ev);
        if self.prompt.is_some() {
            return self.prompt_key(ev, action);
        }
        let Some(action) = action else {
            return Effect::None;
        };
        if self.help {
            match action {
                Action::Up => self.help_scroll = self.help_scroll.saturating_sub(1),
                Action::Down => self.help_scroll += 1,
                Action::PageUp => self.help_scroll = self.help_scroll.saturating_sub(10),
                Action::PageDown => self.help_scroll += 10,
                Action::Top => self.help_scroll = 0,
                Action::Help | Action::Back => self.help = false,
                Action::Quit => return Effect::Quit,
                _ => {
                    self.help = false;
                    return self.act(action);
                }
            }
            // Keep the offset within the help text (as long as the 24-row screen needs).
            self.help_scroll = self.help_scroll.min(super::keys::BINDINGS.len());
            return Effect::None;
        }
        self.act(action)
    }

    fn page(&self) -> usize {
        Layout::new(self.area, self).heat_rows().max(1)
    }

    fn act(&mut self, action: Action) -> Effect {
        let nrows = self.rows().len();
        let summary = self.view == View::Overview && self.pane == Pane::Summary;
        match action {
            Action::Quit => return Effect::Quit,
            Action::Help => {
                self.help = true;
                self.help_scroll = 0;
            }
            Action::Up if summary => self.summary_sel = self.summary_sel.saturating_sub(1),
            Action::Down if summary => self.summary_sel += 1,
            Action::Up => self.row = self.row.saturating_sub(1),
            Action::Down => self.row += 1,
            Action::Left => self.col = self.col.saturating_sub(1),
            Action::Right => self.col += 1,
            Action::JumpLeft => self.col = self.col.saturating_sub(10),
            Action::JumpRight => self.col += 10,
            Action::PageUp => self.row = self.row.saturating_sub(self.page()),
            Action::PageDown => self.row += self.page(),
            Action::Top => self.row = 0,
            Action::Bottom => self.row = nrows.saturating_sub(1),
            Action::NextPane => {
                if self.view == View::Overview {
                    self.pane = match self.pane {
                        Pane::Heatmap => Pane::Summary,
                        Pane::Summary => Pane::Heatmap,
                    };
                }
            }
            Action::Enter => return self.enter(),
            Action::Toggle => self.toggle(),
            Action::Back => self.go_back(),
            Action::FirstExceed | Action::Source | Action::Onset | Action::FirstDiff => {
                self.jump_to(action)
            }
            Action::NextFail | Action::PrevFail => self.next_fail(action == Action::NextFail),
            Action::CycleMetric => {
                self.metric = self.metric.next();
                self.say(format!("metric: {}", self.metric.name()), false);
            }
            Action::EditTolerance => {
                let text = self.tol.global.map(|t| t.to_string()).unwrap_or_default();
                self.prompt = Some(Prompt::Tolerance {
                    text,
                    before: self.tol.clone(),
                });
            }
            Action::Filter => {
                self.prompt = Some(Prompt::Filter {
                    text: self.filter.clone(),
                    before: self.filter.clone(),
                });
                self.view = View::Overview;
                self.back.clear();
                self.pane = Pane::Heatmap;
            }
            Action::Export => {
                let target = match self.view {
                    View::Noise => self.noise_record(),
                    View::Image => self.analysis.as_ref().and_then(|a| a.judgement.image),
                    _ => self.current_record(),
                };
                match target {
                    Some(i) => return Effect::Export(i),
                    None => self.say("no record under the cursor to export", true),
                }
            }
            Action::ExpandAll => self.expand_all(true),
            Action::CollapseAll => self.expand_all(false),
            Action::ViewOverview => self.switch(View::Overview),
            Action::ViewLayer => self.switch(View::Layer),
            Action::ViewTensor => {
                self.switch(View::Tensor);
                return self.load_for_view();
            }
            Action::ViewNoise => {
                self.switch(View::Noise);
                return self.load_for_view();
            }
            Action::ViewImage => {
                self.switch(View::Image);
                return self.load_for_view();
            }
            Action::PromptAccept
            | Action::PromptCancel
            | Action::PromptDelete
            | Action::PromptDeleteWord
            | Action::PromptClear => {}
        }
        self.clamp();
        if matches!(self.view, View::Tensor) {
            return self.load_for_view();
        }
        Effect::None
    }

    /// `+`: every group open; `-`: back to the default (top level open), keeping the cursor's
    /// key and step.
    fn expand_all(&mut self, open: bool) {
        if open {
            if let Some(a) = &self.analysis {
                self.toggled = a
                    .grid
                    .nodes
                    .iter()
                    .filter(|n| n.depth > 0 && !n.children.is_empty())
                    .map(|n| n.path.clone())
                    .collect();
            }
        } else {
            let here = self.cursor_place();
            self.toggled.clear();
            if let Some((p, s)) = here {
                self.place_cursor(&p, s);
            }
        }
    }

    /// Space: fold or unfold the group under the cursor (not while filtering: no tree then).
    fn toggle(&mut self) {
        let group = self.current_node().filter(|&n| {
            self.analysis
                .as_ref()
                .is_some_and(|a| !a.grid.nodes[n].children.is_empty())
        });
        match group {
            Some(n) if self.filter.is_empty() => {
                let on = !self.is_expanded(n);
                self.set_expanded(n, on);
            }
            Some(_) => self.say("clear the filter (Esc) to fold the key tree", false),
            None => {}
        }
    }

    /// Esc: close help, go back a view, leave the summary pane, or clear the filter.
    fn go_back(&mut self) {
        if self.help {
            self.help = false;
        } else if let Some(v) = self.back.pop() {
            self.view = v;
        } else if self.view != View::Overview {
            self.view = View::Overview;
        } else if self.pane == Pane::Summary {
            self.pane = Pane::Heatmap;
        } else if !self.filter.is_empty() {
            let here = self.cursor_place();
            self.filter.clear();
            if let Some((p, s)) = here {
                self.place_cursor(&p, s);
            }
        }
    }

    /// `f`, `s`, `a`, `d`: the cursor to a finding, or a message saying there is none.
    fn jump_to(&mut self, action: Action) {
        let f = self.analysis.as_ref().map(|a| &a.findings);
        let (target, none) = match action {
            Action::FirstExceed => (
                f.and_then(|f| f.first_exceed),
                "no record is over tolerance",
            ),
            Action::Source => (f.and_then(|f| f.source), "no record creates error"),
            Action::Onset => (
                f.and_then(|f| f.onset),
                "the latent error does not grow step over step",
            ),
            _ => (
                f.and_then(|f| f.first_diff),
                "every record is bit-identical",
            ),
        };
        self.jump(target, none);
    }

    fn switch(&mut self, v: View) {
        self.back.clear();
        if v != View::Overview {
            self.back.push(View::Overview);
        }
        self.view = v;
    }

    fn enter(&mut self) -> Effect {
        match self.view {
            View::Overview if self.pane == Pane::Summary => {
                let f = self.findings();
                match f.get(self.summary_sel).and_then(|x| x.record) {
                    Some(i) => {
                        self.goto_record(i);
                        self.pane = Pane::Heatmap;
                    }
                    None => self.say("nothing to go to", true),
                }
                Effect::None
            }
            View::Overview => {
                let Some(n) = self.current_node() else {
                    return Effect::None;
                };
                // A group that is no key has no layer of its own: Enter folds it.
                let pure_group = self.analysis.as_ref().is_some_and(|a| {
                    let node = &a.grid.nodes[n];
                    node.key.is_none() && !node.children.is_empty()
                });
                if pure_group && self.filter.is_empty() {
                    let on = !self.is_expanded(n);
                    self.set_expanded(n, on);
                    self.clamp();
                    Effect::None
                } else {
                    self.back.push(View::Overview);
                    self.view = View::Layer;
                    Effect::None
                }
            }
            View::Layer => {
                self.back.push(View::Layer);
                self.view = View::Tensor;
                self.load_for_view()
            }
            _ => Effect::None,
        }
    }

    /// The detail the current view needs, when not loaded yet.
    fn load_for_view(&mut self) -> Effect {
        let req = match self.view {
            View::Tensor => self.current_record().map(Request::Tensor),
            View::Noise => self.noise_record().map(Request::Noise),
            View::Image => self
                .analysis
                .as_ref()
                .and_then(|a| a.judgement.image)
                .map(Request::Image),
            _ => None,
        };
        match req {
            Some(r) if !self.details.contains_key(&r) => {
                self.details.insert(r, Loadable::Loading);
                Effect::Load(r)
            }
            _ => Effect::None,
        }
    }

    /// The aligned `noise.initial` pair.
    pub fn noise_record(&self) -> Option<usize> {
        let a = self.analysis.as_ref()?;
        a.comparison
            .records
            .iter()
            .position(|r| r.key == "noise.initial")
    }

    fn jump(&mut self, target: Option<usize>, none: &str) {
        match target {
            Some(i) => {
                if self.view != View::Overview && self.view != View::Layer {
                    self.view = View::Overview;
                    self.back.clear();
                }
                self.pane = Pane::Heatmap;
                self.goto_record(i);
            }
            None => self.say(none, false),
        }
    }

    /// Move the cursor onto record `i`, expanding the tree (or clearing a filter that hides it).
    pub fn goto_record(&mut self, i: usize) {
        let Some((node, col, ancestors)) = self.analysis.as_ref().and_then(|a| {
            let (k, col) = a.grid.locate(&a.comparison, i)?;
            let node = *a.grid.key_node.get(k)?;
            Some((node, col, a.grid.ancestors(node)))
        }) else {
            return;
        };
        if !self.filter.is_empty() && !self.rows().contains(&node) {
            self.filter.clear();
        }
        for p in ancestors {
            self.set_expanded(p, true);
        }
        let has_children = self
            .analysis
            .as_ref()
            .is_some_and(|a| !a.grid.nodes[node].children.is_empty());
        if has_children {
            self.set_expanded(node, true);
        }
        if let Some(r) = self.rows().iter().position(|&n| n == node) {
            self.row = r;
        }
        self.col = col;
        self.clamp();
    }

    fn next_fail(&mut self, forward: bool) {
        let Some(a) = &self.analysis else { return };
        let fails: Vec<usize> = (0..a.judgement.records.len())
            .filter(|&i| a.judgement.records[i].status == Status::Fail)
            .collect();
        if fails.is_empty() {
            self.say("no failing records", false);
            return;
        }
        let cur = self.current_record();
        let target = if forward {
            match cur {
                Some(c) => fails.iter().copied().find(|&i| i > c),
                None => fails.first().copied(),
            }
        } else {
            match cur {
                Some(c) => fails.iter().rev().copied().find(|&i| i < c),
                None => fails.last().copied(),
            }
        };
        match target {
            Some(i) => self.goto_record(i),
            None => {
                let wrap = if forward {
                    fails[0]
                } else {
                    fails[fails.len() - 1]
                };
                self.goto_record(wrap);
                self.say(
                    if forward {
                        "wrapped to the first failing record"
                    } else {
                        "wrapped to the last failing record"
                    },
                    false,
                );
            }
        }
    }

    fn prompt_key(&mut self, ev: KeyEvent, action: Option<Action>) -> Effect {
        use crossterm::event::KeyCode;
        let Some(prompt) = self.prompt.as_mut() else {
            return Effect::None;
        };
        match action {
            Some(Action::Quit) => return Effect::Quit,
            Some(Action::PromptAccept) => {
                if let Prompt::Tolerance { text, .. } = prompt
                    && let Err(e) = parse_tol(text)
                {
                    self.say(e, true);
                    return Effect::None;
                }
                self.prompt = None;
                return Effect::None;
            }
            Some(Action::PromptCancel) => {
                let p = self.prompt.take();
                match p {
                    Some(Prompt::Filter { before, .. }) => self.filter = before,
                    Some(Prompt::Tolerance { before, .. }) => {
                        self.tol = before;
                        self.rejudge();
                    }
                    None => {}
                }
                self.clamp();
                return Effect::None;
            }
            Some(Action::PromptDelete) => {
                prompt.text_mut().pop();
            }
            Some(Action::PromptDeleteWord) => delete_word(prompt.text_mut()),
            Some(Action::PromptClear) => prompt.text_mut().clear(),
            _ => match ev.code {
                // A key chord with Ctrl or Alt is a command, never text.
                KeyCode::Char(ch)
                    if !ch.is_control()
                        && !ev
                            .modifiers
                            .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT) =>
                {
                    prompt.text_mut().push(ch)
                }
                _ => return Effect::None,
            },
        }
        // Live: apply what is typed.
        match self.prompt.clone() {
            Some(Prompt::Filter { text, .. }) => {
                self.filter = text;
                self.row = 0;
                self.scroll_row = 0;
            }
            Some(Prompt::Tolerance { text, .. }) => {
                if let Ok(spec) = parse_tol(&text) {
                    self.tol.global = spec;
                    self.rejudge();
                }
            }
            None => {}
        }
        self.clamp();
        Effect::None
    }

    /// The tolerance prompt's text is valid (for the prompt line).
    pub fn prompt_error(&self) -> Option<String> {
        match &self.prompt {
            Some(Prompt::Tolerance { text, .. }) => parse_tol(text).err(),
            _ => None,
        }
    }

    pub fn handle_mouse(&mut self, ev: MouseEvent) -> Effect {
        let before = (self.cursor_place(), self.view);
        let effect = self.mouse(ev);
        self.user_moved |= (self.cursor_place(), self.view) != before;
        effect
    }

    fn mouse(&mut self, ev: MouseEvent) -> Effect {
        if !self.opts.mouse {
            return Effect::None;
        }
        let layout = Layout::new(self.area, self);
        match ev.kind {
            MouseEventKind::ScrollDown => {
                self.row += 3;
                self.clamp();
            }
            MouseEventKind::ScrollUp => {
                self.row = self.row.saturating_sub(3);
                self.clamp();
            }
            MouseEventKind::Down(MouseButton::Left) => {
                if self.view != View::Overview || self.help || self.prompt.is_some() {
                    return Effect::None;
                }
                match layout.hit(ev.column, ev.row, self) {
                    Some(Hit::Cell { row, col }) => {
                        // A click on the selected cell opens it, as the help says.
                        let again =
                            self.pane == Pane::Heatmap && row == self.row && col == self.col;
                        self.pane = Pane::Heatmap;
                        self.row = row;
                        self.col = col;
                        if again {
                            return self.enter();
                        }
                    }
                    Some(Hit::Label { row }) => {
                        self.pane = Pane::Heatmap;
                        let again = row == self.row;
                        self.row = row;
                        if again {
                            return self.act(Action::Toggle);
                        }
                    }
                    Some(Hit::Finding(k)) => {
                        self.pane = Pane::Summary;
                        self.summary_sel = k;
                        return self.enter();
                    }
                    None => {}
                }
                self.clamp();
            }
            _ => {}
        }
        Effect::None
    }

    /// Keep the cursor within the rows and columns, and the scroll offsets showing it.
    pub fn clamp(&mut self) {
        let nrows = self.rows().len();
        let ncols = self.analysis.as_ref().map_or(0, |a| a.grid.columns());
        self.row = self.row.min(nrows.saturating_sub(1));
        self.col = self.col.min(ncols.saturating_sub(1));
        let nf = self.findings().len();
        self.summary_sel = self.summary_sel.min(nf.saturating_sub(1));
        let layout = Layout::new(self.area, self);
        let (h, w) = (layout.heat_rows(), layout.heat_cols());
        self.scroll_row = scroll_to(self.scroll_row, self.row, h, nrows);
        self.scroll_col = scroll_to(self.scroll_col, self.col, w, ncols);
    }

    /// A new screen size.
    pub fn resize(&mut self, area: Rect) {
        self.area = area;
        self.clamp();
    }
}

/// The smallest change to `scroll` that keeps `pos` within a window of `size` over `len`.
fn scroll_to(scroll: usize, pos: usize, size: usize, len: usize) -> usize {
    if size == 0 {
        return pos;
    }
    let mut s = scroll.min(len.saturating_sub(size));
    if pos < s {
        s = pos;
    } else if pos >= s + size {
        s = pos + 1 - size;
    }
    s
}

/// `rel=…,abs=…` as typed in the tolerance prompt; empty means per-dtype defaults.
fn parse_tol(text: &str) -> Result<Option<TolSpec>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    TolSpec::parse(text, "tolerance")
        .map(Some)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture::comparison as fixture;
    use crate::tui::palette::{ColorMode, Palette};
    use crossterm::event::KeyCode;

    pub(crate) fn app() -> App {
        let mut app = App::new(AppOptions {
            a: "a.sdt".into(),
            b: "b.sdt".into(),
            tol: TolConfig::default(),
            criteria: Criteria::default(),
            palette: Palette::new(ColorMode::TrueColor),
            mouse: true,
        });
        app.set_comparison(fixture(), Phase::Done);
        app
    }

    fn key(app: &mut App, c: KeyCode) -> Effect {
        app.handle_key(KeyEvent::new(c, KeyModifiers::NONE))
    }

    fn ch(app: &mut App, c: char) -> Effect {
        key(app, KeyCode::Char(c))
    }

    fn here(app: &App) -> (String, Option<u32>) {
        app.cursor_place().unwrap()
    }

    #[test]
    fn opens_on_the_first_exceedance_and_moves() {
        let mut app = app();
        // Record 4: step 1 unet.mid_block.
        assert_eq!(here(&app), ("unet.mid_block".into(), Some(1)));
        assert_eq!(app.current_record(), Some(4));
        ch(&mut app, 'k');
        assert_eq!(here(&app), ("sampler.x".into(), Some(1)));
        key(&mut app, KeyCode::Right);
        assert_eq!(here(&app).1, Some(2));
        ch(&mut app, 'L');
        assert_eq!(here(&app).1, Some(4), "clamped to the last column");
        ch(&mut app, 'h');
        ch(&mut app, 'g');
        assert_eq!(app.row, 0);
        ch(&mut app, 'G');
        assert_eq!(app.row, app.rows().len() - 1);
        assert_eq!(ch(&mut app, 'q'), Effect::Quit);
    }

    #[test]
    fn jumps_and_failing_cells() {
        let mut app = app();
        ch(&mut app, 'g');
        ch(&mut app, 's');
        assert_eq!(app.current_record(), Some(4), "source");
        ch(&mut app, 'a');
        // Amplification from step 2 of sampler.x: record 5.
        assert_eq!(app.current_record(), Some(5));
        ch(&mut app, 'd');
        assert_eq!(app.current_record(), Some(4));
        ch(&mut app, 'f');
        assert_eq!(app.current_record(), Some(4));
        ch(&mut app, 'n');
        assert_eq!(app.current_record(), Some(5));
        ch(&mut app, 'n');
        assert_eq!(app.current_record(), Some(6));
        ch(&mut app, 'N');
        assert_eq!(app.current_record(), Some(5));
        for _ in 0..5 {
            ch(&mut app, 'n');
        }
        assert_eq!(app.current_record(), Some(4), "wrapped");
        assert!(app.message.as_ref().unwrap().text.contains("wrapped"));
    }

    #[test]
    fn tolerance_rejudges_live_and_escape_restores() {
        let mut app = app();
        let fails = |app: &App| app.analysis.as_ref().unwrap().judgement.counts.fail;
        assert_eq!(fails(&app), 6);
        ch(&mut app, 't');
        assert_eq!(app.scope(), Scope::Prompt);
        for c in "rel=1e-2".chars() {
            ch(&mut app, c);
        }
        // rel 1e-2 passes records with rel L2 ≤ 1e-2: 1e-3 … 8e-3 pass, 1.6e-2 and 3.2e-2 fail.
        assert_eq!(fails(&app), 2);
        assert_eq!(app.tol.global.unwrap().rel, Some(1e-2));
        key(&mut app, KeyCode::Esc);
        assert_eq!(fails(&app), 6);
        assert_eq!(app.prompt, None);
        ch(&mut app, 't');
        for c in "rel=1".chars() {
            ch(&mut app, c);
        }
        key(&mut app, KeyCode::Enter);
        assert_eq!(fails(&app), 0);
        assert_eq!(app.prompt, None);
        // An invalid tolerance is refused on Enter and keeps the prompt.
        ch(&mut app, 't');
        ch(&mut app, 'x');
        assert!(app.prompt_error().is_some());
        key(&mut app, KeyCode::Enter);
        assert!(app.prompt.is_some());
        assert!(app.message.as_ref().unwrap().error);
    }

    #[test]
    fn filter_narrows_rows_and_escape_clears() {
        let mut app = app();
        ch(&mut app, '/');
        for c in "unet".chars() {
            ch(&mut app, c);
        }
        assert_eq!(app.rows().len(), 1);
        key(&mut app, KeyCode::Enter);
        assert_eq!(app.filter, "unet");
        assert_eq!(here(&app).0, "unet.mid_block");
        key(&mut app, KeyCode::Esc);
        assert_eq!(app.filter, "");
        assert_eq!(here(&app).0, "unet.mid_block");
        // q inside a prompt is text; Ctrl-c still quits.
        ch(&mut app, '/');
        assert_eq!(ch(&mut app, 'q'), Effect::None);
        assert_eq!(app.filter, "q");
        assert_eq!(
            app.handle_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Effect::Quit
        );
    }

    #[test]
    fn views_drill_down_and_back() {
        let mut app = app();
        assert_eq!(key(&mut app, KeyCode::Enter), Effect::None);
        assert_eq!(app.view, View::Layer);
        assert_eq!(
            key(&mut app, KeyCode::Enter),
            Effect::Load(Request::Tensor(4))
        );
        assert_eq!(app.view, View::Tensor);
        // Moving in the tensor view asks for the new cell's record.
        assert_eq!(ch(&mut app, 'l'), Effect::Load(Request::Tensor(6)));
        assert_eq!(ch(&mut app, 'h'), Effect::None, "already loading");
        key(&mut app, KeyCode::Backspace);
        assert_eq!(app.view, View::Layer);
        key(&mut app, KeyCode::Esc);
        assert_eq!(app.view, View::Overview);
        assert_eq!(ch(&mut app, '4'), Effect::Load(Request::Noise(0)));
        assert_eq!(app.view, View::Noise);
        assert_eq!(ch(&mut app, 'e'), Effect::Export(0));
        ch(&mut app, '1');
        assert_eq!(app.view, View::Overview);
        assert_eq!(ch(&mut app, 'e'), Effect::Export(4));
        ch(&mut app, 'm');
        assert_eq!(app.metric, Metric::AbsErr);
        ch(&mut app, '?');
        assert!(app.help);
        key(&mut app, KeyCode::Esc);
        assert!(!app.help);
    }

    #[test]
    fn space_folds_groups_and_enter_opens_keys() {
        let mut c = fixture();
        for (i, k) in [
            (2, "unet.down_blocks.0.resnets.0"),
            (4, "unet.down_blocks.0.attentions.0"),
            (6, "unet.down_blocks.0"),
        ] {
            c.records[i].key = k.into();
        }
        let mut app = app();
        app.set_comparison(c, Phase::Done);
        // A new layout: the cursor goes to the first exceedance, expanding its ancestors.
        app.toggled.clear();
        app.goto_record(4);
        assert_eq!(here(&app).0, "unet.down_blocks.0.attentions.0");
        let labels = |app: &App| -> Vec<String> {
            let a = app.analysis.as_ref().unwrap();
            app.rows()
                .iter()
                .map(|&n| a.grid.nodes[n].label.clone())
                .collect()
        };
        assert_eq!(
            labels(&app),
            [
                "noise.initial",
                "sampler.x",
                "unet",
                "down_blocks.0",
                "resnets.0",
                "attentions.0",
                "mid_block",
                "vae.decoder"
            ]
        );
        ch(&mut app, 'k');
        ch(&mut app, 'k');
        assert_eq!(here(&app).0, "unet.down_blocks.0");
        ch(&mut app, ' ');
        assert_eq!(labels(&app).len(), 6, "down_blocks.0 folded");
        // down_blocks.0 is a key too: Enter opens its layer view.
        key(&mut app, KeyCode::Enter);
        assert_eq!(app.view, View::Layer);
        key(&mut app, KeyCode::Esc);
        // unet is only a group: Enter folds it.
        ch(&mut app, 'k');
        assert_eq!(here(&app).0, "unet");
        key(&mut app, KeyCode::Enter);
        assert_eq!(app.view, View::Overview);
        assert_eq!(labels(&app).len(), 4);
        ch(&mut app, '+');
        assert_eq!(labels(&app).len(), 8);
        ch(&mut app, '-');
        assert_eq!(labels(&app).len(), 6, "back to the default: top level open");
    }

    #[test]
    fn summary_pane_goes_to_findings() {
        let mut app = app();
        ch(&mut app, 'g');
        key(&mut app, KeyCode::Tab);
        assert_eq!(app.scope(), Scope::Summary);
        let f = app.findings();
        assert_eq!(f[2].name, "source");
        ch(&mut app, 'j');
        ch(&mut app, 'j');
        key(&mut app, KeyCode::Enter);
        assert_eq!(app.pane, Pane::Heatmap);
        assert_eq!(app.current_record(), Some(4));
    }

    #[test]
    fn pair_updates_rejudge_and_keep_the_cursor() {
        let mut app = app();
        // Once the user has moved the cursor, it stays where they put it.
        ch(&mut app, 'k');
        ch(&mut app, 'j');
        let mut rec = app.analysis.as_ref().unwrap().comparison.records[2].clone();
        rec.bit_identical = Some(false);
        rec.rel_l2 = Some(0.5);
        rec.abs_error = Some(0.5);
        app.update_pair(2, rec);
        assert!(app.rejudge_if_stale());
        let j = &app.analysis.as_ref().unwrap().judgement;
        assert_eq!(j.first_over_tolerance, Some(2));
        assert_eq!(here(&app), ("unet.mid_block".into(), Some(1)));
        // A record that does not match its slot is ignored.
        let other = app.analysis.as_ref().unwrap().comparison.records[3].clone();
        app.update_pair(2, other);
        assert!(!app.stale);
    }

    fn ctrl(app: &mut App, c: char) -> Effect {
        app.handle_key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL))
    }

    /// #24: Ctrl-U and Ctrl-W typed `u` and `w` into the `/` and `t` prompts.
    #[test]
    fn ctrl_u_and_ctrl_w_edit_the_prompts() {
        use crate::tui::testing::{SIZES, draw, row_text};
        for (w, h) in SIZES {
            let mut app = app();
            ch(&mut app, '/');
            for c in "unet.mid_block".chars() {
                ch(&mut app, c);
            }
            ctrl(&mut app, 'w');
            assert_eq!(app.prompt.as_ref().unwrap().text(), "unet.");
            assert_eq!(app.filter, "unet.", "applied live");
            let buf = draw(&mut app, w, h);
            assert!(row_text(&buf, h - 1).starts_with("filter keys: unet.▏"));
            ctrl(&mut app, 'w');
            assert_eq!(app.prompt.as_ref().unwrap().text(), "");
            for c in "vae dec".chars() {
                ch(&mut app, c);
            }
            ctrl(&mut app, 'u');
            assert_eq!(app.prompt.as_ref().unwrap().text(), "");
            assert_eq!(app.rows().len(), 4, "an empty filter shows every row");
            // Other chords are not text either.
            ctrl(&mut app, 'x');
            app.handle_key(KeyEvent::new(KeyCode::Char('b'), KeyModifiers::ALT));
            assert_eq!(app.prompt.as_ref().unwrap().text(), "");
            key(&mut app, KeyCode::Esc);
            // The tolerance prompt edits the same way and re-judges as it goes.
            ch(&mut app, 't');
            for c in "rel=1e-2,abs=1".chars() {
                ch(&mut app, c);
            }
            assert_eq!(app.tol.global.unwrap().abs, Some(1.0));
            ctrl(&mut app, 'w');
            assert_eq!(app.prompt.as_ref().unwrap().text(), "rel=1e-2,abs=");
            ctrl(&mut app, 'w');
            assert_eq!(app.prompt.as_ref().unwrap().text(), "rel=1e-2,");
            let buf = draw(&mut app, w, h);
            assert!(row_text(&buf, h - 1).starts_with("tolerance: rel=1e-2,▏"));
            ctrl(&mut app, 'u');
            assert_eq!(app.prompt.as_ref().unwrap().text(), "");
            key(&mut app, KeyCode::Enter);
            assert_eq!(app.tol.global, None, "empty: per-dtype defaults");
        }
    }

    #[test]
    fn delete_word_stops_at_separators() {
        for (before, after) in [
            ("unet.mid_block", "unet."),
            ("unet.", ""),
            ("a b  ", "a "),
            ("rel=1e-3", "rel="),
            ("", ""),
        ] {
            let mut t = before.to_string();
            delete_word(&mut t);
            assert_eq!(t, after, "{before:?}");
        }
    }

    /// #24: the first cursor landed on whatever row came first (the summaries pass has no
    /// exceedance yet, and the payload pass then kept that place).
    #[test]
    fn the_cursor_follows_the_findings_until_the_user_moves_it() {
        use crate::tui::testing::{SIZES, draw, find, screen_text};
        for (w, h) in SIZES {
            let mut app = App::new(AppOptions {
                a: "a.sdt".into(),
                b: "b.sdt".into(),
                tol: TolConfig::default(),
                criteria: Criteria::default(),
                palette: Palette::new(ColorMode::TrueColor),
                mouse: true,
            });
            app.resize(Rect::new(0, 0, w, h));
            // The summaries pass: nothing measured yet.
            let mut summaries = fixture();
            for r in &mut summaries.records {
                r.rel_l2 = None;
                r.abs_error = None;
                r.bit_identical = None;
            }
            app.set_comparison(summaries, Phase::Payloads);
            // The payload pass finds the source: the cursor goes there.
            app.set_comparison(fixture(), Phase::Done);
            assert_eq!(here(&app), ("unet.mid_block".into(), Some(1)));
            let buf = draw(&mut app, w, h);
            assert!(
                find(&buf, "step 1 · unet.mid_block · FAIL").is_some(),
                "{}",
                screen_text(&buf)
            );
            // Pair updates that move the first exceedance move the cursor too.
            let mut rec = app.analysis.as_ref().unwrap().comparison.records[3].clone();
            rec.bit_identical = Some(false);
            rec.rel_l2 = Some(0.5);
            rec.abs_error = Some(0.5);
            app.update_pair(3, rec);
            app.rejudge_if_stale();
            assert_eq!(here(&app), ("sampler.x".into(), Some(1)));
            // Once the user moves, new results leave the cursor where it is.
            ch(&mut app, 'j');
            assert_eq!(here(&app), ("unet.mid_block".into(), Some(1)));
            ch(&mut app, 'l');
            app.set_comparison(fixture(), Phase::Done);
            assert_eq!(here(&app), ("unet.mid_block".into(), Some(2)));
        }
    }

    /// The invariants of the module doc hold after every key of a long, varied sequence.
    #[test]
    fn the_cursor_stays_within_the_rows_and_columns() {
        let mut app = app();
        let mut c = fixture();
        for (i, k) in [
            (2, "unet.down_blocks.0.resnets.0"),
            (4, "unet.down_blocks.0.attentions.0"),
        ] {
            c.records[i].key = k.into();
        }
        app.set_comparison(c, Phase::Done);
        let keys = "jjjjjjjjjLLLL +-gGhhhh lkjn N f s a d m /unet\x08\x08\x08\x08\x1b t rel=1\x1b 2 3 4 5 1 \t j j \t G  kkkk- ";
        let mut seed = 7u32;
        for (step, c) in keys.chars().cycle().take(600).enumerate() {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let code = match c {
                '\x08' => KeyCode::Backspace,
                '\x1b' => KeyCode::Esc,
                '\t' => KeyCode::Tab,
                _ if seed.is_multiple_of(7) => KeyCode::Enter,
                c => KeyCode::Char(c),
            };
            if seed.is_multiple_of(5) {
                let (w, h) = (40 + (seed % 200) as u16, 10 + (seed % 60) as u16);
                app.resize(Rect::new(0, 0, w, h));
            }
            key(&mut app, code);
            let rows = app.rows().len();
            let cols = app.analysis.as_ref().unwrap().grid.columns();
            assert!(
                app.row < rows.max(1),
                "step {step}: row {} of {rows}",
                app.row
            );
            assert!(
                app.col < cols.max(1),
                "step {step}: col {} of {cols}",
                app.col
            );
            let l = Layout::new(app.area, &app);
            if l.heat_rows() > 0 && app.view == View::Overview && rows > 0 {
                assert!(
                    (app.scroll_row..app.scroll_row + l.heat_rows()).contains(&app.row),
                    "step {step}: row {} not shown from {}",
                    app.row,
                    app.scroll_row
                );
            }
            let j = &app.analysis.as_ref().unwrap().judgement;
            assert_eq!(
                j,
                &judge(
                    &app.analysis.as_ref().unwrap().comparison,
                    &app.tol,
                    &app.opts.criteria
                ),
                "step {step}: the judgement is not that of the comparison and tolerance"
            );
        }
    }
}
