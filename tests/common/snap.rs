//! Shared by the snapshot tests (snapshot.rs, checkpoint.rs, restore_overrides.rs): a
//! test guest run with an API socket and its console in a file, snapshots through
//! `hearth ctl`, restores, and the guest's `count: N` lines.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use super::{
    ctl, hearth_with_timeout, spawn_hearth, spawn_hearth_env, test_guest, wait_bounded,
    wait_for_text, Run,
};

/// The `count: N` values in guest output, in order.
pub fn counts(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("count: "))
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// The last `count: N` in the file at `path` (0 before the first).
pub fn last_count(path: &Path) -> u64 {
    counts(&std::fs::read_to_string(path).unwrap_or_default())
        .last()
        .copied()
        .unwrap_or(0)
}

/// A hearth process with an API socket and its serial output in a file; killed on drop.
pub struct GuestVm {
    pub child: Option<Child>,
    pub sock: PathBuf,
    pub serial: PathBuf,
}

impl Drop for GuestVm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl GuestVm {
    /// The test guest with `cmdline` (and extra `run` flags), its socket and console at
    /// `dir/<name>.sock` and `dir/<name>.txt`.
    pub fn run(dir: &Path, name: &str, cmdline: &str, extra: &[&str]) -> Self {
        Self::run_at(
            dir.join(format!("{name}.sock")),
            dir.join(format!("{name}.txt")),
            cmdline,
            extra,
        )
    }

    /// The same with the socket and console where given.
    pub fn run_at(sock: PathBuf, serial: PathBuf, cmdline: &str, extra: &[&str]) -> Self {
        let mut args: Vec<String> = vec![
            "run".into(),
            "--kernel".into(),
            test_guest().display().to_string(),
            "--cmdline".into(),
            cmdline.into(),
            "--api-sock".into(),
            sock.display().to_string(),
            "--serial-out".into(),
            serial.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self {
            child: Some(spawn_hearth(&args)),
            sock,
            serial,
        }
    }

    /// `hearth restore --resume` of `snap`, with a socket and console named as in
    /// [`GuestVm::run`].
    pub fn restore(dir: &Path, name: &str, snap: &Path) -> Self {
        Self::restore_with_env(dir, name, snap, &[])
    }

    /// [`GuestVm::restore`] with extra environment variables for hearth.
    pub fn restore_with_env(dir: &Path, name: &str, snap: &Path, env: &[(&str, &str)]) -> Self {
        let sock = dir.join(format!("{name}.sock"));
        let serial = dir.join(format!("{name}.txt"));
        let child = spawn_hearth_env(
            &[
                "restore",
                "--dir",
                snap.to_str().unwrap(),
                "--resume",
                "--api-sock",
                sock.to_str().unwrap(),
                "--serial-out",
                serial.to_str().unwrap(),
            ],
            env,
        );
        Self {
            child: Some(child),
            sock,
            serial,
        }
    }

    /// `hearth ctl snapshot --dir snap <extra>`, which must succeed.
    pub fn snapshot(&self, snap: &Path, extra: &[&str]) {
        let mut args = vec!["snapshot", "--dir", snap.to_str().unwrap()];
        args.extend_from_slice(extra);
        let r = ctl(&self.sock, &args);
        assert_eq!(r.code(), 0, "snapshot into {}: {r:#?}", snap.display());
    }

    /// Waits (bounded by `timeout`) for the VM to end; its run and console.
    pub fn wait(mut self, what: &str, timeout: Duration) -> (Run, String) {
        let child = self.child.take().expect("the VM was waited for already");
        let run = wait_bounded(child, timeout, what);
        let out = std::fs::read_to_string(&self.serial).unwrap_or_default();
        (run, out)
    }
}

/// Starts the test guest with `cmdline` (socket `dir/api.sock`, console `dir/<name>.txt`),
/// snapshots it into `dir/snap` once its console holds `marker`, and kills it.
pub fn snapshot_once(
    dir: &Path,
    name: &str,
    cmdline: &str,
    extra: &[&str],
    marker: &str,
    timeout: Duration,
) -> (PathBuf, GuestVm) {
    let vm = GuestVm::run_at(
        dir.join("api.sock"),
        dir.join(format!("{name}.txt")),
        cmdline,
        extra,
    );
    wait_for_text(&vm.serial, marker, timeout);
    let snap = dir.join("snap");
    vm.snapshot(&snap, &[]);
    (snap, vm)
}

/// `hearth restore --dir snap --resume --serial-out serial <extra>`, run to its end
/// (bounded by `timeout`).
pub fn restore_resumed(snap: &Path, serial: &Path, extra: &[&str], timeout: Duration) -> Run {
    let mut args = vec![
        "restore".to_string(),
        "--dir".into(),
        snap.display().to_string(),
        "--resume".into(),
        "--serial-out".into(),
        serial.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    hearth_with_timeout(args, timeout)
}

/// Polls `f` until it holds, failing with the console at `serial` after `timeout`.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool, serial: &Path, timeout: Duration) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "{what} did not happen within {timeout:?}; {} holds:\n{}",
            serial.display(),
            std::fs::read_to_string(serial).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
