//! Test support: boots real Linux guests under QEMU (TCG, no KVM needed) whose virtio-net
//! devices reach the `vswitch` binary over vhost-user, and reads what they report.
//!
//! The guests run a tiny initramfs built at test time by `scripts/qemu/build-initramfs.sh`
//! (busybox-static, the installed kernel package's virtio-net modules, the `vsq` ethtool helper
//! and `scripts/qemu/guest-init` as `/init`). The init script takes its role and test steps from
//! the kernel command line (`vs.*=`) and prints `VSTEST <kind> key=value ...` lines on the serial
//! console, which is QEMU's standard output here; [`Guest`] parses them into [`Record`]s.
//!
//! Like `testpmd.rs` (whose `Process`, `Switch`, `Scratch` and lock this reuses), it owns what it
//! starts: each QEMU sits behind a [`Process`] guard (SIGTERM, then SIGKILL, and reaped on drop),
//! every wait is bounded, and a failing check panics with every guest's console tail and the
//! switch's log ([`Bed::fail`]).

#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use crate::testpmd::{tail, HarnessError, Process, Scratch, Switch, SwitchKind};

/// The guests' memory (MiB), shared with the switch through a memfd.
pub const GUEST_MEM_MB: u32 = 256;
/// How long a guest may take from QEMU's start to its first `VSTEST boot` line (TCG boots the
/// PVH vmlinux in about 2.5 s on an idle 2-core machine, the bzImage in about 5 s).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// What the guests boot, found or built once per test process.
#[derive(Clone, Debug)]
pub struct Assets {
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// The kernel image: the installed kernel package's, as an uncompressed ELF booted through
    /// PVH when the build script could extract one, else `/boot/vmlinuz-<version>`.
    pub kernel: PathBuf,
    /// The initramfs built by `scripts/qemu/build-initramfs.sh`.
    pub initrd: PathBuf,
    /// What the build script printed on stderr (modules chosen, built in or not).
    pub build_log: String,
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// `$QEMU`, or `qemu-system-x86_64` on `$PATH`.
pub fn qemu_binary() -> Result<PathBuf, HarnessError> {
    if let Some(p) = std::env::var_os("QEMU") {
        return Ok(PathBuf::from(p));
    }
    find_on_path("qemu-system-x86_64")
        .ok_or_else(|| HarnessError::Missing("qemu-system-x86_64 (apt-get install qemu-system-x86)".into()))
}

/// What is missing to boot the test guests, if anything: QEMU, an installed kernel package,
/// busybox, cpio, a C compiler (for the `vsq` helper).
pub fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    match qemu_binary() {
        Ok(q) => {
            let ok = Command::new(&q).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
            if !ok.is_ok_and(|s| s.success()) {
                missing.push(format!("{} does not run", q.display()));
            }
        }
        Err(e) => missing.push(e.to_string()),
    }
    let kernel = std::fs::read_dir("/boot")
        .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-")))
        .unwrap_or(false);
    if !kernel {
        missing.push("a kernel in /boot/vmlinuz-* (apt-get install linux-image-amd64)".into());
    }
    if ["/bin/busybox", "/usr/bin/busybox"].iter().all(|p| !Path::new(p).is_file()) {
        missing.push("busybox (apt-get install busybox-static)".into());
    }
    for (tool, pkg) in [("cpio", "cpio"), ("cc", "gcc")] {
        if find_on_path(tool).is_none() {
            missing.push(format!("{tool} (apt-get install {pkg})"));
        }
    }
    missing
}

/// Whether the QEMU tests can run. When they cannot, a test may skip (this says why), except in
/// CI (`$CI` set): scripts/test.sh installs what they need, so a missing piece there panics
/// rather than letting the test pass without testing anything.
pub fn have_qemu() -> bool {
    let missing = missing_prerequisites();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the QEMU tests cannot run: missing {missing:?} (scripts/test.sh installs qemu-system-x86, \
         linux-image-amd64, busybox-static, cpio)"
    );
    eprintln!("QEMU tests: missing {missing:?}: skipping");
    false
}

