//! The slot backend of a real box: RAUC's D-Bus service (`de.pengutronix.rauc.Installer` on
//! the system bus, RAUC 1.8). RAUC installs the bundle into the inactive slot, switches the
//! bootloader to it (GRUB: `ORDER`, `x_OK`, `x_TRY` in grubenv), and tells which slot booted
//! and whether it was marked good. What RAUC checks again (signature against its own keyring,
//! `compatible`) the agent has already checked: RAUC is the one that writes the slot.
//!
//! The [`SlotBackend`] trait is blocking (its callers run on blocking threads); each call here
//! runs its D-Bus exchange on the daemon's tokio runtime with `Handle::block_on`.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::runtime::Handle;
use zbus::zvariant::{OwnedValue, Value};

use crate::manifest::Manifest;
use crate::slots::{RebootPlan, SlotBackend, SlotError, SlotInfo, SlotsStatus, restart_machine};

pub const RAUC_SERVICE: &str = "de.pengutronix.rauc";

#[zbus::proxy(
    interface = "de.pengutronix.rauc.Installer",
    default_service = "de.pengutronix.rauc",
    default_path = "/",
    gen_blocking = false
)]
trait Installer {
    fn install_bundle(&self, source: &str, args: HashMap<&str, Value<'_>>) -> zbus::Result<()>;
    fn mark(&self, state: &str, slot_identifier: &str) -> zbus::Result<(String, String)>;
    fn get_slot_status(&self) -> zbus::Result<Vec<(String, HashMap<String, OwnedValue>)>>;
    fn get_primary(&self) -> zbus::Result<String>;
    #[zbus(signal)]
    fn completed(&self, result: i32) -> zbus::Result<()>;
    #[zbus(property)]
    fn operation(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn last_error(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn progress(&self) -> zbus::Result<(i32, String, i32)>;
    #[zbus(property)]
    fn boot_slot(&self) -> zbus::Result<String>;
}

impl From<zbus::Error> for SlotError {
    fn from(e: zbus::Error) -> SlotError {
        SlotError::Rauc(e.to_string())
    }
}

/// One slot of `GetSlotStatus`, the fields the box uses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RaucSlot {
    /// RAUC's slot name, e.g. `rootfs.0`.
    name: String,
    /// The bootloader's name for it (`A`, `B`): what the API shows.
    bootname: String,
    /// `booted`, `active`, `inactive`.
    state: String,
    /// `good` or `bad` (the bootloader's view).
    boot_status: Option<String>,
    version: Option<String>,
    /// The last install into it: `ok` or a failure.
    install_status: Option<String>,
}

fn text(map: &HashMap<String, OwnedValue>, key: &str) -> Option<String> {
    map.get(key).and_then(|v| <&str>::try_from(v).ok()).map(str::to_owned)
}

fn parse_slots(raw: Vec<(String, HashMap<String, OwnedValue>)>) -> Vec<RaucSlot> {
    let mut slots: Vec<RaucSlot> = raw
        .into_iter()
        .filter(|(_, map)| text(map, "class").as_deref().is_none_or(|c| c == "rootfs"))
        .map(|(name, map)| RaucSlot {
            bootname: text(&map, "bootname").unwrap_or_else(|| name.clone()),
            state: text(&map, "state").unwrap_or_default(),
            boot_status: text(&map, "boot-status"),
            version: text(&map, "bundle.version"),
            install_status: text(&map, "status"),
            name,
        })
        .collect();
    slots.sort_by(|a, b| a.bootname.cmp(&b.bootname));
    slots
}

/// The API's view of RAUC's slots: the booted one runs `running_version` whatever RAUC
/// recorded (a factory-flashed slot has no install record); the other is `installed` when the
/// bootloader starts it next, `failed` after an install that did not finish, `empty` when
/// nothing was ever installed, otherwise `inactive`.
fn slot_infos(slots: &[RaucSlot], primary: Option<&str>, running_version: &str) -> Vec<SlotInfo> {
    slots
        .iter()
        .map(|slot| {
            let booted = slot.state == "booted";
            let good = slot.boot_status.as_deref() == Some("good");
            let state = if booted {
                "booted"
            } else if slot.install_status.as_deref().is_some_and(|s| s != "ok") {
                "failed"
            } else if slot.version.is_none() {
                "empty"
            } else if primary == Some(slot.name.as_str()) {
                "installed"
            } else {
                "inactive"
            };
            SlotInfo {
                name: slot.bootname.clone(),
                version: if booted { Some(running_version.to_string()) } else { slot.version.clone() },
                state: state.into(),
                booted,
                good,
            }
        })
        .collect()
}

/// RAUC through its D-Bus API.
#[derive(Debug)]
pub struct RaucSlots {
    runtime: Handle,
    installer: InstallerProxy<'static>,
    running_version: String,
}

impl RaucSlots {
    /// Connects to the system bus and checks that RAUC's service answers; an error means
    /// "no RAUC here" (the caller falls back to the simulated slots).
    pub async fn connect(running_version: impl Into<String>) -> Result<RaucSlots, SlotError> {
        let connection = zbus::Connection::system().await?;
        let installer =
            InstallerProxy::builder(&connection).cache_properties(zbus::proxy::CacheProperties::No).build().await?;
        installer.operation().await?;
        Ok(RaucSlots { runtime: Handle::current(), installer, running_version: running_version.into() })
    }

    async fn slots(&self) -> Result<Vec<RaucSlot>, SlotError> {
        Ok(parse_slots(self.installer.get_slot_status().await?))
    }

    async fn install_async(&self, bundle: &Path, progress: &mut dyn FnMut(u8)) -> Result<String, SlotError> {
        let source = bundle.to_str().ok_or_else(|| SlotError::Rauc("the bundle path is not UTF-8".into()))?;
        // Subscribed before the call, so a quick install cannot complete unseen.
        let mut completed = self.installer.receive_completed().await?;
        self.installer.install_bundle(source, HashMap::new()).await?;
        progress(0);
        let result = loop {
            tokio::select! {
                signal = completed.next() => {
                    let signal = signal.ok_or_else(|| SlotError::Rauc("RAUC left the bus during the install".into()))?;
                    break signal.args()?.result;
                }
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    // Progress is (percentage, message, nesting depth); 100 only once done.
                    if let Ok((percent, _, _)) = self.installer.progress().await {
                        progress(percent.clamp(0, 99) as u8);
                    }
                }
            }
        };
        if result != 0 {
            let error = self.installer.last_error().await.unwrap_or_default();
            return Err(SlotError::Rauc(if error.is_empty() { format!("install failed ({result})") } else { error }));
        }
        progress(100);
        let primary = self.installer.get_primary().await?;
        let slots = self.slots().await?;
        Ok(slots.into_iter().find(|s| s.name == primary).map_or(primary, |s| s.bootname))
    }
}

impl SlotBackend for RaucSlots {
    fn status(&self) -> Result<SlotsStatus, SlotError> {
        self.runtime.block_on(async {
            let slots = self.slots().await?;
            let primary = self.installer.get_primary().await.ok();
            let booted = slots.iter().find(|s| s.state == "booted").map(|s| s.bootname.clone());
            let booted = match booted {
                Some(name) => name,
                None => self.installer.boot_slot().await?,
            };
            let infos = slot_infos(&slots, primary.as_deref(), &self.running_version);
            let pending_reboot = infos.iter().find(|s| s.state == "installed").map(|s| s.name.clone());
            Ok(SlotsStatus { backend: "rauc".into(), booted, pending_reboot, slots: infos })
        })
    }

