//! A loopback TCP relay in front of a real server that a test can close and open again: closed, it
//! cuts every relayed connection and answers new ones by hanging up, as an unreachable server
//! would look to a client. The server behind it is the real one throughout.
//!
//! A recording gate ([`Gate::start_recording`]) also keeps every byte each client sent towards the
//! server, so a test can check what actually went over the wire (that a secret never did).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Gate {
    pub port: u16,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

struct State {
    open: bool,
    /// The relay task of every connection admitted since the last `close`. A relay owns both of
    /// its sockets, so once its task is gone the connection is closed on both sides.
    relays: Vec<JoinHandle<()>>,
    /// A recording gate's log: per connection, in the order they were admitted, the bytes its
    /// client sent. Per connection, so that bytes of two clients never interleave into (or split)
    /// the text a test looks for.
    sent: Option<Vec<Arc<Mutex<Vec<u8>>>>>,
}

impl Gate {
    /// Relays 127.0.0.1:`port` (a free port) to `upstream`; starts open.
    pub async fn start(upstream: SocketAddr) -> Gate {
        Gate::spawn(upstream, None).await
    }

    /// As [`Gate::start`], and keeps what the clients send: see [`Gate::sent`].
    pub async fn start_recording(upstream: SocketAddr) -> Gate {
        Gate::spawn(upstream, Some(Vec::new())).await
    }

    async fn spawn(upstream: SocketAddr, sent: Option<Vec<Arc<Mutex<Vec<u8>>>>>) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            open: true,
            relays: Vec::new(),
            sent,
        }));
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    admit(&state, client, upstream);
                }
            }
        });
        Gate { port, state, task }
    }

    /// Cuts every relayed connection and refuses new ones; returns only once every relay has ended,
    /// its sockets to the client and to the server closed.
    pub async fn close(&self) {
        // Closing and taking the relays under one lock: a connection is either admitted before
        // (and cut here) or answered by hanging up.
        let relays = {
            let mut state = self.state.lock().unwrap();
            state.open = false;
            std::mem::take(&mut state.relays)
        };
        for relay in relays {
            relay.abort();
            // Resolves once the task has been dropped, with it both sockets; the error is the
            // cancellation asked for (or a relay that had already ended).
            let _ = relay.await;
        }
    }

    pub fn open(&self) {
        self.state.lock().unwrap().open = true;
    }

    /// A recording gate's log: for every connection relayed so far, in the order they came, the
    /// bytes its client sent towards the server (everything the server received from it).
    ///
    /// # Panics
    /// On a gate started with [`Gate::start`]: an empty answer would let a "never sent" check
    /// pass without looking.
    pub fn sent(&self) -> Vec<Vec<u8>> {
        let state = self.state.lock().unwrap();
        let sent = state
            .sent
            .as_ref()
            .expect("Gate::sent needs a gate made by Gate::start_recording");
        sent.iter().map(|log| log.lock().unwrap().clone()).collect()
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
        if let Ok(state) = self.state.lock() {
            for relay in &state.relays {
                relay.abort();
            }
        }
    }
}

/// Starts relaying `client`, or hangs up on it if the gate is closed.
fn admit(state: &Mutex<State>, client: TcpStream, upstream: SocketAddr) {
    let mut state = state.lock().unwrap();
    if !state.open {
        drop(client);
        return;
    }
    // Forget relays that ended by themselves, so a long-lived gate does not pile up handles.
    state.relays.retain(|relay| !relay.is_finished());
    let log = state.sent.as_mut().map(|sent| {
        let log = Arc::new(Mutex::new(Vec::new()));
        sent.push(log.clone());
        log
    });
    state.relays.push(tokio::spawn(async move {
        let Ok(server) = TcpStream::connect(upstream).await else {
            return;
        };
        relay(client, server, log).await;
    }));
}

