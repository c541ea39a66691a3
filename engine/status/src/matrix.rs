//! [`StatusMatrix`]: the server's receivers x blocks table.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use crate::AtomicBitmap;

/// A value alone on its 64-byte cache line, so that cores writing neighbouring values do not
/// invalidate each other's lines (false sharing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(align(64))]
pub struct CachePadded<T>(pub T);

impl<T> Deref for CachePadded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// [`ROW_CHUNK`] rows, allocated together.
type Chunk = Box<[CachePadded<Row>]>;

/// Rows per allocation of the status matrix.
pub const ROW_CHUNK: usize = 1024;

/// Row state: the low two bits say free / active / retiring, the rest count the row's uses,
/// so a [`RowId`] from an earlier use no longer matches.
const FREE: u32 = 0;
const ACTIVE: u32 = 1;
const RETIRING: u32 = 2;
const STATE_BITS: u32 = 3;
const NEXT_USE: u32 = 4;

/// A receiver's row in a [`StatusMatrix`], from [`StatusMatrix::add_receiver`].
///
/// It names one use of the row: after [`StatusMatrix::remove_receiver`] the id is stale, and
/// every method given it ignores it (writes return false, reads report nothing held), even
/// once the row serves another receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RowId {
    index: u32,
    tag: u32,
}

impl RowId {
    /// The row's index, below [`StatusMatrix::max_receivers`]; reused after removal.
    pub fn index(self) -> usize {
        self.index as usize
    }
}

struct Row {
    /// `use << 2 | FREE / ACTIVE / RETIRING`.
    state: AtomicU32,
    /// Number of bits set in `held`.
    held_count: AtomicU32,
    /// Receive status: blocks this receiver holds.
    held: AtomicBitmap,
    /// Request status: blocks this receiver asked for with priority.
    requested: AtomicBitmap,
}

/// Per-block transfer status. Not padded: 64 bytes per block would cost 16 times the memory,
/// and writes to one block's counters are rare next to the sends of its units.
#[derive(Default)]
struct TransferStatus {
    /// Active receivers that hold the block.
    holders: AtomicU32,
    /// Active receivers that request the block.
    requesters: AtomicU32,
}

/// The server's status matrix: for each receiver row, its receive status (blocks held) and
/// request status (blocks requested with priority), and for each block, its transfer status
/// (how many receivers hold it and how many request it).
///
/// Rows are allocated [`ROW_CHUNK`] at a time, when a receiver first needs a row of a chunk
/// (`blocks / 4` bytes and a cache line each), and reused after
/// [`remove_receiver`](Self::remove_receiver): a server sized for 100,000 receivers starts in
/// microseconds, not the 16 ms that allocating every row took. Every method takes `&self`; out-of-range
/// blocks and stale [`RowId`]s are ignored.
///
/// # Concurrency
///
/// - [`add_receiver`](Self::add_receiver) may be called from any thread: it claims a free row
///   with a compare-exchange. It is lock-free except when it is the first to need a chunk of
///   rows: then it allocates the chunk, and others that need the same chunk meanwhile wait
///   for that allocation.
/// - [`mark_held`](Self::mark_held), [`request`](Self::request) and
///   [`clear_request`](Self::clear_request) may be called from any thread, for any row,
///   concurrently: each counter is moved only by the call that flipped the bit.
/// - [`remove_receiver`](Self::remove_receiver) must not run concurrently with writes to the
///   *same* row: call it from the thread that handles that receiver's control traffic (the
///   row's writer), or after its writers have stopped. A write that raced with removal could
///   leave a bit set in a freed row, which the row's next receiver would then appear to hold.
/// - Readers run at any time and see each counter and bit atomically; a reading that combines
///   several ([`all_hold`](Self::all_hold)) is exact only while membership is not changing.
pub struct StatusMatrix {
    /// Chunks of [`ROW_CHUNK`] rows (the last may be shorter), each allocated on first use.
    rows: Box<[OnceLock<Chunk>]>,
    max_receivers: usize,
    transfer: Box<[TransferStatus]>,
    active: CachePadded<AtomicU32>,
    complete: CachePadded<AtomicU32>,
}

