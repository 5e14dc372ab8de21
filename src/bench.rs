//! Wall-clock benchmarks on real loopback sockets (`postsock bench`): postsock against the
//! same message pattern written directly on quinn (one unidirectional stream per message) and
//! on tokio-rustls (4-byte length prefix), and the memory of a sender whose receiver stopped
//! reading. Machines are noisy, so every figure is compared as a ratio within one run, and
//! each measurement is the best of several repeats, interleaved so drift hits all stacks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use postsock::net::TokioNet;
use postsock::transport::tls;
use postsock::{
    Carrier, CarrierStats, Configuration, Listener, Protocol, Remote, Security, TestCa,
};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::task::JoinSet;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Messages of the small-message run: 100,000 (100 MB), so that raw tokio-rustls'
    /// transfer lasts tens of ms (10,000 took about 4 ms on two workers, where one
    /// scheduling delay swung a repeat's ratio between 0.3 and 0.9).
    pub small_count: usize,
    /// Size of a small message.
    pub small_size: usize,
    /// Messages of the large-message run.
    pub large_count: usize,
    /// Size of a large message.
    pub large_size: usize,
    /// Echo round trips for the latency figure.
    pub rounds: usize,
    /// Repeats of every measurement (the best counts).
    pub repeats: usize,
    /// Bytes the memory benchmark tries to push at a receiver that does not read.
    pub memory_bytes: u64,
    /// Only comparisons whose "protocol workload" label contains this (for profiling).
    pub only: Option<String>,
    /// Run both ends on one thread (tokio's current-thread runtime) instead of `workers`.
    pub current_thread: bool,
    /// Worker threads of the multi-thread runtime (when not `current_thread`). On a VM
    /// without halt polling the figures depend on it through where the kernel puts the
    /// threads (BENCHMARKS.md, "How many workers, and what is left of each gap").
    pub workers: usize,
    /// Measure only this stack (for profiling one side; the other's figures read 0).
    pub side: Option<Side>,
}

/// One of the two stacks a comparison runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Side {
    /// Raw quinn or raw tokio-rustls.
    Raw,
    /// postsock.
    Postsock,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            small_count: 100_000,
            small_size: 1024,
            large_count: 100,
            large_size: 1 << 20,
            rounds: 1000,
            repeats: 5,
            memory_bytes: 1 << 30,
            only: None,
            current_thread: false,
            workers: 2,
            side: None,
        }
    }
}

impl Options {
    fn wants(&self, protocol: Protocol, workload: &str) -> bool {
        self.only
            .as_deref()
            .is_none_or(|f| format!("{} {workload}", protocol.name()).contains(f))
    }

    /// Narrows a run for profiling: one comparison, one stack, a number of repeats.
    pub fn profiling(&mut self, only: Option<String>, side: Option<Side>, repeats: Option<usize>) {
        self.only = only;
        self.side = side;
        if let Some(n) = repeats {
            self.repeats = n.max(1);
        }
    }

    fn runs(&self, side: Side) -> bool {
        self.side.is_none_or(|s| s == side)
    }
}

/// One comparison: postsock and the raw stack on the same workload.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The workload, e.g. `100000 x 1 KiB`.
    pub workload: String,
    /// `quic` or `tls-tcp`.
    pub protocol: String,
    /// What is measured: `throughput` (MB/s, higher is better) or `median latency` (µs).
    pub metric: String,
    /// The raw stack's figure.
    pub raw: f64,
    /// postsock's figure.
    pub postsock: f64,
    /// postsock / raw, of the two bests.
    pub ratio: f64,
    /// postsock / raw within each repeat (the two stacks' runs of one repeat follow each
    /// other, so they share the machine's load): their spread says how far `ratio` can be
    /// trusted on a noisy machine. Empty when one stack was not measured (`--side`).
    pub pairs: Vec<f64>,
    /// Whether the ratio meets the target (≥ 0.9 for throughput, ≤ 1.1 for latency).
    pub meets_target: bool,
    /// CPU time per message (per round trip for latency), both ends of the run.
    pub cpu: CpuRow,
    /// Throughput rows: the postsock sender's stats at the end of its last run.
    pub postsock_end: Option<EndStats>,
    /// Latency rows: the round trips of each stack's best repeat (the one whose median is
    /// `raw` or `postsock`) beyond their median.
    pub round_trips: Option<RoundTrips>,
}

/// How one run's round trips spread, µs. Each is the sorted samples' value at index
/// ⌊q·n⌋, as the headline median is taken, so `p50` is that median.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// The median.
    pub p50: f64,
    /// The 90th percentile.
    pub p90: f64,
    /// The 99th percentile.
    pub p99: f64,
    /// The longest round trip.
    pub max: f64,
}

