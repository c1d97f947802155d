//! `EnableNFTables`: flannel's rules as the nftables tables flannel names, `ip flannel-ipv4`
//! and `ip6 flannel-ipv6`, with chains `postrtg` (nat, at postrouting) and `forward` (filter),
//! written through netlink (netlink-packet-netfilter, the rust-netlink family rtnetlink belongs
//! to): no `nft` binary. A table that differs from what is wanted is replaced whole in one
//! transaction, so no rule is ever missing meanwhile. Each rule carries its text as a comment
//! (as `nft list ruleset` shows it), which is how a resync finds what was removed.

use anyhow::{Context, Result};
use ipnet::IpNet;
use netlink_packet_core::{
    DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_netfilter::{
    nftables::{
        Bitwise, ChainAttribute, ChainMessage, Cmp, DataAttribute, Expressions, Hook, Immediate,
        InetHookNumber, ListAttribute, Meta, MetaKey, NfTablesMessage, Operator, Payload, Register,
        RuleAttribute, RuleMessage, TableAttribute, TableMessage, Verdict, VerdictAttribute,
    },
    none::ControlMessage,
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::host::rules::{self, Hook as RuleHook, Match};

pub const IPV4_TABLE: &str = "flannel-ipv4";
pub const IPV6_TABLE: &str = "flannel-ipv6";

/// Makes our tables hold `chains` (tables of families without chains go); returns true when
/// something had to be (re)written.
pub async fn ensure(chains: &[rules::Chain]) -> Result<bool> {
    let chains = chains.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut nft = Nft::connect()?;
        let mut changed = false;
        for ipv6 in [false, true] {
            let wanted: Vec<&rules::Chain> = chains.iter().filter(|c| c.ipv6 == ipv6).collect();
            changed |= nft.ensure_table(ipv6, &wanted)?;
        }
        Ok(changed)
    })
    .await?
}

/// Removes our tables (`flanneld --cleanup`, or iptables mode); what is gone already is fine.
pub async fn remove_all() -> Result<()> {
    ensure(&[]).await.map(drop)
}

/// Our table of a family, as nft names it.
fn table(ipv6: bool) -> (&'static str, NetfilterProtoFamily) {
    match ipv6 {
        false => (IPV4_TABLE, NetfilterProtoFamily::IPv4),
        true => (IPV6_TABLE, NetfilterProtoFamily::IPv6),
    }
}

/// (name, type, hook, priority) of the chain for `hook`: priorities are nft's `srcnat` and
/// `filter`, as flannel's.
fn chain_of(hook: RuleHook) -> (&'static str, &'static str, InetHookNumber, i32) {
    match hook {
        RuleHook::Postrouting => ("postrtg", "nat", InetHookNumber::PostRouting, 100),
        RuleHook::Forward => ("forward", "filter", InetHookNumber::Forward, 0),
    }
}

/// Our rules' comments, chain by chain: (chain, comments in order).
type Comments = Vec<(String, Vec<String>)>;

/// A netlink socket to nf_tables.
struct Nft {
    socket: Socket,
    seq: u32,
}

