//! A loopback TCP relay in front of a real server that a test can close and open again: closed, it
//! cuts every relayed connection and answers new ones by hanging up, as an unreachable server
//! would look to a client. The server behind it is the real one throughout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream};

pub struct Gate {
    pub port: u16,
    open: Arc<AtomicBool>,
    /// Bumped at every close: relays of an older generation stop.
    generation: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    /// Relays 127.0.0.1:`port` (a free port) to `upstream`; starts open.
    pub async fn start(upstream: SocketAddr) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let open = open.clone();
            let generation = generation.clone();
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    if !open.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let born = generation.load(Ordering::SeqCst);
                    let generation = generation.clone();
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        relay(client, server, born, generation).await;
                    });
                }
            }
        });
        Gate {
            port,
            open,
            generation,
            task,
        }
    }

    /// Cuts every relayed connection and refuses new ones; returns once the relays have seen it.
    pub async fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        // The relays poll every 5 ms.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    mut client: TcpStream,
    mut server: TcpStream,
    born: u64,
    generation: Arc<AtomicU64>,
) {
    let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
    let cut = async {
        while generation.load(Ordering::SeqCst) == born {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    tokio::select! {
        _ = copy => {}
        _ = cut => {}
    }
}
