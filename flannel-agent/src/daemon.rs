//! The agent's life: wait for the config, hold a lease, write subnet.env, follow the peers.
//!
//! On SIGTERM or SIGINT it exits 0 and leaves the lease, subnet.env, the rules and the
//! datapath in place, so that a restart does not cut traffic.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context, Result};
use etcd_client::{WatchResponse, WatchStream};
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    time::{interval_at, sleep, sleep_until, Instant, MissedTickBehavior},
};
use tracing::{error, info, warn};

use crate::{
    cli::Args,
    control::{
        acquire::{acquire, renew, OutOfSubnets, OwnLease},
        config::{self, Config},
        lease::LeaseAttrs,
        lease_state::LeaseState,
        peers::{PeerTable, Rules},
        registry::{LeaseChange, Registry, StoredLease},
        subnet_env::{self, SubnetEnv},
    },
    datapath::{ebpf::Maps, Datapath, Ours},
    host::{
        blackhole,
        endpoints::ContainerEvents,
        firewall::{self, Firewall, Wanted},
        iface,
        iface::ExtIface,
        netlink, rules,
    },
    ops::{
        health, metrics,
        systemd::{notify, probe, spawn_watchdog},
    },
};

const RETRY: Duration = Duration::from_secs(1);
/// The longest wait between attempts to write what the datapath refused.
const MAX_SYNC_BACKOFF: Duration = Duration::from_secs(16);
const RENEW_RETRY: Duration = Duration::from_secs(60);
/// At most this long between attempts to reopen the lease watch: it is back within 5 s of
/// etcd answering again, however long the outage.
const MAX_WATCH_BACKOFF: Duration = Duration::from_secs(4);

