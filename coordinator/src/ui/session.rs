//! Console sessions: a browser signs in once with an API token and then holds only a session
//! cookie (`HttpOnly`, `SameSite=Strict`, `Secure` over TLS) naming a random session id.
//!
//! Why server-side sessions and not the token in a cookie: a cookie that leaks (a shared
//! machine, a proxy log) then opens a session that ends on sign-out, after an idle period or at
//! a fixed age, instead of handing over the token for good. The session keeps the token in this
//! coordinator's memory only, because the console acts through the API with it (the API's role
//! checks, forwarding to the leader and error messages stay the one source of truth); a restart
//! of the coordinator ends every session on it.
//!
//! Every session has its own CSRF token, which every form carries and every `POST` must return;
//! together with `SameSite=Strict` and the same-origin check in `mod.rs` a page of another site
//! cannot act through a signed-in browser.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;

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
    /// The token it signed in with: the console's calls to the API carry it.
    pub token: String,
    /// Returned by every form; compared in constant time.
    pub csrf: String,
    created: Instant,
    seen: Instant,
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

    /// Opens a session for a caller whose token was just checked; answers its id. The oldest
    /// session makes way when the table is full.
    pub fn open(&self, caller: &Caller, token: &str) -> String {
        let id = random_hex();
        let now = Instant::now();
        let s = Session {
            role: caller.role,
            actor: caller.actor.clone(),
            token: token.to_string(),
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

    /// Ends every session opened with a token that is no longer accepted (a reload removed or
    /// rotated it); answers how many ended.
    pub fn close_unless(&self, accepted: impl Fn(&str) -> bool) -> usize {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let before = open.len();
        open.retain(|_, s| accepted(&s.token));
        before - open.len()
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

    fn caller(role: Role) -> Caller {
        Caller { role, host: None, actor: "ops".into(), token: [0; 32] }
    }

    #[test]
    fn a_session_ends_when_idle_too_long_or_too_old_or_closed() {
        let s = Sessions::new(Duration::from_millis(50), Duration::from_secs(60), 10);
        let id = s.open(&caller(Role::Operations), "tok");
        assert_eq!(s.get(&id).map(|x| x.actor), Some("ops".into()));
        std::thread::sleep(Duration::from_millis(80));
        assert!(s.get(&id).is_none(), "idle past the limit");

        let s = Sessions::new(Duration::from_secs(60), Duration::from_millis(50), 10);
        let id = s.open(&caller(Role::Operations), "tok");
        std::thread::sleep(Duration::from_millis(80));
        assert!(s.get(&id).is_none(), "older than the maximum age, though used");

        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(60), 10);
        let id = s.open(&caller(Role::Operations), "tok");
        s.close(&id);
        assert!(s.get(&id).is_none());
        assert!(s.get("not-a-session").is_none());
    }

    #[test]
    fn a_full_table_drops_its_least_recently_used_session_and_a_reload_ends_removed_tokens() {
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(60), 2);
        let a = s.open(&caller(Role::ReadOnly), "a");
        let b = s.open(&caller(Role::ReadOnly), "b");
        std::thread::sleep(Duration::from_millis(2));
        assert!(s.get(&a).is_some()); // a used after b
        let c = s.open(&caller(Role::ReadOnly), "c");
        assert!(s.get(&b).is_none() && s.get(&a).is_some() && s.get(&c).is_some());
        assert_eq!(s.close_unless(|t| t != "a"), 1);
        assert!(s.get(&a).is_none() && s.get(&c).is_some());
    }

    #[test]
    fn csrf_tokens_and_cookies_are_checked_exactly() {
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(60), 2);
        let id = s.open(&caller(Role::Admin), "t");
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
