//! RFC 3261 §17 transactions with RFC 6026's "Accepted" states, sans-IO.
//!
//! The layer keeps what is needed to retransmit and to absorb
//! retransmissions, and runs timers A–M from the `now` it is given. The
//! transaction user (registrar, B2BUA) sees each new request once, each
//! response that matters once (plus 2xx retransmissions to INVITE, which the
//! user must ACK again), and a timeout when a peer never answers.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::message::{Message, StartLine, param};
use crate::server::{Flow, Output, Transport};

/// RTT estimate (RFC 3261 §17.1.1.1).
pub const T1: Duration = Duration::from_millis(500);
/// Longest retransmit interval for non-INVITE requests and INVITE responses.
pub const T2: Duration = Duration::from_secs(4);
/// Longest time a message stays in the network.
pub const T4: Duration = Duration::from_secs(5);
/// Timers B, F, H, J, L, M: 64·T1.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(32);
/// How long an INVITE may ring (after a provisional answer) before the box
/// gives up on it and sends a CANCEL (Timer C's role, RFC 3261 §16.6).
pub const RING_TIMEOUT: Duration = Duration::from_secs(180);

/// A client transaction: the branch and method of the request the box sent
/// (a CANCEL shares its INVITE's branch, RFC 3261 §17.1.3).
pub type ClientKey = String;

fn client_key(branch: &str, method: &str) -> ClientKey {
    format!("{branch} {method}")
}

/// A server transaction: (top Via branch, method with ACK counted as INVITE, sender).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerKey {
    pub branch: String,
    pub method: String,
    pub remote: std::net::SocketAddr,
}

/// What the transaction user learns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A response to a request the box sent (1xx and the final one; for
    /// INVITE also each 2xx retransmission, to be ACKed again).
    Response { key: ClientKey, response: Message },
    /// Timer B or F: no final answer in time (treat as 408).
    Timeout { key: ClientKey },
    /// A 2xx to an INVITE was never ACKed (Timer L ran out without an ACK).
    NoAck { key: ServerKey },
}

/// What happened to a request the box received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// New: the user handles it and answers through [`Transactions::respond`].
    New(ServerKey),
    /// A retransmission (answered again from the transaction) or an ACK to a
    /// non-2xx answer: nothing for the user.
    Absorbed,
    /// An ACK that belongs to no transaction: the ACK of a 2xx, for the dialog.
    AckOf2xx,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientState {
    /// Calling (INVITE) or Trying (non-INVITE).
    Trying,
    Proceeding,
    Completed,
    /// INVITE got a 2xx: further 2xx go to the user (RFC 6026 §8.4).
    Accepted,
}

#[derive(Debug)]
struct Client {
    flow: Flow,
    request: Message,
    bytes: Vec<u8>,
    state: ClientState,
    retransmit_at: Option<Instant>,
    interval: Duration,
    /// Timer B/F while waiting; D/K/M once done.
    deadline: Instant,
    ack: Option<Vec<u8>>,
    cancel_wanted: bool,
    /// The transaction sent its own CANCEL when it rang too long.
    cancel_sent: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServerState {
    Proceeding,
    Completed,
    Confirmed,
    Accepted,
}

#[derive(Debug)]
struct Server {
    flow: Flow,
    invite: bool,
    state: ServerState,
    last_response: Option<Vec<u8>>,
    retransmit_at: Option<Instant>,
    interval: Duration,
    deadline: Option<Instant>,
    /// Call-ID, CSeq number and the final answer's To tag: an ACK with a
    /// branch of its own (RFC 2543 style, sipp does this) is matched by these.
    dialog: Option<(String, u32, String)>,
}

#[derive(Debug, Default)]
pub struct Transactions {
    clients: HashMap<ClientKey, Client>,
    servers: HashMap<ServerKey, Server>,
    /// INVITE server transactions that sent a non-2xx final answer, by (sender, Call-ID,
    /// CSeq number, To tag): the RFC 2543 way to find the ACK's transaction, without a scan.
    by_dialog: HashMap<(std::net::SocketAddr, String, u32, String), ServerKey>,
    transmit: VecDeque<Output>,
    events: VecDeque<Event>,
}

/// Server transactions remembered at once: a flood of distinct branches must
/// not grow memory without bound (beyond it requests are still answered, but
/// their retransmissions are treated as new).
pub const MAX_SERVER_TRANSACTIONS: usize = 20_000;
/// Part of [`MAX_SERVER_TRANSACTIONS`] only INVITEs may use.
pub const INVITE_RESERVE: usize = 5_000;

/// The top Via's branch parameter.
pub fn top_branch(message: &Message) -> Option<&str> {
    let via = message.get("Via")?;
    let top = crate::message::split_values(via).into_iter().next()?;
    param(top, "branch")
}

fn reliable(flow: &Flow) -> bool {
    flow.transport != Transport::Udp
}

impl Transactions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn poll_transmit(&mut self) -> Option<Output> {
        self.transmit.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn len(&self) -> (usize, usize) {
        (self.clients.len(), self.servers.len())
    }

