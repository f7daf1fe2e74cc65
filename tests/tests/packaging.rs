//! `packaging/`: the systemd units pass `systemd-analyze verify`, the Debian
//! packages build with the right contents, and — as root with dpkg — they
//! install, and the installed units' commands run as their units would run
//! them (user, capabilities, no-new-privileges) and catch a miner end to end.

use rigwatch_e2e::{free_port, http_get, start_xmrig, wait_for, KillOnDrop};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const WALLET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";
/// What the agent needs, and all it gets (without response actions).
const AGENT_CAPS: [&str; 6] = [
    "CAP_SYS_PTRACE",
    "CAP_DAC_READ_SEARCH",
    "CAP_NET_RAW",
    "CAP_NET_ADMIN",
    "CAP_BPF",
    "CAP_PERFMON",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Every value of `key` in a unit file, in order (repeated keys accumulate).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('=').map(|v| v.trim().to_string()))
        .collect()
}

fn unit_value(unit: &str, key: &str) -> String {
    unit_values(unit, key).pop().unwrap_or_else(|| panic!("no {key}= in the unit"))
}

fn caps(v: &str) -> BTreeSet<String> {
    v.split_whitespace().map(String::from).collect()
}

/// A root directory for `systemd-analyze verify --root`: systemd's own units
/// (targets), the units under test, and the binaries their ExecStart names.
fn verify_root(dir: &Path, units: &[(&str, &str)]) -> PathBuf {
    let root = dir.join("root");
    let sys = root.join("lib/systemd/system");
    std::fs::create_dir_all(&sys).unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    let st = Command::new("cp")
        .arg("-r")
        .arg("/lib/systemd/system/.")
        .arg(&sys)
        .status()
        .unwrap();
    assert!(st.success());
    for (name, body) in units {
        std::fs::write(sys.join(name), body).unwrap();
    }
    for (pkg, bin) in [("rigwatch-agent", "rigwatch"), ("rigwatch-collector", "rigwatch-collector")] {
        let b = rigwatch_e2e::workspace_bin(pkg, bin, env!("CARGO_BIN_EXE_minersim"));
        std::fs::copy(b, root.join("usr/bin").join(bin)).unwrap();
    }
    root
}

fn verify(root: &Path, units: &[&str]) -> Output {
    Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(units)
        .output()
        .expect("systemd-analyze (Debian package systemd; scripts/test.sh installs it)")
}

