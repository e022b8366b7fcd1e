//! Signed firmware updates: RAUC-compatible verity bundles (create, sign, verify), the
//! manifest and version rules, and the A/B slots the box installs into (RAUC's D-Bus service
//! on a real box, simulated slots elsewhere), the hawkBit DDI client for fleet rollouts, and
//! bundles found on USB sticks.

pub mod agent;
pub mod bundle;
pub mod ddi;
pub mod hawkbit;
pub mod history;
pub mod manifest;
pub mod rauc;
pub mod slots;
pub mod usb;
pub mod verity;
pub mod version;

pub use agent::{AcceptError, Agent, MAX_BUNDLE_BYTES, ReceiveGuard, bundle_budget};
pub use bundle::{BundleError, CreateOptions, Keyring, PolicyError, Trailer, check_policy, create, verify};
pub use history::{HistoryEntry, HistoryEvent, UpdateHistory};
pub use manifest::{Image, Manifest, ManifestError};
pub use rauc::RaucSlots;
pub use slots::{
    InstallState, InstallStatus, InstallTracker, RebootPlan, SimulatedSlots, SlotBackend, SlotError, SlotInfo,
    SlotsStatus, restart_machine,
};
pub use version::{Version, VersionError};

/// The `compatible` string of this box's bundles, unless the daemon is told another
/// (`branchgate run --compatible`, `bundle create --compatible`): `branchgate-<arch>`.
#[cfg(target_arch = "x86_64")]
pub const DEFAULT_COMPATIBLE: &str = "branchgate-x86_64";
#[cfg(target_arch = "aarch64")]
pub const DEFAULT_COMPATIBLE: &str = "branchgate-aarch64";
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub const DEFAULT_COMPATIBLE: &str = "branchgate";
