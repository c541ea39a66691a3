//! Loopback throughput: one server and N receivers in this process, over loopback multicast
//! (interface 127.0.0.1, TTL 1), a file in the page cache, every copy verified.
//!
//! `cargo run --release -p blockcast-bench --bin loopback -- --size 1G --receivers 1,4 --unit-sizes 1400,8972`
//!
//! `--sign plain,signed,secret` runs each configuration unsigned, signed (`serve --sign`,
//! receivers with `--trust`) and in a closed group (`--secret`: every datagram sealed with
//! AEGIS-256X4 and opened by each receiver; docs/wire.md §16), keys and secrets made at run
//! time, interleaved, to measure what signing and sealing cost.
//!
//! Configurations run interleaved (A B A B ...) and each figure is the median of the runs.
//! GB/s per receiver = bytes / (first data unit -> every block verified), the slowest
//! receiver; fsync at the end is reported separately. CPU s/GB: the server's threads, and
//! the receivers' threads per receiver, per GB delivered.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use blockcast_bench::{median, size};
use blockcast_node::local::{cpu_ticks, local_receivers, run_local, steal_pct, write_sample};
use blockcast_node::{Input, ServeConfig};
use blockcast_proto::Geometry;
use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// Bytes to send (k, M, G suffixes).
    #[arg(long, default_value = "1G")]
    size: String,
    /// Receiver counts to run, comma-separated.
    #[arg(long, default_value = "1,4")]
    receivers: String,
    /// Unit sizes to run, comma-separated (8972 is the largest that fits a 9000-byte MTU;
    /// loopback's MTU is 65536).
    #[arg(long, default_value = "1400,8972")]
    unit_sizes: String,
    /// Send rate, bytes per second ("auto" adapts to loss).
    #[arg(long, default_value = "auto")]
    rate: String,
    /// Server data threads (stripes) to run, comma-separated.
    #[arg(long, default_value = "1")]
    threads: String,
    /// Receive threads per receiver to run, comma-separated (they matter when the server has
    /// several stripes: stripe s arrives on the group's port + s).
    #[arg(long, default_value = "1")]
    recv_threads: String,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Sessions to run, comma-separated: "plain" (unsigned), "signed" (the server signs with a
    /// key made at run time, receivers trust only it), "secret" (a closed group: a secret
    /// made at run time seals every datagram both ways).
    #[arg(long, default_value = "plain")]
    sign: String,
    /// Directory for the source and the copies (a disk-backed file system: page cache).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Each receiver's block buffers, MiB (`receive --block-buffers`); default: the
    /// receiver's default.
    #[arg(long, value_name = "MIB")]
    block_buffers: Option<usize>,
}

struct Run {
    gbps: f64,
    server_cpu_per_gb: f64,
    receiver_cpu_per_gb: f64,
    sync_s: f64,
    repairs: u64,
    ok: bool,
    /// Per cent of the machine's CPU time the hypervisor took while the run ran.
    steal_pct: f64,
}

/// One configuration of one run.
#[derive(Clone, Copy)]
struct Spec {
    bytes: u64,
    receivers: usize,
    unit: u16,
    rate: Option<u64>,
    threads: usize,
    recv_threads: usize,
    session: Session,
    tag: u16,
    block_buffers: Option<usize>,
}

/// How a session is protected.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Session {
    Plain,
    Signed,
    Secret,
}

