//! Typed messages with a framer: the application sends and receives Rust values, the stack
//! serialises them (one JSON value per message) — Post Sockets' "parsing and serialisation in
//! the stack". Runs a server and a client in one process over real loopback sockets.
//!
//! ```text
//! cargo run --release --example typed
//! ```

use postsock::net::TokioNet;
use postsock::{Carrier, Configuration, Framed, Json, Listener, Remote, Security, TestCa};
use serde::{Deserialize, Serialize};

/// What both ends say to each other.
#[derive(Debug, Serialize, Deserialize)]
enum Msg {
    Add { a: i64, b: i64 },
    Greet { name: String },
    Sum(i64),
    Greeting(String),
}

const MAX: usize = 64 * 1024;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ca = TestCa::new("typed example CA")?;
    let mut server_config = Configuration::default();
    server_config.security(Security {
        identity: Some(ca.issue(&["localhost"])?),
        ..Security::default()
    });
    let mut listener =
        Listener::bind(TokioNet::shared(), "127.0.0.1:0".parse()?, server_config).await?;
    let port = listener.local_addr().port();

    let server = tokio::spawn(async move {
        let framed = Framed::new(listener.accept().await?, Json::<Msg>::new(MAX));
        while let Some(request) = framed.receive().await? {
            let response = match request {
                Msg::Add { a, b } => Msg::Sum(a + b),
                Msg::Greet { name } => Msg::Greeting(format!("hello, {name}")),
                other => Msg::Greeting(format!("cannot answer {other:?}")),
            };
            framed.send(&response).await?;
        }
        framed.close().await
    });

    let mut client_config = Configuration::default();
    client_config.security(Security {
        trusted_roots: vec![ca.root()],
        ..Security::default()
    });
    let carrier = Carrier::initiate(
        TokioNet::shared(),
        Remote::new("localhost", port),
        client_config,
    )
    .await?;
    println!("connected over {}", carrier.protocol());
    let framed = Framed::new(carrier, Json::<Msg>::new(MAX));
    framed.send(&Msg::Add { a: 40, b: 2 }).await?;
    framed
        .send(&Msg::Greet {
            name: "Post Sockets".into(),
        })
        .await?;
    for _ in 0..2 {
        match framed.receive().await? {
            Some(Msg::Sum(n)) => println!("sum: {n}"),
            Some(Msg::Greeting(g)) => println!("greeting: {g}"),
            Some(other) => println!("unexpected: {other:?}"),
            None => return Err("the server closed early".into()),
        }
    }
    framed.close().await?;
    server.await??;
    Ok(())
}
