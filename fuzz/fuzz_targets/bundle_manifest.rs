//! Bundle manifests come from uploaded files (inside the signature, but parsed only after it
//! verified — still, a vendor mistake must not crash the box): the parser takes any bytes,
//! and what it writes parses again to the same manifest.
#![no_main]

use branchgate_update::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(manifest) = Manifest::parse(data) else { return };
    let _ = manifest.summary();
    let again = Manifest::parse(manifest.to_text().as_bytes()).expect("a written manifest parses again");
    assert_eq!(again, manifest, "the round trip keeps the manifest");
});
