//! Lease allocation against a real etcd, many managers at once, and etcd over client-cert TLS.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use flannel_agent::control::{
    acquire::{acquire, OutOfSubnets, OwnLease, DEFAULT_LEASE_TTL},
    config,
    lease::{BackendAttrs, LeaseAttrs},
    registry::{EtcdOptions, Registry},
};
use flannel_tests::{
    etcd::{Etcd, TlsFiles},
    require_root,
    testbed::PREFIX,
};
use ipnet::Ipv4Net;

fn options(etcd: &Etcd) -> EtcdOptions {
    EtcdOptions {
        endpoints: vec![etcd.endpoint()],
        prefix: PREFIX.into(),
        ..Default::default()
    }
}

fn attrs(n: u32) -> LeaseAttrs {
    LeaseAttrs {
        public_ip: Ipv4Addr::from(0x0a63_0000 + n),
        public_ipv6: Some(Ipv6Addr::from(0xfd63_u128 << 112 | u128::from(n))),
        backend: BackendAttrs::HostGw,
    }
}

/// `managers` lease managers acquire at once; returns their subnets.
async fn acquire_all(etcd: &Etcd, config_json: &str, managers: u32) -> Vec<Ipv4Net> {
    let leases = acquire_leases(etcd, config_json, managers).await;
    leases
        .iter()
        .map(|lease| lease.subnets.ipv4.unwrap())
        .collect()
}

