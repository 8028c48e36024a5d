//! The operator console at `/ui/`: server-rendered HTML pages over the API, served by every
//! coordinator, with its stylesheet and script embedded in the binary (nothing to install).
//!
//! Why it is built on the API rather than next to it: every read and every action of the
//! console is an in-process call of the API's own router with the signed-in session's
//! credential — its token, or its client certificate's identity ([`Ui::call`]), so the role checks, the consistency rules (linearizable reads; a follower
//! forwards to the leader), the refusals and their messages are exactly the API's. When no
//! leader answers, a page is read from this coordinator's own copy (`stale=true`) and says so.
//!
//! Pages work without JavaScript. `console.js` adds live updates: it follows `/ui/live` (Server-
//! Sent Events carrying the revisions this coordinator applies) and re-reads the page's main
//! part when the log moves, so a migration's phases advance on screen without a reload.
//!
//! Sign-in, sessions and CSRF are in [`session`]; the pages in `pages`; the actions, each
//! with a confirmation that states its consequence, in `actions`.

mod actions;
mod pages;
pub mod session;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use switchyard_protocol::api::ErrorBody;
use tower::ServiceExt;

use switchyard_tls::Identity;

use crate::api::{Caller, Credentials};
use crate::config::Role;
use crate::listener::Peer;
use crate::node::Node;
use session::{Credential, Session, Sessions};

/// Live-update streams open at once on this coordinator; more are refused (the page then
/// works as a plain page, without live updates).
const LIVE_STREAMS_MAX: usize = 1024;
/// Largest form a console page sends.
const FORM_BYTES_MAX: usize = 16 * 1024;

/// The console's state.
pub struct Ui {
    node: Arc<Node>,
    /// The API, called in-process.
    api: Router,
    credentials: Credentials,
    sessions: Sessions,
    /// Served over TLS: cookies are `Secure`.
    secure: bool,
    live: AtomicUsize,
}

type U = State<Arc<Ui>>;

/// The console's routes, next to `api` (the API's router, which the console calls).
pub fn router(node: Arc<Node>, api: Router, credentials: Credentials, secure: bool) -> Router {
    let c = &node.config.api;
    let sessions = Sessions::new(
        Duration::from_millis(c.console_session_idle_ms),
        Duration::from_millis(c.console_session_max_ms),
        c.console_sessions_max,
    );
    let ui = Arc::new(Ui { node, api, credentials, sessions, secure, live: AtomicUsize::new(0) });
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/cluster") }))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/live", get(live))
        .route("/ui/assets/console.css", get(|| async { asset("text/css", include_str!("assets/console.css")) }))
        .route("/ui/assets/console.js", get(|| async { asset("text/javascript", include_str!("assets/console.js")) }))
        .route("/ui/cluster", get(pages::cluster))
        .route("/ui/hosts", get(pages::hosts))
        .route("/ui/hosts/{name}", get(pages::host))
        .route("/ui/guests", get(pages::guests))
        .route("/ui/guests/{name}", get(pages::guest))
        .route("/ui/packages", get(pages::packages))
        .route("/ui/migrations", get(pages::migrations))
        .route("/ui/migrations/{id}", get(pages::migration))
        .route("/ui/failovers", get(pages::failovers))
        .route("/ui/events", get(pages::events))
        .route("/ui/act/{action}", get(actions::confirm).post(actions::perform))
        .route("/ui/{*rest}", get(not_found))
        .layer(from_fn_with_state(ui.clone(), certificate_binding))
        .with_state(ui)
}

/// What a page was read from.
pub struct Fetched<T> {
    pub value: T,
    /// Read from this coordinator's own copy because no leader answered.
    pub stale: bool,
}

/// An API answer the console could not use: the API's error (code and message), or why the
/// call failed.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl Refusal {
    /// A refusal of the console's own, with a stable code like the API's.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Refusal {
        Refusal { status, body: ErrorBody { code: code.into(), message: message.into(), leader: None } }
    }

    /// An API answer the console could not read.
    pub fn unexpected(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::BAD_GATEWAY, "unexpected_answer", message)
    }

    pub fn from_answer(status: StatusCode, bytes: &[u8]) -> Refusal {
        let body = serde_json::from_slice::<ErrorBody>(bytes).unwrap_or_else(|_| ErrorBody {
            code: "unexpected_answer".into(),
            message: format!("the API answered {status} with {}", String::from_utf8_lossy(bytes)),
            leader: None,
        });
        Refusal { status, body }
    }
}

