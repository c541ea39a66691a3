//! [`UnitBitmap`]: a plain bitmap for single-threaded state machines.

use crate::bits::{self, BitIter, Words, ZeroRuns, WORD_BITS};

/// A fixed-length bitmap of plain `u64` words, owned by one thread: the receive status of one
/// block's units inside a sans-IO state machine (which units arrived, which runs a NACK names).
///
/// It keeps its count of set bits, so [`count_ones`](Self::count_ones) and
/// [`is_full`](Self::is_full) cost O(1) per datagram. Bits past `len` are always clear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitBitmap {
    words: Vec<u64>,
    len: usize,
    ones: usize,
}

impl UnitBitmap {
    /// A bitmap of `len` clear bits.
    pub fn new(len: usize) -> Self {
        Self {
            words: vec![0; bits::word_count(len)],
            len,
            ones: 0,
        }
    }

    /// A bitmap of `len` bits taken from `words` (bit `i` is bit `i % 64` of `words[i / 64]`),
    /// such as a NACK bitmap or saved receive status. `None` unless `words` holds exactly the
    /// words `len` bits need; bits past `len` are dropped.
    pub fn from_words(len: usize, words: &[u64]) -> Option<Self> {
        if words.len() != bits::word_count(len) {
            return None;
        }
        let mut words = words.to_vec();
        if let Some(last) = words.last_mut() {
            *last &= bits::tail_mask(len);
        }
        let ones = words.iter().map(|w| w.count_ones() as usize).sum();
        Some(Self { words, len, ones })
    }

    /// Length in bits.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the bitmap has no bits at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets bit `i`: `Some(true)` if it was clear, `Some(false)` if already set, `None` if `i`
    /// is out of range. Use this for indices that come from the network.
    pub fn try_set(&mut self, i: usize) -> Option<bool> {
        if i >= self.len {
            return None;
        }
        let (word, mask) = (&mut self.words[i / WORD_BITS], 1 << (i % WORD_BITS));
        let changed = *word & mask == 0;
        *word |= mask;
        self.ones += usize::from(changed);
        Some(changed)
    }

    /// Sets bit `i`; true if it was clear. An out-of-range `i` is a caller bug: it asserts in
    /// debug builds and returns false in release builds.
    pub fn set(&mut self, i: usize) -> bool {
        debug_assert!(i < self.len, "bit {i} out of range (len {})", self.len);
        self.try_set(i).unwrap_or(false)
    }

    /// Clears bit `i`: `Some(true)` if it was set, `Some(false)` if already clear, `None` if
    /// `i` is out of range.
    pub fn try_clear(&mut self, i: usize) -> Option<bool> {
        if i >= self.len {
            return None;
        }
        let (word, mask) = (&mut self.words[i / WORD_BITS], 1 << (i % WORD_BITS));
        let changed = *word & mask != 0;
        *word &= !mask;
        self.ones -= usize::from(changed);
        Some(changed)
    }

    /// Clears bit `i`; true if it was set. Out of range: as [`set`](Self::set).
    pub fn clear(&mut self, i: usize) -> bool {
        debug_assert!(i < self.len, "bit {i} out of range (len {})", self.len);
        self.try_clear(i).unwrap_or(false)
    }

    /// Whether bit `i` is set; an index past the end is never set.
    pub fn get(&self, i: usize) -> bool {
        i < self.len && self.words[i / WORD_BITS] & (1 << (i % WORD_BITS)) != 0
    }

    /// Number of set bits, O(1).
    pub fn count_ones(&self) -> usize {
        self.ones
    }

    /// Whether every bit is set (true for an empty bitmap), O(1).
    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }

    /// First clear bit at or after `start`.
    pub fn first_zero_from(&self, start: usize) -> Option<usize> {
        bits::find(Words::Plain(&self.words), self.len, start, false)
    }

    /// Indices of set bits, increasing.
    pub fn iter_ones(&self) -> BitIter<'_> {
        BitIter::new(Words::Plain(&self.words), self.len, true)
    }

    /// Indices of clear bits, increasing.
    pub fn iter_zeros(&self) -> BitIter<'_> {
        BitIter::new(Words::Plain(&self.words), self.len, false)
    }

    /// Maximal runs of clear bits as `(start, len)`, increasing: the ranges of a NACK.
    pub fn zero_runs(&self) -> ZeroRuns<'_> {
        ZeroRuns::new(Words::Plain(&self.words), self.len)
    }

    /// Clears every bit.
    pub fn clear_all(&mut self) {
        self.words.fill(0);
        self.ones = 0;
    }

    /// The storage words; bits past `len` are clear.
    pub fn words(&self) -> &[u64] {
        &self.words
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_clear_get_count() {
        let mut b = UnitBitmap::new(70);
        assert_eq!((b.len(), b.is_empty(), b.count_ones()), (70, false, 0));
        assert!(b.set(0));
        assert!(!b.set(0));
        assert!(b.set(69));
        assert!(b.get(0) && b.get(69) && !b.get(1));
        assert_eq!(b.count_ones(), 2);
        assert!(b.clear(0));
        assert!(!b.clear(0));
        assert!(!b.get(0));
        assert_eq!(b.count_ones(), 1);
        assert_eq!(b.words(), [0, 1 << 5]);
    }

    #[test]
    fn out_of_range_is_refused() {
        let mut b = UnitBitmap::new(3);
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
        UnitBitmap::new(3).set(3);
    }

    #[test]
    fn full_and_empty() {
        let mut b = UnitBitmap::new(65);
        for i in 0..65 {
            assert!(!b.is_full());
            b.set(i);
        }
        assert!(b.is_full());
        assert_eq!(b.first_zero_from(0), None);
        b.clear_all();
        assert_eq!((b.count_ones(), b.first_zero_from(10)), (0, Some(10)));
        let e = UnitBitmap::new(0);
        assert!(e.is_empty() && e.is_full());
        assert_eq!(e.first_zero_from(0), None);
    }

    #[test]
    fn scans_and_runs() {
        let mut b = UnitBitmap::new(10);
        for i in [0, 1, 4, 9] {
            b.set(i);
        }
        assert_eq!(b.first_zero_from(0), Some(2));
        assert_eq!(b.first_zero_from(4), Some(5));
        assert_eq!(b.first_zero_from(9), None);
        assert_eq!(b.first_zero_from(100), None);
        assert_eq!(b.iter_ones().collect::<Vec<_>>(), [0, 1, 4, 9]);
        assert_eq!(b.iter_zeros().collect::<Vec<_>>(), [2, 3, 5, 6, 7, 8]);
        assert_eq!(b.zero_runs().collect::<Vec<_>>(), [(2, 2), (5, 4)]);
    }

    #[test]
    fn from_words_checks_length_and_masks_tail() {
        assert_eq!(UnitBitmap::from_words(65, &[0]), None);
        let b = UnitBitmap::from_words(3, &[!0]).unwrap();
        assert_eq!((b.count_ones(), b.words()), (3, &[0b111][..]));
        assert!(b.is_full());
        assert_eq!(UnitBitmap::from_words(0, &[]), Some(UnitBitmap::new(0)));
    }
}
