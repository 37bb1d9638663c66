//! Links libopus: the system library when pkg-config finds one (libopus-dev on Debian; the same
//! 1.3.1 release on Debian 12), otherwise the vendored reference source in `libopus/`, compiled
//! with the C compiler alone so that a machine with only Rust and gcc builds sluice.
//!
//! `SLUICE_OPUS=system` requires the system library, `SLUICE_OPUS=vendored` skips the probe.
//! The vendored build reads its file lists from libopus' own `*_sources.mk`, builds the
//! floating-point codec (what the distributions ship) and, on x86-64, the SSE4.1 kernels behind
//! libopus' run-time CPU detection, as `./configure` does by default.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=SLUICE_OPUS");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-check-cfg=cfg(sluice_opus_system)");
    let choice = env::var("SLUICE_OPUS").unwrap_or_default();
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let src = root.join("libopus");
    match choice.as_str() {
        "" | "auto" => {
            if !system() {
                vendored(&src);
            }
        }
        "system" => {
            if !system() {
                panic!(
                    "SLUICE_OPUS=system but pkg-config does not find libopus \
                     (apt-get install libopus-dev pkg-config)"
                );
            }
        }
        "vendored" => vendored(&src),
        other => panic!("SLUICE_OPUS={other}: expected auto, system or vendored"),
    }
}

/// The system libopus, linked dynamically as the distribution intends.
fn system() -> bool {
    match pkg_config::Config::new()
        .atleast_version("1.1")
        .probe("opus")
    {
        Ok(lib) => {
            println!("cargo:rustc-cfg=sluice_opus_system");
            println!("cargo:version={}", lib.version);
            true
        }
        Err(_) => false,
    }
}

fn vendored(src: &Path) {
    println!("cargo:rerun-if-changed={}", src.display());
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let x86_64 = arch == "x86_64";

    let mut files = Vec::new();
    for (mk, vars) in [
        ("celt_sources.mk", &["CELT_SOURCES"][..]),
        (
            "silk_sources.mk",
            &["SILK_SOURCES", "SILK_SOURCES_FLOAT"][..],
        ),
        (
            "opus_sources.mk",
            &["OPUS_SOURCES", "OPUS_SOURCES_FLOAT"][..],
        ),
    ] {
        for var in vars {
            files.extend(mk_list(&src.join(mk), var));
        }
    }
    let mut sse41 = Vec::new();
    if x86_64 {
        // SSE and SSE2 are part of x86-64: presumed, as configure does for this target.
        files.extend(mk_list(&src.join("celt_sources.mk"), "CELT_SOURCES_SSE"));
        files.extend(mk_list(&src.join("celt_sources.mk"), "CELT_SOURCES_SSE2"));
        sse41.extend(mk_list(&src.join("celt_sources.mk"), "CELT_SOURCES_SSE4_1"));
        sse41.extend(mk_list(&src.join("silk_sources.mk"), "SILK_SOURCES_SSE4_1"));
    }

    let version = package_version(src);
    let mut base = cc::Build::new();
    base.include(src)
        .include(src.join("include"))
        .include(src.join("celt"))
        .include(src.join("silk"))
        .include(src.join("silk").join("float"))
        .include(src.join("src"))
        .define("OPUS_BUILD", None)
        // What opus_get_version_string() reports ("libopus 1.3.1").
        .define("PACKAGE_VERSION", format!("\"{version}\"").as_str())
        .define("USE_ALLOCA", None)
        .define("HAVE_LRINT", None)
        .define("HAVE_LRINTF", None)
        // The codec's speed matters even in debug builds of sluice (the transcoding tests).
        .opt_level(2)
        .warnings(false);
    if x86_64 {
        for d in [
            "OPUS_X86_MAY_HAVE_SSE",
            "OPUS_X86_PRESUME_SSE",
            "OPUS_X86_MAY_HAVE_SSE2",
            "OPUS_X86_PRESUME_SSE2",
            "OPUS_X86_MAY_HAVE_SSE4_1",
            "OPUS_HAVE_RTCD",
            "CPU_INFO_BY_C",
        ] {
            base.define(d, None);
        }
    }

    // SSE4.1 kernels are compiled with -msse4.1 but only called after cpuid says so.
    let sse41_objects = if sse41.is_empty() {
        Vec::new()
    } else {
        let mut b = base.clone();
        b.flag("-msse4.1");
        for f in &sse41 {
            b.file(src.join(f));
        }
        b.compile_intermediates()
    };
    for f in &files {
        base.file(src.join(f));
    }
    base.objects(sse41_objects);
    base.compile("opus");
    println!("cargo:include={}", src.join("include").display());
    println!("cargo:version={version}");
}

/// The release in `package_version` (`PACKAGE_VERSION="1.3.1"`).
fn package_version(src: &Path) -> String {
    let f = src.join("package_version");
    let text = fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    text.trim()
        .strip_prefix("PACKAGE_VERSION=")
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("{}: no PACKAGE_VERSION", f.display()))
}

/// The files of `var` in an automake fragment (`VAR = \` then one path per line).
fn mk_list(mk: &Path, var: &str) -> Vec<String> {
    let text = fs::read_to_string(mk).unwrap_or_else(|e| panic!("{}: {e}", mk.display()));
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if !inside {
            if let Some((name, rest)) = line.split_once('=')
                && name.trim() == var
            {
                inside = true;
                out.extend(paths_of(rest));
                if !rest.trim_end().ends_with('\\') {
                    break;
                }
            }
            continue;
        }
        out.extend(paths_of(line));
        if !line.ends_with('\\') {
            break;
        }
    }
    assert!(!out.is_empty(), "{}: no {var}", mk.display());
    out
}

fn paths_of(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split_whitespace()
        .filter(|w| *w != "\\")
        .map(str::to_string)
}
