//! Finds the system DPDK with pkg-config and compiles the C shim (only with feature `link`).
//!
//! DPDK is never vendored or downloaded: install it (`apt-get install libdpdk-dev` on Debian and
//! Ubuntu) or point `PKG_CONFIG_PATH` at a DPDK build's `lib/pkgconfig`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "link")]
    link::build();
}

#[cfg(feature = "link")]
mod link {
    use std::process::Command;

    const PACKAGE: &str = "libdpdk";
    const MIN_VERSION: &str = "21.11";

    fn not_found(e: &dyn std::fmt::Display) -> ! {
        eprintln!(
            "dpdk-sys: the system DPDK (pkg-config package `{PACKAGE}` >= {MIN_VERSION}) was not found.\n\
             Install it (Debian/Ubuntu: `apt-get install libdpdk-dev pkg-config`) or set PKG_CONFIG_PATH \
             to a DPDK build's lib/pkgconfig. Only the `dmadev` feature of copy-engine-dmadev needs it.\n\
             pkg-config said: {e}"
        );
        std::process::exit(1);
    }

    pub fn build() {
        println!("cargo:rerun-if-changed=shim/ce_shim.c");
        let mut probe = pkg_config::Config::new();
        probe.atleast_version(MIN_VERSION);
        // First pass: compile flags only. The shim archive must be named to the linker before the
        // DPDK libraries (they are linked `--as-needed`), so link flags are emitted afterwards.
        let lib = probe.cargo_metadata(false).probe(PACKAGE).unwrap_or_else(|e| not_found(&e));
        let mut cc = cc::Build::new();
        cc.file("shim/ce_shim.c").define("ALLOW_EXPERIMENTAL_API", None).opt_level(3).warnings(true);
        for path in &lib.include_paths {
            cc.include(path);
        }
        for (k, v) in &lib.defines {
            cc.define(k, v.as_deref());
        }
        // The other cflags (`-include rte_config.h`, `-march=...`) in order: `-include` takes the
        // next argument.
        let pkg_config = std::env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".into());
        let other =
            Command::new(pkg_config).args(["--cflags-only-other", PACKAGE]).output().unwrap_or_else(|e| not_found(&e));
        for flag in String::from_utf8_lossy(&other.stdout).split_whitespace() {
            cc.flag(flag);
        }
        cc.compile("ce_dpdk_shim");
        // Second pass: the link flags (`-L`, `-lrte_*`).
        probe.cargo_metadata(true).probe(PACKAGE).unwrap_or_else(|e| not_found(&e));
        println!("cargo:version={}", lib.version);
    }
}
