//! The heatmap's data model: probe keys × sampler steps, and the collapsible key tree.
//!
//! A [`Grid`] is built from a [`Comparison`] alone (which records exist, where): one row per
//! probe key in execution order, one column per sampler step, plus a first column (`·`) for
//! records outside the sampling loop (noise, text conditioning, VAE, image). A cell lists the
//! aligned pairs at that key and step (several evals) and counts the records that did not pair
//! up. What a cell *shows* depends on the judgement and the chosen [`Metric`] and is computed on
//! demand by [`Grid::cell_stat`], so a re-judge (new tolerance) never rebuilds the grid.
//!
//! The key tree splits keys at dots, keeping a numeric part with its parent
//! (`unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1` →
//! `unet` / `down_blocks.1` / `attentions.0` / `transformer_blocks.0` / `attn1`), and merges a
//! group that is not itself a key and has one child into that child (`noise.initial` stays one
//! row). A collapsed group shows the worst of its subtree. Invariants: nodes are in depth-first
//! order with parents before children; every key belongs to exactly one node.

use crate::analysis::{Comparison, Judgement, Status};
use std::collections::HashMap;

/// What the heatmap colours by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Relative L2 error ‖a−b‖/‖b‖ (the error the judgement localises with).
    RelL2,
    /// max |a−b| with payloads, else the RMS difference.
    AbsErr,
    /// How far over tolerance: min(rel / tol.rel, abs / tol.abs); over 1 fails.
    OverTol,
    /// Error out / error in: above 10 a record creates error.
    Gain,
}

impl Metric {
    pub const ALL: [Metric; 4] = [Metric::RelL2, Metric::AbsErr, Metric::OverTol, Metric::Gain];

    pub fn name(self) -> &'static str {
        match self {
            Metric::RelL2 => "rel L2",
            Metric::AbsErr => "max |a−b|",
            Metric::OverTol => "error / tolerance",
            Metric::Gain => "gain",
        }
    }

    pub fn next(self) -> Metric {
        let i = Metric::ALL.iter().position(|&m| m == self).unwrap_or(0);
        Metric::ALL[(i + 1) % Metric::ALL.len()]
    }
}

/// `x / t` for ratios against a tolerance part: 0 when x is 0, ∞ when only t is.
fn ratio(x: f64, t: f64) -> f64 {
    if x == 0.0 {
        0.0
    } else if t == 0.0 {
        f64::INFINITY
    } else {
        x / t
    }
}

/// The value of `metric` for record `i`, when known.
pub fn metric_value(c: &Comparison, j: &Judgement, i: usize, metric: Metric) -> Option<f64> {
    let (r, rj) = (c.records.get(i)?, j.records.get(i)?);
    match metric {
        Metric::RelL2 => rj.error,
        Metric::AbsErr => {
            if rj.status == Status::Identical {
                Some(0.0)
            } else {
                r.abs_error
            }
        }
        Metric::OverTol => {
            let rel = rj.error?;
            let abs = if rj.status == Status::Identical {
                0.0
            } else {
                r.abs_error?
            };
            Some(ratio(rel, rj.tol.rel).min(ratio(abs, rj.tol.abs)))
        }
        Metric::Gain => match rj.status {
            Status::Identical => Some(0.0),
            _ => rj.gain,
        },
    }
}

/// Worse statuses rank higher.
pub fn severity(s: Status) -> u8 {
    match s {
        Status::Identical => 0,
        Status::Pass => 1,
        Status::Unknown => 2,
        Status::NotCompared => 3,
        Status::Fail => 4,
    }
}

/// Records the summary names, marked in the heatmap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Findings {
    pub first_diff: Option<usize>,
    pub first_exceed: Option<usize>,
    pub source: Option<usize>,
    /// The latent record at the amplification onset step.
    pub onset: Option<usize>,
}

impl Findings {
    pub fn of(c: &Comparison, j: &Judgement) -> Self {
        let onset = match (&j.amplification, &j.latent_key) {
            (Some(a), Some(k)) => c
                .records
                .iter()
                .position(|r| &r.key == k && r.step == Some(a.onset_step)),
            _ => None,
        };
        Findings {
            first_diff: j.first_non_identical,
            first_exceed: j.first_over_tolerance,
            source: j.source.as_ref().map(|s| s.index),
            onset,
        }
    }
}

