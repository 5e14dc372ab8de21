//! `postsock`: run Post Sockets scenario suites in the deterministic simulator.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use testbed::suite;

/// Exit code for bad input (usage errors, unknown or malformed scenarios).
const USAGE: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "postsock",
    version,
    about = "Post Sockets scenario suites in a deterministic simulated network"
)]
struct Cli {
    /// Directory holding the scenario files.
    #[arg(long, global = true, default_value = suite::DEFAULT_SCENARIOS)]
    scenarios: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the scenarios.
    List,
    /// Run one scenario with one seed and write its report and plot.
    Run {
        /// Scenario name (e.g. `echo/quic`) or path to a scenario file.
        scenario: String,
        /// The seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output directory.
        #[arg(long, default_value = "target/reports")]
        out: PathBuf,
        /// Also capture every access link's packets into DIR/<link>.pcapng, with the run's
        /// TLS secrets in DIR/keys.log (open in Wireshark with that key log file).
        #[arg(long, value_name = "DIR")]
        pcap: Option<PathBuf>,
    },
    /// Run every scenario (or those whose name starts with FILTER) for several seeds.
    Suite {
        /// Only scenarios whose name starts with this.
        filter: Option<String>,
        /// Seeds 1..=K per scenario.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
        seeds: u64,
        /// Output directory.
        #[arg(long, default_value = "target/reports")]
        out: PathBuf,
        /// Worker threads (default: the number of cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Take only this part of the runs: i/n runs the k-th (scenario, seed) pair when
        /// k % n == i (one CI matrix job per shard; `postsock merge` joins their outputs).
        #[arg(long, default_value = "0/1")]
        shard: testbed::suite::Shard,
        /// Also write a JUnit XML file: one testcase per (scenario, seed).
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
    },
    /// Join the output directories of several suite shards (or suites over different
    /// scenarios) into one: reports, plots, summary, NAT matrix and comparison, JUnit.
    Merge {
        /// The directories `suite --out` wrote.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Where the joined output goes.
        #[arg(long, default_value = "target/reports")]
        out: PathBuf,
        /// Also write a JUnit XML file.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
    },
    /// Compare two suite output directories (e.g. main's and a branch's): print, per
    /// scenario, the metrics whose median over seeds moved by more than the threshold, and
    /// runs that passed in BASE and fail in NEW. Exits 1 when anything got worse.
    Diff {
        /// The reference output directory.
        base: PathBuf,
        /// The output directory to judge.
        new: PathBuf,
        /// Relative change (0.1 = 10 %) below which a metric is taken as unchanged.
        #[arg(long, default_value_t = 0.1)]
        threshold: f64,
        /// Absolute change below which a metric is taken as unchanged (ms, messages, kbit/s).
        #[arg(long, default_value_t = 1.0)]
        min_abs: f64,
    },
    /// Print the JSON Schema of the reports (published as docs/report.schema.json).
    Schema,
    /// Rewrite the golden reports (tests/golden/<scenario>/seed-<N>.json, compared byte for
    /// byte by the tests) from fresh runs, after a change that is meant to move them.
    Bless {
        /// Also pin this scenario's run (with --seed).
        scenario: Option<String>,
        /// The seed of the run to add.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The golden directory.
        #[arg(long, default_value_os_t = testbed::suite::golden_dir())]
        golden: PathBuf,
    },
    /// Random fault timelines over scenarios (those whose name starts with FILTER, or a
    /// scenario file), each run checked against the invariant oracle; failing timelines are
    /// shrunk and written as scenario files with the command that replays them.
    Chaos {
        /// Only scenarios whose name starts with this (all when absent), or a .toml path.
        filter: Option<String>,
        /// Timelines per scenario.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
        runs: u64,
        /// Seed of the first run (run k uses seed + k).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Take only this part of the runs: i/n runs those with k % n == i.
        #[arg(long, default_value = "0/1")]
        shard: testbed::chaos::Shard,
        /// Most simulations spent shrinking one failing timeline (0: keep it as drawn).
        #[arg(long, default_value_t = 40)]
        shrink_budget: usize,
        /// Output directory (findings go below DIR/chaos).
        #[arg(long, default_value = "target/reports")]
        out: PathBuf,
        /// Worker threads (default: the number of cores).
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// Wall-clock benchmark on real loopback: postsock vs raw quinn and raw tokio-rustls
    /// (throughput and latency as ratios), and sender memory under back-pressure.
    Bench {
        /// Smaller workloads and fewer repeats (a smoke run; figures are not comparable).
        #[arg(long)]
        quick: bool,
        /// Where bench.json and bench.md go.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
        /// Instead: one bulk transfer inside the simulator on postsock and on bare quinn over
        /// the same simulated sockets, compared by wall time (writes sim-bench.{json,md}).
        #[arg(long)]
        sim: bool,
        /// Instead: the send queue alone (no network, no TLS), ns per message for 64 B, 1 KiB
        /// and 16 KiB messages, best of `--repeats` (writes queue-bench.{json,md}): a
        /// low-noise measure for changes to the queue.
        #[arg(long)]
        queue: bool,
        /// Bytes of the `--sim` transfer.
        #[arg(long, default_value_t = 10 << 20)]
        sim_bytes: usize,
        /// Instead: the simulator's cost against the number of simulated hosts. Runs the
        /// `scale/` scenarios (a client group behind one NAT) resized to each `--clients`
        /// size, each in its own process; writes scale-bench.{json,md,png}.
        #[arg(long)]
        scale: bool,
        /// Instead: what idle connections cost (CPU and wake-ups per second of 1, 10 and 100
        /// connections that carry nothing, postsock against raw quinn and tokio-rustls;
        /// writes idle-bench.{json,md}).
        #[arg(long)]
        idle: bool,
        /// Client-group sizes of `--scale`.
        #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
        clients: Vec<u32>,
        /// Only the comparisons whose "protocol workload" label contains this, and no memory
        /// run (for profiling), e.g. `--only "tls-tcp 10000"`.
        #[arg(long)]
        only: Option<String>,
        /// Run the throughput and latency comparisons on tokio's current-thread runtime
        /// (default: a multi-thread runtime with `--workers` workers).
        #[arg(long, conflicts_with = "workers")]
        current_thread: bool,
        /// Worker threads of the multi-thread runtime the comparisons run on.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
        workers: u16,
        /// Measure only this stack, e.g. under `perf` (the other stack's figures read 0).
        #[arg(long, value_enum)]
        side: Option<testbed::bench::Side>,
        /// Repeats of every comparison (default 5; 1 with `--quick`).
        #[arg(long)]
        repeats: Option<usize>,
    },
    /// Run a STUN server (RFC 8489 Binding, no authentication) on real sockets: answers each
    /// Binding request with the address it came from; drops and counts anything else.
    StunServer {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:3478")]
        listen: std::net::SocketAddr,
    },
    /// Run a TURN relay (RFC 8656 over UDP: Allocate, Refresh, CreatePermission, ChannelBind,
    /// Send/Data, ChannelData; long-term credentials; also a STUN Binding server) on real
    /// sockets: the server the simulator's relay host runs.
    TurnServer {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:3478")]
        listen: std::net::SocketAddr,
        /// A user, as name:password (repeat for more).
        #[arg(long = "user", required = true)]
        users: Vec<String>,
        /// The realm of the credentials.
        #[arg(long, default_value = "postsock")]
        realm: String,
        /// The address relayed addresses are allocated on (needed when listening on 0.0.0.0).
        #[arg(long)]
        relay_ip: Option<std::net::IpAddr>,
    },
    /// Ask a STUN server for this host's server-reflexive address (real sockets).
    StunClient {
        /// The STUN server, as host:port.
        server: String,
    },
    /// Run a rendezvous server on real sockets (QUIC and TLS/TCP on one port): pairs peers
    /// that register the same pairing id and hands each the other's sealed candidates.
    RendezvousServer {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:7000")]
        listen: std::net::SocketAddr,
        /// The name its certificate is issued for (clients verify it).
        #[arg(long, default_value = "localhost")]
        name: String,
        /// Where to write the (generated) CA certificate, DER, for clients to trust.
        #[arg(long)]
        ca_out: PathBuf,
        /// How long a peer waits for the other, in seconds.
        #[arg(long, default_value_t = 60)]
        wait_s: u64,
    },
    /// (internal) The receiver of the memory benchmark.
    #[command(hide = true)]
    BenchReceiver {
        #[arg(long)]
        protocol: String,
        #[arg(long)]
        ca_out: PathBuf,
    },
    /// (internal) One run of `bench --scale`: prints a scale row as JSON.
    #[command(hide = true)]
    BenchScaleRun {
        #[arg(long)]
        scenario: String,
        #[arg(long)]
        clients: u32,
    },
    /// (internal) The sender of the memory benchmark.
    #[command(hide = true)]
    BenchSender {
        #[arg(long)]
        protocol: String,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        total_bytes: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::List => list(&cli.scenarios),
        Command::Run {
            scenario,
            seed,
            out,
            pcap,
        } => run_one(&cli.scenarios, &scenario, seed, &out, pcap),
        Command::Suite {
            filter,
            seeds,
            out,
            jobs,
            shard,
            junit,
        } => run_suite(
            &cli.scenarios,
            filter.as_deref(),
            seeds,
            &out,
            jobs,
            shard,
            junit.as_deref(),
        ),
        Command::Schema => match serde_json::to_string_pretty(&reports::Report::schema()) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => usage_error(e),
        },
        Command::Bless {
            scenario,
            seed,
            golden,
        } => match suite::bless(
            &golden,
            &cli.scenarios,
            scenario.as_deref().map(|s| (s, seed)),
        ) {
            Ok(changed) => {
                for g in &changed {
                    println!("rewrote {}", g.path.display());
                }
                println!("{} golden report(s) changed", changed.len());
                ExitCode::SUCCESS
            }
            Err(e) => usage_error(e),
        },
        Command::Merge { dirs, out, junit } => merge(&cli.scenarios, &dirs, &out, junit.as_deref()),
        Command::Diff {
            base,
            new,
            threshold,
            min_abs,
        } => diff(&base, &new, threshold, min_abs),
        Command::Chaos {
            filter,
            runs,
            seed,
            shard,
            shrink_budget,
            out,
            jobs,
        } => {
            let options = testbed::chaos::Options {
                runs,
                seed,
                shard,
                shrink_budget,
                jobs: jobs.unwrap_or_else(default_jobs),
            };
            run_chaos(&cli.scenarios, filter.as_deref(), &options, &out)
        }
        Command::Bench {
            scale: true,
            clients,
            out,
            ..
        } => bench_scale(&cli.scenarios, &clients, &out),
        Command::BenchScaleRun { scenario, clients } => {
            match suite::load_one(&cli.scenarios, &scenario)
                .map_err(|e| e.to_string())
                .and_then(|s| testbed::bench_scale::measure(&s, clients))
                .and_then(|row| serde_json::to_string(&row).map_err(|e| e.to_string()))
            {
                Ok(json) => {
                    println!("{json}");
                    ExitCode::SUCCESS
                }
                Err(e) => usage_error(e),
            }
        }
        Command::Bench {
            queue: true,
            quick,
            repeats,
            out,
            ..
        } => {
            let (messages, default_repeats) = if quick { (2_000, 1) } else { (100_000, 5) };
            let repeats = repeats.unwrap_or(default_repeats);
            let rows =
                testbed::bench::queue(messages, repeats, &|what| eprintln!("measuring {what}"));
            publish_measured(&out, "queue-bench", rows, |r| {
                testbed::bench::queue_markdown(r)
            })
        }
        Command::Bench {
            idle: true,
            quick,
            workers,
            out,
            ..
        } => {
            let opts = testbed::bench_idle::IdleOptions::new(quick, usize::from(workers));
            let rows = testbed::bench_idle::measure(&opts, &|what| eprintln!("measuring {what}"));
            publish_measured(&out, "idle-bench", rows, |r| {
                testbed::bench_idle::markdown(r)
            })
        }
        Command::Bench {
            sim: true,
            sim_bytes,
            quick,
            out,
            ..
        } => bench_sim(sim_bytes, if quick { 1 } else { 5 }, &out),
        Command::Bench {
            quick,
            out,
            only,
            current_thread,
            workers,
            side,
            repeats,
            ..
        } => {
            let mut opts = bench_options(quick);
            opts.profiling(only, side, repeats);
            opts.current_thread = current_thread;
            opts.workers = usize::from(workers);
            bench(&opts, &out)
        }
        Command::StunServer { listen } => done(stun_server(listen)),
        Command::StunClient { server } => done(stun_client(&server)),
        Command::TurnServer {
            listen,
            users,
            realm,
            relay_ip,
        } => done(turn_server(listen, &users, realm, relay_ip)),
        Command::RendezvousServer {
            listen,
            name,
            ca_out,
            wait_s,
        } => done(rendezvous_server(listen, &name, &ca_out, wait_s)),
        Command::BenchReceiver { protocol, ca_out } => match protocol_named(&protocol) {
            Some(p) => done(testbed::bench::receiver(p, &ca_out)),
            None => usage_error(format!("unknown protocol `{protocol}`")),
        },
        Command::BenchSender {
            protocol,
            port,
            ca,
            total_bytes,
        } => match protocol_named(&protocol) {
            Some(p) => done(testbed::bench::sender(p, port, &ca, total_bytes)),
            None => usage_error(format!("unknown protocol `{protocol}`")),
        },
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

fn turn_server(
    listen: std::net::SocketAddr,
    users: &[String],
    realm: String,
    relay_ip: Option<std::net::IpAddr>,
) -> Result<(), String> {
    let mut config = postsock::traversal::turn::TurnServerConfig::new("", "");
    config.users.clear();
    for u in users {
        let (name, password) = u
            .split_once(':')
            .filter(|(n, p)| !n.is_empty() && !p.is_empty())
            .ok_or_else(|| format!("--user {u:?}: expected name:password"))?;
        config.users.insert(name.into(), password.into());
    }
    config.realm = realm;
    config.relay_ip = relay_ip;
    let rt = runtime().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let server = postsock::traversal::turn::TurnServer::bind(
            postsock::net::TokioNet::shared(),
            listen,
            config,
        )
        .await
        .map_err(|e| e.to_string())?;
        println!("TURN server on {}", server.local_addr());
        let stats = server.stats();
        tokio::spawn(async move {
            let mut last = (0, 0, 0);
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                let dropped = stats.malformed() + stats.unauthenticated() + stats.unpermitted();
                let now = (
                    stats.allocations(),
                    stats.relayed_out() + stats.relayed_in(),
                    dropped,
                );
                if now != last {
                    eprintln!(
                        "allocations {}, relayed {}, dropped {}",
                        now.0, now.1, now.2
                    );
                    last = now;
                }
            }
        });
        server.run().await;
        Ok(())
    })
}

