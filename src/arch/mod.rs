//! x86-64 machine setup: the guest physical layout, CPUID, MSRs, the boot-time GDT,
//! page tables and registers, and the MP table.

pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
