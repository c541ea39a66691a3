//! Split mode (wire.md §14) on the sender's side: no multicast. Every group packet becomes a
//! unicast copy per member (the fan-out), every unit goes to the one member the plan makes
//! its owner (routing), receivers ask for the session by unicast (solicitors), and the copy
//! plans are made and repeated here.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Phase, Sender, SenderEvent};
use crate::split::{self as planner, MemberInfo, SplitConfig};
use crate::store::BlockSource;
use crate::wire::{
    set_copy_flags, CopyFlags, DoneReason, ManifestChunkRepr, Packet, PlanRepr, ReceiverId,
    SolicitRepr,
};
use crate::{Destination, Transmit};

/// A unicast packet split mode sends in place of one group packet.
#[derive(Clone, Copy, Debug)]
pub(super) enum Fan {
    Announce,
    Chunk(usize),
    Plan(ReceiverId),
    Done(DoneReason),
}

/// One fanned-out packet and the receiver it goes to.
struct FanOut {
    to: SocketAddr,
    fan: Fan,
}

/// A receiver that asked for the session by unicast and has not joined yet.
pub(super) struct Solicitor {
    addr: SocketAddr,
    pub(super) zone: u16,
    pub(super) last_heard: Instant,
    answered: Option<Instant>,
}

/// Split mode's state.
pub(super) struct SplitState {
    cfg: SplitConfig,
    epoch: u32,
    plan: planner::Plan,
    /// Each member's current plan, as sent.
    plans: HashMap<ReceiverId, PlanRepr>,
    /// Membership changed since the plan was made.
    pub(super) dirty: bool,
    last_replan: Option<Instant>,
    next_replan: Option<Instant>,
    next_plan_round: Option<Instant>,
    /// Quick repeats of a new plan still to come after the next round, and the gap between
    /// them (a round trip to the farthest member).
    quick_repeats: u8,
    repeat_gap: Duration,
    pub(super) solicitors: BTreeMap<ReceiverId, Solicitor>,
    fanout: VecDeque<FanOut>,
    /// A new plan holds the units back until it has reached every member (wire.md §14):
    /// no unit leaves before this.
    units_from: Option<Instant>,
}

impl SplitState {
    pub(super) fn new(cfg: SplitConfig) -> Self {
        SplitState {
            cfg,
            epoch: 0,
            plan: planner::Plan::default(),
            plans: HashMap::new(),
            dirty: false,
            last_replan: None,
            next_replan: None,
            next_plan_round: None,
            quick_repeats: 0,
            repeat_gap: Duration::ZERO,
            solicitors: BTreeMap::new(),
            fanout: VecDeque::new(),
            units_from: None,
        }
    }
}

impl<S: BlockSource> Sender<S> {
    /// Split mode: the current plan's epoch and its cells (member ids in chain order).
    pub fn split_plan(&self) -> Option<(u32, Vec<Vec<ReceiverId>>)> {
        self.split
            .as_ref()
            .map(|sp| (sp.epoch, sp.plan.cells.clone()))
    }

    /// Split mode: a receiver asks for the session by unicast. Answer with the announce and
    /// the whole manifest (at most once per announce interval per receiver), and remember its
    /// zone for its join.
    pub(super) fn on_solicit(&mut self, now: Instant, from: SocketAddr, sol: &SolicitRepr) {
        if self.split.is_some()
            && (sol.session.0 == 0 || sol.session == self.cfg.session)
            && sol.cookie != self.cookie_for(sol.receiver, from)
        {
            // Unproven address: a challenge no larger than a small multiple of the Solicit;
            // the announce and the manifest only once it echoes the cookie (wire.md §13.2).
            self.challenge(now, from, sol.receiver);
            return;
        }
        let interval = self.cfg.announce_interval;
        let max = self.cfg.max_receivers;
        let chunks = self.manifest_chunks();
        let closing = matches!(self.phase, Phase::Closing { .. } | Phase::Finished);
        let Some(sp) = self.split.as_mut() else {
            self.stats.strangers += 1;
            return;
        };
        if (sol.session.0 != 0 && sol.session != self.cfg.session) || closing {
            self.stats.strangers += 1;
            return;
        }
        if !sp.solicitors.contains_key(&sol.receiver) && sp.solicitors.len() >= max {
            return;
        }
        let s = sp.solicitors.entry(sol.receiver).or_insert(Solicitor {
            addr: from,
            zone: sol.zone,
            last_heard: now,
            answered: None,
        });
        s.addr = from;
        s.zone = sol.zone;
        s.last_heard = now;
        if s.answered
            .is_some_and(|t| now.saturating_duration_since(t) < interval)
        {
            return;
        }
        s.answered = Some(now);
        sp.fanout.push_back(FanOut {
            to: from,
            fan: Fan::Announce,
        });
        for i in 0..chunks {
            sp.fanout.push_back(FanOut {
                to: from,
                fan: Fan::Chunk(i),
            });
        }
    }

