//! Chaos: random fault timelines over a scenario's topology, the invariant oracle after
//! every run, and shrinking of the timelines that break it.
//!
//! Run `k` of a sweep started at seed `S` uses seed `S + k` twice: to draw its timeline (with
//! the scenario's name mixed in, so scenarios get different timelines) and as the
//! simulation's seed. A timeline is a list of `[[fault]]` entries exactly as a scenario
//! file writes them: the chaos scenario is the base scenario's own TOML with its faults
//! replaced, its expectations dropped (they bound one authored timeline, not every one) and
//! its duration stretched so that the carrier has the time to recover or fail (see
//! [`settle_s`]). So every finding is a scenario file that `postsock run` replays.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reports::Report;
use toml::{Table, Value};

use crate::invariants::{self, Breach, Kind};
use crate::scenario::{Scenario, ScenarioError, WorkloadKind};

/// A timeline: `[[fault]]` entries as tables (`at_ms`, `action`, `host`, ...).
pub type Timeline = Vec<Table>;

pub use crate::suite::Shard;

/// How long a chaos scenario runs after its last fault: both ends' dormant timeout, the
/// client's connect timeout and 20 s to re-establish, resend and close. A carrier that
/// neither finished nor surfaced an error by then has hung.
pub fn settle_s(scenario: &Scenario) -> u64 {
    let w = &scenario.workload;
    // A carrier that sends only every `interval_ms` learns of a dead path or a restarted
    // peer only when it next sends.
    let next_send = w.interval_ms.div_ceil(1000);
    w.dormant_timeout_s.unwrap_or(30)
        + w.connect_timeout_ms.unwrap_or(10_000).div_ceil(1000)
        + next_send
        + 20
}

/// What faults can hit: the endpoints' interfaces, the gateways on their paths, the server.
struct Targets {
    /// (host, interface) pairs; `None` is a single-interface host's only interface.
    links: Vec<(String, Option<String>)>,
    /// Gateways (and the gateways they are behind) the workload's hosts reach the network
    /// through.
    gateways: Vec<String>,
    /// The host that may be bounced (the workload's server, not a rendezvous peer).
    bounce: Option<String>,
    /// Each link's configured (loss, latency_ms), to restore after a worse spell.
    base: Vec<(f64, u64)>,
    /// Each link's host has an IPv6 address (its IPv6 can break).
    v6: Vec<bool>,
}

fn targets(s: &Scenario) -> Targets {
    let w = &s.workload;
    let ends = [w.client.get_ref(), w.server.get_ref()];
    let mut links = Vec::new();
    let mut base = Vec::new();
    let mut gateways = Vec::new();
    let add_gateway = |g: &str, gateways: &mut Vec<String>| {
        let mut next = Some(g.to_string());
        while let Some(g) = next {
            next = s
                .world
                .gateways
                .iter()
                .find(|x| x.name == g)
                .and_then(|x| x.behind.clone());
            if !gateways.contains(&g) {
                gateways.push(g);
            }
        }
    };
    let mut v6 = Vec::new();
    for host in s.world.hosts.iter().filter(|h| ends.contains(&&h.name)) {
        if host.interfaces.is_empty() {
            links.push((host.name.clone(), None));
            base.push((host.link.loss, host.link.latency_ms));
            v6.push(host.ip.v6());
            if let Some(g) = &host.gateway {
                add_gateway(g, &mut gateways);
            }
        }
        for i in &host.interfaces {
            links.push((host.name.clone(), Some(i.name.clone())));
            base.push((i.link.loss, i.link.latency_ms));
            v6.push(false);
            add_gateway(&i.gateway, &mut gateways);
        }
    }
    let bounce = (w.kind != WorkloadKind::RendezvousEcho).then(|| w.server.get_ref().clone());
    Targets {
        links,
        gateways,
        bounce,
        base,
        v6,
    }
}

fn entry(at_ms: u64, action: &str, host: &str, interface: Option<&str>) -> Table {
    let mut t = Table::new();
    t.insert("at_ms".into(), Value::Integer(at_ms as i64));
    t.insert("action".into(), Value::String(action.into()));
    t.insert("host".into(), Value::String(host.into()));
    if let Some(i) = interface {
        t.insert("interface".into(), Value::String(i.into()));
    }
    t
}

