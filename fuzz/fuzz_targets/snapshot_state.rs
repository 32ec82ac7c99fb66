//! Arbitrary bytes as a snapshot state file: the loader may only ever return errors.
//! Half the inputs get a valid header and checksum around the fuzz bytes, so the
//! decoder itself is exercised, not just the checksum.
#![no_main]

use std::path::Path;

use hearth::snapshot::{decode_state, MAGIC, VERSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_state(data, Path::new("fuzz"));
    if let Some((&first, payload)) = data.split_first() {
        if first & 1 == 1 {
            let crc = crc::Crc::<u64>::new(&crc::CRC_64_ECMA_182).checksum(payload);
            let mut framed = Vec::with_capacity(28 + payload.len());
            framed.extend_from_slice(&MAGIC);
            framed.extend_from_slice(&VERSION.to_le_bytes());
            framed.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            framed.extend_from_slice(&crc.to_le_bytes());
            framed.extend_from_slice(payload);
            let _ = decode_state(&framed, Path::new("fuzz"));
        }
    }
});
