//! The application state every request handler shares: the store, the
//! settings, the metrics and the analysts' web sessions. Server, web page
//! and alerting all depend on it; it depends on none of them.

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::store::Store;
use axum::http::{header, HeaderMap};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A logged-in analyst.
#[derive(Clone, Debug)]
pub struct Session {
    /// The analyst token's name.
    pub name: String,
    /// Form token against cross-site posts.
    pub csrf: String,
    expires: Instant,
}

/// Everything a request handler needs.
pub struct App {
    /// Fleet state.
    pub store: Store,
    /// Settings.
    pub settings: Settings,
    /// Metrics.
    pub metrics: Metrics,
    /// Web sessions by cookie value (in memory: behind a load balancer,
    /// use sticky sessions or the bearer token).
    sessions: Mutex<HashMap<String, Session>>,
    /// Woken when findings change, so alerts go out at once.
    pub alert_wakeup: tokio::sync::Notify,
}

impl App {
    /// A new application over a store.
    pub fn new(store: Store, settings: Settings) -> Arc<App> {
        Arc::new(App {
            store,
            settings,
            metrics: Metrics::new(),
            sessions: Mutex::new(HashMap::new()),
            alert_wakeup: tokio::sync::Notify::new(),
        })
    }

    /// Starts a session for an analyst; returns the cookie value.
    pub fn new_session(&self, name: &str) -> String {
        let id = random_hex();
        let s = Session {
            name: name.to_string(),
            csrf: random_hex(),
            expires: Instant::now() + Duration::from_secs(12 * 3600),
        };
        let mut m = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let t = Instant::now();
        m.retain(|_, s| s.expires > t);
        m.insert(id.clone(), s);
        id
    }

    /// The session a cookie names, if still valid.
    pub fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let m = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&id).filter(|s| s.expires > Instant::now()).cloned()
    }

    /// Ends a session.
    pub fn end_session(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, SESSION_COOKIE) {
            self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        }
    }
}

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "rigwatch_session";

fn random_hex() -> String {
    let mut b = [0u8; 32];
    let _ = getrandom::getrandom(&mut b);
    hex::encode(b)
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then(|| v.to_string())
        })
}
