//! What every virtio device shares: [`VirtioCommon`], embedded in each device, holds the
//! feature bits, the queues, their notification eventfds and the activation state, and
//! [`VirtioDevice`]'s provided methods work over it. [`VirtioEvents`] is the device's
//! event-loop side; [`init_events`] and [`process_events`] do the generic part of it.
//!
//! The device is the one owner of its queues: the transport writes the driver's queue
//! registers into them (under the device's lock) and the device serves them once
//! activated, so no copy is kept anywhere else, and snapshots save them once.
//!
//! The queue eventfds are watched by the event loop from the start. Activation makes
//! every queue look notified once, which serves what the driver queued before (or what
//! was pending when a snapshot was taken): no separate activation event is needed.

use std::io;
use std::sync::Arc;

use crate::GuestMemoryMmap;
use event_manager::{EventOps, Events};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{read_config_space, ActivateError, Interrupt, VIRTIO_MMIO_INT_VRING};

/// Event data of a device's own event sources (taps, sockets) start here; queue `i` is
/// watched with data `i`.
pub const DEVICE_EVENT_BASE: u32 = 0x100;

/// What activation hands the device: guest memory and its interrupt line.
#[derive(Debug)]
pub struct Active {
    /// Guest memory the queues live in.
    pub mem: GuestMemoryMmap,
    /// The interrupt line to the driver.
    pub interrupt: Arc<Interrupt>,
}

/// The state every virtio device has, whatever it does.
#[derive(Debug)]
pub struct VirtioCommon {
    device_type: u32,
    avail_features: u64,
    acked_features: u64,
    config_space: Vec<u8>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    /// Queues a driver may leave unset (their index).
    optional_queues: Vec<usize>,
    active: Option<Active>,
}

impl VirtioCommon {
    /// A device of type `device_type` offering `avail_features`, with one queue per entry of
    /// `queue_sizes` (its largest size) and a read-only `config_space`.
    pub fn new(
        device_type: u32,
        avail_features: u64,
        queue_sizes: &[u16],
        config_space: Vec<u8>,
    ) -> io::Result<Self> {
        let queue_evts = queue_sizes
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<io::Result<_>>()?;
        // A size virtio-queue rejects (0, not a power of two, over 32768) is a bug in the
        // device model; such a queue shows QueueNumMax 0, which tells drivers it is absent.
        let queues = queue_sizes
            .iter()
            .map(|&size| Queue::new(size).unwrap_or_default())
            .collect();
        Ok(Self {
            device_type,
            avail_features,
            acked_features: 0,
            config_space,
            queues,
            queue_evts,
            optional_queues: Vec::new(),
            active: None,
        })
    }

    /// Lets the driver leave the queues at these indices unset.
    #[must_use]
    pub fn with_optional_queues(mut self, indices: &[usize]) -> Self {
        self.optional_queues = indices.to_vec();
        self
    }

    /// The queues, as the driver set them up (and, once active, as the device moved them).
    pub fn queues(&self) -> &[Queue] {
        &self.queues
    }

    /// The queues, for the transport's register writes.
    pub fn queues_mut(&mut self) -> &mut [Queue] {
        &mut self.queues
    }

    /// Replaces the queues (snapshot restore, tests); there must be as many as before.
    pub fn set_queues(&mut self, queues: Vec<Queue>) -> Result<(), ActivateError> {
        if queues.len() != self.queues.len() {
            return Err(ActivateError::QueueCount {
                expected: self.queues.len(),
                given: queues.len(),
            });
        }
        self.queues = queues;
        Ok(())
    }

    /// The device's configuration space.
    pub fn config_space_mut(&mut self) -> &mut [u8] {
        &mut self.config_space
    }

    /// Guest memory, the queues and the interrupt line while the device is active.
    pub fn active_queues(&mut self) -> Option<(&GuestMemoryMmap, &mut [Queue], &Interrupt)> {
        let active = self.active.as_ref()?;
        Some((&active.mem, &mut self.queues, &active.interrupt))
    }

