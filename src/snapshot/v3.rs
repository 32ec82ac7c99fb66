//! Reading format 3, the previous format (this hearth writes 4; the policy is to read the
//! version before too). Format 4 added one field, the Firecracker `drive_id` of each disk
//! (`DiskConfig::drive_id`), so format 3's state is format 4's with older disk and VM
//! configurations. postcard has no field names: these mirror format 3's fields in order
//! and type, and must never change.

use std::path::PathBuf;

use serde::Deserialize;

use crate::boot::BootProtocol;
use crate::config::{
    CheckpointConfig, DiskConfig, ExecutionChoice, NetConfig, RateLimiterConfig, ShareConfig,
    VmConfig, VsockConfig,
};

/// `DiskConfig` as format 3 saved it.
#[derive(Deserialize)]
pub(super) struct DiskConfigV3 {
    path: PathBuf,
    read_only: bool,
    id: Option<String>,
    rate_limiter: Option<RateLimiterConfig>,
}

/// `VmConfig` as format 3 saved it.
#[derive(Deserialize)]
pub(super) struct VmConfigV3 {
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    cmdline: String,
    cpus: u32,
    memory: u64,
    serial_out: Option<PathBuf>,
    boot_protocol: BootProtocol,
    execution: ExecutionChoice,
    cmdline_workarounds: bool,
    disks: Vec<DiskConfigV3>,
    api_sock: Option<PathBuf>,
    net: Vec<NetConfig>,
    rng: bool,
    rng_rate_limiter: Option<RateLimiterConfig>,
    vsock: Option<VsockConfig>,
    checkpoint: Option<CheckpointConfig>,
    shares: Vec<ShareConfig>,
}

impl From<VmConfigV3> for VmConfig {
    fn from(c: VmConfigV3) -> Self {
        Self {
            kernel: c.kernel,
            initrd: c.initrd,
            cmdline: c.cmdline,
            cpus: c.cpus,
            memory: c.memory,
            serial_out: c.serial_out,
            boot_protocol: c.boot_protocol,
            execution: c.execution,
            cmdline_workarounds: c.cmdline_workarounds,
            disks: c
                .disks
                .into_iter()
                .map(|d| DiskConfig {
                    path: d.path,
                    read_only: d.read_only,
                    id: d.id,
                    drive_id: None,
                    rate_limiter: d.rate_limiter,
                })
                .collect(),
            api_sock: c.api_sock,
            net: c.net,
            rng: c.rng,
            rng_rate_limiter: c.rng_rate_limiter,
            vsock: c.vsock,
            checkpoint: c.checkpoint,
            shares: c.shares,
        }
    }
}
