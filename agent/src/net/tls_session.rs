//! Stratum inside TLS, told from record sizes and timing alone: the content
//! is encrypted, and common miners send no server name. What stays visible
//! is the shape of a mining session: after the login the pool pushes a new
//! job now and then without being asked (records of nearly the same size,
//! since a job is a fixed set of hex fields), the miner answers with small
//! submits and keepalives, and the session lasts and carries little.
//!
//! Request/response traffic (HTTP/1.1 and HTTP/2, gRPC unary calls,
//! database queries) answers the client within a round trip, so its server
//! records are never unasked; heartbeats and pings are unasked but tiny;
//! downloads are made of full-size records, which the capture never even
//! passes up (see `sensors/capture.rs`). What remains alike — server
//! streams of similar-sized messages (websocket feeds, gRPC server
//! streaming, message-queue deliveries) — is why this is a heuristic that
//! weighs `suspicious` alone (see signatures/RULES.md).
//!
//! Pure and bounded: a fixed-size summary per session, updated per record.

/// Records larger than this are not looked at (bulk data; the capture's
/// kernel filter drops them before they reach user space).
pub const MAX_RECORD_SEEN: usize = 1400;
/// A server record is unasked when neither side sent a record in the
/// preceding this many milliseconds (a reply follows its request within a
/// round trip; a burst of records counts once).
pub const QUIET_MS: u64 = 1000;
/// Unasked server records smaller than this are heartbeats or pings, not
/// jobs (TLS framing included: a CryptoNote job is ~350 bytes, a Bitcoin
/// `mining.notify` ~400 to 1,200).
pub const MIN_PUSH_BYTES: usize = 120;
/// Pushes needed before the session is reported.
pub const MIN_PUSHES: u64 = 4;
/// The largest push may be at most this many times the smallest (jobs are
/// alike; a feed of arbitrary messages is not).
pub const PUSH_SPREAD: u64 = 2;

/// What a session looked like when it was judged stratum-shaped.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    /// Unasked server records.
    pub pushes: u64,
    /// Smallest and largest push (bytes).
    pub push_bytes: [u64; 2],
    /// Mean milliseconds between pushes.
    pub push_interval_ms: u64,
    /// Records the client sent.
    pub client_records: u64,
    /// Milliseconds from the ClientHello to the last push.
    pub age_ms: u64,
}

/// One TLS session's running summary.
#[derive(Debug, Clone)]
pub struct Session {
    /// The ClientHello's server name, if any.
    pub sni: Option<String>,
    /// The client's JA4 fingerprint.
    pub ja4: String,
    started_ms: u64,
    last_any_ms: u64,
    last_client_ms: u64,
    answers_after_push: u64,
    client_records: u64,
    server_records: u64,
    pushes: u64,
    push_min: u64,
    push_max: u64,
    first_push_ms: u64,
    last_push_ms: u64,
    /// Pushes that broke the pattern (too small or too unlike the others).
    odd_pushes: u64,
    reported: bool,
}

impl Session {
    /// A session whose ClientHello was seen at `now_ms`.
    pub fn new(sni: Option<String>, ja4: String, now_ms: u64) -> Self {
        Session {
            sni,
            ja4,
            started_ms: now_ms,
            last_any_ms: now_ms,
            last_client_ms: 0,
            answers_after_push: 0,
            client_records: 0,
            server_records: 0,
            pushes: 0,
            push_min: u64::MAX,
            push_max: 0,
            first_push_ms: 0,
            last_push_ms: 0,
            odd_pushes: 0,
            reported: false,
        }
    }

    /// One TLS application-data segment of `len` bytes from the client or
    /// the server at `now_ms`; the session's shape once (the first time it
    /// looks like stratum), else `None`.
    pub fn record(&mut self, from_client: bool, len: usize, now_ms: u64) -> Option<Shape> {
        if len > MAX_RECORD_SEEN {
            return None;
        }
        let quiet = now_ms.saturating_sub(self.last_any_ms) >= QUIET_MS;
        self.last_any_ms = self.last_any_ms.max(now_ms);
        if from_client {
            self.client_records += 1;
            self.last_client_ms = now_ms;
            return None;
        }
        self.server_records += 1;
        if self.client_records > 0 && now_ms.saturating_sub(self.last_client_ms) < QUIET_MS {
            // an answer (to the login, a submit, a keepalive)
            if self.pushes > 0 {
                self.answers_after_push += 1;
            }
            return self.shape();
        }
        // the tail of a burst, or before the client said anything
        if !quiet || self.client_records == 0 {
            return None;
        }
        let n = len as u64;
        if len < MIN_PUSH_BYTES {
            self.odd_pushes += 1;
            return None;
        }
        let (lo, hi) = (self.push_min.min(n), self.push_max.max(n));
        if self.pushes > 0 && hi > lo * PUSH_SPREAD {
            self.odd_pushes += 1;
            return None;
        }
        if self.pushes == 0 {
            self.first_push_ms = now_ms;
        }
        self.pushes += 1;
        (self.push_min, self.push_max) = (lo, hi);
        self.last_push_ms = now_ms;
        self.shape()
    }

