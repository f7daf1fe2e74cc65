//! The trojan's footprint end to end (issue 18): what a mining trojan does
//! to the host besides mining, as host findings (`footprint` subjects) with
//! before → after evidence. The firewall part runs the agent inside a
//! network namespace the test creates (`ip netns add`), with its own
//! nftables rules, and flushes those: the host's own firewall is never
//! touched. Security units, SELinux and AppArmor are a fixture host root.
//!
//! Needs root and `nft` (Debian `nftables`); without them the tests say so
//! and pass.

use rigwatch_e2e::{free_port, wait_for, KillOnDrop as Kill};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn rigwatch() -> PathBuf {
    rigwatch_e2e::workspace_bin("rigwatch-agent", "rigwatch", env!("CARGO_BIN_EXE_minersim"))
}

/// A network namespace of this test, deleted on drop.
struct Netns(String);

impl Netns {
    /// A new namespace with loopback up, or none (with the reason) where
    /// this cannot run: not root, no `ip`, no `nft`.
    fn new(tag: &str) -> Option<Netns> {
        if Command::new("nft")
            .arg("--version")
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            eprintln!("skipped: no `nft` here (Debian package nftables)");
            return None;
        }
        let name = format!("rwfp-{tag}-{}", std::process::id());
        let ok = Command::new("ip").args(["netns", "add", &name]).status().is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: `ip netns add` failed (needs root)");
            return None;
        }
        let ns = Netns(name);
        ns.run(&["ip", "link", "set", "lo", "up"]);
        Some(ns)
    }

    /// `ip netns exec NS ARGS…`, which must succeed.
    fn run(&self, args: &[&str]) {
        let o = self.cmd(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).args(args);
        c
    }

    fn nft(&self, script: &str) {
        self.run(&["nft", script]);
    }

    /// The inode that names the namespace (as `/proc/PID/ns/net` does).
    fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{}", self.0)).unwrap().ino()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The ruleset of a locked-down host: an inet table whose input chain
/// drops by default and lets SSH in, and an iptables-nft style `ip filter`
/// table whose INPUT policy is DROP.
const RULES: &str = "add table inet rwfp
add chain inet rwfp input { type filter hook input priority 0; policy drop; }
add rule inet rwfp input tcp dport 22 accept
add table ip filter
add chain ip filter INPUT { type filter hook input priority 0; policy drop; }";

/// What the trojan's script does to the firewall: the rules flushed, the
/// INPUT policy opened.
const OPEN: &str = "flush table inet rwfp
chain ip filter INPUT { policy accept; }";

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// A host root with two security agents installed and running (Alibaba
/// Cloud's aegis, Falco), SELinux enforcing and AppArmor profiles loaded.
fn defended(root: &Path) {
    write(
        root,
        "usr/lib/systemd/system/aegis.service",
        "[Service]\nExecStart=/usr/local/aegis/aegis_client/aegis\n",
    );
    write(root, "lib/systemd/system/falco.service", "[Service]\nExecStart=/usr/bin/falco\n");
    std::fs::create_dir_all(root.join("etc/systemd/system")).unwrap();
    std::fs::create_dir_all(root.join("run/systemd/units")).unwrap();
    // and a rival's miner, enabled and running
    write(root, "lib/systemd/system/xmrig.service", "[Service]\nExecStart=/opt/rival/xmrig\n");
    std::fs::create_dir_all(root.join("etc/systemd/system/multi-user.target.wants")).unwrap();
    let wants = root.join("etc/systemd/system/multi-user.target.wants/xmrig.service");
    let _ = std::fs::remove_file(&wants);
    std::os::unix::fs::symlink("/lib/systemd/system/xmrig.service", wants).unwrap();
    for unit in ["aegis.service", "falco.service", "xmrig.service"] {
        let link = root.join("run/systemd/units").join(format!("invocation:{unit}"));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("6f0c2f3a9d1e4b7c8a5d2e1f0b3c4d5e", link).unwrap();
    }
    let _ = std::fs::remove_file(root.join("etc/systemd/system/falco.service"));
    write(root, "sys/fs/selinux/enforce", "1");
    write(
        root,
        "sys/kernel/security/apparmor/profiles",
        "/usr/sbin/sshd (enforce)\nlsb_release (enforce)\n",
    );
    std::fs::create_dir_all(root.join("sys/fs/cgroup")).unwrap();
}

