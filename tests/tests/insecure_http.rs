//! The agent's way to its collector, with the real binaries: plain
//! `http://` to another host is refused at start (before any connection,
//! the enrolment included) unless `--allow-insecure-http` or
//! `collector.allow_insecure_http` says otherwise, which then warns once;
//! over HTTPS the agent ships to a collector whose certificate its
//! `ca_file` signs, and keeps its findings spooled, logging why, when
//! the certificate is signed by anyone else.

use rigwatch_e2e::{collector_token, free_port, http_get, start_xmrig, wait_for, KillOnDrop as Kill};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WALLET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";
/// TEST-NET-1 (RFC 5737): never routed, never contacted.
const REMOTE: &str = "http://192.0.2.1:9860";

fn bin(name: &str, package: &str) -> PathBuf {
    rigwatch_e2e::workspace_bin(package, name, env!("CARGO_BIN_EXE_minersim"))
}

fn tmpdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

/// `rigwatch run` with `args`, its stderr collected in the background.
fn agent(args: &[&str], host: &str) -> (Kill, Arc<Mutex<String>>) {
    let mut child = Command::new(bin("rigwatch", "rigwatch-agent"))
        .env("RIGWATCH_HOSTNAME", host)
        .env_remove("RIGWATCH_TOKEN")
        .arg("run")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (l2, mut err) = (log.clone(), child.stderr.take().unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            l2.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (Kill(child), log)
}

/// The exit status of `child`, waiting at most `secs`.
fn exit_within(child: &mut Child, secs: u64) -> Option<i32> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Waits for the log (collected in the background) to hold `what`; its text.
fn log_with(log: &Mutex<String>, secs: u64, what: &str, f: impl Fn(&str) -> bool) -> String {
    wait_for(secs, what, || {
        let l = log.lock().unwrap().clone();
        f(&l).then_some(l)
    })
}

#[test]
fn plain_http_to_another_host_is_refused_before_any_connection() {
    let tmp = tmpdir("rwinsec");
    let d = tmp.path();
    let enrol = d.join("enrol-token");
    std::fs::write(&enrol, "an-enrolment-secret\n").unwrap();
    let cfg_remote = d.join("remote.toml");
    std::fs::write(&cfg_remote, format!("[collector]\nurl = \"{REMOTE}\"\ntoken = \"t\"\n")).unwrap();
    let enrol_s = enrol.to_str().unwrap().to_string();
    let cfg_s = cfg_remote.to_str().unwrap().to_string();
    // reports with a token, the enrolment exchange, and the URL from the config file
    for (i, way) in [
        vec!["--collector", REMOTE, "--token", "t"],
        vec!["--collector", REMOTE, "--enrol-token-file", enrol_s.as_str()],
        vec!["--config", cfg_s.as_str()],
    ]
    .into_iter()
    .enumerate()
    {
        let spool = d.join(format!("spool-{i}"));
        let mport = free_port();
        let listen = format!("127.0.0.1:{mport}");
        let mut args = way.clone();
        args.extend(["--spool-dir", spool.to_str().unwrap(), "--listen", &listen]);
        let (mut a, log) = agent(&args, "insecure-node");
        let code = exit_within(&mut a.0, 30);
        let text = log_with(&log, 5, "the refusal on stderr", |l| l.contains("error"));
        assert_eq!(
            code,
            Some(2),
            "{way:?}: refused like the agent's other configuration errors: {text}"
        );
        for must in [REMOTE, "https://", "ca_file", "--allow-insecure-http"] {
            assert!(text.contains(must), "{way:?}: the refusal names {must}: {text}");
        }
        // refused before the agent started anything: no spool, no /metrics
        assert!(!spool.exists(), "{way:?}: the spool was created");
        assert_eq!(http_get(mport, "/healthz", None).0, 0, "{way:?}");
    }

    // allowed by the flag, or by the config key: it starts and warns once
    let cfg_allowed = d.join("allowed.toml");
    std::fs::write(
        &cfg_allowed,
        format!("[collector]\nurl = \"{REMOTE}\"\ntoken = \"t\"\nallow_insecure_http = true\n"),
    )
    .unwrap();
    for (i, way) in [
        vec!["--collector", REMOTE, "--token", "t", "--allow-insecure-http"],
        vec!["--config", cfg_allowed.to_str().unwrap()],
    ]
    .into_iter()
    .enumerate()
    {
        let spool = d.join(format!("spool-allowed-{i}"));
        let mport = free_port();
        let listen = format!("127.0.0.1:{mport}");
        let mut args = way.clone();
        args.extend(["--spool-dir", spool.to_str().unwrap(), "--listen", &listen]);
        args.extend(["--interval", "60"]);
        let (mut a, log) = agent(&args, "insecure-node");
        wait_for(30, "the allowed agent's /healthz", || {
            (http_get(mport, "/healthz", None).0 == 200).then_some(())
        });
        assert_eq!(a.0.try_wait().unwrap(), None, "{way:?}: still running");
        let text = log.lock().unwrap().clone();
        let warnings: Vec<&str> = text.lines().filter(|l| l.contains("\"insecure_collector\"")).collect();
        assert_eq!(warnings.len(), 1, "{way:?}: one warning at start: {text}");
        assert!(warnings[0].contains("\"WARN\"") && warnings[0].contains(REMOTE), "{}", warnings[0]);
        assert!(spool.is_dir(), "{way:?}: the allowed agent keeps a spool");
    }

    // a collector on this host needs no flag, and gets no warning
    let mport = free_port();
    let listen = format!("127.0.0.1:{mport}");
    let spool = d.join("spool-loopback");
    let (_a, log) = agent(
        &[
            "--collector",
            &format!("http://127.0.0.1:{}", free_port()),
            "--token",
            "t",
            "--spool-dir",
            spool.to_str().unwrap(),
            "--listen",
            &listen,
        ],
        "insecure-node",
    );
    wait_for(30, "the loopback agent's /healthz", || {
        (http_get(mport, "/healthz", None).0 == 200).then_some(())
    });
    assert!(!log.lock().unwrap().contains("insecure_collector"));
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (scripts/test.sh installs it)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA (NAME-ca.pem, NAME-ca.key) and, when `server`, a certificate it signs
/// for localhost and 127.0.0.1 (NAME-server.pem, NAME-server.key).
fn ca(dir: &Path, name: &str, server: bool) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut a = vec!["req", "-x509", "-days", "2", "-subj"];
    let subj = format!("/CN=rigwatch test CA {name}");
    let (key, pem) = (format!("{name}-ca.key"), format!("{name}-ca.pem"));
    a.extend([subj.as_str(), "-keyout", &key, "-out", &pem]);
    a.extend(ec);
    openssl(dir, &a);
    if !server {
        return;
    }
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n\
         extendedKeyUsage = serverAuth\nsubjectAltName = DNS:localhost, IP:127.0.0.1\n",
    )
    .unwrap();
    let (skey, csr, spem) = (
        format!("{name}-server.key"),
        format!("{name}-server.csr"),
        format!("{name}-server.pem"),
    );
    let mut a = vec!["req", "-subj", "/CN=localhost", "-keyout", &skey, "-out", &csr];
    a.extend(ec);
    openssl(dir, &a);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &pem,
            "-CAkey",
            &key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            &spem,
        ],
    );
}

