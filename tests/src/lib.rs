//! Shared fixtures for Switchyard's multi-process and fault tests.

pub mod fake_platform;
pub mod fixtures;
pub mod proxy;
pub mod watchdog;
