//! Associations survive the process: a client process saves its association file (racing
//! cache and TLS 1.3 session tickets), and a second client process loads it and resumes —
//! QUIC in 0-RTT, TLS/TCP with its first message in TLS early data — against the same
//! listener, over real loopback sockets.
//!
//! The client processes are this test binary run again with `--ignored --exact
//! client_process` and its arguments in the environment.

mod common;

use common::TempDir;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use postsock::net::{Net, TokioNet};
use postsock::{
    Associations, Carrier, Configuration, Message, Protocol, Remote, Security, SendStatus, TestCa,
};
use rustls::pki_types::CertificateDer;

/// The environment variable carrying a client process's arguments.
const CHILD: &str = "POSTSOCK_TWO_PROCESS_CLIENT";

/// What one client process saw.
#[derive(Debug, PartialEq)]
struct Seen {
    protocol: String,
    resumed: Option<bool>,
    early_data: Option<bool>,
}

/// The client process: loads the association file if there is one, initiates to the
/// listener with an idempotent first message, checks its echo and that of a second
/// message, closes and saves the file.
#[test]
#[ignore = "the client process of the two-process tests, which run it"]
fn client_process() {
    let args = std::env::var(CHILD).expect("run by the two-process tests");
    let [port, protocol, ca, file]: [&str; 4] = args
        .split('|')
        .collect::<Vec<_>>()
        .try_into()
        .expect("port|protocol|ca|file");
    let port: u16 = port.parse().expect("port");
    let protocols = match protocol {
        "quic" => vec![Protocol::Quic],
        "tls-tcp" => vec![Protocol::TlsTcp],
        other => panic!("unknown protocol {other}"),
    };
    let file = Path::new(file);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let store = Associations::new(Duration::from_secs(600));
        if file.exists() {
            store.load(file).expect("load the association file");
        }
        let mut config = Configuration::default();
        config.protocols(&protocols).security(Security {
            trusted_roots: vec![CertificateDer::from(std::fs::read(ca).expect("ca"))],
            ..Security::default()
        });
        config.associations = Some(store.clone());
        let first = Message::new(b"first, idempotent".to_vec()).idempotent();
        let (carrier, handle) = Carrier::initiate_with(
            TokioNet::shared(),
            Remote::new("localhost", port),
            config,
            first,
        )
        .await
        .expect("initiate");
        assert_eq!(handle.outcome().await, SendStatus::Acked);
        let echo = carrier.receive().await.expect("receive").expect("echo");
        assert_eq!(&echo.data[..], b"first, idempotent");
        // The next echo is the next message's: the first arrived exactly once, even when
        // its early data was rejected and it went again.
        let second = carrier.send(b"second".to_vec()).await.expect("send");
        let echo = carrier.receive().await.expect("receive").expect("echo");
        assert_eq!(
            &echo.data[..],
            b"second",
            "a duplicate of the first message"
        );
        assert_eq!(second.outcome().await, SendStatus::Acked);
        println!(
            "SEEN protocol={} resumed={:?} early_data={:?}",
            carrier.protocol(),
            carrier.resumed(),
            carrier.early_data()
        );
        carrier.close().await.expect("close");
        store.save(file).expect("save the association file");
    });
}

