//! Every datagram on the TURN port reaches the STUN reader first: any bytes
//! must parse or be refused, never panic, whatever accessor is used.
#![no_main]

use branchgate_turn::stun::{Message, attr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse(data) {
        let _ = m.transaction_id();
        for a in m.attributes() {
            let _ = (a.kind, a.value.len());
        }
        let _ = m.text(attr::USERNAME);
        let _ = m.u32(attr::LIFETIME);
        let _ = m.xor_address(attr::XOR_PEER_ADDRESS);
        let _ = m.xor_address(attr::XOR_MAPPED_ADDRESS);
        let _ = m.all(attr::XOR_PEER_ADDRESS).count();
        let _ = m.address_error_code();
        let _ = m.unknown_required().count();
        let _ = m.fingerprint_ok();
        let _ = m.integrity_ok(b"key");
        let _ = m.integrity_sha256_ok(b"key");
    }
});
