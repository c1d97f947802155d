//! The network configs the tests run (as `<prefix>/config` holds them) and how long they give
//! an agent to act.

use std::time::Duration;

pub const VXLAN: &str = r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan"}}"#;
pub const UDP: &str = r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "udp"}}"#;
pub const HOST_GW: &str = r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "host-gw"}}"#;
pub const DUAL_VXLAN: &str = r#"{"Network": "10.1.0.0/16", "EnableIPv6": true,
    "IPv6Network": "fd00:10::/48", "Backend": {"Type": "vxlan"}}"#;
pub const DUAL_HOST_GW: &str = r#"{"Network": "10.1.0.0/16", "EnableIPv6": true,
    "IPv6Network": "fd00:10::/48", "Backend": {"Type": "host-gw"}}"#;
pub const IPV6_VXLAN: &str = r#"{"EnableIPv4": false, "EnableIPv6": true,
    "IPv6Network": "fd00:10::/48", "Backend": {"Type": "vxlan"}}"#;
pub const IPV6_HOST_GW: &str = r#"{"EnableIPv4": false, "EnableIPv6": true,
    "IPv6Network": "fd00:10::/48", "Backend": {"Type": "host-gw"}}"#;

/// How long an agent may take to be ready, or to act on a change (the wait ends as soon as
/// it has).
pub const READY: Duration = Duration::from_secs(30);