fn at_ms(t: &Table) -> u64 {
    t.get("at_ms")
        .and_then(Value::as_integer)
        .map_or(0, |v| v.max(0) as u64)
}

/// Mixes the scenario's name into the seed (FNV-1a), so two scenarios of one sweep draw
/// different timelines from the same run seed.
fn timeline_rng(name: &str, seed: u64) -> ChaCha8Rng {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    ChaCha8Rng::seed_from_u64(h ^ seed)
}

/// How long the workload of `base` is busy without faults (ms from its start, between 1 and
/// 30 s): the window chaos draws its faults in, so that they strike a live carrier. One
/// fault-free run of the scenario measures it.
pub fn active_window_ms(base: &Scenario) -> Result<u64, ScenarioError> {
    let (_, quiet) = with_timeline(base, &Vec::new())?;
    let report = crate::runner::run(&quiet, 1).report;
    let busy = report.metrics.sim_duration_ms as u64;
    Ok(busy
        .saturating_sub(base.workload.start_ms)
        .clamp(1_000, 30_000))
}

/// Draws a random timeline for `scenario` from `seed`: one to four faults (link down, black
/// hole, broken IPv6, flap, a worse link, a middlebox that starts blocking, a NAT reboot, a server
/// restart), most of them healed later, struck while the workload is busy (`window_ms` from
/// its start, see [`active_window_ms`]; half of the faults in its first fifth, when the
/// carrier is being established).
pub fn draw(scenario: &Scenario, window_ms: u64, seed: u64) -> Timeline {
    let mut rng = timeline_rng(&scenario.name, seed);
    let t = targets(scenario);
    let start = scenario.workload.start_ms;
    let window = window_ms.max(1);
    let mut out = Vec::new();
    for _ in 0..rng.gen_range(1..=4) {
        let span = if rng.gen_bool(0.5) {
            window.div_ceil(5)
        } else {
            window
        };
        let at = start + rng.gen_range(0..span);
        let heal = |rng: &mut ChaCha8Rng, p: f64| {
            rng.gen_bool(p).then(|| at + rng.gen_range(100..=15_000u64))
        };
        let link = rng.gen_range(0..t.links.len());
        let (host, interface) = t.links[link].clone();
        let interface = interface.as_deref();
        match rng.gen_range(0..7) {
            // A host with IPv6 may lose just that (drawn only then: the timelines of
            // IPv4-only worlds stay as they were).
            0 | 1 if t.v6[link] && rng.gen_bool(0.3) => {
                out.push(entry(at, "ipv6-blackhole", &host, None));
                if let Some(up) = heal(&mut rng, 0.75) {
                    out.push(entry(up, "ipv6-restore", &host, None));
                }
            }
            0 | 1 => {
                let action = if rng.gen_bool(0.5) {
                    "link-down"
                } else {
                    "blackhole"
                };
                out.push(entry(at, action, &host, interface));
                if let Some(up) = heal(&mut rng, 0.75) {
                    out.push(entry(up, "link-up", &host, interface));
                }
            }
            2 => {
                let mut e = entry(at, "flap", &host, interface);
                e.insert(
                    "period_ms".into(),
                    Value::Integer(rng.gen_range(50..=3_000)),
                );
                e.insert("count".into(), Value::Integer(rng.gen_range(1..=6)));
                out.push(e);
            }
            3 => {
                let mut e = entry(at, "set-link", &host, interface);
                // A worse link, not a dead one (dead links are link-down and blackhole):
                // beyond ~10 % TCP spends most of its time in backed-off retransmission
                // timeouts and no bound on finishing would be honest.
                let loss = f64::from(rng.gen_range(1..=10u32)) / 100.0;
                e.insert("loss".into(), Value::Float(loss));
                e.insert("latency_ms".into(), Value::Integer(rng.gen_range(1..=300)));
                out.push(e);
                // Always healed: a permanently worse (not dead) link would make the workload
                // slower by an amount no bound on finishing can honestly fix in advance.
                let back = at + rng.gen_range(100..=15_000u64);
                let (loss, latency) = t.base[link];
                let mut e = entry(back, "set-link", &host, interface);
                e.insert("loss".into(), Value::Float(loss));
                e.insert("latency_ms".into(), Value::Integer(latency as i64));
                out.push(e);
            }
            4 if !t.gateways.is_empty() => {
                let gateway = &t.gateways[rng.gen_range(0..t.gateways.len())];
                let mut middlebox = Table::new();
                let (rule, value) = match rng.gen_range(0..4) {
                    0 => ("block_udp", Value::Boolean(true)),
                    1 => ("tcp_blackhole", Value::Boolean(true)),
                    2 => ("tcp_reset", Value::Boolean(true)),
                    _ => ("udp_blackhole_after", Value::Integer(rng.gen_range(0..=40))),
                };
                middlebox.insert(rule.into(), value);
                let mut e = entry(at, "set-middlebox", gateway, None);
                e.insert("middlebox".into(), Value::Table(middlebox));
                out.push(e);
                // A flow blackholed after N datagrams lets every new flow (a rebinding, a
                // new connection) through for N more: a carrier crawls on for ever, neither
                // dead nor working, so that rule is always lifted again.
                let heal_p = if rule == "udp_blackhole_after" {
                    1.0
                } else {
                    0.6
                };
                if let Some(back) = heal(&mut rng, heal_p) {
                    let mut e = entry(back, "set-middlebox", gateway, None);
                    e.insert("middlebox".into(), Value::Table(Table::new()));
                    out.push(e);
                }
            }
            5 if !t.gateways.is_empty() => {
                let gateway = &t.gateways[rng.gen_range(0..t.gateways.len())];
                out.push(entry(at, "nat-reboot", gateway, None));
            }
            6 if t.bounce.is_some() => {
                out.push(entry(
                    at,
                    "bounce",
                    t.bounce.as_deref().unwrap_or_default(),
                    None,
                ));
            }
            _ => {
                out.push(entry(at, "link-down", &host, interface));
                out.push(entry(
                    at + rng.gen_range(100..=5_000u64),
                    "link-up",
                    &host,
                    interface,
                ));
            }
        }
    }
    out.sort_by_key(at_ms);
    out
}

