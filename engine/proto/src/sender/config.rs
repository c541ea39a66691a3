//! How a sender behaves: [`SenderConfig`] and the defaults the CLI starts from.

use std::net::SocketAddr;
use std::time::Duration;

use crate::auth::{Signature, Signer};
use crate::rate::RateLimits;
use crate::split::SplitConfig;
use crate::wire::SessionId;
use crate::Geometry;

/// How a sender behaves. `Default` gives the values the CLI starts from.
#[derive(Clone, Debug)]
pub struct SenderConfig {
    pub session: SessionId,
    /// The control address receivers send to (advertised in every announce).
    pub control: SocketAddr,
    pub geometry: Geometry,
    /// Stripes the blocks are dealt into (one per sending core).
    pub stripes: u16,
    /// Pacing: datagram bytes per second on the group, first pass and repairs together
    /// (with an external first pass, the first pass yields half of it while repairs are
    /// queued, and what they took lately otherwise; repairs are paced against the whole rate
    /// less what the first pass sent: [`Sender::first_pass_rate`](super::Sender::first_pass_rate)). With `rate_control` this is
    /// where the automatic rate starts.
    pub rate: u64,
    /// `--rate auto`: follow congestion at the receivers within these bounds
    /// ([`crate::rate`]); `None`: a fixed `rate`.
    pub rate_control: Option<RateLimits>,
    /// How much sending time pacing may catch up at once after a stall.
    pub burst: Duration,
    /// Bytes that leave together once pacing lets a datagram go (a node sets one GSO
    /// super-buffer, so paced threads send whole super-buffers and sleep between them); 0:
    /// every datagram waits its own turn.
    pub pace_quantum: usize,
    pub announce_interval: Duration,
    /// While the first pass waits for receivers, announce this often instead (when shorter,
    /// and no faster than the carousel's waiting byte rate allows): receivers that are
    /// listening join as soon as they hear the announce and the manifest, and one that lost
    /// either should not wait a whole interval for the next (a node's sessions, and an
    /// origin's, whose receivers were granted it a moment ago). `None`: `announce_interval`
    /// throughout.
    pub waiting_announce_interval: Option<Duration>,
    /// Manifest chunks sent after each announce (a carousel for late joiners).
    pub manifest_chunks_per_announce: usize,
    /// Round-trip estimate until receivers have measured one.
    pub initial_grtt: Duration,
    /// Start the first pass once this many receivers are accepted...
    pub min_receivers: usize,
    /// ...or once this long has passed since the first announce.
    pub max_wait: Duration,
    /// Before the first pass starts, the most it waits for each accepted receiver's first
    /// receipt notice: a receiver that holds blocks already (a resumed receive) sends one
    /// right after the accept, and the first pass skips what every receiver holds. The wait
    /// is 4 round trips (at least 5 ms), capped at this: a receiver with nothing to tell
    /// sends its first notice later, and costs the start that much once.
    pub first_receipt_wait: Duration,
    /// Stop at this long after the first announce even if receivers are incomplete.
    pub deadline: Option<Duration>,
    /// A receiver not heard from for this long is dropped.
    pub receiver_timeout: Duration,
    /// Most receivers admitted (rows of the status matrix).
    pub max_receivers: usize,
    /// Blocks whose parity units are kept ready (each costs `max_parity * unit_size`).
    pub parity_cache_blocks: usize,
    /// Repair with the original units receivers name rather than with parity while that
    /// costs at most this many times parity's bandwidth. Parity serves every receiver with
    /// one set of units, but each receiver that takes one must decode its whole block
    /// (milliseconds of CPU per MiB, whatever it lost); originals only need receiving. The
    /// cost ratio is estimated as the sum of the incomplete members' loss rates over the
    /// largest (about N for N receivers that lose alike; the member count until losses are
    /// reported), so small groups get originals and large ones parity. 0: parity always.
    pub originals_factor: u32,
    /// While repairs go as originals, combine the units different receivers miss into XOR
    /// repairs (wire.md §3.2): one datagram carries up to four units, each for a receiver
    /// that holds the others, so a small group gets about its largest member's losses resent
    /// instead of the union of everyone's, and a receiver rebuilds with a few XORs, not a
    /// decode of its block. The server waits up to [`XOR_GATHER_GRTTS`] round trips after a
    /// block's first NACK for the others'. Multicast only (not in split mode).
    pub xor_repairs: bool,
    /// The node sends the first pass itself (one data thread per stripe, straight from the
    /// source) and reports how far it got with [`Sender::handle_first_pass`](super::Sender::handle_first_pass); the sender then
    /// announces, repairs and tracks receivers, and never emits first-pass units.
    pub external_first_pass: bool,
    /// Split mode (wire.md §14): no multicast. Every unit goes by unicast to one member,
    /// which copies it on as its plan says; announces, manifests and done packets go to each
    /// member by unicast. Needs an internal first pass.
    pub split: Option<SplitConfig>,
    /// The server's secret for return-routability cookies (wire.md §6.1): random, made at
    /// start by the node, never sent.
    pub cookie_key: [u8; 32],
    /// Sign the session statement (unless `statement` is given), every Announce and every
    /// session Done with this key (wire.md §15).
    pub signer: Option<Signer>,
    /// A relay: the origin's session statement signature, passed on unchanged.
    pub statement: Option<Signature>,
    /// When the session statement was made (Unix seconds; a relay passes the origin's on).
    pub issued: u64,
    /// Each member's repairs beyond a burst of one block: at most this share of the rate
    /// (docs/wire.md §12.11). More makes it a slow member.
    pub member_repair_share: f64,
    /// Challenges (Accepts handing out a cookie) sent per second at most, after a burst of
    /// 1,000 or `min_receivers`, whichever is larger.
    pub challenges_per_sec: f64,
}

