//! hearth: a minimal KVM virtual machine monitor.
//!
//! The whole embedding story: describe a VM, build it, run it.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = hearth::VmConfig::new("vmlinux");
//! config.cmdline = "console=ttyS0 reboot=k panic=-1".into();
//! let reason = hearth::Vm::try_from(config)?.run()?;
//! println!("{reason}");
//! # Ok(())
//! # }
//! ```
//!
//! For more control, [`Vm::start`] returns a [`RunningVm`] to wait on (`wait`,
//! `wait_timeout`, `try_wait`) and cloneable [`VmHandle`]s that other threads use to
//! pause, resume, snapshot or stop it. [`Console`] gives each VM its own serial sink (any
//! `Write`, or a channel) and input (stdin, none, or a file descriptor), so several VMs can
//! run in one process. Build without the `cli` feature (`default-features = false`) to
//! leave out clap and the command line.
//!
//! # What the library does to the process
//!
//! - It installs a handler for real-time signal 35 (`vcpu::kick_signal`), used to kick vCPU threads
//!   out of KVM_RUN; do not use that signal for anything else.
//! - With the default [`Console`] input it duplicates fd 0 and reads the guest's input from
//!   it; use [`Console::no_input`] to leave stdin alone. It never changes terminal modes:
//!   raw mode, the `Ctrl-a x` escape and SIGINT/SIGTERM handling are the CLI's.
//! - It prints nothing: diagnostics go through the `log` facade (install a logger to see
//!   them); the default console output is stdout.
//! - Each VM starts one thread per vCPU, one event-loop thread and short-lived setup
//!   threads; dropping a [`RunningVm`] stops the VM and joins them.

pub mod api;
pub mod arch;
pub mod boot;
pub mod config;
pub mod console;
pub mod device_manager;
pub mod jailer;
pub mod kvm;
pub mod landlock;
pub mod memory;
pub mod rate_limit;
pub mod run_cmd;
pub mod seccomp;
pub mod snapshot;
pub mod vcpu;
pub mod vm;

pub use config::VmConfig;
pub use console::{Console, ConsoleInput};
pub use vcpu::{exit_status, ExitReason};
pub use vm::{
    CheckpointConfig, CheckpointStats, RestoreOptions, RunningVm, SnapshotInfo, SnapshotOptions,
    Vm, VmError, VmHandle,
};