    /// The earliest instant [`Transactions::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let clients = self.clients.values().flat_map(|c| [c.retransmit_at, Some(c.deadline)]);
        let servers = self.servers.values().flat_map(|s| [s.retransmit_at, s.deadline]);
        clients.chain(servers).flatten().min()
    }

    /// Sends `request` (which carries the box's Via with a unique branch) to `flow`.
    pub fn send_request(&mut self, now: Instant, flow: Flow, request: Message) -> ClientKey {
        let key = client_key(top_branch(&request).unwrap_or_default(), request.method().unwrap_or(""));
        let bytes = request.to_bytes();
        self.transmit.push_back(Output { flow, data: bytes.clone() });
        let retransmit_at = (!reliable(&flow)).then(|| now + T1);
        self.clients.insert(
            key.clone(),
            Client {
                flow,
                request,
                bytes,
                state: ClientState::Trying,
                retransmit_at,
                interval: T1,
                deadline: now + TRANSACTION_TIMEOUT,
                ack: None,
                cancel_wanted: false,
                cancel_sent: false,
            },
        );
        key
    }

    /// The flow and request of a client transaction.
    pub fn request_of(&self, key: &str) -> Option<(Flow, &Message)> {
        self.clients.get(key).map(|c| (c.flow, &c.request))
    }

    /// Cancels a pending INVITE (RFC 3261 §9.1): the CANCEL goes out once a
    /// provisional answer has arrived, at once if one already has. Returns
    /// the CANCEL's own transaction once it is sent.
    pub fn cancel(&mut self, now: Instant, key: &str) -> Option<ClientKey> {
        let client = self.clients.get_mut(key)?;
        match client.state {
            ClientState::Proceeding => {
                let (flow, cancel) = (client.flow, cancel_of(&client.request));
                Some(self.send_request(now, flow, cancel))
            }
            ClientState::Trying => {
                client.cancel_wanted = true;
                None
            }
            _ => None,
        }
    }

