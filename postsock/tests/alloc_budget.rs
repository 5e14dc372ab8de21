//! Heap allocations per message on a carrier over real loopback sockets: a guard on the
//! per-message path that issue 16 emptied (BENCHMARKS.md). Counts are of the whole
//! process (both ends run on the test's thread: a current-thread runtime), from after a
//! warm-up to the last message received; the sender and the receiver are the application's
//! loops of `postsock bench`.
//!
//! The bounds leave room for what moves with timing (how many messages one write or one
//! ACK covers depends on how fast the two ends run) but not for one more allocation per
//! message: a `Box`, an `Arc` or a `Vec` made afresh for each message fails them.

mod common;

use std::alloc::System;
use std::sync::Arc;

use bytes::Bytes;
use postsock::net::{Net, TokioNet};
use postsock::{Carrier, Protocol, Remote, TestCa};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Sends `count` messages of `size` bytes from `client` to `server` and waits until all
/// arrived, as `postsock bench` does.
async fn transfer(client: &Carrier, server: &Arc<Carrier>, count: usize, size: usize) {
    let receiver = {
        let server = server.clone();
        tokio::spawn(async move {
            let mut bytes = 0;
            for _ in 0..count {
                bytes += server
                    .receive()
                    .await
                    .expect("receive")
                    .expect("a message")
                    .data
                    .len();
            }
            bytes
        })
    };
    let data = Bytes::from(vec![0x5a; size]);
    for _ in 0..count {
        client.send(data.clone()).await.expect("send");
    }
    assert_eq!(receiver.await.expect("receiver"), count * size);
}

/// Allocations per message of a 1 KiB transfer on `protocol`, measured after a warm-up
/// transfer on the same carrier (its queues and buffers grown).
async fn allocations_per_message(protocol: Protocol) -> f64 {
    const MESSAGES: usize = 5_000;
    let net: Arc<dyn Net> = TokioNet::shared();
    let ca = TestCa::new("allocation CA").expect("ca");
    let (server_config, client_config) = common::postsock_configs(&ca, protocol);
    let (mut listener, port) = common::listen(&net, server_config).await;
    let accept = tokio::spawn(async move { listener.accept().await.expect("accept") });
    let client = Carrier::initiate(net, Remote::new("localhost", port), client_config)
        .await
        .expect("initiate");
    let server = Arc::new(accept.await.expect("accept task"));
    transfer(&client, &server, MESSAGES, 1024).await;
    let region = Region::new(GLOBAL);
    transfer(&client, &server, MESSAGES, 1024).await;
    let change = region.change();
    let per_message = (change.allocations + change.reallocations) as f64 / MESSAGES as f64;
    eprintln!("{protocol:?}: {per_message:.2} allocations per 1 KiB message");
    client.close().await.expect("close");
    per_message
}

/// One test, both protocols in turn: the counts are the whole process's, so nothing else
/// may run beside them.
#[tokio::test(flavor = "current_thread")]
async fn a_small_message_costs_no_allocation_beyond_its_stream() {
    // TLS/TCP: a plain message (reliable, ordered, nothing else queued) has no status cell
    // of its own: its handle reads the carrier's marks (docs/PERFORMANCE-PLAN.md, step 2).
    // What is left is per TLS record or per write. Measured 0.19 (1.29-1.33 with a cell
    // per message); a `Box`, an `Arc` or a `Vec` per message fails the bound.
    let tls = allocations_per_message(Protocol::TlsTcp).await;
    // QUIC: a stream per message, whose state quinn allocates, besides the status cell and
    // the write future the send loop keeps. Measured 9.28-9.30.
    let quic = allocations_per_message(Protocol::Quic).await;
    assert!(
        tls <= 0.6,
        "{tls:.2} allocations per 1 KiB TLS/TCP message (bound 0.6)"
    );
    assert!(
        quic <= 10.0,
        "{quic:.2} allocations per 1 KiB QUIC message (bound 10.0)"
    );
}
