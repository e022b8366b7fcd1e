//! The box's SIP endpoint, sans-IO: messages in and out through the
//! transaction layer, keep-alives, 400s for broken requests, the registrar
//! with digest authentication and OPTIONS. Everything else (calls) is handed
//! to the transaction user — the B2BUA — as [`Incoming`] events.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::digest::{Algorithm, NonceIssuer, NonceState, algorithm_of, expected_response, parse_credentials};
use crate::message::{Message, ParseError, StartLine, param};
use crate::transaction::{ClientKey, Event, Received, ServerKey, Transactions};

/// How a message reached the box: transport and both ends (where the answer goes back).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    pub transport: Transport,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
    Ws,
    /// Inside the box: a B2BUA's leg to itself (a browser calling a browser is two calls joined
    /// here, like a PBX's local channel). Reliable and instant; it never reaches a socket.
    Loop,
}

impl Transport {
    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Ws => "WSS",
            Transport::Loop => "LOOP",
        }
    }
}

/// A user's digest keys for the domain: `H(user:realm:password)` in hex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserKeys {
    pub md5: String,
    pub sha256: String,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub domain: String,
    pub users: HashMap<String, UserKeys>,
    pub min_expires: u32,
    pub max_expires: u32,
    pub user_agent: String,
    /// Challenge with SHA-256 (first) as well as MD5. Off by default: clients
    /// disagree on which of several challenges they answer (sipp the first,
    /// JsSIP the last) and most phones know only MD5.
    pub offer_sha256: bool,
}

impl ServerConfig {
    pub fn new(domain: impl Into<String>) -> Self {
        ServerConfig {
            domain: domain.into(),
            users: HashMap::new(),
            min_expires: 60,
            max_expires: 3600,
            user_agent: concat!("branchgate/", env!("CARGO_PKG_VERSION")).into(),
            offer_sha256: false,
        }
    }
}

/// Something to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    pub flow: Flow,
    pub data: Vec<u8>,
}

/// One registered contact of a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub contact: String,
    pub expires: Instant,
    pub flow: Flow,
    pub call_id: String,
    /// CSeq of the REGISTER that made it (RFC 3261 §10.3 step 7: older ones are refused).
    pub cseq: u32,
}

/// A registration as the admin UI lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrationInfo {
    pub user: String,
    pub contact: String,
    pub source: SocketAddr,
    pub transport: Transport,
    pub expires_in: Duration,
}

/// What the transaction user gets from the endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A new request other than REGISTER/OPTIONS (INVITE, BYE, CANCEL, re-INVITE...),
    /// with its Via stamped; answer it through [`Server::respond`].
    Request { key: ServerKey, flow: Flow, request: Message },
    /// The ACK of a 2xx (it has no transaction of its own).
    Ack { flow: Flow, request: Message },
    /// A response to a request sent with [`Server::send_request`].
    Response { key: ClientKey, response: Message },
    /// That request was never answered (Timer B/F).
    Timeout { key: ClientKey },
    /// A 2xx the box sent was never ACKed.
    NoAck { key: ServerKey },
}

/// How long a digest nonce is valid.
const NONCE_LIFETIME: Duration = Duration::from_secs(300);

/// Contacts one user may register.
const MAX_CONTACTS: usize = 10;

#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    nonces: NonceIssuer,
    start: Instant,
    bindings: HashMap<String, Vec<Binding>>,
    transactions: Transactions,
    out: VecDeque<Output>,
    incoming: VecDeque<Incoming>,
    pub auth_failures: u64,
    /// Failed digest checks in the current window per (client IP, username) and per
    /// client IP (`None`): a phone with a wrong password behind an office NAT blocks
    /// only itself, a guesser trying many names blocks its address.
    failures: HashMap<(IpAddr, Option<String>), (u32, Instant)>,
    /// Highest `nc` seen per nonce (replay protection within a nonce's lifetime).
    nonce_counts: HashMap<String, (u32, Instant)>,
}

