//! etcd going away, briefly, for long, and twice in a row: traffic never notices, and the
//! agents follow leases again within 5 s of etcd answering.

use std::{net::Ipv4Addr, time::Duration};

use flannel_tests::{
    etcd::wait_for,
    metrics, pins, require_root,
    testbed::{lease_key, Testbed},
};

const VXLAN: &str = r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan"}}"#;

#[test]
fn etcd_outages_of_2_s_30_s_and_two_in_a_row_lose_no_ping_and_no_lease() {
    require_root();
    let (mut bed, _agents, containers) = Testbed::cluster(VXLAN, &[&[metrics::FLAG], &[]]).unwrap();
    let (pins_a, pins_b) = (bed.pin_dir(0), bed.pin_dir(1));
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
    let outages = metrics::read(&bed.hosts[0], "flannel_etcd_outages_total");
    assert_eq!(outages.unwrap(), 3.0);
}
