//! End-to-end (issue 17): YARA rule files in a signature directory. The real
//! `rigwatch` binary checks and lists the fixture set
//! (agent/tests/fixtures/yara: one file that does not compile, one with
//! `rigwatch_weight`, one with the elf and math modules) and scans this host
//! while the harmless simulators run: the rules fire on the miner
//! simulator's file, and on a "packed" look-alike's memory only.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn rigwatch() -> PathBuf {
    rigwatch_e2e::workspace_bin("rigwatch-agent", "rigwatch", env!("CARGO_BIN_EXE_minersim"))
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../agent/tests/fixtures/yara")
        .canonicalize()
        .unwrap()
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(rigwatch()).args(args).output().expect("run rigwatch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_and_list_cover_yara_files() {
    let dir = fixtures();
    let d = dir.to_str().unwrap();
    let broken = format!("{d}/broken.yar:7: YARA: ");
    let (code, out, err) = run(&["signatures", "check", d]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.lines().any(|l| l.starts_with(&broken) && l.contains("never_defined")), "{out}");
    assert!(err.contains("1 errors in 3 rules"), "{err}");
    let (code, out, err) = run(&["signatures", "check", &format!("{d}/miner.yar"), &format!("{d}/elf-tuning.yara")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("ok: 3 rules"), "{err}");

    let (code, out, err) = run(&["signatures", "list", "--json", "--no-default-signatures", "--signatures", d]);
    assert_eq!(code, 1, "a skipped file makes list fail: {err}");
    assert!(err.contains(&format!("skipped: {broken}")), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let rule = |id: &str| {
        v["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("{id} listed: {out}"))
            .clone()
    };
    let x = rule("yara:miner.xmrig_like");
    assert_eq!(
        (x["kind"].as_str(), x["severity"].as_str(), x["line"].as_u64()),
        (Some("yara"), Some("confirmed"), Some(5))
    );
    assert_eq!(x["file"], format!("{d}/miner.yar"));
    assert_eq!(x["metadata"]["author"], "rigwatch tests");
    assert_eq!(rule("yara:miner.stratum_client")["severity"], "likely");
    assert_eq!(rule("yara:elf-tuning.randomx_tuning_elf")["severity"], "suspicious");
    assert!(
        v["rules"].as_array().unwrap().iter().any(|r| r["kind"] != "yara"),
        "beside the bundled rules"
    );
}

struct Sim(Child, u32);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_ready(path: &Path, args: &[&str]) -> Sim {
    let mut child = Command::new(path)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let pid = line
        .trim()
        .strip_prefix("ready ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no ready line: {line:?}"));
    Sim(child, pid)
}

/// `src` copied to `dir/name`, with UPX's banner and magic appended when
/// `packed` (the program still runs; its file now looks packed).
fn copy(src: &str, dir: &Path, name: &str, packed: bool) -> PathBuf {
    let p = dir.join(name);
    let mut bytes = std::fs::read(src).unwrap();
    if packed {
        // built at run time: this test binary itself holds no UPX mark
        let u = std::hint::black_box(b'T') + 1;
        bytes.extend_from_slice(b"\0$Info: This file is packed with the ");
        bytes.extend_from_slice(&[u, b'P', b'X', b' ']);
        bytes.extend_from_slice(b"executable packer $\n\0");
        bytes.extend_from_slice(&[u, b'P', b'X', b'!']);
    }
    std::fs::write(&p, bytes).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn yara_evidence(v: &Value, pid: u32) -> Vec<&Value> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["pid"] == pid)
        .flat_map(|f| f["evidence"].as_array().unwrap())
        .filter(|e| e["kind"] == "binary_content" && e["rule"].as_str().is_some_and(|r| r.starts_with("yara:")))
        .collect()
}

#[test]
fn yara_rules_fire_on_the_miner_file_and_on_packed_memory() {
    let bin = rigwatch();
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("yara");
    std::fs::create_dir_all(&work).unwrap();
    let dir = tempfile::Builder::new().prefix("rigwatch-yara").tempdir_in(&work).unwrap();
    // plain names: no name evidence; idle: no CPU evidence
    let miner = spawn_ready(&copy(env!("CARGO_BIN_EXE_minersim"), dir.path(), "svc-a", false), &["--idle", "30"]);
    let packed = spawn_ready(
        &copy(env!("CARGO_BIN_EXE_busysim"), dir.path(), "svc-b", true),
        &["--unpack", "--idle", "30"],
    );
    let plain = spawn_ready(&copy(env!("CARGO_BIN_EXE_busysim"), dir.path(), "svc-c", false), &["--idle", "30"]);
    let d = fixtures();
    let out = Command::new(&bin)
        .args([
            "scan",
            "--json",
            "--window",
            "1",
            "--no-default-signatures",
            "--no-capture",
            "--no-gpu",
            "--no-sockets",
        ])
        .arg("--signatures")
        .arg(&d)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("scan JSON: {e}\n{err}"));
    assert!(err.contains(&format!("{}/broken.yar:7: YARA: ", d.display())), "{err}");

    let f = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["pid"] == miner.1)
        .expect("the miner simulator is reported");
    assert_eq!(f["severity"], "confirmed", "{f}");
    let ev = yara_evidence(&v, miner.1);
    let by = |id: &str| *ev.iter().find(|e| e["rule"] == id).unwrap_or_else(|| panic!("{id}: {f}"));
    let x = by("yara:miner.xmrig_like");
    assert_eq!(
        (x["weight"].as_str(), x["source"].as_str()),
        (Some("confirmed"), Some("executable")),
        "{x}"
    );
    assert!(x["path"].as_str().unwrap().ends_with("/svc-a"), "{x}");
    assert_eq!(x["yara"]["file"], format!("{}/miner.yar", d.display()));
    assert_eq!(x["yara"]["metadata"]["rigwatch_weight"], "confirmed");
    let strings: Vec<&str> = x["strings"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert!(strings.contains(&"$donate: donate.v2.xmrig.com"), "{strings:?}");
    assert!(strings.iter().any(|s| s.starts_with("$banner: XMRig/6.21.0 (Linux")), "{strings:?}");
    assert_eq!(by("yara:miner.stratum_client")["weight"], "likely");
    assert_eq!(by("yara:elf-tuning.randomx_tuning_elf")["weight"], "suspicious");

    let ev = yara_evidence(&v, packed.1);
    assert!(
        ev.iter()
            .any(|e| e["rule"] == "yara:miner.xmrig_like" && e["source"] == "memory" && e["weight"] == "confirmed"),
        "the packed look-alike's memory holds the strings: {ev:?}"
    );
    assert!(!ev.iter().any(|e| e["source"] == "executable"), "its file holds none: {ev:?}");
    assert!(yara_evidence(&v, plain.1).is_empty(), "busysim holds no miner strings");
    assert!(v["scanned"]["rules"].as_u64().unwrap() > 3);
}
