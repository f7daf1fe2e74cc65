//! The miner is the adversary, through the data it feeds the agent: a
//! finding blown up by oversized configs must still reach the collector (in
//! a bounded, trimmed form, with no secret of the configs in it), and a full
//! disk under the spool must lose no event and glue no line. Each attack
//! runs as the attacker would (`nobody`); each test skips when not root.

use rigwatch_e2e::{collector_token, free_port, http_get, wait_for, KillOnDrop as Kill};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const WALLET: &str = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";
/// What the configs hide in their pool URLs: none of it may leave the host.
const SECRETS: [&str; 3] = ["hunter2-secret", "tok-3f9a-secret", "rigsecretworker"];
/// The size cap of a finding as it leaves the agent (signatures' MAX_FINDING_BYTES).
const MAX_FINDING_BYTES: usize = 64 * 1024;

fn bin(package: &str, name: &str) -> PathBuf {
    rigwatch_e2e::workspace_bin(package, name, env!("CARGO_BIN_EXE_busysim"))
}

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn tmpdir(prefix: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    t
}

/// A directory `nobody` owns.
fn attack_dir(tmp: &Path, name: &str) -> PathBuf {
    let d = tmp.join(name);
    std::fs::create_dir_all(&d).unwrap();
    chown_nobody(&d);
    d
}

fn chown_nobody(p: &Path) {
    let st = Command::new("chown").arg("nobody:nogroup").arg(p).status().unwrap();
    assert!(st.success(), "chown {}", p.display());
}

