//! An echo server over real sockets: every message on every carrier comes straight back.
//!
//! ```text
//! cargo run --release --example echo_server -- --listen 127.0.0.1:4433 --ca-out /tmp/postsock-ca.der
//! ```
//!
//! It makes a throw-away certificate authority, writes its root certificate (DER) to
//! `--ca-out` for clients to trust, and listens for QUIC and TLS/TCP on the same port. A
//! message that cannot be received (larger than `--max-message` bytes, say) is reported and
//! skipped; the carrier goes on.

use std::net::SocketAddr;
use std::sync::Arc;

use postsock::net::TokioNet;
use postsock::{Configuration, Listener, Security, TestCa};

fn usage() -> ! {
    eprintln!("usage: echo_server [--listen ADDR] [--ca-out FILE] [--max-message BYTES]");
    std::process::exit(2)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen: SocketAddr = "127.0.0.1:4433".parse()?;
    let mut ca_out = std::env::temp_dir().join("postsock-ca.der");
    let mut max_message = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().unwrap_or_else(|| usage()).parse()?,
            "--ca-out" => ca_out = args.next().unwrap_or_else(|| usage()).into(),
            "--max-message" => {
                max_message = Some(args.next().unwrap_or_else(|| usage()).parse::<usize>()?)
            }
            _ => usage(),
        }
    }
    let ca = TestCa::new("postsock example CA")?;
    std::fs::write(&ca_out, ca.root().as_ref())?;
    let mut config = Configuration::default();
    config.security(Security {
        identity: Some(ca.issue(&["localhost"])?),
        ..Security::default()
    });
    if let Some(max) = max_message {
        config.max_message_size = max;
    }
    let mut listener = Listener::bind(TokioNet::shared(), listen, config).await?;
    // The first line of output says where we listen (the port may have been 0).
    println!(
        "listening on {} (QUIC and TLS/TCP); trust {}",
        listener.local_addr(),
        ca_out.display()
    );
    loop {
        let carrier = Arc::new(listener.accept().await?);
        tokio::spawn(async move {
            let peer = carrier.peer_addr();
            let mut echoed = 0u64;
            loop {
                match carrier.receive().await {
                    Ok(Some(message)) => {
                        if carrier.send_bytes(message.data).await.is_err() {
                            break;
                        }
                        echoed += 1;
                    }
                    Ok(None) => break,
                    // One message could not be received (a carrier's own end comes next
                    // as Ok(None)): say so and go on.
                    Err(e) => eprintln!("{peer}: {e}"),
                }
            }
            let _ = carrier.close().await;
            eprintln!("{peer} ({}): echoed {echoed} messages", carrier.protocol());
        });
    }
}
