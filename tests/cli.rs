//! The `postsock` command: exit codes, error messages, outputs.

mod common;

use common::TempDir;

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

/// A fresh directory for one test, removed when the test ends.
fn temp_dir(name: &str) -> TempDir {
    TempDir::new(&format!("cli-{name}"))
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
        "--junit",
        out_dir.join("junit.xml").to_str().expect("utf8"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    // JUnit: one testcase per run, each failure with its expectation and the replay.
    let junit = std::fs::read_to_string(out_dir.join("junit.xml")).expect("junit");
    assert!(junit.contains(r#"tests="2" failures="2""#), "{junit}");
    assert_eq!(junit.matches("<testcase ").count(), 2, "{junit}");
    assert_eq!(junit.matches("<failure ").count(), 2, "{junit}");
    assert!(
        junit.contains("expectation `ttfm_ms &lt;= 10` failed"),
        "{junit}"
    );
    // The replay names the scenario directory the suite was given (a replay without it
    // would look in the default one and not find x/impossible).
    let replay = format!(
        "replay: cargo run --release -- run x/impossible --seed 2 --scenarios {}",
        dir.display()
    );
    assert!(stderr.contains(&replay), "{stderr}");
    let summary_text = std::fs::read_to_string(out_dir.join("summary.md")).expect("summary");
    assert!(
        summary_text.contains(&replay["replay: ".len()..]),
        "{summary_text}"
    );
    // And it works: the printed command's arguments give the same report, byte for byte.
    let again = dir.join("again");
    let args: Vec<&str> = replay["replay: cargo run --release -- ".len()..]
        .split(' ')
        .collect();
    let out = postsock(&[&args[..], &["--out", again.to_str().expect("utf8")]].concat());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let first = std::fs::read_to_string(out_dir.join("x/impossible/seed-2.json")).expect("r");
    let replayed = std::fs::read_to_string(again.join("x/impossible/seed-2.json")).expect("r");
    assert_eq!(first, replayed);
    assert!(stderr.contains("ttfm_ms <= 10"), "{stderr}");
    let summary = std::fs::read_to_string(out_dir.join("summary.md")).expect("summary");
    assert!(summary.contains("0 of 2 runs passed"), "{summary}");
    assert!(out_dir.join("wallclock.json").is_file());
}

/// Runs `scenario` with `seed` in `n` processes at once; every report must be the same bytes.
fn identical_in_processes(scenario: &str, seed: &str, n: usize) {
    let children: Vec<_> = (0..n)
        .map(|attempt| {
            let out_dir = temp_dir(&format!(
                "determinism-{}-{attempt}",
                scenario.replace('/', "-")
            ));
            let child = Command::new(env!("CARGO_BIN_EXE_postsock"))
                .args([
                    "run",
                    scenario,
                    "--seed",
                    seed,
                    "--out",
                    out_dir.to_str().expect("utf8"),
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("run postsock");
            (child, out_dir)
        })
        .collect();
    let mut reports = Vec::new();
    for (child, out_dir) in children {
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let file = out_dir.join(format!("{scenario}/seed-{seed}.json"));
        reports.push(std::fs::read(file).expect("report"));
    }
    let differ = reports.iter().filter(|r| **r != reports[0]).count();
    assert_eq!(
        differ, 0,
        "{scenario} seed {seed}: {differ} of {n} processes wrote a report unlike the first"
    );
}

#[test]
fn two_processes_with_the_same_seed_write_identical_reports() {
    identical_in_processes("echo/quic-lossy", "4", 2);
}

/// A QUIC carrier moving to TLS/TCP wakes several `tokio::sync::watch` receivers at once; the
/// order tokio wakes them in comes from the runtime's RNG, which only `--cfg tokio_unstable`
/// lets turmoil seed. Built without it, 3 of 8 processes of this run wrote a different
/// report (a TCP acknowledgement more or less at 2.461 s).
#[test]
fn processes_agree_on_a_run_whose_tasks_wake_together() {
    identical_in_processes("blocking/udp-blocked-mid-carrier", "2", 12);
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

/// Every `seed-*.json` below `dir`, by path, with its bytes.
fn reports_below(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|e| e == "json")
                && path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
            {
                let rel = path
                    .strip_prefix(root)
                    .expect("below")
                    .display()
                    .to_string();
                out.insert(rel, std::fs::read(&path).expect("read"));
            }
        }
    }
    let mut out = Default::default();
    walk(dir, dir, &mut out);
    out
}

/// JUnit without its wall-clock times.
fn junit_cases(path: &Path) -> String {
    let xml = std::fs::read_to_string(path).expect("junit");
    xml.split(' ')
        .filter(|word| !word.starts_with("time="))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn suite_shards_merge_into_what_one_suite_writes() {
    let dir = temp_dir("shards");
    let path = |p: &Path| p.to_str().expect("utf8").to_owned();
    let suite = |out: &Path, extra: &[&str]| {
        let (out_s, junit) = (path(out), path(&out.join("junit.xml")));
        let mut args = vec![
            "suite", "echo/", "--seeds", "2", "--out", &out_s, "--junit", &junit,
        ];
        args.extend_from_slice(extra);
        let o = postsock(&args);
        assert!(o.status.success(), "{}", text(&o.stderr));
    };
    let whole = dir.join("whole");
    suite(&whole, &[]);
    let shards: Vec<std::path::PathBuf> = (0..3).map(|i| dir.join(format!("shard{i}"))).collect();
    for (i, s) in shards.iter().enumerate() {
        let shard = format!("{i}/3");
        suite(s, &["--shard", &shard]);
    }
    // The shards split the runs: none twice, none left out.
    let parts: Vec<_> = shards.iter().map(|s| reports_below(s)).collect();
    let all = reports_below(&whole);
    assert_eq!(parts.iter().map(|p| p.len()).sum::<usize>(), all.len());
    assert!(parts.iter().all(|p| !p.is_empty()));
    let merged = dir.join("merged");
    let mut args = vec!["merge".to_owned()];
    args.extend(shards.iter().map(|s| path(s)));
    args.extend([
        "--out".into(),
        path(&merged),
        "--junit".into(),
        path(&merged.join("junit.xml")),
    ]);
    let o = postsock(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(reports_below(&merged), all);
    assert_eq!(
        junit_cases(&merged.join("junit.xml")),
        junit_cases(&whole.join("junit.xml"))
    );
    assert!(merged.join("summary.md").is_file());
    // A run in two of the merged directories is an error, not a silent pick.
    let o = postsock(&[
        "merge",
        &path(&shards[0]),
        &path(&shards[0]),
        "--out",
        &path(&dir.join("twice")),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("more than one"),
        "{}",
        text(&o.stderr)
    );

    // diff: the same reports differ in nothing; a slower, failing run is a regression.
    let o = postsock(&["diff", &path(&whole), &path(&merged)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stdout));
    assert!(
        text(&o.stdout).contains("0 regression(s)"),
        "{}",
        text(&o.stdout)
    );
    let report = merged.join("echo/quic/seed-1.json");
    let mut r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("r")).expect("json");
    r["passed"] = serde_json::Value::Bool(false);
    let ttfm = r["metrics"]["ttfm_ms"].as_f64().expect("ttfm");
    r["metrics"]["ttfm_ms"] = serde_json::json!(ttfm * 3.0);
    std::fs::write(&report, serde_json::to_string_pretty(&r).expect("json")).expect("write");
    let o = postsock(&["diff", &path(&whole), &path(&merged)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    let out = text(&o.stdout);
    assert!(
        out.contains("REGRESSION now failing: echo/quic seed 1"),
        "{out}"
    );
    assert!(out.contains("REGRESSION echo/quic ttfm_ms"), "{out}");
}

#[test]
fn a_suite_filter_does_not_swallow_a_broken_file_it_selects() {
    let dir = temp_dir("swallow");
    std::fs::create_dir_all(dir.join("nat")).expect("dir");
    std::fs::write(
        dir.join("nat/broken.toml"),
        "description = \"x\"\nduration_s = \"ten\"\n",
    )
    .expect("write");
    let scenarios = dir.to_str().expect("utf8");
    let out = dir.join("out");
    // `nat` selects the broken file (and the generated NAT matrix): a usage error naming it.
    for filter in ["nat", "nat/", "nat/b"] {
        let o = postsock(&[
            "--scenarios",
            scenarios,
            "suite",
            filter,
            "--seeds",
            "1",
            "--out",
            out.to_str().expect("utf8"),
        ]);
        assert_eq!(o.status.code(), Some(2), "{filter}");
        let stderr = text(&o.stderr);
        assert!(
            stderr.contains("nat/broken.toml:2:14"),
            "{filter}: {stderr}"
        );
        assert!(!out.join("summary.md").exists(), "{filter}: nothing ran");
    }
}

/// Runs `postsock bench ARGS --out DIR`, which must succeed, and reads `DIR/FILE` as JSON.
fn bench_json(args: &[&str], out_dir: &Path, file: &str) -> serde_json::Value {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.extend(["--out", out_dir.to_str().expect("utf8")]);
    let out = postsock(&all);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&std::fs::read(out_dir.join(file)).expect("json")).expect(file)
}

/// `bench --idle --quick` measures 1 and 10 idle connections of both protocols on both
/// stacks over half a second each: eight rows in `idle-bench.json` and a line per protocol
/// and size in `idle-bench.md`. Raw quinn and tokio-rustls arm no timer while idle, so their
/// rows show the measurement counts the connections' threads, not the measuring itself.
#[test]
fn bench_idle_measures_idle_connections_of_both_stacks() {
    let out_dir = temp_dir("bench-idle");
    let report = bench_json(&["--idle", "--quick"], &out_dir, "idle-bench.json");
    let rows = report.as_array().expect("rows");
    assert_eq!(rows.len(), 8, "{report}");
    for protocol in ["quic", "tls-tcp"] {
        for n in [1, 10] {
            for side in ["postsock", "raw"] {
                let row = rows
                    .iter()
                    .find(|r| r["protocol"] == protocol && r["carriers"] == n && r["side"] == side)
                    .unwrap_or_else(|| panic!("{protocol} {n} {side}: {report}"));
                let cpu = row["cpu_percent"].as_f64().expect("cpu");
                let wakeups = row["wakeups_per_s"].as_f64().expect("wake-ups");
                assert!(cpu.is_finite() && cpu >= 0.0, "{row}");
                assert!(wakeups.is_finite() && wakeups >= 0.0, "{row}");
                assert_eq!(row["window_s"].as_f64(), Some(0.5), "{row}");
                if side == "raw" {
                    assert!(wakeups < 100.0, "raw stacks idle without timers: {row}");
                } else {
                    // Not a speed: whether idle carriers sleep. Before session 39 one idle
                    // connection woke its threads 145-319 times a second (a path manager
                    // checking every 5 ms, QUIC's address watch every 20 ms); now a few.
                    assert!(
                        wakeups / n as f64 <= 50.0,
                        "idle postsock connections should sleep: {row}"
                    );
                }
            }
        }
    }
    let md = std::fs::read_to_string(out_dir.join("idle-bench.md")).expect("idle-bench.md");
    for line in [
        "| quic | 1 | ",
        "| quic | 10 | ",
        "| tls-tcp | 1 | ",
        "| tls-tcp | 10 | ",
    ] {
        assert_eq!(md.matches(line).count(), 1, "{md}");
    }
}

/// An echo row says how its round trips spread, beyond the median it compares: p50 (the
/// median itself), p90, p99 and the longest, for each stack it ran, in `bench.json` and
/// `bench.md`.
#[test]
fn bench_echo_rows_give_the_round_trips_percentiles() {
    let out_dir = temp_dir("bench-echo");
    let report = bench_json(
        &["--quick", "--only", "tls-tcp 50 echo", "--repeats", "2"],
        &out_dir,
        "bench.json",
    );
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{report}");
    let row = &rows[0];
    for side in ["raw", "postsock"] {
        let p = &row["round_trips"][side];
        let at = |k: &str| p[k].as_f64().unwrap_or_else(|| panic!("{side} {k}: {row}"));
        assert_eq!(at("p50"), row[side].as_f64().expect("median"), "{row}");
        assert!(
            0.0 < at("p50") && at("p50") <= at("p90") && at("p90") <= at("p99"),
            "{row}"
        );
        assert!(at("p99") <= at("max"), "{row}");
    }
    let md = std::fs::read_to_string(out_dir.join("bench.md")).expect("bench.md");
    assert!(
        md.contains("p50 / p90 / p99 / max (µs)")
            && md.contains("| tls-tcp | 50 echo round trips of 1 KiB | "),
        "{md}"
    );
}

/// `bench --side postsock --repeats 1` (for profiling one stack) measures only postsock: its
/// figures are real, raw's read 0, and no ratio is claimed.
#[test]
fn bench_side_measures_one_stack_only() {
    let out_dir = temp_dir("bench-side");
    let report = bench_json(
        &[
            "--quick",
            "--only",
            "tls-tcp 500",
            "--side",
            "postsock",
            "--repeats",
            "1",
        ],
        &out_dir,
        "bench.json",
    );
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{report}");
    let row = &rows[0];
    assert_eq!(row["workload"], "500 x 1 KiB");
    assert!(row["postsock"].as_f64().is_some_and(|v| v > 0.0), "{row}");
    assert!(
        row["cpu"]["postsock_us"].as_f64().is_some_and(|v| v > 0.0),
        "{row}"
    );
    assert_eq!(row["raw"].as_f64(), Some(0.0), "{row}");
    assert_eq!(row["cpu"]["raw_us"].as_f64(), Some(0.0), "{row}");
    assert_eq!(row["ratio"].as_f64(), Some(0.0), "{row}");
    assert_eq!(row["pairs"].as_array().map(Vec::len), Some(0), "{row}");
    assert_eq!(row["meets_target"], false);
    assert!(row["round_trips"].is_null(), "a throughput row: {row}");
    assert_eq!(
        report["memory"].as_array().map(Vec::len),
        Some(0),
        "no memory run"
    );

    refused(&["bench", "--side", "neither"], "neither");
}

/// `postsock ARGS` is a usage error (exit 2) whose message names `mentions`.
fn refused(args: &[&str], mentions: &str) {
    let out = postsock(args);
    assert_eq!(out.status.code(), Some(2), "{args:?}");
    assert!(
        text(&out.stderr).contains(mentions),
        "{args:?}: {}",
        text(&out.stderr)
    );
}

/// `bench --workers N` runs the comparisons on a multi-thread runtime of N workers and the
/// report says which runtime it measured; a worker count of 0, or one with
/// `--current-thread`, is refused before anything runs.
#[test]
fn bench_runs_on_the_worker_count_asked_for_and_names_its_runtime() {
    let out_dir = temp_dir("bench-workers");
    let args = ["--quick", "--only", "tls-tcp 50 echo", "--repeats", "1"];
    let one = bench_json(
        &[&args[..], &["--workers", "1"]].concat(),
        &out_dir,
        "bench.json",
    );
    assert_eq!(one["runtime"], "multi-thread, 1 worker", "{one}");
    let rows = one["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{one}");
    for side in ["raw", "postsock"] {
        assert!(rows[0][side].as_f64().is_some_and(|v| v > 0.0), "{one}");
    }
    // One repeat: one pair, whose ratio is the row's (both stacks' only runs).
    let pairs = rows[0]["pairs"].as_array().expect("pairs");
    assert_eq!(pairs.len(), 1, "{one}");
    assert_eq!(pairs[0].as_f64(), rows[0]["ratio"].as_f64(), "{one}");
    let md = std::fs::read_to_string(out_dir.join("bench.md")).expect("bench.md");
    assert!(md.starts_with("Runtime: multi-thread, 1 worker."), "{md}");
    let default = bench_json(&args, &out_dir, "bench.json");
    assert_eq!(default["runtime"], "multi-thread, 2 workers", "{default}");
    let single = bench_json(
        &[&args[..], &["--current-thread"]].concat(),
        &out_dir,
        "bench.json",
    );
    assert_eq!(single["runtime"], "current-thread", "{single}");

    refused(&["bench", "--workers", "0"], "--workers");
    refused(
        &["bench", "--current-thread", "--workers", "3"],
        "--workers",
    );
}

/// `bench --queue --quick` drives the send queue alone for each message size and writes the
/// figures: every message of every run went through (the command fails otherwise).
#[test]
fn bench_queue_measures_the_send_queue_alone() {
    let out_dir = temp_dir("bench-queue");
    let rows = bench_json(&["--queue", "--quick"], &out_dir, "queue-bench.json");
    let rows = rows.as_array().expect("rows");
    let sizes: Vec<u64> = rows.iter().filter_map(|r| r["size"].as_u64()).collect();
    assert_eq!(sizes, [64, 1024, 16 * 1024]);
    for r in rows {
        assert_eq!(r["messages"].as_u64(), Some(2000), "{r}");
        assert!(
            r["ns_per_message"].as_f64().is_some_and(|ns| ns > 0.0),
            "{r}"
        );
    }
    assert!(std::fs::read_to_string(out_dir.join("queue-bench.md"))
        .expect("table")
        .contains("| 1024 B | 2000 |"));
}

/// `bench --scale` runs each scale scenario resized to each size in a process of its own and
/// writes the table, the rows and the plot; every message of every run arrives.
#[test]
fn bench_scale_measures_each_group_size_in_its_own_process() {
    let out_dir = temp_dir("bench-scale");
    let rows = bench_json(
        &["--scale", "--clients", "3,6"],
        &out_dir,
        "scale-bench.json",
    );
    let rows = rows.as_array().expect("rows");
    let sizes: Vec<(String, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["scenario"].as_str().unwrap_or("").to_owned(),
                r["clients"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        sizes,
        [
            ("scale/cgnat-quic".to_owned(), 3),
            ("scale/cgnat-quic".to_owned(), 6),
            ("scale/cgnat-tls-tcp".to_owned(), 3),
            ("scale/cgnat-tls-tcp".to_owned(), 6),
            ("scale/public-quic".to_owned(), 3),
            ("scale/public-quic".to_owned(), 6),
        ]
    );
    for r in rows {
        assert_eq!(r["delivered"], r["expected"], "{r}");
        assert_eq!(
            r["expected"].as_u64(),
            Some(r["clients"].as_u64().unwrap_or(0) * 20)
        );
        assert!(r["peak_rss_mib"].as_f64().is_some_and(|m| m > 1.0), "{r}");
    }
    assert!(out_dir.join("scale-bench.md").is_file());
    assert!(out_dir.join("scale-bench.png").is_file());
    let bad = postsock(&["bench", "--scale", "--clients", "0"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("--clients: 0 is not between 1 and 10000"));
}

/// `run` prints what the client's policies chose.
#[test]
fn run_prints_what_each_policy_chose() {
    let out_dir = temp_dir("policy");
    let out = postsock(&[
        "run",
        "blocking/udp-blocked-policy",
        "--out",
        out_dir.to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for line in [
        "policy learned: rtt 40.0 ms, blocked [], last winner tls-tcp",
        "policy tls-where-quic-lost: protocols = [tls-tcp]",
        "policy sync-races-early: attempt_delay_ms = 50",
    ] {
        assert!(stdout.contains(line), "want `{line}` in:\n{stdout}");
    }
}

#[test]
fn a_tests_directory_goes_when_the_test_ends() {
    let dir = temp_dir("goes");
    std::fs::create_dir_all(dir.join("nested")).expect("dir");
    std::fs::write(dir.join("nested/file"), b"x").expect("write");
    let path = dir.path().to_path_buf();
    drop(dir);
    assert!(!path.exists(), "{} is still there", path.display());
    // A name with a slash (a protocol's, "TLS/TCP") is still one directory, and it goes.
    let dir = common::TempDir::new("goes-TLS/TCP");
    let path = dir.path().to_path_buf();
    assert_eq!(path.parent(), Some(std::env::temp_dir().as_path()));
    drop(dir);
    assert!(!path.exists(), "{} is still there", path.display());
}
