//! Firecracker's compiled seccomp filter format: what its `seccompiler-bin` writes and
//! its `--seccomp-filter FILE` reads, and what `hearth seccomp-compile` writes, so a
//! file from either loads in both.
//!
//! Both are a map from thread kind to BPF program, each instruction a `sock_filter` as
//! it lies in memory read as one little-endian `u64` (see [`pack`]), in at most 100 000
//! bytes. Firecracker v1.15 and later (v1.16 included) encode the map with bitcode 0.6's
//! serde format (`bitcode::serialize` of a `BTreeMap<String, Vec<u64>>`): hearth writes
//! that, with the bitcode crate. Firecracker v1.14 and earlier used bincode 2
//! (little-endian, fixed-width integers: a `u64` entry count, then per entry a `u64`
//! key length and the UTF-8 key, a `u64` instruction count and the instructions);
//! hearth still reads those files with the small reader below, hand-written because
//! bincode is unmaintained (RUSTSEC-2025-0141) and the layout is a few length-prefixed
//! fields. build.rs includes this file too (it compiles the built-in filters into the
//! same format), so it uses nothing else of the crate.

use std::collections::BTreeMap;

use seccompiler::sock_filter;

/// The largest compiled file read or written: Firecracker's limit, so that whatever
/// hearth writes Firecracker reads.
pub const MAX_FILE: usize = 100_000;

/// The most instructions the kernel takes in one seccomp program (BPF_MAXINSNS).
pub const MAX_PROGRAM: usize = 4096;

/// The longest thread-kind name accepted (they are a few letters; a bound keeps a
/// malformed file from claiming a huge key).
const MAX_KEY: usize = 64;

