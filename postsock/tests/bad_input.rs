//! Peers that violate docs/WIRE.md: the carrier they talk to ends with a clear
//! `ConnectionError` (or, for one bad QUIC message, a `ReceiveError`), nothing panics, and
//! other carriers of the same listener keep working. Real sockets.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use postsock::net::{Net, TokioNet};
use postsock::{Carrier, Error, Event, Listener, Protocol, Remote, TestCa};
use quinn::crypto::rustls::QuicClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn header(kind: u8, flags: u8, id: u64, len: u32) -> Vec<u8> {
    let mut h = vec![kind, flags, 0, 0];
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&len.to_be_bytes());
    h
}

/// Bytes that violate the TLS/TCP framing, and what the error must say.
fn violations() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let mut truncated = header(1, 1, 0, 100);
    truncated.extend_from_slice(&[0u8; 10]);
    vec![
        (
            "oversized length",
            header(1, 1, 0, 2 << 20),
            "exceeds the maximum message size",
        ),
        ("truncated frame", truncated, "truncated frame"),
        (
            "unknown flags",
            header(1, 0x80, 0, 0),
            "unknown frame flags 0x80",
        ),
        (
            "unknown type",
            header(0x7f, 0, 0, 0),
            "unknown frame type 0x7f",
        ),
        (
            "garbage",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "reserved header bytes are not zero",
        ),
        ("ACK of nothing sent", header(2, 0, 5, 0), "ACK of 5 units"),
        ("truncated header", vec![1, 1, 0], "truncated frame header"),
    ]
}

async fn bind(ca: &TestCa, protocol: Protocol) -> (Listener, SocketAddr) {
    let (mut server, _) = common::postsock_configs(ca, protocol);
    server.max_message_size(1 << 20);
    let net: Arc<dyn Net> = TokioNet::shared();
    let listener = Listener::bind(net, "127.0.0.1:0".parse().expect("addr"), server)
        .await
        .expect("bind");
    let addr = ([127, 0, 0, 1], listener.local_addr().port()).into();
    (listener, addr)
}

/// A TLS/TCP listener and one well-behaved carrier to it: (listener, address, client side,
/// server side).
async fn good_pair(ca: &TestCa) -> (Listener, SocketAddr, Carrier, Carrier) {
    let (mut listener, addr) = bind(ca, Protocol::TlsTcp).await;
    let (_, client_config) = common::postsock_configs(ca, Protocol::TlsTcp);
    let good = Carrier::initiate(
        TokioNet::shared(),
        Remote::new("localhost", addr.port()),
        client_config,
    )
    .await
    .expect("initiate");
    let good_server = listener.accept().await.expect("accept good");
    (listener, addr, good, good_server)
}

/// Writes `bytes` over a fresh TLS connection to the listener at `addr`, ends our direction
/// (so a truncated frame is seen as truncated, not as slow), and returns the carrier the
/// listener made of it with all its events.
async fn send_violation(
    ca: &TestCa,
    listener: &mut Listener,
    addr: SocketAddr,
    bytes: &[u8],
) -> (Carrier, Vec<Event>) {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(common::rustls_client(ca)));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("handshake");
    tls.write_all(bytes).await.expect("write");
    tls.flush().await.expect("flush");
    let _ = tls.shutdown().await;
    let carrier = listener.accept().await.expect("accept bad");
    let events = drain(&carrier).await;
    (carrier, events)
}

/// The last event is a `Protocol` error whose message contains `want`.
fn assert_protocol_error(events: &[Event], what: &str, want: &str) {
    match events.last() {
        Some(Event::ConnectionError(Error::Protocol(msg))) => {
            assert!(
                msg.to_string().contains(want),
                "{what}: got `{msg}`, want `{want}`"
            )
        }
        other => panic!("{what}: last event {other:?}"),
    }
}

