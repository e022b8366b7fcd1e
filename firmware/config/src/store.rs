//! The configuration store: immutable revisions in sled, the current one
//! published to running services through a `watch` channel.
//!
//! Durability: sled's `flush` is not an fsync (sled issue #1452) and sled has
//! been seen to panic on a damaged directory, so every applied revision is also
//! written to a last-known-good JSON file with write-temp + fsync + rename +
//! fsync(dir); when sled cannot open, the directory is moved aside and the box
//! starts from that copy.
//!
//! Time is always passed in (`now_ms`, Unix milliseconds) so that confirm
//! deadlines can be tested with virtual time.

use std::fs::{File, TryLockError};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use tokio::sync::watch;

use crate::ConfigError;
use crate::document::{SCHEMA_VERSION, config_from_value, to_document, typed};
use crate::durable::write_atomically;
use crate::schema::Config;
use crate::seal::Redaction;
use crate::validate::FieldError;

pub(crate) const SLED_DIR: &str = "config.sled";
pub(crate) const LKG_FILE: &str = "config-lkg.json";
pub(crate) const LOCK_FILE: &str = "branchgate.lock";
const KEY_CURRENT: &[u8] = b"current";
const KEY_PENDING: &[u8] = b"pending";
const KEY_SCHEMA: &[u8] = b"schema_version";
const KEY_PROVISIONED: &[u8] = b"provisioned";
/// sled's page cache: the whole configuration history is a few hundred KiB.
const CACHE_BYTES: u64 = 4 * 1024 * 1024;
/// Audit entries kept; older ones are dropped.
const AUDIT_LIMIT: usize = 10_000;

/// The configuration services run with.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// 0 only before the first revision exists.
    pub revision: u64,
    pub config: Config,
}

/// Who made a revision, when and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RevisionInfo {
    pub revision: u64,
    pub time_ms: u64,
    pub author: String,
    pub comment: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct StoredRevision {
    #[serde(flatten)]
    info: RevisionInfo,
    schema_version: u32,
    config: Value,
}

/// A revision with its configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Revision {
    pub info: RevisionInfo,
    pub config: Config,
}

/// A change that rolls back by itself at `deadline_ms` unless confirmed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingConfirm {
    pub revision: u64,
    /// The revision restored when the deadline passes.
    pub previous_revision: u64,
    pub deadline_ms: u64,
    pub author: String,
}

/// Whether a change waits for the installer's confirmation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirm {
    /// Only when the change may cut the installer off (see [`Config::may_cut_off_installer`]),
    /// for `admin.confirm_timeout_seconds` of the configuration in force.
    IfRisky,
    /// Always, for `timeout_ms`.
    Always { timeout_ms: u64 },
    /// Never (provisioning, automatic rollback).
    Never,
}

#[derive(Clone, Debug)]
pub struct ApplyOptions {
    pub author: String,
    pub comment: String,
    pub confirm: Confirm,
}

impl ApplyOptions {
    pub fn new(author: impl Into<String>, comment: impl Into<String>) -> Self {
        ApplyOptions { author: author.into(), comment: comment.into(), confirm: Confirm::IfRisky }
    }

    pub fn confirm(mut self, confirm: Confirm) -> Self {
        self.confirm = confirm;
        self
    }
}

/// What a commit does to the pending confirmation.
enum PendingWrite {
    Keep,
    Set(PendingConfirm),
    Clear,
}

/// What an apply did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ApplyOutcome {
    pub revision: u64,
    /// False when the candidate equalled the current configuration (no new revision).
    pub changed: bool,
    pub pending_confirm: Option<PendingConfirm>,
}

/// One line of the audit log: every change and every login.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub time_ms: u64,
    pub user: String,
    pub peer: Option<String>,
    pub action: String,
    pub detail: String,
}

pub struct ConfigStore {
    db: sled::Db,
    revisions: sled::Tree,
    audit: sled::Tree,
    lkg_path: PathBuf,
    write_lock: Mutex<()>,
    publisher: watch::Sender<Arc<Snapshot>>,
    recovery_notice: Option<String>,
    /// The factory reset this start carried out, if one was pending.
    factory_reset: Option<crate::FactoryResetDone>,
    /// Held for the store's lifetime: one process per data directory.
    _lock: File,
}

