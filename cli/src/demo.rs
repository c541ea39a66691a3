//! `blockcast demo` and `blockcast bench`: a sample file, a server and receivers on loopback
//! multicast in this process, every copy verified. The demo shows it working; the bench
//! measures it.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use blockcast_node::local::{cpu_ticks, local_receivers, run_local, steal_pct, write_sample};
use blockcast_node::{Input, ReceiveSummary, ServeConfig, ServeSummary};
use blockcast_proto::Geometry;

use crate::json::{self, BenchJson, DemoJson, LatencyJson, ServeJson};
use crate::output::Output;
use crate::{exit, parse_rate, parse_size, session_id, BenchArgs, DemoArgs};

/// One local session: what to run.
struct Session {
    size: u64,
    receivers: usize,
    rate: Option<u64>,
    threads: usize,
    recv_threads: usize,
    unit_size: u16,
}

/// What a local session did.
struct Outcome {
    size: u64,
    seconds: f64,
    served: ServeSummary,
    received: Vec<ReceiveSummary>,
    hash: blake3::Hash,
}

pub fn demo(a: DemoArgs, stop: &AtomicBool, out: &Output) -> Result<()> {
    let s = Session {
        size: parse_size(&a.size)?,
        receivers: a.receivers,
        rate: parse_rate(&a.rate)?,
        threads: a.threads,
        recv_threads: 1,
        unit_size: 1400,
    };
    let o = in_temp_dir("demo", |dir| run_session(&s, dir, stop, out, true))?;
    if out.json {
        json::print(&DemoJson {
            served: ServeJson::new("demo", &o.served),
            copies_verified: s.receivers,
        });
    } else {
        out.say(&format!(
            "all {} copies are identical to the sample (BLAKE3 {})",
            s.receivers,
            &o.hash.to_hex()[..16]
        ));
        out.say(&format!(
            "{:.1} MB in {:.2} s: {:.1} MB/s per receiver, {:.1} MB/s delivered in all; {} parity, {} repair and {} XOR units for {} NACKs",
            o.size as f64 / 1e6,
            o.seconds,
            o.size as f64 / o.seconds / 1e6,
            o.size as f64 * s.receivers as f64 / o.seconds / 1e6,
            o.served.stats.parity_units,
            o.served.stats.repair_units,
            o.served.stats.xor_units,
            o.served.stats.nacks
        ));
    }
    Ok(())
}

pub fn bench(a: BenchArgs, stop: &AtomicBool, out: &Output) -> Result<()> {
    let s = Session {
        size: parse_size(&a.size)?,
        receivers: a.receivers,
        rate: parse_rate(&a.rate)?,
        threads: a.threads,
        recv_threads: a.recv_threads.max(1),
        unit_size: a.unit_size,
    };
    if s.unit_size < 2 || s.unit_size % 2 != 0 || s.unit_size > 8972 {
        return Err(exit::usage("--unit-size must be even, 2..=8972".into()));
    }
    let before = cpu_ticks();
    let o = in_temp_dir("bench", |dir| run_session(&s, dir, stop, out, false))?;
    let steal = steal_pct(before, cpu_ticks());
    // The slowest receiver's transfer (first data unit -> every block verified).
    let transfer = o
        .received
        .iter()
        .map(|r| r.transfer_seconds)
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let gb = o.size as f64 / 1e9;
    let st = &o.served.stats;
    let units = st.data_units + st.repair_units + st.xor_units + st.parity_units;
    let receiver_cpu = o.received.iter().map(|r| r.cpu_seconds).sum::<f64>() / s.receivers as f64;
    let worst_loss = o
        .served
        .receivers
        .iter()
        .map(|r| r.loss_ppm)
        .max()
        .unwrap_or(0);
    let mut lat = [0u64; 4];
    for r in &o.received {
        for (l, v) in lat.iter_mut().zip(r.block_latency_us) {
            *l = (*l).max(v);
        }
    }
    if out.json {
        json::print(&BenchJson {
            role: "bench",
            receivers: s.receivers,
            bytes: o.size,
            unit_size: s.unit_size,
            gb_per_s_per_receiver: gb / transfer,
            gb_per_s_aggregate: gb * s.receivers as f64 / transfer,
            packets_per_s: units as f64 / transfer,
            server_cpu_s_per_gb: o.served.cpu_seconds / gb,
            receiver_cpu_s_per_gb: receiver_cpu / gb,
            nacks: st.nacks,
            parity_units: st.parity_units,
            repair_units: st.repair_units,
            xor_units: st.xor_units,
            worst_loss_ppm: worst_loss,
            block_latency_us: LatencyJson {
                p50: lat[0],
                p99: lat[1],
                p99_9: lat[2],
                max: lat[3],
            },
            copies_verified: s.receivers,
            host_steal_pct: steal,
        });
        return Ok(());
    }
    println!(
        "blockcast bench: {} receiver(s), {:.1} MB, {}-byte units, loopback multicast, every copy verified",
        s.receivers,
        o.size as f64 / 1e6,
        s.unit_size
    );
    println!(
        "  throughput   {:.3} GB/s per receiver (slowest), {:.3} GB/s delivered in all",
        gb / transfer,
        gb * s.receivers as f64 / transfer
    );
    println!(
        "  packets      {units} sent, {:.2} Mpps",
        units as f64 / transfer / 1e6
    );
    println!(
        "  CPU          server {:.2} s/GB, each receiver {:.2} s/GB",
        o.served.cpu_seconds / gb,
        receiver_cpu / gb
    );
    println!(
        "  repair       {} NACKs, {} parity + {} original units + {} XOR repairs (carrying {}); worst reported loss {:.3} %",
        st.nacks,
        st.parity_units,
        st.repair_units,
        st.xor_units,
        st.xor_carried,
        worst_loss as f64 / 1e4
    );
    println!(
        "  block completion (first unit -> verified): p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        lat[0] as f64 / 1e3,
        lat[1] as f64 / 1e3,
        lat[2] as f64 / 1e3,
        lat[3] as f64 / 1e3
    );
    if steal >= 1.0 {
        // A virtual machine whose host ran other guests on its CPUs meanwhile: on a shared
        // host the figures above move with this (bench/RESULTS.md, "the host's steal").
        println!(
            "  host         the hypervisor took {steal:.0} % of this machine's CPU time during the run: figures are low"
        );
    }
    Ok(())
}

