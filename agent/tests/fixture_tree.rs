//! The process sensor and detector on the fixture proc tree
//! (tests/fixtures/proc, written by tests/fixtures/make_proc_tree.py).

use rigwatch_agent::detector::{own_evidence, Detector, DetectorConfig};
use rigwatch_agent::sensors::{ProcKey, ProcessSensor, Snapshot};
use rigwatch_signatures::{EvidenceKind, Finding, Origin, Severity, Weight};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/proc")
}

fn sig() -> Arc<rigwatch_signatures::Signatures> {
    let l = rigwatch_signatures::load(&[], true);
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    Arc::new(l.signatures)
}

fn sample(root: &Path) -> Snapshot {
    ProcessSensor::new(root).sample().expect("fixture tree lists")
}

fn key(s: &Snapshot, pid: u32) -> ProcKey {
    *s.procs
        .keys()
        .find(|k| k.pid == pid)
        .unwrap_or_else(|| panic!("pid {pid} in fixture"))
}

fn kinds(ev: &[rigwatch_signatures::Evidence]) -> Vec<&'static str> {
    ev.iter().map(|e| e.kind()).collect()
}

#[test]
fn reads_every_process_and_its_fixed_part() {
    let s = sample(&fixture());
    assert_eq!(s.procs.len(), 14);
    let x = &s.procs[&key(&s, 1001)];
    assert_eq!(x.comm, "xmrig");
    assert_eq!(x.fixed.uid, 1000);
    assert_eq!(x.fixed.exe.as_deref(), Some("/opt/miner/xmrig"));
    assert_eq!(x.fixed.argv[1], "-o");
    assert!(s.procs[&key(&s, 2)].kernel_thread);
    assert!(s.procs[&key(&s, 120)].kernel_thread);
    assert!(!s.procs[&key(&s, 1002)].kernel_thread);
}

#[test]
fn d_state_cmdline_is_not_read() {
    let s = sample(&fixture());
    let p = &s.procs[&key(&s, 1009)];
    assert_eq!(p.state, 'D');
    assert!(!p.fixed.argv_read);
    assert!(p.fixed.argv.is_empty(), "cmdline of a D-state process must not be read");
}

#[test]
fn origins_and_masquerades() {
    let s = sample(&fixture());
    let sig = sig();
    let cfg = DetectorConfig::default();
    let ev = |pid| own_evidence(&sig, &cfg, &s.procs[&key(&s, pid)]);
    let origin = |pid| {
        ev(pid).iter().find_map(|e| match &e.detail {
            EvidenceKind::ExecutableOrigin { origin, .. } => Some(*origin),
            _ => None,
        })
    };
    assert_eq!(origin(1003), Some(Origin::Deleted));
    assert_eq!(origin(1004), Some(Origin::Memfd));
    assert_eq!(origin(1005), Some(Origin::WritableDir));
    assert_eq!(origin(1006), Some(Origin::DotDir));
    assert_eq!(origin(1002), Some(Origin::DotDir));
    assert_eq!(origin(1010), None);
    assert_eq!(origin(1), None);
    let m = ev(1002);
    let masq = m.iter().find(|e| e.kind() == "masquerade").expect("fake kworker is a masquerade");
    assert_eq!(masq.weight, Weight::Suspicious);
    assert!(masq.summary().contains("kernel thread"), "{}", masq.summary());
    assert!(!kinds(&ev(1010)).contains(&"masquerade"), "python3 vs python3.11 is no masquerade");
    assert!(!kinds(&ev(1)).contains(&"masquerade"));
}

