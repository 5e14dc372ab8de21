//! The examples run: echo server and client as two processes over real sockets, and the
//! typed-framer example. (Cargo builds examples before running integration tests.)

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/examples-<hash> → target/<profile>/examples/<name>
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join("examples");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: run the whole `cargo test` (it builds the examples), not only --test examples",
        path.display()
    );
    path
}

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn echo_server_and_client_talk_over_real_sockets() {
    let dir = std::env::temp_dir().join(format!("postsock-examples-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = dir.join("ca.der");
    let mut server = Killed(
        Command::new(example("echo_server"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--max-message",
                "65536",
                "--ca-out",
            ])
            .arg(&ca)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start echo_server"),
    );
    let stdout = server.0.stdout.take().expect("stdout");
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first).expect("read");
    let port = first
        .split_whitespace()
        .nth(2)
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no address in {first:?}"));
    for protocol in ["quic", "tls-tcp"] {
        let out = Command::new(example("echo_client"))
            .args(["--port", &port.to_string(), "--protocol", protocol, "--ca"])
            .arg(&ca)
            .args(["hello", "Post Sockets"])
            .output()
            .expect("run echo_client");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{protocol}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("echo: hello\necho: Post Sockets"),
            "{protocol}: {text}"
        );
    }
    // One message over the server's maximum: the server reports it and skips it, and the
    // same carrier echoes the next one. (Its outcome at the sender, docs/WIRE.md: on TLS/TCP
    // acked, the receiver discards it; on QUIC failed by STOP_SENDING, unless QUIC had
    // acknowledged every byte before the receiver read that far, as on loopback.)
    for protocol in [postsock::Protocol::Quic, postsock::Protocol::TlsTcp] {
        let (big, echo) = oversized_then_hello(port, &ca, protocol);
        assert!(
            big.starts_with("acked")
                || protocol == postsock::Protocol::Quic && big.starts_with("failed"),
            "{protocol}: big message {big}"
        );
        assert_eq!(echo, b"hello", "{protocol}: the carrier goes on");
    }
    // Two client processes sharing an association file: the second resumes from the
    // tickets the first saved, its first message in early data.
    for protocol in ["quic", "tls-tcp"] {
        let file = dir.join(format!("associations-{protocol}.json"));
        let run = || {
            let out = Command::new(example("echo_client"))
                .args(["--port", &port.to_string(), "--protocol", protocol, "--ca"])
                .arg(&ca)
                .arg("--associations")
                .arg(&file)
                .args(["again", "and again"])
                .output()
                .expect("run echo_client");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.status.success(), "{protocol}: {text}");
            assert!(
                text.contains("echo: again\necho: and again"),
                "{protocol}: {text}"
            );
            text
        };
        let first = run();
        assert!(
            first.contains("resumed Some(false), early data accepted None"),
            "{protocol}: {first}"
        );
        let second = run();
        assert!(
            second.contains("resumed Some(true), early data accepted Some(true)"),
            "{protocol}: {second}"
        );
    }
    let bad = Command::new(example("echo_client"))
        .args(["--port", &port.to_string()])
        .output()
        .expect("run");
    assert_eq!(
        bad.status.code(),
        Some(2),
        "a missing --ca is a usage error"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn typed_example_exchanges_values() {
    let out = Command::new(example("typed")).output().expect("run typed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("sum: 42"), "{text}");
    assert!(text.contains("greeting: hello, Post Sockets"), "{text}");
}

/// Sends a 70,000-byte message and then "hello" on one carrier to the echo server; returns
/// the big message's outcome and the first echo.
fn oversized_then_hello(
    port: u16,
    ca: &std::path::Path,
    protocol: postsock::Protocol,
) -> (String, Vec<u8>) {
    use postsock::{Carrier, Configuration, Remote, Security};
    let root = std::fs::read(ca).expect("CA");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut config = Configuration::default();
        config.protocols(&[protocol]).security(Security {
            trusted_roots: vec![rustls::pki_types::CertificateDer::from(root)],
            ..Security::default()
        });
        let net = postsock::net::TokioNet::shared();
        let carrier = Carrier::initiate(net, Remote::new("localhost", port), config)
            .await
            .expect("carrier");
        let big = carrier.send(vec![7u8; 70_000]).await.expect("send big");
        carrier.send_bytes(&b"hello"[..]).await.expect("send hello");
        let wait = std::time::Duration::from_secs(20);
        let echo = tokio::time::timeout(wait, carrier.receive())
            .await
            .expect("an echo in time")
            .expect("no error")
            .expect("a message");
        let outcome = tokio::time::timeout(wait, big.outcome())
            .await
            .expect("an outcome in time");
        let _ = carrier.close().await;
        (format!("{outcome:?}").to_lowercase(), echo.data.to_vec())
    })
}
