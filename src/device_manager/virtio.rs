//! Wiring virtio devices into the VM. A request travels guest → MMIO exit (register
//! access) or ioeventfd (queue notify, no exit to user space) → event loop → device →
//! irqfd; this module sets up each hop.

use std::sync::{Arc, Mutex};

use crate::memory::GuestMemoryMmap;
use event_manager::MutEventSubscriber;
use hearth_devices::bus::lock;
use hearth_devices::persist::Persist;
use hearth_devices::rate_limiter::{LimiterSlot, RateLimited};
use hearth_devices::virtio::block::Block;
use hearth_devices::virtio::fs::{Fs, FsError};
use hearth_devices::virtio::mmio::{MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};
use hearth_devices::virtio::net::{Net, NetError};
use hearth_devices::virtio::persist::{PersistError, TransportArgs};
use hearth_devices::virtio::rng::{Rng, RngError};
use hearth_devices::virtio::vsock::Vsock;
use hearth_devices::virtio::{Interrupt, VirtioDevice};
use kvm_ioctls::{IoEventAddress, VmFd};

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

/// What the VMM needs of a virtio device model beyond the transport and the event loop:
/// its snapshot state, as a variant of [`VirtioDeviceState`]. Each model gets it from one
/// line of [`slot_device!`].
pub trait SlotDevice:
    VirtioDevice + RateLimited + MutEventSubscriber + Send + std::fmt::Debug + 'static
{
    /// Its state, for the snapshot (the VM is paused).
    fn save_state(&self) -> VirtioDeviceState;
    /// Rebuilds the device from a slot's saved state; `None` when the state is another
    /// kind of device's.
    fn restore_state(state: &VirtioDeviceState) -> Option<Result<Self, VirtioError>>
    where
        Self: Sized;
    /// Adds what the device counted to `totals` (for metrics).
    fn add_counters(&self, _totals: &mut crate::vm::DeviceCounters) {}
    /// The block device in the slot, if it is one (to swap its file).
    fn as_block_mut(&mut self) -> Option<&mut Block> {
        None
    }
}

/// Implements [`SlotDevice`] for a model whose `Persist` takes no arguments and whose
/// state is the [`VirtioDeviceState`] variant of the same name.
macro_rules! slot_device {
    // Extra items (trait methods the device overrides) follow the name, comma-separated.
    ($device:ident $(, $extra:item)* $(,)?) => {
        impl SlotDevice for $device {
            $($extra)*
            fn save_state(&self) -> VirtioDeviceState {
                VirtioDeviceState::$device(self.save())
            }
            fn restore_state(state: &VirtioDeviceState) -> Option<Result<Self, VirtioError>> {
                match state {
                    VirtioDeviceState::$device(s) => {
                        Some($device::restore((), s).map_err(Into::into))
                    }
                    _ => None,
                }
            }
        }
    };
}

slot_device!(
    Block,
    fn add_counters(&self, totals: &mut crate::vm::DeviceCounters) {
        let d = self.disk().counters();
        let t = &mut totals.block;
        t.read_count += d.read_count;
        t.read_bytes += d.read_bytes;
        t.write_count += d.write_count;
        t.write_bytes += d.write_bytes;
        t.flush_count += d.flush_count;
        t.invalid_reqs_count += d.invalid_reqs_count;
        t.execute_fails += d.execute_fails;
    },
    fn as_block_mut(&mut self) -> Option<&mut Block> {
        Some(self)
    }
);
slot_device!(
    Net,
    fn add_counters(&self, totals: &mut crate::vm::DeviceCounters) {
        let d = self.counters();
        let t = &mut totals.net;
        t.tx_frames += d.tx_frames;
        t.tx_bytes += d.tx_bytes;
        t.tx_dropped += d.tx_dropped;
        t.rx_frames += d.rx_frames;
        t.rx_bytes += d.rx_bytes;
        t.rx_dropped += d.rx_dropped;
        t.rx_bad_buffers += d.rx_bad_buffers;
    }
);
slot_device!(
    Rng,
    fn add_counters(&self, totals: &mut crate::vm::DeviceCounters) {
        totals.entropy_bytes += self.bytes_served();
    }
);
slot_device!(
    Vsock,
    fn add_counters(&self, totals: &mut crate::vm::DeviceCounters) {
        let d = self.muxer().counters();
        let t = &mut totals.vsock;
        t.rx_packets_count += d.rx_packets_count;
        t.rx_bytes_count += d.rx_bytes_count;
        t.tx_packets_count += d.tx_packets_count;
        t.tx_bytes_count += d.tx_bytes_count;
        t.conns_added += d.conns_added;
        t.conns_removed += d.conns_removed;
    }
);

/// One virtio-mmio slot of the VM.
#[derive(Debug)]
pub struct VirtioSlot {
    /// MMIO window.
    pub base: u64,
    /// Interrupt line.
    pub irq: u32,
    /// The transport.
    pub transport: Arc<Mutex<MmioTransport>>,
    /// The device.
    pub device: Arc<Mutex<dyn SlotDevice>>,
}

impl VirtioSlot {
    /// The slot's snapshot state (the VM is paused).
    pub fn save(&self) -> VirtioSlotState {
        VirtioSlotState {
            base: self.base,
            irq: self.irq,
            transport: lock(&self.transport).save(),
            device: lock(&self.device).save_state(),
        }
    }
}

