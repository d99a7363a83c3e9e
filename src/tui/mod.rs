//! `sdtrace diff A B`: the interactive terminal view of a comparison.
//!
//! It shows the same analysis as `sdtrace report` — [`compare_with`](crate::analysis::compare_with)
//! and [`judge`](crate::analysis::judge), never a different computation — as a summary of the
//! findings, a step × layer heatmap, and layer, tensor, noise and image views. The module is
//! split so that everything but this file is pure and testable without a terminal:
//! [`keys`] (the one key table behind dispatch, footer and help), [`model`] (heatmap grid and
//! key tree), [`app`] (state and transitions), [`layout`], [`render`] and [`views`] (state →
//! ratatui buffer), [`palette`] (colours, `NO_COLOR`), [`detail`] (view data from bytes) and
//! [`loader`] (background threads). This file is the edge: it owns the terminal (raw mode,
//! alternate screen, mouse capture), restores it on every exit path — normal quit, error,
//! panic, SIGINT — and runs the event loop, which never blocks on the analysis: the first
//! frame is drawn from the opened indexes before any record is read. No tensor library type is
//! used anywhere in this module.

pub mod app;
pub mod detail;
pub mod graphics;
pub mod keys;
pub mod layout;
pub mod loader;
pub mod model;
pub mod palette;
pub mod render;
pub mod summary;
#[cfg(test)]
pub(crate) mod testing;
pub mod views;

