//! Helpers for the testbed's tests: simulator hosts, the postsock binary, coturn, scenarios;
//! and (shared with postsock's own tests) plain rustls configurations for peers that know
//! only docs/WIRE.md.

#![allow(dead_code)]

// The wire-level helpers are postsock's own test helpers, shared.
#[path = "../../postsock/tests/common/mod.rs"]
mod wire;
#[allow(unused_imports)]
pub use wire::*;

/// A simulated single-interface host `latency_ms` from its gateway (or the core).
pub fn sim_host(name: &str, gateway: Option<&str>, latency_ms: u64) -> sim::HostSpec {
    sim::HostSpec::new(name, gateway, latency_ms)
}

/// A simulated NAT gateway `name`, 5 ms from the core, behaving as `preset`.
pub fn sim_nat(name: &str, preset: sim::NatPreset) -> sim::GatewaySpec {
    sim::GatewaySpec::nat(name, preset)
}

/// The `postsock` binary built for these tests.
pub fn postsock_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_postsock"))
}

/// A UDP port free on loopback just now.
pub fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    s.local_addr().expect("addr").port()
}

/// Kills the child process when dropped.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real coturn on loopback, with a generated configuration: realm `postsock.test`, user
/// [`Coturn::USER`] / [`Coturn::PASSWORD`], relay ports in [`Coturn::RELAY_PORTS`], loopback
/// peers allowed (the peers of the tests are on loopback). Stopped when dropped.
pub struct Coturn {
    port: u16,
    _child: Child,
    /// Its configuration, pid file and user database; removed after it stopped (fields drop
    /// in order).
    _dir: TempDir,
}

impl Coturn {
    /// The user name.
    pub const USER: &'static str = "postsock";
    /// The password.
    pub const PASSWORD: &'static str = "postsock-secret";
    /// The relay port range coturn is told to use.
    pub const RELAY_PORTS: std::ops::RangeInclusive<u16> = 49_160..=49_260;

    /// Starts it. coturn is a test dependency: `.ci/test` (the README's test command)
    /// installs it.
    pub fn start() -> Self {
        let turnserver = ["/usr/bin/turnserver", "/usr/sbin/turnserver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("coturn's turnserver is not installed: run `bash .ci/test`, which installs it");
        let port = free_udp_port();
        let dir = TempDir::new(&format!("coturn-{port}"));
        let config = dir.join("turnserver.conf");
        std::fs::write(
            &config,
            format!(
                "listening-ip=127.0.0.1\nrelay-ip=127.0.0.1\nlistening-port={port}\n\
                 min-port={}\nmax-port={}\nrealm=postsock.test\nuser={}:{}\nlt-cred-mech\n\
                 allow-loopback-peers\nno-tls\nno-dtls\nno-tcp-relay\nno-cli\nfingerprint\n\
                 pidfile={}\nuserdb={}\nlog-file=stdout\nsimple-log\n",
                Self::RELAY_PORTS.start(),
                Self::RELAY_PORTS.end(),
                Self::USER,
                Self::PASSWORD,
                dir.join("turnserver.pid").display(),
                dir.join("turndb").display(),
            ),
        )
        .expect("config");
        let child = Child(
            std::process::Command::new(turnserver)
                .args(["-c", &config.to_string_lossy()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn turnserver"),
        );
        let coturn = Coturn {
            port,
            _child: child,
            _dir: dir,
        };
        coturn.wait_ready();
        coturn
    }

    /// Waits (up to 10 s) until it answers a STUN Binding request.
    fn wait_ready(&self) {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        socket
            .set_read_timeout(Some(std::time::Duration::from_millis(100)))
            .expect("timeout");
        let request = postsock::traversal::stun::binding_request([5; 12]);
        let mut buf = [0u8; 1500];
        for _ in 0..100 {
            let _ = socket.send_to(&request, self.addr());
            if let Ok((n, _)) = socket.recv_from(&mut buf) {
                if postsock::traversal::stun::reflexive_address(&buf[..n], [5; 12]).is_some() {
                    return;
                }
            }
        }
        panic!("coturn did not answer STUN within 10 s");
    }

    /// Where it listens.
    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }
}

/// The shipped scenario `name` (say `nat/quic-reboot`).
pub fn scenario(name: &str) -> testbed::Scenario {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    testbed::suite::load_one(&dir, name).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs scenario `name` with each of `seeds`; every run must pass its expectations.
pub fn passing_runs(name: &str, seeds: std::ops::RangeInclusive<u64>) -> Vec<reports::Report> {
    let s = scenario(name);
    seeds
        .map(|seed| {
            let r = testbed::run(&s, seed).report;
            assert!(
                r.passed,
                "{name} seed {seed}: {:?} {:?}",
                r.error, r.expectations
            );
            r
        })
        .collect()
}

/// [`passing_runs`] with seeds 1 to 4, each also delivering every message exactly once,
/// intact.
pub fn lossless_runs(name: &str) -> Vec<reports::Report> {
    let runs = passing_runs(name, 1..=4);
    for (r, seed) in runs.iter().zip(1..) {
        let m = &r.metrics;
        assert_eq!(m.messages_delivered, m.messages_sent, "{name} seed {seed}");
        assert_eq!(
            m.messages_lost + m.messages_duplicated + m.messages_corrupted,
            0,
            "{name} seed {seed}"
        );
    }
    runs
}

/// Makes sure `binary` is on the PATH, installing Debian's `package` (apt-get, as root or
/// through sudo) if it is not; returns the binary's name.
pub fn ensure_installed(binary: &'static str, package: &str) -> &'static str {
    let present = || {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {binary}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !present() {
        let sudo = if is_root() { "" } else { "sudo " };
        let script = format!(
            "{sudo}apt-get update && DEBIAN_FRONTEND=noninteractive {sudo}apt-get install -y {package}"
        );
        let ok = std::process::Command::new("sh")
            .args(["-c", &script])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok && present(),
            "{binary} is missing and apt-get could not install {package}"
        );
    }
    binary
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"))
}
