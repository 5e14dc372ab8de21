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

/// Which runs of a sweep this process takes: run `k` when `k % count == index` (a CI matrix
/// job per shard; `postsock merge` joins their outputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, from 0.
    pub index: u64,
    /// How many shards.
    pub count: u64,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, count: 1 }
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// `i/n` with `i < n`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("a shard is written i/n with 0 <= i < n, e.g. 0/4; got `{s}`");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse::<u64>().map_err(|_| bad())?,
            n.trim().parse::<u64>().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// Whether this shard takes run `k`.
    pub fn takes(&self, k: u64) -> bool {
        k % self.count == self.index
    }
}

/// The scenario directory `run` and `suite` use unless told otherwise.
pub const DEFAULT_SCENARIOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");

/// [`DEFAULT_SCENARIOS`] as a path.
pub fn default_scenarios_dir() -> &'static Path {
    Path::new(DEFAULT_SCENARIOS)
}

/// The one-line command that replays a run exactly: `dir` is where its scenario was loaded
/// from (named in the command unless it is the default).
pub fn replay_command(report: &Report, dir: &Path) -> String {
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    let scenarios = if same(dir, default_scenarios_dir()) {
        String::new()
    } else {
        format!(" --scenarios {}", shell_word(&dir.display().to_string()))
    };
    format!(
        "cargo run --release -- run {} --seed {}{scenarios}",
        report.scenario, report.seed
    )
}

/// `s` as one shell word (quoted when it holds anything but plain path characters).
pub fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:=@,%".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Runs every scenario with every seed on `jobs` threads; `done` is called after each run
/// (from worker threads). Outcomes come back in (scenario, seed) order.
pub fn run_all(
    scenarios: &[Scenario],
    seeds: &[u64],
    jobs: usize,
    done: &(dyn Fn(&RunOutcome) + Sync),
) -> Vec<RunOutcome> {
    let work = shard_runs(scenarios, seeds, Shard::default());
    par_map(&work, jobs, &|&(scenario, seed)| {
        let outcome = runner::run(scenario, seed);
        done(&outcome);
        outcome
    })
}

/// The (scenario, seed) runs a shard takes: run `k` of the suite's (scenario, seed) order.
pub fn shard_runs<'a>(
    scenarios: &'a [Scenario],
    seeds: &[u64],
    shard: Shard,
) -> Vec<(&'a Scenario, u64)> {
    scenarios
        .iter()
        .flat_map(|s| seeds.iter().map(move |seed| (s, *seed)))
        .enumerate()
        .filter(|&(k, _)| shard.takes(k as u64))
        .map(|(_, run)| run)
        .collect()
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
    seed_path(out, &report.scenario, report.seed)
}

/// Where the report of `scenario` with `seed` goes below `out`.
fn seed_path(out: &Path, scenario: &str, seed: u64) -> PathBuf {
    out.join(scenario).join(format!("seed-{seed}.json"))
}

/// Writes one run's JSON report and, when `plot`, its plots: the time-sequence diagram and,
/// where the run has what they show, the race timeline, goodput and niceness plots.
pub fn write_run(out: &Path, report: &Report, plot: bool) -> Result<(), ReportError> {
    let path = report_path(out, report);
    write(&path, &report.to_json()?)?;
    if !plot {
        return Ok(());
    }
    reports::plot::time_sequence(report, &path.with_extension("png"))?;
    if reports::plot::has_race(report) {
        let name = format!("seed-{}-race.png", report.seed);
        reports::plot::racing_timeline(report, &path.with_file_name(name))?;
    }
    if reports::plot::has_paths(report) {
        let name = format!("seed-{}-goodput.png", report.seed);
        reports::plot::goodput(report, &path.with_file_name(name))?;
    }
    if reports::plot::has_niceness(report) {
        let name = format!("seed-{}-niceness.png", report.seed);
        reports::plot::latency_by_niceness(report, &path.with_file_name(name))?;
    }
    Ok(())
}

