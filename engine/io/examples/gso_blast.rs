//! gso_blast: sender → 1 receiver throughput on loopback multicast, GSO against no GSO, in
//! one run, with the ratio.
//!
//! ```text
//! cargo run --release -p blockcast-io --example gso_blast -- [--secs 2] [--seg 1400]
//!                                           [--flush-every 8] [--rounds 1]
//! ```
//!
//! Network safety: loopback only. The group is 239.255.x.y (x from the process id), the
//! sender sets IP_MULTICAST_IF = 127.0.0.1 and TTL 1, the receiver joins on 127.0.0.1 with
//! IP_MULTICAST_ALL off; there is no option to pick another interface.
//!
//! Modes (each runs `--secs`, default 2 s; sender pinned to core 0, receiver to core 1;
//! with `--rounds N` the modes alternate N times and the median of each is compared):
//! * `gso-gather`: SendRing super-buffers of `[8-byte header | payload slice]` segments,
//!   as the engine sends units from a mapping (`push`, 2 iovecs per segment);
//! * `gso-run`: SendRing super-buffers that are one contiguous slice (`push_run`, 1 iovec),
//!   to show what the gather costs;
//! * `no-gso`: SendRing with one datagram per request (`max_segments = 1`).
//!
//! The receiver uses RecvBatch (recvmmsg 64 × 64 KiB, UDP_GRO on). "GB/s" is UDP payload
//! delivered to the receiver per second, between its first and last datagram (10^9 bytes).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use blockcast_io::{
    MulticastReceiver, MulticastSender, RecvBatch, SendRing, SendRingConfig, SendStats, Source,
    GRO_BUFFER_SIZE,
};

const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;
const HEADER: usize = 8;
const SOURCE_BYTES: usize = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    GsoGather,
    GsoRun,
    NoGso,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::GsoGather => "gso-gather",
            Mode::GsoRun => "gso-run",
            Mode::NoGso => "no-gso",
        }
    }
}

struct Args {
    secs: f64,
    seg: u16,
    flush_every: usize,
    rounds: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        secs: 2.0,
        seg: 1400,
        flush_every: 8,
        rounds: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--secs" => a.secs = v.parse().map_err(|e| format!("--secs: {e}"))?,
            "--seg" => a.seg = v.parse().map_err(|e| format!("--seg: {e}"))?,
            "--flush-every" => {
                a.flush_every = v.parse().map_err(|e| format!("--flush-every: {e}"))?
            }
            "--rounds" => a.rounds = v.parse().map_err(|e| format!("--rounds: {e}"))?,
            _ => return Err(format!("unknown option {k}")),
        }
    }
    if !(0.1..=10.0).contains(&a.secs) {
        return Err("--secs must be 0.1..=10".into());
    }
    if usize::from(a.seg) <= HEADER || usize::from(a.seg) > 65_507 {
        return Err("--seg must be 9..=65507".into());
    }
    a.flush_every = a.flush_every.clamp(1, 32);
    if !(1..=9).contains(&a.rounds) {
        return Err("--rounds must be 1..=9".into());
    }
    Ok(a)
}

