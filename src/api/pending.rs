//! The VM being described before InstanceStart: Firecracker's resources, checked as they
//! arrive (each PUT is refused on its own, as Firecracker does) and turned into a
//! [`VmConfig`] at boot.

use std::path::PathBuf;

use super::limits;
use super::models::*;
use super::router::Fault;
use crate::config::{DiskConfig, MacAddr, NetConfig, VmConfig, VsockConfig};

/// Firecracker's resources, as PUT so far.
#[derive(Clone, Debug, Default)]
pub struct PendingVm {
    /// Kernel, initrd and command line.
    pub boot_source: Option<BootSource>,
    /// vCPUs and memory.
    pub machine: MachineConfig,
    /// Drives, in the order they were first PUT.
    pub drives: Vec<Drive>,
    /// Network interfaces, in the order they were first PUT.
    pub nets: Vec<NetworkInterface>,
    /// vsock.
    pub vsock: Option<Vsock>,
    /// Entropy device.
    pub entropy: Option<Entropy>,
    /// Logger, as PUT.
    pub logger: Option<Logger>,
    /// Metrics, as PUT.
    pub metrics: Option<Metrics>,
    /// Periodic checkpoints (hearth extension), as PUT.
    pub checkpoints: Option<Checkpoints>,
}

/// The checkpoint settings `c` asks for, checked.
pub fn checkpoint_config(c: &Checkpoints) -> Result<crate::config::CheckpointConfig, Fault> {
    if c.interval_ms < 10 {
        return Err(Fault(format!(
            "Invalid checkpoints: interval_ms {} is too short; give at least 10.",
            c.interval_ms
        )));
    }
    if c.keep == 0 {
        return Err(Fault(
            "Invalid checkpoints: keep must be at least 1.".into(),
        ));
    }
    if c.dir.is_empty() {
        return Err(Fault("Invalid checkpoints: dir cannot be empty.".into()));
    }
    Ok(crate::config::CheckpointConfig {
        every: std::time::Duration::from_millis(c.interval_ms),
        dir: PathBuf::from(&c.dir),
        keep: c.keep,
    })
}

/// Firecracker-style settings of hearth's checkpoint config.
pub fn checkpoints_of(c: &crate::config::CheckpointConfig) -> Checkpoints {
    Checkpoints {
        interval_ms: u64::try_from(c.every.as_millis()).unwrap_or(u64::MAX),
        dir: c.dir.display().to_string(),
        keep: c.keep,
    }
}

fn unsupported(what: &str) -> Fault {
    Fault(format!("hearth does not support {what}."))
}

fn check_machine(m: &MachineConfig) -> Result<(), Fault> {
    if m.vcpu_count == 0 || m.vcpu_count > 32 {
        return Err(Fault(
            "The vCPU number is invalid! The vCPU number can only be 1 or an even number \
             when SMT is enabled."
                .into(),
        ));
    }
    if m.mem_size_mib == 0 {
        return Err(Fault(
            "The memory size (MiB) is either 0, or not a multiple of the configured page size."
                .into(),
        ));
    }
    if m.mem_size_mib > (1 << 24) {
        return Err(Fault(format!(
            "The memory size of {} MiB is larger than hearth supports (16 TiB).",
            m.mem_size_mib
        )));
    }
    if m.smt {
        return Err(unsupported("SMT (smt: true); give smt: false"));
    }
    if m.cpu_template
        .as_ref()
        .is_some_and(|t| *t != CpuTemplate::None)
    {
        return Err(unsupported(
            "CPU templates; give cpu_template \"None\" or omit it",
        ));
    }
    if m.track_dirty_pages {
        return Err(unsupported(
            "dirty page tracking (diff snapshots); give track_dirty_pages: false",
        ));
    }
    if m.huge_pages != HugePages::None {
        return Err(unsupported("huge pages; give huge_pages \"None\""));
    }
    Ok(())
}

impl PendingVm {
    /// `PUT /machine-config`.
    pub fn put_machine(&mut self, m: MachineConfig) -> Result<(), Fault> {
        check_machine(&m)?;
        self.machine = m;
        Ok(())
    }

    /// `PATCH /machine-config`.
    pub fn patch_machine(&mut self, u: MachineConfigUpdate) -> Result<(), Fault> {
        let mut m = self.machine.clone();
        m.vcpu_count = u.vcpu_count.unwrap_or(m.vcpu_count);
        m.mem_size_mib = u.mem_size_mib.unwrap_or(m.mem_size_mib);
        m.smt = u.smt.unwrap_or(m.smt);
        m.cpu_template = u.cpu_template.or(m.cpu_template);
        m.track_dirty_pages = u.track_dirty_pages.unwrap_or(m.track_dirty_pages);
        m.huge_pages = u.huge_pages.unwrap_or(m.huge_pages);
        self.put_machine(m)
    }

