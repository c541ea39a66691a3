//! [`AtomicBitmap`]: a lock-free bitmap shared between cores.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::bits::{self, BitIter, Words, ZeroRuns, WORD_BITS};

/// A fixed-length bitmap of `AtomicU64` words that any number of threads may set, clear and
/// read through `&self`.
///
/// Used for the receiver's receive status (units of a block, blocks of an object) and for the
/// rows of the [`StatusMatrix`](crate::StatusMatrix). Single-bit operations are atomic and
/// tell the caller whether *it* changed the bit, so exactly one thread sees each transition.
/// Operations over many words ([`count_ones`](Self::count_ones), the iterators,
/// [`clear_all`](Self::clear_all), [`snapshot_words`](Self::snapshot_words)) are word by word:
/// concurrent changes may or may not be reflected. Bits past `len` are always clear.
///
/// Orderings (see the crate docs): `set` is Release and `get`, `is_full`, the iterators and
/// snapshots load with Acquire, so a thread that sees a unit bit also sees the payload written
/// before it was set. `count_ones` is Relaxed: it is a statistic.
pub struct AtomicBitmap {
    words: Box<[AtomicU64]>,
    len: usize,
}

impl AtomicBitmap {
    /// A bitmap of `len` clear bits.
    pub fn new(len: usize) -> Self {
        let words = (0..bits::word_count(len))
            .map(|_| AtomicU64::new(0))
            .collect();
        Self { words, len }
    }

    /// Length in bits.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the bitmap has no bits at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets bit `i`: `Some(true)` if this call changed it from 0 to 1, `Some(false)` if it was
    /// already set, `None` if `i` is out of range. Use this for indices from the network.
    ///
    /// Write the unit's payload *before* setting its bit: the set publishes it.
    pub fn try_set(&self, i: usize) -> Option<bool> {
        let (word, mask) = self.locate(i)?;
        // Release: a thread that sees this bit with Acquire also sees the payload written before.
        let old = word.fetch_or(mask, Ordering::Release);
        Some(old & mask == 0)
    }

    /// Sets bit `i`; true if this call changed it from 0 to 1. An out-of-range `i` is a caller
    /// bug: it asserts in debug builds and returns false in release builds.
    pub fn set(&self, i: usize) -> bool {
        debug_assert!(i < self.len, "bit {i} out of range (len {})", self.len);
        self.try_set(i).unwrap_or(false)
    }

    /// Clears bit `i`: `Some(true)` if this call changed it from 1 to 0, `Some(false)` if it
    /// was already clear, `None` if `i` is out of range.
    pub fn try_clear(&self, i: usize) -> Option<bool> {
        let (word, mask) = self.locate(i)?;
        // Release: a thread that sees the bit clear with Acquire also sees what was done before
        // (e.g. a block reset after a failed hash check).
        let old = word.fetch_and(!mask, Ordering::Release);
        Some(old & mask != 0)
    }

    /// Clears bit `i`; true if this call changed it from 1 to 0. Out of range: as
    /// [`set`](Self::set).
    pub fn clear(&self, i: usize) -> bool {
        debug_assert!(i < self.len, "bit {i} out of range (len {})", self.len);
        self.try_clear(i).unwrap_or(false)
    }

    /// Whether bit `i` is set; an index past the end is never set. If true, the payload
    /// written before the bit was set is visible to this thread.
    pub fn get(&self, i: usize) -> bool {
        self.locate(i).is_some_and(|(word, mask)| {
            // Acquire: pairs with `set`'s Release, so the caller may read the payload.
            word.load(Ordering::Acquire) & mask != 0
        })
    }

    /// Number of set bits, counted word by word. A statistic: do not read payloads on its
    /// strength (use [`is_full`](Self::is_full) or [`get`](Self::get)).
    pub fn count_ones(&self) -> usize {
        self.words
            .iter()
            // Relaxed: only a count; it publishes nothing and nothing is read on its strength.
            .map(|w| w.load(Ordering::Relaxed).count_ones() as usize)
            .sum()
    }

    /// Whether every bit is set (true for an empty bitmap). If true, every payload published
    /// by a `set` is visible to this thread, so a completed block can be hashed.
    pub fn is_full(&self) -> bool {
        let Some((last, full)) = self.words.split_last() else {
            return true;
        };
        // Acquire: pairs with each `set`'s Release, so the whole block's payload is visible.
        full.iter().all(|w| w.load(Ordering::Acquire) == !0)
            // Acquire: as above, for the last word.
            && last.load(Ordering::Acquire) == bits::tail_mask(self.len)
    }

