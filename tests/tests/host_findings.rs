//! Host findings end to end: a cron entry that starts a miner which is not
//! running, a library in `/etc/ld.so.preload` and a kernel module hidden from
//! `/proc/modules` are findings about the host, not notes. They appear in
//! `rigwatch scan --json` (exit 1), on `/metrics` of `rigwatch run`, at a real
//! collector (API and host page) and as alerts in a real Alertmanager.

use rigwatch_e2e::{collector_token, free_port, http_get, wait_for, Alertmanager, KillOnDrop as Kill};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const WALLET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";
const HOST: &str = "host-findings-node";

fn bin(name: &str, package: &str) -> PathBuf {
    rigwatch_e2e::workspace_bin(package, name, env!("CARGO_BIN_EXE_minersim"))
}

/// A host root with the three footprints: a cron entry with a pool and a
/// wallet whose binary is not running, a preload library, a hidden module.
fn host_root(dir: &Path) -> String {
    let w = |rel: &str, text: &str| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w(
        "etc/cron.d/sysupdate",
        &format!("@reboot root /var/tmp/.sysupdate/sysupdate -o stratum+tcp://pool.supportxmr.com:3333 -u {WALLET}\n"),
    );
    w("etc/cron.d/logrotate", "0 3 * * * root /usr/sbin/logrotate /etc/logrotate.conf\n");
    w("etc/ld.so.preload", "/usr/local/lib/libprocesshider.so\n");
    w("proc/modules", "ext4 1 0 - Live 0x0\n");
    w("sys/module/ext4/initstate", "live\n");
    w("sys/module/diamorphine/initstate", "live\n");
    dir.display().to_string()
}

fn subject<'a>(findings: &'a [Value], kind: &str) -> &'a Value {
    findings
        .iter()
        .find(|f| f["subject"]["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} host finding in {findings:#?}"))
}

/// `rigwatch scan --json` over a host root: (exit code, report).
fn scan(root: &str, extra: &[&str]) -> (Option<i32>, Value) {
    let out = Command::new(bin("rigwatch", "rigwatch-agent"))
        .args([
            "scan",
            "--json",
            "--window",
            "0.3",
            "--no-capture",
            "--no-sockets",
            "--no-gpu",
            "--host-root",
            root,
        ])
        .args(extra)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), v)
}

#[test]
fn scan_reports_host_findings_and_exits_1() {
    let tmp = tempfile::Builder::new()
        .prefix("rwh")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let root = host_root(tmp.path());
    let (code, v) = scan(&root, &[]);
    assert_eq!(code, Some(1), "{v}");
    let findings = v["findings"].as_array().unwrap();

    let cron = subject(findings, "persistence");
    assert_eq!(cron["subject"]["name"], "/etc/cron.d/sysupdate");
    assert_eq!(cron["severity"], "confirmed", "pool URL + wallet in the entry: {cron}");
    assert!(cron.get("pid").is_none(), "a host finding has no pid: {cron}");
    let ev = &cron["evidence"][0];
    assert_eq!(ev["kind"], "persistence");
    assert_eq!(ev["weight"], "confirmed");
    assert!(ev["entry"].as_str().unwrap().contains("pool.supportxmr.com"), "{ev}");
    assert!(
        !findings.iter().any(|f| f["subject"]["name"] == "/etc/cron.d/logrotate"),
        "an entry without miner signs is nothing"
    );

    let preload = subject(findings, "preload");
    assert_eq!(preload["subject"]["name"], "/usr/local/lib/libprocesshider.so");
    assert_eq!(preload["severity"], "suspicious", "a lone preload library: {preload}");
    assert_eq!(preload["evidence"][0]["kind"], "preload");

    let module = subject(findings, "kernel_module");
    assert_eq!(module["subject"]["name"], "diamorphine");
    assert_eq!(module["severity"], "suspicious");
    assert_eq!(module["evidence"][0]["kind"], "kernel_module");
    assert!(
        !findings.iter().any(|f| f["subject"]["name"] == "ext4"),
        "a listed module is nothing"
    );

    // the host notes are gone: what is a finding is not said twice
    let warnings = v["warnings"].to_string();
    assert!(!warnings.contains("starts a miner"), "{warnings}");

    // the allowlist speaks for host subjects: a known preload library by path
    let sigdir = tmp.path().join("signatures.d");
    std::fs::create_dir_all(&sigdir).unwrap();
    std::fs::write(
        sigdir.join("allow.toml"),
        "[[rule]]\nid = \"site.allow-preload\"\nkind = \"allow\"\nseverity = \"info\"\n\
         paths = [\"/usr/local/lib/libprocesshider.so\"]\n\
         examples = { hit = [\"path:/usr/local/lib/libprocesshider.so\"] }\n",
    )
    .unwrap();
    let (_, v) = scan(&root, &["--signatures", sigdir.to_str().unwrap()]);
    let findings = v["findings"].as_array().unwrap();
    assert!(
        !findings.iter().any(|f| f["subject"]["kind"] == "preload"),
        "allowlisted: {findings:#?}"
    );
    assert_eq!(subject(findings, "persistence")["severity"], "confirmed", "the rest stays");
    assert!(
        v["warnings"].to_string().find("allow.toml").is_none(),
        "the rule loads: {}",
        v["warnings"]
    );
}

