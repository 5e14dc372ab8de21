//! The `postsock` command: exit codes, error messages, outputs.

use std::path::Path;
use std::process::{Command, Output};

fn postsock(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_postsock"))
        .args(args)
        .output()
        .expect("run postsock")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("postsock-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn list_shows_the_shipped_scenarios() {
    let out = postsock(&["list"]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("echo/quic ") && stdout.contains("echo/tls-tcp "),
        "{stdout}"
    );
}

#[test]
fn a_malformed_scenario_file_names_file_line_and_column() {
    let dir = temp_dir("malformed");
    let file = dir.join("broken.toml");
    std::fs::write(
        &file,
        "description = \"x\"\n[workload]\nkind = \"echo\"\nprotocol = \"carrier-pigeon\"\n",
    )
    .expect("write");
    let out = postsock(&["run", file.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    let want = format!("{}:4:12:", file.display());
    assert!(stderr.contains(&want), "want {want} in: {stderr}");
    assert!(stderr.contains("carrier-pigeon"), "{stderr}");
}

#[test]
fn an_unknown_scenario_lists_the_known_ones() {
    let out = postsock(&["run", "echo/nope"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("unknown scenario `echo/nope`"), "{stderr}");
    assert!(
        stderr.contains("echo/quic") && stderr.contains("echo/tls-tcp"),
        "{stderr}"
    );
    let out = postsock(&["suite", "nothing-matches"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn usage_errors_exit_with_two() {
    assert_eq!(postsock(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(postsock(&["suite", "--seeds", "0"]).status.code(), Some(2));
}

#[test]
fn run_writes_report_and_plot() {
    let out_dir = temp_dir("run");
    let out = postsock(&[
        "run",
        "echo/quic",
        "--seed",
        "3",
        "--out",
        out_dir.to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = out_dir.join("echo/quic/seed-3.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    assert_eq!(json["seed"], 3);
    assert_eq!(json["passed"], true);
    let png = std::fs::read(out_dir.join("echo/quic/seed-3.png")).expect("plot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 10_000, "the plot looks empty");
}

#[test]
fn a_failing_suite_exits_non_zero_and_prints_the_replay_command() {
    let dir = temp_dir("failing");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/echo/quic.toml");
    let text_in = std::fs::read_to_string(shipped).expect("read");
    // TTFM can never be below one RTT: this expectation must fail.
    let impossible = format!("{text_in}\n[[expect]]\nmetric = \"ttfm_ms\"\nmax = 10\n");
    std::fs::create_dir_all(dir.join("x")).expect("dir");
    std::fs::write(dir.join("x/impossible.toml"), impossible).expect("write");
    let out_dir = dir.join("out");
    let out = postsock(&[
        "--scenarios",
        dir.to_str().expect("utf8"),
        "suite",
        // The built-in (generated) NAT-matrix scenarios are always there; keep to the file.
        "x/",
        "--seeds",
        "2",
        "--out",
        out_dir.to_str().expect("utf8"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("replay: cargo run --release -- run x/impossible --seed 2"),
        "{stderr}"
    );
    assert!(stderr.contains("ttfm_ms <= 10"), "{stderr}");
    let summary = std::fs::read_to_string(out_dir.join("summary.md")).expect("summary");
    assert!(summary.contains("0 of 2 runs passed"), "{summary}");
    assert!(out_dir.join("wallclock.json").is_file());
}

#[test]
fn two_processes_with_the_same_seed_write_identical_reports() {
    let mut reports = Vec::new();
    for attempt in 0..2 {
        let out_dir = temp_dir(&format!("determinism-{attempt}"));
        let out = postsock(&[
            "run",
            "echo/quic-lossy",
            "--seed",
            "4",
            "--out",
            out_dir.to_str().expect("utf8"),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        reports.push(std::fs::read(out_dir.join("echo/quic-lossy/seed-4.json")).expect("report"));
    }
    assert!(
        reports[0] == reports[1],
        "the same seed gave different reports in two processes"
    );
}

#[test]
fn an_unknown_nat_preset_or_knob_names_the_line_and_the_valid_names() {
    let dir = temp_dir("nat");
    let base =
        "description = \"x\"\n[[host]]\nname = \"c\"\ngateway = \"g\"\n[[gateway]]\nname = \"g\"\n";
    for (nat, want) in [
        (
            "nat = { preset = \"cone-ish\" }\n",
            "unknown variant `cone-ish`, expected one of `none`, `open`, `full-cone`, `restricted-cone`, `port-restricted-cone`, `symmetric`",
        ),
        (
            "nat = { mapping = \"address-dependent\", filter = \"x\" }\n",
            "unknown field `filter`, expected one of `preset`, `mapping`, `filtering`, `ports`, `mapping_timeout_s`",
        ),
    ] {
        let file = dir.join("nat.toml");
        std::fs::write(&file, format!("{base}{nat}")).expect("write");
        let out = postsock(&["run", file.to_str().expect("utf8")]);
        assert_eq!(out.status.code(), Some(2));
        let stderr = text(&out.stderr);
        assert!(stderr.contains(&format!("{}:7:", file.display())), "{stderr}");
        assert!(stderr.contains(want), "want `{want}` in: {stderr}");
    }
}

#[test]
fn the_nat_matrix_scenarios_are_listed_run_and_replayed_like_files() {
    let list = text(&postsock(&["list"]).stdout);
    assert_eq!(list.matches("nat/matrix/").count(), 25, "{list}");
    // One cell as a suite: its report, and the matrix built from it.
    let out_dir = temp_dir("matrix");
    let out = postsock(&[
        "suite",
        "nat/matrix/symmetric--symmetric",
        "--seeds",
        "1",
        "--out",
        out_dir.to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let matrix = std::fs::read_to_string(out_dir.join("nat-matrix.json")).expect("matrix");
    let matrix: serde_json::Value = serde_json::from_str(&matrix).expect("json");
    assert_eq!(matrix["cells"].as_array().map(Vec::len), Some(1));
    assert_eq!(matrix["runs"][0]["outcome"], "relayed");
    let report = out_dir.join("nat/matrix/symmetric--symmetric/seed-1.json");
    let suite_report = std::fs::read_to_string(&report).expect("report");
    // Replaying the run gives the same report, byte for byte.
    let again = temp_dir("matrix-replay");
    let out = postsock(&[
        "run",
        "nat/matrix/symmetric--symmetric",
        "--seed",
        "1",
        "--out",
        again.to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let replayed =
        std::fs::read_to_string(again.join("nat/matrix/symmetric--symmetric/seed-1.json"))
            .expect("replayed report");
    assert_eq!(suite_report, replayed);
    assert!(suite_report.contains("\"relayed\": 1"), "{suite_report}");
}
