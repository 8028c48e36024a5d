//! The operator console (`/ui/`) in a real headless Chromium against a real three-coordinator
//! cluster with agents, always through a follower (the console must work from any coordinator):
//! sign-in, the pages, an action with its confirmation, a migration started from the console
//! whose phases advance on screen without a reload while the leader is SIGKILLed, switching
//! disabled and the package shown unprotected; the read-only role sees no action and its forged
//! `POST` is refused; a form without its CSRF token is refused. Every page is photographed
//! (`SWITCHYARD_SCREENSHOTS=docs/console` regenerates the docs' pictures).
mod common;

use std::time::{Duration, Instant};

use common::browser::{screenshot_dir, Browser, ENTER, TAB};
use common::cluster::*;
use common::saga::*;
use serde_json::json;
use switchyard_protocol::api::{HostView, Read};

const WAIT: Duration = Duration::from_secs(60);

/// Signs `b` in on `base` (a coordinator's URL) with `token`, from the page `path`.
async fn sign_in(b: &Browser, base: &str, path: &str, token: &str) {
    b.goto(&format!("{base}{path}")).await;
    assert!(b.url().await.contains("/ui/login"), "not signed in yet: the sign-in page first");
    b.fill("#token", token).await;
    b.click("button[type=submit]").await;
    b.wait_text("the page after sign-in", WAIT, |t| t.contains("Sign out")).await;
    assert!(b.url().await.ends_with(path), "back where it was asked: {}", b.url().await);
}

/// A `POST` of `body` to `path` from the page's own origin (as a forged or scripted form
/// would send it): the answer's status.
async fn post_form(b: &Browser, path: &str, body: &str) -> u64 {
    let script = "const done = arguments[arguments.length - 1];
        fetch(arguments[0], {method: 'POST', redirect: 'manual', credentials: 'same-origin',
               headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: arguments[1]})
          .then(r => done(r.type === 'opaqueredirect' ? 303 : r.status)).catch(e => done(String(e)));";
    let v = b.run_async(script, json!([path, body])).await;
    v.as_u64().unwrap_or_else(|| panic!("fetch failed: {v}"))
}

/// Checks the page in the browser with axe-core against WCAG 2.1 A/AA: no violation.
async fn accessible(b: &Browser, what: &str) {
    let v = b.accessibility_violations().await;
    assert!(v.is_empty(), "{what} ({}) breaks accessibility rules:\n{}", b.url().await, v.join("\n"));
}

/// Presses Tab until the focused element's description contains `want` (at most 200 times);
/// answers how many presses it took. Each stop must show where the focus is.
async fn tab_to(b: &Browser, want: &str) -> usize {
    for n in 1..=200 {
        b.press(TAB).await;
        let f = b.focused().await;
        assert!(b.focus_visible().await, "the focus on {f:?} is not visible");
        if f.contains(want) {
            return n;
        }
    }
    panic!("Tab never reached {want:?} on {}", b.url().await);
}

