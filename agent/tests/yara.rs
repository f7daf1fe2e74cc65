//! YARA rule files (issue 17) through the agent's scans: the fixture set
//! (tests/fixtures/yara) loads with its broken file reported as FILE:LINE,
//! its rules fire on miner-like bytes in the read that hashes them and in a
//! process's memory, and none fires on this host's /usr/bin.

use rigwatch_agent::sensors::binary::{scan_memory, scan_reader};
use rigwatch_signatures::{Evidence, EvidenceKind, Signatures, Weight};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/yara")
}

fn sig() -> Signatures {
    rigwatch_signatures::load(&[fixtures()], false).signatures
}

fn yara(ev: &[Evidence]) -> Vec<&Evidence> {
    ev.iter()
        .filter(|e| e.rule.as_deref().is_some_and(|r| r.starts_with("yara:")))
        .collect()
}

/// XMRig-like strings, assembled at run time (this test binary holds none whole).
fn miner_strings() -> Vec<u8> {
    let parts = [
        ["donate.v2.", "xmrig.com:3333"],
        ["XMRig/6.21.0 (Linux", " x86_64) libuv/1.44.2"],
        ["/sbin/modprobe msr ", "allow_writes=on"],
        ["URL of mining ", "server"],
        ["--randomx-1gb", "-pages"],
        ["max-threads", "-hint"],
    ];
    let mut out = Vec::new();
    for [a, b] in parts {
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b.as_bytes());
        out.push(0);
    }
    out
}

#[test]
fn the_fixture_set_loads_and_names_its_broken_file_and_line() {
    let l = rigwatch_signatures::load(&[fixtures()], false);
    assert_eq!(l.errors.len(), 1, "{:?}", l.errors);
    let e = &l.errors[0];
    assert!(e.path.ends_with("fixtures/yara/broken.yar"), "{e}");
    assert_eq!(e.line, 7, "{e}");
    assert!(e.message.starts_with("YARA: ") && e.message.contains("never_defined"), "{e}");
    let y = l.signatures.yara().expect("the other files load");
    let mut got: Vec<(&str, Weight)> = y.rules().iter().map(|r| (r.id.as_str(), r.weight)).collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("yara:elf-tuning.randomx_tuning_elf", Weight::Suspicious),
            ("yara:miner.stratum_client", Weight::Likely),
            ("yara:miner.xmrig_like", Weight::Confirmed),
        ],
        "broken.yar is left out whole (its good rule too); no rigwatch_weight is likely"
    );
    assert!(l.sources.iter().any(|s| s.file.ends_with("miner.yar") && s.rules == 2));
    assert_ne!(
        l.signatures.version,
        rigwatch_signatures::load(&[], true).signatures.version,
        "the version fingerprints the YARA rules"
    );
}

#[test]
fn rules_fire_in_the_read_that_hashes_the_executable() {
    use sha2::{Digest, Sha256};
    let sig = sig();
    // a real ELF (elf module: ET_DYN; math module: low entropy) with miner strings appended
    let mut bytes = std::fs::read("/bin/true").unwrap();
    bytes.extend(miner_strings());
    let mut total = 0;
    let v = scan_reader(&sig, &mut &bytes[..], u64::MAX, "/opt/x/sim", &mut total).unwrap();
    assert_eq!(v.sha256, <[u8; 32]>::from(Sha256::digest(&bytes)), "one read: hashed and matched");
    assert_eq!(total, bytes.len() as u64);
    assert!(v.yara_error.is_none());
    let ev = yara(&v.evidence);
    let by_rule = |id: &str| {
        *ev.iter()
            .find(|e| e.rule.as_deref() == Some(id))
            .unwrap_or_else(|| panic!("{id} fires: {ev:?}"))
    };
    let x = by_rule("yara:miner.xmrig_like");
    assert_eq!(x.weight, Weight::Confirmed);
    let EvidenceKind::BinaryContent {
        strings,
        path,
        source,
        yara: Some(m),
    } = &x.detail
    else {
        panic!("{x:?}")
    };
    assert_eq!((path.as_str(), source.as_str()), ("/opt/x/sim", "executable"));
    assert!(strings.contains(&"$donate: donate.v2.xmrig.com".to_string()), "{strings:?}");
    assert!(strings.iter().any(|s| s.starts_with("$banner: XMRig/6.21.0")), "{strings:?}");
    assert!(m.file.ends_with("fixtures/yara/miner.yar"));
    assert_eq!(m.metadata["rigwatch_weight"], "confirmed");
    assert_eq!(m.metadata["author"], "rigwatch tests");
    assert!(x.summary().contains("matches a YARA rule of"), "{}", x.summary());
    assert_eq!(by_rule("yara:elf-tuning.randomx_tuning_elf").weight, Weight::Suspicious);
    assert!(
        !ev.iter().any(|e| e.rule.as_deref() == Some("yara:miner.stratum_client")),
        "no stratum strings here"
    );
    // YARA sees the bytes the capped read kept, no more
    let capped = scan_reader(&sig, &mut &bytes[..], (bytes.len() - 200) as u64, "/opt/x/sim", &mut 0).unwrap();
    assert!(capped.truncated && yara(&capped.evidence).is_empty(), "{:?}", capped.evidence);
}

#[test]
fn rules_fire_on_a_process_memory() {
    let sig = sig();
    let strings = String::from_utf8(miner_strings()).unwrap().replace('\0', " ");
    // a shell holding the strings in a variable: in its memory, in no file it runs
    let mut child = std::process::Command::new("/bin/sh")
        .args(["-c", &format!("v='{strings}'; sleep 5 </dev/null"), "sh"])
        .spawn()
        .unwrap();
    let pid = child.id();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut n = 0;
    let ev = scan_memory(&sig, Path::new("/proc"), pid, 64 << 20, "/bin/sh", &mut n);
    let _ = child.kill();
    let _ = child.wait();
    let ev = ev.unwrap();
    let x = yara(&ev)
        .into_iter()
        .find(|e| e.rule.as_deref() == Some("yara:miner.xmrig_like"))
        .unwrap_or_else(|| panic!("{ev:?}"))
        .clone();
    assert_eq!(x.weight, Weight::Confirmed);
    assert!(matches!(&x.detail, EvidenceKind::BinaryContent { source, yara: Some(_), .. } if source == "memory"));
}

#[test]
fn no_yara_rule_fires_on_this_hosts_usr_bin() {
    let sig = sig();
    let mut files: Vec<PathBuf> = std::fs::read_dir("/usr/bin")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .collect();
    files.sort();
    let (mut scanned, mut total) = (0, 0u64);
    let mut hits = Vec::new();
    for p in &files {
        let Ok(mut f) = std::fs::File::open(p) else { continue };
        let Ok(v) = scan_reader(&sig, &mut f, 64 << 20, &p.display().to_string(), &mut total) else {
            continue;
        };
        scanned += 1;
        assert!(v.yara_error.is_none(), "{}: {:?}", p.display(), v.yara_error);
        hits.extend(yara(&v.evidence).into_iter().cloned());
    }
    assert!(scanned > 20, "only {scanned} files in /usr/bin");
    assert!(
        hits.is_empty(),
        "YARA rules fired on /usr/bin ({scanned} files, {total} bytes): {hits:?}"
    );
}
