//! Bulk TCP transfers checked byte for byte: a deterministic pseudo-random stream goes from
//! one namespace to a server in another, which compares every byte it receives.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::netns::Netns;

/// The stream's bytes: xorshift64, so a byte lost, repeated or changed anywhere shows.
struct Stream(u64);

impl Stream {
    fn new() -> Self {
        Stream(0x9e37_79b9_7f4a_7c15)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

const CHUNK: usize = 64 * 1024;

/// Sends `len` bytes (a multiple of 8) from `client` to `target`, where a server listening on
/// `listen` in `server` checks each byte (`target` differs from `listen` when something on the
/// way translates the address). Fails with the offset of the first wrong byte, or if the
/// stream is cut short.
pub fn verified_transfer(
    server: &Netns,
    listen: impl Into<SocketAddr>,
    client: &Netns,
    target: impl Into<SocketAddr>,
    len: usize,
) -> Result<()> {
    let (listen, target) = (listen.into(), target.into());
    let (ready, listening) = mpsc::channel();
    std::thread::scope(|scope| {
        let receiver = scope.spawn(move || {
            server.enter(|| -> Result<usize> {
                let listener =
                    TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
                ready.send(()).ok();
                let (mut stream, _) = listener.accept()?;
                stream.set_read_timeout(Some(Duration::from_secs(20)))?;
                check(&mut stream)
            })?
        });
        listening
            .recv()
            .context("the receiving server never listened")?;
        client.enter(|| send(target, len))??;
        let received = receiver.join().expect("receiver thread")?;
        if received != len {
            bail!("{received} of {len} bytes arrived");
        }
        Ok(())
    })
}

fn send(target: SocketAddr, len: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stream = loop {
        match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
            Ok(stream) => break stream,
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| format!("connecting to {target}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    stream.set_write_timeout(Some(Duration::from_secs(20)))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut data = Stream::new();
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0;
    while sent < len {
        let n = CHUNK.min(len - sent);
        data.fill(&mut buf[..n]);
        stream.write_all(&buf[..n]).context("sending")?;
        sent += n;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    // Wait for the server to close: everything was read.
    let _ = stream.read(&mut [0u8; 1]);
    Ok(())
}

/// Reads to the end, comparing with the stream; returns the byte count.
fn check(stream: &mut TcpStream) -> Result<usize> {
    let mut expected = Stream::new();
    let (mut want, mut got) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut offset = 0;
    loop {
        // Whole 8-byte words, so the generator stays in step with the sender.
        let mut n = stream.read(&mut got)?;
        if n == 0 {
            return Ok(offset);
        }
        while n % 8 != 0 {
            let more = stream.read(&mut got[n..n + 8 - n % 8])?;
            if more == 0 {
                bail!("the stream ended mid-word at byte {}", offset + n);
            }
            n += more;
        }
        expected.fill(&mut want[..n]);
        if let Some(i) = (0..n).find(|&i| want[i] != got[i]) {
            bail!("byte {} differs from what was sent", offset + i);
        }
        offset += n;
    }
}
