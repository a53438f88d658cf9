//! Test support: starts and drives `dpdk-testpmd` processes (DPDK's virtio-user guest driver,
//! pcap ports, DPDK's own vhost-user backend) and the `vswitch` binary, for the real-driver
//! interop tests.
//!
//! Owns the processes it spawns and the scratch files they use, and nothing else: every process
//! sits behind a guard whose `Drop` sends SIGTERM, then SIGKILL after a grace period, and reaps
//! it, so no process outlives a test, even a failing one; every wait is bounded by a timeout.
//!
//! DPDK runs here without hugepages and without PCI (`--no-huge --no-pci -m <MB>`), each process
//! with its own `--file-prefix` and `--no-shconf`. (`--in-memory` would leave nothing behind at
//! all, but DPDK 22.11 refuses it together with `--no-huge`, which implies legacy memory.)
//! testpmd's standard output is a pipe, so it runs under `stdbuf -oL` to see each line when
//! it is printed rather than when stdio's block buffer fills.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The CPU the switch's forwarding (PMD) thread runs on.
pub const SWITCH_CPU: u32 = 0;
/// The CPU the guests' forwarding lcores run on. On a 2-core machine the guests share it; their
/// main lcores (idle: a prompt or the stats printer) sit on the switch's CPU.
pub const GUEST_CPU: u32 = 1;
/// testpmd's `--lcores` for a guest: main lcore 0 on the switch CPU, forwarding lcore 1 on the
/// guest CPU.
pub const GUEST_LCORES: &str = "0@0,1@1";
/// testpmd's `--lcores` for DPDK's vhost backend used as the switch: forwarding lcore 1 on the
/// switch CPU, main lcore 0 on the guest CPU.
pub const SWITCH_LCORES: &str = "0@1,1@0";
/// The prompt testpmd prints in interactive mode when it is ready for the next command.
const PROMPT: &str = "testpmd> ";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `<tag>-<pid>-<counter>`.
pub fn unique_name(tag: &str) -> String {
    format!("{tag}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Takes an exclusive lock on `$TMPDIR/copy-engine-<name>.lock` shared by every process on the
/// machine (flock; released when the file is closed, also when the process dies), waiting up to
/// `timeout`; panics if it cannot. Keeps concurrent test runs from pinning busy-polling
/// processes onto the same CPUs at once.
pub fn machine_lock(name: &str, timeout: Duration) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let path = std::env::temp_dir().join(format!("copy-engine-{name}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let deadline = Instant::now() + timeout;
    loop {
        // SAFETY: flock(2) on a descriptor this function owns for as long as `file` lives.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return file;
        }
        if Instant::now() >= deadline {
            panic!("{} held by another run for over {timeout:?}", path.display());
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// What went wrong while driving a process.
#[derive(Debug)]
pub enum HarnessError {
    /// A program the harness needs is not installed or not built.
    Missing(String),
    /// Spawning or talking to a process failed.
    Io(String, std::io::Error),
    /// A bounded wait ran out; the text says for what, the log is the process's output so far.
    Timeout { what: String, log: String },
    /// The process exited while the harness still needed it.
    Exited { name: String, status: Option<ExitStatus>, log: String },
    /// Output that the harness could not parse.
    Parse(String),
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HarnessError::Missing(what) => write!(f, "missing: {what}"),
            HarnessError::Io(what, e) => write!(f, "{what}: {e}"),
            HarnessError::Timeout { what, log } => {
                write!(f, "timed out waiting for {what}\n--- output ---\n{}", tail(log, 4000))
            }
            HarnessError::Exited { name, status, log } => {
                write!(f, "{name} exited early ({status:?})\n--- output ---\n{}", tail(log, 4000))
            }
            HarnessError::Parse(what) => write!(f, "cannot parse: {what}"),
        }
    }
}

impl std::error::Error for HarnessError {}

/// The last `max` bytes of `s` (on a char boundary).
pub fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// A temporary directory unique to one test, removed with everything in it on drop.
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    /// Creates `$TMPDIR/copy-engine-<tag>-<pid>-<n>`. Socket paths must stay under 108 bytes.
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(unique_name(&format!("ce-{tag}")));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch { dir }
    }

    /// A path inside the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The directory itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `dpdk-testpmd` executable: `$TESTPMD`, or the first on `$PATH`.
pub fn testpmd_binary() -> Result<PathBuf, HarnessError> {
    if let Some(p) = std::env::var_os("TESTPMD") {
        return Ok(PathBuf::from(p));
    }
    find_on_path("dpdk-testpmd").ok_or_else(|| {
        HarnessError::Missing(
            "dpdk-testpmd is not on PATH (Debian: apt-get install dpdk-dev; \
             or set TESTPMD=/path/to/dpdk-testpmd)"
                .into(),
        )
    })
}

/// Whether `dpdk-testpmd` can be run. When it cannot, a test may skip (this says so), except
/// in CI (`$CI` set): scripts/test.sh installs dpdk-dev first, so a missing testpmd there panics
/// rather than letting the test pass without testing anything.
pub fn have_testpmd() -> bool {
    let found = testpmd_binary().is_ok_and(|bin| {
        Command::new(bin).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
    });
    if !found {
        assert!(std::env::var_os("CI").is_none(), "dpdk-testpmd not found (install dpdk-dev: scripts/test.sh does)");
        eprintln!("dpdk-testpmd not found: skipping");
    }
    found
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// A virtual device on testpmd's EAL command line.
#[derive(Clone, Debug)]
pub enum Vdev {
    /// DPDK's virtio-user driver connected, as the vhost-user front-end, to a socket.
    VirtioUser {
        /// The vhost-user socket (the back-end listens on it).
        path: PathBuf,
        /// Queue pairs.
        queues: u16,
        /// Mergeable RX buffers (`mrg_rxbuf`); `None` keeps the driver default.
        mrg_rxbuf: Option<bool>,
        /// VIRTIO_F_IN_ORDER (`in_order`); `None` keeps the driver default.
        in_order: Option<bool>,
        /// Packed virtqueues (`packed_vq`); `None` keeps the driver default (split).
        packed_vq: Option<bool>,
        /// Ring size (`queue_size`); `None` keeps the driver default (256).
        queue_size: Option<u16>,
        /// The control queue (`cq`), needed for more than one queue pair; `None` keeps the driver
        /// default (none).
        cq: Option<bool>,
    },
    /// The pcap PMD: replays `rx` once, writes what it transmits to `tx`.
    Pcap {
        /// File read on RX.
        rx: PathBuf,
        /// File written on TX.
        tx: PathBuf,
    },
    /// DPDK's vhost-user back-end (server) listening on `iface`.
    Vhost {
        /// The socket it listens on.
        iface: PathBuf,
        /// Queue pairs.
        queues: u16,
    },
}

impl Vdev {
    /// A split-ring virtio-user port with one queue pair and `mrg_rxbuf` as given.
    pub fn virtio_user(path: &Path, mrg_rxbuf: bool) -> Self {
        Vdev::VirtioUser {
            path: path.to_owned(),
            queues: 1,
            mrg_rxbuf: Some(mrg_rxbuf),
            in_order: Some(false),
            packed_vq: Some(false),
            queue_size: None,
            cq: None,
        }
    }

    /// The same port with packed virtqueues (`packed_vq=1`) when `packed`; unchanged otherwise (and
    /// for other drivers).
    pub fn packed_if(mut self, packed: bool) -> Self {
        if let Vdev::VirtioUser { packed_vq, .. } = &mut self {
            if packed {
                *packed_vq = Some(true);
            }
        }
        self
    }

    /// A virtio-user port with `queues` queue pairs and the driver's defaults otherwise. More
    /// than one pair needs the control queue (`cq=1`, which virtio-user serves itself, turning
    /// `VQ_PAIRS_SET` into `SET_VRING_ENABLE`), so it is enabled then.
    pub fn virtio_user_queues(path: &Path, queues: u16) -> Self {
        Vdev::VirtioUser {
            path: path.to_owned(),
            queues,
            mrg_rxbuf: None,
            in_order: None,
            packed_vq: None,
            queue_size: None,
            cq: (queues > 1).then_some(true),
        }
    }

    /// A pcap port.
    pub fn pcap(rx: &Path, tx: &Path) -> Self {
        Vdev::Pcap { rx: rx.to_owned(), tx: tx.to_owned() }
    }

    /// A vhost-user back-end port with one queue pair.
    pub fn vhost(iface: &Path) -> Self {
        Vdev::Vhost { iface: iface.to_owned(), queues: 1 }
    }

    /// The `--vdev` argument; `index` makes the name unique per driver within a process.
    pub fn devarg(&self, index: usize) -> String {
        let flag = |b: bool| if b { 1 } else { 0 };
        match self {
            Vdev::VirtioUser { path, queues, mrg_rxbuf, in_order, packed_vq, queue_size, cq } => {
                let mut s = format!("net_virtio_user{index},path={},queues={queues}", path.display());
                if let Some(b) = mrg_rxbuf {
                    s += &format!(",mrg_rxbuf={}", flag(*b));
                }
                if let Some(b) = in_order {
                    s += &format!(",in_order={}", flag(*b));
                }
                if let Some(b) = packed_vq {
                    s += &format!(",packed_vq={}", flag(*b));
                }
                if let Some(n) = queue_size {
                    s += &format!(",queue_size={n}");
                }
                if let Some(b) = cq {
                    s += &format!(",cq={}", flag(*b));
                }
                s
            }
            Vdev::Pcap { rx, tx } => {
                format!("net_pcap{index},rx_pcap={},tx_pcap={}", rx.display(), tx.display())
            }
            Vdev::Vhost { iface, queues } => {
                format!("net_vhost{index},iface={},queues={queues}", iface.display())
            }
        }
    }

    fn driver(&self) -> u8 {
        match self {
            Vdev::VirtioUser { .. } => 0,
            Vdev::Pcap { .. } => 1,
            Vdev::Vhost { .. } => 2,
        }
    }
}

/// testpmd's `--forward-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardMode {
    /// Receive and send unchanged to the peer port.
    Io,
    /// Generate packets (`--txpkts`), receive nothing.
    TxOnly,
    /// Receive and drop.
    RxOnly,
    /// Swap MAC addresses and send to the peer port.
    MacSwap,
    /// Receive and drop, and generate UDP flows (`--txpkts`) on the peer port.
    FlowGen,
}

impl ForwardMode {
    /// testpmd's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardMode::Io => "io",
            ForwardMode::TxOnly => "txonly",
            ForwardMode::RxOnly => "rxonly",
            ForwardMode::MacSwap => "macswap",
            ForwardMode::FlowGen => "flowgen",
        }
    }
}

