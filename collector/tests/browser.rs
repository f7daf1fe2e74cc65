//! The analysts' web page in a real headless Chromium (Debian's chromium +
//! chromium-driver), driven over the W3C WebDriver protocol: log in, go
//! from the fleet to a host to a finding with a hostile process name,
//! acknowledge it, open a campaign; and an analyst whose token is revoked
//! (with the real `rigwatch-collector token revoke`) is logged out at once.
//! Screenshots are saved under target/collector-screenshots/. Skipped, with
//! a message, only when chromium or chromedriver is missing.

mod common;

use base64::Engine;
use common::*;
use rigwatch_collector::app::SESSION_COOKIE;
use rigwatch_collector::store::Role;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Driver {
    child: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    shots: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start(profile: &Path) -> Option<Driver> {
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let driver = ["/usr/bin/chromedriver"].into_iter().find(|p| Path::new(p).exists());
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            eprintln!("SKIPPED: chromium and chromedriver are needed (apt-get install chromium chromium-driver)");
            return None;
        };
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await {
                let v: Value = r.json().await.unwrap_or_default();
                if v["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--window-size=1280,1000",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_string();
        let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/collector-screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        Some(Driver {
            child,
            base: format!("{base}/session/{session}"),
            session,
            http,
            shots,
        })
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut rq = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            rq = rq.json(&b);
        }
        let v: Value = rq.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }
    async fn go(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url }))).await;
    }
    async fn find(&self, css: &str) -> String {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(|x| x.as_str())
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }
    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{e}/click"), Some(json!({})))
            .await;
    }
    async fn type_in(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{e}/value"), Some(json!({ "text": text })))
            .await;
    }
    async fn text(&self, css: &str) -> String {
        let e = self.find(css).await;
        self.cmd(reqwest::Method::GET, &format!("/element/{e}/text"), None)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }
    /// Polls (up to 10 s) until `f` holds for the text of `css`; returns it.
    /// A click that submits a form returns before the next page is there.
    async fn wait_text(&self, css: &str, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self
                .cmd(
                    reqwest::Method::POST,
                    "/element",
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await;
            if let Some(e) = v.as_object().and_then(|o| o.values().next()).and_then(|x| x.as_str()) {
                let t = self.cmd(reqwest::Method::GET, &format!("/element/{e}/text"), None).await;
                if let Some(t) = t.as_str().filter(|t| f(t)) {
                    return t.to_string();
                }
            }
            assert!(Instant::now() < deadline, "timed out waiting on the text of {css}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    async fn wait_title(&self, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let t = self.title().await;
            if f(&t) {
                return t;
            }
            assert!(Instant::now() < deadline, "timed out waiting for the page; title {t:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    async fn script(&self, js: &str) -> Value {
        self.cmd(reqwest::Method::POST, "/execute/sync", Some(json!({"script": js, "args": []})))
            .await
    }
    async fn url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }
    async fn title(&self) -> String {
        self.cmd(reqwest::Method::GET, "/title", None)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }
    async fn shot(&self, name: &str) -> PathBuf {
        let b64 = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap()).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 5000, "a real screenshot");
        let p = self.shots.join(name);
        std::fs::write(&p, png).unwrap();
        p
    }
    /// The value of a cookie the browser holds for the current page
    /// (HttpOnly ones included: WebDriver sees them, page scripts do not).
    async fn cookie(&self, name: &str) -> Option<String> {
        let v = self.cmd(reqwest::Method::GET, &format!("/cookie/{name}"), None).await;
        v["value"].as_str().map(str::to_string)
    }
    /// An element's DOM property (`value` of an input).
    async fn property(&self, css: &str, prop: &str) -> String {
        let e = self.find(css).await;
        self.cmd(reqwest::Method::GET, &format!("/element/{e}/property/{prop}"), None)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }
    /// True when a JavaScript dialog is open (an injected alert() ran).
    async fn dialog_open(&self) -> bool {
        let v = self.cmd(reqwest::Method::GET, "/alert/text", None).await;
        v.get("error").is_none()
    }
    async fn quit(&self) {
        let _ = self.http.delete(self.base.clone()).send().await;
        let _ = &self.session;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyst_clicks_from_fleet_to_finding_in_chromium() {
    let profile = tempfile::tempdir().unwrap();
    let Some(d) = Driver::start(profile.path()).await else { return };
    let dir = tempfile::tempdir().unwrap();
    // the fleet requires the capture sensor and forbids local signature files
    let c = Collector::start(sqlite_store(dir.path()), dir.path(), |s| {
        s.policy.required_sensors = vec!["capture".into()];
        s.policy.forbid_local_overrides = true;
    })
    .await;
    let mut f = finding("web-1", "f1", HOSTILE, "pool.example.com", WALLET);
    f.process.cmdline = format!("{HOSTILE} <img src=x onerror=alert(2)>");
    // web-1's root switched capture off and dropped a file named to inject
    let mut r = report("web-1", "a1", vec![opened("a1", 1, 1000, f)]);
    r.agent.config = Some(rigwatch_signatures::report::ConfigState {
        digest: "d".repeat(64),
        sensors_off: vec!["capture".into()],
        signatures: rigwatch_signatures::report::SignatureSetState {
            local: vec![rigwatch_signatures::report::LocalFile {
                name: format!("/etc/rigwatch/signatures.d/{HOSTILE}<img src=x onerror=alert(3)>.toml"),
                sha256: "a".repeat(64),
            }],
            ..Default::default()
        },
        ..Default::default()
    });
    c.post(&r).await;
    c.post(&report(
        "web-2",
        "a2",
        vec![opened("a2", 1, 1000, finding("web-2", "f2", "kswapd0", "pool.example.com", WALLET))],
    ))
    .await;
    c.post(&report("db-1", "a3", vec![heartbeat("a3", 1, 1000)])).await;

    d.go(&format!("{}/", c.url)).await;
    assert!(d.url().await.ends_with("/login"), "not logged in: sent to the login page");
    d.shot("01-login.png").await;
    d.type_in("#token", &c.analyst_token).await;
    d.click("#login").await;
    d.wait_title(|t| t == "Fleet · rigwatch").await;
    let cards = d.text("main").await;
    assert!(
        cards.contains("3\nhosts") || cards.contains("3 hosts") || cards.contains("3\nhosts"),
        "{cards}"
    );
    assert!(cards.contains("campaigns"));
    d.shot("02-fleet.png").await;
    assert!(!d.dialog_open().await, "no injected script ran");
    assert_eq!(d.script("return document.scripts.length").await, 0);

    d.click("a.host[href='/hosts/web-1']").await;
    d.wait_title(|t| t == "Host web-1 · rigwatch").await;
    // how it departs from the fleet policy, named, the hostile file name as text
    let drift = d.text("#policy-drift").await;
    assert!(drift.contains("required sensors switched off: capture"), "{drift}");
    assert!(drift.contains("local_overrides") && drift.contains("onerror=alert(3)"), "{drift}");
    assert!(!d.dialog_open().await, "no injected script ran");
    assert_eq!(d.script("return document.scripts.length + document.images.length").await, 0);
    d.shot("03-host.png").await;

    d.click("a.finding").await;
    d.wait_title(|t| t == "Finding f1 · rigwatch").await;
    assert_eq!(d.text("#process").await, HOSTILE, "the hostile name shows as text");
    assert!(d.text("#evidence").await.contains("wallet.monero"));
    assert!(!d.dialog_open().await, "no injected script ran");
    assert_eq!(d.script("return document.scripts.length + document.images.length").await, 0);
    d.shot("04-finding.png").await;

    // Acknowledge with a reason (the first form on the page).
    d.type_in("form.inline input[name=reason]", "owner paged").await;
    d.click("#btn-acknowledged").await;
    d.wait_text("#state", |t| t == "acknowledged").await;
    d.wait_text("#history", |t| t.contains("by alice: owner paged")).await;
    d.shot("05-acknowledged.png").await;

    d.go(&format!("{}/", c.url)).await;
    d.wait_title(|t| t == "Fleet · rigwatch").await;
    d.click("a[href^='/campaigns/']").await;
    d.wait_title(|t| t.starts_with("Campaign ")).await;
    let body = d.text("main").await;
    assert!(body.contains("web-1") && body.contains("web-2") && body.contains(WALLET), "{body}");
    d.shot("06-campaign.png").await;

    // Fleet indicators (issue 16): the confirmed findings taught the wallet
    // and the pool; revoke the wallet with its button.
    d.click("a[href='/fleet']").await;
    d.wait_title(|t| t == "Fleet indicators · rigwatch").await;
    let wallet = rigwatch_collector::fleet::indicator_id("wallet", WALLET);
    let row = d.text(&format!("#ind-{wallet}")).await;
    assert!(row.contains(WALLET) && row.contains("web-1/f1") && row.contains("live"), "{row}");
    d.shot("07-fleet-indicators.png").await;
    d.click(&format!("#revoke-{wallet}")).await;
    d.wait_text(&format!("#ind-{wallet} td.state"), |t| t.starts_with("revoked by alice"))
        .await;
    assert_eq!(d.text("#fleet-version").await, "3", "taught (2), revoked (3)");
    d.shot("08-fleet-revoked.png").await;
    d.quit().await;
}

/// Issue 13: revoking an analyst's token ends the browser sessions opened
/// with it at once, not when the 12 h cookie expires. The token is revoked
/// by the real binary on the same database while the analyst has a finding
/// open with its form (and form token) loaded; the acknowledge click then
/// lands on the login page, the finding is unchanged, and the cookie is
/// refused to plain HTTP requests too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_token_logs_its_browser_session_out() {
    let profile = tempfile::tempdir().unwrap();
    let Some(d) = Driver::start(profile.path()).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start(sqlite_store(dir.path()), dir.path(), |_| {}).await;
    let carol = c.app.store.token_create("carol", Role::Analyst).await.unwrap();
    let (s, j) = c
        .post(&report(
            "web-1",
            "a1",
            vec![opened("a1", 1, 1000, finding("web-1", "f1", "kswapd0", "pool.example.com", WALLET))],
        ))
        .await;
    assert_eq!(s, 200, "{j}");

    d.go(&format!("{}/login", c.url)).await;
    d.type_in("#token", &carol).await;
    d.click("#login").await;
    d.wait_title(|t| t == "Fleet · rigwatch").await;
    assert!(d.text("header").await.contains("signed in as carol"));
    d.shot("11-revoke-fleet.png").await;
    d.click("a.finding").await;
    d.wait_title(|t| t == "Finding f1 · rigwatch").await;
    assert_eq!(d.text("#state").await, "open");
    let cookie = d.cookie(SESSION_COOKIE).await.expect("a session cookie");
    let csrf = d.property("form.inline input[name=csrf]", "value").await;
    assert_eq!(csrf.len(), 64, "the form token: {csrf:?}");
    d.shot("12-revoke-finding-before.png").await;

    // The cookie works for a plain request before the revocation.
    let with_cookie = |path: &str| {
        c.client
            .get(format!("{}{path}", c.url))
            .header("cookie", format!("{SESSION_COOKIE}={cookie}"))
            .send()
    };
    let r = with_cookie("/api/v1/findings/web-1/f1").await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "the session reads fleet data before the revocation");

    // Revoked by the real binary on the same database.
    let out = Command::new(env!("CARGO_BIN_EXE_rigwatch-collector"))
        .args(["token", "revoke", "carol", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("revoked token \"carol\""),
        "token revoke: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The page still shows the form: acknowledging lands on the login page.
    d.type_in("form.inline input[name=reason]", "after revocation").await;
    d.click("#btn-acknowledged").await;
    d.wait_title(|t| t == "Log in · rigwatch").await;
    assert!(d.url().await.ends_with("/login"), "{}", d.url().await);
    assert!(!d.text("header").await.contains("signed in"));
    d.shot("13-revoke-acknowledge-refused.png").await;
    // Reloading the finding, or the fleet, lands there too.
    for path in ["/findings/web-1/f1", "/"] {
        d.go(&format!("{}{path}", c.url)).await;
        d.wait_title(|t| t == "Log in · rigwatch").await;
        assert!(d.url().await.ends_with("/login"), "{path}: {}", d.url().await);
    }
    d.shot("14-revoke-reload.png").await;

    // The finding did not change (read with another analyst's token).
    let (s, f) = c.get("/api/v1/findings/web-1/f1").await;
    assert_eq!(s, 200, "{f}");
    assert_eq!(f["state"], "open", "{f}");
    assert!(
        !f["history"].to_string().contains("after revocation") && !f["history"].to_string().contains("carol"),
        "{}",
        f["history"]
    );

    // The cookie is refused to plain HTTP requests as well: the API, the
    // page, and the very form post that would have worked before.
    let r = with_cookie("/api/v1/findings/web-1/f1").await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = with_cookie("/findings/web-1/f1").await.unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/login");
    let r = c
        .client
        .post(format!("{}/findings/web-1/f1/state", c.url))
        .header("cookie", format!("{SESSION_COOKIE}={cookie}"))
        .form(&[("csrf", csrf.as_str()), ("state", "suppressed"), ("reason", "by curl")])
        .send()
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (303, "/login"));
    let (_, f) = c.get("/api/v1/findings/web-1/f1").await;
    assert_eq!(f["state"], "open", "{f}");
    d.quit().await;
}
