//! The client listeners over real sockets, loopback only (127.0.0.1 and ::1): a server on
//! both answers each client from the address it asked, IPv6 clients get IPv6 reflexive
//! addresses and IPv4 relays, and a change of `turn.listen_ips` rebinds the listeners.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use branchgate_config::Snapshot;
use branchgate_turn::stun::{Class, Message, Writer, attr, decode_xor_address, method};
use common::{Client, Lab, WAIT, error_code, ip, lab_config, peer_receives};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

fn mapped_address(reply: &[u8]) -> SocketAddr {
    let m = Message::parse(reply).expect("parse");
    assert_eq!(m.class, Class::Success, "error {:?}", error_code(reply));
    m.xor_address(attr::XOR_MAPPED_ADDRESS).expect("XOR-MAPPED-ADDRESS").expect("decodes")
}

/// A Binding over TCP to `server`: the reflexive address it answers, and the client's own.
async fn tcp_binding(server: SocketAddr) -> (SocketAddr, SocketAddr) {
    let mut stream = timeout(WAIT, TcpStream::connect(server)).await.expect("in time").expect("connect");
    let mut request = Vec::new();
    Writer::new(&mut request, Class::Request, method::BINDING, [0x42; 12]).fingerprint();
    stream.write_all(&request).await.expect("send");
    let mut reply = vec![0u8; 20];
    timeout(WAIT, stream.read_exact(&mut reply)).await.expect("in time").expect("header");
    let length = usize::from(u16::from_be_bytes([reply[2], reply[3]]));
    reply.resize(20 + length, 0);
    timeout(WAIT, stream.read_exact(&mut reply[20..])).await.expect("in time").expect("body");
    (mapped_address(&reply), stream.local_addr().expect("addr"))
}

#[tokio::test]
async fn a_server_on_ipv4_and_ipv6_loopback_answers_a_binding_on_each_with_the_client_address() {
    let config = lab_config(&["127.0.0.1", "::1"], (48000, 48299)).await;
    let (udp_port, tcp_port) = (config.turn.udp_port, config.turn.tcp_port);
    let lab = Lab::start(config);
    for listen_ip in [ip("127.0.0.1"), ip("::1")] {
        let mut client = Client::new(SocketAddr::new(listen_ip, udp_port)).await;
        // `binding` checks the answer comes from the address asked: the socket it came in on.
        let reply = client.binding().await;
        assert_eq!(mapped_address(&reply), client.socket.local_addr().expect("addr"), "UDP over {listen_ip}");
        let (mapped, own) = tcp_binding(SocketAddr::new(listen_ip, tcp_port)).await;
        assert_eq!(mapped, own, "TCP over {listen_ip}");
    }
    lab.stop().await;
}

#[tokio::test]
async fn an_allocate_over_ipv6_gets_the_configured_ipv4_relay_and_relays_both_ways() {
    let peer = UdpSocket::bind("127.0.0.1:0").await.expect("IPv4 peer");
    let peer_addr = peer.local_addr().expect("addr");
    let config = lab_config(&["127.0.0.1", "::1"], (48300, 48599)).await;
    let server = SocketAddr::new(ip("::1"), config.turn.udp_port);
    let lab = Lab::start(config);
    let mut client = Client::new(server).await;
    client.learn_nonce().await;

    // No REQUESTED-ADDRESS-FAMILY: IPv4 (RFC 8656 §7.2), whatever the client's own family.
    let reply = client.request(method::ALLOCATE, |w| {
        w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    let reply = reply.await;
    assert_eq!(error_code(&reply), None);
    let m = Message::parse(&reply).expect("parse");
    assert!(m.integrity_ok(&client.key));
    let relay = decode_xor_address(m.get(attr::XOR_RELAYED_ADDRESS).expect("relayed").value, &m.transaction_id())
        .expect("address");
    assert_eq!(relay.ip(), ip("127.0.0.1"), "the relay as configured");
    assert_eq!(mapped_address(&reply), client.socket.local_addr().expect("addr"), "the client's IPv6 address");

    let reply = client.request(method::CREATE_PERMISSION, |w| {
        w.xor_address(attr::XOR_PEER_ADDRESS, peer_addr);
    });
    assert_eq!(error_code(&reply.await), None);
    let mut send = Vec::new();
    Writer::new(&mut send, Class::Indication, method::SEND, [0x55; 12])
        .xor_address(attr::XOR_PEER_ADDRESS, peer_addr)
        .attr(attr::DATA, b"to the peer");
    client.socket.send_to(&send, server).await.expect("send");
    peer_receives(&peer, relay, b"to the peer").await;

    // The Data indication reaches the IPv6 client from the IPv6 listener.
    peer.send_to(b"from the peer", relay).await.expect("peer send");
    let data = client.receive().await;
    let m = Message::parse(&data).expect("data indication");
    assert_eq!((m.class, m.method), (Class::Indication, method::DATA));
    assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS), Some(Ok(peer_addr)));
    assert_eq!(m.get(attr::DATA).map(|a| a.value), Some(&b"from the peer"[..]));
    lab.stop().await;
}

#[tokio::test]
async fn changing_the_listen_addresses_rebinds_the_listeners() {
    let mut config = lab_config(&["127.0.0.1"], (48600, 48899)).await;
    let (udp_port, tcp_port) = (config.turn.udp_port, config.turn.tcp_port);
    let lab = Lab::start(config.clone());
    let mut client4 = Client::new(SocketAddr::new(ip("127.0.0.1"), udp_port)).await;
    client4.binding().await;

    // IPv6 loopback only: the IPv4 listeners close, the IPv6 ones answer.
    config.turn.listen_ips = vec![ip("::1")];
    lab.config_tx.send_replace(Arc::new(Snapshot { revision: 2, config }));
    let tcp4 = SocketAddr::new(ip("127.0.0.1"), tcp_port);
    let mut closed = false;
    for _ in 0..50 {
        if TcpStream::connect(tcp4).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed, "the IPv4 TCP listener still accepts");
    let mut client6 = Client::new(SocketAddr::new(ip("::1"), udp_port)).await;
    let reply = client6.binding().await;
    assert_eq!(mapped_address(&reply), client6.socket.local_addr().expect("addr"));
    lab.stop().await;
}