async fn maintenance(cluster: &TestCluster, host: &str) -> bool {
    let c = cluster.client(&cluster.alive_ids());
    let h: Read<HostView> = c.get(&format!("/v1/hosts/{host}")).await.unwrap();
    h.items.host.maintenance
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_sign_in_see_the_cluster_and_act_only_as_their_role_allows() {
    let (cluster, _agents) = cluster_with_agents(ClusterOpts::default()).await;
    let admin = cluster.client(&[1, 2, 3]);
    create_guest(&admin, "vm1", "h1", Some("p1")).await;
    create_guest(&admin, "vm2", "h2", None).await;
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let follower = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    let base = cluster.url(follower, "");
    let shots = screenshot_dir();
    let b = Browser::start().await;

    // An unknown token is refused on the sign-in page; an agent's cannot open the console.
    b.goto(&format!("{base}/ui/hosts")).await;
    b.fill("#token", "not-a-token-of-this-cluster").await;
    b.click("button[type=submit]").await;
    b.wait_text("the refusal", WAIT, |t| t.contains("unknown token")).await;
    b.screenshot(&shots.join("login.png")).await;
    accessible(&b, "the sign-in page").await;
    b.fill("#token", &agent_token(1)).await;
    b.click("button[type=submit]").await;
    b.wait_text("the refusal", WAIT, |t| t.contains("an agent's token cannot open the console")).await;

    // The operations role: three hosts in sync (the follower forwards the read to the leader).
    sign_in(&b, &base, "/ui/hosts", OPERATIONS_TOKEN).await;
    b.wait_text("three hosts in sync", WAIT, |t| t.matches("in sync").count() == 3).await;
    b.screenshot(&shots.join("hosts.png")).await;
    assert_eq!(b.run("return document.cookie", json!([])).await, json!(""), "the session cookie is HttpOnly");
    assert!(!b.all("tr[data-host='h3'] a.button").await.is_empty(), "operations may drain and set maintenance");

    for (path, shot, expect) in [
        ("/ui/cluster", "cluster.png", "Coordinators"),
        ("/ui/guests", "guests.png", "vm2"),
        ("/ui/guests/vm1", "guest.png", "Where its definition is current"),
        ("/ui/packages", "packages.png", "Every package's switching is enabled"),
        ("/ui/migrations", "migrations.png", "No migrations."),
        ("/ui/events", "events.png", "guest vm1 created"),
        ("/ui/failovers", "failovers.png", "No host is failed."),
        ("/ui/hosts/h1", "host.png", "Guests owned"),
    ] {
        b.goto(&format!("{base}{path}")).await;
        let t = b.wait_text(expect, WAIT, |t| t.contains(expect)).await;
        assert!(t.contains("Read at revision") || path == "/ui/cluster", "{path}: {t}");
        b.screenshot(&shots.join(shot)).await;
        accessible(&b, path).await;
    }
    let t = b.page_text().await;
    assert!(t.contains("vm1") && t.contains("memory"), "h1's page lists its guest and its capacity: {t}");

    // A form without the session's CSRF token is refused, and nothing changes.
    assert_eq!(post_form(&b, "/ui/act/maintenance", "host=h3&on=true").await, 403);
    assert_eq!(post_form(&b, "/ui/act/maintenance", "host=h3&on=true&csrf=0000").await, 403);
    assert!(!maintenance(&cluster, "h3").await);

    // By keyboard alone: the first Tab reaches the skip link, which leads past the navigation;
    // Tab reaches h3's maintenance button, Enter opens the confirmation (which states the
    // consequence), Tab reaches its button and Enter commits; the focus is visible throughout.
    b.goto(&format!("{base}/ui/hosts")).await;
    b.find("tr[data-host='h3']").await;
    assert_eq!(tab_to(&b, "Skip to").await, 1, "the skip link comes first");
    b.press(ENTER).await;
    let to_button = tab_to(&b, "host=h3&on=true").await;
    eprintln!("h3's maintenance button: {to_button} Tab presses after the skip link");
    b.press(ENTER).await;
    b.wait_text("the confirmation", WAIT, |t| t.contains("takes no new guests")).await;
    b.screenshot(&shots.join("confirm-maintenance.png")).await;
    accessible(&b, "the confirmation").await;
    tab_to(&b, "Confirm: Maintenance for h3").await;
    b.press(ENTER).await;
    b.wait_text("h3's page", WAIT, |t| t.contains("Host h3")).await;
    assert!(maintenance(&cluster, "h3").await, "committed through the API");
    // A refusal shows the API's reason: h1 owns a guest, so maintenance needs a drain first.
    b.goto(&format!("{base}/ui/act/maintenance?host=h1&on=true")).await;
    b.click("form.confirm button.primary").await;
    let t = b.wait_text("the refusal", WAIT, |t| t.contains("Refused") || t.contains("drain")).await;
    assert!(b.all(".refusal").await.len() == 1, "{t}");
    assert!(!maintenance(&cluster, "h1").await);

    // The read-only role: no action anywhere, and a forged POST (with its own valid CSRF token,
    // as a script in its own session could send) is refused by the API; nothing changes.
    b.click("form[action='/ui/logout'] button").await;
    b.wait_text("the sign-in page", WAIT, |t| t.contains("Sign in with an API token")).await;
    sign_in(&b, &base, "/ui/hosts", READ_ONLY_TOKEN).await;
    b.wait_text("three hosts", WAIT, |t| t.contains("h3")).await;
    for path in ["/ui/hosts", "/ui/guests", "/ui/packages", "/ui/guests/vm1", "/ui/hosts/h2"] {
        b.goto(&format!("{base}{path}")).await;
        b.find("#revision").await;
        assert!(b.all("a.button").await.is_empty(), "{path} shows the read-only role an action");
    }
    b.goto(&format!("{base}/ui/act/maintenance?host=h2&on=true")).await;
    b.wait_text("the role's refusal", WAIT, |t| t.contains("Your role may not do this")).await;
    let csrf = b.run("return document.querySelector('input[name=csrf]').value", json!([])).await;
    let status =
        post_form(&b, "/ui/act/maintenance", &format!("host=h2&on=true&csrf={}", csrf.as_str().unwrap())).await;
    assert_eq!(status, 403, "the API refuses the read-only role");
    assert!(!maintenance(&cluster, "h2").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_started_in_the_console_advances_live_while_the_leader_dies() {
    // A transfer of 3 s: long enough to see the phases pass and to lose the leader during one.
    let (mut cluster, _agents) = cluster_with_agents(ClusterOpts { sim_transfer_ms: 3000, ..Default::default() }).await;
    let admin = cluster.client(&[1, 2, 3]);
    create_guest(&admin, "vm1", "h1", Some("p1")).await;
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let follower = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
    let base = cluster.url(follower, "");
    let shots = screenshot_dir();
    let b = Browser::start().await;
    sign_in(&b, &base, "/ui/guests/vm1", OPERATIONS_TOKEN).await;

    b.click("a.button[href*='act/migrate']").await;
    b.wait_text("the confirmation", WAIT, |t| t.contains("switching is disabled while it moves")).await;
    b.click("#target option[value='h2']").await;
    b.fill("#reason", "console test").await;
    b.screenshot(&shots.join("confirm-migrate.png")).await;
    b.click("form.confirm button.primary").await;
    b.find("#timeline").await;
    assert!(b.url().await.contains("/ui/migrations/"), "{}", b.url().await);
    // From here on the page must never reload: a marker on the window would be lost.
    b.run("window.__sameDocument = true; return true", json!([])).await;

    let phases = "return Array.from(document.querySelectorAll('#timeline li')).map(li => li.dataset.phase)";
    let mut seen: Vec<String> = Vec::new();
    let mut killed = false;
    let started = Instant::now();
    loop {
        let now: Vec<String> = serde_json::from_value(b.run(phases, json!([])).await).unwrap();
        if let Some(last) = now.last() {
            if seen.last() != Some(last) {
                seen.push(last.clone());
            }
        }
        if !killed && now.iter().any(|p| p == "Transferring") {
            cluster.kill(leader);
            killed = true;
            eprintln!("killed leader {leader} while the console showed {now:?}");
        }
        if now.iter().any(|p| p == "Completed" || p == "Failed" || p == "Aborted") {
            assert_eq!(now.last().map(String::as_str), Some("Completed"), "{now:?}");
            assert_eq!(
                now,
                [
                    "Requested",
                    "SwitchingDisabled",
                    "Transferring",
                    "TargetRunning",
                    "OwnerSwitched",
                    "SwitchingEnabled",
                    "Completed"
                ]
            );
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the migration did not end on screen: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(killed, "the leader was killed during the transfer");
    assert_eq!(b.run("return window.__sameDocument === true", json!([])).await, json!(true), "the page reloaded");
    // The phases after the transfer follow each other within milliseconds, so the screen may
    // go from `Transferring` straight to `Completed`; what matters is that it moved on its own.
    assert!(seen.len() >= 2 && seen[0] != "Completed", "the phases advanced on screen: {seen:?}");
    b.screenshot(&shots.join("migration.png")).await;

    // Disable switching from the console: the package is listed unprotected, with who and why.
    b.goto(&format!("{base}/ui/packages")).await;
    b.click("a.button[href*='switching'][href*='enabled=false']").await;
    b.wait_text("the confirmation", WAIT, |t| t.contains("becomes unprotected")).await;
    // A reason is free text: shown as text, never run as markup.
    let reason = "<script>window.__injected = true</script>firmware update on h2";
    b.fill("#reason", reason).await;
    b.click("form.confirm button.primary").await;
    let t = b.wait_text("p1 unprotected", WAIT, |t| t.contains("firmware update on h2")).await;
    let row = b.text("#unprotected tr[data-package='p1']").await;
    assert!(row.contains("vm1") && row.contains("operations") && row.contains(reason), "{row}\n{t}");
    assert_eq!(b.run("return window.__injected === undefined", json!([])).await, json!(true));
    b.screenshot(&shots.join("unprotected.png")).await;
    assert!(!switching_enabled(&cluster, "p1").await, "switching is disabled in the log");
    cluster.restart(leader);
    cluster.wait_leader(&[1, 2, 3]).await;
}

async fn switching_enabled(cluster: &TestCluster, name: &str) -> bool {
    let c = cluster.client(&cluster.alive_ids());
    let v: Read<serde_json::Value> = c.get(&format!("/v1/packages/{name}")).await.unwrap();
    v.items["switching_enabled"].as_bool().unwrap()
}
