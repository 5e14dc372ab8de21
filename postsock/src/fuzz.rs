//! Property tests of the wire parsers on seeded random input (stable Rust, no extra crate):
//! whatever arrives, a parser answers with a value or an error and never panics, and what it
//! accepts means what the encoder would have written.

/// SplitMix64: a tiny seeded generator, enough to drive the inputs reproducibly.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = (self.next() % (max as u64 + 1)) as usize;
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// `good` with a few bytes flipped, cut or inserted.
    fn mutate(&mut self, good: &[u8]) -> Vec<u8> {
        let mut out = good.to_vec();
        for _ in 0..=(self.next() % 4) {
            let at = (self.next() as usize) % (out.len() + 1);
            match self.next() % 3 {
                0 if at < out.len() => out[at] ^= 1 << (self.next() % 8),
                1 if at < out.len() => out.truncate(at),
                _ => out.insert(at, self.next() as u8),
            }
        }
        out
    }
}

const CASES: usize = 20_000;

#[test]
fn frame_headers_decode_or_fail_cleanly_and_round_trip() {
    use crate::transport::framing::{FrameHeader, HEADER_LEN};
    let mut g = Gen(1);
    let mut accepted = 0;
    for _ in 0..CASES {
        let mut raw = [0u8; HEADER_LEN];
        raw.iter_mut().for_each(|b| *b = g.next() as u8);
        // Bias towards plausible headers: known types, zero reserved bytes.
        if g.next().is_multiple_of(2) {
            raw[0] = 1 + (g.next() % 5) as u8;
            raw[2] = 0;
            raw[3] = 0;
            if g.next().is_multiple_of(2) {
                raw[1] = (g.next() % 8) as u8;
            }
            if g.next().is_multiple_of(2) {
                let len = [0, 24, (g.next() % 64) as u32][(g.next() % 3) as usize];
                raw[12..16].copy_from_slice(&len.to_be_bytes());
            }
            if g.next().is_multiple_of(4) {
                raw[4..12].fill(0);
            }
        }
        if let Ok(h) = FrameHeader::decode(&raw, 1 << 20) {
            accepted += 1;
            assert_eq!(h.encode(), raw, "{h:?}");
            assert!(h.len <= 1 << 20);
        }
    }
    assert!(
        accepted > 100,
        "the generator must reach valid headers too ({accepted})"
    );
}

#[test]
fn moved_receipts_parse_or_fail_cleanly_and_round_trip() {
    use crate::transport::framing::HEADER_LEN;
    use crate::transport::moving::Summary;
    let mut g = Gen(7);
    let mut good = Summary::default();
    good.uni.floor = 40;
    good.uni.above = [42, 45, 1000].into();
    good.bi.floor = 3;
    good.bi.above = [9].into();
    let identity = [5u8; 16];
    let payload = good.frame(&identity)[HEADER_LEN..].to_vec();
    let mut parsed = 0;
    for _ in 0..CASES {
        let input = if g.next().is_multiple_of(8) {
            g.bytes(200)
        } else {
            g.mutate(&payload)
        };
        if let Ok((id, Some(summary))) = Summary::parse(&input) {
            parsed += 1;
            // What parses is what the encoder writes, and says what it means.
            assert_eq!(summary.frame(&id)[HEADER_LEN..], input[..]);
            for seen in [&summary.uni, &summary.bi] {
                assert!(seen.above.iter().all(|&i| i > seen.floor));
            }
        }
    }
    assert!(
        parsed > 100,
        "the generator must reach valid receipts too ({parsed})"
    );
}

#[tokio::test]
async fn byte_streams_of_frames_never_panic_the_frame_reader() {
    use crate::transport::framing::FrameHeader;
    let mut g = Gen(2);
    for _ in 0..2_000 {
        // A valid stream of a few frames, then mutated.
        let mut good = Vec::new();
        for id in 0..(g.next() % 4) {
            let data = g.bytes(40);
            good.extend_from_slice(&FrameHeader::message(id, data.len() as u32).encode());
            good.extend_from_slice(&data);
        }
        let wire = g.mutate(&good);
        let mut input = &wire[..];
        let mut read = Vec::new();
        // A HELLO reader and a frame reader each take what they can; errors are fine.
        let _ = crate::transport::stream::read_hello(&mut input, &mut read).await;
        let mut input = crate::transport::stream::FrameReader::new(&wire[..]);
        for _ in 0..8 {
            match input.next(1 << 16).await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}

#[test]
fn stun_and_turn_datagrams_decode_or_are_dropped() {
    use crate::traversal::codec::{stun, turn};
    let mut g = Gen(3);
    let request = stun::binding_request([7u8; 12]);
    for _ in 0..CASES {
        let datagram = if g.next().is_multiple_of(2) {
            g.mutate(&request)
        } else {
            g.bytes(120)
        };
        let _ = stun::decode(&datagram);
        let _ = stun::answer(&datagram, ([192, 0, 2, 1], 3478).into());
        let _ = stun::reflexive_address(&datagram, [7u8; 12]);
        let _ = turn::decode(&datagram);
        if let Some((channel, data)) = turn::parse_channel_data(&datagram) {
            assert!((0x4000..=0x7fff).contains(&channel), "{channel:#x}");
            assert!(data.len() + 4 <= datagram.len());
        }
    }
    assert!(
        stun::decode(&request).is_some(),
        "the unmutated request decodes"
    );
}

#[test]
fn rendezvous_blobs_open_only_when_authentic() {
    use crate::traversal::rendezvous::{Pairing, PeerInfo};
    use crate::util::unhex;
    let mut g = Gen(4);
    let pairing = Pairing::new(b"a pairing secret of some length").expect("pairing");
    let info = PeerInfo {
        candidates: Vec::new(),
        extra: vec![1, 2, 3],
    };
    let blob = pairing.seal(&info, [1u8; 16], [2u8; 12]).expect("seal");
    assert_eq!(pairing.open(&blob, [9u8; 16]), Some(info.clone()));
    let raw = unhex(&blob).expect("hex");
    for _ in 0..CASES {
        // Mutated blobs (as bytes and as text) and random text: never a panic, and nothing
        // but the untouched blob authenticates.
        let bytes = g.mutate(&raw);
        let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        if bytes != raw {
            assert_eq!(pairing.open(&text, [9u8; 16]), None);
        }
        let mut garbled = blob.clone().into_bytes();
        let at = (g.next() as usize) % garbled.len();
        garbled[at] = g.next() as u8 % 128;
        let _ = pairing.open(&String::from_utf8_lossy(&garbled), [9u8; 16]);
    }
}
