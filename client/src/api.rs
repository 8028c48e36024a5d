//! One typed method per API call. Paths, query strings and bodies are built here and nowhere
//! else; names in paths are validated [`Name`]s, so nothing a caller passes can change the path.

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use switchyard_protocol::api::*;
use switchyard_protocol::{MigrationId, Name, Package};

use crate::{new_request_id, Client, ClientError};

/// `?a=1&b=2` from a query struct ("" when it has no field set).
fn query<Q: Serialize>(q: &Q) -> Result<String, ClientError> {
    let s = serde_urlencoded::to_string(q).map_err(|e| ClientError::Invalid(format!("query: {e}")))?;
    Ok(if s.is_empty() { s } else { format!("?{s}") })
}

/// A write request with its request id set (a fresh one when the caller gave none), so that it
/// may be sent again safely.
fn with_id<R: WriteRequest + Clone>(r: &R) -> R {
    let mut r = r.clone();
    if r.request_id().is_none() {
        r.set_request_id(new_request_id());
    }
    r
}

impl Client {
    fn read_params(&self) -> ReadParams {
        ReadParams { stale: self.stale }
    }

    async fn read<T: DeserializeOwned>(&self, path: &str) -> Result<Read<T>, ClientError> {
        self.get(&format!("{path}{}", query(&self.read_params())?)).await
    }

    async fn post_write<B: WriteRequest + Clone + Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<WriteResponse, ClientError> {
        self.write(Method::POST, path, Some(&with_id(body))).await
    }

    // ---- this coordinator and the cluster ----

    /// What the first answering coordinator says about itself.
    pub async fn node_status(&self) -> Result<NodeStatus, ClientError> {
        self.get("/v1/node/status").await
    }

