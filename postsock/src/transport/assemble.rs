//! Reassembly of received messages and partial delivery, shared by every transport.

use bytes::{Bytes, BytesMut};

use crate::Violation;
use crate::{Error, Event, MessageId, Received, ReceivedPartial};

/// How received messages are handed to the application.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReceiveLimits {
    /// Largest message accepted; a bigger one is a receive error for that message.
    pub max_message_size: usize,
    /// Deliver a message in parts once at least this many of its bytes are waiting.
    pub min_incomplete: Option<usize>,
    /// Deliver no part (or message) larger than this; longer messages come in parts.
    pub max_length: Option<usize>,
}

impl ReceiveLimits {
    pub(crate) fn from_config(config: &crate::Configuration) -> Self {
        ReceiveLimits {
            max_message_size: config.max_message_size,
            min_incomplete: config.receive_min_incomplete,
            max_length: config.receive_max_length.map(|m| m.max(1)),
        }
    }
}

/// One message being received.
#[derive(Debug)]
pub(crate) struct Assembly {
    id: MessageId,
    buf: BytesMut,
    /// Whole-message delivery keeps the pieces and joins them once, at the end; a message
    /// that came in one piece goes up as it is (no copy, no list).
    first: Option<Bytes>,
    pieces: Vec<Bytes>,
    /// Bytes already delivered in parts.
    delivered: u64,
    total: usize,
    reliable: bool,
}

impl Assembly {
    pub(crate) fn new(id: MessageId, reliable: bool) -> Self {
        Assembly {
            id,
            buf: BytesMut::new(),
            first: None,
            pieces: Vec::new(),
            delivered: 0,
            total: 0,
            reliable,
        }
    }

    /// Whether no byte of this message has arrived yet.
    pub(crate) fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Whether part of this message has already reached the application.
    pub(crate) fn partly_delivered(&self) -> bool {
        self.delivered > 0
    }

    fn part(&mut self, data: Bytes, end: bool) -> Event {
        let offset = self.delivered;
        self.delivered += data.len() as u64;
        Event::ReceivedPartial(ReceivedPartial {
            id: self.id,
            offset,
            data,
            end,
        })
    }

    /// Adds received bytes (`end`: the message is complete) and returns what to deliver.
    /// An error means the message exceeded the maximum size and must be discarded.
    #[cfg(test)]
    pub(crate) fn push(
        &mut self,
        data: Bytes,
        end: bool,
        limits: &ReceiveLimits,
    ) -> Result<Vec<Event>, Error> {
        let mut out = Vec::new();
        self.push_into(data, end, limits, &mut out)?;
        Ok(out)
    }

