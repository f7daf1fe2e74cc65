//! Recognise mining protocols in the first bytes of one direction of a TCP
//! flow: Stratum v1 and its Ethereum/KawPow variants, XMRig's CryptoNote
//! JSON-RPC, ETHPROXY, getwork/getblocktemplate over HTTP, and (by sizes
//! only) the Stratum V2 Noise handshake.
//!
//! Framing handled (see `shared/reference/stratum.md`): one JSON object per
//! line ended by `\n` (`\r\n`, `\n\n` too); several lines in one buffer; a
//! last line cut mid-way; a leading PROXY protocol v1 line or v2 header;
//! leading `\x00` keepalive bytes and whitespace; any key order and spacing;
//! `id` of any type; method names in any case.
//!
//! Complete lines are parsed strictly with `serde_json`; a line that is cut
//! (or that strict parsing rejects) goes through a tolerant prefix parser
//! that closes whatever is still open and marks values it could not read
//! in full as unknown. A line is only classified when the method and the
//! params shape that identify the dialect are in the bytes seen.
//!
//! Everything here is pure: bytes in, owned values out, no panics on any
//! input, bounded work (at most [`MAX_SCAN`] bytes and [`MAX_LINES`] lines).

use serde::Serialize;
use serde_json::{Map, Value};

/// Most bytes of a buffer looked at.
pub const MAX_SCAN: usize = 64 * 1024;
/// Most lines of a buffer looked at.
pub const MAX_LINES: usize = 64;
/// Deepest JSON nesting the tolerant parser follows.
const MAX_DEPTH: usize = 32;
/// Longest agent/login/worker string kept (in characters).
const MAX_FIELD: usize = 256;

/// Ports of Stratum V2: pool, translator proxy, job declaration.
pub const STRATUM_V2_PORTS: [u16; 3] = [34254, 34255, 34264];

/// What one direction of a TCP flow, as far as it has been seen (the first
/// bytes, maybe cut mid-line), shows of a mining protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StratumHit {
    /// `"stratum-v1"`, `"cryptonote"`, `"ethproxy"`, `"ethereumstratum/1.0.0"`,
    /// `"ethereumstratum/2.0.0"`, `"kawpow"` or `"getwork"`.
    pub dialect: &'static str,
    /// The JSON-RPC method that gave it away (lowercased), or for a result
    /// without a method the request it answers, e.g. `"mining.subscribe(result)"`,
    /// `"login(result)"`, `"eth_getwork(result)"`; for HTTP getwork seen only
    /// by its headers, the header name (`"x-mining-extensions"`,
    /// `"x-stratum"`, `"x-long-polling"`, `"x-roll-ntime"`).
    pub method: String,
    /// Miner agent string: XMRig's `params.agent`, `mining.subscribe`
    /// `params[0]`, `mining.hello` `params.agent`, HTTP `User-Agent`.
    pub agent: Option<String>,
    /// Wallet or login (`params.login` of a CryptoNote login,
    /// `mining.authorize`/`mining.submit` `params[0]`, `eth_submitLogin`
    /// `params[0]`, getblocktemplate `wallet_address`) without a `.worker` suffix.
    pub login: Option<String>,
    /// Worker/rig name: the part after the first `.` of a login, ETHPROXY's
    /// `worker` field, or XMRig's `rigid`.
    pub worker: Option<String>,
    /// True when the bytes are what the miner sent (requests), false when
    /// they are pool pushes or results.
    pub from_client: bool,
}

/// Classify the first bytes of one direction of a TCP flow.
///
/// Returns the strongest mining signal among all complete lines and the
/// unfinished last line, with agent/login/worker filled from the other lines
/// of the same buffer when the strongest one lacks them. Returns `None` for
/// anything that is not a mining protocol: ordinary JSON-RPC (`eth_blockNumber`,
/// LSP), a web-API `login` whose params are not XMRig's object, plain HTTP,
/// binary data.
///
/// ```
/// use rigwatch_agent::net::stratum::classify;
/// let hit = classify(br#"{"id": 1, "method": "mining.subscribe", "params": ["cpuminer/2.5.1"]}
/// "#).unwrap();
/// assert_eq!(hit.dialect, "stratum-v1");
/// assert_eq!(hit.agent.as_deref(), Some("cpuminer/2.5.1"));
/// assert!(hit.from_client);
/// ```
pub fn classify(bytes: &[u8]) -> Option<StratumHit> {
    let bytes = bytes.get(..MAX_SCAN).unwrap_or(bytes);
    let rest = skip_preamble(bytes)?;
    if is_http(rest) {
        return classify_http(rest).map(|c| c.hit);
    }
    let mut cands: Vec<Cand> = Vec::new();
    let mut first = true;
    let mut n = 0usize;
    for raw in rest.split(|&b| b == b'\n') {
        let line = trim(raw);
        if line.is_empty() {
            continue;
        }
        if first {
            // a mining flow starts with a JSON object
            if line.first() != Some(&b'{') {
                return None;
            }
            first = false;
        }
        n += 1;
        if n > MAX_LINES {
            break;
        }
        if let Some(c) = classify_line(line) {
            cands.push(c);
        }
    }
    merge(cands)
}

/// Whether first-write sizes look like the Stratum V2 Noise handshake.
///
/// Stratum V2 is encrypted from its first byte: the client's first write is
/// exactly 64 bytes (an ephemeral key) and the server answers 234 bytes.
/// True when `first_client_len == 64 && first_server_len == 234` on any port,
/// or on the Stratum V2 ports (34254, 34255, 34264) when the client wrote 64
/// bytes and the server has not answered yet (`first_server_len == 0`).
///
/// This is a **weak** signal: any protocol can happen to open with those sizes,
/// and the ports are only conventions. Use it together with entropy, pool
/// addresses or process evidence, never alone.
pub fn stratum_v2_handshake(first_client_len: usize, first_server_len: usize, port: u16) -> bool {
    if first_client_len != 64 {
        return false;
    }
    first_server_len == 234 || (first_server_len == 0 && STRATUM_V2_PORTS.contains(&port))
}

// ---------------------------------------------------------------------------
// candidates and merging

/// A hit with how strongly it identifies mining.
struct Cand {
    hit: StratumHit,
    score: u8,
}

fn cand(dialect: &'static str, method: &str, from_client: bool, score: u8) -> Cand {
    Cand {
        hit: StratumHit {
            dialect,
            method: method.to_string(),
            agent: None,
            login: None,
            worker: None,
            from_client,
        },
        score,
    }
}

/// Dialects that refine the generic `stratum-v1` (seen on another line of the same stream).
fn refines_v1(d: &str) -> bool {
    matches!(d, "kawpow" | "ethereumstratum/1.0.0")
}

fn merge(cands: Vec<Cand>) -> Option<StratumHit> {
    let best_i = cands.iter().enumerate().fold(None::<(usize, u8)>, |acc, (i, c)| match acc {
        Some((_, s)) if s >= c.score => acc,
        _ => Some((i, c.score)),
    })?;
    let mut hit = cands.get(best_i.0)?.hit.clone();
    for c in &cands {
        if c.hit.from_client != hit.from_client {
            continue;
        }
        if hit.agent.is_none() {
            hit.agent.clone_from(&c.hit.agent);
        }
        if hit.login.is_none() && c.hit.login.is_some() {
            hit.login.clone_from(&c.hit.login);
            if hit.worker.is_none() {
                hit.worker.clone_from(&c.hit.worker);
            }
        }
        if hit.worker.is_none() {
            hit.worker.clone_from(&c.hit.worker);
        }
        if hit.dialect == "stratum-v1" && refines_v1(c.hit.dialect) {
            hit.dialect = c.hit.dialect;
        }
    }
    Some(hit)
}

