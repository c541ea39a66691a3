//! A receiver resuming: a manifest it already has, blocks its store holds, receipt notices
//! that tell the server all of it, and a session of the same content followed after a
//! server restart; and when a NACK is asked again.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::store::{BlockStore, HeldBlocks, MemStore, StoreError};
use crate::wire::{
    AcceptRepr, AnnounceRepr, BlockIndex, BlockRun, Manifest, ObjectEntry, ObjectId, Packet,
    ReceiptRepr, ReceiverId, SessionId,
};
use crate::{Receiver, ReceiverConfig, ReceiverEvent};

const UNIT: u16 = 8;
const UNITS: u16 = 4;
const BLOCK: usize = UNIT as usize * UNITS as usize;
const SERVER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7);

fn content(blocks: usize) -> Vec<u8> {
    (0..blocks * BLOCK).map(|i| (i * 7 % 251) as u8).collect()
}

fn manifest(content: &[u8]) -> Manifest {
    Manifest {
        unit_size: UNIT,
        units_per_block: UNITS,
        objects: vec![ObjectEntry::from_content("a", content, BLOCK)],
    }
}

/// A store that holds some blocks already: `verified` as a durable record says, `check` as
/// bytes that may or may not be the block (written into the object at `prepare`).
struct Resumed {
    mem: MemStore,
    held: HeldBlocks,
    /// Bytes each held block has at the start.
    bytes: Vec<(u32, Vec<u8>)>,
    /// Blocks the receiver said are final ([`BlockStore::block_verified`]).
    finals: Vec<u32>,
}

impl BlockStore for Resumed {
    fn prepare(&mut self, manifest: &Manifest) -> Result<(), StoreError> {
        self.mem.prepare(manifest)?;
        for (b, bytes) in &self.bytes {
            let start = *b as usize * BLOCK;
            self.mem.objects[0][start..start + bytes.len()].copy_from_slice(bytes);
        }
        Ok(())
    }

    fn block_mut(&mut self, object: ObjectId, block: BlockIndex, len: usize) -> &mut [u8] {
        self.mem.block_mut(object, block, len)
    }

    fn held(&mut self) -> HeldBlocks {
        std::mem::take(&mut self.held)
    }

    fn block_verified(&mut self, _object: ObjectId, block: BlockIndex) {
        self.finals.push(block.0);
    }
}

/// A store that holds nothing at the start.
fn empty() -> Resumed {
    Resumed {
        mem: MemStore::default(),
        held: HeldBlocks::default(),
        bytes: Vec::new(),
        finals: Vec::new(),
    }
}

fn addr(b: u32) -> (ObjectId, BlockIndex) {
    (ObjectId(0), BlockIndex(b))
}

fn announce(session: u32, m: &Manifest) -> Vec<u8> {
    announce_from(session, m, SERVER)
}

/// An announce of `session` whose server listens at `control`.
fn announce_from(session: u32, m: &Manifest, control: SocketAddr) -> Vec<u8> {
    announce_pass(session, m, control, (ObjectId(0), BlockIndex(0)))
}

/// An announce whose first pass is at `pass` (`ObjectId(u32::MAX)`: over).
fn announce_pass(
    session: u32,
    m: &Manifest,
    control: SocketAddr,
    pass: (ObjectId, BlockIndex),
) -> Vec<u8> {
    announce_sent(session, m, control, pass, 1)
}

/// The same, stamped as sent at `timestamp` (the server's clock, us).
fn announce_sent(
    session: u32,
    m: &Manifest,
    control: SocketAddr,
    pass: (ObjectId, BlockIndex),
    timestamp: u32,
) -> Vec<u8> {
    let bytes = m.emit().expect("manifest");
    let a = AnnounceRepr {
        session: SessionId(session),
        control,
        unit_size: UNIT,
        units_per_block: UNITS,
        max_parity: 4,
        stripes: 1,
        object_count: 1,
        total_bytes: m.total_bytes(),
        manifest_len: bytes.len() as u32,
        manifest_hash: *blake3::hash(&bytes).as_bytes(),
        group_size: 1,
        grtt_us: 1000,
        pass_object: pass.0,
        pass_block: pass.1,
        timestamp,
        issued: 0,
        statement_sig: None,
        announce_sig: None,
    };
    let mut buf = vec![0u8; 256];
    let n = Packet::Announce(a).emit(&mut buf).expect("announce");
    buf.truncate(n);
    buf
}