impl Ui {
    /// Calls the API in-process as the session's caller: with its token, or as a connection
    /// presenting its certificate.
    pub async fn call(&self, s: &Session, method: Method, path: &str, body: Option<Vec<u8>>) -> (StatusCode, Bytes) {
        let mut req = Request::builder().method(method).uri(path);
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        match &s.credential {
            Credential::Token(t) => req = req.header(header::AUTHORIZATION, format!("Bearer {t}")),
            Credential::Certificate(i) => {
                let peer = Peer { addr: self.node.config.api_listen, identity: Some(i.clone()), tls: self.secure };
                req = req.extension(ConnectInfo(peer));
            }
        }
        let req = req.body(body.map_or_else(Body::empty, Body::from)).expect("a request from checked parts");
        let resp = match self.api.clone().oneshot(req).await {
            Ok(r) => r,
            Err(e) => match e {},
        };
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap_or_default();
        (status, bytes)
    }

    /// A read through the API (linearizable; a follower forwards it to the leader), or — when
    /// no leader answers — from this coordinator's own copy, marked stale.
    pub async fn read<T: DeserializeOwned>(&self, s: &Session, path: &str) -> Result<Fetched<T>, Refusal> {
        let (status, bytes) = self.call(s, Method::GET, path, None).await;
        let parse = |bytes: &[u8], stale| {
            serde_json::from_slice::<T>(bytes)
                .map(|value| Fetched { value, stale })
                .map_err(|e| Refusal::unexpected(e.to_string()))
        };
        if status.is_success() {
            return parse(&bytes, false);
        }
        let refusal = Refusal::from_answer(status, &bytes);
        if !matches!(refusal.body.code.as_str(), "unavailable" | "not_leader") {
            return Err(refusal);
        }
        let sep = if path.contains('?') { '&' } else { '?' };
        let (status, bytes) = self.call(s, Method::GET, &format!("{path}{sep}stale=true"), None).await;
        if status.is_success() {
            parse(&bytes, true)
        } else {
            Err(Refusal::from_answer(status, &bytes))
        }
    }

    /// The signed-in session of a request, if any, with its credential's role now: a session
    /// whose token or certificate a reload no longer accepts ends here.
    fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let id = session::cookie_of(headers)?;
        let mut s = self.sessions.get(&id)?;
        match self.caller(&s.credential) {
            Some(caller) => {
                s.role = caller.role;
                s.actor = caller.actor;
                Some(s)
            }
            None => {
                tracing::info!(actor = %s.actor, "console session ended: its credential is no longer accepted");
                self.sessions.close(&id);
                None
            }
        }
    }

    /// Who a credential stands for, if it is accepted and may open the console.
    fn caller(&self, credential: &Credential) -> Option<Caller> {
        match credential {
            Credential::Token(t) => self.credentials.token(t),
            Credential::Certificate(i) => self.credentials.certificate(i),
        }
        .filter(|c| c.role != Role::Agent)
    }

    /// Whether the session's role may call the API route (what decides which buttons a page
    /// shows; the API refuses anyway).
    pub fn may(&self, s: &Session, method: &Method, path: &str) -> bool {
        crate::api::allowed(s.role, method, path)
    }
}

/// The client certificate the request's connection presented, if any.
fn presented(req: &Request) -> Option<Identity> {
    req.extensions().get::<ConnectInfo<Peer>>().and_then(|c| c.0.identity.clone())
}

/// A session opened with a client certificate is honoured only on a connection that presents
/// that certificate: on any other, the request goes on as one not signed in.
async fn certificate_binding(State(ui): U, mut req: Request, next: Next) -> Response {
    if let Some(id) = session::cookie_of(req.headers()) {
        if let Some(bound) = ui.sessions.get(&id).and_then(|s| s.credential.bound_to().cloned()) {
            if presented(&req).as_ref() != Some(&bound) {
                req.headers_mut().remove(header::COOKIE);
            }
        }
    }
    next.run(req).await
}

/// The session of a request, or the answer that sends the browser to sign in first.
#[allow(clippy::result_large_err)]
fn signed_in(ui: &Ui, headers: &HeaderMap, here: &str) -> Result<Session, Response> {
    ui.session(headers).ok_or_else(|| {
        let next = urlencode(here);
        Redirect::to(&format!("/ui/login?next={next}")).into_response()
    })
}

