//! The console's pages: cluster, hosts, guests, packages, migrations, events. Each reads what it
//! shows through the API ([`Ui::read`]) and renders it with `maud` (every value escaped). Lists
//! are pages of the API's paged reads (`after` + `limit`), so a page costs the same at 100 000
//! guests as at 10. Plots are inline SVG drawn here: nothing to load, readable without script.

use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};
use serde::{Deserialize, Serialize};
use switchyard_protocol::api::*;
use switchyard_protocol::{timefmt, Event, HostState, Migration, Package, Phase, Revision, RunState, Timestamp};

use super::session::Session;
use super::{signed_in, urlencode, Fetched, Refusal, Ui, U};

/// Rows per page of a list.
pub const ROWS: usize = 100;
/// How far back the event tail looks (revisions).
const TAIL_WINDOW: u64 = 2000;

/// Where a page's figures come from, shown in its footer.
pub struct Source {
    pub revision: Revision,
    pub stale: bool,
}

impl<T> Fetched<Read<T>> {
    fn source(&self) -> Source {
        Source { revision: self.value.revision, stale: self.stale }
    }
}

/// The page around `body`: navigation, who is signed in, where the data comes from, and the
/// live-update hook.
pub fn layout(ui: &Ui, s: &Session, title: &str, nav: &str, source: Option<Source>, body: Markup) -> Markup {
    let st = ui.node.status();
    let items = [
        ("cluster", "Cluster"),
        ("hosts", "Hosts"),
        ("guests", "Guests"),
        ("packages", "Packages"),
        ("migrations", "Migrations"),
        ("failovers", "Failovers"),
        ("events", "Events"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — Switchyard" }
                link rel="stylesheet" href="/ui/assets/console.css";
                script src="/ui/assets/console.js" defer {}
            }
            body data-live="/ui/live" {
                a class="skip" href="#main" { "Skip to content" }
                header {
                    span class="brand" { "Switchyard" }
                    nav aria-label="Console" {
                        ul {
                            @for (key, label) in items {
                                li { a href={ "/ui/" (key) } aria-current=[(key == nav).then_some("page")] { (label) } }
                            }
                        }
                    }
                    div class="who" {
                        span { "coordinator " (st.id) " (" (st.role) ", term " (st.term) ")" }
                        span { " · " (s.actor) " (" (s.role.label()) ")" }
                        form method="post" action="/ui/logout" class="inline" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            button type="submit" class="link" { "Sign out" }
                        }
                    }
                }
                main id="main" tabindex="-1" {
                    @if let Some(src) = &source {
                        @if src.stale {
                            p class="stale" role="status" id="stale" {
                                "No leader answers: this is coordinator " (st.id) "'s own copy at revision "
                                (src.revision) ", which may be behind. It refreshes once a leader is back."
                            }
                        }
                    }
                    (body)
                    @if let Some(src) = &source {
                        p class="source" { "Read at revision " span id="revision" { (src.revision) } @if !src.stale { " (linearizable)" } "." span id="live-state" {} }
                    }
                }
            }
        }
    }
}

/// A page whose read failed: the API's reason, inside the layout.
fn failed(ui: &Ui, s: &Session, title: &str, nav: &str, r: Refusal) -> Response {
    let status =
        if r.status.is_client_error() || r.status.is_server_error() { r.status } else { StatusCode::BAD_GATEWAY };
    let body = html! { h1 { (title) } (refusal(&r)) };
    (status, layout(ui, s, title, nav, None, body)).into_response()
}

/// An API refusal as people read it: its message and its stable code.
pub fn refusal(r: &Refusal) -> Markup {
    html! { p class="refusal" role="alert" { (r.body.message) " " span class="code" { "(" (r.body.code) ")" } } }
}

fn query<T: Serialize>(q: &T) -> String {
    serde_urlencoded::to_string(q).unwrap_or_default()
}

/// Links to the first and the next page of a list, keeping the page's other parameters.
fn next_link(base: &str, raw: Option<&str>, next: Option<&str>) -> Markup {
    let keep: Vec<(String, String)> = raw
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k != "after")
        .collect();
    let paged = raw.is_some_and(|q| q.contains("after="));
    let first = format!("{base}?{}", query(&keep));
    let next = next.map(|n| {
        let mut with = keep.clone();
        with.push(("after".into(), n.to_string()));
        format!("{base}?{}", query(&with))
    });
    html! {
        nav class="pager" aria-label="Pages" {
            @if paged { a href=(first) { "First page" } }
            @if let Some(n) = next { a href=(n) rel="next" { "Next page" } }
        }
    }
}

fn time(t: Timestamp) -> String {
    timefmt::format(t)
}

/// A bar of `used` out of `total`, with the figures as text (screen readers read the text).
fn bar(label: &str, used: u64, total: u64, unit: &str) -> Markup {
    let pct = used.saturating_mul(100).checked_div(total).map_or(100, |p| p.min(100));
    let class = if pct >= 90 {
        "bar hot"
    } else if pct >= 70 {
        "bar warm"
    } else {
        "bar"
    };
    html! {
        div class="capacity" {
            span class="bar-label" { (label) " " (used) "/" (total) " " (unit) }
            span class=(class) role="img" aria-label={ (label) " " (pct) " percent committed" } {
                span class="fill" style={ "width:" (pct) "%" } {}
            }
        }
    }
}