#[test]
fn systemd_units_verify_clean_and_grant_only_what_the_agent_needs() {
    let agent = std::fs::read_to_string(repo().join("packaging/systemd/rigwatch.service")).unwrap();
    let collector = std::fs::read_to_string(repo().join("packaging/systemd/rigwatch-collector.service")).unwrap();
    let tmp = tempfile::Builder::new()
        .prefix("rwunit")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let broken = agent
        .replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
        .replace("Nice=10", "Nice=ten");
    let root = verify_root(
        tmp.path(),
        &[
            ("rigwatch.service", &agent),
            ("rigwatch-collector.service", &collector),
            ("rigwatch-broken.service", &broken),
        ],
    );
    let out = verify(&root, &["rigwatch.service", "rigwatch-collector.service"]);
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "verify is not clean:\n{}",
        text(&out)
    );
    // the same check on a unit with two mistakes names both
    let bad = text(&verify(&root, &["rigwatch-broken.service"]));
    assert!(bad.contains("Unknown key 'NoNewPrivilege'") && bad.contains("'ten'"), "{bad}");

    // the agent: six capabilities, bounded and ambient, as an unprivileged user
    let want: BTreeSet<String> = AGENT_CAPS.iter().map(|c| c.to_string()).collect();
    assert_eq!(caps(&unit_value(&agent, "CapabilityBoundingSet")), want);
    assert_eq!(caps(&unit_value(&agent, "AmbientCapabilities")), want);
    assert_eq!(unit_value(&agent, "User"), "rigwatch");
    assert_eq!(
        unit_value(&agent, "ExecStart"),
        "/usr/bin/rigwatch run --config /etc/rigwatch/agent.toml"
    );
    for (k, v) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "read-only"),
        ("PrivateTmp", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("StateDirectory", "rigwatch"),
        // the agent must see every process
        ("ProtectProc", "default"),
    ] {
        assert_eq!(unit_value(&agent, k), v, "{k}");
    }
    // response actions add CAP_KILL, and only that
    let response = std::fs::read_to_string(repo().join("packaging/systemd/response.conf")).unwrap();
    let mut with_kill = want.clone();
    with_kill.insert("CAP_KILL".into());
    assert_eq!(caps(&unit_value(&response, "CapabilityBoundingSet")), with_kill);
    assert_eq!(caps(&unit_value(&response, "AmbientCapabilities")), with_kill);
    // the collector: no capability at all
    assert_eq!(unit_value(&collector, "CapabilityBoundingSet"), "");
    assert_eq!(unit_value(&collector, "User"), "rigwatch-collector");
    assert_eq!(unit_value(&collector, "ProtectHome"), "yes");

    // systemd's own exposure score (0 = locked down, 10 = unprotected)
    for (unit, most) in [("rigwatch.service", 4.0), ("rigwatch-collector.service", 2.0)] {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(format!("--root={}", root.display()))
            .arg(unit)
            .output()
            .unwrap();
        let t = text(&out);
        let score: f64 = t
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level:\n{t}"));
        assert!(score <= most, "{unit}: exposure {score} > {most}\n{t}");
        eprintln!("{unit}: systemd-analyze security exposure {score}");
    }
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let out = Command::new("dpkg-deb").args(args).arg(deb).output().expect("dpkg-deb");
    assert!(out.status.success(), "dpkg-deb {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn control_file(deb: &Path, name: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("dpkg-deb --ctrl-tarfile '{}' | tar -xO ./{name}", deb.display()))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a unit's ExecStart (plus `extra` arguments) the way systemd would:
/// as its User, with its capability bounding and ambient sets, no new privileges.
fn as_unit(unit: &str, extra: &[&str]) -> Command {
    let list = |k: &str| -> String {
        let c: Vec<String> = caps(&unit_value(unit, k))
            .iter()
            .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
            .collect();
        std::iter::once("-all".to_string()).chain(c).collect::<Vec<_>>().join(",")
    };
    let user = unit_value(unit, "User");
    let exec = unit_value(unit, "ExecStart");
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={user}"))
        .arg(format!("--regid={}", unit_value(unit, "Group")))
        .arg("--init-groups")
        .arg(format!("--inh-caps={}", list("AmbientCapabilities")))
        .arg(format!("--ambient-caps={}", list("AmbientCapabilities")))
        .arg(format!("--bounding-set={}", list("CapabilityBoundingSet")));
    if unit_value(unit, "NoNewPrivileges") == "yes" {
        c.arg("--no-new-privs");
    }
    c.arg("--").args(exec.split_whitespace()).args(extra);
    c
}

fn sh(cmd: &str) -> Output {
    Command::new("sh").arg("-c").arg(cmd).output().unwrap()
}

#[test]
fn debian_packages_build_install_and_catch_a_miner() {
    let out = Command::new(repo().join("scripts/package.sh")).output().unwrap();
    assert!(out.status.success(), "scripts/package.sh failed:\n{}", text(&out));
    let debs = repo().join("target/debian");
    let agent = debs.join(format!("rigwatch_{}-1_amd64.deb", env!("CARGO_PKG_VERSION")));
    let collector = debs.join(format!("rigwatch-collector_{}-1_amd64.deb", env!("CARGO_PKG_VERSION")));

    // contents
    for (deb, name, files, conffiles) in [
        (
            &agent,
            "rigwatch",
            &[
                "./usr/bin/rigwatch",
                "./etc/rigwatch/agent.toml",
                "./etc/rigwatch/signatures.d/README",
                "./usr/lib/systemd/system/rigwatch.service",
                "./usr/lib/sysusers.d/rigwatch.conf",
                "./usr/share/doc/rigwatch/response.conf",
                "./usr/share/doc/rigwatch/RULES.md",
            ][..],
            "/etc/rigwatch/agent.toml\n/etc/rigwatch/signatures.d/README\n",
        ),
        (
            &collector,
            "rigwatch-collector",
            &[
                "./usr/bin/rigwatch-collector",
                "./etc/rigwatch/collector.toml",
                "./usr/lib/systemd/system/rigwatch-collector.service",
                "./usr/lib/sysusers.d/rigwatch-collector.conf",
            ][..],
            "/etc/rigwatch/collector.toml\n",
        ),
    ] {
        let info = dpkg_deb(&["-f"], deb);
        assert!(info.contains(&format!("Package: {name}\n")), "{info}");
        assert!(info.contains("Depends: ") && info.contains("systemd"), "{info}");
        if name == "rigwatch-collector" {
            // postinst makes the collector's certificate with it
            let depends = info.lines().find(|l| l.starts_with("Depends: ")).unwrap();
            assert!(depends.split([',', ' ']).any(|d| d == "openssl"), "{depends}");
        }
        let list = dpkg_deb(&["-c"], deb);
        for f in files {
            assert!(list.lines().any(|l| l.ends_with(f)), "{name}: {f} missing:\n{list}");
        }
        // the config holds the token: not world-readable
        let cfg = files[1];
        assert!(
            list.lines().any(|l| l.starts_with("-rw-r----- ") && l.ends_with(cfg)),
            "{cfg}:\n{list}"
        );
        assert_eq!(control_file(deb, "conffiles"), conffiles);
        let postinst = control_file(deb, "postinst");
        for s in [
            "systemd-sysusers".to_string(),
            format!("deb-systemd-helper enable {name}.service"),
            format!("$_dh_action {name}.service"),
        ] {
            assert!(postinst.contains(&s), "{name} postinst lacks {s}:\n{postinst}");
        }
        if name == "rigwatch" {
            // the reason for the agent's last event is left before the service is stopped
            let prerm = control_file(deb, "prerm");
            let marker = prerm.find("/run/rigwatch/stopping").unwrap_or_else(|| panic!("prerm:\n{prerm}"));
            if let Some(stop) = prerm.find("deb-systemd-invoke stop") {
                assert!(marker < stop, "prerm stops the service before it says why:\n{prerm}");
            }
        }
        // the binary in the package is stripped; its symbols are in -dbgsym
        let bytes = list.lines().find(|l| l.ends_with(&format!("./usr/bin/{name}"))).unwrap();
        let size: u64 = bytes.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert!(size < 40 << 20, "{name}: {size} bytes, not stripped?");
        assert!(debs
            .join(format!("{name}-dbgsym_{}-1_amd64.ddeb", env!("CARGO_PKG_VERSION")))
            .exists());
    }

    if !nix::unistd::geteuid().is_root() || std::env::var("RIGWATCH_TEST_INSTALL").as_deref() == Ok("0") {
        eprintln!("SKIP install: needs root (RIGWATCH_TEST_INSTALL=0 turns it off)");
        return;
    }
    install_and_run(&agent, &collector);
}

struct Purge;
impl Drop for Purge {
    fn drop(&mut self) {
        let _ = sh("dpkg --purge rigwatch rigwatch-collector");
    }
}

/// The certificate postinst makes for the collector, trusted as a CA.
const COLLECTOR_CERT: &str = "/etc/rigwatch/collector.pem";

/// `GET https://NAME:PORT/PATH` with curl, NAME resolved to 127.0.0.1 and
/// the collector's certificate as the only CA: (status, body).
fn https_get(name: &str, port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}", "--cacert", COLLECTOR_CERT]);
    c.args(["--resolve", &format!("{name}:{port}:127.0.0.1")]);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = c.arg(format!("https://{name}:{port}{path}")).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn install_and_run(agent: &Path, collector: &Path) {
    let _ = sh("dpkg --purge rigwatch rigwatch-collector");
    let out = Command::new("dpkg").arg("-i").arg(agent).arg(collector).output().unwrap();
    let purge = Purge;
    assert!(out.status.success(), "dpkg -i:\n{}", text(&out));
    // the system users, the protected configs and the enabled units
    for u in ["rigwatch", "rigwatch-collector"] {
        let out = sh(&format!("getent passwd {u}"));
        assert!(
            out.status.success() && text(&out).contains("/usr/sbin/nologin"),
            "{u}: {}",
            text(&out)
        );
    }
    let out = sh("stat -c '%a %U %G %n' /etc/rigwatch/agent.toml /etc/rigwatch/collector.toml");
    assert_eq!(
        text(&out),
        "640 root rigwatch /etc/rigwatch/agent.toml\n640 root rigwatch-collector /etc/rigwatch/collector.toml\n"
    );
    // HTTPS out of the box: a self-signed certificate for this host, its key
    // readable by the collector only, the packaged config serving with them
    let out = sh("stat -c '%a %U %G %n' /etc/rigwatch/collector.pem /etc/rigwatch/collector.key");
    assert_eq!(
        text(&out),
        "644 root root /etc/rigwatch/collector.pem\n640 root rigwatch-collector /etc/rigwatch/collector.key\n"
    );
    let host = String::from_utf8_lossy(&sh("hostname").stdout).trim().to_string();
    let san = text(&sh(
        "openssl x509 -in /etc/rigwatch/collector.pem -noout -ext subjectAltName,basicConstraints",
    ));
    for name in [
        format!("DNS:{host}"),
        "DNS:localhost".into(),
        "IP Address:127.0.0.1".into(),
        "CA:FALSE".into(),
    ] {
        assert!(san.contains(&name), "the collector's certificate lacks {name}:\n{san}");
    }
    let ccfg = std::fs::read_to_string("/etc/rigwatch/collector.toml").unwrap();
    for l in [
        "tls_cert = \"/etc/rigwatch/collector.pem\"",
        "tls_key = \"/etc/rigwatch/collector.key\"",
    ] {
        assert!(ccfg.lines().any(|x| x == l), "collector.toml lacks {l}");
    }
    for u in ["rigwatch", "rigwatch-collector"] {
        let wants = format!("/etc/systemd/system/multi-user.target.wants/{u}.service");
        assert!(Path::new(&wants).exists(), "{wants}: the unit is not enabled");
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "rigwatch.service", "rigwatch-collector.service"])
        .output()
        .unwrap();
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "installed units:\n{}",
        text(&out)
    );

    // the collector, as its unit runs it, with a token per agent and one for the SOC
    let cunit = std::fs::read_to_string("/lib/systemd/system/rigwatch-collector.service").unwrap();
    let aunit = std::fs::read_to_string("/lib/systemd/system/rigwatch.service").unwrap();
    let token = |args: &[&str]| -> String {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=rigwatch-collector", "--regid=rigwatch-collector", "--init-groups", "--"]);
        c.args(["/usr/bin/rigwatch-collector", "token", "create"]).args(args);
        let out = c.args(["--config", "/etc/rigwatch/collector.toml"]).output().unwrap();
        assert!(out.status.success(), "token create: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).lines().last().unwrap().trim().to_string()
    };
    let agent_token = token(&["deb-test-node"]);
    let soc = token(&["soc", "--analyst"]);
    let cport = free_port();
    let listen = format!("127.0.0.1:{cport}");
    let _c = KillOnDrop(as_unit(&cunit, &["--listen", &listen]).stdout(Stdio::null()).spawn().unwrap());
    wait_for(20, "collector answers over HTTPS", || {
        (https_get("localhost", cport, "/healthz", None).0 == 200).then_some(())
    });
    // under this host's name too, verified against the generated certificate;
    // and never in plain HTTP
    let (code, body) = https_get(&host, cport, "/healthz", None);
    assert_eq!((code, body.trim()), (200, "ok"), "https://{host}:{cport}/healthz");
    assert_ne!(http_get(cport, "/healthz", None).0, 200, "plain HTTP answered");

    // the agent's packaged config, as an admin sets it: the collector's
    // certificate as the CA
    let acfg = std::fs::read_to_string("/etc/rigwatch/agent.toml").unwrap();
    let with_ca = acfg.replace(
        "# ca_file = \"/etc/rigwatch/collector-ca.pem\"",
        &format!("ca_file = \"{COLLECTOR_CERT}\""),
    );
    assert_ne!(with_ca, acfg, "agent.toml shows no ca_file line");
    std::fs::write("/etc/rigwatch/agent.toml", with_ca).unwrap();

    // the agent, as its unit runs it: user rigwatch, four capabilities
    let sh_out = sh("install -d -o rigwatch -g rigwatch -m 0750 /var/lib/rigwatch");
    assert!(sh_out.status.success());
    let mport = free_port();
    let _a = KillOnDrop(
        as_unit(
            &aunit,
            &[
                "--listen",
                &format!("127.0.0.1:{mport}"),
                "--collector",
                &format!("https://localhost:{cport}"),
                "--token",
                &agent_token,
            ],
        )
        .env("RIGWATCH_HOSTNAME", "deb-test-node")
        .stdout(Stdio::null())
        .spawn()
        .unwrap(),
    );
    // with only its four capabilities every sensor that needs one works
    let sensors = ["process", "binary", "sockets", "capture", "exec_events", "hidden"];
    let t = std::time::Instant::now();
    loop {
        let (_, metrics) = http_get(mport, "/metrics", None);
        let down: Vec<&str> = sensors
            .iter()
            .copied()
            .filter(|s| !metrics.contains(&format!("rigwatch_sensor_up{{sensor=\"{s}\"}} 1")))
            .collect();
        if down.is_empty() {
            break;
        }
        assert!(
            t.elapsed().as_secs() < 30,
            "sensors {down:?} are down as the unit runs the agent:\n{metrics}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }

    // a miner owned by root: the agent reads its binary through CAP_SYS_PTRACE
    let tmp = tempfile::Builder::new()
        .prefix("rwdeb")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let (_m, pid) = start_xmrig(env!("CARGO_BIN_EXE_minersim"), tmp.path(), WALLET, 90);
    let finding = wait_for(60, "the miner's finding on the collector", || {
        let (code, body) = https_get("localhost", cport, "/api/v1/findings?host=deb-test-node", Some(&soc));
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).ok()?;
        let list = v.as_array().cloned().or_else(|| v["findings"].as_array().cloned())?;
        list.into_iter().find(|f| f["process"] == "xmrig" && f["severity"] == "confirmed")
    });
    let (code, full) = https_get(
        "localhost",
        cport,
        &format!("/api/v1/findings/deb-test-node/{}", finding["id"].as_str().unwrap()),
        Some(&soc),
    );
    assert_eq!(code, 200, "{full}");
    assert!(full.contains(&format!("\"pid\":{pid}")), "{full}");
    assert!(
        full.contains("binary_content"),
        "the agent, as rigwatch with CAP_SYS_PTRACE, read root's binary: {full}"
    );
    // the spool is in the unit's StateDirectory
    assert!(Path::new("/var/lib/rigwatch/spool").is_dir());
    // removing the package is said on the way out: its prerm leaves the
    // reason before the service is stopped, and the agent's last event
    // (on the SIGTERM systemd would send) carries it to the collector
    let out = sh("dpkg --remove rigwatch");
    assert!(out.status.success(), "dpkg --remove rigwatch:\n{}", text(&out));
    let marker = std::fs::read_to_string("/run/rigwatch/stopping").unwrap();
    assert_eq!(marker.trim(), "package removed");
    let mut agent = _a;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.0.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = wait_for(10, "the agent to exit on SIGTERM", || agent.0.try_wait().unwrap());
    assert!(status.success(), "{status:?}");
    let stopped = wait_for(20, "the host shown stopped by the package's removal", || {
        let (_, body) = https_get("localhost", cport, "/api/v1/hosts", Some(&soc));
        let v: Vec<Value> = serde_json::from_str(&body).ok()?;
        let h = v.into_iter().find(|h| h["host"] == "deb-test-node")?;
        h["stopped"].as_str().map(str::to_string)
    });
    assert!(stopped.starts_with("SIGTERM: ") && stopped.contains("package removed"), "{stopped}");
    // purge takes everything: binaries, configs, spool and database
    drop((_m, agent, _c));
    drop(purge);
    for p in [
        "/usr/bin/rigwatch",
        "/etc/rigwatch/agent.toml",
        "/etc/rigwatch/collector.pem",
        "/etc/rigwatch/collector.key",
        "/var/lib/rigwatch",
        "/var/lib/rigwatch-collector",
        "/run/rigwatch",
    ] {
        assert!(!Path::new(p).exists(), "{p} is left after dpkg --purge");
    }
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    text(&out)
}

#[test]
fn prometheus_rules_check_and_pass_their_unit_tests() {
    let dir = repo().join("packaging/prometheus");
    let out = run_ok(
        Command::new("promtool")
            .args(["check", "rules", "rigwatch-rules.yml"])
            .current_dir(&dir),
    );
    assert!(out.contains("SUCCESS: 15 rules found"), "{out}");
    let out = run_ok(
        Command::new("promtool")
            .args(["check", "config", "--syntax-only", "prometheus.yml"])
            .current_dir(&dir),
    );
    assert!(out.contains("SUCCESS"), "{out}");
    let tests: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains("test") && p.extension().is_some_and(|e| e == "yml"))
        .collect();
    assert!(!tests.is_empty(), "no *test*.yml in {}", dir.display());
    for t in &tests {
        let out = run_ok(Command::new("promtool").arg("test").arg("rules").arg(t).current_dir(&dir));
        assert!(out.contains("SUCCESS"), "{out}");
    }
    // the unit tests can fail: the same tests against a rule that waits too long
    let tmp = tempfile::Builder::new()
        .prefix("rwrules")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let rules = std::fs::read_to_string(dir.join("rigwatch-rules.yml")).unwrap();
    let slow = rules.replacen("        for: 5m\n", "        for: 10m\n", 1);
    assert_ne!(slow, rules);
    std::fs::write(tmp.path().join("rigwatch-rules.yml"), slow).unwrap();
    for t in &tests {
        std::fs::copy(t, tmp.path().join(t.file_name().unwrap())).unwrap();
        let out = Command::new("promtool")
            .arg("test")
            .arg("rules")
            .arg(t.file_name().unwrap())
            .current_dir(tmp.path())
            .output()
            .unwrap();
        assert!(!out.status.success() && text(&out).contains("RigwatchAgentDown"), "{}", text(&out));
    }
}

