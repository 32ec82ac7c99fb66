//! virtio-vsock end to end: the test guest listens on and connects to vsock ports, the
//! test plays the host process on hearth's Unix sockets (Firecracker's convention:
//! `CONNECT <port>\n` / `OK <port>\n` on the main socket, `<socket>_<port>` listeners for
//! guest connections).

// Test patterns and syscall plumbing narrow integers on purpose.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;

/// How long the host side of a test may take before it fails loudly (hearth itself is
/// bounded by the 60 s of `boot_test_guest`).
const HOST_TIMEOUT: Duration = Duration::from_secs(60);

fn vsock_arg(cid: u64, sock: &Path) -> String {
    format!("cid={cid},socket={}", sock.display())
}

fn patterned(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(131) ^ (i >> 8)) as u8)
        .collect()
}

/// Connects to hearth's socket, retrying until hearth has bound it.
fn connect_when_bound(sock: &Path) -> UnixStream {
    let start = Instant::now();
    loop {
        match UnixStream::connect(sock) {
            Ok(s) => return s,
            Err(e) if start.elapsed() > HOST_TIMEOUT => {
                panic!("hearth never listened on {}: {e}", sock.display())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// The host side of the echo test: CONNECT, OK, then `data` out and back.
fn host_echo(sock: PathBuf, port: u32, data: Vec<u8>) -> JoinHandle<Result<u32, String>> {
    std::thread::spawn(move || {
        let mut s = connect_when_bound(&sock);
        s.set_read_timeout(Some(HOST_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(HOST_TIMEOUT)).unwrap();
        s.write_all(format!("CONNECT {port}\n").as_bytes())
            .map_err(|e| format!("writing CONNECT: {e}"))?;
        let mut reader = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("reading OK: {e}"))?;
        let host_port: u32 = line
            .strip_prefix("OK ")
            .and_then(|p| p.strip_suffix('\n'))
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("expected `OK <port>\\n`, got {line:?}"))?;
        // Everything at once: hearth passes it on as the guest's credit allows.
        let writer = {
            let mut s = s.try_clone().unwrap();
            let data = data.clone();
            std::thread::spawn(move || s.write_all(&data))
        };
        let mut back = vec![0u8; data.len()];
        reader
            .read_exact(&mut back)
            .map_err(|e| format!("reading the echo: {e}"))?;
        writer
            .join()
            .unwrap()
            .map_err(|e| format!("writing data: {e}"))?;
        if back != data {
            let at = back.iter().zip(&data).position(|(a, b)| a != b);
            return Err(format!(
                "the echo differs from what was sent, first at {at:?}"
            ));
        }
        Ok(host_port)
    })
}

/// No warnings from the device (a failed epoll update, ...).
fn assert_quiet(run: &Run) {
    assert!(
        !run.stderr.contains("virtio-vsock"),
        "device warnings: {}",
        run.stderr
    );
}

#[test]
fn host_connects_to_a_guest_listener_and_gets_its_bytes_echoed() {
    let dir = scratch();
    let sock = dir.as_path().join("vm.sock");
    // Five 2 KiB packets' worth and a bit: more than the guest's 4 KiB of credit.
    let n = 10_000;
    let host = host_echo(sock.clone(), 5000, patterned(n));
    let run = boot_test_guest(
        &format!("vsock.info vsock.echo=5000:{n}"),
        &["--vsock", &vsock_arg(3, &sock)],
    );
    assert_eq!(run.expect_line("vsock: "), "cid=3", "{run:#?}");
    let host_port = host
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("host side: {e}\n{run:#?}"));
    assert!(host_port >= 1 << 30, "host port {host_port}");
    assert_eq!(
        run.expect_line("vsock echo port=5000 "),
        format!("bytes={n}"),
        "{run:#?}"
    );
    assert_eq!(run.code(), 0);
    assert_quiet(&run);
    assert!(!sock.exists(), "hearth removes its socket when it exits");
}

#[test]
fn a_larger_echo_goes_through_many_credit_rounds() {
    let dir = scratch();
    let sock = dir.as_path().join("vm.sock");
    // 25 times the guest's credit, and more than hearth's own 64 KiB buffer.
    let n = 100_000;
    let host = host_echo(sock.clone(), 5000, patterned(n));
    let run = boot_test_guest(
        &format!("vsock.echo=5000:{n}"),
        &["--vsock", &vsock_arg(3, &sock)],
    );
    host.join()
        .unwrap()
        .unwrap_or_else(|e| panic!("host side: {e}\n{run:#?}"));
    assert_eq!(
        run.expect_line("vsock echo port=5000 "),
        format!("bytes={n}"),
        "{run:#?}"
    );
    assert_quiet(&run);
}

#[test]
fn guest_connects_to_a_host_listener() {
    let dir = scratch();
    let sock = dir.as_path().join("vm.sock");
    let listener = UnixListener::bind(dir.as_path().join("vm.sock_6000")).unwrap();
    listener.set_nonblocking(true).unwrap();
    let host = std::thread::spawn(move || -> Result<Vec<u8>, String> {
        let start = Instant::now();
        let mut s = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if start.elapsed() > HOST_TIMEOUT => {
                    return Err("the guest never connected".into())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(HOST_TIMEOUT)).unwrap();
        let mut got = Vec::new();
        // Until the guest shuts its end down.
        s.read_to_end(&mut got)
            .map_err(|e| format!("reading: {e}"))?;
        Ok(got)
    });
    // Through the JSON config this time.
    let config = dir.as_path().join("vm.json");
    let json = serde_json::json!({
        "kernel": test_guest(),
        "cmdline": "vsock.send=6000:hello-marker",
        "vsock": { "cid": 42, "socket": sock },
    });
    std::fs::write(&config, json.to_string()).unwrap();
    let run = hearth(["run", "--config", config.to_str().unwrap()]);
    assert_eq!(run.expect_line("vsock send port=6000 "), "ok", "{run:#?}");
    let got = host
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("host side: {e}\n{run:#?}"));
    assert_eq!(String::from_utf8_lossy(&got), "hello-marker");
    assert_eq!(run.code(), 0);
    assert_quiet(&run);
}

#[test]
fn guest_connection_without_a_host_listener_is_reset() {
    let dir = scratch();
    let sock = dir.as_path().join("vm.sock");
    // A socket file nobody listens on any more, and no file at all.
    drop(UnixListener::bind(dir.as_path().join("vm.sock_7001")).unwrap());
    let run = boot_test_guest(
        "vsock.send=7000:nobody vsock.send=7001:stale",
        &["--vsock", &vsock_arg(5, &sock)],
    );
    assert_eq!(run.expect_line("vsock send port=7000 "), "rst", "{run:#?}");
    assert_eq!(run.expect_line("vsock send port=7001 "), "rst", "{run:#?}");
    assert_eq!(run.code(), 0);
}

#[test]
fn a_host_connect_to_a_port_nobody_listens_on_is_closed() {
    let dir = scratch();
    let sock = dir.as_path().join("vm.sock");
    let path = sock.clone();
    // The guest listens on 5000; the host asks for 5001: the guest resets it, the host
    // reads end of file instead of OK. Then a good connection still works.
    // The refusal is checked first: end of file then cannot be hearth exiting, since the
    // echo needs it afterwards.
    let host = std::thread::spawn(move || -> Result<(), String> {
        let mut s = connect_when_bound(&path);
        s.set_read_timeout(Some(HOST_TIMEOUT)).unwrap();
        s.write_all(b"CONNECT 5001\n").unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .map_err(|e| format!("reading: {e}"))?;
        if !buf.is_empty() {
            return Err(format!("expected end of file, got {buf:?}"));
        }
        host_echo(path, 5000, b"still works".to_vec())
            .join()
            .unwrap()
            .map(drop)
    });
    let run = boot_test_guest("vsock.echo=5000:11", &["--vsock", &vsock_arg(3, &sock)]);
    host.join()
        .unwrap()
        .unwrap_or_else(|e| panic!("host side: {e}\n{run:#?}"));
    assert_eq!(
        run.expect_line("vsock echo port=5000 "),
        "bytes=11",
        "{run:#?}"
    );
}

#[test]
fn bad_vsock_options_are_one_line_errors() {
    let dir = scratch();
    let guest = test_guest().to_str().unwrap().to_string();
    let taken = dir.as_path().join("taken.sock");
    std::fs::write(&taken, b"").unwrap();
    let ok_path = dir.as_path().join("v.sock");
    for (spec, expect) in [
        (
            format!("cid=2,socket={}", ok_path.display()),
            "cid 2 is reserved".to_string(),
        ),
        ("cid=3".to_string(), "socket=PATH is required".to_string()),
        (
            format!("socket={}", ok_path.display()),
            "cid=N is required".to_string(),
        ),
        (
            format!("cid=3,socket={}", taken.display()),
            format!("vsock socket {}: the path already exists", taken.display()),
        ),
        (
            "cid=3,socket=/nonexistent/dir/v.sock".to_string(),
            "vsock socket /nonexistent/dir/v.sock: cannot listen there".to_string(),
        ),
    ] {
        let run = hearth(["run", "--kernel", &guest, "--vsock", &spec]);
        assert_eq!(
            run.code(),
            hearth::exit_status::HEARTH_ERROR,
            "{spec}: {run:#?}"
        );
        assert!(run.stdout.is_empty(), "nothing started: {run:#?}");
        assert_eq!(
            run.stderr.trim_end().lines().count(),
            1,
            "one line: {}",
            run.stderr
        );
        assert!(run.stderr.contains(&expect), "{spec}: {}", run.stderr);
        assert!(!ok_path.exists(), "{spec}: no socket left behind");
    }
    // The same check for a config file.
    let config = dir.as_path().join("vm.json");
    let json = serde_json::json!({
        "kernel": guest, "vsock": { "cid": 1, "socket": ok_path },
    });
    std::fs::write(&config, json.to_string()).unwrap();
    let run = hearth(["run", "--config", config.to_str().unwrap()]);
    assert_eq!(run.code(), hearth::exit_status::HEARTH_ERROR, "{run:#?}");
    assert!(
        run.stderr.contains("vsock cid 1 is reserved"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
}

#[test]
fn vsock_carries_on_after_restore() {
    let dir = scratch();
    let api = dir.as_path().join("api.sock");
    let serial = dir.as_path().join("serial.txt");
    let serial2 = dir.as_path().join("serial-2.txt");
    let sock = dir.as_path().join("vm.sock");
    let args: Vec<String> = vec![
        "run".into(),
        "--kernel".into(),
        test_guest().display().to_string(),
        "--cmdline".into(),
        "vsock.info count=20 delay=20000 vsock.echo=5000:4000 vsock.send=6000:after-restore exit=6"
            .into(),
        "--api-sock".into(),
        api.display().to_string(),
        "--serial-out".into(),
        serial.display().to_string(),
        "--vsock".into(),
        vsock_arg(3, &sock),
    ];
    let mut first = spawn_hearth(&args);
    wait_for_text(&serial, "count: 3\n", HOST_TIMEOUT);
    let snap = dir.as_path().join("snap");
    let r = ctl(&api, &["snapshot", "--dir", snap.to_str().unwrap()]);
    assert_eq!(r.code(), 0, "{r:#?}");
    let _ = first.kill();
    let _ = first.wait();

    // The restored VM listens on the same socket path (the dead process's file is stale).
    let listener = UnixListener::bind(dir.as_path().join("vm.sock_6000")).unwrap();
    let host = host_echo(sock.clone(), 5000, patterned(4000));
    let run = hearth_with_timeout(
        [
            "restore",
            "--resume",
            "--dir",
            snap.to_str().unwrap(),
            "--serial-out",
            serial2.to_str().unwrap(),
        ],
        HOST_TIMEOUT * 2,
    );
    let out = std::fs::read_to_string(&serial2).unwrap_or_default();
    assert_eq!(run.code(), 6, "{out}\n{run:#?}");
    host.join()
        .unwrap()
        .unwrap_or_else(|e| panic!("host side after restore: {e}\n{out}"));
    assert!(out.contains("vsock echo port=5000 bytes=4000\n"), "{out}");
    assert!(out.contains("vsock send port=6000 ok\n"), "{out}");
    let (mut s, _) = listener.accept().unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert_eq!(got, "after-restore");
    assert!(!out.contains("hearth-test-guest"), "no reboot: {out}");
}
