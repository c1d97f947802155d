//! TTL handling of flannel's udp backend: decrement on send and on receive.

use flannel_common::DropReason;

use crate::parse::Ipv4Hdr;

/// Decrements the TTL (the checksum patched to match); a packet whose TTL runs out is
/// dropped.
#[inline(always)]
pub fn decrement(ip: &mut Ipv4Hdr) -> Result<(), DropReason> {
    if ip.decrement_ttl() {
        Ok(())
    } else {
        Err(DropReason::TtlExpired)
    }
}
