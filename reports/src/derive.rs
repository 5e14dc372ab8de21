//! Deriving a run's metrics: the one place where what a run recorded ([`RunFacts`]) becomes
//! its [`Metrics`] and failover [`Gap`]s. The runner gathers the facts; everything computed
//! from them — message counts and latencies, TTFM and its physical limits, gaps after path
//! faults, path-event counts, establishment — is computed here.

use crate::model::{
    round_us, Direction, Establishment, Gap, MessageRecord, Metrics, PathEvent, PathEventKind,
};

/// What one run recorded, as the metrics need it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunFacts<'a> {
    /// Every message, both directions.
    pub messages: &'a [MessageRecord],
    /// When the client first called `initiate`, ms.
    pub initiated_ms: Option<f64>,
    /// When each of the client's carriers was initiated, ms.
    pub initiations: &'a [f64],
    /// Simulated duration, ms.
    pub sim_duration_ms: f64,
    /// Whether the client's last carrier resumed a TLS session, when known.
    pub resumed: Option<bool>,
    /// One-way latency of the client–server path, ms (with `protocol`, the physical TTFM
    /// limits follow).
    pub path_one_way_ms: Option<f64>,
    /// When the client's race can start at the earliest, ms: how long DNS takes to give it
    /// something to race (Happy Eyeballs' rules); part of every TTFM limit.
    pub resolution_ms: f64,
    /// The protocol of the client's carrier (`quic`, `tls-tcp`, `tcp`).
    pub protocol: Option<&'a str>,
    /// Whether later carriers may send their first message in early data (association kept,
    /// first message idempotent): their limit is then 0.5 RTT on QUIC (0-RTT), 1.5 RTT on
    /// TLS/TCP (TCP's handshake, then the ClientHello with TLS 1.3 early data).
    pub zero_rtt: bool,
    /// When faults struck the client's path, ms.
    pub path_faults_ms: &'a [f64],
    /// Path events of both ends.
    pub path_events: &'a [PathEvent],
    /// Carriers the server accepted.
    pub carriers_accepted: u64,
    /// Rendezvous workloads: whether either peer's carrier runs through the relay.
    pub relayed: Option<bool>,
    /// Rendezvous workloads: the client's time from its start to a ready carrier, ms.
    pub rendezvous_ms: Option<f64>,
    /// Rendezvous workloads: the server peer's time from its start to a ready carrier, ms.
    pub server_rendezvous_ms: Option<f64>,
    /// The client's race.
    pub establishment: Option<&'a Establishment>,
}

/// The metrics of a run and the gaps its path faults caused.
pub fn derive(f: &RunFacts) -> (Metrics, Vec<Gap>) {
    let messages = f.messages;
    let mut metrics = Metrics::compute(messages, f.initiated_ms, round_us(f.sim_duration_ms));
    // Time to first message of the last carrier: from its initiation to the first
    // client → server delivery after it.
    if let Some(&last) = f.initiations.last() {
        let first = messages
            .iter()
            .filter(|m| m.direction == Direction::ClientToServer)
            .filter_map(|m| m.delivered_ms.first().copied())
            .filter(|d| *d >= last)
            .fold(None, |acc: Option<f64>, d| {
                Some(acc.map_or(d, |a| a.min(d)))
            });
        metrics.ttfm_last_ms = first.map(|first| round_us(first - last));
    }
    metrics.resumed = f.resumed.map(u64::from);
    if let (Some(one_way), Some(protocol)) = (f.path_one_way_ms, f.protocol) {
        let rtt = one_way * 2.0;
        let fresh = if protocol == "quic" {
            1.5 * rtt
        } else {
            2.5 * rtt
        };
        metrics.ttfm_limit_ms = Some(round_us(f.resolution_ms + fresh));
        if f.initiations.len() > 1 {
            let limit = match (f.zero_rtt, protocol) {
                (true, "quic") => 0.5 * rtt,
                (true, "tls-tcp") => 1.5 * rtt,
                _ => fresh,
            };
            metrics.ttfm_last_limit_ms = Some(round_us(f.resolution_ms + limit));
        }
    }
    let gaps = gaps(messages, f.path_faults_ms);
    metrics.failover_gap_ms = gaps
        .iter()
        .map(|g| round_us(g.to_ms - g.from_ms))
        .reduce(f64::max);
    metrics.carriers_accepted = f.carriers_accepted;
    let count = |what| f.path_events.iter().filter(|e| e.event == what).count() as u64;
    metrics.handovers = count(PathEventKind::Handover);
    metrics.dormant = count(PathEventKind::Dormant);
    metrics.protocol_changes = count(PathEventKind::ProtocolChange);
    metrics.server_path_changes = count(PathEventKind::ServerPathChange);
    metrics.relayed = f.relayed.map(u64::from);
    metrics.rendezvous_ms = f.rendezvous_ms;
    metrics.server_rendezvous_ms = f.server_rendezvous_ms;
    if let Some(est) = f.establishment {
        metrics.attempts = est.attempts.len() as u64;
        metrics.established = u64::from(est.error.is_none());
    }
    (metrics, gaps)
}

