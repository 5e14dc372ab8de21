//! `postsock bench --idle`: what connections that carry nothing cost the machine. N client
//! carriers (and their server ends, in the same process) that have exchanged one message and
//! then sit idle on loopback, against N raw quinn connections and N raw tokio-rustls
//! streams likewise idle: CPU time and the threads' voluntary context switches (each one a
//! thread that went to sleep and was woken again) over a window of wall time.
//!
//! An application that keeps carriers open without traffic (a phone app, a proxy, a pool
//! of connections) pays this for as long as they live: on a laptop or a phone, wake-ups are
//! battery. Raw quinn and tokio-rustls arm no timer while nothing happens.

use std::time::Duration;

use bytes::Bytes;
use postsock::net::TokioNet;
use postsock::{Carrier, Listener, Protocol, Remote};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bench::{cpu_time, loopback, pki, quinn_pair, tls_pair, Pki, Side};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

/// One measurement: `carriers` idle connections of one stack and protocol.
#[derive(Debug, Clone, Serialize)]
pub struct IdleRow {
    /// `quic` or `tls-tcp`.
    pub protocol: String,
    /// `postsock` or `raw` (quinn, tokio-rustls).
    pub side: String,
    /// Idle connections held (each with its server end).
    pub carriers: usize,
    /// The wall time measured over, s.
    pub window_s: f64,
    /// CPU time of all the process's threads over the window, as a share of one core (%).
    pub cpu_percent: f64,
    /// Voluntary context switches of all the process's threads, per second.
    pub wakeups_per_s: f64,
}

/// What `bench --idle` measures.
#[derive(Debug, Clone)]
pub struct IdleOptions {
    /// Numbers of idle connections, each measured on its own.
    pub sizes: Vec<usize>,
    /// The wall time each is measured over.
    pub window: Duration,
    /// Worker threads of the runtime (as the throughput comparisons).
    pub workers: usize,
}

impl IdleOptions {
    /// 1, 10 and 100 connections over 3 s (`quick`: 1 and 10 over 0.5 s).
    pub fn new(quick: bool, workers: usize) -> Self {
        if quick {
            IdleOptions {
                sizes: vec![1, 10],
                window: Duration::from_millis(500),
                workers,
            }
        } else {
            IdleOptions {
                sizes: vec![1, 10, 100],
                window: Duration::from_secs(3),
                workers,
            }
        }
    }
}

/// Voluntary context switches of every live thread of this process so far (zero where
/// /proc has none).
fn wakeups() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// Time for what the connections' set-up started (handshakes' tails, tickets, the first
/// message's acknowledgement) to finish before the window opens.
const SETTLE: Duration = Duration::from_millis(300);

/// Measures every size for both stacks and both protocols, each in a runtime of its own.
pub fn measure(opts: &IdleOptions, progress: &dyn Fn(&str)) -> Res<Vec<IdleRow>> {
    let mut rows = Vec::new();
    for protocol in [Protocol::Quic, Protocol::TlsTcp] {
        for &n in &opts.sizes {
            for side in [Side::Postsock, Side::Raw] {
                progress(&format!(
                    "{n} idle {} connections, {side:?}",
                    protocol.name()
                ));
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(opts.workers.max(1))
                    .enable_all()
                    .build()?;
                let (cpu, switches) = rt.block_on(idle(side, protocol, n, opts.window))?;
                drop(rt);
                let secs = opts.window.as_secs_f64();
                rows.push(IdleRow {
                    protocol: protocol.name().into(),
                    side: match side {
                        Side::Postsock => "postsock",
                        Side::Raw => "raw",
                    }
                    .into(),
                    carriers: n,
                    window_s: secs,
                    cpu_percent: cpu.as_secs_f64() / secs * 100.0,
                    wakeups_per_s: switches as f64 / secs,
                });
            }
        }
    }
    Ok(rows)
}

