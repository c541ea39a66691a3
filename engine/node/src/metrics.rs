//! Prometheus metrics of the long-running nodes (origin, agent, relay, receive with HTTP),
//! served as text on `--metrics ADDR` at `/metrics` (prometheus-client's encoder).
//!
//! The protocol cores keep plain counters (`SenderStats`, `ReceiverStats`, `HandlerStats`);
//! the nodes copy them here as they report progress: a counter is raised by what its source
//! grew since the last report ([`Delta`]), so a session that ends leaves its counts in the
//! totals. Per-session series carry `object` and `session` labels and are removed when the
//! session ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::http::api::{spawn_api, ApiRequest, ApiResponse, Handler};
use crate::NodeError;

/// A counter's source seen so far, to raise the counter by what it grew.
#[derive(Debug, Default)]
pub struct Delta(HashMap<&'static str, u64>);

impl Delta {
    /// Raises `c` by how much `now` grew since the last call for `key`.
    pub fn add(&mut self, key: &'static str, c: &Counter, now: u64) {
        let last = self.0.insert(key, now).unwrap_or(0);
        c.inc_by(now.saturating_sub(last));
    }
}

/// Labels of a per-session series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabels {
    pub object: String,
    pub session: String,
}

/// Labels of a per-status series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
}

/// What an origin counts.
#[derive(Clone, Default)]
pub struct OriginMetrics {
    pub sessions_total: Counter,
    pub sessions: Gauge,
    pub session_failures_total: Counter,
    pub requests_total: Family<StatusLabels, Counter>,
    pub catalog_objects: Gauge,
    pub catalog_unready: Gauge,
    pub catalog_generation: Gauge,
    pub sender: SenderMetrics,
    pub session_members: Family<SessionLabels, Gauge>,
    pub session_complete: Family<SessionLabels, Gauge>,
    pub session_rate: Family<SessionLabels, Gauge>,
    pub session_sent_bytes: Family<SessionLabels, Gauge<u64, AtomicU64>>,
}

/// What servers send, across sessions.
#[derive(Clone, Default)]
pub struct SenderMetrics {
    pub tx_bytes_total: Counter,
    pub tx_units_total: Counter,
    pub repair_units_total: Counter,
    pub parity_units_total: Counter,
    pub nacks_received_total: Counter,
    pub receipts_received_total: Counter,
    pub members_joined_total: Counter,
}

/// What receivers take, across transfers.
#[derive(Clone, Default)]
pub struct ReceiverMetrics {
    pub rx_verified_bytes_total: Counter,
    pub rx_units_total: Counter,
    pub blocks_verified_total: Counter,
    pub verify_failures_total: Counter,
    pub nacks_sent_total: Counter,
    pub duplicates_total: Counter,
    pub socket_drops_total: Counter,
}

/// What an agent counts.
#[derive(Clone, Default)]
pub struct AgentMetrics {
    pub objects_synced_total: Counter,
    pub objects_held: Gauge,
    pub transfers: Gauge,
    pub fetch_failures_total: Counter,
    pub hook_failures_total: Counter,
    pub catalog_polls_total: Counter,
    pub receiver: ReceiverMetrics,
}

impl SenderMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "blockcast_tx_bytes",
            "Datagram bytes sent (first pass and repairs)",
            self.tx_bytes_total.clone(),
        );
        r.register(
            "blockcast_tx_units",
            "Data units sent in first passes",
            self.tx_units_total.clone(),
        );
        r.register(
            "blockcast_repair_units",
            "Original units sent again as repairs (XOR repairs included)",
            self.repair_units_total.clone(),
        );
        r.register(
            "blockcast_parity_units",
            "Parity units sent",
            self.parity_units_total.clone(),
        );
        r.register(
            "blockcast_nacks_received",
            "NACK packets received",
            self.nacks_received_total.clone(),
        );
        r.register(
            "blockcast_receipts_received",
            "Receipt notices received",
            self.receipts_received_total.clone(),
        );
        r.register(
            "blockcast_members_joined",
            "Receivers accepted into sessions",
            self.members_joined_total.clone(),
        );
    }

    /// Raises the counters by what `s` (one session's counters, plus `first_pass` bytes and
    /// units its data threads sent) grew; `d` remembers that session's last values.
    pub fn update(
        &self,
        d: &mut Delta,
        s: &blockcast_proto::SenderStats,
        first_pass: (u64, u64),
        members: u64,
    ) {
        d.add(
            "tx_bytes",
            &self.tx_bytes_total,
            s.data_bytes + s.parity_bytes + first_pass.0,
        );
        d.add(
            "tx_units",
            &self.tx_units_total,
            s.data_units + first_pass.1,
        );
        d.add(
            "repair_units",
            &self.repair_units_total,
            s.repair_units + s.xor_units,
        );
        d.add("parity_units", &self.parity_units_total, s.parity_units);
        d.add("nacks", &self.nacks_received_total, s.nacks);
        d.add("receipts", &self.receipts_received_total, s.receipts);
        d.add("members", &self.members_joined_total, members);
    }
}

