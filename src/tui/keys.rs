//! The key table: every binding of `sdtrace diff` in one place.
//!
//! [`BINDINGS`] lists each action with its keys, the scope it applies in, a short footer label
//! and a description. Key dispatch ([`lookup`]), the footer ([`footer_items`]) and the `?` help
//! overlay ([`help_lines`]) are all read off this one table, so they cannot disagree.
//! Invariant: within one scope (plus the global scope), a key maps to at most one action;
//! a unit test checks it.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

/// What a key does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Quit,
    Help,
    Up,
    Down,
    Left,
    Right,
    PageUp,
    PageDown,
    Top,
    Bottom,
    JumpLeft,
    JumpRight,
    Enter,
    Toggle,
    Back,
    NextPane,
    FirstExceed,
    Source,
    Onset,
    FirstDiff,
    CycleMetric,
    EditTolerance,
    Filter,
    NextFail,
    PrevFail,
    Export,
    ExpandAll,
    CollapseAll,
    ViewOverview,
    ViewLayer,
    ViewTensor,
    ViewNoise,
    ViewImage,
    /// Text prompts (filter, tolerance): accept, cancel, delete a character, the word before
    /// the cursor, or the whole line (readline's Ctrl-w and Ctrl-u).
    PromptAccept,
    PromptCancel,
    PromptDelete,
    PromptDeleteWord,
    PromptClear,
}

/// Where a binding applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everywhere except text prompts.
    Global,
    /// The step × layer heatmap (overview).
    Heatmap,
    /// The summary / alerts pane (overview, after Tab).
    Summary,
    /// The layer view.
    Layer,
    /// Tensor, noise and image views.
    Detail,
    /// While typing a filter or a tolerance.
    Prompt,
}

impl Scope {
    pub fn title(self) -> &'static str {
        match self {
            Scope::Global => "Everywhere",
            Scope::Heatmap => "Heatmap",
            Scope::Summary => "Summary pane",
            Scope::Layer => "Layer view",
            Scope::Detail => "Tensor, noise and image views",
            Scope::Prompt => "Typing a filter or tolerance",
        }
    }
}

/// One key: a code and the modifiers that must be held (Shift is implied by the character).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    pub code: KeyCode,
    pub ctrl: bool,
}

const fn k(c: char) -> Key {
    Key {
        code: KeyCode::Char(c),
        ctrl: false,
    }
}

const fn code(code: KeyCode) -> Key {
    Key { code, ctrl: false }
}

const fn ctrl(c: char) -> Key {
    Key {
        code: KeyCode::Char(c),
        ctrl: true,
    }
}

impl Key {
    /// The name shown in the footer and the help: `q`, `Ctrl-c`, `↑`, `Enter`.
    pub fn name(self) -> String {
        let base = match self.code {
            KeyCode::Char(' ') => "Space".to_string(),
            KeyCode::Char(c) => c.to_string(),
            KeyCode::Up => "↑".into(),
            KeyCode::Down => "↓".into(),
            KeyCode::Left => "←".into(),
            KeyCode::Right => "→".into(),
            KeyCode::Enter => "Enter".into(),
            KeyCode::Esc => "Esc".into(),
            KeyCode::Backspace => "Bksp".into(),
            KeyCode::Tab => "Tab".into(),
            KeyCode::BackTab => "S-Tab".into(),
            KeyCode::PageUp => "PgUp".into(),
            KeyCode::PageDown => "PgDn".into(),
            KeyCode::Home => "Home".into(),
            KeyCode::End => "End".into(),
            KeyCode::F(n) => format!("F{n}"),
            other => format!("{other:?}"),
        };
        if self.ctrl {
            format!("Ctrl-{base}")
        } else {
            base
        }
    }

    fn matches(self, ev: &KeyEvent) -> bool {
        let has_ctrl = ev.modifiers.contains(KeyModifiers::CONTROL);
        if has_ctrl != self.ctrl {
            return false;
        }
        match (self.code, ev.code) {
            // Terminals differ in whether Ctrl-letter arrives upper- or lower-case.
            (KeyCode::Char(a), KeyCode::Char(b)) if self.ctrl => a.eq_ignore_ascii_case(&b),
            (a, b) => a == b,
        }
    }
}