/// What the trojan's script does to the host: aegis uninstalled, Falco
/// stopped and masked, a rival miner's service disabled and stopped,
/// `setenforce 0`, AppArmor's profiles torn down.
fn undefend(root: &Path) {
    std::fs::remove_file(root.join("usr/lib/systemd/system/aegis.service")).unwrap();
    std::fs::remove_file(root.join("run/systemd/units/invocation:aegis.service")).unwrap();
    std::fs::remove_file(root.join("run/systemd/units/invocation:falco.service")).unwrap();
    std::os::unix::fs::symlink("/dev/null", root.join("etc/systemd/system/falco.service")).unwrap();
    // systemctl disable --now xmrig: the rival goes
    std::fs::remove_file(root.join("etc/systemd/system/multi-user.target.wants/xmrig.service")).unwrap();
    std::fs::remove_file(root.join("run/systemd/units/invocation:xmrig.service")).unwrap();
    write(root, "sys/fs/selinux/enforce", "0");
    write(root, "sys/kernel/security/apparmor/profiles", "");
}

/// One test at a time: the kill test's kills are seen by every agent on
/// the host (the kill-trace sensor is not limited to a proc root), and the
/// others say a kept host has no footprint.
fn one() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

fn tmpdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rwfp")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

/// `rigwatch scan --json --window W` inside `ns` over the fixture host root
/// (an empty proc root: the footprint is about the host, and the first pass
/// is then done at once); `during` runs `at` seconds into the window.
fn scan_in(ns: &Netns, root: &Path, procs: &Path, window: f64, at: f64, during: impl FnOnce()) -> Value {
    let child = ns
        .cmd(&[
            rigwatch().to_str().unwrap(),
            "scan",
            "--json",
            "--no-capture",
            "--no-sockets",
            "--no-gpu",
        ])
        .args(["--window", &window.to_string(), "--host-root", root.to_str().unwrap()])
        .args(["--proc-root", procs.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs_f64(at));
    during();
    let out = child.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("scan JSON: {e}: {}", String::from_utf8_lossy(&out.stderr)))
}

fn footprints(v: &Value) -> Vec<Value> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["subject"]["kind"] == "footprint")
        .cloned()
        .collect()
}

fn finding<'a>(fs: &'a [Value], name: &str) -> &'a Value {
    fs.iter()
        .find(|f| f["subject"]["name"] == name)
        .unwrap_or_else(|| panic!("no footprint finding {name:?} in {fs:#?}"))
}

/// The finding's evidence as (what, before, after), all of kind footprint
/// and weight suspicious.
fn changes(f: &Value) -> Vec<(String, String, String)> {
    assert_eq!(f["severity"], "suspicious", "a footprint alone is suspicious: {f}");
    assert!(f.get("pid").is_none(), "a host finding has no pid: {f}");
    f["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["kind"], "footprint", "{e}");
            assert_eq!(e["weight"], "suspicious", "{e}");
            let s = |k: &str| e[k].as_str().unwrap().to_string();
            (s("what"), s("before"), s("after"))
        })
        .collect()
}

fn c(what: &str, before: &str, after: &str) -> (String, String, String) {
    (what.into(), before.into(), after.into())
}