    /// `PUT /boot-source`.
    pub fn put_boot_source(&mut self, b: BootSource) -> Result<(), Fault> {
        if b.kernel_image_path.is_empty() {
            return Err(Fault(
                "The kernel file cannot be opened: empty path.".into(),
            ));
        }
        self.boot_source = Some(b);
        Ok(())
    }

    /// `PUT /drives/{id}`: a new drive, or a new description of one not yet booted.
    pub fn put_drive(&mut self, mut d: Drive) -> Result<(), Fault> {
        if d.socket.is_some() {
            return Err(unsupported("vhost-user-block drives (socket)"));
        }
        if d.path_on_host.as_deref().is_none_or(str::is_empty) {
            return Err(Fault(
                "Unable to create the virtio-block device: path_on_host is required.".into(),
            ));
        }
        d.rate_limiter = limits::normalize(&d.rate_limiter, "rate_limiter")?;
        if d.is_root_device
            && self
                .drives
                .iter()
                .any(|o| o.is_root_device && o.drive_id != d.drive_id)
        {
            return Err(Fault("A root block device already exists!".into()));
        }
        match self.drives.iter_mut().find(|o| o.drive_id == d.drive_id) {
            Some(old) => *old = d,
            None => self.drives.push(d),
        }
        Ok(())
    }

    /// `PUT /network-interfaces/{id}`.
    pub fn put_net(&mut self, mut n: NetworkInterface) -> Result<(), Fault> {
        if let Some(mac) = &n.guest_mac {
            mac.parse::<MacAddr>().map_err(|e| Fault(e.to_string()))?;
        }
        if n.mtu.is_some() {
            return Err(unsupported("setting the MTU (mtu)"));
        }
        n.rx_rate_limiter = limits::normalize(&n.rx_rate_limiter, "rx_rate_limiter")?;
        n.tx_rate_limiter = limits::normalize(&n.tx_rate_limiter, "tx_rate_limiter")?;
        let clash = |o: &NetworkInterface| {
            o.iface_id != n.iface_id
                && (o.host_dev_name == n.host_dev_name
                    || (o.guest_mac.is_some() && o.guest_mac == n.guest_mac))
        };
        if self.nets.iter().any(clash) {
            return Err(Fault(format!(
                "The host device name {} or guest MAC is already in use by another interface.",
                n.host_dev_name
            )));
        }
        match self.nets.iter_mut().find(|o| o.iface_id == n.iface_id) {
            Some(old) => *old = n,
            None => self.nets.push(n),
        }
        Ok(())
    }

    /// `PUT /vsock`.
    pub fn put_vsock(&mut self, v: Vsock) -> Result<(), Fault> {
        if v.guest_cid < 3 || v.guest_cid == u32::MAX {
            return Err(Fault(format!(
                "vsock guest_cid {} is reserved: give a CID from 3 to 4294967294.",
                v.guest_cid
            )));
        }
        if v.uds_path.is_empty() {
            return Err(Fault("The vsock uds_path cannot be empty.".into()));
        }
        self.vsock = Some(v);
        Ok(())
    }

    /// `PUT /entropy`.
    pub fn put_entropy(&mut self, mut e: Entropy) -> Result<(), Fault> {
        e.rate_limiter = limits::normalize(&e.rate_limiter, "rate_limiter")?;
        self.entropy = Some(e);
        Ok(())
    }

    /// `PUT /checkpoints` before boot: taken from InstanceStart or snapshot load on.
    pub fn put_checkpoints(&mut self, c: Checkpoints) -> Result<(), Fault> {
        checkpoint_config(&c)?;
        self.checkpoints = Some(c);
        Ok(())
    }