/// One row of the key table.
#[derive(Clone, Copy, Debug)]
pub struct Binding {
    pub action: Action,
    pub scope: Scope,
    pub keys: &'static [Key],
    /// Label in the footer (`None`: help only).
    pub footer: Option<&'static str>,
    pub desc: &'static str,
}

const fn b(
    action: Action,
    scope: Scope,
    keys: &'static [Key],
    footer: Option<&'static str>,
    desc: &'static str,
) -> Binding {
    Binding {
        action,
        scope,
        keys,
        footer,
        desc,
    }
}

use Action as A;
use Scope as S;

/// The key table. Order is the order of the footer and the help.
pub const BINDINGS: &[Binding] = &[
    b(
        A::Quit,
        S::Global,
        &[k('q'), ctrl('c')],
        Some("quit"),
        "quit (Ctrl-c too); the terminal is restored",
    ),
    b(
        A::Help,
        S::Global,
        &[k('?'), code(KeyCode::F(1))],
        Some("help"),
        "show or hide this help",
    ),
    b(
        A::Up,
        S::Global,
        &[code(KeyCode::Up), k('k')],
        None,
        "move up (previous key)",
    ),
    b(
        A::Down,
        S::Global,
        &[code(KeyCode::Down), k('j')],
        None,
        "move down (next key)",
    ),
    b(
        A::Left,
        S::Global,
        &[code(KeyCode::Left), k('h')],
        None,
        "previous step",
    ),
    b(
        A::Right,
        S::Global,
        &[code(KeyCode::Right), k('l')],
        None,
        "next step",
    ),
    b(
        A::JumpLeft,
        S::Global,
        &[k('H'), k('[')],
        None,
        "10 steps back",
    ),
    b(
        A::JumpRight,
        S::Global,
        &[k('L'), k(']')],
        None,
        "10 steps on",
    ),
    b(
        A::PageUp,
        S::Global,
        &[code(KeyCode::PageUp), ctrl('u')],
        None,
        "page up",
    ),
    b(
        A::PageDown,
        S::Global,
        &[code(KeyCode::PageDown), ctrl('d')],
        None,
        "page down",
    ),
    b(
        A::Top,
        S::Global,
        &[code(KeyCode::Home), k('g')],
        None,
        "first key",
    ),
    b(
        A::Bottom,
        S::Global,
        &[code(KeyCode::End), k('G')],
        None,
        "last key",
    ),
    b(
        A::Enter,
        S::Heatmap,
        &[code(KeyCode::Enter)],
        Some("open"),
        "open the layer view of the key (on a group that is no key: expand or collapse it)",
    ),
    b(
        A::Toggle,
        S::Heatmap,
        &[k(' ')],
        Some("fold"),
        "expand or collapse the group under the cursor",
    ),
    b(
        A::Enter,
        S::Summary,
        &[code(KeyCode::Enter)],
        Some("go to"),
        "go to the selected finding in the heatmap",
    ),
    b(
        A::Enter,
        S::Layer,
        &[code(KeyCode::Enter)],
        Some("tensor"),
        "open the tensor view of the selected step",
    ),
    b(
        A::Back,
        S::Global,
        &[code(KeyCode::Esc), code(KeyCode::Backspace)],
        Some("back"),
        "back to the previous view (clears an active filter in the overview)",
    ),
    b(
        A::NextPane,
        S::Global,
        &[code(KeyCode::Tab), code(KeyCode::BackTab)],
        Some("pane"),
        "switch between the heatmap and the summary pane",
    ),
    b(
        A::FirstExceed,
        S::Global,
        &[k('f')],
        Some("first>tol"),
        "go to the first record over tolerance",
    ),
    b(
        A::Source,
        S::Global,
        &[k('s')],
        Some("source"),
        "go to the source: the first record that creates error",
    ),
    b(
        A::Onset,
        S::Global,
        &[k('a')],
        Some("onset"),
        "go to the amplification onset of the latent error",
    ),
    b(
        A::FirstDiff,
        S::Global,
        &[k('d')],
        None,
        "go to the first record that is not bit-identical",
    ),
    b(
        A::NextFail,
        S::Global,
        &[k('n')],
        Some("next fail"),
        "next failing cell (execution order)",
    ),
    b(
        A::PrevFail,
        S::Global,
        &[k('N')],
        None,
        "previous failing cell",
    ),
    b(
        A::CycleMetric,
        S::Global,
        &[k('m')],
        Some("metric"),
        "cycle the heatmap metric: rel L2, max |a−b|, error / tolerance, gain",
    ),
    b(
        A::EditTolerance,
        S::Global,
        &[k('t')],
        Some("tol"),
        "edit the tolerance (rel=…,abs=…); the verdict is re-judged as you type",
    ),
    b(
        A::Filter,
        S::Global,
        &[k('/')],
        Some("filter"),
        "filter keys by a substring",
    ),
    b(
        A::Export,
        S::Global,
        &[k('e')],
        Some("export"),
        "export the selected record of both traces (.npy, or .safetensors for bf16)",
    ),
    b(
        A::ExpandAll,
        S::Heatmap,
        &[k('+'), k('=')],
        None,
        "expand every group of the key tree",
    ),
    b(
        A::CollapseAll,
        S::Heatmap,
        &[k('-')],
        None,
        "collapse the key tree to its top groups",
    ),
    b(
        A::ViewOverview,
        S::Global,
        &[k('1')],
        None,
        "overview: summary and heatmap",
    ),
    b(
        A::ViewLayer,
        S::Global,
        &[k('2')],
        None,
        "layer view: error and norms vs step of the selected key",
    ),
    b(
        A::ViewTensor,
        S::Global,
        &[k('3')],
        None,
        "tensor view: the selected record of both traces",
    ),
    b(
        A::ViewNoise,
        S::Global,
        &[k('4')],
        Some("noise"),
        "noise view: where noise.initial differs, by flat index",
    ),
    b(
        A::ViewImage,
        S::Global,
        &[k('5')],
        Some("image"),
        "image view: the final images A, B and |A−B|",
    ),
    b(
        A::PromptAccept,
        S::Prompt,
        &[code(KeyCode::Enter)],
        Some("accept"),
        "keep what was typed",
    ),
    b(
        A::PromptCancel,
        S::Prompt,
        &[code(KeyCode::Esc)],
        Some("cancel"),
        "cancel and restore the previous value",
    ),
    b(
        A::PromptDelete,
        S::Prompt,
        &[code(KeyCode::Backspace)],
        None,
        "delete the last character",
    ),
    b(
        A::PromptDeleteWord,
        S::Prompt,
        &[ctrl('w')],
        None,
        "delete the last word",
    ),
    b(
        A::PromptClear,
        S::Prompt,
        &[ctrl('u')],
        None,
        "delete the whole line",
    ),
];

