//! One origin, content on request: the time from a fetch's request to its first byte, and the
//! aggregate throughput of 1, 2 and 4 sessions at once (one object each, one receiver each),
//! with the CPU both sides used. Everything runs in this process over loopback (interface
//! 127.0.0.1, TTL 1, groups in 239.255.88.0/24); the catalog and the copies live in a
//! directory on tmpfs by default, so neither side waits for a disk; every copy is verified.
//!
//! `cargo run --release -p blockcast-bench --bin origin -- --size 256M --runs 3`
//!
//! Latency: `--latency-runs` fetches of a one-block object, one after the other, each a new
//! session (batching window 0: the session starts as soon as its one receiver has joined).
//! Request-to-first-byte is from calling fetch to the first data unit kept by the receiver;
//! request-to-whole adds the object's transfer, verification and rename into place.
//! Throughput: the cases run interleaved (push, 1, 2, 4, push, 1, 2, 4, ...); a case's figure
//! is the median of its runs, its slowest run beside it. "push" is the baseline: `serve` of
//! the same object to one receiver in this process (its hashes cached beforehand, as the
//! origin's are), no origin. GB/s = bytes fetched by all / wall time
//! from the first request to the last object in place. CPU: the cores this process kept busy
//! (its user + system time over the wall time; 2.0 = both cores), its receivers' share of
//! that, and the cores busy on the whole machine meanwhile (/proc/stat: on a shared machine,
//! what everyone else took too).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use blockcast_bench::{median, size};
use blockcast_node::client::ClientConfig;
use blockcast_node::events::{EventSink, NodeEvent};
use blockcast_node::fetch::{fetch_one, FetchConfig, Fetched};
use blockcast_node::local::{local_receivers, run_local, write_sample};
use blockcast_node::origin::{origin, GroupPool, OriginConfig};
use blockcast_node::{collect_inputs, hash_inputs, HashCache, ServeConfig};
use blockcast_proto::Geometry;
use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// Bytes of each object of the throughput runs (k, M, G suffixes).
    #[arg(long, default_value = "256M")]
    size: String,
    /// Concurrent sessions of each throughput case.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    sessions: Vec<usize>,
    /// Runs of each throughput case.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Fetches of the one-block object for the latency figures.
    #[arg(long, default_value_t = 20)]
    latency_runs: usize,
    /// Send rate of each session, bytes per second ("auto" follows its receiver).
    #[arg(long, default_value = "auto")]
    rate: String,
    /// Data threads per session.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, default_value_t = 1400)]
    unit_size: u16,
    /// Directory for the catalog and the copies (default: a new one under /dev/shm).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// CPU seconds (user + system) this process has used, its exited threads included.
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

/// The machine's CPU time so far, every process's: (busy, all) in ticks (/proc/stat).
fn machine_ticks() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let all: f64 = v.iter().take(8).sum();
    // idle and iowait are fields 4 and 5.
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (all - idle, all)
}

/// What a case measures around `f`: the process's CPU and the machine's, over the wall time.
fn measured(bytes: u64, f: impl FnOnce() -> f64) -> Case {
    let (cpu0, (busy0, all0)) = (process_cpu_seconds(), machine_ticks());
    let t0 = Instant::now();
    let receivers_cpu = f();
    let wall = t0.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu0;
    let (busy1, all1) = machine_ticks();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    Case {
        gbps: bytes as f64 / wall / 1e9,
        cpu: cpu / wall,
        receivers_cpu: receivers_cpu / wall,
        machine: (busy1 - busy0) / (all1 - all0).max(1.0) * cores,
    }
}

struct Bench {
    fetch: FetchConfig,
    dir: PathBuf,
    runs: AtomicUsize,
}

