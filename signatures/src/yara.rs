//! YARA rule files, compiled with yara-x (VirusTotal's Rust YARA).
//!
//! Every `*.yar`/`*.yara` file of the bundled set and of each signature
//! directory is compiled once per load into one [`YaraSet`], held by the
//! [`crate::Signatures`] it was loaded with (so a hot reload recompiles it).
//! A file's namespace is its file name without the extension; a later file
//! of the same name (another directory, the fleet set) replaces an earlier
//! one, as a rule of the same id does. A file that does not compile is
//! reported as FILE:LINE and left out; the others load.
//!
//! The scanned bytes are the adversary's: a scan has a timeout, matches are
//! capped per pattern, and what goes into evidence (rules, strings, excerpt
//! lengths, metadata) is capped and escaped.

use crate::model::{Evidence, EvidenceKind, Weight, YaraMatch};
use crate::rules::RuleError;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

/// How long one scan (an executable, a process's memory) may take.
pub const SCAN_TIMEOUT: Duration = Duration::from_secs(5);
/// Most matching rules reported from one scan.
pub const MAX_RULES_REPORTED: usize = 16;
/// Most matched patterns named in one piece of evidence.
pub const MAX_STRINGS: usize = 8;
/// Most bytes of a match shown in an excerpt (then escaped).
pub const MAX_EXCERPT: usize = 48;
/// Most matches a pattern records in one scan (yara-x's default is a million).
pub const MAX_MATCHES_PER_PATTERN: usize = 10_000;
/// Most metadata entries copied into evidence, and their value length.
const MAX_META: usize = 16;
const MAX_META_LEN: usize = 200;
/// Most compile errors reported for one file.
const MAX_ERRORS_PER_FILE: usize = 20;
/// The metadata key that sets a rule's evidence weight.
pub const WEIGHT_KEY: &str = "rigwatch_weight";

/// A YARA source file to compile.
#[derive(Debug, Clone)]
pub struct YaraFile {
    /// How errors and evidence name it: a path, `bundled:NAME`, `fleet:NAME`.
    pub shown: String,
    /// The file's text.
    pub text: String,
}

impl YaraFile {
    /// The file's namespace: its name without directory or extension.
    pub fn namespace(&self) -> String {
        let name = self.shown.rsplit(['/', ':']).next().unwrap_or(&self.shown);
        Path::new(name).file_stem().and_then(|s| s.to_str()).unwrap_or(name).to_string()
    }
}

/// Whether `path` names a YARA rule file (`*.yar`, `*.yara`).
pub fn is_yara(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yar" | "yara"))
}

/// One compiled YARA rule, as `rigwatch signatures list` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct YaraRule {
    /// `yara:NAMESPACE.RULE`.
    pub id: String,
    /// The file it came from.
    pub file: String,
    /// 1-based line of its `rule` keyword (0 when not found).
    pub line: usize,
    /// From `rigwatch_weight`, else likely.
    pub weight: Weight,
    /// Its metadata, values as text (capped).
    pub metadata: BTreeMap<String, String>,
}

/// The compiled YARA rules of one load.
pub struct YaraSet {
    rules: yara_x::Rules,
    /// (namespace, identifier) -> index into `list`.
    by_name: HashMap<(String, String), usize>,
    list: Vec<YaraRule>,
    /// A short fingerprint of the sources.
    pub digest: String,
}

impl std::fmt::Debug for YaraSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("YaraSet")
            .field("rules", &self.list.len())
            .field("digest", &self.digest)
            .finish()
    }
}

/// Why a scan gave no result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum YaraScanError {
    /// The scan ran past [`SCAN_TIMEOUT`].
    #[error("YARA scan timed out after {} s", SCAN_TIMEOUT.as_secs())]
    Timeout,
    /// Anything else yara-x reported.
    #[error("YARA scan failed: {0}")]
    Other(String),
}

fn compiler<'a>() -> yara_x::Compiler<'a> {
    let mut c = yara_x::Compiler::new();
    // one file, one namespace: no reading other files behind the loader's back
    c.enable_includes(false);
    c
}

/// 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

