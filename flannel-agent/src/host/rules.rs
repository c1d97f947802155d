//! flannel's traffic rules (`--ip-masq`, `--iptables-forward-rules`), described once: the
//! iptables and nftables backends each write them their way, with the same meaning.

use std::fmt;

use ipnet::IpNet;

/// kube-proxy's mark on packets it has already masqueraded (flannel leaves them alone).
pub const KUBE_PROXY_MARK: u32 = 0x4000;

/// What a rule matches: all of it, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    /// The packet mark has these bits set.
    Mark(u32),
    Source(IpNet),
    NotSource(IpNet),
    Destination(IpNet),
    NotDestination(IpNet),
}

/// What a matching packet gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Leaves our chain: nothing more of ours applies.
    Return,
    /// Source NAT to the outgoing interface's address; `fully_random`: ports picked at random
    /// (`--ip-masq-fully-random-disable` turns it off).
    Masquerade {
        fully_random: bool,
    },
    Accept,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub verdict: Verdict,
}

/// Where a chain of ours hooks in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// NAT after routing: the masquerade rules.
    Postrouting,
    /// Filtering forwarded packets: the forward rules.
    Forward,
}

/// One chain of our rules, for one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub hook: Hook,
    pub ipv6: bool,
    pub rules: Vec<Rule>,
}

/// flannel's masquerade rules for network `n` and our subnet `s` (one family), in flannel's
/// order: what kube-proxy marked, and traffic within the overlay, is left alone; traffic from
/// the overlay to the world, and from the host into the overlay, is masqueraded.
pub fn masquerade(n: IpNet, s: IpNet, fully_random: bool) -> Chain {
    use Match::*;
    let multicast: IpNet = match n {
        IpNet::V4(_) => "224.0.0.0/4".parse().expect("a network"),
        IpNet::V6(_) => "ff00::/8".parse().expect("a network"),
    };
    let masq = Verdict::Masquerade { fully_random };
    let rule = |matches: &[Match], verdict| Rule {
        matches: matches.to_vec(),
        verdict,
    };
    Chain {
        hook: Hook::Postrouting,
        ipv6: matches!(n, IpNet::V6(_)),
        rules: vec![
            rule(&[Mark(KUBE_PROXY_MARK)], Verdict::Return),
            rule(&[Source(s), Destination(n)], Verdict::Return),
            rule(&[Source(n), Destination(s)], Verdict::Return),
            rule(&[NotSource(n), Destination(s)], Verdict::Return),
            rule(&[Source(n), NotDestination(multicast)], masq),
            rule(&[NotSource(n), Destination(n)], masq),
        ],
    }
}

/// flannel's forward rules for network `n` (one family): its traffic is accepted both ways
/// (Docker sets FORWARD's policy to DROP).
pub fn forward(n: IpNet) -> Chain {
    let accept = |matched| Rule {
        matches: vec![matched],
        verdict: Verdict::Accept,
    };
    Chain {
        hook: Hook::Forward,
        ipv6: matches!(n, IpNet::V6(_)),
        rules: vec![accept(Match::Source(n)), accept(Match::Destination(n))],
    }
}

/// A rule as nft prints it (also its comment in our nftables chains).
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for matched in &self.matches {
            let family = |net: &IpNet| match net {
                IpNet::V4(_) => "ip",
                IpNet::V6(_) => "ip6",
            };
            match matched {
                Match::Mark(bits) => write!(f, "meta mark & {bits:#x} == {bits:#x} ")?,
                Match::Source(n) => write!(f, "{} saddr {n} ", family(n))?,
                Match::NotSource(n) => write!(f, "{} saddr != {n} ", family(n))?,
                Match::Destination(n) => write!(f, "{} daddr {n} ", family(n))?,
                Match::NotDestination(n) => write!(f, "{} daddr != {n} ", family(n))?,
            }
        }
        match self.verdict {
            Verdict::Return => f.write_str("return"),
            Verdict::Accept => f.write_str("accept"),
            Verdict::Masquerade { fully_random: true } => f.write_str("masquerade fully-random"),
            Verdict::Masquerade {
                fully_random: false,
            } => f.write_str("masquerade"),
        }
    }
}
