//! The VM's lifecycle as the API sees it: the pre-boot description, then the running
//! VM, and the rules (Firecracker's) for which request is valid when.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::limits;
use super::metrics::Metrics;
use super::models::*;
use super::pending::{self, PendingVm};
use super::router::{Action, Fault};
use crate::rate_limit::RateLimitTarget;
use crate::{ExitReason, RestoreOptions, RunningVm, Vm};

/// The version `GET /version` and `GET /` report. Clients compare it with the
/// Firecracker API version they speak, so it is that version, not hearth's.
pub const FIRECRACKER_API_VERSION: &str = "1.16.1";

const NOT_BEFORE_BOOT: &str =
    "The requested operation is not supported before starting the microVM.";
const NOT_AFTER_BOOT: &str = "The requested operation is not supported after starting the microVM.";

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// 204.
    NoContent,
    /// 200 with this JSON body.
    Json(String),
}

fn json<T: serde::Serialize>(value: &T) -> Result<Reply, Fault> {
    serde_json::to_string(value)
        .map(Reply::Json)
        .map_err(|e| Fault(format!("Cannot encode the answer: {e}")))
}

/// Owns the VM, before and after it boots.
pub struct Controller {
    id: String,
    pending: PendingVm,
    /// Whether any boot resource was configured (then no snapshot may be loaded).
    configured: bool,
    vm: Option<RunningVm>,
    ended: Option<ExitReason>,
    /// What `PUT /metrics` and FlushMetrics write to.
    pub metrics: Metrics,
    /// Guest serial output to this file instead of stdout.
    pub serial_out: Option<PathBuf>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("id", &self.id)
            .field("state", &self.state())
            .finish()
    }
}

