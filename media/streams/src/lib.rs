//! TCP and TLS connections for stream transports of message protocols (SIP,
//! STUN/TURN): accept, handshake, split the byte stream into messages with the
//! protocol's own framing function, and write back what the driver sends.
//! The driver's main loop sees only [`StreamEvent`]s.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Connections silent this long are closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Connections one listener keeps at once, and from one client IP (an office
/// NAT holds many phones; one host opening thousands is an attack).
pub const MAX_CONNECTIONS: usize = 10_000;
pub const MAX_CONNECTIONS_PER_IP: usize = 500;

/// Splits the start of a buffer into one message: `Ok(Some(len))`, `Ok(None)` for
/// "not enough bytes yet", `Err(())` for a stream that is not this protocol.
pub type Framer = fn(&[u8]) -> Result<Option<usize>, ()>;

/// One connection as the driver knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Connection {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub tls: bool,
    /// Messages arrive as WebSocket messages (SIP over WebSocket, RFC 7118).
    pub websocket: bool,
}

/// The certificate and private key (PEM) a TLS listener presents; asked
/// again whenever listeners are made, so an installer's new certificate applies.
pub type CertificateSource = std::sync::Arc<dyn Fn() -> Result<(String, String), String> + Send + Sync>;

/// A TLS acceptor for the certificate `source` gives now.
pub fn tls_acceptor(source: &CertificateSource) -> Result<tokio_rustls::TlsAcceptor, String> {
    let (certificate, key) = source()?;
    let certs =
        rustls_pemfile::certs(&mut certificate.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    let key = rustls_pemfile::private_key(&mut key.as_bytes())
        .map_err(|e| e.to_string())?
        .ok_or("no private key in the PEM text")?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}

#[derive(Debug)]
pub enum StreamEvent {
    /// A new connection; what is sent on `writer` goes out on it (an empty
    /// message closes it). Setting `raw` stops the framing: from then on every
    /// read is handed on as it comes (a TURN data connection, RFC 6062).
    Opened {
        connection: Connection,
        writer: mpsc::Sender<Vec<u8>>,
        raw: RawSwitch,
    },
    /// One whole message.
    Frame {
        connection: Connection,
        data: Vec<u8>,
    },
    Closed {
        connection: Connection,
    },
    /// An outgoing connection ([`spawn_connect`]) could not be made.
    ConnectFailed {
        remote: SocketAddr,
    },
}

/// The box's address towards the outside when nothing is configured (TURN relays,
/// SIP and SDP towards peers): the first non-loopback IPv4 address, else loopback
/// (a box without a network).
pub fn primary_ip() -> std::net::IpAddr {
    if_addrs::get_if_addrs()
        .ok()
        .and_then(|list| list.into_iter().map(|i| i.ip()).find(|ip| ip.is_ipv4() && !ip.is_loopback()))
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

/// Sends a datagram at once when the socket buffer has room (nearly always) and waits for
/// room otherwise: a burst the kernel cannot take at once is delayed, not lost. Other send
/// errors (an unreachable destination) drop the datagram, as a router would.
pub async fn send_datagram(socket: &tokio::net::UdpSocket, packet: &[u8], to: SocketAddr) {
    if let Err(e) = socket.try_send_to(packet, to)
        && e.kind() == std::io::ErrorKind::WouldBlock
    {
        let _ = socket.send_to(packet, to).await;
    }
}

/// Turns a connection's framing off (see [`StreamEvent::Opened`]).
pub type RawSwitch = std::sync::Arc<std::sync::atomic::AtomicBool>;

/// How long an outgoing connection may take to be established.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a TCP connection to `remote` (the box as the client: SIP to a trunk);
/// once open it reports and behaves like an accepted one.
/// The Debian (and Yocto) bundle of the system's trusted CA certificates.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What the box needs to open a TLS connection as a client: whom it trusts and the name the
/// server's certificate must carry.
#[derive(Clone)]
pub struct TlsClient {
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl TlsClient {
    /// A client for `host` (a DNS name or an IP literal, checked against the certificate's
    /// names) trusting the system's CAs and `extra_ca_pem` (a private CA, or a server's
    /// self-signed certificate). The system bundle may be missing (a box without
    /// ca-certificates): then only `extra_ca_pem` is trusted. With `identity` (certificate
    /// chain and private key, PEM) the client answers a server's certificate request with it
    /// (mutual TLS); without, it has none to give.
    pub fn new(host: &str, extra_ca_pem: Option<&str>, identity: Option<(&str, &str)>) -> Result<TlsClient, String> {
        let server_name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|_| format!("{host:?} is not a name a certificate can carry"))?;
        let mut roots = rustls::RootCertStore::empty();
        if let Ok(bundle) = std::fs::read(SYSTEM_CA_BUNDLE) {
            // Certificates rustls cannot use (old, odd encodings) are skipped, as browsers do.
            let mut reader = bundle.as_slice();
            roots.add_parsable_certificates(rustls_pemfile::certs(&mut reader).filter_map(Result::ok));
        }
        let mut pinned = Vec::new();
        if let Some(pem) = extra_ca_pem {
            let certificates =
                rustls_pemfile::certs(&mut pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
            if certificates.is_empty() {
                return Err("no certificate in the PEM text".into());
            }
            for certificate in certificates {
                // A self-signed server certificate made with `openssl req -x509` says CA:TRUE,
                // which path validation refuses as a server's own; such a one is trusted by
                // being exactly the certificate given (pinned) instead.
                let _ = roots.add(certificate.clone());
                pinned.push(certificate);
            }
        }
        if roots.is_empty() && pinned.is_empty() {
            return Err(format!("no trusted certificates ({SYSTEM_CA_BUNDLE} is missing and none were given)"));
        }
        let webpki = rustls::client::WebPkiServerVerifier::builder(std::sync::Arc::new(roots))
            .build()
            .map_err(|e| format!("no usable trusted certificate: {e}"))?;
        let verifier = PinnedOrWebPki { webpki, pinned };
        let builder =
            rustls::ClientConfig::builder().dangerous().with_custom_certificate_verifier(std::sync::Arc::new(verifier));
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((chain_pem, key_pem)) => {
                let chain = rustls_pemfile::certs(&mut chain_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("the client certificate: {e}"))?;
                let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
                    .map_err(|e| format!("the client key: {e}"))?
                    .ok_or("no private key for the client certificate")?;
                builder.with_client_auth_cert(chain, key).map_err(|e| format!("the client certificate: {e}"))?
            }
        };
        Ok(TlsClient { connector: tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)), server_name })
    }
}