impl Percentiles {
    /// Of `samples`, sorted (all 0 for none).
    fn of_sorted(sorted: &[Duration]) -> Self {
        let at = |q: f64| quantile(sorted, q).as_secs_f64() * 1e6;
        Percentiles {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// The round trips of the best repeat of each stack (`None` for a stack not run).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RoundTrips {
    /// The raw stack's.
    pub raw: Option<Percentiles>,
    /// postsock's.
    pub postsock: Option<Percentiles>,
}

/// CPU time (all threads, both ends) per message or round trip, the least of the repeats:
/// steadier than wall time on a shared machine, and what the per-message overhead costs.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuRow {
    /// The raw stack, µs.
    pub raw_us: f64,
    /// postsock, µs.
    pub postsock_us: f64,
}

/// The least CPU time of the runs of each stack.
#[derive(Default)]
struct Cpu {
    raw: Option<Duration>,
    postsock: Option<Duration>,
}

impl Cpu {
    fn measure<T>(slot: &mut Option<Duration>, run: impl FnOnce() -> Res<T>) -> Res<T> {
        let before = cpu_time();
        let out = run()?;
        let used = cpu_time().saturating_sub(before);
        *slot = Some(slot.map_or(used, |s| s.min(used)));
        Ok(out)
    }

    fn raw<T>(&mut self, run: impl FnOnce() -> Res<T>) -> Res<T> {
        Self::measure(&mut self.raw, run)
    }

    fn postsock<T>(&mut self, run: impl FnOnce() -> Res<T>) -> Res<T> {
        Self::measure(&mut self.postsock, run)
    }

    fn per(&self, n: usize) -> CpuRow {
        let us = |d: Option<Duration>| d.unwrap_or_default().as_secs_f64() * 1e6 / n.max(1) as f64;
        CpuRow {
            raw_us: us(self.raw),
            postsock_us: us(self.postsock),
        }
    }
}

/// The wall times of one comparison's runs, raw and postsock alternated `repeats` times.
#[derive(Default)]
struct Alternated {
    raw: Vec<Duration>,
    postsock: Vec<Duration>,
}

impl Alternated {
    /// Runs the stacks `opts` asks for in turn, `opts.repeats` times, counting their CPU.
    fn run(
        opts: &Options,
        cpu: &mut Cpu,
        mut raw: impl FnMut() -> Res<Duration>,
        mut postsock: impl FnMut() -> Res<Duration>,
    ) -> Res<Self> {
        let mut out = Alternated::default();
        for _ in 0..opts.repeats {
            if opts.runs(Side::Raw) {
                out.raw.push(cpu.raw(&mut raw)?);
            }
            if opts.runs(Side::Postsock) {
                out.postsock.push(cpu.postsock(&mut postsock)?);
            }
        }
        Ok(out)
    }

    /// Which of `side`'s runs was the best (the first of equals); `None` if it was not run.
    fn best_index(&self, side: Side) -> Option<usize> {
        let runs = match side {
            Side::Raw => &self.raw,
            Side::Postsock => &self.postsock,
        };
        (0..runs.len()).min_by_key(|&i| runs[i])
    }

    /// The best (shortest) run of each stack; `Duration::MAX` for a stack not run.
    fn best(&self) -> (Duration, Duration) {
        let best = |v: &[Duration]| v.iter().min().copied().unwrap_or(Duration::MAX);
        (best(&self.raw), best(&self.postsock))
    }

    /// postsock's figure over raw's within each repeat; `figure` turns a run's time into
    /// the figure compared (MB/s, µs).
    fn pairs(&self, figure: impl Fn(Duration) -> f64) -> Vec<f64> {
        self.raw
            .iter()
            .zip(&self.postsock)
            .map(|(&r, &p)| ratio(figure(p), figure(r)))
            .collect()
    }
}

/// Peak memory of a sender facing a receiver that stopped reading.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct MemoryRow {
    /// `quic` or `tls-tcp`.
    pub protocol: String,
    /// Bytes the sender tried to push.
    pub attempted_mib: u64,
    /// Bytes `send` accepted before back-pressure held it.
    pub accepted_mib: u64,
    /// Whether `send` was held (it must be: the receiver reads nothing).
    pub held: bool,
    /// Peak resident set size of the sender process (VmHWM).
    pub peak_rss_mib: f64,
}

/// Everything one `postsock bench` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The tokio runtime both stacks ran on (`current-thread` or `multi-thread, N workers`).
    pub runtime: String,
    /// Throughput and latency comparisons.
    pub rows: Vec<Row>,
    /// Memory under back-pressure.
    pub memory: Vec<MemoryRow>,
}

pub(crate) struct Pki {
    pub(crate) server: Configuration,
    pub(crate) client: Configuration,
}

pub(crate) fn pki(protocol: Protocol) -> Res<Pki> {
    let ca = TestCa::new("bench CA")?;
    let mut server = Configuration::default();
    server.protocols(&[protocol]).security(Security {
        identity: Some(ca.issue(&["localhost"])?),
        ..Security::default()
    });
    let mut client = Configuration::default();
    client.protocols(&[protocol]).security(Security {
        trusted_roots: vec![ca.root()],
        ..Security::default()
    });
    Ok(Pki { server, client })
}