impl Controller {
    /// A controller with no VM yet.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            pending: PendingVm::default(),
            configured: false,
            vm: None,
            ended: None,
            metrics: Metrics::default(),
            serial_out: None,
        }
    }

    /// A controller for a VM already running (`hearth run --api-sock`).
    pub fn with_vm(id: impl Into<String>, vm: RunningVm) -> Self {
        let mut c = Self::new(id);
        c.pending = PendingVm::from_config(&vm.config());
        c.vm = Some(vm);
        c
    }

    /// The running VM, if there is one.
    pub fn vm(&self) -> Option<&RunningVm> {
        self.vm.as_ref()
    }

    /// Runs the VM's periodic checkpoints: when the next one is due, if any.
    pub fn checkpoint_tick(&mut self) -> Option<Instant> {
        self.vm.as_mut().and_then(RunningVm::checkpoint_tick)
    }

    /// Takes the VM out, to wait for it without the API.
    pub fn take_vm(&mut self) -> Option<RunningVm> {
        self.vm.take()
    }

    /// Takes the VM out once it has ended, stopping its threads; returns why it ended.
    pub fn reap(&mut self) -> Option<ExitReason> {
        if self.vm.as_ref().is_some_and(RunningVm::has_ended) {
            let reason = self.vm.take()?.finish();
            self.ended = Some(reason.clone());
            return Some(reason);
        }
        None
    }

    /// Stops the VM, if any, and returns why it ended.
    pub fn shutdown(&mut self) -> Option<ExitReason> {
        self.vm.take().map(RunningVm::shutdown)
    }

    fn state(&self) -> &'static str {
        match &self.vm {
            None => "Not started",
            Some(vm) if vm.is_paused() => "Paused",
            Some(_) => "Running",
        }
    }

    fn pre_boot(&mut self) -> Result<&mut PendingVm, Fault> {
        if self.vm.is_some() || self.ended.is_some() {
            return Err(Fault(NOT_AFTER_BOOT.into()));
        }
        Ok(&mut self.pending)
    }

    fn post_boot(&mut self) -> Result<&mut RunningVm, Fault> {
        self.vm
            .as_mut()
            .ok_or_else(|| Fault(NOT_BEFORE_BOOT.into()))
    }

    /// Applies a whole `--config-file` description.
    pub fn configure(&mut self, full: FullVmConfig) -> Result<(), Fault> {
        if let Some(m) = &full.metrics {
            self.metrics.open(Path::new(&m.metrics_path))?;
        }
        self.pre_boot()?.apply(full)?;
        self.configured = true;
        Ok(())
    }

    /// Carries out one request.
    pub fn handle(&mut self, action: Action) -> Result<Reply, Fault> {
        let (group, name) = metric_names(&action);
        let result = self.dispatch(action);
        if let Some(group) = group {
            self.metrics.inc(group, name.0);
            if result.is_err() {
                self.metrics.inc(group, name.1);
            }
        }
        result
    }

    fn dispatch(&mut self, action: Action) -> Result<Reply, Fault> {
        let configured = !matches!(
            action,
            Action::GetInstanceInfo
                | Action::GetVersion
                | Action::GetVmConfig
                | Action::GetMachineConfig
                | Action::PutLogger(_)
                | Action::PutMetrics(_)
                | Action::FlushMetrics
                | Action::LoadSnapshot(_)
                | Action::GetCheckpoints
                | Action::PutCheckpoints(_)
                | Action::DeleteCheckpoints
        );
        let reply = match action {
            Action::GetInstanceInfo => json(&InstanceInfo {
                app_name: "Firecracker".into(),
                id: self.id.clone(),
                state: self.state().into(),
                vmm_version: FIRECRACKER_API_VERSION.into(),
            }),
            Action::GetVersion => json(&serde_json::json!({
                "firecracker_version": FIRECRACKER_API_VERSION
            })),
            Action::GetVmConfig => json(&self.pending.full()),
            Action::GetMachineConfig => json(&self.pending.machine),
            Action::PutMachineConfig(m) => {
                self.pre_boot()?.put_machine(m).map(|()| Reply::NoContent)
            }
            Action::PatchMachineConfig(u) => {
                self.pre_boot()?.patch_machine(u).map(|()| Reply::NoContent)
            }
            Action::PutBootSource(b) => self
                .pre_boot()?
                .put_boot_source(b)
                .map(|()| Reply::NoContent),
            Action::PutDrive(d) => self.pre_boot()?.put_drive(d).map(|()| Reply::NoContent),
            Action::PutNet(n) => self.pre_boot()?.put_net(n).map(|()| Reply::NoContent),
            Action::PutVsock(v) => self.pre_boot()?.put_vsock(v).map(|()| Reply::NoContent),
            Action::PutEntropy(e) => self.pre_boot()?.put_entropy(e).map(|()| Reply::NoContent),
            Action::PutLogger(l) => {
                self.pre_boot()?;
                super::logger::configure(&l)?;
                self.pending.logger = Some(l);
                Ok(Reply::NoContent)
            }
            Action::PutMetrics(m) => {
                self.pre_boot()?;
                self.metrics.open(Path::new(&m.metrics_path))?;
                self.pending.metrics = Some(m);
                Ok(Reply::NoContent)
            }
            Action::PatchDrive(d) => self.patch_drive(&d),
            Action::PatchNet(n) => self.patch_net(&n),
            Action::InstanceStart => self.start(),
            Action::SendCtrlAltDel => {
                self.post_boot()?;
                Err(Fault(
                    "SendCtrlAltDel needs the i8042 keyboard, which hearth does not emulate \
                     (only its reset line); stop the VM by ending the hearth process."
                        .into(),
                ))
            }
            Action::FlushMetrics => {
                self.update_device_metrics();
                self.metrics.flush().map(|()| Reply::NoContent)
            }
            Action::Pause => {
                let started = Instant::now();
                self.post_boot()?
                    .pause()
                    .map_err(|e| Fault(format!("Cannot pause the microVM: {e}")))?;
                self.latency("pause_vm", started);
                Ok(Reply::NoContent)
            }
            Action::Resume => {
                let started = Instant::now();
                self.post_boot()?.resume();
                self.latency("resume_vm", started);
                Ok(Reply::NoContent)
            }
            Action::CreateSnapshot(p) => {
                let started = Instant::now();
                let vm = self.post_boot()?;
                if !vm.is_paused() {
                    return Err(Fault(
                        "Cannot create a snapshot of a running microVM: pause it first \
                         (PATCH /vm {\"state\": \"Paused\"})."
                            .into(),
                    ));
                }
                let diff = matches!(p.snapshot_type, super::models::SnapshotType::Diff);
                create_snapshot(
                    vm,
                    Path::new(&p.snapshot_path),
                    Path::new(&p.mem_file_path),
                    diff,
                )?;
                self.latency("full_create_snapshot", started);
                Ok(Reply::NoContent)
            }
            Action::LoadSnapshot(p) => self.load_snapshot(&p),
            Action::GetCheckpoints => self.get_checkpoints(),
            Action::PutCheckpoints(c) => self.set_checkpoints(Some(c)),
            Action::DeleteCheckpoints => self.set_checkpoints(None),
        };
        if configured && reply.is_ok() {
            self.configured = true;
        }
        reply
    }

    fn latency(&mut self, name: &'static str, since: Instant) {
        let us = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.metrics.set("latencies_us", name, us);
    }

    /// Brings the devices' running totals into the metrics.
    pub fn update_device_metrics(&mut self) {
        let Some(vm) = &self.vm else {
            return;
        };
        let c = vm.device_counters();
        let m = &mut self.metrics;
        m.total("block", "read_count", c.block.read_count);
        m.total("block", "read_bytes", c.block.read_bytes);
        m.total("block", "write_count", c.block.write_count);
        m.total("block", "write_bytes", c.block.write_bytes);
        m.total("block", "flush_count", c.block.flush_count);
        m.total("block", "invalid_reqs_count", c.block.invalid_reqs_count);
        m.total("block", "execute_fails", c.block.execute_fails);
        m.total("net", "tx_packets_count", c.net.tx_frames);
        m.total("net", "tx_bytes_count", c.net.tx_bytes);
        m.total("net", "tx_fails", c.net.tx_dropped);
        m.total("net", "rx_packets_count", c.net.rx_frames);
        m.total("net", "rx_bytes_count", c.net.rx_bytes);
        m.total("net", "rx_fails", c.net.rx_dropped + c.net.rx_bad_buffers);
        m.total("entropy", "entropy_bytes", c.entropy_bytes);
        m.total("vsock", "rx_packets_count", c.vsock.rx_packets_count);
        m.total("vsock", "rx_bytes_count", c.vsock.rx_bytes_count);
        m.total("vsock", "tx_packets_count", c.vsock.tx_packets_count);
        m.total("vsock", "tx_bytes_count", c.vsock.tx_bytes_count);
        m.total("vsock", "conns_added", c.vsock.conns_added);
        m.total("vsock", "conns_removed", c.vsock.conns_removed);
        m.total("uart", "read_count", c.uart.read_count);
        m.total("uart", "write_count", c.uart.write_count);
        m.total("uart", "missed_write_count", c.uart.missed_write_count);
        m.total("vcpu", "exit_io_in", c.vcpu.exit_io_in);
        m.total("vcpu", "exit_io_out", c.vcpu.exit_io_out);
        m.total("vcpu", "exit_mmio_read", c.vcpu.exit_mmio_read);
        m.total("vcpu", "exit_mmio_write", c.vcpu.exit_mmio_write);
        m.total("vcpu", "failures", c.vcpu.failures);
        m.total("vmm", "device_events", c.device_events);
    }

    /// `PATCH /drives/{id}` after boot: a new backing file (Kata's disk hot-swap), the
    /// guest told through a configuration-change interrupt, and/or new rate limits.
    fn patch_drive(&mut self, d: &PartialDrive) -> Result<Reply, Fault> {
        self.post_boot()?;
        let index = self
            .pending
            .disk_index(&d.drive_id)
            .ok_or_else(|| Fault(format!("Invalid block device ID: {}", d.drive_id)))?;
        let Some(drive) = self
            .pending
            .drives
            .iter()
            .find(|o| o.drive_id == d.drive_id)
        else {
            return Err(Fault(format!("Invalid block device ID: {}", d.drive_id)));
        };
        // Checked before anything changes, so a bad limiter leaves the drive as it was.
        let limits = match &d.rate_limiter {
            Some(l) => Some(limits::patch(&drive.rate_limiter, l, "rate_limiter")?),
            None => None,
        };
        let vm = self.post_boot()?;
        if let Some(path) = &d.path_on_host {
            vm.set_disk_path(index, Path::new(path))
                .map_err(|e| Fault(format!("Unable to patch the block device: {e}")))?;
        }
        if let Some(l) = limits {
            vm.set_rate_limiter(RateLimitTarget::Disk(index), l)
                .map_err(|e| Fault(format!("Unable to patch the block device: {e}")))?;
        }
        if let Some(drive) = self
            .pending
            .drives
            .iter_mut()
            .find(|o| o.drive_id == d.drive_id)
        {
            if let Some(path) = &d.path_on_host {
                drive.path_on_host = Some(path.clone());
            }
            if limits.is_some() {
                drive.rate_limiter = limits::from_config(limits);
            }
        }
        Ok(Reply::NoContent)
    }

    /// `PATCH /network-interfaces/{id}` after boot: new receive and/or transmit limits.
    fn patch_net(&mut self, n: &PartialNetworkInterface) -> Result<Reply, Fault> {
        self.post_boot()?;
        let invalid = || Fault(format!("Invalid network interface ID: {}", n.iface_id));
        let index = self
            .pending
            .nets
            .iter()
            .position(|o| o.iface_id == n.iface_id)
            .ok_or_else(invalid)?;
        let iface = &self.pending.nets[index];
        let rx = match &n.rx_rate_limiter {
            Some(l) => Some(limits::patch(&iface.rx_rate_limiter, l, "rx_rate_limiter")?),
            None => None,
        };
        let tx = match &n.tx_rate_limiter {
            Some(l) => Some(limits::patch(&iface.tx_rate_limiter, l, "tx_rate_limiter")?),
            None => None,
        };
        let vm = self.post_boot()?;
        for (target, l) in [
            (RateLimitTarget::NetRx(index), rx),
            (RateLimitTarget::NetTx(index), tx),
        ] {
            if let Some(l) = l {
                vm.set_rate_limiter(target, l)
                    .map_err(|e| Fault(format!("Unable to patch the network interface: {e}")))?;
            }
        }
        let iface = &mut self.pending.nets[index];
        if rx.is_some() {
            iface.rx_rate_limiter = limits::from_config(rx);
        }
        if tx.is_some() {
            iface.tx_rate_limiter = limits::from_config(tx);
        }
        Ok(Reply::NoContent)
    }

    /// `PUT` and `DELETE /checkpoints`: before boot, kept for InstanceStart or a snapshot
    /// load; after, started (or stopped) on the running VM at once.
    fn set_checkpoints(&mut self, c: Option<Checkpoints>) -> Result<Reply, Fault> {
        let config = c.as_ref().map(pending::checkpoint_config).transpose()?;
        if let Some(vm) = &mut self.vm {
            vm.set_checkpoints(config)
                .map_err(|e| Fault(format!("Cannot set up checkpoints: {e}")))?;
        } else if self.ended.is_some() {
            return Err(Fault(NOT_AFTER_BOOT.into()));
        }
        self.pending.checkpoints = c;
        Ok(Reply::NoContent)
    }

    /// `GET /checkpoints`: the settings and, once the VM runs, what was taken.
    fn get_checkpoints(&self) -> Result<Reply, Fault> {
        let mut answer = serde_json::to_value(&self.pending.checkpoints)
            .map_err(|e| Fault(format!("Cannot encode the answer: {e}")))?;
        if answer.is_null() {
            answer = serde_json::json!({});
        }
        let stats = self.vm.as_ref().and_then(RunningVm::checkpoint_stats);
        if let (Some(s), Some(map)) = (stats, answer.as_object_mut()) {
            let us = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            map.insert("taken".into(), s.taken.into());
            map.insert("failed".into(), s.failed.into());
            map.insert("total_pause_us".into(), us(s.total_pause).into());
            map.insert("max_pause_us".into(), us(s.max_pause).into());
            map.insert("last_pause_us".into(), us(s.last_pause).into());
        }
        Ok(Reply::Json(answer.to_string()))
    }

    /// Boots the described VM.
    fn start(&mut self) -> Result<Reply, Fault> {
        let pending = self.pre_boot()?;
        let mut config = pending.to_vm_config()?;
        config.serial_out = self.serial_out.clone();
        let started = Instant::now();
        let vm = Vm::try_from(config)
            .and_then(Vm::start)
            .map_err(|e| Fault(format!("Cannot start the microVM: {e}")))?;
        log::info!("microVM started in {:?}", started.elapsed());
        self.vm = Some(vm);
        Ok(Reply::NoContent)
    }

    fn load_snapshot(&mut self, p: &SnapshotLoad) -> Result<Reply, Fault> {
        self.pre_boot()?;
        if self.configured {
            return Err(Fault(
                "Loading a microVM snapshot not allowed after configuring boot-specific \
                 resources."
                    .into(),
            ));
        }
        let started = Instant::now();
        let mem = match (&p.mem_backend, &p.mem_file_path) {
            (Some(b), _) => &b.backend_path,
            (None, Some(m)) => m,
            (None, None) => return Err(Fault("No memory file given.".into())),
        };
        let options = RestoreOptions {
            resume: p.resume_vm,
            serial_out: self.serial_out.clone(),
            api_sock: None,
            vsock_socket: p
                .vsock_override
                .as_ref()
                .map(|v| PathBuf::from(&v.uds_path)),
            taps: p
                .network_overrides
                .iter()
                .map(|o| (o.iface_id.clone(), o.host_dev_name.clone()))
                .collect(),
            checkpoint: self
                .pending
                .checkpoints
                .as_ref()
                .map(pending::checkpoint_config)
                .transpose()?,
            ..Default::default()
        };
        let vm = with_snapshot_dir(Path::new(&p.snapshot_path), Path::new(mem), |dir| {
            Vm::restore(dir, &options).and_then(Vm::start)
        })?
        .map_err(|e| Fault(format!("Cannot load the snapshot: {e}")))?;
        let logger = self.pending.logger.take();
        let metrics = self.pending.metrics.take();
        self.pending = PendingVm {
            logger,
            metrics,
            ..PendingVm::from_config(&vm.config())
        };
        self.vm = Some(vm);
        self.latency("load_snapshot", started);
        Ok(Reply::NoContent)
    }
}