    fn install(&self, bundle: &Path, _manifest: &Manifest, progress: &mut dyn FnMut(u8)) -> Result<String, SlotError> {
        self.runtime.block_on(self.install_async(bundle, progress))
    }

    fn reboot(&self) -> Result<RebootPlan, SlotError> {
        let slot = self.runtime.block_on(async {
            let primary = self.installer.get_primary().await?;
            let slots = self.slots().await?;
            Ok::<_, SlotError>(slots.into_iter().find(|s| s.name == primary).map_or(primary, |s| s.bootname))
        })?;
        // After the answer has left: the HTTP response goes out before the machine restarts.
        std::thread::Builder::new()
            .name("reboot".into())
            .spawn(|| {
                std::thread::sleep(Duration::from_secs(1));
                if let Err(e) = restart_machine() {
                    tracing::error!(error = %e, "reboot failed");
                }
            })
            .map_err(|e| SlotError::Rauc(format!("cannot start the reboot: {e}")))?;
        Ok(RebootPlan { slot, simulated: false })
    }

    fn activate(&self, slot: &str) -> Result<(), SlotError> {
        self.runtime.block_on(async {
            let slots = self.slots().await?;
            let target = slots.iter().find(|s| s.bootname == slot).ok_or_else(|| SlotError::NoSuchSlot(slot.into()))?;
            if target.state != "booted" {
                if target.version.is_none() {
                    let reason = "nothing was ever installed into it".to_string();
                    return Err(SlotError::NotBootable { slot: slot.into(), reason });
                }
                if target.install_status.as_deref().is_some_and(|s| s != "ok") {
                    let reason = "its last install did not finish".to_string();
                    return Err(SlotError::NotBootable { slot: slot.into(), reason });
                }
            }
            // RAUC points the bootloader at it (GRUB: first in ORDER, its try count reset).
            let (name, message) = self.installer.mark("active", &target.name).await?;
            tracing::info!(slot = %name, %message, "RAUC: slot marked active");
            Ok(())
        })
    }

