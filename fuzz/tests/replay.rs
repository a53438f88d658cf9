//! Replays every file of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` through the
//! target's function, and the hand-written seeds too: what the fuzzer kept (and any crash it found,
//! once fixed) stays checked by a plain `cargo test --manifest-path fuzz/Cargo.toml`.
//!
//! The targets run one at a time (a lock): `vhost_user` counts the process's open file
//! descriptors to catch leaks, which other tests reading files at the same time would disturb.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(d) => d.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn replay(target: &str) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let run = vswitch_fuzz::TARGETS.iter().find(|(n, _)| *n == target).expect("a target").1;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
    for sub in ["corpus", "regressions"] {
        for p in files(&root.join(sub).join(target)) {
            inputs.push((p.display().to_string(), std::fs::read(&p).expect("read an input")));
        }
    }
    let seeds = vswitch_fuzz::seeds::all().into_iter().find(|(n, _)| *n == target).expect("seeds").1;
    inputs.extend(seeds.into_iter().map(|(n, b)| (format!("seed {n}"), b)));
    for (name, bytes) in &inputs {
        if let Err(e) = std::panic::catch_unwind(|| run(bytes)) {
            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
            panic!("{target}: input {name} fails: {}", msg.unwrap_or_default());
        }
    }
    eprintln!("{target}: {} inputs replayed", inputs.len());
}

#[test]
fn split_ring_corpus_and_regressions_hold() {
    replay("split_ring");
}

#[test]
fn packed_ring_corpus_and_regressions_hold() {
    replay("packed_ring");
}

#[test]
fn net_header_corpus_and_regressions_hold() {
    replay("net_header");
}

#[test]
fn guest_memory_corpus_and_regressions_hold() {
    replay("guest_memory");
}

#[test]
fn vhost_user_corpus_and_regressions_hold() {
    replay("vhost_user");
}
