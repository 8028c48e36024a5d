//! Shared fixtures for Switchyard's multi-process and fault tests.

pub mod fixtures;
