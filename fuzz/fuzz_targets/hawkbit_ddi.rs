//! hawkBit's answers come from the network: any bytes either parse into DDI documents the
//! client can act on or are refused with an error, never a panic.
#![no_main]

use branchgate_update::ddi::{self, CancelAction, ControllerBase, DeploymentBase};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(base) = ddi::parse::<ControllerBase>(data) {
        let interval = ddi::poll_interval(&base, std::time::Duration::from_secs(60));
        assert!((ddi::MIN_POLL..=ddi::MAX_POLL).contains(&interval));
        let _ = ddi::next(&base);
    }
    if let Ok(deployment) = ddi::parse::<DeploymentBase>(data) {
        let _ = ddi::plan(&deployment);
    }
    let _ = ddi::parse::<CancelAction>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ddi::parse_sleep(text);
    }
});
