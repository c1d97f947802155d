//! Control-plane scale for `cargo xtask bench`: with 1,000 and 5,000 other hosts' leases in
//! etcd, how long flanneld takes from start to every peer in its BPF maps, how long a lease
//! change takes to reach the maps, the agent's RSS and the maps' memory.

use std::{
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    MapData,
};
use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use flannel_common::{
    map_names,
    pins::{self, Pins},
    Tunnel,
};
use flannel_tests::{
    netns::Bpffs,
    testbed::{lease_key, Testbed},
};
use ipnet::Ipv4Net;
use serde_json::json;

use crate::stats::{percentile, Metric};

/// The lease counts measured.
pub const SIZES: [usize; 2] = [1_000, 5_000];

/// One agent start among `leases` others, and a series of lease changes.
#[derive(Clone, Copy)]
pub struct Sample {
    ready_ms: f64,
    all_peers_ms: f64,
    change_p50_ms: f64,
    change_p99_ms: f64,
    rss_mib: f64,
    maps_mib: f64,
}

pub const METRICS: [Metric<Sample>; 6] = [
    ("start to all peers in the maps ms", |s| s.all_peers_ms),
    ("start to ready ms", |s| s.ready_ms),
    ("lease change to map p50 ms", |s| s.change_p50_ms),
    ("lease change to map p99 ms", |s| s.change_p99_ms),
    ("agent RSS MiB", |s| s.rss_mib),
    ("BPF maps MiB", |s| s.maps_mib),
];

const CONFIG: &str = r#"{"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan"}}"#;
const TIMEOUT: Duration = Duration::from_secs(60);

/// Peer `i`'s subnet and public IP: 10.1.0.0/24, 10.1.1.0/24, ... from 172.16.0.1 on.
fn peer(i: usize) -> (Ipv4Net, Ipv4Addr) {
    let i = i as u32;
    let subnet = Ipv4Net::new(Ipv4Addr::from(0x0a01_0000 + (i << 8)), 24).unwrap();
    (subnet, Ipv4Addr::from(0xac10_0001 + i))
}

/// A vxlan lease as flannel writes it.
fn lease_value(public_ip: Ipv4Addr, i: usize) -> String {
    let mac = format!("0e:f1:00:00:{:02x}:{:02x}", (i >> 8) & 0xff, i & 0xff);
    format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
    )
}

/// Measures one agent among `leases` others, with `changes` lease changes one after another.
pub fn measure(leases: usize, changes: usize) -> Result<Sample> {
    let bed = Testbed::new(1)?;
    bed.put_config(CONFIG)?;
    let bpffs = Bpffs::mount()?;
    let pins = bpffs.path().join("flannel");
    // etcd listens in the underlay's namespace: talk to it from there.
    bed.underlay
        .enter(|| measure_in(&bed, &pins, leases, changes))?
}