// ---------------------------------------------------------------------------
// framing

fn trim(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if *first == 0 || first.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = b {
        if *last == 0 || last.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    b
}

fn trim_start(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if *first == 0 || first.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    b
}

const PROXY_V2_SIG: &[u8] = b"\r\n\r\n\x00\r\nQUIT\n";

/// Skip keepalive NULs, whitespace and a PROXY protocol header. `None` when
/// nothing is left after them.
fn skip_preamble(bytes: &[u8]) -> Option<&[u8]> {
    let mut b = bytes;
    if b.starts_with(PROXY_V2_SIG) {
        let len = u16::from_be_bytes([*b.get(14)?, *b.get(15)?]) as usize;
        b = b.get(16 + len..)?;
    }
    b = trim_start(b);
    if b.starts_with(b"PROXY TCP4 ") || b.starts_with(b"PROXY TCP6 ") || b.starts_with(b"PROXY UNKNOWN") {
        let nl = b.iter().position(|&c| c == b'\n')?;
        b = b.get(nl + 1..)?;
    }
    let b = trim_start(b);
    if b.is_empty() {
        None
    } else {
        Some(b)
    }
}

/// Parse one line, strictly when it is complete JSON, tolerantly otherwise.
fn classify_line(line: &[u8]) -> Option<Cand> {
    if line.first() != Some(&b'{') {
        return None;
    }
    match serde_json::from_slice::<Value>(line) {
        Ok(v) => classify_value(&v, false),
        Err(_) => {
            // cut JSON (normally the last line, but a line may also be cut by
            // the scan limit), or a complete object followed by junk
            let (v, cut) = tolerant_parse(line)?;
            classify_value(&v, cut)
        }
    }
}

// ---------------------------------------------------------------------------
// JSON classification

/// Field of an object, key compared case-insensitively.
fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key)
        .or_else(|| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
}

/// The key is present with a string, or (in a cut line) with a value that
/// could not be read in full.
fn has_str(obj: &Map<String, Value>, key: &str, cut: bool) -> bool {
    match field(obj, key) {
        Some(Value::String(_)) => true,
        Some(Value::Null) => cut,
        _ => false,
    }
}

/// The key is present with any value (a cut one included).
fn has_any(obj: &Map<String, Value>, key: &str, cut: bool) -> bool {
    match field(obj, key) {
        Some(Value::Null) => cut,
        Some(_) => true,
        None => false,
    }
}

fn str_field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    field(obj, key).and_then(Value::as_str)
}

/// Params that are an array, or absent / unknown (cut) where `lenient`.
fn params_array(params: Option<&Value>, lenient: bool) -> Option<&[Value]> {
    match params {
        Some(Value::Array(a)) => Some(a.as_slice()),
        None | Some(Value::Null) if lenient => Some(&[]),
        _ => None,
    }
}

/// Keep printable characters only, trimmed and bounded; `None` when empty.
fn clean(s: &str) -> Option<String> {
    let s: String = s.chars().filter(|c| !c.is_control()).take(MAX_FIELD).collect();
    let s = s.trim();
    if s.is_empty() {
        None
    } else {
        Some(s.to_string())
    }
}

/// Split `wallet.worker` into its parts (an e-mail login is kept whole).
fn split_login(s: &str) -> (Option<String>, Option<String>) {
    let s = s.trim();
    if s.contains('@') {
        return (clean(s), None);
    }
    match s.split_once('.') {
        Some((a, b)) if !a.trim().is_empty() => (clean(a), clean(b)),
        _ => (clean(s), None),
    }
}

fn set_login(c: &mut Cand, login: Option<&str>) {
    if let Some(l) = login {
        let (l, w) = split_login(l);
        c.hit.login = l;
        if c.hit.worker.is_none() {
            c.hit.worker = w;
        }
    }
}

fn classify_value(v: &Value, cut: bool) -> Option<Cand> {
    let obj = v.as_object()?;
    match field(obj, "method") {
        Some(Value::String(m)) => classify_method(&m.trim().to_ascii_lowercase(), obj, cut),
        Some(Value::Null) | None => classify_result(obj, cut),
        Some(_) => None,
    }
}

fn any_str_starts_ci(items: &[Value], prefix: &str) -> bool {
    items.iter().any(|p| p.as_str().is_some_and(|s| starts_with_ci(s.trim(), prefix)))
}

fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.as_bytes()
        .get(..prefix.len())
        .is_some_and(|h| h.eq_ignore_ascii_case(prefix.as_bytes()))
}

fn classify_method(m: &str, obj: &Map<String, Value>, cut: bool) -> Option<Cand> {
    let params = field(obj, "params");
    let pobj = params.and_then(Value::as_object);
    let c = match m {
        // ---- Stratum v1 family, client side
        "mining.subscribe" => {
            let p = params_array(params, true)?;
            let dialect = if any_str_starts_ci(p, "ethereumstratum/1") {
                "ethereumstratum/1.0.0"
            } else {
                "stratum-v1"
            };
            let mut c = cand(dialect, m, true, 90);
            c.hit.agent = p.first().and_then(Value::as_str).and_then(clean);
            c
        }
        "mining.authorize" | "mining.submit" => {
            let p = params_array(params, true)?;
            let mut c = cand("stratum-v1", m, true, if m == "mining.authorize" { 90 } else { 80 });
            set_login(&mut c, p.first().and_then(Value::as_str));
            c
        }
        "mining.configure" | "mining.extranonce.subscribe" => {
            params_array(params, true)?;
            cand("stratum-v1", m, true, 70)
        }
        "mining.suggest_difficulty" | "mining.suggest_target" | "mining.get_transactions" | "mining.multi_version" => {
            params_array(params, true)?;
            cand("stratum-v1", m, true, 50)
        }
        // ---- EthereumStratum/2.0.0
        "mining.hello" => {
            let mut c = cand("ethereumstratum/2.0.0", m, true, 90);
            match params {
                Some(Value::Object(p)) => c.hit.agent = str_field(p, "agent").and_then(clean),
                None | Some(Value::Null) => {}
                _ => return None,
            }
            c
        }
        // ---- Stratum v1 family, pool side
        "mining.notify" => {
            let p = params_array(params, true)?;
            // NiceHash EthereumStratum/1.0.0: ["job","seedhash","headerhash",true]
            let es1 = p.len() == 4 && p.get(3).is_some_and(Value::is_boolean);
            cand(if es1 { "ethereumstratum/1.0.0" } else { "stratum-v1" }, m, false, 80)
        }
        "mining.set_difficulty" => {
            params_array(params, true)?;
            cand("stratum-v1", m, false, 75)
        }
        "mining.set_extranonce" | "mining.set_version_mask" => {
            params_array(params, true)?;
            cand("stratum-v1", m, false, 70)
        }
        "mining.ping" => {
            params_array(params, true)?;
            cand("stratum-v1", m, false, 40)
        }
        "mining.set_target" => {
            params_array(params, true)?;
            cand("kawpow", m, false, 85)
        }
        "mining.set" => {
            // EthereumStratum/2.0.0 pool push: {"epoch":..,"target":..,"algo":..}
            let p = pobj?;
            if !(has_any(p, "target", cut) || has_any(p, "epoch", cut)) {
                return None;
            }
            cand("ethereumstratum/2.0.0", m, false, 75)
        }
        // ---- CryptoNote (XMRig)
        "login" => {
            // XMRig: {"login":..,"pass":..,"agent":..,"rigid":..,"algo":[..]}.
            // A web API's {"login":"alice","pass":"pw"} has the same keys, so
            // without an XMRig-only key the login must look like a wallet.
            let p = pobj?;
            if !has_str(p, "login", cut) {
                return None;
            }
            let xmrig_keys = ["agent", "rigid", "algo"].iter().any(|k| has_any(p, k, cut));
            let wallet = str_field(p, "login").is_some_and(looks_like_cryptonote_wallet);
            let unknown = cut && matches!(field(p, "login"), Some(Value::Null));
            if !(xmrig_keys || wallet || unknown) {
                return None;
            }
            let mut c = cand("cryptonote", m, true, 100);
            c.hit.agent = str_field(p, "agent").and_then(clean);
            c.hit.worker = str_field(p, "rigid").and_then(clean);
            set_login(&mut c, str_field(p, "login"));
            c
        }
        "submit" => {
            let p = pobj?;
            if !(has_str(p, "job_id", cut) && has_str(p, "nonce", cut) && has_str(p, "result", cut)) {
                return None;
            }
            cand("cryptonote", m, true, 70)
        }
        "keepalived" => {
            let p = pobj?;
            if !has_any(p, "id", cut) {
                return None;
            }
            cand("cryptonote", m, true, 50)
        }
        "job" => {
            let p = pobj?;
            if !(has_str(p, "blob", cut) && has_any(p, "job_id", cut) && has_any(p, "target", cut)) {
                return None;
            }
            cand("cryptonote", m, false, 80)
        }
        // ---- ETHPROXY
        "eth_submitlogin" => {
            let p = params_array(params, true)?;
            let mut c = cand("ethproxy", m, true, 90);
            c.hit.worker = str_field(obj, "worker").and_then(clean);
            set_login(&mut c, p.first().and_then(Value::as_str));
            c
        }
        "eth_getwork" => {
            params_array(params, true)?;
            cand("ethproxy", m, true, 60)
        }
        "eth_submitwork" => {
            let p = params_array(params, cut)?;
            if !(cut || leading_0x_hex(p, 3)) {
                return None;
            }
            cand("ethproxy", m, true, 70)
        }
        "eth_submithashrate" => {
            let p = params_array(params, cut)?;
            if !(cut || leading_0x_hex(p, 2)) {
                return None;
            }
            cand("ethproxy", m, true, 60)
        }
        _ => return None,
    };
    Some(c)
}

