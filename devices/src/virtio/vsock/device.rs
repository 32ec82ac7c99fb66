//! The virtio-vsock device: configuration, features, configuration space, and the
//! [`VirtioDevice`] side that the transport drives from vCPU threads.

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::QueueT;
use vm_memory::Bytes;

use super::muxer::Muxer;
use super::{EVQ, MAX_GUEST_CID, MIN_GUEST_CID, QUEUE_SIZE, RXQ, TXQ};
use crate::virtio::{VirtioCommon, VIRTIO_MMIO_INT_VRING};

/// What the user asked for on the command line (`--vsock cid=3,socket=/tmp/vm.sock`) or in
/// the config file (`"vsock": {"cid": 3, "socket": "/tmp/vm.sock"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context ID (3 or more).
    pub cid: u64,
    /// The Unix socket hearth listens on for host-initiated connections; guest
    /// connections to host port P go to `<socket>_P`.
    pub socket: PathBuf,
}

/// Why a vsock device could not be built.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// A reserved CID.
    #[error(
        "vsock cid {0} is reserved: give a guest CID from 3 to 4294967294 \
         (0-2 are the hypervisor, local and host CIDs)"
    )]
    ReservedCid(u64),
    /// Something is in the way of the socket.
    #[error(
        "vsock socket {}: the path already exists and is in use (a socket another \
         process listens on, or not a socket); choose another path",
        .path.display()
    )]
    SocketExists {
        /// The socket path.
        path: PathBuf,
    },
    /// bind(2) or listen(2) failed.
    #[error(
        "vsock socket {}: cannot listen there: {source}; check that the directory exists \
         and is writable, and that the path is shorter than 108 bytes",
        .path.display()
    )]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd for the vsock device: {0}")]
    EventFd(#[source] io::Error),
}

/// A virtio-vsock device bridged to host Unix sockets.
#[derive(Debug)]
pub struct Vsock {
    common: VirtioCommon,
    config: VsockConfig,
    pub(super) muxer: Muxer,
    /// TX processing stopped with packets left because the guest owes itself too many
    /// resets: it resumes when the guest takes RX buffers, without a TX notification.
    tx_stalled: bool,
    /// Restored from a snapshot: the guest's connections are gone, so it must be told
    /// with a TRANSPORT_RESET event as soon as it has an event buffer posted.
    transport_reset_owed: bool,
    /// The TRANSPORT_RESET went out and the driver has not posted its event buffer again
    /// yet: RX waits, so that no new connection reaches it before it drops the old ones.
    reset_unacked: bool,
}

impl Vsock {
    /// Checks the CID and starts listening on the socket (the device is not yet activated
    /// by any driver, but host processes may connect already: their requests wait for it).
    pub fn new(config: VsockConfig) -> Result<Vsock, VsockError> {
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&config.cid) {
            return Err(VsockError::ReservedCid(config.cid));
        }
        // Stream sockets only; with neither VIRTIO_VSOCK_F_STREAM nor F_SEQPACKET offered,
        // drivers assume streams (virtio 1.2, 5.10.3). The configuration space is
        // `le64 guest_cid`, read-only for the driver. The event queue is never used by
        // this device but for TRANSPORT_RESET; a driver may leave it out.
        let common = VirtioCommon::new(
            VIRTIO_ID_VSOCK,
            1u64 << VIRTIO_F_VERSION_1,
            &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE],
            config.cid.to_le_bytes().to_vec(),
        )
        .map_err(VsockError::EventFd)?
        .with_optional_queues(&[EVQ]);
        let muxer = Muxer::bind(config.cid, &config.socket)?;
        Ok(Vsock {
            common,
            config,
            muxer,
            tx_stalled: false,
            transport_reset_owed: false,
            reset_unacked: false,
        })
    }

    /// Owes the driver a TRANSPORT_RESET event (after a restore: its connections are gone).
    pub fn owe_transport_reset(&mut self) {
        self.transport_reset_owed = true;
    }

    /// Whether a TRANSPORT_RESET event is still to be delivered.
    pub fn transport_reset_owed(&self) -> bool {
        self.transport_reset_owed
    }

    /// Delivers an owed TRANSPORT_RESET event into the next event-queue buffer, if the
    /// driver posted one (otherwise it waits for the event queue's notification).
    pub(super) fn deliver_transport_reset(&mut self) {
        const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;
        if !self.transport_reset_owed {
            return;
        }
        let Some((mem, queues, interrupt)) = self.common.active_queues() else {
            return;
        };
        let queue = &mut queues[EVQ];
        if !queue.ready() {
            return;
        }
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            return;
        };
        let head = chain.head_index();
        let written = chain
            .clone()
            .find(|d| d.is_write_only() && d.len() >= 4)
            .and_then(|d| {
                mem.write_obj(VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.to_le(), d.addr())
                    .ok()
            })
            .map_or(0, |_| 4);
        // A chain with no room is returned empty; the event then waits for another one.
        let _ = queue.add_used(mem, head, written);
        if written > 0 {
            self.transport_reset_owed = false;
            self.reset_unacked = true;
        }
        // Fails only when the irqfd counter is saturated, i.e. an interrupt is pending.
        let _ = interrupt.trigger(VIRTIO_MMIO_INT_VRING);
    }

    /// The driver notified the event queue: it posted buffers, so it handled the events
    /// before them (Linux posts the buffer again after each event). RX carries on, and an
    /// owed event goes out.
    pub(super) fn on_event_queue(&mut self) {
        if self.reset_unacked {
            self.reset_unacked = false;
            self.process_queues(false);
        }
        self.deliver_transport_reset();
    }

    /// What the device was built from.
    pub fn config(&self) -> &VsockConfig {
        &self.config
    }

    /// The host side.
    pub fn muxer(&self) -> &Muxer {
        &self.muxer
    }

    /// Moves packets both ways as far as the guest's buffers allow, and interrupts the
    /// driver if any queue was used. `tx`: the driver notified the TX queue.
    pub(super) fn process_queues(&mut self, tx: bool) {
        let Some((mem, queues, interrupt)) = self.common.active_queues() else {
            return;
        };
        let mut notify = false;
        let mut run_tx = tx || self.tx_stalled;
        // Handling TX can owe the guest packets (RESPONSE, RST, ...); filling RX can free
        // room for the resets that held TX back. A few rounds settle it; the next
        // notification carries on from there.
        for _ in 0..4 {
            // A queue the driver broke stays stuck until it resets the device (not logged,
            // so that a guest cannot flood the host's log); what was used before that still
            // deserves an interrupt.
            if run_tx {
                notify |= self.muxer.process_tx(mem, &mut queues[TXQ]).unwrap_or(true);
                self.tx_stalled = self.muxer.tx_blocked();
            }
            if !self.reset_unacked {
                notify |= self.muxer.process_rx(mem, &mut queues[RXQ]).unwrap_or(true);
            }
            run_tx = self.tx_stalled && !self.muxer.tx_blocked();
            if !run_tx {
                break;
            }
        }
        if notify {
            // Fails only when the irqfd counter is saturated, i.e. an interrupt is pending.
            let _ = interrupt.trigger(VIRTIO_MMIO_INT_VRING);
        }
    }
}

