//! Property tests: both bitmaps and the status matrix against plain models, under random
//! operation sequences (including out-of-range indices).

use proptest::prelude::*;

use crate::{AtomicBitmap, RowId, StatusMatrix, UnitBitmap};

#[derive(Clone, Debug)]
enum BitOp {
    Set(usize),
    Clear(usize),
    FirstZero(usize),
    ClearAll,
}

fn bit_ops(len: usize) -> impl Strategy<Value = Vec<BitOp>> {
    // Indices reach past `len` so out-of-range handling is exercised too.
    let i = 0..len + 70;
    let op = prop_oneof![
        6 => i.clone().prop_map(BitOp::Set),
        3 => i.clone().prop_map(BitOp::Clear),
        2 => i.prop_map(BitOp::FirstZero),
        1 => Just(BitOp::ClearAll),
    ];
    proptest::collection::vec(op, 0..300)
}

fn model_runs(model: &[bool]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < model.len() {
        if model[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i < model.len() && !model[i] {
            i += 1;
        }
        runs.push((start, i - start));
    }
    runs
}

fn model_words(model: &[bool]) -> Vec<u64> {
    let mut words = vec![0u64; model.len().div_ceil(64)];
    for (i, _) in model.iter().enumerate().filter(|(_, &b)| b) {
        words[i / 64] |= 1 << (i % 64);
    }
    words
}

proptest! {
    #[test]
    fn bitmaps_match_model((len, ops) in (0usize..300).prop_flat_map(|len| (Just(len), bit_ops(len)))) {
        let mut model = vec![false; len];
        let mut unit = UnitBitmap::new(len);
        let atomic = AtomicBitmap::new(len);
        for op in ops {
            match op {
                BitOp::Set(i) => {
                    let expected = model.get_mut(i).map(|b| !std::mem::replace(b, true));
                    prop_assert_eq!(unit.try_set(i), expected);
                    prop_assert_eq!(atomic.try_set(i), expected);
                }
                BitOp::Clear(i) if i < len => {
                    let expected = std::mem::replace(&mut model[i], false);
                    prop_assert_eq!(unit.clear(i), expected);
                    prop_assert_eq!(atomic.clear(i), expected);
                }
                BitOp::Clear(i) => {
                    prop_assert_eq!(unit.try_clear(i), None);
                    prop_assert_eq!(atomic.try_clear(i), None);
                }
                BitOp::FirstZero(start) => {
                    let expected = (start..len).find(|&i| !model[i]);
                    prop_assert_eq!(unit.first_zero_from(start), expected);
                    prop_assert_eq!(atomic.first_zero_from(start), expected);
                }
                BitOp::ClearAll => {
                    model.fill(false);
                    unit.clear_all();
                    atomic.clear_all();
                }
            }
            let ones = model.iter().filter(|&&b| b).count();
            prop_assert_eq!(unit.count_ones(), ones);
            prop_assert_eq!(atomic.count_ones(), ones);
            prop_assert_eq!(unit.is_full(), ones == len);
            prop_assert_eq!(atomic.is_full(), ones == len);
        }
        for i in 0..len + 70 {
            let expected = model.get(i).copied().unwrap_or(false);
            prop_assert_eq!(unit.get(i), expected);
            prop_assert_eq!(atomic.get(i), expected);
        }
        let ones: Vec<usize> = (0..len).filter(|&i| model[i]).collect();
        let zeros: Vec<usize> = (0..len).filter(|&i| !model[i]).collect();
        prop_assert_eq!(unit.iter_ones().collect::<Vec<_>>(), ones.clone());
        prop_assert_eq!(atomic.iter_ones().collect::<Vec<_>>(), ones);
        prop_assert_eq!(unit.iter_zeros().collect::<Vec<_>>(), zeros.clone());
        prop_assert_eq!(atomic.iter_zeros().collect::<Vec<_>>(), zeros);
        let runs = model_runs(&model);
        prop_assert_eq!(unit.zero_runs().collect::<Vec<_>>(), runs.clone());
        prop_assert_eq!(atomic.zero_runs().collect::<Vec<_>>(), runs.clone());
        prop_assert_eq!(crate::zero_runs(unit.words(), len).collect::<Vec<_>>(), runs);
        let words = model_words(&model);
        prop_assert_eq!(unit.words(), &words[..]);
        prop_assert_eq!(atomic.snapshot_words(), words.clone());
        prop_assert_eq!(UnitBitmap::from_words(len, &words), Some(unit));
    }

    /// `zero_runs` over arbitrary words (e.g. a NACK bitmap) covers exactly the clear bits.
    #[test]
    fn zero_runs_cover_clear_bits(words in proptest::collection::vec(any::<u64>(), 0..5), len in 0usize..400) {
        let scanned = len.min(words.len() * 64);
        let mut covered = vec![false; scanned];
        let mut end = 0;
        for (start, n) in crate::zero_runs(&words, len) {
            prop_assert!(n > 0 && start >= end && start + n <= scanned);
            let set = |i: usize| words[i / 64] & (1 << (i % 64)) != 0;
            prop_assert!(start == 0 || set(start - 1), "runs are maximal");
            prop_assert!(start + n == scanned || set(start + n), "runs are maximal");
            covered[start..start + n].fill(true);
            end = start + n;
        }
        for (i, c) in covered.iter().enumerate() {
            prop_assert_eq!(*c, words[i / 64] & (1 << (i % 64)) == 0, "bit {}", i);
        }
    }
}

#[derive(Clone, Debug)]
enum MatrixOp {
    Add,
    Remove(usize),
    MarkHeld(usize, usize),
    Request(usize, usize),
    ClearRequest(usize, usize),
}

fn matrix_ops(blocks: usize) -> impl Strategy<Value = Vec<MatrixOp>> {
    // Slots index the ids handed out so far (including removed ones); blocks reach past the end.
    let slot = 0..16usize;
    let block = 0..blocks + 2;
    let op = prop_oneof![
        2 => Just(MatrixOp::Add),
        1 => slot.clone().prop_map(MatrixOp::Remove),
        6 => (slot.clone(), block.clone()).prop_map(|(s, b)| MatrixOp::MarkHeld(s, b)),
        3 => (slot.clone(), block.clone()).prop_map(|(s, b)| MatrixOp::Request(s, b)),
        2 => (slot, block).prop_map(|(s, b)| MatrixOp::ClearRequest(s, b)),
    ];
    proptest::collection::vec(op, 0..200)
}

/// A receiver in the model: whether its id is live, and its held and requested blocks.
struct ModelRow {
    id: RowId,
    live: bool,
    held: Vec<bool>,
    requested: Vec<bool>,
}

proptest! {
    #[test]
    fn matrix_matches_model(
        (max, blocks, ops) in (0usize..5, 0usize..6)
            .prop_flat_map(|(max, blocks)| (Just(max), Just(blocks), matrix_ops(blocks)))
    ) {
        let m = StatusMatrix::new(max, blocks);
        let mut rows: Vec<ModelRow> = Vec::new();
        for op in ops {
            match op {
                MatrixOp::Add => {
                    let live = rows.iter().filter(|r| r.live).count();
                    match m.add_receiver() {
                        Some(id) => {
                            prop_assert!(live < max);
                            prop_assert!(rows.iter().all(|r| r.id != id), "ids are never reused");
                            rows.push(ModelRow {
                                id,
                                live: true,
                                held: vec![false; blocks],
                                requested: vec![false; blocks],
                            });
                        }
                        None => prop_assert_eq!(live, max),
                    }
                }
                MatrixOp::Remove(s) => {
                    if let Some(r) = rows.get_mut(s) {
                        prop_assert_eq!(m.remove_receiver(r.id), std::mem::replace(&mut r.live, false));
                    }
                }
                MatrixOp::MarkHeld(s, b) => {
                    if let Some(r) = rows.get_mut(s) {
                        let expected = r.live && b < blocks && !r.held[b];
                        prop_assert_eq!(m.mark_held(r.id, b), expected);
                        if expected {
                            r.held[b] = true;
                            r.requested[b] = false;
                        }
                    }
                }
                MatrixOp::Request(s, b) => {
                    if let Some(r) = rows.get_mut(s) {
                        let expected = r.live && b < blocks && !r.held[b] && !r.requested[b];
                        prop_assert_eq!(m.request(r.id, b), expected);
                        if expected {
                            r.requested[b] = true;
                        }
                    }
                }
                MatrixOp::ClearRequest(s, b) => {
                    if let Some(r) = rows.get_mut(s) {
                        let expected = r.live && b < blocks && r.requested[b];
                        prop_assert_eq!(m.clear_request(r.id, b), expected);
                        if expected {
                            r.requested[b] = false;
                        }
                    }
                }
            }
            let live: Vec<&ModelRow> = rows.iter().filter(|r| r.live).collect();
            prop_assert_eq!(m.active_receivers(), live.len());
            let complete = live.iter().filter(|r| r.held.iter().all(|&h| h)).count();
            prop_assert_eq!(m.complete_receivers(), complete);
            for b in 0..blocks + 2 {
                let holders = live.iter().filter(|r| r.held.get(b) == Some(&true)).count();
                let requesters = live.iter().filter(|r| r.requested.get(b) == Some(&true)).count();
                prop_assert_eq!(m.holders(b) as usize, holders);
                prop_assert_eq!(m.requesters(b) as usize, requesters);
                prop_assert_eq!(m.requested_by_any(b), requesters > 0);
                prop_assert_eq!(m.all_hold(b), b < blocks && holders == live.len());
            }
            for r in &rows {
                prop_assert_eq!(m.is_active(r.id), r.live);
                let held = r.held.iter().filter(|&&h| h).count();
                prop_assert_eq!(m.held_blocks(r.id), if r.live { held } else { 0 });
                prop_assert_eq!(m.is_receiver_complete(r.id), r.live && held == blocks);
                for b in 0..blocks + 2 {
                    prop_assert_eq!(m.holds(r.id, b), r.live && r.held.get(b) == Some(&true));
                    prop_assert_eq!(m.is_requested(r.id, b), r.live && r.requested.get(b) == Some(&true));
                }
            }
        }
    }
}