pub async fn run(args: Args) -> Result<()> {
    let ready = Arc::new(AtomicBool::new(false));
    let (metrics_requests, metrics) = tokio::sync::mpsc::channel(4);
    if args.healthz_port != 0 {
        let addr = SocketAddr::new(args.healthz_ip, args.healthz_port);
        health::serve(addr, ready.clone(), metrics_requests).await?;
    }
    // What the command line got wrong is said now, before anything is leased or created.
    subnet_env::check_writable(&args.subnet_file)?;
    let datapath_options = args.datapath_options();
    datapath_options.check()?;
    let iface = iface::choose(&args.iface_options())?;
    info!(iface = %iface.name, public_ip = %iface.public_ip, public_ipv6 = ?iface.public_ipv6,
          mtu = iface.mtu, "using interface");
    let mut registry = Registry::connect(&args.etcd_options()).await?;
    let config = wait_for_config(&mut registry).await;
    info!(network = ?config.ipv4.as_ref().map(|v4| v4.network),
          ipv6_network = ?config.ipv6.as_ref().map(|v6| v6.network),
          backend = config.backend.type_name(), "network config");
    if config.ipv4.is_some() && iface.public_ip.is_unspecified() {
        bail!(
            "Network: {} has no IPv4 address to advertise; add one, give --public-ip, or make \
             the network IPv6-only (EnableIPv4: false)",
            iface.name
        );
    }
    let public_ipv6 = match (&config.ipv6, iface.public_ipv6) {
        (None, _) => None,
        (Some(_), Some(ipv6)) => Some(ipv6),
        (Some(_), None) => bail!(
            "EnableIPv6: {} has no global IPv6 address to advertise; add one, or give \
             --public-ipv6",
            iface.name
        ),
    };
    let (ipv4, ipv6) = config.families();
    let rules = args.ip_masq || args.iptables_forward_rules;
    firewall::check_tools(config.nftables, (ipv4 && rules, ipv6 && rules)).await?;
    let mut datapath = Datapath::start(&datapath_options, &config, &iface).await?;
    let attrs = LeaseAttrs {
        // flannel's IPv6-only leases say 0.0.0.0.
        public_ip: match config.ipv4 {
            Some(_) => iface.public_ip,
            None => Ipv4Addr::UNSPECIFIED,
        },
        public_ipv6,
        backend: datapath.lease_backend(),
    };

    let previous = subnet_env::previous_subnets(&args.subnet_file)?;
    let ttl = Duration::from_secs(args.subnet_lease_ttl);
    let lease = loop {
        match acquire(&mut registry, &config, &attrs, previous, ttl).await {
            Ok(lease) => break lease,
            Err(e) if e.is::<OutOfSubnets>() => return Err(e),
            Err(e) => warn!("acquiring a lease: {e:#}; retrying"),
        }
        sleep(RETRY).await;
    };
    let mtu = iface.overlay_mtu(&config.backend);
    datapath.activate(ours(&config, &lease), mtu).await?;
    let (maps_done, maps_read) = tokio::sync::mpsc::channel(1);
    let firewall = Firewall::start(firewall(&args, &config, &lease, &datapath)).await;
    let mut agent = Agent {
        firewall,
        peers: PeerTable::new(Rules::of(
            &config,
            &args.etcd.etcd_prefix,
            Some((&lease.subnets, &lease.attrs)),
        )),
        args,
        registry,
        config,
        iface,
        lease,
        lease_state: LeaseState::Held,
        retry_at: None,
        revision: 0,
        datapath,
        counts: Counts::default(),
        sync_retry: None,
        maps_read: maps_done,
        reading_maps: false,
        etcd_down: false,
        last_status: String::new(),
        netlink: netlink::connect()?,
    };
    agent.publish_subnet()?;
    agent.ensure_blackholes().await;
    while let Err(e) = agent.relist().await {
        warn!("listing peers: {e:#}; retrying");
        sleep(RETRY).await;
    }
    agent.datapath.attach().await?;
    // The fast path learns the containers already there. (Reading the rest back waits for
    // the first resync: the maps were just filled, and a start stays quick at any scale.)
    agent.follow_containers().await;
    let containers = match agent.datapath.container_events() {
        Some(Err(e)) => {
            warn!("containers are followed at each resync only: {e:#}");
            None
        }
        events => events.and_then(Result::ok),
    };
    // Watch before saying ready: the first lease change then waits for nothing.
    let watch = agent.open_watch().await;
    // Caught from before READY=1: a stop right after it must still end cleanly.
    let stop = Stop::catch()?;
    ready.store(true, Ordering::Relaxed);
    agent.last_status = agent.status();
    // Logged first: whoever waits for READY=1 finds the line.
    info!(subnets = %agent.lease.subnets, peers = agent.peers.len(), "ready");
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&agent.last_status),
    ]);
    agent.run(metrics, watch, stop, containers, maps_read).await
}

/// Waits until `<prefix>/config` exists and parses, saying every second what is wrong.
async fn wait_for_config(registry: &mut Registry) -> Config {
    let key = registry.config_key();
    loop {
        match registry.config().await {
            Ok(Some(json)) => match config::parse(&json).and_then(|config| {
                config.check_supported()?;
                Ok(config)
            }) {
                Ok(config) => return config,
                Err(e) => error!("the network config at {key} cannot be used: {e:#}"),
            },
            Ok(None) => warn!(
                "no network config at {key}; create it, e.g. ETCDCTL_API=3 etcdctl put {key} \
                 '{{\"Network\": \"10.1.0.0/16\", \"Backend\": {{\"Type\": \"vxlan\"}}}}'"
            ),
            Err(e) => warn!("etcd is not reachable: {e:#}; retrying"),
        }
        sleep(RETRY).await;
    }
}

