//! Shared harness of the process-level tests.
#![allow(dead_code)]
pub mod browser;
pub mod cluster;
pub mod ha;
pub mod metrics;
pub mod saga;
pub mod vms;
