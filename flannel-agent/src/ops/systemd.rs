//! systemd's notify protocol: readiness, status and stopping, and the watchdog's pings.

use std::time::Duration;

use tokio::time::interval;
use tracing::{error, warn};

/// Tells systemd (when it listens, on NOTIFY_SOCKET).
///
/// Never blocks the agent's loop (the sd-notify crate's send can, when nobody reads): a
/// message the manager can't take right now is dropped. Written by hand for that reason.
pub fn notify(states: &[sd_notify::NotifyState]) {
    use std::os::{linux::net::SocketAddrExt, unix::ffi::OsStrExt, unix::net};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let message: String = states.iter().map(|state| format!("{state}\n")).collect();
    let sent = net::UnixDatagram::unbound().and_then(|socket| {
        socket.set_nonblocking(true)?;
        // systemd's socket may be in the abstract namespace: "@name".
        let address = match path.as_bytes().strip_prefix(b"@") {
            Some(name) => net::SocketAddr::from_abstract_name(name)?,
            None => net::SocketAddr::from_pathname(&path)?,
        };
        socket.send_to_addr(message.as_bytes(), &address)
    });
    match sent {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(e) => warn!("sd_notify: {e}"),
        Ok(_) => {}
    }
}

pub type Probe = tokio::sync::oneshot::Sender<()>;

/// systemd's watchdog (WatchdogSec=): a task pings at half the period, each time after the
/// agent's loop has answered a probe. A loop stuck in a call stops the pings, and systemd
/// restarts the agent; the datapath forwards meanwhile. Returns the loop's end of the probes.
pub fn spawn_watchdog(period: Duration) -> tokio::sync::mpsc::Receiver<Probe> {
    let (probes, inbox) = tokio::sync::mpsc::channel::<Probe>(1);
    tokio::spawn(async move {
        let mut pace = interval(period / 2);
        loop {
            pace.tick().await;
            let (reply, answer) = tokio::sync::oneshot::channel();
            // Fails once the loop has ended.
            if probes.send(reply).await.is_err() {
                return;
            }
            match tokio::time::timeout(period / 2, answer).await {
                Ok(Ok(())) => notify(&[sd_notify::NotifyState::Watchdog]),
                Ok(Err(_)) => return,
                Err(_) => error!(
                    "the agent's loop has not answered for {:?}; withholding the watchdog \
                     ping, so systemd restarts the agent",
                    period / 2
                ),
            }
        }
    });
    inbox
}

/// The watchdog's next probe, if there is a watchdog (else: never).
pub async fn probe(probes: &mut Option<tokio::sync::mpsc::Receiver<Probe>>) -> Probe {
    match probes {
        Some(inbox) => match inbox.recv().await {
            Some(probe) => probe,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}