impl Nft {
    fn connect() -> Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER).context("opening a netfilter socket")?;
        socket.bind_auto().context("binding the netfilter socket")?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .context("connecting the netfilter socket")?;
        Ok(Self { socket, seq: 0 })
    }

    /// Brings one family's table to `wanted` (no chains: no table).
    fn ensure_table(&mut self, ipv6: bool, wanted: &[&rules::Chain]) -> Result<bool> {
        let (name, family) = table(ipv6);
        let present = self.comments(ipv6)?;
        let comments = |chain: &rules::Chain| -> Vec<String> {
            chain.rules.iter().map(ToString::to_string).collect()
        };
        let wanted_comments: Comments = wanted
            .iter()
            .map(|chain| (chain_of(chain.hook).0.to_owned(), comments(chain)))
            .collect();
        if present.as_ref() == Some(&wanted_comments) || (present.is_none() && wanted.is_empty()) {
            return Ok(false);
        }
        let mut batch = Vec::new();
        let name_attr = || vec![TableAttribute::Name(name.to_owned())];
        if present.is_some() {
            batch.push((
                NfTablesMessage::DeleteTable(TableMessage {
                    attributes: name_attr(),
                }),
                0,
            ));
        }
        if !wanted.is_empty() {
            batch.push((
                NfTablesMessage::NewTable(TableMessage {
                    attributes: name_attr(),
                }),
                NLM_F_CREATE,
            ));
        }
        for chain in wanted {
            let (chain_name, kind, hook, priority) = chain_of(chain.hook);
            batch.push((
                NfTablesMessage::NewChain(ChainMessage {
                    attributes: vec![
                        ChainAttribute::Table(name.to_owned()),
                        ChainAttribute::Name(chain_name.to_owned()),
                        ChainAttribute::Hook(vec![
                            Hook::Number(hook.into()),
                            Hook::Priority(priority as u32),
                        ]),
                        ChainAttribute::Type(kind.to_owned()),
                    ],
                }),
                NLM_F_CREATE,
            ));
            for rule in &chain.rules {
                batch.push((
                    NfTablesMessage::NewRule(RuleMessage {
                        attributes: vec![
                            RuleAttribute::Table(name.to_owned()),
                            RuleAttribute::Chain(chain_name.to_owned()),
                            RuleAttribute::Expressions(expressions(rule)),
                            RuleAttribute::UserData(comment(&rule.to_string())),
                        ],
                    }),
                    NLM_F_CREATE | netlink_packet_core::NLM_F_APPEND,
                ));
            }
        }
        self.transaction(family, batch)
            .with_context(|| format!("writing nftables table {name}"))?;
        Ok(true)
    }

    /// The comments of the rules in our table of a family, chain by chain in the order the
    /// kernel lists them; None when there is no such table.
    fn comments(&mut self, ipv6: bool) -> Result<Option<Comments>> {
        let (name, family) = table(ipv6);
        let request = NfTablesMessage::GetTable(TableMessage {
            attributes: vec![TableAttribute::Name(name.to_owned())],
        });
        match self.request(family, request, 0) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e).context("reading our nftables table"),
        }
        let request = NfTablesMessage::GetRule(RuleMessage {
            attributes: vec![RuleAttribute::Table(name.to_owned())],
        });
        let replies = self
            .request(family, request, NLM_F_DUMP)
            .context("listing our nftables rules")?;
        let mut chains: Comments = Vec::new();
        for reply in replies {
            let NfTablesMessage::NewRule(rule) = reply else {
                continue;
            };
            let (mut chain, mut text) = (String::new(), String::new());
            for attribute in rule.attributes {
                match attribute {
                    RuleAttribute::Chain(name) => chain = name,
                    RuleAttribute::UserData(data) => text = comment_text(&data),
                    _ => {}
                }
            }
            match chains.last_mut() {
                Some((last, texts)) if *last == chain => texts.push(text),
                _ => chains.push((chain, vec![text])),
            }
        }
        Ok(Some(chains))
    }

    /// Sends `messages` as one nf_tables transaction: all of them hold, or none.
    fn transaction(
        &mut self,
        family: NetfilterProtoFamily,
        messages: Vec<(NfTablesMessage, u16)>,
    ) -> Result<()> {
        let subsystem = NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES);
        let mut buffer = Vec::new();
        self.append(
            &mut buffer,
            subsystem.clone(),
            ControlMessage::BatchBegin,
            0,
        );
        let mut sent = Vec::new();
        for (message, flags) in messages {
            let header = NetfilterHeader::new(family, 0, 0);
            let what = format!("{:?}", message.message_type());
            sent.push((
                self.append(&mut buffer, header, message, NLM_F_ACK | flags),
                what,
            ));
        }
        let last = sent.last().map_or(0, |(seq, _)| *seq);
        self.append(&mut buffer, subsystem, ControlMessage::BatchEnd, 0);
        self.socket.send(&buffer, 0)?;
        // The kernel acknowledges each message; an error ends the transaction undone.
        loop {
            for reply in self.receive()? {
                match reply.payload {
                    NetlinkPayload::Error(error) if error.code.is_some() => {
                        let seq = reply.header.sequence_number;
                        let what = sent
                            .iter()
                            .find(|(s, _)| *s == seq)
                            .map(|(_, w)| w.as_str());
                        return Err(anyhow::Error::from(error.to_io())
                            .context(format!("message {seq} ({})", what.unwrap_or("?"))));
                    }
                    NetlinkPayload::Error(_) if reply.header.sequence_number == last => {
                        return Ok(())
                    }
                    _ => {}
                }
            }
        }
    }

    /// Sends one request; returns the messages of its answer (a dump's, up to its end).
    fn request(
        &mut self,
        family: NetfilterProtoFamily,
        message: NfTablesMessage,
        flags: u16,
    ) -> std::io::Result<Vec<NfTablesMessage>> {
        let mut buffer = Vec::new();
        let header = NetfilterHeader::new(family, 0, 0);
        self.append(&mut buffer, header, message, flags);
        self.socket.send(&buffer, 0)?;
        let mut messages = Vec::new();
        loop {
            for reply in self.receive()? {
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(messages),
                    // A request that is not a dump has one answer.
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::NfTables(message),
                        ..
                    }) if flags & NLM_F_DUMP == 0 => return Ok(vec![message]),
                    NetlinkPayload::Error(error) if error.code.is_some() => {
                        return Err(error.to_io())
                    }
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::NfTables(message),
                        ..
                    }) => messages.push(message),
                    _ => {}
                }
            }
        }
    }

    /// Appends one message to `buffer`; returns its sequence number.
    fn append(
        &mut self,
        buffer: &mut Vec<u8>,
        header: NetfilterHeader,
        inner: impl Into<NetfilterMessageInner>,
        flags: u16,
    ) -> u32 {
        self.seq += 1;
        let mut netlink_header = NetlinkHeader::default();
        netlink_header.flags = NLM_F_REQUEST | flags;
        netlink_header.sequence_number = self.seq;
        let mut message = NetlinkMessage::new(
            netlink_header,
            NetlinkPayload::from(NetfilterMessage::new(header, inner)),
        );
        message.finalize();
        let start = buffer.len();
        buffer.resize(start + message.buffer_len(), 0);
        message.serialize(&mut buffer[start..]);
        self.seq
    }

    /// The messages of one datagram from the kernel.
    fn receive(&self) -> std::io::Result<Vec<NetlinkMessage<NetfilterMessage>>> {
        let (data, _) = self.socket.recv_from_full()?;
        let mut messages = Vec::new();
        let mut rest = &data[..];
        while !rest.is_empty() {
            let message = NetlinkMessage::<NetfilterMessage>::deserialize(rest)
                .map_err(|e| std::io::Error::other(format!("a netfilter reply: {e}")))?;
            let length = (message.header.length as usize).min(rest.len()).max(1);
            rest = &rest[length.next_multiple_of(4).min(rest.len())..];
            messages.push(message);
        }
        Ok(messages)
    }
}

