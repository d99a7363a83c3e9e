//! The JUnit XML report: one test case per probe key (failing when any of its records fails,
//! skipped when its records could not be judged), plus a `structure` case that fails when the
//! traces are not comparable. CI systems show each key as a test.

use super::{key_rows, sci, xml_escape};
use crate::analysis::{Comparison, Judgement, VerdictClass};
use std::fmt::Write;

pub fn render_junit(c: &Comparison, j: &Judgement) -> String {
    let rows = key_rows(c, j);
    let structural = j.verdict.class == VerdictClass::Structural;
    let failures = rows.iter().filter(|r| r.fail > 0).count() + structural as usize;
    let skipped = rows
        .iter()
        .filter(|r| r.fail == 0 && (r.unknown > 0 || r.not_compared > 0))
        .count();
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuites name=\"sdtrace report\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\">",
        rows.len() + 1
    );
    let _ = writeln!(
        s,
        "  <testsuite name=\"{} vs {}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\">",
        xml_escape(&c.a.path),
        xml_escape(&c.b.path),
        rows.len() + 1
    );
    let _ = write!(s, "    <testcase classname=\"sdtrace\" name=\"structure\">");
    if structural {
        let _ = write!(
            s,
            "<failure message=\"traces not comparable\">{}</failure>",
            xml_escape(&j.verdict.summary)
        );
    }
    let _ = writeln!(s, "</testcase>");
    for r in &rows {
        let group = r.key.split('.').next().unwrap_or("");
        let _ = write!(
            s,
            "    <testcase classname=\"sdtrace.{}\" name=\"{}\">",
            xml_escape(group),
            xml_escape(&r.key)
        );
        if let Some(i) = r.first_fail {
            let rec = &c.records[i];
            let need = r.required.map_or(String::new(), |q| {
                format!(
                    "; passes every record with rel ≥ {} or abs ≥ {}",
                    sci(Some(q.rel)),
                    sci(Some(q.abs))
                )
            });
            let msg = format!(
                "{} of {} records over tolerance, first at {}{need}",
                r.fail,
                r.records,
                rec.label()
            );
            let detail = format!(
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
            );
            let _ = write!(
                s,
                "<failure message=\"{}\">{}</failure>",
                xml_escape(&msg),
                xml_escape(&detail)
            );
        } else if r.unknown > 0 || r.not_compared > 0 {
            let _ = write!(
                s,
                "<skipped message=\"{} records could not be judged\"/>",
                r.unknown + r.not_compared
            );
        }
        let _ = writeln!(s, "</testcase>");
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
                "<testsuites name=\"sdtrace report\" tests=\"4\" failures=\"2\" skipped=\"0\">"
            ),
            "{x}"
        );
        assert!(x.contains("name=\"a.sdt vs b&lt;&amp;&gt;.sdt\""), "{x}");
        assert!(
            x.contains("<testcase classname=\"sdtrace.noise\" name=\"noise.initial\"></testcase>")
        );
        assert!(x.contains(
            "<testcase classname=\"sdtrace.unet\" name=\"unet.mid_block\"><failure message=\"3 of 4 records over tolerance, first at step 1 unet.mid_block; passes every record with rel ≥ 1.60e-2 or abs ≥ 3.20e-2\">"
        ), "{x}");
        assert!(x.contains("<testcase classname=\"sdtrace\" name=\"structure\"></testcase>"));
        assert_eq!(
            x.matches("<testcase").count(),
            x.matches("</testcase>").count()
        );
    }
}