impl std::fmt::Debug for ConfigStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigStore").field("lkg_path", &self.lkg_path).finish_non_exhaustive()
    }
}

/// Takes the data directory's lock so that a second daemon on the same
/// directory fails clearly instead of being mistaken for a damaged database.
fn lock_data_dir(data_dir: &Path) -> Result<File, ConfigError> {
    let path = data_dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ConfigError::Storage(format!("{}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(ConfigError::Locked(data_dir.display().to_string())),
        Err(TryLockError::Error(e)) => Err(ConfigError::Storage(format!("{}: {e}", path.display()))),
    }
}

fn sled_err(e: sled::Error) -> ConfigError {
    ConfigError::Storage(e.to_string())
}

fn decode_u64(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_be_bytes)
}

/// Why the database could not be opened.
enum OpenFailure {
    /// The files are damaged: recover from the last-known-good copy.
    Damaged(String),
    /// The environment is wrong (permissions, full disk): recovering would not help
    /// and moving the directory aside would lose data.
    Environment(String),
}

/// Opens sled, turning a panic inside sled (seen on damaged directories) into an error.
fn open_sled(path: &Path) -> Result<sled::Db, OpenFailure> {
    match catch_unwind(AssertUnwindSafe(|| sled::Config::new().path(path).cache_capacity(CACHE_BYTES).open())) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(sled::Error::Io(e))) => Err(OpenFailure::Environment(e.to_string())),
        Ok(Err(e)) => Err(OpenFailure::Damaged(e.to_string())),
        Err(_) => Err(OpenFailure::Damaged("the database library panicked while opening it".into())),
    }
}

impl ConfigStore {
    /// Opens (or creates) the store in `data_dir`, recovering from the
    /// last-known-good copy when the database is damaged.
    pub fn open(data_dir: &Path, now_ms: u64) -> Result<ConfigStore, ConfigError> {
        std::fs::create_dir_all(data_dir).map_err(|e| ConfigError::Storage(format!("{}: {e}", data_dir.display())))?;
        let lock = lock_data_dir(data_dir)?;
        // With the lock held and before anything opens the files it removes.
        let factory_reset = crate::factory_reset::apply_pending(data_dir)
            .map_err(|e| ConfigError::Storage(format!("factory reset of {}: {e}", data_dir.display())))?;
        let sled_path = data_dir.join(SLED_DIR);
        let lkg_path = data_dir.join(LKG_FILE);
        let mut store = match Self::open_checked(&sled_path, &lkg_path, lock) {
            Ok(store) => store,
            Err((OpenFailure::Environment(reason), _)) => return Err(ConfigError::Storage(reason)),
            Err((OpenFailure::Damaged(reason), lock)) => {
                let aside = data_dir.join(format!("{SLED_DIR}.damaged-{now_ms}"));
                tracing::error!(%reason, aside = %aside.display(), "configuration database damaged; moving it aside");
                if sled_path.exists() {
                    std::fs::rename(&sled_path, &aside)
                        .map_err(|e| ConfigError::Storage(format!("moving the damaged database aside: {e}")))?;
                }
                let mut store =
                    Self::open_checked(&sled_path, &lkg_path, lock).map_err(|(failure, _)| match failure {
                        OpenFailure::Damaged(e) | OpenFailure::Environment(e) => ConfigError::Storage(e),
                    })?;
                store.recovery_notice = Some(store.restore_from_lkg(&reason, now_ms)?);
                store
            }
        };
        store.factory_reset = factory_reset;
        Ok(store)
    }

