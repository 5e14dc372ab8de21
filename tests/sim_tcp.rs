//! The simulator's TCP is real TCP (smoltcp) over the simulated links: it loses segments where
//! the link loses datagrams, repairs them by retransmission, backs off under loss as the
//! Mathis model predicts, and loses what was on a link that went down.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use postsock::net::Net;
use postsock::TestCa;
use sim::{World, WorldSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::sim_host as host;

/// What one bulk transfer measured.
#[derive(Debug, Clone, Copy, Default)]
struct Bulk {
    /// Goodput in kbit/s, from the end of the handshake to the last byte read.
    kbps: f64,
    /// Datagrams (segments) the client's link lost, both directions.
    losses: u64,
    /// Bytes the server read.
    read: usize,
}

/// Sends `bytes` over TLS 1.3 on simulated TCP from a client whose access link loses `loss`
/// of its packets (both directions) to a server `rtt_ms` away; `down` takes the client's link
/// down for that long at 1 s.
fn bulk(loss: f64, rtt_ms: u64, bytes: usize, seed: u64, down: Option<Duration>) -> Bulk {
    let mut client = host("client", None, rtt_ms / 4);
    client.link.loss = loss;
    client.link.bandwidth_kbps = Some(100_000);
    client.link.queue_bytes = 4 << 20;
    let spec = WorldSpec {
        dns: Default::default(),
        hosts: vec![client, host("server", None, rtt_ms / 4)],
        gateways: vec![],
    };
    let mut world = World::new(&spec, seed, Duration::from_secs(600)).expect("world");
    let ca = TestCa::new("bulk CA").expect("ca");
    let server_tls = Arc::new(common::rustls_server(&ca));
    let client_tls = Arc::new(common::rustls_client(&ca));
    let done: Progress = Arc::new(Mutex::new(None));
    let server = world.net("server").expect("net");
    let (finished, reading) = (done.clone(), done.clone());
    world
        .host("server", move || {
            let (server, tls, finished) = (server.clone(), server_tls.clone(), finished.clone());
            async move {
                let listener = server.listen_tcp(([0, 0, 0, 0], 443).into()).await?;
                let (stream, _) = listener.accept().await?;
                let mut tls = tokio_rustls::TlsAcceptor::from(tls).accept(stream).await?;
                let mut buf = vec![0u8; 64 * 1024];
                let mut read = 0;
                loop {
                    let n = tls.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    read += n;
                    *finished.lock().expect("lock") = Some((tokio::time::Instant::now(), read));
                }
                std::future::pending::<()>().await;
                Ok(())
            }
        })
        .expect("host");
    let net = world.net("client").expect("net");
    let started = Arc::new(Mutex::new(None));
    let start = started.clone();
    world
        .client("client", async move {
            let addr = net.resolve("server", 443).await?[0];
            let stream = net.connect_tcp(addr).await?;
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            let mut tls = tokio_rustls::TlsConnector::from(client_tls)
                .connect(name, stream)
                .await?;
            *start.lock().expect("lock") = Some(tokio::time::Instant::now());
            let chunk = vec![7u8; 16 * 1024];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len());
                tls.write_all(&chunk[..n]).await?;
                left -= n;
            }
            tls.shutdown().await?;
            // Wait for the server to have read everything (the client's end ends the run).
            while read_so_far(&reading) < bytes {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(())
        })
        .expect("client");
    let mut downed = false;
    let mut upped = down.is_none();
    while !world.step().expect("step") {
        let now = world.elapsed();
        if let Some(d) = down {
            if !downed && now >= Duration::from_secs(1) {
                world
                    .apply(&sim::Fault::LinkDown {
                        host: "client".into(),
                        interface: None,
                    })
                    .expect("down");
                downed = true;
            }
            if downed && !upped && now >= Duration::from_secs(1) + d {
                world
                    .apply(&sim::Fault::LinkUp {
                        host: "client".into(),
                        interface: None,
                    })
                    .expect("up");
                upped = true;
            }
        }
    }
    let c = world.counters()["client"];
    let start = started.lock().expect("lock").expect("handshake done");
    let (end, read) = done.lock().expect("lock").expect("something read");
    Bulk {
        kbps: read as f64 * 8.0 / (end - start).as_secs_f64() / 1000.0,
        losses: c.up.losses + c.down.losses,
        read,
    }
}