/// testpmd's `--port-topology`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// Ports 0<->1, 2<->3, ...
    Paired,
    /// Each port sends back on itself.
    Loop,
    /// Port n sends to port n+1.
    Chained,
}

impl Topology {
    fn as_str(self) -> &'static str {
        match self {
            Topology::Paired => "paired",
            Topology::Loop => "loop",
            Topology::Chained => "chained",
        }
    }
}

/// How to start one testpmd: EAL arguments, virtual devices, application arguments.
#[derive(Clone, Debug)]
pub struct TestpmdConfig {
    /// A name for messages.
    pub name: String,
    /// `--lcores` (lcore-to-CPU map); the first lcore is the main one.
    pub lcores: String,
    /// `-m`: MB of (non-huge) memory.
    pub mem_mb: u32,
    /// `--log-level` (global).
    pub log_level: u32,
    /// Virtual devices, in port order.
    pub vdevs: Vec<Vdev>,
    /// Interactive (`-i`, commands on stdin) or not.
    pub interactive: bool,
    /// `--auto-start` (non-interactive runs always start).
    pub auto_start: bool,
    /// `--forward-mode`.
    pub forward_mode: ForwardMode,
    /// `--port-topology`.
    pub topology: Topology,
    /// `--txpkts`: segment lengths of generated packets (several = multi-segment).
    pub txpkts: Vec<u32>,
    /// `--burst`.
    pub burst: Option<u16>,
    /// `--rxq` / `--txq`.
    pub queues: u16,
    /// `--nb-cores`.
    pub nb_cores: u16,
    /// `--mbuf-size` (data room per mbuf).
    pub mbuf_size: Option<u32>,
    /// `--max-pkt-len`.
    pub max_pkt_len: Option<u32>,
    /// `--enable-scatter` (on every port; pcap does not support it).
    pub enable_scatter: bool,
    /// `--total-num-mbufs` (the default is sized for many lcores and does not fit in `-m`).
    pub total_num_mbufs: u32,
    /// `--no-flush-rx`: needed with pcap RX, which would otherwise be drained at start.
    pub no_flush_rx: bool,
    /// `--disable-device-start`: leave ports stopped (to configure them per port first).
    pub disable_device_start: bool,
    /// `--stats-period` (non-interactive): print port statistics every that many seconds.
    pub stats_period: Option<u32>,
    /// `--tx-offloads`.
    pub tx_offloads: Option<u64>,
    /// `--tx-first` (non-interactive): start with a burst of generated packets on every port,
    /// which io forwarding then keeps circulating.
    pub tx_first: bool,
    /// `--txonly-multi-flow`: generated packets vary their IPv4 source (also the `--tx-first`
    /// bursts), so that they form several flows.
    pub txonly_multi_flow: bool,
    /// `--no-mlockall`.
    pub no_mlockall: bool,
    /// Anything else, appended to the application arguments.
    pub extra_app_args: Vec<String>,
}