    /// Adds received bytes (`end`: the message is complete) and appends what to deliver to
    /// `out` (a list the caller reuses: most messages need none of their own). An error
    /// means the message exceeded the maximum size and must be discarded.
    pub(crate) fn push_into(
        &mut self,
        data: Bytes,
        end: bool,
        limits: &ReceiveLimits,
        out: &mut Vec<Event>,
    ) -> Result<(), Error> {
        self.total = self.total.saturating_add(data.len());
        if self.total > limits.max_message_size {
            return Err(Violation::MessageTooLarge {
                id: self.id,
                max: limits.max_message_size,
            }
            .into());
        }
        if limits.min_incomplete.is_none() && limits.max_length.is_none() {
            // Whole messages only: join the pieces once (one copy, no regrowth).
            if !data.is_empty() {
                match self.first {
                    None => self.first = Some(data),
                    Some(_) => self.pieces.push(data),
                }
            }
            if !end {
                return Ok(());
            }
            let first = self.first.take().unwrap_or_default();
            let whole = if self.pieces.is_empty() {
                first
            } else {
                let mut joined = BytesMut::with_capacity(self.total);
                joined.extend_from_slice(&first);
                for piece in self.pieces.drain(..) {
                    joined.extend_from_slice(&piece);
                }
                joined.freeze()
            };
            out.push(Event::Received(Received {
                id: self.id,
                data: whole,
                reliable: self.reliable,
            }));
            return Ok(());
        }
        // A message that arrives in one piece and fits goes up without a copy.
        if end
            && self.buf.is_empty()
            && self.delivered == 0
            && limits.max_length.is_none_or(|m| data.len() <= m)
        {
            out.push(Event::Received(Received {
                id: self.id,
                data,
                reliable: self.reliable,
            }));
            return Ok(());
        }
        self.buf.extend_from_slice(&data);
        if let Some(max) = limits.max_length {
            while self.buf.len() > max || (self.buf.len() == max && !end) {
                let chunk = self.buf.split_to(max).freeze();
                out.push(self.part(chunk, false));
            }
        }
        if !end {
            if let Some(min) = limits.min_incomplete {
                if self.buf.len() >= min.max(1) {
                    let chunk = self.buf.split().freeze();
                    out.push(self.part(chunk, false));
                }
            }
            return Ok(());
        }
        let rest = self.buf.split().freeze();
        if self.partly_delivered() {
            out.push(self.part(rest, true));
        } else {
            out.push(Event::Received(Received {
                id: self.id,
                data: rest,
                reliable: self.reliable,
            }));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(min: Option<usize>, max: Option<usize>) -> ReceiveLimits {
        ReceiveLimits {
            max_message_size: 100,
            min_incomplete: min,
            max_length: max,
        }
    }

    fn describe(events: Vec<Event>) -> Vec<String> {
        events
            .into_iter()
            .map(|e| match e {
                Event::Received(r) => format!("whole {}", r.data.len()),
                Event::ReceivedPartial(p) => format!(
                    "part {}+{}{}",
                    p.offset,
                    p.data.len(),
                    if p.end { " end" } else { "" }
                ),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_message_in_one_piece_goes_up_as_it_came_even_with_an_empty_end() {
        // QUIC's pattern: the stream's bytes, then its end with no bytes.
        let l = limits(None, None);
        let piece = Bytes::from(vec![7u8; 30]);
        let mut a = Assembly::new(1, true);
        let mut out = Vec::new();
        a.push_into(piece.clone(), false, &l, &mut out)
            .expect("fits");
        assert!(out.is_empty());
        a.push_into(Bytes::new(), true, &l, &mut out).expect("fits");
        match out.as_slice() {
            [Event::Received(r)] => {
                assert_eq!(r.data, piece);
                assert_eq!(r.data.as_ptr(), piece.as_ptr(), "not copied");
            }
            other => panic!("{other:?}"),
        }
        // Two pieces are joined, in order.
        let mut b = Assembly::new(2, true);
        out.clear();
        b.push_into(Bytes::from_static(b"ab"), false, &l, &mut out)
            .expect("fits");
        b.push_into(Bytes::from_static(b"cd"), true, &l, &mut out)
            .expect("fits");
        assert!(matches!(out.as_slice(), [Event::Received(r)] if r.data == "abcd"));
    }

    #[test]
    fn whole_messages_by_default() {
        let l = limits(None, None);
        let mut a = Assembly::new(1, true);
        assert!(a
            .push(Bytes::from(vec![0u8; 30]), false, &l)
            .expect("fits")
            .is_empty());
        assert_eq!(
            describe(a.push(Bytes::from(vec![0u8; 20]), true, &l).expect("fits")),
            ["whole 50"]
        );
    }

    #[test]
    fn min_incomplete_and_max_length_deliver_parts() {
        let l = limits(Some(25), None);
        let mut a = Assembly::new(1, true);
        assert!(a
            .push(Bytes::from(vec![0u8; 10]), false, &l)
            .expect("fits")
            .is_empty());
        assert_eq!(
            describe(a.push(Bytes::from(vec![0u8; 20]), false, &l).expect("fits")),
            ["part 0+30"]
        );
        assert_eq!(
            describe(a.push(Bytes::from(vec![0u8; 5]), true, &l).expect("fits")),
            ["part 30+5 end"]
        );

        let l = limits(None, Some(16));
        let mut a = Assembly::new(2, true);
        assert_eq!(
            describe(a.push(Bytes::from(vec![0u8; 40]), true, &l).expect("fits")),
            ["part 0+16", "part 16+16", "part 32+8 end"]
        );
        // A message that fits max_length is delivered whole.
        let mut b = Assembly::new(3, true);
        assert_eq!(
            describe(b.push(Bytes::from(vec![0u8; 16]), true, &l).expect("fits")),
            ["whole 16"]
        );
    }

    #[test]
    fn oversized_message_is_an_error() {
        let l = limits(None, None);
        let mut a = Assembly::new(1, true);
        assert!(a.push(Bytes::from(vec![0u8; 60]), false, &l).is_ok());
        let err = a
            .push(Bytes::from(vec![0u8; 60]), true, &l)
            .expect_err("too big");
        assert!(err.to_string().contains("maximum message size"), "{err}");
    }
}
