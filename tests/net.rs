//! virtio-net end to end: each test owns a network namespace with a tap in it, runs hearth
//! inside it, and plays the host side of the wire with a packet socket on the tap. The
//! test guest drives the device as Linux's virtio-net driver does (modern virtio-mmio,
//! split queues, 12-byte header).

mod common;

use std::time::Duration;

use common::net::{frame, parse_mac, Netns, ETHERTYPE};
use common::*;

const GUEST_MAC: &str = "06:00:ac:10:00:02";
const HOST_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 1];
const T: Duration = Duration::from_secs(60);

fn net_arg() -> String {
    format!("tap={},mac={GUEST_MAC}", common::net::TAP)
}

/// The `net 0 rx ...` line the guest prints for `frame`.
fn rx_line(frame: &[u8]) -> String {
    let payload: String = frame[14..]
        .iter()
        .take(32)
        .take_while(|&&b| b != 0)
        .map(|&b| if b > b' ' && b < 127 { b as char } else { '.' })
        .collect();
    format!(
        "net 0 rx len={} fnv={:016x} payload={payload}",
        frame.len(),
        fnv1a(frame)
    )
}

fn lines_with<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

/// Runs hearth in `ns` with its serial output in a file; once the guest printed `ready`,
/// calls `meanwhile`, then waits for hearth to end. Returns the run and the serial
/// output.
fn run_with(
    ns: &Netns,
    cmdline: &str,
    extra: &[&str],
    ready: &str,
    meanwhile: impl FnOnce(),
) -> (Run, String) {
    let dir = scratch();
    let serial = dir.as_path().join("serial.txt");
    let mut args: Vec<&str> = vec!["--serial-out", serial.to_str().unwrap()];
    args.extend_from_slice(extra);
    let child = ns
        .hearth(cmdline, &args)
        .spawn()
        .expect("cannot start ip netns exec hearth");
    // Kill hearth if the guest never gets there (wait_for_text panics on timeout).
    struct KillOnPanic(Option<std::process::Child>);
    impl Drop for KillOnPanic {
        fn drop(&mut self) {
            if let Some(c) = self.0.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut guard = KillOnPanic(Some(child));
    wait_for_text(&serial, ready, T);
    meanwhile();
    let run = wait_bounded(guard.0.take().unwrap(), T, cmdline);
    let out = std::fs::read_to_string(&serial).unwrap_or_default();
    (run, out)
}

#[test]
fn a_guest_frame_reaches_the_tap() {
    if !common::net::can_run_net_tests("a_guest_frame_reaches_the_tap") {
        return;
    }
    let ns = Netns::new();
    let sock = ns.packet_socket();
    let run = wait_bounded(
        ns.hearth("net.info net.tx=0:hearth-marker-42", &["--net", &net_arg()])
            .spawn()
            .unwrap(),
        T,
        "net.tx",
    );
    assert_eq!(
        run.expect_line("net 0: "),
        format!("mac={GUEST_MAC}"),
        "{run:#?}"
    );
    assert!(run.stdout.contains("net 0 tx ok\n"), "{run:#?}");
    assert_eq!(run.code(), 0, "{run:#?}");
    let got = sock
        .recv(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no frame came out of the tap: {run:#?}"));
    assert_eq!(
        got,
        frame([0xff; 6], parse_mac(GUEST_MAC), b"hearth-marker-42")
    );
}

#[test]
fn a_host_frame_reaches_the_guest() {
    if !common::net::can_run_net_tests("a_host_frame_reaches_the_guest") {
        return;
    }
    let ns = Netns::new();
    let sock = ns.packet_socket();
    let f = frame(
        parse_mac(GUEST_MAC),
        HOST_MAC,
        b"from the host side\x01\x02 of the tap",
    );
    let (run, out) = run_with(
        &ns,
        "net.info net.rx=0:1",
        &["--net", &net_arg()],
        "net 0: mac=",
        || sock.send(&f),
    );
    assert_eq!(
        lines_with(&out, "net 0 rx"),
        vec![rx_line(&f).as_str()],
        "{out}\n{run:#?}"
    );
    assert_eq!(
        rx_line(&f),
        format!(
            "net 0 rx len=45 fnv={:016x} payload=from.the.host.side...of.the.tap",
            fnv1a(&f)
        )
    );
    assert_eq!(run.code(), 0, "{run:#?}");
}

#[test]
fn frames_sent_before_the_guest_posts_buffers_are_not_lost() {
    if !common::net::can_run_net_tests("frames_sent_before_the_guest_posts_buffers_are_not_lost") {
        return;
    }
    let ns = Netns::new();
    let sock = ns.packet_socket();
    let frames: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            frame(
                parse_mac(GUEST_MAC),
                HOST_MAC,
                format!("early-frame-{i}").as_bytes(),
            )
        })
        .collect();
    // The device is up (net.info) but has no receive buffer for 3 s; the frames arrive
    // meanwhile, and the guest posts its buffers afterwards.
    let (run, out) = run_with(
        &ns,
        "net.info sleep=3000 net.rx=0:3",
        &["--net", &net_arg()],
        "net 0: mac=",
        || frames.iter().for_each(|f| sock.send(f)),
    );
    let want: Vec<String> = frames.iter().map(|f| rx_line(f)).collect();
    assert_eq!(lines_with(&out, "net 0 rx"), want, "{out}\n{run:#?}");
    assert_eq!(run.code(), 0, "{run:#?}");
}

#[test]
fn the_guest_echoes_frames_back() {
    if !common::net::can_run_net_tests("the_guest_echoes_frames_back") {
        return;
    }
    let ns = Netns::new();
    let sock = ns.packet_socket();
    let sent: Vec<Vec<u8>> = [&b"ping"[..], &[0x5a; 1400][..]]
        .iter()
        .map(|p| frame(parse_mac(GUEST_MAC), HOST_MAC, p))
        .collect();
    let (run, out) = run_with(
        &ns,
        "net.info net.echo=0:2",
        &["--net", &net_arg()],
        "net 0: mac=",
        || sent.iter().for_each(|f| sock.send(f)),
    );
    assert_eq!(
        lines_with(&out, "net 0 echoed"),
        vec!["net 0 echoed len=18", "net 0 echoed len=1414"],
        "{out}\n{run:#?}"
    );
    for f in &sent {
        let back = sock
            .recv(Duration::from_secs(5))
            .expect("the echo came back");
        assert_eq!(&back[..6], &HOST_MAC, "to the sender");
        assert_eq!(&back[6..12], &parse_mac(GUEST_MAC), "from the guest");
        assert_eq!(&back[12..], &f[12..], "same ethertype and payload");
    }
    assert_eq!(run.code(), 0);
}

#[test]
fn config_file_with_a_generated_mac_and_two_devices() {
    if !common::net::can_run_net_tests("config_file_with_a_generated_mac_and_two_devices") {
        return;
    }
    let ns = Netns::new();
    common::net::add_tap(&ns, "tap1");
    let dir = scratch();
    let config = dir.as_path().join("vm.json");
    std::fs::write(
        &config,
        format!(
            r#"{{ "kernel": "{}", "cmdline": "net.info net.tx=1:second rng.read=64",
                 "net": [{{ "tap": "tap0", "mac": "{GUEST_MAC}" }}, {{ "tap": "tap1" }}],
                 "rng": true }}"#,
            test_guest().display()
        ),
    )
    .unwrap();
    let sock1 = common::net::PacketSocket::open(&ns.name, "tap1", ETHERTYPE);
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &ns.name, hearth_bin(), "run", "--config"])
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let run = wait_bounded(cmd.spawn().unwrap(), T, "config");
    assert_eq!(
        run.expect_line("net 0: "),
        format!("mac={GUEST_MAC}"),
        "{run:#?}"
    );
    let mac1 = run.expect_line("net 1: mac=");
    let m = parse_mac(mac1);
    assert_eq!(m[0] & 3, 2, "locally administered unicast: {mac1}");
    assert!(run.stdout.contains("net 1 tx ok\n"));
    assert!(run.stdout.contains("rng read 64 bytes"), "{run:#?}");
    let got = sock1.recv(Duration::from_secs(5)).expect("frame on tap1");
    assert_eq!(got, frame([0xff; 6], m, b"second"));
}

