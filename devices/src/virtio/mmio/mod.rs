//! The virtio-mmio transport, version 2 (virtio 1.2, 4.2.2): the register window through
//! which a driver discovers, negotiates with, sets up and resets one virtio device.
//!
//! It runs on vCPU threads. Queue notifications normally bypass it (the VMM registers each
//! of the device's queue eventfds as an ioeventfd on [`QUEUE_NOTIFY_OFFSET`]). The queue
//! and feature registers are the device's own (in its [`VirtioCommon`](super::VirtioCommon)):
//! the transport writes them there, and on DRIVER_OK activates the device.

use std::sync::{Arc, Mutex};

use crate::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_mmio as regs;
use virtio_queue::{Queue, QueueT};

use super::status::{ACKNOWLEDGE, DEVICE_NEEDS_RESET, DRIVER, DRIVER_OK, FAILED, FEATURES_OK};
use super::{ActivateError, Interrupt, VirtioDevice, VIRTIO_MMIO_INT_CONFIG};
use crate::bus::{lock, BusDevice};

/// The size of one device's register window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// The QueueNotify register, where the VMM registers the queue ioeventfds (datamatch:
/// the queue index).
pub const QUEUE_NOTIFY_OFFSET: u64 = regs::VIRTIO_MMIO_QUEUE_NOTIFY as u64;
/// "virt" in little-endian.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// The modern (non-legacy) virtio-mmio layout.
pub const MMIO_VERSION: u32 = 2;
/// The VendorID register: "HRTH".
pub const VENDOR_ID: u32 = 0x4852_5448;

const MAGIC_VALUE: u64 = regs::VIRTIO_MMIO_MAGIC_VALUE as u64;
const VERSION: u64 = regs::VIRTIO_MMIO_VERSION as u64;
const DEVICE_ID: u64 = regs::VIRTIO_MMIO_DEVICE_ID as u64;
const VENDOR: u64 = regs::VIRTIO_MMIO_VENDOR_ID as u64;
const DEVICE_FEATURES: u64 = regs::VIRTIO_MMIO_DEVICE_FEATURES as u64;
const DEVICE_FEATURES_SEL: u64 = regs::VIRTIO_MMIO_DEVICE_FEATURES_SEL as u64;
const DRIVER_FEATURES: u64 = regs::VIRTIO_MMIO_DRIVER_FEATURES as u64;
const DRIVER_FEATURES_SEL: u64 = regs::VIRTIO_MMIO_DRIVER_FEATURES_SEL as u64;
const QUEUE_SEL: u64 = regs::VIRTIO_MMIO_QUEUE_SEL as u64;
const QUEUE_NUM_MAX: u64 = regs::VIRTIO_MMIO_QUEUE_NUM_MAX as u64;
const QUEUE_NUM: u64 = regs::VIRTIO_MMIO_QUEUE_NUM as u64;
const QUEUE_READY: u64 = regs::VIRTIO_MMIO_QUEUE_READY as u64;
const INTERRUPT_STATUS: u64 = regs::VIRTIO_MMIO_INTERRUPT_STATUS as u64;
const INTERRUPT_ACK: u64 = regs::VIRTIO_MMIO_INTERRUPT_ACK as u64;
const STATUS: u64 = regs::VIRTIO_MMIO_STATUS as u64;
const QUEUE_DESC_LOW: u64 = regs::VIRTIO_MMIO_QUEUE_DESC_LOW as u64;
const QUEUE_DESC_HIGH: u64 = regs::VIRTIO_MMIO_QUEUE_DESC_HIGH as u64;
const QUEUE_DRIVER_LOW: u64 = regs::VIRTIO_MMIO_QUEUE_AVAIL_LOW as u64;
const QUEUE_DRIVER_HIGH: u64 = regs::VIRTIO_MMIO_QUEUE_AVAIL_HIGH as u64;
const QUEUE_DEVICE_LOW: u64 = regs::VIRTIO_MMIO_QUEUE_USED_LOW as u64;
const QUEUE_DEVICE_HIGH: u64 = regs::VIRTIO_MMIO_QUEUE_USED_HIGH as u64;
const SHM_LEN_LOW: u64 = regs::VIRTIO_MMIO_SHM_LEN_LOW as u64;
const SHM_LEN_HIGH: u64 = regs::VIRTIO_MMIO_SHM_LEN_HIGH as u64;
const SHM_BASE_LOW: u64 = regs::VIRTIO_MMIO_SHM_BASE_LOW as u64;
const SHM_BASE_HIGH: u64 = regs::VIRTIO_MMIO_SHM_BASE_HIGH as u64;
const CONFIG_GENERATION: u64 = regs::VIRTIO_MMIO_CONFIG_GENERATION as u64;
/// Device-specific configuration space starts here.
const CONFIG: u64 = regs::VIRTIO_MMIO_CONFIG as u64;