fn sync_cell(sync: Option<&HostSync>) -> Markup {
    match sync {
        None => html! { span class="muted" title="known on the leader only" { "—" } },
        Some(s) => {
            let (class, text) = match &s.status {
                SyncStatus::InSync => ("ok", "in sync".to_string()),
                SyncStatus::Lagging { behind } => ("warn", format!("lagging {behind} behind")),
                SyncStatus::Diverged => ("bad", "diverged".to_string()),
                SyncStatus::Silent => ("bad", "silent".to_string()),
                SyncStatus::Unknown => ("muted", "unknown".to_string()),
            };
            html! {
                span class={ "badge " (class) } data-sync=(text) { (text) }
                @if let Some(ms) = s.last_report_ms_ago { span class="muted" { " report " (ms) " ms ago" } }
            }
        }
    }
}

fn state_badge(state: HostState) -> Markup {
    let class = match state {
        HostState::Active => "ok",
        HostState::Maintenance | HostState::Draining => "warn",
        HostState::Unreachable | HostState::Failed => "bad",
    };
    html! { span class={ "badge " (class) } { (state) } }
}

fn phase_badge(p: Phase) -> Markup {
    let class = match p {
        Phase::Completed => "ok",
        Phase::Failed | Phase::Aborted => "bad",
        _ => "live",
    };
    html! { span class={ "badge " (class) } data-phase=(format!("{p:?}")) { (phase_name(p)) } }
}

/// A phase as people read it (`target_running` → "target running").
pub fn phase_name(p: Phase) -> String {
    p.as_str().replace('_', " ")
}

/// An action button: a link to the action's confirmation page, shown only to roles the API
/// lets call `api_path`.
fn action(ui: &Ui, s: &Session, api_method: Method, api_path: &str, href: String, label: &str) -> Markup {
    if !ui.may(s, &api_method, api_path) {
        return html! {};
    }
    html! { a class="button" href=(href) { (label) } }
}

// ---- cluster ----

pub async fn cluster(State(ui): U, headers: HeaderMap) -> Response {
    let s = match signed_in(&ui, &headers, "/ui/cluster") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let status = match ui.read::<ClusterStatus>(&s, "/v1/cluster/status").await {
        Ok(v) => v.value,
        Err(r) => return failed(&ui, &s, "Cluster", "cluster", r),
    };
    let (hosts, guests, packages, moving, unprotected, rev) = ui.node.sm.read(|st| {
        (
            st.hosts().count(),
            st.guests().count(),
            st.packages().count(),
            st.in_flight_migrations().count(),
            st.packages().filter(|p| !p.switching_enabled).count(),
            st.revision(),
        )
    });
    let body = html! {
        h1 { "Cluster" }
        section aria-labelledby="members-h" {
            h2 id="members-h" { "Coordinators" }
            table {
                thead { tr { th scope="col" { "Node" } th scope="col" { "API" } th scope="col" { "Voter" } th scope="col" { "Role" } th scope="col" { "Term" } th scope="col" { "Applied index" } th scope="col" { "Revision" } th scope="col" { "Lag" } th scope="col" { "Health" } } }
                tbody {
                    @for m in &status.members {
                        tr data-node=(m.id) {
                            th scope="row" { (m.id) @if status.leader == Some(m.id) { " " span class="badge ok" { "leader" } } }
                            td { (m.api_addr) }
                            td { @if m.voter { "voter" } @else { "learner" } }
                            @match &m.status {
                                Some(st) => {
                                    td { (st.role) } td { (st.term) } td { (opt(st.applied_index)) } td { (st.revision) }
                                    td { (opt(m.lag)) }
                                    td { @match &st.fault { Some(f) => span class="badge bad" { "fault: " (f) }, None => span class="badge ok" { "healthy" } } }
                                },
                                None => { td colspan="6" { span class="badge bad" { "does not answer" } } },
                            }
                        }
                    }
                }
            }
            @if status.leader.is_none() { p class="refusal" role="alert" { "No coordinator is leader now: writes wait until one is elected." } }
        }
        section aria-labelledby="summary-h" {
            h2 id="summary-h" { "At a glance" }
            ul class="figures" {
                li { a href="/ui/hosts" { strong { (hosts) } " hosts" } }
                li { a href="/ui/guests" { strong { (guests) } " guests" } }
                li { a href="/ui/packages" { strong { (packages) } " packages" } }
                li { a href="/ui/packages?unprotected=true" class=[(unprotected > 0).then_some("warn")] { strong { (unprotected) } " unprotected" } }
                li { a href="/ui/migrations" { strong { (moving) } " migrations in flight" } }
            }
            p class="muted" { "Counts from coordinator " (ui.node.id) "'s applied state at revision " (rev) "." }
        }
    };
    layout(&ui, &s, "Cluster", "cluster", Some(Source { revision: rev, stale: false }), body).into_response()
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("—".into(), |v| v.to_string())
}

// ---- hosts ----

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HostsQ {
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "empty_none")]
    state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "empty_none")]
    after: Option<String>,
}

pub async fn hosts(
    State(ui): U,
    headers: HeaderMap,
    q: Result<Query<HostsQ>, axum::extract::rejection::QueryRejection>,
    RawQuery(raw): RawQuery,
) -> Response {
    let s = match signed_in(&ui, &headers, "/ui/hosts") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(Query(q)) = q else { return bad_query(&ui, &s, "Hosts", "hosts") };
    let path = format!("/v1/hosts?limit={ROWS}&{}", query(&q));
    let page = match ui.read::<Read<Vec<HostView>>>(&s, &path).await {
        Ok(v) => v,
        Err(r) => return failed(&ui, &s, "Hosts", "hosts", r),
    };
    let states =
        [HostState::Active, HostState::Draining, HostState::Maintenance, HostState::Unreachable, HostState::Failed];
    let body = html! {
        h1 { "Hosts" }
        form method="get" action="/ui/hosts" class="filters" {
            label for="state" { "State" }
            select id="state" name="state" {
                option value="" { "any" }
                @for st in states { option value=(st) selected[q.state.as_deref() == Some(st.to_string().as_str())] { (st) } }
            }
            button type="submit" { "Filter" }
        }
        table id="hosts" {
            caption { "Hosts, by name: state, configuration sync, capacity committed (owned guests and migrations heading there)." }
            thead { tr { th scope="col" { "Host" } th scope="col" { "State" } th scope="col" { "Sync" } th scope="col" { "Capacity" } th scope="col" { "Profile" } th scope="col" { "Actions" } } }
            tbody {
                @for h in &page.value.items { (host_row(&ui, &s, h)) }
            }
        }
        @if page.value.items.is_empty() { p { "No hosts." } }
        (next_link("/ui/hosts", raw.as_deref(), page.value.next_after.as_deref()))
    };
    layout(&ui, &s, "Hosts", "hosts", Some(page.source()), body).into_response()
}