/// A CryptoNote (Monero-family) address, maybe followed by `.worker` or
/// `+difficulty`: 90 to 110 base58 characters before the first other one.
fn looks_like_cryptonote_wallet(s: &str) -> bool {
    const B58: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let n = s.trim().bytes().take_while(|b| B58.contains(b)).count();
    (90..=110).contains(&n)
}

/// The first `n` params are all `0x` hex strings.
fn leading_0x_hex(p: &[Value], n: usize) -> bool {
    p.len() >= n && p.iter().take(n).all(|x| x.as_str().is_some_and(is_0x_hex))
}

/// `0x` followed by at least one hex digit and nothing else.
fn is_0x_hex(s: &str) -> bool {
    let s = s.trim();
    match s.get(..2) {
        Some(p) if p.eq_ignore_ascii_case("0x") => {
            let h = &s[2..];
            !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit())
        }
        _ => false,
    }
}

/// Significant hex digits of a `0x` number (leading zeros dropped).
fn hex_digits(s: &str) -> usize {
    s.trim().get(2..).map_or(0, |h| h.trim_start_matches('0').len())
}

fn classify_result(obj: &Map<String, Value>, cut: bool) -> Option<Cand> {
    match field(obj, "result")? {
        Value::Array(r) => {
            // Stratum v1 subscribe result:
            // [[["mining.set_difficulty",..],["mining.notify",..]],"extranonce1",4]
            // or the flat form [["mining.notify","sub"],"extranonce1",4]
            if let Some(Value::Array(subs)) = r.first() {
                let nested = subs.iter().any(|s| {
                    s.as_array()
                        .and_then(|a| a.first())
                        .and_then(Value::as_str)
                        .is_some_and(|m| starts_with_ci(m, "mining."))
                });
                let flat = subs.first().and_then(Value::as_str).is_some_and(|m| starts_with_ci(m, "mining."));
                let extranonce = match r.get(1) {
                    Some(Value::String(_)) => true,
                    Some(Value::Null) | None => cut,
                    _ => false,
                };
                if (nested || flat) && extranonce {
                    let es1 = flat && any_str_starts_ci(subs, "ethereumstratum/1");
                    return Some(cand(
                        if es1 { "ethereumstratum/1.0.0" } else { "stratum-v1" },
                        "mining.subscribe(result)",
                        false,
                        85,
                    ));
                }
                return None;
            }
            // ETHPROXY work: ["0x<header>","0x<seed>","0x<target>"(,"0x<height>")]
            if (3..=4).contains(&r.len()) {
                let s: Vec<&str> = r.iter().filter_map(Value::as_str).collect();
                if s.len() == r.len()
                    && s.iter().all(|x| is_0x_hex(x))
                    && s.iter().take(2).all(|x| x.trim().len() == 66)
                    && s.get(2).is_some_and(|t| t.trim().len() <= 66 && hex_digits(t) <= 60)
                    && !matches!(s.get(3), Some(h) if hex_digits(h) > 16)
                {
                    return Some(cand("ethproxy", "eth_getwork(result)", false, 70));
                }
            }
            None
        }
        Value::Object(r) => {
            // CryptoNote login result: {"id":..,"job":{"blob":..,"job_id":..,"target":..},"status":"OK"}
            if let Some(Value::Object(job)) = field(r, "job") {
                if has_str(job, "blob", cut) {
                    return Some(cand("cryptonote", "login(result)", false, 85));
                }
            }
            // EthereumStratum/2.0.0 hello result
            if str_field(r, "proto").is_some_and(|p| starts_with_ci(p.trim(), "ethereumstratum/2")) {
                return Some(cand("ethereumstratum/2.0.0", "mining.hello(result)", false, 85));
            }
            // getwork result: {"midstate":..,"data":..,"hash1":..,"target":..}
            if has_str(r, "data", cut) && has_str(r, "target", cut) && (has_str(r, "midstate", cut) || has_str(r, "hash1", cut)) {
                return Some(cand("getwork", "getwork(result)", false, 70));
            }
            None
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// getwork over HTTP

fn is_http(b: &[u8]) -> bool {
    b.starts_with(b"POST ") || b.starts_with(b"GET ") || b.starts_with(b"HTTP/1.")
}

/// End of the header block and start of the body, if the blank line is there.
fn split_head(b: &[u8]) -> (&[u8], Option<&[u8]>) {
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, i + 4));
    let lf = b.windows(2).position(|w| w == b"\n\n").map(|i| (i, i + 2));
    let end = match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    };
    match end {
        Some((h, body)) => (b.get(..h).unwrap_or(b), b.get(body..)),
        None => (b, None),
    }
}