/// Builds the initramfs (once per process) and finds the kernel and QEMU; panics on failure
/// (the prerequisites are there when this is called: see [`have_qemu`]).
pub fn assets() -> &'static Assets {
    static ASSETS: OnceLock<Result<Assets, String>> = OnceLock::new();
    let r = ASSETS.get_or_init(|| {
        let qemu = qemu_binary().map_err(|e| e.to_string())?;
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        // The same name for every run of this tree: the script replaces it atomically, with the
        // same content (and keeps the extracted vmlinux beside it for the next run).
        let initrd = dir.join("qemu-initramfs.cpio");
        let script = repo_root().join("scripts/qemu/build-initramfs.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(&initrd)
            .output()
            .map_err(|e| format!("{}: {e}", script.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err(format!("{} failed ({}):\n{stdout}{stderr}", script.display(), out.status));
        }
        let kernel = stdout
            .lines()
            .find_map(|l| l.strip_prefix("VS_KERNEL="))
            .map(PathBuf::from)
            .ok_or_else(|| format!("no VS_KERNEL= line from {}:\n{stdout}{stderr}", script.display()))?;
        eprintln!("QEMU guests: {} + {}\n{stderr}", kernel.display(), initrd.display());
        Ok(Assets { qemu, kernel, initrd, build_log: stderr })
    });
    match r {
        Ok(a) => a,
        Err(e) => panic!("cannot prepare the QEMU guests: {e}"),
    }
}

/// One `VSTEST` line of a guest's console.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The word after `VSTEST` (`boot`, `ping`, `bulk-tx`, `done`, `fail`, ...).
    pub kind: String,
    /// Its `key=value` words.
    pub fields: BTreeMap<String, String>,
    /// The whole line (without `VSTEST `).
    pub line: String,
    /// Byte offset in the console just past this line.
    pub end: usize,
}

impl Record {
    /// A field, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// A numeric field (a trailing `%` is ignored).
    pub fn num(&self, key: &str) -> Option<f64> {
        self.get(key)?.trim_end_matches('%').parse().ok()
    }

    /// An integer field.
    pub fn int(&self, key: &str) -> Option<u64> {
        self.get(key)?.trim_end_matches('%').parse().ok()
    }
}

/// Every complete `VSTEST` line of `text` from byte `from` on. A kernel message printed in the
/// middle of a line can only break that line, which then fails to match what a check expects.
pub fn parse_records(text: &str, from: usize) -> Vec<Record> {
    let mut out = Vec::new();
    let mut pos = from.min(text.len());
    while !text.is_char_boundary(pos) {
        pos += 1;
    }
    while let Some(nl) = text[pos..].find('\n') {
        let line = text[pos..pos + nl].trim_end_matches('\r');
        let end = pos + nl + 1;
        if let Some(i) = line.find("VSTEST ") {
            let body = line[i + "VSTEST ".len()..].trim();
            let mut words = body.split_whitespace();
            let kind = words.next().unwrap_or("").to_owned();
            let fields = words.filter_map(|w| w.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
            out.push(Record { kind, fields, line: body.to_owned(), end });
        }
        pos = end;
    }
    out
}

/// A guest's role (`vs.role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Serves the bulk ports (5001 receive + checksum, 5002 discard, 5003 send) and stays up.
    Server,
    /// Runs its steps against the server.
    Client,
}

/// What a guest does once its steps ran (`vs.end`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// `poweroff -f`: QEMU exits.
    Poweroff,
    /// `reboot -f`: QEMU resets the machine (QEMU runs without `-no-reboot` then) and the guest
    /// boots again with the same command line, so it runs the same steps again.
    Reboot,
    /// Stays up.
    Stay,
}