impl TestpmdConfig {
    /// A guest: forwarding lcore on [`GUEST_CPU`], 1 forwarding core, io, paired.
    pub fn guest(name: &str) -> Self {
        TestpmdConfig {
            name: name.to_owned(),
            lcores: GUEST_LCORES.to_owned(),
            mem_mb: 256,
            log_level: 5,
            vdevs: Vec::new(),
            interactive: false,
            auto_start: true,
            forward_mode: ForwardMode::Io,
            topology: Topology::Paired,
            txpkts: Vec::new(),
            burst: None,
            queues: 1,
            nb_cores: 1,
            mbuf_size: None,
            max_pkt_len: None,
            enable_scatter: false,
            total_num_mbufs: 8192,
            no_flush_rx: false,
            disable_device_start: false,
            stats_period: None,
            tx_offloads: None,
            tx_first: false,
            txonly_multi_flow: false,
            no_mlockall: false,
            extra_app_args: Vec::new(),
        }
    }

    /// One guest on both switch ports (virtio-user with `queues` queue pairs each, io 0<->1,
    /// non-interactive) that starts with `--tx-first` bursts, which then circulate through the
    /// switch until it stops; port statistics every second. With more than one pair: `--rxq` /
    /// `--txq`, one forwarding lcore serving every queue, and flows that differ
    /// (`--txonly-multi-flow`) so that the switch spreads them over the pairs.
    pub fn tx_first_through(name: &str, sock0: &Path, sock1: &Path, queues: u16) -> Self {
        let mut c = TestpmdConfig::guest(name)
            .vdev(Vdev::virtio_user_queues(sock0, queues))
            .vdev(Vdev::virtio_user_queues(sock1, queues))
            .stats_period(1);
        c.mem_mb = 512;
        c.total_num_mbufs = 16384;
        c.queues = queues;
        c.tx_first = true;
        c.txonly_multi_flow = queues > 1;
        c.no_mlockall = true;
        c
    }

    /// DPDK's vhost back-end as a two-port switch: io forwarding 0<->1 on [`SWITCH_CPU`].
    pub fn dpdk_vhost_switch(sock0: &Path, sock1: &Path) -> Self {
        let mut c = TestpmdConfig::guest("dpdk-vhost");
        c.lcores = SWITCH_LCORES.to_owned();
        c.vdevs = vec![Vdev::vhost(sock0), Vdev::vhost(sock1)];
        c.total_num_mbufs = 16384;
        c
    }

    /// Adds a virtual device (the next port).
    pub fn vdev(mut self, v: Vdev) -> Self {
        self.vdevs.push(v);
        self
    }