    /// First clear bit at or after `start`, scanning word by word.
    pub fn first_zero_from(&self, start: usize) -> Option<usize> {
        bits::find(Words::Atomic(&self.words), self.len, start, false)
    }

    /// Indices of set bits, increasing; racy as described on [`BitIter`].
    pub fn iter_ones(&self) -> BitIter<'_> {
        BitIter::new(Words::Atomic(&self.words), self.len, true)
    }

    /// Indices of clear bits, increasing; racy as described on [`BitIter`].
    pub fn iter_zeros(&self) -> BitIter<'_> {
        BitIter::new(Words::Atomic(&self.words), self.len, false)
    }

    /// Maximal runs of clear bits as `(start, len)`: the ranges of a NACK; racy as described
    /// on [`ZeroRuns`].
    pub fn zero_runs(&self) -> ZeroRuns<'_> {
        ZeroRuns::new(Words::Atomic(&self.words), self.len)
    }

    /// Clears every bit, word by word (not one atomic step: a concurrent `set` may survive).
    pub fn clear_all(&self) {
        for w in self.words.iter() {
            // Release: as in `try_clear`.
            w.store(0, Ordering::Release);
        }
    }

    /// A copy of the words (bit `i` is bit `i % 64` of word `i / 64`), loaded one by one.
    pub fn snapshot_words(&self) -> Vec<u64> {
        let mut out = vec![0; self.words.len()];
        self.copy_into(&mut out);
        out
    }

    /// Copies as many words as fit into `out` and returns how many; see
    /// [`snapshot_words`](Self::snapshot_words).
    pub fn copy_into(&self, out: &mut [u64]) -> usize {
        let n = out.len().min(self.words.len());
        for (o, w) in out.iter_mut().zip(self.words.iter()) {
            // Acquire: as in `get`, for a copy handed to a reader of the payload.
            *o = w.load(Ordering::Acquire);
        }
        n
    }

    /// Clears every bit and calls `f` with the index of each bit this call cleared, exactly
    /// once per bit, even under concurrent calls.
    pub(crate) fn take_ones(&self, mut f: impl FnMut(usize)) {
        for (w, word) in self.words.iter().enumerate() {
            // Release: as in `try_clear`; the swap hands each set bit to exactly one caller.
            let mut old = word.swap(0, Ordering::Release);
            while old != 0 {
                f(w * WORD_BITS + old.trailing_zeros() as usize);
                old &= old - 1;
            }
        }
    }

    fn locate(&self, i: usize) -> Option<(&AtomicU64, u64)> {
        (i < self.len).then(|| (&self.words[i / WORD_BITS], 1 << (i % WORD_BITS)))
    }
}

