//! PVP demo: traffic source -> northbound into an in-process guest -> the guest loops every packet
//! back -> southbound -> sink, on one PMD thread, through the copy engine of your choice.
//!
//! `cargo run --release --bin pvp -- --help` documents every option and the exit codes.
//!
//! Prints a progress line every second and, at the end, Mpps, Gbit/s, PMD nanoseconds per packet,
//! copies offloaded vs done by the CPU, per-queue stats, and the sink's verdict (every packet back
//! in order with its payload intact). Exits non-zero if any packet was lost, reordered or corrupt.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use copy_engine::{Adaptive, Channel, CopyEngine, Policy};
use copy_engine_cpu::{MemcpyEngine, WorkerConfig, WorkerEngine};
use vswitch_datapath::loopguest::{LoopGuest, LoopGuestConfig};
use vswitch_datapath::{Northbound, Notifier, PacketPool, Pmd, Southbound, TrafficConfig, TrafficPort, VhostPort};

#[derive(Debug)]
struct Args {
    engine: String,
    min_len: usize,
    max_len: usize,
    duration: Duration,
    cpu_below: usize,
    mergeable: bool,
    adaptive: bool,
    /// Read by the dmadev engine only.
    #[cfg_attr(not(feature = "dmadev"), allow(dead_code))]
    eal_args: Option<String>,
}

/// `--engine`: memcpy, worker, dmadev:<name>, dsa:<wq> or dsa:model.
fn engine(v: &str) -> Result<String, String> {
    match v {
        "memcpy" | "worker" => Ok(v.to_string()),
        e if e.strip_prefix("dmadev:").is_some_and(|n| !n.is_empty()) => Ok(v.to_string()),
        e if e.strip_prefix("dsa:").is_some_and(|n| !n.is_empty()) => Ok(v.to_string()),
        _ => Err(format!("expected memcpy, worker, dmadev:<name>, dsa:<wq> or dsa:model, got {v:?}")),
    }
}

/// `--size`: BYTES or MIN-MAX, within 16..=9216.
fn size(v: &str) -> Result<(usize, usize), String> {
    let (lo, hi) = v.split_once('-').unwrap_or((v, v));
    let bad = || format!("expected BYTES or MIN-MAX within 16..=9216, got {v:?}");
    let (lo, hi) = (lo.parse::<usize>().map_err(|_| bad())?, hi.parse::<usize>().map_err(|_| bad())?);
    if lo < vswitch_datapath::traffic::MIN_PACKET || hi < lo || hi > 9216 {
        return Err(bad());
    }
    Ok((lo, hi))
}

/// `--duration`: seconds, a number > 0.
fn duration(v: &str) -> Result<Duration, String> {
    match v.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 1e9 => Ok(Duration::from_secs_f64(s.max(0.1))),
        _ => Err(format!("expected seconds (a number > 0), got {v:?}")),
    }
}