use crate::analysis::{AnalysisError, CompareOptions, Criteria, KeyMap, TolConfig};
use crate::trace::{TraceError, TraceReader};
use app::{App, AppOptions, Counts, Effect, Phase};
use crossterm::event::{self, Event};
use crossterm::execute;
use loader::{AnalysisJob, LoaderMsg, Readers};
use palette::Palette;
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::layout::Rect;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// Errors of `sdtrace diff`.
#[derive(Debug, thiserror::Error)]
pub enum TuiError {
    #[error(
        "sdtrace diff needs a terminal, and standard output is not one; for text, JSON or Markdown use `sdtrace report A B`"
    )]
    NotATerminal,
    #[error(transparent)]
    Analysis(#[from] AnalysisError),
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

/// Settings of one `sdtrace diff` session.
#[derive(Clone, Debug)]
pub struct DiffOptions {
    pub a: PathBuf,
    pub b: PathBuf,
    pub floor: Option<PathBuf>,
    pub tol: TolConfig,
    pub map: KeyMap,
    pub criteria: Criteria,
    /// Payload comparison threads (0: one per core).
    pub threads: usize,
    pub mouse: bool,
    /// Where `e` writes exported tensors.
    pub export_dir: PathBuf,
    /// How often traces still being recorded are checked for growth.
    pub poll: Duration,
    /// Write startup and key-response timings here on exit (for docs/PERFORMANCE.md).
    pub timings: Option<PathBuf>,
    /// Terminal graphics for the image view (`None`: detect from the environment).
    pub graphics: Option<graphics::Protocol>,
}

fn restore_terminal() {
    let mut out = std::io::stdout();
    let _ = execute!(
        out,
        event::DisableMouseCapture,
        crossterm::terminal::LeaveAlternateScreen,
        crossterm::cursor::Show
    );
    let _ = crossterm::terminal::disable_raw_mode();
    let _ = out.flush();
}

/// Raw mode, alternate screen and (optionally) mouse capture for its lifetime.
struct TerminalGuard;

impl TerminalGuard {
    fn enter(mouse: bool) -> std::io::Result<Self> {
        // Restore before any panic message is printed, then let the usual hook report it.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
        crossterm::terminal::enable_raw_mode()?;
        let guard = TerminalGuard;
        let mut out = std::io::stdout();
        execute!(
            out,
            crossterm::terminal::EnterAlternateScreen,
            crossterm::cursor::Hide
        )?;
        if mouse {
            execute!(out, event::EnableMouseCapture)?;
        }
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Milliseconds since `t0`.
fn ms(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1e3
}

/// What `--timings`-style measurement records.
#[derive(Default)]
struct Timings {
    open_ms: f64,
    first_frame_ms: Option<f64>,
    summaries_frame_ms: Option<f64>,
    payloads_done_ms: Option<f64>,
    /// Key event read → its frame drawn.
    key_ms: Vec<f64>,
    draw_ms: Vec<f64>,
    /// Longest stretch the loop did not read input (drawing, messages, re-judging): a key
    /// pressed then waits at most this long before it is read.
    busy_ms_max: f64,
}

impl Timings {
    fn write(&self, path: &std::path::Path) {
        let pct = |v: &[f64], q: f64| {
            let mut s = v.to_vec();
            s.sort_by(f64::total_cmp);
            if s.is_empty() {
                return serde_json::Value::Null;
            }
            let i = ((s.len() - 1) as f64 * q).round() as usize;
            serde_json::json!(s[i])
        };
        let v = serde_json::json!({
            "open_ms": self.open_ms,
            "first_frame_ms": self.first_frame_ms,
            "summaries_frame_ms": self.summaries_frame_ms,
            "payloads_done_ms": self.payloads_done_ms,
            "keys": self.key_ms.len(),
            "key_ms_median": pct(&self.key_ms, 0.5),
            "key_ms_p95": pct(&self.key_ms, 0.95),
            "key_ms_max": pct(&self.key_ms, 1.0),
            "draw_ms_median": pct(&self.draw_ms, 0.5),
            "draw_ms_max": pct(&self.draw_ms, 1.0),
            "busy_ms_max": self.busy_ms_max,
        });
        let _ = std::fs::write(path, serde_json::to_string_pretty(&v).unwrap_or_default());
    }
}

/// Run the TUI until the user quits; returns the process exit code (0 after `q`, 130 after
/// SIGINT).
pub fn run(opts: DiffOptions) -> Result<u8, TuiError> {
    let t0 = Instant::now();
    // Open both indexes before touching the terminal, so bad paths give a plain error.
    let ra = TraceReader::open(&opts.a)?;
    let rb = TraceReader::open(&opts.b)?;
    if !std::io::stdout().is_terminal() {
        return Err(TuiError::NotATerminal);
    }
    let mut timings = Timings {
        open_ms: ms(t0),
        ..Timings::default()
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        // Only fails when another handler is installed; Ctrl-c as a key still works then.
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed));
    }
    let mut app = App::new(AppOptions {
        a: opts.a.display().to_string(),
        b: opts.b.display().to_string(),
        tol: opts.tol.clone(),
        criteria: opts.criteria.clone(),
        palette: Palette::from_env(),
        mouse: opts.mouse,
    });
    let (tx, rx) = mpsc::channel::<LoaderMsg>();
    let job = AnalysisJob {
        a: opts.a.clone(),
        b: opts.b.clone(),
        floor: opts.floor.clone(),
        opts: CompareOptions {
            map: opts.map.clone(),
            tol: opts.tol.clone(),
            threads: opts.threads,
        },
        poll: opts.poll,
    };
    let protocol = opts
        .graphics
        .unwrap_or_else(|| graphics::Protocol::detect(|k| std::env::var(k).ok()));
    let guard = TerminalGuard::enter(opts.mouse)?;
    let mut terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
    terminal.clear()?;
    let worker = loader::spawn_analysis(job, Some((ra, rb)), tx.clone());
    let result = event_loop(
        &mut app,
        &mut terminal,
        &rx,
        &tx,
        &worker,
        &opts,
        &interrupted,
        &mut timings,
        t0,
        protocol,
    );
    worker.stop.store(true, Ordering::Relaxed);
    let _ = write!(terminal.backend_mut(), "{}", protocol.clear());
    drop(terminal);
    drop(guard);
    if let Some(p) = &opts.timings {
        timings.write(p);
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn event_loop(
    app: &mut App,
    terminal: &mut Terminal<CrosstermBackend<std::io::Stdout>>,
    rx: &mpsc::Receiver<LoaderMsg>,
    tx: &mpsc::Sender<LoaderMsg>,
    worker: &loader::Worker,
    opts: &DiffOptions,
    interrupted: &AtomicBool,
    timings: &mut Timings,
    t0: Instant,
    protocol: graphics::Protocol,
) -> Result<u8, TuiError> {
    let mut dirty = true;
    // The pictures placed over the image view, if any.
    let mut shown = None;
    let mut pending_keys: Vec<Instant> = Vec::new();
    let mut generation = 0u64;
    let mut readers: Option<Arc<Readers>> = None;
    let mut last_judge = Instant::now();
    loop {
        let iteration = Instant::now();
        let mut waited = Duration::ZERO;
        if dirty {
            let size = terminal.size()?;
            let area = Rect::new(0, 0, size.width, size.height);
            if area != app.area {
                app.resize(area);
            }
            app.prepare();
            let t = Instant::now();
            terminal.draw(|f| render::render(app, f.area(), f.buffer_mut()))?;
            let want = graphics::overlay(app, layout::Layout::new(area, app).body, protocol);
            if want.as_ref().map(|o| &o.key) != shown.as_ref() {
                if shown.take().is_some() {
                    // Remove the old pictures: kitty's by command, any by a full redraw.
                    write!(terminal.backend_mut(), "{}", protocol.clear())?;
                    terminal.clear()?;
                    terminal.draw(|f| render::render(app, f.area(), f.buffer_mut()))?;
                }
                if let Some(o) = want {
                    write!(terminal.backend_mut(), "{}", o.escapes)?;
                    shown = Some(o.key);
                }
                terminal.backend_mut().flush()?;
            }
            timings.draw_ms.push(ms(t));
            for k in pending_keys.drain(..) {
                timings.key_ms.push(ms(k));
            }
            timings.first_frame_ms.get_or_insert_with(|| ms(t0));
            if app.analysis.is_some() {
                timings.summaries_frame_ms.get_or_insert_with(|| ms(t0));
            }
            if app.phase == Phase::Done {
                timings.payloads_done_ms.get_or_insert_with(|| ms(t0));
            }
            dirty = false;
        }
        if interrupted.load(Ordering::Relaxed) {
            return Ok(130);
        }
        let before_poll = Instant::now();
        let ready = event::poll(Duration::from_millis(40))?;
        waited += before_poll.elapsed();
        if ready {
            loop {
                let ev = event::read()?;
                let at = Instant::now();
                let effect = match ev {
                    Event::Key(k) => {
                        pending_keys.push(at);
                        app.handle_key(k)
                    }
                    Event::Mouse(m) => app.handle_mouse(m),
                    Event::Resize(w, h) => {
                        app.resize(Rect::new(0, 0, w, h));
                        Effect::None
                    }
                    _ => Effect::None,
                };
                dirty = true;
                match effect {
                    Effect::Quit => return Ok(0),
                    Effect::None => {}
                    Effect::Load(req) => {
                        let pair = app.analysis.as_ref().and_then(|a| {
                            let i = match req {
                                app::Request::Tensor(i)
                                | app::Request::Noise(i)
                                | app::Request::Image(i) => i,
                            };
                            a.comparison.records.get(i).cloned()
                        });
                        match (&readers, pair) {
                            (Some(r), Some(p)) => {
                                loader::spawn_detail(r.clone(), req, p, tx.clone())
                            }
                            _ => app.set_detail(req, Err("the traces are still being read".into())),
                        }
                    }
                    Effect::Export(i) => {
                        let pair = app
                            .analysis
                            .as_ref()
                            .and_then(|a| a.comparison.records.get(i).cloned());
                        match (&readers, pair) {
                            (Some(r), Some(p)) => {
                                app.say(format!("exporting {}…", p.label()), false);
                                loader::spawn_export(
                                    r.clone(),
                                    p,
                                    opts.export_dir.clone(),
                                    tx.clone(),
                                );
                            }
                            _ => app.say("nothing to export yet", true),
                        }
                    }
                }
                if !event::poll(Duration::ZERO)? {
                    break;
                }
            }
        }
        while let Ok(msg) = rx.try_recv() {
            dirty = true;
            match msg {
                LoaderMsg::Comparison {
                    generation: g,
                    comparison,
                    phase,
                    readers: r,
                } => {
                    if g < generation {
                        continue;
                    }
                    generation = g;
                    readers = Some(r);
                    app.set_comparison(*comparison, phase);
                    last_judge = Instant::now();
                }
                LoaderMsg::Pair {
                    generation: g,
                    index,
                    record,
                } => {
                    if g == generation {
                        app.update_pair(index, *record);
                    }
                }
                LoaderMsg::Phase {
                    generation: g,
                    phase,
                } => {
                    if g == generation {
                        app.set_phase(phase);
                    }
                }
                LoaderMsg::Failed { error } => app.set_phase(Phase::Failed(error)),
                LoaderMsg::Detail { request, result } => app.set_detail(request, result),
                LoaderMsg::Exported { result } => match result {
                    Ok(m) => app.say(m, false),
                    Err(e) => app.say(format!("export failed: {e}"), true),
                },
            }
        }
        if app.phase == Phase::Payloads {
            let p = &worker.progress;
            let counts = Counts {
                pairs_done: p.pairs_done.load(Ordering::Relaxed),
                pairs_total: p.pairs_total.load(Ordering::Relaxed),
                bytes_done: p.bytes_done.load(Ordering::Relaxed),
                bytes_total: p.bytes_total.load(Ordering::Relaxed),
            };
            if counts != app.counts {
                app.set_progress(counts);
                dirty = true;
            }
        }
        if app.stale && last_judge.elapsed() >= Duration::from_millis(250) {
            app.rejudge_if_stale();
            last_judge = Instant::now();
            dirty = true;
        }
        let busy = (iteration.elapsed().saturating_sub(waited)).as_secs_f64() * 1e3;
        timings.busy_ms_max = timings.busy_ms_max.max(busy);
    }
}
