//! What the agent must do about its own lease, driven by what etcd says about our key.

use crate::control::{
    acquire::OwnLease,
    registry::{LeaseChange, StoredLease},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Our key holds our value: renew it at the margin.
    Held,
    /// Another writer put this in our key: write ours back (our subnet stays ours while our
    /// etcd lease lives).
    Overwritten(StoredLease),
    /// Our key is gone, or the subnet was taken for good: acquire again, the same subnet if
    /// it is free.
    Lost,
}

impl LeaseState {
    /// After a change the watch reported; `own` is the lease we hold.
    pub fn on_change(self, own: &OwnLease, change: &LeaseChange) -> Self {
        match (self, change) {
            // Acquiring again settles it, whatever happens to the key meanwhile.
            (Self::Lost, _) => Self::Lost,
            (_, LeaseChange::Deleted(subnets)) if *subnets == own.subnets => Self::Lost,
            (_, LeaseChange::Put(lease)) if lease.subnets == own.subnets => Self::of(own, lease),
            (state, _) => state,
        }
    }

    /// After a full listing of the leases.
    pub fn on_listing(self, own: &OwnLease, leases: &[StoredLease]) -> Self {
        match (self, leases.iter().find(|l| l.subnets == own.subnets)) {
            (Self::Lost, _) | (_, None) => Self::Lost,
            (_, Some(lease)) => Self::of(own, lease),
        }
    }

    fn of(own: &OwnLease, lease: &StoredLease) -> Self {
        if lease.attrs == own.attrs {
            Self::Held
        } else {
            Self::Overwritten(lease.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, time::Duration};

    use super::*;
    use crate::control::lease::{BackendAttrs, LeaseAttrs, Subnets};

    fn own() -> OwnLease {
        OwnLease {
            subnets: Subnets::ipv4("10.1.5.0/24".parse().unwrap()),
            attrs: attrs(5),
            lease_id: 7,
            expires: None,
            ttl: Duration::from_secs(60),
        }
    }

    fn attrs(ip: u8) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: Ipv4Addr::new(192, 168, 64, ip),
            public_ipv6: None,
            backend: BackendAttrs::Udp,
        }
    }

    fn stored(subnet: &str, ip: u8) -> StoredLease {
        StoredLease {
            subnets: Subnets::ipv4(subnet.parse().unwrap()),
            attrs: attrs(ip),
            lease_id: 9,
            created: 3,
        }
    }

    #[test]
    fn another_value_in_our_key_is_an_overwrite_and_ours_back_is_held() {
        let intruder = stored("10.1.5.0/24", 9);
        let state = LeaseState::Held.on_change(&own(), &LeaseChange::Put(intruder.clone()));
        assert_eq!(state, LeaseState::Overwritten(intruder));
        let back = state.on_change(&own(), &LeaseChange::Put(stored("10.1.5.0/24", 5)));
        assert_eq!(back, LeaseState::Held);
    }

    #[test]
    fn other_keys_change_nothing() {
        let other = LeaseChange::Put(stored("10.1.6.0/24", 9));
        assert_eq!(LeaseState::Held.on_change(&own(), &other), LeaseState::Held);
        let deleted = LeaseChange::Deleted(Subnets::ipv4("10.1.6.0/24".parse().unwrap()));
        assert_eq!(
            LeaseState::Held.on_change(&own(), &deleted),
            LeaseState::Held
        );
    }

    #[test]
    fn a_deleted_key_is_lost_until_acquired_again() {
        let deleted = LeaseChange::Deleted(Subnets::ipv4("10.1.5.0/24".parse().unwrap()));
        let lost = LeaseState::Held.on_change(&own(), &deleted);
        assert_eq!(lost, LeaseState::Lost);
        let put = LeaseChange::Put(stored("10.1.5.0/24", 5));
        assert_eq!(lost.on_change(&own(), &put), LeaseState::Lost);
    }

    #[test]
    fn a_listing_finds_our_key_missing_overwritten_or_ours() {
        let listing = [stored("10.1.6.0/24", 6)];
        assert_eq!(
            LeaseState::Held.on_listing(&own(), &listing),
            LeaseState::Lost
        );
        let listing = [stored("10.1.5.0/24", 9)];
        assert!(matches!(
            LeaseState::Held.on_listing(&own(), &listing),
            LeaseState::Overwritten(_)
        ));
        let listing = [stored("10.1.5.0/24", 5)];
        assert_eq!(
            LeaseState::Held.on_listing(&own(), &listing),
            LeaseState::Held
        );
    }
}