struct Agent {
    args: Args,
    registry: Registry,
    config: Config,
    iface: ExtIface,
    lease: OwnLease,
    /// What our lease needs: renewal, writing back, or acquiring again.
    lease_state: LeaseState,
    /// When the last lease operation failed, when to try again.
    retry_at: Option<Instant>,
    /// The etcd revision the peer table reflects.
    revision: i64,
    peers: PeerTable,
    datapath: Datapath,
    counts: Counts,
    /// Our iptables rules, kept by a task of their own.
    firewall: Firewall,
    /// Where a read-back of the eBPF maps reports, and whether one is under way.
    maps_read: tokio::sync::mpsc::Sender<Result<Maps>>,
    reading_maps: bool,
    /// The lease watch can't be reopened: etcd is unreachable.
    etcd_down: bool,
    /// When to retry the datapath writes that failed, and the wait before that.
    sync_retry: Option<(Instant, Duration)>,
    /// The last STATUS= sent to systemd.
    last_status: String,
    /// For the host's routes of ours that no datapath owns (blackholes).
    netlink: rtnetlink::Handle,
}

/// SIGTERM and SIGINT, once the agent is up.
struct Stop {
    term: Signal,
    int: Signal,
}

impl Stop {
    fn catch() -> Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

type MapsInbox = tokio::sync::mpsc::Receiver<Result<Maps>>;

type MetricsInbox = tokio::sync::mpsc::Receiver<tokio::sync::oneshot::Sender<String>>;

/// Events counted for /metrics.
#[derive(Default)]
struct Counts {
    renewals: u64,
    watch_restarts: u64,
    /// Times the lease watch could not be reopened after it had run.
    etcd_outages: u64,
    etcd_errors: u64,
    datapath_errors: u64,
    overwrites: u64,
}

enum WatchInput {
    Message(WatchResponse),
    Ended(String),
    Reconnect,
}

impl Agent {
    /// The agent's loop; `metrics` brings the requests of /metrics.
    async fn run(
        &mut self,
        mut metrics: MetricsInbox,
        watch: Option<WatchStream>,
        mut stop: Stop,
        mut containers: Option<ContainerEvents>,
        mut maps_read: MapsInbox,
    ) -> Result<()> {
        // Start-up has just done what a resync does: the first one is a period away.
        let period = Duration::from_secs(self.args.iptables_resync);
        let mut resync = interval_at(Instant::now() + period, period);
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // A watch that could not start at start-up has failed once already.
        let mut backoff = if watch.is_some() {
            Duration::ZERO
        } else {
            RETRY
        };
        // A deadline, not a sleep: the loop's other events must not restart the wait.
        let mut reconnect_at = Instant::now() + backoff;
        let mut watch = watch;
        let mut probes = sd_notify::watchdog_enabled().map(spawn_watchdog);
        loop {
            tokio::select! {
                () = stop.recv() => break,
                reply = probe(&mut probes) => {
                    let _ = reply.send(());
                }
                Some(reply) = metrics.recv() => {
                    let _ = reply.send(self.metrics_text());
                }
                _ = sleep_until(self.lease_deadline()) => self.maintain_lease().await,
                _ = resync.tick() => self.resync().await,
                () = container_change(&mut containers) => self.follow_containers().await,
                Some(maps) = maps_read.recv() => self.maps_read(maps).await,
                // A failure may come from drift (a device removed, a full map): read back first.
                _ = at(self.sync_retry.map(|(when, _)| when)) => self.resync_datapath().await,
                input = next_watch_input(&mut watch, reconnect_at) => match input {
                    WatchInput::Reconnect => {
                        watch = self.open_watch().await;
                        backoff = match watch {
                            Some(_) => Duration::ZERO,
                            None => (backoff * 2).clamp(RETRY, MAX_WATCH_BACKOFF),
                        };
                        reconnect_at = Instant::now() + backoff;
                    }
                    WatchInput::Ended(why) => {
                        warn!("the lease watch stopped ({why}); resuming");
                        self.counts.watch_restarts += 1;
                        watch = None;
                        reconnect_at = Instant::now() + backoff;
                    }
                    WatchInput::Message(response) => {
                        if response.canceled() || response.compact_revision() > 0 {
                            warn!(
                                compacted = response.compact_revision(),
                                "the watch fell behind a compaction; re-listing leases"
                            );
                            watch = None;
                            reconnect_at = Instant::now();
                            if let Err(e) = self.relist().await {
                                warn!("re-listing leases: {e:#}");
                            }
                        } else {
                            self.on_watch(&response).await;
                        }
                    }
                },
            }
        }
        notify(&[sd_notify::NotifyState::Stopping]);
        info!("exiting; the lease, subnet.env, rules and datapath stay in place");
        Ok(())
    }

