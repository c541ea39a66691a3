//! Lock-free receive-status bitmaps and the server's status matrix.
//!
//! # What each type is for
//!
//! - **Receiver.** Each block in flight has a bitmap of its units (its *unit receipt*): bit
//!   `u` is set once unit `u` is in place. Each object has a bitmap of its blocks (*block
//!   completion*): bit `b` is set once block `b` is complete and its hash verified. Cores that
//!   share these use [`AtomicBitmap`]; a sans-IO state machine, which owns its state on one
//!   thread, uses the plain [`UnitBitmap`]. Either yields the runs of missing units
//!   ([`UnitBitmap::zero_runs`], [`AtomicBitmap::zero_runs`], or [`zero_runs`] over decoded
//!   words) that a NACK names.
//! - **Server.** The [`StatusMatrix`] holds, per receiver row, its receive status (blocks held)
//!   and request status (blocks asked for with priority), and per block its transfer status:
//!   how many receivers hold it and how many request it, kept exact without locks so that
//!   data threads can ask "does everyone hold block `b`?" in O(1).
//!
//! Indices are `usize` block or unit addresses; an index from the network goes through
//! `try_set` / `try_clear` (or the matrix, which ignores out-of-range blocks): nothing here
//! panics on it. `set` / `clear` are for indices the caller has already checked.
//!
//! # Memory ordering
//!
//! 1. *Publication.* A receiving core copies a unit's payload into place and then sets the
//!    unit's bit with a Release `fetch_or`. [`AtomicBitmap::get`], [`AtomicBitmap::is_full`],
//!    the iterators and snapshots load with Acquire. So a thread that sees the bit (or a full
//!    block) also sees the payload, and may hash or forward it. This orders CPU writes only: if
//!    the payload is written by io_uring, set the bit after reaping the write's completion.
//! 2. *One winner per transition.* `fetch_or` / `fetch_and` / `swap` are atomic
//!    read-modify-writes whatever the ordering, so exactly one caller sees each 0 -> 1 (or
//!    1 -> 0) change of a bit. Only that caller moves the counters that depend on the bit
//!    (holders, requesters, a row's held count, complete receivers), so every counter is exact.
//! 3. *Counters are Relaxed* where they are statistics: a single atomic's read-modify-writes
//!    are totally ordered, so the counts are exact, and nothing is read on their strength. Two
//!    exceptions: a row's held count is incremented with Release and read with Acquire, so
//!    [`StatusMatrix::is_receiver_complete`] implies every held bit is visible; and removing a
//!    receiver decrements the active count with Release after its holders decrements, which
//!    [`StatusMatrix::all_hold`] loads with Acquire first, so it never counts a departed
//!    receiver's blocks without counting the receiver.
//! 4. *Multi-word reads are not snapshots.* Counting, scanning and copying go word by word;
//!    concurrent changes may or may not show. They never yield an index out of range.
//!
//! Each atomic operation in the source carries a one-line comment saying why its ordering.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod atomic;
mod bits;
mod matrix;
mod unit;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod test_rng;

pub use atomic::AtomicBitmap;
pub use bits::{zero_runs, BitIter, ZeroRuns};
pub use matrix::{CachePadded, RowId, StatusMatrix, ROW_CHUNK};
pub use unit::UnitBitmap;
