//! Arbitrary bytes as a compiled seccomp filter file (`--seccomp-filter`): the decoder
//! may only ever return errors, and whatever it accepts encodes and decodes back the
//! same (in Firecracker's bitcode format; keys already lower-case).
#![no_main]

use hearth::seccomp::compiled::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(map) = decode(data) {
        if let Ok(bytes) = encode(&map) {
            assert_eq!(decode(&bytes).ok().as_ref(), Some(&map));
        }
    }
});