#[test]
fn alertmanager_routes_page_on_confirmed_miners() {
    let dir = repo().join("packaging/prometheus");
    let out = run_ok(Command::new("amtool").args(["check-config", "alertmanager.yml"]).current_dir(&dir));
    assert!(out.contains("SUCCESS"), "{out}");
    // the collector's alerts and the Prometheus rules' alerts reach the same receivers
    for (labels, receiver) in [
        ("alertname=RigwatchMinerFinding severity=confirmed host=web-17", "oncall-pager"),
        (
            "alertname=RigwatchMinerConfirmed severity=confirmed instance=web-17",
            "oncall-pager",
        ),
        ("alertname=RigwatchMinerFinding severity=likely host=web-17", "soc-chat"),
        ("alertname=RigwatchMinerLikely severity=likely instance=web-17", "soc-chat"),
        ("alertname=RigwatchAgentSilent severity=warning host=web-17", "platform"),
        ("alertname=RigwatchAgentDown severity=warning instance=web-17", "platform"),
    ] {
        let out = Command::new("amtool")
            .args(["config", "routes", "test", "--config.file=alertmanager.yml"])
            .args(labels.split_whitespace())
            .current_dir(&dir)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), receiver, "{labels}: {}", text(&out));
    }
}

#[test]
fn kubernetes_manifests_validate_against_the_api_schemas() {
    let out = run_ok(&mut Command::new(repo().join("packaging/kubernetes/validate.sh")));
    assert!(out.contains("all 9 manifests valid"), "{out}");
    assert!(out.contains("capabilities = rigwatch.service"), "{out}");
}

