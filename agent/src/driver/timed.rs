//! A driver that times every call of the driver it wraps into the agent's metrics
//! (`switchyard_agent_driver_call_seconds{call, outcome}`), whatever the driver is: the
//! hypervisor's tools are the part of the agent most likely to slow down or fail, and this is
//! where an operator sees it.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_protocol::{GuestSpec, Name, Revision};

use super::{
    DriverError, HypervisorDriver, Lifecycle, Moved, Observed, PackageSwitching, SwitchingState, Transfer, VmState,
};
use crate::metrics::Metrics;

pub struct Timed {
    inner: Box<dyn HypervisorDriver>,
    metrics: Arc<Metrics>,
}

impl Timed {
    pub fn new(inner: Box<dyn HypervisorDriver>, metrics: Arc<Metrics>) -> Timed {
        Timed { inner, metrics }
    }

    fn time<T>(&self, call: &str, f: impl FnOnce() -> Result<T, DriverError>) -> Result<T, DriverError> {
        let start = Instant::now();
        let r = f();
        let outcome = match &r {
            Ok(_) => "ok",
            Err(DriverError::Failed(_)) => "failed",
            Err(DriverError::Cancelled) => "cancelled",
        };
        self.metrics.driver_call(call, outcome, start.elapsed());
        r
    }
}

impl HypervisorDriver for Timed {
    fn transfer(&self, t: &Transfer, cancel: &AtomicBool) -> Result<Moved, DriverError> {
        self.time("transfer", || self.inner.transfer(t, cancel))
    }

    fn runs_here(&self, guest: &Name, owner: &Name) -> Result<bool, DriverError> {
        self.time("runs_here", || self.inner.runs_here(guest, owner))
    }

    fn prepare_incoming(&self, t: &Transfer) -> Result<(), DriverError> {
        self.time("prepare_incoming", || self.inner.prepare_incoming(t))
    }

    fn poll_interval(&self) -> Duration {
        self.inner.poll_interval()
    }

    fn lifecycle(&self) -> Option<&dyn Lifecycle> {
        self.inner.lifecycle().map(|_| self as &dyn Lifecycle)
    }

    fn switching(&self) -> Option<&dyn PackageSwitching> {
        self.inner.switching().map(|_| self as &dyn PackageSwitching)
    }
}

impl Timed {
    fn l(&self) -> &dyn Lifecycle {
        self.inner.lifecycle().expect("called through lifecycle(), which is Some only when the driver has one")
    }

    fn s(&self) -> &dyn PackageSwitching {
        self.inner.switching().expect("called through switching(), which is Some only when the driver has one")
    }
}

impl Lifecycle for Timed {
    fn observe(&self) -> Result<Vec<Observed>, DriverError> {
        self.time("observe", || self.l().observe())
    }

    fn state(&self, guest: &Name) -> Result<VmState, DriverError> {
        self.time("state", || self.l().state(guest))
    }

    fn define(&self, guest: &Name, spec: &GuestSpec, version: Revision) -> Result<(), DriverError> {
        self.time("define", || self.l().define(guest, spec, version))
    }

    fn undefine(&self, guest: &Name) -> Result<(), DriverError> {
        self.time("undefine", || self.l().undefine(guest))
    }

    fn start(&self, guest: &Name) -> Result<(), DriverError> {
        self.time("start", || self.l().start(guest))
    }

    fn stop(&self, guest: &Name, hard: bool) -> Result<(), DriverError> {
        self.time("stop", || self.l().stop(guest, hard))
    }

    fn stop_if(&self, guest: &Name, hard: bool, seen: &VmState) -> Result<bool, DriverError> {
        self.time("stop", || self.l().stop_if(guest, hard, seen))
    }

    fn resume_migrated(&self, guest: &Name) -> Result<(), DriverError> {
        self.time("resume", || self.l().resume_migrated(guest))
    }

    fn release_incoming(&self, guest: &Name) -> Result<bool, DriverError> {
        self.time("release_incoming", || self.l().release_incoming(guest))
    }
}

impl PackageSwitching for Timed {
    fn view(&self) -> Result<BTreeMap<Name, SwitchingState>, DriverError> {
        self.time("switching_view", || self.s().view())
    }

    fn set(&self, package: &Name, node: Option<&Name>, enabled: bool) -> Result<(), DriverError> {
        self.time("switching_set", || self.s().set(package, node, enabled))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::Simulated;

    #[test]
    fn every_call_is_timed_with_its_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let h1 = Name::new("h1").unwrap();
        let metrics = Arc::new(Metrics::new());
        let d = Timed::new(Box::new(Simulated::new(dir.path(), h1.clone(), 10, 1).unwrap()), metrics.clone());
        assert!(d.lifecycle().is_none() && d.switching().is_none(), "the simulated driver has neither");
        assert!(d.runs_here(&Name::new("g1").unwrap(), &h1).unwrap());
        d.transfer(&crate::driver::tests::transfer("g1"), &AtomicBool::new(false)).unwrap();
        assert_eq!(
            d.transfer(&crate::driver::tests::transfer("g1"), &AtomicBool::new(false)).unwrap_err(),
            DriverError::Failed("guest g1 does not run on h1".into())
        );
        let text = metrics.encode();
        for line in [
            "switchyard_agent_driver_call_seconds_count{call=\"runs_here\",outcome=\"ok\"} 1",
            "switchyard_agent_driver_call_seconds_count{call=\"transfer\",outcome=\"ok\"} 1",
            "switchyard_agent_driver_call_seconds_count{call=\"transfer\",outcome=\"failed\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
