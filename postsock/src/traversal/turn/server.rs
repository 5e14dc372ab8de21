//! The TURN server: [`TurnServer`] runs the [`handler`](super::handler)'s decisions on
//! sockets (one for clients, one relay socket per allocation).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::handler::{Action, Handler, TurnServerConfig, TurnStats};
use crate::net::{AsyncUdpSocket, Net};
use crate::traversal::stun;
use crate::ConfigError;
use crate::Result;

/// A TURN server (UDP; see the module documentation for what it serves).
pub type TurnServer = crate::traversal::stun::Served<TurnStats>;

impl TurnServer {
    /// Binds at `local` through `net` and starts serving.
    pub async fn bind(
        net: Arc<dyn Net>,
        local: SocketAddr,
        config: TurnServerConfig,
    ) -> Result<Self> {
        let relay_ip = match (config.relay_ip, local.ip().is_unspecified()) {
            (Some(ip), _) => ip,
            (None, false) => local.ip(),
            (None, true) => return Err(ConfigError::TurnRelayAddress.into()),
        };
        if config.users.is_empty() {
            return Err(ConfigError::TurnNoUser.into());
        }
        let (socket, local) = stun::bind_server_socket(net.as_ref(), local).await?;
        let stats = Arc::new(TurnStats::default());
        let nonce = crate::util::hex(&stun::transaction_id(net.as_ref()));
        let server = Server {
            net,
            socket,
            relay_ip,
            handler: Handler::new(config, nonce, stats.clone()),
            relays: BTreeMap::new(),
        };
        let task = tokio::spawn(server.serve());
        Ok(crate::traversal::stun::Served::new(local, stats, task))
    }
}

/// A relay socket of an allocation, and the task reading what peers send to it.
struct Relay {
    socket: Arc<dyn AsyncUdpSocket>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The driver: the server socket, the relay sockets, and the [`Handler`] deciding.
struct Server {
    net: Arc<dyn Net>,
    socket: Arc<dyn AsyncUdpSocket>,
    relay_ip: IpAddr,
    handler: Handler,
    /// Relayed address → its socket.
    relays: BTreeMap<SocketAddr, Relay>,
}

/// A datagram a peer sent to a relayed address.
struct FromPeer {
    relayed: SocketAddr,
    peer: SocketAddr,
    data: Bytes,
}

impl Server {
    async fn serve(mut self) {
        let (peer_tx, mut peer_rx) = mpsc::unbounded_channel::<FromPeer>();
        loop {
            let expiry = self.handler.next_expiry();
            let actions = tokio::select! {
                biased;
                got = stun::recv_from(self.socket.as_ref()) => {
                    let Ok((from, data)) = got else { return };
                    self.handler.on_client(Instant::now(), from, &data)
                }
                Some(p) = peer_rx.recv() => {
                    let net = self.net.clone();
                    let txid = || stun::transaction_id(net.as_ref());
                    self.handler.on_peer(Instant::now(), p.relayed, p.peer, &p.data, txid).into_iter().collect()
                }
                _ = crate::util::until_opt(expiry) => self.handler.expire(Instant::now()),
            };
            self.act(actions, &peer_tx).await;
        }
    }

    /// Carries out the handler's actions (an allocation's bound relay may bring more).
    async fn act(&mut self, actions: Vec<Action>, peers: &mpsc::UnboundedSender<FromPeer>) {
        let mut queue = std::collections::VecDeque::from(actions);
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Reply { to, data } => {
                    let _ = stun::send_to(self.socket.as_ref(), to, &data).await;
                }
                Action::Relay {
                    relayed,
                    peer,
                    data,
                } => {
                    if let Some(r) = self.relays.get(&relayed) {
                        let _ = stun::send_to(r.socket.as_ref(), peer, &data).await;
                    }
                }
                Action::Release { relayed } => {
                    self.relays.remove(&relayed);
                }
                Action::BindRelay(pending) => {
                    let bound = self.bind_relay(peers, pending.even_port).await;
                    queue.extend(self.handler.allocated(Instant::now(), pending, bound));
                }
            }
        }
    }

    /// Binds a relay socket (an even port when asked) and starts reading what peers send to
    /// it.
    async fn bind_relay(
        &mut self,
        peers: &mpsc::UnboundedSender<FromPeer>,
        even_port: bool,
    ) -> std::io::Result<SocketAddr> {
        // EVEN-PORT: ephemeral ports come as the system hands them out; keep binding until
        // one is even (odd ones are released at once), a bounded number of times.
        let mut tries = 0;
        let socket = loop {
            let socket = self.net.bind_udp(SocketAddr::new(self.relay_ip, 0)).await?;
            tries += 1;
            if !even_port || socket.local_addr()?.port() % 2 == 0 {
                break socket;
            }
            if tries == EVEN_PORT_TRIES {
                return Err(std::io::Error::other("no even relay port"));
            }
        };
        let relayed = socket.local_addr()?;
        let reader = {
            let (socket, peers) = (socket.clone(), peers.clone());
            tokio::spawn(async move {
                while let Ok((peer, data)) = stun::recv_from(socket.as_ref()).await {
                    if peers
                        .send(FromPeer {
                            relayed,
                            peer,
                            data,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            })
        };
        self.relays.insert(relayed, Relay { socket, reader });
        Ok(relayed)
    }
}

/// How many relay sockets an EVEN-PORT allocation binds at most to find an even port.
const EVEN_PORT_TRIES: usize = 16;