/// Copies both ways until both sides are done (like `copy_bidirectional`), keeping what the client
/// sends in `log` when there is one.
async fn relay(client: TcpStream, server: TcpStream, log: Option<Arc<Mutex<Vec<u8>>>>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = async {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let n = match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = &buffer[..n];
            if let Some(log) = &log {
                log.lock().unwrap().extend_from_slice(chunk);
            }
            if server_write.write_all(chunk).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(up, down);
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::Ipv4Addr;

    use super::*;

    /// The inode of this machine's TCP socket from `local` to `remote` (IPv4), from /proc/net/tcp.
    fn socket_inode(local: SocketAddr, remote: SocketAddr) -> u64 {
        // /proc/net/tcp writes an address as the IPv4 address in host byte order then the port,
        // both in hex: 127.0.0.1:80 is `0100007F:0050` on x86.
        let hex = |address: SocketAddr| {
            let SocketAddr::V4(v4) = address else {
                panic!("IPv4 only: {address}");
            };
            let ip = u32::from_ne_bytes(v4.ip().octets());
            format!("{ip:08X}:{:04X}", v4.port())
        };
        let (local, remote) = (hex(local), hex(remote));
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        for line in table.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields[1] == local && fields[2] == remote {
                return fields[9].parse().unwrap();
            }
        }
        panic!("no socket {local} -> {remote} in /proc/net/tcp");
    }

    /// The inodes of the sockets this process holds open.
    fn open_sockets() -> HashSet<u64> {
        let mut inodes = HashSet::new();
        for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
            // An fd closed between listing and reading is simply not open any more.
            let Ok(target) = std::fs::read_link(entry.unwrap().path()) else {
                continue;
            };
            let target = target.to_string_lossy().into_owned();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
            {
                inodes.insert(inode.parse().unwrap());
            }
        }
        inodes
    }

    /// `close` returns only once the relay's own sockets (to the client and to the server) are
    /// closed: checked right after it returns, without waiting, in this process's fd table, which
    /// close(2) updates synchronously. Then the client and the server both see the end. On one
    /// thread, so that nothing but `close` itself can have ended the relay by then.
    #[tokio::test]
    async fn close_returns_once_every_relay_is_cut() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_address = upstream.local_addr().unwrap();
        let gate = Gate::start_recording(upstream_address).await;
        let gate_address = SocketAddr::from((Ipv4Addr::LOCALHOST, gate.port));
        let mut client = TcpStream::connect(gate_address).await.unwrap();
        let (mut server, relay_address) = upstream.accept().await.unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut buffer = [0u8; 4];
        server.read_exact(&mut buffer).await.unwrap();
        assert_eq!(&buffer, b"ping");
        server.write_all(b"pong").await.unwrap();
        client.read_exact(&mut buffer).await.unwrap();
        assert_eq!(&buffer, b"pong");
        assert_eq!(gate.sent(), vec![b"ping".to_vec()]);

        // The relay's two sockets: gate port -> client, relay -> upstream.
        let relay_sockets = [
            socket_inode(gate_address, client.local_addr().unwrap()),
            socket_inode(relay_address, upstream_address),
        ];
        let before = open_sockets();
        assert!(relay_sockets.iter().all(|inode| before.contains(inode)));

        gate.close().await;
        let after = open_sockets();
        assert!(
            relay_sockets.iter().all(|inode| !after.contains(inode)),
            "close returned while the relay still held its sockets"
        );
        assert_eq!(client.read(&mut buffer).await.unwrap(), 0);
        assert_eq!(server.read(&mut buffer).await.unwrap(), 0);

        // Closed: a new connection is hung up on, and nothing reaches the server.
        let mut refused = TcpStream::connect(gate_address).await.unwrap();
        assert_eq!(refused.read(&mut buffer).await.unwrap_or(0), 0);

        // Open again: relayed again.
        gate.open();
        let mut client = TcpStream::connect(gate_address).await.unwrap();
        let (mut server, _) = upstream.accept().await.unwrap();
        client.write_all(b"again").await.unwrap();
        let mut buffer = [0u8; 5];
        server.read_exact(&mut buffer).await.unwrap();
        assert_eq!(gate.sent(), vec![b"ping".to_vec(), b"again".to_vec()]);
    }
}
