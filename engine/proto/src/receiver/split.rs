//! Split mode (wire.md §14) on a member's side: asking the server for the session by
//! unicast, the copy plan units are forwarded by, and how much later copies arrive than the
//! server's own packets (NACKs wait that much longer).

use std::time::{Duration, Instant};

use super::feedback::peer;
use super::lag::ClockBase;
use super::{CopyTargets, Receiver};
use crate::store::BlockStore;
use crate::wire::{CopyFlags, Packet, PlanRepr, SolicitRepr};
use crate::Transmit;

/// Split mode's state (outside split mode it stays as made: no plan, no copy lag).
#[derive(Default)]
pub(super) struct SplitState {
    /// The newest copy plan.
    plan: Option<PlanRepr>,
    /// When to ask for the session again (until the manifest is here).
    next_solicit: Option<Instant>,
    clock_base: Option<ClockBase>,
    /// The smallest (local - server) time offset of a direct packet, us.
    direct_offset: Option<i64>,
    /// How much later than a direct packet copies arrive (the copy path's extra delay),
    /// smoothed; NACKs wait this much longer.
    pub(super) copy_lag: Duration,
    /// A unit of the session has arrived (the copy lag is measured).
    units_seen: bool,
    /// Since when a NACK has waited for the first unit.
    waiting_since: Option<Instant>,
}

/// How long NACKs wait for the first unit to arrive, in round trips (at least
/// [`FIRST_COPY_WAIT_MIN`]): beyond it the path is taken to be broken and the member NACKs
/// (repairs come through the plan the server makes without a member that stopped).
const FIRST_COPY_WAIT_GRTTS: u32 = 8;
const FIRST_COPY_WAIT_MIN: Duration = Duration::from_millis(50);

impl SplitState {
    /// The time offset (local arrival - server send) of a packet, microseconds, against the
    /// first direct packet's.
    fn offset(&mut self, now: Instant, timestamp: u32) -> i64 {
        ClockBase::offset(&mut self.clock_base, now, timestamp)
    }

    /// A packet straight from the server (announce) sets the reference delay.
    pub(super) fn direct_timing(&mut self, now: Instant, timestamp: u32) {
        let o = self.offset(now, timestamp);
        self.direct_offset = Some(self.direct_offset.map_or(o, |d| d.min(o)));
    }

    /// A unit of the session has arrived.
    pub(super) fn units_seen(&self) -> bool {
        self.units_seen
    }

    /// Whether a NACK due at `now` waits for the first unit: until one has arrived, the
    /// copy path's delay is not measured (the copy lag reads 0), and an announce can say the
    /// first pass has gone by blocks whose copies are still on their way (a zone near the
    /// server hears the announce long before copies through a far zone's cells reach it).
    pub(super) fn wait_for_copies(&mut self, now: Instant, grtt: Duration) -> bool {
        if self.units_seen {
            return false;
        }
        let since = *self.waiting_since.get_or_insert(now);
        let cap = (grtt * FIRST_COPY_WAIT_GRTTS).max(FIRST_COPY_WAIT_MIN);
        now < since + cap
    }

    /// A unit (possibly a copy of a copy) measures the copy path's extra delay.
    pub(super) fn copy_timing(&mut self, now: Instant, timestamp: u32) {
        self.units_seen = true;
        let Some(direct) = self.direct_offset else {
            return;
        };
        let lag_us = (self.offset(now, timestamp) - direct).clamp(0, 10_000_000) as u64;
        let sample = Duration::from_micros(lag_us);
        // Rise at once, fall back slowly: a NACK sent too early costs a repair to everyone.
        self.copy_lag = if sample > self.copy_lag {
            sample
        } else {
            (self.copy_lag * 63 + sample) / 64
        };
    }

    /// A plan for us: the newest wins (epochs count up; a late, older one is ignored).
    pub(super) fn take_plan(&mut self, p: PlanRepr) {
        if self.plan.as_ref().is_none_or(|old| p.epoch > old.epoch) {
            self.plan = Some(p);
        }
    }

    /// Ask for the session again at once (the server's challenge came).
    pub(super) fn solicit_now(&mut self) {
        self.next_solicit = None;
    }

    /// The next instant to ask for the session, while asking (split mode, no manifest yet).
    pub(super) fn next_solicit(&self) -> Option<Instant> {
        self.next_solicit
    }
}

impl<S: BlockStore> Receiver<S> {
    /// Split mode: the copy path's extra delay as measured (NACKs wait for it).
    pub fn copy_lag(&self) -> Duration {
        self.split.copy_lag
    }

    /// Split mode: where copies of a unit with copy flags `copy` go, from the newest plan
    /// (nowhere before a plan has arrived). Units of other sessions are not to be forwarded:
    /// check [`Receiver::session`] first.
    pub fn copy_targets(&self, copy: CopyFlags) -> CopyTargets<'_> {
        match &self.split.plan {
            Some(p) => CopyTargets {
                zone: if copy.zone { &p.peers } else { &[] },
                next: if copy.next { &p.nexts } else { &[] },
            },
            None => CopyTargets {
                zone: &[],
                next: &[],
            },
        }
    }

    /// Split mode: the epoch of the newest plan taken.
    pub fn plan_epoch(&self) -> Option<u32> {
        self.split.plan.as_ref().map(|p| p.epoch)
    }

    /// Split mode: whether to ask the server for the session now (until the manifest is
    /// here: there is no multicast carousel to wait for).
    pub(super) fn solicit_due(&self, now: Instant) -> bool {
        self.cfg.split.is_some()
            && self.manifest.is_none()
            && !self.ended
            && self.split.next_solicit.is_none_or(|t| now >= t)
    }

    /// Split mode: asks the server for the announce and the manifest by unicast.
    pub(super) fn solicit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let split = self.cfg.split?;
        self.split.next_solicit = Some(now + self.cfg.join_interval);
        let len = Packet::Solicit(SolicitRepr {
            session: self.session.unwrap_or_default(),
            receiver: self.cfg.id,
            cookie: self.cookie,
            zone: split.zone,
        })
        .emit(buf)
        .ok()?;
        Some(peer(split.server, len))
    }
}
