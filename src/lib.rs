//! hearth: a minimal KVM virtual machine monitor.