/// A form `POST`: same origin (the `Origin` header, or `Referer` when a browser sends no
/// Origin), a form body within the limit, and — for a signed-in session — its CSRF token.
async fn form_of(req: Request, session: Option<&Session>) -> Result<Vec<(String, String)>, Response> {
    if !same_origin(req.headers()) {
        return Err(refused(StatusCode::FORBIDDEN, "this form was sent from another site; reload the page and retry"));
    }
    let ctype = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ctype.starts_with("application/x-www-form-urlencoded") {
        return Err(refused(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the console's forms are sent as application/x-www-form-urlencoded",
        ));
    }
    let Ok(bytes) = axum::body::to_bytes(req.into_body(), FORM_BYTES_MAX).await else {
        return Err(refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("a console form is at most {FORM_BYTES_MAX} bytes"),
        ));
    };
    let Ok(form) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes) else {
        return Err(refused(StatusCode::BAD_REQUEST, "the form could not be read"));
    };
    if let Some(s) = session {
        let token = form.iter().find(|(k, _)| k == "csrf").map(|(_, v)| v.as_str()).unwrap_or("");
        if !session::csrf_matches(s, token) {
            return Err(refused(
                StatusCode::FORBIDDEN,
                "the form's CSRF token is missing or not this session's: reload the page and retry",
            ));
        }
    }
    Ok(form)
}

/// The `Origin` (or, without it, the `Referer`) names the host the request was sent to.
fn same_origin(h: &HeaderMap) -> bool {
    let Some(host) = h.get(header::HOST).and_then(|v| v.to_str().ok()) else { return false };
    let from = h
        .get(header::ORIGIN)
        .or_else(|| h.get(header::REFERER))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once("://").map(|(_, rest)| rest.split('/').next().unwrap_or("").to_string()));
    from.is_some_and(|f| f.eq_ignore_ascii_case(host))
}

/// A field of a form.
pub fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
}

fn refused(status: StatusCode, why: &str) -> Response {
    let page = html! {
        (maud::DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Refused — Switchyard" } link rel="stylesheet" href="/ui/assets/console.css"; }
            body { main id="main" { h1 { "Refused" } p class="refusal" role="alert" { (why) } p { a href="/ui/cluster" { "Back to the console" } } } }
        }
    };
    (status, page).into_response()
}

#[derive(Deserialize, Default)]
struct NextQ {
    next: Option<String>,
    error: Option<String>,
}

async fn login_page(State(ui): U, Query(q): Query<NextQ>, req: Request) -> Markup {
    let node = ui.node.id;
    let next = q.next.filter(|n| safe_next(n)).unwrap_or_else(|| "/ui/cluster".into());
    let certificate = presented(&req).filter(|i| matches!(i, Identity::Client(_)));
    let certificate_caller = certificate.as_ref().and_then(|i| ui.caller(&Credential::Certificate(i.clone())));
    html! {
        (maud::DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Sign in — Switchyard" }
                link rel="stylesheet" href="/ui/assets/console.css";
            }
            body {
                main id="main" class="login" {
                    h1 { "Switchyard console" }
                    @if let Some(e) = q.error { p class="refusal" role="alert" { (e) } }
                    @match (&certificate, &certificate_caller) {
                        (Some(i), Some(c)) => {
                            p { "Coordinator " (node) ". Your browser presents the certificate of " strong { (i) } ", accepted with role " (c.role.label()) "." }
                            form method="post" action="/ui/login" {
                                input type="hidden" name="next" value=(next);
                                input type="hidden" name="with" value="certificate";
                                button type="submit" { "Sign in as " (c.actor) }
                            }
                            p { "Or with an API token:" }
                        }
                        (Some(i), None) => {
                            p { "Coordinator " (node) ". Your browser presents the certificate of " strong { (i) } ", which this coordinator's "
                                code { "client_certificates" } " does not list. Sign in with an API token (admin, operations or read-only)." }
                        }
                        _ => {
                            p { "Coordinator " (node) ". Sign in with an API token (admin, operations or read-only)"
                                @if ui.secure { ", or with a client certificate listed in " code { "client_certificates" } }
                                "." }
                        }
                    }
                    form method="post" action="/ui/login" {
                        input type="hidden" name="next" value=(next);
                        label for="token" { "Token" }
                        input id="token" name="token" type="password" autocomplete="current-password" required autofocus[certificate_caller.is_none()];
                        button type="submit" { "Sign in" }
                    }
                }
            }
        }
    }
}

