//! `sdtrace diff A B`: the interactive terminal view of a comparison.
//!
//! It shows the same analysis as `sdtrace report` — [`compare_with`](crate::analysis::compare_with)
//! and [`judge`](crate::analysis::judge), never a different computation — as a summary of the
//! findings, a step × layer heatmap, and layer, tensor, noise and image views. The module is
//! split so that everything but this file is pure and testable without a terminal:
//! [`keys`] (the one key table behind dispatch, footer and help), [`model`] (heatmap grid and
//! key tree), [`app`] (state and transitions), [`layout`], [`summary`], [`render`] and
//! [`views`] (state → ratatui buffer), [`palette`] (colours, `NO_COLOR`), [`detail`] (view
//! data from bytes) and [`loader`] (background threads); `testing` holds the unit tests'
//! fixture app and snapshots. This file is the edge: it owns the terminal (raw mode,
//! alternate screen, mouse capture), restores it on every exit path — normal quit, error,
//! panic, SIGINT — and runs the event loop ([`Session`]: draw, perform an effect, take a
//! background message), which never blocks on the analysis: the first frame is drawn from the
//! opened indexes before any record is read. No tensor library type is used anywhere in this
//! module.

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

use crate::analysis::{AnalysisError, CompareOptions, Criteria, KeyMap, Progress, TolConfig};
use crate::exit::ExitStatus;
use crate::trace::{TraceError, TraceReader};
use app::{App, AppOptions, Counts, Effect, Phase};
use crossterm::event::{self, Event};
use crossterm::execute;
use loader::{AnalysisJob, LoaderMsg, Readers};
use palette::Palette;
use ratatui::Terminal;
use ratatui::backend::{Backend, CrosstermBackend};
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
    #[error("terminal")]
    Terminal(#[from] std::io::Error),
}