#[test]
fn run_exports_ships_and_alerts_host_findings() {
    let Some(am) = Alertmanager::start() else { return };
    let collector = bin("rigwatch-collector", "rigwatch-collector");
    let tmp = tempfile::Builder::new()
        .prefix("rwh")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let root = host_root(&tmp.path().join("host"));
    let data = tmp.path().join("data");
    let agent_token = collector_token(&collector, &data, "node-h", false);
    let analyst = collector_token(&collector, &data, "soc-h", true);
    let cport = free_port();
    let _c = Kill(
        Command::new(&collector)
            .args(["serve", "--data-dir"])
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{cport}"), "--alertmanager", &am.url])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(20, "collector /healthz", || {
        (http_get(cport, "/healthz", None).0 == 200).then_some(())
    });
    let cfg = tmp.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[scan]\ninterval_seconds = 1\nlower_priority = false\nhost_root = \"{root}\"\n\
             [sensors]\ncapture = false\nsockets = false\ngpu = false\nexec_events = false\n\
             [collector]\nheartbeat_seconds = 2\n[signatures]\ndirs = []\n"
        ),
    )
    .unwrap();
    // the token from a file, not on the command line where `ps` shows it
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, format!("{agent_token}\n")).unwrap();
    let mport = free_port();
    let _a = Kill(
        Command::new(bin("rigwatch", "rigwatch-agent"))
            .env("RIGWATCH_HOSTNAME", HOST)
            .args(["run", "--config", cfg.to_str().unwrap(), "--listen", &format!("127.0.0.1:{mport}")])
            .args([
                "--collector",
                &format!("http://127.0.0.1:{cport}"),
                "--token-file",
                token_file.to_str().unwrap(),
            ])
            .args(["--spool-dir", tmp.path().join("spool").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // /metrics: one series per host finding, named by its subject kind
    let metrics = wait_for(30, "host findings on /metrics", || {
        let (code, body) = http_get(mport, "/metrics", None);
        (code == 200
            && ["(persistence)", "(preload)", "(kernel_module)"]
                .iter()
                .all(|c| body.contains(&format!("comm=\"{c}\""))))
        .then_some(body)
    });
    assert_eq!(http_get(mport, "/healthz", None), (200, "ok\n".to_string()), "passes are fresh");
    let line = metrics
        .lines()
        .find(|l| l.starts_with("rigwatch_finding_active{") && l.contains("comm=\"(persistence)\""))
        .unwrap();
    assert!(line.contains("severity=\"confirmed\"") && line.contains("pid=\"\""), "{line}");
    assert!(metrics.contains("rigwatch_findings_active{severity=\"confirmed\"} 1"), "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("rigwatch_sensor_stat{sensor=\"persistence\",stat=\"persistence_entries\"} 1")),
        "every sensor counter is exported"
    );

    // the collector's API
    let findings: Vec<Value> = wait_for(30, "host findings at the collector", || {
        let (code, body) = http_get(cport, &format!("/api/v1/findings?host={HOST}"), Some(&analyst));
        let v: Value = serde_json::from_str(&body).ok()?;
        let list = v.as_array().cloned().or_else(|| v["findings"].as_array().cloned())?;
        (code == 200 && list.len() >= 3).then_some(list)
    });
    let cron = findings
        .iter()
        .find(|f| f["process"] == "persistence /etc/cron.d/sysupdate")
        .unwrap_or_else(|| panic!("{findings:#?}"));
    assert_eq!(cron["severity"], "confirmed");
    assert_eq!(cron["pool"], "supportxmr.com", "the entry's pool is the finding's: {cron}");
    let id = cron["id"].as_str().unwrap();
    let (code, full) = http_get(cport, &format!("/api/v1/findings/{HOST}/{id}"), Some(&analyst));
    assert_eq!(code, 200);
    assert!(
        full.contains("\"subject\":{\"kind\":\"persistence\",\"name\":\"/etc/cron.d/sysupdate\"}"),
        "{full}"
    );
    assert!(findings
        .iter()
        .any(|f| f["process"] == "kernel_module diamorphine" && f["severity"] == "suspicious"));
    assert!(findings.iter().any(|f| f["process"] == "preload /usr/local/lib/libprocesshider.so"));

    // the host page, as an analyst logged in
    let jar = tmp.path().join("cookies");
    let curl = |args: &[&str]| -> String {
        let o = Command::new("curl")
            .args(["-sS", "-b", jar.to_str().unwrap(), "-c", jar.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    curl(&["-d", &format!("token={analyst}"), &format!("http://127.0.0.1:{cport}/login")]);
    let page = curl(&[&format!("http://127.0.0.1:{cport}/hosts/{HOST}")]);
    assert!(page.contains("persistence /etc/cron.d/sysupdate"), "{page}");
    assert!(page.contains("kernel_module diamorphine"), "{page}");
    let detail = curl(&[&format!("http://127.0.0.1:{cport}/findings/{HOST}/{id}")]);
    assert!(detail.contains("id=\"subject-name\">/etc/cron.d/sysupdate<"), "{detail}");

    // Alertmanager: an alert naming host and subject
    let alert = wait_for(30, "the host finding's alert in Alertmanager", || {
        let o = Command::new("curl")
            .args(["-sS", &format!("{}/api/v2/alerts", am.url)])
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&o.stdout).ok()?;
        v.as_array()?
            .iter()
            .find(|a| a["labels"]["host"] == HOST && a["labels"]["process"] == "persistence /etc/cron.d/sysupdate")
            .cloned()
    });
    assert_eq!(alert["labels"]["severity"], "confirmed", "{alert}");
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .unwrap()
            .ends_with(": persistence /etc/cron.d/sysupdate"),
        "{alert}"
    );
}