/// Runs one client process and returns what it saw.
fn run_client(port: u16, protocol: &str, ca: &Path, file: &Path) -> Seen {
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "client_process", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(
            CHILD,
            format!("{port}|{protocol}|{}|{}", ca.display(), file.display()),
        )
        .output()
        .expect("run the client process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client process failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("SEEN ").map(|(_, seen)| seen))
        .unwrap_or_else(|| panic!("no SEEN line in:\n{stdout}"));
    let field = |name: &str| {
        line.split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {line}"))
            .to_string()
    };
    let opt = |v: String| match v.as_str() {
        "Some(true)" => Some(true),
        "Some(false)" => Some(false),
        "None" => None,
        other => panic!("unexpected {other}"),
    };
    Seen {
        protocol: field("protocol"),
        resumed: opt(field("resumed")),
        early_data: opt(field("early_data")),
    }
}

/// A listener on loopback for QUIC and TLS/TCP that echoes every message; its port.
fn echo_server(runtime: &tokio::runtime::Runtime, ca: &TestCa) -> u16 {
    let net: Arc<dyn Net> = TokioNet::shared();
    let (mut server, _) = common::postsock_configs(ca, Protocol::Quic);
    server.protocols(&[Protocol::Quic, Protocol::TlsTcp]);
    runtime.block_on(common::echo_listener(&net, server))
}

/// What every test here starts with: a runtime, a CA, a scratch directory and the CA's root
/// in a file there (for the client processes).
struct Setup {
    runtime: tokio::runtime::Runtime,
    ca: TestCa,
    dir: TempDir,
    ca_file: PathBuf,
}

fn setup(name: &str) -> Setup {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let ca = TestCa::new("two-process CA").expect("ca");
    let dir = scratch(name);
    let ca_file = dir.join("ca.der");
    std::fs::write(&ca_file, ca.root().as_ref()).expect("ca file");
    Setup {
        runtime,
        ca,
        dir,
        ca_file,
    }
}

fn scratch(name: &str) -> TempDir {
    TempDir::new(&format!("two-{name}"))
}

#[test]
fn a_second_process_resumes_in_0rtt_from_the_association_file() {
    let Setup {
        runtime,
        ca,
        dir,
        ca_file,
    } = setup("resume");
    let port = echo_server(&runtime, &ca);
    for (protocol, name) in [(Protocol::Quic, "quic"), (Protocol::TlsTcp, "tls-tcp")] {
        let file = dir.join(format!("associations-{name}.json"));
        let first = run_client(port, name, &ca_file, &file);
        assert_eq!(
            first,
            Seen {
                protocol: protocol.to_string(),
                resumed: Some(false),
                early_data: None,
            },
            "the first process makes a full handshake"
        );
        let second = run_client(port, name, &ca_file, &file);
        assert_eq!(
            second,
            Seen {
                protocol: protocol.to_string(),
                resumed: Some(true),
                early_data: Some(true),
            },
            "the second process resumes from the file, its first message in early data"
        );
        // Without the file a process starts over.
        std::fs::remove_file(&file).expect("remove");
        let third = run_client(port, name, &ca_file, &file);
        assert_eq!(third.resumed, Some(false), "{name}");
    }
}

#[test]
fn tickets_saved_under_other_roots_are_not_used() {
    let Setup {
        runtime,
        ca,
        dir,
        ca_file,
    } = setup("trust");
    let port = echo_server(&runtime, &ca);
    let file = dir.join("associations.json");
    assert_eq!(
        run_client(port, "tls-tcp", &ca_file, &file).resumed,
        Some(false)
    );
    // Tickets saved under another trust (other roots, another server-name rule) are not
    // restored: the fingerprint in the file no longer matches the client's.
    let mut text = std::fs::read_to_string(&file).expect("read");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    let trust = json["associations"][0]["sessions"]["trust"]
        .as_str()
        .expect("a trust fingerprint")
        .to_string();
    text = text.replace(&trust, "roots-0000000000000000");
    std::fs::write(&file, text).expect("write");
    let seen = run_client(port, "tls-tcp", &ca_file, &file);
    assert_eq!((seen.resumed, seen.early_data), (Some(false), None));
}

#[test]
fn tickets_a_restarted_server_no_longer_knows_cost_a_full_handshake_and_lose_nothing() {
    let Setup {
        runtime,
        ca,
        dir,
        ca_file,
    } = setup("restart");
    let before = echo_server(&runtime, &ca);
    // The same server after a restart: same name and certificate authority, new session
    // state (its listener is new), reached at another port.
    let after = echo_server(&runtime, &ca);
    for (protocol, name) in [(Protocol::Quic, "quic"), (Protocol::TlsTcp, "tls-tcp")] {
        let file = dir.join(format!("associations-{name}.json"));
        assert_eq!(
            run_client(before, name, &ca_file, &file).resumed,
            Some(false)
        );
        // The file now names the restarted server: its tickets are stale there.
        let text = std::fs::read_to_string(&file).expect("read");
        let moved = text.replace(
            &format!("\"localhost:{before}\""),
            &format!("\"localhost:{after}\""),
        );
        assert_ne!(text, moved, "the association is keyed by host:port");
        std::fs::write(&file, moved).expect("write");
        // The early data is rejected and the message goes again after the handshake: the
        // client process checks it is echoed once and acknowledged.
        assert_eq!(
            run_client(after, name, &ca_file, &file),
            Seen {
                protocol: protocol.to_string(),
                resumed: Some(false),
                early_data: Some(false),
            },
            "{name}"
        );
    }
}