#[test]
fn scan_reports_the_trojans_footprint_and_a_kept_host_has_none() {
    let _one = one();
    let Some(ns) = Netns::new("scan") else { return };
    ns.nft(RULES);
    let tmp = tmpdir();
    let (root, procs) = (tmp.path().join("host"), tmp.path().join("proc"));
    std::fs::create_dir_all(&procs).unwrap();
    defended(&root);

    // nothing changes during the window: no footprint at all
    let v = scan_in(&ns, &root, &procs, 1.0, 0.0, || {});
    assert!(footprints(&v).is_empty(), "{v:#}");
    assert!(
        !v["warnings"].to_string().contains("firewall not compared"),
        "the netlink dump works here: {}",
        v["warnings"]
    );

    // the trojan runs between the scan's two passes
    let v = scan_in(&ns, &root, &procs, 5.0, 2.5, || {
        ns.nft(OPEN);
        undefend(&root);
    });
    let fs = footprints(&v);
    assert_eq!(
        fs.len(),
        6,
        "firewall, two security units, the rival's unit, SELinux, AppArmor: {fs:#?}"
    );

    let fw = finding(&fs, &format!("firewall netns:{}", ns.inode()));
    let mut got = changes(fw);
    got.sort();
    assert_eq!(
        got,
        vec![
            c("default policy of ip filter INPUT (input hook)", "drop", "accept"),
            c("firewall rules", "1 rule in 1 chain (tables inet rwfp)", "no rules (flushed)"),
        ],
        "{fw:#}"
    );

    let aegis = finding(&fs, "unit aegis.service");
    let mut got = changes(aegis);
    got.sort();
    assert_eq!(
        got,
        vec![
            c(
                "service aegis.service (Alibaba Cloud Security Center agent (AliYunDun))",
                "active",
                "not running"
            ),
            c(
                "unit file of aegis.service (Alibaba Cloud Security Center agent (AliYunDun))",
                "/usr/lib/systemd/system/aegis.service present",
                "removed"
            ),
        ]
    );
    let mut got = changes(finding(&fs, "unit falco.service"));
    got.sort();
    assert_eq!(
        got,
        vec![
            c("service falco.service (Falco)", "active", "not running"),
            c("unit falco.service (Falco)", "not masked", "masked (linked to /dev/null)"),
        ]
    );
    let mut got = changes(finding(&fs, "unit xmrig.service"));
    got.sort();
    assert_eq!(
        got,
        vec![
            c("service xmrig.service (named like a miner: a rival's?)", "active", "not running"),
            c("unit xmrig.service (named like a miner: a rival's?)", "enabled", "disabled"),
        ]
    );
    assert_eq!(finding(&fs, "unit xmrig.service")["severity"], "suspicious");
    assert_eq!(
        changes(finding(&fs, "selinux")),
        vec![c("SELinux mode", "enforcing", "permissive (setenforce 0)")]
    );
    assert_eq!(
        changes(finding(&fs, "apparmor")),
        vec![c("AppArmor profiles", "2 loaded", "none loaded (profiles unloaded)")]
    );

    // the host put back during a later scan's window: none left
    let v = scan_in(&ns, &root, &procs, 4.0, 2.0, || {
        ns.nft("add rule inet rwfp input tcp dport 22 accept\nchain ip filter INPUT { policy drop; }");
        std::fs::remove_file(root.join("etc/systemd/system/falco.service")).unwrap();
        defended(&root);
    });
    assert!(footprints(&v).is_empty(), "restored: {v:#}");
}