/// Puts `device` on the next virtio-mmio slot: register window on the MMIO bus, queue
/// notifications on ioeventfds, its interrupt on an irqfd, its queue work on the event
/// loop. With `saved`, the transport (and the device's queues) carry on from a snapshot,
/// and the slot must be where it was.
fn add_device<D: SlotDevice>(
    devices: &mut DeviceManager,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    device: D,
    saved: Option<&VirtioSlotState>,
) -> Result<(), VirtioError> {
    let device = Arc::new(Mutex::new(device));
    let (base, irq, transport) = wire(devices, vm, mem, device.clone(), saved)?;
    devices.virtio.push(VirtioSlot {
        base,
        irq,
        transport,
        device,
    });
    Ok(())
}

/// What [`add_device`] does but recording the slot for snapshots: the slot works, and
/// snapshots do not see it. virtio-fs devices are wired this way, since a VM with shares
/// cannot be snapshotted (`RunningVm::snapshot` refuses it).
fn wire<D>(
    devices: &mut DeviceManager,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    device: Arc<Mutex<D>>,
    saved: Option<&VirtioSlotState>,
) -> Result<(u64, u32, Arc<Mutex<MmioTransport>>), VirtioError>
where
    D: VirtioDevice + MutEventSubscriber + Send + 'static,
{
    let (base, irq) = devices.allocate_virtio_slot()?;
    if let Some(s) = saved {
        if (s.base, s.irq) != (base, irq) {
            return Err(VirtioError::Mismatch(format!(
                "a device was at {:#x} irq {}, now at {base:#x} irq {irq}",
                s.base, s.irq
            )));
        }
    }
    let irq_evt = DeviceManager::irqfd(vm, irq)?;
    let interrupt = Arc::new(Interrupt::new(irq_evt));
    for (index, evt) in (0u32..).zip(lock(&device).queue_events()) {
        vm.register_ioevent(
            evt,
            &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
            index,
        )
        .map_err(|source| DeviceError::Register {
            what: format!("ioeventfd for queue {index} at {base:#x}"),
            source,
        })?;
    }
    let as_virtio: Arc<Mutex<dyn VirtioDevice>> = device.clone();
    let transport = match saved {
        Some(s) => MmioTransport::restore(
            TransportArgs {
                mem: mem.clone(),
                device: as_virtio,
                interrupt,
            },
            &s.transport,
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

/// Adds devices to the next slots, built from the configuration or, with saved slots,
/// rebuilt from them.
struct SlotFiller<'a> {
    devices: &'a mut DeviceManager,
    vm: &'a VmFd,
    mem: &'a GuestMemoryMmap,
    saved: Option<&'a [VirtioSlotState]>,
}

impl SlotFiller<'_> {
    /// Puts the configured limits on the device just added (a network device takes its
    /// own from its configuration).
    fn limit(&mut self, config: Option<hearth_devices::rate_limiter::RateLimiterConfig>) {
        if let (Some(c), Some(slot)) = (config, self.devices.virtio.last()) {
            lock(&slot.device).set_rate_limiter(LimiterSlot::Device, &c);
        }
    }

    /// Adds a `D`: `build()` makes it, unless the next saved slot rebuilds it (and must
    /// then hold a `D`, `what` in the error when not).
    fn add<D: SlotDevice, E>(
        &mut self,
        what: &str,
        build: impl FnOnce() -> Result<D, E>,
    ) -> Result<(), VirtioError>
    where
        VirtioError: From<E>,
    {
        let index = self.devices.virtio.len();
        let saved = match self.saved {
            None => None,
            Some(slots) => Some(slots.get(index).ok_or_else(|| {
                VirtioError::Mismatch(format!("no saved state for virtio device {index}"))
            })?),
        };
        let device = match saved {
            None => build()?,
            Some(s) => D::restore_state(&s.device).ok_or_else(|| {
                VirtioError::Mismatch(format!("the saved device is not {what}"))
            })??,
        };
        add_device(self.devices, self.vm, self.mem, device, saved)
    }
}

/// Adds the configured virtio devices in a fixed order: disks (the guest's vda, vdb,
/// ...), network devices (eth0, ...), the entropy device, the vsock device, then the
/// shares (which snapshots do not keep: see [`wire`]). With `saved`,
/// each is rebuilt from its snapshot state instead, and must be the same kind of device.
/// Disks and taps are opened here, so a missing one fails the VM before it starts.
pub fn add_all(
    devices: &mut DeviceManager,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    saved: Option<&[VirtioSlotState]>,
) -> Result<(), VirtioError> {
    let mut slots = SlotFiller {
        devices,
        vm,
        mem,
        saved,
    };
    for disk in &config.disks {
        slots.add("a disk", || Block::new(disk.into()))?;
        slots.limit(disk.rate_limiter);
    }
    for net in &config.net {
        slots.add("a network device", || Net::new(net.clone()))?;
    }
    if config.rng {
        slots.add("an entropy device", Rng::new)?;
        slots.limit(config.rng_rate_limiter);
    }
    // It listens on its Unix socket from here on, so host processes can connect while
    // the guest boots.
    if let Some(vsock) = &config.vsock {
        slots.add("a vsock device", || Vsock::new(vsock.clone()))?;
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
        wire(slots.devices, vm, mem, fs, None)?;
    }
    Ok(())
}
