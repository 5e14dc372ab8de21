//! Reassembly of received messages and partial delivery, shared by every transport.

use std::sync::{Arc, Mutex, Weak};

use bytes::{Bytes, BytesMut};

use crate::util::lock;

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

    /// Whether `len` bytes may go up as one part (no longer than `max_length`).
    fn fits_one_part(&self, len: usize) -> bool {
        self.max_length.is_none_or(|m| len <= m)
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

/// Buffers of long reassembled messages, taken back when the application lets go of a
/// message and reused for the next long message of the same reader.
///
/// Without them each long message had a fresh buffer grown from the allocator and freed by
/// the application, and when several such messages waited in the receive queue at once
/// (the reader runs ahead of the application by up to `receive_buffer`), their freeing left
/// megabytes free at the top of glibc's heap, which it gave back to the system
/// (`madvise(MADV_DONTNEED)`) and the next messages faulted in again, page by page: 20,000-26,000
/// page faults per 500 MiB of 1 MiB messages, against raw tokio-rustls' 2,000 (it reads one
/// message at a time into a buffer of the announced length). See BENCHMARKS.md.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    free: Mutex<Vec<BytesMut>>,
}

impl Buffers {
    /// Capacity kept in all (what the default `receive_buffer` lets wait).
    const KEEP: usize = 4 << 20;
    /// Smaller buffers are not kept: the allocator serves them from memory it keeps anyway.
    const FROM: usize = 64 * 1024;

    fn take(&self) -> Option<BytesMut> {
        lock(&self.free).pop()
    }

    fn give(&self, mut buf: BytesMut) {
        buf.clear();
        let mut free = lock(&self.free);
        let kept: usize = free.iter().map(BytesMut::capacity).sum();
        if kept + buf.capacity() <= Self::KEEP {
            free.push(buf);
        }
    }

    /// Capacity now kept.
    #[cfg(test)]
    fn kept(&self) -> usize {
        lock(&self.free).iter().map(BytesMut::capacity).sum()
    }
}

/// A message's buffer lent to the application; back to its [`Buffers`] when dropped.
struct Lent {
    buf: BytesMut,
    home: Weak<Buffers>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(home) = self.home.upgrade() {
            home.give(std::mem::take(&mut self.buf));
        }
    }
}