/// True when the binding applies in `scope` (global bindings apply everywhere but prompts).
fn applies(bind: &Binding, scope: Scope) -> bool {
    bind.scope == scope || (bind.scope == Scope::Global && scope != Scope::Prompt)
}

/// The action of a key press in `scope`. Scope-specific bindings win over global ones.
pub fn lookup(scope: Scope, ev: &KeyEvent) -> Option<Action> {
    if ev.kind == KeyEventKind::Release {
        return None;
    }
    let hit = |s: Scope| {
        BINDINGS
            .iter()
            .filter(|b| b.scope == s)
            .find(|b| b.keys.iter().any(|k| k.matches(ev)))
            .map(|b| b.action)
    };
    // Ctrl-c quits even while typing.
    if ctrl('c').matches(ev) {
        return Some(Action::Quit);
    }
    hit(scope).or_else(|| {
        if scope == Scope::Prompt {
            None
        } else {
            hit(Scope::Global)
        }
    })
}

/// `(keys, label)` of the footer items of `scope`, in table order.
pub fn footer_items(scope: Scope) -> Vec<(String, &'static str)> {
    let mut items: Vec<(String, &'static str)> = Vec::new();
    // Scope-specific items first: they say what is special here.
    for pass in [true, false] {
        for bind in BINDINGS
            .iter()
            .filter(|b| applies(b, scope) && (b.scope != Scope::Global) == pass)
        {
            let Some(label) = bind.footer else { continue };
            if items.iter().any(|(_, l)| *l == label) {
                continue;
            }
            if let Some(key) = bind.keys.first() {
                items.push((key.name(), label));
            }
        }
    }
    items
}

/// The keys of the overview for `sdtrace diff --help`, from the table: each binding of the
/// global and heatmap scopes that has a footer label, as `KEYS label` (`q/Ctrl-c quit`).
pub fn summary() -> Vec<String> {
    BINDINGS
        .iter()
        .filter(|b| matches!(b.scope, Scope::Global | Scope::Heatmap))
        .filter_map(|b| {
            let keys: Vec<String> = b.keys.iter().map(|k| k.name()).collect();
            b.footer.map(|label| format!("{} {label}", keys.join("/")))
        })
        .collect()
}

/// The help overlay: per scope a title and `(keys, description)` rows.
pub fn help_lines() -> Vec<(&'static str, Vec<(String, &'static str)>)> {
    [
        Scope::Global,
        Scope::Heatmap,
        Scope::Summary,
        Scope::Layer,
        Scope::Detail,
        Scope::Prompt,
    ]
    .into_iter()
    .map(|scope| {
        let rows = BINDINGS
            .iter()
            .filter(|b| b.scope == scope)
            .map(|b| {
                let keys: Vec<String> = b.keys.iter().map(|k| k.name()).collect();
                (keys.join(" "), b.desc)
            })
            .collect();
        (scope.title(), rows)
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(code: KeyCode, mods: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, mods)
    }

    #[test]
    fn no_key_is_bound_twice_in_a_scope() {
        for scope in [
            Scope::Global,
            Scope::Heatmap,
            Scope::Summary,
            Scope::Layer,
            Scope::Detail,
            Scope::Prompt,
        ] {
            let keys: Vec<Key> = BINDINGS
                .iter()
                .filter(|b| b.scope == scope)
                .flat_map(|b| b.keys.iter().copied())
                .collect();
            for (i, a) in keys.iter().enumerate() {
                assert!(
                    !keys[i + 1..].contains(a),
                    "{} bound twice in {scope:?}",
                    a.name()
                );
            }
        }
    }

    #[test]
    fn lookup_by_scope() {
        let none = KeyModifiers::NONE;
        assert_eq!(
            lookup(Scope::Heatmap, &press(KeyCode::Char('q'), none)),
            Some(Action::Quit)
        );
        assert_eq!(
            lookup(
                Scope::Heatmap,
                &press(KeyCode::Char('c'), KeyModifiers::CONTROL)
            ),
            Some(Action::Quit)
        );
        assert_eq!(
            lookup(
                Scope::Prompt,
                &press(KeyCode::Char('C'), KeyModifiers::CONTROL)
            ),
            Some(Action::Quit)
        );
        // In a prompt, letters are text, not commands.
        assert_eq!(
            lookup(Scope::Prompt, &press(KeyCode::Char('q'), none)),
            None
        );
        assert_eq!(
            lookup(Scope::Prompt, &press(KeyCode::Esc, none)),
            Some(Action::PromptCancel)
        );
        assert_eq!(
            lookup(
                Scope::Heatmap,
                &press(KeyCode::Char('N'), KeyModifiers::SHIFT)
            ),
            Some(Action::PrevFail)
        );
        assert_eq!(
            lookup(Scope::Summary, &press(KeyCode::Enter, none)),
            Some(Action::Enter)
        );
        assert_eq!(
            lookup(Scope::Heatmap, &press(KeyCode::Char('x'), none)),
            None
        );
    }

    #[test]
    fn footer_and_help_come_from_the_table() {
        let f = footer_items(Scope::Heatmap);
        assert_eq!(f[0], ("Enter".to_string(), "open"));
        assert!(f.contains(&("q".to_string(), "quit")));
        assert!(f.contains(&("f".to_string(), "first>tol")));
        let p = footer_items(Scope::Prompt);
        assert_eq!(p.len(), 2);
        let help = help_lines();
        let total: usize = help.iter().map(|(_, rows)| rows.len()).sum();
        assert_eq!(total, BINDINGS.len());
        assert!(
            help[0]
                .1
                .iter()
                .any(|(k, d)| k == "q Ctrl-c" && d.starts_with("quit"))
        );
    }
}