fn classify_http(b: &[u8]) -> Option<Cand> {
    let (head, body) = split_head(b);
    let mut lines = head.split(|&c| c == b'\n').map(trim);
    let start = lines.next()?;
    let response = start.starts_with(b"HTTP/1.");
    if !response {
        // "POST /path HTTP/1.1"
        let s = std::str::from_utf8(start).ok()?;
        let mut parts = s.split(' ');
        let _method = parts.next()?;
        let path = parts.next()?;
        if !(path.starts_with('/') || path.starts_with("http://")) {
            return None;
        }
        // the request line may be all there is so far
        if let Some(v) = parts.next() {
            if !v.starts_with("HTTP/1.") && !"HTTP/1.".starts_with(v) {
                return None;
            }
        }
    }
    let mut user_agent = None;
    let mut mining_header = None;
    for l in lines {
        let Some(colon) = l.iter().position(|&c| c == b':') else { continue };
        let name = l.get(..colon).unwrap_or_default();
        let value = l.get(colon + 1..).unwrap_or_default();
        let name = String::from_utf8_lossy(trim(name)).to_ascii_lowercase();
        match name.as_str() {
            "user-agent" => user_agent = clean(&String::from_utf8_lossy(trim(value))),
            "x-mining-extensions" if !response => mining_header = mining_header.or(Some("x-mining-extensions")),
            "x-stratum" if response => mining_header = Some("x-stratum"),
            "x-long-polling" if response => mining_header = mining_header.or(Some("x-long-polling")),
            "x-roll-ntime" if response => mining_header = mining_header.or(Some("x-roll-ntime")),
            _ => {}
        }
    }
    let mut c = body.and_then(|body| http_body(body, response));
    if c.is_none() {
        c = mining_header.map(|h| cand("getwork", h, !response, 70));
    }
    let mut c = c?;
    if !response {
        c.hit.agent = user_agent;
    }
    Some(c)
}

