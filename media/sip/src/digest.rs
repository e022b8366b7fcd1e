//! SIP digest authentication as the server side (RFC 3261 §22, RFC 2617,
//! RFC 8760 for SHA-256), with `qop=auth` and stateless nonces that expire.

use md5::{Digest as _, Md5};
use sha2::Sha256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    fn hash(self, input: &str) -> String {
        match self {
            Algorithm::Md5 => hex::encode(Md5::digest(input.as_bytes())),
            Algorithm::Sha256 => hex::encode(Sha256::digest(input.as_bytes())),
        }
    }
}

/// The parameters of a `Digest` credentials header (Authorization / Proxy-Authorization).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Option<String>,
    pub qop: Option<String>,
    pub nc: Option<String>,
    pub cnonce: Option<String>,
    pub opaque: Option<String>,
}

/// Parses `Digest k=v, k="v", ...`; `None` when it is not a Digest header.
pub fn parse_credentials(value: &str) -> Option<Credentials> {
    let rest = value.trim_start();
    let rest = rest.get(..6).filter(|s| s.eq_ignore_ascii_case("digest")).map(|_| &rest[6..])?;
    let mut c = Credentials::default();
    for part in crate::message::split_values(rest) {
        let (k, v) = part.split_once('=')?;
        let v = v.trim();
        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v).to_string();
        match k.trim().to_ascii_lowercase().as_str() {
            "username" => c.username = v,
            "realm" => c.realm = v,
            "nonce" => c.nonce = v,
            "uri" => c.uri = v,
            "response" => c.response = v,
            "algorithm" => c.algorithm = Some(v),
            "qop" => c.qop = Some(v),
            "nc" => c.nc = Some(v),
            "cnonce" => c.cnonce = Some(v),
            "opaque" => c.opaque = Some(v),
            _ => {}
        }
    }
    Some(c)
}

/// The expected `response` for `method` given HA1 (hex) — RFC 2617 §3.2.2.1.
pub fn expected_response(algorithm: Algorithm, ha1: &str, method: &str, c: &Credentials) -> String {
    let ha2 = algorithm.hash(&format!("{method}:{}", c.uri));
    match (&c.qop, &c.nc, &c.cnonce) {
        (Some(qop), Some(nc), Some(cnonce)) if qop.eq_ignore_ascii_case("auth") => {
            algorithm.hash(&format!("{ha1}:{}:{nc}:{cnonce}:{qop}:{ha2}", c.nonce))
        }
        _ => algorithm.hash(&format!("{ha1}:{}:{ha2}", c.nonce)),
    }
}

pub use branchgate_nonce::NonceState;

/// Digest nonces: stateless, bound to the realm, expiring (stale ones are re-challenged with `stale=true`).
#[derive(Clone, Debug)]
pub struct NonceIssuer {
    nonces: branchgate_nonce::Nonces,
    /// Makes every nonce unique (two challenges in the same second differ), so
    /// that the replay check on `nc` per nonce cannot confuse two clients.
    issued: std::cell::Cell<u64>,
}

impl NonceIssuer {
    pub fn new(secret: [u8; 32], lifetime_secs: u64) -> Self {
        NonceIssuer { nonces: branchgate_nonce::Nonces::new(secret, lifetime_secs, '.'), issued: Default::default() }
    }

    /// `<serial>.<expiry>.<tag>`: the serial is covered by the tag.
    pub fn issue(&self, now_secs: u64, binding: &str) -> String {
        let serial = self.issued.get().wrapping_add(1);
        self.issued.set(serial);
        let inner = self.nonces.issue(now_secs, format!("{binding}#{serial:x}").as_bytes());
        format!("{serial:x}.{inner}")
    }

    pub fn check(&self, nonce: &str, now_secs: u64, binding: &str) -> NonceState {
        let Some((serial, inner)) = nonce.split_once('.') else { return NonceState::Invalid };
        if serial.is_empty() || serial.len() > 16 || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
            return NonceState::Invalid;
        }
        self.nonces.check(inner, now_secs, format!("{binding}#{serial}").as_bytes())
    }

    /// `WWW-Authenticate` values for `algorithms`, in that order.
    /// `binding` ties the nonce to what it is for (realm and client address); `realm` is
    /// its part before the first `|`.
    /// One challenge per algorithm, most preferred first (RFC 8760 §2.4).
    pub fn challenges(&self, now_secs: u64, binding: &str, stale: bool, algorithms: &[Algorithm]) -> Vec<String> {
        let nonce = self.issue(now_secs, binding);
        let realm = binding.split('|').next().unwrap_or(binding);
        let stale = if stale { ", stale=true" } else { "" };
        algorithms
            .iter()
            .map(|a| {
                format!("Digest realm=\"{realm}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"{stale}", a.name())
            })
            .collect()
    }
}

