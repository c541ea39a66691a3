//! Every JSON document the CLI prints, one struct each. The field names are an interface
//! (tests, bench/compare.sh and users' scripts read them): rename nothing.

use std::net::SocketAddr;

use blockcast_node::{ReceiveProgress, ReceiveSummary, ServeSummary};
use serde::Serialize;

use blockcast_proto::auth::hex;

/// Megabytes (10^6) per second, for a time that may be zero.
fn mb_per_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / seconds.max(1e-9) / 1e6
}

/// The summary of a server session: `serve --json`, each downstream group of `relay --json`,
/// and (with `role` "demo") the body of `demo --json`.
#[derive(Serialize)]
pub struct ServeJson {
    pub role: &'static str,
    pub objects: usize,
    pub bytes: u64,
    pub seconds: f64,
    pub mb_per_s: f64,
    /// CPU seconds of the server's threads (control and data), for CPU per GB.
    pub cpu_seconds: f64,
    /// How the session ended: "complete", "deadline" or "aborted".
    pub result: String,
    pub data_units: u64,
    pub repair_units: u64,
    pub xor_units: u64,
    pub xor_carried: u64,
    /// Units of blocks sent whole ahead of the first pass for priority requests (counted in
    /// `repair_units`; the first pass skipped those blocks).
    pub ahead_units: u64,
    pub parity_units: u64,
    pub nacks: u64,
    pub nack_bytes: u64,
    pub receipts: u64,
    /// The control address receivers report to.
    pub control: SocketAddr,
    pub receivers: Vec<ReceiverJson>,
    /// Datagram bytes of units sent: first pass, repairs, parity and XOR repairs.
    pub bytes_sent: u64,
    /// BLAKE3 of the manifest, hex: what `receive --expect` pins.
    pub manifest_hash: String,
    /// The public key (hex) the session statement is signed with; null: unsigned.
    pub signer: Option<String>,
    /// Packets naming a member from another address or with a wrong cookie (dropped).
    pub bad_cookies: u64,
    /// Challenges sent to unproven addresses, and those the challenge rate held back.
    pub challenges: u64,
    pub challenges_dropped: u64,
    /// Repair units and priority requests refused for members' budgets.
    pub repair_denied: u64,
    pub priority_denied: u64,
    /// Members dropped as slow (they asked for more than their share, and made no progress).
    pub dropped_slow: u64,
    /// A closed group (--secret): what the control socket opened and dropped; null without.
    /// How the first pass left: "socket" or "xdp" (AF_XDP frames).
    pub datapath: &'static str,
    /// First-pass units sent as AF_XDP frames (0 on the socket path).
    pub xdp_frames: u64,
    /// First-pass units dropped for want of a free AF_XDP frame (repaired like any loss).
    pub xdp_dropped: u64,
    pub sealed: Option<SealedJson>,
}

/// What a closed group's opener did (docs/wire.md §16): datagrams opened, and those dropped
/// unparsed, by reason.
#[derive(Serialize)]
pub struct SealedJson {
    pub opened: u64,
    /// Every datagram dropped: the sum of the reasons below.
    pub dropped: u64,
    /// Not sealed (from someone without the secret).
    pub untagged: u64,
    /// The tag did not hold (another secret, or altered on the way).
    pub forged: u64,
    /// A control packet seen before, or older than the replay window.
    pub replayed: u64,
    /// Too short to be sealed.
    pub short: u64,
    /// A control packet from one sender too many.
    pub refused: u64,
}

impl SealedJson {
    pub fn new(s: &blockcast_node::OpenStats) -> Self {
        SealedJson {
            opened: s.opened,
            dropped: s.dropped(),
            untagged: s.untagged,
            forged: s.forged,
            replayed: s.replayed,
            short: s.short,
            refused: s.refused,
        }
    }
}

/// One receiver as the server saw it.
#[derive(Serialize)]
pub struct ReceiverJson {
    pub id: u64,
    pub addr: SocketAddr,
    pub complete: bool,
    pub rtt_us: Option<u64>,
    pub loss_ppm: u32,
}

