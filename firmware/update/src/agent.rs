//! The update agent: accepts a bundle (signature, payload, compatible, version) and installs
//! it into the inactive slot in the background, one at a time.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::bundle::{self, BundleError, Keyring, PolicyError};
use crate::manifest::Manifest;
use crate::slots::{InstallState, InstallTracker, SlotBackend};

/// Why a bundle was refused before installing.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

impl AcceptError {
    /// A short, stable reason code: `not_a_bundle`, `bad_signature`, `untrusted`, `tampered`,
    /// `manifest`, `unsupported`, `incompatible`, `downgrade`, `keyring`, ...
    pub fn reason(&self) -> &'static str {
        match self {
            AcceptError::Bundle(e) => e.reason(),
            AcceptError::Policy(e) => e.reason(),
        }
    }

    /// The box's fault (keyring missing, IO), not the bundle's.
    pub fn is_internal(&self) -> bool {
        matches!(self, AcceptError::Bundle(BundleError::Keyring { .. } | BundleError::Io { .. }))
    }
}

/// What the box installs with and into.
#[derive(Debug, Clone)]
pub struct Agent {
    pub backend: Arc<dyn SlotBackend>,
    /// PEM file of the vendor CA certificate(s).
    pub keyring: PathBuf,
    pub compatible: String,
    pub running_version: String,
    pub tracker: InstallTracker,
}

impl Agent {
    /// Verifies the bundle (blocking: reads it whole once) and checks it may be installed here.
    pub fn accept(&self, bundle_path: &Path, allow_downgrade: bool) -> Result<Manifest, AcceptError> {
        // Tell the uploader that a file is no bundle even on a box without a keyring.
        bundle::check_trailer(bundle_path)?;
        let keyring = Keyring::load(&self.keyring)?;
        let manifest = bundle::verify(bundle_path, &keyring)?;
        bundle::check_policy(&manifest, &self.compatible, &self.running_version, allow_downgrade)?;
        Ok(manifest)
    }

    /// Installs an accepted bundle on a thread of its own; the tracker shows progress. The
    /// bundle file is removed afterwards when `remove_after` is set.
    pub fn install_in_background(&self, bundle_path: PathBuf, manifest: Manifest, remove_after: bool) {
        let backend = self.backend.clone();
        let tracker = self.tracker.clone();
        tracker.installing(&manifest.version);
        let spawned = std::thread::Builder::new().name("firmware-install".into()).spawn({
            let tracker = tracker.clone();
            let bundle_path = bundle_path.clone();
            move || {
                let result = backend.install(&bundle_path, &manifest, &mut |p| tracker.progress(p));
                match result {
                    Ok(slot) => {
                        tracing::info!(version = %manifest.version, %slot, "firmware installed; reboot to use it");
                        tracker.done(&slot);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "firmware install failed");
                        tracker.fail(&e.to_string());
                    }
                }
                if remove_after {
                    let _ = std::fs::remove_file(&bundle_path);
                }
            }
        });
        if let Err(e) = spawned {
            tracker.fail(&format!("cannot start the install: {e}"));
            if remove_after {
                let _ = std::fs::remove_file(&bundle_path);
            }
        }
    }

    /// Marks a refused or abandoned upload.
    pub fn refuse(&self, error: &str) {
        self.tracker.fail(error);
    }

    pub fn verifying(&self) {
        self.tracker.set_state(InstallState::Verifying);
    }
}