/// The driver-visible status bits set in order during initialisation (virtio 1.2, 3.1.1).
const INIT_SEQUENCE: [u32; 4] = [ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK];

/// The transport's registers: plain data, ready to be saved in a snapshot. The queue and
/// feature registers live in the device; InterruptStatus lives in the shared
/// [`Interrupt`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioState {
    /// The Status register.
    pub device_status: u32,
    /// DeviceFeaturesSel: which 32-bit half of the device features DeviceFeatures shows.
    pub device_features_sel: u32,
    /// DriverFeaturesSel: which half DriverFeatures writes.
    pub driver_features_sel: u32,
    /// QueueSel.
    pub queue_sel: u32,
    /// ConfigGeneration: changes whenever the device changes its configuration space.
    pub config_generation: u32,
}

/// One virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    state: MmioState,
    activation_error: Option<ActivateError>,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("state", &self.state)
            .field("interrupt", &self.interrupt)
            .field("activation_error", &self.activation_error)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// Puts `device` behind a register window; `interrupt` is the line it raises.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
        interrupt: Arc<Interrupt>,
    ) -> Self {
        Self::from_parts(mem, device, interrupt, MmioState::default())
    }

    /// A transport with saved registers (snapshot restore).
    pub fn from_parts(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
        interrupt: Arc<Interrupt>,
        state: MmioState,
    ) -> Self {
        Self {
            device,
            mem,
            interrupt,
            state,
            activation_error: None,
        }
    }

    /// Guest memory.
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The interrupt line.
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// The device behind this window.
    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// The transport's registers.
    pub fn state(&self) -> &MmioState {
        &self.state
    }

    /// Why the last DRIVER_OK did not activate the device (the driver sees
    /// DEVICE_NEEDS_RESET); cleared by a reset.
    pub fn activation_error(&self) -> Option<&ActivateError> {
        self.activation_error.as_ref()
    }

    /// Reads a register of the selected queue (0 when there is no such queue).
    fn read_queue(&self, f: impl FnOnce(&Queue) -> u32) -> u32 {
        let device = lock(&self.device);
        let queue = usize::try_from(self.state.queue_sel)
            .ok()
            .and_then(|sel| device.common().queues().get(sel));
        queue.map_or(0, f)
    }

    /// Applies `f` to the selected queue, if the driver may still change queues.
    fn update_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        // Queue registers are set up between FEATURES_OK and DRIVER_OK; once the device
        // runs, it owns the queues.
        if self.state.device_status & (DRIVER_OK | FAILED) != 0 {
            return;
        }
        let mut device = lock(&self.device);
        let queue = usize::try_from(self.state.queue_sel)
            .ok()
            .and_then(|sel| device.common_mut().queues_mut().get_mut(sel));
        if let Some(queue) = queue {
            f(queue);
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        // Features are fixed once the device accepted them.
        if self.state.device_status & (FEATURES_OK | FAILED) != 0 {
            return;
        }
        let (mask, value) = match self.state.driver_features_sel {
            0 => (0xffff_ffffu64, u64::from(value)),
            1 => (0xffff_ffff_0000_0000u64, u64::from(value) << 32),
            _ => return,
        };
        // The device keeps only what it offers.
        let mut device = lock(&self.device);
        let acked = device.acked_features();
        device.set_acked_features((acked & !mask) | value);
    }

    fn notify(&self, value: u32) {
        // Without VIRTIO_F_NOTIFICATION_DATA the value is the queue index.
        let device = lock(&self.device);
        let evt = usize::try_from(value)
            .ok()
            .and_then(|index| device.queue_events().get(index));
        if let Some(evt) = evt {
            // A full counter already wakes the event loop.
            let _ = evt.write(1);
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let current = self.state.device_status & !DEVICE_NEEDS_RESET;
        let new = value & !DEVICE_NEEDS_RESET;
        // Bits are only ever added; clearing them takes a reset. A failed device waits
        // for that reset too.
        if new & current != current || current & FAILED != 0 {
            return;
        }
        if new & FAILED != 0 {
            self.state.device_status |= FAILED;
            return;
        }
        // The new status must be a prefix of the sequence (ACKNOWLEDGE, then DRIVER...):
        // anything skipping a step or setting an unknown bit is ignored as a whole.
        let is_prefix = (0..=INIT_SEQUENCE.len())
            .any(|n| INIT_SEQUENCE[..n].iter().fold(0, |acc, bit| acc | bit) == new);
        if !is_prefix {
            return;
        }
        // Take the new steps in order, stopping where the device refuses one. (Drivers set
        // one bit per write; taking several at once is harmless.)
        for bit in INIT_SEQUENCE {
            if new & bit == 0 {
                break;
            }
            if self.state.device_status & bit != 0 {
                continue;
            }
            match bit {
                FEATURES_OK if !self.accept_features() => break,
                DRIVER_OK => {
                    self.state.device_status |= DRIVER_OK;
                    if let Err(e) = self.activate() {
                        self.activation_error = Some(e);
                        self.state.device_status |= DEVICE_NEEDS_RESET;
                        // Fails only when an interrupt is already pending.
                        let _ = self.interrupt.trigger(VIRTIO_MMIO_INT_CONFIG);
                    }
                    break;
                }
                _ => {}
            }
            self.state.device_status |= bit;
        }
    }

    /// FEATURES_OK: the device accepts the driver's features unless the driver is a legacy
    /// one (no VIRTIO_F_VERSION_1), which this transport cannot serve.
    fn accept_features(&self) -> bool {
        lock(&self.device).acked_features() & (1 << VIRTIO_F_VERSION_1) != 0
    }

    fn activate(&self) -> Result<(), ActivateError> {
        lock(&self.device).activate(self.mem.clone(), self.interrupt.clone())
    }

    /// Writing 0 to Status: the device and the transport go back to their initial state.
    fn reset(&mut self) {
        lock(&self.device).reset();
        self.interrupt.set_status(0);
        self.state = MmioState {
            config_generation: self.state.config_generation,
            ..MmioState::default()
        };
        self.activation_error = None;
    }

    fn read_register(&self, offset: u64) -> u32 {
        match offset {
            MAGIC_VALUE => MMIO_MAGIC_VALUE,
            VERSION => MMIO_VERSION,
            DEVICE_ID => lock(&self.device).device_type(),
            VENDOR => VENDOR_ID,
            DEVICE_FEATURES => {
                let features = lock(&self.device).avail_features();
                #[allow(clippy::cast_possible_truncation)] // the halves, as the register shows them
                match self.state.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            QUEUE_NUM_MAX => self.read_queue(|q| u32::from(q.max_size())),
            QUEUE_READY => self.read_queue(|q| u32::from(q.ready())),
            INTERRUPT_STATUS => self.interrupt.status(),
            STATUS => self.state.device_status,
            // No shared memory regions: a length of -1 says the selected one is absent.
            SHM_LEN_LOW | SHM_LEN_HIGH | SHM_BASE_LOW | SHM_BASE_HIGH => u32::MAX,
            CONFIG_GENERATION => self.state.config_generation,
            // Write-only and reserved registers.
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            DEVICE_FEATURES_SEL => self.state.device_features_sel = value,
            DRIVER_FEATURES => self.write_driver_features(value),
            DRIVER_FEATURES_SEL => self.state.driver_features_sel = value,
            QUEUE_SEL => self.state.queue_sel = value,
            QUEUE_NUM => {
                // virtio-queue refuses sizes over the maximum or not a power of two.
                if let Ok(size) = u16::try_from(value) {
                    self.update_queue(|q| q.set_size(size));
                }
            }
            QUEUE_READY => self.update_queue(|q| q.set_ready(value == 1)),
            QUEUE_NOTIFY_OFFSET => self.notify(value),
            INTERRUPT_ACK => self.interrupt.ack(value),
            STATUS => self.write_status(value),
            // virtio-queue refuses misaligned ring addresses.
            QUEUE_DESC_LOW => self.update_queue(|q| q.set_desc_table_address(Some(value), None)),
            QUEUE_DESC_HIGH => self.update_queue(|q| q.set_desc_table_address(None, Some(value))),
            QUEUE_DRIVER_LOW => self.update_queue(|q| q.set_avail_ring_address(Some(value), None)),
            QUEUE_DRIVER_HIGH => self.update_queue(|q| q.set_avail_ring_address(None, Some(value))),
            QUEUE_DEVICE_LOW => self.update_queue(|q| q.set_used_ring_address(Some(value), None)),
            QUEUE_DEVICE_HIGH => self.update_queue(|q| q.set_used_ring_address(None, Some(value))),
            // Read-only and reserved registers.
            _ => {}
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG {
            lock(&self.device).read_config(offset - CONFIG, data);
            return;
        }
        // Registers are 32 bits wide; other accesses read as zero.
        let value = if data.len() == 4 {
            self.read_register(offset)
        } else {
            0
        };
        let bytes = value.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG {
            lock(&self.device).write_config(offset - CONFIG, data);
            return;
        }
        // Registers are 32 bits wide; other writes are dropped.
        if let Ok(bytes) = <[u8; 4]>::try_from(data) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
// Test values (descriptor flags, lengths, statuses) are small constants.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::virtio::VirtioCommon;

    /// A device that records what the transport does to it.
    struct Dummy {
        common: VirtioCommon,
        refuse: bool,
        resets: usize,
    }

    impl Dummy {
        fn new(sizes: &[u16]) -> Self {
            Self {
                // Takes whatever queues the driver sets up: the transport does not judge.
                common: VirtioCommon::new(42, OFFERED, sizes, b"abcdefgh".to_vec())
                    .unwrap()
                    .with_optional_queues(&(0..sizes.len()).collect::<Vec<_>>()),
                refuse: false,
                resets: 0,
            }
        }

        fn queues(&self) -> &[Queue] {
            self.common.queues()
        }
    }

    const OFFERED: u64 = (1 << VIRTIO_F_VERSION_1) | (1 << 3) | (1 << VIRTIO_RING_F_EVENT_IDX);

    impl VirtioDevice for Dummy {
        fn common(&self) -> &VirtioCommon {
            &self.common
        }
        fn common_mut(&mut self) -> &mut VirtioCommon {
            &mut self.common
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            let offset = usize::try_from(offset).unwrap();
            for (i, b) in data.iter().enumerate() {
                if let Some(c) = self.common.config_space_mut().get_mut(offset + i) {
                    *c = *b;
                }
            }
        }
        fn activate(
            &mut self,
            mem: GuestMemoryMmap,
            interrupt: Arc<Interrupt>,
        ) -> Result<(), ActivateError> {
            if self.refuse {
                return Err(ActivateError::BadQueue {
                    index: 0,
                    reason: "refused".into(),
                });
            }
            self.common.activate(mem, interrupt)
        }
        fn reset_device(&mut self) {
            self.resets += 1;
        }
    }

    struct Harness {
        dev: Arc<Mutex<Dummy>>,
        interrupt: Arc<Interrupt>,
        t: MmioTransport,
    }

    fn harness(sizes: &[u16]) -> Harness {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let dev = Arc::new(Mutex::new(Dummy::new(sizes)));
        let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let t = MmioTransport::new(mem, dev.clone(), interrupt.clone());
        Harness { dev, interrupt, t }
    }

    impl Harness {
        fn r(&mut self, offset: u64) -> u32 {
            let mut b = [0u8; 4];
            self.t.read(offset, &mut b);
            u32::from_le_bytes(b)
        }
        fn w(&mut self, offset: u64, v: u32) {
            self.t.write(offset, &v.to_le_bytes());
        }
        fn status(&mut self) -> u32 {
            self.r(STATUS)
        }
        fn negotiate(&mut self, features: u64) {
            self.w(STATUS, ACKNOWLEDGE);
            self.w(STATUS, ACKNOWLEDGE | DRIVER);
            self.w(DRIVER_FEATURES_SEL, 0);
            self.w(DRIVER_FEATURES, features as u32);
            self.w(DRIVER_FEATURES_SEL, 1);
            self.w(DRIVER_FEATURES, (features >> 32) as u32);
            self.w(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        }
        /// Sets queue `index` up with rings inside guest memory.
        fn setup_queue(&mut self, index: u32, base: u64) {
            self.w(QUEUE_SEL, index);
            self.w(QUEUE_NUM, 16);
            self.w(QUEUE_DESC_LOW, base as u32);
            self.w(QUEUE_DESC_HIGH, (base >> 32) as u32);
            self.w(QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
            self.w(QUEUE_DRIVER_HIGH, 0);
            self.w(QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
            self.w(QUEUE_DEVICE_HIGH, 0);
            self.w(QUEUE_READY, 1);
        }
        const ALL: u32 = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;
    }

    #[test]
    fn identification_registers() {
        let mut h = harness(&[256, 64]);
        assert_eq!(h.r(0x000), 0x7472_6976);
        assert_eq!(h.r(0x004), 2);
        assert_eq!(h.r(0x008), 42);
        assert_eq!(h.r(0x00c), VENDOR_ID);
        h.w(DEVICE_FEATURES_SEL, 0);
        assert_eq!(h.r(DEVICE_FEATURES), OFFERED as u32);
        h.w(DEVICE_FEATURES_SEL, 1);
        assert_eq!(h.r(DEVICE_FEATURES), (OFFERED >> 32) as u32);
        h.w(DEVICE_FEATURES_SEL, 2);
        assert_eq!(h.r(DEVICE_FEATURES), 0);
        h.w(QUEUE_SEL, 1);
        assert_eq!(h.r(QUEUE_NUM_MAX), 64);
        h.w(QUEUE_SEL, 2);
        assert_eq!(h.r(QUEUE_NUM_MAX), 0, "no such queue");
        assert_eq!(h.r(SHM_LEN_LOW), u32::MAX);
        assert_eq!(h.r(CONFIG_GENERATION), 0);
    }

    #[test]
    fn odd_sized_and_unknown_accesses_are_harmless() {
        let mut h = harness(&[16]);
        let mut b = [0xffu8; 2];
        h.t.read(0, &mut b);
        assert_eq!(b, [0, 0]);
        let mut b8 = [0xffu8; 8];
        h.t.read(0, &mut b8);
        assert_eq!(b8, [0; 8]);
        h.t.read(0x0ff, &mut []);
        h.t.write(STATUS, &[1]);
        h.t.write(STATUS, &[1, 0, 0, 0, 0, 0, 0, 0]);
        h.t.write(STATUS, &[]);
        assert_eq!(h.status(), 0);
        for offset in [0x001, 0x0f0, 0x0c0, MAGIC_VALUE, QUEUE_NUM_MAX] {
            h.w(offset, 0xdead_beef);
            h.r(offset);
        }
        assert_eq!(h.r(MAGIC_VALUE), MMIO_MAGIC_VALUE);
        // Config space accepts any size and offset; the device decides.
        let mut c = [0u8; 3];
        h.t.read(0x102, &mut c);
        assert_eq!(&c, b"cde");
        h.t.write(0x100, b"X");
        h.t.read(0x100, &mut c);
        assert_eq!(&c, b"Xbc");
        h.t.read(0xfff, &mut c[..1]);
        assert_eq!(c[0], 0);
    }

    #[test]
    fn the_status_follows_the_initialisation_sequence() {
        let mut h = harness(&[16]);
        // Out of order: ignored.
        h.w(STATUS, DRIVER);
        assert_eq!(h.status(), 0);
        h.w(STATUS, ACKNOWLEDGE | FEATURES_OK);
        assert_eq!(h.status(), 0);
        h.w(STATUS, ACKNOWLEDGE);
        assert_eq!(h.status(), ACKNOWLEDGE);
        h.w(STATUS, ACKNOWLEDGE | DRIVER_OK);
        assert_eq!(h.status(), ACKNOWLEDGE);
        h.w(STATUS, ACKNOWLEDGE | DRIVER);
        // Clearing a bit without a reset: ignored.
        h.w(STATUS, DRIVER);
        assert_eq!(h.status(), ACKNOWLEDGE | DRIVER);
        h.w(DRIVER_FEATURES, 0);
        h.w(DRIVER_FEATURES_SEL, 1);
        h.w(DRIVER_FEATURES, 1);
        h.w(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(h.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK);
        h.setup_queue(0, 0x1_0000);
        h.w(STATUS, Harness::ALL);
        assert_eq!(h.status(), Harness::ALL);
        assert!(h.dev.lock().unwrap().is_activated());
    }

    #[test]
    fn features_ok_needs_version_1_and_only_offered_bits_are_kept() {
        let mut h = harness(&[16]);
        // A legacy driver (no VERSION_1): FEATURES_OK does not stick.
        h.negotiate(1 << 3);
        assert_eq!(h.status(), ACKNOWLEDGE | DRIVER);
        h.w(STATUS, 0);
        assert_eq!(h.dev.lock().unwrap().acked_features(), 0);

        h.negotiate(u64::MAX);
        assert_eq!(h.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(h.dev.lock().unwrap().acked_features(), OFFERED);
        // Features are frozen after FEATURES_OK.
        h.w(DRIVER_FEATURES_SEL, 0);
        h.w(DRIVER_FEATURES, 0);
        assert_eq!(h.dev.lock().unwrap().acked_features(), OFFERED);
    }

    #[test]
    fn driver_ok_activates_with_the_queues_the_driver_set_up() {
        let mut h = harness(&[256, 64]);
        h.negotiate(OFFERED);
        h.setup_queue(0, 0x1_0000);
        h.w(QUEUE_SEL, 1);
        assert_eq!(h.r(QUEUE_READY), 0);
        h.w(QUEUE_SEL, 0);
        assert_eq!(h.r(QUEUE_READY), 1);
        h.w(STATUS, Harness::ALL);
        assert_eq!(h.status(), Harness::ALL);
        assert!(h.t.activation_error().is_none());
        let dev = h.dev.lock().unwrap();
        assert!(dev.is_activated());
        let queues = dev.queues();
        assert_eq!(queues.len(), 2);
        assert!(queues[0].ready());
        assert_eq!(queues[0].size(), 16);
        assert_eq!(queues[0].desc_table(), 0x1_0000);
        assert_eq!(queues[0].avail_ring(), 0x1_1000);
        assert_eq!(queues[0].used_ring(), 0x1_2000);
        assert!(queues[0].event_idx_enabled(), "EVENT_IDX was negotiated");
        assert!(!queues[1].ready());
    }

    #[test]
    fn queue_registers_are_frozen_after_driver_ok() {
        let mut h = harness(&[256]);
        h.negotiate(1 << VIRTIO_F_VERSION_1);
        h.setup_queue(0, 0x1_0000);
        h.w(STATUS, Harness::ALL);
        h.w(QUEUE_NUM, 32);
        h.w(QUEUE_READY, 0);
        h.w(QUEUE_DESC_LOW, 0x8000);
        assert_eq!(h.r(QUEUE_READY), 1);
        let dev = h.dev.lock().unwrap();
        assert_eq!(dev.queues()[0].size(), 16);
        assert_eq!(dev.queues()[0].desc_table(), 0x1_0000);
        assert!(!dev.queues()[0].event_idx_enabled());
    }

    #[test]
    fn invalid_queue_sizes_and_addresses_are_refused() {
        let mut h = harness(&[256]);
        h.negotiate(1 << VIRTIO_F_VERSION_1);
        h.w(QUEUE_SEL, 0);
        for bad in [0, 3, 512, 0x1_0010] {
            h.w(QUEUE_NUM, bad);
            assert_eq!(h.dev.lock().unwrap().queues()[0].size(), 256, "size {bad}");
        }
        h.w(QUEUE_DESC_LOW, 0x1001);
        assert_eq!(
            h.dev.lock().unwrap().queues()[0].desc_table(),
            0,
            "misaligned"
        );
        // Writes to a queue that does not exist go nowhere.
        h.w(QUEUE_SEL, 7);
        h.w(QUEUE_READY, 1);
        assert_eq!(h.r(QUEUE_READY), 0);
    }

    #[test]
    fn rings_outside_memory_fail_activation_with_needs_reset() {
        let mut h = harness(&[256]);
        h.negotiate(1 << VIRTIO_F_VERSION_1);
        h.setup_queue(0, 0x1_0000_0000);
        h.w(STATUS, Harness::ALL);
        assert_eq!(h.status(), Harness::ALL | DEVICE_NEEDS_RESET);
        assert!(!h.dev.lock().unwrap().is_activated());
        assert!(matches!(
            h.t.activation_error(),
            Some(ActivateError::BadQueue { index: 0, .. })
        ));
        assert_eq!(h.r(INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(h.interrupt.irq_evt().read().unwrap(), 1);
        // The driver can still give up, then reset.
        h.w(STATUS, Harness::ALL | DEVICE_NEEDS_RESET | FAILED);
        assert_eq!(h.status() & FAILED, FAILED);
        h.w(STATUS, 0);
        assert_eq!(h.status(), 0);
        assert!(h.t.activation_error().is_none());
    }

    #[test]
    fn a_device_refusing_activation_needs_reset() {
        let mut h = harness(&[256]);
        h.dev.lock().unwrap().refuse = true;
        h.negotiate(1 << VIRTIO_F_VERSION_1);
        h.setup_queue(0, 0x1_0000);
        h.w(STATUS, Harness::ALL);
        assert_eq!(h.status() & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
        assert_eq!(h.interrupt.status(), VIRTIO_MMIO_INT_CONFIG);
    }

    #[test]
    fn reset_returns_everything_to_defaults() {
        let mut h = harness(&[256]);
        h.negotiate(OFFERED);
        h.setup_queue(0, 0x1_0000);
        h.w(STATUS, Harness::ALL);
        h.interrupt.trigger(1).unwrap();
        h.w(QUEUE_SEL, 3);
        h.w(STATUS, 0);
        assert_eq!(h.status(), 0);
        assert_eq!(h.r(INTERRUPT_STATUS), 0);
        assert_eq!(*h.t.state(), MmioState::default());
        let dev = h.dev.lock().unwrap();
        let q = &dev.queues()[0];
        assert!(!q.ready());
        assert_eq!(q.size(), 256);
        assert_eq!(q.desc_table(), 0);
        assert!(!dev.is_activated());
        assert_eq!(dev.resets, 1);
        drop(dev);
        // And the device can be brought up again.
        h.negotiate(1 << VIRTIO_F_VERSION_1);
        h.setup_queue(0, 0x2_0000);
        h.w(STATUS, Harness::ALL);
        assert!(h.dev.lock().unwrap().is_activated());
    }

    #[test]
    fn interrupt_ack_and_notify() {
        let mut h = harness(&[16, 16]);
        h.interrupt.trigger(VIRTIO_MMIO_INT_CONFIG | 1).unwrap();
        assert_eq!(h.r(INTERRUPT_STATUS), 3);
        h.w(INTERRUPT_ACK, 1);
        assert_eq!(h.r(INTERRUPT_STATUS), 2);
        h.w(QUEUE_NOTIFY_OFFSET, 1);
        h.w(QUEUE_NOTIFY_OFFSET, 9);
        let dev = h.dev.lock().unwrap();
        assert_eq!(dev.queue_events()[1].read().unwrap(), 1);
        assert!(
            dev.queue_events()[0].read().is_err(),
            "queue 0 was not notified"
        );
    }

    #[test]
    fn an_invalid_queue_size_from_the_device_reads_as_absent() {
        let mut h = harness(&[100]);
        assert_eq!(h.r(QUEUE_NUM_MAX), 0);
    }

    /// The whole path as the VMM wires it: a driver sets up a real virtio-blk device
    /// through the registers, a request goes through QueueNotify, the event loop serves
    /// it, and the driver sees the interrupt.
    #[test]
    fn block_device_end_to_end() {
        use std::io::Write;

        use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
        use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_OUT};
        use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
        use virtio_queue::mock::MockSplitQueue;
        use vm_memory::Bytes;
        use vmm_sys_util::tempfile::TempFile;

        use crate::virtio::block::test_utils::{add_chain, desc, write_header};
        use crate::virtio::block::{Block, BlockConfig};
        use crate::virtio::VIRTIO_MMIO_INT_VRING;

        let file = TempFile::new().unwrap();
        file.as_file().write_all(&[0u8; 4096]).unwrap();
        let block = Arc::new(Mutex::new(
            Block::new(BlockConfig {
                path: file.as_path().to_path_buf(),
                read_only: false,
                id: None,
            })
            .unwrap(),
        ));
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let mut t = MmioTransport::new(mem.clone(), block.clone(), interrupt.clone());
        let mut manager = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
        manager.add_subscriber(block.clone());

        let mut w = |offset: u64, v: u32| t.write(offset, &v.to_le_bytes());
        let vq = MockSplitQueue::create(&mem, GuestAddress(0x8000), 256);
        w(STATUS, ACKNOWLEDGE);
        w(STATUS, ACKNOWLEDGE | DRIVER);
        w(DRIVER_FEATURES_SEL, 1);
        w(DRIVER_FEATURES, 1); // VIRTIO_F_VERSION_1
        w(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        w(QUEUE_SEL, 0);
        w(QUEUE_NUM, 256);
        w(QUEUE_DESC_LOW, vq.desc_table_addr().0 as u32);
        w(QUEUE_DRIVER_LOW, vq.avail_addr().0 as u32);
        w(QUEUE_DEVICE_LOW, vq.used_addr().0 as u32);
        w(QUEUE_READY, 1);
        w(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        assert_eq!(t.state().device_status & DEVICE_NEEDS_RESET, 0);
        assert!(lock(&block).is_activated());
        manager.run_with_timeout(100).unwrap();

        write_header(&mem, 0x2_0000, VIRTIO_BLK_T_OUT, 3);
        mem.write_slice(&[0x77; 512], GuestAddress(0x3_0000))
            .unwrap();
        add_chain(
            &vq,
            0,
            &[
                desc(0x2_0000, 16, 0),
                desc(0x3_0000, 512, 0),
                desc(0x4_0000, 1, VRING_DESC_F_WRITE),
            ],
        );
        // No ioeventfd here: the write reaches the transport, which kicks the queue.
        t.write(QUEUE_NOTIFY_OFFSET, &0u32.to_le_bytes());
        manager.run_with_timeout(100).unwrap();

        assert_eq!(vq.used().idx().load(), 1);
        let status: u8 = mem.read_obj(GuestAddress(0x4_0000)).unwrap();
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);
        let mut isr = [0u8; 4];
        t.read(INTERRUPT_STATUS, &mut isr);
        assert_eq!(u32::from_le_bytes(isr), VIRTIO_MMIO_INT_VRING);
        t.write(INTERRUPT_ACK, &VIRTIO_MMIO_INT_VRING.to_le_bytes());
        assert_eq!(interrupt.status(), 0);
        let disk = std::fs::read(file.as_path()).unwrap();
        assert!(disk[3 * 512..4 * 512].iter().all(|&b| b == 0x77));
        assert!(disk[..3 * 512]
            .iter()
            .chain(&disk[4 * 512..])
            .all(|&b| b == 0));

        // Reset: the device stops and forgets the queue.
        t.write(STATUS, &0u32.to_le_bytes());
        assert!(!lock(&block).is_activated());
        assert!(!lock(&block).common().queues()[0].ready());
    }
}
