//! The console's actions: migrate, abort, drain, undrain, maintenance, switching, run state.
//!
//! Each is two requests. `GET /ui/act/{action}?…` shows a confirmation that says what will
//! happen (read from this coordinator's state: which host the guest leaves, which package is
//! left unprotected while the move runs) with a form carrying the session's CSRF token;
//! `POST /ui/act/{action}` checks the token and the origin, then makes the one API call the
//! action is. A refusal shows the API's message (which says what to do) on the same form.
//! Whether the role may act is the API's decision; the pages only hide what it would refuse.

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde_json::json;
use switchyard_protocol::api::WriteResponse;
use switchyard_protocol::placement::{choose_target, Planned};
use switchyard_protocol::Name;

use super::pages::{layout, refusal};
use super::session::Session;
use super::{field, form_of, signed_in, urlencode, Refusal, Ui, U};

/// One action, ready to confirm or perform.
struct Plan {
    title: String,
    /// What happens, for the confirmation.
    consequence: Markup,
    /// The inputs the operator fills in (besides the parameters that name the action's object).
    inputs: Markup,
    method: Method,
    path: String,
    body: serde_json::Value,
    /// Where the browser goes once it is done (given the write's answer).
    done: Box<dyn Fn(&WriteResponse) -> String + Send>,
    /// Where "Cancel" leads.
    back: String,
}

