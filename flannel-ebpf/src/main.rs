//! flannel's eBPF programs. Each entry point reads like the packet's path through it.
#![no_std]
#![no_main]

mod guard;
mod maps;
mod parse;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

use guard::Verdict;
use parse::Packet;

/// XDP on the host NIC: drop forged tunnel packets before the stack allocates an skb.
#[xdp]
pub fn xdp_ingress(ctx: XdpContext) -> u32 {
    let pkt = Packet {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    match guard::check(pkt) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop(reason) => {
            maps::count_drop(reason);
            xdp_action::XDP_DROP
        }
    }
}

/// TC ingress on the host NIC: the same guard, for drivers without XDP.
#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    // The guard reads only linear bytes: make sure the tunnel headers are there.
    let wanted = guard::GUARD_HEADER_LEN.min(ctx.len());
    if ((ctx.data_end() - ctx.data()) as u32) < wanted && ctx.pull_data(wanted).is_err() {
        return TC_ACT_OK;
    }
    let pkt = Packet {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    match guard::check(pkt) {
        Verdict::Pass => TC_ACT_OK,
        Verdict::Drop(reason) => {
            maps::count_drop(reason);
            TC_ACT_SHOT
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
