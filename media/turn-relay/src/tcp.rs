//! RFC 6062 TCP relays for the driver: a listener per TCP allocation that
//! accepts peers, the connections to and from peers, and the client data
//! connections joined to them. Bytes pass as they come (no framing); each
//! peer connection has its own task, and a peer's bytes wait unread until
//! the client has bound a data connection to it (RFC 6062 §5.3 buffering
//! is the kernel's receive buffer). `turn.max_allocation_kbps` paces each
//! peer connection in each direction (a stream waits for its budget; it is
//! never cut in the middle).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use branchgate_streams::RawSwitch;
use branchgate_turn::{Budget, FiveTuple, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// How long connecting to a peer may take before the Connect fails with 447.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub enum TcpEvent {
    Accepted { port: u16, peer: SocketAddr, stream: TcpStream },
    Connected { connection: u32, stream: Option<TcpStream> },
    Data { connection: u32, data: Vec<u8> },
    Closed { connection: u32 },
}

#[derive(Debug)]
struct PeerPipe {
    to_peer: mpsc::Sender<Vec<u8>>,
    start: watch::Sender<bool>,
    task: JoinHandle<()>,
    data: Option<FiveTuple>,
}

#[derive(Debug)]
pub struct TcpRelays {
    listeners: HashMap<u16, JoinHandle<()>>,
    peers: HashMap<u32, PeerPipe>,
    /// Client data connections and the peer connection each is joined to.
    joined: HashMap<FiveTuple, u32>,
    /// The framing switch of every client stream connection.
    raws: HashMap<FiveTuple, RawSwitch>,
    events: mpsc::Sender<TcpEvent>,
    /// The bandwidth cap in bytes per second (0: none), read by every pipe as it goes.
    rate: Arc<AtomicU64>,
}

impl Drop for TcpRelays {
    fn drop(&mut self) {
        for task in self.listeners.values() {
            task.abort();
        }
        for pipe in self.peers.values() {
            pipe.task.abort();
        }
    }
}

impl TcpRelays {
    pub fn new(events: mpsc::Sender<TcpEvent>) -> Self {
        TcpRelays {
            listeners: HashMap::new(),
            peers: HashMap::new(),
            joined: HashMap::new(),
            raws: HashMap::new(),
            events,
            rate: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The bandwidth cap of each peer connection, each way (`turn.max_allocation_kbps`), in
    /// bytes per second; 0 for none. Running connections follow it at once.
    pub fn set_rate(&self, bytes_per_second: u64) {
        self.rate.store(bytes_per_second, Ordering::Relaxed);
    }

    pub fn opened(&mut self, tuple: FiveTuple, raw: RawSwitch) {
        self.raws.insert(tuple, raw);
    }

    pub fn closed(&mut self, tuple: &FiveTuple) {
        self.raws.remove(tuple);
        self.joined.remove(tuple);
    }

    /// The peer connection a client data connection is joined to.
    pub fn joined(&self, tuple: &FiveTuple) -> Option<u32> {
        self.joined.get(tuple).copied()
    }

    /// Opens the listener of a TCP allocation.
    pub fn listen(&mut self, ip: IpAddr, port: u16) -> std::io::Result<SocketAddr> {
        let std_listener = std::net::TcpListener::bind((ip, port))?;
        std_listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(std_listener)?;
        let bound = listener.local_addr()?;
        let events = self.events.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                if events.send(TcpEvent::Accepted { port, peer, stream }).await.is_err() {
                    return;
                }
            }
        });
        if let Some(old) = self.listeners.insert(port, task) {
            old.abort();
        }
        Ok(bound)
    }

    pub fn close_listener(&mut self, port: u16) {
        if let Some(task) = self.listeners.remove(&port) {
            task.abort();
        }
    }

    /// Connects to `peer` from the relay's address (the answer comes as [`TcpEvent::Connected`]).
    pub fn connect(&self, connection: u32, from: IpAddr, peer: SocketAddr) {
        let events = self.events.clone();
        tokio::spawn(async move {
            let attempt = async {
                let socket = if from.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
                socket.bind(SocketAddr::new(from, 0))?;
                socket.connect(peer).await
            };
            let stream = match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    Some(stream)
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TCP relay connection failed");
                    None
                }
                Err(_) => None,
            };
            let _ = events.send(TcpEvent::Connected { connection, stream }).await;
        });
    }

    /// Keeps a peer connection; its bytes are read once a data connection joins it.
    pub fn add_peer(&mut self, connection: u32, stream: TcpStream) {
        let (to_peer, from_client) = mpsc::channel(256);
        let (start, started) = watch::channel(false);
        let pipe = pipe_peer(connection, stream, from_client, started, self.events.clone(), self.rate.clone());
        let task = tokio::spawn(pipe);
        if let Some(old) = self.peers.insert(connection, PeerPipe { to_peer, start, task, data: None }) {
            old.task.abort();
        }
    }

    /// The client data connection `data` now carries peer connection `connection`.
    pub fn join(&mut self, connection: u32, data: FiveTuple) {
        if let Some(raw) = self.raws.get(&data) {
            raw.store(true, Ordering::Release);
        }
        if let Some(pipe) = self.peers.get_mut(&connection) {
            pipe.data = Some(data);
            let _ = pipe.start.send(true);
            self.joined.insert(data, connection);
        }
    }

    /// Client bytes for the peer; `false` when the peer cannot take them (close it).
    pub fn to_peer(&self, connection: u32, data: Vec<u8>) -> bool {
        self.peers.get(&connection).is_some_and(|pipe| pipe.to_peer.try_send(data).is_ok())
    }

    /// The client data connection a peer's bytes go to.
    pub fn data_of(&self, connection: u32) -> Option<FiveTuple> {
        self.peers.get(&connection).and_then(|p| p.data)
    }

    /// Closes a peer connection; returns the client data connection to close with it.
    pub fn close_peer(&mut self, connection: u32) -> Option<FiveTuple> {
        let pipe = self.peers.remove(&connection)?;
        pipe.task.abort();
        if let Some(data) = pipe.data {
            self.joined.remove(&data);
        }
        pipe.data
    }
}