/// How to start one guest.
#[derive(Clone, Debug)]
pub struct GuestConfig {
    /// A name for messages.
    pub name: String,
    /// The switch's vhost-user socket it connects to.
    pub socket: PathBuf,
    /// eth0's MAC address.
    pub mac: String,
    /// Its address (/24) and the peer's.
    pub ip: String,
    /// The peer's address.
    pub peer: String,
    /// A second address of its own (`vs.alias`), for a second flow.
    pub alias: Option<String>,
    /// eth0's MTU in the guest (`ip link set eth0 mtu`).
    pub mtu: u32,
    /// The device's `host_mtu` (VIRTIO_NET_F_MTU).
    pub host_mtu: Option<u32>,
    /// The device's `mrg_rxbuf`; `None` keeps QEMU's default (on).
    pub mrg_rxbuf: Option<bool>,
    /// Packed virtqueues (`packed=on` on the device, VIRTIO 1.1); off: split rings.
    pub packed: bool,
    /// Queue pairs of the netdev; more than 1 also sets `mq=on` on the device.
    pub queues: u16,
    /// Combined channels the guest enables (`vsq eth0 channels N`); `None` keeps the driver's
    /// choice (with one vCPU: one pair).
    pub channels: Option<u16>,
    /// Its role.
    pub role: Role,
    /// The steps (`vs.test`, see scripts/qemu/guest-init).
    pub steps: Vec<String>,
    /// What it does after them.
    pub end: End,
    /// Size of the bulk files in MiB (`vs.bulk`).
    pub bulk_mib: u32,
    /// Print the driver's statistics every that many seconds (`vs.stats`; 0: never).
    pub stats_secs: u32,
}

impl GuestConfig {
    /// The server: 10.0.0.2, MAC ...:02, stays up.
    pub fn server(name: &str, socket: &Path) -> Self {
        GuestConfig {
            name: name.to_owned(),
            socket: socket.to_owned(),
            mac: "52:54:00:00:00:02".into(),
            ip: "10.0.0.2".into(),
            peer: "10.0.0.1".into(),
            alias: None,
            mtu: 1500,
            host_mtu: None,
            mrg_rxbuf: None,
            packed: false,
            queues: 1,
            channels: None,
            role: Role::Server,
            steps: Vec::new(),
            end: End::Stay,
            bulk_mib: 8,
            stats_secs: 0,
        }
    }

    /// A client: 10.0.0.1, MAC ...:01, powers off after `steps`.
    pub fn client(name: &str, socket: &Path, steps: &[&str]) -> Self {
        GuestConfig {
            mac: "52:54:00:00:00:01".into(),
            ip: "10.0.0.1".into(),
            peer: "10.0.0.2".into(),
            role: Role::Client,
            steps: steps.iter().map(|s| s.to_string()).collect(),
            end: End::Poweroff,
            ..Self::server(name, socket)
        }
    }

    /// The kernel command line.
    pub fn append(&self) -> String {
        let mut s = String::from("console=ttyS0 quiet panic=-1");
        let role = match self.role {
            Role::Server => "server",
            Role::Client => "client",
        };
        let end = match self.end {
            End::Poweroff => "poweroff",
            End::Reboot => "reboot",
            End::Stay => "stay",
        };
        let _ = write!(s, " vs.role={role} vs.ip={} vs.peer={} vs.mtu={}", self.ip, self.peer, self.mtu);
        if let Some(a) = &self.alias {
            let _ = write!(s, " vs.alias={a}");
        }
        if let Some(c) = self.channels {
            let _ = write!(s, " vs.queues={c}");
        }
        let _ = write!(s, " vs.bulk={} vs.stats={} vs.end={end}", self.bulk_mib, self.stats_secs);
        if !self.steps.is_empty() {
            let _ = write!(s, " vs.test={}", self.steps.join(","));
        }
        s
    }

