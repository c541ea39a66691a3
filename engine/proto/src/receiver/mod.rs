//! A receiver's side of a session, sans-IO (docs/DESIGN.md "Protocol").
//!
//! The receiver learns the session from an announce, assembles the manifest from its
//! chunks, joins, places units by address into its [`BlockStore`], rebuilds blocks from
//! parity units, verifies every block against its BLAKE3 hash before marking it done (a
//! block that fails is discarded and fetched again), NACKs what it misses after a random
//! backoff scaled to the group size and round-trip time, sends receipt notices, and reports
//! done.
//!
//! Drive it like this: feed every datagram from the group and from the server's control
//! address to [`Receiver::handle_datagram`]; call [`Receiver::handle_timeout`] when the
//! instant from [`Receiver::poll_timeout`] passes; after either, call
//! [`Receiver::poll_transmit`] until it returns `None` and send what it gives to the
//! server's control address; drain [`Receiver::poll_event`].

mod blocks;
mod feedback;
mod lag;
mod manifest;
mod split;
#[cfg(test)]
mod tests;
mod trust;
#[cfg(test)]
mod trust_tests;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::auth::TrustedKeys;
use crate::bucket::TokenBucket;
use crate::endpoint::Endpoint;
use crate::numbering::BlockNumbering;
use crate::rng::Rng;
use crate::store::{BlockStore, StoreError};
use crate::wire::{
    AnnounceRepr, BlockIndex, DoneReason, DoneRepr, Manifest, ObjectId, Packet, ReceiverId,
    SessionId, UnitPacket, UnitParts, UnitView, WireError,
};
use crate::Transmit;

pub use blocks::Rebuild;

use blocks::{Blocks, PassFrontier};
use feedback::{Echo, Feedback};
use manifest::ManifestAssembly;
use split::SplitState;
pub use trust::manifest_bound;
use trust::{SessionAuth, SIGNATURE_CHECK_BURST};

/// Which units of a block a receiver still wants ([`Receiver::units_wanted`]).
#[derive(Clone, Copy, Debug)]
pub enum UnitsWanted<'a> {
    /// None (verified, out for hashing, or not a block of the session).
    None,
    /// All of its `n` units: nothing of it held.
    All(u16),
    /// Those not set in the bitmap of units held (or to be rebuilt).
    Missing(&'a blockcast_status::UnitBitmap),
}

impl UnitsWanted<'_> {
    /// Whether unit `index` is wanted.
    pub fn get(&self, index: u16) -> bool {
        match self {
            UnitsWanted::None => false,
            UnitsWanted::All(n) => index < *n,
            UnitsWanted::Missing(have) => {
                usize::from(index) < have.len() && !have.get(usize::from(index))
            }
        }
    }
}

/// How a receiver behaves. `Default` gives the values the CLI starts from.
#[derive(Clone, Debug)]
pub struct ReceiverConfig {
    pub id: ReceiverId,
    /// Seeds the backoff draws (a run is reproducible from it).
    pub seed: u64,
    /// Accept only this session; `None` takes the first one announced.
    pub session: Option<SessionId>,
    /// NACK backoff is drawn from `[0, backoff_factor * GRTT]`.
    pub backoff_factor: f64,
    /// Receipt notices the whole group may send the server per second (each receiver's
    /// interval grows with the group size so the server's load stays bounded).
    pub group_receipt_rate: f64,
    /// Shortest interval between one receiver's receipt notices.
    pub min_receipt_interval: Duration,
    /// How often to repeat a join until it is accepted.
    pub join_interval: Duration,
    /// Report the server lost after hearing nothing for this long.
    pub idle_timeout: Duration,
    /// Follow another session of the same content (the same manifest hash: a restarted
    /// server, another relay) once the one we are in has been silent this long.
    pub follow_after: Duration,
    /// Largest datagram to send (NACKs are packed up to it).
    pub max_datagram: usize,
    /// Do not hash completed blocks here: emit [`ReceiverEvent::VerifyBlock`] and wait for
    /// [`Receiver::handle_verified`] (the node hashes on another core). The block's bytes
    /// are not written meanwhile.
    pub external_verify: bool,
    /// Split mode (wire.md §14): no multicast. The receiver asks the server for the session
    /// by unicast, takes copy plans, and keeps reporting after it is complete (it still
    /// forwards copies until the session ends).
    pub split: Option<SplitMember>,
    /// Signed sessions (docs/wire.md §15): accept only a session whose statement is signed by
    /// one of these keys, and only Announces and Dones its sender signed with one of them.
    /// Empty: nothing is checked (the session is unauthenticated).
    pub trust: TrustedKeys,
    /// Pin the content without keys: the manifest hash, or the BLAKE3 of the object of a
    /// one-object session. Sessions of other content are not adopted.
    pub expect: Option<[u8; 32]>,
    /// Most bytes of parity and XOR repair payloads held for blocks not yet verified: what a
    /// peer can make this receiver keep in memory (more is dropped and asked for again).
    pub max_parity_bytes: usize,
}

