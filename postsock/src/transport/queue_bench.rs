//! The send queue driven alone, for `postsock bench --queue`: what one message costs in the
//! outbox, without a network, a runtime's scheduling or TLS, so a change to the queue can be
//! measured without the noise of a full benchmark. Not a stable API.
//!
//! It does per message what a carrier and a TLS/TCP writer do: `send` (buffer space, the
//! queue entry: a plain message's place in the lane, as on a TLS/TCP carrier), the writer's
//! gather (`take_while` into one batch, each
//! frame's header and payload copied as a stream writer does), `Sent` once the batch is
//! written, and `Acked` for everything up to each 128 KiB (the peer's ACK interval). The
//! application queues up to 128 messages at a time (tokio's budget per poll), as in the
//! one-thread benchmark.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::framing::HEADER_LEN;
use super::outbox::{Fins, Outbox};
use crate::message::{MessageProperties, SendStatus};

/// Bytes of one gather (the writer's batch).
const BATCH: usize = 64 * 1024;
/// Bytes acknowledged at once.
const ACK_EVERY: usize = 128 * 1024;
/// Messages the application queues before the writer runs.
const BURST: usize = 128;

/// The time `messages` messages of `size` bytes take through the queue of a carrier with a
/// `send_buffer`-byte send buffer, and how many reached the writer whole (all of them).
/// Always progresses: a message of any size fits an empty send buffer, and what the writer
/// takes gives its space back.
pub fn drive(messages: usize, size: usize, send_buffer: usize) -> (Duration, usize) {
    let outbox = Outbox::new(send_buffer, super::stream::order_rule);
    outbox.set_lane(true);
    let data = Bytes::from(vec![0x5a; size]);
    let mut batch: Vec<u8> = Vec::with_capacity(BATCH + HEADER_LEN + size);
    let (mut queued, mut taken) = (0, 0);
    let (mut written, mut unacked_bytes) = (Fins::default(), 0);
    let mut unacked = Fins::default();
    let start = Instant::now();
    while taken < messages {
        for _ in 0..BURST.min(messages - queued) {
            let Ok(permit) = outbox.try_reserve(size) else {
                break;
            };
            // The application drops the handle, as a fire-and-forget sender does.
            let _ = outbox.send(MessageProperties::default(), data.clone(), permit, None);
            queued += 1;
        }
        outbox.take_while(None, BATCH, |item| {
            batch.extend_from_slice(&super::stream::frame_header(&item));
            batch.extend_from_slice(&item.data);
            // A long message comes in pieces; it is sent (and counted) with its last.
            if item.fin {
                written.push(item.id, item.plain);
                unacked.push(item.id, item.plain);
                taken += 1;
            }
            BATCH.saturating_sub(batch.len() + HEADER_LEN)
        });
        std::hint::black_box(&batch);
        unacked_bytes += batch.len();
        batch.clear();
        outbox.settle(std::mem::take(&mut written), || SendStatus::Sent, false);
        if unacked_bytes >= ACK_EVERY || taken == messages {
            outbox.settle(std::mem::take(&mut unacked), || SendStatus::Acked, true);
            unacked_bytes = 0;
        }
    }
    (start.elapsed(), taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_goes_through_and_is_settled() {
        for (messages, size) in [(1, 1), (1000, 1024), (300, 70_000)] {
            let (_, taken) = drive(messages, size, 1 << 20);
            assert_eq!(taken, messages, "{messages} x {size}");
        }
    }
}
