//! Suites: many scenarios × many seeds, run in parallel, written out as reports and plots.
//!
//! Runs are independent simulations, so they spread over worker threads; results are put
//! back in (scenario, seed) order, so the output does not depend on scheduling.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use reports::{Report, ReportError, RunWallClock, WallClock};

use crate::runner::{self, RunOutcome};
use crate::scenario::{self, Scenario, ScenarioError};

/// Why scenarios could not be found or loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The scenario directory could not be read.
    #[error("cannot read scenario directory {dir}: {source}")]
    Dir {
        /// The directory.
        dir: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A scenario file is malformed.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// No scenario of that name.
    #[error("unknown scenario `{name}`; known scenarios: {known}")]
    Unknown {
        /// The name asked for.
        name: String,
        /// Every known name.
        known: String,
    },
    /// The filter matched nothing.
    #[error("no scenario name starts with `{filter}`; known scenarios: {known}")]
    NoMatch {
        /// The filter.
        filter: String,
        /// Every known name.
        known: String,
    },
}

fn discover(dir: &Path) -> Result<Vec<(String, PathBuf)>, LoadError> {
    scenario::discover(dir).map_err(|source| LoadError::Dir {
        dir: dir.display().to_string(),
        source,
    })
}

fn known(found: &[(String, PathBuf)]) -> String {
    found
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The scenarios generated rather than written: one per cell of the NAT-pair matrix
/// (`nat/matrix/<a>--<b>`) and the protocol comparison (`compare/<protocol>-rtt<R>-loss<L>`).
/// They run, report and replay like the files.
pub fn generated() -> Result<Vec<Scenario>, LoadError> {
    let mut all = crate::natmatrix::scenarios()?;
    all.extend(crate::compare::scenarios()?);
    Ok(all)
}

/// Every scenario name: the files below `dir`, then the generated ones.
fn known_all(found: &[(String, PathBuf)], generated: &[Scenario]) -> String {
    let mut names = known(found);
    for s in generated {
        names.push_str(", ");
        names.push_str(&s.name);
    }
    names
}

/// Generated families a suite runs only when its filter names them: evaluations whose runs
/// measure rather than check (the protocol comparison, where one lossy QUIC run of 240 still
/// fails; see docs/ARCHITECTURE.md).
pub const OPT_IN: [&str; 1] = [crate::compare::PREFIX];

/// Loads every scenario whose name starts with `filter` (all when `None`, except the
/// [`OPT_IN`] families): the files below `dir`, then the generated ones.
pub fn load(dir: &Path, filter: Option<&str>) -> Result<Vec<Scenario>, LoadError> {
    let found = discover(dir)?;
    let generated = generated()?;
    let wanted = |name: &str| match filter {
        Some(f) => name.starts_with(f),
        None => !OPT_IN.iter().any(|family| name.starts_with(family)),
    };
    let mut chosen = found
        .iter()
        .filter(|(name, _)| wanted(name))
        .map(|(name, path)| Scenario::load(name, path).map_err(LoadError::from))
        .collect::<Result<Vec<_>, _>>()?;
    let known = known_all(&found, &generated);
    chosen.extend(generated.into_iter().filter(|s| wanted(&s.name)));
    if chosen.is_empty() {
        return Err(LoadError::NoMatch {
            filter: filter.unwrap_or("").to_owned(),
            known,
        });
    }
    Ok(chosen)
}

/// Loads one scenario by name, or by path to a `.toml` file.
pub fn load_one(dir: &Path, name_or_path: &str) -> Result<Scenario, LoadError> {
    let as_path = Path::new(name_or_path);
    if name_or_path.ends_with(".toml") && as_path.is_file() {
        let name = as_path
            .file_stem()
            .map_or(name_or_path.into(), |s| s.to_string_lossy());
        return Ok(Scenario::load(&name, as_path)?);
    }
    let found = discover(dir)?;
    if let Some((name, path)) = found.iter().find(|(n, _)| n == name_or_path) {
        return Ok(Scenario::load(name, path)?);
    }
    let generated = generated()?;
    let known = known_all(&found, &generated);
    generated
        .into_iter()
        .find(|s| s.name == name_or_path)
        .ok_or_else(|| LoadError::Unknown {
            name: name_or_path.to_owned(),
            known,
        })
}

/// The one-line command that replays a run exactly.
pub fn replay_command(report: &Report) -> String {
    format!(
        "cargo run --release -- run {} --seed {}",
        report.scenario, report.seed
    )
}

/// Runs every scenario with every seed on `jobs` threads; `done` is called after each run
/// (from worker threads). Outcomes come back in (scenario, seed) order.
pub fn run_all(
    scenarios: &[Scenario],
    seeds: &[u64],
    jobs: usize,
    done: &(dyn Fn(&RunOutcome) + Sync),
) -> Vec<RunOutcome> {
    let work: Vec<(&Scenario, u64)> = scenarios
        .iter()
        .flat_map(|s| seeds.iter().map(move |seed| (s, *seed)))
        .collect();
    par_map(&work, jobs, &|&(scenario, seed)| {
        let outcome = runner::run(scenario, seed);
        done(&outcome);
        outcome
    })
}

/// `f` over `items` on `jobs` threads, results in the items' order (so nothing depends on
/// which thread ran what).
pub fn par_map<T: Sync, R: Send>(items: &[T], jobs: usize, f: &(dyn Fn(&T) -> R + Sync)) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else {
                    break;
                };
                let r = f(item);
                results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .flatten()
        .collect()
}