/// A split-mode member's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitMember {
    /// The server's control address, where the receiver asks for the session.
    pub server: SocketAddr,
    /// The zone the member is in (members of a zone copy to each other).
    pub zone: u16,
}

/// Where copies of one unit go (split mode): see [`Receiver::copy_targets`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyTargets<'a> {
    /// Forward a copy with no copy flags to each of these (the other members of my cell).
    pub zone: &'a [SocketAddr],
    /// Forward a copy with both copy flags to each of these (my member in each next cell of
    /// the copy tree).
    pub next: &'a [SocketAddr],
}

impl CopyTargets<'_> {
    pub fn is_empty(&self) -> bool {
        self.zone.is_empty() && self.next.is_empty()
    }
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            id: ReceiverId(1),
            seed: 1,
            session: None,
            backoff_factor: 4.0,
            group_receipt_rate: 5_000.0,
            min_receipt_interval: Duration::from_millis(100),
            join_interval: Duration::from_millis(100),
            idle_timeout: Duration::from_secs(30),
            follow_after: Duration::from_millis(500),
            max_datagram: 1400,
            external_verify: false,
            split: None,
            trust: TrustedKeys::default(),
            expect: None,
            max_parity_bytes: 256 << 20,
        }
    }
}

/// What happened, for the node to act on and report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiverEvent {
    /// A session was announced and adopted.
    Announced {
        session: SessionId,
        control: SocketAddr,
    },
    /// The manifest is complete and verified; the store has been prepared.
    ManifestReady,
    /// The server accepted the join.
    Accepted { row: u32 },
    /// A block was rebuilt (if needed), hashed, and matched the manifest.
    BlockVerified { object: ObjectId, block: BlockIndex },
    /// External verification: rebuild this block's missing units (`rebuild`, when some
    /// came as parity), hash it (its bytes in the store) against `expected` and answer with
    /// [`Receiver::handle_verified`]. Both the decode and the hash belong off the receive
    /// path: a decode of a large block takes milliseconds, long enough for a socket to
    /// overflow behind it.
    VerifyBlock {
        object: ObjectId,
        block: BlockIndex,
        expected: [u8; 32],
        rebuild: Option<Rebuild>,
    },
    /// A block's bytes did not match its hash; it is discarded and fetched again.
    BlockFailed { object: ObjectId, block: BlockIndex },
    /// Every object is whole and verified.
    Complete,
    /// The server ended the session.
    SessionEnded { reason: DoneReason, complete: bool },
    /// Nothing heard from the server for the idle timeout.
    ServerLost,
    /// The store failed; the receiver has left the session.
    StoreFailed(StoreError),
    /// A datagram could not be decoded (counted in stats too).
    BadPacket(WireError),
}

/// Counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    pub data_units: u64,
    pub parity_units: u64,
    pub duplicates: u64,
    /// Units that arrived before the manifest was known (dropped).
    pub early_units: u64,
    pub decodes: u64,
    pub blocks_verified: u64,
    pub blocks_failed: u64,
    /// Blocks the store held already and kept (verified before, or hashed at the start).
    pub blocks_reused: u64,
    /// Their bytes.
    pub reused_bytes: u64,
    /// Bytes of the blocks verified from what arrived in this run.
    pub received_bytes: u64,
    pub nacks: u64,
    pub nack_entries: u64,
    pub nack_bytes: u64,
    pub receipts: u64,
    pub receipt_bytes: u64,
    pub bad_packets: u64,
    /// Packets of other sessions (ignored).
    pub strangers: u64,
    /// Fail-overs to another source ([`Receiver::switch_source`]), and sessions of the same
    /// content followed after ours fell silent.
    pub switches: u64,
    /// Datagrams the receiving socket dropped for lack of buffer space, as last reported
    /// through [`Receiver::note_socket`].
    pub socket_drops: u64,
    /// XOR repairs that gave this receiver a unit (wire.md §3.2).
    pub xor_units: u64,
    /// XOR repairs it could not use: it missed two or more of their units.
    pub xor_unusable: u64,
    /// Announces refused for their signatures (none, an untrusted key, or one that does not
    /// hold) or for content other than `expect` pins.
    pub forged_announces: u64,
    /// Session Dones refused for their signatures: treated as no Done.
    pub forged_dones: u64,
    /// Signed packets dropped unchecked: more arrived than the signature-check budget allows.
    pub unchecked_signatures: u64,
    /// Parity and XOR repair units dropped because the parity memory bound was reached.
    pub parity_dropped: u64,
}

