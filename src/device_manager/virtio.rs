//! Wiring virtio devices into the VM. A request travels guest → MMIO exit (register
//! access) or ioeventfd (queue notify, no exit to user space) → event loop → device →
//! irqfd; this module sets up each hop.

use std::sync::{Arc, Mutex};

use hearth_devices::bus::lock;
use hearth_devices::persist::Persist;
use hearth_devices::virtio::block::Block;
use hearth_devices::virtio::fs::{Fs, FsError};
use hearth_devices::virtio::mmio::{MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};
use hearth_devices::virtio::net::{Net, NetError};
use hearth_devices::virtio::persist::{PersistError, TransportArgs, TransportState};
use hearth_devices::virtio::rng::{Rng, RngError};
use hearth_devices::virtio::vsock::Vsock;
use hearth_devices::virtio::{Interrupt, VirtioDevice};
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::config::VmConfig;
use crate::device_manager::{DeviceError, DeviceManager, Subscriber};
use crate::snapshot::{VirtioDeviceState, VirtioSlotState};

/// Errors adding virtio devices.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// A disk could not be opened.
    #[error(transparent)]
    Block(#[from] hearth_devices::virtio::block::BlockError),
    /// The vsock device could not be set up (a reserved CID, its socket path taken).
    #[error(transparent)]
    Vsock(#[from] hearth_devices::virtio::vsock::VsockError),
    /// KVM or the buses refused the device.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Saved transport state that does not fit.
    #[error(transparent)]
    Persist(#[from] PersistError),
    /// The snapshot's devices differ from the configuration.
    #[error("snapshot: {0}")]
    Mismatch(String),
    /// A network device could not be built (its tap, mostly).
    #[error(transparent)]
    Net(#[from] NetError),
    /// The entropy device could not be built.
    #[error(transparent)]
    Rng(#[from] RngError),
    /// A shared directory could not be exported.
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// A device model behind a virtio-mmio slot.
#[derive(Clone)]
pub enum VirtioKind {
    /// virtio-blk.
    Block(Arc<Mutex<Block>>),
    /// virtio-net over a tap.
    Net(Arc<Mutex<Net>>),
    /// virtio-rng.
    Rng(Arc<Mutex<Rng>>),
    /// virtio-vsock.
    Vsock(Arc<Mutex<Vsock>>),
}

/// One virtio-mmio slot of the VM.
pub struct VirtioSlot {
    /// MMIO window.
    pub base: u64,
    /// Interrupt line.
    pub irq: u32,
    /// The transport.
    pub transport: Arc<Mutex<MmioTransport>>,
    /// The device.
    pub kind: VirtioKind,
}

impl VirtioSlot {
    /// The slot's snapshot state (the VM is paused).
    pub fn save(&self) -> VirtioSlotState {
        VirtioSlotState {
            base: self.base,
            irq: self.irq,
            transport: lock(&self.transport).save(),
            device: match &self.kind {
                VirtioKind::Block(d) => VirtioDeviceState::Block(lock(d).save()),
                VirtioKind::Net(d) => VirtioDeviceState::Net(lock(d).save()),
                VirtioKind::Rng(d) => VirtioDeviceState::Rng(lock(d).save()),
                VirtioKind::Vsock(d) => VirtioDeviceState::Vsock(lock(d).save()),
            },
        }
    }
}

/// Puts `device` on the next virtio-mmio slot: register window on the MMIO bus, queue
/// notifications on ioeventfds, its interrupt on an irqfd, its queue work on the event
/// loop.
pub fn add_device<D>(
    devices: &mut DeviceManager,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    device: Arc<Mutex<D>>,
    saved: Option<&TransportState>,
) -> Result<(u64, u32, Arc<Mutex<MmioTransport>>), VirtioError>
where
    D: VirtioDevice + event_manager::MutEventSubscriber + Send + 'static,
{
    let (base, irq) = devices.allocate_virtio_slot()?;
    let irq_evt = DeviceManager::irqfd(vm, irq)?;
    let interrupt = Arc::new(Interrupt::new(irq_evt));
    for (index, evt) in lock(&device).queue_events().iter().enumerate() {
        vm.register_ioevent(
            evt,
            &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
            index as u32,
        )
        .map_err(|source| DeviceError::Register {
            what: format!("ioeventfd for queue {index} at {base:#x}"),
            source,
        })?;
    }
    let as_virtio: Arc<Mutex<dyn VirtioDevice>> = device.clone();
    let transport = match saved {
        Some(state) => MmioTransport::restore(
            TransportArgs {
                mem: mem.clone(),
                device: as_virtio,
                interrupt,
            },
            state,
        )?,
        None => MmioTransport::new(mem.clone(), as_virtio, interrupt),
    };
    let transport = Arc::new(Mutex::new(transport));
    devices
        .mmio
        .insert(base, MMIO_WINDOW_SIZE, transport.clone())
        .map_err(DeviceError::from)?;
    let as_subscriber: Subscriber = device;
    devices.subscribers.push(as_subscriber);
    Ok((base, irq, transport))
}

/// Puts a built or restored device on the next slot and records it; a restored one must
/// land where it was.
fn attach<D>(
    devices: &mut DeviceManager,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    device: Arc<Mutex<D>>,
    kind: VirtioKind,
    saved: Option<&VirtioSlotState>,
) -> Result<(), VirtioError>
where
    D: VirtioDevice + event_manager::MutEventSubscriber + Send + 'static,
{
    let (base, irq, transport) = add_device(devices, vm, mem, device, saved.map(|s| &s.transport))?;
    if let Some(s) = saved {
        if (s.base, s.irq) != (base, irq) {
            return Err(VirtioError::Mismatch(format!(
                "a device was at {:#x} irq {}, now at {base:#x} irq {irq}",
                s.base, s.irq
            )));
        }
    }
    devices.virtio.push(VirtioSlot {
        base,
        irq,
        transport,
        kind,
    });
    Ok(())
}

/// Adds the configured virtio devices in a fixed order: disks (the guest's vda, vdb,
/// ...), network devices (eth0, ...), the entropy device, the vsock device, the shares. With `saved`, each is rebuilt
/// from its snapshot state instead, and must be the same kind of device. Disks and taps
/// are opened here, so a missing one fails the VM before it starts.
pub fn add_all(
    devices: &mut DeviceManager,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    saved: Option<&[VirtioSlotState]>,
) -> Result<(), VirtioError> {
    let slot = |index: usize| -> Result<Option<&VirtioSlotState>, VirtioError> {
        match saved {
            None => Ok(None),
            Some(slots) => slots.get(index).map(Some).ok_or_else(|| {
                VirtioError::Mismatch(format!("no saved state for virtio device {index}"))
            }),
        }
    };
    let mismatch = |what: &str| VirtioError::Mismatch(format!("the saved device is not {what}"));

    for disk in &config.disks {
        let s = slot(devices.virtio.len())?;
        let block = match s.map(|s| &s.device) {
            None => Block::new(disk.clone())?,
            Some(VirtioDeviceState::Block(state)) => Block::restore((), state)?,
            Some(_) => return Err(mismatch("a disk")),
        };
        let block = Arc::new(Mutex::new(block));
        attach(devices, vm, mem, block.clone(), VirtioKind::Block(block), s)?;
    }
    for net in &config.net {
        let s = slot(devices.virtio.len())?;
        let net = match s.map(|s| &s.device) {
            None => Net::new(net.clone())?,
            Some(VirtioDeviceState::Net(state)) => Net::restore((), state)?,
            Some(_) => return Err(mismatch("a network device")),
        };
        log::debug!(
            "virtio-net on tap {} with MAC {}",
            net.config().tap,
            net.mac()
        );
        let net = Arc::new(Mutex::new(net));
        attach(devices, vm, mem, net.clone(), VirtioKind::Net(net), s)?;
    }
    if config.rng {
        let s = slot(devices.virtio.len())?;
        let rng = match s.map(|s| &s.device) {
            None => Rng::new()?,
            Some(VirtioDeviceState::Rng(state)) => Rng::restore((), state)?,
            Some(_) => return Err(mismatch("an entropy device")),
        };
        let rng = Arc::new(Mutex::new(rng));
        attach(devices, vm, mem, rng.clone(), VirtioKind::Rng(rng), s)?;
    }
    if let Some(vsock) = &config.vsock {
        let s = slot(devices.virtio.len())?;
        // It listens on its Unix socket from here on, so host processes can connect
        // while the guest boots.
        let vsock = match s.map(|s| &s.device) {
            None => Vsock::new(vsock.clone())?,
            Some(VirtioDeviceState::Vsock(state)) => Vsock::restore((), state)?,
            Some(_) => return Err(mismatch("a vsock device")),
        };
        let vsock = Arc::new(Mutex::new(vsock));
        attach(devices, vm, mem, vsock.clone(), VirtioKind::Vsock(vsock), s)?;
    }
    for (index, share) in config.shares.iter().enumerate() {
        let mut share = share.clone();
        share.tag = crate::config::share_tag(index, &share);
        log::debug!(
            "virtio-fs: {} as tag {}{}",
            share.path.display(),
            share.tag,
            if share.read_only { " (read-only)" } else { "" }
        );
        let fs = Arc::new(Mutex::new(Fs::new(share)?));
        // Not among `devices.virtio`, the slots snapshots save: a VM with shares cannot
        // be snapshotted (RunningVm::snapshot refuses it).
        add_device(devices, vm, mem, fs, None)?;
    }
    Ok(())
}