    /// The lease watch from the revision after the peer table's; None when etcd refused it
    /// (the loop retries, backing off).
    async fn open_watch(&mut self) -> Option<WatchStream> {
        match self.registry.watch(self.revision + 1).await {
            Ok(stream) => {
                info!(revision = self.revision + 1, "watching leases");
                self.etcd_down = false;
                Some(stream)
            }
            Err(e) => {
                warn!("starting the lease watch: {e:#}; retrying");
                self.counts.etcd_errors += 1;
                if !self.etcd_down {
                    self.etcd_down = true;
                    self.counts.etcd_outages += 1;
                }
                None
            }
        }
    }

    fn metrics_text(&mut self) -> String {
        let (traffic, drops) = self.datapath.counters().unwrap_or_else(|e| {
            warn!("reading the datapath's counters: {e:#}");
            Default::default()
        });
        metrics::render(&metrics::Snapshot {
            datapath: self.datapath.name(),
            receive: self.datapath.receive_path(),
            peers: self.peers.len(),
            rejections: self.peers.rejections().clone(),
            renewals: self.counts.renewals,
            watch_restarts: self.counts.watch_restarts,
            etcd_outages: self.counts.etcd_outages,
            etcd_errors: self.counts.etcd_errors,
            etcd_up: !self.etcd_down,
            lease_expiry: self.lease.expires.map(|expires| {
                let left = expires.saturating_duration_since(std::time::Instant::now());
                (std::time::SystemTime::now() + left)
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs()
            }),
            datapath_errors: self.counts.datapath_errors,
            lease_overwrites: self.counts.overwrites,
            traffic,
            drops,
        })
    }

    /// systemd's STATUS= line.
    fn status(&self) -> String {
        format!(
            "subnet {}, {} peers, datapath {}",
            self.lease.subnets,
            self.peers.len(),
            self.datapath.name()
        )
    }

    fn lease_deadline(&self) -> Instant {
        if let Some(at) = self.retry_at {
            return at;
        }
        if self.lease_state != LeaseState::Held {
            return Instant::now();
        }
        let margin = Duration::from_secs(u64::from(self.args.subnet_lease_renew_margin) * 60);
        match self.lease.expires {
            Some(expires) => Instant::from_std(expires)
                .checked_sub(margin)
                .unwrap_or_else(Instant::now),
            // A reservation never expires: nothing to renew.
            None => Instant::now() + Duration::from_secs(365 * 24 * 3600),
        }
    }

    /// Renews the lease when due, writes it back when overwritten, acquires one again when
    /// lost; failures retry later.
    async fn maintain_lease(&mut self) {
        self.retry_at = None;
        match self.lease_state.clone() {
            LeaseState::Held => self.renew().await,
            LeaseState::Overwritten(held) => self.reclaim(&held).await,
            LeaseState::Lost => {
                let (attrs, ttl) = (&self.lease.attrs, self.lease.ttl);
                let subnets = Some(self.lease.subnets);
                match acquire(&mut self.registry, &self.config, attrs, subnets, ttl).await {
                    Ok(lease) => {
                        self.lease_state = LeaseState::Held;
                        self.adopt(lease).await;
                    }
                    Err(e) => {
                        error!("re-acquiring a lease: {e:#}; retrying");
                        self.retry_at = Some(Instant::now() + RETRY);
                    }
                }
            }
        }
    }

