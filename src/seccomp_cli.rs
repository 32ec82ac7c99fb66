//! Part of the `hearth` binary: the seccomp flags `run` and `restore` share.

use std::path::PathBuf;

use clap::Args;
use hearth::seccomp::{self, Filters, SeccompError};

/// seccomp: on by default, with hearth's built-in filters.
#[derive(Args, Debug)]
pub struct SeccompArgs {
    /// Run without seccomp filters (every thread may make every system call).
    #[arg(long, conflicts_with = "seccomp_filter")]
    no_seccomp: bool,
    /// Use these filters instead of the built-in ones: Firecracker's JSON format (keys
    /// vmm, vcpu, and optionally event-loop and api) or its compiled format (from
    /// `hearth seccomp-compile` or Firecracker's seccompiler-bin).
    #[arg(long, value_name = "FILE")]
    seccomp_filter: Option<PathBuf>,
}

impl SeccompArgs {
    /// Turns the chosen filters on for this process (each thread installs its own).
    /// Without either flag, `HEARTH_SECCOMP_FILTER=FILE` stands for `--seccomp-filter FILE`.
    pub fn configure(&self) -> Result<(), SeccompError> {
        let filters = Filters::from_flags(self.no_seccomp, self.seccomp_filter.as_deref())?;
        seccomp::configure(filters)
    }
}
