//! etcd going away, briefly, for long, and twice in a row: traffic never notices, and the
//! agents follow leases again within 5 s of etcd answering.

use std::{net::Ipv4Addr, time::Duration};

use flannel_tests::{
    etcd::wait_for,
    netns::Bpffs,
    pins, require_root,
    testbed::{lease_key, Testbed},
};

const VXLAN: &str = r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan"}}"#;

#[test]
fn etcd_outages_of_2_s_30_s_and_two_in_a_row_lose_no_ping_and_no_lease() {
    require_root();
    let bpffs = Bpffs::mount().unwrap();
    let ((pins_a, flag_a), (pins_b, flag_b)) = (bpffs.pin_dir("a"), bpffs.pin_dir("b"));
    let metrics_flags = ["--healthz-port=8473", "--healthz-ip=127.0.0.1"];
    let (mut bed, _agents, containers) = Testbed::cluster(
        VXLAN,
        &[&[&flag_a, metrics_flags[0], metrics_flags[1]], &[&flag_b]],
    )
    .unwrap();
    let host = bed.hosts[0].name.clone();
    let mut next = 200;
    let lost = containers[0]
        .pings_lost_while(containers[1].ip, 5000, || {
            for seconds in [2, 30, 2] {
                bed.etcd.stop();
                // The fault under test is the outage's length.
                std::thread::sleep(Duration::from_secs(seconds));
                bed.etcd.resume().unwrap();
                let subnet = format!("10.1.{next}.0/24");
                next += 1;
                let value = format!(
                    r#"{{"PublicIP":"{}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0a:00:00:00:00:{next:02x}"}}}}"#,
                    Ipv4Addr::new(192, 168, 64, next as u8)
                );
                bed.etcd.put(&lease_key(&subnet), &value).unwrap();
                wait_for("the lease in both agents' maps", Duration::from_secs(5), || {
                    pins::has_route(&pins_a, &subnet) && pins::has_route(&pins_b, &subnet)
                })
                .unwrap();
            }
        })
        .unwrap();
    assert_eq!(lost, 0, "pings lost through the outages");
    let metrics = flannel_tests::netns::run(
        "ip",
        &[
            "netns",
            "exec",
            &host,
            "curl",
            "-sf",
            "http://127.0.0.1:8473/metrics",
        ],
    )
    .unwrap();
    assert!(
        metrics.contains("\nflannel_etcd_outages_total 3\n"),
        "{metrics}"
    );
}