async fn login(State(ui): U, req: Request) -> Response {
    let certificate = presented(&req);
    let form = match form_of(req, None).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let next = field(&form, "next").filter(|n| safe_next(n)).unwrap_or("/ui/cluster").to_string();
    let again = |why: &str| {
        Redirect::to(&format!("/ui/login?next={}&error={}", urlencode(&next), urlencode(why))).into_response()
    };
    let credential = if field(&form, "with") == Some("certificate") {
        // The certificate of this very connection, never one the form names.
        let Some(identity) = certificate else {
            return again("this connection presents no client certificate: sign in with a token");
        };
        Credential::Certificate(identity)
    } else {
        let Some(token) = field(&form, "token") else { return again("enter a token") };
        Credential::Token(token.to_string())
    };
    let Some(caller) = ui.caller(&credential) else {
        return match &credential {
            Credential::Certificate(i) => {
                tracing::warn!(certificate = %i, "console sign-in with a certificate not listed in client_certificates");
                again(&format!("the certificate of {i} is not listed in client_certificates: sign in with a token"))
            }
            Credential::Token(t) if ui.credentials.token(t).is_some() => {
                again("an agent's token cannot open the console: use an admin, operations or read-only token")
            }
            Credential::Token(_) => {
                tracing::warn!("console sign-in with an unknown token");
                again("unknown token")
            }
        };
    };
    let how = if credential.bound_to().is_some() { "certificate" } else { "token" };
    let id = ui.sessions.open(&caller, credential);
    tracing::info!(actor = %caller.actor, role = ?caller.role, with = how, "console session opened");
    let mut resp = Redirect::to(&next).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, session::set_cookie(&id, ui.secure).parse().expect("a valid header"));
    resp
}

async fn logout(State(ui): U, req: Request) -> Response {
    let cookie = session::cookie_of(req.headers());
    let s = ui.session(req.headers());
    if let Err(r) = form_of(req, s.as_ref()).await {
        return r;
    }
    if let Some(id) = cookie {
        ui.sessions.close(&id);
    }
    let mut resp = Redirect::to("/ui/login").into_response();
    resp.headers_mut().insert(header::SET_COOKIE, session::clear_cookie(ui.secure).parse().expect("a valid header"));
    resp
}

/// Only a path of the console itself may follow a sign-in (no open redirect).
fn safe_next(n: &str) -> bool {
    n.starts_with("/ui/") && !n.starts_with("//") && !n.contains("://") && !n.contains('\\')
}

/// `/ui/live`: Server-Sent Events, one `revision` message whenever this coordinator has applied
/// more of the log (at most every 200 ms), and a comment every 15 s to keep proxies from
/// closing an idle stream. Ends when the coordinator stops.
async fn live(State(ui): U, headers: HeaderMap) -> Response {
    let Some(_s) = ui.session(&headers) else {
        return (StatusCode::UNAUTHORIZED, "sign in first").into_response();
    };
    if ui.live.fetch_add(1, Ordering::SeqCst) >= LIVE_STREAMS_MAX {
        ui.live.fetch_sub(1, Ordering::SeqCst);
        return (StatusCode::SERVICE_UNAVAILABLE, "too many live pages open on this coordinator").into_response();
    }
    let slot = LiveSlot(ui.clone());
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let node = ui.node.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let mut rev = node.sm.watch_revision();
        let mut keepalive = tokio::time::interval(Duration::from_secs(15));
        let first = *rev.borrow_and_update();
        if tx.send(Bytes::from(format!("retry: 2000\nevent: revision\ndata: {first}\n\n"))).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                changed = rev.changed() => {
                    if changed.is_err() { return; }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let r = *rev.borrow_and_update();
                    if tx.send(Bytes::from(format!("event: revision\ndata: {r}\n\n"))).await.is_err() { return; }
                }
                _ = keepalive.tick() => {
                    if tx.send(Bytes::from_static(b": keepalive\n\n")).await.is_err() { return; }
                }
                _ = node.stopped() => return,
            }
        }
    });
    let body =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx)) });
    ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-store")], Body::from_stream(body))
        .into_response()
}

/// A live stream counted while it lives.
struct LiveSlot(Arc<Ui>);

impl Drop for LiveSlot {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

fn asset(ctype: &'static str, text: &'static str) -> Response {
    ([(header::CONTENT_TYPE, ctype), (header::CACHE_CONTROL, "no-cache")], text).into_response()
}

async fn not_found(State(ui): U, headers: HeaderMap, req_uri: axum::http::Uri) -> Response {
    let s = match signed_in(&ui, &headers, req_uri.path()) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let page = pages::layout(
        &ui,
        &s,
        "Not found",
        "",
        None,
        html! { h1 { "Not found" } p { "The console has no page at " code { (req_uri.path()) } "." } },
    );
    (StatusCode::NOT_FOUND, page).into_response()
}

/// Percent-encodes a query value.
pub fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("v", s)]).map(|q| q[2..].to_string()).unwrap_or_default()
}
