//! The JUnit XML report. The first test case is the verdict itself (failing with its
//! explanation whenever the verdict fails, whatever the cause); then one case per trace that is
//! not a whole run, one per key with records missing on one side (failing unless
//! `--allow-missing` allows them, then skipped), and one per probe key (failing when any of its
//! records fails, an error when its shapes differ, skipped when its records could not be
//! judged). CI systems show each as a test; `time` is the comparison's wall time.

use super::{key_rows, sci, xml_escape};
use crate::analysis::{AllowMissing, Comparison, Judgement, RecordRef};
use std::fmt::Write;

/// One `<testcase>`: its outcome element, if any.
enum Outcome {
    Pass,
    Failure { message: String, detail: String },
    Error { message: String, detail: String },
    Skipped { message: String },
}

struct Case {
    class: String,
    name: String,
    time: f64,
    outcome: Outcome,
}

impl Case {
    fn write(&self, s: &mut String) {
        let _ = write!(
            s,
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\">",
            xml_escape(&self.class),
            xml_escape(&self.name),
            self.time
        );
        match &self.outcome {
            Outcome::Pass => {}
            Outcome::Failure { message, detail } => {
                let _ = write!(
                    s,
                    "<failure message=\"{}\">{}</failure>",
                    xml_escape(message),
                    xml_escape(detail)
                );
            }
            Outcome::Error { message, detail } => {
                let _ = write!(
                    s,
                    "<error message=\"{}\">{}</error>",
                    xml_escape(message),
                    xml_escape(detail)
                );
            }
            Outcome::Skipped { message } => {
                let _ = write!(s, "<skipped message=\"{}\"/>", xml_escape(message));
            }
        }
        let _ = writeln!(s, "</testcase>");
    }
}

fn verdict_case(c: &Comparison, j: &Judgement) -> Case {
    let v = &j.verdict;
    Case {
        class: "sdtrace".into(),
        name: "verdict".into(),
        time: c.elapsed_s,
        outcome: if v.passed {
            Outcome::Pass
        } else {
            Outcome::Failure {
                message: format!("{}: {} (exit {})", v.class.name(), v.outcome(), v.exit_code),
                detail: v.summary.clone(),
            }
        },
    }
}

/// The records of `lacks` grouped by key, in order of first appearance.
fn by_key(lacks: &[RecordRef]) -> Vec<(&str, Vec<&RecordRef>)> {
    let mut groups: Vec<(&str, Vec<&RecordRef>)> = Vec::new();
    for r in lacks {
        match groups.iter_mut().find(|(k, _)| *k == r.key) {
            Some((_, g)) => g.push(r),
            None => groups.push((&r.key, vec![r])),
        }
    }
    groups
}

/// Cases for what each side lacks: the run itself, then the missing records by key.
fn gap_cases(c: &Comparison, j: &Judgement) -> Vec<Case> {
    let allow = &j.criteria.allow_missing;
    let mut cases = Vec::new();
    for g in &j.gaps {
        let other = g.other();
        if let Some(why) = &g.shortfall {
            let message = format!("{} is {why}", g.side);
            cases.push(Case {
                class: "sdtrace.completeness".into(),
                name: format!("trace {} is a whole run", g.side),
                time: 0.0,
                outcome: if *allow == AllowMissing::All {
                    Outcome::Skipped {
                        message: format!("{message}; allowed by --allow-missing all"),
                    }
                } else {
                    Outcome::Failure {
                        message,
                        detail: g.path.clone(),
                    }
                },
            });
        }
        for (key, recs) in by_key(g.lacks(c)) {
            let message = format!(
                "{} of {other}'s records are missing in {}, first at {}",
                recs.len(),
                g.side,
                recs[0].label()
            );
            let allowed = allow.allows_key(key);
            cases.push(Case {
                class: "sdtrace.missing".into(),
                name: format!("{key} (missing in {})", g.side),
                time: 0.0,
                outcome: if allowed {
                    Outcome::Skipped {
                        message: format!(
                            "{message}; allowed by --allow-missing {}",
                            allow.describe()
                        ),
                    }
                } else {
                    Outcome::Failure {
                        message,
                        detail: recs
                            .iter()
                            .map(|r| r.label())
                            .collect::<Vec<_>>()
                            .join("\n"),
                    }
                },
            });
        }
    }
    cases
}

