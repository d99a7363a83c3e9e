//! Completeness: what each trace lacks, so that a verdict never passes what it did not compare.
//!
//! A side has a *gap* when the other trace holds records it lacks (records on one side only),
//! or when it is not a whole run: a truncated or damaged file, a run-end that says interrupted
//! or failed, or — format 1.1 and later, whose recorders always write one — no run-end at all
//! ([`TraceSide::shortfall`](super::TraceSide::shortfall)). A gap fails the comparison unless
//! `--allow-missing` ([`AllowMissing`]) covers it: a list of key globs tolerates the one-sided
//! records of those keys, `all` tolerates every missing record and an incomplete run. Allowed
//! records are still counted and reported, never dropped silently.

use super::align::RecordRef;
use super::compare::{Comparison, TraceSide};
use serde::{Deserialize, Serialize};

/// Which missing records a judgement tolerates (`--allow-missing`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllowMissing {
    /// Nothing: any record on one side only, and any incomplete trace, fails (the default).
    #[default]
    Nothing,
    /// Records on one side only whose key matches one of these globs.
    Keys(Vec<String>),
    /// Every record on one side only, and traces that are not whole runs.
    All,
}

impl AllowMissing {
    /// Whether a record of `key` may be missing on one side.
    pub fn allows_key(&self, key: &str) -> bool {
        match self {
            AllowMissing::Nothing => false,
            AllowMissing::Keys(globs) => globs.iter().any(|g| crate::glob::matches(g, key)),
            AllowMissing::All => true,
        }
    }

    /// The flag as given: `all`, `vae.*,image`, or `""` when nothing is allowed.
    pub fn describe(&self) -> String {
        match self {
            AllowMissing::Nothing => String::new(),
            AllowMissing::Keys(globs) => globs.join(","),
            AllowMissing::All => "all".into(),
        }
    }
}

impl std::str::FromStr for AllowMissing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim() == "all" {
            return Ok(AllowMissing::All);
        }
        let globs: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_string)
            .collect();
        if globs.is_empty() {
            return Err(format!(
                "--allow-missing '{s}': give `all` or comma-separated key globs such as 'vae.*,image'"
            ));
        }
        Ok(AllowMissing::Keys(globs))
    }
}

/// What one trace lacks against the other.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gap {
    /// `A` or `B`.
    pub side: String,
    pub path: String,
    /// Why the trace is not a whole run, when it is not.
    pub shortfall: Option<String>,
    /// Records the other trace holds and this one lacks, not allowed by `--allow-missing`.
    pub missing: usize,
    /// Records this one lacks that `--allow-missing` allows.
    pub allowed: usize,
    /// The first missing record that is not allowed (execution order of the other trace).
    pub first_missing: Option<String>,
    /// The last sampler step this trace and the other one hold records of.
    pub last_step: Option<u32>,
    pub other_last_step: Option<u32>,
    /// Something in the gap is not allowed: the comparison cannot pass.
    pub fails: bool,
}

impl Gap {
    /// The side this one lacks records of.
    pub fn other(&self) -> &'static str {
        if self.side == "A" { "B" } else { "A" }
    }

    /// The records the other trace holds and this one lacks (allowed or not).
    pub fn lacks<'a>(&self, c: &'a Comparison) -> &'a [RecordRef] {
        lacks(c, &self.side)
    }

    /// One sentence: `B (b.sdt) is a truncated or damaged file (…); it lacks 630 of A's
    /// records (first: step 3 unet.conv_in), and its last step is 2 where A's is 4.`
    pub fn describe(&self) -> String {
        let other = self.other();
        let mut parts = Vec::new();
        if let Some(why) = &self.shortfall {
            parts.push(format!("is {why}"));
        }
        match (self.missing, self.allowed) {
            (0, 0) => {}
            (0, n) => parts.push(format!("lacks {n} of {other}'s records")),
            (m, n) => parts.push(format!(
                "lacks {m} of {other}'s records{}{}",
                self.first_missing
                    .as_ref()
                    .map_or(String::new(), |f| format!(" (first: {f})")),
                if n > 0 {
                    format!(" and {n} more that --allow-missing allows")
                } else {
                    String::new()
                }
            )),
        }
        let mut s = format!("{} ({}) {}", self.side, self.path, parts.join("; "));
        if self.last_step != self.other_last_step {
            let step = |s: Option<u32>| s.map_or("none".to_string(), |s| s.to_string());
            s += &format!(
                "; its last sampler step is {} where {other}'s is {}",
                step(self.last_step),
                step(self.other_last_step)
            );
        }
        s
    }
}

/// The records of the other trace that `side` (`A` or `B`) lacks.
fn lacks<'a>(c: &'a Comparison, side: &str) -> &'a [RecordRef] {
    if side == "A" { &c.only_b } else { &c.only_a }
}

/// The gaps of both sides (A first), each only when the side lacks something.
pub fn gaps(c: &Comparison, allow: &AllowMissing) -> Vec<Gap> {
    let paired_last = c.records.iter().filter_map(|r| r.step).max();
    let last = |own: &[RecordRef]| own.iter().filter_map(|r| r.step).max().max(paired_last);
    let (last_a, last_b) = (last(&c.only_a), last(&c.only_b));
    let side = |name: &str, t: &TraceSide, own, other| {
        let lacks = lacks(c, name);
        let (allowed, missing): (Vec<&RecordRef>, Vec<&RecordRef>) =
            lacks.iter().partition(|r| allow.allows_key(&r.key));
        let shortfall = t.shortfall();
        let fails = !missing.is_empty() || (shortfall.is_some() && *allow != AllowMissing::All);
        (shortfall.is_some() || !lacks.is_empty()).then(|| Gap {
            side: name.into(),
            path: t.path.clone(),
            shortfall,
            missing: missing.len(),
            allowed: allowed.len(),
            first_missing: missing.first().map(|r| r.label()),
            last_step: own,
            other_last_step: other,
            fails,
        })
    };
    [
        side("A", &c.a, last_a, last_b),
        side("B", &c.b, last_b, last_a),
    ]
    .into_iter()
    .flatten()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_missing_parses() {
        assert_eq!("all".parse(), Ok(AllowMissing::All));
        assert_eq!(
            "vae.*, image".parse(),
            Ok(AllowMissing::Keys(vec!["vae.*".into(), "image".into()]))
        );
        assert!(" , ".parse::<AllowMissing>().is_err());
        let k: AllowMissing = "vae.*".parse().unwrap();
        assert!(k.allows_key("vae.decoder") && !k.allows_key("image"));
        assert!(!AllowMissing::Nothing.allows_key("image"));
    }
}
