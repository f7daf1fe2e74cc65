//! Compiles the eBPF programs in `bpf/` with clang (`-target bpf`, CO-RE:
//! field offsets are relocated against the running kernel's BTF when the
//! agent loads them, so no kernel headers are needed here or on the host).
//! Without clang, or for a target other than x86_64, an empty object is
//! written and the eBPF sensor reports itself unavailable at run time; the
//! rest of the agent builds and works the same.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=RIGWATCH_CLANG");
    for name in ["rounding", "exec", "connect", "kill"] {
        build(name);
    }
}

fn build(name: &str) {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join(format!("{name}.bpf.o"));
    let src = format!("bpf/{name}.bpf.c");
    println!("cargo:rerun-if-changed={src}");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let clang = std::env::var("RIGWATCH_CLANG").unwrap_or_else(|_| "clang".into());
    let built = arch == "x86_64"
        && Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall", "-Werror"])
            .args(["-I/usr/include/x86_64-linux-gnu", "-c", &src, "-o"])
            .arg(&out)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    if !built {
        if arch == "x86_64" {
            println!("cargo:warning=clang (with libbpf-dev) not found or failed on {src}: its eBPF sensor is built without its program and will report itself unavailable");
        }
        std::fs::write(&out, b"").unwrap();
    }
}