fn host_row(ui: &Ui, s: &Session, h: &HostView) -> Markup {
    let name = h.host.spec.name.as_str();
    let cap = h.host.spec.capacity;
    html! {
        tr data-host=(name) {
            th scope="row" { a href={ "/ui/hosts/" (urlencode(name)) } { (name) } div class="muted" { (h.host.spec.address) } }
            td {
                (state_badge(h.state))
                @if let Some(d) = &h.drain { div class="muted" { "draining: " (d.guests_left) " left, " (d.moving) " moving" } }
            }
            td { (sync_cell(h.sync.as_ref())) }
            td {
                (bar("memory", h.committed.memory_mib, cap.memory_mib, "MiB"))
                (bar("vCPUs", u64::from(h.committed.vcpus), u64::from(cap.vcpus), ""))
            }
            td { (h.host.spec.profile) }
            td class="actions" { (host_actions(ui, s, h)) }
        }
    }
}

fn host_actions(ui: &Ui, s: &Session, h: &HostView) -> Markup {
    let name = urlencode(h.host.spec.name.as_str());
    let api = |verb: &str| format!("/v1/hosts/{name}/{verb}");
    html! {
        @if h.drain.is_some() {
            (action(ui, s, Method::POST, &api("undrain"), format!("/ui/act/undrain?host={name}"), "Undrain"))
        } @else if h.state != HostState::Maintenance {
            (action(ui, s, Method::POST, &api("drain"), format!("/ui/act/drain?host={name}"), "Drain"))
        }
        @if h.host.maintenance {
            (action(ui, s, Method::POST, &api("maintenance"), format!("/ui/act/maintenance?host={name}&on=false"), "End maintenance"))
        } @else if h.drain.is_none() {
            (action(ui, s, Method::POST, &api("maintenance"), format!("/ui/act/maintenance?host={name}&on=true"), "Maintenance"))
        }
    }
}

pub async fn host(State(ui): U, headers: HeaderMap, Path(name): Path<String>) -> Response {
    let here = format!("/ui/hosts/{}", urlencode(&name));
    let s = match signed_in(&ui, &headers, &here) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let n = urlencode(&name);
    let h = match ui.read::<Read<HostView>>(&s, &format!("/v1/hosts/{n}")).await {
        Ok(v) => v,
        Err(r) => return failed(&ui, &s, &name, "hosts", r),
    };
    let guests = match ui.read::<Read<Vec<GuestView>>>(&s, &format!("/v1/guests?owner={n}&limit={ROWS}")).await {
        Ok(v) => v.value,
        Err(r) => return failed(&ui, &s, &name, "hosts", r),
    };
    let v = &h.value.items;
    let spec = &v.host.spec;
    let hv = v.sync.as_ref().and_then(|s| s.hypervisor.as_ref());
    let body = html! {
        h1 { "Host " (spec.name) }
        dl class="facts" {
            dt { "State" } dd { (state_badge(v.state)) }
            dt { "Address" } dd { (spec.address) }
            dt { "Sync" } dd { (sync_cell(v.sync.as_ref())) @if let Some(r) = v.sync.as_ref().and_then(|s| s.applied_revision) { " (applied revision " (r) ")" } }
            dt { "Capacity" } dd { (bar("memory", v.committed.memory_mib, spec.capacity.memory_mib, "MiB")) (bar("vCPUs", u64::from(v.committed.vcpus), u64::from(spec.capacity.vcpus), "")) }
            dt { "Profile" } dd { (spec.profile) }
            dt { "Labels" } dd { @if spec.labels.is_empty() { "none" } @for (k, l) in &spec.labels { span class="badge" { (k) ": " (l) } " " } }
            @if let Some(d) = &v.drain {
                dt { "Drain" } dd { "started at revision " (d.drain.started) " by " (d.drain.actor) "; " (d.guests_left) " guests left, " (d.moving) " moving, at most " (d.drain.max_parallel) " at once" }
            }
        }
        div class="actions" { (host_actions(&ui, &s, v)) }
        @if let Some(hv) = hv {
            @if !hv.drift.is_empty() {
                h2 { "Differs from the log" }
                ul { @for d in &hv.drift { li { (d.guest) ": " (format!("{:?}", d.drift)) } } }
            }
            @if !hv.pending.is_empty() {
                h2 { "Changes waiting for a restart" }
                ul { @for p in &hv.pending { li { (p.guest) ": " (p.fields.join(", ")) } } }
            }
        }
        h2 { "Guests owned" }
        (guest_table(&ui, &s, &guests.items))
        @if let Some(next) = &guests.next_after { p { a href={ "/ui/guests?owner=" (n) "&after=" (urlencode(next)) } { "More guests of " (spec.name) } } }
    };
    layout(&ui, &s, &format!("Host {name}"), "hosts", Some(h.source()), body).into_response()
}