    /// A response from the network. Responses matching no transaction are dropped
    /// (RFC 3261 §17.1.3; the B2BUA is not a proxy), and so are responses from
    /// anywhere but where the request went (nobody else may answer for the callee).
    pub fn receive_response(&mut self, now: Instant, from: Flow, response: Message) {
        let StartLine::Response { code, .. } = response.start else { return };
        let method = response.cseq().map(|(_, m)| m.to_string()).unwrap_or_default();
        let Some(branch) = top_branch(&response).map(|b| client_key(b, &method)) else { return };
        let Some(client) = self.clients.get_mut(&branch) else { return };
        // Over UDP the peer's IP must match (a phone may answer from another port than the
        // one it listens on); on a connection the connection itself.
        let same_peer = match client.flow.transport {
            Transport::Udp => from.remote.ip() == client.flow.remote.ip(),
            _ => from.remote == client.flow.remote,
        };
        if !same_peer || from.transport != client.flow.transport {
            return;
        }
        let invite = method == "INVITE";
        let reliable = reliable(&client.flow);
        match (client.state, code) {
            (ClientState::Trying | ClientState::Proceeding, 100..=199) => {
                if invite && client.state == ClientState::Trying {
                    // Timer B stops once the callee answers; ringing has its own limit.
                    client.deadline = now + RING_TIMEOUT;
                }
                client.state = ClientState::Proceeding;
                if invite {
                    client.retransmit_at = None;
                } else if client.retransmit_at.is_some() {
                    client.interval = T2;
                }
                let cancel =
                    std::mem::take(&mut client.cancel_wanted).then(|| (client.flow, cancel_of(&client.request)));
                if code > 100 || !invite {
                    self.events.push_back(Event::Response { key: branch.clone(), response });
                }
                if let Some((flow, cancel)) = cancel {
                    self.send_request(now, flow, cancel);
                }
            }
            (ClientState::Trying | ClientState::Proceeding, 200..=299) if invite => {
                client.state = ClientState::Accepted;
                client.retransmit_at = None;
                client.deadline = now + TRANSACTION_TIMEOUT; // Timer M
                self.events.push_back(Event::Response { key: branch, response });
            }
            (ClientState::Accepted, 200..=299) => {
                self.events.push_back(Event::Response { key: branch, response });
            }
            (ClientState::Trying | ClientState::Proceeding, 200..=699) => {
                client.state = ClientState::Completed;
                client.retransmit_at = None;
                if invite {
                    let ack = ack_of(&client.request, &response).to_bytes();
                    self.transmit.push_back(Output { flow: client.flow, data: ack.clone() });
                    client.ack = Some(ack);
                    client.deadline = now + if reliable { Duration::ZERO } else { TRANSACTION_TIMEOUT }; // Timer D
                } else {
                    client.deadline = now + if reliable { Duration::ZERO } else { T4 }; // Timer K
                }
                self.events.push_back(Event::Response { key: branch, response });
            }
            (ClientState::Completed, 300..=699) if invite => {
                if let Some(ack) = &client.ack {
                    self.transmit.push_back(Output { flow: client.flow, data: ack.clone() });
                }
            }
            _ => {}
        }
    }

    /// A request from the network.
    pub fn receive_request(&mut self, now: Instant, flow: Flow, request: &Message) -> Received {
        let method = request.method().unwrap_or("").to_string();
        let branch = top_branch(request).unwrap_or("").to_string();
        let lookup = if method == "ACK" { "INVITE".to_string() } else { method.clone() };
        let mut key = ServerKey { branch, method: lookup, remote: flow.remote };
        if method == "ACK" && !self.servers.contains_key(&key) {
            // RFC 3261 §17.2.3 falls back to RFC 2543 matching for peers whose ACK of a
            // non-2xx answer does not reuse the INVITE's branch.
            let identity = (
                flow.remote,
                request.get("Call-ID").unwrap_or("").to_string(),
                request.cseq().map(|(n, _)| n).unwrap_or(0),
                request.get("To").and_then(|t| param(t, "tag")).unwrap_or("").to_string(),
            );
            if let Some(found) = self.by_dialog.get(&identity) {
                key = found.clone();
            }
        }
        if let Some(server) = self.servers.get_mut(&key) {
            if method == "ACK" {
                if server.state == ServerState::Completed {
                    server.state = ServerState::Confirmed;
                    server.retransmit_at = None;
                    server.deadline = Some(now + if reliable(&flow) { Duration::ZERO } else { T4 }); // Timer I
                }
                // An ACK to a 2xx has its own branch; one matching an Accepted
                // transaction is still the dialog's business.
                return if server.state == ServerState::Accepted { Received::AckOf2xx } else { Received::Absorbed };
            }
            if let Some(last) = &server.last_response {
                self.transmit.push_back(Output { flow: server.flow, data: last.clone() });
            }
            return Received::Absorbed;
        }
        if method == "ACK" {
            return Received::AckOf2xx;
        }
        // Room is kept for INVITEs: a flood of OPTIONS or REGISTERs (distinct branches,
        // 32 s each) must not leave calls without the transaction their answers need.
        let limit = if method == "INVITE" { MAX_SERVER_TRANSACTIONS } else { MAX_SERVER_TRANSACTIONS - INVITE_RESERVE };
        if self.servers.len() < limit {
            self.servers.insert(
                key.clone(),
                Server {
                    flow,
                    invite: method == "INVITE",
                    state: ServerState::Proceeding,
                    last_response: None,
                    retransmit_at: None,
                    interval: T1,
                    deadline: None,
                    dialog: None,
                },
            );
        }
        Received::New(key)
    }