/// Firecracker's per-endpoint request counters: (group, (count, fails)).
fn metric_names(action: &Action) -> (Option<&'static str>, (&'static str, &'static str)) {
    use Action::*;
    let (g, n) = match action {
        GetInstanceInfo => (
            "get_api_requests",
            ("instance_info_count", "instance_info_fails"),
        ),
        GetVersion => (
            "get_api_requests",
            ("vmm_version_count", "vmm_version_fails"),
        ),
        GetVmConfig => ("get_api_requests", ("vm_config_count", "vm_config_fails")),
        GetMachineConfig => (
            "get_api_requests",
            ("machine_cfg_count", "machine_cfg_fails"),
        ),
        PutMachineConfig(_) => (
            "put_api_requests",
            ("machine_cfg_count", "machine_cfg_fails"),
        ),
        PatchMachineConfig(_) => (
            "patch_api_requests",
            ("machine_cfg_count", "machine_cfg_fails"),
        ),
        PutBootSource(_) => (
            "put_api_requests",
            ("boot_source_count", "boot_source_fails"),
        ),
        PutDrive(_) => ("put_api_requests", ("drive_count", "drive_fails")),
        PatchDrive(_) => ("patch_api_requests", ("drive_count", "drive_fails")),
        PutNet(_) => ("put_api_requests", ("network_count", "network_fails")),
        PatchNet(_) => ("patch_api_requests", ("network_count", "network_fails")),
        PutVsock(_) => ("put_api_requests", ("vsock_count", "vsock_fails")),
        PutEntropy(_) => ("put_api_requests", ("entropy_count", "entropy_fails")),
        PutLogger(_) => ("put_api_requests", ("logger_count", "logger_fails")),
        PutMetrics(_) => ("put_api_requests", ("metrics_count", "metrics_fails")),
        InstanceStart | SendCtrlAltDel | FlushMetrics => {
            ("put_api_requests", ("actions_count", "actions_fails"))
        }
        Pause | Resume => ("patch_api_requests", ("vmm_count", "vmm_fails")),
        CreateSnapshot(_) => (
            "put_api_requests",
            ("snapshot_create_count", "snapshot_create_fails"),
        ),
        LoadSnapshot(_) => (
            "put_api_requests",
            ("snapshot_load_count", "snapshot_load_fails"),
        ),
        GetCheckpoints => (
            "get_api_requests",
            ("checkpoints_count", "checkpoints_fails"),
        ),
        PutCheckpoints(_) | DeleteCheckpoints => (
            "put_api_requests",
            ("checkpoints_count", "checkpoints_fails"),
        ),
    };
    (Some(g), n)
}