fn bad_query(ui: &Ui, s: &Session, title: &str, nav: &str) -> Response {
    let r = Refusal::new(StatusCode::BAD_REQUEST, "bad_request", "this page does not take those parameters");
    failed(ui, s, title, nav, r)
}

// ---- guests ----

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GuestsQ {
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "empty_none")]
    owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "empty_none")]
    package: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "empty_none")]
    after: Option<String>,
}

/// An empty form field reads as absent.
fn empty_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = Option::<String>::deserialize(d)?;
    Ok(v.filter(|s| !s.trim().is_empty()).map(|s| s.trim().to_string()))
}

pub async fn guests(
    State(ui): U,
    headers: HeaderMap,
    q: Result<Query<GuestsQ>, axum::extract::rejection::QueryRejection>,
    RawQuery(raw): RawQuery,
) -> Response {
    let s = match signed_in(&ui, &headers, "/ui/guests") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(Query(q)) = q else { return bad_query(&ui, &s, "Guests", "guests") };
    let page = match ui.read::<Read<Vec<GuestView>>>(&s, &format!("/v1/guests?limit={ROWS}&{}", query(&q))).await {
        Ok(v) => v,
        Err(r) => return failed(&ui, &s, "Guests", "guests", r),
    };
    let body = html! {
        h1 { "Guests" }
        form method="get" action="/ui/guests" class="filters" {
            label for="owner" { "Owner" } input id="owner" name="owner" value=[q.owner.as_deref()] placeholder="host";
            label for="package" { "Package" } input id="package" name="package" value=[q.package.as_deref()] placeholder="package";
            label for="after" { "From name after" } input id="after" name="after" value=[q.after.as_deref()];
            button type="submit" { "Filter" }
        }
        (guest_table(&ui, &s, &page.value.items))
        (next_link("/ui/guests", raw.as_deref(), page.value.next_after.as_deref()))
    };
    layout(&ui, &s, "Guests", "guests", Some(page.source()), body).into_response()
}

