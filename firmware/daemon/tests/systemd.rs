//! The daemon under a systemd-like supervisor: the sd_notify protocol over
//! `NOTIFY_SOCKET` (READY, WATCHDOG at half the interval, STOPPING) and a clean
//! exit on SIGTERM. systemd itself does not run in the test sandbox, so the
//! test plays its part of the protocol (a datagram socket).

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A free port below the media range and the kernel's ephemeral range, like the e2e tests.
fn free_port() -> u16 {
    (10000..20000)
        .cycle()
        .skip((std::process::id() % 10000) as usize)
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .unwrap_or(10000)
}

#[test]
fn notifies_ready_pets_the_watchdog_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind notify socket");
    socket.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let https = free_port();
    let provision = dir.path().join("provision.json");
    std::fs::write(
        &provision,
        format!(
            r#"{{"admin": {{"password": "systemd-test-1"}},
                "network": {{"admin_bind": "127.0.0.1", "admin_https_port": {https}, "admin_http_port": 0}}}}"#
        ),
    )
    .expect("provision");
    let mut child = Command::new(env!("CARGO_BIN_EXE_branchgate"))
        .args(["run", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--provision")
        .arg(&provision)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");

    let mut messages = Vec::new();
    let started = Instant::now();
    let mut buf = [0u8; 512];
    while started.elapsed() < Duration::from_secs(15) {
        if let Ok(n) = socket.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let watchdogs = messages.iter().filter(|m| m.contains("WATCHDOG=1")).count();
        if messages.iter().any(|m| m.contains("READY=1")) && watchdogs >= 3 {
            break;
        }
    }
    assert!(messages.iter().any(|m| m.contains("READY=1")), "READY missing: {messages:?}");
    assert!(messages.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3, "watchdog not petted: {messages:?}");
    // The admin UI really is up when READY is sent.
    assert!(std::net::TcpStream::connect(("127.0.0.1", https)).is_ok());

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let stopping_by = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Ok(n) = socket.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        assert!(Instant::now() < stopping_by, "did not stop within 10 s of SIGTERM");
    };
    assert!(exit.success(), "exit status {exit:?}");
    assert!(messages.iter().any(|m| m.contains("STOPPING=1")), "STOPPING missing: {messages:?}");
}