/// `base` with `timeline` as its faults, no expectations and the duration [`settle_s`] past
/// the last fault: the scenario a chaos run runs, as TOML and parsed (so it is checked like
/// any file, and written out it replays exactly).
pub fn with_timeline(
    base: &Scenario,
    timeline: &Timeline,
) -> Result<(String, Scenario), ScenarioError> {
    let parse_error = |e: toml::de::Error| {
        ScenarioError::whole_file(
            &base.path,
            format!("chaos cannot rewrite the scenario: {e}"),
        )
    };
    let mut doc: Table = toml::from_str(&base.source).map_err(parse_error)?;
    let last_s = timeline.iter().map(at_ms).max().unwrap_or(0).div_ceil(1000);
    let flap_end = timeline
        .iter()
        .filter(|t| t.get("action").and_then(Value::as_str) == Some("flap"))
        .map(|t| {
            let get = |k| t.get(k).and_then(Value::as_integer).unwrap_or(0).max(0) as u64;
            (at_ms(t) + 2 * get("period_ms") * get("count")).div_ceil(1000)
        })
        .max()
        .unwrap_or(0);
    let duration = base.duration_s.max(last_s.max(flap_end) + settle_s(base));
    doc.insert("duration_s".into(), Value::Integer(duration as i64));
    doc.insert(
        "description".into(),
        Value::String(format!("chaos over {}: {}", base.name, base.description)),
    );
    doc.remove("expect");
    doc.remove("fault");
    let faults: Vec<Value> = timeline.iter().cloned().map(Value::Table).collect();
    if !faults.is_empty() {
        doc.insert("fault".into(), Value::Array(faults));
    }
    let text = toml::to_string(&doc).map_err(|e| {
        ScenarioError::whole_file(&base.path, format!("chaos cannot write the scenario: {e}"))
    })?;
    let scenario = Scenario::parse(&base.name, &base.path, &text)?;
    Ok((text, scenario))
}

/// One chaos run: the timeline, the report and what it broke.
#[derive(Debug, Clone)]
pub struct Run {
    /// The base scenario's name.
    pub scenario: String,
    /// The run's seed.
    pub seed: u64,
    /// The timeline it ran.
    pub timeline: Timeline,
    /// The report.
    pub report: Report,
    /// Broken invariants (empty: it held them all).
    pub breaches: Vec<Breach>,
    /// Wall-clock time of the run.
    pub wall: std::time::Duration,
}

