//! Build steps: hearth-init (resources/init/hearth-init.c), the guest's PID 1 for
//! `hearth run -- CMD`, as a static binary that hearth embeds and carries into the guest
//! in the initramfs it writes at start-up (needs a C compiler and a static libc —
//! Debian: gcc, libc6-dev; `.ci/run` installs them); and the seccomp filters in
//! resources/seccomp (one Firecracker-format JSON file per thread kind, named after it)
//! compiled into Firecracker's compiled format, which `hearth::seccomp` embeds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The compiled filter format, shared with the library.
#[allow(dead_code)] // build.rs only encodes
#[path = "src/seccomp/compiled.rs"]
mod compiled;

fn main() {
    hearth_init();
    seccomp_filters();
}

/// resources/init/hearth-init.c -> $OUT_DIR/hearth-init.
fn hearth_init() {
    let src = "resources/init/hearth-init.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CC");
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("hearth-init");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-static", "-Os", "-s", "-Wall", "-Wextra", "-o"])
        .arg(&out)
        .arg(src)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "building {src} with `{cc} -static` failed ({s}): hearth needs a C compiler and a static libc (Debian: apt-get install gcc libc6-dev)"
        ),
        Err(e) => panic!(
            "cannot run the C compiler `{cc}` to build {src}: {e}; install gcc and libc6-dev (or set CC)"
        ),
    }
}

/// resources/seccomp/*.json -> $OUT_DIR/seccomp.bpf, in Firecracker's compiled format.
fn seccomp_filters() {
    let dir = Path::new("resources/seccomp");
    println!("cargo:rerun-if-changed={}", dir.display());
    println!("cargo:rerun-if-changed=src/seccomp/compiled.rs");
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
    let map: BTreeMap<_, _> =
        seccompiler::compile_from_json(all.as_bytes(), seccompiler::TargetArch::x86_64)
            .unwrap_or_else(|e| panic!("resources/seccomp does not compile: {e}"))
            .into_iter()
            .collect();
    let bytes = compiled::encode(&map)
        .unwrap_or_else(|e| panic!("resources/seccomp does not fit the compiled format: {e}"));
    let out = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("seccomp.bpf");
    std::fs::write(out, bytes).expect("write");
}