impl fmt::Debug for AtomicBitmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AtomicBitmap")
            .field("len", &self.len)
            .field("ones", &self.count_ones())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;
    use std::sync::Barrier;
    use std::sync::Mutex;

    #[test]
    fn set_clear_get_count() {
        let b = AtomicBitmap::new(130);
        assert_eq!((b.len(), b.is_empty(), b.count_ones()), (130, false, 0));
        assert!(b.set(0));
        assert!(!b.set(0));
        assert!(b.set(129));
        assert!(b.get(0) && b.get(129) && !b.get(64));
        assert_eq!(b.count_ones(), 2);
        assert!(b.clear(129));
        assert!(!b.clear(129));
        assert_eq!(b.count_ones(), 1);
        assert_eq!(b.snapshot_words(), [1, 0, 0]);
        assert_eq!(format!("{b:?}"), "AtomicBitmap { len: 130, ones: 1 }");
    }

    #[test]
    fn out_of_range_is_refused() {
        let b = AtomicBitmap::new(3);
        assert_eq!(b.try_set(3), None);
        assert_eq!(b.try_clear(usize::MAX), None);
        assert_eq!(b.try_set(2), Some(true));
        assert_eq!(b.try_clear(2), Some(true));
        assert!(!b.get(3));
        assert_eq!(b.count_ones(), 0);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "out of range")]
    fn set_out_of_range_asserts_in_debug() {
        AtomicBitmap::new(3).set(3);
    }

    #[test]
    fn full_scan_and_clear_all() {
        let b = AtomicBitmap::new(65);
        for i in 0..65 {
            assert!(!b.is_full());
            assert_eq!(b.first_zero_from(0), Some(i));
            b.set(i);
        }
        assert!(b.is_full());
        assert_eq!(b.first_zero_from(0), None);
        b.clear_all();
        assert_eq!((b.count_ones(), b.first_zero_from(7)), (0, Some(7)));
        assert!(AtomicBitmap::new(0).is_full());
        assert!(AtomicBitmap::new(0).is_empty());
    }

    #[test]
    fn iterators_runs_and_copies() {
        let b = AtomicBitmap::new(70);
        for i in [1, 2, 64, 69] {
            b.set(i);
        }
        assert_eq!(b.iter_ones().collect::<Vec<_>>(), [1, 2, 64, 69]);
        assert_eq!(b.iter_zeros().take(3).collect::<Vec<_>>(), [0, 3, 4]);
        assert_eq!(b.iter_zeros().count(), 66);
        assert_eq!(
            b.zero_runs().collect::<Vec<_>>(),
            [(0, 1), (3, 61), (65, 4)]
        );
        let mut short = [0u64; 1];
        assert_eq!(b.copy_into(&mut short), 1);
        assert_eq!(short, [0b110]);
        let mut long = [9u64; 3];
        assert_eq!(b.copy_into(&mut long), 2);
        assert_eq!(long, [0b110, 1 | 1 << 5, 9]);
    }

    #[test]
    fn take_ones_clears_and_reports() {
        let b = AtomicBitmap::new(200);
        for i in [0, 63, 64, 199] {
            b.set(i);
        }
        let mut taken = Vec::new();
        b.take_ones(|i| taken.push(i));
        assert_eq!(taken, [0, 63, 64, 199]);
        assert_eq!(b.count_ones(), 0);
    }

    /// Threads set random bits, some shared; each also records its bits in a local oracle
    /// merged at the end (a lock per operation would serialise the very races under test).
    /// Every 0->1 transition is seen by exactly one `set`.
    #[test]
    fn concurrent_sets_match_oracle() {
        const THREADS: u64 = 4;
        const OPS: usize = 100_000;
        const LEN: usize = 50_000;
        let bitmap = AtomicBitmap::new(LEN);
        let oracle = Mutex::new(vec![false; LEN]);
        let start = &Barrier::new(THREADS as usize);
        let transitions: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (bitmap, oracle) = (&bitmap, &oracle);
                    s.spawn(move || {
                        start.wait();
                        let mut rng = Rng::new(t);
                        let mut local = vec![false; LEN];
                        let mut won = 0;
                        for _ in 0..OPS {
                            let i = rng.below(LEN);
                            won += usize::from(bitmap.set(i));
                            local[i] = true;
                        }
                        let mut oracle = oracle.lock().unwrap();
                        oracle.iter_mut().zip(local).for_each(|(o, l)| *o |= l);
                        won
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let oracle = oracle.into_inner().unwrap();
        let expected: Vec<usize> = (0..LEN).filter(|&i| oracle[i]).collect();
        assert_eq!(bitmap.iter_ones().collect::<Vec<_>>(), expected);
        assert_eq!(bitmap.count_ones(), expected.len());
        assert_eq!(transitions, expected.len());
    }

    /// Threads set and clear random bits of a small bitmap (heavy contention on each word):
    /// successful sets minus successful clears equals the bits left set.
    #[test]
    fn concurrent_sets_and_clears_balance() {
        const THREADS: u64 = 4;
        const OPS: usize = 100_000;
        let bitmap = AtomicBitmap::new(256);
        let start = &Barrier::new(THREADS as usize);
        let net: i64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let bitmap = &bitmap;
                    s.spawn(move || {
                        start.wait();
                        let mut rng = Rng::new(100 + t);
                        let mut net = 0i64;
                        for _ in 0..OPS {
                            let i = rng.below(bitmap.len());
                            if rng.below(2) == 0 {
                                net += i64::from(bitmap.set(i));
                            } else {
                                net -= i64::from(bitmap.clear(i));
                            }
                        }
                        net
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(net, bitmap.count_ones() as i64);
    }
}
