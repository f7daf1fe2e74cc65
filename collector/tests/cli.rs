//! The real binary: `token create/list/rotate/revoke`, `serve` on embedded
//! defaults and from a config file, and HTTPS with a certificate.

mod common;

use common::*;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_rigwatch-collector");

fn run(args: &[&str], cwd: &Path) -> Output {
    Command::new(BIN).args(args).current_dir(cwd).output().unwrap()
}

fn last_line(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or("").to_string()
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(args: &[&str], cwd: &Path, health: &str, curl_extra: &[&str]) -> Server {
    let child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .current_dir(cwd)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let s = Server(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = Command::new("curl")
            .args(["-sf", "--max-time", "2"])
            .args(curl_extra)
            .arg(health)
            .output()
            .unwrap();
        if o.status.success() && o.stdout == b"ok\n" {
            return s;
        }
        assert!(Instant::now() < deadline, "collector did not come up at {health}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_serve_on_embedded_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Default data dir is ./rigwatch-data in the working directory.
    let o = run(&["token", "create", "node1"], d);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let agent = last_line(&o);
    assert!(agent.starts_with("rwc_") && agent.len() == 68, "{agent}");
    assert!(d.join("rigwatch-data/collector.sqlite3").exists());
    let o = run(&["token", "create", "node1"], d);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("exists"));
    let o = run(&["token", "create", "alice", "--analyst"], d);
    let analyst = last_line(&o);
    // Tokens are stored hashed: the secret is nowhere in the database file.
    let db = std::fs::read(d.join("rigwatch-data/collector.sqlite3")).unwrap();
    let wal = std::fs::read(d.join("rigwatch-data/collector.sqlite3-wal")).unwrap_or_default();
    for secret in [&agent, &analyst] {
        let needle = secret.as_bytes();
        assert!(!db.windows(needle.len()).any(|w| w == needle) && !wal.windows(needle.len()).any(|w| w == needle));
    }

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _server = serve(&["--listen", &listen], d, &format!("http://{listen}/healthz"), &[]);
    let url = format!("http://{listen}/api/v1/reports");
    let body = serde_json::to_vec(&report("node1", "a1", vec![heartbeat("a1", 1, 1000)])).unwrap();
    let client = reqwest::Client::new();
    let r = client.post(&url).bearer_auth(&agent).body(body.clone()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = client
        .get(format!("http://{listen}/api/v1/hosts"))
        .bearer_auth(&analyst)
        .send()
        .await
        .unwrap();
    let hosts: serde_json::Value = r.json().await.unwrap();
    assert_eq!(hosts[0]["host"], "node1");

    // Rotated while the server runs: the new secret works at once and the
    // old one through its grace.
    let o = run(&["token", "rotate", "node1", "--grace", "600"], d);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("the old secret works until"));
    let rotated = last_line(&o);
    assert!(rotated.starts_with("rwc_") && rotated != agent, "{rotated}");
    for secret in [&agent, &rotated] {
        let r = client.post(&url).bearer_auth(secret).body(body.clone()).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    let list = String::from_utf8_lossy(&run(&["token", "list"], d).stdout).to_string();
    assert!(
        list.lines()
            .any(|l| l.starts_with("node1") && l.contains("valid (rotated; old secret until")),
        "{list}"
    );
    let o = run(&["token", "rotate", "nobody"], d);
    assert_eq!(o.status.code(), Some(2));

    // Revoked from another process while the server runs: refused at once,
    // whichever secret.
    let o = run(&["token", "revoke", "node1"], d);
    assert!(o.status.success());
    for secret in [&agent, &rotated] {
        let r = client.post(&url).bearer_auth(secret).body(body.clone()).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401);
    }
    let o = run(&["token", "list"], d);
    let list = String::from_utf8_lossy(&o.stdout);
    assert!(list.lines().any(|l| l.starts_with("node1") && l.contains("revoked")), "{list}");
    assert!(
        list.lines()
            .any(|l| l.starts_with("alice") && l.contains("analyst") && l.ends_with("valid")),
        "{list}"
    );
    assert!(!list.contains("rwc_"), "list never shows secrets");
    let o = run(&["token", "revoke", "nobody"], d);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no valid token named \"nobody\""));
}

#[test]
fn config_file_and_https() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bad = d.join("bad.toml");
    std::fs::write(&bad, "listen = 5\n").unwrap();
    let o = run(&["serve", "--config", bad.to_str().unwrap()], d);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.toml"), "errors name the file");
    let o = run(&["serve", "--tls-cert", "x.pem"], d);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--tls-key"));

    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("SKIPPED the HTTPS part: openssl not installed");
        return;
    }
    let (cert, key) = (d.join("cert.pem"), d.join("key.pem"));
    let o = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let port = free_port();
    let cfg = d.join("collector.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            d.join("data").display(),
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let _server = serve(
        &["--config", cfg.to_str().unwrap()],
        d,
        &format!("https://127.0.0.1:{port}/healthz"),
        &["--cacert", cert.to_str().unwrap()],
    );
    assert!(d.join("data/collector.sqlite3").exists(), "data_dir from the config file");
    // Plain HTTP to the HTTPS port does not get the API.
    let o = Command::new("curl")
        .args(["-sf", "--max-time", "2"])
        .arg(format!("http://127.0.0.1:{port}/healthz"))
        .output()
        .unwrap();
    assert!(!o.status.success());
}