impl ServeJson {
    pub fn new(role: &'static str, s: &ServeSummary) -> Self {
        ServeJson {
            role,
            objects: s.objects,
            bytes: s.bytes,
            seconds: s.seconds,
            mb_per_s: mb_per_s(s.bytes, s.seconds),
            cpu_seconds: s.cpu_seconds,
            result: format!("{:?}", s.reason).to_lowercase(),
            data_units: s.stats.data_units,
            repair_units: s.stats.repair_units,
            xor_units: s.stats.xor_units,
            xor_carried: s.stats.xor_carried,
            ahead_units: s.stats.ahead_units,
            parity_units: s.stats.parity_units,
            nacks: s.stats.nacks,
            nack_bytes: s.stats.nack_bytes,
            receipts: s.stats.receipts,
            control: s.control,
            bytes_sent: s.stats.data_bytes + s.stats.parity_bytes,
            manifest_hash: hex(&s.manifest_hash),
            signer: s.signer.map(|k| hex(&k)),
            bad_cookies: s.stats.bad_cookies,
            challenges: s.stats.challenges,
            challenges_dropped: s.stats.challenges_dropped,
            repair_denied: s.stats.repair_denied,
            priority_denied: s.stats.priority_denied,
            dropped_slow: s.stats.dropped_slow,
            datapath: s.datapath,
            xdp_frames: s.xdp_frames,
            xdp_dropped: s.xdp_dropped,
            sealed: s.sealed.as_ref().map(SealedJson::new),
            receivers: s
                .receivers
                .iter()
                .map(|r| ReceiverJson {
                    id: r.id.0,
                    addr: r.addr,
                    complete: r.complete,
                    rtt_us: r.rtt_us,
                    loss_ppm: r.loss_ppm,
                })
                .collect(),
        }
    }
}

/// The last line of `receive --json` (after its progress events), and the upstream side of
/// `relay --json`.
#[derive(Serialize)]
pub struct ReceiveJson {
    /// Always "summary" (the lines before it are "progress").
    pub event: &'static str,
    pub role: &'static str,
    pub files: Vec<String>,
    pub bytes: u64,
    pub seconds: f64,
    pub mb_per_s: f64,
    pub data_units: u64,
    pub parity_units: u64,
    pub xor_units: u64,
    pub xor_unusable: u64,
    pub duplicates: u64,
    pub socket_drops: u64,
    pub decodes: u64,
    pub blocks_failed: u64,
    pub nacks: u64,
    /// Bytes of blocks an earlier receive into the same place left, kept (not fetched).
    pub reused_bytes: u64,
    /// Bytes of blocks verified from what arrived in this run.
    pub received_bytes: u64,
    /// The receive buffer the kernel granted, bytes.
    pub rcvbuf: usize,
    pub transfer_seconds: f64,
    pub sync_seconds: f64,
    pub cpu_seconds: f64,
    pub forwarded: u64,
    /// Split mode: copies the member's send buffer refused (datagrams), lost to the peers.
    pub forward_dropped: u64,
    pub stripe_datagrams: u64,
    /// Bytes handed to the player (null without --play / --play-cmd).
    pub played_bytes: Option<u64>,
    pub first_byte_seconds: Option<f64>,
    /// The session statement was signed by a key given with --trust.
    pub authenticated: bool,
    /// That key (hex); null when unauthenticated.
    pub signer: Option<String>,
    /// Its announces and Done were signed by a trusted key too (false behind a relay without
    /// a key).
    pub control_signed: bool,
    /// BLAKE3 of the manifest (hex): pin it with --expect.
    pub manifest_hash: Option<String>,
    /// Announces refused (unsigned, untrusted key, bad signature, other content than pinned).
    pub forged_announces: u64,
    /// Session Dones refused for their signatures (treated as no Done).
    pub forged_dones: u64,
    /// Signed packets dropped unchecked (more than the signature-check budget).
    pub unchecked_signatures: u64,
    /// Parity and XOR units dropped at the parity memory bound.
    pub parity_dropped: u64,
    /// A closed group (--secret): what the receive thread opened and dropped; null without.
    pub sealed: Option<SealedJson>,
    /// The datapath the data came through: "socket" or "xdp" (AF_XDP).
    pub datapath: &'static str,
    /// Frames received through AF_XDP (0 on the socket path).
    pub xdp_frames: u64,
    /// Blocks assembled in block buffers (written past the page cache), and through the page
    /// cache (none free, or --block-buffers 0).
    pub blocks_buffered: u64,
    pub blocks_page_cache: u64,
    /// Data units read straight into their place in a block buffer (no copy after the
    /// kernel's).
    pub units_in_place: u64,
}

