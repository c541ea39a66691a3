//! Word scanning shared by [`UnitBitmap`](crate::UnitBitmap) and
//! [`AtomicBitmap`](crate::AtomicBitmap): iterators over set and clear bits and over runs
//! of clear bits.
//!
//! Every function here is bounded by the `len` it is given and never yields an index at or
//! past it, whatever the bits past `len` in the last word hold.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bits per storage word.
pub(crate) const WORD_BITS: usize = 64;

/// Number of words that hold `len` bits.
pub(crate) fn word_count(len: usize) -> usize {
    len.div_ceil(WORD_BITS)
}

/// The bits of the last word that lie inside a bitmap of `len` bits.
pub(crate) fn tail_mask(len: usize) -> u64 {
    match len % WORD_BITS {
        0 => !0,
        r => (1 << r) - 1,
    }
}

/// The storage that iterators read: plain words, or atomic words loaded one at a time.
#[derive(Clone, Copy)]
pub(crate) enum Words<'a> {
    Plain(&'a [u64]),
    Atomic(&'a [AtomicU64]),
}

impl Words<'_> {
    fn load(self, w: usize) -> u64 {
        match self {
            Words::Plain(words) => words[w],
            // Acquire: pairs with `AtomicBitmap::set`'s Release, so a caller that sees a unit bit
            // here also sees the payload written before it was set.
            Words::Atomic(words) => words[w].load(Ordering::Acquire),
        }
    }
}

/// First index in `from..len` whose bit is `one`. Callers guarantee `len <= 64 * words`.
pub(crate) fn find(words: Words<'_>, len: usize, from: usize, one: bool) -> Option<usize> {
    if from >= len {
        return None;
    }
    let mut mask = !0u64 << (from % WORD_BITS);
    for w in from / WORD_BITS..word_count(len) {
        let word = words.load(w);
        let bits = if one { word } else { !word } & mask;
        if bits != 0 {
            let i = w * WORD_BITS + bits.trailing_zeros() as usize;
            return (i < len).then_some(i);
        }
        mask = !0;
    }
    None
}

/// Iterator over the indices of set bits (from `iter_ones`) or clear bits (from `iter_zeros`),
/// in increasing order.
///
/// Over an [`AtomicBitmap`](crate::AtomicBitmap) each word is loaded once, when the iterator
/// reaches it: bits changed concurrently may or may not be seen, and the result need not match
/// the bitmap at any single instant. It never yields an index out of range.
#[derive(Clone)]
pub struct BitIter<'a> {
    words: Words<'a>,
    len: usize,
    ones: bool,
    /// Index of the next word to load.
    next_word: usize,
    /// Bits of the current word still to yield, already masked to `len`.
    pending: u64,
    /// Bit index of the current word's bit 0.
    base: usize,
}

impl<'a> BitIter<'a> {
    pub(crate) fn new(words: Words<'a>, len: usize, ones: bool) -> Self {
        Self {
            words,
            len,
            ones,
            next_word: 0,
            pending: 0,
            base: 0,
        }
    }
}

impl Iterator for BitIter<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        while self.pending == 0 {
            if self.next_word >= word_count(self.len) {
                return None;
            }
            let word = self.words.load(self.next_word);
            self.pending = if self.ones { word } else { !word };
            self.base = self.next_word * WORD_BITS;
            self.next_word += 1;
            if self.next_word == word_count(self.len) {
                self.pending &= tail_mask(self.len);
            }
        }
        let i = self.base + self.pending.trailing_zeros() as usize;
        self.pending &= self.pending - 1;
        Some(i)
    }
}

/// Iterator over maximal runs of clear bits as `(start, len)`, in increasing order: the
/// ranges a NACK names. Over an atomic bitmap it is racy in the same way as [`BitIter`];
/// every run it yields is non-empty and in range.
#[derive(Clone)]
pub struct ZeroRuns<'a> {
    words: Words<'a>,
    len: usize,
    pos: usize,
}

impl<'a> ZeroRuns<'a> {
    pub(crate) fn new(words: Words<'a>, len: usize) -> Self {
        Self { words, len, pos: 0 }
    }
}

impl Iterator for ZeroRuns<'_> {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        let start = find(self.words, self.len, self.pos, false)?;
        let end = find(self.words, self.len, start + 1, true).unwrap_or(self.len);
        self.pos = end;
        Some((start, end - start))
    }
}

/// Runs of clear bits among the first `len` bits of `words` (bit `i` is bit `i % 64` of
/// `words[i / 64]`), for a bitmap that is not a [`UnitBitmap`](crate::UnitBitmap), such as
/// one decoded from a NACK. If `words` holds fewer than `len` bits, only those it holds are
/// scanned; bits past `len` are ignored.
pub fn zero_runs(words: &[u64], len: usize) -> ZeroRuns<'_> {
    let len = len.min(words.len().saturating_mul(WORD_BITS));
    ZeroRuns::new(Words::Plain(words), len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_mask_and_word_count() {
        assert_eq!(word_count(0), 0);
        assert_eq!(word_count(1), 1);
        assert_eq!(word_count(64), 1);
        assert_eq!(word_count(65), 2);
        assert_eq!(tail_mask(64), !0);
        assert_eq!(tail_mask(3), 0b111);
    }

    #[test]
    fn find_respects_from_and_len() {
        let words = [0b1010u64, !0];
        let w = Words::Plain(&words);
        assert_eq!(find(w, 128, 0, true), Some(1));
        assert_eq!(find(w, 128, 2, true), Some(3));
        assert_eq!(find(w, 128, 4, true), Some(64));
        assert_eq!(find(w, 128, 0, false), Some(0));
        assert_eq!(find(w, 128, 4, false), Some(4));
        assert_eq!(find(w, 64, 64, true), None);
        // Bits past `len` are never reported, set or clear.
        assert_eq!(find(Words::Plain(&[0b1111]), 3, 0, false), None);
        assert_eq!(find(Words::Plain(&[0]), 3, 1, true), None);
    }

    #[test]
    fn bit_iter_masks_the_tail() {
        let words = [!0u64 ^ 0b100];
        let ones: Vec<_> = BitIter::new(Words::Plain(&words), 5, true).collect();
        assert_eq!(ones, [0, 1, 3, 4]);
        let zeros: Vec<_> = BitIter::new(Words::Plain(&words), 5, false).collect();
        assert_eq!(zeros, [2]);
        assert_eq!(BitIter::new(Words::Plain(&[]), 0, false).count(), 0);
    }

    #[test]
    fn zero_runs_of_words() {
        // Bits 0..3 set, 3..66 clear, 66 set, 67..70 clear.
        let words = [0b111u64, 0b100];
        let runs: Vec<_> = zero_runs(&words, 70).collect();
        assert_eq!(runs, [(3, 63), (67, 3)]);
        assert_eq!(zero_runs(&words, 3).count(), 0);
        // A `len` past the words is clamped to them.
        assert_eq!(zero_runs(&[0], 1000).collect::<Vec<_>>(), [(0, 64)]);
        assert_eq!(zero_runs(&[], 10).count(), 0);
    }
}
