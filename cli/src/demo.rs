//! `blockcast demo`: a sample file, a server and receivers on loopback multicast, verified.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use blockcast_node::local::{run_local, write_sample};
use blockcast_node::{Input, ReceiveConfig, ServeConfig};
use blockcast_proto::Geometry;

use crate::output::Output;
use crate::{exit, parse_rate, parse_size, session_id, DemoArgs};

pub fn run(a: DemoArgs, stop: &AtomicBool, out: &Output) -> Result<()> {
    let size = parse_size(&a.size)?;
    if a.receivers == 0 || a.receivers > 16 {
        return Err(exit::usage("--receivers must be 1..=16".into()));
    }
    let dir = std::env::temp_dir().join(format!("blockcast-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = run_in(&a, size, &dir, stop, out);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(
    a: &DemoArgs,
    size: u64,
    dir: &std::path::Path,
    stop: &AtomicBool,
    out: &Output,
) -> Result<()> {
    let sample = dir.join("sample.bin");
    out.say(&format!(
        "generating a {size}-byte sample in {}",
        dir.display()
    ));
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
    out.say(&format!(
        "serving it to {} receivers on {group} over loopback (interface 127.0.0.1, TTL 1)",
        a.receivers
    ));
    let scfg = ServeConfig {
        inputs: vec![Input {
            path: sample.clone(),
            name: "sample.bin".into(),
        }],
        group,
        iface,
        control_port: 0,
        ttl: 1,
        rate: parse_rate(&a.rate)?,
        geometry: Geometry {
            unit_size: 1400,
            units_per_block: 749,
            max_parity: 128,
        },
        min_receivers: a.receivers,
        max_wait: Duration::from_secs(10),
        deadline: Some(Duration::from_secs(600)),
        session: id,
        threads: a.threads.max(1),
    };
    let outs: Vec<PathBuf> = (0..a.receivers)
        .map(|i| dir.join(format!("copy-{i}.bin")))
        .collect();
    let rcfgs: Vec<ReceiveConfig> = outs
        .iter()
        .enumerate()
        .map(|(i, o)| ReceiveConfig {
            group,
            iface,
            out: o.clone(),
            timeout: Duration::from_secs(20),
            rcvbuf: 32 << 20,
            play: None,
            start_at: None,
            http: None,
            id: u64::from(id) << 8 | i as u64,
        })
        .collect();
    let started = Instant::now();
    let bar = out.bar(size, "demo");
    let run = run_local(&scfg, &rcfgs, stop, &mut |p| {
        bar.set_position(p.bytes_sent.min(p.total_bytes));
        bar.set_message(format!("{} receiver(s), {} done", p.receivers, p.complete));
    });
    bar.finish_and_clear();
    let (served, got) = (run.served, run.received);
    let seconds = started.elapsed().as_secs_f64();
    let served = served.map_err(exit::node)?;
    for (i, r) in got.into_iter().enumerate() {
        r.map_err(exit::node)
            .with_context(|| format!("receiver {i}"))?;
    }
    for (i, o) in outs.iter().enumerate() {
        let got =
            blake3::hash(&std::fs::read(o).with_context(|| format!("reading {}", o.display()))?);
        if got != want {
            bail!("copy {i} differs from the sample");
        }
    }
    if out.json {
        let mut v = crate::output::serve_json(&served);
        v["role"] = "demo".into();
        v["copies_verified"] = a.receivers.into();
        println!("{v}");
    } else {
        out.say(&format!(
            "all {} copies are identical to the sample (BLAKE3 {})",
            a.receivers,
            &want.to_hex()[..16]
        ));
        out.say(&format!(
            "{:.1} MB in {:.2} s: {:.1} MB/s per receiver, {:.1} MB/s delivered in all; {} parity and {} repair units for {} NACKs",
            size as f64 / 1e6,
            seconds,
            size as f64 / seconds / 1e6,
            size as f64 * a.receivers as f64 / seconds / 1e6,
            served.stats.parity_units,
            served.stats.repair_units,
            served.stats.nacks
        ));
    }
    Ok(())
}
