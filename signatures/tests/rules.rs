//! The shipped rule set loads and every rule's examples pass; the rule
//! format reports errors with file and line; matchers behave at the edges.

use rigwatch_signatures::load::{check_files, load, parse_path};
use rigwatch_signatures::rules::{parse_file, RuleKind, Spec};
use rigwatch_signatures::{EvidenceKind, Signatures, Weight};
use std::path::PathBuf;

fn no_lists(_: &str) -> Result<String, String> {
    Err("no lists here".into())
}

fn compile(text: &str) -> Signatures {
    let f = parse_file("t.toml", text, &no_lists).unwrap_or_else(|e| panic!("{e:?}"));
    Signatures::compile(f.rules).unwrap()
}

#[test]
fn every_shipped_rule_loads_and_passes_its_examples() {
    let l = load(&[], true);
    assert!(l.errors.is_empty(), "bundled set has errors: {:#?}", l.errors);
    let errs = l.signatures.check_examples();
    assert!(
        errs.is_empty(),
        "examples fail:\n{}",
        errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")
    );
    let rules = l.signatures.rules();
    for r in rules {
        assert!(
            !r.examples.hit.is_empty() || r.kind == RuleKind::Allow,
            "{} has no hit example",
            r.id
        );
    }
    for s in &l.sources {
        assert!(
            !s.meta.source.trim().is_empty(),
            "{} does not say where its indicators came from",
            s.file
        );
    }
    let count = |k: RuleKind| rules.iter().filter(|r| r.kind == k).map(|r| r.entries()).sum::<usize>();
    assert!(
        count(RuleKind::PoolDomain) >= 300,
        "several hundred pool domains, got {}",
        count(RuleKind::PoolDomain)
    );
    assert!(count(RuleKind::ProcessName) >= 30, "miner and campaign names");
    assert!(count(RuleKind::Cmdline) >= 10);
    assert!(count(RuleKind::Wallet) >= 4);
    assert!(count(RuleKind::BinaryContent) >= 8);
    assert!(count(RuleKind::PoolPort) >= 10);
    assert!(count(RuleKind::NodePort) >= 8, "P2Pool, monerod and bitcoind ports");
    assert!(count(RuleKind::Stratum) >= 10);
}

#[test]
fn errors_name_file_and_line() {
    let text = "[[rule]]\nid = \"ok.one\"\nkind = \"process_name\"\nseverity = \"likely\"\nnames = [\"a\"]\nexamples = { hit = [\"a\"] }\n\n\
                [[rule]]\nid = \"bad.regex\"\nkind = \"cmdline\"\nseverity = \"likely\"\nregexes = [\"(unclosed\"]\nexamples = { hit = [\"x\"] }\n";
    let e = parse_file("rules/x.toml", text, &no_lists).unwrap_err();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].path, "rules/x.toml");
    assert_eq!(e[0].line, 9, "the line of the bad rule's id");
    assert!(e[0].message.contains("bad regex"), "{}", e[0].message);
    assert!(e[0].to_string().starts_with("rules/x.toml:9: "));

    let syntax = "[[rule]]\nid = \"x\"\nkind = \"process_name\"\nseverity = \n";
    let e = parse_file("s.toml", syntax, &no_lists).unwrap_err();
    assert_eq!(e[0].line, 4, "{e:?}");

    let unknown = "[[rule]]\nid = \"x\"\nkind = \"process_nam\"\nseverity = \"likely\"\n";
    let e = parse_file("k.toml", unknown, &no_lists).unwrap_err();
    assert!(e[0].message.contains("process_nam"), "{e:?}");
    assert_eq!(e[0].line, 3);

    let misplaced =
        "[[rule]]\nid = \"x\"\nkind = \"process_name\"\nseverity = \"likely\"\nnames=[\"a\"]\nports=[1]\nexamples={hit=[\"a\"]}\n";
    let e = parse_file("m.toml", misplaced, &no_lists).unwrap_err();
    assert!(e[0].message.contains("`ports` does not belong"), "{e:?}");

    let dup = "[[rule]]\nid = \"x\"\nkind = \"process_name\"\nseverity = \"likely\"\nnames=[\"a\"]\nexamples={hit=[\"a\"]}\n[[rule]]\nid = \"x\"\nkind = \"process_name\"\nseverity = \"likely\"\nnames=[\"b\"]\nexamples={hit=[\"b\"]}\n";
    let e = parse_file("d.toml", dup, &no_lists).unwrap_err();
    assert!(e[0].message.contains("duplicate") && e[0].line == 8, "{e:?}");

    let no_examples = "[[rule]]\nid = \"x\"\nkind = \"process_name\"\nseverity = \"likely\"\nnames=[\"a\"]\n";
    assert!(parse_file("n.toml", no_examples, &no_lists).unwrap_err()[0]
        .message
        .contains("examples.hit"));
}

