//! A TCP proxy on loopback between two brokers, for network faults without root: it passes
//! bytes on, black-holes them (accepts connections and reads, never forwards), or delays
//! every chunk by some milliseconds. The mode applies at once to open connections too (a
//! pooled keep-alive connection is cut off like a new one).
//!
//! A thread accepts; each connection gets a thread per direction. A connection that lost
//! bytes to the black hole is closed once the mode is no longer black-hole (its HTTP stream
//! is broken), so healing never hands a client a half-dropped answer.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

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

struct Shared {
    target: SocketAddr,
    mode: Mutex<Mode>,
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
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            target,
            mode: Mutex::new(Mode::Pass),
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
        let (shared, poisoned) = (Arc::clone(shared), Arc::clone(&poisoned));
        threads.push(thread::spawn(move || pump(from, to, &shared, &poisoned)));
    }
    for t in threads {
        let _ = t.join();
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = upstream.shutdown(Shutdown::Both);
}

/// Copies `from` to `to` as the mode says until either side closes, the proxy stops, or the
/// connection lost bytes and the black hole is over. Closes both sides when it ends, so the
/// other direction ends too.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared, poisoned: &AtomicBool) {
    let _ = from.set_read_timeout(Some(TICK));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if shared.stopped() || (poisoned.load(Ordering::SeqCst) && shared.mode() != Mode::BlackHole)
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
        match shared.mode() {
            Mode::Pass => {}
            Mode::BlackHole => {
                poisoned.store(true, Ordering::SeqCst);
                shared.dropped.fetch_add(n as u64, Ordering::SeqCst);
                continue;
            }
            Mode::Delay(ms) => {
                // Sleep in ticks, so a stop or a heal is seen; a heal ends the delay.
                let mut left = Duration::from_millis(ms);
                while !left.is_zero() && !shared.stopped() && shared.mode() != Mode::Pass {
                    let step = left.min(TICK);
                    thread::sleep(step);
                    left -= step;
                }
                if shared.mode() == Mode::BlackHole {
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
