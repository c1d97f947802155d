//! Programs run by the kernel on crafted packets (BPF_PROG_TEST_RUN).

use aya::programs::{TestRun, TestRunOptions, TestRunResult};
use flannel_common::{pins::Pins, DropEvent};

use crate::packet::{self, EthHdr};

/// TC verdicts as `run` returns them.
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;
/// -1: the next program or filter on the hook decides.
pub const TC_ACT_UNSPEC: u32 = u32::MAX;
/// XDP verdicts.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// The VNI and VTEP MACs of the crafted tunnels: ours and the peer's.
pub const VNI: u32 = 1;
pub const OUR_VTEP: [u8; 6] = [0x0a, 0, 0, 0, 0, 1];
pub const PEER_VTEP: [u8; 6] = [0x0a, 0, 0, 0, 0, 2];

/// Runs `program` on `frame`: its verdict and the packet it leaves.
pub fn run<P>(program: &mut P, frame: &[u8]) -> (u32, Vec<u8>)
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    run_with(program, frame, None)
}

/// `run`, with `frame` a GSO packet to be cut into segments of `gso_size` bytes.
pub fn run_gso<P>(program: &mut P, frame: &[u8], gso_size: u32) -> (u32, Vec<u8>)
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    // The kernel's `struct __sk_buff` (UAPI, 192 bytes), zero but for the GSO fields; aya
    // exports no binding of it, so the two offsets are written here.
    let mut skb = [0u8; 192];
    let segments = (frame.len() as u32).div_ceil(gso_size);
    skb[164..168].copy_from_slice(&segments.to_ne_bytes());
    skb[176..180].copy_from_slice(&gso_size.to_ne_bytes());
    run_with(program, frame, Some(&skb))
}

fn run_with<P>(program: &mut P, frame: &[u8], ctx: Option<&[u8]>) -> (u32, Vec<u8>)
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut out = vec![0u8; frame.len() + 256];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: ctx,
            ..Default::default()
        })
        .expect("test run");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

/// What a program left of the tunnel `frame` it decapsulated, `out`, is the outer Ethernet
/// header then the inner packet, which followed `overhead` bytes of outer headers; returns
/// the inner packet.
pub fn assert_decapsulated<'a>(out: &'a [u8], frame: &[u8], overhead: u32) -> &'a [u8] {
    let (eth, inner) = packet::split::<EthHdr>(out);
    assert_eq!(
        eth,
        packet::split::<EthHdr>(frame).0,
        "the outer Ethernet header stays"
    );
    let outer = size_of::<EthHdr>() + overhead as usize;
    assert_eq!(inner, &frame[outer..], "the inner packet");
    inner
}

/// The drop events waiting in the pinned ring.
pub fn drop_events(pins: &Pins) -> Vec<DropEvent> {
    let mut ring = pins.events().unwrap();
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), size_of::<DropEvent>());
        // SAFETY: a whole DropEvent (length checked); any bytes are a valid value.
        events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
    }
    events
}
