//! SDP from the network: the parser and the anchoring rewrite must take any
//! bytes without panicking, and what they write must parse again.
#![no_main]

use branchgate_sdp::SessionDescription;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut sdp) = SessionDescription::parse(data) else { return };
    for index in 0..sdp.media.len() {
        let _ = sdp.media_destination(index);
        let _ = sdp.media[index].direction();
    }
    sdp.anchor("192.0.2.1".parse().expect("ip"), &[20000, 20002, 20004]);
    SessionDescription::parse(&sdp.to_bytes()).expect("anchored SDP parses again");
});
