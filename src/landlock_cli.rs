//! Part of the `hearth` binary: the Landlock flags `run` and `restore` share.

use clap::Args;
use hearth::landlock::{Landlock, LandlockError, Rule};

/// Landlock: off unless asked for.
#[derive(Args, Debug, Default)]
pub struct LandlockArgs {
    /// Restrict hearth with Landlock to the files its VM uses (kernel, initrd, disks,
    /// socket directories, serial output, checkpoint and shared directories, /dev/kvm,
    /// /dev/net/tun); fails where the kernel has no Landlock.
    #[arg(long)]
    landlock: bool,
    /// With --landlock, also allow PATH (and what is beneath it): PATH[,ro|rw], read-only
    /// unless rw (e.g. a directory snapshots will be taken into over the API); repeat for
    /// more.
    #[arg(long, value_name = "PATH[,ro|rw]", requires = "landlock", value_parser = parse_rule)]
    landlock_rule: Vec<Rule>,
}

fn parse_rule(s: &str) -> Result<Rule, String> {
    s.parse().map_err(|e: LandlockError| e.to_string())
}

impl LandlockArgs {
    /// Whether --landlock was given.
    pub fn enabled(&self) -> bool {
        self.landlock
    }

    /// Restricts this process (its main thread, before any other starts) to `base`'s
    /// paths and the extra rules, if --landlock was given.
    pub fn restrict(&self, mut base: Landlock) -> Result<(), LandlockError> {
        if !self.landlock {
            return Ok(());
        }
        for rule in &self.landlock_rule {
            base.allow(&rule.path, rule.access);
        }
        base.restrict_self()
    }
}
