//! Interface offloads, through the ethtool ioctl: the `ethtool` crate only reads features,
//! so these two settings are written by hand.

use std::os::fd::AsRawFd;

use anyhow::{bail, Context, Result};

const ETHTOOL_STSO: u32 = 0x1f;
const ETHTOOL_SGRO: u32 = 0x2c;

/// `struct ethtool_value`, the argument of the single-value ethtool commands.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `ethtool -K <name> gro on`. On a veth, GRO also gives it NAPI, where GRO runs.
pub fn enable_gro(name: &str) -> Result<()> {
    set(name, ETHTOOL_SGRO, 1).with_context(|| format!("turning GRO on on {name}"))
}

/// `ethtool -K <name> tso off`, as the kernel's own TSO mask (`NETIF_F_ALL_TSO`) has it.
pub fn disable_tso(name: &str) -> Result<()> {
    set(name, ETHTOOL_STSO, 0).with_context(|| format!("turning TSO off on {name}"))
}

/// Runs the single-value ethtool command `cmd` with `data` on the interface `name`.
fn set(name: &str, cmd: u32, data: u32) -> Result<()> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").context("opening an ethtool socket")?;
    let mut value = EthtoolValue { cmd, data };
    // SAFETY: an all-zero ifreq is valid; the name is copied in bounds (NUL-terminated).
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= request.ifr_name.len() {
        bail!("interface name {name:?} is too long");
    }
    for (to, from) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *to = from as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    // SAFETY: SIOCETHTOOL reads the ifreq and the ethtool_value it points to, both alive.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &mut request) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}
