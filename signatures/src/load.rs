//! Loading rule sets: the embedded bundled set, then extra directories whose
//! rules add to or override it (same id replaces). A broken file is reported
//! with file and line and skipped; the rest stays in force.

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

/// Parses one bundled file by name (lists resolved inside the bundle).
fn parse_bundled(name: &str, text: &str) -> Result<crate::rules::RuleFile, Vec<RuleError>> {
    let dir = Path::new(name).parent().unwrap_or(Path::new("")).to_path_buf();
    let read = move |l: &str| -> Result<String, String> {
        let want = dir.join(l);
        bundled()
            .iter()
            .find(|(n, _)| Path::new(n) == want)
            .map(|(_, t)| t.clone())
            .ok_or_else(|| "not in the bundled set".to_string())
    };
    parse_file(&format!("bundled:{name}"), text, &read)
}

/// Parses one rule file on disk (lists relative to it).
pub fn parse_path(path: &Path) -> Result<crate::rules::RuleFile, Vec<RuleError>> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![RuleError {
            path: shown.clone(),
            line: 0,
            message: format!("cannot read: {e}"),
        }]
    })?;
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let read = move |l: &str| std::fs::read_to_string(dir.join(l)).map_err(|e| e.to_string());
    parse_file(&shown, &text, &read)
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

/// Loads the bundled set plus `dirs` (a missing directory is an error only
/// when `missing_ok` is false). Files with errors are skipped and reported.
pub fn load(dirs: &[PathBuf], missing_ok: bool) -> Loaded {
    let mut errors = Vec::new();
    let mut sources = Vec::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut rules: Vec<Rule> = Vec::new();
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
                for f in files {
                    add(f.display().to_string(), parse_path(&f), &mut errors);
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
    let signatures = match Signatures::compile(rules) {
        Ok(s) => s,
        Err(e) => {
            errors.push(e);
            Signatures::compile(Vec::new()).expect("the empty set compiles")
        }
    };
    Loaded {
        signatures,
        sources,
        errors,
    }
}

/// Checks rule files (parse, validate, compile, examples) without loading
/// them into anything: the errors of `rigwatch signatures check`.
pub fn check_files(paths: &[PathBuf]) -> (usize, Vec<RuleError>) {
    let mut errors = Vec::new();
    let mut count = 0;
    for p in paths {
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
    (count, errors)
}
