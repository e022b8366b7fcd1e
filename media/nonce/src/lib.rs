//! Nonces that need no server state (SIP digest, RFC 3261 §22; STUN long-term
//! credentials, RFC 8489 §9.2): `<expiry hex><sep><HMAC(secret, expiry|binding)>`.
//! The binding ties a nonce to what it was issued for (a client address, a realm).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Verdict on a nonce a client sent back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceState {
    Valid,
    /// Ours, but expired: challenge again (SIP `stale=true`, STUN 438).
    Stale,
    /// Not ours, or issued for another binding.
    Invalid,
}

#[derive(Clone)]
pub struct Nonces {
    secret: [u8; 32],
    lifetime_secs: u64,
    separator: char,
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nonces").field("lifetime_secs", &self.lifetime_secs).finish_non_exhaustive()
    }
}

impl Nonces {
    /// `separator` between expiry and tag: any character neither hex nor special
    /// in the protocol's quoting (`-` for STUN, `.` for SIP).
    pub fn new(secret: [u8; 32], lifetime_secs: u64, separator: char) -> Self {
        Nonces { secret, lifetime_secs, separator }
    }

    pub fn secret(&self) -> [u8; 32] {
        self.secret
    }

    fn mac(&self, parts: &[&[u8]]) -> Option<Hmac<Sha256>> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).ok()?;
        for part in parts {
            mac.update(part);
        }
        Some(mac)
    }

    fn tag(&self, expiry: u64, binding: &[u8]) -> String {
        self.mac(&[&expiry.to_be_bytes(), binding])
            .map(|mac| hex::encode(&mac.finalize().into_bytes()[..12]))
            .unwrap_or_default()
    }

    pub fn issue(&self, now_secs: u64, binding: &[u8]) -> String {
        let expiry = now_secs + self.lifetime_secs;
        format!("{expiry:x}{}{}", self.separator, self.tag(expiry, binding))
    }

    pub fn check(&self, nonce: &str, now_secs: u64, binding: &[u8]) -> NonceState {
        let Some((expiry, tag)) = nonce.split_once(self.separator) else {
            return NonceState::Invalid;
        };
        let Ok(expiry) = u64::from_str_radix(expiry, 16) else {
            return NonceState::Invalid;
        };
        let expected = self.tag(expiry, binding);
        let same =
            expected.len() == tag.len() && expected.bytes().zip(tag.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0;
        match (same, now_secs < expiry) {
            (false, _) => NonceState::Invalid,
            (true, true) => NonceState::Valid,
            (true, false) => NonceState::Stale,
        }
    }

    /// An unguessable 8-byte token from a counter (e.g. TURN RESERVATION-TOKEN).
    pub fn token(&self, purpose: &[u8], counter: u64) -> [u8; 8] {
        let mut token = [0u8; 8];
        if let Some(mac) = self.mac(&[purpose, &counter.to_be_bytes()]) {
            token.copy_from_slice(&mac.finalize().into_bytes()[..8]);
        }
        token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_expire_and_are_bound() {
        let nonces = Nonces::new([9; 32], 600, '-');
        let nonce = nonces.issue(1000, b"192.0.2.1");
        assert_eq!(nonces.check(&nonce, 1000, b"192.0.2.1"), NonceState::Valid);
        assert_eq!(nonces.check(&nonce, 1599, b"192.0.2.1"), NonceState::Valid);
        assert_eq!(nonces.check(&nonce, 1600, b"192.0.2.1"), NonceState::Stale);
        assert_eq!(nonces.check(&nonce, 1000, b"192.0.2.2"), NonceState::Invalid);
        assert_eq!(nonces.check("garbage", 1000, b"x"), NonceState::Invalid);
        assert_eq!(nonces.check("zz-00", 1000, b"x"), NonceState::Invalid);
        assert_ne!(nonces.token(b"a", 1), nonces.token(b"a", 2));
    }
}