/// Why a compiled filter file does not decode (or a filter map does not encode).
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Neither of Firecracker's encodings.
    #[error("as bitcode (Firecracker v1.15 and later): {bitcode}; as bincode (v1.14 and earlier): {bincode}")]
    Neither {
        /// Why it is not bitcode.
        bitcode: String,
        /// Why it is not the older bincode layout.
        bincode: Box<FormatError>,
    },
    /// bitcode could not encode the map.
    #[error("cannot encode: {0}")]
    Encode(#[source] bitcode::Error),
    /// Larger than Firecracker's limit.
    #[error("{0} bytes is more than the {MAX_FILE} a compiled filter may have")]
    TooLarge(usize),
    /// The file ends inside a field.
    #[error("the file ends inside {0}")]
    Truncated(&'static str),
    /// More entries than the file could hold.
    #[error("it claims {0} filters, more than its size allows")]
    Count(u64),
    /// A key longer than any thread kind.
    #[error("a thread kind name of {0} bytes (1 to {MAX_KEY})")]
    KeyLength(u64),
    /// A key that is not UTF-8.
    #[error("a thread kind name that is not UTF-8")]
    KeyUtf8,
    /// The same key twice.
    #[error("the \"{0}\" filter appears twice")]
    Duplicate(String),
    /// A program longer than the kernel takes.
    #[error("the \"{0}\" filter has {1} instructions; the kernel takes at most {MAX_PROGRAM}")]
    ProgramLength(String, u64),
    /// Bytes after the last entry.
    #[error("{0} bytes follow the last filter")]
    Trailing(usize),
}

/// Unpacks an instruction from the `u64` it is stored as.
pub fn unpack(i: u64) -> sock_filter {
    // Read as a little-endian u64, a sock_filter's bytes (code u16, jt u8, jf u8, k u32,
    // each little-endian) are these bit ranges.
    #[allow(clippy::cast_possible_truncation)] // each field is masked to its width
    sock_filter {
        code: (i & 0xffff) as u16,
        jt: ((i >> 16) & 0xff) as u8,
        jf: ((i >> 24) & 0xff) as u8,
        k: (i >> 32) as u32,
    }
}

/// Packs an instruction into the `u64` it is stored as.
pub fn pack(f: &sock_filter) -> u64 {
    u64::from(f.code) | u64::from(f.jt) << 16 | u64::from(f.jf) << 24 | u64::from(f.k) << 32
}

/// Encodes a filter map as Firecracker v1.15 and later read it.
pub fn encode(map: &BTreeMap<String, Vec<sock_filter>>) -> Result<Vec<u8>, FormatError> {
    let mut packed = BTreeMap::new();
    for (key, program) in map {
        if program.len() > MAX_PROGRAM {
            return Err(FormatError::ProgramLength(
                key.clone(),
                program.len() as u64,
            ));
        }
        packed.insert(key.clone(), program.iter().map(pack).collect::<Vec<u64>>());
    }
    let out = bitcode::serialize(&packed).map_err(FormatError::Encode)?;
    if out.len() > MAX_FILE {
        return Err(FormatError::TooLarge(out.len()));
    }
    Ok(out)
}

/// Decodes a compiled filter file in either of Firecracker's encodings. Keys are
/// lower-cased, as Firecracker does.
pub fn decode(bytes: &[u8]) -> Result<BTreeMap<String, Vec<sock_filter>>, FormatError> {
    if bytes.len() > MAX_FILE {
        return Err(FormatError::TooLarge(bytes.len()));
    }
    // bitcode bounds each length by what the input can hold (1 bit per element at
    // least), so 100 000 bytes decode to a few MiB at most; it never panics on bad input.
    // A name no thread has (empty) means this is not bitcode but something else that
    // happened to decode, like the start of a bincode file.
    let packed = match bitcode::deserialize::<BTreeMap<String, Vec<u64>>>(bytes) {
        Ok(m) if !m.contains_key("") => Ok(m),
        Ok(_) => Err("an empty thread kind name".to_string()),
        Err(e) => Err(e.to_string()),
    };
    let packed = match packed {
        Ok(m) => m,
        Err(bitcode) => {
            return decode_bincode(bytes).map_err(|e| FormatError::Neither {
                bitcode,
                bincode: Box::new(e),
            })
        }
    };
    let mut map = BTreeMap::new();
    for (key, program) in packed {
        let key = key.to_lowercase();
        if program.len() > MAX_PROGRAM {
            return Err(FormatError::ProgramLength(key, program.len() as u64));
        }
        if map.contains_key(&key) {
            return Err(FormatError::Duplicate(key));
        }
        map.insert(key, program.into_iter().map(unpack).collect());
    }
    Ok(map)
}

/// Decodes Firecracker's older (bincode) encoding.
fn decode_bincode(bytes: &[u8]) -> Result<BTreeMap<String, Vec<sock_filter>>, FormatError> {
    let mut r = Reader(bytes);
    let count = r.u64("the filter count")?;
    // An entry takes at least its two lengths.
    if count > (r.0.len() / 16) as u64 {
        return Err(FormatError::Count(count));
    }
    let mut map = BTreeMap::new();
    for _ in 0..count {
        let len = r.u64("a thread kind name's length")?;
        if len == 0 || len > MAX_KEY as u64 {
            return Err(FormatError::KeyLength(len));
        }
        let key = std::str::from_utf8(r.take(len, "a thread kind name")?)
            .map_err(|_| FormatError::KeyUtf8)?
            .to_lowercase();
        let n = r.u64("an instruction count")?;
        if n > MAX_PROGRAM as u64 {
            return Err(FormatError::ProgramLength(key, n));
        }
        let program = r
            .take(n * 8, "a program")?
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0; 8];
                b.copy_from_slice(c);
                unpack(u64::from_le_bytes(b))
            })
            .collect();
        if map.contains_key(&key) {
            return Err(FormatError::Duplicate(key));
        }
        map.insert(key, program);
    }
    match r.0.len() {
        0 => Ok(map),
        n => Err(FormatError::Trailing(n)),
    }
}

