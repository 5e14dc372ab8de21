//! `postsock bench --sim`: what postsock costs inside the simulator. One bulk transfer (one
//! message of N bytes, 10 MiB by default) from a client to a server 20 ms away over a
//! 100 Mbit/s access link, twice in the same simulated world: once on postsock's carriers
//! (QUIC), once on bare quinn endpoints over the same simulated sockets, with the same flow
//! control windows. Both runs are deterministic; what differs is the wall time the simulator
//! needs, compared as a ratio within one run (best of several repeats, interleaved).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use postsock::net::Net;
use postsock::transport::tls;
use postsock::{Carrier, Configuration, Listener, Protocol, Remote, Security, TestCa};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use serde::Serialize;
use sim::{HostSpec, World, WorldSpec};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

/// The flow-control windows postsock's QUIC uses (docs/WIRE.md), given to bare quinn too so
/// that both move the same bytes at the same simulated pace.
const STREAM_WINDOW: u32 = 2 << 20;
const CONNECTION_WINDOW: u32 = 8 << 20;
const PORT: u16 = 443;

/// Which stack carries the transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// postsock's `Carrier` and `Listener` on QUIC.
    Postsock,
    /// quinn endpoints over the simulator's sockets, one unidirectional stream.
    BareQuinn,
}

impl Stack {
    fn name(self) -> &'static str {
        match self {
            Stack::Postsock => "postsock",
            Stack::BareQuinn => "bare quinn",
        }
    }
}

/// One simulated transfer.
#[derive(Debug, Clone, Serialize)]
pub struct SimRun {
    /// `postsock` or `bare quinn`.
    pub stack: String,
    /// Bytes transferred.
    pub bytes: usize,
    /// Wall time of the whole simulation, s (the best repeat).
    pub wall_s: f64,
    /// Simulated time until the simulation ended, s.
    pub sim_s: f64,
}

/// What `bench --sim` measured.
#[derive(Debug, Clone, Serialize)]
pub struct SimBench {
    /// Both stacks.
    pub runs: Vec<SimRun>,
    /// postsock's wall time over bare quinn's.
    pub ratio: f64,
    /// Whether the ratio meets the target (≤ 1.5).
    pub meets_target: bool,
}

fn configs() -> Res<(Configuration, Configuration)> {
    let ca = TestCa::new("sim bench CA")?;
    let mut server = Configuration::default();
    server.protocols(&[Protocol::Quic]).security(Security {
        identity: Some(ca.issue(&["localhost", "server"])?),
        ..Security::default()
    });
    let mut client = Configuration::default();
    client.protocols(&[Protocol::Quic]).security(Security {
        trusted_roots: vec![ca.root()],
        ..Security::default()
    });
    Ok((server, client))
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(STREAM_WINDOW.into())
        .receive_window(CONNECTION_WINDOW.into())
        .send_window(CONNECTION_WINDOW.into());
    Arc::new(t)
}

/// The client 10 ms from the core on a 100 Mbit/s link with a 4 MiB queue, the server 10 ms
/// from the core: 40 ms of RTT.
fn spec() -> WorldSpec {
    let mut client = HostSpec::new("client", None, 10);
    client.link.bandwidth_kbps = Some(100_000);
    client.link.queue_bytes = 4 << 20;
    WorldSpec {
        dns: Default::default(),
        hosts: vec![client, HostSpec::new("server", None, 10)],
        gateways: vec![],
    }
}

