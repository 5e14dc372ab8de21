//! Responder, Source, Sink and framed carriers over real loopback sockets.

mod common;

use std::sync::Arc;

use postsock::net::{Net, TokioNet};
use postsock::{
    Carrier, Framed, Json, Lines, Listener, MessageProperties, Protocol, Remote, Responder,
    SendStatus, Sink, Source, TestCa,
};

fn net() -> Arc<dyn Net> {
    TokioNet::shared()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responder_answers_each_remote_on_its_own_carrier() {
    let ca = TestCa::new("kin CA").expect("ca");
    let (mut server, _) = common::postsock_configs(&ca, Protocol::Quic);
    server.protocols(&[Protocol::Quic, Protocol::TlsTcp]);
    let mut responder = Responder::bind(net(), "127.0.0.1:0".parse().expect("addr"), server)
        .await
        .expect("bind");
    let port = responder.local_addr().port();
    let serve = tokio::spawn(async move {
        let mut froms = Vec::new();
        for _ in 0..4 {
            let request = responder.receive().await.expect("request");
            froms.push(request.from);
            let mut reply = b"pong: ".to_vec();
            reply.extend_from_slice(&request.message.data);
            request.respond(reply).await.expect("respond");
        }
        (froms, responder)
    });
    let mut clients = Vec::new();
    for protocol in [Protocol::Quic, Protocol::TlsTcp] {
        let (_, client) = common::postsock_configs(&ca, protocol);
        clients.push(tokio::spawn(async move {
            let carrier = Carrier::initiate(net(), Remote::new("localhost", port), client)
                .await
                .expect("initiate");
            let mut replies = Vec::new();
            for i in 0..2 {
                carrier
                    .send(format!("{} #{i}", protocol.name()).into_bytes())
                    .await
                    .expect("send");
                let reply = carrier.receive().await.expect("receive").expect("reply");
                replies.push(String::from_utf8(reply.data.to_vec()).expect("utf8"));
            }
            carrier.close().await.expect("close");
            replies
        }));
    }
    let quic = clients.remove(0).await.expect("quic client");
    let tcp = clients.remove(0).await.expect("tls client");
    let (froms, _responder) = serve.await.expect("responder");
    assert_eq!(quic, ["pong: quic #0", "pong: quic #1"]);
    assert_eq!(tcp, ["pong: tls-tcp #0", "pong: tls-tcp #1"]);
    let distinct: std::collections::BTreeSet<_> = froms.iter().collect();
    assert_eq!(distinct.len(), 2, "two remotes: {froms:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_sends_to_a_sink_and_drops_what_comes_back() {
    let ca = TestCa::new("kin CA").expect("ca");
    let (server, client) = common::postsock_configs(&ca, Protocol::TlsTcp);
    let mut listener = Listener::bind(net(), "127.0.0.1:0".parse().expect("addr"), server)
        .await
        .expect("bind");
    let port = listener.local_addr().port();
    let sink_side = tokio::spawn(async move {
        let sink = Sink::from_carrier(listener.accept().await.expect("accept"));
        let mut got = Vec::new();
        while let Some(m) = sink.receive().await.expect("receive") {
            got.push(m.data.to_vec());
        }
        got
    });
    let source = Source::initiate(net(), Remote::new("localhost", port), client)
        .await
        .expect("initiate");
    for i in 0..3u8 {
        let h = source.send(vec![i; 10]).await.expect("send");
        assert_eq!(h.outcome().await, SendStatus::Acked);
    }
    source.close().await.expect("close");
    assert_eq!(
        sink_side.await.expect("sink"),
        vec![vec![0u8; 10], vec![1u8; 10], vec![2u8; 10]]
    );

    // A peer that sends to a Source anyway: counted and dropped, the source goes on.
    let ca = TestCa::new("kin CA").expect("ca");
    let (server, client) = common::postsock_configs(&ca, Protocol::Quic);
    let mut listener = Listener::bind(net(), "127.0.0.1:0".parse().expect("addr"), server)
        .await
        .expect("bind");
    let port = listener.local_addr().port();
    let talker = tokio::spawn(async move {
        let carrier = listener.accept().await.expect("accept");
        let h = carrier.send(&b"unwanted"[..]).await.expect("send");
        assert_eq!(h.outcome().await, SendStatus::Acked);
        let m = carrier.receive().await.expect("receive").expect("message");
        assert_eq!(&m.data[..], b"after");
    });
    let source = Source::initiate(net(), Remote::new("localhost", port), client)
        .await
        .expect("initiate");
    while source.unexpected_messages() == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let h = source.send(&b"after"[..]).await.expect("send");
    assert_eq!(h.outcome().await, SendStatus::Acked);
    talker.await.expect("talker");
    assert_eq!(source.unexpected_messages(), 1);
    source.close().await.expect("close");
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Order {
    item: String,
    quantity: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framed_carriers_hand_the_application_objects() {
    let ca = TestCa::new("kin CA").expect("ca");
    for protocol in [Protocol::Quic, Protocol::TlsTcp] {
        let (mut server, client) = common::postsock_configs(&ca, protocol);
        // Parts as they arrive, so a line can span parts of one long message.
        server.partial_delivery(Some(1), None);
        let mut listener = Listener::bind(net(), "127.0.0.1:0".parse().expect("addr"), server)
            .await
            .expect("bind");
        let port = listener.local_addr().port();
        let server_side = tokio::spawn(async move {
            let carrier = listener.accept().await.expect("accept");
            let orders = Framed::new(carrier, Json::<Order>::new(1024));
            let mut got = Vec::new();
            for _ in 0..2 {
                got.push(orders.receive().await.expect("receive").expect("order"));
            }
            // The client then streams lines inside one message, in parts; switch framers by
            // re-wrapping the carrier.
            let carrier = orders_into_carrier(orders);
            let lines = Framed::new(carrier, Lines::new(100));
            let mut text = Vec::new();
            while let Some(line) = lines.receive().await.expect("line") {
                text.push(line);
            }
            (got, text)
        });
        let carrier = Carrier::initiate(net(), Remote::new("localhost", port), client)
            .await
            .expect("initiate");
        let orders = Framed::new(carrier, Json::<Order>::new(1024));
        let sent = vec![
            Order {
                item: "tea".into(),
                quantity: 2,
            },
            Order {
                item: "scones\nwith jam".into(),
                quantity: 12,
            },
        ];
        for o in &sent {
            let h = orders.send(o).await.expect("send");
            assert_eq!(h.outcome().await, SendStatus::Acked);
        }
        let carrier = orders_into_carrier(orders);
        {
            let mut part = carrier
                .start_message(MessageProperties::default())
                .expect("start");
            for chunk in ["first li", "ne\nsecond", " line\r\nthird\n"] {
                part.send(chunk.as_bytes().to_vec(), false)
                    .await
                    .expect("part");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            part.send(Vec::new(), true).await.expect("end");
        }
        carrier.close().await.expect("close");
        let (got, text) = server_side.await.expect("server");
        assert_eq!(got, sent, "{protocol}");
        assert_eq!(text, ["first line", "second line", "third"], "{protocol}");
    }
}

fn orders_into_carrier(framed: Framed<Json<Order>>) -> Carrier {
    framed.into_carrier()
}