    /// The whole description, applied in Firecracker's config-file order.
    pub fn apply(&mut self, full: FullVmConfig) -> Result<(), Fault> {
        let absent =
            |v: &Option<serde_json::Value>| v.as_ref().is_none_or(serde_json::Value::is_null);
        for (value, what) in [
            (&full.balloon, "the balloon device (balloon)"),
            (&full.cpu_config, "custom CPU templates (cpu-config)"),
            (&full.memory_hotplug, "memory hotplug (memory-hotplug)"),
            (&full.mmds_config, "MMDS (mmds-config)"),
        ] {
            if !absent(value) {
                return Err(unsupported(what));
            }
        }
        if !full.pmem.is_empty() {
            return Err(unsupported("virtio-pmem devices (pmem)"));
        }
        if let Some(m) = full.machine_config {
            self.put_machine(m)?;
        }
        if let Some(b) = full.boot_source {
            self.put_boot_source(b)?;
        }
        for d in full.drives {
            self.put_drive(d)?;
        }
        for n in full.network_interfaces {
            self.put_net(n)?;
        }
        if let Some(v) = full.vsock {
            self.put_vsock(v)?;
        }
        if let Some(e) = full.entropy {
            self.put_entropy(e)?;
        }
        if let Some(c) = full.checkpoints {
            self.put_checkpoints(c)?;
        }
        self.logger = full.logger;
        self.metrics = full.metrics;
        Ok(())
    }

    /// The resources of a VM built another way (restored, or `hearth run`), so that
    /// `GET /vm/config` reports it and drive/interface IDs can be used: drives are
    /// `drive0`, `drive1`, ... in the guest's order (the first one the root), interfaces
    /// keep their IDs or are `net0`, ....
    pub fn from_config(c: &VmConfig) -> Self {
        let machine = MachineConfig {
            vcpu_count: u8::try_from(c.cpus).unwrap_or(u8::MAX),
            mem_size_mib: usize::try_from(c.memory >> 20).unwrap_or(usize::MAX),
            ..Default::default()
        };
        let path = |p: &std::path::Path| p.display().to_string();
        Self {
            boot_source: Some(BootSource {
                kernel_image_path: path(&c.kernel),
                boot_args: Some(c.cmdline.clone()),
                initrd_path: c.initrd.as_deref().map(path),
            }),
            machine,
            drives: c
                .disks
                .iter()
                .enumerate()
                .map(|(i, d)| Drive {
                    drive_id: d.drive_id.clone().unwrap_or_else(|| format!("drive{i}")),
                    partuuid: None,
                    is_root_device: false,
                    cache_type: CacheType::Unsafe,
                    is_read_only: Some(d.read_only),
                    path_on_host: Some(path(&d.path)),
                    rate_limiter: limits::from_config(d.rate_limiter),
                    io_engine: None,
                    socket: None,
                })
                .collect(),
            nets: c
                .net
                .iter()
                .enumerate()
                .map(|(i, n)| NetworkInterface {
                    iface_id: n.id.clone().unwrap_or_else(|| format!("net{i}")),
                    host_dev_name: n.tap.clone(),
                    guest_mac: n.mac.map(|m| m.to_string()),
                    mtu: None,
                    rx_rate_limiter: limits::from_config(n.rx_rate_limiter),
                    tx_rate_limiter: limits::from_config(n.tx_rate_limiter),
                })
                .collect(),
            vsock: c.vsock.as_ref().map(|v| Vsock {
                vsock_id: None,
                guest_cid: u32::try_from(v.cid).unwrap_or(u32::MAX),
                uds_path: path(&v.socket),
            }),
            entropy: c.rng.then(|| Entropy {
                rate_limiter: limits::from_config(c.rng_rate_limiter),
            }),
            logger: None,
            metrics: None,
            checkpoints: c.checkpoint.as_ref().map(checkpoints_of),
        }
    }

    /// The drives in the guest's order: the root drive first (`/dev/vda`).
    fn ordered_drives(&self) -> Vec<&Drive> {
        let mut drives: Vec<&Drive> = self.drives.iter().filter(|d| d.is_root_device).collect();
        drives.extend(self.drives.iter().filter(|d| !d.is_root_device));
        drives
    }

    /// Where drive `id` is in the guest's order.
    pub fn disk_index(&self, id: &str) -> Option<usize> {
        self.ordered_drives().iter().position(|d| d.drive_id == id)
    }

    /// What `GET /vm/config` answers.
    pub fn full(&self) -> FullVmConfig {
        FullVmConfig {
            drives: self.drives.clone(),
            boot_source: self.boot_source.clone(),
            logger: self.logger.clone(),
            machine_config: Some(self.machine.clone()),
            metrics: self.metrics.clone(),
            network_interfaces: self.nets.clone(),
            vsock: self.vsock.clone(),
            entropy: self.entropy.clone(),
            checkpoints: self.checkpoints.clone(),
            ..Default::default()
        }
    }

