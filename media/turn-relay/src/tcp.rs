//! RFC 6062 TCP relays for the driver: a listener per TCP allocation that
//! accepts peers, the connections to and from peers, and the client data
//! connections joined to them. Bytes pass as they come (no framing); each
//! peer connection has its own task, and a peer's bytes wait unread until
//! the client has bound a data connection to it (RFC 6062 §5.3 buffering
//! is the kernel's receive buffer).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use branchgate_streams::RawSwitch;
use branchgate_turn::{FiveTuple, Server};
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
        }
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
        let task = tokio::spawn(pipe_peer(connection, stream, from_client, started, self.events.clone()));
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
) {
    let (mut reader, mut writer) = stream.into_split();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let reading = *started.borrow();
        tokio::select! {
            data = from_client.recv() => match data {
                Some(data) => if writer.write_all(&data).await.is_err() { break },
                None => break,
            },
            read = reader.read(&mut chunk), if reading => match read {
                Ok(0) | Err(_) => break,
                // Waits when the main loop is busy: backpressure on this peer only.
                Ok(n) => if events.send(TcpEvent::Data { connection, data: chunk[..n].to_vec() }).await.is_err() { break },
            },
            changed = started.changed(), if !reading => if changed.is_err() { break },
        }
    }
    let _ = events.send(TcpEvent::Closed { connection }).await;
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
