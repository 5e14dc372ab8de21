//! The same carrier code over real loopback sockets (the tokio backend).

mod common;

use std::sync::Arc;

use postsock::net::{Net, TokioNet};
use postsock::{Carrier, Configuration, Error, Listener, Protocol, Remote, TestCa};

/// A server listening on both protocols, and a client restricted to `protocol`.
fn configs(ca: &TestCa, protocol: Protocol) -> (Configuration, Configuration) {
    let (mut server, client) = common::postsock_configs(ca, protocol);
    server.protocols(&[Protocol::Quic, Protocol::TlsTcp]);
    (server, client)
}

/// Real loopback sockets, a listener (both protocols) on a free port, and the client's
/// configuration for `protocol`, all from one test CA.
async fn listening(protocol: Protocol) -> (Arc<dyn Net>, Listener, u16, Configuration) {
    let net: Arc<dyn Net> = TokioNet::shared();
    let ca = TestCa::new("loopback CA").expect("ca");
    let (server_config, client_config) = configs(&ca, protocol);
    let (listener, port) = common::listen(&net, server_config).await;
    (net, listener, port, client_config)
}

fn sizes() -> Vec<usize> {
    vec![1, 17, 1200, 1500, 4096, 65_536, 100_000, 3, 0, 300_000]
}

fn message(i: usize, size: usize) -> Vec<u8> {
    (0..size).map(|j| (i * 31 + j * 7) as u8).collect()
}

/// Accepts one carrier, echoes its first message and closes it.
async fn echo_one(mut listener: Listener) {
    let carrier = listener.accept().await.expect("accept");
    let msg = carrier
        .receive()
        .await
        .expect("receive")
        .expect("a message");
    carrier.send_bytes(msg.data).await.expect("echo");
    carrier.close().await.expect("server close");
}

/// Accepts one carrier (which must run `protocol`), echoes every message and closes it.
async fn echo_all(mut listener: Listener, protocol: Protocol) {
    let carrier = listener.accept().await.expect("accept");
    assert_eq!(carrier.protocol(), protocol);
    while let Some(msg) = carrier.receive().await.expect("server receive") {
        carrier.send_bytes(msg.data).await.expect("echo");
    }
    carrier.close().await.expect("server close");
}

/// A QUIC carrier to a server that echoes every message ([`echo_all`]), and the server's task.
async fn quic_echo() -> (Carrier, tokio::task::JoinHandle<()>) {
    let (net, listener, port, client_config) = listening(Protocol::Quic).await;
    let server = tokio::spawn(echo_all(listener, Protocol::Quic));
    let carrier = Carrier::initiate(net, Remote::new("localhost", port), client_config)
        .await
        .expect("initiate");
    (carrier, server)
}