    /// Another writer's value is in our key: ours goes back at once, and the subnet stays
    /// ours, unless our etcd lease is gone and the writer's lives.
    async fn reclaim(&mut self, held: &StoredLease) {
        let (attrs, ours, ttl) = (&self.lease.attrs, self.lease.lease_id, self.lease.ttl);
        match self.registry.reclaim(held, attrs, ours, ttl).await {
            Ok(Some(lease_id)) => {
                error!(
                    subnets = %self.lease.subnets,
                    by = %held.attrs.public_ip, by_ipv6 = ?held.attrs.public_ipv6,
                    "another writer put its value in our lease; wrote ours back"
                );
                self.counts.overwrites += 1;
                if lease_id != ours {
                    self.lease.lease_id = lease_id;
                    self.lease.expires = Some(std::time::Instant::now() + ttl);
                }
                self.lease_state = LeaseState::Held;
            }
            Ok(None) => {
                error!(
                    subnets = %self.lease.subnets,
                    by = %held.attrs.public_ip, by_ipv6 = ?held.attrs.public_ipv6,
                    "our etcd lease expired and a live lease of another host took our subnet: \
                     moving to another subnet; restart Docker so that its --bip follows subnet.env"
                );
                self.lease_state = LeaseState::Lost;
            }
            Err(e) => {
                warn!("writing our lease back: {e:#}; retrying");
                self.counts.etcd_errors += 1;
                self.retry_at = Some(Instant::now() + RETRY);
            }
        }
    }

    async fn renew(&mut self) {
        match renew(&mut self.registry, &self.lease).await {
            Ok(Some(lease)) => {
                info!(subnets = %lease.subnets, "lease renewed");
                self.counts.renewals += 1;
                self.lease = lease;
            }
            Ok(None) => {
                warn!(subnets = %self.lease.subnets, "our lease is gone; re-acquiring");
                self.lease_state = LeaseState::Lost;
            }
            Err(e) => {
                warn!("renewing the lease: {e:#}; retrying in a minute");
                self.counts.etcd_errors += 1;
                self.retry_at = Some(Instant::now() + RENEW_RETRY);
            }
        }
    }

    /// Takes a newly acquired lease; a different subnet rewrites everything that names it.
    async fn adopt(&mut self, lease: OwnLease) {
        let moved = ours(&self.config, &lease) != ours(&self.config, &self.lease);
        if moved {
            error!(
                old = %self.lease.subnets,
                new = %lease.subnets,
                "our subnet changed: containers on the old one are cut off; restart Docker so \
                 that its --bip follows subnet.env"
            );
        } else {
            info!(subnets = %lease.subnets, "lease re-acquired, same subnet");
        }
        self.lease = lease;
        if moved {
            self.ensure_subnet_env();
            let mtu = self.iface.overlay_mtu(&self.config.backend);
            if let Err(e) = self
                .datapath
                .activate(ours(&self.config, &self.lease), mtu)
                .await
            {
                error!("datapath: {e:#}");
            }
            self.firewall.keep(self.firewall());
            let moved = self.peers.set_own(self.lease.subnets);
            self.datapath.mark(moved);
            self.sync_datapath().await;
        }
    }

    async fn on_watch(&mut self, response: &WatchResponse) {
        let last = response
            .events()
            .iter()
            .filter_map(|e| e.kv())
            .map(|kv| kv.mod_revision())
            .max();
        self.revision = self.revision.max(last.unwrap_or_default());
        let mut changed = false;
        for change in self.registry.changes(response) {
            let state = std::mem::replace(&mut self.lease_state, LeaseState::Held);
            self.lease_state = state.on_change(&self.lease, &change);
            match change {
                LeaseChange::Deleted(subnets) if subnets == self.lease.subnets => {
                    warn!(%subnets, "our lease was deleted or expired; re-acquiring");
                }
                LeaseChange::Put(lease) if lease.subnets == self.lease.subnets => {}
                LeaseChange::Put(lease) => {
                    let moved = self.peers.put(&lease);
                    changed |= !moved.is_empty();
                    self.datapath.mark(moved);
                }
                LeaseChange::Deleted(subnets) => {
                    let moved = self.peers.remove(&subnets);
                    changed |= !moved.is_empty();
                    self.datapath.mark(moved);
                }
            }
        }
        if changed {
            self.sync_datapath().await;
        }
    }