/// Drops what a suite no longer needs in memory once a report is on disk: the per-message
/// records (most of a report; the protocol comparison reads them back from the files), the
/// link counters, faults and path timelines. What stays — scenario, seed, verdict,
/// expectations, metrics, protocol, error, and the race (a few attempts, for the HTML
/// report) — is what summaries, JUnit, the TTFM plot, the NAT matrix and the HTML use.
pub fn lighten(report: &mut Report) {
    report.messages = Vec::new();
    report.links = Default::default();
    report.faults = Vec::new();
    report.path_events = Vec::new();
    report.path_faults_ms = Vec::new();
    report.oracles = Vec::new();
    report.gaps = Vec::new();
}

/// Reads and decodes the JSON file at `path`.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ReportError> {
    let error = |message: String| ReportError::Read {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| error(e.to_string()))
}

/// Reads a run's report back from below `out`.
pub fn read_report(out: &Path, scenario: &str, seed: u64) -> Result<Report, ReportError> {
    read_json(&seed_path(out, scenario, seed))
}

/// Runs a shard of the suite like [`run_all`], but writes each run's report (and, for the
/// first seed of each scenario, its plots) below `out` as soon as it ends and keeps only the
/// [`lighten`]ed report: a suite's memory does not grow with its runs' messages.
pub fn run_to_disk(
    scenarios: &[Scenario],
    seeds: &[u64],
    shard: Shard,
    jobs: usize,
    out: &Path,
    done: &(dyn Fn(&RunOutcome) + Sync),
) -> Result<Vec<RunOutcome>, ReportError> {
    let work = shard_runs(scenarios, seeds, shard);
    let first = seeds.first().copied();
    let results = par_map(&work, jobs, &|&(scenario, seed)| {
        let mut outcome = runner::run(scenario, seed);
        let written = write_run(out, &outcome.report, Some(seed) == first);
        lighten(&mut outcome.report);
        done(&outcome);
        written.map(|()| outcome)
    });
    results.into_iter().collect()
}

/// Writes `wallclock.json`, the TTFM plot and `summary.md` for runs whose reports are
/// already on disk.
pub fn write_summary(
    out: &Path,
    outcomes: &[RunOutcome],
    started: Instant,
    scenarios_dir: &Path,
) -> Result<PathBuf, ReportError> {
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
    let reports: Vec<&Report> = outcomes.iter().map(|o| &o.report).collect();
    reports::plot::ttfm_vs_limit(&reports, &out.join("ttfm-vs-limit.png"))?;
    let summary = out.join("summary.md");
    write(
        &summary,
        &reports::summary::markdown(&reports, &wall, |r| replay_command(r, scenarios_dir)),
    )?;
    Ok(summary)
}

/// Writes each run's JSON report, plots for the first run of each scenario (every run when
/// `plot_all`), `summary.md` and `wallclock.json`.
pub fn write_outputs(
    out: &Path,
    outcomes: &[RunOutcome],
    plot_all: bool,
    started: Instant,
    scenarios_dir: &Path,
) -> Result<PathBuf, ReportError> {
    let mut plotted = std::collections::BTreeSet::new();
    for o in outcomes {
        let plot = plot_all || plotted.insert(o.report.scenario.clone());
        write_run(out, &o.report, plot)?;
    }
    write_summary(out, outcomes, started, scenarios_dir)
}