async fn echo_over_loopback(protocol: Protocol) {
    let (net, listener, port, client_config) = listening(protocol).await;
    let server = tokio::spawn(echo_all(listener, protocol));
    let carrier = Carrier::initiate(net, Remote::new("localhost", port), client_config)
        .await
        .expect("initiate");
    assert_eq!(carrier.protocol(), protocol);
    let mut sent = std::collections::BTreeMap::new();
    for (i, size) in sizes().into_iter().enumerate() {
        let data = message(i, size);
        let id = carrier.send_bytes(data.clone()).await.expect("send");
        assert_eq!(id, i as u64, "ids are assigned in send order");
        sent.insert(id, data);
    }
    let mut echoed = Vec::new();
    while echoed.len() < sent.len() {
        let msg = carrier.receive().await.expect("receive").expect("an echo");
        echoed.push(msg.data.to_vec());
    }
    let mut want: Vec<Vec<u8>> = sent.into_values().collect();
    want.sort();
    echoed.sort();
    assert_eq!(echoed, want, "every message came back intact, exactly once");
    carrier.close().await.expect("close");
    server.await.expect("server task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_echo_over_real_loopback_sockets() {
    echo_over_loopback(Protocol::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_tcp_echo_over_real_loopback_sockets() {
    echo_over_loopback(Protocol::TlsTcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_is_rejected() {
    let net: Arc<dyn Net> = TokioNet::shared();
    let ca = TestCa::new("real CA").expect("ca");
    let impostor = TestCa::new("impostor CA").expect("ca");
    for protocol in [Protocol::Quic, Protocol::TlsTcp] {
        let (server_config, _) = configs(&impostor, protocol);
        let (_, client_config) = configs(&ca, protocol);
        let (_listener, port) = common::listen(&net, server_config).await;
        let err = Carrier::initiate(net.clone(), Remote::new("localhost", port), client_config)
            .await
            .expect_err("verification must fail");
        assert!(
            matches!(err, Error::Establish { .. })
                && err.to_string().to_lowercase().contains("certificate"),
            "{protocol}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_trusted_roots_is_refused_before_connecting() {
    let mut config = Configuration::default();
    config.protocols(&[Protocol::Quic]);
    let err = Carrier::initiate(TokioNet::shared(), Remote::new("localhost", 9), config)
        .await
        .expect_err("no roots");
    assert!(
        matches!(err, Error::Config(postsock::ConfigError::NoTrustedRoots)),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn associations_resume_sessions_and_carry_0rtt_over_real_sockets() {
    let net: Arc<dyn Net> = TokioNet::shared();
    let ca = TestCa::new("resumption CA").expect("ca");
    for protocol in [Protocol::Quic, Protocol::TlsTcp] {
        let (server_config, mut client_config) = configs(&ca, protocol);
        client_config.associations = Some(postsock::Associations::new(
            std::time::Duration::from_secs(60),
        ));
        let port = common::echo_listener(&net, server_config).await;
        let remote = Remote::new("localhost", port);
        let (mut resumed, mut early) = (Vec::new(), Vec::new());
        for round in 0..3u8 {
            let first = postsock::Message::new(vec![round; 100]).idempotent();
            let (carrier, handle) =
                Carrier::initiate_with(net.clone(), remote.clone(), client_config.clone(), first)
                    .await
                    .expect("initiate");
            assert_eq!(handle.outcome().await, postsock::SendStatus::Acked);
            let echo = carrier.receive().await.expect("receive").expect("echo");
            assert_eq!(&echo.data[..], &[round; 100][..]);
            resumed.push(carrier.resumed());
            early.push(carrier.early_data());
            carrier.close().await.expect("close");
        }
        // The first handshake is full; the later ones resume, their first message in early
        // data (QUIC 0-RTT, TLS 1.3 early data).
        assert_eq!(resumed, [Some(false), Some(true), Some(true)], "{protocol}");
        assert_eq!(early, [None, Some(true), Some(true)], "{protocol}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_falls_back_to_tls_when_nothing_answers_on_udp() {
    let net: Arc<dyn Net> = TokioNet::shared();
    let ca = TestCa::new("racing CA").expect("ca");
    let (mut server_config, mut client_config) = configs(&ca, Protocol::Quic);
    // The server listens on TLS/TCP only; the client races QUIC and TLS/TCP.
    server_config.protocols(&[Protocol::TlsTcp]);
    client_config.protocols(&[Protocol::Quic, Protocol::TlsTcp]);
    client_config.attempt_delay = std::time::Duration::from_millis(50);
    let port = common::echo_listener(&net, server_config).await;
    let carrier = Carrier::initiate(net, Remote::new("localhost", port), client_config)
        .await
        .expect("TLS/TCP wins");
    assert_eq!(carrier.protocol(), Protocol::TlsTcp);
    let report = carrier.establishment().expect("report");
    let winner = report.winner().expect("a winner");
    assert_eq!(winner.protocol, Protocol::TlsTcp);
    // QUIC went first and either failed (an ICMP port unreachable) or was still waiting when
    // TLS/TCP, started after the 50 ms delay, won.
    let quic = &report.attempts[0];
    assert_eq!(quic.protocol, Protocol::Quic);
    match &quic.outcome {
        postsock::AttemptOutcome::Failed(_) => {}
        postsock::AttemptOutcome::Cancelled => {
            assert!(winner.started >= std::time::Duration::from_millis(50))
        }
        other => panic!("QUIC attempt ended {other:?}"),
    }
    carrier.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_path_monitor_reads_the_real_interface_list() {
    // On a real host the interfaces come from the OS (getifaddrs): loopback is there and up,
    // and a carrier to a loopback address runs on it.
    let net: Arc<dyn Net> = TokioNet::shared();
    let list = net.interfaces();
    let lo = list
        .iter()
        .find(|i| i.addrs.contains(&std::net::IpAddr::from([127, 0, 0, 1])))
        .unwrap_or_else(|| panic!("no interface with 127.0.0.1 in {list:?}"));
    assert!(lo.up, "{lo:?}");
    let monitor = postsock::PathMonitor::start(net.clone());
    assert_eq!(monitor.interfaces(), list);

    let ca = TestCa::new("loopback CA").expect("ca");
    for protocol in [Protocol::Quic, Protocol::TlsTcp] {
        let (server_config, client_config) = configs(&ca, protocol);
        let port = common::echo_listener(&net, server_config).await;
        let carrier = Carrier::initiate(net.clone(), Remote::new("localhost", port), client_config)
            .await
            .expect("initiate");
        assert_eq!(
            carrier.interface().as_deref(),
            Some(lo.name.as_str()),
            "{protocol}"
        );
        carrier.send_bytes(&b"ping"[..]).await.expect("send");
        let echo = carrier.receive().await.expect("receive").expect("echo");
        assert_eq!(&echo.data[..], b"ping");
        carrier.close().await.expect("close");
    }
}

/// The TLS/TCP client that closes right after the last echo arrived acknowledges it before
/// its CLOSE: the server's last message ends acked, not merely sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_tls_client_acknowledges_the_last_echo() {
    let (net, mut listener, port, client_config) = listening(Protocol::TlsTcp).await;
    let server = tokio::spawn(async move {
        let carrier = listener.accept().await.expect("accept");
        let mut outcomes = Vec::new();
        while let Some(msg) = carrier.receive().await.expect("server receive") {
            outcomes.push(carrier.send(msg.data).await.expect("echo"));
        }
        carrier.close().await.expect("server close");
        let mut settled = Vec::new();
        for handle in outcomes {
            settled.push(handle.outcome().await);
        }
        settled
    });
    let carrier = Carrier::initiate(net, Remote::new("localhost", port), client_config)
        .await
        .expect("initiate");
    for i in 0..20u8 {
        carrier.send_bytes(vec![i; 100]).await.expect("send");
        carrier.receive().await.expect("receive").expect("an echo");
    }
    carrier.close().await.expect("close");
    let settled = server.await.expect("server task");
    assert_eq!(settled.len(), 20);
    assert!(
        settled.iter().all(|s| *s == postsock::SendStatus::Acked),
        "{settled:?}"
    );
}

/// After its last event a carrier's event stream ends (`next_event` gives `None`), also for a
/// QUIC carrier that could have moved to TLS/TCP (one that raced both protocols).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_ends_after_the_last_event() {
    let net: Arc<dyn Net> = TokioNet::shared();
    let ca = TestCa::new("loopback CA").expect("ca");
    let (server_config, mut client_config) = configs(&ca, Protocol::Quic);
    client_config.protocols(&[Protocol::Quic, Protocol::TlsTcp]);
    let (listener, port) = common::listen(&net, server_config).await;
    let server = tokio::spawn(echo_one(listener));
    let carrier = Carrier::initiate(net, Remote::new("localhost", port), client_config)
        .await
        .expect("initiate");
    assert_eq!(carrier.protocol(), Protocol::Quic);
    carrier.send_bytes(&b"ping"[..]).await.expect("send");
    let mut last = None;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Some(event) = carrier.next_event().await {
            last = Some(format!("{event:?}"));
        }
    })
    .await;
    assert!(ended.is_ok(), "no end of the event stream after {last:?}");
    assert!(last.is_some_and(|l| l.starts_with("Closed")));
    server.await.expect("server task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_data_to_a_server_that_stops_answering_tls_ends_the_carrier() {
    // A ticket from a real listener; then the port is taken by a TCP server that accepts
    // and never speaks TLS. The resumed carrier starts in early data at once, and its
    // handshake must not hold it forever: it ends (the handshake bounded by the connect
    // timeout, then the dormant timeout), with its message failed.
    let net: Arc<dyn Net> = TokioNet::shared();
    let ca = TestCa::new("early CA").expect("ca");
    let (mut server_config, mut client_config) = common::postsock_configs(&ca, Protocol::TlsTcp);
    server_config.protocols(&[Protocol::TlsTcp]);
    client_config.associations = Some(postsock::Associations::new(std::time::Duration::from_secs(
        60,
    )));
    client_config.connect_timeout = std::time::Duration::from_millis(300);
    client_config.dormant_timeout = std::time::Duration::from_millis(500);
    // No keepalives, so silence alone never ends the carrier: only the handshake's bound.
    client_config.keepalive = None;
    let (mut listener, port) = common::listen(&net, server_config).await;
    let server = tokio::spawn(async move {
        let carrier = listener.accept().await.expect("accept");
        let m = carrier.receive().await.expect("receive").expect("message");
        carrier.send_bytes(m.data).await.expect("echo");
        let _ = carrier.receive().await;
    });
    let remote = Remote::new("localhost", port);
    let first = postsock::Message::new(&b"ticket"[..]).idempotent();
    let (carrier, _) =
        Carrier::initiate_with(net.clone(), remote.clone(), client_config.clone(), first)
            .await
            .expect("first carrier");
    carrier.receive().await.expect("echo").expect("echo");
    carrier.close().await.expect("close");
    server.await.expect("server");

    // The listener's accept task lets go of the port as it is aborted.
    let mut silent = None;
    for _ in 0..100 {
        match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => {
                silent = Some(l);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
    let silent = silent.expect("the port again");
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let first = postsock::Message::new(&b"early"[..]).idempotent();
    let start = std::time::Instant::now();
    match Carrier::initiate_with(net, remote, client_config, first).await {
        // In early data the carrier exists at once; its handshake then times out.
        Ok((carrier, handle)) => {
            let outcome =
                tokio::time::timeout(std::time::Duration::from_secs(10), handle.outcome())
                    .await
                    .expect("the message settles");
            assert!(
                matches!(outcome, postsock::SendStatus::Failed(_)),
                "{outcome:?}"
            );
            let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
                while carrier.next_event().await.is_some() {}
            })
            .await;
            assert!(ended.is_ok(), "the carrier still runs");
        }
        Err(e) => panic!("a ticket allowing early data should start the carrier: {e}"),
    }
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    held.abort();
}

/// The real network, except that the next `taken` TCP listens find their port in use (as
/// when another process holds the TCP port of the ephemeral UDP port a listener was given).
#[derive(Debug)]
struct TcpPortsTaken {
    real: TokioNet,
    taken: std::sync::atomic::AtomicU32,
}

impl Net for TcpPortsTaken {
    fn bind_udp(
        &self,
        local: std::net::SocketAddr,
    ) -> postsock::net::BoxFuture<'_, std::io::Result<Arc<dyn quinn::AsyncUdpSocket>>> {
        self.real.bind_udp(local)
    }
    fn connect_tcp(
        &self,
        remote: std::net::SocketAddr,
    ) -> postsock::net::BoxFuture<'_, std::io::Result<Box<dyn postsock::net::ByteStream>>> {
        self.real.connect_tcp(remote)
    }
    fn listen_tcp(
        &self,
        local: std::net::SocketAddr,
    ) -> postsock::net::BoxFuture<'_, std::io::Result<Box<dyn postsock::net::StreamListener>>> {
        use std::sync::atomic::Ordering;
        let refuse = self
            .taken
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refuse {
            return Box::pin(async { Err(std::io::Error::from(std::io::ErrorKind::AddrInUse)) });
        }
        self.real.listen_tcp(local)
    }
    fn resolve(
        &self,
        name: &str,
        port: u16,
    ) -> postsock::net::BoxFuture<'_, std::io::Result<Vec<std::net::SocketAddr>>> {
        self.real.resolve(name, port)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_on_port_zero_finds_a_port_free_for_both_protocols() {
    let ca = TestCa::new("loopback CA").expect("ca");
    let (server_config, client_config) = configs(&ca, Protocol::TlsTcp);
    let net: Arc<dyn Net> = Arc::new(TcpPortsTaken {
        real: TokioNet,
        taken: 3.into(),
    });
    let (listener, port) = common::listen(&net, server_config.clone()).await;
    let server = tokio::spawn(echo_one(listener));
    let carrier = Carrier::initiate(net.clone(), Remote::new("localhost", port), client_config)
        .await
        .expect("initiate");
    carrier.send_bytes(&b"ping"[..]).await.expect("send");
    let echo = carrier.receive().await.expect("receive").expect("echo");
    assert_eq!(&echo.data[..], b"ping");
    server.await.expect("server task");

    // A port the caller chose is never silently replaced.
    let net: Arc<dyn Net> = Arc::new(TcpPortsTaken {
        real: TokioNet,
        taken: 1.into(),
    });
    let free = std::net::UdpSocket::bind("127.0.0.1:0").expect("probe");
    let chosen = free.local_addr().expect("probe addr");
    drop(free);
    let err = Listener::bind(net, chosen, server_config)
        .await
        .expect_err("a chosen port in use is an error");
    assert!(
        format!("{err:?}").contains("AddrInUse"),
        "unexpected error {err:?}"
    );
}

/// On a multi-thread runtime a message queued on an idle TLS/TCP carrier is written by the
/// queueing thread itself (transport/inline.rs): it is `Sent` by the time `try_send`
/// returns, from a thread outside the runtime, even while every worker is busy. Lone requests and bursts then
/// alternate, so the writer changes hands between queueing threads and its task many times;
/// a lost wake-up would stall the echo (the timeout), a reordering would show.
#[test]
fn an_idle_tls_carrier_is_written_by_the_queueing_thread_and_nothing_is_lost() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let net: Arc<dyn Net> = TokioNet::shared();
    let ca = TestCa::new("loopback CA").expect("ca");
    let (server_config, client_config) = configs(&ca, Protocol::TlsTcp);
    let (carrier, server) = rt.block_on(async {
        let (listener, port) = common::listen(&net, server_config).await;
        let server = tokio::spawn(echo_all(listener, Protocol::TlsTcp));
        let carrier = Carrier::initiate(net, Remote::new("localhost", port), client_config)
            .await
            .expect("initiate");
        (Arc::new(carrier), server)
    });
    // Waits until every message sent so far is acknowledged (nothing in flight).
    let settle = |handles: &[postsock::SendHandle]| {
        rt.block_on(async {
            for h in handles {
                assert_eq!(h.outcome().await, postsock::SendStatus::Acked);
            }
        })
    };
    // From this thread, outside the runtime, while both of its workers are held (so the
    // writer's task cannot run): a lone message is on the wire before `try_send` returns.
    let mut handles = Vec::new();
    for i in 0..20u8 {
        let (started_tx, started) = std::sync::mpsc::channel();
        let mut release = Vec::new();
        for _ in 0..2 {
            let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
            let started_tx = started_tx.clone();
            release.push(release_tx);
            rt.spawn(async move {
                started_tx.send(()).expect("started");
                // Deliberately blocking: this worker runs nothing else until released.
                let _ = release_rx.recv();
            });
        }
        for _ in 0..2 {
            started
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("both workers held");
        }
        let handle = carrier.try_send(vec![i; 100]).expect("try_send");
        assert_eq!(
            handle.status(),
            postsock::SendStatus::Sent,
            "message {i} was written by the thread that queued it"
        );
        drop(release);
        let echo = rt
            .block_on(carrier.receive())
            .expect("receive")
            .expect("an echo");
        assert_eq!(echo.data.as_ref(), &[i; 100][..]);
        handles.push(handle);
        settle(&handles);
    }
    // Lone requests and bursts, from the runtime's side.
    rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(60), async {
            let mut next = 0usize;
            for round in 0..300 {
                let n = if round % 10 == 0 { 40 } else { 1 };
                for k in 0..n {
                    let data = message(next + k, 1 + (next + k) % 3000);
                    carrier.send_bytes(data).await.expect("send");
                }
                for k in 0..n {
                    let echo = carrier.receive().await.expect("receive").expect("an echo");
                    let want = message(next + k, 1 + (next + k) % 3000);
                    assert_eq!(echo.data.as_ref(), &want[..], "echo {} in order", next + k);
                }
                next += n;
            }
        })
        .await
        .expect("every echo within the minute");
        carrier.close().await.expect("close");
        server.await.expect("server task");
    });
}

/// The TLS/TCP reader hands the messages of one read over together, as far as the receive
/// queue's bounds admit: with room for only three events and a reader that sometimes
/// pauses, a burst of small messages (dozens a read) arrives whole, once each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_through_a_three_event_receive_queue_arrives_whole_and_in_order() {
    let net: Arc<dyn Net> = TokioNet::shared();
    let ca = TestCa::new("loopback CA").expect("ca");
    let (mut server_config, client_config) = configs(&ca, Protocol::TlsTcp);
    server_config.receive_queue = 3;
    let (mut listener, port) = common::listen(&net, server_config).await;
    const N: usize = 3000;
    let server = tokio::spawn(async move {
        let carrier = listener.accept().await.expect("accept");
        for i in 0..N {
            let msg = carrier
                .receive()
                .await
                .expect("receive")
                .expect("a message");
            assert_eq!(
                msg.data.as_ref(),
                &message(i, 1 + i % 200)[..],
                "message {i}"
            );
            if i % 97 == 0 {
                // Let the queue fill while the reader has a read's worth in hand.
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        }
        assert!(carrier.receive().await.expect("the end").is_none());
    });
    let carrier = Carrier::initiate(net, Remote::new("localhost", port), client_config)
        .await
        .expect("initiate");
    let mut last = None;
    for i in 0..N {
        last = Some(carrier.send(message(i, 1 + i % 200)).await.expect("send"));
    }
    let last = last.expect("sent");
    assert_eq!(last.outcome().await, postsock::SendStatus::Acked);
    carrier.close().await.expect("close");
    tokio::time::timeout(std::time::Duration::from_secs(30), server)
        .await
        .expect("the server read everything")
        .expect("server task");
}

/// A QUIC message larger than the peer's stream window: quinn takes only part of it at
/// once, and the sending loop writes the rest from where that ended (`write_now`'s part,
/// then the message's own write): it arrives whole, each byte once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_message_larger_than_the_stream_window_arrives_intact() {
    let (carrier, server) = quic_echo().await;
    let big = message(5, 5 << 20);
    let small = message(6, 1000);
    carrier.send_bytes(big.clone()).await.expect("send");
    carrier.send_bytes(small.clone()).await.expect("send");
    for want in [big, small] {
        let got = carrier.receive().await.expect("receive").expect("an echo");
        assert_eq!(got.data.len(), want.len());
        assert!(got.data[..] == want[..], "the echo is the message");
    }
    carrier.close().await.expect("close");
    server.await.expect("server task");
}

/// A lone message on an idle QUIC carrier is written by the task that sends it
/// (`quic::DirectWriter`): on one thread it is `Sent` when `send` returns, before the
/// sending loop could run. Messages the loop must decide on (a lifetime) and those queued
/// behind them keep their order, and every message is acknowledged and echoed once.
#[tokio::test(flavor = "current_thread")]
async fn a_lone_quic_message_is_written_by_its_sender_and_order_is_kept() {
    let (carrier, server) = quic_echo().await;
    for i in 0..50 {
        let data = message(i, 1 + i * 97 % 4000);
        let handle = carrier.send(data.clone()).await.expect("send");
        // (The first goes before the loop ever waited: through it.)
        if i > 0 {
            assert_eq!(
                handle.status(),
                postsock::SendStatus::Sent,
                "lone message {i} was written by its sender"
            );
        }
        let echo = carrier.receive().await.expect("receive").expect("an echo");
        assert_eq!(echo.data.as_ref(), &data[..]);
        assert_eq!(handle.outcome().await, postsock::SendStatus::Acked);
    }
    // One written at once, one with a lifetime (the loop judges it), then one that must not
    // overtake it: queued, not written by its sender.
    let first = carrier.send(message(100, 10)).await.expect("send");
    assert_eq!(first.status(), postsock::SendStatus::Sent);
    let timed =
        postsock::Message::new(message(101, 20)).lifetime(std::time::Duration::from_secs(30));
    let timed = carrier.send(timed).await.expect("send");
    let last = carrier.send(message(102, 30)).await.expect("send");
    assert_ne!(
        last.status(),
        postsock::SendStatus::Sent,
        "queued behind the timed one"
    );
    for i in 100..103 {
        let echo = carrier.receive().await.expect("receive").expect("an echo");
        assert_eq!(
            echo.data.as_ref(),
            &message(i, 10 * (i - 99))[..],
            "echo {i} in order"
        );
    }
    for h in [first, timed, last] {
        assert_eq!(h.outcome().await, postsock::SendStatus::Acked);
    }
    carrier.close().await.expect("close");
    server.await.expect("server task");
}

/// Several tasks on two workers send lone messages at once, each awaiting its last one's
/// acknowledgement before the next: most are written by their senders (`DirectWriter`),
/// from both workers, while the sending loop settles the others' acknowledgements. Every
/// message is acknowledged (one the loop never learned of would hang its task) and each
/// task's messages arrive in the order it sent them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_quic_messages_from_several_tasks_are_all_acknowledged_and_in_order() {
    const TASKS: u8 = 4;
    const EACH: u32 = 300;
    let (net, mut listener, port, client_config) = listening(Protocol::Quic).await;
    let server = tokio::spawn(async move {
        let carrier = listener.accept().await.expect("accept");
        let mut next = [0u32; TASKS as usize];
        for _ in 0..u32::from(TASKS) * EACH {
            let msg = carrier
                .receive()
                .await
                .expect("receive")
                .expect("a message");
            let task = usize::from(msg.data[0]);
            let seq = u32::from_be_bytes(msg.data[1..5].try_into().expect("4 bytes"));
            assert_eq!(seq, next[task], "task {task}'s messages in order");
            next[task] += 1;
        }
        carrier
    });
    let carrier = Arc::new(
        Carrier::initiate(net, Remote::new("localhost", port), client_config)
            .await
            .expect("initiate"),
    );
    let mut senders = Vec::new();
    for task in 0..TASKS {
        let carrier = carrier.clone();
        senders.push(tokio::spawn(async move {
            for seq in 0..EACH {
                let mut data = vec![task];
                data.extend_from_slice(&seq.to_be_bytes());
                data.resize(5 + (seq as usize * 37) % 1500, task);
                let handle = carrier.send(data).await.expect("send");
                assert_eq!(handle.outcome().await, postsock::SendStatus::Acked);
            }
        }));
    }
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        for s in senders {
            s.await.expect("sender");
        }
    })
    .await
    .expect("every message acknowledged");
    let server_carrier = server.await.expect("server read everything in order");
    carrier.close().await.expect("close");
    drop(server_carrier);
}
