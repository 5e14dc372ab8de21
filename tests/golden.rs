//! Golden reports: a handful of runs checked in byte for byte (tests/golden/). A change that
//! moves one fails here with the first differing line; if the move is intended, run
//! `cargo run --release -- bless` and commit the rewritten files with the reason.

use testbed::suite::{self, Golden};

fn first_difference(want: &str, got: &str) -> String {
    for (i, (w, g)) in want.lines().zip(got.lines()).enumerate() {
        if w != g {
            return format!("line {}:\n  golden: {w}\n  now:    {g}", i + 1);
        }
    }
    format!(
        "lengths differ: golden {} lines, now {} lines",
        want.lines().count(),
        got.lines().count()
    )
}

#[test]
fn golden_reports_are_reproduced_byte_for_byte() {
    let goldens: Vec<Golden> = suite::goldens(&suite::golden_dir()).expect("golden dir");
    assert!(goldens.len() >= 8, "{goldens:?}");
    let fresh = suite::par_map(&goldens, suite::default_jobs(), &|g| {
        suite::golden_run(suite::default_scenarios_dir(), g)
    });
    let mut moved = Vec::new();
    for (g, now) in goldens.iter().zip(fresh) {
        let now = now.expect("run");
        let want = std::fs::read_to_string(&g.path).expect("golden");
        if want != now {
            moved.push(format!(
                "{} seed {} ({}): {}",
                g.scenario,
                g.seed,
                g.path.display(),
                first_difference(&want, &now)
            ));
        }
    }
    assert!(
        moved.is_empty(),
        "golden reports moved (if intended: cargo run --release -- bless):\n{}",
        moved.join("\n")
    );
}

#[test]
fn bless_rewrites_what_moved_and_adds_new_runs() {
    let dir = std::env::temp_dir().join(format!("postsock-golden-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let scenarios = suite::default_scenarios_dir();
    // Adding a run writes it; blessing again changes nothing.
    let added = suite::bless(&dir, scenarios, Some(("echo/quic", 2))).expect("bless");
    assert_eq!(added.len(), 1);
    let path = dir.join("echo/quic/seed-2.json");
    let good = std::fs::read_to_string(&path).expect("written");
    assert!(good.contains("\"seed\": 2"), "{good}");
    assert!(suite::bless(&dir, scenarios, None)
        .expect("again")
        .is_empty());
    // A tampered golden is rewritten.
    std::fs::write(&path, good.replace("\"passed\": true", "\"passed\": false")).expect("w");
    let rewritten = suite::bless(&dir, scenarios, None).expect("bless");
    assert_eq!(rewritten.len(), 1);
    assert_eq!(std::fs::read_to_string(&path).expect("read"), good);
    // An unknown scenario is an error, and leaves nothing behind.
    assert!(suite::bless(&dir, scenarios, Some(("no/such", 1))).is_err());
    assert!(!dir.join("no").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
