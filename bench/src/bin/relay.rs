//! Two tiers vs direct multicast: the time to deliver one file to every receiver when a server
//! feeds R relays that each serve their own group of receivers, against the same server
//! sending straight to all of them on one group. Everything runs in this process over loopback
//! multicast (interface 127.0.0.1, TTL 1), a file in the page cache, every copy verified.
//!
//! `cargo run --release -p blockcast-bench --bin relay -- --size 1G --relays 2 --per-relay 2 --runs 3`
//!
//! The two set-ups run interleaved (A B A B ...); each figure is the median of the runs.
//! Time = from starting the nodes until the last receiver has every block verified (the
//! receivers and relays are started first; the server waits for its direct members).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use blockcast_bench::{median, size};
use blockcast_node::local::{local_receivers, write_sample};
use blockcast_node::{receive, relay, Downstream, Input, RelayConfig, ServeConfig};
use blockcast_proto::Geometry;
use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// Bytes to send (k, M, G suffixes).
    #[arg(long, default_value = "1G")]
    size: String,
    /// Relays in the middle tier.
    #[arg(long, default_value_t = 2)]
    relays: usize,
    /// Receivers behind each relay (direct runs serve relays x per-relay receivers).
    #[arg(long, default_value_t = 2)]
    per_relay: usize,
    /// Send rate of the server and of each relay, bytes per second ("auto" adapts to loss).
    #[arg(long, default_value = "auto")]
    rate: String,
    #[arg(long, default_value_t = 1400)]
    unit_size: u16,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Directory for the source and the copies (a disk-backed file system: page cache).
    #[arg(long)]
    dir: Option<PathBuf>,
}

struct Run {
    seconds: f64,
    /// Units the server sent (first pass and repairs) and NACKs it got.
    server_units: u64,
    server_nacks: u64,
    ok: bool,
}

fn group(tag: u16, i: u8) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::new(239, 255, 78 + i, (tag % 250) as u8 + 1),
        31_000 + tag,
    )
}

fn one_run(src: &Path, dir: &Path, a: &Args, rate: Option<u64>, tiers: bool, tag: u16) -> Run {
    let iface = Ipv4Addr::LOCALHOST;
    let unit = a.unit_size;
    let upb = ((1u32 << 20) / u32::from(unit)).clamp(1, 32_768) as u16;
    let total = a.relays * a.per_relay;
    let direct_members = if tiers { a.relays } else { total };
    let up = group(tag, 0);
    let scfg = ServeConfig {
        inputs: vec![Input {
            path: src.to_path_buf(),
            name: "src.bin".into(),
        }],
        group: up,
        iface,
        control_port: 0,
        ttl: 1,
        rate,
        geometry: Geometry {
            unit_size: unit,
            units_per_block: upb,
            max_parity: upb.min(128),
        },
        min_receivers: direct_members,
        max_wait: Duration::from_secs(10),
        deadline: Some(Duration::from_secs(300)),
        session: u32::from(tag) << 8 | 1,
        threads: 1,
        split: false,
        receiver_timeout: Duration::from_secs(10),
        originals_factor: blockcast_proto::ORIGINALS_FACTOR,
        xor_repairs: true,
        hash_cache: None,
        signer: None,
        secret: None,
        statement: None,
        core_offset: 0,
        gate: None,
        datapath: blockcast_node::Datapath::Socket,
    };
    let outs: Vec<PathBuf> = (0..total)
        .map(|i| dir.join(format!("copy-{i}.bin")))
        .collect();
    let timeout = Duration::from_secs(30);
    // Receivers: behind relay r on group r+1, or all on the server's group.
    let rcfgs: Vec<_> = (0..total)
        .flat_map(|i| {
            let g = if tiers {
                group(tag, 1 + (i / a.per_relay) as u8)
            } else {
                up
            };
            local_receivers(
                g,
                iface,
                &outs[i..=i],
                timeout,
                (u64::from(tag) << 16) + i as u64,
            )
        })
        .collect();
    let relays: Vec<RelayConfig> = (0..if tiers { a.relays } else { 0 })
        .map(|r| RelayConfig {
            upstream: local_receivers(
                up,
                iface,
                &[dir.join(format!("cache-{r}.bin"))],
                timeout,
                (u64::from(tag) << 16) + 1000 + r as u64,
            )
            .remove(0),
            downstream: vec![Downstream {
                group: group(tag, 1 + r as u8),
                iface,
                control_port: 0,
            }],
            ttl: 1,
            rate,
            min_receivers: a.per_relay,
            max_wait: Duration::from_secs(10),
            deadline: Some(Duration::from_secs(300)),
            threads: 1,
            originals_factor: blockcast_proto::ORIGINALS_FACTOR,
            xor_repairs: true,
            signer: None,
            secret: None,
        })
        .collect();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let (served, received, relayed) = std::thread::scope(|s| {
        let rh: Vec<_> = rcfgs
            .iter()
            .map(|c| {
                s.spawn(|| {
                    let r = receive(c, &stop, &mut |_| {});
                    (r, started.elapsed().as_secs_f64())
                })
            })
            .collect();
        let lh: Vec<_> = relays
            .iter()
            .map(|c| s.spawn(|| relay(c, &stop, &mut |_| {})))
            .collect();
        let served = blockcast_node::serve(&scfg, &stop, &mut |_| {});
        let received: Vec<_> = rh
            .into_iter()
            .map(|h| h.join().expect("receiver"))
            .collect();
        let relayed: Vec<_> = lh.into_iter().map(|h| h.join().expect("relay")).collect();
        (served, received, relayed)
    });
    let want = blake3::hash(&std::fs::read(src).expect("read source"));
    let mut ok = served.is_ok() && relayed.iter().all(|r| r.is_ok());
    for e in relayed.iter().filter_map(|r| r.as_ref().err()) {
        eprintln!("relay failed: {e}");
    }
    let mut last = 0.0f64;
    for ((r, at), o) in received.iter().zip(&outs) {
        match r {
            Ok(_) => {
                last = last.max(*at);
                ok &= blake3::hash(&std::fs::read(o).expect("read copy")) == want;
            }
            Err(e) => {
                eprintln!("receiver failed: {e}");
                ok = false;
            }
        }
        let _ = std::fs::remove_file(o);
    }
    for r in 0..relays.len() {
        let _ = std::fs::remove_file(dir.join(format!("cache-{r}.bin")));
    }
    let (server_units, server_nacks) = served.as_ref().map_or((0, 0), |s| {
        (
            s.stats.data_units + s.stats.repair_units + s.stats.parity_units,
            s.stats.nacks,
        )
    });
    Run {
        seconds: last,
        server_units,
        server_nacks,
        ok,
    }
}