    /// Lists every lease and brings the peer table (and datapath) to match it.
    async fn relist(&mut self) -> Result<()> {
        let snapshot = self.registry.snapshot().await?;
        self.revision = snapshot.revision;
        let state = std::mem::replace(&mut self.lease_state, LeaseState::Held);
        self.lease_state = state.on_listing(&self.lease, &snapshot.leases);
        if self.lease_state == LeaseState::Lost {
            warn!(subnets = %self.lease.subnets, "our lease is not in etcd; re-acquiring");
        }
        let moved = self.peers.resync(&snapshot.leases);
        if !moved.is_empty() {
            self.datapath.mark(moved);
            self.sync_datapath().await;
        }
        Ok(())
    }

    /// Brings the datapath to the peer table; what fails is retried, backing off, until it
    /// holds.
    async fn sync_datapath(&mut self) {
        match self.datapath.sync(self.peers.desired()).await {
            Ok(()) => self.sync_retry = None,
            Err(e) => {
                let backoff = self
                    .sync_retry
                    .map_or(RETRY, |(_, last)| (last * 2).min(MAX_SYNC_BACKOFF));
                error!("datapath: {e:#}; retrying in {backoff:?}");
                self.counts.datapath_errors += 1;
                self.sync_retry = Some((Instant::now() + backoff, backoff));
            }
        }
    }

    /// Reads the datapath back from the kernel, then syncs: whatever was lost or added
    /// behind our back is fixed.
    ///
    /// The eBPF maps are read on a blocking thread, so lease changes meanwhile wait for
    /// nothing; their comparison follows in `maps_read`.
    async fn resync_datapath(&mut self) {
        if let (Some(read), false) = (self.datapath.map_reader(), self.reading_maps) {
            self.reading_maps = true;
            let done = self.maps_read.clone();
            tokio::task::spawn_blocking(move || {
                let _ = done.blocking_send(read());
            });
        }
        self.audit_datapath(None).await;
    }

    /// The eBPF maps as read back: compared with what is installed, fixed, synced.
    async fn maps_read(&mut self, maps: Result<Maps>) {
        self.reading_maps = false;
        match maps {
            Ok(maps) => self.audit_datapath(Some(maps)).await,
            Err(e) => {
                error!("datapath: reading the maps back: {e:#}");
                self.counts.datapath_errors += 1;
            }
        }
    }

    async fn audit_datapath(&mut self, maps: Option<Maps>) {
        if let Err(e) = self.datapath.audit(maps).await {
            error!("datapath: reading the kernel back: {e:#}");
            self.counts.datapath_errors += 1;
        }
        self.sync_datapath().await;
    }

    /// The fast path follows a container that came or went.
    async fn follow_containers(&mut self) {
        if let Err(e) = self.datapath.follow_containers().await {
            error!("datapath: following containers: {e:#}");
        }
    }

    /// subnet.env as our lease says it; None when the file already says so.
    fn subnet_env_to_write(&self) -> Option<SubnetEnv> {
        let env = SubnetEnv {
            ours: ours(&self.config, &self.lease),
            mtu: self.iface.overlay_mtu(&self.config.backend),
            ip_masq: self.args.ip_masq,
        };
        let on_disk = std::fs::read_to_string(&self.args.subnet_file).ok();
        (on_disk.as_deref() != Some(env.render().as_str())).then_some(env)
    }