/// The line of `rule NAME` in `text` (0 when not found).
fn rule_line(text: &str, name: &str) -> usize {
    let re = regex::Regex::new(&format!(r"(?m)^\s*(?:(?:private|global)\s+)*rule\s+{}\b", regex::escape(name)));
    re.ok()
        .and_then(|re| re.find(text))
        .map(|m| line_of(text, m.start() + (m.as_str().len() - m.as_str().trim_start().len())))
        .unwrap_or(0)
}

fn meta_text(v: &yara_x::MetaValue) -> String {
    let s = match v {
        yara_x::MetaValue::Integer(i) => i.to_string(),
        yara_x::MetaValue::Float(f) => f.to_string(),
        yara_x::MetaValue::Bool(b) => b.to_string(),
        yara_x::MetaValue::String(s) => s.to_string(),
        yara_x::MetaValue::Bytes(b) => b.escape_ascii().to_string(),
    };
    cap(&s, MAX_META_LEN)
}

fn cap(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut out: String = s.chars().take(n).collect();
    out.push('…');
    out
}

/// The weight a `rigwatch_weight` value names.
pub fn parse_weight(v: &str) -> Option<Weight> {
    match v {
        "confirmed" => Some(Weight::Confirmed),
        "likely" => Some(Weight::Likely),
        "suspicious" => Some(Weight::Suspicious),
        _ => None,
    }
}

/// The errors of one file compiled on its own (none when it compiles).
fn file_errors(f: &YaraFile, namespace: &str) -> Vec<RuleError> {
    let mut c = compiler();
    c.new_namespace(namespace);
    if c.add_source(yara_x::SourceCode::from(f.text.as_str()).with_origin(f.shown.as_str()))
        .is_ok()
    {
        return Vec::new();
    }
    c.errors()
        .iter()
        .take(MAX_ERRORS_PER_FILE)
        .map(|e| {
            let label = e.labels().next();
            let line = label.as_ref().map(|l| line_of(&f.text, l.span().start())).unwrap_or(0);
            let detail = label.map(|l| l.text().to_string()).filter(|t| !t.is_empty());
            RuleError {
                path: f.shown.clone(),
                line,
                message: match detail {
                    Some(d) if d != e.title() => format!("YARA: {}: {d}", e.title()),
                    _ => format!("YARA: {}", e.title()),
                },
            }
        })
        .collect()
}

/// Compiles YARA files (later files of the same namespace replace earlier
/// ones). Files that do not compile are reported and left out; `None` when
/// no rule is left.
pub fn compile(files: Vec<YaraFile>) -> (Option<YaraSet>, Vec<RuleError>) {
    let mut by_ns: Vec<(String, YaraFile)> = Vec::new();
    for f in files {
        let ns = f.namespace();
        match by_ns.iter_mut().find(|(n, _)| *n == ns) {
            Some(slot) => slot.1 = f,
            None => by_ns.push((ns, f)),
        }
    }
    let mut errors = Vec::new();
    let mut main = compiler();
    let mut kept: HashMap<String, &YaraFile> = HashMap::new();
    for (ns, f) in &by_ns {
        let e = file_errors(f, ns);
        if !e.is_empty() {
            errors.extend(e);
            continue;
        }
        main.new_namespace(ns);
        match main.add_source(yara_x::SourceCode::from(f.text.as_str()).with_origin(f.shown.as_str())) {
            Ok(_) => {
                kept.insert(ns.clone(), f);
            }
            Err(e) => errors.push(RuleError {
                path: f.shown.clone(),
                line: 0,
                message: format!("YARA: {}", e.title()),
            }),
        }
    }
    if kept.is_empty() {
        return (None, errors);
    }
    let digest = {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for (ns, f) in &by_ns {
            if kept.contains_key(ns) {
                h.update(ns.as_bytes());
                h.update([0]);
                h.update(f.text.as_bytes());
                h.update([0]);
            }
        }
        hex::encode(&h.finalize()[..6])
    };
    let rules = main.build();
    let mut list = Vec::new();
    let mut by_name = HashMap::new();
    for r in rules.iter() {
        let (ns, name) = (r.namespace().to_string(), r.identifier().to_string());
        let Some(f) = kept.get(&ns) else { continue };
        let line = rule_line(&f.text, &name);
        let mut weight = Weight::Likely;
        let mut metadata = BTreeMap::new();
        for (k, v) in r.metadata() {
            if k == WEIGHT_KEY {
                match &v {
                    yara_x::MetaValue::String(s) if parse_weight(s).is_some() => weight = parse_weight(s).unwrap(),
                    _ => errors.push(RuleError {
                        path: f.shown.clone(),
                        line,
                        message: format!(
                            "YARA rule {name}: {WEIGHT_KEY} must be \"confirmed\", \"likely\" or \"suspicious\" (using likely)"
                        ),
                    }),
                }
            }
            if metadata.len() < MAX_META {
                metadata.insert(cap(k, 64), meta_text(&v));
            }
        }
        by_name.insert((ns.clone(), name.clone()), list.len());
        list.push(YaraRule {
            id: format!("yara:{ns}.{name}"),
            file: f.shown.clone(),
            line,
            weight,
            metadata,
        });
    }
    (
        Some(YaraSet {
            rules,
            by_name,
            list,
            digest,
        }),
        errors,
    )
}

