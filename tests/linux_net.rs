//! The real Linux guest (resources/linux) drives hearth's virtio-net and virtio-rng with
//! its own drivers: in a network namespace of the test's own, the guest configures eth0,
//! pings the host end of the tap, and reads the hardware RNG that virtio-rng backs.
//!
//! The busybox initramfs of resources/linux gets a second cpio archive appended (the
//! kernel unpacks concatenated archives) with a `/netinit` script and the applets it
//! uses, started with `rdinit=/netinit`. Needs root (namespaces, taps) like tests/net.rs;
//! a boot takes about a minute on the emulating KVM.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use common::net::{Netns, TAP};
use common::*;

const GUEST_MAC: &str = "06:00:ac:10:00:02";

const NETINIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
echo "netinit: mac=$(cat /sys/class/net/eth0/address)"
ip addr add 10.99.0.2/24 dev eth0
ip link set eth0 up
ping -c 3 -W 20 10.99.0.1
echo "netinit: rng=$(cat /sys/class/misc/hw_random/rng_current)"
echo "netinit: hwrng$(head -c 16 /dev/hwrng | od -An -tx1)"
reboot -f
"#;

fn run(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The kernel and the initramfs with /netinit, in target/linux-net-guest.
fn guest_files() -> &'static (PathBuf, PathBuf) {
    static FILES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = root().join("target/linux-net-guest");
        std::fs::create_dir_all(&dir).unwrap();
        for script in ["get-kernel.sh", "build-initramfs.sh"] {
            run(Command::new("bash")
                .arg(root().join("resources/linux").join(script))
                .arg(&dir));
        }
        let stage = scratch();
        let bin = stage.as_path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for applet in ["ip", "ping", "head", "od"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        let init = stage.as_path().join("netinit");
        std::fs::write(&init, NETINIT).unwrap();
        std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let extra = dir.join("netinit.cpio");
        run(Command::new("sh")
            .current_dir(stage.as_path())
            .arg("-c")
            .arg(format!(
                "printf 'bin\\nbin/ip\\nbin/ping\\nbin/head\\nbin/od\\nnetinit\\n' | \
             cpio --quiet -o -H newc -R 0:0 > {}",
                extra.display()
            )));
        let mut cpio = std::fs::read(dir.join("initramfs.cpio")).unwrap();
        cpio.extend(std::fs::read(&extra).unwrap());
        let initrd = dir.join("initramfs-net.cpio");
        std::fs::write(&initrd, cpio).unwrap();
        (dir.join("vmlinux"), initrd)
    })
}

#[test]
fn linux_pings_the_host_through_the_tap_and_reads_the_rng() {
    if !common::net::can_run_net_tests("linux_pings_the_host_through_the_tap_and_reads_the_rng") {
        return;
    }
    let (kernel, initrd) = guest_files();
    let ns = Netns::new();
    run(Command::new("ip").args(["-n", &ns.name, "addr", "add", "10.99.0.1/24", "dev", TAP]));
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name, hearth_bin(), "run", "--kernel"])
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .args([
            "--memory",
            "256M",
            "--net",
            &format!("tap={TAP},mac={GUEST_MAC}"),
            "--rng",
            "--cmdline",
            "console=ttyS0 reboot=k panic=-1 rdinit=/netinit",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Bounded by console progress (common::LINUX_BOUNDS); `ip netns exec` execs hearth,
    // so the CPU time watched is hearth's.
    let run = wait_with_progress(cmd.spawn().unwrap(), LINUX_BOUNDS, "linux with net and rng");
    assert_eq!(run.expect_line("netinit: mac="), GUEST_MAC, "{run:#?}");
    assert!(
        run.stdout
            .contains("3 packets transmitted, 3 packets received, 0% packet loss"),
        "{run:#?}"
    );
    assert_eq!(run.expect_line("netinit: rng="), "virtio_rng.0", "{run:#?}");
    let bytes: Vec<&str> = run
        .expect_line("netinit: hwrng")
        .split_whitespace()
        .collect();
    assert_eq!(bytes.len(), 16, "{run:#?}");
    assert!(bytes
        .iter()
        .all(|b| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit())));
    assert_eq!(run.code(), 0, "{run:#?}");
}
