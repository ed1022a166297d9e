//! Stable hashing: MurmurHash3 (x86, 32-bit), whose output never changes across Rust
//! versions or platforms, so a user stays on the same shard for ever.

/// MurmurHash3 x86 32-bit of `data` with `seed`.
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mut h = seed;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = chunks.remainder();
    let mut k: u32 = 0;
    for (i, b) in tail.iter().enumerate() {
        k ^= u32::from(*b) << (8 * i);
    }
    if !tail.is_empty() {
        k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        h ^= k;
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The bucket (shard or partition) of `key` among `buckets`.
pub fn bucket(key: &str, buckets: usize) -> usize {
    assert!(buckets > 0, "at least one bucket");
    murmur3_32(key.as_bytes(), 0) as usize % buckets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_vectors() {
        assert_eq!(murmur3_32(b"", 0), 0);
        assert_eq!(murmur3_32(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_32(b"hello", 0), 0x248b_fa47);
        assert_eq!(murmur3_32(b"Hello, world!", 1234), 0xfaf6_cdb3);
        assert_eq!(
            murmur3_32(b"The quick brown fox jumps over the lazy dog", 0),
            0x2e4f_f723
        );
    }

    #[test]
    fn pins_known_users_to_known_shards() {
        // Computed once with an independent MurmurHash3 implementation; a change here
        // would move users (and their orders) to other shards.
        let expected = [
            ("6f1d3a52-8c2e-4b7a-9f10-1a2b3c4d5e6f", 1),
            ("00000000-0000-0000-0000-000000000001", 2),
            ("ffffffff-ffff-ffff-ffff-ffffffffffff", 2),
            ("b3c1e2d4-5a6b-4c7d-8e9f-0a1b2c3d4e5f", 1),
        ];
        for (user, shard) in expected {
            assert_eq!(bucket(user, 4), shard, "user {user} moved shard");
        }
    }
}