/// Opens `n` connections of `side`, lets them settle, and returns the CPU time and the
/// voluntary context switches over `window` while they are idle.
async fn idle(side: Side, protocol: Protocol, n: usize, window: Duration) -> Res<(Duration, u64)> {
    // Whatever each stack keeps alive while the window runs.
    let mut keep: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    match side {
        Side::Postsock => {
            let Pki { server, client } = pki(protocol)?;
            let mut listener = Listener::bind(TokioNet::shared(), loopback(), server).await?;
            let port = listener.local_addr().port();
            let accept = tokio::spawn(async move {
                let mut accepted = Vec::with_capacity(n);
                for _ in 0..n {
                    let c = listener.accept().await?;
                    c.receive().await?.ok_or("closed early")?;
                    accepted.push(c);
                }
                Ok::<_, BoxError>((listener, accepted))
            });
            let mut clients = Vec::with_capacity(n);
            for _ in 0..n {
                let c = Carrier::initiate(
                    TokioNet::shared(),
                    Remote::new("localhost", port),
                    client.clone(),
                )
                .await?;
                c.send(Bytes::from_static(b"hello")).await?;
                clients.push(c);
            }
            keep.push(Box::new(accept.await??));
            keep.push(Box::new(clients));
        }
        Side::Raw if protocol == Protocol::Quic => {
            for _ in 0..n {
                let (client, server, eps) = quinn_pair().await?;
                let mut s = client.open_uni().await?;
                s.write_all(b"hello").await?;
                s.finish()?;
                server.accept_uni().await?.read_to_end(64).await?;
                keep.push(Box::new((client, server, eps)));
            }
        }
        Side::Raw => {
            for _ in 0..n {
                let (mut client, mut server) = tls_pair().await?;
                client.write_all(b"hello").await?;
                client.flush().await?;
                let mut got = [0u8; 5];
                server.read_exact(&mut got).await?;
                keep.push(Box::new((client, server)));
            }
        }
    }
    tokio::time::sleep(SETTLE).await;
    let (cpu0, sw0) = (cpu_time(), wakeups());
    tokio::time::sleep(window).await;
    let (cpu1, sw1) = (cpu_time(), wakeups());
    drop(keep);
    Ok((cpu1.saturating_sub(cpu0), sw1.saturating_sub(sw0)))
}

/// The table of `rows`: for each protocol and number of connections, both stacks side by side.
pub fn markdown(rows: &[IdleRow]) -> String {
    let mut out = String::from(
        "# Idle connections\n\n\
         CPU time (share of one core) and voluntary context switches per second of a process \
         holding idle connections (both ends, loopback, after one message each).\n\n\
         | protocol | connections | CPU, postsock | CPU, raw | wake-ups/s, postsock | wake-ups/s, raw |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    let find = |protocol: &str, n: usize, side: &str| {
        rows.iter()
            .find(|r| r.protocol == protocol && r.carriers == n && r.side == side)
    };
    let mut seen = Vec::new();
    for r in rows {
        if seen.contains(&(&r.protocol, r.carriers)) {
            continue;
        }
        seen.push((&r.protocol, r.carriers));
        let (ps, raw) = (
            find(&r.protocol, r.carriers, "postsock"),
            find(&r.protocol, r.carriers, "raw"),
        );
        let cpu =
            |r: Option<&IdleRow>| r.map_or("—".into(), |r| format!("{:.2} %", r.cpu_percent));
        let wake =
            |r: Option<&IdleRow>| r.map_or("—".into(), |r| format!("{:.0}", r.wakeups_per_s));
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.protocol,
            r.carriers,
            cpu(ps),
            cpu(raw),
            wake(ps),
            wake(raw)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(protocol: &str, side: &str, carriers: usize, cpu: f64, wake: f64) -> IdleRow {
        IdleRow {
            protocol: protocol.into(),
            side: side.into(),
            carriers,
            window_s: 1.0,
            cpu_percent: cpu,
            wakeups_per_s: wake,
        }
    }

    #[test]
    fn the_table_puts_both_stacks_of_a_size_on_one_line() {
        let md = markdown(&[
            row("quic", "postsock", 10, 2.5, 1136.4),
            row("quic", "raw", 10, 0.01, 0.0),
            row("tls-tcp", "postsock", 1, 0.52, 215.0),
        ]);
        assert!(
            md.contains("| quic | 10 | 2.50 % | 0.01 % | 1136 | 0 |"),
            "{md}"
        );
        assert!(
            md.contains("| tls-tcp | 1 | 0.52 % | — | 215 | — |"),
            "{md}"
        );
        assert_eq!(md.matches("| quic | 10 |").count(), 1, "{md}");
    }

    #[test]
    fn wakeups_count_this_process_s_sleeps() {
        let before = wakeups();
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            wakeups() >= before + 5,
            "five sleeps are five voluntary switches"
        );
    }
}