/// A host firewalled with iptables-legacy (x_tables, which `nft` does not
/// show): INPUT drops but for loopback, a user chain with a rule. The
/// trojan's `iptables -F; iptables -X; iptables -P INPUT ACCEPT` (and
/// ip6tables' INPUT opened) between the scan's passes is a footprint naming
/// the legacy tables.
#[test]
fn iptables_legacy_rules_flushed_and_opened_are_a_footprint() {
    let _one = one();
    let Some(ns) = Netns::new("legacy") else { return };
    if Command::new("iptables-legacy")
        .arg("--version")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        eprintln!("skipped: no iptables-legacy here (Debian package iptables)");
        return;
    }
    let legacy = |args: &str| ns.run(&[&["iptables-legacy"][..], &args.split(' ').collect::<Vec<_>>()].concat());
    legacy("-P INPUT DROP");
    legacy("-A INPUT -i lo -j ACCEPT");
    legacy("-N RWFP");
    legacy("-A RWFP -p tcp --dport 22 -j ACCEPT");
    ns.run(&["ip6tables-legacy", "-P", "INPUT", "DROP"]);
    let tmp = tmpdir();
    let (root, procs) = (tmp.path().join("host"), tmp.path().join("proc"));
    std::fs::create_dir_all(&procs).unwrap();
    defended(&root);

    let v = scan_in(&ns, &root, &procs, 1.0, 0.0, || {});
    assert!(footprints(&v).is_empty(), "kept: {v:#}");
    assert!(!v["warnings"].to_string().contains("iptables-legacy"), "{}", v["warnings"]);

    let v = scan_in(&ns, &root, &procs, 5.0, 2.5, || {
        legacy("-F");
        legacy("-X");
        legacy("-P INPUT ACCEPT");
        ns.run(&["ip6tables-legacy", "-P", "INPUT", "ACCEPT"]);
    });
    let fs = footprints(&v);
    assert_eq!(fs.len(), 1, "{fs:#?}");
    let fw = finding(&fs, &format!("firewall netns:{}", ns.inode()));
    assert_eq!(fw["severity"], "suspicious", "{fw:#}");
    let mut got = changes(fw);
    got.sort();
    assert_eq!(
        got,
        vec![
            c("default policy of ip filter (iptables-legacy) INPUT (input hook)", "drop", "accept"),
            c(
                "default policy of ip6 filter (iptables-legacy) INPUT (input hook)",
                "drop",
                "accept"
            ),
            c(
                "firewall rules",
                "2 rules in 2 chains (tables ip filter (iptables-legacy))",
                "no rules (flushed)"
            ),
        ],
        "{fw:#}"
    );
}

/// The daemon's namespace: INPUT drops all but loopback (where the test
/// reads /metrics).
const RUN_RULES: &str = "add table ip filter
add chain ip filter INPUT { type filter hook input priority 0; policy drop; }
add rule ip filter INPUT iif lo accept";