    fn open_checked(sled_path: &Path, lkg_path: &Path, lock: File) -> Result<ConfigStore, (OpenFailure, File)> {
        let db = match open_sled(sled_path) {
            Ok(db) => db,
            Err(failure) => return Err((failure, lock)),
        };
        let trees = db.open_tree("revisions").and_then(|revisions| Ok((revisions, db.open_tree("audit")?)));
        let (revisions, audit) = match trees {
            Ok(trees) => trees,
            Err(e) => return Err((OpenFailure::Damaged(e.to_string()), lock)),
        };
        let (publisher, _) = watch::channel(Arc::new(Snapshot { revision: 0, config: Config::default() }));
        let store = ConfigStore {
            db,
            revisions,
            audit,
            lkg_path: lkg_path.to_path_buf(),
            write_lock: Mutex::new(()),
            publisher,
            recovery_notice: None,
            factory_reset: None,
            _lock: lock,
        };
        let current = match catch_unwind(AssertUnwindSafe(|| store.load_current())) {
            Ok(Ok(current)) => current,
            // A document this firmware cannot read (a newer schema after a downgrade) is not
            // damage: moving the database aside would lose it.
            Ok(Err(e @ ConfigError::Document(_))) => {
                return Err((OpenFailure::Environment(e.to_string()), store._lock));
            }
            Ok(Err(e)) => return Err((OpenFailure::Damaged(e.to_string()), store._lock)),
            Err(_) => {
                return Err((OpenFailure::Damaged("the database library panicked while reading".into()), store._lock));
            }
        };
        if let Some(snapshot) = current {
            store.publisher.send_replace(Arc::new(snapshot));
        }
        Ok(store)
    }

    fn restore_from_lkg(&self, reason: &str, now_ms: u64) -> Result<String, ConfigError> {
        let bytes = match std::fs::read(&self.lkg_path) {
            Ok(bytes) => bytes,
            Err(e) => {
                return Ok(format!(
                    "The configuration database could not be opened ({reason}) and no last-known-good copy was readable ({e}); the box started with defaults."
                ));
            }
        };
        let stored: StoredRevision = serde_json::from_slice(&bytes)
            .map_err(|e| ConfigError::Storage(format!("last-known-good copy unreadable: {e}")))?;
        let config = migrate_stored(&stored)?;
        let revision = stored.info.revision;
        let info = RevisionInfo {
            revision,
            time_ms: now_ms,
            author: "system".into(),
            comment: format!("restored from the last-known-good copy of revision {revision}"),
        };
        self.commit(&info, &config, &PendingWrite::Clear)?;
        Ok(format!(
            "The configuration database could not be opened ({reason}); revision {revision} was restored from the last-known-good copy. History before it is in the damaged copy only."
        ))
    }

    /// Set when [`ConfigStore::open`] had to recover; the dashboard shows it.
    /// The factory reset this start carried out (the data directory was wiped before opening).
    pub fn factory_reset(&self) -> Option<&crate::FactoryResetDone> {
        self.factory_reset.as_ref()
    }

    pub fn recovery_notice(&self) -> Option<&str> {
        self.recovery_notice.as_deref()
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.write_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn load_revision_raw(&self, revision: u64) -> Result<Option<StoredRevision>, ConfigError> {
        let Some(bytes) = self.revisions.get(revision.to_be_bytes()).map_err(sled_err)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ConfigError::Storage(format!("revision {revision} is unreadable: {e}")))
    }

    fn load_current(&self) -> Result<Option<Snapshot>, ConfigError> {
        let Some(current) = self.db.get(KEY_CURRENT).map_err(sled_err)? else {
            return Ok(None);
        };
        let revision =
            decode_u64(&current).ok_or_else(|| ConfigError::Storage("current revision pointer is damaged".into()))?;
        let stored = self
            .load_revision_raw(revision)?
            .ok_or_else(|| ConfigError::Storage(format!("current revision {revision} is missing")))?;
        Ok(Some(Snapshot { revision, config: migrate_stored(&stored)? }))
    }

    /// The current configuration.
    pub fn current(&self) -> Arc<Snapshot> {
        self.publisher.borrow().clone()
    }

