//! Long-term credentials (RFC 8489 §9.2), TURN REST ephemeral credentials
//! (coturn's `use-auth-secret`, draft-uberti-behave-turn-rest) and the
//! server's stateless nonces.

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

pub use branchgate_nonce::{NonceState as NonceCheck, Nonces};

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
}
