//! The fleet signature set: what the collector learned from confirmed
//! findings on other hosts (binary hashes, wallets, pools, logins) and the
//! signature files an operator published there, fetched every
//! `fleet_poll_seconds` with a conditional GET and loaded beside the local
//! signatures (hot, like a change in a signature directory).
//!
//! `GET /api/v1/fleet/signatures` with the agent's token, `If-None-Match`
//! the version held: a 304 costs nothing. A 200 carries `{version,
//! payload, signature, public_key}`; `payload` is the JSON text of
//! `{version, issued, files: [{name, text}]}` and `signature` an ed25519
//! signature over its bytes. With `fleet_public_key` configured, a set that
//! is unsigned or whose signature does not verify with that key is refused
//! (whatever key the answer names); so is one older than the set held (a
//! replayed set cannot bring back a revoked indicator while the agent
//! runs), one whose versions disagree, and one with a file name that is
//! absolute or climbs (`..`). The answer is read up to [`MAX_SET_BYTES`].

use super::config::CollectorConfig;
use super::events::{FleetSetReceived, FleetSetRefused, InternalEvent};
use super::{Msg, Shared};
use base64::Engine as _;
use serde::Deserialize;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

/// Most bytes of a fleet set answer read.
pub const MAX_SET_BYTES: usize = 16 * 1024 * 1024;
/// Most files in a set.
pub const MAX_FILES: usize = 1024;

/// The set in force: its version (0: none) and files.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FleetSet {
    pub version: u64,
    pub files: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct Envelope {
    version: u64,
    payload: String,
    #[serde(default)]
    signature: Option<String>,
}

#[derive(Deserialize)]
struct Payload {
    version: u64,
    #[serde(default)]
    files: Vec<File>,
}

#[derive(Deserialize)]
struct File {
    name: String,
    text: String,
}

