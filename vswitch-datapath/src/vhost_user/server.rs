//! [`VhostUserServer`]: the control thread of one vhost-user socket.
//!
//! The thread listens on the socket path and serves each frontend that connects with a
//! [`Session`] over a [`VhostUserDevice`] of its own, on a thread of its own. Up to
//! [`MAX_CONNECTIONS`] frontends are served at once: the port's guest, and during a live
//! migration on this host the destination's QEMU, which connects (and must be answered) while
//! the source still runs; each connection attaches and detaches only its own queue pairs. When the frontend's socket
//! closes (mid-traffic too), the device detaches its queue pairs from the PMD, clearing in-flight
//! copies, unmaps its memory, and the thread listens again on the same path: a new frontend
//! connects and traffic resumes without restarting the switch.
//!
//! A socket path that another process is listening on is refused ([`VhostUserError::SocketInUse`]);
//! a stale socket file nobody listens on is replaced; anything else at the path is left alone.

use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vhost::vhost_user::{Error as ProtoError, Listener};

use super::device::{DeviceConfig, VhostUserDevice, DEFAULT_MAX_QUEUE_PAIRS};
use super::session::Session;
use super::wire::Connection;
use super::VhostUserError;

/// How often an idle listener checks for a stop.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// Frontends served at once on one socket: the guest's QEMU, plus a migration destination.
/// Further ones wait in the listen queue.
pub const MAX_CONNECTIONS: usize = 2;

/// What the control thread shares with its owner.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    /// The connections being served `(session, stream)`, to shut them down on stop.
    conns: Mutex<Vec<(u64, UnixStream)>>,
    connections: AtomicU64,
    disconnects: AtomicU64,
}

/// The control thread of one vhost-user socket. Dropping it (or [`stop`](Self::stop)) closes the
/// connection, detaches the queue pairs and removes the socket file.
#[derive(Debug)]
pub struct VhostUserServer {
    path: PathBuf,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Makes `path` free to bind: nothing there, or a stale socket (removed). A live listener or a
/// file that is not a socket is an error.
pub fn claim_socket_path(path: &Path) -> Result<(), VhostUserError> {
    let listen_err = |source| VhostUserError::Listen { path: path.to_owned(), source };
    let md = match std::fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(listen_err(e)),
    };
    if !md.file_type().is_socket() {
        return Err(VhostUserError::NotASocket(path.to_owned()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(VhostUserError::SocketInUse(path.to_owned())),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => std::fs::remove_file(path).map_err(listen_err),
        Err(e) => Err(listen_err(e)),
    }
}

impl VhostUserServer {
    /// Binds `path` (see [`claim_socket_path`]) and starts the control thread for the port that
    /// `cfg` names, offering [`DEFAULT_MAX_QUEUE_PAIRS`] queue pairs.
    pub fn start(path: impl AsRef<Path>, cfg: DeviceConfig) -> Result<Self, VhostUserError> {
        Self::start_with_queue_pairs(path, cfg, DEFAULT_MAX_QUEUE_PAIRS)
    }

    /// As [`start`](Self::start), offering `max_queue_pairs` queue pairs (at least 1).
    pub fn start_with_queue_pairs(
        path: impl AsRef<Path>,
        cfg: DeviceConfig,
        max_queue_pairs: usize,
    ) -> Result<Self, VhostUserError> {
        let path = path.as_ref().to_owned();
        claim_socket_path(&path)?;
        let to_io = |e: ProtoError| match e {
            ProtoError::SocketError(io) => io,
            other => std::io::Error::other(other.to_string()),
        };
        let listener =
            Listener::new(&path, false).map_err(|e| VhostUserError::Listen { path: path.clone(), source: to_io(e) })?;
        listener.set_nonblocking(true).map_err(|e| VhostUserError::Listen { path: path.clone(), source: to_io(e) })?;
        let name = cfg.name.clone();
        let pairs = max_queue_pairs.max(1);
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name(format!("vhost-user-{name}"))
            .spawn({
                let shared = shared.clone();
                move || serve(listener, cfg, pairs, shared, name)
            })
            .map_err(|e| VhostUserError::Listen { path: path.clone(), source: e })?;
        Ok(VhostUserServer { path, shared, thread: Some(thread) })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Frontend connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Acquire)
    }

    /// Frontend connections that ended (and were cleaned up) so far.
    pub fn disconnects(&self) -> u64 {
        self.shared.disconnects.load(Ordering::Acquire)
    }

    /// Whether a frontend is connected now.
    pub fn is_connected(&self) -> bool {
        self.shared.conns.lock().is_ok_and(|c| !c.is_empty())
    }

    /// Stops the thread: closes the connection (detaching the queue pairs: the PMD must still be
    /// running, or gone), waits for it, removes the socket file.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Ok(conns) = self.shared.conns.lock() {
            for (_, c) in conns.iter() {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for VhostUserServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(listener: Listener, cfg: DeviceConfig, pairs: usize, shared: Arc<Shared>, name: String) {
    let mut sessions: Vec<JoinHandle<()>> = Vec::new();
    let mut next_session = 1u64;
    while !shared.stop.load(Ordering::Acquire) {
        sessions.retain(|t| !t.is_finished());
        if sessions.len() >= MAX_CONNECTIONS {
            std::thread::sleep(ACCEPT_POLL);
            continue;
        }
        let stream = match listener.accept() {
            Ok(Some(s)) => s,
            Ok(None) => {
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
            Err(e) => {
                log::error!("vhost-user {name}: accept failed: {e}");
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
        };
        if stream.set_nonblocking(false).is_err() {
            continue;
        }
        let session = next_session;
        next_session += 1;
        match (stream.try_clone(), shared.conns.lock()) {
            (Ok(clone), Ok(mut conns)) => conns.push((session, clone)),
            _ => continue,
        }
        shared.connections.fetch_add(1, Ordering::AcqRel);
        let device = VhostUserDevice::with_queue_pairs(cfg.clone(), pairs).for_session(session);
        let spawned = std::thread::Builder::new().name(format!("vhost-user-{name}-{session}")).spawn({
            let (shared, name) = (shared.clone(), name.clone());
            move || serve_one(stream, device, session, &shared, &name)
        });
        match spawned {
            Ok(t) => sessions.push(t),
            Err(e) => {
                log::error!("vhost-user {name}: cannot start a thread for a frontend: {e}");
                if let Ok(mut conns) = shared.conns.lock() {
                    conns.retain(|(s, _)| *s != session);
                }
                shared.disconnects.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
    for t in sessions {
        let _ = t.join();
    }
}

/// Serves one frontend until it goes away (or the connection has to be closed, or stop), then
/// detaches its queue pairs (clearing copies in flight) and unmaps its memory.
fn serve_one(stream: UnixStream, mut device: VhostUserDevice, session: u64, shared: &Shared, name: &str) {
    Session::new(Connection::new(stream), &mut device, name).run(&shared.stop);
    // A PMD that is gone (the switch is shutting down) took the queues with it.
    match device.disconnect() {
        Ok(()) | Err(VhostUserError::PmdGone) => {}
        Err(e) => log::warn!("vhost-user {name}: cleaning up after the frontend: {e}"),
    }
    if let Ok(mut conns) = shared.conns.lock() {
        conns.retain(|(s, _)| *s != session);
    }
    shared.disconnects.fetch_add(1, Ordering::AcqRel);
}