    /// Runs `serve` over queue `index` while the device is active, and interrupts the
    /// driver when it returns true. Does nothing while the device is reset.
    pub fn serve_queue(
        &mut self,
        index: usize,
        serve: impl FnOnce(&GuestMemoryMmap, &mut Queue) -> bool,
    ) {
        let Some((mem, queues, interrupt)) = self.active_queues() else {
            return;
        };
        let Some(queue) = queues.get_mut(index) else {
            return;
        };
        if serve(mem, queue) {
            // Fails only when the irqfd counter is saturated, i.e. an interrupt is already
            // pending.
            let _ = interrupt.trigger(VIRTIO_MMIO_INT_VRING);
        }
    }

    /// Checks the queues the driver set up and starts serving them (what
    /// [`VirtioDevice::activate`] does unless a device adds to it).
    pub fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        let event_idx = self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for (index, queue) in self.queues.iter_mut().enumerate() {
            if !queue.ready() {
                if self.optional_queues.contains(&index) {
                    continue;
                }
                return Err(ActivateError::BadQueue {
                    index,
                    reason: "the driver did not set QueueReady before DRIVER_OK".into(),
                });
            }
            if !queue.is_valid(&mem) {
                return Err(ActivateError::BadQueue {
                    index,
                    reason: format!(
                        "its rings (size {}, descriptors at {:#x}, driver area at {:#x}, \
                         device area at {:#x}) are not all inside guest memory",
                        queue.size(),
                        queue.desc_table(),
                        queue.avail_ring(),
                        queue.used_ring()
                    ),
                });
            }
            queue.set_event_idx(event_idx);
        }
        // Every queue looks notified once: what the driver queued before is served.
        for evt in &self.queue_evts {
            evt.write(1).map_err(ActivateError::Notify)?;
        }
        self.active = Some(Active { mem, interrupt });
        Ok(())
    }

    /// Back to the state after construction (the queue eventfds stay watched).
    pub fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        for queue in &mut self.queues {
            queue.reset();
        }
    }
}

/// What a virtio device offers the virtio-mmio transport. A device implements
/// `common`/`common_mut` (and hooks it needs); the rest is provided over [`VirtioCommon`].
pub trait VirtioDevice: Send {
    /// The shared state.
    fn common(&self) -> &VirtioCommon;
    /// The shared state, mutably.
    fn common_mut(&mut self) -> &mut VirtioCommon;

    /// Called by [`VirtioDevice::reset`] after the shared state is reset: the device drops
    /// what it keeps for the driver that went away.
    fn reset_device(&mut self) {}

    /// The virtio device ID (2 block, 1 net, 4 rng, 19 vsock).
    fn device_type(&self) -> u32 {
        self.common().device_type
    }
    /// The largest size of each of the device's queues; its length is the queue count.
    fn queue_max_sizes(&self) -> Vec<u16> {
        self.common().queues.iter().map(QueueT::max_size).collect()
    }
    /// The feature bits the device offers (including VIRTIO_F_VERSION_1).
    fn avail_features(&self) -> u64 {
        self.common().avail_features
    }
    /// The features the driver accepted; bits the device does not offer are dropped.
    fn set_acked_features(&mut self, features: u64) {
        let common = self.common_mut();
        common.acked_features = features & common.avail_features;
    }
    /// The features the driver accepted (a subset of `avail_features`).
    fn acked_features(&self) -> u64 {
        self.common().acked_features
    }
    /// Reads the device-specific configuration space; bytes past it read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.common().config_space, offset, data);
    }
    /// Writes the device-specific configuration space: ignored, every field the devices
    /// define is read-only for drivers that are not legacy ones.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// One eventfd per queue, registered by the VMM as an ioeventfd on QueueNotify with
    /// the queue index as datamatch, so that notifications skip the vCPU thread.
    fn queue_events(&self) -> &[EventFd] {
        &self.common().queue_evts
    }
    /// The driver set DRIVER_OK: start serving the queues it set up.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        self.common_mut().activate(mem, interrupt)
    }
    /// Whether `activate` succeeded since the last reset.
    fn is_activated(&self) -> bool {
        self.common().active.is_some()
    }
    /// The driver reset the device: stop, and go back to the initial state.
    fn reset(&mut self) {
        self.common_mut().reset();
        self.reset_device();
    }
}

