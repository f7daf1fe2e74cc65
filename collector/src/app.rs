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
    /// The hash of the token the analyst logged in with: checked on every
    /// request, so revoking (or re-issuing) the token ends the session.
    token_hash: String,
    expires: Instant,
}

/// A token bucket: `rate` per second, `burst` at most.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Rate limits by key (an agent token's name, a client address), bounded
/// in memory: when full, buckets that have refilled are forgotten first,
/// then all.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    max_keys: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// `rate` per second sustained, `burst` at once, at most `max_keys` keys remembered.
    pub fn new(rate: f64, burst: u64, max_keys: usize) -> RateLimiter {
        RateLimiter {
            rate: rate.max(1e-6),
            burst: burst.max(1) as f64,
            max_keys: max_keys.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one from `key`'s bucket: `Ok(())`, or `Err(seconds)` to wait
    /// before the next one is there (for `Retry-After`).
    pub fn take(&self, key: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut m = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !m.contains_key(key) && m.len() >= self.max_keys {
            let (rate, burst) = (self.rate, self.burst);
            m.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if m.len() >= self.max_keys {
                m.clear();
            }
        }
        let b = m.entry(key.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }

    /// Whether `key` would be refused now, without taking anything.
    pub fn exhausted(&self, key: &str) -> Option<u64> {
        let now = Instant::now();
        let m = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = m.get(key)?;
        let tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        (tokens < 1.0).then(|| ((1.0 - tokens) / self.rate).ceil().max(1.0) as u64)
    }
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
    /// Reports per agent token.
    pub report_limiter: RateLimiter,
    /// Failed logins per client address.
    pub login_limiter: RateLimiter,
    /// The fleet signing key (loaded on first use; [`App::fleet_key`]).
    fleet_key: std::sync::OnceLock<Arc<crate::fleet::SigningKey>>,
    /// The signed fleet set as last served, and when its version was last checked.
    pub fleet_cache: Mutex<Option<FleetCache>>,
    /// Finding events waiting for the SIEM webhook.
    pub siem: crate::siem::Queue,
}

/// The signed fleet set as served, rebuilt only when its version changes.
#[derive(Clone)]
pub struct FleetCache {
    /// Its version.
    pub version: u64,
    /// The JSON body.
    pub body: axum::body::Bytes,
    /// When the database's version was last read.
    pub checked: Instant,
}

impl App {
    /// A new application over a store.
    pub fn new(store: Store, settings: Settings) -> Arc<App> {
        let report_limiter = RateLimiter::new(settings.reports_per_second, settings.report_burst, 100_000);
        let per_minute = settings.login_failures_per_minute.max(1);
        let login_limiter = RateLimiter::new(per_minute as f64 / 60.0, per_minute, 10_000);
        Arc::new(App {
            store,
            settings,
            metrics: Metrics::new(),
            sessions: Mutex::new(HashMap::new()),
            alert_wakeup: tokio::sync::Notify::new(),
            report_limiter,
            login_limiter,
            fleet_key: std::sync::OnceLock::new(),
            fleet_cache: Mutex::new(None),
            siem: crate::siem::Queue::default(),
        })
    }

    /// Forgets the served fleet set: this replica changed it, so the next
    /// fetch reads the new version at once (other replicas within a second).
    pub fn fleet_changed(&self) {
        *self.fleet_cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The fleet signing key from the data directory, made on first use.
    pub fn fleet_key(&self) -> anyhow::Result<Arc<crate::fleet::SigningKey>> {
        if let Some(k) = self.fleet_key.get() {
            return Ok(k.clone());
        }
        let k = Arc::new(crate::fleet::SigningKey::load_or_create(&self.settings.data_dir)?);
        Ok(self.fleet_key.get_or_init(|| k).clone())
    }

    /// Starts a session for an analyst who logged in with `token`; returns
    /// the cookie value.
    pub fn new_session(&self, name: &str, token: &str) -> String {
        let id = random_hex();
        let s = Session {
            name: name.to_string(),
            csrf: random_hex(),
            token_hash: crate::store::token_hash(token),
            expires: Instant::now() + Duration::from_secs(12 * 3600),
        };
        let mut m = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let t = Instant::now();
        m.retain(|_, s| s.expires > t);
        m.insert(id.clone(), s);
        id
    }

    /// The session a cookie names, if still valid: not expired, and the
    /// analyst token it was opened with still valid (checked in the
    /// database on every request, so a revocation ends it at once, on every
    /// replica). A session whose token is gone is forgotten.
    pub async fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let s = {
            let m = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            m.get(&id).filter(|s| s.expires > Instant::now()).cloned()?
        };
        match self.store.token_by_hash(&s.token_hash).await {
            Ok(Some((name, crate::store::Role::Analyst))) if name == s.name => Some(s),
            Ok(_) => {
                self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                None
            }
            // The database is not answering: no session (fail closed).
            Err(_) => None,
        }
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

#[cfg(test)]
mod tests {
    use super::RateLimiter;

    #[test]
    fn buckets_refuse_past_the_burst_and_stay_bounded() {
        let l = RateLimiter::new(1.0, 2, 3);
        assert_eq!(l.take("a"), Ok(()));
        assert_eq!(l.take("a"), Ok(()));
        assert_eq!(l.take("a"), Err(1), "the burst is spent; one a second after");
        assert_eq!(l.exhausted("a"), Some(1));
        assert_eq!(l.take("b"), Ok(()), "keys are separate");
        assert_eq!(l.exhausted("nobody"), None);
        // Hostile keys (client addresses) never grow it past max_keys.
        for i in 0..1000 {
            let _ = l.take(&format!("k{i}"));
        }
        assert!(l.buckets.lock().unwrap().len() <= 3);
    }
}
