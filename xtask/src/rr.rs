//! TCP request/response latency between two containers, over either family: one connection
//! with Nagle off, 64-byte messages, one in flight, as sockperf's ping-pong measures it.
//! Written here because Debian's sockperf (3.7) takes no IPv6 address, and every row of a
//! run must be measured by the same tool.

use std::{
    io::{Read, Write},
    net::{IpAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use flannel_tests::testbed::Container;

const PORT: u16 = 11111;
const MESSAGE: usize = 64;
/// Round trips before this long are not counted: the connection and caches warm up.
const WARM_UP: Duration = Duration::from_millis(200);

/// Round trips from `client` to `server` (at `target`) for `seconds`, the client on
/// `client_cpu`, the server on `server_cpu`: (p50, p99) of RTT/2 in microseconds.
pub fn latency(
    client: &Container,
    server: &Container,
    target: IpAddr,
    seconds: u32,
    (client_cpu, server_cpu): (usize, usize),
) -> Result<(f64, f64)> {
    let listener = server
        .ns
        .enter(|| TcpListener::bind((target, PORT)))?
        .with_context(|| format!("listening on {target} port {PORT}"))?;
    let mut rtts = std::thread::scope(|scope| -> Result<Vec<f64>> {
        let echo = scope.spawn(move || -> Result<()> {
            pin_to(server_cpu)?;
            let (mut stream, _) = listener.accept()?;
            stream.set_nodelay(true)?;
            let mut message = [0u8; MESSAGE];
            // Until the client closes.
            while stream.read_exact(&mut message).is_ok() {
                stream.write_all(&message)?;
            }
            Ok(())
        });
        let rtts = client.ns.enter(|| -> Result<Vec<f64>> {
            pin_to(client_cpu)?;
            let mut stream = TcpStream::connect((target, PORT))
                .with_context(|| format!("connecting to {target} port {PORT}"))?;
            stream.set_nodelay(true)?;
            let mut message = [7u8; MESSAGE];
            let started = Instant::now();
            let end = started + WARM_UP + Duration::from_secs(seconds.into());
            let mut rtts = Vec::new();
            loop {
                let sent = Instant::now();
                if sent >= end {
                    return Ok(rtts);
                }
                stream.write_all(&message)?;
                stream.read_exact(&mut message)?;
                if sent - started >= WARM_UP {
                    rtts.push(sent.elapsed().as_secs_f64());
                }
            }
        })?;
        echo.join().expect("the echo thread")?;
        rtts
    })?;
    anyhow::ensure!(!rtts.is_empty(), "no round trip to {target}");
    rtts.sort_by(f64::total_cmp);
    let percentile = |p: f64| rtts[((rtts.len() - 1) as f64 * p) as usize] / 2.0 * 1e6;
    Ok((percentile(0.5), percentile(0.99)))
}

/// Runs the calling thread on `cpu` only.
fn pin_to(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity get valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("pinning a thread");
        }
    }
    Ok(())
}