async fn pipe_peer(
    connection: u32,
    stream: TcpStream,
    mut from_client: mpsc::Receiver<Vec<u8>>,
    mut started: watch::Receiver<bool>,
    events: mpsc::Sender<TcpEvent>,
    rate: Arc<AtomicU64>,
) {
    let (mut reader, mut writer) = stream.into_split();
    let mut chunk = vec![0u8; 16 * 1024];
    let now = Instant::now();
    let (mut to_peer, mut to_client) = (Budget::full(now, 0), Budget::full(now, 0));
    loop {
        let reading = *started.borrow();
        // At most a second's worth at a time, so that a chunk always fits the budget.
        let limit = match rate.load(Ordering::Relaxed) {
            0 => chunk.len(),
            rate => chunk.len().min(usize::try_from(rate).unwrap_or(usize::MAX)),
        };
        tokio::select! {
            data = from_client.recv() => match data {
                Some(data) => {
                    let mut written = true;
                    for piece in data.chunks(limit) {
                        pace(&mut to_peer, &rate, piece.len()).await;
                        if writer.write_all(piece).await.is_err() {
                            written = false;
                            break;
                        }
                    }
                    if !written { break }
                }
                None => break,
            },
            read = reader.read(&mut chunk[..limit]), if reading => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    pace(&mut to_client, &rate, n).await;
                    // Waits when the main loop is busy: backpressure on this peer only.
                    if events.send(TcpEvent::Data { connection, data: chunk[..n].to_vec() }).await.is_err() { break }
                }
            },
            changed = started.changed(), if !reading => if changed.is_err() { break },
        }
    }
    let _ = events.send(TcpEvent::Closed { connection }).await;
}

/// Waits until `budget` lets `len` bytes pass at the cap `rate` (bytes per second; 0: none).
async fn pace(budget: &mut Budget, rate: &AtomicU64, len: usize) {
    loop {
        let wait = budget.wait(Instant::now(), rate.load(Ordering::Relaxed), len);
        if wait.is_zero() {
            return;
        }
        tokio::time::sleep(wait).await;
    }
}

/// Carries out a TCP relay event against the server.
pub fn handle_event(
    server: &mut Server,
    tcp: &mut TcpRelays,
    streams: &HashMap<FiveTuple, mpsc::Sender<Vec<u8>>>,
    event: TcpEvent,
) {
    let now = Instant::now();
    match event {
        TcpEvent::Accepted { port, peer, stream } => {
            if let Some(connection) = server.peer_connection(now, port, peer) {
                tcp.add_peer(connection, stream);
            }
        }
        TcpEvent::Connected { connection, stream } => {
            // Kept only if the server still wants it (the allocation may be gone by now).
            if server.peer_connect_result(now, connection, stream.is_some())
                && let Some(stream) = stream
            {
                tcp.add_peer(connection, stream);
            }
        }
        TcpEvent::Data { connection, data } => {
            let sent = tcp.data_of(connection).and_then(|t| streams.get(&t)).is_some_and(|w| w.try_send(data).is_ok());
            if !sent {
                // A client that does not keep up loses the connection, never bytes in the middle.
                server.peer_closed(connection);
            }
        }
        TcpEvent::Closed { connection } => server.peer_closed(connection),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer connection capped at 8000 bytes/s (64 kbit/s) takes about a second per 8000
    /// bytes beyond the first second's budget, both ways.
    #[tokio::test]
    async fn a_capped_peer_connection_is_paced_not_cut() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("listen");
        let address = listener.local_addr().expect("address");
        let (events_tx, mut events) = mpsc::channel(64);
        let mut relays = TcpRelays::new(events_tx);
        relays.set_rate(8000);
        let (peer_side, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        let mut peer = peer_side.expect("connect");
        relays.add_peer(7, accepted.expect("accept").0);
        let tuple = FiveTuple {
            transport: branchgate_turn::Transport::Tcp,
            client: "127.0.0.1:1".parse().expect("addr"),
            listener: "127.0.0.1:2".parse().expect("addr"),
        };
        relays.join(7, tuple);

        // Toward the peer: 16000 bytes, the first 8000 at once, the rest a second later.
        let started = Instant::now();
        assert!(relays.to_peer(7, vec![1u8; 16000]));
        let mut received = vec![0u8; 16000];
        peer.read_exact(&mut received).await.expect("the peer gets every byte");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "{took:?}");

        // Toward the client: the same pace.
        let started = Instant::now();
        peer.write_all(&[2u8; 16000]).await.expect("write");
        let mut total = 0;
        while total < 16000 {
            match events.recv().await {
                Some(TcpEvent::Data { connection: 7, data }) => total += data.len(),
                other => panic!("unexpected {other:?}"),
            }
        }
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "{took:?}");
    }
}
