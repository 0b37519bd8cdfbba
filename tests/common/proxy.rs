//! A TCP proxy on loopback between two brokers, for network faults without root: it passes
//! bytes on, black-holes them (accepts connections and reads, never forwards), or delays
//! every chunk by some milliseconds. The mode applies at once to open connections too (a
//! pooled keep-alive connection is cut off like a new one).
//!
//! A proxy may also tell which broker opened a connection ([`Proxy::start_at`] with an
//! [`Identify`], such as [`broker_of_connection`]) and treat each sender's connections in a
//! mode of their own ([`Proxy::set_mode_from`]): one proxy in front of a broker then cuts
//! what one other broker sends it and passes the rest.
//!
//! A thread accepts; each connection gets a thread per direction. A connection that lost
//! bytes to the black hole is closed once the mode is no longer black-hole (its HTTP stream
//! is broken), so healing never hands a client a half-dropped answer.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How the proxy treats bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward at once.
    Pass,
    /// Accept and read, forward nothing (a peer that vanished without a RST or FIN).
    BlackHole,
    /// Forward each chunk this many milliseconds after it was read (a very slow link).
    Delay(u64),
}

/// How often a blocked thread looks at the mode and the stop flag.
const TICK: Duration = Duration::from_millis(20);

/// Who opened a connection, from its two ends (the client's, the proxy's): a node id.
pub type Identify = Arc<dyn Fn(SocketAddr, SocketAddr) -> Option<usize> + Send + Sync>;

struct Shared {
    target: SocketAddr,
    mode: Mutex<Mode>,
    /// Modes for the connections of one sender, over `mode`.
    modes_from: Mutex<BTreeMap<usize, Mode>>,
    identify: Option<Identify>,
    stop: AtomicBool,
    /// Connections accepted so far.
    accepted: AtomicU64,
    /// Bytes dropped by the black hole so far.
    dropped: AtomicU64,
}