fn stun_server(listen: std::net::SocketAddr) -> Result<(), String> {
    let rt = runtime().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let net = postsock::net::TokioNet;
        let server = postsock::traversal::stun::StunServer::bind(&net, listen)
            .await
            .map_err(|e| e.to_string())?;
        println!("STUN server on {}", server.local_addr());
        let stats = server.stats();
        tokio::spawn(async move {
            let mut last = (0, 0);
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                let now = (stats.answered(), stats.dropped());
                if now != last {
                    eprintln!("answered {}, dropped {}", now.0, now.1);
                    last = now;
                }
            }
        });
        server.run().await;
        Err("the STUN socket failed".to_string())
    })
}

fn rendezvous_server(
    listen: std::net::SocketAddr,
    name: &str,
    ca_out: &std::path::Path,
    wait_s: u64,
) -> Result<(), String> {
    let rt = runtime().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let ca = postsock::TestCa::new("postsock rendezvous CA").map_err(|e| e.to_string())?;
        let identity = ca.issue(&[name]).map_err(|e| e.to_string())?;
        let mut config = postsock::Configuration::default();
        config.security(postsock::Security {
            identity: Some(identity),
            ..postsock::Security::default()
        });
        let net = postsock::net::TokioNet::shared();
        let wait = std::time::Duration::from_secs(wait_s);
        let server =
            postsock::traversal::rendezvous::RendezvousServer::bind(net, listen, config, wait)
                .await
                .map_err(|e| e.to_string())?;
        // Written once the server listens: a client that sees the file can connect.
        std::fs::write(ca_out, ca.root().as_ref())
            .map_err(|e| format!("writing {}: {e}", ca_out.display()))?;
        println!(
            "rendezvous server on {} (CA in {})",
            server.local_addr(),
            ca_out.display()
        );
        let stats = server.stats();
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            eprintln!(
                "paired {}, refused {}, malformed {}",
                stats.paired(),
                stats.refused(),
                stats.malformed()
            );
        }
    })
}

