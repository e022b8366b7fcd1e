//! Backup/provisioning documents and stored secrets come from files and users:
//! parsing and validating any bytes must return, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = branchgate_config::parse_document(data) {
        let _ = config.validate();
        let _ = config.redacted(branchgate_config::Redaction::All);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = branchgate_config::DigestKey::parse(text);
        let _ = branchgate_config::HashedSecret::new(text).state();
    }
});
