//! An echo client over real sockets: sends each argument as a message, prints the echoes.
//!
//! ```text
//! cargo run --release --example echo_client -- --port 4433 --ca /tmp/postsock-ca.der hello world
//! cargo run --release --example echo_client -- --port 4433 --ca /tmp/postsock-ca.der --protocol tls-tcp hi
//! ```
//!
//! With `--associations FILE` the client loads what an earlier run learnt (racing cache and
//! TLS session tickets) and saves it again at the end: the second run resumes, its first
//! message in 0-RTT (QUIC) or TLS early data, which is why the first message is sent as
//! idempotent.

use postsock::net::TokioNet;
use postsock::{
    Associations, Carrier, Configuration, Message, Protocol, Remote, Security, SendStatus,
};
use rustls::pki_types::CertificateDer;

fn usage() -> ! {
    eprintln!(
        "usage: echo_client [--host NAME] [--port N] --ca FILE [--protocol quic|tls-tcp] \
         [--associations FILE] MESSAGE..."
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
    let mut associations = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--host" => host = args.next().unwrap_or_else(|| usage()),
            "--port" => port = args.next().unwrap_or_else(|| usage()).parse()?,
            "--ca" => ca = Some(args.next().unwrap_or_else(|| usage())),
            "--associations" => associations = Some(args.next().unwrap_or_else(|| usage())),
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
    let store = associations.as_ref().map(|file| {
        let store = Associations::new(std::time::Duration::from_secs(24 * 3600));
        if std::path::Path::new(file).exists() {
            if let Err(e) = store.load(std::path::Path::new(file)) {
                eprintln!("ignoring {file}: {e}");
            }
        }
        store
    });
    config.associations = store.clone();
    let mut messages = messages.into_iter();
    let Some(first) = messages.next() else {
        usage()
    };
    // The first message may go before the handshake completes, where it could be replayed:
    // an echo is safe to repeat, so it is marked idempotent.
    let first = Message::new(first.into_bytes()).idempotent();
    let (carrier, first) =
        Carrier::initiate_with(TokioNet::shared(), Remote::new(host, port), config, first).await?;
    println!("connected over {}", carrier.protocol());
    let mut handle = Some(first);
    loop {
        let handle = match handle.take() {
            Some(h) => h,
            None => match messages.next() {
                Some(m) => carrier.send(m.into_bytes()).await?,
                None => break,
            },
        };
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
    println!(
        "over {}: resumed {:?}, early data accepted {:?}",
        carrier.protocol(),
        carrier.resumed(),
        carrier.early_data()
    );
    carrier.close().await?;
    if let (Some(store), Some(file)) = (store, associations) {
        store.save(std::path::Path::new(&file))?;
    }
    Ok(())
}