pub(crate) fn loopback() -> SocketAddr {
    ([127, 0, 0, 1], 0).into()
}

// ---------- postsock ----------

async fn postsock_pair(protocol: Protocol) -> Res<(Carrier, Carrier)> {
    let Pki { server, client } = pki(protocol)?;
    let mut listener = Listener::bind(TokioNet::shared(), loopback(), server).await?;
    let port = listener.local_addr().port();
    let accept = tokio::spawn(async move { listener.accept().await });
    let client =
        Carrier::initiate(TokioNet::shared(), Remote::new("localhost", port), client).await?;
    let server = accept.await??;
    Ok((client, server))
}

/// What the sender's `Carrier::stats()` read at the end of a postsock throughput run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct EndStats {
    /// The QUIC send loop's limit on messages in flight (`None` on TLS/TCP).
    pub message_limit: Option<usize>,
    /// The smoothed RTT, µs.
    pub rtt_us: Option<f64>,
    /// The congestion window (QUIC) or ACK window (TLS/TCP), bytes.
    pub send_window: u64,
}

impl From<CarrierStats> for EndStats {
    fn from(s: CarrierStats) -> Self {
        EndStats {
            message_limit: s.message_limit,
            rtt_us: s.rtt.map(|r| r.as_secs_f64() * 1e6),
            send_window: s.send_window,
        }
    }
}

async fn postsock_throughput(
    protocol: Protocol,
    count: usize,
    size: usize,
) -> Res<(Duration, EndStats)> {
    let (client, server) = postsock_pair(protocol).await?;
    let data = Bytes::from(vec![0x5a; size]);
    let receiver = tokio::spawn(async move {
        let mut bytes = 0;
        for _ in 0..count {
            bytes += server.receive().await?.ok_or("closed early")?.data.len();
        }
        Ok::<_, BoxError>((Instant::now(), bytes, server))
    });
    let start = Instant::now();
    for _ in 0..count {
        client.send(data.clone()).await?;
    }
    let (end, bytes, _server) = receiver.await??;
    if bytes != count * size {
        return Err(format!("received {bytes} of {} bytes", count * size).into());
    }
    let stats = client.stats().into();
    client.close().await?;
    Ok((end - start, stats))
}

async fn postsock_latency(protocol: Protocol, rounds: usize, size: usize) -> Res<Vec<Duration>> {
    let (client, server) = postsock_pair(protocol).await?;
    let echo = tokio::spawn(async move {
        while let Ok(Some(m)) = server.receive().await {
            if server.send_bytes(m.data).await.is_err() {
                break;
            }
        }
    });
    let data = Bytes::from(vec![0x5a; size]);
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        client.send(data.clone()).await?;
        client.receive().await?.ok_or("closed early")?;
        samples.push(start.elapsed());
    }
    client.close().await?;
    echo.abort();
    Ok(samples)
}

// ---------- raw quinn ----------

fn quinn_endpoint(server: Option<quinn::ServerConfig>) -> Res<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(loopback())?;
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?)
}

pub(crate) async fn quinn_pair() -> Res<(quinn::Connection, quinn::Connection, [quinn::Endpoint; 2])>
{
    let Pki { server, client } = pki(Protocol::Quic)?;
    let server_tls =
        QuicServerConfig::try_from(tls::server_config(&server.security, tls::system_clock())?)?;
    let server_ep = quinn_endpoint(Some(quinn::ServerConfig::with_crypto(Arc::new(server_tls))))?;
    let addr = server_ep.local_addr()?;
    let client_ep = quinn_endpoint(None)?;
    let client_tls =
        QuicClientConfig::try_from(tls::client_config(&client.security, tls::system_clock())?)?;
    let connecting = client_ep.connect_with(
        quinn::ClientConfig::new(Arc::new(client_tls)),
        addr,
        "localhost",
    )?;
    let accept = {
        let ep = server_ep.clone();
        tokio::spawn(async move {
            ep.accept()
                .await
                .ok_or("no connection")?
                .await
                .map_err(BoxError::from)
        })
    };
    let client_conn = connecting.await?;
    let server_conn = accept.await??;
    Ok((client_conn, server_conn, [client_ep, server_ep]))
}

async fn quinn_throughput(count: usize, size: usize) -> Res<Duration> {
    let (client, server, _eps) = quinn_pair().await?;
    let receiver = tokio::spawn(async move {
        let mut reads = JoinSet::new();
        for _ in 0..count {
            let mut stream = server.accept_uni().await?;
            reads.spawn(async move { stream.read_to_end(usize::MAX).await.map(|d| d.len()) });
        }
        let mut bytes = 0;
        while let Some(r) = reads.join_next().await {
            bytes += r??;
        }
        Ok::<_, BoxError>((Instant::now(), bytes))
    });
    let data = Bytes::from(vec![0x5a; size]);
    let start = Instant::now();
    for _ in 0..count {
        let mut stream = client.open_uni().await?;
        stream.write_chunk(data.clone()).await?;
        stream.finish()?;
    }
    let (end, bytes) = receiver.await??;
    if bytes != count * size {
        return Err(format!("received {bytes} of {} bytes", count * size).into());
    }
    client.close(0u32.into(), b"");
    Ok(end - start)
}