impl StatusMatrix {
    /// A matrix with room for `max_receivers` rows of `blocks` blocks, none active.
    ///
    /// # Panics
    ///
    /// If `max_receivers` or `blocks` exceeds `u32::MAX` (counters are `u32`).
    pub fn new(max_receivers: usize, blocks: usize) -> Self {
        assert!(
            u32::try_from(max_receivers).is_ok() && u32::try_from(blocks).is_ok(),
            "status matrix of {max_receivers} receivers x {blocks} blocks exceeds u32 counters"
        );
        let rows = (0..max_receivers.div_ceil(ROW_CHUNK))
            .map(|_| OnceLock::new())
            .collect();
        let transfer = (0..blocks).map(|_| TransferStatus::default()).collect();
        Self {
            rows,
            max_receivers,
            transfer,
            active: CachePadded(AtomicU32::new(0)),
            complete: CachePadded(AtomicU32::new(0)),
        }
    }

    /// Number of rows.
    pub fn max_receivers(&self) -> usize {
        self.max_receivers
    }

    /// Chunk `c` of the rows, allocated now if this is its first use.
    fn chunk(&self, c: usize) -> &[CachePadded<Row>] {
        self.rows[c].get_or_init(|| {
            let len = (self.max_receivers - c * ROW_CHUNK).min(ROW_CHUNK);
            (0..len)
                .map(|_| {
                    CachePadded(Row {
                        state: AtomicU32::new(FREE),
                        held_count: AtomicU32::new(0),
                        held: AtomicBitmap::new(self.transfer.len()),
                        requested: AtomicBitmap::new(self.transfer.len()),
                    })
                })
                .collect()
        })
    }

    /// Row `index`, if its chunk has been allocated (a row of a chunk never used is free).
    fn slot(&self, index: usize) -> Option<&CachePadded<Row>> {
        self.rows
            .get(index / ROW_CHUNK)?
            .get()?
            .get(index % ROW_CHUNK)
    }

    /// Number of blocks per row.
    pub fn blocks(&self) -> usize {
        self.transfer.len()
    }

    /// Claims a free row for a new receiver, holding and requesting nothing; `None` if all
    /// `max_receivers` rows are active. Scans the rows: O(max_receivers) per join.
    pub fn add_receiver(&self) -> Option<RowId> {
        let rows = (0..self.rows.len()).flat_map(|c| {
            self.chunk(c)
                .iter()
                .enumerate()
                .map(move |(i, row)| (c * ROW_CHUNK + i, row))
        });
        for (index, row) in rows {
            // Relaxed: a hint; the compare-exchange below decides.
            let state = row.state.load(Ordering::Relaxed);
            if state & STATE_BITS != FREE {
                continue;
            }
            let tag = state | ACTIVE;
            // Acquire: pairs with the Release that freed the row, so this thread sees it clean.
            let claimed =
                row.state
                    .compare_exchange(state, tag, Ordering::Acquire, Ordering::Relaxed);
            if claimed.is_ok() {
                if self.transfer.is_empty() {
                    // Relaxed: a count; with no blocks, every receiver is complete.
                    self.complete.fetch_add(1, Ordering::Relaxed);
                }
                // Relaxed: a count; the new row holds nothing, so no reader can misjudge by it.
                self.active.fetch_add(1, Ordering::Relaxed);
                let index = index as u32; // < max_receivers <= u32::MAX, checked in `new`
                return Some(RowId { index, tag });
            }
        }
        None
    }

    /// Removes a receiver: clears its receive and request status, takes it out of every
    /// block's counts and frees its row for reuse. False if `row` is stale. Must not race
    /// with writes to the same row (see the type's docs).
    pub fn remove_receiver(&self, row: RowId) -> bool {
        let Some(r) = self.slot(row.index()) else {
            return false;
        };
        let retiring = (row.tag & !STATE_BITS) | RETIRING;
        // Acquire: sees the row as its writers left it. Retiring makes further writes stale.
        let claimed =
            r.state
                .compare_exchange(row.tag, retiring, Ordering::Acquire, Ordering::Relaxed);
        if claimed.is_err() {
            return false;
        }
        // Relaxed: this thread is the row's only writer now.
        let was_complete = r.held_count.load(Ordering::Relaxed) as usize == self.blocks();
        r.held.take_ones(|b| {
            // Relaxed: published by the Release decrement of `active` below.
            self.transfer[b].holders.fetch_sub(1, Ordering::Relaxed);
        });
        r.requested.take_ones(|b| {
            // Relaxed: a count; `requested_by_any` is a hint.
            self.transfer[b].requesters.fetch_sub(1, Ordering::Relaxed);
        });
        // Relaxed: the row is unreachable until the Release store below.
        r.held_count.store(0, Ordering::Relaxed);
        if was_complete {
            // Relaxed: a count.
            self.complete.fetch_sub(1, Ordering::Relaxed);
        }
        // Release: a reader that sees fewer receivers (Acquire, in `all_hold`) also sees the
        // holders decrements above, so it never counts this receiver's blocks without it.
        self.active.fetch_sub(1, Ordering::Release);
        let freed = (row.tag & !STATE_BITS).wrapping_add(NEXT_USE) | FREE;
        // Release: the next `add_receiver` that claims the row (Acquire) sees it clean.
        r.state.store(freed, Ordering::Release);
        true
    }