    /// QEMU's arguments.
    pub fn qemu_args(&self, assets: &Assets) -> Vec<String> {
        let mem = format!("{GUEST_MEM_MB}M");
        let mut netdev = "vhost-user,id=net0,chardev=chr0".to_owned();
        // vectors=0: no MSI-X. With MSI-X under TCG, QEMU 7.2 segfaults in vhost_net_start ->
        // msix_set_vector_notifiers when the guest sets DRIVER_OK, whatever the back-end.
        // romfile=: no iPXE option ROM to load (the kernel is given directly).
        let mut device = format!("virtio-net-pci,netdev=net0,mac={},vectors=0,romfile=", self.mac);
        if self.queues > 1 {
            let _ = write!(netdev, ",queues={}", self.queues);
            device += ",mq=on";
        }
        if let Some(m) = self.mrg_rxbuf {
            let _ = write!(device, ",mrg_rxbuf={}", if m { "on" } else { "off" });
        }
        if let Some(m) = self.host_mtu {
            let _ = write!(device, ",host_mtu={m}");
        }
        if self.packed {
            device += ",packed=on";
        }
        let mut args: Vec<String> = [
            "-machine",
            "pc,accel=tcg,memory-backend=mem",
            "-cpu",
            "max",
            "-smp",
            "1",
            "-m",
            &mem,
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
            "-kernel",
            &assets.kernel.display().to_string(),
            "-initrd",
            &assets.initrd.display().to_string(),
            "-append",
            &self.append(),
            "-display",
            "none",
            "-nodefaults",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-chardev",
            &format!("socket,id=chr0,path={}", self.socket.display()),
            "-netdev",
            &netdev,
            "-device",
            &device,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if self.end != End::Reboot {
            args.push("-no-reboot".into());
        }
        args
    }
}

/// A running QEMU guest; killed and reaped on drop.
#[derive(Debug)]
pub struct Guest {
    config: GuestConfig,
    proc: Process,
    started: Instant,
    /// Seconds from QEMU's start to the first `VSTEST boot` line, once seen.
    boot_secs: Option<f64>,
}

impl Guest {
    /// Starts QEMU (it connects to the switch's socket at once).
    pub fn start(config: &GuestConfig) -> Result<Self, HarnessError> {
        let assets = assets();
        let mut cmd = Command::new(&assets.qemu);
        cmd.args(config.qemu_args(assets));
        let proc = Process::spawn(&format!("qemu({})", config.name), cmd)?;
        Ok(Guest { config: config.clone(), proc, started: Instant::now(), boot_secs: None })
    }