fn hash_of(m: &Manifest) -> [u8; 32] {
    *blake3::hash(&m.emit().expect("manifest")).as_bytes()
}

fn receiver(store: Resumed, external_verify: bool) -> Receiver<Resumed> {
    Receiver::new(
        ReceiverConfig {
            id: ReceiverId(5),
            external_verify,
            ..ReceiverConfig::default()
        },
        store,
    )
}

/// Every packet the receiver has for the server at `now`.
fn sent(r: &mut Receiver<Resumed>, now: Instant) -> Vec<Vec<u8>> {
    if r.poll_timeout().is_some_and(|t| t <= now) {
        r.handle_timeout(now);
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 2048];
    while let Some(t) = r.poll_transmit(now, &mut buf) {
        out.push(buf[..t.len].to_vec());
    }
    out
}

fn accept(r: &mut Receiver<Resumed>, session: u32, now: Instant) {
    let mut buf = vec![0u8; 64];
    let a = Packet::Accept(AcceptRepr {
        session: SessionId(session),
        receiver: ReceiverId(5),
        row: 0,
        cookie: 7,
    });
    let n = a.emit(&mut buf).expect("accept");
    r.handle_datagram(now, SERVER, &buf[..n]);
}

fn receipts(packets: &[Vec<u8>]) -> Vec<ReceiptRepr> {
    packets
        .iter()
        .filter_map(|p| match Packet::parse(p) {
            Ok(Packet::Receipt(r)) => Some(r),
            _ => None,
        })
        .collect()
}

fn joins(packets: &[Vec<u8>]) -> usize {
    packets
        .iter()
        .filter(|p| matches!(Packet::parse(p), Ok(Packet::Join(_))))
        .count()
}

