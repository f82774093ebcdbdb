//! Builds the XDP crate (`xdp/`) for the BPF target with the nightly toolchain and bpf-linker, and
//! hands its objects (the datapath, and the benchmark's generator and sink) to this crate through
//! OUT_DIR. The XDP crate is a workspace of its own so that stable cargo never tries to compile
//! it for the host.
use std::{env, fs, path::PathBuf, process::Command};

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let xdp_dir = manifest_dir.join("xdp");
    let common_dir = manifest_dir.join("common");
    for p in [
        xdp_dir.join("src"),
        xdp_dir.join("Cargo.toml"),
        xdp_dir.join("Cargo.lock"),
        common_dir.join("src"),
    ] {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // A stable target dir beside the workspace's, so rebuilds are incremental across profiles.
    let target_dir = manifest_dir.join("..").join("target").join("bpf");

    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--release",
        "--target-dir",
    ])
    .arg(&target_dir)
    .current_dir(&xdp_dir);
    // The outer (stable) cargo's settings must not leak into the nightly BPF build.
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_") && key != "CARGO_HOME"
            || key.starts_with("RUSTC")
            || key == "RUSTUP_TOOLCHAIN"
            || key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS"
        {
            cmd.env_remove(key);
        }
    }
    // bpf-linker lives in ~/.cargo/bin, which a non-login shell may not have on PATH.
    if let Some(home) = env::var_os("CARGO_HOME")
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo").into_os_string()))
    {
        let bin = PathBuf::from(home).join("bin");
        let path = env::var_os("PATH").unwrap_or_default();
        let mut paths: Vec<PathBuf> = env::split_paths(&path).collect();
        paths.insert(0, bin);
        if let Ok(joined) = env::join_paths(paths) {
            cmd.env("PATH", joined);
        }
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run `rustup run nightly cargo` to build the XDP programs ({e}); run `make deps` first")
    });
    assert!(
        status.success(),
        "building the XDP programs failed (see above); `make deps` installs nightly, rust-src and bpf-linker"
    );
    // The datapath, and the packets-per-second benchmark's generator and sink.
    for bin in ["meshgw-xdp", "meshgw-bench"] {
        let object = target_dir
            .join("bpfel-unknown-none")
            .join("release")
            .join(bin);
        fs::copy(&object, out_dir.join(format!("{bin}.o")))
            .unwrap_or_else(|e| panic!("cannot copy {}: {e}", object.display()));
    }
}