#[test]
fn failing_examples_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.toml");
    std::fs::write(&p, "[[rule]]\nid = \"n\"\nkind = \"process_name\"\nseverity = \"likely\"\nnames=[\"xmrig\"]\nexamples={hit=[\"xmrig\"], miss=[\"XMRIG\"]}\n").unwrap();
    let (count, errs) = check_files(std::slice::from_ref(&p));
    assert_eq!(count, 1);
    assert_eq!(errs.len(), 1, "case-insensitive names: the miss example matches");
    assert!(errs[0].to_string().contains("should not match"), "{}", errs[0]);
    assert!(errs[0].to_string().starts_with(&format!("{}:2:", p.display())));
}

#[test]
fn nothing_in_a_signature_directory_is_silently_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("lists")).unwrap();
    std::fs::create_dir_all(d.join("old/deeper/deepest")).unwrap();
    std::fs::write(d.join("10-site.toml"), "[[rule]]\nid=\"site.pools\"\nkind=\"pool_domain\"\nseverity=\"likely\"\nlists=[\"lists/pools.txt\"]\nexamples={hit=[\"pool.internal.example\"]}\n").unwrap();
    std::fs::write(d.join("lists/pools.txt"), "pool.internal.example\n").unwrap();
    for (name, body) in [
        ("README", "what this directory is"),
        ("notes.md", "# notes"),
        ("miners.yar", "rule x { condition: true }"),
        ("20-extra.tml", "[[rule]]"),
        ("lists/unused.txt", "pool.other.example"),
        ("old/30-moved.toml", "[[rule]]"),
        ("old/stray.yar", "rule s { condition: true }"),
        ("old/deeper/deepest/too-deep.yar", "rule y { condition: true }"),
    ] {
        std::fs::write(d.join(name), body).unwrap();
    }
    let l = load(&[d.to_path_buf()], false);
    assert!(
        l.signatures.pool_domain("pool.internal.example").is_some(),
        "the rule and its list loaded"
    );
    let yara: Vec<&str> = l.signatures.yara().unwrap().rules().iter().map(|r| r.id.as_str()).collect();
    assert_eq!(yara, ["yara:miners.x"], "the directory's own YARA file loaded");
    let mut reported: Vec<(String, String)> = l
        .errors
        .iter()
        .map(|e| {
            (
                e.path.strip_prefix(&d.display().to_string()).unwrap_or(&e.path).to_string(),
                e.message.clone(),
            )
        })
        .collect();
    reported.sort();
    let names: Vec<&str> = reported.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        names,
        ["/20-extra.tml", "/lists/unused.txt", "/old/30-moved.toml", "/old/stray.yar"],
        "{reported:?}"
    );
    assert!(reported[2].1.contains("subdirectory"), "{reported:?}");
    assert!(reported[3].1.contains("YARA file in a subdirectory"), "{reported:?}");
    assert!(reported.iter().all(|(_, m)| m.starts_with("ignored: ")), "{reported:?}");
    // the packaged directory (a README only) reports nothing
    let packaged = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config/signatures.d");
    assert!(load(&[packaged], false).errors.is_empty());
}