    /// Sets the forwarding mode.
    pub fn mode(mut self, m: ForwardMode) -> Self {
        self.forward_mode = m;
        self
    }

    /// Sets the port topology.
    pub fn topology(mut self, t: Topology) -> Self {
        self.topology = t;
        self
    }

    /// Sets the generated packets' segment lengths.
    pub fn txpkts(mut self, segs: &[u32]) -> Self {
        self.txpkts = segs.to_vec();
        self
    }

    /// Interactive mode: commands on stdin.
    pub fn interactive(mut self) -> Self {
        self.interactive = true;
        self.auto_start = false;
        self
    }

    /// Periodic statistics every `secs` seconds (non-interactive).
    pub fn stats_period(mut self, secs: u32) -> Self {
        self.stats_period = Some(secs);
        self
    }

    /// The EAL arguments (before `--`), with a unique file prefix.
    pub fn eal_args(&self, file_prefix: &str) -> Vec<String> {
        let mut a = vec![
            format!("--lcores={}", self.lcores),
            "--no-huge".into(),
            "--no-pci".into(),
            "-m".into(),
            self.mem_mb.to_string(),
            format!("--file-prefix={file_prefix}"),
            "--no-shconf".into(),
            "--no-telemetry".into(),
            format!("--log-level={}", self.log_level),
        ];
        let mut per_driver = [0usize; 3];
        for v in &self.vdevs {
            let i = &mut per_driver[v.driver() as usize];
            a.push("--vdev".into());
            a.push(v.devarg(*i));
            *i += 1;
        }
        a
    }

    /// The application arguments (after `--`).
    pub fn app_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if self.interactive {
            a.push("-i".into());
        } else if self.auto_start {
            a.push("--auto-start".into());
        }
        a.push(format!("--forward-mode={}", self.forward_mode.as_str()));
        a.push(format!("--port-topology={}", self.topology.as_str()));
        a.push(format!("--nb-cores={}", self.nb_cores));
        a.push(format!("--rxq={}", self.queues));
        a.push(format!("--txq={}", self.queues));
        a.push(format!("--total-num-mbufs={}", self.total_num_mbufs));
        if !self.txpkts.is_empty() {
            let segs: Vec<String> = self.txpkts.iter().map(|l| l.to_string()).collect();
            a.push(format!("--txpkts={}", segs.join(",")));
        }
        if let Some(b) = self.burst {
            a.push(format!("--burst={b}"));
        }
        if let Some(m) = self.mbuf_size {
            a.push(format!("--mbuf-size={m}"));
        }
        if let Some(m) = self.max_pkt_len {
            a.push(format!("--max-pkt-len={m}"));
        }
        if self.enable_scatter {
            a.push("--enable-scatter".into());
        }
        if self.no_flush_rx {
            a.push("--no-flush-rx".into());
        }
        if self.disable_device_start {
            a.push("--disable-device-start".into());
        }
        if let Some(o) = self.tx_offloads {
            a.push(format!("--tx-offloads={o:#x}"));
        }
        if let (false, Some(p)) = (self.interactive, self.stats_period) {
            a.push(format!("--stats-period={p}"));
        }
        if self.tx_first {
            a.push("--tx-first".into());
        }
        if self.txonly_multi_flow {
            a.push("--txonly-multi-flow".into());
        }
        if self.no_mlockall {
            a.push("--no-mlockall".into());
        }
        a.extend(self.extra_app_args.iter().cloned());
        a
    }
}