    /// Split mode: the plan must be rebuilt (a member joined, left or timed out).
    pub(super) fn membership_changed(&mut self) {
        if let Some(sp) = self.split.as_mut() {
            sp.dirty = true;
        }
    }

    /// Split mode: when the plan is next due to be made or repeated.
    pub(super) fn split_timeout(&self) -> Option<Instant> {
        let sp = self
            .split
            .as_ref()
            .filter(|_| self.phase == Phase::Sending)?;
        let changed = sp
            .dirty
            .then(|| sp.last_replan.map(|t| t + sp.cfg.replan_gap).or(self.epoch))
            .flatten();
        [sp.next_replan, sp.next_plan_round, changed]
            .into_iter()
            .flatten()
            .min()
    }

    /// Split mode: rebuilds the plan when membership changed (at most once per
    /// `replan_gap`) or when `replan_interval` has passed, and queues the plans that changed;
    /// repeats every plan each `plan_interval`.
    pub(super) fn maybe_replan(&mut self, now: Instant) {
        if self.phase != Phase::Sending {
            // Nothing is sent before the first pass, so nothing needs a plan yet.
            return;
        }
        let grtt = self.grtt();
        let Some(sp) = self.split.as_ref() else {
            return;
        };
        let due_change = sp.dirty
            && (sp.plan.owners.is_empty()
                || sp
                    .last_replan
                    .is_none_or(|t| now.saturating_duration_since(t) >= sp.cfg.replan_gap));
        let due_refresh = sp.next_replan.is_none_or(|t| now >= t);
        if due_change || due_refresh {
            let infos: Vec<MemberInfo> = self
                .membership
                .members
                .iter()
                .map(|(id, m)| MemberInfo {
                    id: *id,
                    addr: m.addr,
                    zone: m.zone,
                    rtt: m.rtt,
                    rtt_floor: m.rtt_floor(),
                    loss_ppm: m.loss_ppm,
                })
                .collect();
            // One way to the farthest member: what a plan sent now takes to reach everyone.
            let reach = infos
                .iter()
                .map(|m| m.rtt.unwrap_or(grtt))
                .max()
                .unwrap_or(grtt)
                / 2;
            let session = self.cfg.session;
            let Some(sp) = self.split.as_mut() else {
                return;
            };
            let plan = planner::plan(&infos, &sp.cfg, grtt, &sp.plan);
            sp.dirty = false;
            sp.last_replan = Some(now);
            sp.next_replan = Some(now + sp.cfg.replan_interval);
            if plan != sp.plan {
                sp.epoch = sp.epoch.wrapping_add(1);
                sp.plans.clear();
                for m in &plan.members {
                    sp.plans.insert(
                        m.id,
                        PlanRepr {
                            session,
                            receiver: m.id,
                            epoch: sp.epoch,
                            zone: m.zone,
                            nexts: m.nexts.clone(),
                            peers: m.peers.clone(),
                        },
                    );
                    sp.fanout.push_back(FanOut {
                        to: m.addr,
                        fan: Fan::Plan(m.id),
                    });
                }
                sp.plan = plan;
                // A member that misses its new Plan forwards by its old one (or, missing its
                // first, not at all): every unit it owns or relays then misses whole cells
                // until the next round. So a new plan goes again when the hold ends (ahead of
                // the first units) and once more a round trip later, then every
                // `plan_interval`.
                sp.next_plan_round = Some(now + reach);
                sp.quick_repeats = 1;
                sp.repeat_gap = reach * 2;
                // The plans leave now, ahead of any unit (the fan-out goes first). A copy can
                // travel faster than the server's own packet to a member (a near zone's cells
                // relay to a far one), and a member forwards by the plan it holds: a unit
                // sent at once would reach members whose new role (a cell to spread it in, a
                // child cell to pass it to) is still on its way, and whole cells would miss
                // it. So units wait until the plans are there.
                sp.units_from = Some(now + reach);
            }
        }
        let Some(sp) = self.split.as_mut() else {
            return;
        };
        if sp.next_plan_round.is_some_and(|t| now >= t) {
            for m in &sp.plan.members {
                sp.fanout.push_back(FanOut {
                    to: m.addr,
                    fan: Fan::Plan(m.id),
                });
            }
            let gap = if sp.quick_repeats > 0 {
                sp.quick_repeats -= 1;
                sp.repeat_gap
            } else {
                sp.cfg.plan_interval
            };
            sp.next_plan_round = Some(now + gap);
        }
    }