#[test]
fn miner_command_line_confirms() {
    let s = sample(&fixture());
    let mut d = Detector::new(sig(), DetectorConfig::default(), "fixture-host");
    let f = d.assess(None, &s, &[], 1);
    let get = |pid: u32| f.iter().find(|x| x.process.pid == pid);
    let x: &Finding = get(1001).expect("xmrig found");
    assert_eq!(x.severity, Severity::Confirmed);
    let k = kinds(&x.evidence);
    assert!(
        k.contains(&"process_name") && k.contains(&"wallet") && k.contains(&"command_line"),
        "{k:?}"
    );
    assert!(x
        .evidence
        .iter()
        .any(|e| matches!(&e.detail, EvidenceKind::Wallet { coin, .. } if coin == "monero")));
    assert!(x
        .evidence
        .iter()
        .any(|e| matches!(&e.detail, EvidenceKind::PoolDomain { domain, .. } if domain == "supportxmr.com")));
    // base64 one-liner: decoded, pool + wallet inside → confirmed, marked base64
    let b = get(1008).expect("base64 one-liner found");
    assert_eq!(b.severity, Severity::Confirmed);
    assert!(
        b.evidence.iter().any(|e| matches!(
            &e.detail,
            EvidenceKind::CommandLine {
                base64: true,
                pool_url: true,
                ..
            }
        )),
        "{:?}",
        b.evidence
    );
    // kswapd0 (campaign name) in a dot-dir in a pod: a strong sign without CPU → suspicious, with pod identity
    let k = get(1006).expect("kswapd0 found");
    assert_eq!(k.severity, Severity::Suspicious);
    assert_eq!(k.process.pod_uid.as_deref(), Some("7f0c2e1a-5b1d-4c3e-9a8b-0123456789ab"));
    // no CPU window: odd origins alone raise nothing, ordinary processes nothing
    for pid in [1, 1003, 1004, 1010] {
        assert!(get(pid).is_none(), "pid {pid} should raise nothing: {:?}", get(pid));
    }
    // kernel threads are never findings even though "kswapd0"-like names are signatures
    assert!(get(2).is_none() && get(120).is_none());
}

#[test]
fn cpu_over_a_window_raises_odd_origins() {
    // copy the tree, add 2 s of CPU to the deleted and memfd processes between samples
    let tmp = tempfile::tempdir().unwrap();
    copy_tree(&fixture(), tmp.path());
    let mut sensor = ProcessSensor::new(tmp.path());
    let first = sensor.sample().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    for pid in [1003, 1004, 1010] {
        let p = tmp.path().join(pid.to_string()).join("stat");
        let t = std::fs::read_to_string(&p).unwrap();
        let mut f: Vec<String> = t.split(' ').map(str::to_string).collect();
        f[13] = (f[13].parse::<u64>().unwrap() + 200).to_string(); // utime + 2 s at 100 Hz
        std::fs::write(&p, f.join(" ")).unwrap();
    }
    let second = sensor.sample().unwrap();
    let cores = second.cores_since(&first, &key(&second, 1003)).unwrap();
    assert!(cores > 1.0, "2 s of CPU in ~0.2 s is several cores, got {cores}");
    let mut d = Detector::new(sig(), DetectorConfig::default(), "h");
    let f = d.assess(Some(&first), &second, &[], 1);
    let get = |pid: u32| f.iter().find(|x| x.process.pid == pid);
    for pid in [1003, 1004] {
        let x = get(pid).unwrap_or_else(|| panic!("busy odd-origin pid {pid} is suspicious"));
        assert_eq!(x.severity, Severity::Suspicious);
        assert!(kinds(&x.evidence).contains(&"cpu") && kinds(&x.evidence).contains(&"executable_origin"));
    }
    assert!(get(1010).is_none(), "a busy ordinary python3 is no finding");
}

#[test]
fn hostile_names_survive() {
    let s = sample(&fixture());
    let p = &s.procs[&key(&s, 1007)];
    assert!(p.comm.contains('"') && p.comm.contains('\u{fffd}'));
    assert!(p.fixed.argv[0].len() > 10_000);
    let shown = rigwatch_agent::output::clean(&p.comm, 40);
    assert!(!shown.contains('\x1b'), "escape codes are escaped for terminals: {shown}");
}

fn copy_tree(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        let ft = e.file_type().unwrap();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), &dst).unwrap();
        } else if ft.is_dir() {
            std::fs::create_dir(&dst).unwrap();
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}
