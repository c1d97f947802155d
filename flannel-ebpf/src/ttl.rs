//! TTL handling of flannel's udp backend: decrement on send and on receive.

use aya_ebpf::programs::TcContext;
use flannel_common::DropReason;

use crate::parse::ETH_HLEN;

/// Offsets in the IPv4 header that follows the Ethernet header.
const TTL: usize = ETH_HLEN + 8;
const CHECK: usize = ETH_HLEN + 10;

pub fn decrement(ctx: &TcContext) -> Result<(), DropReason> {
    // The TTL shares a 16-bit checksum word with the protocol.
    let word: [u8; 2] = ctx.load(TTL).map_err(|_| DropReason::Truncated)?;
    if word[0] <= 1 {
        return Err(DropReason::TtlExpired);
    }
    let new = [word[0] - 1, word[1]];
    ctx.l3_csum_replace(
        CHECK,
        u64::from(u16::from_ne_bytes(word)),
        u64::from(u16::from_ne_bytes(new)),
        2,
    )
    .map_err(|_| DropReason::Truncated)?;
    ctx.store(TTL, &new, 0).map_err(|_| DropReason::Truncated)
}