impl Shared {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap()
    }

    /// The mode of a connection opened by `sender`.
    fn mode_of(&self, sender: Option<usize>) -> Mode {
        let from = sender.and_then(|s| self.modes_from.lock().unwrap().get(&s).copied());
        from.unwrap_or_else(|| self.mode())
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// A running proxy; stops (and closes every connection) when dropped.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target` (in [`Mode::Pass`]).
    pub fn start(target: SocketAddr) -> Proxy {
        Proxy::start_at(SocketAddr::from(([127, 0, 0, 1], 0)), target, None)
    }

    /// Listens on `listen` and forwards to `target`; with `identify`, each connection's
    /// sender is looked up when it is accepted, for [`Proxy::set_mode_from`].
    pub fn start_at(listen: SocketAddr, target: SocketAddr, identify: Option<Identify>) -> Proxy {
        let listener = TcpListener::bind(listen).expect("bind the proxy");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            target,
            mode: Mutex::new(Mode::Pass),
            modes_from: Mutex::new(BTreeMap::new()),
            identify,
            stop: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let accept = thread::spawn({
            let shared = Arc::clone(&shared);
            move || accept_loop(&listener, &shared)
        });
        Proxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    pub fn mode(&self) -> Mode {
        self.shared.mode()
    }

    /// The mode of the connections `sender` opens (open ones too), over [`Proxy::set_mode`].
    pub fn set_mode_from(&self, sender: usize, mode: Mode) {
        self.shared.modes_from.lock().unwrap().insert(sender, mode);
    }

    /// Every mode back to pass.
    pub fn heal(&self) {
        self.shared.modes_from.lock().unwrap().clear();
        self.set_mode(Mode::Pass);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Bytes the black hole swallowed so far.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stopped() {
        match listener.accept() {
            Ok((client, _)) => {
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                let shared = Arc::clone(shared);
                thread::spawn(move || connection(client, &shared));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(TICK),
            Err(_) => thread::sleep(TICK),
        }
    }
}

/// One proxied connection: the upstream connection is made at once, even in black-hole mode
/// (its bytes are what is dropped), so switching to pass later needs no reconnect.
fn connection(client: TcpStream, shared: &Arc<Shared>) {
    let _ = client.set_nonblocking(false);
    let sender = Arc::new(Sender {
        ends: client.peer_addr().ok().zip(client.local_addr().ok()),
        found: Mutex::new((None, None)),
    });
    let Ok(upstream) = TcpStream::connect_timeout(&shared.target, Duration::from_secs(5)) else {
        return; // the client sees its connection closed
    };
    let poisoned = Arc::new(AtomicBool::new(false));
    let pumps = [
        (client.try_clone(), upstream.try_clone()),
        (upstream.try_clone(), client.try_clone()),
    ];
    let mut threads = Vec::new();
    for (from, to) in pumps {
        let (Ok(from), Ok(to)) = (from, to) else {
            return;
        };
        let (shared, poisoned, sender) = (
            Arc::clone(shared),
            Arc::clone(&poisoned),
            Arc::clone(&sender),
        );
        threads.push(thread::spawn(move || {
            pump(from, to, &shared, &sender, &poisoned)
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = upstream.shutdown(Shutdown::Both);
}

/// How often an unidentified connection's sender is looked up again.
const IDENTIFY_EVERY: Duration = Duration::from_millis(200);

/// Who opened one connection. Looked up again until found: a broker may connect before the
/// test knows its process.
struct Sender {
    /// The client's end and the proxy's.
    ends: Option<(SocketAddr, SocketAddr)>,
    /// The sender once found, and when it was last looked up.
    found: Mutex<(Option<usize>, Option<Instant>)>,
}

impl Sender {
    fn get(&self, shared: &Shared) -> Option<usize> {
        let (Some(identify), Some((peer, local))) = (&shared.identify, self.ends) else {
            return None;
        };
        let mut found = self.found.lock().unwrap();
        if found.0.is_none() && found.1.is_none_or(|t| t.elapsed() >= IDENTIFY_EVERY) {
            *found = (identify(peer, local), Some(Instant::now()));
        }
        found.0
    }
}

/// Copies `from` to `to` as the mode says until either side closes, the proxy stops, or the
/// connection lost bytes and the black hole is over. Closes both sides when it ends, so the
/// other direction ends too.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    shared: &Shared,
    sender: &Sender,
    poisoned: &AtomicBool,
) {
    let _ = from.set_read_timeout(Some(TICK));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if shared.stopped()
            || (poisoned.load(Ordering::SeqCst)
                && shared.mode_of(sender.get(shared)) != Mode::BlackHole)
        {
            break;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        match shared.mode_of(sender.get(shared)) {
            Mode::Pass => {}
            Mode::BlackHole => {
                poisoned.store(true, Ordering::SeqCst);
                shared.dropped.fetch_add(n as u64, Ordering::SeqCst);
                continue;
            }
            Mode::Delay(ms) => {
                // Sleep in ticks, so a stop or a heal is seen; a heal ends the delay.
                let mut left = Duration::from_millis(ms);
                while !left.is_zero()
                    && !shared.stopped()
                    && shared.mode_of(sender.get(shared)) != Mode::Pass
                {
                    let step = left.min(TICK);
                    thread::sleep(step);
                    left -= step;
                }
                if shared.mode_of(sender.get(shared)) == Mode::BlackHole {
                    poisoned.store(true, Ordering::SeqCst);
                    shared.dropped.fetch_add(n as u64, Ordering::SeqCst);
                    continue;
                }
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// The node whose process holds the client end `peer` of a connection to `local`, among
/// `pids` (pid, node id): the socket's inode from `/proc/net/tcp`, then the process that
/// has it open. None when not found (the connection already gone, another process).
pub fn broker_of_connection(
    peer: SocketAddr,
    local: SocketAddr,
    pids: &[(u32, usize)],
) -> Option<usize> {
    let hex = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(ip.octets()),
            a.port()
        )),
        IpAddr::V6(_) => None,
    };
    let (client_end, server_end) = (hex(peer)?, hex(local)?);
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&client_end.as_str()) && fields.get(2) == Some(&server_end.as_str()))
            .then(|| fields.get(9).map(|i| format!("socket:[{i}]")))?
    })?;
    pids.iter().find_map(|&(pid, node)| {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        fds.flatten()
            .any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|l| l.to_str() == Some(inode.as_str()))
            })
            .then_some(node)
    })
}