async fn quinn_latency(rounds: usize, size: usize) -> Res<Vec<Duration>> {
    let (client, server, _eps) = quinn_pair().await?;
    let echo = tokio::spawn(async move {
        while let Ok(mut stream) = server.accept_uni().await {
            let Ok(data) = stream.read_to_end(usize::MAX).await else {
                break;
            };
            let Ok(mut out) = server.open_uni().await else {
                break;
            };
            if out.write_chunk(data.into()).await.is_err() || out.finish().is_err() {
                break;
            }
        }
    });
    let data = Bytes::from(vec![0x5a; size]);
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        let mut stream = client.open_uni().await?;
        stream.write_chunk(data.clone()).await?;
        stream.finish()?;
        let mut back = client.accept_uni().await?;
        back.read_to_end(usize::MAX).await?;
        samples.push(start.elapsed());
    }
    client.close(0u32.into(), b"");
    echo.abort();
    Ok(samples)
}

// ---------- raw tokio-rustls ----------

pub(crate) type ClientTls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;
pub(crate) type ServerTls = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

pub(crate) async fn tls_pair() -> Res<(ClientTls, ServerTls)> {
    let Pki { server, client } = pki(Protocol::TlsTcp)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(
        &server.security,
        tls::system_clock(),
    )?));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls::client_config(
        &client.security,
        tls::system_clock(),
    )?));
    let listener = tokio::net::TcpListener::bind(loopback()).await?;
    let addr = listener.local_addr()?;
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        acceptor.accept(tcp).await.map_err(BoxError::from)
    });
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let client_tls = connector.connect(name, tcp).await?;
    Ok((client_tls, accept.await??))
}

async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<Vec<u8>> {
    let len = r.read_u32().await? as usize;
    let mut data = vec![0u8; len];
    r.read_exact(&mut data).await?;
    Ok(data)
}

async fn write_frame<W: AsyncWriteExt + Unpin>(w: &mut W, data: &[u8]) -> std::io::Result<()> {
    w.write_u32(data.len() as u32).await?;
    w.write_all(data).await
}

async fn tls_throughput(count: usize, size: usize) -> Res<Duration> {
    let (client, mut server) = tls_pair().await?;
    let receiver = tokio::spawn(async move {
        let mut bytes = 0;
        for _ in 0..count {
            bytes += read_frame(&mut server).await?.len();
        }
        Ok::<_, BoxError>((Instant::now(), bytes))
    });
    let data = vec![0x5a; size];
    let start = Instant::now();
    let mut out = BufWriter::with_capacity(64 * 1024, client);
    for _ in 0..count {
        write_frame(&mut out, &data).await?;
    }
    out.flush().await?;
    let (end, bytes) = receiver.await??;
    if bytes != count * size {
        return Err(format!("received {bytes} of {} bytes", count * size).into());
    }
    Ok(end - start)
}

async fn tls_latency(rounds: usize, size: usize) -> Res<Vec<Duration>> {
    let (mut client, mut server) = tls_pair().await?;
    let echo = tokio::spawn(async move {
        while let Ok(data) = read_frame(&mut server).await {
            if write_frame(&mut server, &data).await.is_err() || server.flush().await.is_err() {
                break;
            }
        }
    });
    let data = vec![0x5a; size];
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        write_frame(&mut client, &data).await?;
        client.flush().await?;
        read_frame(&mut client).await?;
        samples.push(start.elapsed());
    }
    echo.abort();
    Ok(samples)
}

// ---------- driver ----------

/// The value at index ⌊q·n⌋ of `sorted` (the last for q = 1; zero for none): the median
/// for q = 0.5.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((q * sorted.len() as f64) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).copied().unwrap_or_default()
}

