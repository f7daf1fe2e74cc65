//! Configuration as evidence end to end (issue 18): a local administrator
//! who allowlists something on one host is seen from outside it. A real
//! agent (`rigwatch run`) ships to a real collector (SQLite) that alerts a
//! real Alertmanager. The agent's first report sets the baseline (its
//! sensors already switched off are reported once); then a local allow
//! rule file is dropped into its signature directory, the agent reloads it
//! hot and says so in its next report, and Alertmanager shows
//! `RigwatchAgentConfigChanged` naming the host, the change (`allowlist`,
//! `overrides`) and the file. The collector's API and metrics say the same.

use rigwatch_e2e::{collector_token, free_port, http_get, wait_for, Alertmanager, KillOnDrop as Kill};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const HOST: &str = "config-evidence-node";

fn bin(name: &str, package: &str) -> PathBuf {
    rigwatch_e2e::workspace_bin(package, name, env!("CARGO_BIN_EXE_minersim"))
}

fn am_alerts(am: &str) -> Vec<Value> {
    let port: u16 = am.rsplit(':').next().unwrap().parse().unwrap();
    let (code, body) = http_get(port, "/api/v2/alerts", None);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn config_alert(am: &str, change: &str) -> Option<Value> {
    am_alerts(am)
        .into_iter()
        .find(|a| a["labels"]["alertname"] == "RigwatchAgentConfigChanged" && a["labels"]["change"] == change)
}

/// A collector over `dir/data`, alerting the Alertmanager at `am`, with
/// `policy` as its config file's text and `flags` added, once it answers:
/// (its guard, its port, an agent token `node-TAG`, an analyst token `soc-TAG`).
fn serve(dir: &Path, tag: &str, am: &str, policy: &str, flags: &[&str]) -> (Kill, u16, String, String) {
    let collector = bin("rigwatch-collector", "rigwatch-collector");
    let data = dir.join("data");
    let agent_token = collector_token(&collector, &data, &format!("node-{tag}"), false);
    let analyst = collector_token(&collector, &data, &format!("soc-{tag}"), true);
    let ccfg = dir.join("collector.toml");
    std::fs::write(&ccfg, policy).unwrap();
    let cport = free_port();
    let c = Kill(
        Command::new(&collector)
            .args(["serve", "--config", ccfg.to_str().unwrap(), "--data-dir"])
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{cport}"), "--alertmanager", am])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(20, "collector /healthz", || {
        (http_get(cport, "/healthz", None).0 == 200).then_some(())
    });
    (c, cport, agent_token, analyst)
}

