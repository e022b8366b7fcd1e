//! Turning an incoming configuration into a storable one: plain-text passwords
//! are hashed, "keep" placeholders take the stored value, and a redacted copy
//! can be made for display or export.

use crate::schema::Config;
use crate::secret::{HashedSecret, PlainSecret, SecretState};
use crate::validate::FieldError;

/// What a copy of the configuration leaves out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Redaction {
    /// Every secret reads as [`crate::REDACTED`]: for the UI and `GET /api/v1/config`.
    All,
    /// Hashes are kept, plain secrets redacted: a backup that restores logins.
    PlainSecrets,
    /// Nothing left out: an explicit full export, and the last-known-good copy.
    None,
}

fn seal_login(new: &mut HashedSecret, previous: Option<&HashedSecret>, path: &str, errors: &mut Vec<FieldError>) {
    match new.state() {
        SecretState::Keep => match previous {
            Some(prev) => *new = prev.clone(),
            None => *new = HashedSecret::default(),
        },
        SecretState::Argon2 => {}
        SecretState::Digest => errors.push(FieldError::new(path, "expected a password, not a digest key")),
        SecretState::Plain => match HashedSecret::argon2(new.as_str()) {
            Ok(hash) => *new = hash,
            Err(e) => errors.push(FieldError::new(path, format!("cannot hash the password: {e}"))),
        },
    }
}

fn seal_digest(new: &mut HashedSecret, previous: Option<&HashedSecret>, username: &str, realm: &str) {
    match new.state() {
        SecretState::Keep => *new = previous.cloned().unwrap_or_default(),
        SecretState::Digest => {}
        // An argon2 hash cannot serve digest authentication; the plain text is
        // hashed as a digest key. Validation reports a missing or stale key.
        SecretState::Argon2 | SecretState::Plain => {
            *new = HashedSecret::digest(username, realm, new.as_str());
        }
    }
}

fn seal_plain(new: &mut Option<PlainSecret>, previous: Option<&PlainSecret>) {
    if new.as_ref().is_some_and(PlainSecret::is_keep) {
        *new = previous.cloned();
    }
}

impl Config {
    /// Hashes plain-text passwords and resolves "keep" placeholders against
    /// `previous` (users are matched by username, trunks by name).
    pub fn seal(&mut self, previous: &Config) -> Vec<FieldError> {
        let mut errors = Vec::new();
        seal_login(&mut self.admin.password, Some(&previous.admin.password), "admin.password", &mut errors);
        for (i, user) in self.admin.users.iter_mut().enumerate() {
            let prev = previous.admin.users.iter().find(|u| u.username == user.username);
            seal_login(
                &mut user.password,
                prev.map(|u| &u.password),
                &format!("admin.users[{i}].password"),
                &mut errors,
            );
        }
        let domain = self.sip.domain.clone();
        for user in &mut self.sip.users {
            let prev = previous.sip.users.iter().find(|u| u.username == user.username);
            seal_digest(&mut user.password, prev.map(|u| &u.password), &user.username, &domain);
        }
        for trunk in &mut self.sip.trunks {
            let prev = previous.sip.trunks.iter().find(|t| t.name == trunk.name);
            seal_plain(&mut trunk.password, prev.and_then(|t| t.password.as_ref()));
        }
        let realm = self.turn.realm.clone();
        for user in &mut self.turn.users {
            let prev = previous.turn.users.iter().find(|u| u.username == user.username);
            seal_digest(&mut user.password, prev.map(|u| &u.password), &user.username, &realm);
        }
        seal_plain(&mut self.turn.auth_secret, previous.turn.auth_secret.as_ref());
        seal_plain(&mut self.update.hawkbit_target_token, previous.update.hawkbit_target_token.as_ref());
        seal_plain(&mut self.admin.tls_private_key, previous.admin.tls_private_key.as_ref());
        errors
    }

    /// A copy for display or export.
    pub fn redacted(&self, redaction: Redaction) -> Config {
        let mut copy = self.clone();
        if redaction == Redaction::None {
            return copy;
        }
        let redact_plain = |secret: &mut Option<PlainSecret>| {
            if let Some(s) = secret {
                *s = s.redacted();
            }
        };
        for trunk in &mut copy.sip.trunks {
            redact_plain(&mut trunk.password);
        }
        redact_plain(&mut copy.turn.auth_secret);
        redact_plain(&mut copy.update.hawkbit_target_token);
        redact_plain(&mut copy.admin.tls_private_key);
        if redaction == Redaction::All {
            copy.admin.password = copy.admin.password.redacted();
            for user in &mut copy.admin.users {
                user.password = user.password.redacted();
            }
            for user in &mut copy.sip.users {
                user.password = user.password.redacted();
            }
            for user in &mut copy.turn.users {
                user.password = user.password.redacted();
            }
        }
        copy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::REDACTED;

    fn stored() -> Config {
        let mut config = Config::example();
        config.admin.password = HashedSecret::new("first admin password");
        let errors = config.seal(&Config::default());
        assert!(errors.is_empty(), "{errors:?}");
        config
    }

    #[test]
    fn plain_passwords_are_hashed_and_never_stored() {
        let config = stored();
        let text = serde_json::to_string(&config).expect("json");
        assert!(!text.contains("first admin password"));
        assert!(!text.contains("secret1001"));
        assert!(config.admin.password.verify_argon2("first admin password"));
        let key = config.sip.users[0].password.digest_key().expect("digest");
        assert_eq!(key.realm, config.sip.domain);
        assert!(config.validate().is_empty(), "{:?}", config.validate());
    }

    #[test]
    fn redacted_values_keep_what_is_stored() {
        let previous = stored();
        let mut edited = previous.redacted(Redaction::All);
        assert_eq!(edited.admin.password.as_str(), REDACTED);
        assert_eq!(edited.sip.trunks[0].password.as_ref().map(PlainSecret::expose), Some(REDACTED));
        edited.sip.domain = previous.sip.domain.clone();
        assert!(edited.seal(&previous).is_empty());
        assert_eq!(edited, previous);
    }

    #[test]
    fn a_realm_change_asks_for_the_password_again() {
        let previous = stored();
        let mut edited = previous.redacted(Redaction::All);
        edited.sip.domain = "other.example".into();
        assert!(edited.seal(&previous).is_empty());
        let errors = edited.validate();
        assert!(errors.iter().any(|e| e.path == "sip.users[0].password"), "{errors:?}");
    }

    #[test]
    fn export_keeps_hashes_but_not_plain_secrets() {
        let config = stored();
        let export = config.redacted(Redaction::PlainSecrets);
        assert_eq!(export.admin.password, config.admin.password);
        assert_eq!(export.turn.auth_secret.as_ref().map(PlainSecret::expose), Some(REDACTED));
    }
}
