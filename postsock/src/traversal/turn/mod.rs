//! TURN (RFC 8656) over UDP: a relay for peers whose NATs defeat hole punching.
//!
//! - [`allocate`] is the client: from a [`Demux`](crate::traversal::stun::Demux)'s socket (the one QUIC uses) it asks a TURN
//!   server for an allocation with long-term credentials (the 401 / REALM / NONCE exchange,
//!   MESSAGE-INTEGRITY on every request, 438 Stale Nonce handled), installs permissions for
//!   the peer's addresses, and hands the [`Demux`](crate::traversal::stun::Demux) the relay so that traffic to a relayed peer
//!   is wrapped (ChannelData once a channel is bound, Send indications before) and traffic
//!   from the relay is unwrapped (ChannelData, Data indications) before QUIC or the
//!   connectivity checks see it. [`Allocation::keep`] refreshes the allocation, permissions
//!   and channels, binds a channel for every peer QUIC reaches through the relay, and frees
//!   the allocation (Refresh with LIFETIME 0) when the socket goes away. It works against
//!   coturn (tested) and against [`TurnServer`].
//! - [`TurnServer`] is the same subset served: Allocate (UDP only), Refresh,
//!   CreatePermission, ChannelBind, Send/Data indications and ChannelData, Binding (so it is
//!   a STUN server too), long-term credentials. It is what the simulator's relay host runs
//!   and what `postsock turn-server` runs. Malformed, unauthenticated and unpermitted
//!   datagrams are dropped and counted; nothing reaches a peer without a permission.

mod client;
mod handler;
mod server;

use std::time::Duration;

pub use crate::traversal::codec::turn::{
    channel_data, is_channel_data, parse_channel_data, send_indication, MAX_MESSAGE,
};
pub use client::{allocate, Allocation, TurnConfig};
pub use handler::{TurnServerConfig, TurnStats};
pub use server::TurnServer;

/// How long a permission lasts (RFC 8656 §9).
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// How long a channel binding lasts (RFC 8656 §12).
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// The allocation lifetime asked for and granted by default (RFC 8656 §3.2).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// The longest allocation lifetime [`TurnServer`] grants.
pub const MAX_LIFETIME: Duration = Duration::from_secs(3600);
