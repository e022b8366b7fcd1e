//! SIP messages from the network: the parser, the header accessors, the
//! digest parser and the registrar must take any bytes without panicking.
#![no_main]

use std::time::Instant;

use branchgate_sip::{Flow, Message, Server, ServerConfig, Transport};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse(data) {
        let _ = m.check_mandatory();
        let _ = m.cseq();
        let _ = m.get_all("Via");
        let _ = m.get_all("Contact");
        for line in m.lines("Authorization") {
            let _ = branchgate_sip::digest::parse_credentials(line);
        }
        let _ = Message::parse(&m.to_bytes());
    }
    let flow = Flow {
        transport: Transport::Udp,
        local: "127.0.0.1:5060".parse().expect("addr"),
        remote: "192.0.2.1:5060".parse().expect("addr"),
    };
    let mut server = Server::new(ServerConfig::new("fuzz.example"), [0; 32], Instant::now());
    server.handle_input(Instant::now(), flow, data);
    while server.poll_output().is_some() {}
});