/// nfnetlink's subsystem id of nf_tables.
const NFNL_SUBSYS_NFTABLES: u16 = 10;

/// A rule's expressions: each match loads a field into register 1 and compares it; then the
/// verdict.
fn expressions(
    rule: &rules::Rule,
) -> Vec<ListAttribute<netlink_packet_netfilter::nftables::ExpressionAttribute>> {
    let mut list: Vec<Expressions> = Vec::new();
    for matched in &rule.matches {
        match *matched {
            Match::Mark(bits) => {
                list.push(Expressions::Meta(vec![
                    Meta::DestinationRegister(Register::Reg1),
                    Meta::Key(MetaKey::Mark),
                ]));
                list.extend(masked(
                    bits.to_ne_bytes().to_vec(),
                    bits.to_ne_bytes().to_vec(),
                    true,
                ));
            }
            Match::Source(n) => list.extend(address(n, true, true)),
            Match::NotSource(n) => list.extend(address(n, true, false)),
            Match::Destination(n) => list.extend(address(n, false, true)),
            Match::NotDestination(n) => list.extend(address(n, false, false)),
        }
    }
    list.push(match rule.verdict {
        rules::Verdict::Return => verdict(Verdict::Return),
        rules::Verdict::Accept => verdict(Verdict::Other(NF_ACCEPT)),
        rules::Verdict::Masquerade { fully_random } => {
            const NFTA_MASQ_FLAGS: u16 = 1;
            const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 1 << 4;
            let flags = fully_random.then(|| {
                DefaultNla::new(
                    NFTA_MASQ_FLAGS,
                    NF_NAT_RANGE_PROTO_RANDOM_FULLY.to_be_bytes().to_vec(),
                )
            });
            Expressions::Other {
                expression_type: "masq".into(),
                attributes: flags.into_iter().collect(),
            }
        }
    });
    list.into_iter().map(ListAttribute::from).collect()
}