/// Failed digest checks for one username from one IP within [`FAILURE_WINDOW`] after
/// which that username is refused from there without checking (password guessing);
/// [`MAX_FAILURES_PER_ADDRESS`] for all usernames together.
pub const MAX_FAILURES: u32 = 20;
pub const MAX_FAILURES_PER_ADDRESS: u32 = 200;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(300);
/// Nonces remembered for replay checks (beyond it the oldest are forgotten; they expire anyway).
const MAX_TRACKED_NONCES: usize = 50_000;

/// The URI inside a name-addr (`"Bob" <sip:bob@host>;tag=1` → `sip:bob@host`) or a bare addr-spec.
pub fn uri_of(value: &str) -> &str {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(';').next().unwrap_or(value).trim(),
    }
}

/// The user part of a SIP URI.
pub fn user_of(uri: &str) -> Option<&str> {
    let rest = uri.strip_prefix("sip:").or_else(|| uri.strip_prefix("sips:"))?;
    let (user, _) = rest.split_once('@')?;
    Some(user.split(';').next().unwrap_or(user))
}

impl Server {
    pub fn new(config: ServerConfig, nonce_secret: [u8; 32], now: Instant) -> Self {
        Server {
            config,
            nonces: NonceIssuer::new(nonce_secret, NONCE_LIFETIME.as_secs()),
            start: now,
            bindings: HashMap::new(),
            transactions: Transactions::new(),
            out: VecDeque::new(),
            incoming: VecDeque::new(),
            auth_failures: 0,
            failures: HashMap::new(),
            nonce_counts: HashMap::new(),
        }
    }

    /// New users or domain; registrations stay.
    pub fn set_config(&mut self, config: ServerConfig) {
        self.config = config;
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front().or_else(|| self.transactions.poll_transmit())
    }

    pub fn poll_incoming(&mut self) -> Option<Incoming> {
        self.collect_events();
        self.incoming.pop_front()
    }

