//! Long-term credentials (RFC 8489 §9.2), TURN REST ephemeral credentials
//! (coturn's `use-auth-secret`, draft-uberti-behave-turn-rest) and the
//! server's stateless nonces.

use std::net::IpAddr;

use base64::Engine;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use sha2::Sha256;

/// `MD5(username:realm:password)`: the RFC 5389/8489 long-term key.
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    Md5::digest(format!("{username}:{realm}:{password}").as_bytes()).into()
}

/// `SHA-256(username:realm:password)`: the key for PASSWORD-ALGORITHM SHA-256.
pub fn long_term_key_sha256(username: &str, realm: &str, password: &str) -> [u8; 32] {
    Sha256::digest(format!("{username}:{realm}:{password}").as_bytes()).into()
}

/// USERHASH (RFC 8489 §14.4): `SHA-256(username:realm)`.
pub fn userhash(username: &str, realm: &str) -> [u8; 32] {
    Sha256::digest(format!("{username}:{realm}").as_bytes()).into()
}

/// The TURN REST password of `username`: `base64(HMAC-SHA1(secret, username))`.
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The expiry (Unix seconds) of a TURN REST username `expiry[:user]`.
pub fn rest_expiry(username: &str) -> Option<u64> {
    username.split(':').next()?.parse().ok()
}

/// A REST username and password for `user`, valid for `ttl_seconds` from `now_unix`.
pub fn rest_credential(secret: &[u8], user: &str, now_unix: u64, ttl_seconds: u64) -> (String, String) {
    let username = format!("{}:{user}", now_unix + ttl_seconds);
    let password = rest_password(secret, &username);
    (username, password)
}

/// Verdict on a NONCE a client sent back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    /// Ours, but expired: answer 438 with a fresh one.
    Stale,
    /// Not ours (or for another client address).
    Invalid,
}

/// Nonces that need no server state: `<expiry hex>-<HMAC(secret, expiry|client ip)>`.
#[derive(Clone)]
pub struct Nonces {
    secret: [u8; 32],
    lifetime_secs: u64,
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nonces").field("lifetime_secs", &self.lifetime_secs).finish_non_exhaustive()
    }
}

impl Nonces {
    pub fn new(secret: [u8; 32], lifetime_secs: u64) -> Self {
        Nonces { secret, lifetime_secs }
    }

    /// An unguessable 8-byte token (RESERVATION-TOKEN) from a counter.
    pub fn token(&self, counter: u64) -> [u8; 8] {
        let mut token = [0u8; 8];
        if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.secret) {
            mac.update(b"reservation");
            mac.update(&counter.to_be_bytes());
            token.copy_from_slice(&mac.finalize().into_bytes()[..8]);
        }
        token
    }

    pub fn secret(&self) -> [u8; 32] {
        self.secret
    }

    fn tag(&self, expiry: u64, client: IpAddr) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.secret) else {
            return String::new();
        };
        mac.update(&expiry.to_be_bytes());
        match client {
            IpAddr::V4(v4) => mac.update(&v4.octets()),
            IpAddr::V6(v6) => mac.update(&v6.octets()),
        }
        hex::encode(&mac.finalize().into_bytes()[..12])
    }

    pub fn issue(&self, now_secs: u64, client: IpAddr) -> String {
        let expiry = now_secs + self.lifetime_secs;
        format!("{expiry:x}-{}", self.tag(expiry, client))
    }

    pub fn check(&self, nonce: &str, now_secs: u64, client: IpAddr) -> NonceCheck {
        let Some((expiry_hex, tag)) = nonce.split_once('-') else {
            return NonceCheck::Invalid;
        };
        let Ok(expiry) = u64::from_str_radix(expiry_hex, 16) else {
            return NonceCheck::Invalid;
        };
        let expected = self.tag(expiry, client);
        if expected.len() != tag.len() || expected.bytes().zip(tag.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) != 0 {
            NonceCheck::Invalid
        } else if now_secs >= expiry {
            NonceCheck::Stale
        } else {
            NonceCheck::Valid
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_credentials_match_coturns_formula() {
        // base64(HMAC-SHA1("secret", "1700000000:alice")), computed independently with openssl:
        // printf 1700000000:alice | openssl dgst -sha1 -hmac secret -binary | base64
        assert_eq!(rest_password(b"secret", "1700000000:alice"), "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
        assert_eq!(rest_expiry("1700000000:alice"), Some(1_700_000_000));
        assert_eq!(rest_expiry("1700000000"), Some(1_700_000_000));
        assert_eq!(rest_expiry("alice"), None);
        let (user, pass) = rest_credential(b"secret", "bob", 100, 60);
        assert_eq!(user, "160:bob");
        assert_eq!(pass, rest_password(b"secret", "160:bob"));
    }

    #[test]
    fn nonces_expire_and_are_bound_to_the_client() {
        let nonces = Nonces::new([9; 32], 600);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let nonce = nonces.issue(1000, a);
        assert_eq!(nonces.check(&nonce, 1000, a), NonceCheck::Valid);
        assert_eq!(nonces.check(&nonce, 1599, a), NonceCheck::Valid);
        assert_eq!(nonces.check(&nonce, 1600, a), NonceCheck::Stale);
        assert_eq!(nonces.check(&nonce, 1000, b), NonceCheck::Invalid);
        assert_eq!(nonces.check("garbage", 1000, a), NonceCheck::Invalid);
        assert_eq!(nonces.check("zz-00", 1000, a), NonceCheck::Invalid);
    }
}
