//! TTL handling of flannel's udp backend: decrement on send and on receive.

use flannel_common::DropReason;

use crate::{csum, parse::Ipv4Hdr};

/// Decrements the TTL and patches the header checksum to match; a packet whose TTL runs out
/// is dropped.
#[inline(always)]
pub fn decrement(ip: &mut Ipv4Hdr) -> Result<(), DropReason> {
    if ip.ttl <= 1 {
        return Err(DropReason::TtlExpired);
    }
    // The TTL shares a 16-bit checksum word with the protocol.
    let old = u16::from_be_bytes([ip.ttl, ip.protocol]);
    ip.ttl -= 1;
    let new = u16::from_be_bytes([ip.ttl, ip.protocol]);
    ip.check = csum::replace16(u16::from_be_bytes(ip.check), old, new).to_be_bytes();
    Ok(())
}