/// `managers` lease managers acquire at once; returns their leases.
async fn acquire_leases(etcd: &Etcd, config_json: &str, managers: u32) -> Vec<OwnLease> {
    let config = config::parse(config_json).unwrap();
    let tasks: Vec<_> = (0..managers)
        .map(|n| {
            let (options, config) = (options(etcd), config.clone());
            tokio::spawn(async move {
                let mut registry = Registry::connect(&options).await.unwrap();
                acquire(&mut registry, &config, &attrs(n), None, DEFAULT_LEASE_TTL)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut leases = Vec::new();
    for task in tasks {
        leases.push(task.await.unwrap());
    }
    leases
}

/// A dual-stack lease's key, as flannel names it: `<v4>-<len>&<v6>-<len>`; `0.0.0.0-0` for
/// IPv4 in an IPv6-only network.
fn dual_key(lease: &OwnLease) -> String {
    let (subnet, ipv6) = (
        lease.subnets.ipv4.unwrap_or_default(),
        lease.subnets.ipv6.expect("an IPv6 subnet"),
    );
    format!(
        "{PREFIX}/subnets/{}-{}&{}-{}",
        subnet.network(),
        subnet.prefix_len(),
        ipv6.network(),
        ipv6.prefix_len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dual_stack_managers_at_once_get_distinct_subnets_of_both_families() {
    require_root();
    let etcd = Etcd::start().unwrap();
    let json = r#"{"Network": "10.1.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:1::/56",
                   "Backend": {"Type": "host-gw"}}"#;
    let config = config::parse(json).unwrap();
    let v6 = config.ipv6.clone().unwrap();
    let leases = acquire_leases(&etcd, json, 20).await;
    let v4: BTreeSet<_> = leases.iter().filter_map(|l| l.subnets.ipv4).collect();
    let ipv6: BTreeSet<_> = leases.iter().filter_map(|l| l.subnets.ipv6).collect();
    assert_eq!((v4.len(), ipv6.len()), (20, 20), "{leases:?}");
    assert!(ipv6.iter().all(|s| v6.contains_subnet(s)), "{ipv6:?}");
    // The keys name both subnets, as flannel's do.
    let keys = etcd.keys(&format!("{PREFIX}/subnets/")).unwrap();
    for lease in &leases {
        assert!(keys.contains(&dual_key(lease)), "{lease:?} in {keys:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ipv6_only_managers_at_once_get_distinct_ipv6_subnets_under_flannels_keys() {
    require_root();
    let etcd = Etcd::start().unwrap();
    let json = r#"{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00:1::/56",
                   "Backend": {"Type": "host-gw"}}"#;
    let leases = acquire_leases(&etcd, json, 20).await;
    let ipv6: BTreeSet<_> = leases.iter().filter_map(|l| l.subnets.ipv6).collect();
    assert_eq!(ipv6.len(), 20, "{leases:?}");
    assert!(
        leases.iter().all(|l| l.subnets.ipv4.is_none()),
        "{leases:?}"
    );
    let keys = etcd.keys(&format!("{PREFIX}/subnets/")).unwrap();
    for lease in &leases {
        let key = dual_key(lease);
        assert!(key.contains("/subnets/0.0.0.0-0&fd00:1:0:"), "{key}");
        assert!(keys.contains(&key), "{lease:?} in {keys:?}");
    }
    // The value carries the public IPv6.
    let value = etcd.get(&dual_key(&leases[0])).unwrap().unwrap();
    assert!(value.contains(r#""PublicIPv6":"fd63::"#), "{value}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_ipv6_on_replaces_our_ipv4_only_lease() {
    require_root();
    let etcd = Etcd::start().unwrap();
    let v4_only =
        config::parse(r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "host-gw"}}"#).unwrap();
    let dual = config::parse(
        r#"{"Network": "10.1.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:1::/56",
            "Backend": {"Type": "host-gw"}}"#,
    )
    .unwrap();
    let mut registry = Registry::connect(&options(&etcd)).await.unwrap();
    let before = acquire(&mut registry, &v4_only, &attrs(1), None, DEFAULT_LEASE_TTL)
        .await
        .unwrap();
    let previous = Some(before.subnets);
    let after = acquire(&mut registry, &dual, &attrs(1), previous, DEFAULT_LEASE_TTL)
        .await
        .unwrap();
    // Our old key is gone: left, it would hold our public IP against the new lease.
    let keys = etcd.keys(&format!("{PREFIX}/subnets/")).unwrap();
    assert_eq!(keys, [dual_key(&after)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_ipv6_subnets_says_so() {
    require_root();
    let etcd = Etcd::start().unwrap();
    // /126s of a /124: IPv6SubnetMin ::4 to IPv6SubnetMax ::c, 3 subnets; IPv4 has plenty.
    let json = r#"{"Network": "10.1.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/124",
                   "Backend": {"Type": "host-gw"}}"#;
    assert_eq!(acquire_all(&etcd, json, 3).await.len(), 3);
    let err = one_more_is_out_of_subnets(&etcd, json).await;
    assert!(
        format!("{err:#}")
            .starts_with("out of IPv6 subnets: every /126 between fd00::4 and fd00::c"),
        "{err:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_managers_at_once_get_thirty_distinct_subnets() {
    require_root();
    let etcd = Etcd::start().unwrap();
    let json = r#"{"Network": "10.1.0.0/16", "SubnetMin": "10.1.10.0", "SubnetMax": "10.1.200.0"}"#;
    let config = config::parse(json).unwrap().ipv4.unwrap();
    let subnets = acquire_all(&etcd, json, 30).await;
    let distinct: BTreeSet<_> = subnets.iter().collect();
    assert_eq!(distinct.len(), 30, "{subnets:?}");
    assert!(
        subnets.iter().all(|s| config.contains_subnet(s)),
        "{subnets:?}"
    );
    assert_eq!(etcd.keys(&format!("{PREFIX}/subnets/")).unwrap().len(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_for_the_last_free_subnets_everyone_wins_one() {
    require_root();
    let etcd = Etcd::start().unwrap();
    // /28s of a /24: SubnetMin .16 to SubnetMax .240, 15 subnets for 15 managers.
    let json = r#"{"Network": "10.1.0.0/24", "SubnetLen": 28}"#;
    let subnets = acquire_all(&etcd, json, 15).await;
    let distinct: BTreeSet<_> = subnets.iter().collect();
    assert_eq!(distinct.len(), 15, "{subnets:?}");
    one_more_is_out_of_subnets(&etcd, json).await;
}

/// Another host asks for a lease when every subnet is taken: refused as out of subnets.
async fn one_more_is_out_of_subnets(etcd: &Etcd, config_json: &str) -> anyhow::Error {
    let config = config::parse(config_json).unwrap();
    let mut registry = Registry::connect(&options(etcd)).await.unwrap();
    let err = acquire(&mut registry, &config, &attrs(99), None, DEFAULT_LEASE_TTL)
        .await
        .unwrap_err();
    assert!(err.is::<OutOfSubnets>(), "{err:#}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_hosts_reservation_is_never_taken() {
    require_root();
    let etcd = Etcd::start().unwrap();
    // /26s of a /24: .64, .128, .192; .128 is reserved for someone else.
    let json = r#"{"Network": "10.1.0.0/24", "SubnetLen": 26}"#;
    let reserved = format!("{PREFIX}/subnets/10.1.0.128-26");
    etcd.put(&reserved, &attrs(1000).to_json()).unwrap();
    let subnets = acquire_all(&etcd, json, 2).await;
    assert!(
        !subnets.contains(&"10.1.0.128/26".parse().unwrap()),
        "{subnets:?}"
    );
    assert_eq!(
        etcd.lease_of(&reserved).unwrap(),
        0,
        "the reservation keeps no TTL"
    );
    assert_eq!(etcd.get(&reserved).unwrap().unwrap(), attrs(1000).to_json());
}

/// The network config as a client with `options` gets it from etcd.
async fn config_via(options: &EtcdOptions) -> anyhow::Result<String> {
    let mut registry = Registry::connect(options).await?;
    registry
        .config()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no config"))
}

/// True when etcd will not serve the config to a client with `options`, at connect or at
/// the first request.
async fn refused(options: &EtcdOptions) -> bool {
    config_via(options).await.is_err()
}

fn write_tls_files(dir: &std::path::Path) -> TlsFiles {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "flannel test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (server_cert, server_key) = leaf("etcd");
    let (client_cert, client_key) = leaf("flanneld");
    TlsFiles {
        ca: write("ca.pem", &ca_cert.pem()),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server-key.pem", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client-key.pem", &client_key),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_with_client_certificates() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let files = write_tls_files(dir.path());
    let (ca, cert, key) = (
        files.ca.clone(),
        files.client_cert.clone(),
        files.client_key.clone(),
    );
    let etcd = Etcd::start_tls(files).unwrap();
    etcd.put(&format!("{PREFIX}/config"), r#"{"Network": "10.1.0.0/16"}"#)
        .unwrap();

    let good = EtcdOptions {
        cafile: Some(ca.clone()),
        certfile: Some(cert.clone()),
        keyfile: Some(key.clone()),
        ..options(&etcd)
    };
    assert!(config_via(&good).await.unwrap().contains("10.1.0.0/16"));

    // Without a client certificate, etcd refuses us.
    let anonymous = EtcdOptions {
        cafile: Some(ca),
        ..options(&etcd)
    };
    assert!(
        refused(&anonymous).await,
        "etcd accepted a client without a certificate"
    );

    // A certificate without its key is a usage error, named as such.
    let half = EtcdOptions {
        certfile: Some(cert),
        ..options(&etcd)
    };
    let err = Registry::connect(&half).await.err().expect("refused");
    assert!(
        err.to_string()
            .contains("--etcd-certfile and --etcd-keyfile go together"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_with_username_and_password() {
    require_root();
    let etcd = Etcd::start().unwrap();
    etcd.etcdctl(&["user", "add", "root:s3cret"]).unwrap();
    etcd.etcdctl(&["auth", "enable"]).unwrap();
    etcd.etcdctl(&[
        "--user=root:s3cret",
        "put",
        &format!("{PREFIX}/config"),
        r#"{"Network": "10.1.0.0/16"}"#,
    ])
    .unwrap();

    let with = |user: Option<&str>, password: Option<&str>| EtcdOptions {
        username: user.map(str::to_owned),
        password: password.map(str::to_owned),
        ..options(&etcd)
    };
    let good = with(Some("root"), Some("s3cret"));
    assert!(config_via(&good).await.unwrap().contains("10.1.0.0/16"));

    assert!(
        refused(&with(Some("root"), Some("wrong"))).await,
        "a wrong password was accepted"
    );
    assert!(
        refused(&options(&etcd)).await,
        "etcd with auth answered an anonymous client"
    );
    let half = Registry::connect(&with(Some("root"), None))
        .await
        .err()
        .expect("refused");
    assert!(
        half.to_string()
            .contains("--etcd-username and --etcd-password go together"),
        "{half}"
    );
}