    /// Its configuration.
    pub fn config(&self) -> &GuestConfig {
        &self.config
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The serial console so far.
    pub fn console(&self) -> String {
        self.proc.stdout()
    }

    /// The console's length so far, to look at what comes after.
    pub fn console_len(&self) -> usize {
        self.proc.output_len()
    }

    /// Console and QEMU's standard error.
    pub fn log(&self) -> String {
        self.proc.output()
    }

    /// Every record so far.
    pub fn records(&self) -> Vec<Record> {
        parse_records(&self.console(), 0)
    }

    /// Records after console offset `from`.
    pub fn records_after(&self, from: usize) -> Vec<Record> {
        parse_records(&self.console(), from)
    }

    /// Whether QEMU still runs.
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// Seconds from QEMU's start to the first `VSTEST boot` line, if seen.
    pub fn boot_secs(&self) -> Option<f64> {
        self.boot_secs
    }

    /// Waits for the first record of `kind` after console offset `from`. Fails on timeout, if
    /// QEMU exits first, or if a `fail` record comes first (unless `kind` is `fail`).
    pub fn wait_record(&mut self, from: usize, kind: &str, timeout: Duration) -> Result<Record, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            let recs = self.records_after(from);
            if let Some(r) = recs.iter().find(|r| r.kind == kind || (r.kind == "fail" && kind != "fail")) {
                if r.kind == "fail" {
                    return Err(HarnessError::Parse(format!(
                        "{} reported a failure while {kind:?} was awaited: {}",
                        self.name(),
                        r.line
                    )));
                }
                if kind == "boot" && self.boot_secs.is_none() {
                    self.boot_secs = Some(self.started.elapsed().as_secs_f64());
                }
                return Ok(r.clone());
            }
            if !self.proc.is_running() {
                thread::sleep(Duration::from_millis(100));
                if let Some(r) = self.records_after(from).into_iter().find(|r| r.kind == kind) {
                    return Ok(r);
                }
                return Err(self.proc.exited_error());
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!("VSTEST {kind} from {}", self.name()),
                    log: self.log(),
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the first `VSTEST boot` line (and records the boot time).
    pub fn wait_boot(&mut self) -> Result<Record, HarnessError> {
        self.wait_record(0, "boot", BOOT_TIMEOUT)
    }

    /// Records the boot time if the first `VSTEST boot` line is there now; whether it is.
    fn poll_boot(&mut self) -> bool {
        if self.boot_secs.is_none() && self.records().iter().any(|r| r.kind == "boot") {
            self.boot_secs = Some(self.started.elapsed().as_secs_f64());
        }
        self.boot_secs.is_some()
    }

    /// Waits for `done` after `from`; returns the records from `from` to it.
    pub fn wait_done(&mut self, from: usize, timeout: Duration) -> Result<Vec<Record>, HarnessError> {
        let done = self.wait_record(from, "done", timeout)?;
        Ok(self.records_after(from).into_iter().take_while(|r| r.end <= done.end).collect())
    }

    /// Waits up to `timeout` for QEMU to exit on its own (after a poweroff).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.wait_exit(timeout)
    }

    /// SIGKILL now, and reap it (a crash: no vhost-user teardown at all).
    pub fn kill(&mut self) {
        self.proc.kill();
    }
}

/// One line of the switch's periodic per-port stats.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SwitchPortLine {
    /// `vhost0`, `vhost1`, ...
    pub port: String,
    /// `attached`, `connected` or `waiting`.
    pub state: String,
    /// Cumulative packets received from / sent to the guest.
    pub rx_packets: u64,
    /// Cumulative packets sent to the guest.
    pub tx_packets: u64,
    /// Packets dropped.
    pub drops: u64,
    /// Rates since the previous stats line.
    pub rx_pps: f64,
    /// Transmit rate since the previous stats line.
    pub tx_pps: f64,
    /// Byte offset in the switch's output just past this line.
    pub end: usize,
}

/// The switch's per-port stats lines in `text` from byte `from` on.
pub fn parse_switch_stats(text: &str, from: usize) -> Vec<SwitchPortLine> {
    let mut out = Vec::new();
    let mut pos = from.min(text.len());
    while !text.is_char_boundary(pos) {
        pos += 1;
    }
    while let Some(nl) = text[pos..].find('\n') {
        let line = &text[pos..pos + nl];
        pos += nl + 1;
        let t = line.trim();
        let Some((port, rest)) = t.split_once(": ") else { continue };
        if !port.starts_with("vhost") || !rest.contains(" pkts ") {
            continue;
        }
        let w: Vec<&str> = rest.split_whitespace().collect();
        let after = |key: &str| w.iter().position(|x| *x == key).and_then(|i| w.get(i + 1)).copied();
        let num = |s: Option<&str>| s.and_then(|s| s.trim_end_matches(',').parse::<f64>().ok()).unwrap_or(0.0);
        // "attached  rx N pkts B bytes, tx N pkts B bytes, drops D, ..., rx R pps, tx R pps"
        let pps: Vec<f64> = w
            .iter()
            .enumerate()
            .filter(|(_, x)| x.trim_end_matches(',') == "pps")
            .map(|(i, _)| num(Some(w[i - 1])))
            .collect();
        out.push(SwitchPortLine {
            port: port.to_owned(),
            state: w.first().copied().unwrap_or("").to_owned(),
            rx_packets: num(after("rx")) as u64,
            tx_packets: num(after("tx")) as u64,
            drops: num(after("drops")) as u64,
            rx_pps: pps.first().copied().unwrap_or(0.0),
            tx_pps: pps.get(1).copied().unwrap_or(0.0),
            end: pos,
        });
    }
    out
}

/// Whether `l` is one of the switch's periodic stats lines.
fn is_stats_line(l: &str) -> bool {
    l.starts_with("t=") && l.contains("copies:") || l.trim_start().starts_with("vhost") && l.contains(" pkts ")
}

/// The switch's log without its periodic stats lines (what it said besides counting), and its
/// last stats block.
pub fn switch_log_summary(log: &str) -> String {
    let is_stats = |l: &str| {
        l.starts_with("t=") && l.contains("copies:") || l.trim_start().starts_with("vhost") && l.contains(" pkts ")
    };
    let events: Vec<&str> = log.lines().filter(|l| !is_stats(l)).collect();
    let lines: Vec<&str> = log.lines().collect();
    let last_block = lines.iter().rposition(|l| l.starts_with("t=")).map(|i| lines[i..].join("\n")).unwrap_or_default();
    let events = events.join("\n");
    format!("{}\n--- last stats ---\n{}", tail(&events, 6000), tail(&last_block, 2000))
}

/// A test bed: the switch under test and the guests on its two ports. Its checks panic with
/// everything it knows (guest consoles, switch log).
pub struct Bed {
    /// What the test is, for messages.
    pub name: String,
    /// The switch.
    pub switch: Switch,
    /// Guests still tracked (killed ones are moved to `retired`).
    pub guests: Vec<Guest>,
    /// Name and console log of guests that are gone.
    retired: Vec<(String, String)>,
    scratch: Scratch,
    started: Instant,
}

impl Bed {
    /// Starts the `vswitch` binary with `engine` on two vhost-user ports (0 <-> 1).
    pub fn new(name: &str, engine: &str) -> Self {
        Self::new_traced(name, engine, false)
    }