/// The default [`SenderConfig::originals_factor`]: groups of up to about four receivers that
/// lose alike get originals (measured in docs/DESIGN.md, 2026-11-22).
pub const ORIGINALS_FACTOR: u32 = 4;

/// The default [`SenderConfig::member_repair_share`]: beyond its loss allowance (1/18 of what
/// it can have missed, up to 1/3 when its notices report that much loss: sender/guard.rs), a
/// member that loses up to about 3 % more of what is sent keeps up; one that asks for more
/// gets that much of the rate, no more (so one member that claims to miss everything costs
/// the session its allowance and about 3 %).
pub const MEMBER_REPAIR_SHARE: f64 = 1.0 / 32.0;

/// [`SenderConfig::member_repair_share`] in split mode: a member there takes every unit from
/// up to a cell's worth of senders at once (the server and its peers' copies) and forwards on
/// the same thread, so an honest member starved of CPU overflows its socket and loses more than
/// 3 % (measured 1-12 % on the namespace bench, docs/DESIGN.md 2026-12-02); refused, it waits
/// for its repairs at 3 % of the rate. One member can cost the session an eighth of the rate.
pub const SPLIT_MEMBER_REPAIR_SHARE: f64 = 1.0 / 8.0;

/// How long the server holds a block's XOR repairs after its first NACK, in round trips:
/// receivers draw their NACK times from a window of up to 4.25 round trips (the default
/// backoff factor of 4, plus a quarter), and a combination can only serve the receivers whose
/// NACKs are in. While the first pass runs the wait costs nothing (the block steps aside).
pub const XOR_GATHER_GRTTS: u32 = 4;

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            session: SessionId(1),
            control: SocketAddr::from(([127, 0, 0, 1], 0)),
            geometry: Geometry {
                unit_size: 1400,
                units_per_block: 749,
                max_parity: 128,
            },
            stripes: 1,
            rate: 1_000_000_000,
            rate_control: None,
            burst: Duration::from_millis(2),
            pace_quantum: 0,
            announce_interval: Duration::from_millis(100),
            waiting_announce_interval: None,
            manifest_chunks_per_announce: 64,
            initial_grtt: Duration::from_millis(5),
            min_receivers: 0,
            max_wait: Duration::from_secs(5),
            first_receipt_wait: Duration::from_millis(200),
            deadline: None,
            receiver_timeout: Duration::from_secs(10),
            max_receivers: 100_000,
            parity_cache_blocks: 256,
            originals_factor: ORIGINALS_FACTOR,
            xor_repairs: true,
            external_first_pass: false,
            split: None,
            cookie_key: [0; 32],
            signer: None,
            statement: None,
            issued: 0,
            member_repair_share: MEMBER_REPAIR_SHARE,
            challenges_per_sec: super::guard::CHALLENGES_PER_SEC,
        }
    }
}