/// One message being received.
#[derive(Debug)]
pub(crate) struct Assembly {
    id: MessageId,
    buf: BytesMut,
    /// Where `buf` comes from and goes back to, if anywhere.
    buffers: Option<Arc<Buffers>>,
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
            buffers: None,
            first: None,
            delivered: 0,
            total: 0,
            reliable,
            direct_from: None,
        }
    }

    /// The same, its buffer (if it needs one) from `buffers` and back there once the
    /// application has done with the message.
    pub(crate) fn with_buffers(mut self, buffers: &Arc<Buffers>) -> Self {
        self.buffers = Some(buffers.clone());
        self
    }

    /// Starts the buffer of a message that came in more than one piece with its `first`,
    /// room for `more` bytes after it, and twice that in all.
    fn start(&mut self, first: &[u8], more: usize) {
        if let Some(buf) = self.buffers.as_ref().and_then(|b| b.take()) {
            self.buf = buf;
        }
        self.buf.reserve(2 * (first.len() + more));
        self.buf.extend_from_slice(first);
    }

    /// The whole message out of `buf`: lent from its [`Buffers`] when it fills most of
    /// it, else [`fitted`].
    fn whole(&mut self) -> Bytes {
        let (len, cap) = (self.buf.len(), self.buf.capacity());
        match &self.buffers {
            Some(home) if cap >= Buffers::FROM && cap - len <= len / 4 => Bytes::from_owner(Lent {
                buf: std::mem::take(&mut self.buf),
                home: Arc::downgrade(home),
            }),
            _ => fitted(self.buf.split()),
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
            self.start(&first, len);
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
                data: self.whole(),
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

    /// A reliable message that came whole in one piece: handed up as it is when the limits
    /// let it go up whole, as [`push_into`](Self::push_into) on a new assembly would, without
    /// building one (about 120 bytes written and moved per message); otherwise through one.
    pub(crate) fn push_alone(
        id: MessageId,
        data: Bytes,
        limits: &ReceiveLimits,
        out: &mut Vec<Event>,
    ) -> Result<(), Error> {
        let whole = !data.is_empty()
            && data.len() <= limits.max_message_size
            && limits.fits_one_part(data.len());
        if !whole {
            return Assembly::new(id, true).push_into(data, true, limits, out);
        }
        out.push(Event::Received(Received {
            id,
            data,
            reliable: true,
        }));
        Ok(())
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
                        self.start(&first, data.len());
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
            if !end {
                return Ok(());
            }
            let whole = match self.first.take() {
                Some(first) => first,
                None => self.whole(),
            };
            out.push(Event::Received(Received {
                id: self.id,
                data: whole,
                reliable: self.reliable,
            }));
            return Ok(());
        }
        // A message that arrives in one piece and fits goes up without a copy.
        if end && self.buf.is_empty() && self.delivered == 0 && limits.fits_one_part(data.len()) {
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
    fn a_message_alone_goes_up_as_a_new_assembly_would_send_it() {
        for (min, max) in [
            (None, None),
            (Some(10), None),
            (None, Some(30)),
            (None, Some(60)),
        ] {
            let limits = limits(min, max);
            for len in [0, 1, 40, 100, 101] {
                let data = Bytes::from(vec![7u8; len]);
                let (mut alone, mut built) = (Vec::new(), Vec::new());
                let alone_result = Assembly::push_alone(9, data.clone(), &limits, &mut alone);
                let built_result =
                    Assembly::new(9, true).push_into(data, true, &limits, &mut built);
                assert_eq!(
                    (describe(alone), alone_result.map_err(|e| e.to_string())),
                    (describe(built), built_result.map_err(|e| e.to_string())),
                    "{len} bytes, limits {min:?} {max:?}"
                );
            }
        }
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

    /// A message of `pieces` × 16 KiB (`fill` bytes) through an assembly with `buffers`:
    /// the whole message, checked intact.
    fn long_message(buffers: &Arc<Buffers>, id: MessageId, pieces: u8, fill: u8) -> Bytes {
        let l = ReceiveLimits::whole(16 << 20);
        let mut a = Assembly::new(id, true).with_buffers(buffers);
        let mut out = Vec::new();
        for i in 0..pieces {
            let piece = Bytes::from(vec![fill; 16 * 1024]);
            a.push_into(piece, i + 1 == pieces, &l, &mut out)
                .expect("fits");
        }
        match out.pop() {
            Some(Event::Received(r)) => {
                assert_eq!(r.data.len(), usize::from(pieces) * 16 * 1024);
                assert!(r.data.iter().all(|&b| b == fill), "message {id} not intact");
                r.data
            }
            other => panic!("{other:?}"),
        }
    }

    /// The buffer of a long message goes back to its reader's `Buffers` when the application
    /// drops the message, and the next long message is read into it (no fresh allocation
    /// for the allocator to give back and fault in again).
    #[test]
    fn a_long_message_s_buffer_is_reused_once_the_application_drops_it() {
        let buffers = Arc::new(Buffers::default());
        let first = long_message(&buffers, 1, 64, 1);
        let at = first.as_ptr();
        assert_eq!(
            buffers.kept(),
            0,
            "nothing kept while the application holds it"
        );
        // A message held keeps its buffer: the next one gets another.
        let second = long_message(&buffers, 2, 64, 2);
        assert_ne!(second.as_ptr(), at);
        assert_eq!(first[0], 1, "a held message is never written over");
        drop(first);
        assert_eq!(buffers.kept(), 1 << 20);
        let third = long_message(&buffers, 3, 64, 3);
        assert_eq!(
            third.as_ptr(),
            at,
            "the dropped message's buffer was not reused"
        );
        assert_eq!(buffers.kept(), 0);
        // A clone keeps it lent until the last one goes.
        let clone = third.slice(10..20);
        drop(third);
        assert_eq!(buffers.kept(), 0);
        drop(clone);
        drop(second);
        assert_eq!(buffers.kept(), 2 << 20);
    }

    /// At most `Buffers::KEEP` bytes are kept however many messages the application lets go
    /// of at once; a buffer a message fills little of is not lent (the message is fitted);
    /// and a message outliving its reader frees its buffer.
    #[test]
    fn buffers_keep_a_bounded_amount() {
        let buffers = Arc::new(Buffers::default());
        let held: Vec<Bytes> = (0..8)
            .map(|i| long_message(&buffers, i, 64, i as u8))
            .collect();
        drop(held);
        assert_eq!(buffers.kept(), Buffers::KEEP);
        // A short message in a reused 1 MiB buffer: fitted, so the application does not hold
        // a mostly empty megabyte.
        let short = long_message(&buffers, 9, 4, 9);
        assert!(short.len() == 64 * 1024);
        drop(short);
        assert_eq!(buffers.kept(), Buffers::KEEP - (1 << 20));
        let late = long_message(&buffers, 10, 64, 10);
        drop(buffers);
        drop(late);
    }
}