/// Marker bits of a cell.
pub const MARK_FIRST: u8 = 1;
pub const MARK_SOURCE: u8 = 2;
pub const MARK_ONSET: u8 = 4;

/// The records at one key and column.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cell {
    /// Indices into `Comparison::records` (one per eval).
    pub records: Vec<usize>,
    /// Records at this place that did not pair up.
    pub only_a: u32,
    pub only_b: u32,
}

/// What one heatmap cell shows (over one key or a collapsed group).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CellStat {
    /// Largest value of the metric (NaN when any record's is NaN).
    pub value: Option<f64>,
    pub status: Option<Status>,
    /// Paired records covered.
    pub records: usize,
    /// Unpaired records covered.
    pub unmatched: u32,
    pub marks: u8,
    /// The covered record to open: the worst one (first in execution order among equals).
    pub pick: Option<usize>,
    /// (severity, metric value or −1) of `pick`, by which cells compare their worst records.
    pub rank: (u8, f64),
}

impl CellStat {
    pub fn is_empty(&self) -> bool {
        self.records == 0 && self.unmatched == 0
    }
}

/// One node of the key tree.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Full dotted path of the node (a key, or a key prefix).
    pub path: String,
    /// Path part shown in the tree (`down_blocks.1`, or `noise.initial` when merged).
    pub label: String,
    pub depth: usize,
    /// Index into `Grid::keys` when the node is itself a recorded key.
    pub key: Option<usize>,
    pub parent: Option<usize>,
    pub children: Vec<usize>,
    /// Keys of the subtree (itself included), in execution order.
    pub keys: Vec<usize>,
}

/// Keys × columns, and the key tree.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Grid {
    /// Distinct sampler steps, ascending.
    pub steps: Vec<u32>,
    /// Column 0 holds the records outside the sampling loop.
    pub outside: bool,
    /// Distinct keys in execution order.
    pub keys: Vec<String>,
    key_index: HashMap<String, usize>,
    cells: Vec<Cell>,
    pub nodes: Vec<Node>,
    /// Node of each key.
    pub key_node: Vec<usize>,
}

/// Split a key into tree parts, keeping numeric parts with their parent.
fn parts(key: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in key.split('.') {
        match out.last_mut() {
            Some(last) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                last.push('.');
                last.push_str(p);
            }
            _ => out.push(p.to_string()),
        }
    }
    out
}

impl Grid {
    pub fn new(c: &Comparison) -> Self {
        // Keys in execution order: by first A order (pairs and A-only records), then keys seen
        // only in B, in B's order.
        let mut first: Vec<(u64, &str)> = c
            .records
            .iter()
            .map(|r| (r.order_a, r.key.as_str()))
            .chain(c.only_a.iter().map(|r| (r.order, r.key.as_str())))
            .collect();
        first.sort_by_key(|&(o, _)| o);
        let mut keys: Vec<String> = Vec::new();
        let mut key_index: HashMap<String, usize> = HashMap::new();
        let mut add = |k: &str, keys: &mut Vec<String>| {
            if !key_index.contains_key(k) {
                key_index.insert(k.to_string(), keys.len());
                keys.push(k.to_string());
            }
        };
        for (_, k) in &first {
            add(k, &mut keys);
        }
        let mut only_b: Vec<(u64, &str)> =
            c.only_b.iter().map(|r| (r.order, r.key.as_str())).collect();
        only_b.sort_by_key(|&(o, _)| o);
        for (_, k) in &only_b {
            add(k, &mut keys);
        }
        let steps_iter = c
            .records
            .iter()
            .map(|r| r.step)
            .chain(c.only_a.iter().map(|r| r.step))
            .chain(c.only_b.iter().map(|r| r.step));
        let mut steps: Vec<u32> = steps_iter.clone().flatten().collect();
        steps.sort_unstable();
        steps.dedup();
        let outside = steps_iter.clone().any(|s| s.is_none());
        let mut g = Grid {
            steps,
            outside,
            keys,
            key_index,
            cells: Vec::new(),
            nodes: Vec::new(),
            key_node: Vec::new(),
        };
        g.cells = vec![Cell::default(); g.keys.len() * g.columns()];
        for (i, r) in c.records.iter().enumerate() {
            if let Some(cell) = g.cell_at_mut(&r.key, r.step) {
                cell.records.push(i);
            }
        }
        for r in &c.only_a {
            if let Some(cell) = g.cell_at_mut(&r.key, r.step) {
                cell.only_a += 1;
            }
        }
        for r in &c.only_b {
            if let Some(cell) = g.cell_at_mut(&r.key, r.step) {
                cell.only_b += 1;
            }
        }
        g.build_tree();
        g
    }