    /// Every member with its role, log position and lag.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, ClientError> {
        self.get("/v1/cluster/status").await
    }

    /// Bootstraps a cluster on the contacted coordinator.
    pub async fn init(&self, req: &InitRequest) -> Result<InitResponse, ClientError> {
        self.post("/v1/cluster/init", req).await
    }

    /// Adds a coordinator: a learner first, a voter once it caught up.
    pub async fn add_node(&self, member: &MemberSpec) -> Result<NodeAdded, ClientError> {
        self.post("/v1/cluster/nodes", member).await
    }

    pub async fn remove_node(&self, id: u64) -> Result<NodeRemoved, ClientError> {
        self.delete(&format!("/v1/cluster/nodes/{id}")).await
    }

    /// The cluster's identity, and a restore in progress if any.
    pub async fn identity(&self) -> Result<Read<IdentityView>, ClientError> {
        self.read("/v1/cluster/identity").await
    }

    /// Commits the cluster's identity (`cluster init` does it; `log restore` to finish).
    pub async fn commit_identity(&self, req: &IdentityRequest) -> Result<IdentityResponse, ClientError> {
        self.write(Method::POST, "/v1/cluster/identity", Some(&with_id(req))).await
    }

    /// The next chunk of a restore.
    pub async fn import(&self, req: &ImportRequest) -> Result<WriteResponse, ClientError> {
        self.post_write("/v1/cluster/import", req).await
    }

    /// Builds a snapshot on the first answering coordinator now.
    pub async fn take_snapshot(&self) -> Result<SnapshotBuilt, ClientError> {
        self.post("/v1/node/snapshot", &()).await
    }

    /// The whole desired configuration at one revision.
    pub async fn full_state(&self) -> Result<Read<FullState>, ClientError> {
        self.read("/v1/state").await
    }

    // ---- hosts ----

    pub async fn register_host(&self, req: &RegisterHostRequest) -> Result<WriteResponse, ClientError> {
        self.post_write("/v1/hosts", req).await
    }

    /// One page of hosts (`next_after` names the next).
    pub async fn hosts(&self, q: &HostQuery) -> Result<Read<Vec<HostView>>, ClientError> {
        let q = HostQuery { stale: q.stale || self.stale, ..q.clone() };
        self.get(&format!("/v1/hosts{}", query(&q)?)).await
    }

    pub async fn host(&self, name: &Name) -> Result<Read<HostView>, ClientError> {
        self.read(&format!("/v1/hosts/{name}")).await
    }

    pub async fn set_maintenance(&self, host: &Name, req: &MaintenanceRequest) -> Result<WriteResponse, ClientError> {
        self.post_write(&format!("/v1/hosts/{host}/maintenance"), req).await
    }

    pub async fn modify_host(&self, host: &Name, req: &ModifyHostRequest) -> Result<WriteResponse, ClientError> {
        self.write(Method::PATCH, &format!("/v1/hosts/{host}"), Some(&with_id(req))).await
    }

    pub async fn remove_host(&self, host: &Name, params: &RemoveParams) -> Result<WriteResponse, ClientError> {
        let path = format!("/v1/hosts/{host}{}", query(&with_id(params))?);
        self.write::<(), _>(Method::DELETE, &path, None).await
    }

    pub async fn drain_host(&self, host: &Name, req: &DrainRequest) -> Result<WriteResponse, ClientError> {
        self.post_write(&format!("/v1/hosts/{host}/drain"), req).await
    }

    pub async fn undrain_host(&self, host: &Name, req: &UndrainRequest) -> Result<WriteResponse, ClientError> {
        self.post_write(&format!("/v1/hosts/{host}/undrain"), req).await
    }

    /// An agent records a repair of its hypervisor in the log.
    pub async fn record_repair(&self, host: &Name, req: &RepairRequest) -> Result<WriteResponse, ClientError> {
        self.post_write(&format!("/v1/hosts/{host}/repairs"), req).await
    }

    /// A failover target's agent says how its attempt ended.
    pub async fn report_failover(
        &self,
        host: &Name,
        req: &FailoverReportRequest,
    ) -> Result<WriteResponse, ClientError> {
        self.post_write(&format!("/v1/hosts/{host}/failovers"), req).await
    }

    /// An agent reports what it has applied (to the leader; a follower forwards it).
    pub async fn report_host(&self, host: &Name, report: &HostReport) -> Result<ReportRecorded, ClientError> {
        self.post(&format!("/v1/hosts/{host}/report"), report).await
    }

    // ---- guests ----

    pub async fn create_guest(&self, req: &CreateGuestRequest) -> Result<WriteResponse, ClientError> {
        self.post_write("/v1/guests", req).await
    }

    pub async fn modify_guest(&self, name: &Name, req: &ModifyGuestRequest) -> Result<WriteResponse, ClientError> {
        self.write(Method::PATCH, &format!("/v1/guests/{name}"), Some(&with_id(req))).await
    }

    pub async fn remove_guest(&self, name: &Name, params: &RemoveParams) -> Result<WriteResponse, ClientError> {
        let path = format!("/v1/guests/{name}{}", query(&with_id(params))?);
        self.write::<(), _>(Method::DELETE, &path, None).await
    }

    pub async fn guest(&self, name: &Name) -> Result<Read<GuestView>, ClientError> {
        self.read(&format!("/v1/guests/{name}")).await
    }

    /// One page of guests (`next_after` names the next).
    pub async fn guests(&self, q: &GuestQuery) -> Result<Read<Vec<GuestView>>, ClientError> {
        let q = GuestQuery { stale: q.stale || self.stale, ..q.clone() };
        self.get(&format!("/v1/guests{}", query(&q)?)).await
    }

    // ---- packages ----

    /// One page of packages (`next_after` names the next).
    pub async fn packages(&self, q: &PackageQuery) -> Result<Read<Vec<Package>>, ClientError> {
        let q = PackageQuery { stale: q.stale || self.stale, ..q.clone() };
        self.get(&format!("/v1/packages{}", query(&q)?)).await
    }

    /// A package with its failover candidates.
    pub async fn package(&self, name: &Name) -> Result<Read<PackageView>, ClientError> {
        self.read(&format!("/v1/packages/{name}")).await
    }

    /// `package modify`: node list and policies.
    pub async fn modify_package(
        &self,
        package: &Name,
        req: &ModifyPackageRequest,
    ) -> Result<WriteResponse, ClientError> {
        self.post_write(&format!("/v1/packages/{package}"), req).await
    }

    /// Failed hosts, failovers in flight, guests left down.
    pub async fn ha_status(&self) -> Result<Read<HaStatus>, ClientError> {
        self.read("/v1/ha").await
    }

    pub async fn set_switching(&self, package: &Name, req: &SwitchingRequest) -> Result<WriteResponse, ClientError> {
        self.post_write(&format!("/v1/packages/{package}/switching"), req).await
    }

    // ---- migrations ----

    /// Requests a migration; its id is the answer's `first_revision`.
    pub async fn migrate(&self, req: &MigrateRequest) -> Result<WriteResponse, ClientError> {
        self.post_write("/v1/migrations", req).await
    }

    pub async fn migration(&self, id: MigrationId) -> Result<Read<MigrationDetail>, ClientError> {
        self.read(&format!("/v1/migrations/{}", id.0)).await
    }

    /// The moves that would even out the active hosts' static load (nothing is changed).
    pub async fn rebalance_plan(
        &self,
        q: &RebalanceQuery,
    ) -> Result<Read<switchyard_protocol::placement::RebalancePlan>, ClientError> {
        let q = RebalanceQuery { stale: q.stale || self.stale, ..q.clone() };
        self.get(&format!("/v1/rebalance{}", query(&q)?)).await
    }

    /// One page of migration history (`items.next_after` names the next).
    pub async fn migrations(&self, q: &MigrationQuery) -> Result<Read<MigrationPage>, ClientError> {
        let q = MigrationQuery { stale: q.stale || self.stale, ..q.clone() };
        self.get(&format!("/v1/migrations{}", query(&q)?)).await
    }

    pub async fn abort_migration(&self, id: MigrationId, req: &AbortRequest) -> Result<WriteResponse, ClientError> {
        self.post_write(&format!("/v1/migrations/{}/abort", id.0), req).await
    }

    /// Ends a migration stuck after its owner switch as completed or failed, with why.
    pub async fn resolve_migration(&self, id: MigrationId, req: &ResolveRequest) -> Result<WriteResponse, ClientError> {
        self.post_write(&format!("/v1/migrations/{}/resolve", id.0), req).await
    }

    /// An agent's report on a migration's current phase, sent to every coordinator at once (each
    /// keeps it; the one that leads next then already holds it). Answers in endpoint order.
    /// The target's agent of a failed or aborted online migration says whether the guest runs
    /// there.
    pub async fn check_migration_target(
        &self,
        id: MigrationId,
        req: &TargetCheckRequest,
    ) -> Result<WriteResponse, ClientError> {
        self.post_write(&format!("/v1/migrations/{}/target", id.0), req).await
    }

    pub async fn report_migration(
        &self,
        id: MigrationId,
        report: &MigrationReport,
    ) -> Vec<Result<ReportAck, ClientError>> {
        self.post_all(&format!("/v1/migrations/{}/report", id.0), report).await
    }
}