/// After each path fault: the longest stretch without a client → server delivery, until the
/// next path fault (or the end of the run). Deliveries already past the broken link when it
/// broke count.
fn gaps(messages: &[MessageRecord], path_faults_ms: &[f64]) -> Vec<Gap> {
    let mut deliveries: Vec<f64> = messages
        .iter()
        .filter(|m| m.direction == Direction::ClientToServer)
        .flat_map(|m| m.delivered_ms.iter().copied())
        .collect();
    deliveries.sort_by(f64::total_cmp);
    let mut fault_times = path_faults_ms.to_vec();
    fault_times.dedup();
    fault_times
        .iter()
        .enumerate()
        .filter_map(|(k, &t)| {
            let until = fault_times.get(k + 1).copied().unwrap_or(f64::MAX);
            let mut prev = t;
            let mut longest: Option<(f64, f64)> = None;
            for &d in deliveries.iter().filter(|&&d| d >= t && d <= until) {
                if longest.is_none_or(|(a, b)| d - prev > b - a) {
                    longest = Some((prev, d));
                }
                prev = d;
            }
            longest.map(|(from_ms, to_ms)| Gap {
                fault_ms: t,
                from_ms,
                to_ms,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(id: u64, sent: f64, delivered: f64) -> MessageRecord {
        let mut m = MessageRecord::new(Direction::ClientToServer, id, 100, sent);
        m.delivered_ms.push(delivered);
        m
    }

    #[test]
    fn the_gap_is_the_longest_silence_after_each_path_fault() {
        let messages: Vec<_> = [100.0, 200.0, 300.0, 1300.0, 1400.0, 5000.0, 5010.0]
            .iter()
            .enumerate()
            .map(|(i, &d)| up(i as u64, d - 10.0, d))
            .collect();
        let facts = RunFacts {
            messages: &messages,
            path_faults_ms: &[250.0, 4000.0],
            ..RunFacts::default()
        };
        let (m, gaps) = derive(&facts);
        // After 250: 300 → 1300 is the longest (1000); after 4000: 4000 → 5000.
        assert_eq!(gaps.len(), 2);
        assert_eq!((gaps[0].from_ms, gaps[0].to_ms), (300.0, 1300.0));
        assert_eq!((gaps[1].from_ms, gaps[1].to_ms), (4000.0, 5000.0));
        assert_eq!(m.failover_gap_ms, Some(1000.0));
    }

    #[test]
    fn ttfm_limits_follow_protocol_rtt_and_zero_rtt() {
        let messages = [up(0, 0.0, 35.0), up(1, 1000.0, 1012.0)];
        let facts = RunFacts {
            messages: &messages,
            initiated_ms: Some(0.0),
            initiations: &[0.0, 1000.0],
            path_one_way_ms: Some(10.0),
            protocol: Some("quic"),
            zero_rtt: true,
            ..RunFacts::default()
        };
        let (m, _) = derive(&facts);
        assert_eq!(m.ttfm_ms, Some(35.0));
        assert_eq!(m.ttfm_last_ms, Some(12.0));
        assert_eq!(m.ttfm_limit_ms, Some(30.0), "1.5 RTT of 20 ms");
        assert_eq!(m.ttfm_last_limit_ms, Some(10.0), "0.5 RTT in 0-RTT");
        // DNS first: every limit starts when the race can.
        let (m, _) = derive(&RunFacts {
            resolution_ms: 60.0,
            ..facts
        });
        assert_eq!(
            (m.ttfm_limit_ms, m.ttfm_last_limit_ms),
            (Some(90.0), Some(70.0))
        );
        let tls = RunFacts {
            protocol: Some("tls-tcp"),
            zero_rtt: false,
            ..facts
        };
        let (m, _) = derive(&tls);
        assert_eq!(
            (m.ttfm_limit_ms, m.ttfm_last_limit_ms),
            (Some(50.0), Some(50.0))
        );
        let early = RunFacts {
            zero_rtt: true,
            ..tls
        };
        let (m, _) = derive(&early);
        assert_eq!(
            m.ttfm_last_limit_ms,
            Some(30.0),
            "1.5 RTT in TLS early data"
        );
    }

    #[test]
    fn path_events_are_counted_by_kind() {
        let ev = |event| PathEvent {
            at_ms: 0.0,
            event,
            interface: None,
            reason: None,
        };
        let events = [
            ev(PathEventKind::Start),
            ev(PathEventKind::Handover),
            ev(PathEventKind::Dormant),
            ev(PathEventKind::Handover),
            ev(PathEventKind::ServerPathChange),
        ];
        let (m, _) = derive(&RunFacts {
            path_events: &events,
            ..RunFacts::default()
        });
        assert_eq!((m.handovers, m.dormant, m.server_path_changes), (2, 1, 1));
    }
}