/// `rigwatch run` as HOST, shipping to the collector on `cport` with the
/// agent token, its signatures from `sigdir`, `collector_extra` added to
/// its `[collector]` section; capture, sockets, GPU, exec events and
/// rounding switched off.
fn run_agent(rigwatch: &Path, dir: &Path, cport: u16, token: &str, host: &str, sigdir: &Path, collector_extra: &str) -> Kill {
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[scan]\ninterval_seconds = 1\nlower_priority = false\n\
             [sensors]\ncapture = false\nsockets = false\ngpu = false\nexec_events = false\nrounding = false\n\
             [collector]\nheartbeat_seconds = 2\n{collector_extra}\n[signatures]\ndirs = [\"{}\"]\n",
            sigdir.display()
        ),
    )
    .unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    Kill(
        Command::new(rigwatch)
            .env("RIGWATCH_HOSTNAME", host)
            .args([
                "run",
                "--config",
                cfg.to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{}", free_port()),
            ])
            .args([
                "--collector",
                &format!("http://127.0.0.1:{cport}"),
                "--token-file",
                token_file.to_str().unwrap(),
            ])
            .args(["--spool-dir", dir.join("spool").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn a_local_allowlist_entry_alerts_at_alertmanager_naming_host_and_change() {
    let Some(am) = Alertmanager::start() else { return };
    let rigwatch = bin("rigwatch", "rigwatch-agent");
    let tmp = tempfile::Builder::new()
        .prefix("rwcfg")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let (_c, cport, agent_token, analyst) = serve(tmp.path(), "cfg", &am.url, "", &["--silent-after", "6", "--alert-resend", "1"]);
    let sigdir = tmp.path().join("signatures.d");
    std::fs::create_dir_all(&sigdir).unwrap();
    let agent_proc = run_agent(&rigwatch, tmp.path(), cport, &agent_token, HOST, &sigdir, "fleet = false");
    let history = || -> Vec<Value> {
        let (code, body) = http_get(cport, &format!("/api/v1/hosts/{HOST}/config"), Some(&analyst));
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };

    // the baseline: the agent's configuration, its sensors switched off reported once
    let base = wait_for(30, "the agent's configuration at the collector", || history().into_iter().next());
    let st = &base["state"];
    assert_eq!(st["digest"].as_str().unwrap().len(), 64, "{base}");
    assert_eq!(st["allowlist"]["local"], 0, "{base}");
    assert_eq!(st["collector"], format!("http://127.0.0.1:{cport}"));
    let off: Vec<&str> = st["sensors_off"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(off, ["capture", "exec_events", "gpu", "rounding", "sockets"], "{base}");
    let a = wait_for(20, "the sensors_off alert of the first report", || {
        config_alert(&am.url, "sensors_off")
    });
    assert_eq!(a["labels"]["host"], HOST);
    assert!(a["annotations"]["after"].as_str().unwrap().contains("capture"), "{a}");
    assert!(config_alert(&am.url, "allowlist").is_none(), "no local allowlist yet");

    // the local root allowlists his own directory
    let allow = sigdir.join("zz-local-allow.toml");
    std::fs::write(
        &allow,
        "[[rule]]\nid = \"site.allow-opt-tools\"\nkind = \"allow\"\nseverity = \"info\"\n\
         paths = [\"/opt/tools/\"]\nexamples = { hit = [\"path:/opt/tools/x\"] }\n",
    )
    .unwrap();
    let a = wait_for(30, "the allowlist alert in Alertmanager", || config_alert(&am.url, "allowlist"));
    let l = &a["labels"];
    assert_eq!(l["host"], HOST);
    assert_eq!(l["severity"], "warning");
    assert_eq!(a["status"]["state"], "active");
    let ann = &a["annotations"];
    assert!(ann["summary"].as_str().unwrap().contains(HOST), "{a}");
    assert!(ann["summary"].as_str().unwrap().contains("allowlist"), "{a}");
    assert!(ann["before"].as_str().unwrap().contains("0 local"), "{a}");
    let after = ann["after"].as_str().unwrap();
    assert!(after.contains("1 local") && after.contains(&allow.display().to_string()), "{a}");
    assert!(a["generatorURL"].as_str().unwrap().ends_with(&format!("/hosts/{HOST}")), "{a}");
    let o = wait_for(10, "the overrides alert", || config_alert(&am.url, "overrides"));
    assert!(o["annotations"]["after"].as_str().unwrap().contains("added"), "{o}");
    assert_eq!(o["labels"]["host"], HOST);

    // the history and the metrics say the same
    let h = history();
    assert!(h.len() >= 2, "{h:?}");
    assert!(
        h[0]["changes"].as_array().unwrap().iter().any(|c| c["what"] == "allowlist"),
        "{h:?}"
    );
    let (_, m) = http_get(cport, "/metrics", None);
    assert!(
        m.contains("rigwatch_collector_agent_config_changes_total{what=\"allowlist\"} 1"),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "rigwatch_collector_agent_sensors_off{{host=\"{HOST}\",sensor=\"capture\"}} 1"
        )),
        "{m}"
    );

    // stopping the agent is said on the way out: SIGTERM, a last event, exit 0
    let mut agent = agent_proc;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.0.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = wait_for(10, "the agent to exit on SIGTERM", || agent.0.try_wait().unwrap());
    assert!(status.success(), "{status:?}");
    let h = wait_for(10, "the host shown stopped", || {
        let (_, body) = http_get(cport, "/api/v1/hosts", Some(&analyst));
        let v: Vec<Value> = serde_json::from_str(&body).ok()?;
        v.into_iter().find(|h| h["host"] == HOST && h["stopped"] == "SIGTERM")
    });
    assert_eq!(h["stopped"], "SIGTERM", "{h}");

    // silent minutes after its allowlist changed: called out, critical, the change named
    let s = wait_for(30, "the silent alert in Alertmanager", || {
        am_alerts(&am.url)
            .into_iter()
            .find(|a| a["labels"]["alertname"] == "RigwatchAgentSilent" && a["labels"]["host"] == HOST)
    });
    assert_eq!(s["labels"]["after_config_change"], "true", "{s}");
    assert_eq!(s["labels"]["severity"], "critical", "{s}");
    let d = s["annotations"]["description"].as_str().unwrap();
    assert!(
        d.contains("SIGTERM") && d.contains("after its configuration changed") && d.contains("allowlist"),
        "{s}"
    );
    let (_, body) = http_get(cport, "/api/v1/hosts", Some(&analyst));
    let v: Vec<Value> = serde_json::from_str(&body).unwrap();
    let h = v.iter().find(|h| h["host"] == HOST).unwrap();
    assert!(h["silent_after_change"].as_str().unwrap().contains("allowlist"), "{h}");
}

const WALLET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";

/// The collector's `[policy] local_allowlist = "forbid"` reaches the agent
/// in the signed fleet set: the local allow rule that would exempt the
/// miner simulator's directory is dropped and reported (`ignored_by_policy`,
/// its file named, an alert), and the simulator is still confirmed.
#[test]
fn a_policy_that_forbids_local_allowlists_reports_the_entry_and_still_confirms_the_miner() {
    let Some(am) = Alertmanager::start() else { return };
    let rigwatch = bin("rigwatch", "rigwatch-agent");
    let tmp = tempfile::Builder::new().prefix("rwpol").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (_c, cport, agent_token, analyst) = serve(tmp.path(), "pol", &am.url, "[policy]\nlocal_allowlist = \"forbid\"\n", &[]);
    // the miner simulator, in a directory the local root allowlists
    let minerdir = tmp.path().join("tools");
    std::fs::create_dir_all(&minerdir).unwrap();
    std::fs::set_permissions(&minerdir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let sigdir = tmp.path().join("signatures.d");
    std::fs::create_dir_all(&sigdir).unwrap();
    let allow = sigdir.join("local-allow.toml");
    std::fs::write(
        &allow,
        format!(
            "[[rule]]\nid = \"site.allow-tools\"\nkind = \"allow\"\nseverity = \"info\"\n\
             paths = [\"{d}/\"]\nexamples = {{ hit = [\"path:{d}/x\"] }}\n",
            d = minerdir.display()
        ),
    )
    .unwrap();
    let (_miner, _pid) = rigwatch_e2e::start_xmrig(env!("CARGO_BIN_EXE_minersim"), &minerdir, WALLET, 120);
    let host = "policy-node";
    let _a = run_agent(&rigwatch, tmp.path(), cport, &agent_token, host, &sigdir, "fleet_poll_seconds = 1");

    // the entry is reported, as ignored by the policy
    let state = wait_for(60, "the ignored local allow rule at the collector", || {
        let (code, body) = http_get(cport, &format!("/api/v1/hosts/{host}/config"), Some(&analyst));
        assert_eq!(code, 200, "{body}");
        let h: Vec<Value> = serde_json::from_str(&body).unwrap();
        h.into_iter()
            .next()
            .map(|r| r["state"].clone())
            .filter(|s| s["allowlist"]["ignored_by_policy"] == 1)
    });
    assert_eq!(state["allowlist"]["local"], 0, "{state}");
    assert_eq!(state["allowlist"]["files"][0], allow.display().to_string(), "{state}");
    let a = wait_for(20, "the allowlist alert", || {
        config_alert(&am.url, "allowlist").filter(|a| a["annotations"]["after"].as_str().unwrap_or("").contains("ignored by policy"))
    });
    assert_eq!(a["labels"]["host"], host);
    assert!(
        a["annotations"]["after"].as_str().unwrap().contains(&allow.display().to_string()),
        "{a}"
    );

    // and the miner it would have exempted is confirmed
    let exe = minerdir.join("xmrig");
    let f = wait_for(60, "the miner simulator confirmed at the collector", || {
        let (code, body) = http_get(cport, &format!("/api/v1/findings?host={host}"), Some(&analyst));
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).ok()?;
        let list = v.as_array().cloned().or_else(|| v["findings"].as_array().cloned())?;
        list.into_iter()
            .find(|f| f["exe"].as_str() == exe.to_str() && f["severity"] == "confirmed")
    });
    assert_eq!(f["state"], "open", "{f}");
}

fn drift_alert(am: &str, host: &str, policy: &str) -> Option<Value> {
    am_alerts(am)
        .into_iter()
        .find(|a| a["labels"]["alertname"] == "RigwatchAgentPolicyDrift" && a["labels"]["host"] == host && a["labels"]["policy"] == policy)
}

/// What the webhook received, parsed, with `alertname` and `status`.
fn hook_messages(got: &std::sync::Mutex<Vec<String>>, alertname: &str, status: &str) -> Vec<Value> {
    got.lock()
        .unwrap()
        .iter()
        .filter_map(|b| serde_json::from_str::<Value>(b).ok())
        .filter(|m| m["alertname"] == alertname && m["status"] == status)
        .collect()
}

/// The collector's `[policy]` requires the capture sensor and forbids local
/// signature files. A host whose agent switches capture off drifts from it:
/// `RigwatchAgentPolicyDrift` at a real Alertmanager and a message at the
/// webhook, naming the host and the sensor; a local signature file dropped
/// into its signature directory is a second drift (and a configuration
/// change at the webhook naming the file); the file removed, that drift
/// resolves at both. The API and the metrics say the same.
#[test]
fn a_host_that_departs_from_the_fleet_policy_alerts_until_it_holds_to_it_again() {
    let Some(am) = Alertmanager::start() else { return };
    let rigwatch = bin("rigwatch", "rigwatch-agent");
    let tmp = tempfile::Builder::new()
        .prefix("rwdrift")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let (hook_port, got) = rigwatch_e2e::webhook_receiver();
    let hook = format!("http://127.0.0.1:{hook_port}/hook");
    let (_c, cport, agent_token, analyst) = serve(
        tmp.path(),
        "drift",
        &am.url,
        "[policy]\nlocal_overrides = \"forbid\"\nrequired_sensors = [\"capture\", \"binary\"]\n",
        &["--webhook", &hook, "--alert-resend", "1"],
    );
    let sigdir = tmp.path().join("signatures.d");
    std::fs::create_dir_all(&sigdir).unwrap();
    let host = "drift-node";
    let _a = run_agent(&rigwatch, tmp.path(), cport, &agent_token, host, &sigdir, "fleet = false");

    // capture off, required: drift, named, at Alertmanager and the webhook
    let a = wait_for(30, "the required_sensors drift alert", || {
        drift_alert(&am.url, host, "required_sensors")
    });
    assert_eq!(a["labels"]["severity"], "warning", "{a}");
    let d = a["annotations"]["description"].as_str().unwrap();
    assert_eq!(
        d, "required sensors switched off: capture",
        "gpu, sockets… are off but not required: {a}"
    );
    assert!(a["generatorURL"].as_str().unwrap().ends_with(&format!("/hosts/{host}")), "{a}");
    assert!(drift_alert(&am.url, host, "local_overrides").is_none(), "no local file yet");
    let m = wait_for(10, "the drift at the webhook", || {
        hook_messages(&got, "RigwatchAgentPolicyDrift", "firing").into_iter().next()
    });
    assert_eq!(
        (m["host"].as_str(), m["policy"].as_str()),
        (Some(host), Some("required_sensors")),
        "{m}"
    );
    assert!(m["text"].as_str().unwrap().contains("capture"), "{m}");
    // the first report's sensors_off change reaches the webhook too
    let c = wait_for(10, "the configuration change at the webhook", || {
        hook_messages(&got, "RigwatchAgentConfigChanged", "firing").into_iter().next()
    });
    assert_eq!(c["host"], host, "{c}");
    assert!(c["text"].as_str().unwrap().contains("sensors_off"), "{c}");

    // a local signature file, forbidden: a second drift, and the change names it
    let local = sigdir.join("site-names.toml");
    std::fs::write(
        &local,
        "[[rule]]\nid = \"site.tool\"\nkind = \"process_name\"\nseverity = \"suspicious\"\ndescription = \"a site tool\"\n\
         names = [\"sitetool\"]\nexamples = { hit = [\"name:sitetool\"] }\n",
    )
    .unwrap();
    let a = wait_for(30, "the local_overrides drift alert", || {
        drift_alert(&am.url, host, "local_overrides")
    });
    assert!(
        a["annotations"]["description"]
            .as_str()
            .unwrap()
            .contains(&local.display().to_string()),
        "{a}"
    );
    wait_for(10, "the overrides change at the webhook", || {
        hook_messages(&got, "RigwatchAgentConfigChanged", "firing").into_iter().find(|m| {
            m["text"].as_str().unwrap_or("").contains("overrides") && m["text"].as_str().unwrap_or("").contains("site-names.toml")
        })
    });
    let (code, body) = http_get(cport, "/api/v1/policy", Some(&analyst));
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["policy"]["required_sensors"], serde_json::json!(["capture", "binary"]), "{v}");
    let mut rules: Vec<&str> = v["drift"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["host"] == host)
        .map(|d| d["policy"].as_str().unwrap())
        .collect();
    rules.sort();
    assert_eq!(rules, ["local_overrides", "required_sensors"], "{v}");
    let (_, m) = http_get(cport, "/metrics", None);
    assert!(
        m.contains(&format!(
            "rigwatch_collector_agent_policy_drift{{host=\"{host}\",policy=\"local_overrides\"}} 1"
        )),
        "{m}"
    );
    // the API refuses anyone without an analyst token
    assert_eq!(http_get(cport, "/api/v1/policy", Some(&agent_token)).0, 403);

    // the file removed: that drift resolves at the webhook and Alertmanager, the other stays
    std::fs::remove_file(&local).unwrap();
    let r = wait_for(30, "the drift resolved at the webhook", || {
        hook_messages(&got, "RigwatchAgentPolicyDrift", "resolved").into_iter().next()
    });
    assert_eq!(
        (r["host"].as_str(), r["policy"].as_str()),
        (Some(host), Some("local_overrides")),
        "{r}"
    );
    wait_for(20, "the local_overrides alert gone from Alertmanager", || {
        drift_alert(&am.url, host, "local_overrides").is_none().then_some(())
    });
    assert!(drift_alert(&am.url, host, "required_sensors").is_some());
    let (_, m) = http_get(cport, "/metrics", None);
    assert!(!m.contains("policy=\"local_overrides\""), "{m}");
}