/// The event-loop side of a virtio device. Its `MutEventSubscriber` is
/// [`virtio_event_subscriber!`](crate::virtio_event_subscriber), which watches the queue
/// eventfds and calls these.
pub trait VirtioEvents: VirtioDevice {
    /// Queue `index` was notified, or the device was activated. Called only while the
    /// device is active: notifications while it is reset are drained and ignored.
    fn queue_event(&mut self, index: usize, ops: &mut EventOps);
    /// Adds the device's own event sources (data from [`DEVICE_EVENT_BASE`] on).
    fn init_sources(&mut self, _ops: &mut EventOps) {}
    /// One of the device's own sources is ready.
    fn source_event(&mut self, _events: Events, _ops: &mut EventOps) {}
    /// Runs after every event, queue or not.
    fn after_event(&mut self, _ops: &mut EventOps) {}
}

/// `MutEventSubscriber::init` of a virtio device: watches the queue eventfds (for good:
/// across resets they are drained and ignored), then the device's own sources.
pub fn init_events<D: VirtioEvents + ?Sized>(device: &mut D, ops: &mut EventOps) {
    for (data, evt) in (0u32..).zip(device.queue_events()) {
        if let Err(e) = ops.add(Events::with_data(evt, data, EventSet::IN)) {
            log::error!(
                "virtio device type {}: cannot watch queue {data}: {e}; the device will not work",
                device.device_type()
            );
        }
    }
    device.init_sources(ops);
    device.after_event(ops);
}

/// `MutEventSubscriber::process` of a virtio device.
pub fn process_events<D: VirtioEvents + ?Sized>(
    device: &mut D,
    events: Events,
    ops: &mut EventOps,
) {
    let queue = usize::try_from(events.data())
        .ok()
        .filter(|&i| i < device.queue_events().len());
    match queue {
        Some(index) => {
            // Only drains the counter: EAGAIN just means there was nothing left.
            let _ = device.queue_events()[index].read();
            if device.is_activated() {
                device.queue_event(index, ops);
            }
        }
        None => device.source_event(events, ops),
    }
    device.after_event(ops);
}

/// Implements [`VirtioDevice`] for a device whose [`VirtioCommon`] is its field `common`,
/// with the hook methods given in braces, if any:
/// `virtio_device!(Vsock { fn reset_device(&mut self) { ... } })`.
#[macro_export]
macro_rules! virtio_device {
    ($device:ty $({ $($hooks:tt)* })?) => {
        impl $crate::virtio::VirtioDevice for $device {
            fn common(&self) -> &$crate::virtio::VirtioCommon {
                &self.common
            }
            fn common_mut(&mut self) -> &mut $crate::virtio::VirtioCommon {
                &mut self.common
            }
            $($($hooks)*)?
        }
    };
}

/// Implements `event_manager::MutEventSubscriber` for a [`VirtioEvents`] device.
#[macro_export]
macro_rules! virtio_event_subscriber {
    ($device:ty) => {
        impl event_manager::MutEventSubscriber for $device {
            fn init(&mut self, ops: &mut event_manager::EventOps) {
                $crate::virtio::device::init_events(self, ops);
            }
            fn process(
                &mut self,
                events: event_manager::Events,
                ops: &mut event_manager::EventOps,
            ) {
                $crate::virtio::device::process_events(self, events, ops);
            }
        }
    };
}
