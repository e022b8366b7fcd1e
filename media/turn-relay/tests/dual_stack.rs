//! The TURN driver over real sockets, loopback only (127.0.0.1 and ::1): a dual allocation
//! (RFC 8656 ADDITIONAL-ADDRESS-FAMILY) relays to an IPv4 and an IPv6 peer, each way, each
//! from the relay socket of its own family.

mod common;

use std::net::SocketAddr;

use branchgate_turn::stun::{Class, Message, Writer, attr, decode_xor_address, family, method};
use common::{Client, Lab, error_code, ip, lab_config, peer_receives};
use tokio::net::UdpSocket;

#[tokio::test]
async fn a_dual_allocation_relays_to_an_ipv4_and_an_ipv6_peer_both_ways() {
    let peer4 = UdpSocket::bind("127.0.0.1:0").await.expect("IPv4 peer");
    let peer6 = UdpSocket::bind("[::1]:0").await.expect("IPv6 peer (loopback ::1)");
    let (peer4_addr, peer6_addr) = (peer4.local_addr().expect("addr"), peer6.local_addr().expect("addr"));

    let mut config = lab_config(&["127.0.0.1"], (47000, 47999)).await;
    config.turn.relay_ipv6 = Some("::1".parse().expect("ip"));
    let server = SocketAddr::new(ip("127.0.0.1"), config.turn.udp_port);
    let lab = Lab::start(config);
    let mut client = Client::new(server).await;
    client.learn_nonce().await;

    let reply = client
        .request(method::ALLOCATE, |w| {
            w.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
                .attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[family::IPV6, 0, 0, 0]);
        })
        .await;
    assert_eq!(error_code(&reply), None);
    let m = Message::parse(&reply).expect("parse");
    assert!(m.integrity_ok(&client.key));
    let relayed: Vec<SocketAddr> = m
        .all(attr::XOR_RELAYED_ADDRESS)
        .map(|a| decode_xor_address(a.value, &m.transaction_id()).expect("address"))
        .collect();
    let [relay4, relay6] = relayed[..] else { panic!("two relayed addresses: {relayed:?}") };
    assert_eq!((relay4.ip(), relay6.ip()), (ip("127.0.0.1"), ip("::1")), "IPv4 first");
    assert_eq!(relay4.port(), relay6.port());
    assert!(m.address_error_code().is_none(), "both families given");

    let reply = client
        .request(method::CREATE_PERMISSION, |w| {
            w.xor_address(attr::XOR_PEER_ADDRESS, peer4_addr).xor_address(attr::XOR_PEER_ADDRESS, peer6_addr);
        })
        .await;
    assert_eq!(error_code(&reply), None, "permissions for both peers");

    // Client → peers: each gets the datagram from the relayed address of its family.
    for (peer, peer_addr, relay, payload) in
        [(&peer4, peer4_addr, relay4, &b"to the IPv4 peer"[..]), (&peer6, peer6_addr, relay6, &b"to the IPv6 peer"[..])]
    {
        let mut send = Vec::new();
        Writer::new(&mut send, Class::Indication, method::SEND, [0x55; 12])
            .xor_address(attr::XOR_PEER_ADDRESS, peer_addr)
            .attr(attr::DATA, payload);
        client.socket.send_to(&send, server).await.expect("send");
        peer_receives(peer, relay, payload).await;
    }

    // Peers → client: Data indications naming each peer.
    for (peer, peer_addr, relay, payload) in [
        (&peer4, peer4_addr, relay4, &b"from the IPv4 peer"[..]),
        (&peer6, peer6_addr, relay6, &b"from the IPv6 peer"[..]),
    ] {
        peer.send_to(payload, relay).await.expect("peer send");
        let data = client.receive().await;
        let m = Message::parse(&data).expect("data indication");
        assert_eq!((m.class, m.method), (Class::Indication, method::DATA));
        assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS), Some(Ok(peer_addr)));
        assert_eq!(m.get(attr::DATA).map(|a| a.value), Some(payload));
    }

    // Deleting the allocation closes both relay sockets.
    let reply = client.request(method::REFRESH, |w| {
        w.u32(attr::LIFETIME, 0);
    });
    assert_eq!(error_code(&reply.await), None);
    lab.stop().await;
}