impl ReceiveJson {
    pub fn new(s: &ReceiveSummary) -> Self {
        ReceiveJson {
            event: "summary",
            role: "receiver",
            files: s.files.iter().map(|p| p.display().to_string()).collect(),
            bytes: s.bytes,
            seconds: s.seconds,
            mb_per_s: mb_per_s(s.bytes, s.seconds),
            data_units: s.stats.data_units,
            parity_units: s.stats.parity_units,
            xor_units: s.stats.xor_units,
            xor_unusable: s.stats.xor_unusable,
            duplicates: s.stats.duplicates,
            socket_drops: s.stats.socket_drops,
            decodes: s.stats.decodes,
            blocks_failed: s.stats.blocks_failed,
            nacks: s.stats.nacks,
            reused_bytes: s.stats.reused_bytes,
            received_bytes: s.stats.received_bytes,
            rcvbuf: s.rcvbuf.0,
            transfer_seconds: s.transfer_seconds,
            sync_seconds: s.sync_seconds,
            cpu_seconds: s.cpu_seconds,
            forwarded: s.forwarded,
            forward_dropped: s.forward_dropped,
            stripe_datagrams: s.stripe_datagrams,
            played_bytes: s.play.as_ref().map(|p| p.bytes),
            first_byte_seconds: s.play.as_ref().and_then(|p| p.first_byte_secs),
            authenticated: s.session.is_some_and(|t| t.signer.is_some()),
            signer: s.session.and_then(|t| t.signer).map(|k| hex(&k)),
            control_signed: s.session.is_some_and(|t| t.control_signed),
            manifest_hash: s.session.map(|t| hex(&t.manifest_hash)),
            forged_announces: s.stats.forged_announces,
            forged_dones: s.stats.forged_dones,
            unchecked_signatures: s.stats.unchecked_signatures,
            parity_dropped: s.stats.parity_dropped,
            sealed: s.sealed.as_ref().map(SealedJson::new),
            datapath: s.datapath,
            xdp_frames: s.xdp_frames,
            blocks_buffered: s.blocks_buffered,
            blocks_page_cache: s.blocks_page_cache,
            units_in_place: s.units_in_place,
        }
    }
}

/// One line of `receive --json` per change of the receive status, before the summary.
#[derive(Serialize)]
pub struct ProgressJson<'a> {
    /// Always "progress".
    pub event: &'static str,
    pub blocks_verified: u64,
    pub blocks: u64,
    pub bytes_verified: u64,
    pub bytes: u64,
    pub objects: Vec<ObjectProgressJson<'a>>,
}

/// One object of a [`ProgressJson`].
#[derive(Serialize)]
pub struct ObjectProgressJson<'a> {
    pub name: &'a str,
    pub bytes_verified: u64,
}

impl<'a> ProgressJson<'a> {
    pub fn new(p: &'a ReceiveProgress) -> Self {
        ProgressJson {
            event: "progress",
            blocks_verified: p.blocks_done,
            blocks: p.blocks,
            bytes_verified: p.bytes_verified,
            bytes: p.total_bytes,
            objects: p
                .objects
                .iter()
                .map(|(name, v)| ObjectProgressJson {
                    name,
                    bytes_verified: *v,
                })
                .collect(),
        }
    }
}