impl ReceiverMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "blockcast_rx_verified_bytes",
            "Bytes received and verified",
            self.rx_verified_bytes_total.clone(),
        );
        r.register(
            "blockcast_rx_units",
            "Data and parity units received",
            self.rx_units_total.clone(),
        );
        r.register(
            "blockcast_blocks_verified",
            "Blocks whose BLAKE3 matched the manifest",
            self.blocks_verified_total.clone(),
        );
        r.register(
            "blockcast_verify_failures",
            "Blocks whose BLAKE3 did not match (fetched again)",
            self.verify_failures_total.clone(),
        );
        r.register(
            "blockcast_nacks_sent",
            "NACK packets sent",
            self.nacks_sent_total.clone(),
        );
        r.register(
            "blockcast_rx_duplicates",
            "Units received that were already held",
            self.duplicates_total.clone(),
        );
        r.register(
            "blockcast_rx_socket_drops",
            "Datagrams the kernel dropped for a full socket buffer",
            self.socket_drops_total.clone(),
        );
    }

    /// Raises the counters by what one transfer's counters grew.
    pub fn update(&self, d: &mut Delta, s: &blockcast_proto::ReceiverStats, verified_bytes: u64) {
        d.add("rx_bytes", &self.rx_verified_bytes_total, verified_bytes);
        d.add(
            "rx_units",
            &self.rx_units_total,
            s.data_units + s.parity_units,
        );
        d.add("blocks", &self.blocks_verified_total, s.blocks_verified);
        d.add("failed", &self.verify_failures_total, s.blocks_failed);
        d.add("nacks", &self.nacks_sent_total, s.nacks);
        d.add("dups", &self.duplicates_total, s.duplicates);
        d.add("drops", &self.socket_drops_total, s.socket_drops);
    }
}

impl OriginMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "blockcast_origin_sessions",
            "Sessions the origin started",
            self.sessions_total.clone(),
        );
        r.register(
            "blockcast_origin_sessions_running",
            "Sessions running now",
            self.sessions.clone(),
        );
        r.register(
            "blockcast_origin_session_failures",
            "Sessions that ended with an error (a catalog file that disappeared, a socket)",
            self.session_failures_total.clone(),
        );
        r.register(
            "blockcast_origin_requests",
            "Requests and catalog queries, by answer (rate_limited: dropped unanswered)",
            self.requests_total.clone(),
        );
        r.register(
            "blockcast_origin_catalog_objects",
            "Objects in the published catalog",
            self.catalog_objects.clone(),
        );
        r.register(
            "blockcast_origin_catalog_unready",
            "Files found in the catalog directory and not hashed yet",
            self.catalog_unready.clone(),
        );
        r.register(
            "blockcast_origin_catalog_generation",
            "The published catalog's generation",
            self.catalog_generation.clone(),
        );
        self.sender.register(r);
        r.register(
            "blockcast_session_members",
            "Receivers in a running session",
            self.session_members.clone(),
        );
        r.register(
            "blockcast_session_complete_members",
            "Receivers of a running session that hold every block",
            self.session_complete.clone(),
        );
        r.register(
            "blockcast_session_rate_bytes_per_second",
            "A running session's send rate",
            self.session_rate.clone(),
        );
        r.register(
            "blockcast_session_sent_bytes",
            "Bytes a running session has sent",
            self.session_sent_bytes.clone(),
        );
    }

    /// Removes a finished session's series.
    pub fn forget(&self, l: &SessionLabels) {
        self.session_members.remove(l);
        self.session_complete.remove(l);
        self.session_rate.remove(l);
        self.session_sent_bytes.remove(l);
    }
}