    /// Number of columns (steps, plus the outside column).
    pub fn columns(&self) -> usize {
        self.steps.len() + usize::from(self.outside)
    }

    /// The column of a step (`None`: outside the loop).
    pub fn column_of(&self, step: Option<u32>) -> Option<usize> {
        match step {
            None => self.outside.then_some(0),
            Some(s) => self
                .steps
                .binary_search(&s)
                .ok()
                .map(|i| i + usize::from(self.outside)),
        }
    }

    /// The step of a column (`None`: the outside column, or out of range).
    pub fn step_of(&self, col: usize) -> Option<u32> {
        let off = usize::from(self.outside);
        col.checked_sub(off)
            .and_then(|i| self.steps.get(i).copied())
    }

    pub fn key_index(&self, key: &str) -> Option<usize> {
        self.key_index.get(key).copied()
    }

    pub fn cell(&self, key: usize, col: usize) -> Option<&Cell> {
        if col >= self.columns() {
            return None;
        }
        self.cells.get(key * self.columns() + col)
    }

    fn cell_at_mut(&mut self, key: &str, step: Option<u32>) -> Option<&mut Cell> {
        let k = self.key_index(key)?;
        let col = self.column_of(step)?;
        let n = self.columns();
        self.cells.get_mut(k * n + col)
    }

    /// Where record `i` sits: (key index, column).
    pub fn locate(&self, c: &Comparison, i: usize) -> Option<(usize, usize)> {
        let r = c.records.get(i)?;
        Some((self.key_index(&r.key)?, self.column_of(r.step)?))
    }

    fn build_tree(&mut self) {
        // Trie over key parts, children in first-seen (execution) order.
        struct T {
            path: String,
            part: String,
            key: Option<usize>,
            children: Vec<usize>,
        }
        let mut trie: Vec<T> = vec![T {
            path: String::new(),
            part: String::new(),
            key: None,
            children: Vec::new(),
        }];
        let mut child_of: HashMap<(usize, String), usize> = HashMap::new();
        for (ki, key) in self.keys.iter().enumerate() {
            let mut at = 0usize;
            for part in parts(key) {
                let next = match child_of.get(&(at, part.clone())) {
                    Some(&n) => n,
                    None => {
                        let path = if trie[at].path.is_empty() {
                            part.clone()
                        } else {
                            format!("{}.{part}", trie[at].path)
                        };
                        trie.push(T {
                            path,
                            part: part.clone(),
                            key: None,
                            children: Vec::new(),
                        });
                        let n = trie.len() - 1;
                        trie[at].children.push(n);
                        child_of.insert((at, part), n);
                        n
                    }
                };
                at = next;
            }
            // A key whose parts repeat another key's (e.g. `a..b`) keeps the first node.
            if trie[at].key.is_none() {
                trie[at].key = Some(ki);
            }
        }
        // Depth-first, merging single-child groups that are not keys.
        let mut nodes: Vec<Node> = Vec::new();
        let mut key_node = vec![usize::MAX; self.keys.len()];
        fn walk(
            trie: &[T],
            t: usize,
            label: String,
            depth: usize,
            parent: Option<usize>,
            nodes: &mut Vec<Node>,
            key_node: &mut [usize],
        ) -> usize {
            let mut t = t;
            let mut label = label;
            while trie[t].key.is_none() && trie[t].children.len() == 1 {
                t = trie[t].children[0];
                label = format!("{label}.{}", trie[t].part);
            }
            let me = nodes.len();
            nodes.push(Node {
                path: trie[t].path.clone(),
                label,
                depth,
                key: trie[t].key,
                parent,
                children: Vec::new(),
                keys: Vec::new(),
            });
            if let Some(k) = trie[t].key {
                key_node[k] = me;
                nodes[me].keys.push(k);
            }
            for &ch in &trie[t].children {
                let n = walk(
                    trie,
                    ch,
                    trie[ch].part.clone(),
                    depth + 1,
                    Some(me),
                    nodes,
                    key_node,
                );
                nodes[me].children.push(n);
                let sub = nodes[n].keys.clone();
                nodes[me].keys.extend(sub);
            }
            nodes[me].keys.sort_unstable();
            me
        }
        for &ch in &trie[0].children {
            walk(
                &trie,
                ch,
                trie[ch].part.clone(),
                0,
                None,
                &mut nodes,
                &mut key_node,
            );
        }
        self.nodes = nodes;
        self.key_node = key_node;
    }