/// The events of a carrier until its last one.
async fn drain(carrier: &Carrier) -> Vec<Event> {
    let mut events = Vec::new();
    while let Some(e) = tokio::time::timeout(Duration::from_secs(10), carrier.next_event())
        .await
        .expect("the carrier must end, not hang")
    {
        events.push(e);
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_tcp_violations_end_only_the_offending_carrier() {
    let ca = TestCa::new("bad input CA").expect("ca");
    // A well-behaved carrier first; it must survive everything below.
    let (mut listener, addr, good, good_server) = good_pair(&ca).await;

    for (what, bytes, want) in violations() {
        let (carrier, events) = send_violation(&ca, &mut listener, addr, &bytes).await;
        assert_protocol_error(&events, what, want);
        assert!(matches!(events.first(), Some(Event::Ready)), "{what}");
        // Sending on the dead carrier is refused or fails; it never hangs or panics.
        match carrier.send(&b"x"[..]).await {
            Err(_) => {}
            Ok(h) => assert!(
                matches!(h.outcome().await, postsock::SendStatus::Failed(_)),
                "{what}"
            ),
        }
    }

    // Garbage instead of a TLS handshake: the handshake fails, no carrier appears.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    tcp.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3])
        .await
        .expect("write");
    drop(tcp);

    // The good carrier still works both ways.
    let h = good.send(&b"still here"[..]).await.expect("send");
    assert_eq!(h.outcome().await, postsock::SendStatus::Acked);
    let m = good_server
        .receive()
        .await
        .expect("receive")
        .expect("message");
    assert_eq!(&m.data[..], b"still here");
    good_server.send_bytes(m.data).await.expect("echo");
    let echo = good.receive().await.expect("receive").expect("echo");
    assert_eq!(&echo.data[..], b"still here");
    good.close().await.expect("close");
}

/// The reader hands the application the frames of one read together; a violation later in
/// the same read still ends the carrier only after the messages before it are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_before_a_violation_in_the_same_read_are_delivered_first() {
    let ca = TestCa::new("bad input CA").expect("ca");
    let (mut listener, addr) = bind(&ca, Protocol::TlsTcp).await;
    let mut bytes = Vec::new();
    for id in 0..40u64 {
        bytes.extend_from_slice(&header(1, 1, id, 3));
        bytes.extend_from_slice(&[b'm', b'0' + (id / 10) as u8, b'0' + (id % 10) as u8]);
    }
    bytes.extend_from_slice(&header(0x7f, 0, 0, 0));
    let (_carrier, events) = send_violation(&ca, &mut listener, addr, &bytes).await;
    assert_protocol_error(&events, "after 40 messages", "unknown frame type 0x7f");
    let got: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Received(m) => Some(String::from_utf8_lossy(&m.data).into_owned()),
            _ => None,
        })
        .collect();
    let want: Vec<String> = (0..40).map(|i| format!("m{i:02}")).collect();
    assert_eq!(got, want, "every message before the violation, in order");
}

/// The first `n` events of `carrier`, each as a short line (10 s each at most).
async fn first_events(carrier: &Carrier, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let e = tokio::time::timeout(Duration::from_secs(10), carrier.next_event())
            .await
            .expect("no hang")
            .expect("event");
        seen.push(match e {
            Event::Ready => "ready".to_string(),
            Event::ReceiveError { error, .. } => format!("receive-error: {error}"),
            Event::Received(m) => format!("received {}", String::from_utf8_lossy(&m.data)),
            other => format!("{other:?}"),
        });
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_quic_message_is_refused_and_the_carrier_goes_on() {
    let ca = TestCa::new("bad input CA").expect("ca");
    let (mut listener, addr) = bind(&ca, Protocol::Quic).await;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .expect("endpoint");
    let tls = QuicClientConfig::try_from(common::rustls_client(&ca)).expect("quic");
    let conn = endpoint
        .connect_with(quinn::ClientConfig::new(Arc::new(tls)), addr, "localhost")
        .expect("connect")
        .await
        .expect("handshake");
    let carrier = listener.accept().await.expect("accept");
    // 2 MiB on one stream, over the listener's 1 MiB maximum; then a good message.
    let big = conn.open_uni().await.expect("stream");
    let writer = tokio::spawn(async move {
        let mut big = big;
        // The receiver stops the stream once it sees it is too big; the write then fails.
        let _ = big.write_all(&vec![1u8; 2 << 20]).await;
        let _ = big.finish();
    });
    let mut ok = conn.open_uni().await.expect("stream");
    ok.write_all(b"fine").await.expect("write");
    ok.finish().expect("finish");
    let seen = first_events(&carrier, 3).await;
    assert_eq!(seen[0], "ready");
    assert!(
        seen[1].contains("exceeds the maximum message size"),
        "{seen:?}"
    );
    assert_eq!(seen[2], "received fine");
    let _ = writer.await;
    conn.close(0u32.into(), b"");
}

/// docs/WIRE.md: on TLS/TCP a message larger than the receiver's maximum arrives frame by
/// frame; the receiver reports a receive error for it, discards the rest of it and the
/// carrier goes on. The frames were acknowledged, so the sender's outcome is `acked`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_tls_tcp_message_is_discarded_and_the_carrier_goes_on() {
    let ca = TestCa::new("bad input CA").expect("ca");
    // The listener's maximum is 1 MiB; the client's is the default 16 MiB.
    let (_listener, _addr, client, server) = good_pair(&ca).await;
    let big = client
        .send(vec![1u8; 2 << 20])
        .await
        .expect("the sender allows 2 MiB");
    let fine = client.send(b"fine".to_vec()).await.expect("send");
    let seen = first_events(&server, 3).await;
    assert_eq!(seen[0], "ready");
    assert!(
        seen[1].contains("exceeds the maximum message size"),
        "{seen:?}"
    );
    assert_eq!(seen[2], "received fine");
    assert_eq!(big.outcome().await, postsock::SendStatus::Acked);
    assert_eq!(fine.outcome().await, postsock::SendStatus::Acked);
    // A message larger than the sender's own maximum is refused before anything is written.
    let too_big = client.send(vec![0u8; (16 << 20) + 1]).await;
    assert!(
        matches!(too_big, Err(postsock::Error::MessageTooLarge { .. })),
        "{too_big:?}"
    );
}