/// Runs `base` with `timeline` and `seed` and checks the invariants.
pub fn run_timeline(base: &Scenario, timeline: Timeline, seed: u64) -> Result<Run, ScenarioError> {
    let (_, scenario) = with_timeline(base, &timeline)?;
    let outcome = crate::runner::run(&scenario, seed);
    let breaches = invariants::check(&outcome.report, &scenario);
    Ok(Run {
        scenario: base.name.clone(),
        seed,
        timeline,
        report: outcome.report,
        breaches,
        wall: outcome.wall,
    })
}

/// Shrinks `timeline` while `fails` holds: drops faults (repeatedly, last first), then moves
/// each remaining one earlier (halving its distance to `start_ms`) and shortens flaps, never
/// spending more than `budget` calls of `fails`. Returns the smallest failing timeline found
/// and the calls spent.
pub fn shrink(
    mut timeline: Timeline,
    start_ms: u64,
    budget: usize,
    fails: &dyn Fn(&Timeline) -> bool,
) -> (Timeline, usize) {
    let mut spent = 0;
    let attempt = |candidate: &Timeline, spent: &mut usize| {
        if *spent >= budget {
            return false;
        }
        *spent += 1;
        fails(candidate)
    };
    let mut changed = true;
    while changed && timeline.len() > 1 {
        changed = false;
        for i in (0..timeline.len()).rev() {
            let mut candidate = timeline.clone();
            candidate.remove(i);
            if attempt(&candidate, &mut spent) {
                timeline = candidate;
                changed = true;
            }
        }
    }
    for i in 0..timeline.len() {
        for _ in 0..4 {
            let at = at_ms(&timeline[i]);
            let earlier = start_ms + (at.saturating_sub(start_ms)) / 2;
            if earlier == at {
                break;
            }
            let mut candidate = timeline.clone();
            candidate[i].insert("at_ms".into(), Value::Integer(earlier as i64));
            candidate.sort_by_key(at_ms);
            if !attempt(&candidate, &mut spent) {
                break;
            }
            timeline = candidate;
        }
        for key in ["count", "period_ms"] {
            let Some(Some(v)) = timeline
                .get(i)
                .map(|t| t.get(key).and_then(Value::as_integer))
            else {
                continue;
            };
            if v > 1 {
                let mut candidate = timeline.clone();
                candidate[i].insert(key.into(), Value::Integer(v / 2));
                if attempt(&candidate, &mut spent) {
                    timeline = candidate;
                }
            }
        }
    }
    (timeline, spent)
}

/// A run that broke an invariant, with its shrunk timeline.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The run as drawn.
    pub run: Run,
    /// The smallest timeline found that still breaks the first broken invariant's kind.
    pub minimal: Timeline,
    /// Its breaches.
    pub minimal_breaches: Vec<Breach>,
    /// Runs the shrinking took.
    pub shrink_runs: usize,
    /// The minimal timeline's scenario file.
    pub minimal_text: String,
}

/// Shrinks a failing run's timeline to one that still breaks its first invariant's kind.
pub fn shrink_run(base: &Scenario, run: &Run, budget: usize) -> Finding {
    let kind: Option<Kind> = run.breaches.first().map(|b| b.kind);
    let breaks = |t: &Timeline| -> Option<Vec<Breach>> {
        let r = run_timeline(base, t.clone(), run.seed).ok()?;
        r.breaches
            .iter()
            .any(|b| Some(b.kind) == kind)
            .then_some(r.breaches)
    };
    let (minimal, shrink_runs) =
        shrink(run.timeline.clone(), base.workload.start_ms, budget, &|t| {
            breaks(t).is_some()
        });
    let minimal_breaches = breaks(&minimal).unwrap_or_else(|| run.breaches.clone());
    let minimal_text = with_timeline(base, &minimal)
        .map(|(text, _)| text)
        .unwrap_or_default();
    Finding {
        run: run.clone(),
        minimal,
        minimal_breaches,
        shrink_runs: shrink_runs + 1,
        minimal_text,
    }
}

/// What a sweep asks for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Runs per scenario.
    pub runs: u64,
    /// Seed of run 0.
    pub seed: u64,
    /// The part of the runs this process takes.
    pub shard: Shard,
    /// Most simulations spent shrinking one finding (0: no shrinking).
    pub shrink_budget: usize,
    /// Worker threads.
    pub jobs: usize,
}