/// A spawned process whose output is collected in the background and which is terminated
/// (SIGTERM, then SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    /// Standard output: what the waits look at (stderr lines would split a prompt).
    log: Arc<Mutex<String>>,
    /// Standard error.
    err_log: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Process {
    /// Spawns `cmd` with piped stdin/stdout/stderr; output lands in the log.
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Self, HarnessError> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| HarnessError::Io(format!("spawn {name}: {cmd:?}"), e))?;
        let log = Arc::new(Mutex::new(String::new()));
        let err_log = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        type Source = Box<dyn Read + Send>;
        let outs: [(Option<Source>, &Arc<Mutex<String>>); 2] = [
            (child.stdout.take().map(|s| Box::new(s) as Source), &log),
            (child.stderr.take().map(|s| Box::new(s) as Source), &err_log),
        ];
        for (out, log) in outs {
            let Some(mut out) = out else { continue };
            let log = Arc::clone(log);
            readers.push(thread::spawn(move || {
                let mut buf = [0u8; 8192];
                loop {
                    match out.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let text = String::from_utf8_lossy(&buf[..n]);
                            log.lock().unwrap_or_else(|e| e.into_inner()).push_str(&text);
                        }
                    }
                }
            }));
        }
        let stdin = child.stdin.take();
        Ok(Process { name: name.to_owned(), child: Some(child), stdin, log, err_log, readers, status: None })
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Everything it printed so far: standard output, then standard error.
    pub fn output(&self) -> String {
        let out = self.stdout();
        let err = self.err_log.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if err.is_empty() {
            out
        } else {
            format!("{out}\n--- stderr ---\n{err}")
        }
    }

    /// Everything it printed so far on standard output.
    pub fn stdout(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Length of the standard output so far, to wait for something printed after this point.
    pub fn output_len(&self) -> usize {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether it is still running (reaps it if not).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => match c.try_wait() {
                Ok(Some(st)) => {
                    self.status = Some(st);
                    self.child = None;
                    false
                }
                Ok(None) => true,
                Err(_) => false,
            },
        }
    }

    /// Exit status, once it has exited and been reaped.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.status
    }

    /// An error saying it exited, with its output.
    pub fn exited_error(&self) -> HarnessError {
        HarnessError::Exited { name: self.name.clone(), status: self.status, log: self.output() }
    }

    /// Waits until the standard output after byte `from` contains `needle`; returns the output from
    /// `from` to the end of the first match. Fails if it exits first or on timeout.
    pub fn wait_for_after(&mut self, from: usize, needle: &str, timeout: Duration) -> Result<String, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
                let start = from.min(log.len());
                if let Some(pos) = log[start..].find(needle) {
                    return Ok(log[start..start + pos + needle.len()].to_owned());
                }
            }
            if !self.is_running() {
                // Give the readers a moment to drain what it printed last.
                thread::sleep(Duration::from_millis(100));
                let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
                let start = from.min(log.len());
                if let Some(pos) = log[start..].find(needle) {
                    return Ok(log[start..start + pos + needle.len()].to_owned());
                }
                drop(log);
                return Err(self.exited_error());
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!("{:?} from {}", needle, self.name),
                    log: self.output(),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the whole output contains `needle`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String, HarnessError> {
        self.wait_for_after(0, needle, timeout)
    }

    /// Writes a line to its stdin.
    pub fn send_line(&mut self, line: &str) -> Result<(), HarnessError> {
        let name = self.name.clone();
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| HarnessError::Io(format!("{name}: stdin"), std::io::ErrorKind::BrokenPipe.into()))?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| stdin.flush())
            .map_err(|e| HarnessError::Io(format!("{name}: write {line:?}"), e))
    }

    /// Sends `sig` (a `libc::SIG*`) if it still runs.
    pub fn signal(&mut self, sig: libc::c_int) {
        if let Some(pid) = self.pid() {
            if self.is_running() {
                // SAFETY: kill(2) on the pid of a child this guard has not reaped yet, so the
                // pid still names our child (a zombie at worst), never a recycled process.
                unsafe {
                    libc::kill(pid as libc::pid_t, sig);
                }
            }
        }
    }

    /// Waits up to `timeout` for it to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while self.is_running() {
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.join_readers();
        self.status
    }

    /// Sends `sig` and waits up to `timeout` for the exit; SIGKILLs it after (and returns `None`).
    pub fn signal_and_wait(&mut self, sig: libc::c_int, timeout: Duration) -> Option<ExitStatus> {
        self.signal(sig);
        let st = self.wait_exit(timeout);
        if st.is_none() {
            eprintln!("{} did not exit within {timeout:?}: killing it", self.name);
            self.kill();
        }
        st
    }

    /// SIGKILL now, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            self.status = c.wait().ok();
        }
        self.stdin = None;
        self.join_readers();
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; always reaps it.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        if self.is_running() {
            self.signal(libc::SIGTERM);
            if self.wait_exit(grace).is_none() {
                self.kill();
            }
        }
        self.stdin = None;
        self.join_readers();
        self.status
    }

    fn join_readers(&mut self) {
        if self.child.is_none() {
            for r in self.readers.drain(..) {
                let _ = r.join();
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(5));
    }
}

/// One port's counters, as testpmd prints them ("NIC statistics for port N").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// RX-packets.
    pub rx_packets: u64,
    /// RX-bytes.
    pub rx_bytes: u64,
    /// RX-missed + RX-errors + RX-nombuf.
    pub rx_errors: u64,
    /// TX-packets.
    pub tx_packets: u64,
    /// TX-bytes.
    pub tx_bytes: u64,
    /// TX-errors.
    pub tx_errors: u64,
    /// Rx-pps (since the previous show).
    pub rx_pps: u64,
    /// Tx-pps (since the previous show).
    pub tx_pps: u64,
}

/// Parses the last "NIC statistics for port `port`" block in `text`.
pub fn parse_port_stats(text: &str, port: u16) -> Option<PortStats> {
    let header = format!("NIC statistics for port {port} ");
    let start = text.rfind(&header)? + header.len();
    let body = &text[start..];
    // The block ends with a line of '#' only.
    let end = body
        .lines()
        .skip(1)
        .position(|l| {
            let t = l.trim();
            !t.is_empty() && t.chars().all(|c| c == '#')
        })
        .map(|n| body.lines().take(n + 1).map(|l| l.len() + 1).sum::<usize>())
        .unwrap_or(body.len());
    let body = &body[..end.min(body.len())];
    let mut s = PortStats::default();
    let mut seen = false;
    let words: Vec<&str> = body.split_whitespace().collect();
    for pair in words.windows(2) {
        let Some(key) = pair[0].strip_suffix(':') else { continue };
        let Ok(v) = pair[1].parse::<u64>() else { continue };
        seen = true;
        match key {
            "RX-packets" => s.rx_packets = v,
            "RX-bytes" => s.rx_bytes = v,
            "RX-missed" | "RX-errors" | "RX-nombuf" => s.rx_errors += v,
            "TX-packets" => s.tx_packets = v,
            "TX-bytes" => s.tx_bytes = v,
            "TX-errors" => s.tx_errors = v,
            "Rx-pps" => s.rx_pps = v,
            "Tx-pps" => s.tx_pps = v,
            _ => {}
        }
    }
    seen.then_some(s)
}

/// One port's totals in the forward statistics testpmd prints when forwarding stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardStats {
    /// RX-packets.
    pub rx_packets: u64,
    /// TX-packets.
    pub tx_packets: u64,
}