impl Session {
    fn parse(s: &str) -> Session {
        match s.trim() {
            "plain" => Session::Plain,
            "signed" => Session::Signed,
            "secret" => Session::Secret,
            other => panic!("--sign takes plain, signed and/or secret, not {other:?}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Session::Plain => "plain",
            Session::Signed => "signed",
            Session::Secret => "secret",
        }
    }
}

fn one_run(src: &Path, dir: &Path, spec: &Spec) -> Run {
    let Spec {
        bytes,
        receivers: n,
        unit,
        rate,
        threads,
        recv_threads,
        session,
        tag,
        block_buffers,
    } = *spec;
    let ticks = cpu_ticks();
    let signed = session == Session::Signed;
    let secret = (session == Session::Secret).then(|| {
        blockcast_node::Secret::new(blockcast_node::keys::random_bytes().expect("randomness"))
    });
    let signer = signed.then(|| {
        blockcast_proto::auth::Signer::from_seed(
            &blockcast_node::keys::random_bytes().expect("randomness"),
        )
    });
    let iface = Ipv4Addr::LOCALHOST;
    let group = SocketAddrV4::new(
        Ipv4Addr::new(239, 255, 77, (tag % 250) as u8 + 1),
        30_000 + tag,
    );
    let upb = ((1u32 << 20) / u32::from(unit)).clamp(1, 32_768) as u16;
    let scfg = ServeConfig {
        inputs: vec![Input {
            path: src.to_path_buf(),
            name: "src.bin".into(),
        }],
        group,
        iface,
        control_port: 0,
        ttl: 1,
        rate,
        geometry: Geometry {
            unit_size: unit,
            units_per_block: upb,
            max_parity: upb.min(128),
        },
        min_receivers: n,
        max_wait: Duration::from_secs(10),
        deadline: Some(Duration::from_secs(300)),
        session: u32::from(tag) << 8 | 1,
        threads,
        split: false,
        receiver_timeout: Duration::from_secs(10),
        originals_factor: blockcast_proto::ORIGINALS_FACTOR,
        xor_repairs: true,
        hash_cache: None,
        signer: signer.clone(),
        statement: None,
        core_offset: 0,
        gate: None,
        secret: secret.clone(),
        datapath: blockcast_node::Datapath::Socket,
    };
    let stop = AtomicBool::new(false);
    let outs: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("copy-{i}.bin"))).collect();
    let mut rcfgs = local_receivers(
        group,
        iface,
        &outs,
        Duration::from_secs(30),
        u64::from(tag) << 16,
    );
    for r in &mut rcfgs {
        r.threads = recv_threads;
        r.trust = signer.iter().map(|s| s.public_key()).collect();
        r.secret = secret.clone();
        if let Some(mib) = block_buffers {
            r.block_buffers = mib << 20;
        }
    }
    let run = run_local(&scfg, &rcfgs, &stop, &mut |_| {});
    let (served, got) = (run.served, run.received);
    let want = blake3::hash(&std::fs::read(src).expect("read source"));
    let mut ok = served.is_ok();
    let mut slowest = 0.0f64;
    let mut rcpu = 0.0;
    let mut sync = 0.0f64;
    let mut paths = (0, 0);
    let mut failed = 0;
    for (g, o) in got.iter().zip(&outs) {
        match g {
            Ok(r) => {
                paths.0 += r.blocks_buffered;
                paths.1 += r.blocks_page_cache;
                failed += r.stats.blocks_failed;
                slowest = slowest.max(r.transfer_seconds);
                rcpu += r.cpu_seconds;
                sync = sync.max(r.sync_seconds);
                ok &= blake3::hash(&std::fs::read(o).expect("read copy")) == want;
                // Signed runs must have been authenticated, plain ones not; closed ones must
                // have opened everything they took and dropped nothing.
                ok &= r.session.is_some_and(|t| t.signer.is_some() == signed);
                ok &= match (&secret, r.sealed) {
                    (Some(_), Some(s)) => s.opened > 0 && s.dropped() == 0,
                    (None, None) => true,
                    _ => false,
                };
            }
            Err(e) => {
                // What the server saw of it (a member dropped as slow ends a session early).
                let server = served.as_ref().map_or(String::new(), |s| {
                    format!(
                        "; server: dropped_slow {}, repair_denied {}, sealed {:?}",
                        s.stats.dropped_slow, s.stats.repair_denied, s.sealed
                    )
                });
                eprintln!("receiver failed ({} session): {e}{server}", session.name());
                ok = false;
            }
        }
        let _ = std::fs::remove_file(o);
    }
    let gb = bytes as f64 / 1e9;
    let (scpu, repairs) = served.as_ref().map_or((0.0, 0), |s| {
        (s.cpu_seconds, s.stats.repair_units + s.stats.parity_units)
    });
    // Each run on stderr: what a slow run's server refused tells a repair budget from a rate.
    if let Ok(s) = &served {
        eprintln!(
            "run: {n} x {unit} B {}: {:.2} GB/s, repair+parity units {repairs}, refused {}, dropped slow {}, blocks buffered {} / through the page cache {}, failed hashes {failed}",
            session.name(),
            gb / slowest.max(1e-9),
            s.stats.repair_denied,
            s.stats.dropped_slow,
            paths.0,
            paths.1
        );
    }
    Run {
        gbps: gb / slowest.max(1e-9),
        server_cpu_per_gb: scpu / gb,
        receiver_cpu_per_gb: rcpu / n as f64 / gb,
        sync_s: sync,
        repairs,
        ok,
        steal_pct: steal_pct(ticks, cpu_ticks()),
    }
}