    /// The row of node `n` covers only its own key (an expanded key, or a key without
    /// children); otherwise it covers the whole subtree.
    pub fn own_only(&self, n: usize, expanded: bool) -> bool {
        self.nodes
            .get(n)
            .is_some_and(|node| node.key.is_some() && (expanded || node.children.is_empty()))
    }

    /// The keys a row of node `n` covers: itself when it is an expanded key, else its subtree.
    pub fn row_keys(&self, n: usize, expanded: bool) -> &[usize] {
        let node = &self.nodes[n];
        if self.own_only(n, expanded) {
            node.key.as_slice()
        } else {
            &node.keys
        }
    }

    /// The cell of `keys` at column `col`, under `metric`.
    pub fn cell_stat(
        &self,
        c: &Comparison,
        j: &Judgement,
        f: &Findings,
        keys: &[usize],
        col: usize,
        metric: Metric,
    ) -> CellStat {
        let mut st = CellStat::default();
        let mut worst: Option<(u8, f64, usize)> = None;
        for &k in keys {
            let Some(cell) = self.cell(k, col) else {
                continue;
            };
            st.unmatched += cell.only_a + cell.only_b;
            for &i in &cell.records {
                let Some(rj) = j.records.get(i) else { continue };
                st.records += 1;
                let sev = severity(rj.status);
                if st.status.is_none_or(|s| severity(s) < sev) {
                    st.status = Some(rj.status);
                }
                let v = metric_value(c, j, i, metric);
                if let Some(v) = v {
                    st.value = Some(match st.value {
                        Some(cur) if cur.is_nan() || v.is_nan() => f64::NAN,
                        Some(cur) => cur.max(v),
                        None => v,
                    });
                }
                let vv = v.unwrap_or(-1.0);
                let better = match worst {
                    None => true,
                    Some((s, w, wi)) => (sev, vv) > (s, w) || ((sev, vv) == (s, w) && i < wi),
                };
                if better {
                    worst = Some((sev, vv, i));
                }
                if f.first_exceed == Some(i) {
                    st.marks |= MARK_FIRST;
                }
                if f.source == Some(i) {
                    st.marks |= MARK_SOURCE;
                }
                if f.onset == Some(i) {
                    st.marks |= MARK_ONSET;
                }
            }
        }
        st.pick = worst.map(|(_, _, i)| i);
        st.rank = worst.map_or((0, 0.0), |(s, v, _)| (s, v));
        st
    }

    /// The nodes from the root down to `n`, `n` excluded.
    pub fn ancestors(&self, n: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut at = self.nodes.get(n).and_then(|x| x.parent);
        while let Some(p) = at {
            out.push(p);
            at = self.nodes[p].parent;
        }
        out.reverse();
        out
    }
}

/// Every cell of every key and every subtree under one metric, computed once per judgement so
/// that drawing and moving cost O(visible cells) whatever the trace size.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatCache {
    pub metric: Option<Metric>,
    /// keys × columns: each key alone.
    pub own: Vec<CellStat>,
    /// nodes × columns: each node's whole subtree.
    pub sub: Vec<CellStat>,
    columns: usize,
}