    /// Whether `row` names an active receiver.
    pub fn is_active(&self, row: RowId) -> bool {
        self.row(row).is_some()
    }

    /// Records that `row` holds `block` and clears its request for it. True if this call
    /// changed the receive status (so it counted the new holder); false if the block was
    /// already held, is out of range, or `row` is stale.
    pub fn mark_held(&self, row: RowId, block: usize) -> bool {
        let (Some(r), Some(t)) = (self.row(row), self.transfer.get(block)) else {
            return false;
        };
        if r.held.try_set(block) != Some(true) {
            return false;
        }
        // Relaxed: a count; only the caller that flipped the bit gets here, so each holder
        // counts once.
        t.holders.fetch_add(1, Ordering::Relaxed);
        // Release: a reader that sees the row complete (Acquire) sees all its held bits.
        let held = r.held_count.fetch_add(1, Ordering::Release) + 1;
        if held as usize == self.blocks() {
            // Relaxed: a count; only the caller that made the row complete gets here.
            self.complete.fetch_add(1, Ordering::Relaxed);
        }
        if r.requested.try_clear(block) == Some(true) {
            // Relaxed: a count; only the caller that cleared the bit gets here.
            t.requesters.fetch_sub(1, Ordering::Relaxed);
        }
        true
    }

    /// Whether `row` holds `block`.
    pub fn holds(&self, row: RowId, block: usize) -> bool {
        self.row(row).is_some_and(|r| r.held.get(block))
    }

    /// Number of blocks `row` holds (0 if stale).
    pub fn held_blocks(&self, row: RowId) -> usize {
        // Relaxed: a count for progress reports.
        self.row(row)
            .map_or(0, |r| r.held_count.load(Ordering::Relaxed) as usize)
    }

    /// Whether `row` holds every block.
    pub fn is_receiver_complete(&self, row: RowId) -> bool {
        self.row(row).is_some_and(|r| {
            // Acquire: pairs with `mark_held`'s Release, so all the row's held bits are visible.
            r.held_count.load(Ordering::Acquire) as usize == self.blocks()
        })
    }