/// Runs one transfer of `bytes` on `stack`; returns the wall and simulated durations.
pub fn transfer(stack: Stack, bytes: usize, seed: u64) -> Res<(Duration, Duration)> {
    let (server_config, client_config) = configs()?;
    let spec = spec();
    let mut world = World::new(&spec, seed, Duration::from_secs(600))?;
    let received = Arc::new(AtomicUsize::new(0));
    let server_net = world.net("server")?;
    let client_net = world.net("client")?;
    let got = received.clone();
    match stack {
        Stack::BareQuinn => {
            let server_tls = tls::server_config(&server_config.security, server_net.tls_clock())?;
            let client_tls = tls::client_config(&client_config.security, client_net.tls_clock())?;
            world.host("server", move || {
                let (net, tls, got) = (server_net.clone(), server_tls.clone(), got.clone());
                async move {
                    let socket = net.bind_udp(([0, 0, 0, 0], PORT).into()).await?;
                    let crypto = QuicServerConfig::try_from(tls)?;
                    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
                    sc.transport_config(transport());
                    let ep = quinn::Endpoint::new_with_abstract_socket(
                        quinn::EndpointConfig::default(),
                        Some(sc),
                        socket,
                        net.quic_runtime(),
                    )?;
                    let conn = ep.accept().await.ok_or("no connection")?.await?;
                    let mut stream = conn.accept_uni().await?;
                    let data = stream.read_to_end(usize::MAX).await?;
                    got.store(data.len(), Ordering::Relaxed);
                    conn.closed().await;
                    Ok(())
                }
            })?;
            world.client("client", async move {
                let net = client_net;
                let addr = net.resolve("server", PORT).await?[0];
                let socket = net.bind_udp(([0, 0, 0, 0], 0).into()).await?;
                let ep = quinn::Endpoint::new_with_abstract_socket(
                    quinn::EndpointConfig::default(),
                    None,
                    socket,
                    net.quic_runtime(),
                )?;
                let mut cc =
                    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client_tls)?));
                cc.transport_config(transport());
                let conn = ep.connect_with(cc, addr, "server")?.await?;
                let mut stream = conn.open_uni().await?;
                stream.write_chunk(Bytes::from(vec![0x5a; bytes])).await?;
                stream.finish()?;
                stream.stopped().await?;
                conn.close(0u32.into(), b"done");
                let _ = tokio::time::timeout(Duration::from_millis(100), ep.wait_idle()).await;
                Ok(())
            })?;
        }
        Stack::Postsock => {
            world.host("server", move || {
                let (net, config, got) = (server_net.clone(), server_config.clone(), got.clone());
                async move {
                    let net: Arc<dyn Net> = net;
                    let mut listener =
                        Listener::bind(net, ([0, 0, 0, 0], PORT).into(), config).await?;
                    let carrier = listener.accept().await?;
                    if let Some(message) = carrier.receive().await? {
                        got.store(message.data.len(), Ordering::Relaxed);
                    }
                    while carrier.receive().await?.is_some() {}
                    Ok(())
                }
            })?;
            world.client("client", async move {
                let net: Arc<dyn Net> = client_net;
                let carrier =
                    Carrier::initiate(net, Remote::new("server", PORT), client_config).await?;
                let handle = carrier.send(vec![0x5a; bytes]).await?;
                let outcome = handle.outcome().await;
                if outcome != postsock::SendStatus::Acked {
                    return Err(format!("the transfer ended {outcome:?}").into());
                }
                carrier.close().await?;
                Ok(())
            })?;
        }
    }
    let start = Instant::now();
    while !world.step()? {}
    let wall = start.elapsed();
    let got = received.load(Ordering::Relaxed);
    if got != bytes {
        return Err(format!("{}: received {got} of {bytes} bytes", stack.name()).into());
    }
    Ok((wall, world.elapsed()))
}

/// Both stacks, `repeats` times each, interleaved; the best wall time of each counts.
pub fn compare(bytes: usize, repeats: usize, progress: &dyn Fn(&str)) -> Res<SimBench> {
    let stacks = [Stack::BareQuinn, Stack::Postsock];
    let mut best: Vec<Option<(Duration, Duration)>> = vec![None; stacks.len()];
    for repeat in 0..repeats.max(1) {
        for (i, &stack) in stacks.iter().enumerate() {
            progress(&format!(
                "{} ({}/{})",
                stack.name(),
                repeat + 1,
                repeats.max(1)
            ));
            let (wall, sim) = transfer(stack, bytes, 1)?;
            if best[i].is_none_or(|(w, _)| wall < w) {
                best[i] = Some((wall, sim));
            }
        }
    }
    let runs: Vec<SimRun> = stacks
        .iter()
        .zip(&best)
        .map(|(stack, b)| {
            let (wall, sim) = b.unwrap_or_default();
            SimRun {
                stack: stack.name().into(),
                bytes,
                wall_s: wall.as_secs_f64(),
                sim_s: sim.as_secs_f64(),
            }
        })
        .collect();
    let ratio = runs[1].wall_s / runs[0].wall_s.max(f64::MIN_POSITIVE);
    Ok(SimBench {
        runs,
        ratio,
        meets_target: ratio <= 1.5,
    })
}

/// The result as a Markdown table.
pub fn markdown(b: &SimBench) -> String {
    let mut out = String::from("| stack | bytes | wall s | simulated s |\n|---|---|---|---|\n");
    for r in &b.runs {
        out.push_str(&format!(
            "| {} | {} | {:.3} | {:.3} |\n",
            r.stack, r.bytes, r.wall_s, r.sim_s
        ));
    }
    out.push_str(&format!(
        "\npostsock / bare quinn wall time: {:.2} (target ≤ 1.5: {})\n",
        b.ratio,
        if b.meets_target { "met" } else { "not met" }
    ));
    out
}