crate::virtio_device!(Vsock {
    fn reset_device(&mut self) {
        self.tx_stalled = false;
        self.muxer.reset();
        // Wakes the event loop, which unregisters the closed sockets (a queue
        // notification while reset is only drained). Fails only when the counter is
        // saturated, i.e. the event loop will wake up anyway.
        let _ = self.queue_events()[EVQ].write(1);
    }
});

// vsock has no rate limiter (Firecracker's has none either).
impl crate::rate_limiter::RateLimited for Vsock {}

#[cfg(test)]
mod tests {
    use vmm_sys_util::tempdir::TempDir;

    use super::*;
    use crate::virtio::VirtioDevice;

    fn config(dir: &TempDir, cid: u64) -> VsockConfig {
        VsockConfig {
            cid,
            socket: dir.as_path().join("v.sock"),
        }
    }

    #[test]
    fn features_and_config_space() {
        let dir = TempDir::new().unwrap();
        let mut v = Vsock::new(config(&dir, 0xfedc_ba98)).unwrap();
        assert_eq!(v.device_type(), 19);
        assert_eq!(v.queue_max_sizes(), &[256, 256, 256]);
        assert_eq!(v.avail_features(), 1 << 32);
        v.set_acked_features(u64::MAX);
        assert_eq!(v.acked_features(), 1 << 32);
        let mut cid = [0u8; 8];
        v.read_config(0, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), 0xfedc_ba98);
        let mut hi = [0xffu8; 4];
        v.read_config(4, &mut hi);
        assert_eq!(u32::from_le_bytes(hi), 0);
        let mut tail = [0xffu8; 4];
        v.read_config(6, &mut tail);
        assert_eq!(tail, [0, 0, 0, 0]);
        v.read_config(u64::MAX, &mut tail);
        assert_eq!(tail, [0; 4]);
        v.write_config(0, &[9; 8]);
        v.read_config(0, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), 0xfedc_ba98, "read-only");
    }

    #[test]
    fn reserved_cids_and_socket_errors_name_the_fix() {
        let dir = TempDir::new().unwrap();
        for cid in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
            let err = Vsock::new(config(&dir, cid)).err().unwrap();
            assert!(
                matches!(err, VsockError::ReservedCid(c) if c == cid),
                "{err}"
            );
        }
        assert!(!dir.as_path().join("v.sock").exists(), "nothing bound");

        let first = Vsock::new(config(&dir, 3)).unwrap();
        let err = Vsock::new(config(&dir, 4)).err().unwrap();
        assert!(matches!(err, VsockError::SocketExists { .. }), "{err}");
        assert!(err.to_string().contains("v.sock"), "{err}");
        drop(first);
        assert!(!dir.as_path().join("v.sock").exists(), "removed on drop");
        assert!(Vsock::new(config(&dir, 4)).is_ok(), "free again");

        // A socket file left by a process that died: nobody listens, so it is replaced.
        let stale = std::os::unix::net::UnixListener::bind(dir.as_path().join("v.sock")).unwrap();
        drop(stale);
        assert!(dir.as_path().join("v.sock").exists());
        assert!(
            Vsock::new(config(&dir, 5)).is_ok(),
            "a stale socket is replaced"
        );

        let err = Vsock::new(VsockConfig {
            cid: 3,
            socket: "/nonexistent/hearth/v.sock".into(),
        })
        .err()
        .unwrap();
        assert!(matches!(err, VsockError::Bind { .. }), "{err}");
        assert!(
            err.to_string().contains("/nonexistent/hearth/v.sock"),
            "{err}"
        );
    }

    #[test]
    fn a_replaced_socket_file_is_left_alone() {
        let dir = TempDir::new().unwrap();
        let v = Vsock::new(config(&dir, 3)).unwrap();
        let path = dir.as_path().join("v.sock");
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"someone else's").unwrap();
        drop(v);
        assert_eq!(std::fs::read(&path).unwrap(), b"someone else's");
    }
}