fn main() {
    let a = Args::parse();
    let bytes = size(&a.size);
    let rate = (a.rate != "auto").then(|| size(&a.rate));
    let dir = a.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("blockcast-relay-bench-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).expect("bench dir");
    let src = dir.join("src.bin");
    write_sample(&src, bytes, 0x9E37_79B9_7F4A_7C15).expect("write the source");
    let mut direct = Vec::new();
    let mut tiered = Vec::new();
    let mut tag = (std::process::id() % 1000) as u16 * 10;
    for run in 0..a.runs {
        for tiers in [false, true] {
            tag = tag.wrapping_add(1);
            let r = one_run(&src, &dir, &a, rate, tiers, tag);
            eprintln!(
                "run {run} {}: {:.2} s, server units {}, server NACKs {}, {}",
                if tiers { "two tiers" } else { "direct" },
                r.seconds,
                r.server_units,
                r.server_nacks,
                if r.ok {
                    "every copy verified"
                } else {
                    "FAILED"
                }
            );
            if tiers {
                tiered.push(r);
            } else {
                direct.push(r);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let row = |name: &str, runs: &[Run]| {
        let s = median(runs.iter().map(|r| r.seconds).collect());
        println!(
            "| {name} | {} | {:.2} | {:.3} | {:.0} | {:.0} | {} |",
            runs.len(),
            s,
            bytes as f64 / 1e9 / s.max(1e-9),
            median(runs.iter().map(|r| r.server_units as f64).collect()),
            median(runs.iter().map(|r| r.server_nacks as f64).collect()),
            if runs.iter().all(|r| r.ok) {
                "yes"
            } else {
                "NO"
            }
        );
        s
    };
    println!(
        "{} bytes, {} relays x {} receivers, unit {} B, rate {}",
        bytes, a.relays, a.per_relay, a.unit_size, a.rate
    );
    println!("| set-up | runs | seconds to all (median) | GB/s per receiver | server units | server NACKs | all verified |");
    println!("|---|---|---|---|---|---|---|");
    let d = row("direct multicast", &direct);
    let t = row("server -> relays -> groups", &tiered);
    println!("two tiers / direct time: {:.2}x", t / d.max(1e-9));
}
