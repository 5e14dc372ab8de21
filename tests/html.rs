//! The suite's HTML report: one self-contained file, failures first with their replay,
//! a row per scenario, every plot inline; checked in headless Chromium (installed with
//! apt-get if missing): it loads with no console message and renders the table and plots.

mod common;

use std::path::Path;
use std::process::Command;

fn postsock(args: &[&str]) -> std::process::Output {
    Command::new(common::postsock_bin())
        .args(args)
        .output()
        .expect("run postsock")
}

#[test]
fn the_html_report_is_self_contained_and_renders_in_chromium() {
    let dir = common::TempDir::new("html");
    // A scenario directory with one shipped scenario of each plot kind and one that fails.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let scenarios = dir.join("scenarios");
    for name in [
        "echo/quic",
        "failover/quic-wifi-down",
        "api/niceness-quic",
        "blocking/udp-blocked",
    ] {
        let to = scenarios.join(format!("{name}.toml"));
        std::fs::create_dir_all(to.parent().expect("parent")).expect("dir");
        std::fs::copy(shipped.join(format!("{name}.toml")), &to).expect("copy");
    }
    let quic = std::fs::read_to_string(shipped.join("echo/quic.toml")).expect("read");
    std::fs::write(
        scenarios.join("echo/impossible.toml"),
        format!("{quic}\n[[expect]]\nmetric = \"ttfm_ms\"\nmax = 10\n"),
    )
    .expect("write");
    let out = dir.join("out");
    let s = |p: &Path| p.to_str().expect("utf8").to_owned();
    let o = postsock(&[
        "--scenarios",
        &s(&scenarios),
        "suite",
        "--seeds",
        "2",
        "--out",
        &s(&out),
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let html = std::fs::read_to_string(out.join("index.html")).expect("index.html");

    // Failures first, with what failed and the replay; then the scenario table.
    let failures = html.find("id=\"failure-table\"").expect("failure table");
    let table = html.find("id=\"scenario-table\"").expect("scenario table");
    assert!(failures < table);
    assert!(
        html.contains("expectation <code>ttfm_ms &lt;= 10</code> failed"),
        "{html:.2000}"
    );
    assert!(html.contains(&format!(
        "cargo run --release -- run echo/impossible --seed 1 --scenarios {}",
        s(&scenarios)
    )));
    assert_eq!(
        html.matches("<tr class=\"fail\"><td><a href=").count(),
        2 + 1
    );
    assert!(html.contains("<td class=\"num rate\">0/2</td>"));
    assert!(html.contains("<a href=\"echo/quic/seed-2.json\">2</a>"));
    // Self-contained: every image inline, no script, nothing fetched.
    let images = html.matches("<img ").count();
    // Suite plots (TTFM, NAT matrix) and per scenario a CDF and a time sequence at least.
    assert!(images >= 10, "{images} images");
    assert_eq!(html.matches("src=\"data:image/png;base64,").count(), images);
    assert!(!html.contains("<script") && !html.contains("http://") && !html.contains("https://"));
    // Every kind of per-scenario plot is drawn, and each is in the page.
    for (scenario, plot) in [
        ("failover/quic-wifi-down", "latency-cdf.png"),
        ("failover/quic-wifi-down", "seed-1.png"),
        ("failover/quic-wifi-down", "seed-1-goodput.png"),
        ("api/niceness-quic", "seed-1-niceness.png"),
        ("blocking/udp-blocked", "seed-1-race.png"),
    ] {
        let path = out.join(scenario).join(plot);
        let png = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(png.len() > 10_000, "{} looks empty", path.display());
        let alt = format!("alt=\"{scenario}: ");
        assert!(html.contains(&alt), "{alt}");
    }
    // The race as a table too: QUIC first, TLS/TCP after the attempt delay, and who won.
    let section = html
        .find("id=\"s-blocking/udp-blocked\"")
        .expect("its section");
    let race = section
        + html[section..]
            .find("<table class=\"race\"><caption>connection race, seed 1")
            .expect("a race table");
    let race = &html[race..race + html[race..].find("</table>").expect("its end")];
    let at = |what: &str| {
        race.find(what)
            .unwrap_or_else(|| panic!("no {what} in {race}"))
    };
    let (quic, tls) = (at("<td>quic</td>"), at("<td>tls-tcp</td>"));
    assert!(quic < tls, "{race}");
    assert!(race.contains("<td>won</td>"), "{race}");
    // Above the attempts: what DNS answered, and when the race started.
    let dns = at("DNS: A at 0 ms (192.168.0.");
    assert!(dns < quic, "{race}");
    assert!(race.contains("the race started at 0 ms"), "{race}");
    assert_eq!(
        html.matches("alt=\"blocking/udp-blocked: connection race\"")
            .count(),
        1
    );

    // Chromium: loads it with no console message; the DOM has the tables and the images
    // decoded; a tall screenshot is taken (left beside the report for a look).
    let chromium = common::ensure_installed("chromium", "chromium");
    let url = format!("file://{}", s(&out.join("index.html")));
    let headless = |extra: &[&str]| {
        let mut args = vec![
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
        ];
        args.extend_from_slice(extra);
        args.push(&url);
        // Bounded: a browser that hangs fails the test instead of stalling CI.
        let o = Command::new("timeout")
            .arg("120")
            .arg(chromium)
            .args(&args)
            .output()
            .expect("chromium");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o
    };
    let shot = out.join("screenshot.png");
    let shot_arg = format!("--screenshot={}", s(&shot));
    let o = headless(&[&shot_arg, "--window-size=1280,4000"]);
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(!log.contains("CONSOLE"), "console messages: {log}");
    let png = std::fs::read(&shot).expect("screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // A blank or broken page compresses to a few KB; the table and plots do not.
    assert!(png.len() > 100_000, "screenshot of {} bytes", png.len());
    let o = headless(&["--dump-dom"]);
    let dom = String::from_utf8_lossy(&o.stdout);
    assert!(dom.contains("id=\"scenario-table\"") && dom.contains("id=\"failure-table\""));
    assert_eq!(dom.matches("<img ").count(), images);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("CONSOLE"));
}