    /// The hearth VM this describes. The root drive comes first (`/dev/vda`) and the
    /// command line gets Firecracker's `root=` argument for it.
    pub fn to_vm_config(&self) -> Result<VmConfig, Fault> {
        let boot = self
            .boot_source
            .as_ref()
            .ok_or_else(|| Fault("Cannot start microvm without kernel configuration.".into()))?;
        let mut config = VmConfig::new(&boot.kernel_image_path);
        config.initrd = boot.initrd_path.as_ref().map(PathBuf::from);
        if let Some(args) = &boot.boot_args {
            config.cmdline = args.clone();
        }
        config.cpus = u32::from(self.machine.vcpu_count);
        config.memory = u64::try_from(self.machine.mem_size_mib)
            .ok()
            .and_then(|m| m.checked_mul(1 << 20))
            .ok_or_else(|| Fault("The memory size is too large.".into()))?;
        let drives = self.ordered_drives();
        if let Some(root) = drives.first().filter(|d| d.is_root_device) {
            let mode = if root.is_read_only == Some(true) {
                "ro"
            } else {
                "rw"
            };
            let dev = match &root.partuuid {
                Some(uuid) => format!("PARTUUID={uuid}"),
                None => "/dev/vda".to_string(),
            };
            config.cmdline = format!("{} root={dev} {mode}", config.cmdline);
        }
        config.disks = drives
            .into_iter()
            .map(|d| {
                Ok(DiskConfig {
                    path: PathBuf::from(d.path_on_host.clone().unwrap_or_default()),
                    read_only: d.is_read_only.unwrap_or(false),
                    id: None,
                    drive_id: Some(d.drive_id.clone()),
                    rate_limiter: limits::to_config(&d.rate_limiter, "rate_limiter")?,
                })
            })
            .collect::<Result<_, Fault>>()?;
        config.net = self
            .nets
            .iter()
            .map(|n| {
                Ok(NetConfig {
                    tap: n.host_dev_name.clone(),
                    mac: match &n.guest_mac {
                        Some(m) => Some(m.parse::<MacAddr>().map_err(|e| Fault(e.to_string()))?),
                        None => None,
                    },
                    id: Some(n.iface_id.clone()),
                    rx_rate_limiter: limits::to_config(&n.rx_rate_limiter, "rx_rate_limiter")?,
                    tx_rate_limiter: limits::to_config(&n.tx_rate_limiter, "tx_rate_limiter")?,
                })
            })
            .collect::<Result<_, Fault>>()?;
        config.vsock = self.vsock.as_ref().map(|v| VsockConfig {
            cid: u64::from(v.guest_cid),
            socket: PathBuf::from(&v.uds_path),
        });
        config.rng = self.entropy.is_some();
        if let Some(e) = &self.entropy {
            config.rng_rate_limiter = limits::to_config(&e.rate_limiter, "rate_limiter")?;
        }
        config.checkpoint = self
            .checkpoints
            .as_ref()
            .map(checkpoint_config)
            .transpose()?;
        config.validate().map_err(|e| Fault(e.to_string()))?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_drive_goes_first_with_its_root_argument() {
        let mut p = PendingVm::default();
        p.put_boot_source(BootSource {
            kernel_image_path: "k".into(),
            boot_args: Some("console=ttyS0".into()),
            initrd_path: None,
        })
        .unwrap();
        let drive = |id: &str, root: bool| Drive {
            drive_id: id.into(),
            partuuid: None,
            is_root_device: root,
            cache_type: CacheType::Unsafe,
            is_read_only: Some(root),
            path_on_host: Some(format!("/{id}")),
            rate_limiter: None,
            io_engine: None,
            socket: None,
        };
        p.put_drive(drive("data", false)).unwrap();
        p.put_drive(drive("root", true)).unwrap();
        assert!(p.put_drive(drive("root2", true)).is_err());
        let c = p.to_vm_config().unwrap();
        assert_eq!(c.disks[0].path, PathBuf::from("/root"));
        assert!(c.disks[0].read_only);
        assert_eq!(c.cmdline, "console=ttyS0 root=/dev/vda ro");
    }

    #[test]
    fn refuses_what_hearth_lacks() {
        let mut p = PendingVm::default();
        assert!(p.to_vm_config().unwrap_err().0.contains("kernel"));
        let m = MachineConfig {
            smt: true,
            ..Default::default()
        };
        assert!(p.put_machine(m).unwrap_err().0.contains("SMT"));
        let m = MachineConfig {
            vcpu_count: 0,
            ..Default::default()
        };
        assert!(p.put_machine(m).is_err());
        assert_eq!(p.machine, MachineConfig::default());
    }
}