impl AgentMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "blockcast_agent_objects_synced",
            "Objects fetched, verified and put in place",
            self.objects_synced_total.clone(),
        );
        r.register(
            "blockcast_agent_objects_held",
            "Subscribed objects held whole",
            self.objects_held.clone(),
        );
        r.register(
            "blockcast_agent_transfers",
            "Transfers running now",
            self.transfers.clone(),
        );
        r.register(
            "blockcast_agent_fetch_failures",
            "Fetches that failed (tried again at a later poll)",
            self.fetch_failures_total.clone(),
        );
        r.register(
            "blockcast_agent_hook_failures",
            "Hooks that exited with an error",
            self.hook_failures_total.clone(),
        );
        r.register(
            "blockcast_agent_catalog_polls",
            "Catalogs fetched from the origin",
            self.catalog_polls_total.clone(),
        );
        self.receiver.register(r);
    }
}

/// A registry with the build's information in it.
pub fn registry() -> Registry {
    let mut r = Registry::default();
    let info = Family::<BuildLabels, Gauge>::default();
    info.get_or_create(&BuildLabels {
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
    .set(1);
    r.register("blockcast_build_info", "The running build", info);
    r
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// Serves `registry` as Prometheus text at `/metrics` on exactly `addr` until `stop`.
pub fn serve(
    addr: SocketAddr,
    registry: Registry,
    stop: Arc<AtomicBool>,
) -> Result<(std::thread::JoinHandle<()>, SocketAddr), NodeError> {
    let registry = Mutex::new(registry);
    let handler: Arc<Handler> = Arc::new(move |r: &ApiRequest| {
        if r.method != "GET" && r.method != "HEAD" {
            return ApiResponse::text(405, "GET /metrics\n");
        }
        if r.path != "/metrics" {
            return ApiResponse::text(404, "metrics are at /metrics\n");
        }
        let mut body = String::new();
        let reg = registry.lock().unwrap_or_else(|e| e.into_inner());
        match prometheus_client::encoding::text::encode(&mut body, &reg) {
            Ok(()) => ApiResponse {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: to_prometheus_text(&body),
            },
            Err(_) => ApiResponse::text(500, "cannot encode the metrics\n"),
        }
    });
    spawn_api(addr, "bc-metrics", handler, stop)
}

/// The Prometheus text format (0.0.4) of an OpenMetrics text: a counter family's help and
/// type name its `_total` samples, and the `# UNIT` and `# EOF` lines go. Every Prometheus
/// server and `promtool check metrics` read this format; OpenMetrics names a counter family
/// without its suffix, which they read as a family with no samples.
pub fn to_prometheus_text(open_metrics: &str) -> String {
    let mut out = String::with_capacity(open_metrics.len());
    let mut help: Option<&str> = None;
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            if let Some(h) = help.take() {
                let text = h.split_once(' ').map_or("", |(_, t)| t);
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_rise_by_what_their_source_grew() {
        let c = Counter::default();
        let mut d = Delta::default();
        d.add("x", &c, 5);
        d.add("x", &c, 7);
        // A source that went back (a new session under the same key) adds nothing.
        d.add("x", &c, 3);
        assert_eq!(c.get(), 7);
        let mut r = registry();
        let m = OriginMetrics::default();
        m.register(&mut r);
        m.sessions_total.inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(text.contains("blockcast_origin_sessions_total 1"), "{text}");
        assert!(text.contains("blockcast_build_info{version="), "{text}");
        let plain = to_prometheus_text(&text);
        assert!(
            plain.contains("# HELP blockcast_origin_sessions_total Sessions the origin started.")
        );
        assert!(plain.contains(
            "# TYPE blockcast_origin_sessions_total counter\nblockcast_origin_sessions_total 1\n"
        ));
        assert!(!plain.contains("# EOF"));
    }
}

/// What an edge counts (`blockcast edge --metrics`): the edge's own counters and its tiers,
/// copied from [`crate::edge::Edge`] by [`EdgeMetrics::update`].
#[derive(Clone, Default)]
pub struct EdgeMetrics {
    pub requests_total: Counter,
    pub fills_total: Counter,
    pub fill_failures_total: Counter,
    pub origin_bytes_total: Counter,
    pub group_bytes_total: Counter,
    pub group_sessions_total: Counter,
    pub sent_bytes_ram_total: Counter,
    pub sent_bytes_disk_total: Counter,
    pub renditions_made_total: Counter,
    pub renditions_from_origin_total: Counter,
    pub rendition_switches_total: Counter,
    pub ram_hits_total: Counter,
    pub disk_hits_total: Counter,
    pub misses_total: Counter,
    pub fills: Gauge,
    pub clients: Gauge,
    pub ram_bytes: Gauge<u64, AtomicU64>,
    pub disk_bytes: Gauge<u64, AtomicU64>,
}

impl EdgeMetrics {
    pub fn register(&self, r: &mut Registry) {
        let counters: [(&str, &str, &Counter); 14] = [
            (
                "blockcast_edge_requests",
                "HTTP requests answered",
                &self.requests_total,
            ),
            (
                "blockcast_edge_fills",
                "Fills started (sessions the origin granted the edge)",
                &self.fills_total,
            ),
            (
                "blockcast_edge_fill_failures",
                "Fills that ended before the object was whole",
                &self.fill_failures_total,
            ),
            (
                "blockcast_edge_origin_bytes",
                "Bytes the fills took from the origin into the cache",
                &self.origin_bytes_total,
            ),
            (
                "blockcast_edge_group_bytes",
                "Bytes the groups' sessions put into the cache (relay membership)",
                &self.group_bytes_total,
            ),
            (
                "blockcast_edge_group_sessions",
                "Sessions the edge's group members received",
                &self.group_sessions_total,
            ),
            (
                "blockcast_edge_sent_ram_bytes",
                "Body bytes sent to clients from the RAM tier",
                &self.sent_bytes_ram_total,
            ),
            (
                "blockcast_edge_sent_disk_bytes",
                "Body bytes sent to clients from the disk tier",
                &self.sent_bytes_disk_total,
            ),
            (
                "blockcast_edge_renditions_made",
                "Critical renditions made",
                &self.renditions_made_total,
            ),
            (
                "blockcast_edge_renditions_from_origin",
                "Critical renditions taken from the origin's second object",
                &self.renditions_from_origin_total,
            ),
            (
                "blockcast_edge_rendition_switches",
                "Auto responses switched to the critical rendition at a key frame",
                &self.rendition_switches_total,
            ),
            (
                "blockcast_edge_ram_hits",
                "Block lookups served from RAM",
                &self.ram_hits_total,
            ),
            (
                "blockcast_edge_disk_hits",
                "Block lookups served from disk (verified)",
                &self.disk_hits_total,
            ),
            (
                "blockcast_edge_misses",
                "Block lookups neither tier could serve",
                &self.misses_total,
            ),
        ];
        for (name, help, c) in counters {
            r.register(name, help, c.clone());
        }
        r.register(
            "blockcast_edge_fills_running",
            "Fills running now",
            self.fills.clone(),
        );
        r.register(
            "blockcast_edge_clients",
            "Client responses in progress",
            self.clients.clone(),
        );
        r.register(
            "blockcast_edge_ram_bytes",
            "Bytes held in the RAM tier",
            self.ram_bytes.clone(),
        );
        r.register(
            "blockcast_edge_disk_bytes",
            "Bytes held in the disk tier",
            self.disk_bytes.clone(),
        );
    }

    /// Copies the edge's counters and tiers (`d` remembers the last values).
    pub fn update(&self, d: &mut Delta, s: &crate::edge::EdgeStatus) {
        d.add("requests", &self.requests_total, s.requests);
        d.add("fills", &self.fills_total, s.fills.started);
        d.add("fill_failures", &self.fill_failures_total, s.fills.failed);
        d.add(
            "origin_bytes",
            &self.origin_bytes_total,
            s.fills.origin_bytes,
        );
        d.add("group_bytes", &self.group_bytes_total, s.fills.group_bytes);
        d.add(
            "group_sessions",
            &self.group_sessions_total,
            s.groups.iter().map(|g| g.sessions).sum(),
        );
        d.add("sent_ram", &self.sent_bytes_ram_total, s.sent_bytes_ram);
        d.add("sent_disk", &self.sent_bytes_disk_total, s.sent_bytes_disk);
        d.add("renditions", &self.renditions_made_total, s.renditions_made);
        d.add(
            "renditions_from_origin",
            &self.renditions_from_origin_total,
            s.renditions_from_origin,
        );
        d.add(
            "rendition_switches",
            &self.rendition_switches_total,
            s.rendition_switches,
        );
        d.add("ram_hits", &self.ram_hits_total, s.tiers.ram_hits);
        d.add("disk_hits", &self.disk_hits_total, s.tiers.disk_hits);
        d.add("misses", &self.misses_total, s.tiers.misses);
        self.fills.set(s.fills.running as i64);
        self.clients.set(s.clients.len() as i64);
        self.ram_bytes.set(s.tiers.ram_bytes);
        self.disk_bytes.set(s.tiers.disk_bytes);
    }
}
