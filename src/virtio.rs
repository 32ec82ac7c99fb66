//! Wiring virtio devices into the VM. A request travels guest → MMIO exit (register
//! access) or ioeventfd (queue notify, no exit to user space) → event loop → device →
//! irqfd; this module sets up each hop.

use std::sync::{Arc, Mutex};

use hearth_devices::bus::lock;
use hearth_devices::virtio::block::Block;
use hearth_devices::virtio::mmio::{MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};
use hearth_devices::virtio::{Interrupt, VirtioDevice};
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::DiskConfig;
use crate::device_manager::{DeviceError, DeviceManager, Subscriber};

/// Errors adding virtio devices.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// A disk could not be opened.
    #[error(transparent)]
    Block(#[from] hearth_devices::virtio::block::BlockError),
    /// KVM or the buses refused the device.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// Puts `device` on the next virtio-mmio slot: register window on the MMIO bus, queue
/// notifications on ioeventfds, its interrupt on an irqfd, its queue work on the event
/// loop.
pub fn add_device<D>(
    devices: &mut DeviceManager,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    device: Arc<Mutex<D>>,
) -> Result<(), DeviceError>
where
    D: VirtioDevice + event_manager::MutEventSubscriber + Send + 'static,
{
    let (base, irq) = devices.allocate_virtio_slot()?;
    let irq_evt = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
    vm.register_irqfd(&irq_evt, irq)
        .map_err(|source| DeviceError::Register {
            what: format!("irqfd for virtio GSI {irq}"),
            source,
        })?;
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
    let transport = MmioTransport::new(mem.clone(), as_virtio, interrupt);
    devices
        .mmio
        .insert(base, MMIO_WINDOW_SIZE, Arc::new(Mutex::new(transport)))?;
    let as_subscriber: Subscriber = device;
    devices.subscribers.push(as_subscriber);
    Ok(())
}

/// Adds one virtio-blk device per disk, in order (the guest's vda, vdb, ...).
pub fn add_disks(
    devices: &mut DeviceManager,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    disks: &[DiskConfig],
) -> Result<(), VirtioError> {
    for disk in disks {
        let block = Block::new(disk.clone())?;
        add_device(devices, vm, mem, Arc::new(Mutex::new(block)))?;
    }
    Ok(())
}
