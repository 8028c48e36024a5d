//! Console sessions: a browser signs in once — with an API token, or with a client certificate
//! listed in `client_certificates` — and then holds only a session cookie (`HttpOnly`,
//! `SameSite=Strict`, `Secure` over TLS) naming a random session id.
//!
//! Why server-side sessions and not the token in a cookie: a cookie that leaks (a shared
//! machine, a proxy log) then opens a session that ends on sign-out, after an idle period or at
//! a fixed age, instead of handing over the token for good. The session keeps its credential in
//! this coordinator's memory only, because the console acts through the API with it (the API's
//! role checks, forwarding to the leader and error messages stay the one source of truth); a
//! restart of the coordinator ends every session on it, and a session ends as soon as a reload
//! no longer accepts its credential. A session opened with a certificate is honoured only on
//! connections that present that certificate: its cookie alone opens nothing.
//!
//! Every session has its own CSRF token, which every form carries and every `POST` must return;
//! together with `SameSite=Strict` and the same-origin check in `mod.rs` a page of another site
//! cannot act through a signed-in browser.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;

use switchyard_tls::Identity;

use crate::api::Caller;
use crate::config::Role;

/// The session cookie's name.
pub const COOKIE: &str = "switchyard_session";

/// One signed-in browser.
#[derive(Clone)]
pub struct Session {
    pub role: Role,
    /// Who acts (the token's name), as recorded with every change.
    pub actor: String,
    /// What it signed in with: the console's calls to the API carry it.
    pub credential: Credential,
    /// Returned by every form; compared in constant time.
    pub csrf: String,
    created: Instant,
    seen: Instant,
}

/// What a session acts with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// An API token (sent as the bearer token of every call).
    Token(String),
    /// A client certificate's identity (every call is made as a connection presenting it).
    Certificate(Identity),
}

impl Credential {
    /// The certificate a session's requests must come with, if it was opened with one.
    pub fn bound_to(&self) -> Option<&Identity> {
        match self {
            Credential::Token(_) => None,
            Credential::Certificate(i) => Some(i),
        }
    }
}

/// Open sessions of this coordinator.
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
    idle: Duration,
    max_age: Duration,
    max: usize,
}

impl Sessions {
    pub fn new(idle: Duration, max_age: Duration, max: usize) -> Sessions {
        Sessions { open: Mutex::default(), idle, max_age, max }
    }

    /// Opens a session for a caller whose credential was just checked; answers its id. The
    /// least recently used session makes way when the table is full.
    pub fn open(&self, caller: &Caller, credential: Credential) -> String {
        let id = random_hex();
        let now = Instant::now();
        let s = Session {
            role: caller.role,
            actor: caller.actor.clone(),
            credential,
            csrf: random_hex(),
            created: now,
            seen: now,
        };
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, s| self.live(s, now));
        if open.len() >= self.max {
            if let Some(oldest) = open.iter().min_by_key(|(_, s)| s.seen).map(|(k, _)| k.clone()) {
                open.remove(&oldest);
            }
        }
        open.insert(id.clone(), s);
        id
    }

    /// The live session `id` names, marked as used now.
    pub fn get(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let live = open.get(id).is_some_and(|s| self.live(s, now));
        if !live {
            open.remove(id);
            return None;
        }
        let s = open.get_mut(id).expect("checked");
        s.seen = now;
        Some(s.clone())
    }

    /// Ends a session (sign-out).
    pub fn close(&self, id: &str) {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    fn live(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.seen) < self.idle && now.duration_since(s.created) < self.max_age
    }
}

/// Whether a returned CSRF token is the session's, in time independent of where they differ.
pub fn csrf_matches(session: &Session, returned: &str) -> bool {
    let (a, b) = (session.csrf.as_bytes(), returned.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 32 random bytes from the operating system's generator, as hex.
fn random_hex() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The session id a request's `Cookie` header carries, if any.
pub fn cookie_of(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The `Set-Cookie` value that holds session `id` (`secure` over TLS).
pub fn set_cookie(id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict{secure}")
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(t: &str) -> Credential {
        Credential::Token(t.into())
    }

    fn caller(role: Role) -> Caller {
        Caller { role, host: None, actor: "ops".into(), token: [0; 32] }
    }

    #[test]
    fn a_session_ends_when_idle_too_long_or_too_old_or_closed() {
        let s = Sessions::new(Duration::from_millis(50), Duration::from_secs(60), 10);
        let id = s.open(&caller(Role::Operations), token("tok"));
        assert_eq!(s.get(&id).map(|x| x.actor), Some("ops".into()));
        std::thread::sleep(Duration::from_millis(80));
        assert!(s.get(&id).is_none(), "idle past the limit");

        let s = Sessions::new(Duration::from_secs(60), Duration::from_millis(50), 10);
        let id = s.open(&caller(Role::Operations), token("tok"));
        std::thread::sleep(Duration::from_millis(80));
        assert!(s.get(&id).is_none(), "older than the maximum age, though used");

        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(60), 10);
        let id = s.open(&caller(Role::Operations), token("tok"));
        s.close(&id);
        assert!(s.get(&id).is_none());
        assert!(s.get("not-a-session").is_none());
    }

    #[test]
    fn a_full_table_drops_its_least_recently_used_session() {
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(60), 2);
        let a = s.open(&caller(Role::ReadOnly), token("a"));
        let b = s.open(&caller(Role::ReadOnly), token("b"));
        std::thread::sleep(Duration::from_millis(2));
        assert!(s.get(&a).is_some()); // a used after b
        let c = s.open(&caller(Role::ReadOnly), token("c"));
        assert!(s.get(&b).is_none() && s.get(&a).is_some() && s.get(&c).is_some());
    }

    #[test]
    fn csrf_tokens_and_cookies_are_checked_exactly() {
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(60), 2);
        let id = s.open(&caller(Role::Admin), token("t"));
        let session = s.get(&id).unwrap();
        assert!(csrf_matches(&session, &session.csrf.clone()));
        assert!(!csrf_matches(&session, ""));
        assert!(!csrf_matches(&session, &session.csrf[1..]));
        let mut h = axum::http::HeaderMap::new();
        h.insert("cookie", format!("other=1; {COOKIE}={id}").parse().unwrap());
        assert_eq!(cookie_of(&h), Some(id.clone()));
        h.insert("cookie", format!("{COOKIE}=../../etc").parse().unwrap());
        assert_eq!(cookie_of(&h), None);
        assert!(set_cookie(&id, true).contains("HttpOnly; SameSite=Strict; Secure"));
    }
}