    /// The next instant [`Server::handle_timeout`] has work (transaction timers).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.transactions.poll_timeout()
    }

    fn collect_events(&mut self) {
        while let Some(event) = self.transactions.poll_event() {
            self.incoming.push_back(match event {
                Event::Response { key, response } => Incoming::Response { key, response },
                Event::Timeout { key } => Incoming::Timeout { key },
                Event::NoAck { key } => Incoming::NoAck { key },
            });
        }
    }

    /// Sends a request of the transaction user (its top Via carries a fresh branch).
    pub fn send_request(&mut self, now: Instant, flow: Flow, request: Message) -> ClientKey {
        self.transactions.send_request(now, flow, request)
    }

    /// Answers a request handed out as [`Incoming::Request`].
    pub fn respond(&mut self, now: Instant, key: &ServerKey, mut response: Message) {
        if response.get("Server").is_none() {
            response.push("Server", self.config.user_agent.clone());
        }
        self.transactions.respond(now, key, &response);
    }

    /// Cancels an INVITE the user sent (the CANCEL waits for a provisional answer).
    pub fn cancel(&mut self, now: Instant, key: &ClientKey) {
        self.transactions.cancel(now, key);
    }

    /// Whether a request handed out still waits for its final answer.
    pub fn is_pending(&self, key: &ServerKey) -> bool {
        self.transactions.is_pending(key)
    }

    /// The INVITE transaction a CANCEL (by its own transaction) refers to.
    pub fn invite_of_cancel(&self, cancel: &ServerKey) -> Option<ServerKey> {
        self.transactions.invite_of_cancel(cancel)
    }

    /// Where a request the user sent went, and the request itself.
    pub fn client_request(&self, key: &ClientKey) -> Option<(Flow, &Message)> {
        self.transactions.request_of(key)
    }

    /// The dialog got the ACK of this INVITE's 2xx.
    pub fn ack_2xx(&mut self, key: &ServerKey) {
        self.transactions.ack_2xx(key);
    }

    /// Sends a message outside any transaction (the ACK of a 2xx).
    pub fn send_raw(&mut self, flow: Flow, message: &Message) {
        self.out.push_back(Output { flow, data: message.to_bytes() });
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.transactions.handle_timeout(now);
        self.nonce_counts.retain(|_, (_, at)| now.saturating_duration_since(*at) < NONCE_LIFETIME);
        self.failures.retain(|_, (_, since)| now.saturating_duration_since(*since) < FAILURE_WINDOW);
        for list in self.bindings.values_mut() {
            list.retain(|b| b.expires > now);
        }
        self.bindings.retain(|_, list| !list.is_empty());
    }

    pub fn registrations(&self, now: Instant) -> Vec<RegistrationInfo> {
        let mut out: Vec<RegistrationInfo> = self
            .bindings
            .iter()
            .flat_map(|(user, list)| {
                list.iter().filter(|b| b.expires > now).map(move |b| RegistrationInfo {
                    user: user.clone(),
                    contact: b.contact.clone(),
                    source: b.flow.remote,
                    transport: b.flow.transport,
                    expires_in: b.expires.saturating_duration_since(now),
                })
            })
            .collect();
        out.sort_by(|a, b| a.user.cmp(&b.user).then(a.contact.cmp(&b.contact)));
        out
    }

    /// The live contacts of `user`, newest first (for routing calls to them).
    pub fn contacts(&self, user: &str, now: Instant) -> Vec<Binding> {
        let mut list: Vec<Binding> = self
            .bindings
            .get(user)
            .map(|l| l.iter().filter(|b| b.expires > now).cloned().collect())
            .unwrap_or_default();
        list.reverse();
        list
    }

    fn now_secs(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs()
    }

    fn send(&mut self, flow: Flow, message: &Message) {
        self.out.push_back(Output { flow, data: message.to_bytes() });
    }

    /// A final answer through the request's transaction (retransmissions get it again).
    fn answer(&mut self, now: Instant, key: &ServerKey, response: Message) {
        self.respond(now, key, response);
    }

    /// One message (a datagram, or a framed stream message) from `flow`.
    pub fn handle_input(&mut self, now: Instant, flow: Flow, bytes: &[u8]) {
        // Keep-alives (RFC 5626 §4.4.1): CRLFCRLF is answered with CRLF on streams.
        if bytes.iter().all(|b| *b == b'\r' || *b == b'\n') {
            // (WebSocket has its own pings: RFC 7118 has no CRLF keep-alive.)
            if bytes.len() >= 4 && matches!(flow.transport, Transport::Tcp | Transport::Tls) {
                self.out.push_back(Output { flow, data: b"\r\n".to_vec() });
            }
            return;
        }
        let mut request = match Message::parse(bytes) {
            Ok(m) if matches!(m.start, StartLine::Request { .. }) => m,
            Ok(response) => {
                if response.check_mandatory().is_ok() {
                    self.transactions.receive_response(now, flow, response);
                }
                return;
            }
            Err(e) => return self.bad_request(flow, bytes, &e),
        };
        if let Err(e) = request.check_mandatory() {
            // Answered with what there is (RFC 4475 §3.3.1), if the Via says where to (never an ACK).
            if request.get("Via").is_some() && request.method() != Some("ACK") {
                let response = with_warning(request.response(400, "Bad Request"), &e.to_string());
                self.send(flow, &response);
            }
            return;
        }
        stamp_via(&mut request, flow);
        let key = match self.transactions.receive_request(now, flow, &request) {
            Received::Absorbed => return,
            Received::AckOf2xx => return self.incoming.push_back(Incoming::Ack { flow, request }),
            Received::New(key) => key,
        };
        let method = request.method().unwrap_or("").to_string();
        if request.cseq().map(|(_, m)| m) != Some(method.as_str()) {
            let response = with_warning(request.response(400, "Bad Request"), "CSeq method does not match the request");
            return self.answer(now, &key, response);
        }
        if method != "ACK" {
            if let Err((code, reason)) = request.validate_request() {
                let text = if code == 416 { "Unsupported URI Scheme" } else { "Bad Request" };
                return self.answer(now, &key, with_warning(request.response(code, text), &reason));
            }
            // The one SIP extension a request may require is 100rel on an INVITE (RFC 3262:
            // the B2BUA sends its provisional responses reliably); anything else gets 420
            // (RFC 3261 §8.2.2.3).
            let unsupported: Vec<&str> = request
                .get_all("Require")
                .into_iter()
                .chain(request.get_all("Proxy-Require"))
                .flat_map(|value| value.split(','))
                .map(str::trim)
                .filter(|option| !option.is_empty())
                .filter(|option| !(method == "INVITE" && option.eq_ignore_ascii_case("100rel")))
                .collect();
            if !unsupported.is_empty() && method != "CANCEL" {
                let mut response = request.response(420, "Bad Extension");
                response.push("Unsupported", unsupported.join(", "));
                return self.answer(now, &key, response);
            }
        }
        if request.get("Max-Forwards").and_then(|v| v.trim().parse::<u32>().ok()) == Some(0) {
            let response = request.response(483, "Too Many Hops");
            return self.answer(now, &key, response);
        }
        match method.as_str() {
            "REGISTER" => self.register(now, &key, flow, &request),
            "OPTIONS" => {
                let mut response = request.response(200, "OK");
                response.push("Allow", ALLOW);
                response.push("Accept", "application/sdp");
                self.answer(now, &key, response);
            }
            _ => self.incoming.push_back(Incoming::Request { key, flow, request }),
        }
    }

    /// A request too broken to parse: answered 400 only when the headers a
    /// response needs can be read from the text (RFC 3261 §16.3 / RFC 4475 §3.1.2).
    fn bad_request(&mut self, flow: Flow, bytes: &[u8], error: &ParseError) {
        let text = String::from_utf8_lossy(bytes);
        let first = text.trim_start_matches(['\r', '\n']).lines().next().unwrap_or("").trim_end();
        // Only what looks like a request gets an answer (never a response, RFC 4475 §3.1.2.19).
        let version = first.rsplit(' ').next().unwrap_or("");
        // Nor an ACK, even a broken one (RFC 3261 §17.2: ACKs are never answered).
        if first.starts_with("SIP/")
            || first.starts_with("ACK ")
            || !version.get(..4).is_some_and(|v| v.eq_ignore_ascii_case("SIP/"))
        {
            return;
        }
        let (code, reason) = match error {
            ParseError::Version(_) => (505, "Version Not Supported"),
            _ => (400, "Bad Request"),
        };
        let mut response = Message {
            start: StartLine::Response { code, reason: reason.into() },
            headers: Vec::new(),
            body: Vec::new(),
        };
        for line in text.split("\r\n").skip(1).take_while(|l| !l.is_empty()) {
            if let Some((name, value)) = line.split_once(':') {
                let long = crate::message::canonical_name(name.trim());
                if ["Via", "From", "To", "Call-ID", "CSeq"].iter().any(|n| n.eq_ignore_ascii_case(long)) {
                    response.push(long, value.trim());
                }
            }
        }
        // The Via says where the answer goes; without it there is nobody to answer.
        if response.get("Via").is_some() {
            self.send(flow, &with_warning(response, &error.to_string()));
        }
    }

    fn challenge(&mut self, now: Instant, key: &ServerKey, flow: Flow, request: &Message, proxy: bool, stale: bool) {
        let (code, reason, header) = if proxy {
            (407, "Proxy Authentication Required", "Proxy-Authenticate")
        } else {
            (401, "Unauthorized", "WWW-Authenticate")
        };
        let mut response = request.response(code, reason);
        ensure_to_tag(&mut response);
        let algorithms: &[Algorithm] =
            if self.config.offer_sha256 { &[Algorithm::Sha256, Algorithm::Md5] } else { &[Algorithm::Md5] };
        let binding = nonce_binding(&self.config.domain, flow);
        for challenge in self.nonces.challenges(self.now_secs(now), &binding, stale, algorithms) {
            response.push(header, challenge);
        }
        self.answer(now, key, response);
    }

    /// The authenticated user of a request, or `None` with the challenge (401,
    /// or 407 when `proxy`: calls) or refusal already sent.
    pub fn authenticate(
        &mut self,
        now: Instant,
        key: &ServerKey,
        flow: Flow,
        request: &Message,
        proxy: bool,
    ) -> Option<String> {
        let method = request.method().unwrap_or("");
        let header = if proxy { "Proxy-Authorization" } else { "Authorization" };
        let credentials = request.lines(header).filter_map(parse_credentials).find(|c| c.realm == self.config.domain);
        let Some(c) = credentials else {
            self.challenge(now, key, flow, request, proxy, false);
            return None;
        };
        let ip = flow.remote.ip();
        let blocked = |key: &(IpAddr, Option<String>), limit: u32| {
            self.failures
                .get(key)
                .is_some_and(|(count, since)| *count >= limit && now.saturating_duration_since(*since) < FAILURE_WINDOW)
        };
        if blocked(&(ip, Some(c.username.clone())), MAX_FAILURES) || blocked(&(ip, None), MAX_FAILURES_PER_ADDRESS) {
            // Guessing from here: refused without looking at the credentials.
            let response = request.response(403, "Forbidden");
            self.answer(now, key, with_warning(response, "too many failed authentications; try later"));
            return None;
        }
        match self.nonces.check(&c.nonce, self.now_secs(now), &nonce_binding(&self.config.domain, flow)) {
            NonceState::Valid => {}
            NonceState::Stale => {
                self.challenge(now, key, flow, request, proxy, true);
                return None;
            }
            NonceState::Invalid => {
                self.challenge(now, key, flow, request, proxy, false);
                return None;
            }
        }
        // qop=auth is required (no RFC 2069 fallback). The digest uri is not compared with
        // the Request-URI: sipp, for one, puts the server's address there.
        let bound = c.qop.as_deref().is_some_and(|q| q.eq_ignore_ascii_case("auth"));
        let verified = bound
            && match (algorithm_of(&c), self.config.users.get(&c.username)) {
                (Some(algorithm), Some(keys)) => {
                    let ha1 = match algorithm {
                        Algorithm::Md5 => &keys.md5,
                        Algorithm::Sha256 => &keys.sha256,
                    };
                    expected_response(algorithm, ha1, method, &c) == c.response.to_ascii_lowercase()
                }
                _ => false,
            };
        if !verified {
            self.auth_failures += 1;
            for key in [(ip, Some(c.username.clone())), (ip, None)] {
                let entry = self.failures.entry(key).or_insert((0, now));
                if now.saturating_duration_since(entry.1) >= FAILURE_WINDOW {
                    *entry = (0, now);
                }
                entry.0 += 1;
            }
            let response = request.response(403, "Forbidden");
            self.answer(now, key, response);
            return None;
        }
        // The same nonce may be used again only with a higher nc (RFC 7616 §3.4): a captured
        // request replayed within the nonce's lifetime is challenged afresh.
        let nc = c.nc.as_deref().and_then(|n| u32::from_str_radix(n, 16).ok()).unwrap_or(0);
        if let Some((seen, _)) = self.nonce_counts.get(&c.nonce)
            && nc <= *seen
        {
            self.challenge(now, key, flow, request, proxy, true);
            return None;
        }
        if self.nonce_counts.len() >= MAX_TRACKED_NONCES {
            self.nonce_counts.retain(|_, (_, at)| now.saturating_duration_since(*at) < NONCE_LIFETIME);
        }
        if self.nonce_counts.len() < MAX_TRACKED_NONCES {
            self.nonce_counts.insert(c.nonce.clone(), (nc, now));
        }
        Some(c.username)
    }

    fn register(&mut self, now: Instant, key: &ServerKey, flow: Flow, request: &Message) {
        let Some(username) = self.authenticate(now, key, flow, request, false) else {
            return;
        };
        // The address-of-record is the To user; one may register only oneself.
        let aor_user = request.get("To").map(uri_of).and_then(user_of).map(str::to_string);
        if aor_user.as_deref() != Some(username.as_str()) {
            let response = request.response(403, "Forbidden");
            return self.answer(now, key, response);
        }
        let default_expires =
            request.get("Expires").and_then(|v| v.trim().parse::<u32>().ok()).unwrap_or(self.config.max_expires);
        let contacts = request.get_all("Contact");
        let call_id = request.get("Call-ID").unwrap_or("").to_string();
        let cseq = request.cseq().map(|(n, _)| n).unwrap_or(0);
        // RFC 3261 §10.3 step 7: a REGISTER older than the one that made a binding is refused.
        let stale = self
            .bindings
            .get(&username)
            .is_some_and(|list| list.iter().any(|b| b.call_id == call_id && b.cseq >= cseq));
        if stale {
            let response = with_warning(request.response(500, "Server Internal Error"), "out-of-order REGISTER");
            return self.answer(now, key, response);
        }
        if contacts.iter().any(|c| c.trim() == "*") {
            if contacts.len() != 1 || default_expires != 0 {
                let response = request.response(400, "Bad Request");
                return self.answer(now, key, response);
            }
            self.bindings.remove(&username);
        } else {
            for contact in &contacts {
                let expires = param(contact, "expires").and_then(|v| v.parse::<u32>().ok()).unwrap_or(default_expires);
                if expires != 0 && expires < self.config.min_expires {
                    let mut response = request.response(423, "Interval Too Brief");
                    response.push("Min-Expires", self.config.min_expires.to_string());
                    return self.answer(now, key, response);
                }
            }
            let list = self.bindings.entry(username.clone()).or_default();
            for contact in contacts {
                let uri = uri_of(contact).to_string();
                let expires = param(contact, "expires")
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(default_expires)
                    .min(self.config.max_expires);
                list.retain(|b| b.contact != uri);
                if expires > 0 && list.len() >= MAX_CONTACTS {
                    // The oldest contact makes room (a phone re-registering from a new address).
                    list.remove(0);
                }
                if expires > 0 {
                    list.push(Binding {
                        contact: uri,
                        expires: now + Duration::from_secs(u64::from(expires)),
                        flow,
                        call_id: call_id.clone(),
                        cseq,
                    });
                }
            }
            if list.is_empty() {
                self.bindings.remove(&username);
            }
        }
        let mut response = request.response(200, "OK");
        ensure_to_tag(&mut response);
        for binding in self.contacts(&username, now) {
            let left = binding.expires.saturating_duration_since(now).as_secs();
            response.push("Contact", format!("<{}>;expires={left}", binding.contact));
        }
        self.answer(now, key, response);
    }
}