#[test]
fn dockerfiles_build_what_the_workspace_has() {
    // no Docker engine runs here: check what the Dockerfiles name exists
    let members = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    for (file, package, bin, port) in [
        ("agent.Dockerfile", "rigwatch-agent", "rigwatch", "9861"),
        ("collector.Dockerfile", "rigwatch-collector", "rigwatch-collector", "9860"),
    ] {
        let d = std::fs::read_to_string(repo().join("packaging/docker").join(file)).unwrap();
        assert!(d.contains(&format!("-p {package} --bin {bin}")), "{file}");
        assert!(d.contains(&format!("EXPOSE {port}")), "{file}");
        assert!(d.contains(&format!("ENTRYPOINT [\"/usr/bin/{bin}\"]")), "{file}");
        for line in d.lines().filter(|l| l.starts_with("COPY ") && !l.contains("--from=")) {
            let words: Vec<&str> = line.split_whitespace().skip(1).collect();
            for src in &words[..words.len() - 1] {
                assert!(repo().join(src).exists(), "{file}: COPY {src}: not in the repository");
            }
        }
        for m in ["signatures", "agent", "tests", "collector"] {
            assert!(members.contains(&format!("\"{m}\"")), "workspace member {m}");
            assert!(d.contains(&format!("COPY {m} {m}")), "{file} must copy workspace member {m}");
        }
    }
}
