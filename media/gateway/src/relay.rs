//! The RTP/RTCP relay that anchors a call's media on the box: per stream
//! one task with four sockets (RTP and RTCP facing each side). What side A
//! sends to the box's A-facing port goes out of the B-facing port to where
//! side B really is (latched, see [`branchgate_rtp::Latch`]), and back.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use branchgate_rtp::Latch;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::b2bua::{Side, StreamPorts};

/// Packets relayed per direction of one call (for the calls table and metrics),
/// and when the call last carried any media (RTP or RTCP, on any stream).
#[derive(Debug)]
pub struct Counters {
    pub a_to_b: AtomicU64,
    pub b_to_a: AtomicU64,
    epoch: Instant,
    last_activity_ms: AtomicU64,
}

impl Counters {
    fn new() -> Self {
        Counters {
            a_to_b: AtomicU64::new(0),
            b_to_a: AtomicU64::new(0),
            epoch: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        self.last_activity_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// No media on any stream of the call for `timeout` (`media.timeout_seconds`).
    fn idle(&self, timeout: Duration) -> bool {
        let last = Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last) >= timeout
    }
}

#[derive(Debug)]
enum Control {
    Peer { side: Side, destination: Option<SocketAddr>, signalling: IpAddr },
}

#[derive(Debug)]
struct CallMedia {
    streams: HashMap<usize, (mpsc::UnboundedSender<Control>, JoinHandle<()>)>,
    counters: Arc<Counters>,
}

/// Every call's relays; the driver's main loop owns it.
#[derive(Debug)]
pub struct MediaRelay {
    calls: HashMap<u64, CallMedia>,
    /// Calls whose media went silent, for the B2BUA.
    timeouts: mpsc::UnboundedSender<u64>,
    /// How long a call may go without media.
    timeout: Duration,
}

impl MediaRelay {
    pub fn new(timeouts: mpsc::UnboundedSender<u64>, timeout: Duration) -> Self {
        MediaRelay { calls: HashMap::new(), timeouts, timeout }
    }

    /// A new media timeout for calls set up from now on.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn counters(&self, call: u64) -> Option<Arc<Counters>> {
        self.calls.get(&call).map(|c| c.counters.clone())
    }

    pub async fn open(&mut self, call: u64, index: usize, ports: StreamPorts) -> std::io::Result<()> {
        let bind = |port: u16| UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
        let sockets = [
            bind(ports.a_port).await?,
            bind(ports.a_port + 1).await?,
            bind(ports.b_port).await?,
            bind(ports.b_port + 1).await?,
        ];
        let entry = self
            .calls
            .entry(call)
            .or_insert_with(|| CallMedia { streams: HashMap::new(), counters: Arc::new(Counters::new()) });
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(relay_stream(
            sockets,
            control_rx,
            entry.counters.clone(),
            self.timeouts.clone(),
            call,
            self.timeout,
        ));
        if let Some((_, old)) = entry.streams.insert(index, (control_tx, task)) {
            old.abort();
        }
        Ok(())
    }

    pub fn peer(&mut self, call: u64, index: usize, side: Side, destination: Option<SocketAddr>, signalling: IpAddr) {
        if let Some((control, _)) = self.calls.get(&call).and_then(|c| c.streams.get(&index)) {
            let _ = control.send(Control::Peer { side, destination, signalling });
        }
    }

    pub fn close(&mut self, call: u64) {
        if let Some(media) = self.calls.remove(&call) {
            for (_, (_, task)) in media.streams {
                task.abort();
            }
        }
    }

    pub fn close_all(&mut self) {
        let calls: Vec<u64> = self.calls.keys().copied().collect();
        for call in calls {
            self.close(call);
        }
    }
}

/// Where RTCP goes when its own source has not been seen: the RTP destination's next port.
fn rtcp_destination(rtcp: &Latch, rtp: &Latch) -> Option<SocketAddr> {
    rtcp.destination().or_else(|| rtp.destination().map(|d| SocketAddr::new(d.ip(), d.port().wrapping_add(1))))
}

async fn relay_stream(
    sockets: [UdpSocket; 4],
    mut control: mpsc::UnboundedReceiver<Control>,
    counters: Arc<Counters>,
    timeouts: mpsc::UnboundedSender<u64>,
    call: u64,
    timeout: Duration,
) {
    let [a_rtp, a_rtcp, b_rtp, b_rtcp] = sockets;
    // Latches of where each side is, for RTP and RTCP.
    let (mut a_latch, mut a_rtcp_latch) = (Latch::new(None), Latch::new(None));
    let (mut b_latch, mut b_rtcp_latch) = (Latch::new(None), Latch::new(None));
    let (mut buf_a, mut buf_b, mut buf_ac, mut buf_bc) = ([0u8; 2048], [0u8; 2048], [0u8; 1500], [0u8; 1500]);
    let mut reported = false;
    let mut check = tokio::time::interval((timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(5)));
    loop {
        tokio::select! {
            received = a_rtp.recv_from(&mut buf_a) => {
                let Ok((len, source)) = received else { continue };
                let now = Instant::now();
                if a_latch.accept(now, source) && let Some(to) = b_latch.destination() {
                    counters.touch();
                    counters.a_to_b.fetch_add(1, Ordering::Relaxed);
                    let _ = b_rtp.send_to(&buf_a[..len], to).await;
                }
            }
            received = b_rtp.recv_from(&mut buf_b) => {
                let Ok((len, source)) = received else { continue };
                let now = Instant::now();
                if b_latch.accept(now, source) && let Some(to) = a_latch.destination() {
                    counters.touch();
                    counters.b_to_a.fetch_add(1, Ordering::Relaxed);
                    let _ = a_rtp.send_to(&buf_b[..len], to).await;
                }
            }
            received = a_rtcp.recv_from(&mut buf_ac) => {
                let Ok((len, source)) = received else { continue };
                if a_rtcp_latch.accept(Instant::now(), source) && let Some(to) = rtcp_destination(&b_rtcp_latch, &b_latch) {
                    counters.touch();
                    let _ = b_rtcp.send_to(&buf_ac[..len], to).await;
                }
            }
            received = b_rtcp.recv_from(&mut buf_bc) => {
                let Ok((len, source)) = received else { continue };
                if b_rtcp_latch.accept(Instant::now(), source) && let Some(to) = rtcp_destination(&a_rtcp_latch, &a_latch) {
                    counters.touch();
                    let _ = a_rtcp.send_to(&buf_bc[..len], to).await;
                }
            }
            command = control.recv() => match command {
                Some(Control::Peer { side: Side::A, destination, signalling }) => {
                    a_latch.signal(destination, signalling);
                    a_rtcp_latch.signal(destination.map(|d| SocketAddr::new(d.ip(), d.port().wrapping_add(1))), signalling);
                }
                Some(Control::Peer { side: Side::B, destination, signalling }) => {
                    b_latch.signal(destination, signalling);
                    b_rtcp_latch.signal(destination.map(|d| SocketAddr::new(d.ip(), d.port().wrapping_add(1))), signalling);
                }
                None => return,
            },
            _ = check.tick() => {
                // The call's liveness, not this stream's: a declined or held stream is quiet.
                if counters.idle(timeout) && !reported {
                    let _ = timeouts.send(call);
                    reported = true;
                }
            }
        }
    }
}