/// Parses the "Forward statistics for port N" blocks in `text`, in the order printed.
pub fn parse_forward_stats(text: &str) -> Vec<ForwardStats> {
    let mut out = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        if line.contains("Forward statistics for port") {
            in_block = true;
            out.push(ForwardStats::default());
            continue;
        }
        let Some(s) = out.last_mut().filter(|_| in_block) else { continue };
        if let Some(v) = stat(line, "RX-packets:") {
            s.rx_packets = v;
        }
        if let Some(v) = stat(line, "TX-packets:") {
            s.tx_packets = v;
            in_block = false;
        }
    }
    out
}

/// One stream's totals in the forward statistics testpmd prints when forwarding stops (per
/// stream only when it has more streams than ports).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// The port the stream receives on.
    pub rx_port: u32,
    /// The queue of that port.
    pub rx_queue: u32,
    /// RX-packets.
    pub rx_packets: u64,
    /// TX-packets.
    pub tx_packets: u64,
}

/// Parses the "Forward Stats for RX Port=P/Queue=Q -> ..." blocks in `text`: the streams that
/// moved anything.
pub fn parse_stream_stats(text: &str) -> Vec<StreamStats> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.split("Forward Stats for RX Port=").nth(1) else { continue };
        let mut it = rest.split('/');
        let port = it.next().and_then(|p| p.trim().parse().ok());
        let queue = it.next().and_then(|q| q.trim_start_matches("Queue=").split("->").next()?.trim().parse().ok());
        let Some(stats) = lines.next() else { break };
        if let (Some(rx_port), Some(rx_queue), Some(rx_packets), Some(tx_packets)) =
            (port, queue, stat(stats, "RX-packets:"), stat(stats, "TX-packets:"))
        {
            out.push(StreamStats { rx_port, rx_queue, rx_packets, tx_packets });
        }
    }
    out
}

/// The number after `key` in `line`.
fn stat(line: &str, key: &str) -> Option<u64> {
    line.split(key).nth(1)?.split_whitespace().next()?.parse().ok()
}

/// A running `dpdk-testpmd`; terminated on drop, its DPDK runtime directory removed.
#[derive(Debug)]
pub struct Testpmd {
    proc: Process,
    config: TestpmdConfig,
    file_prefix: String,
}

