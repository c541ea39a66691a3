//! Simulation report: runs the deterministic simulator and prints what a transfer cost.
//!
//! `cargo run --release -p blockcast-bench --bin sim -- --receivers 10000 --loss 0.01`
//! `cargo run --release -p blockcast-bench --bin sim -- --table` (the committed table)
//! `cargo run --release -p blockcast-bench --bin sim -- --receivers 10000 --relays 100`
//! (the same receivers behind relays, then direct, in one run)

use std::time::Duration;

use blockcast_proto::{Geometry, RateLimits};
use blockcast_sim::{
    run, run_relays, LinkFaults, LossModel, ReceiverLimits, RelayConfig, RelayReport, SimConfig,
    SimReport, StoreKind,
};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Simulate one blockcast session with many receivers and report its cost")]
struct Args {
    /// Receivers in the group.
    #[arg(long, default_value_t = 1000)]
    receivers: usize,
    /// Independent loss on every multicast copy and control packet (0.01 = 1 %).
    #[arg(long, default_value_t = 0.01)]
    loss: f64,
    /// Bursty loss instead (Gilbert-Elliott with mean --loss, bursts of ~20 copies).
    #[arg(long)]
    bursty: bool,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Object size in bytes.
    #[arg(long, default_value_t = 2 << 20)]
    size: usize,
    #[arg(long, default_value_t = 512)]
    unit_size: u16,
    #[arg(long, default_value_t = 128)]
    units_per_block: u16,
    /// Sender rate, bytes per second (virtual).
    #[arg(long, default_value_t = 20_000_000)]
    rate: u64,
    /// One-way delay, milliseconds (default 1; 0.1 with --node, the simulator's node-like
    /// sessions).
    #[arg(long)]
    delay_ms: Option<f64>,
    /// Run the receivers x loss table instead of one run, as Markdown.
    #[arg(long)]
    table: bool,
    /// Put the receivers behind this many relays (2 tiers) and compare with direct
    /// multicast to the same receivers, in one run.
    #[arg(long)]
    relays: Option<usize>,
    /// Repair with originals while they cost at most this many times parity (0: parity
    /// always; the sender's default is 4).
    #[arg(long, default_value_t = blockcast_proto::ORIGINALS_FACTOR)]
    originals_factor: u32,
    /// Resend originals one by one (no XOR repairs).
    #[arg(long)]
    no_xor_repairs: bool,
    /// Set the session up as the node does (a data thread sends the first pass, `--rate
    /// auto` from --rate, 64 KiB pacing quanta, notices every 50 ms, 100 us delay): with
    /// --buffer and --service-rate, receivers that the sender can outrun.
    #[arg(long)]
    node: bool,
    /// Each receiver's socket buffer, bytes (needs --service-rate).
    #[arg(long)]
    buffer: Option<usize>,
    /// Datagram bytes per second each receiver's thread takes out of its socket.
    #[arg(long)]
    service_rate: Option<u64>,
    /// Each receiver's thread stalls (is not scheduled) for this many milliseconds once per
    /// --stall-every (needs --buffer): a host whose cores other work shares.
    #[arg(long)]
    stall_ms: Option<f64>,
    /// The period of those stalls, milliseconds (the receivers take turns).
    #[arg(long, default_value_t = 1000.0)]
    stall_every_ms: f64,
    /// With --node: send at --rate throughout (as `serve --rate`), not from it by `--rate auto`.
    #[arg(long)]
    fixed: bool,
}

fn config(a: &Args, receivers: usize, loss: f64, bursty: bool) -> SimConfig {
    let geometry = Geometry {
        unit_size: a.unit_size,
        units_per_block: a.units_per_block,
        max_parity: a.units_per_block.min(128),
    };
    let mut c = if a.node {
        // --fixed: the automatic rate pinned to --rate.
        let (min, max) = if a.fixed {
            (a.rate, a.rate)
        } else {
            (a.rate / 100, a.rate * 8)
        };
        let limits = RateLimits {
            start: a.rate,
            min,
            max,
        };
        let mut c = SimConfig::node_like(a.seed, receivers, a.size, geometry, limits);
        c.data_faults = LinkFaults::lossy(loss);
        c.control_faults = LinkFaults::lossy(loss);
        if let Some(ms) = a.delay_ms {
            c.delay = Duration::from_secs_f64(ms / 1000.0);
        }
        c
    } else {
        let mut c = SimConfig::small(a.seed, receivers, loss);
        c.objects = vec![a.size];
        c.geometry = Geometry {
            max_parity: a.units_per_block,
            ..geometry
        };
        c.rate = a.rate;
        c.delay = Duration::from_secs_f64(a.delay_ms.unwrap_or(1.0) / 1000.0);
        c
    };
    if let (Some(b), Some(s)) = (a.buffer, a.service_rate) {
        let mut l = ReceiverLimits::new(b, s);
        l.stalls = a.stall_ms.map(|ms| {
            (
                Duration::from_secs_f64(a.stall_every_ms / 1000.0),
                Duration::from_secs_f64(ms / 1000.0),
            )
        });
        c.receiver_limits = Some(l);
    }
    c.store = StoreKind::Hashed;
    c.sender.max_wait = Duration::from_secs(2);
    c.sender.originals_factor = a.originals_factor;
    c.sender.xor_repairs = !a.no_xor_repairs;
    c.time_limit = Duration::from_secs(600);
    if bursty {
        // Bursts of ~20 copies in which half are lost.
        let leave = 0.05;
        let bad_loss = 0.5;
        let enter = loss * leave / (bad_loss - loss).max(1e-9);
        c.data_faults.loss = LossModel::Bursty {
            enter,
            leave,
            bad_loss,
        };
    }
    c
}

