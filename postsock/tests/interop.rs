//! Interop: a postsock carrier against a plain quinn endpoint that knows only docs/WIRE.md
//! (an ordered reliable message is a unidirectional stream read to its end; an unreliable
//! one is a DATAGRAM frame; ALPN `postsock/1`), in both directions, over real sockets.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use postsock::net::{Net, TokioNet};
use postsock::{Carrier, Event, Listener, Message, Protocol, Remote, SendStatus, TestCa};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

fn plain_endpoint(server: Option<rustls::ServerConfig>) -> quinn::Endpoint {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let server = server.map(|tls| {
        quinn::ServerConfig::with_crypto(Arc::new(
            QuicServerConfig::try_from(tls).expect("quic server"),
        ))
    });
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .expect("endpoint")
}

/// Reads `n` messages as WIRE.md defines them: each unidirectional stream to its end.
async fn read_messages(conn: &quinn::Connection, n: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    for _ in 0..n {
        let mut stream = conn.accept_uni().await.expect("a message stream");
        got.push(stream.read_to_end(1 << 20).await.expect("message"));
    }
    got
}

/// Sends one message as WIRE.md defines it.
async fn write_message(conn: &quinn::Connection, data: &[u8]) {
    let mut stream = conn.open_uni().await.expect("stream");
    stream.write_all(data).await.expect("write");
    stream.finish().expect("finish");
    stream.stopped().await.expect("acknowledged");
}

fn messages() -> Vec<Vec<u8>> {
    vec![
        b"first".to_vec(),
        vec![7u8; 100_000],
        Vec::new(),
        b"last".to_vec(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postsock_client_talks_to_a_plain_quinn_server() {
    let ca = TestCa::new("interop CA").expect("ca");
    let server = plain_endpoint(Some(common::rustls_server(&ca)));
    let port = server.local_addr().expect("addr").port();
    let plain = tokio::spawn(async move {
        let conn = server
            .accept()
            .await
            .expect("incoming")
            .await
            .expect("handshake");
        let got = read_messages(&conn, messages().len()).await;
        let datagram = conn.read_datagram().await.expect("datagram");
        for reply in [&b"reply one"[..], &b"reply two"[..]] {
            write_message(&conn, reply).await;
        }
        conn.send_datagram(Bytes::from_static(b"plain datagram"))
            .expect("send datagram");
        conn.closed().await;
        (got, datagram)
    });

    let (_, client_config) = common::postsock_configs(&ca, Protocol::Quic);
    let carrier = Carrier::initiate(
        TokioNet::shared(),
        Remote::new("localhost", port),
        client_config,
    )
    .await
    .expect("initiate");
    for m in messages() {
        let h = carrier.send(m).await.expect("send");
        assert_eq!(h.outcome().await, SendStatus::Acked);
    }
    let h = carrier
        .send(Message::new(&b"postsock datagram"[..]).unreliable())
        .await
        .expect("send datagram");
    assert_eq!(h.outcome().await, SendStatus::Sent);
    let mut replies = Vec::new();
    let mut datagram = None;
    while replies.len() < 2 || datagram.is_none() {
        match carrier.next_event().await.expect("event") {
            Event::Ready => {}
            Event::Received(m) if m.reliable => replies.push(m.data),
            Event::Received(m) => datagram = Some(m.data),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(replies, [&b"reply one"[..], &b"reply two"[..]]);
    assert_eq!(datagram.as_deref(), Some(&b"plain datagram"[..]));
    carrier.close().await.expect("close");
    let (got, datagram) = plain.await.expect("plain server");
    assert_eq!(
        got,
        messages(),
        "one stream read to its end = one message, in order"
    );
    assert_eq!(&datagram[..], b"postsock datagram");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_quinn_client_talks_to_a_postsock_listener() {
    let ca = TestCa::new("interop CA").expect("ca");
    let (server_config, _) = common::postsock_configs(&ca, Protocol::Quic);
    let net: Arc<dyn Net> = TokioNet::shared();
    let mut listener = Listener::bind(net, "127.0.0.1:0".parse().expect("addr"), server_config)
        .await
        .expect("bind");
    let addr: SocketAddr = ([127, 0, 0, 1], listener.local_addr().port()).into();
    let postsock_side = tokio::spawn(async move {
        let carrier = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        while got.len() < messages().len() {
            let m = carrier
                .receive()
                .await
                .expect("receive")
                .expect("a message");
            got.push(m.data.to_vec());
        }
        // Echo the first one back, reversed, as a message of our own.
        let mut reply = got[0].clone();
        reply.reverse();
        let h = carrier.send(reply).await.expect("reply");
        assert_eq!(h.outcome().await, SendStatus::Acked);
        // The plain client closes with code 0 when it is done: a clean close.
        match carrier.next_event().await {
            Some(Event::Closed) | None => {}
            Some(other) => panic!("unexpected {other:?}"),
        }
        got
    });

    let client = plain_endpoint(None);
    let tls = QuicClientConfig::try_from(common::rustls_client(&ca)).expect("quic client");
    let conn = client
        .connect_with(quinn::ClientConfig::new(Arc::new(tls)), addr, "localhost")
        .expect("connect")
        .await
        .expect("handshake");
    for m in messages() {
        write_message(&conn, &m).await;
    }
    let reply = read_messages(&conn, 1).await;
    assert_eq!(reply, [b"tsrif".to_vec()]);
    conn.close(0u32.into(), b"done");
    client.wait_idle().await;
    assert_eq!(postsock_side.await.expect("postsock side"), messages());
}