/// A HELLO frame as raw bytes: header (type 3), token, resend position.
fn hello(flags: u8, received: u64, token: [u8; 16], resend_from: u64) -> Vec<u8> {
    let mut h = header(3, flags, received, 24);
    h.extend_from_slice(&token);
    h.extend_from_slice(&resend_from.to_be_bytes());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_with_a_forged_token_is_refused_and_pairs_with_nothing() {
    let ca = TestCa::new("bad input CA").expect("ca");
    let (mut listener, addr, good, good_server) = good_pair(&ca).await;

    // A stranger (who passes TLS: anyone can) claims to continue a carrier it guessed.
    let connector = tokio_rustls::TlsConnector::from(Arc::new(common::rustls_client(&ca)));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("handshake");
    tls.write_all(&hello(0x01, 0, [7u8; 16], 0))
        .await
        .expect("write");
    tls.flush().await.expect("flush");
    // The answer is a refusal (RESUME | REFUSED), then the end of the stream.
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    assert!(answer.len() >= 16, "an answer: {answer:?}");
    assert_eq!((answer[0], answer[1]), (3, 0x03), "{answer:?}");
    // No carrier appeared for it, and the genuine one received nothing from it.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), listener.accept())
            .await
            .is_err(),
        "a forged continuation must not become a carrier"
    );
    let h = good.send(&b"mine"[..]).await.expect("send");
    assert_eq!(h.outcome().await, postsock::SendStatus::Acked);
    let m = good_server.receive().await.expect("receive").expect("msg");
    assert_eq!(&m.data[..], b"mine");
    good.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misplaced_or_malformed_hello_ends_only_that_carrier() {
    let ca = TestCa::new("bad input CA").expect("ca");
    let (mut listener, addr) = bind(&ca, Protocol::TlsTcp).await;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "HELLO after a message",
            [header(1, 1, 0, 1), b"x".to_vec(), hello(0, 0, [1u8; 16], 0)].concat(),
            "HELLO is only allowed as the first frame",
        ),
        (
            "HELLO with unknown flags",
            hello(0x40, 0, [1u8; 16], 0),
            "a HELLO frame carries",
        ),
        (
            "HELLO of the wrong length",
            header(3, 0, 0, 16),
            "a HELLO frame carries",
        ),
        (
            "CLOSE with a payload",
            header(4, 0, 0, 3),
            "a CLOSE frame must be empty",
        ),
    ];
    for (what, bytes, want) in cases {
        let (_carrier, events) = send_violation(&ca, &mut listener, addr, &bytes).await;
        assert_protocol_error(&events, what, want);
    }
}

/// A `postsock/1` client speaks first, but its HELLO may come late (TCP retransmitting it on
/// a lossy path): the listener waits for it rather than starting a carrier that the HELLO
/// would then break. A connection that ends before its first byte (the losing attempt of a
/// race) makes no carrier at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_hello_is_awaited_and_a_silent_connection_makes_no_carrier() {
    let ca = TestCa::new("bad input CA").expect("ca");
    let (mut listener, addr) = bind(&ca, Protocol::TlsTcp).await;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(common::rustls_client(&ca)));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");

    // Handshake, then nothing, then the end: no carrier.
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let mut silent = connector
        .connect(name.clone(), tcp)
        .await
        .expect("handshake");
    silent.flush().await.expect("flush");
    drop(silent);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), listener.accept())
            .await
            .is_err(),
        "a connection that said nothing must not become a carrier"
    );

    // Handshake, 1.5 s of nothing (the old listener gave up after 1 s), then HELLO and a
    // message: one carrier, which receives it.
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let mut late = connector.connect(name, tcp).await.expect("handshake");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    late.write_all(
        &[
            hello(0, 0, [9u8; 16], 0),
            header(1, 1, 0, 4),
            b"late".to_vec(),
        ]
        .concat(),
    )
    .await
    .expect("write");
    late.flush().await.expect("flush");
    let carrier = tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .expect("a carrier")
        .expect("accept");
    let m = carrier.receive().await.expect("receive").expect("message");
    assert_eq!(&m.data[..], b"late");
}