fn key_cases(c: &Comparison, j: &Judgement) -> Vec<Case> {
    key_rows(c, j)
        .iter()
        .map(|r| {
            let outcome = if let Some(i) = r.first_fail {
                let rec = &c.records[i];
                let need = r.required.map_or(String::new(), |q| {
                    format!(
                        "; passes every record with rel ≥ {} or abs ≥ {}",
                        sci(Some(q.rel)),
                        sci(Some(q.abs))
                    )
                });
                Outcome::Failure {
                    message: format!(
                        "{} of {} records over tolerance, first at {}{need}",
                        r.fail,
                        r.records,
                        rec.label()
                    ),
                    detail: format!(
                        "first failing: {} rel L2 {} abs {}{}{}",
                        rec.label(),
                        sci(rec.rel_l2),
                        sci(rec.abs_error),
                        j.records[i]
                            .reason
                            .as_ref()
                            .map_or(String::new(), |w| format!(" [{w}]")),
                        if r.source {
                            "\nthis key holds the source of the divergence"
                        } else {
                            ""
                        }
                    ),
                }
            } else if r.not_compared > 0 {
                Outcome::Error {
                    message: format!("{} records not comparable (shapes differ)", r.not_compared),
                    detail: String::new(),
                }
            } else if r.unknown > 0 {
                Outcome::Skipped {
                    message: format!("{} records could not be judged", r.unknown),
                }
            } else {
                Outcome::Pass
            };
            Case {
                class: format!("sdtrace.{}", r.key.split('.').next().unwrap_or("")),
                name: r.key.clone(),
                time: 0.0,
                outcome,
            }
        })
        .collect()
}

pub fn render_junit(c: &Comparison, j: &Judgement) -> String {
    let mut cases = vec![verdict_case(c, j)];
    cases.extend(gap_cases(c, j));
    cases.extend(key_cases(c, j));
    let count = |f: fn(&Outcome) -> bool| cases.iter().filter(|c| f(&c.outcome)).count();
    let failures = count(|o| matches!(o, Outcome::Failure { .. }));
    let errors = count(|o| matches!(o, Outcome::Error { .. }));
    let skipped = count(|o| matches!(o, Outcome::Skipped { .. }));
    let totals = format!(
        "tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{:.3}\"",
        cases.len(),
        c.elapsed_s
    );
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(s, "<testsuites name=\"sdtrace report\" {totals}>");
    let _ = writeln!(
        s,
        "  <testsuite name=\"{} vs {}\" {totals}>",
        xml_escape(&c.a.path),
        xml_escape(&c.b.path),
    );
    for case in &cases {
        case.write(&mut s);
    }
    s.push_str("  </testsuite>\n</testsuites>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture;

    #[test]
    fn junit_report() {
        let (c, j) = fixture::judged();
        let x = render_junit(&c, &j);
        assert!(
            x.contains(
                "<testsuites name=\"sdtrace report\" tests=\"5\" failures=\"3\" errors=\"0\" skipped=\"1\" time=\"1.250\">"
            ),
            "{x}"
        );
        assert!(x.contains("name=\"a.sdt vs b&lt;&amp;&gt;.sdt\""), "{x}");
        // The verdict comes first, failing with its explanation.
        let first = x.lines().find(|l| l.contains("<testcase")).unwrap();
        assert!(
            first.starts_with("    <testcase classname=\"sdtrace\" name=\"verdict\" time=\"1.250\"><failure message=\"numeric drift: diverges (exit 1)\">Numeric drift"),
            "{first}"
        );
        assert!(x.contains(
            "<testcase classname=\"sdtrace.missing\" name=\"vae.decoder (missing in A)\" time=\"0.000\"><skipped message=\"1 of B&apos;s records are missing in A, first at vae.decoder; allowed by --allow-missing vae.*\"/>"
        ), "{x}");
        assert!(x.contains(
            "<testcase classname=\"sdtrace.noise\" name=\"noise.initial\" time=\"0.000\"></testcase>"
        ));
        assert!(x.contains(
            "<testcase classname=\"sdtrace.unet\" name=\"unet.mid_block\" time=\"0.000\"><failure message=\"3 of 4 records over tolerance, first at step 1 unet.mid_block; passes every record with rel ≥ 1.60e-2 or abs ≥ 3.20e-2\">"
        ), "{x}");
        assert_eq!(
            x.matches("<testcase").count(),
            x.matches("</testcase>").count()
        );
    }

    #[test]
    fn junit_missing_records_fail() {
        let c = fixture::comparison();
        let j = crate::analysis::judge(&c, &Default::default(), &Default::default());
        let x = render_junit(&c, &j);
        assert!(x.contains("<failure message=\"incomplete: incomplete (exit 4)\">Incomplete: A (a.sdt) lacks 1 of B&apos;s records"), "{x}");
        assert!(x.contains(
            "name=\"vae.decoder (missing in A)\" time=\"0.000\"><failure message=\"1 of B&apos;s records are missing in A, first at vae.decoder\">vae.decoder</failure>"
        ), "{x}");
    }
}
