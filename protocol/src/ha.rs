//! Where a failed host's guests go: which nodes of a package could start its guest now, why each
//! other node is excluded, and the choice the package's failover policy makes among them.
//!
//! Pure, like `apply`: the leader's failover driver chooses with it, `apply` checks the choice
//! with it again when it is committed (the state may have changed in between), and `package
//! show` and `ha status` explain with it.

use serde::{Deserialize, Serialize};

use crate::model::{FailoverPolicy, Guest, Package, RunState};
use crate::name::Name;
use crate::state::ClusterState;

/// One node of a package's node list and whether it could take the guest now.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub host: Name,
    /// Why it cannot; `None` when it is eligible.
    pub excluded: Option<String>,
}

/// The package's nodes in order: its node list, or every host in name order when it has none.
fn nodes(state: &ClusterState, package: &Package) -> Vec<Name> {
    if package.nodes.is_empty() {
        state.hosts().map(|h| h.spec.name.clone()).collect()
    } else {
        package.nodes.clone()
    }
}

/// Every node of the guest's package with why it could not start the guest now. `tried` are
/// the hosts an in-flight failover already tried.
pub fn candidates(state: &ClusterState, guest: &Guest, package: &Package, tried: &[Name]) -> Vec<Candidate> {
    let owner_profile = state.host(&guest.owner).map(|h| &h.spec.profile);
    nodes(state, package)
        .into_iter()
        .map(|host| {
            let excluded = exclusion(state, guest, package, tried, &host, owner_profile);
            Candidate { host, excluded }
        })
        .collect()
}

fn exclusion(
    state: &ClusterState,
    guest: &Guest,
    package: &Package,
    tried: &[Name],
    host: &Name,
    owner_profile: Option<&crate::model::CompatProfile>,
) -> Option<String> {
    let Some(h) = state.host(host) else { return Some("not a registered host".into()) };
    if let Some(f) = state.host_failure(host) {
        return Some(format!("failed at revision {}", f.revision));
    }
    if *host == guest.owner {
        return Some("owns the guest now".into());
    }
    if state.member(host).is_none() {
        return Some("not under failure detection (its agent never reported)".into());
    }
    if !h.reachable {
        return Some("unreachable (its agent stopped reporting)".into());
    }
    if h.maintenance {
        return Some("in maintenance".into());
    }
    if package.disabled_nodes.contains(host) {
        return Some(format!("switching of package {} is disabled on this node", package.name));
    }
    if tried.contains(host) {
        return Some("tried already in this failover".into());
    }
    if let Some(p) = owner_profile {
        if *p != h.spec.profile {
            return Some(format!("profile {} differs from the guest's host's {p}", h.spec.profile));
        }
    }
    let committed = state.committed_resources(host);
    let demand = guest.spec.demand();
    let cap = h.spec.capacity;
    if committed.vcpus.saturating_add(demand.vcpus) > cap.vcpus
        || committed.memory_mib.saturating_add(demand.memory_mib) > cap.memory_mib
    {
        let free = cap.saturating_sub(committed);
        return Some(format!(
            "not enough capacity: needs {} vCPUs and {} MiB, {} and {} MiB free",
            demand.vcpus, demand.memory_mib, free.vcpus, free.memory_mib
        ));
    }
    None
}

/// The node the package's failover policy picks, with why; or why there is none.
pub fn choose(
    state: &ClusterState,
    guest: &Guest,
    package: &Package,
    tried: &[Name],
) -> Result<(Name, String), String> {
    let all = candidates(state, guest, package, tried);
    let excluded: Vec<String> =
        all.iter().filter_map(|c| c.excluded.as_ref().map(|why| format!("{}: {why}", c.host))).collect();
    let eligible: Vec<&Name> = all.iter().filter(|c| c.excluded.is_none()).map(|c| &c.host).collect();
    let chosen = match package.failover_policy {
        FailoverPolicy::ConfiguredNode => eligible.first().copied(),
        // `min_by_key` keeps the first of equals: ties go to node-list order.
        FailoverPolicy::MinPackageNode => eligible.iter().copied().min_by_key(|h| state.packages_on(h)),
    };
    let excluded = if excluded.is_empty() { String::new() } else { format!("; excluded: {}", excluded.join(", ")) };
    match chosen {
        Some(h) => {
            let how = match package.failover_policy {
                FailoverPolicy::ConfiguredNode => "first eligible node in the package's list".to_string(),
                FailoverPolicy::MinPackageNode => {
                    format!("eligible node running the fewest packages ({})", state.packages_on(h))
                }
            };
            Ok((h.clone(), format!("{how} ({}){excluded}", package.failover_policy)))
        }
        None => Err(format!("no eligible node for package {}{excluded}", package.name)),
    }
}

/// Why a guest whose host failed is not being failed over, or `None` if it is protected (it
/// runs, its package's switching is enabled) and so a failover applies to it.
pub fn unprotected(state: &ClusterState, guest: &Guest) -> Option<String> {
    if guest.run_state != RunState::Running {
        return Some("the log says it is stopped".into());
    }
    let Some(p) = guest.spec.package.as_ref().and_then(|p| state.package(p)) else {
        return Some("not in a failover package".into());
    };
    if !p.switching_enabled {
        let why = p.switching_changed.reason.as_deref().unwrap_or("no reason given");
        return Some(format!("package {} has switching disabled ({why})", p.name));
    }
    None
}