/// The result of a sweep.
#[derive(Debug)]
pub struct Sweep {
    /// Every run, in (scenario, seed) order.
    pub runs: Vec<Run>,
    /// The runs that broke an invariant, shrunk.
    pub findings: Vec<Finding>,
}

/// Runs `options.runs` random timelines over each of `bases` (the shard's part of them),
/// checks each, and shrinks every failing one. `done` is called after each run.
pub fn sweep(
    bases: &[Scenario],
    options: &Options,
    done: &(dyn Fn(&Run) + Sync),
) -> Result<Sweep, ScenarioError> {
    let windows = crate::suite::par_map(bases, options.jobs, &active_window_ms)
        .into_iter()
        .collect::<Result<Vec<u64>, _>>()?;
    let work: Vec<(&Scenario, u64, u64)> = bases
        .iter()
        .zip(windows)
        .flat_map(|(b, window)| {
            (0..options.runs)
                .filter(|&k| options.shard.takes(k))
                .map(move |k| (b, window, options.seed + k))
        })
        .collect();
    // Every timeline must make a valid scenario before anything runs.
    let mut drawn = Vec::new();
    for &(base, window, seed) in &work {
        let timeline = draw(base, window, seed);
        with_timeline(base, &timeline)?;
        drawn.push((base, timeline, seed));
    }
    let runs: Vec<Run> = crate::suite::par_map(&drawn, options.jobs, &|(base, timeline, seed)| {
        let run = run_timeline(base, timeline.clone(), *seed).expect("checked above");
        done(&run);
        run
    });
    let failing: Vec<(&Scenario, &Run)> = runs
        .iter()
        .filter(|r| !r.breaches.is_empty())
        .filter_map(|r| bases.iter().find(|b| b.name == r.scenario).map(|b| (b, r)))
        .collect();
    let findings = crate::suite::par_map(&failing, options.jobs, &|&(base, run)| {
        shrink_run(base, run, options.shrink_budget)
    });
    Ok(Sweep { runs, findings })
}

/// The command that replays run `seed` of a sweep over `scenario` exactly as drawn.
pub fn replay_drawn(scenario: &str, seed: u64) -> String {
    format!("cargo run --release -- chaos {scenario} --runs 1 --seed {seed}")
}

/// Where a finding's minimal scenario goes below `out`.
pub fn finding_path(out: &Path, f: &Finding) -> PathBuf {
    out.join("chaos")
        .join(&f.run.scenario)
        .join(format!("seed-{}.toml", f.run.seed))
}

/// The command that replays a finding's minimal timeline.
pub fn replay_minimal(out: &Path, f: &Finding) -> String {
    format!(
        "cargo run --release -- run {} --seed {}",
        finding_path(out, f).display(),
        f.run.seed
    )
}

#[derive(serde::Serialize)]
struct FindingRecord<'a> {
    scenario: &'a str,
    seed: u64,
    breaches: Vec<String>,
    faults_drawn: usize,
    faults_minimal: usize,
    minimal_breaches: Vec<String>,
    shrink_runs: usize,
    replay_drawn: String,
    replay_minimal: String,
}

/// One run of a sweep, as the summary lists it.
#[derive(serde::Serialize)]
struct RunRecord<'a> {
    scenario: &'a str,
    seed: u64,
    /// Simulated duration in milliseconds.
    sim_ms: f64,
    /// Faults in its timeline.
    faults: usize,
    /// The kinds of invariant it broke (empty: none).
    breaches: std::collections::BTreeSet<&'static str>,
}

#[derive(serde::Serialize)]
struct SweepRecord<'a> {
    runs: usize,
    failed: usize,
    by_kind: std::collections::BTreeMap<&'static str, usize>,
    sim_s: f64,
    findings: Vec<FindingRecord<'a>>,
    /// Every run in (scenario, seed) order, so two sweeps can be compared run by run.
    per_run: Vec<RunRecord<'a>>,
}

