//! Loading rule sets: the embedded bundled set, then extra directories whose
//! rules add to or override it (same id replaces). A broken file is reported
//! with file and line and skipped; the rest stays in force. YARA files
//! (`*.yar`, `*.yara`) beside the rule files are compiled in the same load
//! (see [`crate::yara`]).

use crate::compiled::Signatures;
use crate::rules::{parse_file, Meta, Rule, RuleError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

include!(concat!(env!("OUT_DIR"), "/bundled.rs"));

/// The bundled rule and list files, unmasked: (path under rules/, text).
pub fn bundled() -> &'static [(&'static str, String)] {
    static FILES: std::sync::OnceLock<Vec<(&'static str, String)>> = std::sync::OnceLock::new();
    FILES.get_or_init(|| {
        BUNDLED_MASKED
            .iter()
            .map(|(n, b)| {
                (
                    *n,
                    String::from_utf8_lossy(&b.iter().map(|x| x ^ 0xA5).collect::<Vec<u8>>()).into_owned(),
                )
            })
            .collect()
    })
}

/// Where a loaded file came from and what it holds.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    /// `bundled:NAME` or a path on disk.
    pub file: String,
    /// Its `[meta] source`.
    pub meta: Meta,
    /// How many rules it defined.
    pub rules: usize,
}

/// The outcome of loading: the compiled set, the files it came from, and the
/// errors of the files that were skipped.
#[derive(Debug)]
pub struct Loaded {
    /// The compiled set.
    pub signatures: Signatures,
    /// Files loaded, in order.
    pub sources: Vec<SourceInfo>,
    /// Errors; each names file and line.
    pub errors: Vec<RuleError>,
}

/// Parses the in-memory file `name` of a set of files (the bundled set, a
/// fleet set), shown as `shown`; its lists are resolved among the set's
/// other files, never on disk.
fn parse_among<N: AsRef<str>>(
    shown: &str,
    name: &str,
    text: &str,
    files: &[(N, String)],
    set: &str,
) -> Result<crate::rules::RuleFile, Vec<RuleError>> {
    let dir = Path::new(name).parent().unwrap_or(Path::new("")).to_path_buf();
    let read = move |l: &str| -> Result<String, String> {
        let want = dir.join(l);
        files
            .iter()
            .find(|(n, _)| Path::new(n.as_ref()) == want)
            .map(|(_, t)| t.clone())
            .ok_or_else(|| format!("not in the {set}"))
    };
    parse_file(shown, text, &read)
}

/// Parses one bundled file by name (lists resolved inside the bundle).
fn parse_bundled(name: &str, text: &str) -> Result<crate::rules::RuleFile, Vec<RuleError>> {
    parse_among(&format!("bundled:{name}"), name, text, bundled(), "bundled set")
}

/// Parses one rule file on disk (lists relative to it).
pub fn parse_path(path: &Path) -> Result<crate::rules::RuleFile, Vec<RuleError>> {
    parse_path_noting(path, &std::cell::RefCell::new(Default::default()))
}

/// [`parse_path`], noting in `lists` every list file it read.
fn parse_path_noting(
    path: &Path,
    lists: &std::cell::RefCell<std::collections::HashSet<PathBuf>>,
) -> Result<crate::rules::RuleFile, Vec<RuleError>> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![RuleError {
            path: shown.clone(),
            line: 0,
            message: format!("cannot read: {e}"),
        }]
    })?;
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let read = move |l: &str| {
        let p = dir.join(l);
        lists.borrow_mut().insert(p.canonicalize().unwrap_or_else(|_| p.clone()));
        std::fs::read_to_string(p).map_err(|e| e.to_string())
    };
    parse_file(&shown, &text, &read)
}

/// Documentation a signature directory may hold beside its rules.
fn is_documentation(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.starts_with("README") || name.ends_with(".md")
}

/// Most entries looked at under one signature directory (an admin's
/// directory, but nothing read from disk grows without bound).
const MAX_DIR_ENTRIES: usize = 10_000;

/// The files under `dir` (two levels down at most) that are neither rule
/// files, nor lists a rule file read, nor documentation: reported, so that
/// nothing put there is silently ignored (a YARA file, a rule file with
/// the wrong extension, a stray list).
fn stray_files(dir: &Path, lists: &std::collections::HashSet<PathBuf>) -> Vec<RuleError> {
    let mut out = Vec::new();
    let mut todo = vec![(dir.to_path_buf(), 0)];
    let mut seen = 0;
    while let Some((d, depth)) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            seen += 1;
            if seen > MAX_DIR_ENTRIES {
                out.push(RuleError {
                    path: dir.display().to_string(),
                    line: 0,
                    message: format!("more than {MAX_DIR_ENTRIES} entries: the rest were not looked at"),
                });
                return out;
            }
            if p.is_dir() {
                if depth < 2 {
                    todo.push((p, depth + 1));
                }
                continue;
            }
            let top_rule = depth == 0 && (p.extension().is_some_and(|e| e == "toml") || crate::yara::is_yara(&p));
            let list = lists.contains(&p.canonicalize().unwrap_or_else(|_| p.clone()));
            if top_rule || list || is_documentation(&p) {
                continue;
            }
            let what = match p.extension().and_then(|e| e.to_str()) {
                Some("yar" | "yara") => "a YARA file in a subdirectory (only the directory's own *.yar and *.yara are read)",
                Some("toml") => "a rule file in a subdirectory (only the directory's own *.toml are read)",
                _ => "neither a rule file (*.toml) nor a list a rule file names",
            };
            out.push(RuleError {
                path: p.display().to_string(),
                line: 0,
                message: format!("ignored: {what}"),
            });
        }
    }
    out
}