fn in_temp_dir<T>(what: &str, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let dir = std::env::temp_dir().join(format!("blockcast-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = f(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_session(
    s: &Session,
    dir: &Path,
    stop: &AtomicBool,
    out: &Output,
    chatty: bool,
) -> Result<Outcome> {
    if s.receivers == 0 || s.receivers > 16 {
        return Err(exit::usage("--receivers must be 1..=16".into()));
    }
    let size = s.size;
    let sample = dir.join("sample.bin");
    if chatty {
        out.say(&format!(
            "generating a {size}-byte sample in {}",
            dir.display()
        ));
    }
    write_sample(&sample, size, 0x9E37_79B9_7F4A_7C15)
        .with_context(|| format!("writing {}", sample.display()))?;
    let want = blake3::hash(&std::fs::read(&sample)?);
    // Loopback only: the interface is 127.0.0.1 and the group is administratively scoped.
    let iface = Ipv4Addr::LOCALHOST;
    let id = session_id();
    let group = SocketAddrV4::new(
        Ipv4Addr::new(239, 255, (id >> 8) as u8, (id >> 16) as u8 | 1),
        20_000 + (id % 20_000) as u16,
    );
    if chatty {
        out.say(&format!(
            "serving it to {} receivers on {group} over loopback (interface 127.0.0.1, TTL 1)",
            s.receivers
        ));
    }
    let upb = ((1u32 << 20) / u32::from(s.unit_size)).clamp(1, 32_768) as u16;
    let scfg = ServeConfig {
        inputs: vec![Input {
            path: sample.clone(),
            name: "sample.bin".into(),
        }],
        group,
        iface,
        control_port: 0,
        ttl: 1,
        rate: s.rate,
        geometry: Geometry {
            unit_size: s.unit_size,
            units_per_block: upb,
            max_parity: upb.min(128),
        },
        min_receivers: s.receivers,
        max_wait: Duration::from_secs(10),
        deadline: Some(Duration::from_secs(600)),
        session: id,
        threads: s.threads.max(1),
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
    let outs: Vec<PathBuf> = (0..s.receivers)
        .map(|i| dir.join(format!("copy-{i}.bin")))
        .collect();
    let mut rcfgs = local_receivers(
        group,
        iface,
        &outs,
        Duration::from_secs(20),
        u64::from(id) << 8,
    );
    for r in &mut rcfgs {
        r.threads = s.recv_threads;
    }
    let started = Instant::now();
    let bar = out.bar(size, if chatty { "demo" } else { "bench" });
    let run = run_local(&scfg, &rcfgs, stop, &mut |p| {
        bar.set_position(p.bytes_sent.min(p.total_bytes));
        bar.set_message(format!("{} receiver(s), {} done", p.receivers, p.complete));
    });
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let served = run.served.map_err(exit::node)?;
    let mut received = Vec::with_capacity(run.received.len());
    for (i, r) in run.received.into_iter().enumerate() {
        received.push(
            r.map_err(exit::node)
                .with_context(|| format!("receiver {i}"))?,
        );
    }
    for (i, o) in outs.iter().enumerate() {
        let got =
            blake3::hash(&std::fs::read(o).with_context(|| format!("reading {}", o.display()))?);
        if got != want {
            bail!("copy {i} differs from the sample");
        }
    }
    Ok(Outcome {
        size,
        seconds,
        served,
        received,
        hash: want,
    })
}