static SNAPSHOT_SEQ: AtomicU64 = AtomicU64::new(0);

/// A fresh directory name next to `near` (same file system, so renames work).
fn scratch_dir(near: &Path) -> PathBuf {
    let parent = near
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    parent.join(format!(
        ".hearth-snapshot-{}-{}",
        std::process::id(),
        SNAPSHOT_SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Firecracker keeps a snapshot as two files the client names; hearth writes its
/// snapshot directory next to the state file and moves the two files into place. Paths
/// `DIR/state` and `DIR/memory` (what `hearth ctl snapshot --dir DIR` sends) name hearth's
/// own snapshot directory DIR instead, written in place crash-safely, diffs included.
fn create_snapshot(vm: &mut RunningVm, state: &Path, mem: &Path, diff: bool) -> Result<(), Fault> {
    let options = crate::SnapshotOptions {
        diff,
        resume: false,
    };
    let native = state.file_name() == Some(std::ffi::OsStr::new(crate::snapshot::STATE_FILE))
        && state.parent().is_some()
        && state
            .parent()
            .map(|d| d.join(crate::snapshot::MEMORY_FILE))
            .as_deref()
            == Some(mem);
    if let (true, Some(dir)) = (native, state.parent()) {
        return vm
            .snapshot_with(dir, &options)
            .map(|_| ())
            .map_err(|e| Fault(format!("Cannot create the snapshot: {e}")));
    }
    if diff {
        return Err(Fault(
            "Diff snapshots are a chain of memory layers: give snapshot_path DIR/state and \
             mem_file_path DIR/memory to write hearth's snapshot directory DIR."
                .into(),
        ));
    }
    let dir = scratch_dir(state);
    let result = vm
        .snapshot_with(&dir, &options)
        .map_err(|e| Fault(format!("Cannot create the snapshot: {e}")))
        .and_then(|_| {
            crate::snapshot::export_pair(&dir, state, mem).map_err(|e| {
                Fault(format!(
                    "Cannot write the snapshot files {} and {}: {e}",
                    state.display(),
                    mem.display()
                ))
            })
        });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Presents the two files of a Firecracker-style snapshot as hearth's snapshot
/// directory (two links in a scratch directory) for the length of `f`.
fn with_snapshot_dir<T>(state: &Path, mem: &Path, f: impl FnOnce(&Path) -> T) -> Result<T, Fault> {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    for p in [state, mem] {
        if !p.is_file() {
            return Err(Fault(format!(
                "Cannot load the snapshot: {} is not a readable file.",
                p.display()
            )));
        }
    }
    let dir = std::env::temp_dir().join(format!(
        "hearth-load-{}-{}",
        std::process::id(),
        SNAPSHOT_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let link = || -> Result<(), String> {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        crate::snapshot::import_pair(&abs(state), &abs(mem), &dir).map_err(|e| e.to_string())
    };
    let linked = link();
    let result = linked
        .map(|()| f(&dir))
        .map_err(|e| Fault(format!("Cannot prepare the snapshot load: {e}")));
    let _ = std::fs::remove_dir_all(&dir);
    result
}
