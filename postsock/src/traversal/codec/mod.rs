//! The wire formats of NAT traversal, without I/O: STUN messages (RFC 8489) and TURN
//! messages, ChannelData and indications (RFC 8656), on the `stun_codec` crate.

pub(crate) mod stun;
pub(crate) mod turn;
