//! The real binary's fleet commands: `fleet key` (made once, mode 0600,
//! a broken key file refused in words) and `signatures publish` (a bad
//! file: FILE:LINE errors, exit 2, nothing changed; `--clear`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_rigwatch-collector");

fn run(args: &[&str], cwd: &Path) -> Output {
    Command::new(BIN).args(args).current_dir(cwd).output().unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn version(data: &Path) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store =
            rigwatch_collector::Store::new(rigwatch_collector::db::open(&data.join("collector.sqlite3").display().to_string()).unwrap());
        store.fleet_version().await.unwrap()
    })
}

#[test]
fn fleet_key_is_made_once_private_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let o = run(&["fleet", "key", "--data-dir", d], dir.path());
    assert!(o.status.success(), "{}", err(&o));
    let key = out(&o);
    use base64::Engine;
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(&key).unwrap().len(), 32, "{key}");
    let file = data.join("fleet-signing-key.pk8");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let o = run(&["fleet", "key", "--data-dir", d], dir.path());
    assert_eq!(out(&o), key, "the same key every time");
    // A damaged key is refused, never replaced.
    std::fs::write(&file, b"not a key").unwrap();
    let o = run(&["fleet", "key", "--data-dir", d], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("fleet signing key") && err(&o).contains("not an ed25519 PKCS#8 key"),
        "{}",
        err(&o)
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"not a key");
    // ... and so is serving with it.
    let o = run(&["serve", "--data-dir", d, "--listen", "127.0.0.1:1"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("fleet signing key"), "{}", err(&o));
}

#[test]
fn publishing_validates_everything_first() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(rules.join("lists")).unwrap();
    std::fs::write(
        rules.join("site.toml"),
        "[[rule]]\nid = \"site.pools\"\nkind = \"pool_domain\"\nseverity = \"likely\"\ndomains = [\"pool.corp-miner.example\"]\n\
         lists = [\"lists/more.txt\"]\nexamples = { hit = [\"pool.corp-miner.example\"] }\n",
    )
    .unwrap();
    std::fs::write(rules.join("lists/more.txt"), "other-pool.example\n").unwrap();
    let o = run(&["signatures", "publish", rules.to_str().unwrap(), "--data-dir", d], dir.path());
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).contains("published 2 files"), "{}", out(&o));
    let v = version(&data);
    // A bad file: every error named by file and line, nothing changed.
    std::fs::write(
        rules.join("bad.toml"),
        "[[rule]]\nid = \"bad\"\nkind = \"wallet\"\nseverity = \"confirmed\"\nregex = '('\nexamples = { hit = [\"x\"] }\n",
    )
    .unwrap();
    let o = run(&["signatures", "publish", rules.to_str().unwrap(), "--data-dir", d], dir.path());
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("bad.toml:2:"), "{}", err(&o));
    assert!(err(&o).contains("nothing was published"), "{}", err(&o));
    assert_eq!(version(&data), v);
    // A list outside the directory is refused.
    std::fs::write(
        rules.join("bad.toml"),
        "[[rule]]\nid = \"bad\"\nkind = \"pool_domain\"\nseverity = \"likely\"\nlists = [\"../../etc/hosts\"]\nexamples = { hit = [\"a.example\"] }\n",
    )
    .unwrap();
    let o = run(&["signatures", "publish", rules.to_str().unwrap(), "--data-dir", d], dir.path());
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("inside the published directory"), "{}", err(&o));
    assert_eq!(version(&data), v);
    let o = run(&["signatures", "publish", "--clear", "--data-dir", d], dir.path());
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(version(&data), v + 1);
}

#[test]
fn yara_files_are_published_and_a_broken_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("site.yar"),
        "rule site_miner {\n  meta:\n    rigwatch_weight = \"confirmed\"\n  strings:\n    $a = \"corp-miner-7\"\n  condition:\n    $a\n}\n",
    )
    .unwrap();
    let o = run(&["signatures", "publish", rules.to_str().unwrap(), "--data-dir", d], dir.path());
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        out(&o).contains("published 1 files") || out(&o).contains("published 1 file"),
        "{}",
        out(&o)
    );
    let v = version(&data);
    std::fs::write(rules.join("broken.yara"), "rule broken {\n  condition:\n    $nope\n}\n").unwrap();
    let o = run(&["signatures", "publish", rules.to_str().unwrap(), "--data-dir", d], dir.path());
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("broken.yara:3:"), "{}", err(&o));
    assert!(err(&o).contains("nothing was published"), "{}", err(&o));
    assert_eq!(version(&data), v);
}
