//! The reports' published JSON Schema (docs/report.schema.json): it is the one the report
//! types derive, and every report the testbed writes validates against it.

use std::path::Path;

use testbed::suite;

fn published() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/report.schema.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("docs/report.schema.json"))
        .expect("schema JSON")
}

#[test]
fn the_published_schema_is_the_one_the_report_types_derive() {
    assert_eq!(
        published(),
        reports::Report::schema(),
        "docs/report.schema.json is stale: cargo run --release -- schema > docs/report.schema.json"
    );
}

#[test]
fn every_report_validates_and_a_broken_one_does_not() {
    let validator = jsonschema::validator_for(&published()).expect("a valid schema");
    // Seed 1 of every scenario (files, NAT matrix, and the protocol comparison), and the
    // golden reports.
    let scenarios = suite::load(suite::default_scenarios_dir(), Some("")).expect("scenarios");
    let runs = suite::run_all(&scenarios, &[1], suite::default_jobs(), &|_| {});
    let mut texts: Vec<(String, String)> = runs
        .iter()
        .map(|o| {
            let r = &o.report;
            (
                format!("{} seed {}", r.scenario, r.seed),
                r.to_json().expect("json"),
            )
        })
        .collect();
    for g in suite::goldens(&suite::golden_dir()).expect("goldens") {
        texts.push((
            g.path.display().to_string(),
            std::fs::read_to_string(&g.path).expect("r"),
        ));
    }
    assert!(texts.len() > 100, "{}", texts.len());
    for (name, text) in &texts {
        let value: serde_json::Value = serde_json::from_str(text).expect("json");
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{name}: {errors:?}");
    }
    // The schema does constrain: a report with a seed that is not a number, or without its
    // metrics, is rejected.
    let mut broken: serde_json::Value = serde_json::from_str(&texts[0].1).expect("json");
    broken["seed"] = serde_json::json!("one");
    assert!(!validator.is_valid(&broken));
    let mut broken: serde_json::Value = serde_json::from_str(&texts[0].1).expect("json");
    broken.as_object_mut().expect("object").remove("metrics");
    assert!(!validator.is_valid(&broken));
}
