//! Secrets in the configuration and how they are kept.
//!
//! Two kinds exist:
//! - [`HashedSecret`]: passwords the box only has to *check* (admin logins,
//!   SIP and TURN users). They arrive in plain text and are stored hashed:
//!   argon2id for logins, the RFC 2617/8760 and RFC 8489 long-term key
//!   (`H(user:realm:password)` with MD5 and SHA-256) for digest and TURN users.
//! - [`PlainSecret`]: secrets the box has to *use* (its trunk password, the
//!   TURN REST secret, its TLS key). They are stored as given and only leave
//!   the box redacted, unless an export explicitly asks for them.
//!
//! Either kind given as [`REDACTED`] (or left empty) means "keep the stored value",
//! so a document read from the API can be edited and written back.

use std::fmt;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use md5::Md5;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a secret reads as when it is not disclosed.
pub const REDACTED: &str = "********";

const DIGEST_PREFIX: &str = "$digest$";

/// A password that is stored only as a hash. See the module documentation.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HashedSecret(String);

/// A secret that is stored as given and redacted on the way out.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PlainSecret(String);

impl fmt::Debug for HashedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.state() {
            SecretState::Keep => "HashedSecret(keep)",
            SecretState::Argon2 => "HashedSecret(argon2)",
            SecretState::Digest => "HashedSecret(digest)",
            SecretState::Plain => "HashedSecret(plain)",
        })
    }
}

impl fmt::Debug for PlainSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlainSecret(..)")
    }
}

/// How a [`HashedSecret`] value reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretState {
    /// Empty or [`REDACTED`]: keep what is stored.
    Keep,
    /// An argon2 PHC string.
    Argon2,
    /// A digest key (`$digest$...`).
    Digest,
    /// Plain text still to be hashed.
    Plain,
}

impl HashedSecret {
    /// A secret given in plain text (hashed when the configuration is sealed).
    pub fn new(plain: impl Into<String>) -> Self {
        HashedSecret(plain.into())
    }

    pub fn state(&self) -> SecretState {
        if self.0.is_empty() || self.0 == REDACTED {
            SecretState::Keep
        } else if self.0.starts_with("$argon2")
            && PasswordHash::new(&self.0).is_ok_and(|h| h.hash.is_some() && h.salt.is_some())
        {
            SecretState::Argon2
        } else if DigestKey::parse(&self.0).is_some() {
            SecretState::Digest
        } else {
            SecretState::Plain
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn redacted(&self) -> HashedSecret {
        if self.0.is_empty() { HashedSecret::default() } else { HashedSecret(REDACTED.into()) }
    }

    /// Argon2id hash of `plain`.
    pub fn argon2(plain: &str) -> Result<HashedSecret, argon2::password_hash::Error> {
        let salt = SaltString::generate(&mut OsRng);
        let hash = argon2::Argon2::default().hash_password(plain.as_bytes(), &salt)?;
        Ok(HashedSecret(hash.to_string()))
    }

    /// Checks a login password against a stored argon2 hash.
    pub fn verify_argon2(&self, plain: &str) -> bool {
        match PasswordHash::new(&self.0) {
            Ok(hash) => argon2::Argon2::default().verify_password(plain.as_bytes(), &hash).is_ok(),
            Err(_) => false,
        }
    }

    /// The digest key of `username` in `realm`.
    pub fn digest(username: &str, realm: &str, plain: &str) -> HashedSecret {
        HashedSecret(DigestKey::derive(username, realm, plain).to_string())
    }

    pub fn digest_key(&self) -> Option<DigestKey> {
        DigestKey::parse(&self.0)
    }
}

impl PlainSecret {
    pub fn new(value: impl Into<String>) -> Self {
        PlainSecret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when the value means "keep what is stored".
    pub fn is_keep(&self) -> bool {
        self.0 == REDACTED
    }

    pub fn redacted(&self) -> PlainSecret {
        PlainSecret(REDACTED.into())
    }
}

/// `H(username:realm:password)` with MD5 (RFC 2617 HA1, RFC 8489 long-term key)
/// and with SHA-256 (RFC 8760, RFC 8489 `PASSWORD-ALGORITHM` SHA-256).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestKey {
    pub realm: String,
    pub md5: [u8; 16],
    pub sha256: [u8; 32],
}

impl DigestKey {
    pub fn derive(username: &str, realm: &str, plain: &str) -> DigestKey {
        let input = format!("{username}:{realm}:{plain}");
        DigestKey {
            realm: realm.to_string(),
            md5: Md5::digest(input.as_bytes()).into(),
            sha256: Sha256::digest(input.as_bytes()).into(),
        }
    }

    /// Parses `$digest$md5=<hex>$sha256=<hex>$realm=<realm>`; the realm comes
    /// last so that it may contain any character.
    pub fn parse(text: &str) -> Option<DigestKey> {
        let rest = text.strip_prefix(DIGEST_PREFIX)?;
        let (md5_part, rest) = rest.split_once('$')?;
        let (sha_part, realm_part) = rest.split_once('$')?;
        let mut md5 = [0u8; 16];
        hex::decode_to_slice(md5_part.strip_prefix("md5=")?, &mut md5).ok()?;
        let mut sha256 = [0u8; 32];
        hex::decode_to_slice(sha_part.strip_prefix("sha256=")?, &mut sha256).ok()?;
        let realm = realm_part.strip_prefix("realm=")?.to_string();
        Some(DigestKey { realm, md5, sha256 })
    }
}

impl fmt::Display for DigestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{DIGEST_PREFIX}md5={}$sha256={}$realm={}",
            hex::encode(self.md5),
            hex::encode(self.sha256),
            self.realm
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_2617_ha1_for_the_mufasa_example() {
        // RFC 2617 section 3.5: HA1 = MD5("Mufasa:testrealm@host.com:Circle Of Life").
        let key = DigestKey::derive("Mufasa", "testrealm@host.com", "Circle Of Life");
        assert_eq!(hex::encode(key.md5), "939e7578ed9e3c518a452acee763bce9");
    }

    #[test]
    fn digest_key_round_trips_through_text() {
        let key = DigestKey::derive("1001", "realm$with$dollars", "pw");
        let parsed = DigestKey::parse(&key.to_string());
        assert_eq!(parsed, Some(key));
    }

    #[test]
    fn states_are_recognised() {
        assert_eq!(HashedSecret::new("").state(), SecretState::Keep);
        assert_eq!(HashedSecret::new(REDACTED).state(), SecretState::Keep);
        assert_eq!(HashedSecret::new("hunter2").state(), SecretState::Plain);
        assert_eq!(HashedSecret::new("$argon2id$nonsense").state(), SecretState::Plain);
        assert_eq!(HashedSecret::digest("a", "b", "c").state(), SecretState::Digest);
        let hashed = HashedSecret::argon2("correct horse").expect("hash");
        assert_eq!(hashed.state(), SecretState::Argon2);
        assert!(hashed.verify_argon2("correct horse"));
        assert!(!hashed.verify_argon2("wrong"));
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let text = format!("{:?} {:?}", HashedSecret::new("hunter2"), PlainSecret::new("hunter2"));
        assert!(!text.contains("hunter2"));
    }
}
