//! What the user sees: progress bars on a terminal (stderr), one JSON summary (stdout).

use std::io::IsTerminal;
use std::sync::atomic::AtomicBool;

use blockcast_node::{
    receive, relay, serve, NodeError, ReceiveConfig, ReceiveSummary, RelayConfig, RelaySummary,
    ServeConfig, ServeSummary,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

pub struct Output {
    pub json: bool,
    pub quiet: bool,
    bars: bool,
}

impl Output {
    pub fn new(json: bool, quiet: bool) -> Self {
        Output {
            json,
            quiet,
            bars: !json && !quiet && std::io::stderr().is_terminal(),
        }
    }

    pub fn bar(&self, total: u64, what: &str) -> ProgressBar {
        if !self.bars {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(what.to_string());
        bar
    }

    /// A line for people (stderr), unless quiet or JSON.
    pub fn say(&self, line: &str) {
        if !self.quiet && !self.json {
            eprintln!("{line}");
        }
    }

    pub fn serve_summary(&self, s: &ServeSummary) {
        if self.json {
            println!("{}", serve_json(s));
        } else {
            self.say(&format!(
                "served {} object(s), {} bytes in {:.2} s ({:.1} MB/s) to {} receiver(s), {} complete; {} parity, {} repair and {} XOR units (carrying {}) for {} NACKs",
                s.objects,
                s.bytes,
                s.seconds,
                s.bytes as f64 / s.seconds.max(1e-9) / 1e6,
                s.receivers.len(),
                s.receivers.iter().filter(|r| r.complete).count(),
                s.stats.parity_units,
                s.stats.repair_units,
                s.stats.xor_units,
                s.stats.xor_carried,
                s.stats.nacks
            ));
        }
    }

    pub fn relay_summary(&self, s: &RelaySummary) {
        if self.json {
            println!(
                "{}",
                json!({
                    "role": "relay",
                    "upstream": receive_json(&s.upstream),
                    "downstream": s.downstream.iter().map(serve_json).collect::<Vec<_>>(),
                })
            );
        } else {
            self.say(&format!(
                "relayed {} bytes: received and verified in {:.2} s",
                s.upstream.bytes, s.upstream.seconds
            ));
            for (i, d) in s.downstream.iter().enumerate() {
                self.say(&format!(
                    "  downstream {i} (control {}): {} receiver(s), {} complete, {:.2} s; {} parity and {} repair units for {} NACKs",
                    d.control,
                    d.receivers.len(),
                    d.receivers.iter().filter(|r| r.complete).count(),
                    d.seconds,
                    d.stats.parity_units,
                    d.stats.repair_units,
                    d.stats.nacks
                ));
            }
        }
    }

    pub fn receive_summary(&self, s: &ReceiveSummary) {
        if self.json {
            println!("{}", receive_json(s));
        } else {
            self.say(&format!(
                "received {} file(s), {} bytes in {:.2} s ({:.1} MB/s), every block verified",
                s.files.len(),
                s.bytes,
                s.seconds,
                s.bytes as f64 / s.seconds.max(1e-9) / 1e6
            ));
        }
    }
}

pub fn serve_json(s: &ServeSummary) -> serde_json::Value {
    json!({
        "role": "server",
        "objects": s.objects,
        "bytes": s.bytes,
        "seconds": s.seconds,
        "mb_per_s": s.bytes as f64 / s.seconds.max(1e-9) / 1e6,
        "result": format!("{:?}", s.reason).to_lowercase(),
        "data_units": s.stats.data_units,
        "repair_units": s.stats.repair_units,
        "xor_units": s.stats.xor_units,
        "xor_carried": s.stats.xor_carried,
        "parity_units": s.stats.parity_units,
        "nacks": s.stats.nacks,
        "nack_bytes": s.stats.nack_bytes,
        "receipts": s.stats.receipts,
        "control": s.control.to_string(),
        "receivers": s.receivers.iter().map(|r| json!({
            "id": r.id.0,
            "addr": r.addr.to_string(),
            "complete": r.complete,
            "rtt_us": r.rtt_us,
            "loss_ppm": r.loss_ppm,
        })).collect::<Vec<_>>(),
    })
}

pub fn receive_json(s: &ReceiveSummary) -> serde_json::Value {
    json!({
        "event": "summary",
        "role": "receiver",
        "files": s.files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "bytes": s.bytes,
        "seconds": s.seconds,
        "mb_per_s": s.bytes as f64 / s.seconds.max(1e-9) / 1e6,
        "data_units": s.stats.data_units,
        "parity_units": s.stats.parity_units,
        "xor_units": s.stats.xor_units,
        "xor_unusable": s.stats.xor_unusable,
        "duplicates": s.stats.duplicates,
        "socket_drops": s.stats.socket_drops,
        "decodes": s.stats.decodes,
        "blocks_failed": s.stats.blocks_failed,
        "nacks": s.stats.nacks,
        "rcvbuf": s.rcvbuf.0,
        "transfer_seconds": s.transfer_seconds,
        "sync_seconds": s.sync_seconds,
        "cpu_seconds": s.cpu_seconds,
        "forwarded": s.forwarded,
        "stripe_datagrams": s.stripe_datagrams,
        "played_bytes": s.play.as_ref().map(|p| p.bytes),
        "first_byte_seconds": s.play.as_ref().and_then(|p| p.first_byte_secs),
    })
}

pub fn run_serve(
    cfg: &ServeConfig,
    stop: &AtomicBool,
    out: &Output,
) -> Result<ServeSummary, NodeError> {
    let total: u64 = cfg
        .inputs
        .iter()
        .map(|i| std::fs::metadata(&i.path).map(|m| m.len()).unwrap_or(0))
        .sum();
    let bar = out.bar(total, "serving");
    let mut told = false;
    let r = serve(cfg, stop, &mut |p| {
        if cfg.split && !told && !out.quiet {
            // Receivers need this address; stderr, so it shows with --json too.
            told = true;
            eprintln!(
                "blockcast: split mode: receivers join with --server {} --zone N",
                p.control
            );
        }
        bar.set_length(p.total_bytes.max(1));
        bar.set_position(p.bytes_sent.min(p.total_bytes));
        bar.set_message(format!("{} receiver(s), {} done", p.receivers, p.complete));
    });
    bar.finish_and_clear();
    r
}

pub fn run_receive(
    cfg: &ReceiveConfig,
    stop: &AtomicBool,
    out: &Output,
) -> Result<ReceiveSummary, NodeError> {
    let bar = out.bar(0, "receiving");
    let json = out.json;
    let mut last = (u64::MAX, u64::MAX);
    let r = receive(cfg, stop, &mut |p| {
        bar.set_length(p.total_bytes.max(1));
        bar.set_position(p.bytes_verified);
        bar.set_message(format!("{}/{} blocks verified", p.blocks_done, p.blocks));
        if json && p.blocks > 0 && (p.blocks_done, p.blocks) != last {
            // One JSON event per change of the receive status (NDJSON on stdout).
            last = (p.blocks_done, p.blocks);
            println!(
                "{}",
                json!({
                    "event": "progress",
                    "blocks_verified": p.blocks_done,
                    "blocks": p.blocks,
                    "bytes_verified": p.bytes_verified,
                    "bytes": p.total_bytes,
                    "objects": p.objects.iter().map(|(name, v)| json!({"name": name, "bytes_verified": v})).collect::<Vec<_>>(),
                })
            );
        }
    });
    bar.finish_and_clear();
    r
}

pub fn run_relay(
    cfg: &RelayConfig,
    stop: &AtomicBool,
    out: &Output,
) -> Result<RelaySummary, NodeError> {
    // One line per side, drawn together.
    let lines = indicatif::MultiProgress::new();
    let up = lines.add(out.bar(0, "upstream"));
    let downs: Vec<_> = (0..cfg.downstream.len())
        .map(|i| lines.add(out.bar(0, &format!("down {i}"))))
        .collect();
    let r = relay(cfg, stop, &mut |p| {
        up.set_length(p.upstream.total_bytes.max(1));
        up.set_position(p.upstream.bytes_verified);
        up.set_message(format!(
            "{}/{} blocks verified",
            p.upstream.blocks_done, p.upstream.blocks
        ));
        for (bar, d) in downs.iter().zip(&p.downstream) {
            if let Some(d) = d {
                bar.set_length(d.total_bytes.max(1));
                bar.set_position(d.bytes_sent.min(d.total_bytes));
                bar.set_message(format!("{} receiver(s), {} done", d.receivers, d.complete));
            }
        }
    });
    up.finish_and_clear();
    for b in downs {
        b.finish_and_clear();
    }
    r
}