/// A server certificate is good when it chains to a trusted CA and names the server (WebPKI),
/// or when it is exactly one of the certificates given for this server.
#[derive(Debug)]
struct PinnedOrWebPki {
    webpki: std::sync::Arc<rustls::client::WebPkiServerVerifier>,
    pinned: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedOrWebPki {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(_) if self.pinned.iter().any(|p| p.as_ref() == end_entity.as_ref()) => {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            result => result,
        }
    }

    // The handshake signatures are checked as always: a pinned certificate proves nothing
    // unless the server holds its key.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Connects to `remote` (with `tls`, a TLS client handshake follows, the server's certificate
/// checked) and serves the connection like an accepted one.
pub fn spawn_connect(
    remote: SocketAddr,
    tls: Option<TlsClient>,
    framer: Framer,
    events: mpsc::Sender<StreamEvent>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(remote)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%remote, error = %e, "connection failed");
                let _ = events.send(StreamEvent::ConnectFailed { remote }).await;
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, "connection timed out");
                let _ = events.send(StreamEvent::ConnectFailed { remote }).await;
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else { return };
        let connection = Connection { local, remote, tls: tls.is_some(), websocket: false };
        let Some(tls) = tls else {
            return serve(stream, connection, framer, events).await;
        };
        let handshake = tls.connector.connect(tls.server_name.clone(), stream);
        match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
            Ok(Ok(stream)) => serve(stream, connection, framer, events).await,
            Ok(Err(e)) => {
                // Said at warn: a trunk whose certificate the box refuses is an installer's problem.
                tracing::warn!(%remote, server = ?tls.server_name, error = %e, "TLS handshake failed");
                let _ = events.send(StreamEvent::ConnectFailed { remote }).await;
            }
            Err(_) => {
                tracing::warn!(%remote, "TLS handshake timed out");
                let _ = events.send(StreamEvent::ConnectFailed { remote }).await;
            }
        }
    })
}