/// Methods the box answers.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, UPDATE, INFO, PRACK";

/// The response with a `Warning: 399` saying why (RFC 3261 §20.43).
pub fn with_warning(mut response: Message, reason: &str) -> Message {
    response.push("Warning", format!("399 branchgate \"{}\"", reason.replace('"', "'")));
    response
}

/// Nonces are bound to the realm and the client's address: a captured
/// Authorization header cannot be replayed from elsewhere.
fn nonce_binding(realm: &str, flow: Flow) -> String {
    format!("{realm}|{}", flow.remote.ip())
}

/// Adds `received` and fills `rport` in the top Via (RFC 3261 §18.2.1, RFC 3581).
fn stamp_via(request: &mut Message, flow: Flow) {
    let Some(index) =
        request.headers.iter().position(|h| crate::message::canonical_name(&h.name).eq_ignore_ascii_case("Via"))
    else {
        return;
    };
    let value = &request.headers[index].value;
    // Only the first value of a comma list is the top Via.
    let values = crate::message::split_values(value);
    let Some(top) = values.first() else { return };
    let mut stamped = String::new();
    for (i, part) in top.split(';').enumerate() {
        if i > 0 {
            stamped.push(';');
        }
        let name = part.split('=').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("rport") {
            stamped.push_str(&format!("rport={}", flow.remote.port()));
        } else if name.eq_ignore_ascii_case("received") && i > 0 {
            // A client's own `received` is not believed: ours replaces it below.
            stamped.pop();
        } else {
            stamped.push_str(part);
        }
    }
    stamped.push_str(&format!(";received={}", flow.remote.ip()));
    let rest: Vec<&str> = values.iter().skip(1).copied().collect();
    request.headers[index].value = if rest.is_empty() { stamped } else { format!("{stamped}, {}", rest.join(", ")) };
}

/// Final responses need a To tag (RFC 3261 §8.2.6.2).
fn ensure_to_tag(response: &mut Message) {
    if let Some(to) = response.get("To")
        && param(to, "tag").is_none()
    {
        let tagged = format!("{to};tag=bg{:08x}", crc_of(to));
        response.set("To", tagged);
    }
}

/// A short stable tag from text (so retransmitted requests get the same tag).
fn crc_of(text: &str) -> u32 {
    text.bytes().fold(0x811C_9DC5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}
