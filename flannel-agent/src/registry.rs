//! The subnet registry in etcd (v3 API): flannel's config and lease keys.

use std::{future::Future, path::PathBuf, time::Duration};

use anyhow::{anyhow, bail, Context, Result};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use ipnet::Ipv4Net;
use tracing::warn;

use crate::lease::{parse_subnet_key, subnet_key, subnets_prefix, LeaseAttrs};

/// How long one etcd request may take before we call etcd unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub cafile: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// A lease as stored: its subnet, its value, and its etcd lease (0: a reservation, no TTL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredLease {
    pub subnet: Ipv4Net,
    pub attrs: LeaseAttrs,
    pub lease_id: i64,
}

/// All leases at one etcd revision.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub revision: i64,
    pub leases: Vec<StoredLease>,
}

/// A change under `subnets/`, as the watch reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseChange {
    Put(StoredLease),
    Deleted(Ipv4Net),
}

#[derive(Clone)]
pub struct Registry {
    client: Client,
    prefix: String,
}

impl Registry {
    pub async fn connect(options: &EtcdOptions) -> Result<Self> {
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), REQUEST_TIMEOUT);
        match (&options.username, &options.password) {
            (Some(user), Some(password)) => connect = connect.with_user(user, password),
            (None, None) => {}
            _ => bail!("--etcd-username and --etcd-password go together"),
        }
        if let Some(tls) = tls_options(options)? {
            connect = connect.with_tls(tls);
        }
        let endpoints: Vec<String> = options
            .endpoints
            .iter()
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            bail!("--etcd-endpoints is empty");
        }
        let client = timed(
            "connecting to etcd",
            Client::connect(&endpoints, Some(connect)),
        )
        .await
        .with_context(|| format!("etcd at {}", endpoints.join(",")))?;
        Ok(Self {
            client,
            prefix: options.prefix.trim_end_matches('/').to_owned(),
        })
    }

    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    /// The raw config JSON, or None while the key is missing.
    pub async fn config(&mut self) -> Result<Option<String>> {
        let key = self.config_key();
        let response = timed("reading the config", self.client.get(key.as_str(), None)).await?;
        match response.kvs().first() {
            None => Ok(None),
            Some(kv) => Ok(Some(
                kv.value_str()
                    .with_context(|| format!("{key} is not UTF-8"))?
                    .to_owned(),
            )),
        }
    }

    /// Every parseable lease; keys or values that don't parse are skipped with a warning.
    pub async fn snapshot(&mut self) -> Result<Snapshot> {
        let prefix = subnets_prefix(&self.prefix);
        let response = timed(
            "listing leases",
            self.client
                .get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let revision = response.header().map(|h| h.revision()).unwrap_or_default();
        let leases = response
            .kvs()
            .iter()
            .filter_map(|kv| self.parse(kv))
            .collect();
        Ok(Snapshot { revision, leases })
    }

    /// Creates the lease if nobody holds the subnet; None when someone does.
    pub async fn create(
        &mut self,
        subnet: &Ipv4Net,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Option<i64>> {
        let key = subnet_key(&self.prefix, subnet);
        let lease_id = self.grant(ttl).await?;
        let txn = Txn::new()
            .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                attrs.to_json(),
                Some(PutOptions::new().with_lease(lease_id)),
            )]);
        let response = timed("creating a lease", self.client.txn(txn)).await?;
        if !response.succeeded() {
            self.revoke(lease_id).await;
        }
        Ok(response.succeeded().then_some(lease_id))
    }

    /// Rewrites the value of a lease we hold with a fresh TTL (or none: a reservation stays
    /// a reservation), only while the key still carries `current_lease`. None when it doesn't
    /// (the key expired, was deleted, or was taken over).
    pub async fn refresh(
        &mut self,
        subnet: &Ipv4Net,
        attrs: &LeaseAttrs,
        current_lease: i64,
        ttl: Option<Duration>,
    ) -> Result<Option<i64>> {
        let key = subnet_key(&self.prefix, subnet);
        let lease_id = match ttl {
            Some(ttl) => self.grant(ttl).await?,
            None => 0,
        };
        let put_options = (lease_id != 0).then(|| PutOptions::new().with_lease(lease_id));
        let txn = Txn::new()
            .when([
                Compare::version(key.as_str(), CompareOp::Greater, 0),
                Compare::lease(key.as_str(), CompareOp::Equal, current_lease),
            ])
            .and_then([TxnOp::put(key.as_str(), attrs.to_json(), put_options)]);
        let response = timed("renewing the lease", self.client.txn(txn)).await?;
        if response.succeeded() {
            // The old etcd lease holds no key any more.
            if current_lease != 0 && current_lease != lease_id {
                self.revoke(current_lease).await;
            }
            Ok(Some(lease_id))
        } else {
            if lease_id != 0 {
                self.revoke(lease_id).await;
            }
            Ok(None)
        }
    }

    /// Watches `subnets/` from `revision` (inclusive).
    pub async fn watch(&mut self, revision: i64) -> Result<WatchStream> {
        let prefix = subnets_prefix(&self.prefix);
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision);
        timed(
            "starting the watch",
            self.client.watch(prefix.as_str(), Some(options)),
        )
        .await
    }

    /// The lease changes in one watch response; malformed entries skipped with a warning.
    pub fn changes(&self, response: &etcd_client::WatchResponse) -> Vec<LeaseChange> {
        response
            .events()
            .iter()
            .filter_map(|event| {
                let kv = event.kv()?;
                match event.event_type() {
                    EventType::Put => self.parse(kv).map(LeaseChange::Put),
                    EventType::Delete => {
                        let key = kv.key_str().ok()?;
                        parse_subnet_key(&self.prefix, key).map(LeaseChange::Deleted)
                    }
                }
            })
            .collect()
    }

    async fn grant(&mut self, ttl: Duration) -> Result<i64> {
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        Ok(
            timed("granting an etcd lease", self.client.lease_grant(ttl, None))
                .await?
                .id(),
        )
    }

    /// Best effort: an unattached lease expires by itself anyway.
    async fn revoke(&mut self, lease_id: i64) {
        let _ = timed(
            "revoking an unused lease",
            self.client.lease_revoke(lease_id),
        )
        .await;
    }

    fn parse(&self, kv: &KeyValue) -> Option<StoredLease> {
        let key = String::from_utf8_lossy(kv.key());
        let Some(subnet) = parse_subnet_key(&self.prefix, &key) else {
            warn!(key = %key, "skipping a key under subnets/ that is not a subnet");
            return None;
        };
        let value = String::from_utf8_lossy(kv.value());
        match LeaseAttrs::from_json(&value) {
            Ok(attrs) => Some(StoredLease {
                subnet,
                attrs,
                lease_id: kv.lease(),
            }),
            Err(e) => {
                warn!(key = %key, error = %e, "skipping a lease whose value does not parse");
                None
            }
        }
    }
}

fn tls_options(options: &EtcdOptions) -> Result<Option<TlsOptions>> {
    let read = |path: &PathBuf, what: &str| {
        std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
    };
    let mut tls = TlsOptions::new();
    let mut any = false;
    if let Some(ca) = &options.cafile {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca, "--etcd-cafile")?));
        any = true;
    }
    match (&options.certfile, &options.keyfile) {
        (Some(cert), Some(key)) => {
            let identity =
                Identity::from_pem(read(cert, "--etcd-certfile")?, read(key, "--etcd-keyfile")?);
            tls = tls.identity(identity);
            any = true;
        }
        (None, None) => {}
        _ => bail!("--etcd-certfile and --etcd-keyfile go together (client certificate auth)"),
    }
    Ok(any.then_some(tls))
}

/// One etcd call with a deadline, so a dead cluster is an error rather than a hang.
async fn timed<T>(
    what: &str,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(result) => result.map_err(|e| anyhow!("{what}: {e}")),
        Err(_) => bail!("{what}: etcd did not answer within {REQUEST_TIMEOUT:?}"),
    }
}