#[test]
fn bad_net_specs_fail_with_one_line_errors() {
    let guest = test_guest().display().to_string();
    for (spec, want) in [
        ("tap=", "tap is empty"),
        ("tap0", "is not key=value"),
        ("tap=0123456789abcdefgh", "at most 15"),
        ("tap=a/b", "not a valid interface name"),
        ("tap=t,mac=06:00:ac:10:00", "six hex bytes"),
        ("tap=t,mac=01:00:5e:00:00:01", "not a unicast address"),
        ("tap=t,vhost=on", "unknown option"),
    ] {
        let run = hearth(["run", "--kernel", &guest, "--net", spec]);
        assert_ne!(run.code(), 0, "{spec}");
        let first = run.stderr.lines().next().unwrap_or_default();
        assert!(first.contains("invalid --net"), "{spec}: {}", run.stderr);
        assert!(first.contains(want), "{spec}: {}", run.stderr);
    }
    // Taps that cannot be used: named in a one-line error, before the guest runs.
    let missing = format!("hearth-nx{}", std::process::id() % 100_000);
    for (tap, want) in [
        (
            missing.as_str(),
            "no such interface; create it first with `ip tuntap add",
        ),
        ("lo", "lo is not a tap device"),
    ] {
        let run = hearth(["run", "--kernel", &guest, "--net", &format!("tap={tap}")]);
        assert_eq!(run.code(), hearth::exit_status::HEARTH_ERROR, "{run:#?}");
        let err = run.stderr.trim_end();
        assert!(!err.contains('\n'), "one line: {err}");
        assert!(err.starts_with("hearth: error: "), "{err}");
        assert!(err.contains(tap), "{err}");
        // /dev/net/tun may be missing in a container; that error names the tap too.
        assert!(err.contains(want) || err.contains("/dev/net/tun"), "{err}");
        assert!(!run.stdout.contains("boot-marker"), "the guest never ran");
    }
}

