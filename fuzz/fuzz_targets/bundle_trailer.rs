//! The end of an uploaded file, read before anything is trusted: the trailer (signature
//! length) and the payload layout it implies must be checked without panicking or
//! overflowing, whatever the bytes and the verity size.
#![no_main]

use branchgate_update::Trailer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    // The first 8 bytes stand for the file length (files may be larger than the input),
    // the next 8 for the signed verity size, the last 8 are the trailer.
    let file_len = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let verity_size = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
    let last8: [u8; 8] = data[data.len() - 8..].try_into().expect("8 bytes");
    for len in [file_len, data.len() as u64] {
        let Ok(trailer) = Trailer::parse(len, last8) else { continue };
        assert!(trailer.signature_offset + trailer.signature_len + 8 == len);
        if let Ok((data_size, layout)) = trailer.payload(verity_size) {
            assert_eq!(data_size + layout.tree_bytes(), trailer.signature_offset);
            assert!(!layout.levels.is_empty());
        }
    }
});