    /// Records that `row` requests `block` with priority. True if this call changed the
    /// request status; false if already requested, already held, out of range or stale.
    pub fn request(&self, row: RowId, block: usize) -> bool {
        let (Some(r), Some(t)) = (self.row(row), self.transfer.get(block)) else {
            return false;
        };
        if r.held.get(block) || r.requested.try_set(block) != Some(true) {
            return false;
        }
        // Relaxed: a count; only the caller that set the bit gets here.
        t.requesters.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Withdraws `row`'s request for `block`. True if this call changed the request status.
    pub fn clear_request(&self, row: RowId, block: usize) -> bool {
        let (Some(r), Some(t)) = (self.row(row), self.transfer.get(block)) else {
            return false;
        };
        if r.requested.try_clear(block) != Some(true) {
            return false;
        }
        // Relaxed: a count; only the caller that cleared the bit gets here.
        t.requesters.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// Whether `row` requests `block`.
    pub fn is_requested(&self, row: RowId, block: usize) -> bool {
        self.row(row).is_some_and(|r| r.requested.get(block))
    }

    /// Number of active receivers that request `block` (0 if out of range).
    pub fn requesters(&self, block: usize) -> u32 {
        // Relaxed: a count, used as a scheduling hint.
        self.transfer
            .get(block)
            .map_or(0, |t| t.requesters.load(Ordering::Relaxed))
    }

    /// Whether any active receiver requests `block`.
    pub fn requested_by_any(&self, block: usize) -> bool {
        self.requesters(block) > 0
    }

    /// Number of active receivers that hold `block` (0 if out of range).
    pub fn holders(&self, block: usize) -> u32 {
        // Relaxed: a count.
        self.transfer
            .get(block)
            .map_or(0, |t| t.holders.load(Ordering::Relaxed))
    }

    /// Whether every active receiver holds `block` (vacuously true with none; false if out
    /// of range). Exact while membership is stable; while a receiver joins or leaves it may
    /// be briefly wrong, which costs at most a NACK round trip.
    pub fn all_hold(&self, block: usize) -> bool {
        let Some(t) = self.transfer.get(block) else {
            return false;
        };
        // Acquire: pairs with `remove_receiver`'s Release, so a departed receiver's blocks are
        // already out of `holders` when it is out of `active`.
        let active = self.active.load(Ordering::Acquire);
        // Relaxed: ordered after the Acquire load above.
        t.holders.load(Ordering::Relaxed) >= active
    }

    /// Number of active receivers.
    pub fn active_receivers(&self) -> usize {
        // Relaxed: a count.
        self.active.load(Ordering::Relaxed) as usize
    }

    /// Number of active receivers that hold every block.
    pub fn complete_receivers(&self) -> usize {
        // Relaxed: a count.
        self.complete.load(Ordering::Relaxed) as usize
    }

    /// The row `id` names, if it is still active.
    fn row(&self, id: RowId) -> Option<&Row> {
        let row = self.slot(id.index())?;
        // Relaxed: only filters stale ids; the id itself reached this thread through whatever
        // synchronised its hand-over.
        (row.state.load(Ordering::Relaxed) == id.tag).then_some(&row.0)
    }
}

impl fmt::Debug for StatusMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusMatrix")
            .field("max_receivers", &self.max_receivers())
            .field("blocks", &self.blocks())
            .field("active", &self.active_receivers())
            .field("complete", &self.complete_receivers())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;
    use std::sync::Barrier;

    #[test]
    fn cache_padded_is_a_line() {
        assert_eq!(std::mem::align_of::<CachePadded<AtomicU32>>(), 64);
        assert_eq!(std::mem::size_of::<CachePadded<Row>>(), 64);
        assert_eq!(*CachePadded(7u8), 7);
    }

    #[test]
    fn new_is_empty() {
        let m = StatusMatrix::new(3, 10);
        assert_eq!((m.max_receivers(), m.blocks()), (3, 10));
        assert_eq!((m.active_receivers(), m.complete_receivers()), (0, 0));
        assert_eq!((m.holders(0), m.requesters(0)), (0, 0));
        assert!(m.all_hold(0), "vacuously true with no receivers");
        assert!(!m.all_hold(10), "out of range");
        assert!(format!("{m:?}").contains("blocks: 10"));
    }

    #[test]
    fn add_until_full_then_reuse_with_new_id() {
        let m = StatusMatrix::new(2, 4);
        let a = m.add_receiver().unwrap();
        let b = m.add_receiver().unwrap();
        assert_ne!(a.index(), b.index());
        assert_eq!(m.add_receiver(), None);
        assert_eq!(m.active_receivers(), 2);
        assert!(m.mark_held(a, 1));
        assert!(m.remove_receiver(a));
        assert!(!m.remove_receiver(a), "already removed");
        assert!(!m.is_active(a));
        let c = m.add_receiver().unwrap();
        assert_eq!(c.index(), a.index());
        assert_ne!(c, a);
        assert!(!m.holds(c, 1), "a reused row starts clean");
        assert!(!m.mark_held(a, 2) && !m.request(a, 2), "stale id");
        assert!(!m.holds(c, 2) && !m.is_requested(c, 2));
        assert_eq!((m.held_blocks(a), m.is_receiver_complete(a)), (0, false));
        assert_eq!(m.active_receivers(), 2);
    }

    #[test]
    fn mark_held_counts_holders_and_completion() {
        let m = StatusMatrix::new(2, 3);
        let (a, b) = (m.add_receiver().unwrap(), m.add_receiver().unwrap());
        assert!(m.mark_held(a, 0));
        assert!(!m.mark_held(a, 0));
        assert!(!m.mark_held(a, 3), "out of range");
        assert!(m.holds(a, 0) && !m.holds(b, 0) && !m.holds(a, 3));
        assert_eq!((m.holders(0), m.holders(3)), (1, 0));
        assert!(!m.all_hold(0));
        assert!(m.mark_held(b, 0));
        assert!(m.all_hold(0));
        assert_eq!(m.holders(0), 2);
        m.mark_held(a, 1);
        assert_eq!(m.held_blocks(a), 2);
        assert!(!m.is_receiver_complete(a));
        m.mark_held(a, 2);
        assert!(m.is_receiver_complete(a) && !m.is_receiver_complete(b));
        assert_eq!(m.complete_receivers(), 1);
    }

    #[test]
    fn requests_are_counted_and_satisfied_by_holding() {
        let m = StatusMatrix::new(2, 3);
        let (a, b) = (m.add_receiver().unwrap(), m.add_receiver().unwrap());
        assert!(!m.requested_by_any(1));
        assert!(m.request(a, 1));
        assert!(!m.request(a, 1));
        assert!(m.request(b, 1));
        assert!(m.is_requested(a, 1) && m.requested_by_any(1));
        assert_eq!(m.requesters(1), 2);
        assert!(m.clear_request(b, 1));
        assert!(!m.clear_request(b, 1));
        assert!(m.mark_held(a, 1));
        assert!(!m.is_requested(a, 1), "holding satisfies the request");
        assert!(!m.requested_by_any(1));
        assert!(!m.request(a, 1), "a held block is not requested");
        assert!(!m.request(a, 9) && !m.clear_request(a, 9) && !m.is_requested(a, 9));
        assert_eq!(m.requesters(9), 0);
    }

    #[test]
    fn remove_takes_receiver_out_of_every_count() {
        let m = StatusMatrix::new(2, 2);
        let (a, b) = (m.add_receiver().unwrap(), m.add_receiver().unwrap());
        m.mark_held(a, 0);
        m.mark_held(a, 1);
        m.mark_held(b, 0);
        m.request(b, 1);
        assert_eq!(
            (m.complete_receivers(), m.holders(0), m.requesters(1)),
            (1, 2, 1)
        );
        assert!(!m.all_hold(1));
        assert!(m.remove_receiver(b));
        assert!(m.all_hold(1), "the only receiver left holds it");
        assert_eq!((m.holders(0), m.requesters(1)), (1, 0));
        assert!(m.remove_receiver(a));
        assert_eq!((m.holders(0), m.holders(1)), (0, 0));
        assert_eq!((m.active_receivers(), m.complete_receivers()), (0, 0));
    }

    #[test]
    fn no_blocks_means_complete_on_join() {
        let m = StatusMatrix::new(1, 0);
        let a = m.add_receiver().unwrap();
        assert!(m.is_receiver_complete(a));
        assert_eq!(m.complete_receivers(), 1);
        m.remove_receiver(a);
        assert_eq!(m.complete_receivers(), 0);
    }

    #[test]
    fn rows_come_in_chunks_as_receivers_join() {
        let max = 2 * ROW_CHUNK + 100;
        let m = StatusMatrix::new(max, 8);
        // A row of a chunk nobody has used yet is free, whatever id names it.
        let far = StatusMatrix::new(max, 8);
        let far_ids: Vec<RowId> = (0..ROW_CHUNK + 1)
            .map(|_| far.add_receiver().unwrap())
            .collect();
        let stranger = far_ids[ROW_CHUNK];
        assert!(!m.mark_held(stranger, 0) && !m.holds(stranger, 0) && !m.remove_receiver(stranger));
        let ids: Vec<RowId> = (0..max).map(|_| m.add_receiver().unwrap()).collect();
        assert_eq!(m.add_receiver(), None, "every row of every chunk is taken");
        let mut seen: Vec<usize> = ids.iter().map(|r| r.index()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..max).collect::<Vec<_>>());
        // A row in the last, shorter chunk works like any other and is reused once freed.
        let last = ids[max - 1];
        assert!(m.mark_held(last, 7) && m.holds(last, 7));
        assert!(m.remove_receiver(last));
        let again = m.add_receiver().unwrap();
        assert_eq!(again.index(), last.index());
        assert!(!m.holds(again, 7) && !m.holds(last, 7));
    }

