//! An echo client over real sockets: sends each argument as a message, prints the echoes.
//!
//! ```text
//! cargo run --release --example echo_client -- --port 4433 --ca /tmp/postsock-ca.der hello world
//! cargo run --release --example echo_client -- --port 4433 --ca /tmp/postsock-ca.der --protocol tls-tcp hi
//! ```

use postsock::net::TokioNet;
use postsock::{Carrier, Configuration, Protocol, Remote, Security, SendStatus};
use rustls::pki_types::CertificateDer;

fn usage() -> ! {
    eprintln!(
        "usage: echo_client [--host NAME] [--port N] --ca FILE [--protocol quic|tls-tcp] MESSAGE..."
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut host, mut port, mut ca, mut protocols) = (
        "localhost".to_string(),
        4433u16,
        None,
        vec![Protocol::Quic, Protocol::TlsTcp],
    );
    let mut messages = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--host" => host = args.next().unwrap_or_else(|| usage()),
            "--port" => port = args.next().unwrap_or_else(|| usage()).parse()?,
            "--ca" => ca = Some(args.next().unwrap_or_else(|| usage())),
            "--protocol" => {
                protocols = match args.next().as_deref() {
                    Some("quic") => vec![Protocol::Quic],
                    Some("tls-tcp") => vec![Protocol::TlsTcp],
                    _ => usage(),
                }
            }
            other if other.starts_with("--") => usage(),
            message => messages.push(message.to_string()),
        }
    }
    let root = std::fs::read(ca.unwrap_or_else(|| usage()))?;
    let mut config = Configuration::default();
    config.protocols(&protocols).security(Security {
        trusted_roots: vec![CertificateDer::from(root)],
        ..Security::default()
    });
    let carrier = Carrier::initiate(TokioNet::shared(), Remote::new(host, port), config).await?;
    println!("connected over {}", carrier.protocol());
    for message in messages {
        let handle = carrier.send(message.clone().into_bytes()).await?;
        let echo = carrier
            .receive()
            .await?
            .ok_or("the server closed the carrier")?;
        let outcome = handle.outcome().await;
        if outcome != SendStatus::Acked {
            return Err(format!("message {} ended {outcome:?}", handle.id()).into());
        }
        println!("echo: {}", String::from_utf8_lossy(&echo.data));
    }
    carrier.close().await?;
    Ok(())
}