    /// [`new`](Self::new), the switch tracing vhost-user requests when `trace` (so that
    /// `switch.acked_features()` tells what the guests negotiated).
    pub fn new_traced(name: &str, engine: &str, trace: bool) -> Self {
        let scratch = Scratch::new("qemu");
        let switch = Switch::start_traced(SwitchKind::Vswitch(engine.to_owned()), &scratch, trace)
            .unwrap_or_else(|e| panic!("{name}: cannot start the switch under test: {e}"));
        Bed { name: name.to_owned(), switch, guests: Vec::new(), retired: Vec::new(), scratch, started: Instant::now() }
    }

    /// Switch port `i`'s socket.
    pub fn socket(&self, i: usize) -> PathBuf {
        self.switch.socket(i).to_owned()
    }

    /// A scratch path.
    pub fn path(&self, name: &str) -> PathBuf {
        self.scratch.path(name)
    }

    /// Starts a guest; returns its index in `guests`.
    pub fn start(&mut self, config: &GuestConfig) -> usize {
        match Guest::start(config) {
            Ok(g) => {
                self.guests.push(g);
                self.guests.len() - 1
            }
            Err(e) => self.fail(&format!("cannot start {}: {e}", config.name)),
        }
    }

    /// Kills guest `i` (SIGKILL) and keeps its console for messages; the others keep their index.
    pub fn kill(&mut self, i: usize) {
        self.guests[i].kill();
        let name = self.guests[i].name().to_owned();
        self.retired.push((name, self.guests[i].log()));
    }

    /// Seconds since the bed was set up.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Unwraps `r` or fails with everything known.
    pub fn ok<T>(&self, r: Result<T, HarnessError>) -> T {
        r.unwrap_or_else(|e| self.fail(&e.to_string()))
    }