/// The box as a digest client (towards a trunk): the Authorization or
/// Proxy-Authorization value answering `challenge` (a WWW-/Proxy-Authenticate
/// value) for `method` on `uri`. `None` when the challenge is not a Digest
/// challenge the box can answer (unknown algorithm, qop without `auth`).
pub fn client_authorization(
    challenge: &str,
    method: &str,
    uri: &str,
    username: &str,
    password: &str,
    cnonce: &str,
) -> Option<String> {
    let offered = parse_credentials(challenge)?;
    let algorithm = algorithm_of(&offered)?;
    let qop = match &offered.qop {
        None => None,
        Some(list) if list.split(',').any(|q| q.trim().eq_ignore_ascii_case("auth")) => Some("auth".to_string()),
        Some(_) => return None,
    };
    let credentials = Credentials {
        username: username.to_string(),
        realm: offered.realm.clone(),
        nonce: offered.nonce.clone(),
        uri: uri.to_string(),
        qop: qop.clone(),
        nc: qop.as_ref().map(|_| "00000001".to_string()),
        cnonce: qop.as_ref().map(|_| cnonce.to_string()),
        ..Credentials::default()
    };
    let ha1 = algorithm.hash(&format!("{username}:{}:{password}", offered.realm));
    let response = expected_response(algorithm, &ha1, method, &credentials);
    let mut value = format!(
        "Digest username=\"{username}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{response}\", algorithm={}",
        offered.realm,
        offered.nonce,
        algorithm.name()
    );
    if qop.is_some() {
        value.push_str(&format!(", qop=auth, nc=00000001, cnonce=\"{cnonce}\""));
    }
    if let Some(opaque) = &offered.opaque {
        value.push_str(&format!(", opaque=\"{opaque}\""));
    }
    Some(value)
}

/// The algorithm credentials name (MD5 when absent).
pub fn algorithm_of(c: &Credentials) -> Option<Algorithm> {
    match c.algorithm.as_deref() {
        None => Some(Algorithm::Md5),
        Some(a) if a.eq_ignore_ascii_case("MD5") => Some(Algorithm::Md5),
        Some(a) if a.eq_ignore_ascii_case("SHA-256") => Some(Algorithm::Sha256),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 2617 §3.5: the Mufasa example (HTTP, but the same digest computation).
    #[test]
    fn rfc2617_mufasa() {
        let header = r#"Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41""#;
        let c = parse_credentials(header).expect("digest");
        assert_eq!(c.username, "Mufasa");
        let ha1 = hex::encode(Md5::digest(b"Mufasa:testrealm@host.com:Circle Of Life"));
        assert_eq!(expected_response(Algorithm::Md5, &ha1, "GET", &c), c.response);
    }

    /// RFC 7616 §3.9.1: the same exchange with SHA-256.
    #[test]
    fn rfc7616_sha256() {
        let header = r#"Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc=00000001, cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth, response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#;
        let c = parse_credentials(header).expect("digest");
        assert_eq!(algorithm_of(&c), Some(Algorithm::Sha256));
        let ha1 = hex::encode(Sha256::digest(b"Mufasa:http-auth@example.org:Circle of Life"));
        assert_eq!(expected_response(Algorithm::Sha256, &ha1, "GET", &c), c.response);
    }

    #[test]
    fn nonces_expire() {
        let issuer = NonceIssuer::new([3; 32], 300);
        let nonce = issuer.issue(1000, "r");
        assert_eq!(issuer.check(&nonce, 1000, "r"), NonceState::Valid);
        assert_eq!(issuer.check(&nonce, 1300, "r"), NonceState::Stale);
        assert_eq!(issuer.check(&nonce, 1000, "other"), NonceState::Invalid);
        assert_eq!(issuer.check("x", 1000, "r"), NonceState::Invalid);
        assert!(issuer.challenges(1000, "r", true, &[Algorithm::Md5, Algorithm::Sha256])[0].contains("algorithm=MD5"));
        assert!(
            issuer.challenges(1000, "r", true, &[Algorithm::Md5, Algorithm::Sha256])[1]
                .contains("algorithm=SHA-256, qop=\"auth\", stale=true")
        );
    }

    #[test]
    fn not_digest_is_none() {
        assert_eq!(parse_credentials("Basic abc"), None);
        assert_eq!(parse_credentials("Dig"), None);
    }

    #[test]
    fn rfc2617_client_example() {
        // RFC 2617 §3.5 (HTTP, but the computation is the same): Mufasa and "Circle Of Life".
        let challenge = "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", \
nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"";
        let value = client_authorization(challenge, "GET", "/dir/index.html", "Mufasa", "Circle Of Life", "0a4f113b")
            .expect("answerable");
        assert!(value.contains("response=\"6629fae49393a05397450978507c4ef1\""), "{value}");
        assert!(
            value.contains("opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"") && value.contains("qop=auth, nc=00000001")
        );
        assert_eq!(
            client_authorization(
                "Digest realm=\"r\", nonce=\"n\", algorithm=AKAv1-MD5",
                "INVITE",
                "sip:x",
                "u",
                "p",
                "c"
            ),
            None
        );
        assert_eq!(client_authorization("Basic realm=\"r\"", "INVITE", "sip:x", "u", "p", "c"), None);
    }
}