/// GET over HTTPS with curl, trusting `cacert`: (status, body).
fn https_get(cacert: &Path, port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}", "--cacert"]).arg(cacert);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = c
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .expect("curl (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Every file under `dir`, read.
fn read_tree(dir: &Path) -> String {
    let mut s = String::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            s += &read_tree(&p);
        } else {
            s += &String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default());
        }
    }
    s
}

fn metric(port: u16, name: &str) -> f64 {
    let (_, m) = http_get(port, "/metrics", None);
    m.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn https_ships_to_a_collector_its_ca_signs_and_refuses_any_other() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: needs root (exec events)");
        return;
    }
    let tmp = tmpdir("rwtls");
    let d = tmp.path();
    ca(d, "good", true);
    ca(d, "rogue", false);
    let collector = bin("rigwatch-collector", "rigwatch-collector");
    let data = d.join("data");
    let token_a = collector_token(&collector, &data, "tls-node-a", false);
    let token_b = collector_token(&collector, &data, "tls-node-b", false);
    let analyst = collector_token(&collector, &data, "soc", true);
    let cport = free_port();
    let _c = Kill(
        Command::new(&collector)
            .args(["serve", "--data-dir"])
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{cport}")])
            .arg("--tls-cert")
            .arg(d.join("good-server.pem"))
            .arg("--tls-key")
            .arg(d.join("good-server.key"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let good_ca = d.join("good-ca.pem");
    wait_for(20, "the collector answers over HTTPS", || {
        (https_get(&good_ca, cport, "/healthz", None).0 == 200).then_some(())
    });
    // it speaks HTTPS only: plain HTTP gets no answer
    assert_ne!(http_get(cport, "/healthz", None).0, 200);

    let url = format!("https://localhost:{cport}");
    let start = |host: &str, token: &str, ca: &str| {
        let cfg = d.join(format!("{host}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[scan]\ninterval_seconds = 5\nlower_priority = false\n[sensors]\ncapture = false\n\
                 [collector]\nheartbeat_seconds = 2\nca_file = \"{}\"\n",
                d.join(ca).display()
            ),
        )
        .unwrap();
        let mport = free_port();
        let spool = d.join(format!("spool-{host}"));
        let (a, log) = agent(
            &[
                "--config",
                cfg.to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{mport}"),
                "--collector",
                &url,
                "--token",
                token,
                "--spool-dir",
                spool.to_str().unwrap(),
            ],
            host,
        );
        (a, log, mport, spool)
    };
    let (_a, log_a, mport_a, _) = start("tls-node-a", &token_a, "good-ca.pem");
    let (_b, log_b, mport_b, spool_b) = start("tls-node-b", &token_b, "rogue-ca.pem");
    for p in [mport_a, mport_b] {
        wait_for(30, "the agents' /healthz", || {
            (http_get(p, "/healthz", None).0 == 200).then_some(())
        });
    }
    let (_m, pid) = start_xmrig(env!("CARGO_BIN_EXE_minersim"), d, WALLET, 90);

    // the agent that trusts the collector's CA ships the miner
    let finding = wait_for(60, "tls-node-a's finding at the collector", || {
        let (code, body) = https_get(&good_ca, cport, "/api/v1/findings?host=tls-node-a", Some(&analyst));
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).ok()?;
        let list = v.as_array().cloned().or_else(|| v["findings"].as_array().cloned())?;
        list.into_iter().find(|f| f["process"] == "xmrig" && f["severity"] == "confirmed")
    });
    let (code, full) = https_get(
        &good_ca,
        cport,
        &format!("/api/v1/findings/tls-node-a/{}", finding["id"].as_str().unwrap()),
        Some(&analyst),
    );
    assert_eq!(code, 200, "{full}");
    assert!(full.contains(&format!("\"pid\":{pid}")), "{full}");
    assert!(metric(mport_a, "rigwatch_shipper_delivered_events_total") >= 1.0);
    assert!(!log_a.lock().unwrap().contains("delivery_failed"), "{}", log_a.lock().unwrap());

    // the one whose CA did not sign the certificate sends nothing: the same
    // finding stays in its spool, and the log says why
    wait_for(60, "tls-node-b's finding in its spool", || {
        let s = read_tree(&spool_b);
        (s.contains("finding_opened") && s.contains(&format!("\"pid\":{pid}"))).then_some(())
    });
    let failures = metric(mport_b, "rigwatch_shipper_delivery_failures_total");
    wait_for(30, "another failed delivery from tls-node-b", || {
        (metric(mport_b, "rigwatch_shipper_delivery_failures_total") > failures).then_some(())
    });
    let log = log_with(&log_b, 10, "tls-node-b's delivery_failed line", |l| {
        l.contains("delivery_failed") && l.contains("certificate")
    });
    let line = log.lines().find(|l| l.contains("delivery_failed")).unwrap();
    assert!(line.contains("UnknownIssuer") && line.contains(&url), "{line}");
    assert_eq!(metric(mport_b, "rigwatch_shipper_delivered_events_total"), 0.0);
    assert!(metric(mport_b, "rigwatch_shipper_queue_events") >= 1.0);
    let (code, hosts) = https_get(&good_ca, cport, "/api/v1/hosts", Some(&analyst));
    assert_eq!(code, 200, "{hosts}");
    assert!(
        hosts.contains("tls-node-a") && !hosts.contains("tls-node-b"),
        "nothing of tls-node-b reached the collector: {hosts}"
    );
}