/// Blocks a set of runs covers, as block indices of object 0.
fn covered(runs: &[BlockRun]) -> Vec<u32> {
    let mut v: Vec<u32> = runs
        .iter()
        .flat_map(|r| r.start.0..r.start.0 + r.len)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[test]
fn a_resumed_receiver_adopts_a_known_manifest_at_the_announce_and_says_what_it_holds_first() {
    let c = content(10);
    let m = manifest(&c);
    let store = Resumed {
        mem: MemStore::default(),
        held: HeldBlocks {
            verified: (0..4).chain(6..8).map(addr).collect(),
            check: Vec::new(),
        },
        bytes: Vec::new(),
        finals: Vec::new(),
    };
    let mut r = receiver(store, true);
    r.offer_manifest(hash_of(&m), m.clone());
    let t0 = Instant::now();
    // The announce alone: no manifest chunk has come.
    r.handle_datagram(t0, SERVER, &announce(3, &m));
    assert_eq!(
        r.manifest(),
        Some(&m),
        "the manifest was taken at the announce"
    );
    assert_eq!(r.blocks_done(), 6);
    assert_eq!(r.stats().reused_bytes, 6 * BLOCK as u64);
    assert_eq!(r.stats().received_bytes, 0);
    let verified = std::iter::from_fn(|| r.poll_event())
        .filter(|e| matches!(e, ReceiverEvent::BlockVerified { .. }))
        .count();
    assert_eq!(verified, 6, "every reused block is published as verified");
    assert_eq!(joins(&sent(&mut r, t0)), 1);
    // Accepted: the first notice goes at once, and names every block held.
    accept(&mut r, 3, t0);
    let first = receipts(&sent(&mut r, t0));
    assert_eq!(first.len(), 1, "a notice right after the accept");
    assert_eq!(first[0].blocks_done, 6);
    assert_eq!(
        (first[0].watermark_object, first[0].watermark_block),
        addr(4)
    );
    assert_eq!(covered(&first[0].runs), [6, 7]);
}

#[test]
fn blocks_held_without_a_record_are_hashed_before_they_count_and_the_join_waits_for_them() {
    let c = content(6);
    let m = manifest(&c);
    let store = Resumed {
        mem: MemStore::default(),
        held: HeldBlocks {
            verified: Vec::new(),
            check: vec![addr(1), addr(2)],
        },
        // Block 1 is whole, block 2 holds other bytes.
        bytes: vec![(1, c[BLOCK..2 * BLOCK].to_vec()), (2, vec![9u8; BLOCK])],
        finals: Vec::new(),
    };
    let mut r = receiver(store, true);
    r.offer_manifest(hash_of(&m), m.clone());
    let t0 = Instant::now();
    r.handle_datagram(t0, SERVER, &announce(3, &m));
    let asked: Vec<(u32, bool)> = std::iter::from_fn(|| r.poll_event())
        .filter_map(|e| match e {
            ReceiverEvent::VerifyBlock { block, rebuild, .. } => Some((block.0, rebuild.is_none())),
            _ => None,
        })
        .collect();
    assert_eq!(asked, [(1, true), (2, true)]);
    assert_eq!(
        joins(&sent(&mut r, t0)),
        0,
        "no join while blocks are checked"
    );
    // The node's verify thread hashes what the store holds.
    let bytes = |b: usize| &r.store().mem.objects[0][b * BLOCK..(b + 1) * BLOCK];
    let ok1 = blake3::hash(bytes(1)) == blake3::hash(&c[BLOCK..2 * BLOCK]);
    let ok2 = blake3::hash(bytes(2)) == blake3::hash(&c[2 * BLOCK..3 * BLOCK]);
    assert!(ok1 && !ok2);
    r.handle_verified(t0, ObjectId(0), BlockIndex(1), ok1);
    assert_eq!(
        joins(&sent(&mut r, t0)),
        0,
        "block 2 is still being checked"
    );
    let t1 = t0 + Duration::from_millis(1);
    r.handle_verified(t1, ObjectId(0), BlockIndex(2), ok2);
    assert_eq!(joins(&sent(&mut r, t1)), 1, "joined once both were checked");
    assert!(r.is_verified(ObjectId(0), BlockIndex(1)));
    assert!(!r.is_verified(ObjectId(0), BlockIndex(2)));
    assert_eq!(
        r.store().finals,
        [1],
        "the store is told the block it held is final"
    );
    let s = r.stats();
    assert_eq!((s.blocks_reused, s.reused_bytes), (1, BLOCK as u64));
    // A mismatch found at the start is not a block that failed its hash in transfer.
    assert_eq!(s.blocks_failed, 0);
}

#[test]
fn receipt_notices_go_round_every_run_of_verified_blocks() {
    // Every other block of 400: 200 runs, more than one notice can carry.
    let c = content(400);
    let m = manifest(&c);
    let held: Vec<u32> = (0..400).filter(|b| b % 2 == 1).collect();
    let store = Resumed {
        mem: MemStore::default(),
        held: HeldBlocks {
            verified: held.iter().copied().map(addr).collect(),
            check: Vec::new(),
        },
        bytes: Vec::new(),
        finals: Vec::new(),
    };
    let mut r = receiver(store, true);
    r.offer_manifest(hash_of(&m), m.clone());
    let t0 = Instant::now();
    r.handle_datagram(t0, SERVER, &announce(3, &m));
    let _ = sent(&mut r, t0);
    accept(&mut r, 3, t0);
    let mut heard: Vec<u32> = Vec::new();
    let mut notices = 0;
    let mut now = t0;
    for _ in 0..200 {
        for n in receipts(&sent(&mut r, now)) {
            assert!(n.buffer_len() <= 1400, "a notice fits the datagram");
            notices += 1;
            heard.extend(covered(&n.runs));
        }
        heard.sort_unstable();
        heard.dedup();
        if heard == held {
            break;
        }
        now += Duration::from_millis(20);
    }
    assert_eq!(heard, held, "the server heard of every run");
    // The first carries as many runs as fit (111), the next ones 32 each.
    assert!(notices <= 4, "{notices} notices to tell 200 runs");
}

#[test]
fn a_receiver_follows_a_new_session_of_the_same_content_once_its_own_falls_silent() {
    let c = content(4);
    let m = manifest(&c);
    let other = manifest(&content(5));
    let store = empty();
    let mut r = receiver(store, true);
    r.offer_manifest(hash_of(&m), m.clone());
    let t0 = Instant::now();
    r.handle_datagram(t0, SERVER, &announce(3, &m));
    assert_eq!(r.session(), Some(SessionId(3)));
    let _ = sent(&mut r, t0);
    accept(&mut r, 3, t0);
    let follow = ReceiverConfig::default().follow_after;
    // A second server of the same content while ours is alive: ignored.
    let t1 = t0 + follow / 2;
    r.handle_datagram(t1, SERVER, &announce(4, &m));
    assert_eq!(r.session(), Some(SessionId(3)));
    // Ours silent for `follow_after`: another session of other content is still ignored...
    let t2 = t0 + follow;
    r.handle_datagram(t2, SERVER, &announce(5, &other));
    assert_eq!(r.session(), Some(SessionId(3)));
    // ...and one of the same content is followed: joined at once, blocks kept.
    r.handle_datagram(t2, SERVER, &announce(4, &m));
    assert_eq!(r.session(), Some(SessionId(4)));
    assert_eq!(r.stats().switches, 1);
    assert_eq!(r.manifest(), Some(&m));
    let out = sent(&mut r, t2);
    assert_eq!(joins(&out), 1, "joined the new session");
    let join_session = out
        .iter()
        .find_map(|p| match Packet::parse(p) {
            Ok(Packet::Join(j)) => Some(j.session),
            _ => None,
        })
        .expect("a join");
    assert_eq!(join_session, SessionId(4));
}

#[test]
fn a_receiver_follows_its_session_to_another_control_address_once_the_old_one_is_silent() {
    // A relay serves the server's session from its own control address: a restarted relay
    // is the same session from another address.
    let m = manifest(&content(4));
    let store = empty();
    let mut r = receiver(store, true);
    r.offer_manifest(hash_of(&m), m.clone());
    let t0 = Instant::now();
    r.handle_datagram(t0, SERVER, &announce(3, &m));
    let _ = sent(&mut r, t0);
    accept(&mut r, 3, t0);
    let relay = SocketAddr::from(([127, 0, 0, 1], 8));
    r.handle_datagram(t0, relay, &announce_from(3, &m, relay));
    assert_eq!(r.control_addr(), Some(SERVER), "a live source is kept");
    // The new relay's own packets carry the session id too: they do not keep the old source
    // alive (a manifest chunk here; its units alike).
    let t1 = t0 + ReceiverConfig::default().follow_after;
    let mut chunk = vec![0u8; 64];
    let n = Packet::Manifest(crate::wire::ManifestChunkRepr {
        session: SessionId(3),
        offset: 0,
        bytes: &[1, 2, 3],
    })
    .emit(&mut chunk)
    .expect("chunk");
    r.handle_datagram(t1, relay, &chunk[..n]);
    r.handle_datagram(t1, relay, &announce_from(3, &m, relay));
    assert_eq!(
        r.control_addr(),
        Some(relay),
        "followed once the old one fell silent"
    );
    let mut buf = vec![0u8; 2048];
    r.handle_timeout(t1);
    let t = r.poll_transmit(t1, &mut buf).expect("a join");
    assert!(matches!(Packet::parse(&buf[..t.len]), Ok(Packet::Join(_))));
    assert_eq!(t.destination, crate::Destination::Peer(relay));
}

#[test]
fn a_receiver_with_nothing_to_tell_does_not_answer_its_accept_with_a_notice() {
    // A group that joins together would answer its accepts with a burst of notices.
    let m = manifest(&content(4));
    let store = empty();
    let mut r = receiver(store, true);
    r.offer_manifest(hash_of(&m), m.clone());
    let t0 = Instant::now();
    r.handle_datagram(t0, SERVER, &announce(3, &m));
    let _ = sent(&mut r, t0);
    accept(&mut r, 3, t0);
    assert!(
        receipts(&sent(&mut r, t0)).is_empty(),
        "no notice at the accept"
    );
    let later = t0 + ReceiverConfig::default().min_receipt_interval * 2;
    assert_eq!(
        receipts(&sent(&mut r, later)).len(),
        1,
        "the usual first notice"
    );
}

#[test]
fn an_unanswered_join_is_repeated_soon_then_less_and_less_often() {
    let c = content(4);
    let m = manifest(&c);
    let store = empty();
    let mut r = receiver(store, true);
    r.offer_manifest(hash_of(&m), m.clone());
    let t0 = Instant::now();
    r.handle_datagram(t0, SERVER, &announce(3, &m));
    assert_eq!(joins(&sent(&mut r, t0)), 1);
    // No answer (the challenge or the accept lost on the way): when the join goes again.
    let at: Vec<u64> = (1..=400)
        .filter(|&ms| joins(&sent(&mut r, t0 + Duration::from_millis(ms))) > 0)
        .collect();
    // 10 ms after the first (jittered by a quarter), not a whole join interval (100 ms).
    assert!((7..=13).contains(&at[0]), "{at:?}");
    let gaps: Vec<u64> = std::iter::once(at[0])
        .chain(at.windows(2).map(|w| w[1] - w[0]))
        .collect();
    // Each wait about twice the one before, up to the interval.
    assert!((14..=26).contains(&gaps[1]), "{gaps:?}");
    assert!(gaps.iter().all(|&g| g <= 126), "{gaps:?}");
    assert!(gaps[gaps.len() - 1] >= 74, "{gaps:?}");
    // Accepted: no more joins.
    let now = t0 + Duration::from_millis(400);
    accept(&mut r, 3, now);
    let later: usize = (401..=800)
        .map(|ms| joins(&sent(&mut r, t0 + Duration::from_millis(ms))))
        .sum();
    assert_eq!(later, 0);
}

/// NACK entries for block `b` among `packets`.
fn nacks_of(packets: &[Vec<u8>], b: u32) -> usize {
    packets
        .iter()
        .filter_map(|p| match Packet::parse(p) {
            Ok(Packet::Nack(n)) => Some(n.entries.iter().filter(|e| e.block.0 == b).count()),
            _ => None,
        })
        .sum()
}

/// The first time from `from` on (in steps of `step`, up to `limit`) that the receiver NACKs
/// block 0.
fn next_nack(r: &mut Receiver<Resumed>, from: Instant, step: Duration, limit: Duration) -> Instant {
    next_nack_of(r, 0, from, step, limit).unwrap_or_else(|| panic!("no NACK within {limit:?}"))
}

/// The first time from `from` on (in steps of `step`, up to `limit`) that the receiver NACKs
/// block `b`, if it does.
fn next_nack_of(
    r: &mut Receiver<Resumed>,
    b: u32,
    from: Instant,
    step: Duration,
    limit: Duration,
) -> Option<Instant> {
    let mut t = from;
    while t < from + limit {
        if nacks_of(&sent(r, t), b) > 0 {
            return Some(t);
        }
        t += step;
    }
    None
}

/// A receiver of `m` in session 3, accepted at `t0`, the first pass at block 0.
fn joined(m: &Manifest, t0: Instant) -> Receiver<Resumed> {
    let mut r = receiver(empty(), true);
    r.offer_manifest(hash_of(m), m.clone());
    r.handle_datagram(t0, SERVER, &announce(3, m));
    accept(&mut r, 3, t0);
    r
}

/// A first-pass unit of `c`: unit `index` of block `b`.
fn data_unit(c: &[u8], session: u32, b: u32, index: u16) -> Vec<u8> {
    data_unit_sent(c, session, b, index, 0)
}

/// The same, stamped as sent at `timestamp` (the server's clock, us).
fn data_unit_sent(c: &[u8], session: u32, b: u32, index: u16, timestamp: u32) -> Vec<u8> {
    let mut buf = vec![0u8; 256];
    let h = crate::wire::UnitHeaderRepr {
        session: SessionId(session),
        parity: false,
        repair: false,
        object: ObjectId(0),
        block: BlockIndex(b),
        index,
        round_end: 0,
        timestamp,
    };
    let n = h.emit(&mut buf).expect("unit header");
    let at = b as usize * BLOCK + usize::from(index) * usize::from(UNIT);
    buf.truncate(n);
    buf.extend_from_slice(&c[at..at + usize::from(UNIT)]);
    buf
}

#[test]
fn the_last_unit_of_the_last_block_ends_the_pass_and_its_block_is_nacked_at_once() {
    let c = content(3);
    let m = manifest(&c);
    let step = Duration::from_micros(100);
    let grtt = Duration::from_millis(1);
    // A unit of the last block that is not its last: blocks 0 and 1 are passed, the last
    // one is not (the rest of it may be coming).
    let t0 = Instant::now();
    let mut r = joined(&m, t0);
    r.handle_datagram(t0, SERVER, &data_unit(&c, 3, 2, 0));
    assert!(next_nack_of(&mut r, 1, t0, step, grtt * 10).is_some());
    assert_eq!(next_nack_of(&mut r, 2, t0, step, grtt * 30), None);
    // Its last unit: the pass is over, the block is NACKed after the tail's backoff (one
    // GRTT at most, and a quarter) without waiting for the announce that says so.
    let mut r = joined(&m, t0);
    r.handle_datagram(t0, SERVER, &data_unit(&c, 3, 2, UNITS - 1));
    let at = next_nack_of(&mut r, 2, t0, step, grtt * 30).expect("the last block NACKed");
    assert!(
        at - t0 <= grtt + grtt / 4 + step,
        "NACKed after {:?}",
        at - t0
    );
}

#[test]
fn a_first_nack_still_in_its_backoff_when_the_pass_ends_is_drawn_again_from_the_tail_s_window() {
    let c = content(3);
    let m = manifest(&c);
    let step = Duration::from_micros(50);
    let grtt = Duration::from_millis(1);
    let over = (ObjectId(u32::MAX), BlockIndex(0));
    let mut waits = Vec::new();
    for seed in 1..=24 {
        let mut r = Receiver::new(
            ReceiverConfig {
                id: ReceiverId(5),
                external_verify: true,
                seed,
                ..ReceiverConfig::default()
            },
            empty(),
        );
        r.offer_manifest(hash_of(&m), m.clone());
        let t0 = Instant::now();
        r.handle_datagram(t0, SERVER, &announce(3, &m));
        accept(&mut r, 3, t0);
        // The pass goes by block 0 (nothing of it came): its NACK is armed with the pass's
        // window (four GRTTs); the pass ends at once.
        r.handle_datagram(t0, SERVER, &announce_pass(3, &m, SERVER, addr(1)));
        r.handle_datagram(t0 + step, SERVER, &announce_pass(3, &m, SERVER, over));
        let at = next_nack_of(&mut r, 0, t0 + step, step, grtt * 10).expect("NACKed");
        waits.push((at - t0).as_micros());
    }
    // One GRTT and a quarter at most after the pass ended, whatever the first draw was.
    let most = (grtt + grtt / 4 + step * 2).as_micros();
    assert!(waits.iter().all(|&w| w <= most), "waits (us): {waits:?}");
}

#[test]
fn a_nack_is_asked_again_a_round_trip_and_a_quarter_after_it_once_the_first_pass_is_over() {
    let c = content(3);
    let m = manifest(&c);
    let mut r = receiver(empty(), true);
    r.offer_manifest(hash_of(&m), m.clone());
    let t0 = Instant::now();
    // GRTT 1 ms (the announce's); the pass has gone by block 0, of which nothing came.
    r.handle_datagram(t0, SERVER, &announce_pass(3, &m, SERVER, addr(1)));
    accept(&mut r, 3, t0);
    let step = Duration::from_micros(100);
    let grtt = Duration::from_millis(1);
    let first = next_nack(&mut r, t0, step, grtt * 10);
    // While the pass runs the retry waits for the others' backoff window: six GRTTs and 1 ms.
    let again = next_nack(&mut r, first + step, step, grtt * 20);
    let late = grtt * 6 + Duration::from_millis(1);
    assert!(
        again - first >= late,
        "asked again after {:?}",
        again - first
    );
    // The announce says the pass is over (just after a NACK): the retry comes a GRTT and a
    // quarter and 1 ms after that NACK, not six GRTTs. It is stamped as sent when it arrives
    // (with one stamped at the start, the receiver would take the time between for its own
    // socket's queue, and wait that much longer).
    let over = (ObjectId(u32::MAX), BlockIndex(0));
    let sent_at = 1 + (again + step - t0).as_micros() as u32;
    r.handle_datagram(
        again + step,
        SERVER,
        &announce_sent(3, &m, SERVER, over, sent_at),
    );
    let third = next_nack(&mut r, again + step, step, grtt * 20);
    let soon = grtt + grtt / 4 + Duration::from_millis(1);
    assert!(
        third - again >= soon && third - again <= soon + step * 2,
        "asked again after {:?} once the pass was over",
        third - again
    );
    // And a NACK sent after that is retried as soon.
    let fourth = next_nack(&mut r, third + step, step, grtt * 20);
    assert!(
        fourth - third <= soon + step,
        "asked again after {:?}",
        fourth - third
    );
}

#[test]
fn a_retry_waits_for_what_its_socket_s_queue_grew_by_since_the_nack() {
    // While the pass ran, a NACK's retry came six GRTTs after it and the socket's queue as it
    // was then: when the queue grew in between, the repair was still waiting in it and the
    // retry asked for it again (the server sent it twice: simulator, four receivers at 5 %
    // loss, 4,556 units asked for again where about 1,900 repairs had been lost).
    let c = content(3);
    let m = manifest(&c);
    let mut r = receiver(empty(), true);
    r.offer_manifest(hash_of(&m), m.clone());
    // The server's clock reads 100 ms at t0; nothing waits in the socket at first.
    let t0 = Instant::now();
    let clock = |at: Instant| 100_000 + (at - t0).as_micros() as u32;
    r.handle_datagram(
        t0,
        SERVER,
        &announce_sent(3, &m, SERVER, addr(1), clock(t0)),
    );
    accept(&mut r, 3, t0);
    let step = Duration::from_micros(100);
    let grtt = Duration::from_millis(1);
    let first = next_nack(&mut r, t0, step, grtt * 10);
    // Just after the NACK, a packet that waited 20 ms in the socket.
    let queued = Duration::from_millis(20);
    let at = first + step;
    let sent_at = clock(at) - queued.as_micros() as u32;
    r.handle_datagram(at, SERVER, &announce_sent(3, &m, SERVER, addr(1), sent_at));
    let again = next_nack(&mut r, at, step, grtt * 60);
    let late = grtt * 6 + Duration::from_millis(1) + queued;
    assert!(
        again - first >= late,
        "asked again after {:?}",
        again - first
    );
    assert!(
        again - first <= late + step * 3,
        "asked again after {:?}",
        again - first
    );
}

/// Steps `r` from `from` in steps of `step` until it sends a receipt notice (up to `limit`),
/// noting whether block `b` was NACKed on the way.
fn next_receipt(
    r: &mut Receiver<Resumed>,
    b: u32,
    from: Instant,
    step: Duration,
    limit: Duration,
) -> (Instant, ReceiptRepr, bool) {
    let mut nacked = false;
    let mut t = from;
    while t < from + limit {
        let out = sent(r, t);
        nacked |= nacks_of(&out, b) > 0;
        if let Some(n) = receipts(&out).pop() {
            return (t, n, nacked);
        }
        t += step;
    }
    panic!("no receipt notice within {limit:?}");
}

#[test]
fn a_notice_counts_loss_against_the_blocks_whose_loss_it_counts() {
    // Blocks whose pass ends just before a notice are counted by the next one, with their
    // loss: counted at the pass and their loss a backoff later, the notice after the pass
    // counted one block's loss against the next block alone (twice the loss there was).
    let c = content(4);
    let m = manifest(&c);
    let t0 = Instant::now();
    // Sent as it arrives (no queue in the receiver's socket).
    let unit =
        |b: u32, i: u16, at: Instant| data_unit_sent(&c, 3, b, i, 1 + (at - t0).as_micros() as u32);
    let mut r = receiver(empty(), false);
    r.offer_manifest(hash_of(&m), m.clone());
    r.handle_datagram(t0, SERVER, &announce(3, &m));
    accept(&mut r, 3, t0);
    for i in 0..UNITS {
        r.handle_datagram(t0, SERVER, &unit(0, i, t0));
    }
    // Just before the first notice is due, block 1 goes by without its last unit.
    let due = r.poll_timeout().expect("the first notice's time");
    let step = Duration::from_micros(50);
    let before = due - step;
    for i in 0..UNITS - 1 {
        r.handle_datagram(before, SERVER, &unit(1, i, before));
    }
    r.handle_datagram(before, SERVER, &unit(2, 0, before));
    let (at, first, nacked) = next_receipt(&mut r, 1, before, step, Duration::from_secs(1));
    assert!(!nacked, "block 1 was NACKed before the first notice");
    assert_eq!(first.loss_ppm, 0, "block 0 came whole");
    // Block 2 comes whole and goes by; block 1's NACK timer fires; the next notice counts
    // both: one unit lost of eight.
    for i in 1..UNITS {
        r.handle_datagram(at, SERVER, &unit(2, i, at));
    }
    r.handle_datagram(at, SERVER, &unit(3, 0, at));
    let (_, second, nacked) = next_receipt(&mut r, 1, at + step, step, Duration::from_secs(1));
    assert!(
        nacked,
        "block 1's NACK timer fired before the second notice"
    );
    assert_eq!(second.loss_ppm, 125_000);
}

#[test]
fn a_receiver_behind_its_socket_s_queue_leaves_it_out_of_its_round_trip_and_waits_it_out() {
    let c = content(3);
    let m = manifest(&c);
    let step = Duration::from_micros(100);
    let t0 = Instant::now();
    // Two receivers alike, but one takes the same packets 30 ms after they were sent: its
    // socket holds 30 ms of them.
    let run = |queued: Duration| {
        let mut r = receiver(empty(), false);
        r.offer_manifest(hash_of(&m), m.clone());
        r.handle_datagram(t0, SERVER, &announce(3, &m));
        accept(&mut r, 3, t0);
        // The first unit came straight through (it sets the path's delay); the second, sent
        // 10 ms in, passes block 0 with two of its units missing.
        r.handle_datagram(t0, SERVER, &data_unit_sent(&c, 3, 0, 0, 1));
        let took = t0 + Duration::from_millis(10) + queued;
        r.handle_datagram(took, SERVER, &data_unit_sent(&c, 3, 1, 0, 10_001));
        let first = next_nack(&mut r, took, step, Duration::from_millis(100));
        let again = next_nack(&mut r, first + step, step, Duration::from_millis(200));
        let (at, notice, _) = next_receipt(&mut r, 0, again + step, step, Duration::from_secs(1));
        (first - took, again - first, notice, at - took)
    };
    let (first, again, notice, held) = run(Duration::ZERO);
    let (first_q, again_q, notice_q, held_q) = run(Duration::from_millis(30));
    // Its NACK waits the queue out, and so does its retry: what it asks for comes behind it.
    assert_eq!(first_q, first + Duration::from_millis(30));
    assert_eq!(again_q, again + Duration::from_millis(30));
    // Its notice echoes the same send time, and says it held that packet 30 ms longer than
    // it did: the server's round trip is the path's, not the queue's.
    assert_eq!(notice_q.echo_timestamp, notice.echo_timestamp);
    let path =
        |n: &ReceiptRepr, held: Duration| i64::from(n.echo_delay_us) - held.as_micros() as i64;
    assert_eq!(path(&notice, held), 0);
    assert_eq!(path(&notice_q, held_q), 30_000);
}

#[test]
fn a_unit_is_wanted_until_it_is_held_and_its_block_out_for_hashing_wants_none() {
    let c = content(3);
    let m = manifest(&c);
    let t0 = Instant::now();
    let mut r = joined(&m, t0);
    let (o, b) = addr(0);
    assert!((0..UNITS).all(|i| r.wants_unit(o, b, i)));
    assert!(!r.wants_unit(o, b, UNITS), "past the block's units");
    assert!(
        !r.wants_unit(o, BlockIndex(3), 0),
        "past the object's blocks"
    );
    // A unit in two pieces, its header apart from its payload, counts as the whole one.
    let d = data_unit(&c, 3, 0, 1);
    let (head, payload) = d.split_at(crate::wire::UNIT_HEADER_LEN);
    assert!(r.handle_unit_parts(t0, SERVER, head, payload));
    assert!(!r.wants_unit(o, b, 1));
    assert!(r.wants_unit(o, b, 2));
    // Not a unit's header: handled by nobody, for the caller to join and hand on whole.
    let a = announce(3, &m);
    assert!(!r.handle_unit_parts(t0, SERVER, &a[..26], &a[26..]));
    for i in [0, 2, 3] {
        r.handle_datagram(t0, SERVER, &data_unit(&c, 3, 0, i));
    }
    // Whole: out for hashing, nothing of it wanted until the answer.
    let verify = std::iter::from_fn(|| r.poll_event())
        .any(|e| matches!(e, ReceiverEvent::VerifyBlock { block, .. } if block == b));
    assert!(verify);
    assert!((0..UNITS).all(|i| !r.wants_unit(o, b, i)));
    r.handle_verified(t0, o, b, true);
    assert!((0..UNITS).all(|i| !r.wants_unit(o, b, i)));
    // A block whose hash failed is wanted again whole.
    let (o1, b1) = addr(1);
    for i in 0..UNITS {
        r.handle_datagram(t0, SERVER, &data_unit(&c, 3, 1, i));
    }
    assert!(!r.wants_unit(o1, b1, 0));
    r.handle_verified(t0, o1, b1, false);
    assert!((0..UNITS).all(|i| r.wants_unit(o1, b1, i)));
}