fn measure_in(bed: &Testbed, pins: &Path, leases: usize, changes: usize) -> Result<Sample> {
    let etcd = EtcdHttp::new(&bed.etcd.endpoint());
    let puts: Vec<(String, String)> = (0..leases)
        .map(|i| {
            let (subnet, ip) = peer(i);
            (lease_key(&subnet.to_string()), lease_value(ip, i))
        })
        .collect();
    etcd.put_all(&puts)?;

    let pin_flag = format!("--bpf-pin-dir={}", pins.display());
    let started = Instant::now();
    let mut agent = bed.agent(0, &[&pin_flag])?;
    let (ready, all_peers) = std::thread::scope(|scope| {
        let all_peers = scope.spawn(|| wait_for_routes(pins, leases, started));
        let ready = agent.wait_ready(TIMEOUT).map(|()| started.elapsed());
        (ready, all_peers.join().expect("map poller thread"))
    });
    let (ready, all_peers) = (ready?, all_peers?);

    let routes = routes(pins)?;
    let mut delays = Vec::with_capacity(changes);
    for k in 0..changes {
        // Spread over the table; each change moves a peer to a public IP never used before.
        let i = k * leases / changes;
        let (subnet, _) = peer(i);
        let moved_to = Ipv4Addr::from(0xac18_0001 + k as u32);
        let key = route_key(subnet);
        let put = Instant::now();
        etcd.put(&lease_key(&subnet.to_string()), &lease_value(moved_to, i))?;
        while routes.get(&key, 0).ok().map(|t| t.remote_ip_be) != Some(u32::from(moved_to).to_be())
        {
            if put.elapsed() > TIMEOUT {
                bail!("the change of {subnet} to {moved_to} did not reach the maps");
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        delays.push(put.elapsed().as_secs_f64() * 1000.0);
    }
    delays.sort_by(f64::total_cmp);
    let sample = Sample {
        ready_ms: ready.as_secs_f64() * 1000.0,
        all_peers_ms: all_peers.as_secs_f64() * 1000.0,
        change_p50_ms: percentile(&delays, 50.0),
        change_p99_ms: percentile(&delays, 99.0),
        rss_mib: agent.rss_kib()? as f64 / 1024.0,
        maps_mib: maps_memlock(pins)? as f64 / (1024.0 * 1024.0),
    };
    agent.terminate()?;
    Ok(sample)
}

fn routes(pins: &Path) -> Result<LpmTrie<MapData, u32, Tunnel>> {
    Pins::new(pins)
        .routes()
        .with_context(|| format!("opening the routes map under {}", pins.display()))
}

/// The routes map's key for `subnet`.
fn route_key(subnet: Ipv4Net) -> Key<u32> {
    pins::route_key(u32::from(subnet.network()), subnet.prefix_len())
}

/// Waits until the agent's pinned routes hold the first `leases` peers' subnets; returns the
/// time since `since`.
fn wait_for_routes(pins: &Path, leases: usize, since: Instant) -> Result<Duration> {
    let path = pins.join(map_names::ROUTES);
    while !path.exists() {
        if since.elapsed() > TIMEOUT {
            bail!("the agent pinned no {}", path.display());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let routes = routes(pins)?;
    // Each round looks up only the subnets still missing, so the last ones are seen at once.
    let mut missing: Vec<Key<u32>> = (0..leases).map(|i| route_key(peer(i).0)).collect();
    loop {
        missing.retain(|key| routes.get(key, 0).is_err());
        if missing.is_empty() {
            return Ok(since.elapsed());
        }
        if since.elapsed() > TIMEOUT {
            bail!(
                "the maps lack {} of {leases} peers after {TIMEOUT:?}",
                missing.len()
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The kernel memory charged to the pinned maps, from each one's fdinfo, in bytes. The
/// directory also pins the agent's TCX and XDP links, which are no maps.
fn maps_memlock(pins: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(pins)? {
        let path = entry?.path();
        let pinned =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        let fdinfo = format!("/proc/self/fdinfo/{}", pinned.fd().as_fd().as_raw_fd());
        let info = std::fs::read_to_string(&fdinfo)?;
        if !info.lines().any(|l| l.starts_with("map_type:")) {
            continue;
        }
        total += info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:")?.trim().parse::<u64>().ok())
            .with_context(|| format!("no memlock in {fdinfo}"))?;
    }
    Ok(total)
}

/// etcd's JSON gateway (`/v3/kv/...`): a put's time is the HTTP round trip, with no
/// process start in it (which `etcdctl` would add).
struct EtcdHttp {
    base: String,
    http: ureq::Agent,
}

impl EtcdHttp {
    /// etcd refuses transactions of more than 128 operations by default.
    const TXN_OPS: usize = 128;

    fn new(endpoint: &str) -> Self {
        Self {
            base: endpoint.to_owned(),
            http: ureq::Agent::new_with_defaults(),
        }
    }

    fn post(&self, path: &str, body: serde_json::Value) -> Result<()> {
        let url = format!("{}{path}", self.base);
        self.http
            .post(&url)
            .header("content-type", "application/json")
            .send(body.to_string())
            .with_context(|| format!("POST {url}"))?
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the answer of {url}"))?;
        Ok(())
    }

    fn put_json(key: &str, value: &str) -> serde_json::Value {
        json!({"key": BASE64.encode(key), "value": BASE64.encode(value)})
    }

    fn put(&self, key: &str, value: &str) -> Result<()> {
        self.post("/v3/kv/put", Self::put_json(key, value))
    }

    /// Writes all of `kvs`, in transactions of up to `TXN_OPS` puts.
    fn put_all(&self, kvs: &[(String, String)]) -> Result<()> {
        for chunk in kvs.chunks(Self::TXN_OPS) {
            let ops: Vec<_> = chunk
                .iter()
                .map(|(k, v)| json!({"requestPut": Self::put_json(k, v)}))
                .collect();
            self.post("/v3/kv/txn", json!({"success": ops}))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_get_distinct_subnets_and_ips_inside_the_network() {
        let network: Ipv4Net = "10.0.0.0/8".parse().unwrap();
        let last = SIZES.iter().max().unwrap() - 1;
        let (first, last) = (peer(0), peer(last));
        assert_eq!(first.0.to_string(), "10.1.0.0/24");
        assert_eq!(first.1.to_string(), "172.16.0.1");
        assert!(network.contains(&last.0) && last.0 != first.0 && last.1 != first.1);
        assert_eq!(peer(256).0.to_string(), "10.2.0.0/24");
    }

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 100.0);
        assert_eq!(percentile(&values, 99.0), 198.0);
        assert_eq!(percentile(&values, 100.0), 200.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }
}