    /// A receiver that sees every applied revision.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.publisher.subscribe()
    }

    /// True until the first revision is written.
    pub fn is_empty(&self) -> bool {
        self.current().revision == 0
    }

    /// Whether a provisioning file was already applied (it is applied once).
    pub fn provisioned(&self) -> bool {
        matches!(self.db.get(KEY_PROVISIONED), Ok(Some(_)))
    }

    pub fn mark_provisioned(&self) -> Result<(), ConfigError> {
        self.db.insert(KEY_PROVISIONED, &[1u8]).map_err(sled_err)?;
        self.db.flush().map_err(sled_err)?;
        Ok(())
    }

    /// Seals, validates and applies `candidate` as a new revision.
    pub fn apply(
        &self,
        mut candidate: Config,
        options: ApplyOptions,
        now_ms: u64,
    ) -> Result<ApplyOutcome, ConfigError> {
        let _guard = self.lock();
        let current = self.current();
        let mut errors = candidate.seal(&current.config);
        errors.extend(candidate.validate());
        if !errors.is_empty() {
            return Err(ConfigError::Invalid(errors));
        }
        self.apply_locked(&current, candidate, options, now_ms)
    }

    fn apply_locked(
        &self,
        current: &Snapshot,
        candidate: Config,
        options: ApplyOptions,
        now_ms: u64,
    ) -> Result<ApplyOutcome, ConfigError> {
        let pending_now = self.pending();
        if current.revision != 0 && candidate == current.config {
            return Ok(ApplyOutcome { revision: current.revision, changed: false, pending_confirm: pending_now });
        }
        let revision = current.revision + 1;
        let timeout = match options.confirm {
            Confirm::Never => None,
            Confirm::Always { timeout_ms } => Some(timeout_ms),
            Confirm::IfRisky => (current.revision != 0 && current.config.may_cut_off_installer(&candidate))
                .then_some(u64::from(current.config.admin.confirm_timeout_seconds) * 1000),
        };
        let pending_write = match (timeout, options.confirm) {
            // A second risky change while one is pending keeps the original way back.
            (Some(timeout_ms), _) => PendingWrite::Set(PendingConfirm {
                revision,
                previous_revision: pending_now.as_ref().map_or(current.revision, |p| p.previous_revision),
                deadline_ms: now_ms.saturating_add(timeout_ms),
                author: options.author.clone(),
            }),
            (None, Confirm::Never) => PendingWrite::Clear,
            (None, _) => PendingWrite::Keep,
        };
        let pending_after = match &pending_write {
            PendingWrite::Set(p) => Some(p.clone()),
            PendingWrite::Clear => None,
            PendingWrite::Keep => pending_now,
        };
        let info = RevisionInfo { revision, time_ms: now_ms, author: options.author, comment: options.comment };
        self.commit(&info, &candidate, &pending_write)?;
        Ok(ApplyOutcome { revision, changed: true, pending_confirm: pending_after })
    }

    /// Writes one revision and moves the current pointer in one transaction,
    /// then makes it durable and tells the services.
    fn commit(&self, info: &RevisionInfo, config: &Config, pending: &PendingWrite) -> Result<(), ConfigError> {
        let stored = StoredRevision {
            info: info.clone(),
            schema_version: SCHEMA_VERSION,
            config: serde_json::to_value(config).map_err(|e| ConfigError::Storage(e.to_string()))?,
        };
        let revision_bytes = serde_json::to_vec(&stored).map_err(|e| ConfigError::Storage(e.to_string()))?;
        let pending_bytes = match pending {
            PendingWrite::Set(p) => Some(serde_json::to_vec(p).map_err(|e| ConfigError::Storage(e.to_string()))?),
            PendingWrite::Keep | PendingWrite::Clear => None,
        };
        let clear_pending = matches!(pending, PendingWrite::Clear);
        let key = info.revision.to_be_bytes();
        let meta: &sled::Tree = &self.db;
        (meta, &self.revisions)
            .transaction(|(meta, revisions)| {
                revisions.insert(&key, revision_bytes.as_slice())?;
                meta.insert(KEY_CURRENT, &key)?;
                meta.insert(KEY_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
                if let Some(bytes) = &pending_bytes {
                    meta.insert(KEY_PENDING, bytes.as_slice())?;
                } else if clear_pending {
                    meta.remove(KEY_PENDING)?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e: TransactionError<()>| ConfigError::Storage(format!("{e:?}")))?;
        self.db.flush().map_err(sled_err)?;
        write_atomically(&self.lkg_path, &revision_bytes, 0o600)
            .map_err(|e| ConfigError::Storage(format!("writing the last-known-good copy: {e}")))?;
        self.publisher.send_replace(Arc::new(Snapshot { revision: info.revision, config: config.clone() }));
        Ok(())
    }

    /// Replaces the fields of one section that `patch` names, keeping the others.
    pub fn apply_section(
        &self,
        section: &str,
        patch: Value,
        options: ApplyOptions,
        now_ms: u64,
    ) -> Result<ApplyOutcome, ConfigError> {
        let Value::Object(patch) = patch else {
            return Err(ConfigError::Document(format!("the {section} section must be a JSON object")));
        };
        let current = self.current();
        let Ok(Value::Object(mut whole)) = serde_json::to_value(&current.config) else {
            return Err(ConfigError::Storage("cannot serialize the configuration".into()));
        };
        let Some(Value::Object(target)) = whole.get_mut(section) else {
            return Err(ConfigError::UnknownSection(section.to_string()));
        };
        target.extend(patch);
        // Parsing the whole document names failing fields with their full path.
        let candidate: Config = typed(Value::Object(whole))?;
        self.apply(candidate, options, now_ms)
    }

    /// One revision, or `None` when it does not exist.
    pub fn revision(&self, revision: u64) -> Result<Option<Revision>, ConfigError> {
        match self.load_revision_raw(revision)? {
            None => Ok(None),
            Some(stored) => Ok(Some(Revision { config: migrate_stored(&stored)?, info: stored.info })),
        }
    }

    /// The newest `limit` revisions, newest first.
    pub fn history(&self, limit: usize) -> Result<Vec<RevisionInfo>, ConfigError> {
        let mut out = Vec::new();
        for item in self.revisions.iter().rev().take(limit) {
            let (_, bytes) = item.map_err(sled_err)?;
            let stored: StoredRevision =
                serde_json::from_slice(&bytes).map_err(|e| ConfigError::Storage(e.to_string()))?;
            out.push(stored.info);
        }
        Ok(out)
    }

    /// Applies an older revision's configuration as a new revision.
    pub fn restore(&self, revision: u64, author: &str, now_ms: u64) -> Result<ApplyOutcome, ConfigError> {
        let old = self.revision(revision)?.ok_or(ConfigError::NoSuchRevision(revision))?;
        self.apply(old.config, ApplyOptions::new(author, format!("restored revision {revision}")), now_ms)
    }

    pub fn pending(&self) -> Option<PendingConfirm> {
        let bytes = self.db.get(KEY_PENDING).ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// Confirms the pending change; false when nothing was pending.
    /// With `expected`, only that revision is confirmed: an installer confirms
    /// the change they saw, not one another installer made meanwhile.
    pub fn confirm(&self, expected: Option<u64>) -> Result<bool, ConfigError> {
        let _guard = self.lock();
        if let (Some(expected), Some(pending)) = (expected, self.pending())
            && pending.revision != expected
        {
            return Err(ConfigError::Conflict(format!(
                "revision {} is waiting for confirmation, not revision {expected}; look at it first",
                pending.revision
            )));
        }
        let existed = self.db.remove(KEY_PENDING).map_err(sled_err)?.is_some();
        self.db.flush().map_err(sled_err)?;
        Ok(existed)
    }

    /// Rolls an unconfirmed change back once its deadline has passed.
    /// Call it periodically and once at start (the deadline survives restarts).
    pub fn expire_pending(&self, now_ms: u64) -> Result<Option<ApplyOutcome>, ConfigError> {
        let _guard = self.lock();
        let Some(pending) = self.pending() else {
            return Ok(None);
        };
        if now_ms < pending.deadline_ms {
            return Ok(None);
        }
        let previous =
            self.revision(pending.previous_revision)?.ok_or(ConfigError::NoSuchRevision(pending.previous_revision))?;
        let current = self.current();
        // Only what may have cut the installer off goes back; changes made
        // meanwhile elsewhere (a deleted user, a new password) stay.
        let mut candidate = current.config.clone();
        candidate.restore_reachability(&previous.config);
        let options = ApplyOptions::new(
            "system",
            format!("automatic rollback: revision {} was not confirmed in time", pending.revision),
        )
        .confirm(Confirm::Never);
        let outcome = if candidate == current.config {
            self.db.remove(KEY_PENDING).map_err(sled_err)?;
            self.db.flush().map_err(sled_err)?;
            ApplyOutcome { revision: current.revision, changed: false, pending_confirm: None }
        } else {
            self.apply_locked(&current, candidate, options, now_ms)?
        };
        tracing::warn!(
            revision = pending.revision,
            restored = pending.previous_revision,
            "unconfirmed change rolled back"
        );
        Ok(Some(outcome))
    }

    /// The current configuration as a document.
    pub fn export(&self, redaction: Redaction, exported_at: &str) -> Value {
        let current = self.current();
        to_document(&current.config.redacted(redaction), current.revision, exported_at)
    }

    /// Applies a whole document (backup restore). Redacted secrets keep their stored values.
    pub fn import(&self, bytes: &[u8], options: ApplyOptions, now_ms: u64) -> Result<ApplyOutcome, ConfigError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::Document(format!("not valid JSON: {e}")))?;
        let config = config_from_value(value)?;
        self.apply(config, options, now_ms)
    }

    pub fn record_audit(&self, entry: &AuditEntry) {
        let result = (|| -> Result<(), ConfigError> {
            let id = self.db.generate_id().map_err(sled_err)?;
            let bytes = serde_json::to_vec(entry).map_err(|e| ConfigError::Storage(e.to_string()))?;
            self.audit.insert(id.to_be_bytes(), bytes).map_err(sled_err)?;
            if self.audit.len() > AUDIT_LIMIT
                && let Some((key, _)) = self.audit.first().map_err(sled_err)?
            {
                self.audit.remove(key).map_err(sled_err)?;
            }
            self.audit.flush().map_err(sled_err)?;
            Ok(())
        })();
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }

    /// The newest `limit` audit entries, newest first.
    pub fn audit_log(&self, limit: usize) -> Vec<AuditEntry> {
        self.audit
            .iter()
            .rev()
            .take(limit)
            .filter_map(|item| item.ok())
            .filter_map(|(_, bytes)| serde_json::from_slice(&bytes).ok())
            .collect()
    }
}

/// The configuration in the last-known-good copy, read without opening (or
/// locking) the store: for command-line tools next to a running daemon.
pub fn read_last_known_good(data_dir: &Path) -> Result<Config, ConfigError> {
    let path = data_dir.join(LKG_FILE);
    let bytes = std::fs::read(&path).map_err(|e| ConfigError::Storage(format!("{}: {e}", path.display())))?;
    let stored: StoredRevision =
        serde_json::from_slice(&bytes).map_err(|e| ConfigError::Storage(format!("{}: {e}", path.display())))?;
    migrate_stored(&stored)
}

fn migrate_stored(stored: &StoredRevision) -> Result<Config, ConfigError> {
    let mut doc = match &stored.config {
        Value::Object(map) => map.clone(),
        _ => return Err(ConfigError::Storage(format!("revision {} is not an object", stored.info.revision))),
    };
    doc.insert("schema_version".into(), stored.schema_version.into());
    config_from_value(Value::Object(doc))
}

impl Config {
    /// A change that may make the admin UI unreachable for the installer
    /// making it: addresses, admin listeners, the admin certificate.
    pub fn may_cut_off_installer(&self, new: &Config) -> bool {
        self.network != new.network
            || self.admin.tls_certificate != new.admin.tls_certificate
            || self.admin.tls_private_key != new.admin.tls_private_key
    }

    /// Takes back from `known_good` exactly what [`Config::may_cut_off_installer`] compares.
    pub fn restore_reachability(&mut self, known_good: &Config) {
        self.network = known_good.network.clone();
        self.admin.tls_certificate = known_good.admin.tls_certificate.clone();
        self.admin.tls_private_key = known_good.admin.tls_private_key.clone();
    }
}

/// Errors of a validation, as the API returns them.
pub fn field_errors(error: &ConfigError) -> Option<&[FieldError]> {
    match error {
        ConfigError::Invalid(errors) => Some(errors),
        _ => None,
    }
}