/// Combine two cells' statistics (as [`Grid::cell_stat`] would over both key sets).
fn merge(a: &CellStat, b: &CellStat) -> CellStat {
    let value = match (a.value, b.value) {
        (Some(x), Some(y)) if x.is_nan() || y.is_nan() => Some(f64::NAN),
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    };
    let status = match (a.status, b.status) {
        (Some(x), Some(y)) => Some(if severity(y) > severity(x) { y } else { x }),
        (x, y) => x.or(y),
    };
    let (pick, rank) = match (a.pick, b.pick) {
        (Some(x), Some(y)) => {
            if b.rank > a.rank || (b.rank == a.rank && y < x) {
                (Some(y), b.rank)
            } else {
                (Some(x), a.rank)
            }
        }
        (Some(x), None) => (Some(x), a.rank),
        (None, y) => (y, b.rank),
    };
    CellStat {
        value,
        status,
        records: a.records + b.records,
        unmatched: a.unmatched + b.unmatched,
        marks: a.marks | b.marks,
        pick,
        rank,
    }
}

impl StatCache {
    pub fn build(g: &Grid, c: &Comparison, j: &Judgement, f: &Findings, metric: Metric) -> Self {
        let cols = g.columns();
        let mut own = Vec::with_capacity(g.keys.len() * cols);
        for k in 0..g.keys.len() {
            for col in 0..cols {
                own.push(g.cell_stat(c, j, f, &[k], col, metric));
            }
        }
        let mut sub = vec![CellStat::default(); g.nodes.len() * cols];
        // Children come after their parent in depth-first order: fold from the end.
        for n in (0..g.nodes.len()).rev() {
            for col in 0..cols {
                let mut st = match g.nodes[n].key {
                    Some(k) => own[k * cols + col],
                    None => CellStat::default(),
                };
                for &ch in &g.nodes[n].children {
                    st = merge(&st, &sub[ch * cols + col]);
                }
                sub[n * cols + col] = st;
            }
        }
        StatCache {
            metric: Some(metric),
            own,
            sub,
            columns: cols,
        }
    }

    /// The cell of node `n`'s row: the node's own key when `own`, else its subtree.
    pub fn get(&self, g: &Grid, n: usize, own_only: bool, col: usize) -> Option<CellStat> {
        if col >= self.columns {
            return None;
        }
        match (own_only, g.nodes.get(n)?.key) {
            (true, Some(k)) => self.own.get(k * self.columns + col).copied(),
            (true, None) => Some(CellStat::default()),
            (false, _) => self.sub.get(n * self.columns + col).copied(),
        }
    }
}