/// A copy of busysim named `xmrig` in `dir`, run as `nobody` there with
/// `args`; returns once it runs: (process, pid, executable path).
fn xmrig_as_nobody(dir: &Path, args: &[String]) -> (Kill, u32, PathBuf) {
    let exe = dir.join("xmrig");
    std::fs::copy(env!("CARGO_BIN_EXE_busysim"), &exe).unwrap();
    chown_nobody(&exe);
    let child = Command::new("setpriv")
        .args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"])
        .arg(&exe)
        .args(args)
        .args(["--idle", "120"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("setpriv");
    let mut c = Kill(child);
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(c.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("ready"), "xmrig as nobody: {line:?}");
    let pid = c.0.id();
    (c, pid, exe)
}

/// A miner config of about 1 MB (under the agent's 1 MiB read cap): a known
/// pool and hundreds of made-up ones, with secrets in their URLs, and as
/// many wallets.
fn oversized_config(n: usize) -> String {
    let mut pools = vec![format!(
        r#"{{"url":"stratum+tcp://{}:{}@pool.supportxmr.com:3333?key={}","user":"{WALLET}"}}"#,
        SECRETS[2], SECRETS[0], SECRETS[1]
    )];
    let b58 = |i: usize| "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz".as_bytes()[i % 57] as char;
    let (mut i, mut len) = (0, pools[0].len());
    while len < 1_000_000 {
        let p = format!(
            r#"{{"url":"stratum+tcp://w:{}@c{n}p{i:05}{}.example:3333/?t={}","user":"{}{}{}{}"}}"#,
            SECRETS[0],
            "x".repeat(700),
            SECRETS[1],
            &WALLET[..92],
            b58(i / 3249),
            b58(i / 57),
            b58(i)
        );
        len += p.len() + 1;
        pools.push(p);
        i += 1;
    }
    format!(
        r#"{{"donate-level":1,"randomx":{{"1gb-pages":true}},"pools":[{}]}}"#,
        pools.join(",")
    )
}

/// The agent's config: 1 s passes, 2 s heartbeats, no network sensors.
fn agent_config(dir: &Path) -> PathBuf {
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        "[scan]\ninterval_seconds = 1\nlower_priority = false\n\
         [sensors]\ncapture = false\nsockets = false\ngpu = false\nexec_events = false\n\
         [collector]\nheartbeat_seconds = 2\n[signatures]\ndirs = []\n",
    )
    .unwrap();
    cfg
}

/// `rigwatch run` shipping to the collector on `cport`, its spool in `spool`.
fn start_agent(dir: &Path, host: &str, cport: u16, token: &str, spool: &Path) -> (Kill, u16) {
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let mport = free_port();
    let a = Kill(
        Command::new(bin("rigwatch-agent", "rigwatch"))
            .env("RIGWATCH_HOSTNAME", host)
            .args(["run", "--config", agent_config(dir).to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{mport}")])
            .args(["--collector", &format!("http://127.0.0.1:{cport}")])
            .args(["--token-file", token_file.to_str().unwrap()])
            .args(["--spool-dir", spool.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(30, "agent /metrics", || (http_get(mport, "/metrics", None).0 == 200).then_some(()));
    (a, mport)
}

/// `rigwatch-collector serve` with `extra` lines in its config file, on a
/// free port: (process, port, agent token, analyst token).
fn start_collector(dir: &Path, extra: &str) -> (Kill, u16, String, String) {
    let collector = bin("rigwatch-collector", "rigwatch-collector");
    let data = dir.join("data");
    let agent = collector_token(&collector, &data, "node-d", false);
    let analyst = collector_token(&collector, &data, "soc-d", true);
    std::fs::write(dir.join("collector.toml"), extra).unwrap();
    let port = free_port();
    (serve(dir, port), port, agent, analyst)
}

/// The collector of `start_collector` (again) on `port`, once it answers.
fn serve(dir: &Path, port: u16) -> Kill {
    let c = Kill(
        Command::new(bin("rigwatch-collector", "rigwatch-collector"))
            .args(["serve", "--config", dir.join("collector.toml").to_str().unwrap(), "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(20, "collector /healthz", || {
        (http_get(port, "/healthz", None).0 == 200).then_some(())
    });
    c
}

/// A counter or gauge's value on the agent's /metrics.
fn metric(mport: u16, name: &str) -> f64 {
    let (_, body) = http_get(mport, "/metrics", None);
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} on /metrics"))
}

/// The finding (as the agent sent it) of the process running `exe` on `host`, once the collector has it.
fn finding_at_collector(cport: u16, analyst: &str, host: &str, exe: &Path) -> Option<Value> {
    let (code, body) = http_get(cport, &format!("/api/v1/findings?host={host}"), Some(analyst));
    if code != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    let list = v.as_array().cloned().or_else(|| v["findings"].as_array().cloned())?;
    let id = list.iter().find(|f| f["exe"] == exe.to_str().unwrap())?["id"].as_str()?.to_string();
    let (code, body) = http_get(cport, &format!("/api/v1/findings/{host}/{id}"), Some(analyst));
    (code == 200).then(|| serde_json::from_str::<Value>(&body).ok()).flatten()
}

/// The agent still passes: its last pass moves on and /healthz says ok.
fn assert_passing(mport: u16) {
    let before = metric(mport, "rigwatch_last_pass_timestamp_seconds");
    wait_for(30, "a later detection pass", || {
        (metric(mport, "rigwatch_last_pass_timestamp_seconds") > before).then_some(())
    });
    assert_eq!(http_get(mport, "/healthz", None).0, 200, "the agent is healthy");
}

#[test]
fn oversized_configs_give_a_bounded_finding_that_reaches_the_collector_without_secrets() {
    if !root() {
        eprintln!("SKIP: needs root (to run the attacker as nobody)");
        return;
    }
    const HOST: &str = "adversary-data-configs";
    let tmp = tmpdir("rwd");
    let dir = attack_dir(tmp.path(), "miner");
    let mut args = Vec::new();
    for n in 0..5 {
        let p = dir.join(format!("c{n}.json"));
        std::fs::write(&p, oversized_config(n)).unwrap();
        chown_nobody(&p);
        assert!(std::fs::metadata(&p).unwrap().len() >= 1_000_000);
        args.extend(["--config".to_string(), format!("c{n}.json")]);
    }
    // a collector that takes small reports only: the finding must get through in a smaller form
    let (_c, cport, token, analyst) = start_collector(tmp.path(), "max_body_bytes = 16384\n");
    let (_a, mport) = start_agent(tmp.path(), HOST, cport, &token, &tmp.path().join("spool"));
    let (_m, pid, exe) = xmrig_as_nobody(&dir, &args);

    let detail = wait_for(90, "the miner's finding at the collector", || {
        finding_at_collector(cport, &analyst, HOST, &exe)
    });
    let finding = &detail["finding"];
    let text = finding.to_string();
    assert_eq!(finding["pid"], pid, "{text}");
    assert_eq!(detail["severity"], "confirmed", "pool and wallet in the configs: {text}");
    assert!(text.len() <= 16384, "the collector's limit: {} bytes", text.len());
    for s in SECRETS {
        assert!(!text.contains(s), "{s} left the host: {text}");
    }
    let ev = finding["evidence"].as_array().unwrap();
    assert_eq!(ev[0]["kind"], "miner_config", "the strongest evidence stays: {text}");
    assert_eq!(ev[0]["weight"], "confirmed");
    let pools = ev[0]["pools"].as_array().unwrap();
    assert!(!pools.is_empty() && pools.len() <= 16, "{text}");
    assert!(
        pools[0].as_str().unwrap().starts_with("stratum+tcp://pool.supportxmr.com:3333"),
        "the known pool first, without its userinfo: {text}"
    );
    // the collector refused the full form: the shipper cut it down and says so
    // (the config sensor's own notes of pools left out may stand beside it)
    let note = ev
        .iter()
        .find(|e| e["kind"] == "trimmed" && e["note"].as_str().is_some_and(|n| n.starts_with("trimmed to fit ")))
        .unwrap_or_else(|| panic!("no trimmed note from the shipper: {text}"));
    assert!(note["note"].as_str().unwrap().starts_with("trimmed to fit "), "{note}");
    assert!(note["original_bytes"].as_u64().unwrap() > 16384, "{note}");
    assert!(
        note["original_bytes"].as_u64().unwrap() <= MAX_FINDING_BYTES as u64,
        "bounded before it left the detector: {note}"
    );
    assert!(
        metric(mport, "rigwatch_shipper_delivery_failures_total") >= 1.0,
        "the refusals are counted"
    );
    assert_eq!(metric(mport, "rigwatch_shipper_rejected_batches_total"), 0.0, "nothing dropped");
    assert!(
        std::fs::read_dir(tmp.path().join("spool"))
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with("rejected-")),
        "nothing kept aside"
    );
    assert_passing(mport);
    wait_for(30, "the spool drained", || {
        (metric(mport, "rigwatch_shipper_queue_events") == 0.0).then_some(())
    });
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_spool_disk_counts_failed_writes_and_loses_no_finding() {
    if !root() {
        eprintln!("SKIP: needs root (to mount a tmpfs and run the attacker as nobody)");
        return;
    }
    const HOST: &str = "adversary-data-spool";
    let tmp = tmpdir("rws");
    let disk = tmp.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs"])
        .arg(&disk)
        .status()
        .unwrap();
    if !st.success() {
        eprintln!("SKIP: cannot mount a tmpfs here");
        return;
    }
    let _fs = Tmpfs(disk.clone());
    let spool = disk.join("spool");
    let (c, cport, token, analyst) = start_collector(tmp.path(), "");
    let (_a, mport) = start_agent(tmp.path(), HOST, cport, &token, &spool);
    wait_for(30, "a first delivery", || {
        (metric(mport, "rigwatch_shipper_delivered_events_total") >= 1.0).then_some(())
    });
    // the collector goes away (nothing is acknowledged, so nothing in the
    // spool is deleted) and the attacker, who can write there, fills the disk
    drop(c);
    std::fs::set_permissions(&disk, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let fill = Command::new("setpriv")
        .args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"])
        .args([
            "sh",
            "-c",
            &format!("dd if=/dev/zero of='{}/fill' bs=1k 2>/dev/null; true", disk.display()),
        ])
        .status()
        .unwrap();
    assert!(fill.success());
    let errors_before = metric(mport, "rigwatch_spool_write_errors_total");

    // a miner starts while the disk is full; its finding (over 4 KiB: more
    // than the slack in the last page of a spool file) cannot be written
    let dir = attack_dir(tmp.path(), "miner");
    let cfg = dir.join("config.json");
    let pools: Vec<String> = (0..16)
        .map(|i| {
            format!(
                r#"{{"url":"stratum+tcp://p{i:02}{}.supportxmr.com:3333","user":"{WALLET}"}}"#,
                "x".repeat(200)
            )
        })
        .collect();
    std::fs::write(&cfg, format!(r#"{{"pools":[{}],"donate-level":1}}"#, pools.join(","))).unwrap();
    chown_nobody(&cfg);
    let (_m, pid, exe) = xmrig_as_nobody(&dir, &["--config".into(), "config.json".into()]);
    wait_for(60, "the miner's finding on /metrics", || {
        let (_, body) = http_get(mport, "/metrics", None);
        body.lines()
            .any(|l| l.starts_with("rigwatch_finding_active{") && l.contains(&format!("pid=\"{pid}\"")))
            .then_some(())
    });
    wait_for(30, "the failed spool write on /metrics", || {
        (metric(mport, "rigwatch_spool_write_errors_total") > errors_before).then_some(())
    });
    assert!(
        metric(mport, "rigwatch_shipper_queue_events") >= 1.0,
        "the finding waits in the backlog"
    );
    assert_passing(mport);
    // on disk: whole lines only, nothing torn or glued, and not the finding
    let ours = format!("\"pid\":{pid},");
    for e in std::fs::read_dir(&spool).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "jsonl") {
            let data = std::fs::read(e.path()).unwrap();
            assert!(
                data.is_empty() || data.ends_with(b"\n"),
                "{} ends in a partial line",
                e.path().display()
            );
            for l in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                serde_json::from_slice::<Value>(l)
                    .unwrap_or_else(|err| panic!("a damaged line in {}: {err}: {}", e.path().display(), String::from_utf8_lossy(l)));
                assert!(
                    !String::from_utf8_lossy(l).contains(&ours),
                    "the finding was written although the disk was full"
                );
            }
        }
    }

    // room again, the collector back: the finding kept in memory is written and delivered
    std::fs::remove_file(disk.join("fill")).unwrap();
    let _c = serve(tmp.path(), cport);
    let detail = wait_for(60, "the finding at the collector once the disk has room", || {
        finding_at_collector(cport, &analyst, HOST, &exe)
    });
    assert_eq!(detail["finding"]["pid"], pid);
    assert_eq!(detail["severity"], "confirmed", "{detail}");
    assert_eq!(metric(mport, "rigwatch_spool_dropped_events_total"), 0.0, "nothing dropped");
    wait_for(30, "the spool drained", || {
        (metric(mport, "rigwatch_shipper_queue_events") == 0.0).then_some(())
    });
}
