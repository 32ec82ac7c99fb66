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

pub mod api;
pub mod arch;
pub mod boot;
pub mod config;
pub mod device_manager;
pub mod jailer;
pub mod kvm;
pub mod memory;
pub mod rate_limit;
pub mod seccomp;
pub mod snapshot;
pub mod vcpu;
pub mod vm;

pub use config::VmConfig;
pub use vcpu::ExitReason;
pub use vm::{RestoreOptions, RunningVm, Vm, VmError};
