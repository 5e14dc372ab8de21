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
            .args(["--listen", "127.0.0.1:0", "--ca-out"])
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
