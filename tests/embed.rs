//! hearth embedded as a library: several VMs in one process at once, each with its own
//! console captured in memory and no stdin, a wait that times out, and control (pause,
//! snapshot, resume, stop) from another thread.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hearth::{exit_status, Console, ExitReason, Vm, VmConfig, VmError};

const T: Duration = Duration::from_secs(60);

/// A `Write` into memory that the test can read while the guest writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn config(cmdline: &str) -> VmConfig {
    let mut c = VmConfig::new(test_guest());
    c.cmdline = cmdline.into();
    c
}

/// Waits for the VM to end, failing with the console so far after `T`.
fn wait(mut vm: hearth::RunningVm, console: impl Fn() -> String) -> ExitReason {
    let start = Instant::now();
    loop {
        if let Some(r) = vm.wait_timeout(Duration::from_secs(1)).unwrap() {
            return r;
        }
        assert!(
            start.elapsed() < T,
            "the VM ran longer than {T:?}; its console:\n{}",
            console()
        );
    }
}

#[test]
fn two_vms_at_once_each_with_its_own_console() {
    let a = std::thread::spawn(|| {
        let out = Captured::default();
        let console = Console::new().no_input().output(out.clone());
        let vm = Vm::with_console(&config("console=ttyS0 vm=a count=3 exit=3"), console).unwrap();
        let running = vm.start().unwrap();
        let handle = running.handle();
        let reason = wait(running, || out.text());
        (reason, out.text(), handle.boot_time())
    });
    let b = std::thread::spawn(|| {
        let (console, rx) = Console::new().no_input().channel();
        let vm = Vm::with_console(&config("console=ttyS0 vm=b count=5 exit=4"), console).unwrap();
        let mut running = vm.start().unwrap();
        let mut text = Vec::new();
        let reason = loop {
            while let Ok(chunk) = rx.try_recv() {
                text.extend_from_slice(&chunk);
            }
            if let Some(r) = running.wait_timeout(Duration::from_millis(100)).unwrap() {
                break r;
            }
        };
        // What the guest wrote last is in the channel too.
        text.extend(rx.try_iter().flatten());
        (
            reason,
            String::from_utf8_lossy(&text).into_owned(),
            running.boot_time(),
        )
    });
    let (ra, ta, boot_a) = a.join().unwrap();
    let (rb, tb, boot_b) = b.join().unwrap();
    assert_eq!(ra, ExitReason::GuestExit(3), "{ta}");
    assert_eq!(rb, ExitReason::GuestExit(4), "{tb}");
    assert!(ta.contains("vm=a") && !ta.contains("vm=b"), "{ta}");
    assert!(tb.contains("vm=b") && !tb.contains("vm=a"), "{tb}");
    assert!(
        ta.contains("count: 3\n") && !ta.contains("count: 4"),
        "{ta}"
    );
    assert!(tb.contains("count: 5\n"), "{tb}");
    // Each VM times its own boot, from its own start.
    assert!(
        boot_a.is_some() && boot_b.is_some(),
        "{boot_a:?} {boot_b:?}"
    );
}

#[test]
fn a_wait_times_out_and_another_thread_controls_the_vm() {
    let dir = scratch();
    let out = Captured::default();
    let console = Console::new().no_input().output(out.clone());
    let vm = Vm::with_console(&config("console=ttyS0 count=1000000"), console).unwrap();
    let mut running = vm.start().unwrap();
    assert_eq!(running.try_wait().unwrap(), None);
    let started = Instant::now();
    assert_eq!(
        running.wait_timeout(Duration::from_millis(300)).unwrap(),
        None,
        "the guest counts for a long time"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));

    let handle = running.handle();
    let snap = dir.as_path().join("snap");
    let controller = {
        let out = out.clone();
        let snap = snap.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            while !out.text().contains("count: 2\n") {
                assert!(start.elapsed() < T, "no count: {}", out.text());
                std::thread::sleep(Duration::from_millis(10));
            }
            handle.pause().unwrap();
            assert!(handle.is_paused());
            let paused = out.text();
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(out.text(), paused, "nothing runs while paused");
            handle.snapshot(&snap).unwrap();
            handle.resume().unwrap();
            let len = paused.len();
            let start = Instant::now();
            while out.text().len() == len {
                assert!(start.elapsed() < T, "nothing after resume");
                std::thread::sleep(Duration::from_millis(10));
            }
            handle.stop();
            handle
        })
    };
    let reason = wait(running, || out.text());
    let handle = controller.join().unwrap();
    assert_eq!(reason, ExitReason::Stopped);
    assert_eq!(
        reason.exit_code(),
        exit_status::STOPPED,
        "a host stop is not 0"
    );
    let memory_layer = std::fs::read_dir(&snap).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("memory-")
    });
    assert!(snap.join("state").is_file() && memory_layer);
    assert!(!handle.is_running());
    assert!(matches!(handle.pause(), Err(VmError::NotRunning)));
}

#[test]
fn dropping_a_running_vm_stops_it() {
    let out = Captured::default();
    let console = Console::new().no_input().output(out.clone());
    let vm = Vm::with_console(&config("console=ttyS0 count=1000000"), console).unwrap();
    let running = vm.start().unwrap();
    let handle = running.handle();
    let start = Instant::now();
    while !out.text().contains("count: 1\n") {
        assert!(start.elapsed() < T, "no count: {}", out.text());
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(running);
    assert!(!handle.is_running());
    let len = out.text().len();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(out.text().len(), len, "nothing runs after the drop");
}