fn guest_table(ui: &Ui, s: &Session, guests: &[GuestView]) -> Markup {
    html! {
        @if guests.is_empty() { p { "No guests." } } @else {
            table id="guests" {
                thead { tr { th scope="col" { "Guest" } th scope="col" { "Owner" } th scope="col" { "Run state" } th scope="col" { "Size" } th scope="col" { "Package" } th scope="col" { "Under way" } th scope="col" { "Actions" } } }
                tbody {
                    @for g in guests {
                        @let name = urlencode(g.guest.name.as_str());
                        tr data-guest=(g.guest.name) {
                            th scope="row" { a href={ "/ui/guests/" (name) } { (g.guest.name) } }
                            td { a href={ "/ui/hosts/" (urlencode(g.guest.owner.as_str())) } { (g.guest.owner) } }
                            td { (run_state(g.guest.run_state)) }
                            td { (g.guest.spec.vcpus) " vCPU, " (g.guest.spec.memory_mib) " MiB" }
                            td { @match &g.package { Some(p) => { (p.name) @if !p.switching_enabled { " " span class="badge warn" { "unprotected" } } }, None => span class="muted" { "—" } } }
                            td {
                                @if let Some(m) = &g.migration { a href={ "/ui/migrations/" (m.id.0) } { "migration " (m.id.0) } " " (phase_badge(m.phase)) }
                                @if let Some(f) = &g.failover { span class="badge bad" { "failover from " (f.failed_host) " to " (f.target) } }
                            }
                            td class="actions" {
                                @if g.migration.is_none() { (action(ui, s, Method::POST, "/v1/migrations", format!("/ui/act/migrate?guest={name}"), "Migrate")) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn run_state(r: RunState) -> &'static str {
    match r {
        RunState::Running => "running",
        RunState::Stopped => "stopped",
    }
}

pub async fn guest(State(ui): U, headers: HeaderMap, Path(name): Path<String>) -> Response {
    let n = urlencode(&name);
    let s = match signed_in(&ui, &headers, &format!("/ui/guests/{n}")) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let g = match ui.read::<Read<GuestView>>(&s, &format!("/v1/guests/{n}")).await {
        Ok(v) => v,
        Err(r) => return failed(&ui, &s, &name, "guests", r),
    };
    let v = &g.value.items;
    let spec = &v.guest.spec;
    let patch = format!("/v1/guests/{n}");
    let body = html! {
        h1 { "Guest " (v.guest.name) }
        dl class="facts" {
            dt { "Owner" } dd { a href={ "/ui/hosts/" (urlencode(v.guest.owner.as_str())) } { (v.guest.owner) } }
            dt { "Run state" } dd { (run_state(v.guest.run_state)) }
            dt { "Size" } dd { (spec.vcpus) " vCPU, " (spec.memory_mib) " MiB" }
            dt { "Disks" } dd { @if spec.disks.is_empty() { "none" } (spec.disks.join(", ")) }
            dt { "Networks" } dd { @if spec.networks.is_empty() { "none" } (spec.networks.join(", ")) }
            dt { "Online migration" } dd { @if spec.online_migration { "enabled" } @else { "disabled" } @if spec.cluster_node { " (a cluster node: moved offline only)" } }
            dt { "Package" } dd { @match &v.package { Some(p) => { (p.name) " — switching " @if p.switching_enabled { "enabled" } @else { span class="badge warn" { "disabled" } } }, None => "none" } }
            dt { "Version" } dd { "revision " (v.guest.version) }
            @if let Some(m) = &v.migration { dt { "Migration" } dd { a href={ "/ui/migrations/" (m.id.0) } { (m.id.0) } " " (phase_badge(m.phase)) " " (m.source) " → " (m.target) } }
            @if let Some(f) = &v.failover { dt { "Failover" } dd { "from " (f.failed_host) " to " (f.target) " since " (time(f.started_at)) } }
        }
        div class="actions" {
            @if v.migration.is_none() { (action(&ui, &s, Method::POST, "/v1/migrations", format!("/ui/act/migrate?guest={n}"), "Migrate")) }
            @match v.guest.run_state {
                RunState::Running => (action(&ui, &s, Method::PATCH, &patch, format!("/ui/act/run?guest={n}&state=stopped"), "Stop")),
                RunState::Stopped => (action(&ui, &s, Method::PATCH, &patch, format!("/ui/act/run?guest={n}&state=running"), "Start")),
            }
        }
        h2 { "Where its definition is current" }
        @if v.hosts.is_empty() { p class="muted" { "Known on the leader only (no leader answered)." } } @else {
            table {
                thead { tr { th scope="col" { "Host" } th scope="col" { "Definition" } th scope="col" { "Hypervisor differs" } th scope="col" { "Pending until restart" } } }
                tbody {
                    @for h in &v.hosts {
                        tr {
                            th scope="row" { (h.host) }
                            td { (sync_cell(Some(&HostSync { status: h.status.clone(), applied_revision: None, last_report_ms_ago: None, hypervisor: None }))) }
                            td { @if h.drift.is_empty() { "—" } @else { (format!("{:?}", h.drift)) } }
                            td { @if h.pending.is_empty() { "—" } @else { (h.pending.join(", ")) } }
                        }
                    }
                }
            }
        }
    };
    layout(&ui, &s, &format!("Guest {name}"), "guests", Some(g.source()), body).into_response()
}

// ---- packages ----

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PackagesQ {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    unprotected: bool,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "empty_none")]
    after: Option<String>,
}

pub async fn packages(
    State(ui): U,
    headers: HeaderMap,
    q: Result<Query<PackagesQ>, axum::extract::rejection::QueryRejection>,
    RawQuery(raw): RawQuery,
) -> Response {
    let s = match signed_in(&ui, &headers, "/ui/packages") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(Query(q)) = q else { return bad_query(&ui, &s, "Packages", "packages") };
    let all = match ui.read::<Read<Vec<Package>>>(&s, &format!("/v1/packages?limit={ROWS}&{}", query(&q))).await {
        Ok(v) => v,
        Err(r) => return failed(&ui, &s, "Packages", "packages", r),
    };
    let unprotected =
        match ui.read::<Read<Vec<Package>>>(&s, &format!("/v1/packages?unprotected=true&limit={ROWS}")).await {
            Ok(v) => v.value,
            Err(r) => return failed(&ui, &s, "Packages", "packages", r),
        };
    let now = ui.node.clock().now();
    let body = html! {
        h1 { "Packages" }
        section aria-labelledby="unprotected-h" {
            h2 id="unprotected-h" { "Unprotected now" }
            @if unprotected.items.is_empty() {
                p class="ok-text" id="unprotected-none" { "Every package's switching is enabled: a host's loss fails its guests over." }
            } @else {
                p { "Switching is disabled for these packages: if their host fails now, the cluster does not start their guests elsewhere." }
                table id="unprotected" {
                    thead { tr { th scope="col" { "Package" } th scope="col" { "Guest" } th scope="col" { "Since" } th scope="col" { "For" } th scope="col" { "By" } th scope="col" { "Why" } th scope="col" { "Migration" } th scope="col" { "Actions" } } }
                    tbody {
                        @for p in &unprotected.items {
                            @let c = &p.switching_changed;
                            tr data-package=(p.name) {
                                th scope="row" { (p.name) }
                                td { a href={ "/ui/guests/" (urlencode(p.guest.as_str())) } { (p.guest) } }
                                td { (time(c.at)) }
                                td { (timefmt::duration(now.0.saturating_sub(c.at.0))) }
                                td { (c.actor) }
                                td { (c.reason.as_deref().unwrap_or("—")) }
                                td { @match c.migration { Some(m) => a href={ "/ui/migrations/" (m.0) } { (m.0) }, None => "—" } }
                                td class="actions" { (switching_actions(&ui, &s, p)) }
                            }
                        }
                    }
                }
                @if unprotected.next_after.is_some() { p { a href="/ui/packages?unprotected=true" { "More unprotected packages" } } }
            }
        }
        section aria-labelledby="all-h" {
            h2 id="all-h" { @if q.unprotected { "Unprotected packages" } @else { "All packages" } }
            table id="packages" {
                thead { tr { th scope="col" { "Package" } th scope="col" { "Guest" } th scope="col" { "Switching" } th scope="col" { "Nodes off" } th scope="col" { "Node list" } th scope="col" { "Policy" } th scope="col" { "Actions" } } }
                tbody {
                    @for p in &all.value.items {
                        tr {
                            th scope="row" { (p.name) }
                            td { (p.guest) }
                            td { @if p.switching_enabled { span class="badge ok" { "enabled" } } @else { span class="badge warn" { "disabled" } } }
                            td { @if p.disabled_nodes.is_empty() { "—" } @for n in &p.disabled_nodes { (n) " " } }
                            td { @if p.nodes.is_empty() { span class="muted" { "every host" } } @else { (p.nodes.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")) } }
                            td { (format!("{:?} / {:?}", p.failover_policy, p.failback_policy)) }
                            td class="actions" { (switching_actions(&ui, &s, p)) }
                        }
                    }
                }
            }
            (next_link("/ui/packages", raw.as_deref(), all.value.next_after.as_deref()))
        }
    };
    layout(&ui, &s, "Packages", "packages", Some(all.source()), body).into_response()
}

fn switching_actions(ui: &Ui, s: &Session, p: &Package) -> Markup {
    let n = urlencode(p.name.as_str());
    let api = format!("/v1/packages/{n}/switching");
    html! {
        @if p.switching_enabled {
            (action(ui, s, Method::POST, &api, format!("/ui/act/switching?package={n}&enabled=false"), "Disable switching"))
        } @else {
            (action(ui, s, Method::POST, &api, format!("/ui/act/switching?package={n}&enabled=true"), "Enable switching"))
        }
        @for node in &p.disabled_nodes {
            (action(ui, s, Method::POST, &api, format!("/ui/act/switching?package={n}&enabled=true&node={}", urlencode(node.as_str())), &format!("Enable on {node}")))
        }
    }
}

// ---- migrations ----

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MigrationsQ {
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "empty_none")]
    guest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "empty_none")]
    host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "empty_none")]
    phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "empty_none")]
    after: Option<String>,
}

pub async fn migrations(
    State(ui): U,
    headers: HeaderMap,
    q: Result<Query<MigrationsQ>, axum::extract::rejection::QueryRejection>,
    RawQuery(raw): RawQuery,
) -> Response {
    let s = match signed_in(&ui, &headers, "/ui/migrations") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(Query(q)) = q else { return bad_query(&ui, &s, "Migrations", "migrations") };
    let page = match ui.read::<Read<MigrationPage>>(&s, &format!("/v1/migrations?limit={ROWS}&{}", query(&q))).await {
        Ok(v) => v,
        Err(r) => return failed(&ui, &s, "Migrations", "migrations", r),
    };
    let ms = &page.value.items.migrations;
    let next = page.value.items.next_after.map(|n| n.0.to_string());
    let body = html! {
        h1 { "Migrations" }
        form method="get" action="/ui/migrations" class="filters" {
            label for="guest" { "Guest" } input id="guest" name="guest" value=[q.guest.as_deref()];
            label for="host" { "Host" } input id="host" name="host" value=[q.host.as_deref()];
            label for="phase" { "Phase" }
            select id="phase" name="phase" {
                option value="" { "any" }
                @for p in ["in_flight", "completed", "failed", "aborted"] { option value=(p) selected[q.phase.as_deref() == Some(p)] { (p.replace('_', " ")) } }
            }
            button type="submit" { "Filter" }
        }
        @if !ms.is_empty() {
            figure {
                (duration_plot(ms))
                figcaption { "Duration (dots) and freeze time (crosses) of the migrations on this page, by when they were requested." }
            }
        }
        (migration_table(ms))
        (next_link("/ui/migrations", raw.as_deref(), next.as_deref()))
    };
    layout(&ui, &s, "Migrations", "migrations", Some(page.source()), body).into_response()
}

fn migration_table(ms: &[Migration]) -> Markup {
    html! {
        @if ms.is_empty() { p { "No migrations." } } @else {
            table id="migrations" {
                thead { tr { th scope="col" { "Id" } th scope="col" { "Guest" } th scope="col" { "From → to" } th scope="col" { "Kind" } th scope="col" { "Phase" } th scope="col" { "Requested" } th scope="col" { "Took" } th scope="col" { "Freeze" } th scope="col" { "By" } } }
                tbody {
                    @for m in ms {
                        tr data-migration=(m.id.0) {
                            th scope="row" { a href={ "/ui/migrations/" (m.id.0) } { (m.id.0) } }
                            td { (m.guest) }
                            td { (m.source) " → " (m.target) }
                            td { (format!("{:?}", m.kind).to_lowercase()) }
                            td { (phase_badge(m.phase)) @if let Some(e) = &m.error { div class="muted" { (e) } } }
                            td { (time(m.history[0].at)) }
                            td { (took(m)) }
                            td { (opt(m.freeze_time_ms.map(|f| format!("{f} ms")))) }
                            td { (m.requested_by) }
                        }
                    }
                }
            }
        }
    }
}

fn took(m: &Migration) -> String {
    let (first, last) = (m.history[0].at.0, m.current().at.0);
    if m.phase.is_terminal() {
        timefmt::duration(last.saturating_sub(first))
    } else {
        "under way".into()
    }
}

/// Durations and freeze times of `ms` against the time each was requested, as an SVG scatter.
fn duration_plot(ms: &[Migration]) -> Markup {
    let points: Vec<(u64, u64, Option<u64>)> = ms
        .iter()
        .filter(|m| m.phase.is_terminal())
        .map(|m| (m.history[0].at.0, m.current().at.0.saturating_sub(m.history[0].at.0), m.freeze_time_ms))
        .collect();
    let (w, h, pad) = (640.0, 160.0, 36.0);
    if points.is_empty() {
        return html! { p class="muted" { "No finished migration on this page to plot yet." } };
    }
    let t0 = points.iter().map(|p| p.0).min().unwrap_or(0);
    let t1 = points.iter().map(|p| p.0).max().unwrap_or(0).max(t0 + 1);
    let ymax = points.iter().map(|p| p.1.max(p.2.unwrap_or(0))).max().unwrap_or(1).max(1);
    let x = |t: u64| pad + (t - t0) as f64 / (t1 - t0) as f64 * (w - 2.0 * pad);
    let y = |v: u64| h - pad + 12.0 - v as f64 / ymax as f64 * (h - pad - 12.0);
    html! {
        svg class="plot" viewBox={ "0 0 " (w) " " (h) } role="img" aria-label={ "migration durations, up to " (ymax) " ms" } {
            line x1=(pad) y1=(h - pad + 12.0) x2=(w - pad) y2=(h - pad + 12.0) class="axis" {}
            line x1=(pad) y1="12" x2=(pad) y2=(h - pad + 12.0) class="axis" {}
            text x="2" y="16" class="tick" { (ymax) " ms" }
            text x="2" y=(h - pad + 12.0) class="tick" { "0" }
            @for (t, d, f) in &points {
                circle cx=(format!("{:.1}", x(*t))) cy=(format!("{:.1}", y(*d))) r="3" class="dot" { title { (d) " ms" } }
                @if let Some(f) = f {
                    text x=(format!("{:.1}", x(*t) - 3.0)) y=(format!("{:.1}", y(*f) + 3.0)) class="cross" { "×" }
                }
            }
        }
    }
}

pub async fn migration(State(ui): U, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let s = match signed_in(&ui, &headers, &format!("/ui/migrations/{}", urlencode(&id))) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(id) = id.parse::<u64>() else { return bad_query(&ui, &s, "Migration", "migrations") };
    let d = match ui.read::<Read<MigrationDetail>>(&s, &format!("/v1/migrations/{id}")).await {
        Ok(v) => v,
        Err(r) => return failed(&ui, &s, &format!("Migration {id}"), "migrations", r),
    };
    let m = &d.value.items.migration;
    let start = m.history[0].at.0;
    let body = html! {
        h1 { "Migration " (id) }
        p class="lead" { "Guest " a href={ "/ui/guests/" (urlencode(m.guest.as_str())) } { (m.guest) } " from " (m.source) " to " (m.target) ", " (format!("{:?}", m.kind).to_lowercase()) ", requested by " (m.requested_by) @if let Some(r) = &m.reason { ": " (r) } }
        p { "Now: " (phase_badge(m.phase)) @if let Some(e) = &m.error { " " span class="refusal" { (e) } } }
        ol class="timeline" id="timeline" aria-label="Phases" {
            @for (i, r) in m.history.iter().enumerate() {
                @let next = m.history.get(i + 1).map(|n| n.at.0);
                li data-phase=(format!("{:?}", r.phase)) class=[(i + 1 == m.history.len()).then_some("current")] {
                    (phase_badge(r.phase))
                    span { " at " (time(r.at)) " (+" (r.at.0.saturating_sub(start)) " ms), revision " (r.revision) ", term " (r.term) }
                    @if let Some(n) = next { span class="muted" { " — lasted " (n.saturating_sub(r.at.0)) " ms" } }
                }
            }
        }
        dl class="facts" {
            dt { "Freeze time" } dd { (opt(m.freeze_time_ms.map(|f| format!("{f} ms")))) }
            @if let Some(t) = &d.value.items.transfer {
                dt { "Transfer" } dd { (switchyard_protocol::text::bytes(t.transferred_bytes)) " in " (t.total_time_ms) " ms" }
            }
            @if let Some(p) = &m.package { dt { "Package" } dd { (p) " (switching " @if m.switching_before == Some(false) { "was already disabled" } @else { "disabled during the move" } ")" } }
            @if let Some(r) = &d.value.items.resolution { dt { "Resolved" } dd { (format!("{:?}", r.outcome).to_lowercase()) " by " (r.by) " at " (time(r.at)) ": " (r.reason) } }
        }
        div class="actions" {
            @if !m.phase.is_terminal() {
                (action(&ui, &s, Method::POST, &format!("/v1/migrations/{id}/abort"), format!("/ui/act/abort?id={id}"), "Abort"))
            }
        }
    };
    layout(&ui, &s, &format!("Migration {id}"), "migrations", Some(d.source()), body).into_response()
}

// ---- failovers ----

pub async fn failovers(State(ui): U, headers: HeaderMap) -> Response {
    let s = match signed_in(&ui, &headers, "/ui/failovers") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let ha = match ui.read::<Read<HaStatus>>(&s, "/v1/ha").await {
        Ok(v) => v,
        Err(r) => return failed(&ui, &s, "Failovers", "failovers", r),
    };
    let q = EventsQ { kind: Some("ha".into()), ..Default::default() };
    let (events, _) = match tail(&ui, &s, &q).await {
        Ok(v) => v,
        Err(r) => return failed(&ui, &s, "Failovers", "failovers", r),
    };
    let st = &ha.value.items;
    let body = html! {
        h1 { "Failovers" }
        section aria-labelledby="failed-h" {
            h2 id="failed-h" { "Failed hosts" }
            @if st.failed_hosts.is_empty() { p class="ok-text" { "No host is failed." } } @else {
                table id="failed-hosts" {
                    thead { tr { th scope="col" { "Host" } th scope="col" { "Since" } th scope="col" { "Evidence" } } }
                    tbody { @for f in &st.failed_hosts { tr { th scope="row" { (f.host) } td { (time(f.failure.at)) } td { (f.failure.evidence) } } } }
                }
            }
        }
        section aria-labelledby="running-h" {
            h2 id="running-h" { "Failovers under way" }
            @if st.failovers.is_empty() { p { "None." } } @else {
                table id="failovers" {
                    thead { tr { th scope="col" { "Guest" } th scope="col" { "Package" } th scope="col" { "From" } th scope="col" { "Starting on" } th scope="col" { "Since" } th scope="col" { "Tried before" } } }
                    tbody {
                        @for f in &st.failovers {
                            tr {
                                th scope="row" { a href={ "/ui/guests/" (urlencode(f.guest.as_str())) } { (f.guest) } }
                                td { (f.package) } td { (f.failed_host) } td { (f.target) @if let Some(e) = &f.attempt_failed { " " span class="badge bad" { "attempt failed: " (e) } } }
                                td { (time(f.started_at)) }
                                td { @if f.tried.is_empty() { "—" } @for (h, why) in &f.tried { div { (h) ": " (why) } } }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="down-h" {
            h2 id="down-h" { "Guests of failed hosts left down" }
            @if st.down.is_empty() { p { "None." } } @else {
                table id="down" {
                    thead { tr { th scope="col" { "Guest" } th scope="col" { "Host" } th scope="col" { "Why it is not failed over" } } }
                    tbody { @for d in &st.down { tr { th scope="row" { (d.guest) } td { (d.host) } td { (d.why) } } } }
                }
            }
        }
        section aria-labelledby="ha-events-h" {
            h2 id="ha-events-h" { "Recent host-loss and failover events" }
            @if events.is_empty() { p { "None in the last " (TAIL_WINDOW) " revisions." } } @else {
                table {
                    thead { tr { th scope="col" { "Revision" } th scope="col" { "Time" } th scope="col" { "Event" } } }
                    tbody { @for e in events.iter().rev().take(ROWS) { tr { th scope="row" { (e.revision) } td { (time(e.time)) } td { (switchyard_protocol::text::describe(&e.payload)) } } } }
                }
            }
        }
    };
    layout(&ui, &s, "Failovers", "failovers", Some(ha.source()), body).into_response()
}

// ---- events ----

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EventsQ {
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "empty_none")]
    kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "empty_none")]
    guest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "empty_none")]
    host: Option<String>,
}

pub async fn events(
    State(ui): U,
    headers: HeaderMap,
    q: Result<Query<EventsQ>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let s = match signed_in(&ui, &headers, "/ui/events") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(Query(q)) = q else { return bad_query(&ui, &s, "Events", "events") };
    let (events, rev) = match tail(&ui, &s, &q).await {
        Ok(v) => v,
        Err(r) => return failed(&ui, &s, "Events", "events", r),
    };
    let shown: Vec<&Event> = events.iter().rev().take(ROWS).collect();
    let body = html! {
        h1 { "Events" }
        form method="get" action="/ui/events" class="filters" {
            label for="kind" { "Kind" }
            select id="kind" name="kind" {
                option value="" { "any" }
                @for k in ["cluster", "host", "guest", "package", "migration", "ha"] { option value=(k) selected[q.kind.as_deref() == Some(k)] { (k) } }
            }
            label for="guest" { "Guest" } input id="guest" name="guest" value=[q.guest.as_deref()];
            label for="host" { "Host" } input id="host" name="host" value=[q.host.as_deref()];
            button type="submit" { "Filter" }
        }
        figure {
            (rate_plot(&events))
            figcaption { "Events per second over the last " (events.len()) " matching events (of the last " (TAIL_WINDOW) " revisions)." }
        }
        table id="events" {
            caption { "Newest first: the last " (shown.len()) " matching events." }
            thead { tr { th scope="col" { "Revision" } th scope="col" { "Time" } th scope="col" { "Actor" } th scope="col" { "Event" } } }
            tbody {
                @for e in shown {
                    tr { th scope="row" { (e.revision) } td { (time(e.time)) } td { (e.actor) } td { (switchyard_protocol::text::describe(&e.payload)) } }
                }
            }
        }
    };
    layout(&ui, &s, "Events", "events", Some(Source { revision: rev, stale: false }), body).into_response()
}

/// The matching events of the last [`TAIL_WINDOW`] revisions this coordinator applied and still
/// holds (its history may start later: retention, or a snapshot install whose older history is
/// still being fetched), oldest first, read through the API's event stream (without following).
async fn tail(ui: &Ui, s: &Session, q: &EventsQ) -> Result<(Vec<Event>, Revision), Refusal> {
    let rev = ui.node.sm.applied_meta().revision;
    let held = ui.node.sm.history_first().unwrap_or(1);
    let from = rev.saturating_sub(TAIL_WINDOW).max(held).max(1);
    let path = format!("/v1/events?from={from}&{}", query(q));
    let (status, bytes) = ui.call(s, Method::GET, &path, None).await;
    if !status.is_success() {
        return Err(Refusal::from_answer(status, &bytes));
    }
    let mut out = Vec::new();
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<StreamItem>(line) {
            Ok(StreamItem::Event(e)) => out.push(*e),
            Ok(StreamItem::Compacted { .. }) => {}
            Ok(StreamItem::Progress { .. }) => {}
            Err(e) => return Err(Refusal::unexpected(e.to_string())),
        }
    }
    Ok((out, rev))
}

/// Events per second (by the proposer's clock) as SVG bars, the last 60 seconds that had any.
fn rate_plot(events: &[Event]) -> Markup {
    let mut per: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
    for e in events {
        *per.entry(e.time.0 / 1000).or_default() += 1;
    }
    let Some((&last, _)) = per.iter().next_back() else {
        return html! { p class="muted" { "No events to plot." } };
    };
    let first = last.saturating_sub(59);
    let max = per.range(first..).map(|(_, n)| *n).max().unwrap_or(1).max(1);
    let (w, h) = (640.0, 120.0);
    let bw = w / 60.0;
    html! {
        svg class="plot" viewBox={ "0 0 " (w) " " (h) } role="img" aria-label={ "events per second, at most " (max) } {
            text x="2" y="12" class="tick" { (max) "/s" }
            @for (sec, n) in per.range(first..) {
                @let bh = *n as f64 / max as f64 * (h - 20.0);
                rect x=(format!("{:.1}", (sec - first) as f64 * bw)) y=(format!("{:.1}", h - bh)) width=(format!("{:.1}", bw - 1.0)) height=(format!("{:.1}", bh)) class="barplot" { title { (n) " events at " (time(Timestamp(sec * 1000))) } }
            }
        }
    }
}
