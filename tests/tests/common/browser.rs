//! A real headless Chromium driven over WebDriver (W3C protocol, spoken with reqwest): what the
//! console's tests click through. `chromedriver` and `chromium` come from Debian
//! (`scripts/install-deps`). The test clusters' certificates come from a CA of their own, which
//! this browser is told to accept (`--ignore-certificate-errors`); nothing else is relaxed.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Whether WebDriver's error says the element found a moment ago is gone: a live update replaced
/// it (`stale element reference`), or the page navigated and the element belongs to the old
/// document (Chromium then answers an `unknown error` naming the node's document).
fn is_stale(err: &str) -> bool {
    err.contains("stale element") || err.contains("does not belong to the document")
}

/// One browser (a chromedriver process and its session).
pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    base: String,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a 1280×900 window.
    pub async fn start() -> Browser {
        let port = switchyard_testkit::cluster::free_port();
        // Its own process group: the browser processes it starts die with it (a killed
        // chromedriver alone would leave Chromium running).
        let driver = Command::new("chromedriver")
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (scripts/install-deps installs chromium-driver)");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let root = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            if let Ok(r) = http.get(format!("{root}/status")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(started.elapsed() < Duration::from_secs(30), "chromedriver did not answer within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900", "--ignore-certificate-errors", "--lang=en-US"]
            }
        }}});
        let r: Value = http.post(format!("{root}/session")).json(&caps).send().await.unwrap().json().await.unwrap();
        let id = r["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {r}")).to_string();
        Browser { driver, http, base: format!("{root}/session/{id}") }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.try_cmd(method, path, body).await.unwrap_or_else(|e| panic!("WebDriver {path}: {e}"))
    }

    /// A command, or WebDriver's error (`"stale element reference": …` and the like).
    async fn try_cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r: Value = req.send().await.unwrap().json().await.unwrap();
        if let Some(e) = r["value"].get("error") {
            return Err(format!("{e}: {}", r["value"]["message"]));
        }
        Ok(r["value"].clone())
    }

    /// Runs WebDriver's element command `what` on the element matching `css`, finding it again when a live update replaced
    /// it in between (a stale element), for up to 20 s.
    async fn on_element(&self, css: &str, what: &str, body: Option<Value>, method: reqwest::Method) -> Value {
        let started = Instant::now();
        loop {
            let e = self.find(css).await;
            match self.try_cmd(method.clone(), &format!("/element/{e}/{what}"), body.clone()).await {
                Ok(v) => return v,
                Err(err) if is_stale(&err) && started.elapsed() < Duration::from_secs(20) => {}
                Err(err) => panic!("WebDriver {css} {what}: {err}"),
            }
        }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.cmd(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Value {
        self.cmd(reqwest::Method::GET, path, None).await
    }

    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    pub async fn url(&self) -> String {
        self.get("/url").await.as_str().unwrap_or_default().to_string()
    }

    /// The elements matching a CSS selector (ids).
    pub async fn all(&self, css: &str) -> Vec<String> {
        let v = self.post("/elements", json!({"using": "css selector", "value": css})).await;
        v.as_array().into_iter().flatten().filter_map(|e| e[ELEMENT].as_str().map(str::to_string)).collect()
    }

    /// The first element matching `css`, waiting up to 20 s for it to appear.
    pub async fn find(&self, css: &str) -> String {
        let started = Instant::now();
        loop {
            if let Some(e) = self.all(css).await.into_iter().next() {
                return e;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "no element {css:?} on {}", self.url().await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn text(&self, css: &str) -> String {
        let v = self.on_element(css, "text", None, reqwest::Method::GET).await;
        v.as_str().unwrap_or_default().to_string()
    }

    pub async fn click(&self, css: &str) {
        self.on_element(css, "click", Some(json!({})), reqwest::Method::POST).await;
    }

    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.post(&format!("/element/{e}/clear"), json!({})).await;
        self.post(&format!("/element/{e}/value"), json!({ "text": text })).await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and answers its return value.
    pub async fn run(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": args })).await
    }

    /// Runs an async script: the body calls `arguments[arguments.length - 1](result)`.
    pub async fn run_async(&self, script: &str, args: Value) -> Value {
        self.post("/execute/async", json!({ "script": script, "args": args })).await
    }

    /// The page's visible text.
    pub async fn page_text(&self) -> String {
        self.text("body").await
    }

    /// Waits until `f` holds of the page's text (polling, up to `within`).
    pub async fn wait_text(&self, what: &str, within: Duration, f: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let t = self.page_text().await;
            if f(&t) {
                return t;
            }
            assert!(started.elapsed() < within, "waited {within:?} for {what}; the page shows:\n{t}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Presses and releases one key (a WebDriver key code, e.g. [`TAB`], [`ENTER`]), sent to
    /// whatever has the focus, as a keyboard user would.
    pub async fn press(&self, key: &str) {
        let actions = json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]});
        self.post("/actions", actions).await;
    }

    /// A description of the focused element: its tag, text, and `href` or `name`.
    pub async fn focused(&self) -> String {
        let script = "const e = document.activeElement; if (!e) return '';
            return e.tagName.toLowerCase() + ' ' + (e.getAttribute('href') || e.getAttribute('name') || '') + ' '
                + (e.innerText || e.value || '').trim().slice(0, 60);";
        self.run(script, json!([])).await.as_str().unwrap_or_default().to_string()
    }

    /// Whether the focused element is drawn with a visible focus indicator (an outline or a
    /// box shadow), as keyboard users need to see where they are.
    pub async fn focus_visible(&self) -> bool {
        let script = "const s = getComputedStyle(document.activeElement);
            return (s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0) || s.boxShadow !== 'none';";
        self.run(script, json!([])).await == json!(true)
    }

    /// Checks the page with axe-core (Deque's accessibility engine, vendored in
    /// `tests/vendor/axe-core`) against WCAG 2.1 A and AA; answers each violation as
    /// `rule (impact): help — the offending elements`.
    pub async fn accessibility_violations(&self) -> Vec<String> {
        if self.run("return typeof window.axe === 'object'", json!([])).await != json!(true) {
            self.run(&format!("{AXE}\n;return true;"), json!([])).await;
        }
        let script = "const done = arguments[arguments.length - 1];
            axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})
              .then(r => done({passes: r.passes.length, violations: r.violations.map(v => v.id + ' (' + v.impact
                  + '): ' + v.help + ' — ' + v.nodes.slice(0, 5).map(n => n.target.join(' ')).join(', '))}))
              .catch(e => done({error: String(e)}));";
        let v = self.run_async(script, json!([])).await;
        let passes = v["passes"].as_u64().unwrap_or_else(|| panic!("axe did not run: {v}"));
        assert!(passes > 0, "axe checked no rule: {v}");
        v["violations"].as_array().into_iter().flatten().filter_map(|x| x.as_str().map(str::to_string)).collect()
    }

    /// Saves a PNG of the window.
    pub async fn screenshot(&self, path: &Path) {
        let b64 = self.get("/screenshot").await;
        let bytes =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64.as_str().unwrap_or_default())
                .expect("a screenshot is base64");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

/// axe-core 4.12.1 (MPL-2.0), run in the page by [`Browser::accessibility_violations`].
const AXE: &str = include_str!("../../vendor/axe-core/axe.min.js");
/// WebDriver key codes.
pub const TAB: &str = "\u{E004}";
pub const ENTER: &str = "\u{E007}";

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the process group this browser's chromedriver leads.
        unsafe {
            libc::kill(-(self.driver.id() as i32), libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}

/// Where the console's screenshots go: `SWITCHYARD_SCREENSHOTS` (the docs' folder, when they
/// are regenerated: `docs/console/`), else the target folder.
pub fn screenshot_dir() -> PathBuf {
    match std::env::var_os("SWITCHYARD_SCREENSHOTS") {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join("switchyard-console-screenshots"),
    }
}