/// When the server last read, and how much it had read by then.
type Progress = Arc<Mutex<Option<(tokio::time::Instant, usize)>>>;

fn read_so_far(p: &Progress) -> usize {
    p.lock().expect("lock").map_or(0, |d| d.1)
}

/// The Mathis et al. (1997) bound for a Reno-style TCP: MSS / RTT × C / √p, in kbit/s.
fn mathis_kbps(rtt_ms: f64, loss: f64) -> f64 {
    const MSS: f64 = 1460.0;
    MSS * 8.0 / rtt_ms * (1.5f64).sqrt() / loss.sqrt()
}

/// Padhye et al. (1998): Reno throughput with timeouts, one ACK per segment, minimum RTO
/// `t0_s` seconds, in kbit/s.
fn padhye_kbps(rtt_ms: f64, p: f64, t0_s: f64) -> f64 {
    const MSS: f64 = 1460.0;
    let rtt = rtt_ms / 1000.0;
    let per_s = 1.0
        / (rtt * (2.0 * p / 3.0).sqrt()
            + t0_s * (3.0 * (3.0 * p / 8.0).sqrt()).min(1.0) * p * (1.0 + 32.0 * p * p));
    per_s * MSS * 8.0 / 1000.0
}

#[test]
fn bulk_tls_over_simulated_tcp_follows_the_mathis_model() {
    for loss in [0.01, 0.02] {
        // 16 seeds: single runs at 2 % spread from 0.63 to 0.78 of the model.
        let runs: Vec<Bulk> = (1..=16)
            .map(|seed| bulk(loss, 40, 4 << 20, seed, None))
            .collect();
        let mean = runs.iter().map(|b| b.kbps).sum::<f64>() / runs.len() as f64;
        let model = mathis_kbps(40.0, loss);
        eprintln!(
            "loss {loss}: measured {mean:.0} kbit/s, Mathis {model:.0} kbit/s, runs {runs:?}"
        );
        for b in &runs {
            assert_eq!(b.read, 4 << 20, "everything arrives");
            assert!(b.losses > 0, "the link lost packets");
        }
        // Mathis (no timeouts): within a factor of 1.5 at both loss rates (measured 0.84 at
        // 1 % and 0.71 at 2 %). smoltcp has no SACK: a lost retransmission waits for the
        // RTO, which follows Linux (the smoothed RTT + 200 ms, vendor/README.md); with
        // RFC 6298's 1 s floor it was 0.48 at 2 %.
        let ratio = mean / model;
        assert!(
            (1.0 / 1.5..=1.5).contains(&ratio),
            "loss {loss}: {mean:.0} vs {model:.0} kbit/s (Mathis)"
        );
        // The model with timeouts (Padhye), minimum RTO 0.24 s: within 1.5 as well.
        let with_timeouts = padhye_kbps(40.0, loss, 0.24);
        let ratio = mean / with_timeouts;
        assert!(
            (1.0 / 1.5..=1.5).contains(&ratio),
            "loss {loss}: {mean:.0} vs {with_timeouts:.0} kbit/s (Padhye)"
        );
    }
}

#[test]
fn tcp_repairs_heavy_loss_and_a_link_that_went_down() {
    let lossy = bulk(0.05, 40, 1 << 20, 1, None);
    assert_eq!(lossy.read, 1 << 20);
    assert!(lossy.losses > 20, "{lossy:?}");
    // Down for 2 s mid-transfer: what was on the link is gone; TCP retransmits after it
    // comes back and the transfer completes.
    let down = bulk(0.0, 40, 8 << 20, 1, Some(Duration::from_secs(2)));
    assert_eq!(down.read, 8 << 20);
    assert!(down.losses > 0, "{down:?}");
}