    fn publish_subnet(&self) -> Result<()> {
        if let Some(env) = self.subnet_env_to_write() {
            env.write(&self.args.subnet_file)?;
            info!(path = %self.args.subnet_file.display(), subnets = %self.lease.subnets, "wrote subnet.env");
        }
        Ok(())
    }

    /// Rewrites subnet.env until it matches our lease (a failed write, a file changed or
    /// removed by hand); called at every resync.
    fn ensure_subnet_env(&self) {
        if let Err(e) = self.publish_subnet() {
            error!("{e:#}; retrying at the next resync");
        }
    }

    fn firewall(&self) -> Wanted {
        firewall(&self.args, &self.config, &self.lease, &self.datapath)
    }

    async fn resync(&mut self) {
        let status = self.status();
        if status != self.last_status {
            notify(&[sd_notify::NotifyState::Status(&status)]);
            self.last_status = status;
        }
        self.ensure_subnet_env();
        self.firewall.keep(self.firewall());
        self.ensure_blackholes().await;
        self.resync_datapath().await;
    }

    /// `--ip-blackhole-route`: a blackhole route for each of our subnets (none without it).
    async fn ensure_blackholes(&self) {
        let ours = ours(&self.config, &self.lease);
        let subnets: Vec<ipnet::IpNet> = match self.args.ip_blackhole_route {
            true => [
                ours.ipv4.map(|(_, s)| s.into()),
                ours.ipv6.map(|(_, s)| s.into()),
            ]
            .into_iter()
            .flatten()
            .collect(),
            false => Vec::new(),
        };
        if let Err(e) = blackhole::ensure(&self.netlink, &subnets).await {
            error!("{e:#}; retrying at the next resync");
        }
    }
}

/// Our end of the overlay, by `lease`.
fn ours(config: &Config, lease: &OwnLease) -> Ours {
    let (v4, v6) = (config.ipv4.as_ref(), config.ipv6.as_ref());
    Ours {
        ipv4: v4.and_then(|v4| Some((v4.network, lease.subnets.ipv4?))),
        ipv6: v6.and_then(|v6| Some((v6.network, lease.subnets.ipv6?))),
    }
}

/// What the firewall should hold: flannel's rules as the flags ask, for each family of the
/// network, and (on the eBPF fast path) the FORWARD rules it bypasses named.
fn firewall(args: &Args, config: &Config, lease: &OwnLease, datapath: &Datapath) -> Wanted {
    let ours = ours(config, lease);
    let families = [
        ours.ipv4.map(|(n, s)| (n.into(), s.into())),
        ours.ipv6.map(|(n, s)| (n.into(), s.into())),
    ];
    let mut chains = Vec::new();
    for (network, subnet) in families.into_iter().flatten() {
        if args.ip_masq {
            let fully_random = !args.ip_masq_fully_random_disable;
            chains.push(rules::masquerade(network, subnet, fully_random));
        }
        if args.iptables_forward_rules {
            chains.push(rules::forward(network));
        }
    }
    Wanted {
        chains,
        nftables: config.nftables,
        fast_path: datapath.bypasses_forward(),
    }
}

/// The next container change, if they are followed (else: never).
async fn container_change(events: &mut Option<ContainerEvents>) {
    match events {
        Some(events) => events.changed().await,
        None => std::future::pending().await,
    }
}

/// A deadline that may not be set (then: never).
async fn at(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn next_watch_input(watch: &mut Option<WatchStream>, reconnect_at: Instant) -> WatchInput {
    match watch {
        None => {
            sleep_until(reconnect_at).await;
            WatchInput::Reconnect
        }
        Some(stream) => match stream.message().await {
            Ok(Some(response)) => WatchInput::Message(response),
            Ok(None) => WatchInput::Ended("the stream closed".into()),
            Err(e) => WatchInput::Ended(e.to_string()),
        },
    }
}