/// Accepts connections on `listener` until the task is aborted; with `tls`,
/// each one is a TLS server handshake first.
pub fn spawn_accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    framer: Framer,
    events: mpsc::Sender<StreamEvent>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(local) = listener.local_addr() else {
            return;
        };
        let open: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>> =
            Default::default();
        loop {
            let (stream, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors fails again at once: do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            {
                let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
                let total: usize = open.values().sum();
                let from_ip = open.get(&remote.ip()).copied().unwrap_or(0);
                if total >= MAX_CONNECTIONS || from_ip >= MAX_CONNECTIONS_PER_IP {
                    tracing::debug!(%remote, "connection refused: too many open");
                    continue; // dropping the stream closes it
                }
                *open.entry(remote.ip()).or_default() += 1;
            }
            let _ = stream.set_nodelay(true);
            let connection = Connection { local, remote, tls: tls.is_some(), websocket: false };
            let events = events.clone();
            let tls = tls.clone();
            let open = open.clone();
            tokio::spawn(async move {
                match tls {
                    None => serve(stream, connection, framer, events).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => serve(stream, connection, framer, events).await,
                            _ => tracing::debug!(%remote, "TLS handshake failed"),
                        }
                    }
                }
                let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(count) = open.get_mut(&remote.ip()) {
                    *count -= 1;
                    if *count == 0 {
                        open.remove(&remote.ip());
                    }
                }
            });
        }
    })
}

async fn serve<S>(stream: S, connection: Connection, framer: Framer, events: mpsc::Sender<StreamEvent>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(256);
    let raw = RawSwitch::default();
    if events.send(StreamEvent::Opened { connection, writer: tx, raw: raw.clone() }).await.is_err() {
        return;
    }
    let (closed_tx, mut closed_rx) = tokio::sync::oneshot::channel::<()>();
    let write_task = tokio::spawn(async move {
        while let Some(data) = rx.recv().await {
            // An empty message is the driver closing the connection.
            if data.is_empty() || writer.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
        let _ = closed_tx.send(());
    });
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    'read: loop {
        // A connection silent for longer than any keep-alive interval is dead (RFC 5626 uses ~2 min).
        let read = tokio::select! {
            read = tokio::time::timeout(IDLE_TIMEOUT, reader.read(&mut chunk)) => read,
            _ = &mut closed_rx => break,
        };
        let n = match read {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            if raw.load(std::sync::atomic::Ordering::Acquire) {
                if !buf.is_empty() {
                    let data = std::mem::take(&mut buf);
                    if events.send(StreamEvent::Frame { connection, data }).await.is_err() {
                        break 'read;
                    }
                }
                break;
            }
            match framer(&buf) {
                Ok(Some(0)) => break 'read,
                Ok(Some(len)) => {
                    let data: Vec<u8> = buf.drain(..len).collect();
                    if events.send(StreamEvent::Frame { connection, data }).await.is_err() {
                        break 'read;
                    }
                }
                Ok(None) if buf.len() > 128 * 1024 => break 'read,
                Ok(None) => break,
                Err(()) => break 'read,
            }
        }
    }
    write_task.abort();
    let _ = events.send(StreamEvent::Closed { connection }).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any_frame(buf: &[u8]) -> Result<Option<usize>, ()> {
        Ok((!buf.is_empty()).then_some(buf.len()))
    }

    #[tokio::test]
    async fn one_address_cannot_open_more_than_its_share() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, mut rx) = mpsc::channel(MAX_CONNECTIONS_PER_IP * 2);
        let accept = spawn_accept_loop(listener, None, any_frame, tx);
        let mut clients = Vec::new();
        for _ in 0..=MAX_CONNECTIONS_PER_IP {
            clients.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        let mut opened = 0;
        while let Ok(Some(StreamEvent::Opened { .. })) =
            tokio::time::timeout(Duration::from_millis(500), rx.recv()).await
        {
            opened += 1;
        }
        assert_eq!(opened, MAX_CONNECTIONS_PER_IP);
        // The one too many was closed at once.
        let mut last = clients.pop().expect("client");
        let mut byte = [0u8; 1];
        let read =
            tokio::time::timeout(Duration::from_secs(2), last.read(&mut byte)).await.expect("closed, not hanging");
        assert!(matches!(read, Ok(0) | Err(_)));
        accept.abort();
    }
}