/// Smallest and largest decade (floor/ceil of log10) over the finite positive values.
pub fn decade_range(values: impl Iterator<Item = f64>) -> Option<(i32, i32)> {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for v in values.filter(|v| v.is_finite() && *v > 0.0) {
        let l = v.log10();
        lo = lo.min(l);
        hi = hi.max(l);
    }
    if lo > hi {
        return None;
    }
    let (lo, hi) = (lo.floor() as i32, hi.ceil() as i32);
    Some(if lo == hi { (lo - 1, hi) } else { (lo, hi) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture::comparison as fixture_comparison;

    #[test]
    fn parts_keep_indices_with_their_parent() {
        assert_eq!(
            parts("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1"),
            [
                "unet",
                "down_blocks.1",
                "attentions.0",
                "transformer_blocks.0",
                "attn1"
            ]
        );
        assert_eq!(parts("image"), ["image"]);
    }

    #[test]
    fn grid_of_the_fixture() {
        let c = fixture_comparison();
        let g = Grid::new(&c);
        assert_eq!(g.steps, [0, 1, 2, 3, 4]);
        assert!(g.outside);
        assert_eq!(g.columns(), 6);
        assert_eq!(
            g.keys,
            [
                "noise.initial",
                "sampler.x",
                "unet.mid_block",
                "vae.decoder"
            ]
        );
        assert_eq!(g.column_of(None), Some(0));
        assert_eq!(g.column_of(Some(2)), Some(3));
        assert_eq!(g.step_of(3), Some(2));
        assert_eq!(g.locate(&c, 4), Some((2, 2)));
        assert_eq!(g.cell(3, 0).unwrap().only_b, 1);
        // Single-child groups merge: noise.initial, sampler.x, unet.mid_block, vae.decoder.
        let labels: Vec<&str> = g.nodes.iter().map(|n| n.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "noise.initial",
                "sampler.x",
                "unet.mid_block",
                "vae.decoder"
            ]
        );
    }

    #[test]
    fn tree_groups_and_collapsed_stats() {
        let mut c = fixture_comparison();
        for (i, k) in [
            (2, "unet.down_blocks.0.resnets.0"),
            (4, "unet.down_blocks.0.attentions.0"),
            (6, "unet.down_blocks.0"),
        ] {
            c.records[i].key = k.into();
        }
        let g = Grid::new(&c);
        let labels: Vec<(usize, &str)> = g
            .nodes
            .iter()
            .map(|n| (n.depth, n.label.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                (0, "noise.initial"),
                (0, "sampler.x"),
                (0, "unet"),
                (1, "down_blocks.0"),
                (2, "resnets.0"),
                (2, "attentions.0"),
                (1, "mid_block"),
                (0, "vae.decoder"),
            ]
        );
        let block = 3;
        assert_eq!(g.nodes[block].key, g.key_index("unet.down_blocks.0"));
        assert_eq!(g.nodes[block].keys.len(), 3);
        assert_eq!(g.row_keys(block, true).len(), 1);
        assert_eq!(g.row_keys(block, false).len(), 3);
        assert_eq!(g.ancestors(4), [2, 3]);
        let j = crate::analysis::judge(
            &c,
            &crate::analysis::TolConfig::default(),
            &crate::analysis::Criteria::default(),
        );
        let f = Findings::of(&c, &j);
        // Step 1 (column 2): attentions.0 at record 4 is the source and the first failure.
        let st = g.cell_stat(&c, &j, &f, g.row_keys(block, false), 2, Metric::RelL2);
        assert_eq!(st.status, Some(Status::Fail));
        assert_eq!(st.pick, Some(4));
        assert_eq!(
            st.marks & (MARK_FIRST | MARK_SOURCE),
            MARK_FIRST | MARK_SOURCE
        );
        assert_eq!(st.value, Some(1e-3));
        let own = g.cell_stat(&c, &j, &f, g.row_keys(block, true), 2, Metric::RelL2);
        assert!(own.is_empty());
    }

    #[test]
    fn the_cache_equals_direct_computation() {
        let mut c = fixture_comparison();
        for (i, k) in [
            (2, "unet.down_blocks.0.resnets.0"),
            (4, "unet.down_blocks.0.attentions.0"),
            (6, "unet.down_blocks.0"),
        ] {
            c.records[i].key = k.into();
        }
        let g = Grid::new(&c);
        let j = crate::analysis::judge(
            &c,
            &crate::analysis::TolConfig::default(),
            &crate::analysis::Criteria::default(),
        );
        let f = Findings::of(&c, &j);
        for metric in Metric::ALL {
            let cache = StatCache::build(&g, &c, &j, &f, metric);
            for n in 0..g.nodes.len() {
                for expanded in [false, true] {
                    let keys = g.row_keys(n, expanded);
                    for col in 0..g.columns() {
                        assert_eq!(
                            cache.get(&g, n, g.own_only(n, expanded), col),
                            Some(g.cell_stat(&c, &j, &f, keys, col, metric)),
                            "{metric:?} node {n} col {col} expanded {expanded}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn metric_values() {
        let c = fixture_comparison();
        let j = crate::analysis::judge(
            &c,
            &crate::analysis::TolConfig::default(),
            &crate::analysis::Criteria::default(),
        );
        assert_eq!(metric_value(&c, &j, 0, Metric::RelL2), Some(0.0));
        assert_eq!(metric_value(&c, &j, 4, Metric::AbsErr), Some(2e-3));
        let over = metric_value(&c, &j, 4, Metric::OverTol).unwrap();
        // f32 defaults: rel 1.3e-6, abs 1e-5 → min(1e-3/1.3e-6, 2e-3/1e-5) = 200.
        assert!((over - 200.0).abs() < 1e-9, "{over}");
        assert_eq!(metric_value(&c, &j, 4, Metric::Gain), Some(f64::INFINITY));
        assert_eq!(Metric::Gain.next(), Metric::RelL2);
        assert_eq!(
            decade_range([0.0, 1.5e-3, 2e-1, f64::INFINITY].into_iter()),
            Some((-3, 0))
        );
        assert_eq!(decade_range([1e-3].into_iter()), Some((-4, -3)));
        assert_eq!(decade_range([0.0].into_iter()), None);
    }
}