/// Pins the calling thread to `cpu` (best effort: a machine with one core just runs unpinned).
fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit inside `set` (cpu < CPU_SETSIZE is checked by libc's
    // implementation, which ignores larger values).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t and its size is passed; pid 0 = this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        eprintln!(
            "note: could not pin to cpu {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_THREAD_CPUTIME_ID always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

struct RxResult {
    datagrams: u64,
    bytes: u64,
    window: Duration,
    cpu: Duration,
    rcvbuf: usize,
}

/// Errors end the run with a message (no unwrap/expect on OS results, even in an example).
type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn receiver(rx: MulticastReceiver, done: Arc<AtomicBool>) -> Res<RxResult> {
    pin(1);
    let cpu0 = thread_cpu();
    let mut batch = RecvBatch::new(64, GRO_BUFFER_SIZE)?;
    let (mut datagrams, mut bytes) = (0u64, 0u64);
    let (mut first, mut last) = (None, Instant::now());
    let hard_stop = Instant::now() + Duration::from_secs(30);
    while Instant::now() < hard_stop {
        let n = batch.recv(&rx, Duration::from_millis(200))?;
        if n == 0 {
            // Acquire pairs with the sender's Release store once it has drained its ring.
            if done.load(Ordering::Acquire) {
                break;
            }
            continue;
        }
        let now = Instant::now();
        first.get_or_insert(now);
        last = now;
        for d in batch.iter() {
            datagrams += d.segments().count() as u64;
            bytes += d.bytes.len() as u64;
        }
    }
    Ok(RxResult {
        datagrams,
        bytes,
        window: first.map(|f| last - f).unwrap_or_default(),
        cpu: thread_cpu() - cpu0,
        rcvbuf: rx.recv_buffer().effective,
    })
}

struct TxResult {
    stats: SendStats,
    elapsed: Duration,
    cpu: Duration,
}

fn sender(tx: MulticastSender, mode: Mode, args: &Args, source: &Source) -> Res<TxResult> {
    pin(0);
    let seg = usize::from(args.seg);
    let cfg = SendRingConfig {
        max_segments: if mode == Mode::NoGso { 1 } else { 64 },
        ..SendRingConfig::default()
    };
    let mut ring = SendRing::new(tx, cfg)?;
    let units = SOURCE_BYTES / seg;
    let cpu0 = thread_cpu();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.secs);
    let mut seq = 0u64;
    let mut since_flush = 0;
    while Instant::now() < deadline {
        while ring.free_slots() == 0 {
            ring.wait(Duration::from_millis(100))?;
        }
        let mut b = ring.batch(args.seg)?;
        let n = b.room();
        match mode {
            Mode::GsoGather | Mode::NoGso => {
                let payload = seg - HEADER;
                for _ in 0..n {
                    let off = (seq as usize % units) * payload;
                    b.push(&seq.to_be_bytes(), source, off..off + payload)?;
                    seq += 1;
                }
            }
            Mode::GsoRun => {
                let len = n * seg;
                let off = (seq as usize * seg) % (SOURCE_BYTES - len);
                // One contiguous slice: the kernel cuts it every `seg` bytes.
                b.push_run(source, off..off + len)?;
                seq += n as u64;
            }
        }
        b.submit()?;
        since_flush += 1;
        if since_flush >= args.flush_every {
            since_flush = 0;
            ring.flush()?;
        }
    }
    if !ring.drain(Duration::from_secs(5))? {
        eprintln!("warning: sends still in flight after 5 s");
    }
    Ok(TxResult {
        stats: ring.stats(),
        elapsed: start.elapsed(),
        cpu: thread_cpu() - cpu0,
    })
}

struct Row {
    mode: Mode,
    gbps: f64,
}

