//! Builds hearth-init (resources/init/hearth-init.c), the guest's PID 1 for
//! `hearth run -- CMD`, as a static binary that hearth embeds and carries into the guest
//! in the initramfs it writes at start-up. Needs a C compiler and a static libc
//! (Debian: gcc, libc6-dev; `.ci/run` installs them).

use std::path::PathBuf;
use std::process::Command;

fn main() {
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
