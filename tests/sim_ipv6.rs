//! IPv6 in the simulator: dual-stack and IPv6-only hosts, sockets of each family, the IPv6
//! core that routes between them, black-holed IPv6, and DNS answers per family with their
//! delays.

mod common;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postsock::net::{Family, Net};
use sim::{IpVersions, World, WorldSpec};

use common::sim_host as host;

fn v6(n: u16) -> IpAddr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n).into()
}

fn world(client: IpVersions, server: IpVersions, blackhole: bool) -> WorldSpec {
    let mut c = host("client", None, 10);
    c.ip = client;
    c.ipv6_blackhole = blackhole;
    let mut s = host("server", None, 10);
    s.ip = server;
    WorldSpec {
        hosts: vec![c, s],
        gateways: vec![],
        dns: sim::DnsSpec {
            a_ms: 5,
            aaaa_ms: 30,
            aaaa_lost: false,
        },
    }
}

type Log = Arc<Mutex<Vec<String>>>;

/// Runs an echo server bound to `bind` on `server`, and `client` against it; returns the log.
fn run<F, Fut>(spec: &WorldSpec, bind: SocketAddr, client: F) -> Vec<String>
where
    F: FnOnce(Arc<dyn Net>, Log) -> Fut,
    Fut: std::future::Future<Output = turmoil::Result> + 'static,
{
    let mut world = World::new(spec, 1, Duration::from_secs(10)).expect("world");
    let server: Arc<dyn Net> = world.net("server").expect("net");
    world
        .host("server", move || {
            let server = server.clone();
            async move {
                let socket = server.bind_udp(bind).await?;
                loop {
                    let (from, data) = postsock::net::recv_from(socket.as_ref()).await?;
                    postsock::net::send_to(socket.as_ref(), from, &data).await?;
                }
            }
        })
        .expect("host");
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    let net: Arc<dyn Net> = world.net("client").expect("net");
    world
        .client("client", client(net, log.clone()))
        .expect("client");
    while !world.step().expect("step") {}
    let out = log.lock().expect("lock").clone();
    out
}

/// Sends "ping" from `local` to `to` and waits 500 ms for the echo: the source it came from,
/// or "silence".
async fn ping(net: &Arc<dyn Net>, local: SocketAddr, to: SocketAddr) -> String {
    let socket = match net.bind_udp(local).await {
        Ok(s) => s,
        Err(e) => return format!("bind {local}: {:?}", e.kind()),
    };
    let _ = postsock::net::send_to(socket.as_ref(), to, b"ping").await;
    match tokio::time::timeout(
        Duration::from_millis(500),
        postsock::net::recv_from(socket.as_ref()),
    )
    .await
    {
        Ok(Ok((from, data))) => format!("{} from {from}", String::from_utf8_lossy(&data)),
        _ => "silence".into(),
    }
}

#[test]
fn a_dual_stack_server_on_the_unspecified_ipv6_address_answers_both_families() {
    let spec = world(IpVersions::Dual, IpVersions::Dual, false);
    let log = run(
        &spec,
        (Ipv6Addr::UNSPECIFIED, 9000).into(),
        |net, log| async move {
            let any6: SocketAddr = (Ipv6Addr::UNSPECIFIED, 0).into();
            let any4: SocketAddr = ([0, 0, 0, 0], 0).into();
            let to6: SocketAddr = (v6(2), 9000).into();
            let to4: SocketAddr = ([192, 168, 0, 2], 9000).into();
            let r = vec![
                ping(&net, any6, to6).await,
                ping(&net, any4, to4).await,
                // An IPv4 socket cannot send to an IPv6 address.
                ping(&net, any4, to6).await,
            ];
            log.lock().expect("lock").extend(r);
            Ok(())
        },
    );
    assert_eq!(
        log,
        [
            "ping from [2001:db8::2]:9000",
            "ping from 192.168.0.2:9000",
            "silence"
        ]
    );
}

#[test]
fn an_ipv4_socket_hears_no_ipv6_and_ipv6_only_hosts_have_no_ipv4() {
    // The server listens on IPv4 only: IPv6 datagrams to its port find nobody.
    let spec = world(IpVersions::Ipv6, IpVersions::Dual, false);
    let log = run(&spec, ([0, 0, 0, 0], 9000).into(), |net, log| async move {
        let r = vec![
            ping(
                &net,
                (Ipv6Addr::UNSPECIFIED, 0).into(),
                (v6(2), 9000).into(),
            )
            .await,
            ping(
                &net,
                ([0, 0, 0, 0], 0).into(),
                ([192, 168, 0, 2], 9000).into(),
            )
            .await,
        ];
        let names = net.interfaces();
        log.lock().expect("lock").extend(r);
        log.lock()
            .expect("lock")
            .push(format!("{:?}", names[0].addrs));
        Ok(())
    });
    assert_eq!(
        log,
        [
            "silence",
            "bind 0.0.0.0:0: AddrNotAvailable",
            "[2001:db8::1]"
        ]
    );
}