/// The median, least and greatest of `pairs`, as `0.61 (0.58–0.66)` (one value alone; `—`
/// for none). The median of the pairs is the steadier figure when one stack's runs swing
/// between two speeds (raw tokio-rustls on two workers does, by where the kernel puts its
/// threads): the ratio of the bests then compares one stack's lucky run with the other's.
fn spread(pairs: &[f64]) -> String {
    let mut sorted = pairs.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.as_slice() {
        [] => "—".into(),
        [one] => format!("{one:.2}"),
        [lo, .., hi] => {
            let n = sorted.len();
            let median = if n % 2 == 1 {
                sorted[n / 2]
            } else {
                (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
            };
            format!("{median:.2} ({lo:.2}–{hi:.2})")
        }
    }
}

/// postsock's figure over raw's; 0 when either stack was not measured (`--side`).
fn ratio(postsock: f64, raw: f64) -> f64 {
    if postsock > 0.0 && raw > 0.0 {
        postsock / raw
    } else {
        0.0
    }
}

fn mb_per_s(bytes: usize, d: Duration) -> f64 {
    if d == Duration::MAX {
        return 0.0;
    }
    bytes as f64 / d.as_secs_f64().max(1e-9) / 1e6
}

/// A throughput run's time, and for postsock what its sender's stats read at the end.
async fn throughput(
    protocol: Protocol,
    raw: bool,
    count: usize,
    size: usize,
) -> Res<(Duration, Option<EndStats>)> {
    match (protocol, raw) {
        (Protocol::Quic, true) => Ok((quinn_throughput(count, size).await?, None)),
        (_, true) => Ok((tls_throughput(count, size).await?, None)),
        (p, false) => {
            let (d, stats) = postsock_throughput(p, count, size).await?;
            Ok((d, Some(stats)))
        }
    }
}

/// One run's median round trip, and how its round trips spread.
async fn latency(
    protocol: Protocol,
    raw: bool,
    rounds: usize,
    size: usize,
) -> Res<(Duration, Percentiles)> {
    let samples = match (protocol, raw) {
        (Protocol::Quic, true) => quinn_latency(rounds, size).await?,
        (_, true) => tls_latency(rounds, size).await?,
        (p, false) => postsock_latency(p, rounds, size).await?,
    };
    let mut sorted = samples;
    sorted.sort();
    Ok((quantile(&sorted, 0.5), Percentiles::of_sorted(&sorted)))
}

fn size_label(size: usize) -> String {
    if size >= 1 << 20 {
        format!("{} MiB", size >> 20)
    } else {
        format!("{} KiB", size >> 10)
    }
}

/// The runtime `rt` is, as a report names it (read from the runtime itself).
fn runtime_name(rt: &tokio::runtime::Runtime) -> String {
    match rt.handle().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => "current-thread".into(),
        _ => {
            let n = rt.metrics().num_workers();
            format!("multi-thread, {n} worker{}", if n == 1 { "" } else { "s" })
        }
    }
}

/// Runs the throughput and latency comparisons in this process; also names the runtime
/// they ran on.
pub fn compare(opts: &Options, progress: &dyn Fn(&str)) -> Res<(String, Vec<Row>)> {
    let rt = if opts.current_thread {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.workers.max(1))
            .enable_all()
            .build()?
    };
    let mut rows = Vec::new();
    for protocol in [Protocol::Quic, Protocol::TlsTcp] {
        for (count, size) in [
            (opts.small_count, opts.small_size),
            (opts.large_count, opts.large_size),
        ] {
            let workload = format!("{count} x {}", size_label(size));
            if !opts.wants(protocol, &workload) {
                continue;
            }
            progress(&format!("{} throughput, {workload}", protocol.name()));
            let mut cpu = Cpu::default();
            let mut end_stats = None;
            let runs = Alternated::run(
                opts,
                &mut cpu,
                || {
                    rt.block_on(throughput(protocol, true, count, size))
                        .map(|r| r.0)
                },
                || {
                    let (d, stats) = rt.block_on(throughput(protocol, false, count, size))?;
                    end_stats = stats;
                    Ok(d)
                },
            )?;
            let (best_raw, best_ps) = runs.best();
            let (raw, ps) = (
                mb_per_s(count * size, best_raw),
                mb_per_s(count * size, best_ps),
            );
            rows.push(Row {
                workload,
                protocol: protocol.name().into(),
                metric: "throughput (MB/s)".into(),
                raw,
                postsock: ps,
                ratio: ratio(ps, raw),
                pairs: runs.pairs(|d| mb_per_s(count * size, d)),
                meets_target: ratio(ps, raw) >= 0.9,
                cpu: cpu.per(count),
                postsock_end: end_stats,
                round_trips: None,
            });
        }
        let workload = format!(
            "{} echo round trips of {}",
            opts.rounds,
            size_label(opts.small_size)
        );
        if !opts.wants(protocol, &workload) {
            continue;
        }
        progress(&format!("{} latency, {workload}", protocol.name()));
        let mut cpu = Cpu::default();
        let (mut raw_spreads, mut ps_spreads) = (Vec::new(), Vec::new());
        let runs = Alternated::run(
            opts,
            &mut cpu,
            || {
                let (median, spread) =
                    rt.block_on(latency(protocol, true, opts.rounds, opts.small_size))?;
                raw_spreads.push(spread);
                Ok(median)
            },
            || {
                let (median, spread) =
                    rt.block_on(latency(protocol, false, opts.rounds, opts.small_size))?;
                ps_spreads.push(spread);
                Ok(median)
            },
        )?;
        let (best_raw, best_ps) = runs.best();
        let round_trips = RoundTrips {
            raw: runs.best_index(Side::Raw).map(|i| raw_spreads[i]),
            postsock: runs.best_index(Side::Postsock).map(|i| ps_spreads[i]),
        };
        let micros = |d: Duration| {
            if d == Duration::MAX {
                0.0
            } else {
                d.as_secs_f64() * 1e6
            }
        };
        let (raw, ps) = (micros(best_raw), micros(best_ps));
        rows.push(Row {
            workload,
            protocol: protocol.name().into(),
            metric: "median latency (µs)".into(),
            raw,
            postsock: ps,
            ratio: ratio(ps, raw),
            pairs: runs.pairs(micros),
            meets_target: ratio(ps, raw) > 0.0 && ratio(ps, raw) <= 1.1,
            cpu: cpu.per(opts.rounds),
            postsock_end: None,
            round_trips: Some(round_trips),
        });
    }
    Ok((runtime_name(&rt), rows))
}