/// The `*.toml` files of a directory, sorted by name.
pub fn rule_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
        .collect();
    v.sort();
    Ok(v)
}

/// The `*.yar` and `*.yara` files of a directory, sorted by name.
pub fn yara_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| crate::yara::is_yara(p) && p.is_file())
        .collect();
    v.sort();
    Ok(v)
}

/// Reads one YARA file on disk.
fn read_yara(path: &Path) -> Result<crate::yara::YaraFile, RuleError> {
    let shown = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(crate::yara::YaraFile { shown, text }),
        Err(e) => Err(RuleError {
            path: shown,
            line: 0,
            message: format!("cannot read: {e}"),
        }),
    }
}

/// Loads the bundled set plus `dirs` (a missing directory is an error only
/// when `missing_ok` is false). Files with errors are skipped and reported.
pub fn load(dirs: &[PathBuf], missing_ok: bool) -> Loaded {
    load_with(dirs, missing_ok, &[])
}

/// [`load`], then the rule files of a set held in memory (the fleet set a
/// collector publishes: `(name, text)`, shown as `fleet:NAME`, lists among
/// its own files); they come last, so a rule of theirs replaces a bundled
/// or local rule of the same id.
pub fn load_with(dirs: &[PathBuf], missing_ok: bool, fleet: &[(String, String)]) -> Loaded {
    let mut errors = Vec::new();
    let mut sources = Vec::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut rules: Vec<Rule> = Vec::new();
    let mut yara = Vec::new();
    for (name, text) in bundled().iter().filter(|(n, _)| crate::yara::is_yara(Path::new(n))) {
        yara.push(crate::yara::YaraFile {
            shown: format!("bundled:{name}"),
            text: text.clone(),
        });
    }
    let mut add = |file: String, parsed: Result<crate::rules::RuleFile, Vec<RuleError>>, errors: &mut Vec<RuleError>| match parsed {
        Ok(f) => {
            sources.push(SourceInfo {
                file,
                meta: f.meta,
                rules: f.rules.len(),
            });
            for r in f.rules {
                match by_id.get(&r.id) {
                    Some(&i) => rules[i] = r,
                    None => {
                        by_id.insert(r.id.clone(), rules.len());
                        rules.push(r);
                    }
                }
            }
        }
        Err(e) => errors.extend(e),
    };
    for (name, text) in bundled().iter().filter(|(n, _)| n.ends_with(".toml")) {
        add(format!("bundled:{name}"), parse_bundled(name, text), &mut errors);
    }
    for dir in dirs {
        match rule_files(dir) {
            Ok(files) => {
                let lists = std::cell::RefCell::new(std::collections::HashSet::new());
                for f in files {
                    add(f.display().to_string(), parse_path_noting(&f, &lists), &mut errors);
                }
                errors.extend(stray_files(dir, &lists.borrow()));
                for f in yara_files(dir).unwrap_or_default() {
                    match read_yara(&f) {
                        Ok(y) => yara.push(y),
                        Err(e) => errors.push(e),
                    }
                }
            }
            Err(e) if missing_ok && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(RuleError {
                path: dir.display().to_string(),
                line: 0,
                message: format!("cannot read directory: {e}"),
            }),
        }
    }
    for (name, text) in fleet.iter().filter(|(n, _)| n.ends_with(".toml")) {
        let parsed = parse_among(&format!("fleet:{name}"), name, text, fleet, "fleet set");
        add(format!("fleet:{name}"), parsed, &mut errors);
    }
    for (name, text) in fleet.iter().filter(|(n, _)| crate::yara::is_yara(Path::new(n))) {
        yara.push(crate::yara::YaraFile {
            shown: format!("fleet:{name}"),
            text: text.clone(),
        });
    }
    let (yara, yara_errors) = crate::yara::compile(yara);
    errors.extend(yara_errors);
    if let Some(y) = &yara {
        for r in y.rules() {
            match sources.iter_mut().find(|s| s.file == r.file) {
                Some(s) => s.rules += 1,
                None => sources.push(SourceInfo {
                    file: r.file.clone(),
                    meta: Meta {
                        source: "YARA".into(),
                        description: String::new(),
                    },
                    rules: 1,
                }),
            }
        }
    }
    let signatures = match Signatures::compile(rules) {
        Ok(s) => s,
        Err(e) => {
            errors.push(e);
            Signatures::compile(Vec::new()).expect("the empty set compiles")
        }
    };
    Loaded {
        signatures: signatures.with_yara(yara),
        sources,
        errors,
    }
}

/// Checks rule files (parse, validate, compile, examples) without loading
/// them into anything: the errors of `rigwatch signatures check`.
pub fn check_files(paths: &[PathBuf]) -> (usize, Vec<RuleError>) {
    let mut errors = Vec::new();
    let mut count = 0;
    let mut yara = Vec::new();
    for p in paths {
        if crate::yara::is_yara(p) {
            match read_yara(p) {
                Ok(y) => yara.push(y),
                Err(e) => errors.push(e),
            }
            continue;
        }
        match parse_path(p) {
            Ok(f) => {
                count += f.rules.len();
                match Signatures::compile(f.rules) {
                    Ok(s) => errors.extend(s.check_examples()),
                    Err(e) => errors.push(e),
                }
            }
            Err(e) => errors.extend(e),
        }
    }
    if !yara.is_empty() {
        let (n, e) = crate::yara::check(yara);
        count += n;
        errors.extend(e);
    }
    (count, errors)
}