fn header() {
    println!(
        "| receivers | loss | complete | time / lossless | data units / minimal | parity units | XOR units | all units / minimal | NACK packets | NACK bytes | NACK % of data | receipt notices | wall s |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
}

fn row(r: &SimReport, loss: &str) {
    println!(
        "| {} | {} | {}/{} | {:.3} | {:.3} | {} | {} | {:.3} | {} | {} | {:.2} | {} | {:.1} |",
        r.receivers,
        loss,
        r.identical,
        r.expected,
        r.completion_ratio(),
        (r.data_units + r.repair_units) as f64 / r.minimal_units.max(1) as f64,
        r.parity_units,
        r.xor_units,
        r.units_ratio(),
        r.nack_packets,
        r.nack_bytes,
        r.nack_share() * 100.0,
        r.receipt_packets,
        r.wall.as_secs_f64()
    );
    for f in &r.failures {
        println!("<!-- FAILED (seed {}): {f} -->", r.seed);
    }
}

fn relay_header() {
    println!(
        "| topology | complete | time / lossless | time / direct | units / minimal, per tier | server fan-in, control pkt/s | relay fan-in, mean / max pkt/s | control pkts at server | NACK bytes, per tier | receipt bytes, per tier | fail-overs | wall s |"
    );
    println!("|---|---:|---:|---:|---|---:|---:|---:|---|---|---:|---:|");
}

fn relay_row(r: &RelayReport, direct: Option<&RelayReport>) {
    let per_tier = |f: &dyn Fn(&blockcast_sim::TierReport) -> String| {
        r.tiers.iter().map(f).collect::<Vec<_>>().join(" / ")
    };
    let relays = r.tiers.get(1);
    println!(
        "| {} | {}/{} | {:.3} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {:.1} |",
        if r.fanout.len() == 1 {
            format!("direct, {} receivers", r.leaves)
        } else {
            format!(
                "{} relays x {} receivers",
                r.fanout[0],
                r.fanout[1..].iter().product::<usize>()
            )
        },
        r.identical,
        r.expected,
        r.completion_ratio(),
        direct.map_or("1".into(), |d| format!(
            "{:.3}",
            r.completion.as_secs_f64() / d.completion.as_secs_f64().max(1e-9)
        )),
        per_tier(&|t| format!("{:.3}", t.units_ratio)),
        r.server_fan_in(),
        relays.map_or("-".into(), |t| format!(
            "{:.0} / {:.0}",
            t.fan_in_mean, t.fan_in_max
        )),
        r.tiers[0].control_in,
        per_tier(&|t| t.nack_bytes.to_string()),
        per_tier(&|t| t.receipt_bytes.to_string()),
        r.switches,
        r.wall.as_secs_f64()
    );
    for f in &r.failures {
        println!("<!-- FAILED (seed {}): {f} -->", r.seed);
    }
}

fn main() {
    let a = Args::parse();
    if let Some(relays) = a.relays {
        let relays = relays.max(1);
        let per_relay = a.receivers.div_ceil(relays);
        let base = config(&a, 0, a.loss, a.bursty);
        let mut via = RelayConfig::small(a.seed, vec![relays, per_relay], a.loss);
        via.base = base;
        let mut direct = via.clone();
        direct.fanout = vec![relays * per_relay];
        let d = run_relays(&direct);
        let v = run_relays(&via);
        relay_header();
        relay_row(&v, Some(&d));
        relay_row(&d, None);
        println!();
        println!(
            "seed {}; virtual completion {:.3} s via relays, {:.3} s direct, lossless {:.3} s",
            a.seed,
            v.completion.as_secs_f64(),
            d.completion.as_secs_f64(),
            v.ideal.as_secs_f64()
        );
        if !v.failures.is_empty() || !d.failures.is_empty() {
            std::process::exit(1);
        }
        return;
    }
    if a.table {
        header();
        for n in [10usize, 100, 1000, 10_000] {
            for loss in [0.0, 0.01, 0.05, 0.20] {
                let r = run(&config(&a, n, loss, false));
                row(&r, &format!("{:.0} %", loss * 100.0));
            }
        }
        for n in [100usize, 1000] {
            let r = run(&config(&a, n, 0.05, true));
            row(&r, "5 % bursty");
        }
        return;
    }
    let r = run(&config(&a, a.receivers, a.loss, a.bursty));
    header();
    row(
        &r,
        &format!(
            "{:.1} %{}",
            a.loss * 100.0,
            if a.bursty { " bursty" } else { "" }
        ),
    );
    println!();
    println!(
        "seed {}; virtual completion {:.3} s (first pass {:.3} s, tail {:.3} s) vs lossless {:.3} s; final rate {} B/s; repairs {} originals + {} XOR + {} parity ({} tail copies); socket drops {}, peak fill {:?}, stalls {}; duplicates {}",
        r.seed,
        r.completion.as_secs_f64(),
        r.first_pass.as_secs_f64(),
        r.completion.saturating_sub(r.first_pass).as_secs_f64(),
        r.ideal.as_secs_f64(),
        r.final_rate,
        r.repair_units,
        r.xor_units,
        r.parity_units,
        r.tail_copies,
        r.socket_drops(),
        r.sockets.iter().map(|s| s.peak).max(),
        r.sockets.iter().map(|s| s.stalls).sum::<u64>(),
        r.duplicates
    );
    if !r.failures.is_empty() {
        std::process::exit(1);
    }
}