/// Checks YARA files without loading them anywhere: (rules, errors).
pub fn check(files: Vec<YaraFile>) -> (usize, Vec<RuleError>) {
    let (set, errors) = compile(files);
    (set.map(|s| s.rules().len()).unwrap_or(0), errors)
}

/// A short, printable excerpt of matched bytes (the adversary's bytes).
fn excerpt(data: &[u8]) -> String {
    let mut s = data[..data.len().min(MAX_EXCERPT)].escape_ascii().to_string();
    if data.len() > MAX_EXCERPT {
        s.push('…');
    }
    s
}

impl YaraSet {
    /// The compiled rules, in load order.
    pub fn rules(&self) -> &[YaraRule] {
        &self.list
    }

    /// Scans `data` (an executable's bytes, a process's memory) and returns
    /// one [`EvidenceKind::BinaryContent`] per matching rule (at most
    /// [`MAX_RULES_REPORTED`]); `path` and `source` go into the evidence.
    pub fn scan(&self, data: &[u8], path: &str, source: &str) -> Result<Vec<Evidence>, YaraScanError> {
        let mut scanner = yara_x::Scanner::new(&self.rules);
        scanner.set_timeout(SCAN_TIMEOUT);
        scanner.max_matches_per_pattern(MAX_MATCHES_PER_PATTERN);
        let results = scanner.scan(data).map_err(|e| match e {
            yara_x::errors::ScanError::Timeout => YaraScanError::Timeout,
            e => YaraScanError::Other(e.to_string()),
        })?;
        let mut out = Vec::new();
        for r in results.matching_rules().take(MAX_RULES_REPORTED) {
            let key = (r.namespace().to_string(), r.identifier().to_string());
            let Some(info) = self.by_name.get(&key).map(|&i| &self.list[i]) else {
                continue;
            };
            let mut strings: Vec<String> = r
                .patterns()
                .filter_map(|p| p.matches().next().map(|m| format!("{}: {}", p.identifier(), excerpt(m.data()))))
                .take(MAX_STRINGS)
                .collect();
            if strings.is_empty() {
                strings.push("(condition)".into());
            }
            out.push(Evidence::from_rule(
                EvidenceKind::BinaryContent {
                    strings,
                    path: path.to_string(),
                    source: source.to_string(),
                    yara: Some(YaraMatch {
                        file: info.file.clone(),
                        metadata: info.metadata.clone(),
                    }),
                },
                &info.id,
                info.weight,
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(shown: &str, text: &str) -> YaraFile {
        YaraFile {
            shown: shown.into(),
            text: text.into(),
        }
    }

    #[test]
    fn errors_name_file_and_line_and_other_files_load() {
        let good = file("/r/good.yar", "rule a {\n strings: $x = \"needle\"\n condition: $x\n}\n");
        let bad = file("/r/bad.yara", "rule ok { condition: true }\n\nrule b {\n condition: $nope\n}\n");
        let (set, errors) = compile(vec![good, bad]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!((errors[0].path.as_str(), errors[0].line), ("/r/bad.yara", 4), "{errors:?}");
        let set = set.unwrap();
        // the whole broken file is left out, its good rule too
        let ids: Vec<&str> = set.rules().iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["yara:good.a"]);
        assert_eq!(set.rules()[0].line, 1);
    }

    #[test]
    fn weight_from_metadata_and_capped_escaped_strings() {
        let src = "rule w {\n meta:\n  rigwatch_weight = \"confirmed\"\n  author = \"me\"\n strings:\n  $a = /evil[^\\n]*/\n condition: $a\n}\n\
                   rule d { strings: $b = \"plain\" condition: $b }\nrule bad_weight { meta: rigwatch_weight = \"high\" condition: false }\n";
        let (set, errors) = compile(vec![file("bundled:ns.yar", src)]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.contains("rigwatch_weight") && errors[0].line == 10, "{errors:?}");
        let set = set.unwrap();
        let mut data = b"xx evil\x1b[31m".to_vec();
        data.extend(std::iter::repeat_n(b'A', 1000));
        data.extend(b"\n plain");
        let ev = set.scan(&data, "/bin/x", "executable").unwrap();
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert_eq!(ev[0].rule.as_deref(), Some("yara:ns.w"));
        assert_eq!(ev[0].weight, Weight::Confirmed);
        assert_eq!(ev[1].weight, Weight::Likely, "no rigwatch_weight: likely");
        let EvidenceKind::BinaryContent { strings, yara, .. } = &ev[0].detail else {
            panic!()
        };
        assert!(
            strings[0].starts_with("$a: evil\\x1b[31mAAA") && strings[0].ends_with('…'),
            "{strings:?}"
        );
        assert!(strings[0].len() < 4 * MAX_EXCERPT + 16);
        let y = yara.as_ref().unwrap();
        assert_eq!(y.file, "bundled:ns.yar");
        assert_eq!(y.metadata["author"], "me");
        assert!(set.scan(b"nothing here", "/bin/y", "memory").unwrap().is_empty());
    }

    #[test]
    fn later_file_of_the_same_name_replaces() {
        let a = file("/a/miners.yar", "rule one { condition: true }");
        let b = file("/b/miners.yar", "rule two { condition: true }");
        let (set, errors) = compile(vec![a, b]);
        assert!(errors.is_empty());
        let set = set.unwrap();
        assert_eq!(set.rules().len(), 1);
        assert_eq!(set.rules()[0].id, "yara:miners.two");
        assert_eq!(set.rules()[0].file, "/b/miners.yar");
    }

    #[test]
    fn a_scan_that_runs_too_long_stops_at_the_timeout() {
        // quadratic over the scanned bytes: what a hostile file could make of a careless rule
        let src = "rule slow { condition: for any i in (0..filesize) : (for any j in (0..filesize) : (uint8(i) + uint8(j) == 1000)) }";
        let (set, _) = compile(vec![file("/r/slow.yar", src)]);
        let start = std::time::Instant::now();
        let r = set.unwrap().scan(&vec![7u8; 1 << 20], "/bin/x", "executable");
        assert_eq!(r, Err(YaraScanError::Timeout));
        assert!(start.elapsed() < SCAN_TIMEOUT + Duration::from_secs(3), "{:?}", start.elapsed());
    }

    #[test]
    fn matches_reported_are_capped() {
        let mut src = String::new();
        for i in 0..40 {
            src.push_str(&format!("rule r{i} {{ strings: "));
            for j in 0..12 {
                src.push_str(&format!("$s{j} = \"tok{j:02}\" "));
            }
            src.push_str("condition: any of them }\n");
        }
        let (set, errors) = compile(vec![file("/r/many.yar", &src)]);
        assert!(errors.is_empty(), "{errors:?}");
        let data: String = (0..12).map(|j| format!("tok{j:02} ")).collect::<String>().repeat(100);
        let ev = set.unwrap().scan(data.as_bytes(), "/bin/x", "executable").unwrap();
        assert_eq!(ev.len(), MAX_RULES_REPORTED);
        assert!(ev
            .iter()
            .all(|e| matches!(&e.detail, EvidenceKind::BinaryContent { strings, .. } if strings.len() == MAX_STRINGS)));
    }

    #[test]
    fn includes_are_refused() {
        let (set, errors) = compile(vec![file("/r/i.yar", "include \"/etc/passwd\"\nrule x { condition: true }")]);
        assert!(set.is_none());
        assert_eq!((errors[0].path.as_str(), errors[0].line), ("/r/i.yar", 1), "{errors:?}");
    }
}