fn http_body(body: &[u8], response: bool) -> Option<Cand> {
    let body = trim(body);
    if body.first() != Some(&b'{') {
        return None;
    }
    let (v, cut) = match serde_json::from_slice::<Value>(body) {
        Ok(v) => (v, false),
        Err(_) => tolerant_parse(body)?,
    };
    let obj = v.as_object()?;
    // getwork, or ETHPROXY methods sent to a node's HTTP JSON-RPC (ethminer -G)
    let over_http = |c: &Cand| matches!(c.hit.dialect, "getwork" | "ethproxy");
    if response {
        return classify_result(obj, cut).filter(over_http);
    }
    let method = str_field(obj, "method")?.trim().to_ascii_lowercase();
    match method.as_str() {
        "eth_getwork" | "eth_submitwork" | "eth_submithashrate" | "eth_submitlogin" => classify_method(&method, obj, cut).filter(over_http),
        "getwork" => Some(cand("getwork", "getwork", true, 70)),
        "getblocktemplate" | "get_block_template" => {
            let mut c = cand("getwork", &method, true, 75);
            // XMRig daemon mode: params {"wallet_address":..,"reserve_size":..}
            let params = field(obj, "params");
            let p = match params {
                Some(Value::Object(p)) => Some(p),
                Some(Value::Array(a)) => a.first().and_then(Value::as_object),
                _ => None,
            };
            if let Some(w) = p.and_then(|p| str_field(p, "wallet_address")) {
                c.hit.login = clean(w);
                c.score = 80;
            }
            Some(c)
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// tolerant JSON prefix parser

/// Parse a JSON object from a prefix that may be cut anywhere. Containers
/// still open at the end are closed; a scalar cut mid-way becomes `null`
/// ("present, value unknown"), as does the value of a key whose value had
/// not started. Returns the value and whether the input was cut. `None` on
/// a syntax error or nesting deeper than `MAX_DEPTH`.
fn tolerant_parse(b: &[u8]) -> Option<(Value, bool)> {
    let mut p = Tolerant { b, pos: 0, cut: false };
    let v = p.value(0).ok()??;
    if !v.is_object() {
        return None;
    }
    Some((v, p.cut))
}

struct Tolerant<'a> {
    b: &'a [u8],
    pos: usize,
    cut: bool,
}

/// A syntax error (not JSON).
struct Bad;

impl Tolerant<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    /// `Ok(None)`: the input ended before a value started.
    fn value(&mut self, depth: usize) -> Result<Option<Value>, Bad> {
        if depth > MAX_DEPTH {
            return Err(Bad);
        }
        self.ws();
        let Some(c) = self.peek() else {
            self.cut = true;
            return Ok(None);
        };
        match c {
            b'{' => self.object(depth).map(Some),
            b'[' => self.array(depth).map(Some),
            b'"' => self.string().map(|s| Some(s.map_or(Value::Null, Value::String))),
            b't' => self.literal(b"true", Value::Bool(true)).map(Some),
            b'f' => self.literal(b"false", Value::Bool(false)).map(Some),
            b'n' => self.literal(b"null", Value::Null).map(Some),
            b'-' | b'0'..=b'9' => self.number().map(Some),
            _ => Err(Bad),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, Bad> {
        self.pos += 1; // '{'
        let mut map = Map::new();
        let mut first = true;
        loop {
            self.ws();
            let Some(c) = self.peek() else {
                self.cut = true;
                return Ok(Value::Object(map));
            };
            if c == b'}' {
                self.pos += 1;
                return Ok(Value::Object(map));
            }
            if !first {
                if c != b',' {
                    return Err(Bad);
                }
                self.pos += 1;
                self.ws();
            }
            first = false;
            match self.peek() {
                None => {
                    self.cut = true;
                    return Ok(Value::Object(map));
                }
                Some(b'"') => {}
                Some(_) => return Err(Bad),
            }
            let Some(key) = self.string()? else {
                return Ok(Value::Object(map)); // key cut
            };
            self.ws();
            match self.peek() {
                None => {
                    self.cut = true;
                    map.insert(key, Value::Null);
                    return Ok(Value::Object(map));
                }
                Some(b':') => self.pos += 1,
                Some(_) => return Err(Bad),
            }
            let v = self.value(depth + 1)?;
            map.insert(key, v.unwrap_or(Value::Null));
            if self.cut {
                return Ok(Value::Object(map));
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, Bad> {
        self.pos += 1; // '['
        let mut items = Vec::new();
        let mut first = true;
        loop {
            self.ws();
            let Some(c) = self.peek() else {
                self.cut = true;
                return Ok(Value::Array(items));
            };
            if c == b']' {
                self.pos += 1;
                return Ok(Value::Array(items));
            }
            if !first {
                if c != b',' {
                    return Err(Bad);
                }
                self.pos += 1;
            }
            first = false;
            if let Some(v) = self.value(depth + 1)? {
                items.push(v);
            }
            if self.cut {
                return Ok(Value::Array(items));
            }
        }
    }

    /// `Ok(None)` when the string is cut (the closing quote is missing).
    fn string(&mut self) -> Result<Option<String>, Bad> {
        let start = self.pos;
        let mut i = start + 1;
        loop {
            match self.b.get(i) {
                None => {
                    self.cut = true;
                    self.pos = self.b.len();
                    return Ok(None);
                }
                Some(b'\\') => i += 2,
                Some(b'"') => break,
                Some(_) => i += 1,
            }
        }
        self.pos = i + 1;
        let raw = self.b.get(start..=i).ok_or(Bad)?;
        match serde_json::from_slice::<String>(raw) {
            Ok(s) => Ok(Some(s)),
            // invalid UTF-8 or escape: keep what can be read
            Err(_) => Ok(Some(
                String::from_utf8_lossy(raw.get(1..raw.len() - 1).unwrap_or_default()).into_owned(),
            )),
        }
    }

    fn literal(&mut self, word: &[u8], v: Value) -> Result<Value, Bad> {
        let rest = self.b.get(self.pos..).unwrap_or_default();
        if rest.starts_with(word) {
            self.pos += word.len();
            Ok(v)
        } else if word.starts_with(rest) {
            self.cut = true;
            self.pos = self.b.len();
            Ok(Value::Null)
        } else {
            Err(Bad)
        }
    }

    fn number(&mut self) -> Result<Value, Bad> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| matches!(c, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
        {
            self.pos += 1;
        }
        if self.pos >= self.b.len() {
            // the number may go on in the next segment
            self.cut = true;
            return Ok(Value::Null);
        }
        let raw = self.b.get(start..self.pos).ok_or(Bad)?;
        serde_json::from_slice::<Value>(raw).map_err(|_| Bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const XMRIG_LOGIN: &str = r#"{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A.rig7","pass":"x","agent":"XMRig/6.21.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0","rigid":"","algo":["rx/0","cn/r"]}}"#;
    const WALLET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";

    fn hit(s: &str) -> StratumHit {
        classify(s.as_bytes()).unwrap_or_else(|| panic!("no hit for {s:?}"))
    }

    fn hit_b(b: &[u8]) -> StratumHit {
        classify(b).unwrap_or_else(|| panic!("no hit for {:?}", String::from_utf8_lossy(b)))
    }

    // ---- Stratum v1 client

    #[test]
    fn cpuminer_subscribe_spaced() {
        let h = hit("{\"id\": 1, \"method\": \"mining.subscribe\", \"params\": [\"cpuminer/2.5.1\"]}\n");
        assert_eq!(h.dialect, "stratum-v1");
        assert_eq!(h.method, "mining.subscribe");
        assert_eq!(h.agent.as_deref(), Some("cpuminer/2.5.1"));
        assert_eq!(h.login, None);
        assert!(h.from_client);
    }

    #[test]
    fn subscribe_authorize_extranonce_in_one_write() {
        let s = "{\"id\": 1, \"method\": \"mining.subscribe\", \"params\": [\"cgminer/4.10.0\"]}\n\
                 {\"id\": 2, \"method\": \"mining.authorize\", \"params\": [\"bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh.worker1\", \"x\"]}\n\
                 {\"id\": 3, \"method\": \"mining.extranonce.subscribe\", \"params\": []}\n";
        let h = hit(s);
        assert_eq!(h.dialect, "stratum-v1");
        assert_eq!(h.method, "mining.subscribe"); // first of the strongest
        assert_eq!(h.agent.as_deref(), Some("cgminer/4.10.0"));
        assert_eq!(h.login.as_deref(), Some("bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh"));
        assert_eq!(h.worker.as_deref(), Some("worker1"));
        assert!(h.from_client);
    }

    #[test]
    fn authorize_alone() {
        let h = hit("{\"id\": 2, \"method\": \"mining.authorize\", \"params\": [\"user\", \"pass\"]}\r\n");
        assert_eq!(h.method, "mining.authorize");
        assert_eq!(h.login.as_deref(), Some("user"));
        assert_eq!(h.worker, None);
    }

    #[test]
    fn cgminer_configure_first_then_subscribe() {
        let s = "{\"id\": 1, \"method\": \"mining.configure\", \"params\": [[\"version-rolling\"], {\"version-rolling.mask\": \"ffffffff\"}]}\n";
        let h = hit(s);
        assert_eq!(h.dialect, "stratum-v1");
        assert_eq!(h.method, "mining.configure");
        let s2 = format!("{s}{{\"id\": 2, \"method\": \"mining.subscribe\", \"params\": [\"cgminer/4.12.1\"]}}\n");
        let h = hit(&s2);
        assert_eq!(h.method, "mining.subscribe");
        assert_eq!(h.agent.as_deref(), Some("cgminer/4.12.1"));
    }

    #[test]
    fn cgminer_submit_params_first() {
        let h = hit(r#"{"params": ["user.w2", "4f1a", "00000001", "5f5e1000", "a1b2c3d4"], "id": 4, "method": "mining.submit"}"#);
        assert_eq!(h.method, "mining.submit");
        assert_eq!(h.login.as_deref(), Some("user"));
        assert_eq!(h.worker.as_deref(), Some("w2"));
    }

    #[test]
    fn method_case_and_id_types_vary() {
        for id in ["1", "\"abc\"", "null"] {
            let s = format!("{{\"id\":{id},\"method\":\"Mining.Subscribe\",\"params\":[\"bfgminer/5.5.0\"]}}\n");
            let h = hit(&s);
            assert_eq!(h.method, "mining.subscribe");
            assert_eq!(h.agent.as_deref(), Some("bfgminer/5.5.0"));
        }
    }

    #[test]
    fn ethereumstratum_v1_subscribe() {
        let h = hit("{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"ethminer-0.18.0\",\"EthereumStratum/1.0.0\"]}\n");
        assert_eq!(h.dialect, "ethereumstratum/1.0.0");
        assert_eq!(h.agent.as_deref(), Some("ethminer-0.18.0"));
    }

    #[test]
    fn gminer_kawpow_subscribe_is_v1_on_client_side() {
        let h = hit("{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"GMiner/2.09\",null,\"rvn.pool.example\",\"3333\"]}\n");
        assert_eq!(h.dialect, "stratum-v1");
        assert_eq!(h.agent.as_deref(), Some("GMiner/2.09"));
    }

    #[test]
    fn ethereumstratum_v2_hello() {
        let h = hit(
            r#"{"id":1,"method":"mining.hello","params":{"agent":"ethminer-0.19.0","host":"eu1.pool.example","port":"4444","proto":"EthereumStratum/2.0.0"}}"#,
        );
        assert_eq!(h.dialect, "ethereumstratum/2.0.0");
        assert_eq!(h.method, "mining.hello");
        assert_eq!(h.agent.as_deref(), Some("ethminer-0.19.0"));
        assert!(h.from_client);
    }

    // ---- Stratum v1 pool

    #[test]
    fn pool_subscribe_result_set_difficulty_notify_in_one_write() {
        let s = "{\"id\":1,\"result\":[[[\"mining.set_difficulty\",\"b4b6693b72a50c7116db18d6497cac52\"],[\"mining.notify\",\"ae6812eb4cd7735a302a8a9dd95cf71f\"]],\"08000002\",4],\"error\":null}\n\
                 {\"id\":null,\"method\":\"mining.set_difficulty\",\"params\":[4096]}\n\
                 {\"id\":null,\"method\":\"mining.notify\",\"params\":[\"bf\",\"4d16b6f85af6e2198f44ae2a6de67f78487ae5611b77c6c0440b921e00000000\",\"01000000010000\",\"072f736c7573682f000000000100f2052a010000001976a914d23fcdf86f7e756a64a7a9688ef9903327048ed988ac00000000\",[],\"00000002\",\"1c2ac4af\",\"504e86b9\",false]}\n";
        let h = hit(s);
        assert_eq!(h.dialect, "stratum-v1");
        assert_eq!(h.method, "mining.subscribe(result)");
        assert!(!h.from_client);
    }

    #[test]
    fn pool_notify_alone() {
        let h = hit("{\"id\":null,\"method\":\"mining.notify\",\"params\":[\"j\",\"00\",\"01\",\"02\",[],\"20000000\",\"1d00ffff\",\"5f5e1000\",true]}\n");
        assert_eq!(h.dialect, "stratum-v1");
        assert_eq!(h.method, "mining.notify");
        assert!(!h.from_client);
    }

    #[test]
    fn pool_set_difficulty_and_ping() {
        let h = hit("{\"id\":null,\"method\":\"mining.set_difficulty\",\"params\":[4096]}\n\n");
        assert_eq!(h.method, "mining.set_difficulty");
        let h = hit("{\"params\":[],\"id\":42,\"method\":\"mining.ping\"}\n");
        assert_eq!(h.method, "mining.ping");
        assert!(!h.from_client);
    }

    #[test]
    fn kawpow_set_target_refines_dialect() {
        let s = "{\"id\":1,\"result\":[null,\"8100\"],\"error\":null}\n\
                 {\"id\":null,\"method\":\"mining.set_target\",\"params\":[\"00000000ffff0000000000000000000000000000000000000000000000000000\"]}\n\
                 {\"id\":null,\"method\":\"mining.notify\",\"params\":[\"1a\",\"f1a2\",\"c3d4\",\"00000000ffff0000000000000000000000000000000000000000000000000000\",true,1850000,\"1b00f4ce\"]}\n";
        let h = hit(s);
        assert_eq!(h.dialect, "kawpow");
        assert_eq!(h.method, "mining.set_target");
        assert!(!h.from_client);
    }

    #[test]
    fn ethereumstratum_v1_pool_side() {
        let s = "{\"id\":1,\"result\":[[\"mining.notify\",\"ae6812eb4cd7735a302a8a9dd95cf71f\",\"EthereumStratum/1.0.0\"],\"080c\"],\"error\":null}\n\
                 {\"id\":null,\"method\":\"mining.set_difficulty\",\"params\":[0.5]}\n";
        let h = hit(s);
        assert_eq!(h.dialect, "ethereumstratum/1.0.0");
        assert_eq!(h.method, "mining.subscribe(result)");
        let h = hit("{\"id\":null,\"method\":\"mining.notify\",\"params\":[\"bf0488aa\",\"abad8f99f3918bf903c6a909d9bbc0fdfa5a2f4b9cb1196175ec825c6610126c\",\"645cf20198c2f3861e947d4f67e3ab63b7b2e24dcc9095bd9123e7b33371f6cc\",true]}\n");
        assert_eq!(h.dialect, "ethereumstratum/1.0.0");
    }

    // ---- CryptoNote

    #[test]
    fn xmrig_login() {
        let h = hit(&format!("{XMRIG_LOGIN}\n"));
        assert_eq!(h.dialect, "cryptonote");
        assert_eq!(h.method, "login");
        assert_eq!(h.agent.as_deref(), Some("XMRig/6.21.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0"));
        assert_eq!(h.login.as_deref(), Some(WALLET));
        assert_eq!(h.worker.as_deref(), Some("rig7"));
        assert!(h.from_client);
    }

    #[test]
    fn xmrig_rigid_is_the_worker() {
        let s = format!(
            "{{\"id\":1,\"jsonrpc\":\"2.0\",\"method\":\"login\",\"params\":{{\"login\":\"{WALLET}\",\"pass\":\"x\",\"agent\":\"XMRig/6.20.0\",\"rigid\":\"node-17\"}}}}\n"
        );
        let h = hit(&s);
        assert_eq!(h.login.as_deref(), Some(WALLET));
        assert_eq!(h.worker.as_deref(), Some("node-17"));
    }

    #[test]
    fn cryptonote_login_variants() {
        // spaced, short agent
        let h = hit(&format!(
            "{{\"id\": 1, \"method\": \"login\", \"params\": {{\"login\": \"{WALLET}\", \"pass\": \"x\", \"agent\": \"xmr/1.0\"}}}}\n"
        ));
        assert_eq!(h.dialect, "cryptonote");
        assert_eq!(h.agent.as_deref(), Some("xmr/1.0"));
        // web-miner proxy: neither agent nor jsonrpc
        let h = hit(&format!(
            "{{\"method\":\"login\",\"params\":{{\"login\":\"{WALLET}\",\"pass\":\"w\"}},\"id\":1}}\n"
        ));
        assert_eq!(h.dialect, "cryptonote");
        assert_eq!(h.agent, None);
        assert_eq!(h.login.as_deref(), Some(WALLET));
    }

    #[test]
    fn xmrig_submit_and_keepalived() {
        let h = hit(
            r#"{"id":4,"jsonrpc":"2.0","method":"submit","params":{"id":"725a0a4c-7d8c-4a1e","job_id":"876459","nonce":"1c0c0000","result":"b1b2ff3f16bf4a3f0e1f8c1d7d4b8a00e9b7b4f0d1c2a3b4c5d6e7f8091a2b00"}}"#,
        );
        assert_eq!(h.dialect, "cryptonote");
        assert_eq!(h.method, "submit");
        assert!(h.from_client);
        let h = hit("{\"id\":5,\"jsonrpc\":\"2.0\",\"method\":\"keepalived\",\"params\":{\"id\":\"725a0a4c-7d8c-4a1e\"}}\n");
        assert_eq!(h.dialect, "cryptonote");
        assert_eq!(h.method, "keepalived");
    }

    #[test]
    fn cryptonote_pool_login_result_and_job() {
        let h = hit("{\"jsonrpc\":\"2.0\",\"id\":1,\"error\":null,\"result\":{\"id\":\"725a0a4c\",\"job\":{\"blob\":\"0e0eb6b3f09f06\",\"job_id\":\"876459\",\"target\":\"b88d0600\",\"algo\":\"rx/0\",\"height\":3100000,\"seed_hash\":\"aa\"},\"extensions\":[\"algo\",\"nicehash\",\"keepalive\"],\"status\":\"OK\"}}\n");
        assert_eq!(h.dialect, "cryptonote");
        assert_eq!(h.method, "login(result)");
        assert!(!h.from_client);
        let h = hit(
            "{\"jsonrpc\":\"2.0\",\"method\":\"job\",\"params\":{\"blob\":\"0e0eb6\",\"job_id\":\"876460\",\"target\":\"b88d0600\"}}\n",
        );
        assert_eq!(h.method, "job");
        assert!(!h.from_client);
    }

    // ---- ETHPROXY

    #[test]
    fn ethproxy_submit_login_with_worker_field() {
        let h = hit("{\"id\":1,\"method\":\"eth_submitLogin\",\"params\":[\"0x52bc44d5378309EE2abF1539BF71dE1b7d7bE3b5\",\"x\"],\"worker\":\"rig\"}\n");
        assert_eq!(h.dialect, "ethproxy");
        assert_eq!(h.method, "eth_submitlogin");
        assert_eq!(h.login.as_deref(), Some("0x52bc44d5378309EE2abF1539BF71dE1b7d7bE3b5"));
        assert_eq!(h.worker.as_deref(), Some("rig"));
        let h = hit("{\"id\":1,\"method\":\"eth_submitLogin\",\"params\":[\"0x52bc44d5378309EE2abF1539BF71dE1b7d7bE3b5.rig2\"]}\n");
        assert_eq!(h.login.as_deref(), Some("0x52bc44d5378309EE2abF1539BF71dE1b7d7bE3b5"));
        assert_eq!(h.worker.as_deref(), Some("rig2"));
    }

    #[test]
    fn ethproxy_getwork_submitwork_hashrate() {
        let h = hit("{\"id\":5,\"jsonrpc\":\"2.0\",\"method\":\"eth_getWork\",\"params\":[]}\n");
        assert_eq!((h.dialect, h.method.as_str()), ("ethproxy", "eth_getwork"));
        let h = hit("{\"id\":4,\"method\":\"eth_submitWork\",\"params\":[\"0x8f1d2f7e9c0a4b5d\",\"0x6e5dd2d3c7c6c1b2a0f9e8d7c6b5a4938271605f4e3d2c1b0a99887766554433\",\"0x2c4d6e8f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5\"]}\n");
        assert_eq!(h.method, "eth_submitwork");
        let h = hit("{\"id\":9,\"jsonrpc\":\"2.0\",\"method\":\"eth_submitHashrate\",\"params\":[\"0x5f5e100\",\"0x59daa26581d0acd1fce254fb7e85952f4c09d0915afd33d3886cd914bc7d283c\"]}\n");
        assert_eq!(h.method, "eth_submithashrate");
    }

    #[test]
    fn ethproxy_work_push_without_method() {
        let h = hit("{\"result\":[\"0x645cf20198c2f3861e947d4f67e3ab63b7b2e24dcc9095bd9123e7b33371f6cc\",\"0xabad8f99f3918bf903c6a909d9bbc0fdfa5a2f4b9cb1196175ec825c6610126c\",\"0x0000000112e0be826d694b2e62d01511f12a6061fbaec8bc02357593e70e52ba\"],\"jsonrpc\":\"2.0\",\"id\":0}\n");
        assert_eq!(h.dialect, "ethproxy");
        assert_eq!(h.method, "eth_getwork(result)");
        assert!(!h.from_client);
    }

    #[test]
    fn three_block_hashes_are_not_work() {
        // eth_getFilterChanges on a block filter: three random hashes
        assert_eq!(classify(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":[\"0x645cf20198c2f3861e947d4f67e3ab63b7b2e24dcc9095bd9123e7b33371f6cc\",\"0xabad8f99f3918bf903c6a909d9bbc0fdfa5a2f4b9cb1196175ec825c6610126c\",\"0x9f3918bf903c6a909d9bbc0fdfa5a2f4b9cb1196175ec825c6610126cabad8f\"]}\n"), None);
        // eth_accounts: addresses
        assert_eq!(classify(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":[\"0x52bc44d5378309ee2abf1539bf71de1b7d7be3b5\",\"0x52bc44d5378309ee2abf1539bf71de1b7d7be3b6\",\"0x52bc44d5378309ee2abf1539bf71de1b7d7be3b7\"]}\n"), None);
    }

    // ---- framing

    #[test]
    fn proxy_v1_line_is_skipped() {
        let h = hit(&format!("PROXY TCP4 198.51.100.22 203.0.113.7 35646 3333\r\n{XMRIG_LOGIN}\n"));
        assert_eq!(h.dialect, "cryptonote");
        let h = hit("PROXY TCP6 2001:db8::1 2001:db8::2 40000 4444\r\n{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}\n");
        assert_eq!(h.dialect, "stratum-v1");
        // a PROXY line alone is nothing yet
        assert_eq!(classify(b"PROXY TCP4 198.51.100.22 203.0.113.7 35646 3333\r\n"), None);
        assert_eq!(classify(b"PROXY TCP4 198.51.100.22 203.0"), None);
    }

    #[test]
    fn proxy_v2_header_is_skipped() {
        let mut b = PROXY_V2_SIG.to_vec();
        b.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
        b.extend_from_slice(&[198, 51, 100, 22, 203, 0, 113, 7, 0x8b, 0x3e, 0x0d, 0x05]);
        b.extend_from_slice(b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"cpuminer/2.5.1\"]}\n");
        let h = hit_b(&b);
        assert_eq!(h.agent.as_deref(), Some("cpuminer/2.5.1"));
        // header length pointing past the end
        let mut b = PROXY_V2_SIG.to_vec();
        b.extend_from_slice(&[0x21, 0x11, 0xff, 0xff, 1, 2]);
        assert_eq!(classify(&b), None);
    }

    #[test]
    fn keepalive_nuls_and_whitespace_are_skipped() {
        let h = hit_b(b"\x00\x00 \r\n{\"id\":2,\"method\":\"mining.authorize\",\"params\":[\"u.w\",\"p\"]}\n");
        assert_eq!(h.login.as_deref(), Some("u"));
        assert_eq!(h.worker.as_deref(), Some("w"));
        assert_eq!(classify(b"\x00"), None);
        assert_eq!(classify(b""), None);
    }

    #[test]
    fn no_trailing_newline_yet() {
        let h = hit(XMRIG_LOGIN);
        assert_eq!(h.dialect, "cryptonote");
        assert_eq!(h.login.as_deref(), Some(WALLET));
    }

    #[test]
    fn truncated_xmrig_login_mid_agent() {
        // cut inside the agent string: login is complete, agent unknown
        let cut = &XMRIG_LOGIN[..XMRIG_LOGIN.find("libuv").unwrap()];
        let h = hit(cut);
        assert_eq!(h.dialect, "cryptonote");
        assert_eq!(h.method, "login");
        assert_eq!(h.login.as_deref(), Some(WALLET));
        assert_eq!(h.worker.as_deref(), Some("rig7"));
        assert_eq!(h.agent, None);
    }

    #[test]
    fn truncated_xmrig_login_mid_wallet() {
        // the login key is there, its value cut: still the XMRig shape
        let cut = &XMRIG_LOGIN[..XMRIG_LOGIN.find("\"login\":\"44AF").unwrap() + 20];
        let h = hit(cut);
        assert_eq!(h.dialect, "cryptonote");
        assert_eq!(h.login, None);
    }

    #[test]
    fn truncated_before_shape_is_known_is_not_classified() {
        assert_eq!(classify(br#"{"id":1,"jsonrpc":"2.0","method":"lo"#), None);
        assert_eq!(classify(br#"{"id":1,"jsonrpc":"2.0","method":"login","params":{"pa"#), None);
        assert_eq!(classify(br#"{"id":1,"jsonrpc":"2.0","method":"login","par"#), None);
        assert_eq!(classify(br#"{"id":1,"method":"mining.subscr"#), None);
    }

    #[test]
    fn truncated_subscribe_and_spaced_keys() {
        let h = hit(r#"{"id": 1, "method": "mining.subscribe", "params": ["cpuminer/2.5"#);
        assert_eq!(h.method, "mining.subscribe");
        assert_eq!(h.agent, None);
        let h = hit(r#"{"id": 1, "method" :  "mining.subscribe", "params": ["cpuminer/2.5.1", "#);
        assert_eq!(h.agent.as_deref(), Some("cpuminer/2.5.1"));
    }

    #[test]
    fn split_segment_1448_then_17() {
        // a pool write of subscribe result + a long notify, cut at 1448 bytes
        let mut s = String::from("{\"id\":1,\"result\":[[[\"mining.set_difficulty\",\"1\"],[\"mining.notify\",\"1\"]],\"08000002\",4],\"error\":null}\n{\"id\":null,\"method\":\"mining.notify\",\"params\":[\"bf\",\"");
        s.push_str(&"ab".repeat(800));
        s.push_str("\",[],\"00000002\",\"1c2ac4af\",\"504e86b9\",false]}\n");
        let first = &s.as_bytes()[..1448];
        let h = hit_b(first);
        assert_eq!(h.method, "mining.subscribe(result)");
        let h = hit_b(s.as_bytes());
        assert_eq!(h.method, "mining.subscribe(result)");
    }

    #[test]
    fn truncated_pool_pushes() {
        let h = hit(r#"{"jsonrpc":"2.0","method":"job","params":{"blob":"0e0eb6b3","job_id":"876459","target":"b88d"#);
        assert_eq!(h.method, "job");
        let h = hit(r#"{"jsonrpc":"2.0","id":1,"error":null,"result":{"id":"725a0a4c","job":{"blob":"0e0eb6b3f09f06"#);
        assert_eq!(h.method, "login(result)");
        let h = hit(r#"{"id":1,"result":[[["mining.set_difficulty","b4b6"],["mining.not"#);
        assert_eq!(h.method, "mining.subscribe(result)");
    }

    #[test]
    fn strongest_signal_wins_over_unknown_first_line() {
        let s = format!("{{\"id\":0,\"method\":\"client.get_version\",\"params\":[]}}\n{XMRIG_LOGIN}\n");
        let h = hit(&s);
        assert_eq!(h.method, "login");
    }

    #[test]
    fn control_characters_are_dropped_from_fields() {
        let h = hit("{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"evil\\u001b[31m\\nminer\"]}\n");
        assert_eq!(h.agent.as_deref(), Some("evil[31mminer"));
    }

    // ---- getwork over HTTP

    #[test]
    fn http_getwork_request() {
        let s = "POST / HTTP/1.1\r\nAuthorization: Basic dXNlcjpwYXNz\r\nHost: pool.example:8332\r\nUser-Agent: cgminer 4.10.0\r\nContent-Type: application/json\r\nContent-Length: 44\r\nX-Mining-Extensions: longpoll midstate rollntime submitold\r\n\r\n{\"method\": \"getwork\", \"params\": [], \"id\":0}\r\n";
        let h = hit(s);
        assert_eq!(h.dialect, "getwork");
        assert_eq!(h.method, "getwork");
        assert_eq!(h.agent.as_deref(), Some("cgminer 4.10.0"));
        assert!(h.from_client);
        // headers only so far
        let head = &s[..s.find("\r\n\r\n").unwrap()];
        let h = hit(head);
        assert_eq!(h.method, "x-mining-extensions");
    }

    #[test]
    fn http_getblocktemplate_and_xmrig_daemon() {
        let h = hit("POST / HTTP/1.1\r\nHost: node:8332\r\nContent-Type: application/json\r\n\r\n{\"id\": 0, \"method\": \"getblocktemplate\", \"params\": [{\"capabilities\": [\"coinbasetxn\", \"workid\"]}]}\r\n");
        assert_eq!(h.method, "getblocktemplate");
        assert_eq!(h.login, None);
        let h = hit(&format!("POST /json_rpc HTTP/1.1\r\nHost: 127.0.0.1:18081\r\nContent-Type: application/json\r\nContent-Length: 150\r\n\r\n{{\"id\":1,\"jsonrpc\":\"2.0\",\"method\":\"getblocktemplate\",\"params\":{{\"wallet_address\":\"{WALLET}\",\"reserve_size\":60}}}}"));
        assert_eq!(h.dialect, "getwork");
        assert_eq!(h.login.as_deref(), Some(WALLET));
    }

    #[test]
    fn http_eth_getwork_to_a_node() {
        let h = hit("POST / HTTP/1.1\r\nHost: 127.0.0.1:8545\r\nContent-Type: application/json\r\nContent-Length: 58\r\n\r\n{\"jsonrpc\":\"2.0\",\"method\":\"eth_getWork\",\"params\":[],\"id\":1}");
        assert_eq!((h.dialect, h.method.as_str(), h.from_client), ("ethproxy", "eth_getwork", true));
        let h = hit("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":[\"0x645cf20198c2f3861e947d4f67e3ab63b7b2e24dcc9095bd9123e7b33371f6cc\",\"0xabad8f99f3918bf903c6a909d9bbc0fdfa5a2f4b9cb1196175ec825c6610126c\",\"0x00000000ffff0000000000000000000000000000000000000000000000000000\",\"0xd3b9a1\"]}\n");
        assert_eq!(
            (h.dialect, h.method.as_str(), h.from_client),
            ("ethproxy", "eth_getwork(result)", false)
        );
    }

    #[test]
    fn http_pool_response_headers() {
        let h = hit("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Long-Polling: /LP\r\nX-Roll-Ntime: expire=120\r\nX-Stratum: stratum+tcp://pool.example:3333\r\nContent-Length: 512\r\n\r\n{\"result\":{\"midstate\":\"aa\",\"data\":\"00\",\"hash1\":\"00\",\"target\":\"ff\"},\"error\":null,\"id\":0}");
        assert_eq!(h.dialect, "getwork");
        assert_eq!(h.method, "getwork(result)");
        assert!(!h.from_client);
        let h = hit("HTTP/1.1 200 OK\r\nX-Stratum: stratum+tcp://pool.example:3333\r\n\r\n");
        assert_eq!(h.method, "x-stratum");
    }

    // ---- must not match

    #[test]
    fn ordinary_json_rpc_is_not_mining() {
        let cases: &[&[u8]] = &[
            b"{\"jsonrpc\":\"2.0\",\"method\":\"textDocument/didOpen\",\"params\":{}}\n",
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"eth_blockNumber\",\"params\":[]}\n",
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":\"0x10d4f\"}\n",
            b"{\"method\":\"login\",\"params\":[\"user\",\"pw\"]}\n",
            b"{\"method\":\"login\",\"params\":{\"username\":\"user\",\"password\":\"pw\"}}\n",
            b"{\"id\":1,\"jsonrpc\":\"2.0\",\"method\":\"login\",\"params\":{\"login\":\"alice\",\"pass\":\"hunter2\"}}\n",
            b"{\"method\":\"submit\",\"params\":{\"form\":\"contact\"}}\n",
            b"{\"method\":\"job\",\"params\":{\"name\":\"build\"}}\n",
            b"{\"id\":1,\"result\":[[\"a\",\"b\"],\"c\"]}\n",
            b"{\"id\":1,\"result\":{\"job\":{\"name\":\"nightly\"}}}\n",
            b"{\"hello\":\"world\"}\n",
            b"[1,2,3]\n",
            b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.0\r\n\r\n",
            b"POST /api/login HTTP/1.1\r\nHost: example.com\r\nContent-Type: application/json\r\n\r\n{\"method\":\"login\",\"params\":{\"login\":\"a\"}}",
            b"POST / HTTP/1.1\r\nHost: node:8545\r\nContent-Type: application/json\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"eth_blockNumber\",\"params\":[]}",
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html></html>",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"hello {\"method\":\"mining.subscribe\",\"params\":[]}\n",
        ];
        for c in cases {
            assert_eq!(classify(c), None, "{:?}", String::from_utf8_lossy(c));
        }
    }

    #[test]
    fn random_bytes_do_not_match_or_panic() {
        // xorshift, deterministic
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut buf = vec![0u8; 4096];
        for round in 0..200 {
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let n = 1 + round * 20;
            assert_eq!(classify(buf.get(..n).unwrap()), None);
        }
    }

    #[test]
    fn every_prefix_of_real_lines_is_safe_and_never_misclassified() {
        let lines = [
            XMRIG_LOGIN,
            "{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"ethminer-0.18.0\",\"EthereumStratum/1.0.0\"]}",
            "{\"id\":1,\"method\":\"eth_submitLogin\",\"params\":[\"0x52bc44d5378309EE2abF1539BF71dE1b7d7bE3b5\",\"x\"],\"worker\":\"rig\"}",
        ];
        for l in lines {
            let full = hit(l);
            for i in 0..=l.len() {
                if let Some(h) = classify(&l.as_bytes()[..i]) {
                    assert_eq!(h.method, full.method, "prefix {i} of {l}");
                    assert_eq!(h.from_client, full.from_client);
                }
            }
        }
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let mut s = String::from("{\"id\":1,\"method\":\"login\",\"params\":");
        s.push_str(&"[".repeat(100_000));
        assert_eq!(classify(s.as_bytes()), None);
        let mut s = String::from("{\"a\":");
        s.push_str(&"{\"a\":".repeat(50_000));
        assert_eq!(classify(s.as_bytes()), None);
    }

    #[test]
    fn stratum_v2_sizes() {
        assert!(stratum_v2_handshake(64, 234, 3333));
        assert!(stratum_v2_handshake(64, 0, 34254));
        assert!(stratum_v2_handshake(64, 234, 34255));
        assert!(!stratum_v2_handshake(64, 0, 3333));
        assert!(!stratum_v2_handshake(64, 100, 34254));
        assert!(!stratum_v2_handshake(517, 234, 34264));
    }
}