#[test]
fn black_holed_ipv6_loses_every_ipv6_datagram_but_ipv4_works() {
    let spec = world(IpVersions::Dual, IpVersions::Dual, true);
    let log = run(
        &spec,
        (Ipv6Addr::UNSPECIFIED, 9000).into(),
        |net, log| async move {
            let r = vec![
                ping(&net, (v6(1), 0).into(), (v6(2), 9000).into()).await,
                ping(
                    &net,
                    ([0, 0, 0, 0], 0).into(),
                    ([192, 168, 0, 2], 9000).into(),
                )
                .await,
            ];
            log.lock().expect("lock").extend(r);
            Ok(())
        },
    );
    assert_eq!(log, ["silence", "ping from 192.168.0.2:9000"]);
}

#[test]
fn dns_answers_each_family_after_its_delay() {
    let spec = world(IpVersions::Ipv4, IpVersions::Dual, false);
    let log = run(
        &spec,
        (Ipv6Addr::UNSPECIFIED, 9000).into(),
        |net, log| async move {
            let t0 = tokio::time::Instant::now();
            let aaaa = net.resolve_family("server", 443, Family::V6).await?;
            let t_aaaa = t0.elapsed().as_millis();
            let t1 = tokio::time::Instant::now();
            let a = net.resolve_family("server", 443, Family::V4).await?;
            let t_a = t1.elapsed().as_millis();
            let t2 = tokio::time::Instant::now();
            let both = net.resolve("server", 443).await?;
            let t_both = t2.elapsed().as_millis();
            let missing = net.resolve_family("nobody", 443, Family::V4).await;
            log.lock().expect("lock").extend([
                format!("AAAA {aaaa:?} after {t_aaaa} ms"),
                format!("A {a:?} after {t_a} ms"),
                format!("both {both:?} after {t_both} ms"),
                format!("nobody: {:?}", missing.map_err(|e| e.kind())),
            ]);
            Ok(())
        },
    );
    assert_eq!(
        log,
        [
            "AAAA [[2001:db8::2]:443] after 30 ms",
            "A [192.168.0.2:443] after 5 ms",
            "both [[2001:db8::2]:443, 192.168.0.2:443] after 30 ms",
            "nobody: Err(NotFound)",
        ]
    );
}

#[test]
fn a_lost_aaaa_query_never_answers_and_a_full_lookup_gives_up_on_it() {
    let mut spec = world(IpVersions::Dual, IpVersions::Dual, false);
    spec.dns.aaaa_lost = true;
    let log = run(
        &spec,
        (Ipv6Addr::UNSPECIFIED, 9000).into(),
        |net, log| async move {
            let aaaa = tokio::time::timeout(
                Duration::from_secs(3),
                net.resolve_family("server", 443, Family::V6),
            )
            .await;
            let t0 = tokio::time::Instant::now();
            let both = net.resolve("server", 443).await?;
            let waited = t0.elapsed().as_millis();
            log.lock().expect("lock").extend([
                format!("AAAA answered: {}", aaaa.is_ok()),
                format!("both {both:?} after {waited} ms"),
            ]);
            Ok(())
        },
    );
    assert_eq!(
        log,
        [
            "AAAA answered: false",
            "both [192.168.0.2:443] after 5000 ms"
        ]
    );
}

#[test]
fn ipv6_is_refused_where_the_simulator_cannot_route_it() {
    let mut spec = world(IpVersions::Dual, IpVersions::Ipv4, false);
    spec.hosts[0].gateway = Some("nat".into());
    spec.gateways
        .push(sim::GatewaySpec::nat("nat", sim::NatPreset::FullCone));
    let e = World::new(&spec, 1, Duration::from_secs(1)).expect_err("IPv6 behind a NAT");
    assert!(e.to_string().contains("public single-interface"), "{e}");
    let mut spec = world(IpVersions::Ipv4, IpVersions::Ipv4, true);
    spec.hosts[0].ip = IpVersions::Ipv4;
    let e = World::new(&spec, 1, Duration::from_secs(1)).expect_err("black hole without IPv6");
    assert!(e.to_string().contains("ipv6_blackhole"), "{e}");
    let spec = world(IpVersions::Ipv4, IpVersions::Dual, false);
    let broken = |host: &str| sim::Fault::Ipv6 {
        host: host.into(),
        working: false,
    };
    let e = spec
        .check_fault(&broken("client"))
        .expect_err("no IPv6 to break");
    assert!(e.to_string().contains("has no IPv6 address"), "{e}");
    spec.check_fault(&broken("server"))
        .expect("the server has IPv6");
    let mut spec = world(IpVersions::Dual, IpVersions::Dual, false);
    spec.dns.aaaa_ms = 60_001;
    let e = World::new(&spec, 1, Duration::from_secs(1)).expect_err("DNS delay too long");
    assert!(e.to_string().contains("dns.aaaa_ms"), "{e}");
}