#[test]
fn directories_override_and_broken_files_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let base = load(&[], true);
    let some = base
        .signatures
        .rules()
        .iter()
        .find(|r| r.kind == RuleKind::ProcessName)
        .unwrap()
        .clone();
    // override: same id, a different name
    std::fs::write(
        dir.path().join("10-override.toml"),
        format!("[[rule]]\nid = \"{}\"\nkind = \"process_name\"\nseverity = \"suspicious\"\nnames=[\"zzminer\"]\nexamples={{hit=[\"zzminer\"]}}\n", some.id),
    )
    .unwrap();
    std::fs::write(dir.path().join("20-broken.toml"), "[[rule]\nthis is not toml").unwrap();
    std::fs::write(dir.path().join("30-list.toml"), "[[rule]]\nid=\"site.pools\"\nkind=\"pool_domain\"\nseverity=\"likely\"\nlists=[\"site.txt\"]\nexamples={hit=[\"a.pool.internal.example\"]}\n").unwrap();
    std::fs::write(dir.path().join("site.txt"), "# site list\n0.0.0.0 pool.internal.example\n").unwrap();
    let l = load(&[dir.path().to_path_buf()], false);
    assert_eq!(l.errors.len(), 1, "{:?}", l.errors);
    assert!(l.errors[0].path.ends_with("20-broken.toml") && l.errors[0].line == 1);
    let r = l.signatures.rules().iter().find(|r| r.id == some.id).unwrap();
    assert_eq!(r.severity, Weight::Suspicious);
    assert!(matches!(&r.spec, Spec::ProcessName { names } if names == &vec!["zzminer".to_string()]));
    assert_eq!(
        l.signatures.rules().len(),
        base.signatures.rules().len() + 1,
        "override replaces, list rule adds"
    );
    assert!(
        l.signatures.pool_domain("x.a.pool.internal.example").is_some(),
        "any subdomain matches"
    );
    assert!(l.signatures.pool_domain("pool.internal.example").is_some());
    assert!(l.signatures.pool_domain("internal.example").is_none(), "a parent does not");
    assert!(
        l.signatures.pool_domain("apool.internal.example").is_none(),
        "suffix match is at label boundaries"
    );
    // the bundled rules are still in force
    assert!(l.signatures.pool_domain("pool.supportxmr.com").is_some());
    // a missing directory is an error unless allowed
    assert_eq!(load(&[PathBuf::from("/nonexistent/rigwatch")], false).errors.len(), 1);
    assert!(load(&[PathBuf::from("/nonexistent/rigwatch")], true).errors.is_empty());
    assert!(parse_path(&dir.path().join("nope.toml")).unwrap_err()[0]
        .message
        .contains("cannot read"));
}

#[test]
fn content_strings_are_found_across_chunk_seams() {
    let s = compile(
        "[[rule]]\nid=\"c\"\nkind=\"binary_content\"\nseverity=\"confirmed\"\nstrings=[\"donate.v2.xmrig.com\", \"xmrig.com\", \"mining.subscribe\"]\nmin_matches=3\nexamples={hit=[\"donate.v2.xmrig.com mining.subscribe\"]}\n",
    );
    let text = b"....donate.v2.xmrig.com.....mining.subscribe....";
    for cut in 1..text.len() {
        let mut sc = s.content_scanner();
        sc.feed(&text[..cut]);
        sc.feed(&text[cut..]);
        let hits = sc.finish();
        assert_eq!(hits.len(), 1, "cut at {cut}");
        assert_eq!(hits[0].1.len(), 3, "a string inside another is found too (cut {cut})");
    }
    let mut sc = s.content_scanner();
    sc.feed(b"xmrig.com only");
    assert!(sc.finish().is_empty(), "1 of 3 is not enough");
}

#[test]
fn wallets_are_found_inside_logins_and_checked() {
    let s = load(&[], true).signatures;
    let xmr = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A";
    let ev = s.wallets_in(&format!("-u {xmr}.rig01+50000"), "cmdline");
    assert!(ev
        .iter()
        .any(|e| matches!(&e.detail, EvidenceKind::Wallet { coin, address, .. } if coin == "monero" && address == xmr)));
    // the Bitcoin genesis address passes its checksum; one changed character does not
    assert!(!s.wallets_in("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", "t").is_empty());
    assert!(s.wallets_in("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb", "t").is_empty());
    assert!(s.wallets_in("git commit 3f786850e387550fdab836ed7e6dc881de23001b", "t").is_empty());
}

