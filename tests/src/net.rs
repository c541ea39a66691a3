//! The simulated network: a seeded generator, loss models and per-copy faults.

use std::sync::Arc;
use std::time::Duration;

/// A fast seeded generator (xoshiro256**-style state from splitmix64).
#[derive(Clone, Debug)]
pub struct SimRng {
    s: [u64; 4],
}

impl SimRng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        SimRng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n.max(1))) >> 64) as u64
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// How copies are lost.
#[derive(Clone, Debug, PartialEq)]
pub enum LossModel {
    /// Each copy is lost with this probability, independently.
    Independent(f64),
    /// Gilbert-Elliott: a receiver's link moves between a good state (no loss) and a bad
    /// state (loses `bad_loss` of copies); `enter` and `leave` are the per-copy chances of
    /// moving into and out of the bad state. Mean loss = bad_loss * enter / (enter + leave).
    Bursty {
        enter: f64,
        leave: f64,
        bad_loss: f64,
    },
}

impl LossModel {
    pub fn is_lossless(&self) -> bool {
        matches!(self, LossModel::Independent(p) if *p <= 0.0)
    }

    /// The long-run loss rate.
    pub fn mean(&self) -> f64 {
        match *self {
            LossModel::Independent(p) => p,
            LossModel::Bursty {
                enter,
                leave,
                bad_loss,
            } => bad_loss * enter / (enter + leave),
        }
    }
}

/// Faults applied to each copy of a datagram on a link.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkFaults {
    pub loss: LossModel,
    pub duplicate: f64,
    /// Chance a copy is held back by up to `reorder_delay` (so later copies overtake it).
    pub reorder: f64,
    pub reorder_delay: Duration,
    /// Chance one bit of a copy is flipped.
    pub corrupt: f64,
}

impl LinkFaults {
    pub fn lossy(p: f64) -> Self {
        LinkFaults {
            loss: LossModel::Independent(p),
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(2),
            corrupt: 0.0,
        }
    }
}

/// Per-receiver state of a bursty link.
#[derive(Clone, Copy, Debug, Default)]
pub struct BurstState {
    bad: bool,
}

/// Whether this copy is lost.
pub fn lost(model: &LossModel, state: &mut BurstState, rng: &mut SimRng) -> bool {
    match *model {
        LossModel::Independent(p) => p > 0.0 && rng.chance(p),
        LossModel::Bursty {
            enter,
            leave,
            bad_loss,
        } => {
            if state.bad {
                if rng.chance(leave) {
                    state.bad = false;
                }
            } else if rng.chance(enter) {
                state.bad = true;
            }
            state.bad && rng.chance(bad_loss)
        }
    }
}

/// How one copy of a datagram arrives.
pub(crate) enum Arrival {
    /// Now.
    Now(Arc<[u8]>),
    /// Held back this much longer (reordered).
    Later(Duration, Arc<[u8]>),
}

/// One datagram through a link's faults: lost, or passed to `arrive` once or twice
/// (duplicated), each copy perhaps with one bit flipped and perhaps held back. Draws from
/// `rng` in a fixed order, so a run is replayed by its seed.
pub(crate) fn through_faults(
    f: &LinkFaults,
    burst: &mut BurstState,
    rng: &mut SimRng,
    bytes: &Arc<[u8]>,
    mut arrive: impl FnMut(Arrival),
) {
    if lost(&f.loss, burst, rng) {
        return;
    }
    let copies = if f.duplicate > 0.0 && rng.chance(f.duplicate) {
        2
    } else {
        1
    };
    for _ in 0..copies {
        let mut b = bytes.clone();
        if f.corrupt > 0.0 && rng.chance(f.corrupt) {
            let mut v = b.to_vec();
            let at = rng.below(v.len() as u64) as usize;
            v[at] ^= 1 << rng.below(8);
            b = v.into();
        }
        if f.reorder > 0.0 && rng.chance(f.reorder) {
            arrive(Arrival::Later(f.reorder_delay.mul_f64(rng.unit()), b));
            continue;
        }
        arrive(Arrival::Now(b));
    }
}
