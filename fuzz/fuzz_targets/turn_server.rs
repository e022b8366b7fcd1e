//! The TURN server state machine fed arbitrary client and peer datagrams:
//! no panic, and every output stays well-formed enough to send.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use branchgate_turn::server::{HEADROOM, TAILROOM};
use branchgate_turn::{FiveTuple, Output, Server, ServerConfig, Transport};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut config = ServerConfig::new("fuzz.example", "127.0.0.1".parse().expect("ip"));
    config.users.insert("test".into(), branchgate_turn::UserKey::from_password("test", "fuzz.example", "secret"));
    config.relay_ports = 40000..=40003;
    // Dual allocations (ADDITIONAL-ADDRESS-FAMILY) and IPv6 relays too.
    config.relay_ipv6 = Some("::1".parse().expect("ip"));
    let mut server = Server::new(config, [1; 32], now, 1_800_000_000);
    let listener: SocketAddr = "127.0.0.1:3478".parse().expect("addr");
    let mut buf = vec![0u8; HEADROOM + 2048 + TAILROOM];
    // Split the input into packets; the first byte of each picks its direction.
    for (i, chunk) in data.split(|b| *b == 0xFF).enumerate() {
        let t = now + Duration::from_secs(i as u64);
        let client: SocketAddr = SocketAddr::new("192.0.2.1".parse().expect("ip"), 40000 + (i % 3) as u16);
        match chunk.first() {
            Some(b) if b % 2 == 0 && chunk.len() <= 2048 => {
                let len = chunk.len();
                buf[HEADROOM..HEADROOM + len].copy_from_slice(chunk);
                let _ = server.handle_peer_packet(t, 40000 + u16::from(*b % 4), "198.51.100.1:9".parse().expect("addr"), &mut buf, len);
            }
            _ => {
                let transport = if i % 2 == 0 { Transport::Udp } else { Transport::Tcp };
                let _ = server.handle_client_packet(t, FiveTuple { client, listener, transport }, chunk);
                let _ = branchgate_turn::frame_len(chunk);
            }
        }
        // A peer connecting to a TCP relay (RFC 6062), now and then.
        if let Some(b) = chunk.first()
            && b % 8 == 6
        {
            let _ = server.peer_connection(t, 40000 + u16::from(*b % 4), "127.0.0.1:7000".parse().expect("addr"));
        }
        while let Some(output) = server.poll_output() {
            match output {
                Output::BindRelay { ip, port, .. } => server.relay_bound(t, port, Ok(SocketAddr::new(ip, port))),
                Output::ConnectPeer { connection, .. } => {
                    let _ = server.peer_connect_result(t, connection, i % 3 != 0);
                }
                _ => {}
            }
        }
        server.handle_timeout(t);
    }
});