fn main() {
    let a = Args::parse();
    let bytes = size(&a.size);
    let rate = if a.rate == "auto" {
        None
    } else {
        Some(size(&a.rate))
    };
    let dir = a.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("blockcast-bench-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).expect("bench dir");
    let src = dir.join("src.bin");
    write_sample(&src, bytes, 0x2545_F491_4F6C_DD1D).expect("write the source");
    let ns: Vec<usize> = a
        .receivers
        .split(',')
        .map(|s| s.trim().parse().expect("receiver count"))
        .collect();
    let units: Vec<u16> = a
        .unit_sizes
        .split(',')
        .map(|s| s.trim().parse().expect("unit size"))
        .collect();
    let list = |s: &str| -> Vec<usize> {
        s.split(',')
            .map(|x| x.trim().parse().expect("thread count"))
            .collect()
    };
    let (ts, rts) = (list(&a.threads), list(&a.recv_threads));
    let signs: Vec<Session> = a.sign.split(',').map(Session::parse).collect();
    let mut configs: Vec<(usize, u16, usize, usize, Session)> = Vec::new();
    for &n in &ns {
        for &u in &units {
            for &t in &ts {
                for &rt in &rts {
                    for &sg in &signs {
                        configs.push((n, u, t, rt, sg));
                    }
                }
            }
        }
    }
    let mut results: Vec<Vec<Run>> = configs.iter().map(|_| Vec::new()).collect();
    let mut tag = (std::process::id() % 1000) as u16 * 10;
    for _ in 0..a.runs {
        for (i, &(n, u, t, rt, sg)) in configs.iter().enumerate() {
            tag = tag.wrapping_add(t as u16);
            let spec = Spec {
                bytes,
                receivers: n,
                unit: u,
                rate,
                threads: t,
                recv_threads: rt,
                session: sg,
                tag,
                block_buffers: a.block_buffers,
            };
            results[i].push(one_run(&src, &dir, &spec));
        }
    }
    println!("| receivers | unit bytes | server / receive threads | session | GB/s per receiver (median of {}) | slowest | all runs | server CPU s/GB | receiver CPU s/GB | fsync s | repair+parity units | verified | steal % (each run) |", a.runs);
    println!("|---:|---:|---:|---|---:|---:|---|---:|---:|---:|---:|---|---|");
    for (i, &(n, u, t, rt, sg)) in configs.iter().enumerate() {
        let r = &results[i];
        let session = sg.name();
        println!(
            "| {n} | {u} | {t} / {rt} | {session} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
            median(r.iter().map(|x| x.gbps).collect()),
            r.iter().map(|x| x.gbps).fold(f64::INFINITY, f64::min),
            r.iter()
                .map(|x| format!("{:.2}", x.gbps))
                .collect::<Vec<_>>()
                .join(" "),
            median(r.iter().map(|x| x.server_cpu_per_gb).collect()),
            median(r.iter().map(|x| x.receiver_cpu_per_gb).collect()),
            median(r.iter().map(|x| x.sync_s).collect()),
            median(r.iter().map(|x| x.repairs as f64).collect()) as u64,
            if r.iter().all(|x| x.ok) {
                "all"
            } else {
                "FAILED"
            },
            r.iter()
                .map(|x| format!("{:.0}", x.steal_pct))
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