/// `relay --json`: the upstream receive and each downstream session.
#[derive(Serialize)]
pub struct RelayJson {
    /// Always "relay".
    pub role: &'static str,
    pub upstream: ReceiveJson,
    pub downstream: Vec<ServeJson>,
}

/// `keygen --json`: where the key pair went (or, with `--secret`, the group secret: then
/// `public` and `key` are null).
#[derive(Serialize)]
pub struct KeygenJson {
    /// Always "keygen".
    pub role: &'static str,
    pub secret: String,
    pub public: Option<String>,
    /// The public key, hex (what `--trust` also takes).
    pub key: Option<String>,
}

/// `demo --json`: the server's summary (role "demo") and the copies checked against the sample.
#[derive(Serialize)]
pub struct DemoJson {
    #[serde(flatten)]
    pub served: ServeJson,
    pub copies_verified: usize,
}

/// `bench --json`.
#[derive(Serialize)]
pub struct BenchJson {
    /// Always "bench".
    pub role: &'static str,
    pub receivers: usize,
    pub bytes: u64,
    pub unit_size: u16,
    pub gb_per_s_per_receiver: f64,
    pub gb_per_s_aggregate: f64,
    pub packets_per_s: f64,
    pub server_cpu_s_per_gb: f64,
    pub receiver_cpu_s_per_gb: f64,
    pub nacks: u64,
    pub parity_units: u64,
    pub repair_units: u64,
    pub xor_units: u64,
    pub worst_loss_ppm: u32,
    pub block_latency_us: LatencyJson,
    pub copies_verified: usize,
    /// Per cent of the machine's CPU time the hypervisor gave to others while the session
    /// ran (steal, /proc/stat; 0 on bare metal or where it cannot be read).
    pub host_steal_pct: f64,
}

/// Block-completion latency percentiles, microseconds.
#[derive(Serialize)]
pub struct LatencyJson {
    pub p50: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub max: u64,
}

/// `hash --json`.
#[derive(Serialize)]
pub struct HashJson<'a> {
    /// Always "hash".
    pub role: &'static str,
    pub objects: Vec<HashedObjectJson<'a>>,
    /// How many objects' hashes came from the cache.
    pub from_cache: usize,
    pub seconds: f64,
    /// The cache directory.
    pub cache: String,
}

/// One object of a [`HashJson`].
#[derive(Serialize)]
pub struct HashedObjectJson<'a> {
    pub name: &'a str,
    pub bytes: u64,
    pub blocks: usize,
    /// BLAKE3 of the whole object, hex (as `b3sum` prints it).
    pub blake3: String,
}

/// One JSON document on one line of stdout.
pub fn print(doc: &impl Serialize) {
    // The documents hold strings, numbers, booleans and arrays: serializing cannot fail.
    match serde_json::to_string(doc) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("blockcast: cannot write the JSON summary: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_print_as_address_and_port() {
        let r = ReceiverJson {
            id: 7,
            addr: "10.0.0.2:9000".parse().unwrap(),
            complete: true,
            rtt_us: None,
            loss_ppm: 0,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"id":7,"addr":"10.0.0.2:9000","complete":true,"rtt_us":null,"loss_ppm":0}"#
        );
    }

    #[test]
    fn progress_events_name_their_objects() {
        let p = ReceiveProgress {
            objects: vec![("a \"b\".iso".into(), 1400)],
            bytes_verified: 1400,
            total_bytes: 2800,
            blocks_done: 1,
            blocks: 2,
            session: None,
            stats: None,
        };
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&ProgressJson::new(&p)).unwrap()).unwrap();
        assert_eq!(v["event"], "progress");
        assert_eq!(v["blocks_verified"], 1);
        assert_eq!(v["blocks"], 2);
        assert_eq!(v["bytes_verified"], 1400);
        assert_eq!(v["bytes"], 2800);
        assert_eq!(v["objects"][0]["name"], "a \"b\".iso");
        assert_eq!(v["objects"][0]["bytes_verified"], 1400);
    }
}