/// Writes `chaos/summary.json` (the counts, the simulated total, every finding, and every run
/// with its simulated duration) and, per finding, its minimal scenario (`seed-S.toml`, with
/// its replay command on top) and the minimal run's report below `out`. Returns the
/// summary's path.
pub fn write(out: &Path, sweep: &Sweep) -> std::io::Result<PathBuf> {
    let dir = out.join("chaos");
    std::fs::create_dir_all(&dir)?;
    let per_run: Vec<RunRecord> = sweep
        .runs
        .iter()
        .map(|r| RunRecord {
            scenario: &r.scenario,
            seed: r.seed,
            sim_ms: r.report.metrics.sim_duration_ms,
            faults: r.timeline.len(),
            breaches: r.breaches.iter().map(|b| b.kind.name()).collect(),
        })
        .collect();
    let mut by_kind = std::collections::BTreeMap::new();
    for kind in per_run.iter().flat_map(|r| &r.breaches) {
        *by_kind.entry(*kind).or_insert(0) += 1;
    }
    let mut findings = Vec::new();
    for f in &sweep.findings {
        let path = finding_path(out, f);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let header = format!(
            "# chaos finding over {}: {}\n# replay: {}\n# as drawn ({} faults): {}\n\n",
            f.run.scenario,
            f.minimal_breaches
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join("; ")
                .replace('\n', " "),
            replay_minimal(out, f),
            f.run.timeline.len(),
            replay_drawn(&f.run.scenario, f.run.seed),
        );
        findings.push(FindingRecord {
            scenario: &f.run.scenario,
            seed: f.run.seed,
            breaches: f.run.breaches.iter().map(|b| b.to_string()).collect(),
            faults_drawn: f.run.timeline.len(),
            faults_minimal: f.minimal.len(),
            minimal_breaches: f.minimal_breaches.iter().map(|b| b.to_string()).collect(),
            shrink_runs: f.shrink_runs,
            replay_drawn: replay_drawn(&f.run.scenario, f.run.seed),
            replay_minimal: replay_minimal(out, f),
        });
        std::fs::write(&path, format!("{header}{}", f.minimal_text))?;
    }
    let record = SweepRecord {
        runs: sweep.runs.len(),
        failed: per_run.iter().filter(|r| !r.breaches.is_empty()).count(),
        by_kind,
        sim_s: per_run.iter().map(|r| r.sim_ms).sum::<f64>() / 1000.0,
        findings,
        per_run,
    };
    let summary = dir.join("summary.json");
    std::fs::write(
        &summary,
        serde_json::to_string_pretty(&record).map_err(std::io::Error::other)?,
    )?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(at: u64, action: &str) -> Table {
        entry(at, action, "c", None)
    }

    #[test]
    fn shards_parse_and_reject_nonsense() {
        assert_eq!("1/4".parse::<Shard>(), Ok(Shard { index: 1, count: 4 }));
        for bad in ["4/4", "1/0", "x/2", "3", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn shrinking_keeps_only_the_faults_that_matter_and_moves_them_early() {
        // Fails whenever a bounce happens at or after 1000 ms and a link-down is present.
        let fails = |tl: &Timeline| {
            let has = |a: &str| {
                tl.iter()
                    .any(|e| e.get("action").and_then(Value::as_str) == Some(a))
            };
            has("link-down")
                && tl.iter().any(|e| {
                    e.get("action").and_then(Value::as_str) == Some("bounce") && at_ms(e) >= 1000
                })
        };
        let drawn = vec![
            t(500, "nat-reboot"),
            t(2_000, "link-down"),
            t(3_000, "link-up"),
            t(9_000, "bounce"),
            t(12_000, "blackhole"),
        ];
        assert!(fails(&drawn));
        let (minimal, spent) = shrink(drawn, 0, 100, &fails);
        let actions: Vec<&str> = minimal
            .iter()
            .filter_map(|e| e.get("action").and_then(Value::as_str))
            .collect();
        assert_eq!(actions.len(), 2, "{minimal:?}");
        assert!(actions.contains(&"link-down") && actions.contains(&"bounce"));
        let bounce = minimal
            .iter()
            .find(|e| e.get("action").and_then(Value::as_str) == Some("bounce"));
        let at = bounce.map(at_ms).unwrap_or_default();
        assert!(
            (1000..9000).contains(&at),
            "moved earlier but still failing: {at}"
        );
        assert!(fails(&minimal));
        assert!(spent <= 100);
        // A budget of zero changes nothing.
        let again = vec![t(1, "link-down"), t(2_000, "bounce")];
        assert_eq!(shrink(again.clone(), 0, 0, &fails).0, again);
    }
}
