//! A player's bytes into the RTSP parser and a connection's state machine:
//! no panic, every request answered with a status, consumed lengths in bounds.
#![no_main]

use branchgate_capture::rtsp::{Camera, Connection, Input, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cameras = [Camera { id: "sim0".into(), name: "Simulated camera".into() }];
    let mut connection = Connection::new("s".into());
    let mut rest = data;
    while let Ok(input) = parse(rest) {
        let used = match input {
            Input::Incomplete => break,
            Input::Interleaved(used) => used,
            Input::Request(request, used) => {
                let (response, _) = connection.handle(&request, &cameras, (30000, 30001));
                assert!((200..600).contains(&response.status));
                let _ = response.to_bytes();
                used
            }
        };
        assert!(used > 0 && used <= rest.len());
        rest = &rest[used..];
    }
});