    /// Waits for guest `i`'s first `VSTEST boot` line.
    pub fn wait_boot(&mut self, i: usize) -> Record {
        let r = self.guests[i].wait_boot();
        self.ok(r)
    }

    /// Waits for the first `VSTEST boot` line of every guest in `which`, watching them all at
    /// once so that each one's boot time is when it printed it.
    pub fn wait_boots(&mut self, which: &[usize]) {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            let mut all = true;
            for &i in which {
                all &= self.guests[i].poll_boot();
            }
            if all {
                return;
            }
            for &i in which {
                if self.guests[i].boot_secs.is_none() && !self.guests[i].is_running() {
                    let r = self.guests[i].wait_boot();
                    self.ok(r);
                }
            }
            if Instant::now() >= deadline {
                self.fail(&format!("no VSTEST boot line from guests {which:?} within {BOOT_TIMEOUT:?}"));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the switch printed besides its banner and its periodic stats (warnings, errors,
    /// frontends coming and going, if it says so).
    pub fn switch_events(&self) -> Vec<String> {
        let out = self.switch.output();
        out.lines()
            .filter(|l| !is_stats_line(l) && !l.trim().is_empty())
            .filter(|l| !l.starts_with("vswitch: engine ") && !l.contains(": vhost-user server on "))
            .map(str::to_owned)
            .collect()
    }

    /// Waits for a record of `kind` from guest `i` after console offset `from`.
    pub fn wait_record(&mut self, i: usize, from: usize, kind: &str, timeout: Duration) -> Record {
        let r = self.guests[i].wait_record(from, kind, timeout);
        self.ok(r)
    }

    /// Waits for guest `i`'s `done` after `from`; returns its records up to it.
    pub fn wait_done(&mut self, i: usize, from: usize, timeout: Duration) -> Vec<Record> {
        let r = self.guests[i].wait_done(from, timeout);
        self.ok(r)
    }

    /// Fails unless the switch still runs.
    pub fn assert_switch_running(&mut self) {
        if !self.switch.is_running() {
            self.fail("the switch died");
        }
    }

    /// Waits until a stats line of switch port `port` printed after byte `from` of its output
    /// shows at least `min_pps` packets/s received from its guest; returns that line.
    pub fn wait_switch_rx(&mut self, port: usize, from: usize, min_pps: f64, timeout: Duration) -> SwitchPortLine {
        let name = format!("vhost{port}");
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.switch.output();
            if let Some(l) = parse_switch_stats(&out, from).into_iter().find(|l| l.port == name && l.rx_pps >= min_pps)
            {
                return l;
            }
            self.assert_switch_running();
            if Instant::now() >= deadline {
                self.fail(&format!("no stats line of {name} with rx >= {min_pps} pps within {timeout:?}"));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Panics with `msg`, every guest's console tail and the switch's log.
    pub fn fail(&self, msg: &str) -> ! {
        panic!("{}: {msg}\n{}", self.name, self.report());
    }

    /// Fails with `msg` unless `cond`.
    pub fn check(&self, cond: bool, msg: impl FnOnce() -> String) {
        if !cond {
            self.fail(&msg());
        }
    }

    /// Everything known, for a failure message.
    pub fn report(&self) -> String {
        let mut s = String::new();
        for (name, log) in &self.retired {
            let _ = write!(s, "\n=== console of {name} (killed) ===\n{}\n", tail(log, 3000));
        }
        for g in &self.guests {
            let _ = write!(s, "\n=== console of {} ===\n{}\n", g.name(), tail(&g.log(), 4000));
        }
        let _ = write!(
            s,
            "\n=== switch {:?} (after {:.0} s) ===\n{}\n",
            self.switch.kind(),
            self.elapsed(),
            switch_log_summary(&self.switch.output())
        );
        s
    }
}