impl Bench {
    /// Fetches `name` into a directory of its own (so nothing is held already).
    fn fetch(&self, name: &str) -> Fetched {
        let n = self.runs.fetch_add(1, Ordering::Relaxed);
        let mut cfg = self.fetch.clone();
        cfg.out = self.dir.join(format!("out-{n}"));
        let events: EventSink = blockcast_node::events::discard();
        let stop = AtomicBool::new(false);
        let r = fetch_one(&cfg, name, None, &stop, &events, &mut |_| {})
            .unwrap_or_else(|e| panic!("fetch {name}: {e}"));
        let _ = std::fs::remove_dir_all(&cfg.out);
        r
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn latency(b: &Bench, runs: usize) {
    let (mut first, mut whole) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t0 = Instant::now();
        let f = b.fetch("tiny.bin");
        let end = Instant::now();
        let at = f
            .receive
            .as_ref()
            .and_then(|r| r.first_unit_at)
            .expect("a fetched object has a first unit");
        first.push(ms(at.saturating_duration_since(t0)));
        whole.push(ms(end - t0));
    }
    let worst = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    println!(
        "latency ({runs} fetches of a one-block object, each a new session): request to first byte \
         median {:.1} ms (slowest {:.1} ms); request to whole object in place median {:.1} ms \
         (slowest {:.1} ms)",
        median(first.clone()),
        worst(&first),
        median(whole.clone()),
        worst(&whole)
    );
}

struct Case {
    gbps: f64,
    /// Cores this process kept busy.
    cpu: f64,
    /// Of which its receivers.
    receivers_cpu: f64,
    /// Cores busy on the whole machine (this process and everyone else's).
    machine: f64,
}

fn concurrent(b: &Bench, n: usize, bytes: u64) -> Case {
    measured(bytes * n as u64, || {
        let fetched: Vec<Fetched> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|i| s.spawn(move || b.fetch(&format!("obj{i}.bin"))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a fetch thread"))
                .collect()
        });
        assert!(fetched.iter().all(|f| f.bytes == bytes));
        fetched
            .iter()
            .filter_map(|f| f.receive.as_ref().map(|r| r.cpu_seconds))
            .sum()
    })
}

/// The baseline: one `serve` of `obj0.bin` to one receiver, no origin.
fn push(b: &Bench, serve: &ServeConfig, bytes: u64) -> Case {
    let n = b.runs.fetch_add(1, Ordering::Relaxed);
    let out = b.dir.join(format!("out-{n}"));
    std::fs::create_dir_all(&out).expect("an output directory");
    let mut serve = serve.clone();
    serve.session = 0x5000 + n as u32;
    let receivers = local_receivers(
        serve.group,
        serve.iface,
        std::slice::from_ref(&out),
        Duration::from_secs(30),
        u64::from(serve.session) << 8,
    );
    let stop = AtomicBool::new(false);
    measured(bytes, || {
        let run = run_local(&serve, &receivers, &stop, &mut |_| {});
        run.served.expect("the push session");
        let r = run
            .received
            .into_iter()
            .next()
            .expect("one receiver")
            .expect("the push receiver");
        assert_eq!(r.bytes, bytes);
        let _ = std::fs::remove_dir_all(&out);
        r.cpu_seconds
    })
}