    fn booted_is_good(&self) -> Result<bool, SlotError> {
        self.runtime.block_on(async {
            let slots = self.slots().await?;
            Ok(slots.iter().any(|s| s.state == "booted" && s.boot_status.as_deref() == Some("good")))
        })
    }

    fn mark_booted_good(&self) -> Result<String, SlotError> {
        self.runtime.block_on(async {
            let (slot, message) = self.installer.mark("good", "booted").await?;
            tracing::info!(%slot, %message, "RAUC: booted slot marked good");
            // The bootloader's name (A, B), as the API shows slots; RAUC answers with its own.
            let slots = self.slots().await?;
            Ok(slots.into_iter().find(|s| s.name == slot).map_or(slot, |s| s.bootname))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(name: &str, entries: &[(&str, &str)]) -> (String, HashMap<String, OwnedValue>) {
        let map = entries
            .iter()
            .map(|(k, v)| (k.to_string(), OwnedValue::try_from(Value::from(*v)).expect("string value")))
            .collect();
        (name.to_string(), map)
    }

    #[test]
    fn slot_status_maps_to_the_api_view() {
        let raw = vec![
            slot(
                "rootfs.1",
                &[
                    ("class", "rootfs"),
                    ("bootname", "B"),
                    ("state", "inactive"),
                    ("boot-status", "good"),
                    ("bundle.version", "2.0.0"),
                    ("status", "ok"),
                ],
            ),
            slot("rootfs.0", &[("class", "rootfs"), ("bootname", "A"), ("state", "booted"), ("boot-status", "bad")]),
            slot("efi.0", &[("class", "efi"), ("bootname", "X"), ("state", "inactive")]),
        ];
        let slots = parse_slots(raw);
        assert_eq!(slots.len(), 2, "only rootfs slots");
        assert_eq!(slots[0].bootname, "A");
        let infos = slot_infos(&slots, Some("rootfs.1"), "1.0.0");
        assert_eq!(
            infos[0],
            SlotInfo {
                name: "A".into(),
                version: Some("1.0.0".into()),
                state: "booted".into(),
                booted: true,
                good: false
            }
        );
        assert_eq!(
            infos[1],
            SlotInfo {
                name: "B".into(),
                version: Some("2.0.0".into()),
                state: "installed".into(),
                booted: false,
                good: true
            }
        );
        assert_eq!(slot_infos(&slots, Some("rootfs.0"), "1.0.0")[1].state, "inactive");
    }

    #[test]
    fn never_installed_and_failed_slots() {
        let raw = vec![
            slot("rootfs.0", &[("bootname", "A"), ("state", "booted"), ("boot-status", "good")]),
            slot("rootfs.1", &[("bootname", "B"), ("state", "inactive")]),
        ];
        assert_eq!(slot_infos(&parse_slots(raw), None, "1.0.0")[1].state, "empty");
        let raw = vec![slot("rootfs.1", &[("bootname", "B"), ("state", "inactive"), ("status", "failed")])];
        assert_eq!(slot_infos(&parse_slots(raw), None, "1.0.0")[0].state, "failed");
    }
}