fn stun_client(server: &str) -> Result<(), String> {
    use postsock::net::Net;
    let rt = runtime().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let net = postsock::net::TokioNet;
        let addr = tokio::net::lookup_host(server)
            .await
            .map_err(|e| format!("resolving {server}: {e}"))?
            .next()
            .ok_or_else(|| format!("`{server}` has no address"))?;
        let local: std::net::SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let socket = net.bind_udp(local).await.map_err(|e| e.to_string())?;
        let txid = postsock::traversal::stun::transaction_id(&net);
        let answers = postsock::traversal::stun::Answers::Socket(socket.as_ref());
        let timing = postsock::traversal::stun::Timing::default();
        let reflexive =
            postsock::traversal::stun::binding(socket.as_ref(), answers, addr, txid, timing)
                .await
                .map_err(|e| e.to_string())?;
        println!("{reflexive}");
        Ok(())
    })
}

fn protocol_named(name: &str) -> Option<postsock::Protocol> {
    [postsock::Protocol::Quic, postsock::Protocol::TlsTcp]
        .into_iter()
        .find(|p| p.name() == name)
}

fn done<E: std::fmt::Display>(r: Result<(), E>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench_options(quick: bool) -> testbed::bench::Options {
    use testbed::bench;
    if quick {
        bench::Options {
            small_count: 500,
            large_count: 5,
            rounds: 50,
            repeats: 1,
            memory_bytes: 64 << 20,
            ..bench::Options::default()
        }
    } else {
        bench::Options::default()
    }
}

fn bench(opts: &testbed::bench::Options, out: &std::path::Path) -> ExitCode {
    use testbed::bench;
    let profiling = opts.only.is_some() || opts.side.is_some();
    let (runtime, rows) = match bench::compare(opts, &|what| eprintln!("measuring {what}")) {
        Ok(measured) => measured,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut memory = Vec::new();
    for protocol in [postsock::Protocol::Quic, postsock::Protocol::TlsTcp] {
        if profiling {
            break;
        }
        eprintln!(
            "measuring {} sender memory under back-pressure",
            protocol.name()
        );
        match bench::memory(&exe, protocol, opts.memory_bytes) {
            Ok(row) => memory.push(row),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let report = bench::BenchReport {
        runtime,
        rows,
        memory,
    };
    publish(out, "bench", &bench::markdown(&report), &report)
}

/// Prints a benchmark's table and writes it to `OUT/NAME.md`, its data to `OUT/NAME.json`.
fn publish(
    out: &std::path::Path,
    name: &str,
    table: &str,
    data: &impl serde::Serialize,
) -> ExitCode {
    println!("{table}");
    let written = std::fs::create_dir_all(out)
        .and_then(|()| std::fs::write(out.join(format!("{name}.md")), table))
        .and_then(|()| {
            std::fs::write(
                out.join(format!("{name}.json")),
                serde_json::to_string_pretty(data).unwrap_or_default(),
            )
        });
    if let Err(e) = written {
        eprintln!("error: writing {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn bench_sim(bytes: usize, repeats: usize, out: &std::path::Path) -> ExitCode {
    use testbed::bench_sim;
    if bytes == 0 {
        return usage_error("--sim-bytes must be at least 1");
    }
    let progress = |what: &str| eprintln!("simulating {what}");
    let result = bench_sim::compare(bytes, repeats, &progress);
    publish_measured(out, "sim-bench", result, bench_sim::markdown)
}

/// Publishes what a benchmark measured (see [`publish`]), or says why it could not.
fn publish_measured<T: serde::Serialize, E: std::fmt::Display>(
    out: &std::path::Path,
    name: &str,
    measured: Result<T, E>,
    markdown: impl FnOnce(&T) -> String,
) -> ExitCode {
    match measured {
        Ok(data) => publish(out, name, &markdown(&data), &data),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The `scale/` scenarios shipped with the suite, in order.
const SCALE_SCENARIOS: [&str; 3] = [
    "scale/cgnat-quic",
    "scale/cgnat-tls-tcp",
    "scale/public-quic",
];

fn bench_scale(dir: &std::path::Path, sizes: &[u32], out: &std::path::Path) -> ExitCode {
    use testbed::bench_scale::{self, ScaleRow};
    if let Some(bad) = sizes.iter().find(|&&n| n == 0 || n > sim::MAX_GROUP) {
        return usage_error(format!(
            "--clients: {bad} is not between 1 and {}",
            sim::MAX_GROUP
        ));
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return usage_error(e),
    };
    let mut rows: Vec<ScaleRow> = Vec::new();
    for scenario in SCALE_SCENARIOS {
        for &n in sizes {
            eprintln!("simulating {scenario} with {n} clients");
            let child = std::process::Command::new(&exe)
                .arg("--scenarios")
                .arg(dir)
                .args(["bench-scale-run", "--scenario", scenario])
                .args(["--clients", &n.to_string()])
                .output();
            let row = child.map_err(|e| e.to_string()).and_then(|o| {
                if o.status.success() {
                    serde_json::from_slice::<ScaleRow>(&o.stdout).map_err(|e| e.to_string())
                } else {
                    Err(String::from_utf8_lossy(&o.stderr).trim().to_owned())
                }
            });
            match row {
                Ok(row) => rows.push(row),
                Err(e) => {
                    eprintln!("error: {scenario} with {n} clients: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let code = publish(out, "scale-bench", &bench_scale::markdown(&rows), &rows);
    let png = out.join("scale-bench.png");
    if let Err(e) = bench_scale::plot(&rows, &png) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    println!("plot: {}", png.display());
    if rows.iter().all(ScaleRow::complete) {
        code
    } else {
        eprintln!("error: a run did not deliver every message");
        ExitCode::FAILURE
    }
}

fn usage_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(USAGE)
}

fn list(dir: &std::path::Path) -> ExitCode {
    match suite::load(dir, Some("")) {
        Ok(scenarios) => {
            let width = scenarios.iter().map(|s| s.name.len()).max().unwrap_or(0);
            for s in scenarios {
                println!("{:width$}  {}", s.name, s.description);
            }
            ExitCode::SUCCESS
        }
        Err(e) => usage_error(e),
    }
}

fn print_table(outcomes: &[testbed::RunOutcome]) {
    println!(
        "{:<24} {:>6} {:<8} {:>6} {:>9} {:>5} {:>5} {:>5} {:>4} {:>9}",
        "scenario", "seed", "proto", "result", "TTFM ms", "sent", "deliv", "lost", "dup", "sim ms"
    );
    for o in outcomes {
        let r = &o.report;
        let m = &r.metrics;
        println!(
            "{:<24} {:>6} {:<8} {:>6} {:>9} {:>5} {:>5} {:>5} {:>4} {:>9.0}",
            r.scenario,
            r.seed,
            r.protocol,
            if r.passed { "pass" } else { "FAIL" },
            m.ttfm_ms.map_or("-".into(), |t| format!("{t:.1}")),
            m.messages_sent,
            m.messages_delivered,
            m.messages_lost,
            m.messages_duplicated,
            m.sim_duration_ms,
        );
    }
}

/// Prints the failed runs with their replay commands; `path` is the scenario file a run was
/// loaded from, when it was (its name alone would not find it again).
fn report_failures(
    outcomes: &[testbed::RunOutcome],
    path: Option<&str>,
    dir: &std::path::Path,
) -> ExitCode {
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.report.passed).collect();
    if failed.is_empty() {
        return ExitCode::SUCCESS;
    }
    eprintln!("\n{} run(s) failed:", failed.len());
    for o in failed {
        let r = &o.report;
        eprintln!("- {} seed {}:", r.scenario, r.seed);
        for line in r.failures() {
            eprintln!("    {line}");
        }
        match path {
            Some(p) => eprintln!(
                "    replay: cargo run --release -- run {} --seed {}",
                suite::shell_word(p),
                r.seed
            ),
            None => eprintln!("    replay: {}", suite::replay_command(r, dir)),
        }
    }
    ExitCode::FAILURE
}

fn run_one(
    dir: &std::path::Path,
    name: &str,
    seed: u64,
    out: &std::path::Path,
    pcap: Option<PathBuf>,
) -> ExitCode {
    let scenario = match suite::load_one(dir, name) {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    let started = Instant::now();
    let options = testbed::RunOptions { pcap: pcap.clone() };
    let outcome = testbed::run_with(&scenario, seed, &options);
    if let Some(dir) = &pcap {
        println!(
            "capture: {}/*.pcapng, TLS secrets in {}/keys.log",
            dir.display(),
            dir.display()
        );
    }
    let outcomes = [outcome];
    print_table(&outcomes);
    // What the client's policies chose (the establishment of its last carrier).
    let choices = outcomes[0]
        .report
        .establishment
        .iter()
        .flat_map(|e| &e.policy);
    for c in choices {
        println!("policy {}: {}", c.policy, c.setting);
    }
    match suite::write_outputs(out, &outcomes, true, started, dir) {
        Ok(_) => println!(
            "report: {}",
            suite::report_path(out, &outcomes[0].report).display()
        ),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    report_failures(&outcomes, name.ends_with(".toml").then_some(name), dir)
}

fn default_jobs() -> usize {
    suite::default_jobs()
}

fn progress(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if std::io::stderr().is_terminal() {
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} runs, {rate}, ETA {eta} {wide_msg}")
                .map(|style| {
                    style.with_key(
                        "rate",
                        |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                            let _ = write!(w, "{:.1} runs/s", state.per_sec());
                        },
                    )
                })
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

fn run_chaos(
    dir: &std::path::Path,
    filter: Option<&str>,
    options: &testbed::chaos::Options,
    out: &std::path::Path,
) -> ExitCode {
    let bases = match filter {
        Some(f) if f.ends_with(".toml") => suite::load_one(dir, f).map(|s| vec![s]),
        _ => suite::load(dir, filter),
    };
    let bases = match bases {
        Ok(b) => b,
        Err(e) => return usage_error(e),
    };
    let per = options.runs.div_ceil(options.shard.count);
    let bar = progress(bases.len() as u64 * per);
    let started = Instant::now();
    let sweep = testbed::chaos::sweep(&bases, options, &|run| {
        bar.set_message(format!("{} seed {}", run.scenario, run.seed));
        bar.inc(1);
    });
    bar.finish_and_clear();
    let sweep = match sweep {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    let summary = match testbed::chaos::write(out, &sweep) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "error: writing the chaos outputs below {}: {e}",
                out.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let sim: f64 = sweep
        .runs
        .iter()
        .map(|r| r.report.metrics.sim_duration_ms)
        .sum::<f64>()
        / 1000.0;
    let wall = started.elapsed().as_secs_f64();
    println!(
        "{} chaos runs over {} scenarios in {wall:.1} s wall ({sim:.0} simulated s); {} broke an invariant. Summary: {}",
        sweep.runs.len(),
        bases.len(),
        sweep.findings.len(),
        summary.display()
    );
    for f in &sweep.findings {
        println!(
            "\n{} seed {}: {}\n  shrunk from {} to {} faults in {} runs: {}\n  replay as drawn: {}\n  replay minimal: {}",
            f.run.scenario,
            f.run.seed,
            f.run.breaches.iter().map(|b| b.to_string()).collect::<Vec<_>>().join("; "),
            f.run.timeline.len(),
            f.minimal.len(),
            f.shrink_runs,
            f.minimal_breaches.first().map(|b| b.kind.name()).unwrap_or("-"),
            testbed::chaos::replay_drawn(&f.run.scenario, f.run.seed),
            testbed::chaos::replay_minimal(out, f),
        );
    }
    if sweep.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run_suite(
    dir: &std::path::Path,
    filter: Option<&str>,
    seeds: u64,
    out: &std::path::Path,
    jobs: Option<usize>,
    shard: testbed::suite::Shard,
    junit: Option<&std::path::Path>,
) -> ExitCode {
    let scenarios = match suite::load(dir, filter) {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    let seeds: Vec<u64> = (1..=seeds).collect();
    let total = suite::shard_runs(&scenarios, &seeds, shard).len() as u64;
    if total == 0 {
        return usage_error(format!(
            "shard {}/{} has no run: the suite has only {} runs",
            shard.index,
            shard.count,
            scenarios.len() * seeds.len()
        ));
    }
    let bar = progress(total);
    let jobs = jobs.unwrap_or_else(default_jobs);
    let started = Instant::now();
    // Each report goes to disk as its run ends; memory keeps only metrics and verdicts.
    let outcomes = suite::run_to_disk(&scenarios, &seeds, shard, jobs, out, &|o| {
        bar.set_message(format!("{} seed {}", o.report.scenario, o.report.seed));
        bar.inc(1);
    });
    bar.finish_and_clear();
    let outcomes = match outcomes {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    print_table(&outcomes);
    finish_suite(&outcomes, dir, out, junit, started)
}

/// Writes a suite's outputs besides the reports already below `out` (summary, JUnit, the
/// protocol comparison and the NAT matrix when their runs are there) and reports what failed.
fn finish_suite(
    outcomes: &[testbed::RunOutcome],
    dir: &std::path::Path,
    out: &std::path::Path,
    junit: Option<&std::path::Path>,
    started: Instant,
) -> ExitCode {
    match suite::write_summary(out, outcomes, started, dir) {
        Ok(summary) => {
            let wall = started.elapsed().as_secs_f64();
            let sim: f64 = outcomes
                .iter()
                .map(|o| o.report.metrics.sim_duration_ms)
                .sum::<f64>()
                / 1000.0;
            println!(
                "\n{} runs in {wall:.2} s wall; {sim:.1} simulated s ({:.1} sim s per wall s). Summary: {}",
                outcomes.len(),
                sim / wall.max(1e-9),
                summary.display()
            );
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(path) = junit {
        let xml = suite::junit(outcomes, dir);
        let written = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(path, xml));
        if let Err(e) = written {
            eprintln!("error: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("JUnit: {}", path.display());
    }
    // The protocol comparison, from the reports of the compare/ family (if the suite ran it).
    // Its message latencies are read back from the reports on disk, one at a time.
    let mut unreadable = None;
    let compared = outcomes
        .iter()
        .filter(|o| testbed::compare::parse_name(&o.report.scenario).is_some())
        .filter_map(
            |o| match suite::read_report(out, &o.report.scenario, o.report.seed) {
                Ok(r) => Some(r),
                Err(e) => {
                    unreadable.get_or_insert(e);
                    None
                }
            },
        );
    let comparison = testbed::compare::from_reports(compared);
    if let Some(e) = unreadable {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    if let Some(comparison) = comparison {
        if let Err(e) = testbed::compare::write(out, &comparison) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        println!(
            "\nQUIC vs TLS/TCP: {} scenarios; {} (json, md), {} and {}",
            comparison.cells.len(),
            out.join("compare.*").display(),
            out.join("compare-hol.png").display(),
            out.join("compare/cdf-*.png").display()
        );
    }
    // The NAT-pair matrix, from the reports of its generated scenarios (if the suite ran any).
    let matrix_ok = match testbed::natmatrix::from_reports(outcomes.iter().map(|o| &o.report)) {
        None => true,
        Some(matrix) => {
            if let Err(e) = testbed::natmatrix::write(out, &matrix) {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
            println!("\n{}", testbed::natmatrix::markdown(&matrix));
            println!(
                "NAT matrix: {} meetings; {} (json, md, png)",
                matrix.runs.len(),
                out.join("nat-matrix.*").display()
            );
            // Every pair must end connected, and a pair predicted direct must be direct,
            // in every seed.
            let wrong: Vec<String> = matrix
                .cells
                .iter()
                .filter(|c| c.failed > 0 || (c.predicted == "direct" && c.direct != c.runs))
                .map(|c| {
                    format!(
                        "{}/{}: {} direct, {} relayed, {} failed of {} (predicted {})",
                        c.a, c.b, c.direct, c.relayed, c.failed, c.runs, c.predicted
                    )
                })
                .collect();
            for w in &wrong {
                eprintln!("- nat matrix {w}");
            }
            wrong.is_empty()
        }
    };
    match suite::write_html(out, outcomes, dir) {
        Ok(path) => println!("HTML report: {}", path.display()),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    let code = report_failures(outcomes, None, dir);
    if matrix_ok {
        code
    } else {
        ExitCode::FAILURE
    }
}

/// `postsock merge`: one output from several suite outputs, in the suite's run order.
fn merge(
    dir: &std::path::Path,
    dirs: &[PathBuf],
    out: &std::path::Path,
    junit: Option<&std::path::Path>,
) -> ExitCode {
    let started = Instant::now();
    // Each report is written below `out` as it is read; memory keeps the light ones.
    if let Err(e) = std::fs::create_dir_all(out) {
        return usage_error(format!("{}: {e}", out.display()));
    }
    let mut outcomes = match suite::read_runs_into(dirs, Some(out)) {
        Ok(o) => o,
        Err(e) => return usage_error(e),
    };
    // The order an unsharded suite has: the scenario files, then the generated families;
    // anything else (a scenario directory that is gone) after them, by name.
    let order: std::collections::BTreeMap<String, usize> = suite::load(dir, Some(""))
        .map(|all| {
            all.into_iter()
                .enumerate()
                .map(|(i, s)| (s.name, i))
                .collect()
        })
        .unwrap_or_default();
    outcomes.sort_by(|a, b| {
        let key = |o: &testbed::RunOutcome| {
            (
                order.get(&o.report.scenario).copied().unwrap_or(usize::MAX),
                o.report.scenario.clone(),
                o.report.seed,
            )
        };
        key(a).cmp(&key(b))
    });
    println!(
        "merged {} runs from {} directories",
        outcomes.len(),
        dirs.len()
    );
    finish_suite(&outcomes, dir, out, junit, started)
}

/// `postsock diff`.
fn diff(base: &std::path::Path, new: &std::path::Path, threshold: f64, min_abs: f64) -> ExitCode {
    let read = |d: &std::path::Path| suite::read_runs(&[d.to_path_buf()]);
    let (a, b) = match (read(base), read(new)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return usage_error(e),
    };
    let reports = |o: Vec<testbed::RunOutcome>| o.into_iter().map(|o| o.report).collect::<Vec<_>>();
    let d = testbed::diff::compare(&reports(a), &reports(b), threshold, min_abs);
    print!("{}", d.text());
    if d.regressions() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