#[test]
fn run_opens_and_resolves_footprint_findings() {
    let _one = one();
    let Some(ns) = Netns::new("run") else { return };
    ns.nft(RUN_RULES);
    let tmp = tmpdir();
    let (root, procs) = (tmp.path().join("host"), tmp.path().join("proc"));
    std::fs::create_dir_all(&procs).unwrap();
    defended(&root);
    let cfg = tmp.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[scan]\ninterval_seconds = 1\nlower_priority = false\nhost_root = \"{}\"\nproc_root = \"{}\"\n\
             [sensors]\ncapture = false\nsockets = false\ngpu = false\nexec_events = false\nrounding = false\n\
             [signatures]\ndirs = []\n",
            root.display(),
            procs.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let log = tmp.path().join("agent.log");
    let _agent = Kill(
        ns.cmd(&[rigwatch().to_str().unwrap(), "run", "--config", cfg.to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--spool-dir", tmp.path().join("spool").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    // /metrics inside the namespace, through curl there
    let metrics = || -> String {
        let o = ns
            .cmd(&["curl", "-sS", "--max-time", "2", &format!("http://127.0.0.1:{port}/metrics")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let active = |m: &str| -> Vec<String> {
        m.lines()
            .filter(|l| l.starts_with("rigwatch_finding_active{") && l.contains("comm=\"(footprint)\""))
            .map(String::from)
            .collect()
    };
    wait_for(60, "the footprint sensor's baseline", || {
        metrics()
            .contains("rigwatch_sensor_stat{sensor=\"footprint\",stat=\"firewall_rules\"} 1\n")
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(1500));
    let m = metrics();
    assert!(active(&m).is_empty(), "a kept host has no footprint: {m}");
    assert!(
        m.contains("rigwatch_sensor_stat{sensor=\"footprint\",stat=\"security_units\"} 2\n"),
        "{m}"
    );

    // the trojan: every rule and chain gone, SELinux permissive
    ns.nft("flush ruleset");
    write(&root, "sys/fs/selinux/enforce", "0");
    let lines = wait_for(30, "footprint findings on /metrics", || {
        let a = active(&metrics());
        (a.len() == 2).then_some(a)
    });
    assert!(
        lines
            .iter()
            .all(|l| l.contains("severity=\"suspicious\"") && l.contains("pid=\"\"")),
        "{lines:?}"
    );
    let m = metrics();
    let evidence: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("rigwatch_finding_evidence{") && l.contains("kind=\"footprint\""))
        .collect();
    let mut counts: Vec<&str> = evidence.iter().filter_map(|l| l.rsplit(' ').next()).collect();
    counts.sort();
    assert_eq!(counts, ["1", "2"], "SELinux one change, the firewall two: {evidence:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    let opened = text
        .lines()
        .find(|l| l.contains("finding_opened") && l.contains("firewall netns:"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(opened.contains(&format!("firewall netns:{}", ns.inode())), "{opened}");
    for part in [
        r#"\"what\":\"firewall rules\",\"before\":\"1 rule in 1 chain (tables ip filter)\",\"after\":\"no rules (flushed)\""#,
        r#"\"what\":\"default policy of ip filter INPUT (input hook)\",\"before\":\"drop\",\"after\":\"chain deleted (accept)\""#,
    ] {
        assert!(opened.contains(part), "{part} in {opened}");
    }

    // put back: the findings resolve
    ns.nft(RUN_RULES);
    write(&root, "sys/fs/selinux/enforce", "1");
    wait_for(30, "footprint findings resolved", || active(&metrics()).is_empty().then_some(()));
    let m = metrics();
    let resolved: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("rigwatch_findings_resolved_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert_eq!(resolved, 2, "{m}");
}

/// A file under /tmp made immutable for a test, made mutable again (and
/// its directory removed) on drop, so a failed test leaves nothing locked.
struct Locked {
    file: PathBuf,
    // removed after the file is unlocked (fields drop after `drop`)
    _dir: tempfile::TempDir,
}

impl Drop for Locked {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.file).status();
    }
}

fn chattr(flag: &str, p: &Path) -> bool {
    Command::new("chattr")
        .arg(flag)
        .arg(p)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `rigwatch scan --json` of this host (host root `/`: the test's file is
/// in the real /tmp), without the network and GPU sensors.
fn scan_host() -> Value {
    let out = Command::new(rigwatch())
        .args(["scan", "--json", "--window", "0.3", "--no-capture", "--no-sockets", "--no-gpu"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("scan JSON: {e}: {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn immutable_executable_in_tmp_is_a_finding_until_chattr_minus_i() {
    // a harmless program (sleep) copied under a miner's name into /tmp, running
    let dir = tempfile::Builder::new().prefix("rwfp").tempdir_in("/tmp").unwrap();
    let exe = dir.path().join("kswapd0");
    std::fs::copy("/bin/sleep", &exe).unwrap();
    let plain = dir.path().join("helper");
    std::fs::copy("/bin/sleep", &plain).unwrap();
    let lock = Locked {
        file: exe.clone(),
        _dir: dir,
    };
    // a just-written executable can be "busy" for a moment (another test
    // thread forked while it was open for writing): try again
    let mut tries = 0;
    let child = loop {
        match Command::new(&exe).arg("60").spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => break r.unwrap(),
        }
    };
    let _running = Kill(child);
    if !chattr("+i", &exe) {
        eprintln!("skipped: chattr +i is not possible on /tmp here (needs root and a file system with attributes)");
        return;
    }
    let name = exe.display().to_string();
    let v = scan_host();
    let fs = footprints(&v);
    let f = finding(&fs, &name);
    assert_eq!(
        changes(f),
        vec![c(
            &format!("attributes of file {}", exe.display()),
            "immutable when first seen",
            "immutable (chattr +i: not even root can change, rename or delete it until chattr -i)"
        )]
    );
    assert!(
        !fs.iter().any(|f| f["subject"]["name"] == plain.display().to_string()),
        "a mutable executable beside it is nothing: {fs:#?}"
    );

    assert!(chattr("-i", &exe));
    let v = scan_host();
    assert!(
        !footprints(&v).iter().any(|f| f["subject"]["name"] == name),
        "chattr -i: resolved: {v:#}"
    );
    drop(lock);
}

/// `sh -c SCRIPT` as `nobody`, its stdout piped.
fn sh_as_nobody(script: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    c
}

/// A daemonized harmless process (a copy of `sleep`) as `nobody`: started
/// in the background of a shell that exits, so its parent is init, as a
/// rival miner's is; its pid.
fn daemon_as_nobody(exe: &Path) -> u32 {
    let out = sh_as_nobody(&format!("{} 60 >/dev/null 2>&1 & echo $!", exe.display()))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn a_script_killing_rival_miners_is_a_kills_finding_and_a_shell_killing_its_jobs_is_not() {
    let _one = one();
    if !nix::unistd::geteuid().is_root() || !cfg!(target_arch = "x86_64") {
        eprintln!("SKIP: needs root on x86_64 (loading eBPF)");
        return;
    }
    // the rivals: copies of sleep named like miners, and four plain ones,
    // all daemons of nobody
    let dir = tempfile::Builder::new().prefix("rwkill").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut rivals = Vec::new();
    for name in ["xmrig", "kdevtmpfsi"] {
        let exe = dir.path().join(name);
        std::fs::copy("/bin/sleep", &exe).unwrap();
        rivals.push(daemon_as_nobody(&exe));
    }
    let others: Vec<u32> = (0..4).map(|_| daemon_as_nobody(Path::new("/bin/sleep"))).collect();
    struct Reap(Vec<u32>);
    impl Drop for Reap {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p as i32), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
    let _reap = Reap(rivals.iter().chain(&others).copied().collect());

    let scan = Command::new(rigwatch())
        .args(["scan", "--json", "--window", "5", "--no-capture", "--no-sockets", "--no-gpu"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // the trojan's script: the miners by /bin/kill (a kill tool: it counts
    // for the script), the rest by the shell's own kill; then it lingers
    let list = |v: &[u32]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" ");
    let trojan = Kill(
        sh_as_nobody(&format!("/bin/kill -9 {}; kill -9 {}; sleep 4", list(&rivals), list(&others)))
            .spawn()
            .unwrap(),
    );
    // an admin's shell killing its own background jobs: nothing
    let jobs = Kill(
        sh_as_nobody("p=''; for i in 1 2 3 4 5 6; do sleep 60 & p=\"$p $!\"; done; sleep 0.3; kill -9 $p; sleep 4")
            .spawn()
            .unwrap(),
    );
    let out = scan.wait_with_output().unwrap();
    let v: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("scan JSON: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        !v["warnings"].to_string().contains("killtrace"),
        "the sensor loaded: {}",
        v["warnings"]
    );
    let fs = footprints(&v);
    let name = format!("kills by sh (pid {})", trojan.0.id());
    let f = finding(&fs, &name);
    let ch = changes(f);
    assert_eq!(ch.len(), 1, "{ch:?}");
    let (what, before, after) = &ch[0];
    assert_eq!(what, &format!("rival miners killed by sh (pid {})", trojan.0.id()));
    for (comm, pid) in [("xmrig", rivals[0]), ("kdevtmpfsi", rivals[1]), ("sleep", others[0])] {
        assert!(before.contains(&format!("{comm} (pid {pid}, uid 65534)")), "{before}");
    }
    assert!(
        before.starts_with("running: xmrig") || before.starts_with("running: kdevtmpfsi"),
        "miners first: {before}"
    );
    assert!(
        after.starts_with("6 killed with SIGKILL by uid 65534, 2 named like miners (rivals), 5+ within 10 s"),
        "{after}"
    );
    let benign = format!("(pid {})", jobs.0.id());
    assert!(
        !fs.iter().any(|f| f["subject"]["name"].as_str().unwrap().contains(&benign)),
        "a shell killing its own jobs is nothing: {fs:#?}"
    );
}
