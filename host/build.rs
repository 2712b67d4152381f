//! Builds the default room (`guest/`) for `wasm32-wasip2` and puts the
//! component in `OUT_DIR` for `include_bytes!`. It builds the rooms of the
//! tests (`tests/fixture-room/`, misbehaving; `tests/probe-room/`, showing
//! what a room sees and reaches; `tests/compat-room/`, built against an
//! earlier contract) and the SDK's example chat room
//! (`sdk/examples/chat-room/`) alongside, in the same cargo run.
//!
//! The guest gets its own target directory (a nested cargo must not wait on
//! the outer build's lock) and none of the outer build's flags. If the
//! `wasm32-wasip2` target is missing, it is added with rustup; if that is not
//! possible the build stops with the exact command to run.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("host/ sits in the workspace root")
        .to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));

    for path in [
        "guest/src",
        "guest/Cargo.toml",
        "tests/fixture-room/src",
        "tests/fixture-room/Cargo.toml",
        "tests/probe-room/src",
        "tests/probe-room/Cargo.toml",
        "tests/compat-room/src",
        "tests/compat-room/Cargo.toml",
        "sdk/src",
        "sdk/Cargo.toml",
        "sdk/examples/chat-room/src",
        "sdk/examples/chat-room/Cargo.toml",
        "wit",
        "Cargo.lock",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }

    ensure_target();

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = out_dir.join("guest-target");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--release"])
        .args(["--package", "wsroom-default-room"])
        .args(["--package", "wsroom-fixture-room"])
        .args(["--package", "wsroom-probe-room"])
        .args(["--package", "wsroom-compat-room"])
        .args(["--package", "wsroom-chat-room"])
        .args(["--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir);
    // The workspace's release profile links the host with LTO; the rooms
    // are built as before: LTO made the default room's pass over a message
    // no faster under Cranelift (fat LTO with one codegen unit, slower).
    cmd.env("CARGO_PROFILE_RELEASE_LTO", "false");
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_PROFILE_RELEASE_DEBUG",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_LLVM_COV",
        "LLVM_PROFILE_FILE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the default room: {e}"));
    assert!(
        status.success(),
        "building the default room (guest/) for {TARGET} failed; see the output above"
    );
    for (built, dest) in [
        ("wsroom_default_room.wasm", "default-room.wasm"),
        ("wsroom_fixture_room.wasm", "fixture-room.wasm"),
        ("wsroom_probe_room.wasm", "probe-room.wasm"),
        ("wsroom_compat_room.wasm", "compat-room.wasm"),
        ("wsroom_chat_room.wasm", "chat-room.wasm"),
    ] {
        let built = target_dir.join(TARGET).join("release").join(built);
        let dest = out_dir.join(dest);
        std::fs::copy(&built, &dest).unwrap_or_else(|e| {
            panic!("cannot copy {} to {}: {e}", built.display(), dest.display())
        });
    }
}

/// Makes sure the standard library for `wasm32-wasip2` is installed.
fn ensure_target() {
    if target_installed() {
        return;
    }
    println!("cargo:warning=the {TARGET} target is missing; running `rustup target add {TARGET}`");
    let added = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !added || !target_installed() {
        panic!(
            "\n\nthe Rust target {TARGET} is needed to build the default room and could not be \
             installed automatically.\nrun:\n\n    rustup target add {TARGET}\n\nthen build again.\n"
        );
    }
}

fn target_installed() -> bool {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Path::new(&sysroot)
        .join("lib/rustlib")
        .join(TARGET)
        .join("lib")
        .is_dir()
}