impl Testpmd {
    /// Spawns testpmd and waits until it is ready: the prompt in interactive mode, forwarding
    /// started otherwise.
    pub fn spawn(config: &TestpmdConfig) -> Result<Self, HarnessError> {
        let bin = testpmd_binary()?;
        let file_prefix = unique_name(&format!("ce-{}", config.name));
        // stdbuf makes testpmd's stdout line-buffered although it is a pipe.
        let mut cmd = if find_on_path("stdbuf").is_some() {
            let mut c = Command::new("stdbuf");
            c.arg("-oL").arg("-eL").arg(&bin);
            c
        } else {
            Command::new(&bin)
        };
        cmd.args(config.eal_args(&file_prefix)).arg("--").args(config.app_args());
        let proc = Process::spawn(&config.name, cmd)?;
        let mut t = Testpmd { proc, config: config.clone(), file_prefix };
        let ready = if config.interactive {
            PROMPT
        } else if config.auto_start {
            "packet forwarding packets/burst="
        } else {
            "Press enter to exit"
        };
        t.proc.wait_for(ready, Duration::from_secs(20))?;
        let out = t.proc.output();
        if let Some(e) =
            ["Fail to configure", "Start ports failed", "Fail to start port"].iter().find(|e| out.contains(*e))
        {
            return Err(HarnessError::Parse(format!("{}: {e:?} at start\n{}", config.name, tail(&out, 3000))));
        }
        Ok(t)
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &TestpmdConfig {
        &self.config
    }

    /// The underlying process.
    pub fn process(&mut self) -> &mut Process {
        &mut self.proc
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        self.proc.output()
    }

    /// Interactive mode: runs one command and returns what it printed before the next prompt.
    pub fn command(&mut self, cmd: &str, timeout: Duration) -> Result<String, HarnessError> {
        assert!(self.config.interactive, "{}: command {cmd:?} needs -i", self.config.name);
        let from = self.proc.output_len();
        self.proc.send_line(cmd)?;
        let out = self.proc.wait_for_after(from, PROMPT, timeout)?;
        Ok(out.trim_end_matches(PROMPT).to_owned())
    }

    /// One port's counters: `show port stats` in interactive mode, else the latest periodic
    /// block (needs `--stats-period`; waits for the next one).
    pub fn port_stats(&mut self, port: u16) -> Result<PortStats, HarnessError> {
        if self.config.interactive {
            let out = self.command(&format!("show port stats {port}"), Duration::from_secs(5))?;
            parse_port_stats(&out, port).ok_or_else(|| HarnessError::Parse(format!("port {port} stats in {out:?}")))
        } else {
            let period = self.config.stats_period.expect("port_stats needs --stats-period or -i");
            let from = self.proc.output_len();
            // A complete block for the last port is printed after this port's.
            let header = format!("NIC statistics for port {port} ");
            self.proc.wait_for_after(from, &header, Duration::from_secs(period as u64 * 3 + 5))?;
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                let out = self.proc.stdout();
                let text = &out[from.min(out.len())..];
                if let Some(pos) = text.rfind(&header) {
                    if text[pos..].lines().skip(1).any(|l| {
                        let t = l.trim();
                        !t.is_empty() && t.chars().all(|c| c == '#')
                    }) {
                        return parse_port_stats(text, port)
                            .ok_or_else(|| HarnessError::Parse(format!("port {port} stats")));
                    }
                }
                if Instant::now() >= deadline {
                    return Err(HarnessError::Parse(format!("incomplete port {port} stats")));
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Polls `port`'s counters until `done` holds; returns the last counters.
    pub fn wait_stats(
        &mut self,
        port: u16,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&PortStats) -> bool,
    ) -> Result<PortStats, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.port_stats(port)?;
            if done(&s) {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!("{what} on {} port {port} (last: {s:?})", self.config.name),
                    log: self.output(),
                });
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Polls every port's counters until each has received at least `min` packets, within
    /// `timeout` in all; returns the last counters, in port order.
    pub fn wait_rx_on_every_port(&mut self, min: u64, timeout: Duration) -> Result<Vec<PortStats>, HarnessError> {
        let deadline = Instant::now() + timeout;
        let what = format!("{min} packets received");
        (0..self.config.vdevs.len() as u16)
            .map(|port| {
                let left = deadline.saturating_duration_since(Instant::now());
                self.wait_stats(port, left, &what, |s| s.rx_packets >= min)
            })
            .collect()
    }

    /// The forward statistics it printed when forwarding stopped, per port.
    pub fn forward_stats(&self) -> Vec<ForwardStats> {
        parse_forward_stats(&self.proc.stdout())
    }

    /// The per-stream forward statistics it printed when forwarding stopped.
    pub fn stream_stats(&self) -> Vec<StreamStats> {
        parse_stream_stats(&self.proc.stdout())
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// SIGKILL now (a guest crash); the runtime directory is removed.
    pub fn kill(&mut self) {
        self.proc.kill();
        self.remove_runtime_dir();
    }

    /// A clean exit: `quit` in interactive mode, SIGTERM otherwise (testpmd stops and closes
    /// its ports, which flushes pcap files); SIGKILL if it takes longer than `grace`.
    pub fn quit(&mut self, grace: Duration) -> Option<ExitStatus> {
        if self.config.interactive && self.proc.is_running() && self.proc.send_line("quit").is_ok() {
            if let Some(st) = self.proc.wait_exit(grace) {
                self.remove_runtime_dir();
                return Some(st);
            }
        }
        let st = self.proc.terminate(grace);
        self.remove_runtime_dir();
        st
    }

    fn remove_runtime_dir(&self) {
        // EAL creates <runtime dir>/dpdk/<prefix> even with --no-shconf.
        let mut bases = vec![PathBuf::from("/var/run"), PathBuf::from("/tmp")];
        if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR") {
            bases.push(PathBuf::from(x));
        }
        for b in bases {
            let d = b.join("dpdk").join(&self.file_prefix);
            if d.is_dir() {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        self.proc.terminate(Duration::from_secs(5));
        self.remove_runtime_dir();
    }
}

/// Which switch is under test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwitchKind {
    /// DPDK's vhost back-end (testpmd, two `net_vhost` ports, io 0<->1): the reference.
    DpdkVhost,
    /// Our `vswitch` binary with this `--engine` (memcpy, worker, dmadev:<name>), and after it,
    /// space separated, any other arguments (`"memcpy --pmd-cores 0,1"`).
    Vswitch(String),
}

/// The `vswitch` binary: `$VSWITCH_BIN`, else the one cargo built for this test run, else
/// `target/release/vswitch`.
pub fn vswitch_binary() -> Result<PathBuf, HarnessError> {
    if let Some(p) = std::env::var_os("VSWITCH_BIN") {
        let mut p = PathBuf::from(p);
        // Tests run in the crate's directory; a relative path may be meant from the workspace.
        let from_workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(&p);
        if p.is_relative() && !p.is_file() && from_workspace.is_file() {
            p = from_workspace;
        }
        return if p.is_file() {
            Ok(p)
        } else {
            Err(HarnessError::Missing(format!("VSWITCH_BIN={} is not a file", p.display())))
        };
    }
    if let Some(p) = option_env!("CARGO_BIN_EXE_vswitch") {
        if Path::new(p).is_file() {
            return Ok(PathBuf::from(p));
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target"));
    let release = target.join("release").join("vswitch");
    if release.is_file() {
        return Ok(release);
    }
    Err(HarnessError::Missing(format!(
        "the vswitch binary: this crate has no `vswitch` bin target yet and {} does not exist \
         (build it with `cargo build --release -p vswitch-datapath --bin vswitch`, or set \
         VSWITCH_BIN); the same test against DPDK's vhost back-end is the `_dpdk_vhost` variant",
        release.display()
    )))
}

/// A two-port switch listening on two vhost-user sockets and cross-connecting them; stopped
/// on drop.
#[derive(Debug)]
pub struct Switch {
    kind: SwitchKind,
    sockets: [PathBuf; 2],
    testpmd: Option<Testpmd>,
    vswitch: Option<Process>,
}

impl Switch {
    /// The feature words the frontends acked with `SET_FEATURES`, in order, from the trace of a
    /// switch started with [`start_traced`](Self::start_traced) (empty otherwise).
    pub fn acked_features(&self) -> Vec<u64> {
        self.output()
            .lines()
            .filter(|l| l.contains("<- SET_FEATURES "))
            .filter_map(|l| {
                let hex = l.rsplit('[').next()?.strip_suffix(']')?;
                let bytes: Vec<u8> = (0..hex.len() / 2)
                    .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
                    .collect();
                Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
            })
            .collect()
    }

    /// DPDK's vhost back-end on `<scratch>/sw0.sock` and `sw1.sock`.
    pub fn dpdk_vhost(scratch: &Scratch) -> Result<Self, HarnessError> {
        Self::start(SwitchKind::DpdkVhost, scratch)
    }

    /// The `vswitch` binary with `engine`, one PMD thread on [`SWITCH_CPU`].
    pub fn vswitch(scratch: &Scratch, engine: &str) -> Result<Self, HarnessError> {
        Self::start(SwitchKind::Vswitch(engine.to_owned()), scratch)
    }

    /// Starts `kind` and waits until both sockets exist.
    pub fn start(kind: SwitchKind, scratch: &Scratch) -> Result<Self, HarnessError> {
        Self::start_traced(kind, scratch, false)
    }

    /// [`start`](Self::start), with our switch logging every vhost-user request when `trace`
    /// (`VSWITCH_VHOST_TRACE`), so that [`acked_features`](Self::acked_features) can tell what
    /// the frontends negotiated.
    pub fn start_traced(kind: SwitchKind, scratch: &Scratch, trace: bool) -> Result<Self, HarnessError> {
        let sockets = [scratch.path("sw0.sock"), scratch.path("sw1.sock")];
        let mut sw = Switch { kind: kind.clone(), sockets, testpmd: None, vswitch: None };
        match &kind {
            SwitchKind::DpdkVhost => {
                let mut c = TestpmdConfig::dpdk_vhost_switch(&sw.sockets[0], &sw.sockets[1]);
                c.interactive = true;
                c.auto_start = false;
                let mut t = Testpmd::spawn(&c)?;
                // Hold packets rather than drop them when a guest's RX ring is full.
                t.command("set fwd io retry", Duration::from_secs(5))?;
                t.command("set burst tx delay 100 retry 100000", Duration::from_secs(5))?;
                t.command("start", Duration::from_secs(5))?;
                sw.testpmd = Some(t);
            }
            SwitchKind::Vswitch(engine) => {
                let bin = vswitch_binary()?;
                eprintln!("switch under test: {} --engine {engine}", bin.display());
                let mut cmd = Command::new(bin);
                for s in &sw.sockets {
                    cmd.arg("--port").arg(format!("vhost-user:{}", s.display()));
                }
                // The engine, then (space separated) any other arguments, e.g. "memcpy --pmd-cores 0,1".
                let mut words = engine.split_whitespace();
                let engine = words.next().unwrap_or_default();
                let extra: Vec<&str> = words.collect();
                cmd.arg("--engine").arg(engine);
                if !extra.contains(&"--pmd-cores") {
                    cmd.arg("--pmd-cores").arg(SWITCH_CPU.to_string());
                }
                cmd.args(&extra);
                cmd.arg("--stats-interval").arg("1");
                if trace {
                    cmd.env("VSWITCH_VHOST_TRACE", "1");
                }
                if engine.starts_with("dmadev:") {
                    let prefix = unique_name("ce-vswitch");
                    cmd.arg("--eal-args").arg(format!(
                        "--no-huge --no-pci -m 256 --file-prefix={prefix} --no-shconf \
                         --no-telemetry --vdev=dma_skeleton0"
                    ));
                }
                sw.vswitch = Some(Process::spawn(&format!("vswitch({engine})"), cmd)?);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sw.sockets.iter().all(|s| s.exists()) {
            if !sw.is_running() {
                return Err(sw.exited_error());
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!("{:?} to listen on {:?}", sw.kind, sw.sockets),
                    log: sw.output(),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(sw)
    }

    /// Which switch this is.
    pub fn kind(&self) -> &SwitchKind {
        &self.kind
    }

    /// Switch port `i`'s vhost-user socket.
    pub fn socket(&self, i: usize) -> &Path {
        &self.sockets[i]
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        match (&mut self.testpmd, &mut self.vswitch) {
            (Some(t), _) => t.is_running(),
            (_, Some(p)) => p.is_running(),
            _ => false,
        }
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        match (&self.testpmd, &self.vswitch) {
            (Some(t), _) => t.output(),
            (_, Some(p)) => p.output(),
            _ => String::new(),
        }
    }

    fn exited_error(&self) -> HarnessError {
        match (&self.testpmd, &self.vswitch) {
            (_, Some(p)) => p.exited_error(),
            _ => HarnessError::Exited { name: format!("{:?}", self.kind), status: None, log: self.output() },
        }
    }

    /// Sends `sig` to the switch and waits up to `timeout` for it to exit (SIGKILL after, and
    /// `None`); its sockets are left as it left them.
    pub fn signal_and_wait(&mut self, sig: libc::c_int, timeout: Duration) -> Option<ExitStatus> {
        match (&mut self.testpmd, &mut self.vswitch) {
            (Some(t), _) => t.process().signal_and_wait(sig, timeout),
            (_, Some(p)) => p.signal_and_wait(sig, timeout),
            _ => None,
        }
    }

    /// Panics with its output if it is no longer running.
    pub fn assert_running(&mut self) {
        if !self.is_running() {
            panic!("the switch {:?} died:\n{}", self.kind, tail(&self.output(), 4000));
        }
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        if let Some(mut t) = self.testpmd.take() {
            t.quit(Duration::from_secs(5));
        }
        if let Some(mut p) = self.vswitch.take() {
            p.terminate(Duration::from_secs(5));
        }
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
    }
}