    /// Whether a server transaction still waits for its final answer.
    pub fn is_pending(&self, key: &ServerKey) -> bool {
        self.servers.get(key).is_some_and(|s| s.state == ServerState::Proceeding)
    }

    /// The INVITE server transaction a CANCEL refers to (same branch and sender).
    pub fn invite_of_cancel(&self, cancel: &ServerKey) -> Option<ServerKey> {
        let key = ServerKey { branch: cancel.branch.clone(), method: "INVITE".into(), remote: cancel.remote };
        self.servers.contains_key(&key).then_some(key)
    }

    /// Answers a request through its transaction. A response after the final
    /// one is dropped (RFC 3261 §17.2.1).
    pub fn respond(&mut self, now: Instant, key: &ServerKey, response: &Message) {
        let StartLine::Response { code, .. } = response.start else { return };
        let data = response.to_bytes();
        let Some(server) = self.servers.get_mut(key) else {
            // Unremembered (table full): still answer once.
            self.transmit.push_back(Output { flow: flow_of_key(key), data });
            return;
        };
        if server.state != ServerState::Proceeding {
            return;
        }
        self.transmit.push_back(Output { flow: server.flow, data: data.clone() });
        server.last_response = Some(data);
        let reliable = reliable(&server.flow);
        match (server.invite, code) {
            (_, 100..=199) => {}
            (true, 200..=299) => {
                // RFC 6026 Accepted; the 2xx is retransmitted until the dialog's
                // ACK (RFC 3261 §13.3.1.4), which the user reports with `ack_2xx`.
                server.state = ServerState::Accepted;
                server.retransmit_at = (!reliable).then(|| now + T1);
                server.interval = T1;
                server.deadline = Some(now + TRANSACTION_TIMEOUT); // Timer L
            }
            (true, _) => {
                let identity = (
                    key.remote,
                    response.get("Call-ID").unwrap_or("").to_string(),
                    response.cseq().map(|(n, _)| n).unwrap_or(0),
                    response.get("To").and_then(|t| param(t, "tag")).unwrap_or("").to_string(),
                );
                server.dialog = Some((identity.1.clone(), identity.2, identity.3.clone()));
                self.by_dialog.insert(identity, key.clone());
                server.state = ServerState::Completed;
                server.retransmit_at = (!reliable).then(|| now + T1); // Timer G
                server.interval = T1;
                server.deadline = Some(now + TRANSACTION_TIMEOUT); // Timer H
            }
            (false, _) => {
                server.state = ServerState::Completed;
                server.deadline = Some(now + if reliable { Duration::ZERO } else { TRANSACTION_TIMEOUT }); // Timer J
            }
        }
    }

