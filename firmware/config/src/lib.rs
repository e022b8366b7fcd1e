//! Configuration of the branchgate box: the typed schema, its validation, and
//! the revisioned store that is the single source of truth for every service.

mod diff;
mod document;
mod durable;
mod factory_reset;
mod schema;
mod seal;
mod secret;
mod store;
mod validate;

pub use diff::{Change, diff};
pub use document::{
    MIGRATIONS, Migration, SCHEMA_VERSION, config_from_value, migrate_with, parse_document, to_document,
};
pub use durable::write_atomically;
pub use factory_reset::{FACTORY_RESET_FILE, FactoryReset, FactoryResetDone, request_factory_reset};
pub use schema::*;
pub use seal::Redaction;
pub use secret::{DigestKey, HashedSecret, PlainSecret, REDACTED, SecretState};
pub use store::{
    ApplyOptions, ApplyOutcome, AuditEntry, ConfigStore, Confirm, PendingConfirm, Revision, RevisionInfo, Snapshot,
    field_errors, read_last_known_good,
};
pub use validate::{FieldError, is_hostname, is_username};

/// Everything that can go wrong with configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {}", summarize(.0))]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    Document(String),
    #[error("no configuration section named '{0}'")]
    UnknownSection(String),
    #[error("revision {0} does not exist")]
    NoSuchRevision(u64),
    #[error("{0}")]
    Conflict(String),
    #[error("another branchgate process is using the data directory {0}")]
    Locked(String),
    #[error("configuration storage failed: {0}")]
    Storage(String),
}

fn summarize(errors: &[FieldError]) -> String {
    errors.iter().map(|e| format!("{}: {}", e.path, e.message)).collect::<Vec<_>>().join("; ")
}