#[test]
fn a_busy_tap_and_a_tun_device_fail_with_one_line_errors() {
    if !common::net::can_run_net_tests("a_busy_tap_and_a_tun_device_fail_with_one_line_errors") {
        return;
    }
    let ns = Netns::new();
    let status = std::process::Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "ip", "tuntap", "add", "dev", "tun0", "mode", "tun",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let one_line_error = |run: &Run, want: &str| {
        assert_eq!(run.code(), hearth::exit_status::HEARTH_ERROR, "{run:#?}");
        let err = run.stderr.trim_end();
        assert!(!err.contains('\n'), "one line: {err}");
        assert!(err.contains(want), "{err}");
        assert!(!run.stdout.contains("boot-marker"), "the guest never ran");
    };
    let run = wait_bounded(
        ns.hearth("exit=0", &["--net", "tap=tun0"]).spawn().unwrap(),
        T,
        "tun0",
    );
    one_line_error(&run, "tun0 is not a tap device");
    // A single-queue tap serves one process: a second hearth is refused while the first
    // runs.
    let dir = scratch();
    let serial = dir.as_path().join("first.txt");
    let first = ns
        .hearth(
            "net.info sleep=4000",
            &[
                "--net",
                &net_arg(),
                "--serial-out",
                serial.to_str().unwrap(),
            ],
        )
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _first = Kill(first);
    wait_for_text(&serial, "net 0: mac=", T);
    let run = wait_bounded(
        ns.hearth("exit=0", &["--net", &net_arg()]).spawn().unwrap(),
        T,
        "second",
    );
    one_line_error(&run, "tap tap0 is busy");
}

#[test]
fn net_and_rng_carry_on_after_restore() {
    if !common::net::can_run_net_tests("net_and_rng_carry_on_after_restore") {
        return;
    }
    let ns = Netns::new();
    let sock = ns.packet_socket();
    let dir = scratch();
    let d = dir.as_path();
    let api = d.join("api.sock");
    let serial1 = d.join("serial-1.txt");
    let serial2 = d.join("serial-2.txt");
    let snap = d.join("snap");
    let cmdline = "net.tx=0:before-snapshot rng.read=64 count=25 delay=20000 \
                   net.tx=0:after-restore rng.read=256 net.rx=0:1 exit=4";
    let first = ns
        .hearth(
            cmdline,
            &[
                "--net",
                &net_arg(),
                "--rng",
                "--api-sock",
                api.to_str().unwrap(),
                "--serial-out",
                serial1.to_str().unwrap(),
            ],
        )
        .spawn()
        .expect("start hearth");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let first = Kill(first);
    wait_for_text(&serial1, "count: 3\n", T);
    let got = sock
        .recv(Duration::from_secs(5))
        .expect("frame before the snapshot");
    assert_eq!(
        got,
        frame([0xff; 6], parse_mac(GUEST_MAC), b"before-snapshot")
    );
    let r = ctl(&api, &["snapshot", "--dir", snap.to_str().unwrap()]);
    assert_eq!(r.code(), 0, "{r:#?}");
    drop(first);

    // The restored VM reopens the same tap in the same namespace.
    let mut restore = std::process::Command::new("ip");
    restore
        .args([
            "netns",
            "exec",
            &ns.name,
            hearth_bin(),
            "restore",
            "--resume",
        ])
        .arg("--dir")
        .arg(&snap)
        .arg("--serial-out")
        .arg(&serial2)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let second = restore.spawn().expect("start hearth restore");
    let mut second = Kill(second);
    let out = wait_for_text(&serial2, "rng read 256", T);
    let got = sock
        .recv(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no frame after restore: {out}"));
    assert_eq!(
        got,
        frame([0xff; 6], parse_mac(GUEST_MAC), b"after-restore")
    );
    let f = frame(parse_mac(GUEST_MAC), HOST_MAC, b"host-to-restored-guest");
    sock.send(&f);
    let child = std::mem::replace(
        &mut second.0,
        std::process::Command::new("true").spawn().expect("true"),
    );
    let run = wait_bounded(child, T, "hearth restore");
    let out = std::fs::read_to_string(&serial2).unwrap();
    assert_eq!(run.code(), 4, "{out}\n{run:#?}");
    assert!(!out.contains("hearth-test-guest"), "no reboot: {out}");
    let rng = lines_with(&out, "rng read 256");
    assert_eq!(rng.len(), 1, "{out}");
    let distinct: u32 = rng[0]
        .split("distinct=")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(distinct > 100, "entropy after restore: {out}");
    assert_eq!(
        lines_with(&out, "net 0 rx"),
        vec![rx_line(&f).as_str()],
        "{out}"
    );
}
