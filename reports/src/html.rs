//! The suite's HTML report: one self-contained file (`index.html`; no script, no network,
//! every plot inline as a data URI) with failures first, an aggregate per scenario over its
//! seeds, and each scenario's plots, linking to every per-seed JSON report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::{Report, ReportError};

/// Escapes text for HTML and XML (element content and quoted attributes): the five markup
/// characters, and control characters XML 1.0 does not allow, written as `\u{..}`.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

use escape as esc;

/// Standard base64 (RFC 4648 §4) with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An `<img>` with the PNG at `path` inline, or nothing if there is none.
fn inline_png(path: &Path, alt: &str) -> Result<Option<String>, ReportError> {
    if !path.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(path).map_err(|e| ReportError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(Some(format!(
        "<img alt=\"{}\" src=\"data:image/png;base64,{}\">",
        esc(alt),
        base64(&bytes)
    )))
}

/// min / median / max of the values, or a dash.
fn spread(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "–".into();
    }
    v.sort_by(f64::total_cmp);
    let f = |x: f64| {
        if x.fract() == 0.0 {
            format!("{x:.0}")
        } else {
            format!("{x:.1}")
        }
    };
    let (lo, mid, hi) = (v[0], v[v.len() / 2], v[v.len() - 1]);
    if lo == hi {
        f(lo)
    } else {
        format!("{} / {} / {}", f(lo), f(mid), f(hi))
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .6em;\
text-align:left;vertical-align:top}th{background:#f3f3f3}td.num{text-align:right;white-space:nowrap}\
tr.fail td{background:#fde8e8}tr.pass td.rate{color:#186a1f}code{background:#f6f6f6;\
padding:0 .2em}img{max-width:100%;border:1px solid #ddd;margin:.5em 0}\
section.scenario{margin:2em 0;border-top:1px solid #ddd}h2{margin-top:1.5em}";

/// The client's race of one run, as a table, with what its policies chose.
fn establishment(h: &mut String, e: &crate::Establishment, seed: u64) {
    let _ = writeln!(
        h,
        "<table class=\"race\"><caption>connection race, seed {seed}: decided after {} ms{}</caption>\
         <tr><th>protocol</th><th>remote</th><th>start</th><th>ran</th><th>outcome</th></tr>",
        e.duration_ms,
        e.error
            .as_ref()
            .map_or(String::new(), |err| format!(", {}", esc(err)))
    );
    if let Some(r) = &e.resolution {
        let mut answers: Vec<String> = r
            .queries
            .iter()
            .map(|q| {
                let what = match &q.error {
                    Some(err) => format!("failed: {}", esc(err)),
                    None if q.addresses.is_empty() => "no address".to_owned(),
                    None => esc(&q.addresses.join(", ")),
                };
                let late = if q.late { ", joined the race" } else { "" };
                format!("{} at {} ms ({what}{late})", esc(&q.query), q.answered_ms)
            })
            .collect();
        answers.extend(
            r.unanswered
                .iter()
                .map(|q| format!("{} unanswered", esc(q))),
        );
        let _ = writeln!(
            h,
            "<tr><td colspan=\"5\">DNS: {}; the race started at {} ms</td></tr>",
            answers.join("; "),
            r.race_started_ms
        );
    }
    for a in &e.attempts {
        let outcome = match &a.reason {
            Some(why) => format!("{}: {}", esc(&a.outcome), esc(why)),
            None => esc(&a.outcome),
        };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{outcome}</td></tr>",
            esc(&a.protocol),
            esc(&a.remote),
            a.started_ms,
            a.duration_ms
        );
    }
    h.push_str("</table>\n");
    if !e.policy.is_empty() {
        h.push_str("<ul class=\"policy\">");
        for p in &e.policy {
            let _ = write!(
                h,
                "<li>policy <code>{}</code>: {}</li>",
                esc(&p.policy),
                esc(&p.setting)
            );
        }
        h.push_str("</ul>\n");
    }
}

/// Writes `out/index.html` for a suite's reports (metrics and verdicts are enough: the
/// plots are read from the files the suite wrote below `out`). `replay` gives each run's
/// replay command. Scenarios appear in the order of their first run.
pub fn index<R: std::borrow::Borrow<Report>>(
    out: &Path,
    reports: &[R],
    replay: impl Fn(&Report) -> String,
) -> Result<std::path::PathBuf, ReportError> {
    let reports: Vec<&Report> = reports.iter().map(|r| r.borrow()).collect();
    let mut order: Vec<&str> = Vec::new();
    let mut by: BTreeMap<&str, Vec<&Report>> = BTreeMap::new();
    for r in &reports {
        if !by.contains_key(r.scenario.as_str()) {
            order.push(&r.scenario);
        }
        by.entry(&r.scenario).or_default().push(r);
    }
    let failed: Vec<&&Report> = reports.iter().filter(|r| !r.passed).collect();
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>postsock suite: {} of {} runs passed</title><style>{STYLE}</style></head><body>\n",
        reports.len() - failed.len(),
        reports.len()
    );
    let sim_s: f64 = reports
        .iter()
        .map(|r| r.metrics.sim_duration_ms)
        .sum::<f64>()
        / 1000.0;
    let _ = write!(
        h,
        "<h1>postsock suite</h1>\n<p id=\"totals\">{} scenarios, {} runs: <b>{} passed, {} failed</b>; \
         {sim_s:.1} simulated s.</p>\n",
        order.len(),
        reports.len(),
        reports.len() - failed.len(),
        failed.len()
    );
    // Failures first, each with what failed and the command that replays it.
    let _ = writeln!(h, "<h2 id=\"failures\">Failures ({})</h2>", failed.len());
    if failed.is_empty() {
        h.push_str("<p>None.</p>\n");
    } else {
        h.push_str("<table id=\"failure-table\"><tr><th>run</th><th>what failed</th><th>replay</th></tr>\n");
        for r in &failed {
            let mut what: Vec<String> = r.error.iter().map(|e| format!("error: {e}")).collect();
            what.extend(r.expectations.iter().filter(|e| !e.passed).map(|e| {
                format!(
                    "expectation <code>{}</code> failed, measured {}",
                    esc(&e.name),
                    e.measured.map_or("nothing".into(), |v| v.to_string())
                )
            }));
            let what: Vec<String> = what
                .into_iter()
                .map(|w| if w.starts_with("error: ") { esc(&w) } else { w })
                .collect();
            let _ = writeln!(
                h,
                "<tr class=\"fail\"><td><a href=\"{0}/seed-{1}.json\">{0} seed {1}</a></td><td>{2}</td><td><code>{3}</code></td></tr>",
                esc(&r.scenario),
                r.seed,
                what.join("<br>"),
                esc(&replay(r))
            );
        }
        h.push_str("</table>\n");
    }
    // One row per scenario: pass rate and the spread of its key figures over seeds.
    h.push_str("<h2 id=\"scenarios\">Scenarios</h2>\n<p>Figures are min / median / max over seeds (one value when all agree), simulated ms.</p>\n");
    h.push_str("<table id=\"scenario-table\"><tr><th>scenario</th><th>protocol</th><th>passed</th>\
                <th>TTFM</th><th>failover gap</th><th>median latency</th><th>delivered</th><th>reports</th></tr>\n");
    for name in &order {
        let runs = &by[name];
        let passed = runs.iter().filter(|r| r.passed).count();
        let metric =
            |f: &dyn Fn(&Report) -> Option<f64>| spread(runs.iter().filter_map(|r| f(r)).collect());
        let links: Vec<String> = runs
            .iter()
            .map(|r| {
                format!(
                    "<a href=\"{}/seed-{}.json\">{}</a>",
                    esc(name),
                    r.seed,
                    r.seed
                )
            })
            .collect();
        let _ = writeln!(
            h,
            "<tr class=\"{}\"><td><a href=\"#s-{}\">{}</a></td><td>{}</td><td class=\"num rate\">{passed}/{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            if passed == runs.len() { "pass" } else { "fail" },
            esc(name),
            esc(name),
            esc(&runs[0].protocol),
            runs.len(),
            metric(&|r| r.metrics.ttfm_ms),
            metric(&|r| r.metrics.failover_gap_ms),
            metric(&|r| r.metrics.median_latency_ms),
            metric(&|r| Some(r.metrics.messages_delivered as f64)),
            links.join(" ")
        );
    }
    h.push_str("</table>\n");
    // Suite-wide plots.
    h.push_str("<h2 id=\"plots\">Suite plots</h2>\n");
    for (file, alt) in [
        (
            "ttfm-vs-limit.png",
            "TTFM of every scenario beside its physical limit",
        ),
        ("nat-matrix.png", "NAT-pair matrix"),
        (
            "compare-hol.png",
            "QUIC vs TLS/TCP: p95 latency against loss",
        ),
    ] {
        if let Some(img) = inline_png(&out.join(file), alt)? {
            let _ = writeln!(
                h,
                "<figure>{img}<figcaption>{}</figcaption></figure>",
                esc(alt)
            );
        }
    }
    // Each scenario's plots (from its first seed) and its latency CDF over every seed.
    for name in &order {
        let runs = &by[name];
        let first = runs[0].seed;
        let dir = out.join(name);
        let _ = writeln!(
            h,
            "<section class=\"scenario\" id=\"s-{0}\"><h3>{0}</h3>",
            esc(name)
        );
        for (file, alt) in [
            (
                "latency-cdf.png".to_string(),
                "message latency CDF, every seed",
            ),
            (format!("seed-{first}.png"), "message time sequence"),
            (
                format!("seed-{first}-goodput.png"),
                "goodput and interface in use",
            ),
            (format!("seed-{first}-niceness.png"), "latency by niceness"),
            (format!("seed-{first}-race.png"), "connection race"),
        ] {
            if let Some(img) = inline_png(&dir.join(&file), &format!("{name}: {alt}"))? {
                let _ = writeln!(
                    h,
                    "<figure>{img}<figcaption>{}</figcaption></figure>",
                    esc(alt)
                );
            }
        }
        if let Some(e) = &runs[0].establishment {
            establishment(&mut h, e, first);
        }
        h.push_str("</section>\n");
    }
    h.push_str("</body></html>\n");
    let path = out.join("index.html");
    std::fs::write(&path, h).map_err(|source| ReportError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_test_vectors() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), coded, "{plain:?}");
        }
    }

    #[test]
    fn html_escapes_markup_and_control_characters() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(esc("a\u{1}b\tc"), "a\\u{1}b\tc");
    }

    #[test]
    fn spread_is_one_value_when_all_agree() {
        assert_eq!(spread(vec![]), "–");
        assert_eq!(spread(vec![60.0, 60.0]), "60");
        assert_eq!(spread(vec![3.0, 1.0, 2.5]), "1 / 2.5 / 3");
    }
}