fn run(mode: Mode, args: &Args, source: &Source) -> Res<Row> {
    // A port reserved on 127.0.0.1 for the run, a group octet from the pid: no collisions
    // with anything else running on this host.
    let hold = std::net::UdpSocket::bind((LO, 0))?;
    let port = hold.local_addr()?.port();
    let octet = (std::process::id() % 256) as u8;
    let group = SocketAddrV4::new(Ipv4Addr::new(239, 255, octet, 200), port);
    let rx = MulticastReceiver::new(group, LO, 16 << 20, true)?;
    if rx.recv_buffer().capped_by_sysctl {
        eprintln!(
            "warning: rcvbuf capped at {} bytes: raise net.core.rmem_max (or run as root)",
            rx.recv_buffer().effective
        );
    }
    let tx = MulticastSender::new(group, LO, 1, 0)?;
    let done = Arc::new(AtomicBool::new(false));
    let rx_thread = {
        let done = Arc::clone(&done);
        thread::spawn(move || receiver(rx, done))
    };
    let t = sender(tx, mode, args, source);
    // Release: the receiver may stop once it sees this and its socket is empty.
    done.store(true, Ordering::Release);
    let r = rx_thread.join().map_err(|_| "receiver thread panicked")??;
    let t = t?;
    drop(hold);

    let secs = r.window.as_secs_f64().max(1e-9);
    let gbps = r.bytes as f64 / secs / 1e9;
    let sent = t.stats.segments_sent;
    let loss = if sent > 0 {
        100.0 * (sent.saturating_sub(r.datagrams)) as f64 / sent as f64
    } else {
        0.0
    };
    println!(
        "{:<11} {:>7.3} {:>8.2} {:>10} {:>10} {:>6.2}% {:>9.0} {:>9.0} {:>5.0}% {:>5.0}% {:>9} {:>6} {:>5} {:>6}",
        mode.name(),
        gbps,
        r.datagrams as f64 / secs / 1e6,
        sent,
        r.datagrams,
        loss,
        t.cpu.as_nanos() as f64 / sent.max(1) as f64,
        r.cpu.as_nanos() as f64 / r.datagrams.max(1) as f64,
        100.0 * t.cpu.as_secs_f64() / t.elapsed.as_secs_f64(),
        100.0 * r.cpu.as_secs_f64() / secs,
        t.stats.enter_calls,
        t.stats.batches_failed(),
        r.rcvbuf >> 20,
        t.stats.segments_sent / t.stats.batches_sent.max(1),
    );
    Ok(Row { mode, gbps })
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gso_blast: {e}");
            std::process::exit(2);
        }
    };
    let source: Source = Arc::new(
        (0..SOURCE_BYTES)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    println!(
        "gso_blast: loopback multicast, {}-byte datagrams, {:.1} s per mode, flush every {} requests",
        args.seg, args.secs, args.flush_every
    );
    println!(
        "{:<11} {:>7} {:>8} {:>10} {:>10} {:>7} {:>9} {:>9} {:>6} {:>6} {:>9} {:>6} {:>5} {:>6}",
        "mode",
        "GB/s",
        "Mpps",
        "sent",
        "received",
        "loss",
        "tx ns/dg",
        "rx ns/dg",
        "tx cpu",
        "rx cpu",
        "enters",
        "failed",
        "rbMiB",
        "seg/rq"
    );
    let modes = [Mode::GsoGather, Mode::GsoRun, Mode::NoGso];
    let mut rows: Vec<Row> = Vec::new();
    for _ in 0..args.rounds {
        for m in modes {
            match run(m, &args, &source) {
                Ok(row) => rows.push(row),
                Err(e) => {
                    eprintln!("gso_blast: {}: {e}", m.name());
                    std::process::exit(1);
                }
            }
        }
    }
    let sorted = |m: Mode| {
        let mut v: Vec<f64> = rows
            .iter()
            .filter(|r| r.mode == m)
            .map(|r| r.gbps)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let median = |m: Mode| {
        let v = sorted(m);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    println!("median (min-max) of {} round(s), GB/s:", args.rounds);
    for m in modes {
        let v = sorted(m);
        println!(
            "  {:<11} {:.3} ({:.3}-{:.3})",
            m.name(),
            median(m),
            v.first().copied().unwrap_or(0.0),
            v.last().copied().unwrap_or(0.0)
        );
    }
    let (gather, run_, no_gso) = (
        median(Mode::GsoGather),
        median(Mode::GsoRun),
        median(Mode::NoGso),
    );
    println!(
        "ratio gso-gather / no-gso = {:.2}x; gso-run / no-gso = {:.2}x; gso-gather / gso-run = {:.2}",
        gather / no_gso.max(1e-9),
        run_ / no_gso.max(1e-9),
        gather / run_.max(1e-9)
    );
}
