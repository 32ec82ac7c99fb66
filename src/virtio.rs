//! Wiring virtio devices into the VM. A request travels guest → MMIO exit (register
//! access) or ioeventfd (queue notify, no exit to user space) → event loop → device →
//! irqfd; this module sets up each hop.

use std::sync::{Arc, Mutex};

use hearth_devices::bus::lock;
use hearth_devices::virtio::block::Block;
use hearth_devices::virtio::mmio::{MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};
use hearth_devices::virtio::persist::{Persist, PersistError, TransportArgs, TransportState};
use hearth_devices::virtio::vsock::Vsock;
use hearth_devices::virtio::{Interrupt, VirtioDevice};
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::config::{DiskConfig, VsockConfig};
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
}

/// A device model behind a virtio-mmio slot.
#[derive(Clone)]
pub enum VirtioKind {
    /// virtio-blk.
    Block(Arc<Mutex<Block>>),
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
                VirtioKind::Block(b) => VirtioDeviceState::Block(lock(b).save()),
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

/// The saved slot for the next device, checked against what the configuration builds.
fn next_saved<'a>(
    saved: Option<&'a [VirtioSlotState]>,
    index: usize,
    what: &str,
) -> Result<Option<&'a VirtioSlotState>, VirtioError> {
    let Some(slots) = saved else {
        return Ok(None);
    };
    slots
        .get(index)
        .map(Some)
        .ok_or_else(|| VirtioError::Mismatch(format!("no saved state for {what} #{index}")))
}

/// Adds one virtio-blk device per disk, in order (the guest's vda, vdb, ...); with
/// `saved`, rebuilds them from a snapshot instead.
pub fn add_disks(
    devices: &mut DeviceManager,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    disks: &[DiskConfig],
    saved: Option<&[VirtioSlotState]>,
) -> Result<(), VirtioError> {
    for (i, disk) in disks.iter().enumerate() {
        let slot_state = next_saved(saved, devices.virtio.len(), "virtio device")?;
        let block = match slot_state.map(|s| &s.device) {
            Some(VirtioDeviceState::Block(state)) => Block::restore((), state)?,
            None => Block::new(disk.clone())?,
        };
        let block = Arc::new(Mutex::new(block));
        let (base, irq, transport) = add_device(
            devices,
            vm,
            mem,
            block.clone(),
            slot_state.map(|s| &s.transport),
        )?;
        if let Some(s) = slot_state {
            if (s.base, s.irq) != (base, irq) {
                return Err(VirtioError::Mismatch(format!(
                    "disk {i} was at {:#x} irq {}, now at {base:#x} irq {irq}",
                    s.base, s.irq
                )));
            }
        }
        devices.virtio.push(VirtioSlot {
            base,
            irq,
            transport,
            kind: VirtioKind::Block(block),
        });
    }
    Ok(())
}

/// Adds the virtio-vsock device, if configured: it starts listening on its Unix socket
/// now, so that host processes can connect while the guest boots. It is not a
/// [`VirtioSlot`]: its connections cannot be saved, so VMs with vsock take no snapshots
/// (and a snapshot never has one to restore).
pub fn add_vsock(
    devices: &mut DeviceManager,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    config: Option<&VsockConfig>,
    restoring: bool,
) -> Result<(), VirtioError> {
    let Some(config) = config else {
        return Ok(());
    };
    if restoring {
        return Err(VirtioError::Mismatch(
            "the configuration has a vsock device, which snapshots do not support".into(),
        ));
    }
    let vsock = Arc::new(Mutex::new(Vsock::new(config.clone())?));
    add_device(devices, vm, mem, vsock, None)?;
    Ok(())
}
