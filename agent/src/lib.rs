//! # switchyard-agent
//!
//! Home of the VM-host agent daemon (`switchyard-agent`) and its hypervisor drivers. Nothing is
//! built here yet: agents need the coordinator's subscription API first (see ARCHITECTURE.md,
//! "Status").