const EXIT_CODES: &str = "\
Exit codes:
  0  every packet came back, in order, intact
  1  a packet was lost, reordered or corrupted (the sink's verdict says which)
  2  a bad command line, or a failed start (an engine that does not open)";

/// PVP demo: traffic source -> northbound into an in-process guest that loops every packet back
/// -> southbound -> a sink that checks every packet, on one PMD thread, through the copy engine
/// of your choice.
#[derive(Debug, clap::Parser)]
#[command(name = "pvp", version, after_help = EXIT_CODES)]
struct Cli {
    /// The copy engine: memcpy, worker, dmadev:<name> (needs a build with the `dmadev` feature),
    /// dsa:<wq> (an idxd work queue, e.g. dsa:wq0.0) or dsa:model (the DSA device model).
    #[arg(long, default_value = "worker", value_parser = engine)]
    engine: String,
    /// Packet size in bytes, or a range MIN-MAX (16..=9216).
    #[arg(long, value_name = "BYTES|MIN-MAX", default_value = "64", value_parser = size)]
    size: (usize, usize),
    /// How long to run, in seconds.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = duration)]
    duration: Duration,
    /// Copies smaller than this many bytes are done by the CPU (0: offload every copy).
    #[arg(long, value_name = "BYTES", default_value_t = Policy::default().cpu_below)]
    cpu_below: usize,
    /// The guest posts one buffer per packet instead of mergeable RX buffers.
    #[arg(long)]
    no_mergeable: bool,
    /// No adaptive offload: every copy at or above --cpu-below goes to the engine.
    #[arg(long)]
    no_adaptive: bool,
    /// EAL arguments for a dmadev engine (default: DPDK's dma_skeleton, --no-huge --no-pci).
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    eal_args: Option<String>,
}

fn parse() -> Result<Args, clap::Error> {
    use clap::Parser;
    let c = Cli::try_parse()?;
    Ok(Args {
        engine: c.engine,
        min_len: c.size.0,
        max_len: c.size.1,
        duration: c.duration,
        cpu_below: c.cpu_below,
        mergeable: !c.no_mergeable,
        adaptive: !c.no_adaptive,
        eal_args: c.eal_args,
    })
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            // Help and version go to stdout with 0; a bad command line to stderr with 2.
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let policy = Policy::default().with_cpu_below(args.cpu_below).with_adaptive(args.adaptive.then(Adaptive::default));
    let result = match args.engine.as_str() {
        "memcpy" => run(Channel::new(MemcpyEngine::default(), policy), &args),
        "worker" => match WorkerEngine::new(WorkerConfig::default()) {
            Ok(e) => run(Channel::new(e, policy), &args),
            Err(e) => Err(format!("worker engine: {e}")),
        },
        other if other.starts_with("dmadev:") => dmadev(&other["dmadev:".len()..], policy, &args),
        other if other.strip_prefix("dsa:").is_some_and(|n| !n.is_empty()) => {
            dsa(&other["dsa:".len()..], policy, &args)
        }
        other => Err(format!("unknown engine {other:?}")),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("pvp: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(feature = "dmadev")]
fn dmadev(name: &str, policy: Policy, args: &Args) -> Result<bool, String> {
    use copy_engine_dmadev::{DmadevEngine, EalBuilder};
    let mut b = match &args.eal_args {
        Some(extra) => extra.split_whitespace().fold(EalBuilder::new(), |b, a| b.arg(a)),
        None => EalBuilder::skeleton(),
    };
    b = b.file_prefix(format!("pvp-{}", std::process::id()));
    let eal = b.init().map_err(|e| format!("EAL: {e}"))?;
    let engine = DmadevEngine::open(&eal, name, 1024).map_err(|e| e.to_string())?;
    run(Channel::new(engine, policy), args)
}

#[cfg(not(feature = "dmadev"))]
fn dmadev(_name: &str, _policy: Policy, _args: &Args) -> Result<bool, String> {
    Err("this build has no dmadev engine: rebuild with `--features dmadev` (needs libdpdk-dev)".into())
}

/// `dsa:<wq>` opens a user work queue through the kernel's idxd driver; `dsa:model` runs the
/// software device model instead (no hardware).
#[cfg(feature = "dsa")]
fn dsa(wq: &str, policy: Policy, args: &Args) -> Result<bool, String> {
    use copy_engine_dsa::{DsaConfig, DsaEngine, ModelConfig};
    if wq == "model" {
        let engine = DsaEngine::model(ModelConfig::default(), DsaConfig::default()).map_err(|e| e.to_string())?;
        return run(Channel::new(engine, policy), args);
    }
    let engine = DsaEngine::open(wq, DsaConfig::default()).map_err(|e| format!("dsa {wq:?}: {e}"))?;
    run(Channel::new(engine, policy), args)
}

#[cfg(not(feature = "dsa"))]
fn dsa(_wq: &str, _policy: Policy, _args: &Args) -> Result<bool, String> {
    Err("this build has no DSA engine: rebuild with `--features dsa`".into())
}

fn run<E: CopyEngine>(chan: Channel<E>, args: &Args) -> Result<bool, String> {
    let engine_name = chan.with_engine(|e| e.info().name.clone());
    let hdr_len = 12;
    let buf_len = if args.mergeable { 2048 } else { (args.max_len + hdr_len).next_multiple_of(64) as u32 as usize };
    let gcfg = LoopGuestConfig { buf_len: buf_len as u32, mergeable: args.mergeable, ..LoopGuestConfig::default() };
    let mut guest = LoopGuest::new(gcfg);
    let (rxq, txq) = guest.device_queues();
    let vhost = VhostPort::new(
        "vhost0",
        Northbound::new(rxq, hdr_len, args.mergeable, Notifier::Polling),
        Southbound::new(txq, hdr_len, Notifier::Polling),
    );
    let traffic = TrafficPort::new(
        "traffic",
        TrafficConfig { min_len: args.min_len, max_len: args.max_len, budget: None, verify_payload: true },
    );
    let mut pmd = Pmd::new(chan, PacketPool::new(1024, args.max_len.max(2048)));
    let t = pmd.add_port(Box::new(traffic));
    let v = pmd.add_port(Box::new(vhost));
    pmd.connect(t, v);
    pmd.connect(v, t);

    println!(
        "pvp: engine {engine_name}, packets {}..={} B, {} s, mergeable {}, CPU copies below {} B",
        args.min_len,
        args.max_len,
        args.duration.as_secs_f64(),
        args.mergeable,
        pmd.channel().policy().cpu_below
    );
    let start = Instant::now();
    let mut busy = Duration::ZERO;
    let mut next_report = start + Duration::from_secs(1);
    let mut last = (0u64, start);
    let traffic = |pmd: &Pmd<E>| -> (u64, u64) {
        let tp = pmd.port(t).as_any().downcast_ref::<TrafficPort>().expect("traffic port");
        (tp.generated(), tp.received())
    };
    loop {
        for _ in 0..16 {
            let t0 = Instant::now();
            if pmd.run_once() != 0 {
                busy += t0.elapsed();
            }
        }
        guest.poll();
        let now = Instant::now();
        if now >= next_report {
            let got = traffic(&pmd).1;
            let rate = (got - last.0) as f64 / (now - last.1).as_secs_f64() / 1e6;
            let inflight = pmd.channel().in_flight();
            println!(
                "  t={:>4.1}s  {rate:>7.3} Mpps  {got:>10} packets  {inflight:>4} copies in flight",
                (now - start).as_secs_f64()
            );
            last = (got, now);
            next_report += Duration::from_secs(1);
        }
        if now - start >= args.duration {
            break;
        }
    }
    let elapsed = start.elapsed();
    let (got_at_end, _) = (traffic(&pmd).1, ());
    // Stop the source and let every packet in the loop come home, then stop every queue (which
    // drains every copy in flight).
    pmd.port_mut(t).0.as_any_mut().downcast_mut::<TrafficPort>().expect("traffic port").stop_generating();
    let deadline = Instant::now() + Duration::from_secs(5);
    while traffic(&pmd).0 != traffic(&pmd).1 && Instant::now() < deadline {
        pmd.run_once();
        guest.poll();
    }
    pmd.stop();

    let tp = pmd.port(t).as_any().downcast_ref::<TrafficPort>().expect("traffic port");
    let (sent, got, err) = (tp.generated(), tp.received(), tp.first_error());
    let bytes = pmd.port(t).stats().tx_bytes * got_at_end / got.max(1);
    let secs = elapsed.as_secs_f64();
    let pol = pmd.channel().stats();
    println!("\nresult ({engine_name}):");
    println!(
        "  {:.3} Mpps, {:.2} Gbit/s of payload through the loop",
        got_at_end as f64 / secs / 1e6,
        bytes as f64 * 8.0 / secs / 1e9
    );
    let traffic_ns = tp.busy_time().as_nanos() as f64 / got.max(1) as f64;
    let busy_ns = busy.as_nanos() as f64 / got_at_end.max(1) as f64;
    println!(
        "  PMD thread: {:.1} ns busy per packet, of which {:.1} ns generating and checking traffic: \
         {:.1} ns vhost datapath (idle polls and the guest excluded)",
        busy_ns,
        traffic_ns,
        (busy_ns - traffic_ns).max(0.0)
    );
    println!(
        "  copies: {} offloaded, {} by CPU ({} below threshold, {} engine lagging, {} ring full, {} retried), \
         {} errors; adaptive offload went to the CPU {} times, back to the engine {} times",
        pol.offloaded,
        pol.cpu_copies(),
        pol.cpu_small,
        pol.cpu_adaptive,
        pol.cpu_ring_full,
        pol.cpu_retry,
        pol.errors,
        pol.adaptive_to_cpu,
        pol.adaptive_to_engine
    );
    for (name, s) in pmd.port_stats() {
        println!(
            "  port {name:>8}: rx {} pkts, tx {} pkts, pushed back {}, drops {}, errors {}, in flight {}",
            s.rx_packets, s.tx_packets, s.tx_pushed_back, s.drops, s.errors, s.in_flight
        );
    }
    if let Some((north, south)) = pmd.port(v).queue_stats() {
        for (q, s) in [("north (guest rx)", north), ("south (guest tx)", south)] {
            println!(
                "  queue {q}: {} pkts, {} bytes, offloaded {} / CPU {} copies, no-buffer {}, bad chains {}, broken {}, notifications {} (+{} suppressed)",
                s.packets, s.bytes, s.copies_offloaded, s.copies_cpu, s.no_buffers, s.bad_chains, s.broken, s.notifications, s.notifications_suppressed
            );
        }
    }
    let lost = sent - got;
    match err {
        None if lost == 0 => {
            println!("  sink: all {got} packets back, in order, payload intact");
            Ok(true)
        }
        _ => {
            println!("  sink: {lost} of {sent} packets missing; first error: {err:?}");
            Ok(false)
        }
    }
}
