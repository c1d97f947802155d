//! The subnet registry in etcd (v3 API): flannel's config and lease keys.

use std::{future::Future, path::PathBuf, time::Duration};

use anyhow::{anyhow, bail, Context, Result};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use tracing::warn;

use crate::control::lease::{subnets_prefix, LeaseAttrs, Subnets};

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
    pub subnets: Subnets,
    pub attrs: LeaseAttrs,
    pub lease_id: i64,
    /// etcd's create revision of the key: which of two colliding leases is older.
    pub created: i64,
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
    Deleted(Subnets),
}

/// flannel's registry in etcd, through one endpoint at a time: etcd-client's balanced
/// channel fails a share of all requests while any endpoint is down (etcdv3/etcd-client#39),
/// so, as etcd's Go client does, we stay on one endpoint and move to the next when a call
/// fails.
pub struct Registry {
    client: Client,
    prefix: String,
    endpoints: Vec<String>,
    /// The index in `endpoints` of the one in use.
    current: usize,
    connect: ConnectOptions,
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
        let mut last_error = None;
        for (current, endpoint) in endpoints.iter().enumerate() {
            match timed(
                "connecting to etcd",
                Client::connect([endpoint], Some(connect.clone())),
            )
            .await
            {
                Ok(client) => {
                    return Ok(Self {
                        client,
                        prefix: options.prefix.trim_end_matches('/').to_owned(),
                        endpoints,
                        current,
                        connect,
                    })
                }
                Err(e) => last_error = Some(e.context(format!("etcd at {endpoint}"))),
            }
        }
        Err(last_error.expect("at least one endpoint"))
    }

    /// One etcd call, given a handle on the endpoint in use, with a deadline (a dead cluster
    /// is an error, not a hang). When it fails, the next calls go to the next endpoint.
    async fn call<T, F>(&mut self, what: &str, call: impl FnOnce(Client) -> F) -> Result<T>
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        let result = timed(what, call(self.client.clone())).await;
        if result.is_err() && self.endpoints.len() > 1 {
            self.next_endpoint().await;
        }
        result
    }

    async fn next_endpoint(&mut self) {
        let failed = &self.endpoints[self.current];
        self.current = (self.current + 1) % self.endpoints.len();
        let next = &self.endpoints[self.current];
        match Client::connect([next], Some(self.connect.clone())).await {
            Ok(client) => {
                warn!(failed = %failed, next = %next, "moving to the next etcd endpoint");
                self.client = client;
            }
            Err(e) => warn!(failed = %failed, next = %next, "etcd endpoint refused: {e}"),
        }
    }

    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    /// The raw config JSON, or None while the key is missing.
    pub async fn config(&mut self) -> Result<Option<String>> {
        let key = self.config_key();
        let response = self
            .call("reading the config", |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
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
        let response = self
            .call("listing leases", |mut c| async move {
                c.get(prefix, Some(GetOptions::new().with_prefix())).await
            })
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
        subnets: &Subnets,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Option<i64>> {
        let key = subnets.key(&self.prefix);
        let lease_id = self.grant(ttl).await?;
        let txn = Txn::new()
            .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                attrs.to_json(),
                Some(PutOptions::new().with_lease(lease_id)),
            )]);
        let response = self
            .call("creating a lease", |mut c| async move { c.txn(txn).await })
            .await?;
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
        subnets: &Subnets,
        attrs: &LeaseAttrs,
        current_lease: i64,
        ttl: Option<Duration>,
    ) -> Result<Option<i64>> {
        let key = subnets.key(&self.prefix);
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
        let response = self
            .call(
                "renewing the lease",
                |mut c| async move { c.txn(txn).await },
            )
            .await?;
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

    /// Deletes a lease's key while it still carries `lease_id` (0: a reservation), and revokes
    /// that.
    pub async fn withdraw(&mut self, subnets: &Subnets, lease_id: i64) -> Result<()> {
        let key = subnets.key(&self.prefix);
        let txn = Txn::new()
            .when([Compare::lease(key.as_str(), CompareOp::Equal, lease_id)])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        self.call(
            "withdrawing a lease",
            |mut c| async move { c.txn(txn).await },
        )
        .await?;
        self.revoke(lease_id).await;
        Ok(())
    }

    /// Writes our value back over a key another writer changed, under our etcd lease while
    /// it lives (0: a reservation, written back without one). None when our etcd lease is
    /// gone and the writer's is alive: the subnet is theirs now.
    pub async fn reclaim(
        &mut self,
        held: &StoredLease,
        attrs: &LeaseAttrs,
        ours: i64,
        ttl: Duration,
    ) -> Result<Option<i64>> {
        let ours_alive = ours == 0 || self.lease_alive(ours).await?;
        if !ours_alive && held.lease_id != 0 && self.lease_alive(held.lease_id).await? {
            return Ok(None);
        }
        let lease_id = if ours_alive {
            ours
        } else {
            self.grant(ttl).await?
        };
        let key = held.subnets.key(&self.prefix);
        let options = (lease_id != 0).then(|| PutOptions::new().with_lease(lease_id));
        let json = attrs.to_json();
        self.call("writing our lease back", |mut c| async move {
            c.put(key, json, options).await
        })
        .await?;
        Ok(Some(lease_id))
    }

    async fn lease_alive(&mut self, lease_id: i64) -> Result<bool> {
        let response = self
            .call("reading an etcd lease", |mut c| async move {
                c.lease_time_to_live(lease_id, None).await
            })
            .await?;
        Ok(response.ttl() > 0)
    }

    /// Watches `subnets/` from `revision` (inclusive).
    pub async fn watch(&mut self, revision: i64) -> Result<WatchStream> {
        let prefix = subnets_prefix(&self.prefix);
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision);
        self.call("starting the watch", |mut c| async move {
            c.watch(prefix, Some(options)).await
        })
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
                        Subnets::parse_key(&self.prefix, key).map(LeaseChange::Deleted)
                    }
                }
            })
            .collect()
    }

    async fn grant(&mut self, ttl: Duration) -> Result<i64> {
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let response = self
            .call("granting an etcd lease", |mut c| async move {
                c.lease_grant(ttl, None).await
            })
            .await?;
        Ok(response.id())
    }

    /// Best effort: an unattached lease expires by itself anyway.
    async fn revoke(&mut self, lease_id: i64) {
        let _ = self
            .call("revoking an unused lease", |mut c| async move {
                c.lease_revoke(lease_id).await
            })
            .await;
    }

    fn parse(&self, kv: &KeyValue) -> Option<StoredLease> {
        let key = String::from_utf8_lossy(kv.key());
        let Some(subnets) = Subnets::parse_key(&self.prefix, &key) else {
            warn!(key = %key, "skipping a key under subnets/ that is not a subnet");
            return None;
        };
        let value = String::from_utf8_lossy(kv.value());
        match LeaseAttrs::from_json(&value) {
            Ok(attrs) => Some(StoredLease {
                subnets,
                attrs,
                lease_id: kv.lease(),
                created: kv.create_revision(),
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

/// `call` with a deadline.
async fn timed<T>(
    what: &str,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(result) => result.map_err(|e| anyhow!("{what}: {e}")),
        Err(_) => bail!("{what}: etcd did not answer within {REQUEST_TIMEOUT:?}"),
    }
}
