//! A fault-injecting TCP proxy to put between clip and the real registry.
//!
//! Bytes are pumped both ways unchanged while the [`Fault`] is [`Fault::None`]. The fault is
//! read for every chunk, so switching it affects connections that are already open (clients
//! pool connections): [`Fault::Reset`] closes both sides at once, [`Fault::Stall`] holds the
//! response until the fault changes, [`Fault::Truncate`] forwards half of the next response
//! chunk and then closes the connection, [`Fault::Corrupt`] flips a bit in every response chunk
//! after the first 512 bytes of a connection (past the HTTP headers).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the proxy does to the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    Reset,
    Stall,
    Truncate,
    Corrupt,
}

struct Shared {
    fault: Mutex<Fault>,
    changed: Condvar,
    stop: AtomicBool,
    injected: AtomicU64,
    connections: AtomicU64,
}

impl Shared {
    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks while the fault is `Stall` (or until the proxy stops).
    fn wait_while_stalled(&self) {
        let mut fault = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        while *fault == Fault::Stall && !self.stop.load(Ordering::SeqCst) {
            fault = self.changed.wait(fault).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A running proxy; dropping it stops accepting and releases stalled connections.
pub struct FaultProxy {
    addr: String,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let shared = Arc::new(Shared {
            fault: Mutex::new(Fault::None),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            injected: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        let upstream = upstream.to_string();
        let s = shared.clone();
        let acceptor = std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                s.connections.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(&upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                for stream in [&client, &server] {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
                }
                let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                    (Ok(c), Ok(s)) => (c, s),
                    _ => continue,
                };
                let up = s.clone();
                std::thread::spawn(move || pump(client, server, &up, false));
                let down = s.clone();
                std::thread::spawn(move || pump(s2, c2, &down, true));
            }
        });
        FaultProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Changes the fault for all traffic from now on.
    pub fn set(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
        self.shared.changed.notify_all();
    }

    /// How many times a fault was applied to a chunk or a connection.
    pub fn faults_injected(&self) -> u64 {
        self.shared.injected.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        // Wake the acceptor.
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// Copies `from` → `to`, applying the current fault; `response` is the registry → client side.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared, response: bool) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut sent: u64 = 0;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &mut buf[..n];
        match shared.fault() {
            Fault::None => {}
            Fault::Reset => {
                shared.injected.fetch_add(1, Ordering::SeqCst);
                break;
            }
            Fault::Stall if response => {
                shared.injected.fetch_add(1, Ordering::SeqCst);
                shared.wait_while_stalled();
            }
            Fault::Stall => {}
            Fault::Truncate if response => {
                shared.injected.fetch_add(1, Ordering::SeqCst);
                let half = chunk.len() / 2;
                let _ = to.write_all(&chunk[..half]);
                break;
            }
            Fault::Truncate => {}
            Fault::Corrupt if response => {
                let skip = 512u64.saturating_sub(sent).min(chunk.len() as u64) as usize;
                if let Some(b) = chunk[skip..].first_mut() {
                    *b ^= 0x20;
                    shared.injected.fetch_add(1, Ordering::SeqCst);
                }
            }
            Fault::Corrupt => {}
        }
        if to.write_all(chunk).is_err() {
            break;
        }
        sent += n as u64;
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