/// A JUnit XML document of the runs: one `<testcase>` per (scenario, seed), class = the
/// scenario, failures carrying the error, the failed expectations and the replay command.
/// Times are wall-clock seconds (the one part that is not reproducible).
pub fn junit(outcomes: &[RunOutcome], scenarios_dir: &Path) -> String {
    let esc = reports::html::escape;
    let failures = outcomes.iter().filter(|o| !o.report.passed).count();
    let total_s: f64 = outcomes.iter().map(|o| o.wall.as_secs_f64()).sum();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str(&format!(
        "<testsuites name=\"postsock suite\" tests=\"{}\" failures=\"{failures}\" time=\"{total_s:.3}\">\n",
        outcomes.len()
    ));
    x.push_str(&format!(
        "  <testsuite name=\"postsock suite\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" time=\"{total_s:.3}\">\n",
        outcomes.len()
    ));
    for o in outcomes {
        let r = &o.report;
        x.push_str(&format!(
            "    <testcase classname=\"{}\" name=\"seed {}\" time=\"{:.3}\"",
            esc(&r.scenario),
            r.seed,
            o.wall.as_secs_f64()
        ));
        if r.passed {
            x.push_str("/>\n");
            continue;
        }
        let mut lines = r.failures();
        let replay = replay_command(r, scenarios_dir);
        lines.push(format!("replay: {replay}"));
        let message = lines.first().cloned().unwrap_or_default();
        x.push_str(&format!(
            ">\n      <failure message=\"{}\" type=\"expectation\">{}</failure>\n    </testcase>\n",
            esc(&message),
            esc(&lines.join("\n"))
        ));
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

/// Reads back the runs a suite (or several shards of one) wrote below `dirs`: every
/// `seed-N.json` report with its wall-clock time from `wallclock.json`. Runs come out in
/// (scenario, seed) order; a run found twice is an error.
pub fn read_runs(dirs: &[PathBuf]) -> Result<Vec<RunOutcome>, ReportError> {
    read_runs_into(dirs, None)
}

/// [`read_runs`], writing each report (with plots for seed 1, as a suite does) below
/// `copy_to` as it is read and keeping only the [`lighten`]ed report in memory.
pub fn read_runs_into(
    dirs: &[PathBuf],
    copy_to: Option<&Path>,
) -> Result<Vec<RunOutcome>, ReportError> {
    let mut runs: std::collections::BTreeMap<(String, u64), RunOutcome> = Default::default();
    for dir in dirs {
        let wall: WallClock = read_json(&dir.join("wallclock.json"))?;
        for w in wall.runs {
            let path = seed_path(dir, &w.scenario, w.seed);
            let mut report = read_report(dir, &w.scenario, w.seed)?;
            if report.scenario != w.scenario || report.seed != w.seed {
                return Err(ReportError::Read {
                    path: path.display().to_string(),
                    message: format!(
                        "holds {} seed {}, not {} seed {}",
                        report.scenario, report.seed, w.scenario, w.seed
                    ),
                });
            }
            let key = (w.scenario, w.seed);
            if runs.contains_key(&key) {
                return Err(ReportError::Read {
                    path: path.display().to_string(),
                    message: format!(
                        "{} seed {} is in more than one of the merged directories",
                        key.0, key.1
                    ),
                });
            }
            if let Some(out) = copy_to {
                // A suite plots the first seed (1) of each scenario.
                write_run(out, &report, report.seed == 1)?;
                lighten(&mut report);
            }
            let wall = std::time::Duration::from_secs_f64(w.wall_ms.max(0.0) / 1000.0);
            runs.insert(key, RunOutcome { report, wall });
        }
    }
    Ok(runs.into_values().collect())
}

/// Where the golden reports live: `tests/golden/<scenario>/seed-<N>.json`.
pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// One golden report: the run it pins and its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Golden {
    /// The scenario.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// The checked-in report.
    pub path: PathBuf,
}

/// Every golden report below `dir`, by path.
pub fn goldens(dir: &Path) -> Result<Vec<Golden>, ReportError> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<Golden>) -> Result<(), ReportError> {
        let entries = std::fs::read_dir(dir).map_err(|e| ReportError::Read {
            path: dir.display().to_string(),
            message: e.to_string(),
        })?;
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            if path.is_dir() {
                walk(root, &path, out)?;
                continue;
            }
            let seed = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("seed-")?.strip_suffix(".json")?.parse().ok());
            let (Some(seed), Some(parent)) = (seed, path.parent()) else {
                continue;
            };
            let scenario = parent
                .strip_prefix(root)
                .map(|p| p.to_string_lossy().replace('\\', "/"))
                .unwrap_or_default();
            if !scenario.is_empty() {
                out.push(Golden {
                    scenario,
                    seed,
                    path,
                });
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

/// Runs a golden's scenario with its seed and returns the report's bytes as `to_json`
/// writes them.
pub fn golden_run(scenarios_dir: &Path, golden: &Golden) -> Result<String, String> {
    let scenario = load_one(scenarios_dir, &golden.scenario).map_err(|e| e.to_string())?;
    runner::run(&scenario, golden.seed)
        .report
        .to_json()
        .map_err(|e| e.to_string())
}

/// Rewrites every golden report below `dir` from a fresh run (and adds `add`, a scenario
/// and seed, first). Returns the goldens whose bytes changed.
pub fn bless(
    dir: &Path,
    scenarios_dir: &Path,
    add: Option<(&str, u64)>,
) -> Result<Vec<Golden>, String> {
    if let Some((scenario, seed)) = add {
        // Check the name before making a directory for it.
        load_one(scenarios_dir, scenario).map_err(|e| e.to_string())?;
        let path = dir.join(scenario).join(format!("seed-{seed}.json"));
        if !path.exists() {
            write(&path, "").map_err(|e| e.to_string())?;
        }
    }
    let all = goldens(dir).map_err(|e| e.to_string())?;
    let fresh = par_map(&all, default_jobs(), &|g| golden_run(scenarios_dir, g));
    let mut changed = Vec::new();
    for (g, json) in all.into_iter().zip(fresh) {
        let json = json.map_err(|e| format!("{} seed {}: {e}", g.scenario, g.seed))?;
        if std::fs::read_to_string(&g.path).ok().as_deref() != Some(json.as_str()) {
            write(&g.path, &json).map_err(|e| e.to_string())?;
            changed.push(g);
        }
    }
    Ok(changed)
}

/// Worker threads when not told: the number of cores.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// For each scenario of the runs, a CDF of its message latencies over every seed
/// (`<scenario>/latency-cdf.png`, one line per direction), read back from the reports on
/// disk one scenario at a time.
pub fn write_latency_cdfs(out: &Path, outcomes: &[RunOutcome]) -> Result<(), ReportError> {
    let mut seeds: Vec<(&str, Vec<u64>)> = Vec::new();
    for o in outcomes {
        match seeds.iter_mut().find(|(s, _)| *s == o.report.scenario) {
            Some((_, v)) => v.push(o.report.seed),
            None => seeds.push((&o.report.scenario, vec![o.report.seed])),
        }
    }
    for (scenario, list) in seeds {
        let mut up = Vec::new();
        let mut down = Vec::new();
        for seed in &list {
            let report = read_report(out, scenario, *seed)?;
            for m in &report.messages {
                let Some(first) = m.delivered_ms.first() else {
                    continue;
                };
                match m.direction {
                    reports::Direction::ClientToServer => up.push(first - m.sent_ms),
                    reports::Direction::ServerToClient => down.push(first - m.sent_ms),
                }
            }
        }
        let mut series = Vec::new();
        for (label, latencies_ms) in [("client → server", up), ("server → client", down)] {
            if !latencies_ms.is_empty() {
                series.push(reports::plot::CdfSeries {
                    label: format!("{label} ({} messages)", latencies_ms.len()),
                    latencies_ms,
                });
            }
        }
        if series.is_empty() {
            continue;
        }
        let title = format!("{scenario}: message latency, {} seed(s)", list.len());
        reports::plot::latency_cdf(&title, &series, &out.join(scenario).join("latency-cdf.png"))?;
    }
    Ok(())
}

/// Writes the latency CDFs and `index.html` (after every other plot of the suite exists).
pub fn write_html(
    out: &Path,
    outcomes: &[RunOutcome],
    scenarios_dir: &Path,
) -> Result<PathBuf, ReportError> {
    write_latency_cdfs(out, outcomes)?;
    let reports: Vec<&Report> = outcomes.iter().map(|o| &o.report).collect();
    reports::html::index(out, &reports, |r| replay_command(r, scenarios_dir))
}