fn write(path: &Path, text: &str) -> Result<(), ReportError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| ReportError::Io {
            path: parent.display().to_string(),
            source,
        })?;
    }
    std::fs::write(path, text).map_err(|source| ReportError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Where the report of a run goes below `out`.
pub fn report_path(out: &Path, report: &Report) -> PathBuf {
    out.join(&report.scenario)
        .join(format!("seed-{}.json", report.seed))
}

/// Writes each run's JSON report, a time-sequence plot for the first run of each scenario
/// (every run when `plot_all`), `summary.md` and `wallclock.json`.
pub fn write_outputs(
    out: &Path,
    outcomes: &[RunOutcome],
    plot_all: bool,
    started: Instant,
) -> Result<PathBuf, ReportError> {
    let mut plotted = std::collections::BTreeSet::new();
    for o in outcomes {
        let path = report_path(out, &o.report);
        write(&path, &o.report.to_json()?)?;
        if plot_all || plotted.insert(o.report.scenario.clone()) {
            reports::plot::time_sequence(&o.report, &path.with_extension("png"))?;
            if reports::plot::has_race(&o.report) {
                let name = format!("seed-{}-race.png", o.report.seed);
                reports::plot::racing_timeline(&o.report, &path.with_file_name(name))?;
            }
            if reports::plot::has_paths(&o.report) {
                let name = format!("seed-{}-goodput.png", o.report.seed);
                reports::plot::goodput(&o.report, &path.with_file_name(name))?;
            }
            if reports::plot::has_niceness(&o.report) {
                let name = format!("seed-{}-niceness.png", o.report.seed);
                reports::plot::latency_by_niceness(&o.report, &path.with_file_name(name))?;
            }
        }
    }
    let wall = WallClock {
        runs: outcomes
            .iter()
            .map(|o| RunWallClock {
                scenario: o.report.scenario.clone(),
                seed: o.report.seed,
                wall_ms: o.wall.as_secs_f64() * 1000.0,
                sim_ms: o.report.metrics.sim_duration_ms,
            })
            .collect(),
        total_wall_ms: started.elapsed().as_secs_f64() * 1000.0,
    };
    write(
        &out.join("wallclock.json"),
        &serde_json::to_string_pretty(&wall)?,
    )?;
    let reports: Vec<Report> = outcomes.iter().map(|o| o.report.clone()).collect();
    reports::plot::ttfm_vs_limit(&reports, &out.join("ttfm-vs-limit.png"))?;
    let summary = out.join("summary.md");
    write(
        &summary,
        &reports::summary::markdown(&reports, &wall, replay_command),
    )?;
    Ok(summary)
}