    #[test]
    fn zero_rows() {
        let m = StatusMatrix::new(0, 5);
        assert_eq!(m.add_receiver(), None);
        let foreign = StatusMatrix::new(1, 5).add_receiver().unwrap();
        assert!(!m.mark_held(foreign, 0) && !m.remove_receiver(foreign));
    }

    /// Threads mark blocks held and request / withdraw blocks for shared rows concurrently;
    /// local oracles are merged at the end. Every counter must equal what the bits say.
    #[test]
    fn concurrent_marks_and_requests_keep_counts_exact() {
        const THREADS: u64 = 4;
        const OPS: usize = 100_000;
        const RECEIVERS: usize = 8;
        const BLOCKS: usize = 512;
        let m = StatusMatrix::new(RECEIVERS, BLOCKS);
        let rows: Vec<RowId> = (0..RECEIVERS).map(|_| m.add_receiver().unwrap()).collect();
        let start = &Barrier::new(THREADS as usize);
        let (oracle, newly_held) = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (m, rows) = (&m, &rows);
                    s.spawn(move || {
                        start.wait();
                        let mut rng = Rng::new(200 + t);
                        let mut local = vec![false; RECEIVERS * BLOCKS];
                        let mut won = 0;
                        for _ in 0..OPS {
                            let r = rng.below(RECEIVERS);
                            // The upper half of the rows never get the last block.
                            let b = rng.below(BLOCKS - usize::from(r >= RECEIVERS / 2));
                            match rng.below(8) {
                                0 => {
                                    won += usize::from(m.mark_held(rows[r], b));
                                    local[r * BLOCKS + b] = true;
                                }
                                1..=4 => _ = m.request(rows[r], b),
                                _ => _ = m.clear_request(rows[r], b),
                            }
                        }
                        (local, won)
                    })
                })
                .collect();
            let mut oracle = vec![false; RECEIVERS * BLOCKS];
            let mut won = 0;
            for h in handles {
                let (local, w) = h.join().unwrap();
                oracle.iter_mut().zip(local).for_each(|(o, l)| *o |= l);
                won += w;
            }
            (oracle, won)
        });
        let mut total_held = 0;
        for b in 0..BLOCKS {
            for (r, &row) in rows.iter().enumerate() {
                assert_eq!(m.holds(row, b), oracle[r * BLOCKS + b], "row {r} block {b}");
            }
            let held = (0..RECEIVERS).filter(|&r| m.holds(rows[r], b)).count();
            let requested = (0..RECEIVERS)
                .filter(|&r| m.is_requested(rows[r], b))
                .count();
            assert_eq!(m.holders(b) as usize, held, "block {b}");
            assert_eq!(m.requesters(b) as usize, requested, "block {b}");
            assert_eq!(m.all_hold(b), held == RECEIVERS);
            total_held += held;
        }
        assert_eq!(newly_held, total_held);
        for &r in &rows {
            let held = (0..BLOCKS).filter(|&b| m.holds(r, b)).count();
            assert_eq!(m.held_blocks(r), held);
            assert_eq!(m.is_receiver_complete(r), held == BLOCKS);
        }
        let complete = rows.iter().filter(|&&r| m.is_receiver_complete(r)).count();
        assert_eq!(m.complete_receivers(), complete);
        assert!(
            complete > 0 && complete <= RECEIVERS / 2,
            "{complete} complete"
        );
    }

    /// Each thread joins, marks and leaves over and over (so rows are reused across threads)
    /// while others do the same; at the end nothing is left counted.
    #[test]
    fn concurrent_joins_and_leaves_leave_no_trace() {
        const THREADS: u64 = 4;
        const ROUNDS: usize = 2_000;
        const BLOCKS: usize = 64;
        let m = StatusMatrix::new(THREADS as usize, BLOCKS);
        let start = &Barrier::new(THREADS as usize);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let m = &m;
                s.spawn(move || {
                    start.wait();
                    let mut rng = Rng::new(300 + t);
                    for _ in 0..ROUNDS {
                        // One row per thread is always free, whatever the others hold.
                        let row = m.add_receiver().unwrap();
                        for _ in 0..rng.below(50) {
                            let b = rng.below(BLOCKS);
                            if rng.below(3) == 0 {
                                m.request(row, b);
                            } else {
                                m.mark_held(row, b);
                            }
                        }
                        assert!(m.remove_receiver(row));
                        assert!(!m.mark_held(row, 0));
                    }
                });
            }
        });
        assert_eq!((m.active_receivers(), m.complete_receivers()), (0, 0));
        for b in 0..BLOCKS {
            assert_eq!((m.holders(b), m.requesters(b)), (0, 0), "block {b}");
        }
    }
}