/// A receiver's state machine for one session.
pub struct Receiver<S> {
    cfg: ReceiverConfig,
    store: S,
    rng: Rng,
    session: Option<SessionId>,
    announce: Option<AnnounceRepr>,
    /// The manifest hash of the session we follow, kept across a fail-over.
    known_hash: Option<[u8; 32]>,
    /// Manifests the node already has (a resumed receive's state files), by hash: an announce
    /// of one of them is adopted without waiting for the manifest's chunks.
    known_manifests: Vec<([u8; 32], Manifest)>,
    /// Blocks the store held at the start that are being hashed before they count; the join
    /// waits for them, so the first receipt notice says what we hold.
    checking: u64,
    assembly: ManifestAssembly,
    manifest: Option<Manifest>,
    /// The manifest's block numbering (empty until the manifest is here).
    numbering: BlockNumbering,
    blocks: Blocks,
    first_pass: PassFrontier,
    row: Option<u32>,
    feedback: Feedback,
    complete: bool,
    ended: bool,
    last_heard: Option<Instant>,
    /// When our source last announced (announces name the source; units and manifest chunks
    /// of a restarted relay carry the same session id, so only announces tell a live source
    /// from a dead one).
    source_announced: Option<Instant>,
    server_lost: bool,
    events: VecDeque<ReceiverEvent>,
    stats: ReceiverStats,
    split: SplitState,
    /// How long the server's packets wait in our socket before we take them (outside split
    /// mode): what we ask for comes behind that, so NACK timers wait that much longer, and the
    /// round trips we report leave it out (the server's GRTT is the path's, [`lag`]).
    lag: lag::QueueLag,
    /// The cookie of the server's latest Accept (or challenge), echoed in every packet to it.
    cookie: u64,
    auth: SessionAuth,
    /// Manifest hashes of sessions found to be other content than `expect` pins.
    rejected: Vec<[u8; 32]>,
    signature_checks: TokenBucket,
}

impl<S: BlockStore> Receiver<S> {
    pub fn new(cfg: ReceiverConfig, store: S) -> Self {
        Receiver {
            rng: Rng::new(cfg.seed),
            session: cfg.session,
            cfg,
            store,
            announce: None,
            known_hash: None,
            known_manifests: Vec::new(),
            checking: 0,
            assembly: ManifestAssembly::default(),
            manifest: None,
            numbering: BlockNumbering::default(),
            blocks: Blocks::new(0),
            first_pass: PassFrontier::new(0),
            row: None,
            feedback: Feedback::new(),
            complete: false,
            ended: false,
            last_heard: None,
            source_announced: None,
            server_lost: false,
            events: VecDeque::new(),
            stats: ReceiverStats::default(),
            split: SplitState::default(),
            lag: lag::QueueLag::default(),
            cookie: 0,
            auth: SessionAuth::default(),
            rejected: Vec::new(),
            signature_checks: TokenBucket::new(SIGNATURE_CHECK_BURST),
        }
    }

    /// The key that signed the adopted session's statement (`None`: unauthenticated).
    pub fn signer(&self) -> Option<[u8; 32]> {
        self.auth.statement.map(|s| s.key)
    }

    /// Whether the adopted session's Announces (and so its Done) are signed by a trusted key.
    pub fn control_signed(&self) -> bool {
        self.auth.control_signed
    }

    /// The manifest hash of the session followed, once one is adopted.
    pub fn manifest_hash(&self) -> Option<[u8; 32]> {
        self.announce
            .as_ref()
            .map(|a| a.manifest_hash)
            .or(self.known_hash)
    }