    fn shape(&mut self) -> Option<Shape> {
        // most unasked records must be job-like, and the client must be
        // answered after the pushes began (a miner's submits and
        // keepalives are; a feed's reader says nothing)
        if self.reported || self.pushes < MIN_PUSHES || self.odd_pushes * 2 > self.pushes || self.answers_after_push == 0 {
            return None;
        }
        self.reported = true;
        Some(Shape {
            pushes: self.pushes,
            push_bytes: [self.push_min, self.push_max],
            push_interval_ms: (self.last_push_ms - self.first_push_ms) / (self.pushes - 1),
            client_records: self.client_records,
            age_ms: self.last_push_ms.saturating_sub(self.started_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays a script of (ms, from_client, bytes); the shape if reported.
    fn play(script: &[(u64, bool, usize)]) -> Option<Shape> {
        let mut s = Session::new(None, "t13i181000_x_y".into(), 0);
        let mut out = None;
        for &(t, c, n) in script {
            if let Some(shape) = s.record(c, n, t) {
                assert!(out.is_none(), "reported twice");
                out = Some(shape);
            }
        }
        out
    }

    /// A miner: login + answer, then a job every `every` ms and a submit
    /// (answered at once) between jobs.
    fn miner(every: u64, jobs: usize) -> Vec<(u64, bool, usize)> {
        let mut v = vec![(50, true, 230), (60, false, 420)];
        for i in 1..=jobs as u64 {
            let t = i * every;
            v.push((t, false, 350 + (i as usize % 3) * 8));
            v.push((t + every / 2, true, 190));
            v.push((t + every / 2 + 20, false, 80));
        }
        v
    }

    #[test]
    fn a_mining_session_is_reported_once_with_its_shape() {
        let shape = play(&miner(30_000, 8)).expect("stratum-shaped");
        assert_eq!(shape.pushes, MIN_PUSHES);
        assert_eq!(shape.push_bytes, [350, 366]);
        assert_eq!(shape.push_interval_ms, 30_000);
        assert!(shape.client_records >= 4 && shape.age_ms >= 90_000, "{shape:?}");
        // fast pushes (a test pool) as well
        assert!(play(&miner(3_000, 6)).is_some());
    }

    #[test]
    fn request_response_traffic_is_not() {
        // HTTP/2 or a database: every server record answers a client record
        let mut v = vec![];
        for i in 0..200u64 {
            v.push((i * 2000, true, 300));
            v.push((i * 2000 + 30, false, 900));
        }
        assert_eq!(play(&v), None);
    }

    #[test]
    fn heartbeats_and_a_pure_feed_are_not() {
        // server pings every 30 s (tiny), answered by client pongs
        let mut v = vec![(0, true, 200), (10, false, 300)];
        for i in 1..50u64 {
            v.push((i * 30_000, false, 40));
            v.push((i * 30_000 + 10, true, 40));
        }
        assert_eq!(play(&v), None);
        // a ticker feed: the server pushes, nothing is ever answered
        let mut v = vec![(0, true, 200)];
        for i in 1..50u64 {
            v.push((i * 2_000, false, 300));
        }
        assert_eq!(play(&v), None);
    }

    #[test]
    fn messages_of_any_size_are_not() {
        // a feed of messages of varied size, with acknowledgements
        let mut v = vec![(0, true, 200), (10, false, 300)];
        for (i, n) in [150usize, 900, 200, 1300, 160, 700, 1200, 130, 600, 1000].iter().enumerate() {
            let t = (i as u64 + 1) * 5_000;
            v.push((t, false, *n));
            v.push((t + 1_500, true, 60));
            v.push((t + 1_520, false, 60));
        }
        assert_eq!(play(&v), None);
    }

    #[test]
    fn bulk_records_and_bursts_are_ignored() {
        // downloads: full-size records are not looked at at all
        let mut s = Session::new(None, String::new(), 0);
        s.record(true, 200, 0);
        for i in 1..1000u64 {
            assert_eq!(s.record(false, 16_401, i * 1500), None);
        }
        assert_eq!(s.server_records, 0);
        // a burst of records counts as one push
        let mut v = vec![(0, true, 200), (10, false, 300)];
        for i in 1..10u64 {
            for k in 0..5 {
                v.push((i * 10_000 + k * 5, false, 350));
            }
        }
        assert_eq!(play(&v), None, "bursts, never answered");
        // pushes are not reported before the client is answered again
        let mut v = vec![(0, true, 200), (10, false, 300)];
        for i in 1..10u64 {
            v.push((i * 10_000, false, 350));
        }
        assert_eq!(play(&v), None);
        v.push((100_000, true, 190));
        v.push((100_020, false, 80));
        assert_eq!(play(&v).map(|s| s.pushes), Some(9));
    }
}