/// The configured public key, decoded (`None` when none is set).
pub fn public_key(cfg: &CollectorConfig) -> anyhow::Result<Option<[u8; 32]>> {
    let k = cfg.fleet_public_key.trim();
    if k.is_empty() {
        return Ok(None);
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(k)
        .map_err(|e| anyhow::anyhow!("collector.fleet_public_key: not base64 ({e}); use the output of `rigwatch-collector fleet key`"))?;
    let key: [u8; 32] = raw.try_into().map_err(|v: Vec<u8>| {
        anyhow::anyhow!(
            "collector.fleet_public_key: {} bytes, an ed25519 public key is 32; use the output of `rigwatch-collector fleet key`",
            v.len()
        )
    })?;
    Ok(Some(key))
}

/// Judges an answer's body: the set it carries, or why it is refused.
pub fn accept(body: &[u8], key: Option<&[u8; 32]>, held: u64) -> Result<FleetSet, String> {
    let env: Envelope = serde_json::from_slice(body).map_err(|e| format!("not a fleet set: {e}"))?;
    if let Some(key) = key {
        let sig = env
            .signature
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or("unsigned, and collector.fleet_public_key is set")?;
        let sig = base64::engine::general_purpose::STANDARD
            .decode(sig)
            .map_err(|_| "its signature is not base64".to_string())?;
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
            .verify(env.payload.as_bytes(), &sig)
            .map_err(|_| "its signature does not verify with collector.fleet_public_key".to_string())?;
    }
    let p: Payload = serde_json::from_str(&env.payload).map_err(|e| format!("its payload is not a fleet set: {e}"))?;
    if p.version != env.version {
        return Err(format!("its payload says version {}, the answer {}", p.version, env.version));
    }
    if p.version < held {
        return Err(format!("version {} is older than the set held ({held})", p.version));
    }
    if p.files.len() > MAX_FILES {
        return Err(format!("{} files (at most {MAX_FILES})", p.files.len()));
    }
    for f in &p.files {
        let path = std::path::Path::new(&f.name);
        let climbs = path.components().any(|c| !matches!(c, std::path::Component::Normal(_)));
        if f.name.is_empty() || f.name.len() > 256 || climbs || f.name.contains('\0') {
            return Err(format!("a file name that is not a plain relative path: {:?}", f.name));
        }
    }
    Ok(FleetSet {
        version: p.version,
        files: p.files.into_iter().map(|f| (f.name, f.text)).collect(),
    })
}

enum Fetched {
    NotModified,
    Body(Vec<u8>),
}

async fn fetch(http: &reqwest::Client, url: &str, token: &str, held: u64) -> Result<Fetched, String> {
    let mut resp = http
        .get(url)
        .bearer_auth(token)
        .header("If-None-Match", format!("\"{held}\""))
        .header("X-Rigwatch-Fleet-Version", held.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    match resp.status().as_u16() {
        304 => return Ok(Fetched::NotModified),
        200 => {}
        s => return Err(format!("the collector answered {s}")),
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_SET_BYTES {
            return Err(format!("the answer is over {MAX_SET_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Fetched::Body(body))
}

/// Runs forever: fetches, judges, and hands a new set to the detection
/// thread (which loads it with the local signatures).
pub(super) async fn run(cfg: CollectorConfig, shared: Arc<Shared>, tx: Sender<Msg>) {
    let setup = public_key(&cfg).and_then(|k| Ok((k, super::shipper::client(&cfg)?)));
    let (key, http) = match setup {
        Ok(s) => s,
        Err(e) => {
            FleetSetRefused {
                url: &cfg.url,
                why: &e.to_string(),
                outcome: "error",
                log: true,
            }
            .emit(&shared.metrics);
            return;
        }
    };
    let url = format!("{}/api/v1/fleet/signatures", cfg.url.trim_end_matches('/'));
    let every = Duration::from_secs_f64(cfg.fleet_poll_seconds.clamp(1.0, 86_400.0));
    let mut said: Option<String> = None;
    loop {
        let token = shared.collector_token.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(token) = token else {
            // the shipper has not got its token yet (enrolment)
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let held = shared.fleet.lock().unwrap_or_else(|e| e.into_inner()).version;
        let outcome = match fetch(&http, &url, &token, held).await {
            Ok(Fetched::NotModified) => {
                shared.metrics.fleet_fetches.with_label_values(&["not_modified"]).inc();
                Ok(())
            }
            Ok(Fetched::Body(body)) => match accept(&body, key.as_ref(), held) {
                Ok(set) if set.version == held => Ok(()),
                Ok(set) => {
                    FleetSetReceived {
                        url: &url,
                        version: set.version,
                        files: set.files.len(),
                        verified: key.is_some(),
                    }
                    .emit(&shared.metrics);
                    *shared.fleet.lock().unwrap_or_else(|e| e.into_inner()) = set;
                    if tx.send(Msg::Fleet).is_err() {
                        return;
                    }
                    Ok(())
                }
                Err(why) => Err((why, "refused")),
            },
            Err(why) => Err((why, "error")),
        };
        match outcome {
            Ok(()) => said = None,
            Err((why, kind)) => {
                FleetSetRefused {
                    url: &url,
                    why: &why,
                    outcome: kind,
                    log: said.as_deref() != Some(why.as_str()),
                }
                .emit(&shared.metrics);
                said = Some(why);
            }
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::KeyPair;

    fn keypair() -> ring::signature::Ed25519KeyPair {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn answer(k: &ring::signature::Ed25519KeyPair, version: u64, files: serde_json::Value, tamper: bool) -> Vec<u8> {
        let payload = serde_json::json!({"version": version, "issued": 1, "files": files}).to_string();
        let sig = base64::engine::general_purpose::STANDARD.encode(k.sign(payload.as_bytes()).as_ref());
        let payload = if tamper { payload.replace("confirmed", "likely") } else { payload };
        serde_json::to_vec(&serde_json::json!({"version": version, "payload": payload, "signature": sig})).unwrap()
    }

    #[test]
    fn a_set_is_taken_only_when_signed_by_the_configured_key_and_not_older() {
        let k = keypair();
        let key: [u8; 32] = k.public_key().as_ref().try_into().unwrap();
        let files = serde_json::json!([{"name": "fleet/indicators.toml", "text": "# severity = \"confirmed\"\n"}]);
        let good = answer(&k, 7, files.clone(), false);
        let set = accept(&good, Some(&key), 3).unwrap();
        assert_eq!((set.version, set.files[0].0.as_str()), (7, "fleet/indicators.toml"));
        // no key configured: trusted as the TLS connection is
        assert!(accept(&good, None, 0).is_ok());
        // tampered payload, another key, no signature, an older version
        let bad = accept(&answer(&k, 7, files.clone(), true), Some(&key), 0).unwrap_err();
        assert!(bad.contains("does not verify"), "{bad}");
        let other = keypair();
        let e = accept(&answer(&other, 7, files.clone(), false), Some(&key), 0).unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
        let unsigned =
            serde_json::to_vec(&serde_json::json!({"version": 7, "payload": serde_json::json!({"version": 7, "files": []}).to_string()}))
                .unwrap();
        assert!(accept(&unsigned, Some(&key), 0).unwrap_err().contains("unsigned"));
        assert!(accept(&unsigned, None, 0).is_ok());
        assert!(accept(&good, Some(&key), 8).unwrap_err().contains("older"));
        // names that climb or are absolute
        for name in ["../etc/passwd", "/etc/rigwatch/x.toml", "a/../../b.toml", ""] {
            let e = accept(
                &answer(&k, 9, serde_json::json!([{"name": name, "text": ""}]), false),
                Some(&key),
                0,
            )
            .unwrap_err();
            assert!(e.contains("plain relative path"), "{name}: {e}");
        }
        assert!(accept(b"<html>", None, 0).unwrap_err().contains("not a fleet set"));
    }

    #[test]
    fn the_configured_key_must_be_32_bytes_of_base64() {
        let mut c = CollectorConfig::default();
        assert_eq!(public_key(&c).unwrap(), None);
        c.fleet_public_key = "not base64!".into();
        assert!(public_key(&c).unwrap_err().to_string().contains("not base64"));
        c.fleet_public_key = base64::engine::general_purpose::STANDARD.encode([1u8; 31]);
        assert!(public_key(&c).unwrap_err().to_string().contains("31 bytes"));
        c.fleet_public_key = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        assert_eq!(public_key(&c).unwrap(), Some([1u8; 32]));
    }
}
