//! Build steps: the seccomp filters in resources/seccomp (one Firecracker-format JSON
//! file per thread kind, named after it) compiled into the form `hearth::seccomp`
//! embeds.

use std::collections::HashMap;
use std::path::Path;

fn main() {
    seccomp_filters();
}

/// resources/seccomp/*.json -> $OUT_DIR/seccomp.bin.
fn seccomp_filters() {
    let dir = Path::new("resources/seccomp");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut all = String::from("{");
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("resources/seccomp is missing")
        .map(|e| e.expect("resources/seccomp").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    entries.sort();
    for (i, path) in entries.iter().enumerate() {
        println!("cargo:rerun-if-changed={}", path.display());
        let kind = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("file name");
        let body = std::fs::read_to_string(path).expect("read a filter");
        if i > 0 {
            all.push(',');
        }
        all.push_str(&format!("{kind:?}:{body}"));
    }
    all.push('}');
    let map = seccompiler::compile_from_json(all.as_bytes(), seccompiler::TargetArch::x86_64)
        .unwrap_or_else(|e| panic!("resources/seccomp does not compile: {e}"));
    // The packing hearth::seccomp::pack uses.
    let packed: HashMap<String, Vec<u64>> = map
        .into_iter()
        .map(|(k, prog)| {
            let v = prog
                .iter()
                .map(|f| {
                    u64::from(f.code)
                        | u64::from(f.jt) << 16
                        | u64::from(f.jf) << 24
                        | u64::from(f.k) << 32
                })
                .collect();
            (k, v)
        })
        .collect();
    let out = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("seccomp.bin");
    std::fs::write(out, postcard::to_allocvec(&packed).expect("encode")).expect("write");
}