    /// Split mode: no unit leaves before this (a new plan is on its way to the members).
    pub(super) fn split_hold(&self) -> Option<Instant> {
        self.split.as_ref().and_then(|sp| sp.units_from)
    }

    /// Split mode: whether units are held back at `now` (a hold that has ended is cleared, so
    /// it is no longer a timer).
    pub(super) fn split_holding(&mut self, now: Instant) -> bool {
        let Some(sp) = self.split.as_mut() else {
            return false;
        };
        match sp.units_from {
            Some(t) if now < t => true,
            _ => {
                sp.units_from = None;
                false
            }
        }
    }

    /// Split mode: the next unicast packet standing in for a group packet.
    pub(super) fn poll_fanout(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        loop {
            let FanOut { to, fan } = self.split.as_mut()?.fanout.pop_front()?;
            let session = self.cfg.session;
            let len = match fan {
                Fan::Announce => {
                    self.stats.announces += 1;
                    Packet::Announce(self.signed_announce(now)).emit(buf)
                }
                Fan::Chunk(i) => {
                    let chunk = self.manifest_chunk_len();
                    let start = i * chunk;
                    let end = (start + chunk).min(self.carousel.bytes.len());
                    if start >= end {
                        continue;
                    }
                    self.stats.manifest_chunks += 1;
                    Packet::Manifest(ManifestChunkRepr {
                        session,
                        offset: start as u32,
                        bytes: &self.carousel.bytes[start..end],
                    })
                    .emit(buf)
                }
                Fan::Plan(id) => {
                    let Some(p) = self.split.as_ref().and_then(|sp| sp.plans.get(&id)) else {
                        continue;
                    };
                    self.stats.control_sent += 1;
                    Packet::Plan(p.clone()).emit(buf)
                }
                Fan::Done(reason) => Packet::Done(self.session_done(reason)).emit(buf),
            };
            let Ok(len) = len else {
                continue;
            };
            return Some(Transmit {
                destination: Destination::Peer(to),
                len,
                payload: None,
            });
        }
    }

    /// Split mode: queues one unicast copy of a group packet for every member (and, for an
    /// announce, every receiver still asking for the session).
    pub(super) fn fan_out(&mut self, fan: Fan) {
        let Some(sp) = self.split.as_mut() else {
            return;
        };
        for m in self.membership.members.values() {
            sp.fanout.push_back(FanOut { to: m.addr, fan });
        }
        if matches!(fan, Fan::Announce) {
            for s in sp.solicitors.values() {
                sp.fanout.push_back(FanOut { to: s.addr, fan });
            }
        }
    }

    /// Split mode: the announce that is due, to each member and each receiver still asking
    /// (the manifest went to those when they asked). `None` when nobody is there.
    pub(super) fn fan_out_announce(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        self.carousel.announce_now = false;
        self.carousel.next_announce = Some(now + self.cfg.announce_interval);
        self.fan_out(Fan::Announce);
        self.advance_phase(now);
        self.poll_fanout(now, buf)
    }

    /// Split mode with no member: nobody to send to, so the first pass and the repairs are
    /// over.
    pub(super) fn end_work_without_members(&mut self) {
        if !self
            .split
            .as_ref()
            .is_some_and(|sp| sp.plan.owners.is_empty())
        {
            return;
        }
        if self.first_pass.next.take().is_some() {
            self.events.push_back(SenderEvent::FirstPassDone);
            self.carousel.announce_now = true;
        }
        self.repairs.clear();
    }

    /// Split mode: the member a unit goes to, with both copy flags set in its header.
    pub(super) fn route(
        &self,
        mut t: Transmit,
        buf: &mut [u8],
        seq: u64,
        parity: bool,
        index: u16,
    ) -> Option<Transmit> {
        let Some(sp) = self.split.as_ref() else {
            return Some(t);
        };
        let owners = &sp.plan.owners;
        if owners.is_empty() {
            return None;
        }
        let slot = planner::owner_slot(seq, parity, index, sp.cfg.run_units, owners.len());
        set_copy_flags(&mut buf[..t.len], CopyFlags::ALL).ok()?;
        t.destination = Destination::Peer(owners[slot]);
        Some(t)
    }
}
