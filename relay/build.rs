//! Compiles the XDP program (ebpf/sluice_xdp.c) with clang into OUT_DIR/sluice_xdp.o, and again
//! without its route cache map (-DSLUICE_NO_ROUTE_CACHE, for kernels that cannot create
//! mmapable arrays) into OUT_DIR/sluice_xdp_nocache.o; relay/src/xdp embeds both with
//! `aya::include_bytes_aligned!`.
//!
//! When clang or the libbpf headers are missing, the build still succeeds: it prints a
//! `cargo:warning` saying what to install and sets `--cfg sluice_no_xdp`, and the loader then
//! returns `XdpError::NotBuilt` at run time. Set `SLUICE_REQUIRE_XDP=1` (CI) to turn that into a
//! build failure. `SLUICE_CLANG` overrides the compiler (default: clang-19, then clang).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCES: &[&str] = &["sluice_xdp.c", "sluice_maps.h"];
const INSTALL_HINT: &str = "apt-get install clang-19 libbpf-dev";

fn main() {
    println!("cargo:rustc-check-cfg=cfg(sluice_no_xdp)");
    println!("cargo:rerun-if-env-changed=SLUICE_CLANG");
    println!("cargo:rerun-if-env-changed=SLUICE_REQUIRE_XDP");

    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let ebpf = manifest.join("..").join("ebpf");
    for src in SOURCES {
        println!("cargo:rerun-if-changed={}", ebpf.join(src).display());
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let built = build(&ebpf, &out_dir.join("sluice_xdp.o"), &[]).and_then(|()| {
        build(
            &ebpf,
            &out_dir.join("sluice_xdp_nocache.o"),
            &["-DSLUICE_NO_ROUTE_CACHE"],
        )
    });
    if let Err(why) = built {
        if env::var_os("SLUICE_REQUIRE_XDP").is_some_and(|v| v != "0") {
            panic!("{why}; {INSTALL_HINT} (SLUICE_REQUIRE_XDP is set)");
        }
        println!(
            "cargo:warning=sluice is built WITHOUT the XDP fast path: {why}. \
             To enable it: {INSTALL_HINT}, then rebuild."
        );
        println!("cargo:rustc-cfg=sluice_no_xdp");
    }
}

/// Ok when the object was written. Err(reason) when the toolchain is absent (the build goes on
/// without XDP). A compile error in the C source itself is a bug and panics.
fn build(ebpf: &Path, out: &Path, defines: &[&str]) -> Result<(), String> {
    let clang = find_clang().ok_or_else(|| "clang-19 (or clang) not found".to_string())?;
    let mut includes = vec![PathBuf::from("/usr/include")];
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = match arch.as_str() {
        "x86_64" => Some("x86_64-linux-gnu"),
        "aarch64" => Some("aarch64-linux-gnu"),
        "riscv64" => Some("riscv64-linux-gnu"),
        "powerpc64" => Some("powerpc64le-linux-gnu"),
        "s390x" => Some("s390x-linux-gnu"),
        _ => None,
    };
    if let Some(m) = multiarch {
        includes.push(Path::new("/usr/include").join(m));
    }
    if !includes
        .iter()
        .any(|d| d.join("bpf").join("bpf_helpers.h").exists())
    {
        return Err("libbpf headers (bpf/bpf_helpers.h) not found".into());
    }
    if !includes
        .iter()
        .any(|d| d.join("asm").join("types.h").exists())
    {
        return Err("kernel headers (asm/types.h, linux-libc-dev) not found".into());
    }

    let mut cmd = Command::new(&clang);
    cmd.args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"]);
    for dir in &includes {
        cmd.arg("-I").arg(dir);
    }
    cmd.arg("-I").arg(ebpf);
    cmd.args(defines);
    cmd.arg("-c")
        .arg(ebpf.join("sluice_xdp.c"))
        .arg("-o")
        .arg(out);
    let result = cmd
        .output()
        .map_err(|e| format!("running {clang} failed: {e}"))?;
    if !result.status.success() {
        panic!(
            "{clang} failed to compile ebpf/sluice_xdp.c:\n{}",
            String::from_utf8_lossy(&result.stderr)
        );
    }
    Ok(())
}

fn find_clang() -> Option<String> {
    let candidates: Vec<String> = match env::var("SLUICE_CLANG") {
        Ok(c) if !c.is_empty() => vec![c],
        _ => vec!["clang-19".into(), "clang".into()],
    };
    candidates.into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}