#[test]
fn base64_command_lines_are_decoded() {
    let s = load(&[], true).signatures;
    use base64::Engine;
    let inner = "nohup ./x -o stratum+tcp://pool.supportxmr.com:443 -k --donate-level 1";
    for prefix in ["", "a", "ab"] {
        let enc = base64::engine::general_purpose::STANDARD.encode(format!("{prefix}{inner}"));
        let ev = s.scan_cmdline(&format!("bash -c echo {enc}|base64 -d|bash"));
        assert!(
            ev.iter().any(|e| matches!(
                &e.detail,
                EvidenceKind::CommandLine {
                    base64: true,
                    pool_url: true,
                    ..
                }
            )),
            "prefix {prefix:?}: {ev:?}"
        );
    }
    // ordinary base64-looking tokens decode to nothing useful and raise nothing
    assert!(s
        .scan_cmdline("tar czf backup-QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo.tgz /srv")
        .is_empty());
}

#[test]
fn domain_suffix_matching_is_at_label_boundaries() {
    let s = load(&[], true).signatures;
    assert!(s.pool_domain("pool.supportxmr.com").is_some());
    assert!(s.pool_domain("POOL.SUPPORTXMR.COM.").is_some(), "case and trailing dot");
    assert!(s.pool_domain("notsupportxmr.com").is_none());
    assert!(s.pool_domain("github.com").is_none());
    assert!(s.pool_domain("com").is_none());
}

#[test]
fn content_scanner_agrees_with_a_naive_search() {
    // every bundled content string, planted at pseudo-random places in noise,
    // fed in pseudo-random chunk sizes: the scanner finds exactly what a naive
    // substring search finds, rule by rule.
    let s = load(&[], true).signatures;
    let strings: Vec<(String, Vec<String>, usize)> = s
        .rules()
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::BinaryContent { strings, min_matches } => Some((r.id.clone(), strings.clone(), *min_matches)),
            _ => None,
        })
        .collect();
    let all: Vec<&String> = strings.iter().flat_map(|(_, v, _)| v).collect();
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let mut rnd = |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    for round in 0..40 {
        let mut buf: Vec<u8> = (0..20_000).map(|_| b"abcdxmrigstratum./-: \x00"[rnd(22)]).collect();
        for _ in 0..rnd(12) {
            let p = all[rnd(all.len())].as_bytes();
            let at = rnd(buf.len() - p.len());
            buf[at..at + p.len()].copy_from_slice(p);
        }
        let mut sc = s.content_scanner();
        let mut i = 0;
        while i < buf.len() {
            let n = 1 + rnd(3000);
            sc.feed(&buf[i..(i + n).min(buf.len())]);
            i += n;
        }
        let got: Vec<(String, usize)> = sc.finish().into_iter().map(|(r, v)| (r.id.clone(), v.len())).collect();
        let want: Vec<(String, usize)> = strings
            .iter()
            .filter_map(|(id, v, min)| {
                let n = v.iter().filter(|p| buf.windows(p.len()).any(|w| w == p.as_bytes())).count();
                (n >= *min).then(|| (id.clone(), n))
            })
            .collect();
        assert_eq!(got, want, "round {round}");
    }
}