const NF_ACCEPT: u32 = 1;

fn verdict(code: Verdict) -> Expressions {
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(Register::Verdict),
        Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(code)])),
    ])
}

/// `ip saddr n`, `ip6 daddr != n`, ...: the address loaded from the network header, masked
/// to the prefix, compared.
fn address(n: IpNet, source: bool, equal: bool) -> Vec<Expressions> {
    let (offset, network, mask) = match n {
        IpNet::V4(n) => (
            if source { 12 } else { 16 },
            n.network().octets().to_vec(),
            n.netmask().octets().to_vec(),
        ),
        IpNet::V6(n) => (
            if source { 8 } else { 24 },
            n.network().octets().to_vec(),
            n.netmask().octets().to_vec(),
        ),
    };
    const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
    let mut list = vec![Expressions::Payload(vec![
        Payload::DestinationRegister(Register::Reg1),
        Payload::Base(NFT_PAYLOAD_NETWORK_HEADER),
        Payload::Offset(offset),
        Payload::Len(network.len() as u32),
    ])];
    list.extend(masked(mask, network, equal));
    list
}

/// Register 1 masked with `mask`, compared with `value`.
fn masked(mask: Vec<u8>, value: Vec<u8>, equal: bool) -> Vec<Expressions> {
    let len = mask.len() as u32;
    vec![
        Expressions::Bitwise(vec![
            Bitwise::SourceRegister(Register::Reg1),
            Bitwise::DestinationRegister(Register::Reg1),
            Bitwise::Length(len),
            Bitwise::Mask(DataAttribute::Value(mask)),
            Bitwise::Xor(DataAttribute::Value(vec![0; len as usize])),
        ]),
        Expressions::Cmp(vec![
            Cmp::SourceRegister(Register::Reg1),
            Cmp::Op(if equal {
                Operator::Equal
            } else {
                Operator::NotEqual
            }),
            Cmp::Data(DataAttribute::Value(value)),
        ]),
    ]
}

/// A rule comment as nft stores it in the rule's user data: a TLV of type 0 holding the text
/// and its NUL.
fn comment(text: &str) -> Vec<u8> {
    const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
    let mut data = vec![NFTNL_UDATA_RULE_COMMENT, (text.len() + 1) as u8];
    data.extend_from_slice(text.as_bytes());
    data.push(0);
    data
}

/// The comment in a rule's user data ("" if it has none).
fn comment_text(data: &[u8]) -> String {
    match data {
        [0, len, rest @ ..] if rest.len() >= usize::from(*len) && *len > 0 => {
            String::from_utf8_lossy(&rest[..usize::from(*len) - 1]).into_owned()
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comment_reads_back() {
        let text = "ip saddr 10.1.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random";
        assert_eq!(comment_text(&comment(text)), text);
        assert_eq!(comment_text(&[]), "");
    }
}