fn main() {
    let a = Args::parse();
    let bytes = size(&a.size);
    let dir = a.dir.clone().unwrap_or_else(|| {
        PathBuf::from("/dev/shm").join(format!("blockcast-origin-bench-{}", std::process::id()))
    });
    let catalog = dir.join("catalog");
    std::fs::create_dir_all(&catalog).expect("the bench directory");
    let most = a.sessions.iter().copied().max().unwrap_or(1);
    for i in 0..most {
        write_sample(&catalog.join(format!("obj{i}.bin")), bytes, 100 + i as u64)
            .expect("a sample");
    }
    let upb = ((1u32 << 20) / u32::from(a.unit_size)).clamp(1, 32_768) as u16;
    let block = u64::from(a.unit_size) * u64::from(upb);
    write_sample(&catalog.join("tiny.bin"), block, 7).expect("a sample");

    let iface = Ipv4Addr::LOCALHOST;
    let listen = SocketAddr::from((iface, 30_000 + (std::process::id() % 5_000) as u16));
    let rate = match a.rate.as_str() {
        "auto" => None,
        r => Some(size(r)),
    };
    let cfg = OriginConfig {
        catalog: catalog.clone(),
        iface,
        listen,
        groups: GroupPool::parse("239.255.88.0/24").expect("a pool"),
        data_port: 36_000 + (std::process::id() % 5_000) as u16,
        ttl: 1,
        rate,
        geometry: Geometry {
            unit_size: a.unit_size,
            units_per_block: upb,
            max_parity: upb.min(128),
        },
        batch_window: Duration::ZERO,
        join_grace: Duration::from_secs(2),
        threads: a.threads,
        max_sessions: 16,
        signer: None,
        hash_cache: None,
        critical: None,
        rescan: Duration::from_millis(100),
        settle: Duration::ZERO,
        answers_per_sec: 2_000.0,
        receiver_timeout: Duration::from_secs(10),
        originals_factor: blockcast_proto::ORIGINALS_FACTOR,
        xor_repairs: true,
        http: None,
        metrics: None,
    };
    let hashes = HashCache::new(dir.join("hashes"));
    let push_cfg = ServeConfig {
        inputs: collect_inputs(&[catalog.join("obj0.bin")]).expect("obj0.bin"),
        group: SocketAddrV4::new(Ipv4Addr::new(239, 255, 87, 1), cfg.data_port + 100),
        iface,
        control_port: 0,
        ttl: 1,
        rate,
        geometry: cfg.geometry,
        min_receivers: 1,
        max_wait: Duration::from_secs(10),
        deadline: Some(Duration::from_secs(600)),
        session: 0x5000,
        threads: a.threads,
        split: false,
        receiver_timeout: Duration::from_secs(10),
        originals_factor: blockcast_proto::ORIGINALS_FACTOR,
        xor_repairs: true,
        hash_cache: Some(hashes.clone()),
        signer: None,
        statement: None,
        core_offset: 0,
        gate: None,
        secret: None,
        datapath: blockcast_node::Datapath::Socket,
    };
    let objects = most + 1;
    // The origin says when its catalog is whole.
    let (hashed_tx, hashed) = mpsc::channel();
    let hashed_tx = Mutex::new(hashed_tx);
    let events: EventSink = Arc::new(move |e| {
        if let NodeEvent::Catalog {
            objects: n,
            unready: 0,
            ..
        } = e
        {
            if n == objects {
                let _ = hashed_tx.lock().map(|t| t.send(()));
            }
        }
    });
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let server = std::thread::Builder::new()
            .name("bc-origin".into())
            .spawn_scoped(s, || origin(&cfg, &stop, events, &mut |_| {}))
            .expect("the origin thread");
        hashed
            .recv_timeout(Duration::from_secs(600))
            .expect("the origin hashed its catalog");
        let bench = Bench {
            fetch: FetchConfig {
                client: ClientConfig {
                    origin: listen,
                    iface,
                    timeout: Duration::from_secs(10),
                    trust: Vec::new(),
                },
                out: dir.clone(),
                receive_timeout: Duration::from_secs(30),
                rcvbuf: 32 << 20,
                threads: 1,
                retries: 3,
            },
            dir: dir.clone(),
            runs: AtomicUsize::new(0),
        };
        println!(
            "origin on loopback: {} object(s) of {} bytes, unit {} B, rate {}, {} data thread(s) per session, {} core(s)",
            most,
            bytes,
            a.unit_size,
            a.rate,
            a.threads,
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
        latency(&bench, a.latency_runs);
        // The push baseline's hashes, made now (the cache takes a file left alone for 2 s).
        hash_inputs(&push_cfg.inputs, cfg.geometry.block_size(), Some(&hashes))
            .expect("obj0.bin hashed");
        // Case 0 is the push baseline, then each number of sessions.
        let mut results: Vec<Vec<Case>> = (0..=a.sessions.len()).map(|_| Vec::new()).collect();
        for _ in 0..a.runs {
            results[0].push(push(&bench, &push_cfg, bytes));
            for (i, &n) in a.sessions.iter().enumerate() {
                results[i + 1].push(concurrent(&bench, n, bytes));
            }
        }
        println!("| case | aggregate GB/s, median (slowest) | vs push | cores this process kept busy | of which receivers | cores busy on the machine |");
        println!("|---|---:|---:|---:|---:|---:|");
        let base = median(results[0].iter().map(|c| c.gbps).collect());
        let names = std::iter::once("push: serve, 1 receiver".to_string()).chain(
            a.sessions
                .iter()
                .map(|n| format!("origin: {n} session(s) at once")),
        );
        for (name, cases) in names.zip(&results) {
            let g = median(cases.iter().map(|c| c.gbps).collect());
            let slowest = cases.iter().map(|c| c.gbps).fold(f64::MAX, f64::min);
            println!(
                "| {name} | {g:.2} ({slowest:.2}) | {:.2}x | {:.2} | {:.2} | {:.2} |",
                g / base,
                median(cases.iter().map(|c| c.cpu).collect()),
                median(cases.iter().map(|c| c.receivers_cpu).collect()),
                median(cases.iter().map(|c| c.machine).collect()),
            );
        }
        stop.store(true, Ordering::Relaxed);
        let _ = server.join();
    });
    let _ = std::fs::remove_dir_all(&dir);
}
