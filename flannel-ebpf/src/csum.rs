//! Checksums.

/// The one's-complement checksum of a 32-bit sum of 16-bit words: folded and inverted.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// A header checksum after one 16-bit word changed from `old` to `new` (RFC 1624, eqn. 3).
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    fold(u32::from(!check) + u32::from(!old) + u32::from(new))
}

/// The sum of `bytes` as big-endian 16-bit words (an even count), unfolded.
#[inline(always)]
pub fn sum16(bytes: &[u8]) -> u32 {
    let mut sum = 0;
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}