/// What is left of the file.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], FormatError> {
        match usize::try_from(n) {
            Ok(n) if n <= self.0.len() => {
                let (head, rest) = self.0.split_at(n);
                self.0 = rest;
                Ok(head)
            }
            _ => Err(FormatError::Truncated(what)),
        }
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, FormatError> {
        let mut b = [0; 8];
        b.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ins(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
        sock_filter { code, jt, jf, k }
    }

    fn sample() -> BTreeMap<String, Vec<sock_filter>> {
        let mut map = BTreeMap::new();
        map.insert(
            "vcpu".to_string(),
            vec![ins(0x20, 0, 0, 4), ins(0x15, 3, 250, 0xdead_beef)],
        );
        map.insert("vmm".to_string(), vec![ins(0x06, 0, 0, 0x7fff_0000)]);
        map
    }

    /// A map in Firecracker v1.14's bincode layout.
    fn bincode(map: &[(&[u8], &[u64])]) -> Vec<u8> {
        let mut out = (map.len() as u64).to_le_bytes().to_vec();
        for (k, v) in map {
            out.extend_from_slice(&(k.len() as u64).to_le_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            for i in *v {
                out.extend_from_slice(&i.to_le_bytes());
            }
        }
        out
    }

    #[test]
    fn packing_is_the_in_memory_layout() {
        let i = ins(0x15, 3, 250, 0xdead_beef);
        assert_eq!(unpack(pack(&i)), i);
        // code, jt, jf, k as the kernel's struct sock_filter lays them out.
        assert_eq!(
            pack(&i).to_le_bytes(),
            [0x15, 0x00, 3, 250, 0xef, 0xbe, 0xad, 0xde]
        );
    }

    #[test]
    fn reads_what_firecracker_v1_16_writes() {
        // Firecracker v1.16.1's built-in filters for glibc builds (its
        // resources/seccomp/unimplemented.json: allow everything), as its seccompiler
        // compiled them, cut out of the release binary.
        let bytes = include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/firecracker-v1.16.1-default-allow.bpf"
        ));
        let map = decode(bytes).unwrap();
        assert_eq!(map.keys().collect::<Vec<_>>(), ["api", "vcpu", "vmm"]);
        let vcpu = &map["vcpu"];
        assert_eq!(vcpu.len(), 7);
        // Load the arch, compare with AUDIT_ARCH_X86_64, ..., return ALLOW.
        assert_eq!(vcpu[0], ins(0x20, 0, 0, 4));
        assert_eq!(vcpu[1].k, 0xc000_003e);
        assert!(vcpu.contains(&ins(0x06, 0, 0, 0x7fff_0000)));
        // And hearth writes the same bytes for the same filters.
        assert_eq!(encode(&map).unwrap(), bytes);
    }

    #[test]
    fn round_trips() {
        assert_eq!(decode(&encode(&sample()).unwrap()).unwrap(), sample());
        // Firecracker lower-cases the keys it reads; so does hearth.
        let mut upper = BTreeMap::new();
        upper.insert("VcpU".to_string(), vec![ins(6, 0, 0, 0)]);
        assert!(decode(&encode(&upper).unwrap())
            .unwrap()
            .contains_key("vcpu"));
        // An empty map and an empty program are valid.
        let mut empty = BTreeMap::new();
        assert_eq!(decode(&encode(&empty).unwrap()).unwrap(), empty);
        empty.insert("api".to_string(), Vec::new());
        assert_eq!(decode(&encode(&empty).unwrap()).unwrap(), empty);
        // Firecracker v1.14's layout reads too.
        let old = bincode(&[
            (
                b"vcpu",
                &[
                    pack(&ins(0x20, 0, 0, 4)),
                    pack(&ins(0x15, 3, 250, 0xdead_beef)),
                ],
            ),
            (b"vmm", &[pack(&ins(0x06, 0, 0, 0x7fff_0000))]),
        ]);
        assert_eq!(decode(&old).unwrap(), sample());
    }

    #[test]
    fn every_truncation_is_refused_or_reads_as_something_else() {
        // bitcode has little redundancy: a prefix may read as another (smaller) map,
        // which Filters then refuses for its missing kinds (see seccomp::tests).
        let old = bincode(&[(b"vcpu", &[1, 2]), (b"vmm", &[3])]);
        for bytes in [encode(&sample()).unwrap(), old] {
            let whole = decode(&bytes).unwrap();
            for n in 0..bytes.len() {
                assert_ne!(decode(&bytes[..n]).ok().as_ref(), Some(&whole), "{n}");
            }
        }
    }

    #[test]
    fn malformed_files_get_one_line_errors() {
        let good = encode(&sample()).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            // A huge entry count.
            (u64::MAX.to_le_bytes().to_vec(), "claims"),
            // A huge key length.
            (
                [1u64.to_le_bytes(), u64::MAX.to_le_bytes(), [0; 8]].concat(),
                "name of",
            ),
            // A huge instruction count.
            (
                [
                    &1u64.to_le_bytes()[..],
                    &3u64.to_le_bytes(),
                    b"vmm",
                    &u64::MAX.to_le_bytes(),
                ]
                .concat(),
                "instructions",
            ),
            // An instruction count a little past the file's end (an odd length).
            (
                [
                    &1u64.to_le_bytes()[..],
                    &3u64.to_le_bytes(),
                    b"vmm",
                    &2u64.to_le_bytes(),
                    &[0; 12],
                ]
                .concat(),
                "ends inside a program",
            ),
            // An empty key.
            (bincode(&[(b"", &[])]), "name of 0 bytes"),
            // A key that is not UTF-8.
            (bincode(&[(b"v\xffm", &[])]), "not UTF-8"),
            // The same kind twice.
            (bincode(&[(b"vmm", &[]), (b"VMM", &[])]), "twice"),
            // Garbage after the last entry.
            ([&good[..], b"x"].concat(), "Expected EOF"),
            (
                [&bincode(&[(b"vmm", &[])])[..], b"x"].concat(),
                "follow the last filter",
            ),
            // Over Firecracker's size limit.
            (vec![0; MAX_FILE + 1], "more than the 100000"),
        ];
        for (bytes, want) in cases {
            let e = decode(&bytes).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        // In bitcode: a program over the kernel's limit, and keys that collide.
        let mut long = BTreeMap::new();
        long.insert("vmm".to_string(), vec![0u64; MAX_PROGRAM + 1]);
        let e = decode(&bitcode::serialize(&long).unwrap()).unwrap_err();
        assert!(matches!(e, FormatError::ProgramLength(_, 4097)), "{e}");
        let mut twice = BTreeMap::new();
        twice.insert("vmm".to_string(), vec![0u64]);
        twice.insert("VMM".to_string(), vec![0u64]);
        let e = decode(&bitcode::serialize(&twice).unwrap()).unwrap_err();
        assert!(matches!(e, FormatError::Duplicate(_)), "{e}");
        // Every single-byte corruption of a good file is refused or decodes: no panic.
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[i] ^= 1 << bit;
                let _ = decode(&bad);
            }
        }
    }

    #[test]
    fn what_firecracker_would_refuse_is_not_written() {
        let mut long = BTreeMap::new();
        long.insert("vmm".to_string(), vec![ins(6, 0, 0, 0); MAX_PROGRAM + 1]);
        assert!(matches!(
            encode(&long),
            Err(FormatError::ProgramLength(_, 4097))
        ));
        // Four full programs of distinct instructions do not fit in 100 000 bytes.
        let mut big = BTreeMap::new();
        for (n, k) in [(1u32, "a"), (2, "b"), (3, "c"), (4, "d")] {
            let program = (0..4096u32)
                .map(|i| ins(0x15, 1, 2, i.wrapping_mul(0x9e37_79b9) ^ n))
                .collect();
            big.insert(k.to_string(), program);
        }
        assert!(matches!(encode(&big), Err(FormatError::TooLarge(_))));
    }
}