    /// The session adopted, once announced (or configured).
    pub fn session(&self) -> Option<SessionId> {
        self.session
    }

    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    pub fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_ref()
    }

    pub fn announce(&self) -> Option<&AnnounceRepr> {
        self.announce.as_ref()
    }

    /// Every object is whole and verified.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The session is over for this receiver (ended by the server, or left).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    pub fn total_blocks(&self) -> u64 {
        self.numbering.total()
    }

    /// The server's control address, once announced.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.announce.as_ref().map(|a| a.control)
    }

    /// Stripes of the adopted session's first pass (its Announce), once one is adopted: the
    /// node reads stripe `s` on the group's port + `s` (docs/wire.md §3.1).
    pub fn announced_stripes(&self) -> Option<u16> {
        self.announce.as_ref().map(|a| a.stripes)
    }

    fn stripes(&self) -> u64 {
        self.announce.as_ref().map_or(1, |a| u64::from(a.stripes))
    }

    fn grtt(&self) -> Duration {
        self.announce
            .as_ref()
            .map_or(Duration::from_millis(5), |a| {
                Duration::from_micros(u64::from(a.grtt_us))
            })
    }

    fn group_size(&self) -> u32 {
        self.announce.as_ref().map_or(1, |a| a.group_size.max(1))
    }

    /// Handles a data or parity unit that arrived in two pieces: its header (`head`, the
    /// unit header's bytes exactly) and its payload, which the receiver's batch put straight
    /// where the unit belongs (the store sees the payload at its place and copies nothing).
    /// Returns false, handling nothing, if `head` is not a unit's header: the caller then
    /// joins the pieces and hands them to [`Self::handle_datagram`].
    pub fn handle_unit_parts(
        &mut self,
        now: Instant,
        _from: SocketAddr,
        head: &[u8],
        payload: &[u8],
    ) -> bool {
        let Ok(unit) = UnitParts::new_checked(head, payload) else {
            return false;
        };
        if !self.ended {
            self.take_unit(now, &unit);
        }
        true
    }

    /// Whether unit `index` of `block` is still wanted: its block is being assembled (not
    /// verified, not handed out for hashing) and the unit is neither held nor known to be
    /// rebuilt. A receiver asks before it lets the kernel write a datagram's payload where
    /// that unit belongs: only where nothing held can be overwritten.
    pub fn wants_unit(&self, object: ObjectId, block: BlockIndex, index: u16) -> bool {
        self.units_wanted(object, block).get(index)
    }

    /// [`Self::wants_unit`] for every unit of `block`, looked up once.
    pub fn units_wanted(&self, object: ObjectId, block: BlockIndex) -> UnitsWanted<'_> {
        let Some(seq) = self.numbering.seq(object, block) else {
            return UnitsWanted::None;
        };
        if self.ended || self.blocks.done.get(seq as usize) {
            return UnitsWanted::None;
        }
        match self.blocks.states.get(seq as usize) {
            Some(Some(state)) if state.verifying => UnitsWanted::None,
            Some(Some(state)) => UnitsWanted::Missing(&state.have),
            // No unit of it yet: nothing of it held.
            Some(None) => UnitsWanted::All(self.numbering.units_in(seq)),
            None => UnitsWanted::None,
        }
    }

    /// The block after `block` on its stripe's port (the next one its stripe's first pass
    /// sends), if there is one.
    pub fn next_on_stripe(
        &self,
        object: ObjectId,
        block: BlockIndex,
    ) -> Option<(ObjectId, BlockIndex)> {
        let next = self.numbering.seq(object, block)? + self.stripes();
        (next < self.numbering.total()).then(|| {
            let a = self.numbering.addr(next);
            (a.object, a.block)
        })
    }

    /// A unit of the session, whole or in pieces: what it tells of the server, then its
    /// payload.
    fn take_unit(&mut self, now: Instant, unit: &impl UnitView) {
        if Some(unit.session()) != self.session {
            self.stats.strangers += 1;
            return;
        }
        if self.cfg.split.is_some() {
            // Split mode: a unit may come by a chain of copies, so its timestamp does not
            // measure this member's own overhead; only the server's direct packets do.
            self.last_heard = Some(now);
            self.server_lost = false;
            self.split.copy_timing(now, unit.timestamp());
        } else {
            self.heard(now, unit.timestamp());
        }
        self.on_unit(now, unit);
    }

    /// Handles one datagram from the group or the server.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        if self.ended {
            return;
        }
        // Units are the hot path: read them through the zero-copy view.
        if let Ok(unit) = UnitPacket::new_checked(bytes) {
            self.take_unit(now, &unit);
            return;
        }
        let packet = match Packet::parse(bytes) {
            Ok(p) => p,
            Err(e) => {
                self.stats.bad_packets += 1;
                self.events.push_back(ReceiverEvent::BadPacket(e));
                return;
            }
        };
        match &packet {
            Packet::Announce(a) if self.announce.is_none() || !self.is_our_source(a) => {
                let ours = self.is_our_source(a);
                if !ours && !self.may_follow(now, a) {
                    self.stats.strangers += 1;
                    return;
                }
                if !self.may_adopt(now, a) {
                    return;
                }
                if !ours {
                    self.adopt_session(now, a);
                }
            }
            // A later announce of the adopted session: its signatures are checked again.
            Packet::Announce(a)
                if Some(a.session) == self.session && !self.announce_trusted(now, a) =>
            {
                return;
            }
            // Split mode: the server's challenge to our Solicit comes before any session.
            Packet::Accept(a)
                if self.session.is_none()
                    && a.receiver == self.cfg.id
                    && a.is_challenge()
                    && self.cfg.split.is_some_and(|s| s.server == from) =>
            {
                self.on_challenge(now, a.cookie);
                return;
            }
            _ => {}
        }
        if Some(packet.session()) != self.session {
            self.stats.strangers += 1;
            return;
        }
        match packet {
            Packet::Announce(a) => {
                self.heard(now, a.timestamp);
                // Past `is_our_source` (or just adopted): our source is alive.
                self.source_announced = Some(now);
                if self.cfg.split.is_some() {
                    self.split.direct_timing(now, a.timestamp);
                }
                self.on_announce(now, a);
            }
            Packet::Manifest(m) => {
                self.last_heard = Some(now);
                self.on_manifest_chunk(now, m.offset as usize, m.bytes);
            }
            Packet::Accept(a) if a.receiver == self.cfg.id => self.on_accept(now, &a),
            Packet::Done(DoneRepr::Receiver { receiver, .. }) if receiver == self.cfg.id => {
                self.feedback.complete_acked = true;
            }
            Packet::Plan(p) if p.receiver == self.cfg.id && self.cfg.split.is_some() => {
                self.last_heard = Some(now);
                self.split.take_plan(p);
            }
            Packet::Xor(x, payload) => {
                // No timestamp: the header's last slots carry unit indices.
                self.last_heard = Some(now);
                self.server_lost = false;
                self.on_xor(now, &x, payload);
            }
            Packet::Done(DoneRepr::Session {
                session,
                reason,
                sig,
            }) => {
                if !self.done_trusted(now, session, reason, sig.as_ref()) {
                    return;
                }
                self.ended = true;
                self.feedback.timers.clear();
                self.events.push_back(ReceiverEvent::SessionEnded {
                    reason,
                    complete: self.complete,
                });
            }
            _ => self.stats.strangers += 1,
        }
    }

    /// Content the node already holds a manifest for (a resumed receive's state file): when an
    /// announce carries this manifest hash, the manifest is taken from here at once instead
    /// of from the chunks that follow announces. `hash` must be the BLAKE3 of the manifest's
    /// encoding (the node checked it); a manifest whose geometry differs from the announce's
    /// is not used.
    pub fn offer_manifest(&mut self, hash: [u8; 32], manifest: Manifest) {
        if self.manifest.is_none() && !self.known_manifests.iter().any(|(h, _)| *h == hash) {
            self.known_manifests.push((hash, manifest));
        }
    }

    /// Whether `a` comes from the source we follow: our session, and the control address we
    /// know it by (a relay serves the server's session from its own control address, so a
    /// restarted relay is the same session from elsewhere).
    fn is_our_source(&self, a: &AnnounceRepr) -> bool {
        Some(a.session) == self.session
            && self
                .announce
                .as_ref()
                .is_none_or(|o| o.control == a.control)
    }

    /// Whether an announce from a source other than ours (another session, or our session
    /// from another control address) may become our source. Without a session, any announce
    /// may (the first heard wins), except after a fail-over, when only a source of the same
    /// content will do. In a session, another source of the same content (a restarted server
    /// or relay, another relay of it) is followed once ours has been silent for
    /// `follow_after`; a live source is never left for another. Which content and whose
    /// signatures a receiver takes at all is [`Receiver::may_adopt`]'s to say (a new source
    /// passes both).
    fn may_follow(&self, now: Instant, a: &AnnounceRepr) -> bool {
        if self.cfg.session.is_some_and(|s| s != a.session) {
            return false;
        }
        let ours = self
            .announce
            .as_ref()
            .map(|o| o.manifest_hash)
            .or(self.known_hash);
        match self.session {
            None => ours.is_none_or(|h| h == a.manifest_hash),
            Some(_) => {
                ours == Some(a.manifest_hash)
                    && !self.complete
                    && self
                        .source_announced
                        .or(self.last_heard)
                        .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.follow_after)
            }
        }
    }

    /// Takes `a`'s source as ours (after [`Receiver::may_follow`] and
    /// [`Receiver::may_adopt`] said yes). Leaving a source
    /// for another of the same content keeps every block, as a fail-over does.
    fn adopt_session(&mut self, now: Instant, a: &AnnounceRepr) {
        if self.session.is_some() {
            self.forget_source(now);
            self.stats.switches += 1;
        }
        self.session = Some(a.session);
    }

    /// Fail over to another source of the same content (a standby relay, or the server):
    /// forget the current server, keep every block received so far, and take the next
    /// Announce whose manifest hash matches ours as the new server; join it at once. Blocks
    /// already verified are not asked for again; the new server learns what we hold from our
    /// receipt notices and repairs the rest.
    pub fn switch_source(&mut self, now: Instant) {
        if self.ended && self.complete {
            return;
        }
        self.forget_source(now);
        self.session = self.cfg.session;
        self.stats.switches += 1;
    }

    /// Forgets the server we had (its announce, our row, where its first pass was), keeping
    /// the manifest and every block; the next source is joined once known.
    fn forget_source(&mut self, now: Instant) {
        self.known_hash = self
            .announce
            .as_ref()
            .map(|a| a.manifest_hash)
            .or(self.known_hash);
        self.announce = None;
        self.cookie = 0;
        self.row = None;
        self.ended = false;
        self.server_lost = false;
        self.last_heard = Some(now);
        self.source_announced = None;
        self.first_pass.stripe_next.clear();
        // Another server's clock: its offsets start over.
        self.lag = lag::QueueLag::default();
        // Join the new source at once, unless blocks held at the start are still being
        // checked (the join waits for them).
        self.feedback
            .new_source((self.manifest.is_some() && self.checking == 0).then_some(now));
        if self.manifest.is_none() {
            // Start the manifest over from the new source.
            self.assembly.reset();
        }
    }

    fn heard(&mut self, now: Instant, timestamp: u32) {
        self.last_heard = Some(now);
        self.server_lost = false;
        if self.cfg.split.is_none() {
            // Split mode measures its copy path apart (its announces come by unicast, its
            // units by chains of copies), and plans with round trips that count the queue.
            self.lag.sample(now, timestamp);
        }
        self.feedback.echo = Some(Echo { timestamp, at: now });
    }

    /// Handles timers: call when the instant from [`Receiver::poll_timeout`] has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ended {
            return;
        }
        if self
            .last_heard
            .is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.idle_timeout)
            && !self.server_lost
        {
            self.server_lost = true;
            self.events.push_back(ReceiverEvent::ServerLost);
        }
        self.feedback_timeout(now);
    }

    /// The next instant at which [`Receiver::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.ended {
            return None;
        }
        [
            self.feedback.next_timeout(self.row.is_some()),
            self.split
                .next_solicit()
                .filter(|_| self.cfg.split.is_some() && self.manifest.is_none()),
            self.last_heard
                .filter(|_| !self.server_lost)
                .map(|h| h + self.cfg.idle_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Drains one event.
    pub fn poll_event(&mut self) -> Option<ReceiverEvent> {
        self.events.pop_front()
    }

    /// Writes the next datagram for the server into `buf`, or returns `None`.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if self.solicit_due(now) {
            return self.solicit(now, buf);
        }
        self.poll_feedback(now, buf)
    }
}

impl<S: BlockStore> Endpoint for Receiver<S> {
    type Event = ReceiverEvent;

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        Receiver::handle_datagram(self, now, from, bytes)
    }

    fn handle_timeout(&mut self, now: Instant) {
        Receiver::handle_timeout(self, now)
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        Receiver::poll_transmit(self, now, buf)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Receiver::poll_timeout(self)
    }

    fn poll_event(&mut self) -> Option<ReceiverEvent> {
        Receiver::poll_event(self)
    }

    /// Over once the session ended for it (ended by the server, or left).
    fn is_finished(&self) -> bool {
        self.is_ended()
    }
}