    /// The dialog got the ACK of this INVITE's 2xx: stop retransmitting it.
    pub fn ack_2xx(&mut self, key: &ServerKey) {
        if let Some(server) = self.servers.get_mut(key)
            && server.state == ServerState::Accepted
        {
            server.retransmit_at = None;
            server.state = ServerState::Confirmed;
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let mut expired = Vec::new();
        let mut cancels = Vec::new();
        for (key, client) in &mut self.clients {
            let invite = client.request.method() == Some("INVITE");
            if client.retransmit_at.is_some_and(|at| at <= now) {
                self.transmit.push_back(Output { flow: client.flow, data: client.bytes.clone() });
                client.interval = if invite { client.interval * 2 } else { (client.interval * 2).min(T2) };
                client.retransmit_at = Some(now + client.interval);
            }
            if client.deadline <= now {
                if invite && client.state == ClientState::Proceeding && !client.cancel_sent {
                    // Rang too long: CANCEL it, and wait for its 487 (to ACK) a while longer.
                    self.events.push_back(Event::Timeout { key: key.clone() });
                    client.cancel_sent = true;
                    client.deadline = now + TRANSACTION_TIMEOUT;
                    cancels.push((client.flow, cancel_of(&client.request)));
                    continue;
                }
                if matches!(client.state, ClientState::Trying | ClientState::Proceeding) && !client.cancel_sent {
                    self.events.push_back(Event::Timeout { key: key.clone() });
                }
                expired.push(key.clone());
            }
        }
        for key in expired {
            self.clients.remove(&key);
        }
        for (flow, cancel) in cancels {
            self.send_request(now, flow, cancel);
        }
        let mut expired = Vec::new();
        for (key, server) in &mut self.servers {
            if server.retransmit_at.is_some_and(|at| at <= now) {
                if let Some(last) = &server.last_response {
                    self.transmit.push_back(Output { flow: server.flow, data: last.clone() });
                }
                server.interval = (server.interval * 2).min(T2);
                server.retransmit_at = Some(now + server.interval);
            }
            if server.deadline.is_some_and(|at| at <= now) {
                if server.state == ServerState::Accepted && server.retransmit_at.is_some() {
                    self.events.push_back(Event::NoAck { key: key.clone() });
                }
                expired.push(key.clone());
            }
        }
        for key in expired {
            if let Some(server) = self.servers.remove(&key)
                && let Some((call_id, cseq, tag)) = server.dialog
            {
                self.by_dialog.remove(&(key.remote, call_id, cseq, tag));
            }
        }
    }
}

fn flow_of_key(key: &ServerKey) -> Flow {
    let local = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
    Flow { transport: Transport::Udp, local, remote: key.remote }
}

/// Headers of a request copied into its CANCEL or non-2xx ACK (RFC 3261 §9.1, §17.1.1.3).
fn derived_request(request: &Message, method: &str, to: Option<&str>) -> Message {
    let uri = match &request.start {
        StartLine::Request { uri, .. } => uri.clone(),
        StartLine::Response { .. } => String::new(),
    };
    let mut out =
        Message { start: StartLine::Request { method: method.into(), uri }, headers: Vec::new(), body: Vec::new() };
    if let Some(via) = request.get("Via") {
        out.push("Via", crate::message::split_values(via).first().copied().unwrap_or(via));
    }
    out.push("Max-Forwards", "70");
    for name in ["From", "To", "Call-ID"] {
        if let Some(value) = request.get(name) {
            out.push(name, if name == "To" { to.unwrap_or(value) } else { value });
        }
    }
    let number = request.cseq().map(|(n, _)| n).unwrap_or(1);
    out.push("CSeq", format!("{number} {method}"));
    for route in request.lines("Route") {
        out.push("Route", route);
    }
    out
}

/// The CANCEL of an INVITE the box sent.
pub fn cancel_of(invite: &Message) -> Message {
    derived_request(invite, "CANCEL", None)
}

/// The ACK of a non-2xx final answer (the To carries the answer's tag).
pub fn ack_of(invite: &Message, response: &Message) -> Message {
    derived_request(invite, "ACK", response.get("To"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn flow(transport: Transport) -> Flow {
        let local: SocketAddr = "127.0.0.1:5060".parse().expect("addr");
        let remote: SocketAddr = "127.0.0.1:5090".parse().expect("addr");
        Flow { transport, local, remote }
    }

    fn request(method: &str, branch: &str) -> Message {
        let text = format!(
            "{method} sip:1@127.0.0.1:5090 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch={branch}\r\n\
From: <sip:a@x>;tag=1\r\nTo: <sip:1@y>\r\nCall-ID: c1\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n\r\n"
        );
        Message::parse(text.as_bytes()).expect("request")
    }

    fn response(req: &Message, code: u16) -> Message {
        let mut r = req.response(code, "X");
        r.set("To", "<sip:1@y>;tag=far");
        r
    }

    fn sent(tx: &mut Transactions) -> Vec<String> {
        std::iter::from_fn(|| tx.poll_transmit()).map(|o| String::from_utf8_lossy(&o.data).into_owned()).collect()
    }

    #[test]
    fn invite_client_retransmits_with_timer_a_and_times_out_with_timer_b() {
        let t0 = Instant::now();
        let mut tx = Transactions::new();
        let key = tx.send_request(t0, flow(Transport::Udp), request("INVITE", "z9hG4bKa"));
        assert_eq!(key, "z9hG4bKa INVITE");
        assert_eq!(sent(&mut tx).len(), 1);
        // Timer A doubles: 0.5, 1, 2, 4, 8, 16 s → retransmissions at 0.5, 1.5, 3.5, 7.5, 15.5, 31.5.
        let mut retransmissions = Vec::new();
        let event = loop {
            let Some(next) = tx.poll_timeout() else { panic!("timers run until Timer B") };
            tx.handle_timeout(next);
            if !sent(&mut tx).is_empty() {
                retransmissions.push(next.duration_since(t0).as_millis());
            }
            if let Some(event) = tx.poll_event() {
                break (next.duration_since(t0), event);
            }
        };
        assert_eq!(retransmissions, [500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(event, (TRANSACTION_TIMEOUT, Event::Timeout { key }));
    }

    #[test]
    fn provisional_stops_invite_retransmission_and_non_2xx_is_acked_once_per_copy() {
        let t0 = Instant::now();
        let mut tx = Transactions::new();
        let req = request("INVITE", "z9hG4bKc");
        let key = tx.send_request(t0, flow(Transport::Udp), req.clone());
        sent(&mut tx);
        tx.receive_response(t0, flow(Transport::Udp), response(&req, 100));
        assert!(tx.poll_event().is_none(), "100 Trying is not for the user");
        tx.handle_timeout(t0 + Duration::from_secs(2));
        assert!(sent(&mut tx).is_empty(), "no retransmission after a provisional");
        tx.receive_response(t0, flow(Transport::Udp), response(&req, 486));
        let acks = sent(&mut tx);
        assert_eq!(acks.len(), 1);
        assert!(acks[0].starts_with("ACK sip:1@127.0.0.1:5090 SIP/2.0"));
        assert!(acks[0].contains("branch=z9hG4bKc") && acks[0].contains("tag=far") && acks[0].contains("CSeq: 1 ACK"));
        assert!(matches!(tx.poll_event(), Some(Event::Response { key: k, .. }) if k == key));
        // A retransmitted 486 is ACKed again and not shown to the user.
        tx.receive_response(t0, flow(Transport::Udp), response(&req, 486));
        assert_eq!(sent(&mut tx).len(), 1);
        assert!(tx.poll_event().is_none());
        // Timer D ends the transaction.
        tx.handle_timeout(t0 + TRANSACTION_TIMEOUT + Duration::from_secs(1));
        assert_eq!(tx.len().0, 0);
    }

    #[test]
    fn invite_2xx_retransmissions_reach_the_user_in_accepted_state() {
        let t0 = Instant::now();
        let mut tx = Transactions::new();
        let req = request("INVITE", "z9hG4bKd");
        tx.send_request(t0, flow(Transport::Udp), req.clone());
        sent(&mut tx);
        tx.receive_response(t0, flow(Transport::Udp), response(&req, 200));
        tx.receive_response(t0, flow(Transport::Udp), response(&req, 200));
        assert_eq!(std::iter::from_fn(|| tx.poll_event()).count(), 2);
        assert!(sent(&mut tx).is_empty(), "the layer never ACKs a 2xx itself");
    }

    #[test]
    fn non_invite_client_caps_retransmissions_at_t2() {
        let t0 = Instant::now();
        let mut tx = Transactions::new();
        tx.send_request(t0, flow(Transport::Udp), request("OPTIONS", "z9hG4bKe"));
        sent(&mut tx);
        let mut at = Vec::new();
        while let Some(next) = tx.poll_timeout() {
            tx.handle_timeout(next);
            if !sent(&mut tx).is_empty() {
                at.push(next.duration_since(t0).as_millis());
            }
            if tx.poll_event().is_some() {
                break;
            }
        }
        assert_eq!(&at[..6], &[500, 1500, 3500, 7500, 11500, 15500]);
        assert_eq!(*at.last().expect("some"), 31500);
    }

    #[test]
    fn reliable_transports_do_not_retransmit() {
        let t0 = Instant::now();
        let mut tx = Transactions::new();
        tx.send_request(t0, flow(Transport::Tcp), request("INVITE", "z9hG4bKf"));
        sent(&mut tx);
        assert_eq!(tx.poll_timeout(), Some(t0 + TRANSACTION_TIMEOUT));
    }

    #[test]
    fn cancel_waits_for_a_provisional() {
        let t0 = Instant::now();
        let mut tx = Transactions::new();
        let req = request("INVITE", "z9hG4bKg");
        let key = tx.send_request(t0, flow(Transport::Udp), req.clone());
        sent(&mut tx);
        assert_eq!(tx.cancel(t0, &key), None);
        assert!(sent(&mut tx).is_empty());
        tx.receive_response(t0, flow(Transport::Udp), response(&req, 180));
        let out = sent(&mut tx);
        assert_eq!(out.len(), 1);
        assert!(out[0].starts_with("CANCEL sip:1@127.0.0.1:5090") && out[0].contains("branch=z9hG4bKg"));
        assert!(out[0].contains("CSeq: 1 CANCEL") && !out[0].contains("tag=far"));
    }

    #[test]
    fn server_invite_retransmits_non_2xx_until_ack_and_absorbs_retransmissions() {
        let t0 = Instant::now();
        let mut tx = Transactions::new();
        let req = request("INVITE", "z9hG4bKh");
        let f = flow(Transport::Udp);
        let Received::New(key) = tx.receive_request(t0, f, &req) else { panic!("new") };
        tx.respond(t0, &key, &req.response(100, "Trying"));
        assert_eq!(tx.receive_request(t0, f, &req), Received::Absorbed);
        assert_eq!(sent(&mut tx).len(), 2, "the 100 again for the retransmitted INVITE");
        tx.respond(t0, &key, &response(&req, 486));
        sent(&mut tx);
        tx.handle_timeout(t0 + T1);
        assert_eq!(sent(&mut tx).len(), 1, "Timer G");
        // An ACK with a branch of its own still matches by Call-ID, CSeq and To tag.
        let mut ack = request("ACK", "z9hG4bKother");
        ack.set("CSeq", "1 ACK");
        ack.set("To", "<sip:1@y>;tag=far");
        assert_eq!(tx.receive_request(t0 + T1, f, &ack), Received::Absorbed);
        tx.handle_timeout(t0 + T1 * 3);
        assert!(sent(&mut tx).is_empty(), "ACK stopped Timer G");
        tx.handle_timeout(t0 + T1 + T4);
        assert_eq!(tx.len().1, 0, "Timer I ended it");
    }

    #[test]
    fn server_2xx_is_retransmitted_until_the_dialog_acks_and_no_ack_is_reported() {
        let t0 = Instant::now();
        let mut tx = Transactions::new();
        let req = request("INVITE", "z9hG4bKi");
        let f = flow(Transport::Udp);
        let Received::New(key) = tx.receive_request(t0, f, &req) else { panic!("new") };
        tx.respond(t0, &key, &response(&req, 200));
        sent(&mut tx);
        tx.handle_timeout(t0 + T1);
        assert_eq!(sent(&mut tx).len(), 1);
        assert_eq!(tx.receive_request(t0, f, &req), Received::Absorbed, "INVITE retransmission absorbed");
        sent(&mut tx);
        tx.handle_timeout(t0 + TRANSACTION_TIMEOUT);
        assert!(std::iter::from_fn(|| tx.poll_event()).any(|e| e == Event::NoAck { key: key.clone() }));

        let mut tx = Transactions::new();
        let Received::New(key) = tx.receive_request(t0, f, &req) else { panic!("new") };
        tx.respond(t0, &key, &response(&req, 200));
        tx.ack_2xx(&key);
        sent(&mut tx);
        tx.handle_timeout(t0 + TRANSACTION_TIMEOUT);
        assert!(sent(&mut tx).is_empty() && tx.poll_event().is_none());
    }

    #[test]
    fn non_invite_server_answers_retransmissions_until_timer_j() {
        let t0 = Instant::now();
        let mut tx = Transactions::new();
        let req = request("BYE", "z9hG4bKj");
        let f = flow(Transport::Udp);
        let Received::New(key) = tx.receive_request(t0, f, &req) else { panic!("new") };
        tx.respond(t0, &key, &req.response(200, "OK"));
        tx.respond(t0, &key, &req.response(500, "late"));
        assert_eq!(sent(&mut tx).len(), 1, "nothing after the final answer");
        assert_eq!(tx.receive_request(t0, f, &req), Received::Absorbed);
        assert!(sent(&mut tx)[0].starts_with("SIP/2.0 200"));
        tx.handle_timeout(t0 + TRANSACTION_TIMEOUT);
        assert_eq!(tx.receive_request(t0, f, &req), Received::New(key));
    }
}

#[cfg(test)]
mod more_tests {
    use super::*;

    fn flow(port: u16) -> Flow {
        Flow {
            transport: Transport::Udp,
            local: "127.0.0.1:5060".parse().expect("addr"),
            remote: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn invite() -> Message {
        let text = "INVITE sip:1@127.0.0.1:5090 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKr\r\n\
From: <sip:a@x>;tag=1\r\nTo: <sip:1@y>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n\r\n";
        Message::parse(text.as_bytes()).expect("request")
    }

    fn answer(req: &Message, code: u16) -> Message {
        let mut r = req.response(code, "X");
        r.set("To", "<sip:1@y>;tag=far");
        r
    }

    #[test]
    fn ringing_outlives_timer_b_and_ends_with_a_cancel() {
        let t0 = Instant::now();
        let mut tx = Transactions::new();
        let req = invite();
        let key = tx.send_request(t0, flow(5090), req.clone());
        tx.receive_response(t0, flow(5090), answer(&req, 180));
        while tx.poll_event().is_some() {}
        while tx.poll_transmit().is_some() {}
        tx.handle_timeout(t0 + TRANSACTION_TIMEOUT + Duration::from_secs(1));
        assert!(tx.poll_event().is_none(), "a ringing call does not time out at 32 s");
        tx.handle_timeout(t0 + RING_TIMEOUT);
        assert_eq!(tx.poll_event(), Some(Event::Timeout { key }));
        let sent: Vec<String> =
            std::iter::from_fn(|| tx.poll_transmit()).map(|o| String::from_utf8_lossy(&o.data).into_owned()).collect();
        assert!(sent.iter().any(|m| m.starts_with("CANCEL ")), "{sent:?}");
        // The 487 that follows is ACKed.
        tx.receive_response(t0 + RING_TIMEOUT, flow(5090), answer(&req, 487));
        let sent: Vec<String> =
            std::iter::from_fn(|| tx.poll_transmit()).map(|o| String::from_utf8_lossy(&o.data).into_owned()).collect();
        assert!(sent.iter().any(|m| m.starts_with("ACK ")));
    }

    #[test]
    fn a_flood_of_other_requests_leaves_room_for_invites() {
        let t0 = Instant::now();
        let mut tx = Transactions::new();
        for i in 0..MAX_SERVER_TRANSACTIONS {
            let text = format!(
                "OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKf{i}\r\nFrom: <sip:a@x>;tag=1\r\n\
To: <sip:x>\r\nCall-ID: f{i}\r\nCSeq: 1 OPTIONS\r\n\r\n"
            );
            let options = Message::parse(text.as_bytes()).expect("options");
            tx.receive_request(t0, flow(5090), &options);
        }
        assert_eq!(tx.len().1, MAX_SERVER_TRANSACTIONS - INVITE_RESERVE);
        let Received::New(key) = tx.receive_request(t0, flow(5090), &invite()) else { panic!("new") };
        assert!(tx.is_pending(&key), "the INVITE still has its transaction");
    }

    #[test]
    fn responses_from_elsewhere_are_ignored() {
        let t0 = Instant::now();
        let mut tx = Transactions::new();
        let req = invite();
        tx.send_request(t0, flow(5090), req.clone());
        let elsewhere = Flow { remote: "192.0.2.66:5090".parse().expect("addr"), ..flow(5090) };
        tx.receive_response(t0, elsewhere, answer(&req, 200));
        assert!(tx.poll_event().is_none(), "a forged 200 from another address");
        tx.receive_response(t0, flow(5090), answer(&req, 200));
        assert!(tx.poll_event().is_some());
    }
}