// ---------- memory under back-pressure (separate processes) ----------

/// CPU time of every live thread of this process so far (the scheduler's own accounting, in
/// nanoseconds: /proc/self/task/*/schedstat; zero where /proc has none). The runtime's
/// worker threads live through a whole run, so a difference of two readings is its CPU.
pub fn cpu_time() -> Duration {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            ns += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

/// This process's peak resident set size (VmHWM), MiB; NaN where /proc has none.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// `postsock bench-receiver`: accepts one carrier and never reads from it. Prints its port
/// and writes the CA root (DER) to `ca_out`, then waits to be killed.
pub fn receiver(protocol: Protocol, ca_out: &Path) -> Res<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let ca = TestCa::new("bench memory CA")?;
        std::fs::write(ca_out, ca.root().as_ref())?;
        let mut config = Configuration::default();
        config.protocols(&[protocol]).security(Security {
            identity: Some(ca.issue(&["localhost"])?),
            ..Security::default()
        });
        let mut listener = Listener::bind(TokioNet::shared(), loopback(), config).await?;
        println!("{}", listener.local_addr().port());
        let _carrier = listener.accept().await?;
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// `postsock bench-sender`: pushes `total` bytes in 1 MiB messages at a receiver that reads
/// nothing; stops when `send` has been held for 2 s. Prints a [`MemoryRow`] as JSON.
pub fn sender(protocol: Protocol, port: u16, ca: &Path, total: u64) -> Res<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let row = rt.block_on(async {
        let root = std::fs::read(ca)?;
        let mut config = Configuration::default();
        config.protocols(&[protocol]).security(Security {
            trusted_roots: vec![rustls::pki_types::CertificateDer::from(root)],
            ..Security::default()
        });
        let carrier =
            Carrier::initiate(TokioNet::shared(), Remote::new("localhost", port), config).await?;
        let chunk = Bytes::from(vec![0xa5; 1 << 20]);
        let (mut accepted, mut held) = (0u64, false);
        while accepted < total {
            match tokio::time::timeout(Duration::from_secs(2), carrier.send(chunk.clone())).await {
                Ok(r) => {
                    r?;
                    accepted += chunk.len() as u64;
                }
                Err(_) => {
                    held = true;
                    break;
                }
            }
        }
        carrier.abort();
        Ok::<_, BoxError>(MemoryRow {
            protocol: protocol.name().into(),
            attempted_mib: total >> 20,
            accepted_mib: accepted >> 20,
            held,
            peak_rss_mib: peak_rss_mib(),
        })
    })?;
    println!("{}", serde_json::to_string(&row)?);
    Ok(())
}

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the memory benchmark for `protocol` in two fresh processes of `exe`.
pub fn memory(exe: &Path, protocol: Protocol, total: u64) -> Res<MemoryRow> {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("postsock-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ca: PathBuf = dir.join(format!("{}-ca.der", protocol.name()));
    let mut receiver = Child(
        Command::new(exe)
            .args(["bench-receiver", "--protocol", protocol.name(), "--ca-out"])
            .arg(&ca)
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let mut line = String::new();
    let stdout = receiver.0.stdout.take().ok_or("no receiver stdout")?;
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let port: u16 = line
        .trim()
        .parse()
        .map_err(|e| format!("receiver said {line:?}: {e}"))?;
    let out = Command::new(exe)
        .args([
            "bench-sender",
            "--protocol",
            protocol.name(),
            "--port",
            &port.to_string(),
        ])
        .args(["--total-bytes", &total.to_string(), "--ca"])
        .arg(&ca)
        .output()?;
    drop(receiver);
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        return Err(format!("sender failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The Markdown table of a report.
pub fn markdown(report: &BenchReport) -> String {
    let mut s = format!("Runtime: {}.\n\n", report.runtime);
    s.push_str(
        "| protocol | workload | metric | raw | postsock | postsock / raw | in each repeat: median (range) | target met | CPU µs per message, raw | postsock | postsock / raw |\n|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|\n",
    );
    for r in &report.rows {
        s.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.2} | {} | {} | {:.2} | {:.2} | {:.2} |\n",
            r.protocol,
            r.workload,
            r.metric,
            r.raw,
            r.postsock,
            r.ratio,
            spread(&r.pairs),
            if r.meets_target { "yes" } else { "no" },
            r.cpu.raw_us,
            r.cpu.postsock_us,
            ratio(r.cpu.postsock_us, r.cpu.raw_us),
        ));
    }
    let ends: Vec<String> = report
        .rows
        .iter()
        .filter_map(|r| {
            let e = r.postsock_end?;
            let limit = e
                .message_limit
                .map(|n| format!("a limit of {n} messages in flight, "))
                .unwrap_or_default();
            let rtt = e.rtt_us.map_or("no RTT sample".to_string(), |us| {
                format!("a smoothed RTT of {us:.0} µs")
            });
            Some(format!(
                "- {} {}: {limit}{rtt}, a send window of {} KiB\n",
                r.protocol,
                r.workload,
                e.send_window / 1024
            ))
        })
        .collect();
    if !ends.is_empty() {
        s.push_str(
            "\npostsock's sender at the end of its last throughput run (`Carrier::stats()`):\n\n",
        );
        s.extend(ends);
    }
    let trips: Vec<String> = report
        .rows
        .iter()
        .filter_map(|r| {
            let t = r.round_trips?;
            let show = |p: Option<Percentiles>| {
                p.map_or("—".to_string(), |p| {
                    format!("{:.1} / {:.1} / {:.1} / {:.1}", p.p50, p.p90, p.p99, p.max)
                })
            };
            Some(format!(
                "| {} | {} | {} | {} |\n",
                r.protocol,
                r.workload,
                show(t.raw),
                show(t.postsock)
            ))
        })
        .collect();
    if !trips.is_empty() {
        s.push_str("\nThe round trips of each stack's best repeat, p50 / p90 / p99 / max (µs):\n\n| protocol | workload | raw | postsock |\n|---|---|---:|---:|\n");
        s.extend(trips);
    }
    s.push_str("\n| protocol | pushed at a receiver that reads nothing | accepted before `send` was held | held | sender peak RSS |\n|---|---:|---:|---|---:|\n");
    for m in &report.memory {
        s.push_str(&format!(
            "| {} | {} MiB | {} MiB | {} | {:.1} MiB |\n",
            m.protocol,
            m.attempted_mib,
            m.accepted_mib,
            if m.held { "yes" } else { "no" },
            m.peak_rss_mib
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spread_of_the_pairs_is_their_median_least_and_greatest() {
        assert_eq!(spread(&[]), "—");
        assert_eq!(spread(&[0.5]), "0.50");
        assert_eq!(spread(&[0.6, 0.58, 0.66, 0.61]), "0.60 (0.58–0.66)");
        assert_eq!(spread(&[0.9, 0.5, 0.7]), "0.70 (0.50–0.90)");
    }

    #[test]
    fn percentiles_are_taken_as_the_median_is() {
        let us = |v: &[u64]| {
            v.iter()
                .map(|&u| Duration::from_micros(u))
                .collect::<Vec<_>>()
        };
        // 1..=100 µs, shuffled: the values at indices 50, 90 and 99 of the sorted samples.
        let mut samples: Vec<u64> = (1..=100).collect();
        samples.reverse();
        samples.swap(3, 70);
        let sorted = |mut v: Vec<Duration>| {
            v.sort();
            v
        };
        let p = Percentiles::of_sorted(&sorted(us(&samples)));
        assert_eq!(
            p,
            Percentiles {
                p50: 51.0,
                p90: 91.0,
                p99: 100.0,
                max: 100.0
            }
        );
        // p50 is the headline median (`quantile(.., 0.5)`), the middle one of an odd count.
        let odd = sorted(us(&[30, 10, 20]));
        assert_eq!(
            Percentiles::of_sorted(&odd).p50,
            quantile(&odd, 0.5).as_secs_f64() * 1e6
        );
        assert_eq!(quantile(&odd, 0.5), Duration::from_micros(20));
        // Two groups, as a noisy machine's echo has: the tail shows what the median hides.
        let p = Percentiles::of_sorted(&sorted(us(&[14, 15, 14, 100, 14, 14, 110, 15, 14, 14])));
        assert_eq!((p.p50, p.p90, p.max), (14.0, 110.0, 110.0));
        assert_eq!(Percentiles::of_sorted(&[]), Percentiles::default());
        assert_eq!(Percentiles::of_sorted(&us(&[7])).p99, 7.0);
    }

    #[test]
    fn the_markdown_shows_the_round_trips_of_each_stack_s_best_repeat() {
        let p = |p50, p90| Percentiles {
            p50,
            p90,
            p99: 120.0,
            max: 300.5,
        };
        let report = BenchReport {
            runtime: "multi-thread, 2 workers".into(),
            rows: vec![Row {
                workload: "1000 echo round trips of 1 KiB".into(),
                protocol: "tls-tcp".into(),
                metric: "median latency (µs)".into(),
                raw: 13.8,
                postsock: 14.3,
                ratio: 14.3 / 13.8,
                pairs: vec![1.04],
                meets_target: true,
                cpu: CpuRow::default(),
                postsock_end: None,
                round_trips: Some(RoundTrips {
                    raw: Some(p(13.8, 24.0)),
                    postsock: None,
                }),
            }],
            memory: Vec::new(),
        };
        let md = markdown(&report);
        assert!(
            md.contains(
                "| tls-tcp | 1000 echo round trips of 1 KiB | 13.8 / 24.0 / 120.0 / 300.5 | — |\n"
            ),
            "{md}"
        );
    }

    #[test]
    fn the_best_run_is_the_first_of_the_shortest() {
        let ms = Duration::from_millis;
        let runs = Alternated {
            raw: vec![ms(5), ms(3), ms(3)],
            postsock: Vec::new(),
        };
        assert_eq!(runs.best_index(Side::Raw), Some(1));
        assert_eq!(runs.best_index(Side::Postsock), None);
    }

    #[test]
    fn the_markdown_tells_what_the_sender_s_stats_read_at_the_end() {
        let row = |protocol: &str, end: Option<EndStats>| Row {
            workload: "100000 x 1 KiB".into(),
            protocol: protocol.into(),
            metric: "throughput (MB/s)".into(),
            raw: 100.0,
            postsock: 95.0,
            ratio: 0.95,
            pairs: vec![0.95],
            meets_target: true,
            cpu: CpuRow::default(),
            postsock_end: end,
            round_trips: None,
        };
        let report = BenchReport {
            runtime: "current-thread".into(),
            rows: vec![
                row(
                    "quic",
                    Some(EndStats {
                        message_limit: Some(128),
                        rtt_us: Some(81.6),
                        send_window: 500 * 1024,
                    }),
                ),
                row(
                    "tls-tcp",
                    Some(EndStats {
                        message_limit: None,
                        rtt_us: None,
                        send_window: 16 * 1024,
                    }),
                ),
                row("quic", None),
            ],
            memory: Vec::new(),
        };
        let md = markdown(&report);
        assert!(md.contains("- quic 100000 x 1 KiB: a limit of 128 messages in flight, a smoothed RTT of 82 µs, a send window of 500 KiB\n"), "{md}");
        assert!(
            md.contains("- tls-tcp 100000 x 1 KiB: no RTT sample, a send window of 16 KiB\n"),
            "{md}"
        );
        assert_eq!(md.matches("\n- ").count(), 2, "{md}");
    }

    #[test]
    fn cpu_time_counts_work_done_on_other_threads() {
        let before = cpu_time();
        let worker = std::thread::spawn(|| {
            let mut x = 0u64;
            for i in 0..50_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            x
        });
        // Read while the thread is alive: a thread that has exited is no longer listed.
        let mut during = Duration::ZERO;
        while !worker.is_finished() {
            during = cpu_time();
            std::thread::sleep(Duration::from_millis(1));
        }
        worker.join().expect("worker");
        assert!(
            during.saturating_sub(before) > Duration::from_millis(1),
            "{before:?} then {during:?}"
        );
    }
}

// ---------- the send queue alone ----------

/// One size of `bench --queue`.
#[derive(Debug, Clone, Serialize)]
pub struct QueueRow {
    /// Bytes per message.
    pub size: usize,
    /// Messages per run.
    pub messages: usize,
    /// The best run's time per message, ns.
    pub ns_per_message: f64,
}

/// The send queue driven alone (`postsock::transport::queue_bench`): per message size, the
/// best of `repeats` runs of `messages` messages through the default send buffer.
pub fn queue(messages: usize, repeats: usize, progress: &dyn Fn(&str)) -> Res<Vec<QueueRow>> {
    let mut rows = Vec::new();
    for size in [64, 1024, 16 * 1024] {
        progress(&format!("the send queue, {messages} x {size} B"));
        let mut best = Duration::MAX;
        let send_buffer = Configuration::default().send_buffer;
        for _ in 0..repeats.max(1) {
            let (took, through) =
                postsock::transport::queue_bench::drive(messages, size, send_buffer);
            if through != messages {
                return Err(format!("{through} of {messages} messages went through").into());
            }
            best = best.min(took);
        }
        rows.push(QueueRow {
            size,
            messages,
            ns_per_message: best.as_secs_f64() * 1e9 / messages.max(1) as f64,
        });
    }
    Ok(rows)
}

/// The table of `bench --queue`.
pub fn queue_markdown(rows: &[QueueRow]) -> String {
    let mut s = String::from(
        "| message size | messages | ns per message (send, gather and copy, Sent, Acked) |\n|---:|---:|---:|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} B | {} | {:.0} |\n",
            r.size, r.messages, r.ns_per_message
        ));
    }
    s
}
