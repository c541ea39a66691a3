//! What the user sees: progress bars on a terminal (stderr), one JSON summary (stdout).

use std::io::IsTerminal;
use std::sync::atomic::AtomicBool;

use blockcast_node::{
    receive, relay, serve, NodeError, ReceiveConfig, ReceiveSummary, RelayConfig, RelaySummary,
    ServeConfig, ServeSummary,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::json::{self, ProgressJson, ReceiveJson, RelayJson, ServeJson};

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
            json::print(&ServeJson::new("server", s));
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
            if s.datapath == "xdp" {
                self.say(&format!(
                    "datapath xdp: {} first-pass units sent as AF_XDP frames ({} dropped for want of a free frame)",
                    s.xdp_frames, s.xdp_dropped
                ));
            }
            self.say(&format!(
                "manifest {} ({}); receivers can pin it with --expect",
                blockcast_proto::auth::hex(&s.manifest_hash),
                match s.signer {
                    Some(k) => format!("signed by {}", blockcast_proto::auth::hex(&k)),
                    None => "unsigned".into(),
                }
            ));
        }
    }

    pub fn relay_summary(&self, s: &RelaySummary) {
        if self.json {
            json::print(&RelayJson {
                role: "relay",
                upstream: ReceiveJson::new(&s.upstream),
                downstream: s
                    .downstream
                    .iter()
                    .map(|d| ServeJson::new("server", d))
                    .collect(),
            });
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
            json::print(&ReceiveJson::new(s));
        } else {
            self.say(&format!(
                "received {} file(s), {} bytes in {:.2} s ({:.1} MB/s, datapath {}), every block verified",
                s.files.len(),
                s.bytes,
                s.seconds,
                s.bytes as f64 / s.seconds.max(1e-9) / 1e6,
                s.datapath
            ));
        }
    }
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
    let events = out.json;
    let mut last = (u64::MAX, u64::MAX);
    let mut told = false;
    let r = receive(cfg, stop, &mut |p| {
        if let (Some(t), false) = (p.session, told) {
            // Once, on stderr (so with --json too): whom the session is from, or that
            // nobody vouches for it.
            told = true;
            if !out.quiet {
                bar.suspend(|| eprintln!("blockcast: {}", session_line(&t)));
            }
        }
        bar.set_length(p.total_bytes.max(1));
        bar.set_position(p.bytes_verified);
        bar.set_message(format!("{}/{} blocks verified", p.blocks_done, p.blocks));
        if events && p.blocks > 0 && (p.blocks_done, p.blocks) != last {
            // One JSON event per change of the receive status (NDJSON on stdout).
            last = (p.blocks_done, p.blocks);
            json::print(&ProgressJson::new(p));
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
    let mut ready = false;
    let r = relay(cfg, stop, &mut |p| {
        // The first progress comes while the upstream side waits for a session: ready.
        if !ready {
            ready = true;
            crate::daemon::notify_ready(&format!(
                "relay: {} -> {} group(s)",
                cfg.upstream.group,
                cfg.downstream.len()
            ));
        }
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
    crate::daemon::notify_stopping();
    up.finish_and_clear();
    for b in downs {
        b.finish_and_clear();
    }
    r
}

/// What a receiver says of its session's authenticity.
pub fn session_line(t: &blockcast_node::SessionTrust) -> String {
    let hash = blockcast_proto::auth::hex(&t.manifest_hash);
    match t.signer {
        Some(k) if t.control_signed => format!(
            "session signed by trusted key {}; manifest {hash}",
            blockcast_proto::auth::hex(&k)
        ),
        Some(k) => format!(
            "content signed by trusted key {} (announces unsigned: a relay without a key); manifest {hash}",
            blockcast_proto::auth::hex(&k)
        ),
        None => format!(
            "session UNAUTHENTICATED (no --trust): manifest {hash}; pin it with --expect {hash} or use signed sessions"
        ),
    }
}
