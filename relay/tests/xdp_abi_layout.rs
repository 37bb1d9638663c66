//! The Rust mirrors in relay/src/xdp/abi.rs have exactly the layout of ebpf/sluice_maps.h:
//! a C program generated from the Rust field list is compiled against the header with the host
//! C compiler and prints every struct size, field offset, field size and constant; the test
//! compares them with `size_of`/`offset_of!`. Moving, resizing, adding or removing a field on
//! either side fails here (a field missing in C does not compile; one missing in Rust changes
//! the struct size, since the structs have no trailing padding).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

fn header_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ebpf")
}

fn host_cc() -> Option<String> {
    let candidates = ["cc", "gcc", "clang", "clang-19"];
    candidates
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(str::to_string)
}

fn c_expr(name: &str) -> String {
    if let Some(field) = name.strip_suffix(".size") {
        let (s, f) = field.split_once('.').unwrap();
        format!("sizeof(((struct {s} *)0)->{f})")
    } else if let Some((s, f)) = name.split_once('.') {
        format!("offsetof(struct {s}, {f})")
    } else if name.starts_with("SLUICE_") {
        name.to_string()
    } else {
        format!("sizeof(struct {name})")
    }
}

#[test]
fn rust_mirrors_match_the_c_header() {
    let Some(cc) = host_cc() else {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"skipped rust_mirrors_match_the_c_header: no host C compiler (apt-get install gcc)\n",
        );
        return;
    };
    let rust: BTreeMap<String, u64> = sluice_relay::xdp::abi_layout().into_iter().collect();
    assert!(rust.len() > 40, "layout list looks truncated: {rust:?}");

    let mut src = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include \"sluice_maps.h\"\nint main(void) {\n",
    );
    for name in rust.keys() {
        src.push_str(&format!(
            "  printf(\"%s %llu\\n\", \"{name}\", (unsigned long long)({}));\n",
            c_expr(name)
        ));
    }
    src.push_str("  return 0;\n}\n");

    let dir = std::env::temp_dir().join(format!("sluice-abi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c_file = dir.join("layout.c");
    let exe = dir.join("layout");
    std::fs::write(&c_file, &src).unwrap();
    let out = Command::new(&cc)
        .arg("-I")
        .arg(header_dir())
        .arg(&c_file)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cc} failed on the generated layout program (a field named in Rust is missing in C?):\n{}\n{src}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(run.status.success());
    let c: BTreeMap<String, u64> = String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect();

    let mismatches: Vec<String> = rust
        .iter()
        .filter(|(k, v)| c.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: rust {v}, C {:?}", c.get(k)))
        .collect();
    assert!(
        mismatches.is_empty(),
        "ebpf/sluice_maps.h and relay/src/xdp/abi.rs disagree:\n{}",
        mismatches.join("\n")
    );
}
