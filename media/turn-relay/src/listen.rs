//! The client listeners: UDP, TCP and TLS on every address of `turn.listen_ips` (none: the
//! wildcard of each family), all on the same three ports.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::task::{Context, Poll};

use branchgate_config::TurnConfig;
use branchgate_streams::{CertificateSource, StreamEvent, spawn_accept_loop, tls_acceptor};
use branchgate_turn::frame_len;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::RelayError;

/// Connections waiting to be accepted per TCP/TLS listener (what tokio's own `bind` asks for).
const BACKLOG: i32 = 1024;

/// A UDP listener and the address it is bound to: the server side of its clients' 5-tuples,
/// so that a reply goes out from the socket the request came in on.
pub(crate) struct UdpListener {
    pub socket: UdpSocket,
    pub local: SocketAddr,
}

/// The listeners of one configuration; dropping them stops the accept loops.
pub(crate) struct Listeners {
    pub udp: Vec<UdpListener>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Listeners {
    /// The UDP socket bound to `listener` (a handful of listeners: a scan, no allocation).
    pub fn udp_socket(&self, listener: SocketAddr) -> Option<&UdpSocket> {
        self.udp.iter().find(|udp| udp.local == listener).map(|udp| &udp.socket)
    }

    /// Ready when a UDP listener has datagrams waiting: its index. Asking from `first` on (the
    /// one after the last served) keeps a busy listener from starving the others.
    pub fn poll_udp_ready(&self, cx: &mut Context<'_>, first: usize) -> Poll<(usize, io::Result<()>)> {
        let count = self.udp.len();
        for index in (0..count).map(|i| (first + i) % count) {
            if let Poll::Ready(ready) = self.udp[index].socket.poll_recv_ready(cx) {
                return Poll::Ready((index, ready));
            }
        }
        Poll::Pending
    }
}

/// The addresses to listen on, each with whether failing to bind it fails the service: a
/// listed address must work; of the defaults, `::` may be missing (a host without IPv6).
fn listen_addresses(turn: &TurnConfig) -> Vec<(IpAddr, bool)> {
    if turn.listen_ips.is_empty() {
        vec![(IpAddr::V4(Ipv4Addr::UNSPECIFIED), true), (IpAddr::V6(Ipv6Addr::UNSPECIFIED), false)]
    } else {
        turn.listen_ips.iter().map(|ip| (*ip, true)).collect()
    }
}

/// A bind error that means the host has no such address family or address.
fn address_unavailable(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL))
}

/// A non-blocking socket for `addr`; an IPv6 one takes IPv6 only, so `::` does not take the
/// IPv4 clients of `0.0.0.0`'s port as `::ffff:` mapped addresses (nor clash with it).
fn new_socket(addr: SocketAddr, kind: Type, protocol: Protocol) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), kind, Some(protocol))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = new_socket(addr, Type::STREAM, Protocol::TCP)?;
    // A restart rebinds at once despite connections of the old listener in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// The three listeners of one address.
struct AddressListeners {
    udp: UdpListener,
    tcp: TcpListener,
    tls: TcpListener,
}

fn bind_address(ip: IpAddr, turn: &TurnConfig) -> Result<AddressListeners, RelayError> {
    let (udp_addr, tcp_addr, tls_addr) =
        (SocketAddr::new(ip, turn.udp_port), SocketAddr::new(ip, turn.tcp_port), SocketAddr::new(ip, turn.tls_port));
    let failed = |transport, addr| move |source| RelayError::Bind { transport, addr, source };
    let socket = bind_udp(udp_addr).map_err(failed("UDP", udp_addr))?;
    let local = socket.local_addr().map_err(failed("UDP", udp_addr))?;
    let tcp = bind_tcp(tcp_addr).map_err(failed("TCP", tcp_addr))?;
    let tls = bind_tcp(tls_addr).map_err(failed("TLS", tls_addr))?;
    Ok(AddressListeners { udp: UdpListener { socket, local }, tcp, tls })
}

/// Binds the listeners of `turn` and starts accepting TCP/TLS connections into `events`.
pub(crate) fn bind_listeners(
    turn: &TurnConfig,
    certificates: &CertificateSource,
    events: &mpsc::Sender<StreamEvent>,
) -> Result<Listeners, RelayError> {
    let mut bound = Vec::new();
    for (ip, required) in listen_addresses(turn) {
        match bind_address(ip, turn) {
            Ok(listeners) => bound.push(listeners),
            Err(RelayError::Bind { transport, addr, source }) if !required && address_unavailable(&source) => {
                tracing::warn!(%addr, transport, error = %source, "TURN not listening on this address family");
            }
            Err(e) => return Err(e),
        }
    }
    let acceptor = match tls_acceptor(certificates) {
        Ok(acceptor) => Some(acceptor),
        Err(e) => {
            tracing::error!(error = %e, "TURN over TLS is off: no usable certificate");
            None
        }
    };
    let mut listeners = Listeners { udp: Vec::with_capacity(bound.len()), tasks: Vec::new() };
    for AddressListeners { udp, tcp, tls } in bound {
        tracing::info!(
            udp = %udp.local, tcp = %SocketAddr::new(udp.local.ip(), turn.tcp_port),
            tls = %SocketAddr::new(udp.local.ip(), turn.tls_port), realm = %turn.realm, "TURN listening"
        );
        listeners.tasks.push(spawn_accept_loop(tcp, None, frame_len, events.clone()));
        if let Some(acceptor) = &acceptor {
            listeners.tasks.push(spawn_accept_loop(tls, Some(acceptor.clone()), frame_len, events.clone()));
        }
        listeners.udp.push(udp);
    }
    Ok(listeners)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_default_every_address_of_each_family_with_ipv6_optional() {
        let mut turn = TurnConfig::default();
        let defaults = listen_addresses(&turn);
        assert_eq!(defaults, [(IpAddr::V4(Ipv4Addr::UNSPECIFIED), true), (IpAddr::V6(Ipv6Addr::UNSPECIFIED), false)]);
        turn.listen_ips = vec![IpAddr::V6(Ipv6Addr::LOCALHOST)];
        assert_eq!(listen_addresses(&turn), [(IpAddr::V6(Ipv6Addr::LOCALHOST), true)], "a listed address is required");
    }

    #[test]
    fn a_missing_family_or_address_is_recognised() {
        assert!(address_unavailable(&io::Error::from_raw_os_error(libc::EAFNOSUPPORT)));
        assert!(address_unavailable(&io::Error::from_raw_os_error(libc::EADDRNOTAVAIL)));
        assert!(!address_unavailable(&io::Error::from_raw_os_error(libc::EADDRINUSE)), "a port taken is an error");
    }
}
