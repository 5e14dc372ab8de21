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

    /// Messages up to `max_message_size` bytes, delivered whole only.
    #[cfg(test)]
    pub(crate) fn whole(max_message_size: usize) -> Self {
        ReceiveLimits {
            max_message_size,
            min_incomplete: None,
            max_length: None,
        }
    }

    /// Whether messages go up whole only (no part delivered early).
    pub(crate) fn whole_only(&self) -> bool {
        self.min_incomplete.is_none() && self.max_length.is_none()
    }
}

/// `buf` frozen, its spare capacity given back when it is more than a quarter of its length
/// (a buffer that grew by doubling can be up to twice what it holds, and the application
/// keeps the message as long as it likes).
fn fitted(buf: BytesMut) -> Bytes {
    if buf.capacity() - buf.len() <= buf.len() / 4 {
        return buf.freeze();
    }
    let mut v: Vec<u8> = buf.into();
    v.shrink_to_fit();
    Bytes::from(v)
}

/// One message being received.
#[derive(Debug)]
pub(crate) struct Assembly {
    id: MessageId,
    buf: BytesMut,
    /// Whole-message delivery: the first piece, kept as it is until a second one comes (a
    /// message that came in one piece goes up without a copy).
    first: Option<Bytes>,
    /// Bytes already delivered in parts.
    delivered: u64,
    total: usize,
    reliable: bool,
    /// While a frame's payload is read straight into `buf` ([`direct_buf`](Self::direct_buf)):
    /// the length of `buf` before it, to go back to if the read never completes.
    direct_from: Option<usize>,
}

impl Assembly {
    pub(crate) fn new(id: MessageId, reliable: bool) -> Self {
        Assembly {
            id,
            buf: BytesMut::new(),
            first: None,
            delivered: 0,
            total: 0,
            reliable,
            direct_from: None,
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

    /// The buffer the next `len` bytes of this message may be read into directly (by
    /// [`FrameReader`](super::stream::FrameReader), saving the copy out of its own buffer),
    /// with room for them; `None` where [`push_into`](Self::push_into) must see them
    /// instead: parts delivered early, or a message that would exceed the maximum (which
    /// `push_into` reports). The bytes count once [`direct_done`](Self::direct_done) is
    /// called; until then they may arrive in several reads.
    pub(crate) fn direct_buf(
        &mut self,
        len: usize,
        limits: &ReceiveLimits,
    ) -> Option<&mut BytesMut> {
        if !limits.whole_only() || self.total.saturating_add(len) > limits.max_message_size {
            return None;
        }
        if let Some(first) = self.first.take() {
            self.buf.reserve(2 * (first.len() + len));
            self.buf.extend_from_slice(&first);
        }
        self.buf.reserve(len);
        self.direct_from = Some(self.buf.len());
        Some(&mut self.buf)
    }

    /// Drops what a direct read that did not complete put in the buffer (its transient
    /// ended in the middle of the frame; the peer writes the whole frame again on the next
    /// one, or the message is never completed).
    pub(crate) fn abandon_direct(&mut self) {
        if let Some(len) = self.direct_from.take() {
            self.buf.truncate(len);
        }
    }

    /// The buffer a direct read that [`direct_buf`](Self::direct_buf) started goes on
    /// filling.
    pub(crate) fn direct_resume(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// `len` bytes were read into [`direct_buf`](Self::direct_buf); `end`: the message is
    /// complete, and goes to `out`.
    pub(crate) fn direct_done(&mut self, len: usize, end: bool, out: &mut Vec<Event>) {
        self.direct_from = None;
        self.total += len;
        if end {
            out.push(Event::Received(Received {
                id: self.id,
                data: fitted(self.buf.split()),
                reliable: self.reliable,
            }));
        }
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
        if limits.whole_only() {
            // Whole messages only. One that comes in one piece goes up as it is (no copy);
            // a longer one is copied into one buffer piece by piece as it comes, so its
            // pieces (slices of the reader's buffers) are let go at once: the reader reuses
            // its buffer in place, and the message never holds twice its size (pieces kept
            // for one join at the end did, and freeing 2 MiB at once per 1 MiB message made
            // the allocator give pages back to the system and fault them in again).
            if !data.is_empty() {
                match self.first.take() {
                    None if self.buf.is_empty() => self.first = Some(data),
                    None => self.buf.extend_from_slice(&data),
                    Some(first) => {
                        self.buf.reserve(2 * (first.len() + data.len()));
                        self.buf.extend_from_slice(&first);
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
            if !end {
                return Ok(());
            }
            let whole = match self.first.take() {
                Some(first) => first,
                None => fitted(self.buf.split()),
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

    /// A message in many pieces holds no piece past the next one (each piece is copied in as
    /// it comes, so the buffers they are slices of can be reused).
    #[test]
    fn pieces_of_a_long_message_are_let_go_as_they_come() {
        let l = ReceiveLimits::whole(1 << 20);
        let mut a = Assembly::new(1, true);
        let mut out = Vec::new();
        let mut expect = Vec::new();
        let mut held = Vec::new();
        for i in 0..40u8 {
            let piece = Bytes::from(vec![i; 1000 + usize::from(i)]);
            expect.extend_from_slice(&piece);
            held.push(piece.clone());
            a.push_into(piece, i == 39, &l, &mut out).expect("fits");
            // Every piece but the first is let go at once; the first once a second came.
            let released = held.iter().filter(|p| p.is_unique()).count();
            let want = if i == 0 { 0 } else { usize::from(i) + 1 };
            assert_eq!(released, want, "after piece {i}");
        }
        match out.as_slice() {
            [Event::Received(r)] => assert!(r.data == expect, "the message is not intact"),
            other => panic!("{} events", other.len()),
        }
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