fn bad(message: impl Into<String>) -> Refusal {
    Refusal::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn name_of(form: &[(String, String)], key: &str) -> Result<Name, Refusal> {
    let v = field(form, key).ok_or_else(|| bad(format!("the form names no {key}")))?;
    Name::new(v).map_err(|e| bad(format!("invalid {key} {v:?}: {e}")))
}

fn flag(form: &[(String, String)], key: &str) -> bool {
    matches!(field(form, key), Some("true" | "on" | "1"))
}

fn reason(form: &[(String, String)]) -> Option<String> {
    field(form, "reason").map(|r| r.trim().to_string()).filter(|r| !r.is_empty())
}

fn reason_input(required: bool) -> Markup {
    html! {
        label for="reason" { "Reason" @if !required { " (optional)" } }
        input id="reason" name="reason" maxlength="500" required[required];
    }
}

/// The action `action` with the parameters `form`.
fn plan(ui: &Ui, action: &str, form: &[(String, String)]) -> Result<Plan, Refusal> {
    match action {
        "migrate" => {
            let guest = name_of(form, "guest")?;
            let (owner, package, choice, hosts, online) = ui.node.sm.read(|st| {
                let g = st.guest(&guest).ok_or_else(|| bad(format!("there is no guest {guest}")))?;
                let choice = choose_target(st, g, &Planned::default());
                let hosts: Vec<Name> = st.hosts().map(|h| h.spec.name.clone()).filter(|h| *h != g.owner).collect();
                Ok::<_, Refusal>((
                    g.owner.clone(),
                    g.spec.package.clone(),
                    choice,
                    hosts,
                    g.spec.online_migration && !g.spec.cluster_node,
                ))
            })?;
            let suggested = choice.as_ref().ok().cloned();
            let target =
                field(form, "target").map(str::to_string).or_else(|| suggested.as_ref().map(|n| n.to_string()));
            let offline = flag(form, "offline");
            let consequence = html! {
                p { "Guest " strong { (guest) } " leaves " strong { (owner) } " for the host you choose, "
                    @if offline { "while it is down (offline): a running guest is stopped on " (owner) " and started on the target." }
                    @else { "while it runs (online): it keeps running, frozen for a moment at the switch-over." } }
                @if let Some(p) = &package { p class="warn" { "Package " (p) "'s switching is disabled while it moves: if " (owner) " or the target fails meanwhile, the cluster does not fail it over. It is re-enabled when the migration ends." } }
                @if !online { p class="warn" { "This guest cannot move online (online migration disabled, or a cluster node): choose offline." } }
                @match &choice {
                    Ok(t) => p class="muted" { "Suggested: " (t) " (the least loaded host the placement rules allow)." },
                    Err(refused) => {
                        p class="refusal" { "No host may take it now:" }
                        ul { @for (h, why) in refused { li { (h) ": " (why) } } }
                    }
                }
            };
            let inputs = html! {
                label for="target" { "Target host" }
                select id="target" name="target" required {
                    @for h in &hosts { option value=(h) selected[target.as_deref() == Some(h.as_str())] { (h) @if suggested.as_ref() == Some(h) { " (suggested)" } } }
                }
                label class="check" { input type="checkbox" name="offline" value="true" checked[offline || !online]; " Move it offline (stopping it if it runs)" }
                (reason_input(false))
            };
            let body = json!({ "guest": guest, "target": target, "offline": offline, "allow_stop": offline, "reason": reason(form) });
            Ok(Plan {
                title: format!("Migrate {guest}"),
                consequence,
                inputs,
                method: Method::POST,
                path: "/v1/migrations".into(),
                body,
                done: Box::new(|w| format!("/ui/migrations/{}", w.first_revision)),
                back: format!("/ui/guests/{}", urlencode(guest.as_str())),
            })
        }
        "abort" => {
            let id: u64 =
                field(form, "id").and_then(|v| v.parse().ok()).ok_or_else(|| bad("the form names no migration id"))?;
            let m = ui.node.sm.read(|st| st.migration(switchyard_protocol::MigrationId(id)).cloned());
            let m = m.ok_or_else(|| bad(format!("there is no migration {id}")))?;
            let consequence = html! {
                p { "Migration " (id) " of " strong { (m.guest) } " (" (m.source) " → " (m.target) ") stops and rolls back: the guest stays on, or returns to, " strong { (m.source) } "." }
                p class="muted" { "A migration past its owner switch cannot be aborted: the API says so, and it is resolved instead." }
            };
            Ok(Plan {
                title: format!("Abort migration {id}"),
                consequence,
                inputs: reason_input(false),
                method: Method::POST,
                path: format!("/v1/migrations/{id}/abort"),
                body: json!({ "reason": reason(form) }),
                done: Box::new(move |_| format!("/ui/migrations/{id}")),
                back: format!("/ui/migrations/{id}"),
            })
        }
        "drain" | "undrain" | "maintenance" => {
            let host = name_of(form, "host")?;
            let (owned, exists) = ui.node.sm.read(|st| (st.guests_on(&host).count(), st.host(&host).is_some()));
            if !exists {
                return Err(bad(format!("there is no host {host}")));
            }
            let h = urlencode(host.as_str());
            let back = format!("/ui/hosts/{h}");
            let (title, consequence, inputs, verb, body) = match action {
                "drain" => {
                    let allow_offline = flag(form, "allow_offline");
                    let max_parallel = field(form, "max_parallel").and_then(|v| v.parse::<u32>().ok());
                    (
                        format!("Drain {host}"),
                        html! { p { "The cluster moves the " (owned) " guests of " strong { (host) } " to hosts its placement rules allow, a few at a time, then puts " (host) " in maintenance. Guests that cannot move online stay unless offline moves are allowed; the drain then stops before them and says why." } },
                        html! {
                            label class="check" { input type="checkbox" name="allow_offline" value="true" checked[allow_offline]; " Allow offline moves (stops guests that cannot move online)" }
                            label for="max_parallel" { "Moves at once (empty: the cluster's default)" }
                            input id="max_parallel" name="max_parallel" type="number" min="1" max="64" value=[max_parallel];
                        },
                        "drain",
                        json!({ "allow_offline": allow_offline, "max_parallel": max_parallel }),
                    )
                }
                "undrain" => (
                    format!("Undrain {host}"),
                    html! { p { "The drain of " strong { (host) } " ends: no new moves start; moves under way finish or roll back, so every guest is where it was or fully moved. " (host) " stays active." } },
                    reason_input(false),
                    "undrain",
                    json!({ "reason": reason(form) }),
                ),
                _ => {
                    let on = flag(form, "on");
                    (
                        if on { format!("Maintenance for {host}") } else { format!("End maintenance of {host}") },
                        if on {
                            html! { p { strong { (host) } " takes no new guests and is no migration target. It must own no guests (it owns " (owned) "): drain it first otherwise." } }
                        } else {
                            html! { p { strong { (host) } " takes guests again: placements, migrations and failovers may choose it." } }
                        },
                        html! { input type="hidden" name="on" value=(on); },
                        "maintenance",
                        json!({ "maintenance": on }),
                    )
                }
            };
            Ok(Plan {
                title,
                consequence,
                inputs,
                method: Method::POST,
                path: format!("/v1/hosts/{h}/{verb}"),
                body,
                done: Box::new(move |_| format!("/ui/hosts/{h}")),
                back,
            })
        }
        "switching" => {
            let package = name_of(form, "package")?;
            let enabled = flag(form, "enabled");
            let node = field(form, "node")
                .map(|n| Name::new(n).map_err(|e| bad(format!("invalid node {n:?}: {e}"))))
                .transpose()?;
            let guest = ui.node.sm.read(|st| st.package(&package).map(|p| p.guest.clone()));
            let guest = guest.ok_or_else(|| bad(format!("there is no package {package}")))?;
            let consequence = match (&node, enabled) {
                (None, false) => {
                    html! { p class="warn" { "Package " strong { (package) } " becomes unprotected: if the host of " (guest) " fails, the cluster does not start it elsewhere until switching is enabled again. The console lists it as unprotected, with your name and reason." } }
                }
                (None, true) => {
                    html! { p { "Package " strong { (package) } " is protected again: the loss of its host fails " (guest) " over." } }
                }
                (Some(n), false) => html! { p { "Package " strong { (package) } " no longer fails over to " (n) "." } },
                (Some(n), true) => html! { p { "Package " strong { (package) } " may fail over to " (n) " again." } },
            };
            let mut hidden = html! { input type="hidden" name="enabled" value=(enabled); };
            if let Some(n) = &node {
                hidden = html! { (hidden) input type="hidden" name="node" value=(n); };
            }
            Ok(Plan {
                title: format!(
                    "{} switching of {package}{}",
                    if enabled { "Enable" } else { "Disable" },
                    node.as_ref().map(|n| format!(" on {n}")).unwrap_or_default()
                ),
                consequence,
                inputs: html! { (hidden) (reason_input(!enabled && node.is_none())) },
                method: Method::POST,
                path: format!("/v1/packages/{}/switching", urlencode(package.as_str())),
                body: json!({ "enabled": enabled, "node": node, "reason": reason(form) }),
                done: Box::new(|_| "/ui/packages".into()),
                back: "/ui/packages".into(),
            })
        }
        "run" => {
            let guest = name_of(form, "guest")?;
            let running = match field(form, "state") {
                Some("running") => true,
                Some("stopped") => false,
                _ => return Err(bad("state must be running or stopped")),
            };
            let owner = ui.node.sm.read(|st| st.guest(&guest).map(|g| g.owner.clone()));
            let owner = owner.ok_or_else(|| bad(format!("there is no guest {guest}")))?;
            let g = urlencode(guest.as_str());
            Ok(Plan {
                title: format!("{} {guest}", if running { "Start" } else { "Stop" }),
                consequence: html! { p { "The log says " strong { (guest) } " is " @if running { "running" } @else { "stopped" } "; the agent of " (owner) " " @if running { "starts it." } @else { "shuts it down (gracefully, then forcibly after its timeout)." } } },
                inputs: html! { input type="hidden" name="state" value=(if running { "running" } else { "stopped" }); },
                method: Method::PATCH,
                path: format!("/v1/guests/{g}"),
                body: json!({ "run_state": if running { "running" } else { "stopped" } }),
                done: Box::new(move |_| format!("/ui/guests/{g}")),
                back: format!("/ui/guests/{}", urlencode(guest.as_str())),
            })
        }
        other => Err(Refusal::new(StatusCode::NOT_FOUND, "not_found", format!("the console has no action {other:?}"))),
    }
}

/// The parameters that name an action's object, carried from the confirmation to the `POST`.
const KEYS: [&str; 6] = ["guest", "id", "host", "package", "node", "on"];

fn confirmation(
    ui: &Ui,
    s: &Session,
    action: &str,
    form: &[(String, String)],
    p: &Plan,
    error: Option<&Refusal>,
) -> Markup {
    let allowed = ui.may(s, &p.method, &p.path);
    let body = html! {
        h1 { (p.title) }
        @if let Some(r) = error { (refusal(r)) }
        (p.consequence)
        @if allowed {
            form method="post" action={ "/ui/act/" (action) } class="confirm" {
                input type="hidden" name="csrf" value=(s.csrf);
                @for k in KEYS {
                    @if k != "on" || action != "maintenance" {
                        @if let Some(v) = field(form, k) { input type="hidden" name=(k) value=(v); }
                    }
                }
                (p.inputs)
                div class="buttons" {
                    button type="submit" class="primary" { "Confirm: " (p.title) }
                    a href=(p.back) { "Cancel" }
                }
            }
        } @else {
            p class="refusal" role="alert" { "Your role may not do this: the API refuses it for " (s.actor) "." }
        }
    };
    layout(ui, s, &p.title, "", None, body)
}

pub async fn confirm(
    State(ui): U,
    headers: HeaderMap,
    Path(action): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let s = match signed_in(&ui, &headers, &format!("/ui/act/{}", urlencode(&action))) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match plan(&ui, &action, &q) {
        Ok(p) => {
            let status = if ui.may(&s, &p.method, &p.path) { StatusCode::OK } else { StatusCode::FORBIDDEN };
            (status, confirmation(&ui, &s, &action, &q, &p, None)).into_response()
        }
        Err(r) => (r.status, layout(&ui, &s, "Refused", "", None, refusal(&r))).into_response(),
    }
}

pub async fn perform(State(ui): U, Path(action): Path<String>, req: Request) -> Response {
    let Some(s) = ui.session(req.headers()) else {
        return (StatusCode::UNAUTHORIZED, "sign in first: /ui/login").into_response();
    };
    let form = match form_of(req, Some(&s)).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let p = match plan(&ui, &action, &form) {
        Ok(p) => p,
        Err(r) => return (r.status, layout(&ui, &s, "Refused", "", None, refusal(&r))).into_response(),
    };
    let body = serde_json::to_vec(&p.body).expect("JSON values serialise");
    let (status, bytes) = ui.call(&s, p.method.clone(), &p.path, Some(body)).await;
    if status.is_success() {
        if let Ok(w) = serde_json::from_slice::<WriteResponse>(&bytes) {
            tracing::info!(actor = %s.actor, action, path = %p.path, revision = w.last_revision, "console action committed");
            return Redirect::to(&(p.done)(&w)).into_response();
        }
    }
    let r = Refusal::from_answer(status, &bytes);
    let status = if status.is_success() { StatusCode::BAD_GATEWAY } else { status };
    (status, confirmation(&ui, &s, &action, &form, &p, Some(&r))).into_response()
}