/// A backend that cannot fail (ratatui's `TestBackend`).
impl From<std::convert::Infallible> for TuiError {
    fn from(e: std::convert::Infallible) -> Self {
        match e {}
    }
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

/// Run the TUI until the user quits; returns the process exit status
/// ([`ExitStatus::Success`] after `q`, [`ExitStatus::Interrupted`] after SIGINT).
pub fn run(opts: DiffOptions) -> Result<ExitStatus, TuiError> {
    let t0 = Instant::now();
    // Open both indexes before touching the terminal, so bad paths give a plain error.
    let ra = TraceReader::open(&opts.a)?;
    let rb = TraceReader::open(&opts.b)?;
    if !std::io::stdout().is_terminal() {
        return Err(TuiError::NotATerminal);
    }
    let open_ms = ms(t0);
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        // Only fails when another handler is installed; Ctrl-c as a key still works then.
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed));
    }
    let app = App::new(AppOptions {
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
    let mut session = Session::new(
        app,
        terminal,
        std::io::stdout(),
        tx,
        opts.export_dir.clone(),
        protocol,
        t0,
    );
    session.timings.open_ms = open_ms;
    let result = session.run(&rx, &worker.progress, &interrupted);
    worker.stop.store(true, Ordering::Relaxed);
    let _ = write!(session.out, "{}", protocol.clear());
    let _ = session.out.flush();
    let timings = session.timings;
    drop(session.terminal);
    drop(guard);
    if let Some(p) = &opts.timings {
        timings.write(p);
    }
    result
}

/// The run loop of one `sdtrace diff` session: it owns the terminal, the [`App`] and the
/// background work's results, and is the only place where effects are carried out. Its three
/// jobs are separate methods: [`Session::draw`] (a frame, plus the graphics overlay),
/// [`Session::perform`] (an [`Effect`] the app asked for) and [`Session::on_loader`] (a
/// background message, dropped when it belongs to an older generation of the comparison).
/// Generic over the ratatui backend and the byte sink of graphics escapes, so everything but
/// reading input runs in tests on a `TestBackend`.
///
/// Invariants: `readers` are those of the newest comparison accepted (`generation`); a
/// comparison older than it never replaces it, and pair or phase messages of another
/// generation are ignored.
pub struct Session<B: Backend, W: Write> {
    pub app: App,
    terminal: Terminal<B>,
    /// Where graphics escapes are written (the terminal's output stream).
    out: W,
    tx: mpsc::Sender<LoaderMsg>,
    export_dir: PathBuf,
    protocol: graphics::Protocol,
    /// The pictures placed over the image view, if any.
    shown: Option<(usize, [Rect; 3])>,
    generation: u64,
    readers: Option<Arc<Readers>>,
    last_judge: Instant,
    /// Key presses read and not yet answered by a frame.
    pending_keys: Vec<Instant>,
    /// Something changed since the last frame.
    dirty: bool,
    t0: Instant,
    timings: Timings,
}

impl<B: Backend, W: Write> Session<B, W>
where
    TuiError: From<B::Error>,
{
    /// A session drawing on `terminal`; `tx` is the sender the background threads it starts
    /// report on; `t0` is when the command started (for the timings).
    pub fn new(
        app: App,
        terminal: Terminal<B>,
        out: W,
        tx: mpsc::Sender<LoaderMsg>,
        export_dir: PathBuf,
        protocol: graphics::Protocol,
        t0: Instant,
    ) -> Self {
        Session {
            app,
            terminal,
            out,
            tx,
            export_dir,
            protocol,
            shown: None,
            generation: 0,
            readers: None,
            last_judge: Instant::now(),
            pending_keys: Vec::new(),
            dirty: true,
            t0,
            timings: Timings::default(),
        }
    }

    /// The terminal (for tests: its backend holds the last frame).
    pub fn terminal(&self) -> &Terminal<B> {
        &self.terminal
    }

    /// Draw a frame for the terminal's current size, and place or remove the image view's
    /// pictures when they change.
    pub fn draw(&mut self) -> Result<(), TuiError> {
        let size = self.terminal.size()?;
        let area = Rect::new(0, 0, size.width, size.height);
        if area != self.app.area() {
            self.app.resize(area);
        }
        self.app.prepare();
        let t = Instant::now();
        let app = &self.app;
        self.terminal
            .draw(|f| render::render(app, f.area(), f.buffer_mut()))?;
        let want = graphics::overlay(app, layout::Layout::new(area, app).body, self.protocol);
        if want.as_ref().map(|o| &o.key) != self.shown.as_ref() {
            if self.shown.take().is_some() {
                // Remove the old pictures: kitty's by command, any by a full redraw.
                write!(self.out, "{}", self.protocol.clear())?;
                self.out.flush()?;
                self.terminal.clear()?;
                self.terminal
                    .draw(|f| render::render(app, f.area(), f.buffer_mut()))?;
            }
            if let Some(o) = want {
                write!(self.out, "{}", o.escapes)?;
                self.shown = Some(o.key);
            }
            self.out.flush()?;
        }
        let tm = &mut self.timings;
        tm.draw_ms.push(ms(t));
        for k in self.pending_keys.drain(..) {
            tm.key_ms.push(ms(k));
        }
        tm.first_frame_ms.get_or_insert_with(|| ms(self.t0));
        if app.analysis().is_some() {
            tm.summaries_frame_ms.get_or_insert_with(|| ms(self.t0));
        }
        if *app.phase() == Phase::Done {
            tm.payloads_done_ms.get_or_insert_with(|| ms(self.t0));
        }
        self.dirty = false;
        Ok(())
    }

    /// Carry out what a transition asked for; `Some(status)` ends the session.
    pub fn perform(&mut self, effect: Effect) -> Option<ExitStatus> {
        let pair = |app: &App, i: usize| {
            app.analysis()
                .and_then(|a| a.comparison.records.get(i).cloned())
        };
        match effect {
            Effect::Quit => return Some(ExitStatus::Success),
            Effect::None => {}
            Effect::Load(req) => {
                let i = match req {
                    app::Request::Tensor(i) | app::Request::Noise(i) | app::Request::Image(i) => i,
                };
                match (&self.readers, pair(&self.app, i)) {
                    (Some(r), Some(p)) => loader::spawn_detail(r.clone(), req, p, self.tx.clone()),
                    _ => self
                        .app
                        .set_detail(req, Err("the traces are still being read".into())),
                }
            }
            Effect::Export(i) => match (&self.readers, pair(&self.app, i)) {
                (Some(r), Some(p)) => {
                    self.app.say(format!("exporting {}…", p.label()), false);
                    loader::spawn_export(r.clone(), p, self.export_dir.clone(), self.tx.clone());
                }
                _ => self.app.say("nothing to export yet", true),
            },
        }
        None
    }

    /// One message of the background threads.
    pub fn on_loader(&mut self, msg: LoaderMsg) {
        self.dirty = true;
        match msg {
            LoaderMsg::Comparison {
                generation,
                comparison,
                phase,
                readers,
            } => {
                if generation < self.generation {
                    return;
                }
                self.generation = generation;
                self.readers = Some(readers);
                self.app.set_comparison(*comparison, phase);
                self.last_judge = Instant::now();
            }
            LoaderMsg::Pair {
                generation,
                index,
                record,
            } => {
                if generation == self.generation {
                    self.app.update_pair(index, *record);
                }
            }
            LoaderMsg::Phase { generation, phase } => {
                if generation == self.generation {
                    self.app.set_phase(phase);
                }
            }
            LoaderMsg::Failed { error } => self.app.set_phase(Phase::Failed(error)),
            LoaderMsg::Detail { request, result } => self.app.set_detail(request, result),
            LoaderMsg::Exported { result } => match result {
                Ok(m) => self.app.say(m, false),
                Err(e) => self.app.say(format!("export failed: {e}"), true),
            },
        }
    }

    /// One input event; `Some(status)` ends the session.
    fn on_event(&mut self, ev: Event) -> Option<ExitStatus> {
        let effect = match ev {
            Event::Key(k) => {
                self.pending_keys.push(Instant::now());
                self.app.handle_key(k)
            }
            Event::Mouse(m) => self.app.handle_mouse(m),
            Event::Resize(w, h) => {
                self.app.resize(Rect::new(0, 0, w, h));
                Effect::None
            }
            _ => Effect::None,
        };
        self.dirty = true;
        self.perform(effect)
    }

    /// The payload pass's progress counters, and re-judging after pair updates (at most
    /// every 250 ms).
    fn tick(&mut self, progress: &Progress) {
        if *self.app.phase() == Phase::Payloads {
            let counts = Counts {
                pairs_done: progress.pairs_done.load(Ordering::Relaxed),
                pairs_total: progress.pairs_total.load(Ordering::Relaxed),
                bytes_done: progress.bytes_done.load(Ordering::Relaxed),
                bytes_total: progress.bytes_total.load(Ordering::Relaxed),
            };
            if counts != self.app.counts() {
                self.app.set_progress(counts);
                self.dirty = true;
            }
        }
        if self.app.stale() && self.last_judge.elapsed() >= Duration::from_millis(250) {
            self.app.rejudge_if_stale();
            self.last_judge = Instant::now();
            self.dirty = true;
        }
    }

    /// Until the user quits (0) or SIGINT arrives (130): draw when something changed, read
    /// input for up to 40 ms, then take the background's messages.
    fn run(
        &mut self,
        rx: &mpsc::Receiver<LoaderMsg>,
        progress: &Progress,
        interrupted: &AtomicBool,
    ) -> Result<ExitStatus, TuiError> {
        loop {
            let iteration = Instant::now();
            if self.dirty {
                self.draw()?;
            }
            if interrupted.load(Ordering::Relaxed) {
                return Ok(ExitStatus::Interrupted);
            }
            let before_poll = Instant::now();
            let ready = event::poll(Duration::from_millis(40))?;
            let waited = before_poll.elapsed();
            if ready {
                loop {
                    if let Some(code) = self.on_event(event::read()?) {
                        return Ok(code);
                    }
                    if !event::poll(Duration::ZERO)? {
                        break;
                    }
                }
            }
            while let Ok(msg) = rx.try_recv() {
                self.on_loader(msg);
            }
            self.tick(progress);
            let busy = (iteration.elapsed().saturating_sub(waited)).as_secs_f64() * 1e3;
            self.timings.busy_ms_max = self.timings.busy_ms_max.max(busy);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture::comparison as fixture;
    use crate::trace::{RunHeader, TraceWriter, WriterOptions};
    use crate::tui::palette::ColorMode;
    use crate::tui::testing::{SIZES, screen_text};
    use ratatui::backend::TestBackend;

    /// Two traces without records, opened: what a generation's readers look like.
    fn readers(dir: &std::path::Path) -> Arc<Readers> {
        let open = |name: &str| {
            let p = dir.join(name);
            TraceWriter::create(&p, &RunHeader::default(), WriterOptions::default())
                .unwrap()
                .finish()
                .unwrap();
            TraceReader::open(&p).unwrap()
        };
        Arc::new(Readers {
            a: open("a.sdt"),
            b: open("b.sdt"),
        })
    }

    fn session(w: u16, h: u16) -> (Session<TestBackend, Vec<u8>>, mpsc::Receiver<LoaderMsg>) {
        let (tx, rx) = mpsc::channel();
        let app = App::new(AppOptions {
            a: "a.sdt".into(),
            b: "b.sdt".into(),
            tol: TolConfig::default(),
            criteria: Criteria::default(),
            palette: Palette::new(ColorMode::TrueColor),
            mouse: true,
        });
        let terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
        let s = Session::new(
            app,
            terminal,
            Vec::new(),
            tx,
            PathBuf::from("."),
            graphics::Protocol::Off,
            Instant::now(),
        );
        (s, rx)
    }

    fn screen(s: &Session<TestBackend, Vec<u8>>) -> String {
        screen_text(s.terminal().backend().buffer())
    }

    #[test]
    fn loader_messages_of_older_generations_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        for (w, h) in SIZES {
            let (mut s, rx) = session(w, h);
            s.draw().unwrap();
            assert!(screen(&s).contains("reading the record summaries"));
            s.on_loader(LoaderMsg::Comparison {
                generation: 1,
                comparison: Box::new(fixture()),
                phase: Phase::Payloads,
                readers: readers(dir.path()),
            });
            s.draw().unwrap();
            assert!(screen(&s).contains("verdict: incomplete"), "{}", screen(&s));
            // A comparison of an older generation does not replace the newer one.
            let mut old = fixture();
            old.records.truncate(3);
            s.on_loader(LoaderMsg::Comparison {
                generation: 0,
                comparison: Box::new(old),
                phase: Phase::Done,
                readers: readers(dir.path()),
            });
            let a = s.app.analysis().unwrap();
            assert_eq!(a.comparison.records.len(), 10);
            assert_eq!(*s.app.phase(), Phase::Payloads);
            // Nor do its pair updates and phases.
            let mut rec = a.comparison.records[2].clone();
            rec.rel_l2 = Some(0.5);
            s.on_loader(LoaderMsg::Pair {
                generation: 0,
                index: 2,
                record: Box::new(rec.clone()),
            });
            assert!(!s.app.stale());
            s.on_loader(LoaderMsg::Phase {
                generation: 0,
                phase: Phase::Done,
            });
            assert_eq!(*s.app.phase(), Phase::Payloads);
            // Those of the current generation apply.
            s.on_loader(LoaderMsg::Pair {
                generation: 1,
                index: 2,
                record: Box::new(rec),
            });
            assert!(s.app.stale());
            s.on_loader(LoaderMsg::Phase {
                generation: 1,
                phase: Phase::Done,
            });
            assert_eq!(*s.app.phase(), Phase::Done);
            s.draw().unwrap();
            assert!(
                screen(&s).contains("all metrics computed"),
                "{}",
                screen(&s)
            );
            // A failure is shown whatever its generation.
            s.on_loader(LoaderMsg::Failed {
                error: "disk on fire".into(),
            });
            s.draw().unwrap();
            assert!(screen(&s).contains("error: disk on fire"), "{}", screen(&s));
            drop(rx);
        }
    }

    #[test]
    fn effects_are_performed_with_the_current_readers() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, rx) = session(80, 24);
        assert_eq!(s.perform(Effect::Quit), Some(ExitStatus::Success));
        // Before any comparison there is nothing to read from.
        assert_eq!(s.perform(Effect::Export(4)), None);
        assert!(s.app.message().unwrap().error);
        s.on_loader(LoaderMsg::Comparison {
            generation: 0,
            comparison: Box::new(fixture()),
            phase: Phase::Done,
            readers: readers(dir.path()),
        });
        // A detail is read on a thread with this generation's readers; these traces lack the
        // record, so the answer is a failure, shown in the view.
        let effect = s.app.handle_key(crossterm::event::KeyEvent::new(
            crossterm::event::KeyCode::Char('3'),
            crossterm::event::KeyModifiers::NONE,
        ));
        assert_eq!(effect, Effect::Load(app::Request::Tensor(4)));
        assert_eq!(s.perform(effect), None);
        let msg = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert!(matches!(msg, LoaderMsg::Detail { .. }));
        s.on_loader(msg);
        s.draw().unwrap();
        assert!(screen(&s).contains("cannot load"), "{}", screen(&s));
    }
}
