//! Seed derivation: every random stream in a run comes from the run's one `u64` seed.
//!
//! Streams are keyed by stable labels (FNV-1a, not `std`'s hasher, whose algorithm may change)
//! so adding a stream never shifts the numbers another stream draws.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A 64-bit sub-seed for `label` under `seed`.
pub fn derive(seed: u64, label: &str) -> u64 {
    // splitmix64 finaliser over the combination, so nearby seeds give unrelated streams.
    let mut z = seed ^ fnv1a(label.as_bytes()).rotate_left(17);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A random stream for `label` under `seed`.
pub fn stream(seed: u64, label: &str) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(derive(seed, label))
}

/// 32 seed bytes for `label` under `seed` (for quinn's endpoint RNG).
pub fn seed_bytes(seed: u64, label: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&derive(seed, &format!("{label}#{i}")).to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_distinct() {
        assert_eq!(derive(1, "a"), derive(1, "a"));
        assert_ne!(derive(1, "a"), derive(2, "a"));
        assert_ne!(derive(1, "a"), derive(1, "b"));
        assert_ne!(seed_bytes(1, "q")[..8], seed_bytes(1, "q")[8..16]);
    }
}