#[test]
fn node_port_rules_match_local_ports_and_bad_ports_name_their_line() {
    let sig = compile(
        "[[rule]]\nid = \"node.x\"\nkind = \"node_port\"\nseverity = \"likely\"\ndescription = \"X peer port\"\nports = [37889]\nexamples = { hit = [\"37889\"], miss = [\"3333\"] }\n",
    );
    assert_eq!(sig.node_port(37889).map(|r| r.description.as_str()), Some("X peer port"));
    assert!(sig.node_port(3333).is_none());
    assert!(sig.pool_port(37889).is_none(), "a node port is not a pool port");
    assert!(sig.check_examples().is_empty());
    let text = "[[rule]]\nid = \"ok\"\nkind = \"node_port\"\nseverity = \"info\"\nports = [1]\nexamples = { hit = [\"1\"] }\n\n\
                [[rule]]\nid = \"bad.ports\"\nkind = \"node_port\"\nseverity = \"likely\"\nports = [0, 18081, 18081]\nexamples = { hit = [\"18081\"] }\n";
    let e = parse_file("rules/n.toml", text, &no_lists).unwrap_err();
    let msgs: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        msgs,
        vec![
            "rules/n.toml:9: port 0 is not a port".to_string(),
            "rules/n.toml:9: port 18081 is listed twice".to_string()
        ]
    );
    let misplaced =
        "[[rule]]\nid = \"x\"\nkind = \"node_port\"\nseverity = \"likely\"\nports = [1]\nnames = [\"a\"]\nexamples = { hit = [\"1\"] }\n";
    let e = parse_file("m.toml", misplaced, &no_lists).unwrap_err();
    assert!(
        e[0].message
            .contains("`names` does not belong to a node_port rule (it takes: ports)"),
        "{e:?}"
    );
    let empty = "[[rule]]\nid = \"x\"\nkind = \"node_port\"\nseverity = \"likely\"\nports = []\nexamples = { hit = [\"1\"] }\n";
    let e = parse_file("e.toml", empty, &no_lists).unwrap_err();
    assert!(
        e.iter().any(|e| e.message.contains("a node_port rule with nothing to match")),
        "{e:?}"
    );
}

#[test]
fn a_fleet_set_in_memory_loads_last_with_its_own_lists_and_names_its_errors() {
    use rigwatch_signatures::load::load_with;
    let sha = "ab".repeat(32);
    let fleet = vec![
        (
            "fleet/indicators.toml".to_string(),
            format!(
                "[[rule]]\nid = \"fleet.0123456789abcdef\"\nkind = \"binary_hash\"\nseverity = \"confirmed\"\ndescription = \"fleet: taught by node-a/33b6b6bfe3b640d5\"\nsha256 = [\"{sha}\"]\nexamples = {{ hit = [\"{sha}\"] }}\n"
            ),
        ),
        (
            "published/ops/pools.toml".to_string(),
            "[[rule]]\nid = \"ops.pools\"\nkind = \"pool_domain\"\nseverity = \"likely\"\ndescription = \"our pool list\"\ndomains = []\nlists = [\"lists/pools.txt\"]\nexamples = { hit = [\"pool.ops-example.net\"] }\n".to_string(),
        ),
        ("published/ops/lists/pools.txt".to_string(), "pool.ops-example.net\n".to_string()),
        // a list outside the set is never read from disk
        (
            "published/escape.toml".to_string(),
            "[[rule]]\nid = \"ops.escape\"\nkind = \"pool_domain\"\nseverity = \"likely\"\ndescription = \"x\"\ndomains = []\nlists = [\"../../etc/hostname\"]\n".to_string(),
        ),
    ];
    let l = load_with(&[], true, &fleet);
    let r = l
        .signatures
        .rule("fleet.0123456789abcdef")
        .unwrap_or_else(|| panic!("the fleet rule loaded: {:?}", l.errors));
    assert_eq!(r.description, "fleet: taught by node-a/33b6b6bfe3b640d5");
    assert_eq!(l.signatures.binary_hash(&[0xab; 32]).map(|r| r.severity), Some(Weight::Confirmed));
    assert!(
        l.signatures.rule("ops.pools").is_some(),
        "a published file's list is read from the set"
    );
    assert!(l.sources.iter().any(|s| s.file == "fleet:published/ops/pools.toml"));
    assert!(
        !l.errors.is_empty() && l.errors.iter().all(|e| e.path == "fleet:published/escape.toml"),
        "{:?}",
        l.errors
    );
    assert!(
        l.errors.iter().any(|e| e.line == 2 && e.message.contains("not in the fleet set")),
        "{:?}",
        l.errors
    );
    // without the set, nothing of it
    assert!(load(&[], true).signatures.rule("fleet.0123456789abcdef").is_none());
}
