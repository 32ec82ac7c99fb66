//! The Intel MultiProcessor table, which tells a guest without ACPI how many CPUs it has
//! and how ISA interrupts reach the IOAPIC.

use crate::memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use super::layout::{EBDA_START, IOAPIC_ADDR, IRQ_MAX, LAPIC_ADDR};

const MPF_SIZE: usize = 16;
const MPC_HEADER_SIZE: usize = 44;
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// Family 6 in the CPU signature; FPU and APIC in the feature flags.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

/// The most vCPUs the table can describe: APIC ids 0..=253, the IOAPIC takes the next id
/// and 0xff is broadcast.
pub const MAX_CPUS: u8 = 254;

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MptableError {
    /// More vCPUs than the table can number.
    #[error("the MP table describes at most {MAX_CPUS} vCPUs, {0} were asked for")]
    TooManyCpus(u8),
    /// Zero vCPUs.
    #[error("a VM needs at least one vCPU")]
    NoCpus,
    /// Guest memory does not reach the EBDA.
    #[error("cannot write the MP table at {EBDA_START:#x}: guest memory is too small")]
    Write,
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the floating pointer and configuration table for `cpus` vCPUs as they sit at
/// `base` in guest memory.
// The tables hold fixed addresses below 4 GiB, at most 254 CPUs and 24 interrupt
// entries: every narrowing below is exact.
#[allow(clippy::cast_possible_truncation)]
pub fn build(cpus: u8, base: u64) -> Result<Vec<u8>, MptableError> {
    if cpus == 0 {
        return Err(MptableError::NoCpus);
    }
    if cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus(cpus));
    }
    let ioapic_id = cpus;
    let table_addr = base + MPF_SIZE as u64;

    let mut entries = Vec::new();
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[MP_PROCESSOR, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[MP_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[MP_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    for irq in 0..=IRQ_MAX as u8 {
        // ISA bus irq N arrives at IOAPIC pin N, polarity and trigger as the bus says.
        entries.extend_from_slice(&[MP_INTSRC, MP_INT, 0, 0, 0, irq, ioapic_id, irq]);
    }
    entries.extend_from_slice(&[MP_LINTSRC, MP_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_NMI, 0, 0, 0, 0, 0xff, 1]);
    let entry_count = u16::from(cpus) + 2 + (IRQ_MAX as u16 + 1) + 2;

    let mut table = Vec::with_capacity(MPC_HEADER_SIZE + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((MPC_HEADER_SIZE + entries.len()) as u16).to_le_bytes());
    table.extend_from_slice(&[4, 0]); // spec 1.4, checksum below
    table.extend_from_slice(b"HEARTH  ");
    table.extend_from_slice(b"000000000000");
    table.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes());
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut mpf = Vec::with_capacity(MPF_SIZE + table.len());
    mpf.extend_from_slice(b"_MP_");
    mpf.extend_from_slice(&(table_addr as u32).to_le_bytes());
    mpf.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // 16 bytes, spec 1.4, checksum
    mpf[10] = checksum(&mpf[..MPF_SIZE]);
    mpf.extend_from_slice(&table);
    Ok(mpf)
}

/// Writes the MP table for `cpus` vCPUs at the EBDA.
pub fn setup(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MptableError> {
    let bytes = build(cpus, EBDA_START)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(|_| MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_cpu_entries() {
        let t = build(3, EBDA_START).unwrap();
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(sum(&t[..16]), 0);
        let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
        assert_eq!(ptr, EBDA_START + 16);
        let table = &t[16..];
        assert_eq!(&table[..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(sum(table), 0);
        let cpus: Vec<_> = table[44..]
            .chunks(20)
            .take(3)
            .map(|c| (c[0], c[1], c[3]))
            .collect();
        assert_eq!(cpus, vec![(0, 0, 3), (0, 1, 1), (0, 2, 1)]);
        let count = u16::from_le_bytes([table[34], table[35]]) as usize;
        assert_eq!(count, 3 + 1 + 1 + 24 + 2);
        assert_eq!(len, 44 + 3 * 20 + (count - 3) * 8);
    }

    #[test]
    fn rejects_bad_counts() {
        assert_eq!(build(0, 0), Err(MptableError::NoCpus));
        assert_eq!(build(255, 0), Err(MptableError::TooManyCpus(255)));
        assert!(build(254, 0).is_ok());
    }

    #[test]
    fn writes_into_guest_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        setup(&mem, 2).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(EBDA_START)).unwrap();
        assert_eq!(&sig, b"_MP_");
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert_eq!(setup(&small, 1), Err(MptableError::Write));
    }
}
