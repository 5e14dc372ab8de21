//! How a suite writes its output: each report to disk as its run ends, with only a light
//! copy kept in memory (a suite's memory must not grow with its runs' messages).

use testbed::suite::{self, Shard};

#[test]
fn a_suite_streams_whole_reports_to_disk_and_keeps_light_ones() {
    let out = std::env::temp_dir().join(format!("postsock-stream-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let dir = suite::default_scenarios_dir();
    let scenarios = vec![
        suite::load_one(dir, "failover/quic-wifi-down").expect("scenario"),
        suite::load_one(dir, "echo/tls-tcp").expect("scenario"),
    ];
    let seeds = [1, 2, 3];
    let kept =
        suite::run_to_disk(&scenarios, &seeds, Shard::default(), 2, &out, &|_| {}).expect("suite");
    assert_eq!(kept.len(), 6);
    for o in &kept {
        let r = &o.report;
        // In memory: the verdict and the figures, none of the bulk.
        assert!(r.messages.is_empty() && r.links.is_empty() && r.path_events.is_empty());
        assert!(r.metrics.messages_delivered > 0);
        // On disk: the whole report, byte for byte what a single run writes.
        let scenario = scenarios
            .iter()
            .find(|s| s.name == r.scenario)
            .expect("known");
        let whole = testbed::run(scenario, r.seed).report;
        let on_disk = std::fs::read_to_string(suite::report_path(&out, r)).expect("report");
        assert_eq!(on_disk, whole.to_json().expect("json"));
        assert!(!whole.messages.is_empty());
        // Plots for the first seed of each scenario only.
        let png = suite::report_path(&out, r).with_extension("png");
        assert_eq!(png.is_file(), r.seed == 1, "{}", png.display());
    }
    let _ = std::fs::remove_dir_all(&out);
}
