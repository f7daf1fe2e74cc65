//! Embeds every file under rules/ (rule files and list files) into the crate.
use std::{env, fs, path::Path};

const MASK: u8 = 0xA5;

fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap().flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, base, out);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("toml" | "txt" | "yar" | "yara")) {
            out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
        }
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    if root.is_dir() {
        walk(&root, &root, &mut files);
    }
    // The files are stored XOR-masked so that the strings the content rules
    // look for never appear literally in rigwatch's own binaries (else the
    // agent would match its own executable).
    let out = Path::new(&env::var("OUT_DIR").unwrap()).join("bundled");
    fs::create_dir_all(&out).unwrap();
    let mut src = String::from(
        "/// Every bundled rule and list file: (path under rules/, XOR-masked contents).\nstatic BUNDLED_MASKED: &[(&str, &[u8])] = &[\n",
    );
    for (i, f) in files.iter().enumerate() {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
        let masked: Vec<u8> = fs::read(root.join(f)).unwrap().iter().map(|b| b ^ MASK).collect();
        let dst = out.join(format!("{i}.bin"));
        fs::write(&dst, masked).unwrap();
        src.push_str(&format!("    ({f:?}, include_bytes!({:?})),\n", dst.display().to_string()));
    }
    src.push_str("];\n");
    fs::write(Path::new(&env::var("OUT_DIR").unwrap()).join("bundled.rs"), src).unwrap();
}
