//! Split mode's copy plan (docs/wire.md §14, docs/DESIGN.md "Split and copy"): which member
//! owns which units, and where each member forwards copies.
//!
//! Members are grouped by the zone they name. Zones are ordered by measured overhead (the mean
//! send->receipt time of their members, the lowest first: that zone is served directly), and a
//! zone larger than [`SplitConfig::max_cell`] members is cut into several copy cells. The cells
//! form a tree of fan-out [`SplitConfig::fanout`], in that order (cell c > 0 is a child of cell
//! (c - 1) / fanout): the server sends each unit by unicast to exactly one member of the root
//! cell (its owner, chosen per run of consecutive units, weighted by measured capacity); a member
//! that gets a unit with both copy flags forwards it to every other member of its cell (no flags)
//! and to its designated member of each child cell (both flags), which spread it there in turn.
//! A unit crosses depth + 2 links (log of the cell count), not one per cell as in a chain, so
//! loss and repairs travel a short path. Each member's designated members are chosen greedily:
//! the one of the child cell with the least load per capacity so far, the lower overhead first
//! on a tie, so no member of a child cell relays much more than its share.
//!
//! Everything here is a pure function of the members' measurements: the sender calls it when
//! membership changes and from time to time as measurements move.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::receiver::CopyTargets;
use crate::wire::{CopyFlags, ReceiverId, MAX_PLAN_NEXTS, MAX_PLAN_PEERS};

/// Where a member forwards a unit that arrived with copy flags, and with which flags each
/// copy goes ([`Receiver::copy_targets`](crate::Receiver::copy_targets) names the peers): a
/// copy to each other member of its cell carries no flags (they keep it), the copy to its
/// member of the next cell carries both (that member spreads it there in turn).
pub fn copies(targets: CopyTargets<'_>) -> impl Iterator<Item = (SocketAddr, CopyFlags)> + '_ {
    targets
        .zone
        .iter()
        .map(|&a| (a, CopyFlags::NONE))
        .chain(targets.next.iter().map(|&a| (a, CopyFlags::ALL)))
}

/// How split mode behaves. `Default` gives the values the CLI starts from.
#[derive(Clone, Debug)]
pub struct SplitConfig {
    /// Consecutive units given to one owner (they leave as one GSO send).
    pub run_units: u16,
    /// Most members of one copy cell (a larger zone is cut into cells); at most
    /// `MAX_PLAN_PEERS + 1`.
    pub max_cell: usize,
    /// Every plan is sent again this often (plans travel by UDP and can be lost).
    pub plan_interval: Duration,
    /// The plan is recomputed from fresh measurements this often (and sent if it changed).
    pub replan_interval: Duration,
    /// After a membership change, the plan is rebuilt at most this often.
    pub replan_gap: Duration,
    /// Child cells per cell of the copy tree (1: a chain); at most `MAX_PLAN_NEXTS`.
    pub fanout: usize,
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig {
            run_units: 32,
            max_cell: MAX_PLAN_PEERS + 1,
            plan_interval: Duration::from_millis(500),
            replan_interval: Duration::from_secs(2),
            replan_gap: Duration::from_millis(100),
            fanout: MAX_PLAN_NEXTS,
        }
    }
}

/// What the planner knows of one member.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MemberInfo {
    pub id: ReceiverId,
    pub addr: SocketAddr,
    pub zone: u16,
    /// Measured send->receipt time (direct from the server), if any yet.
    pub rtt: Option<Duration>,
    /// The least of its last few send->receipt times, once there are two: what the capacity
    /// weights use ([`RECENT_RTTS`]).
    pub rtt_floor: Option<Duration>,
    pub loss_ppm: u32,
}

/// Send->receipt samples a member's [`MemberInfo::rtt_floor`] is the least of. A member's
/// first notices come while it starts (its output file made and reserved, its first copy
/// awaited): taken as its capacity, a first sample of 20-40 ms against the others' 1-3 ms gave
/// it a quarter of their share of the units for the whole run (the namespace bench: one member
/// forwarding 1.6 times the file, three 0.4). The least of the recent samples is what the
/// member can do when it is not held up (as BBR's min RTT); a member that slows for good has
/// every recent sample high, and is planned around as the window moves.
pub(crate) const RECENT_RTTS: usize = 8;

/// One member's part of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MemberPlan {
    pub id: ReceiverId,
    pub addr: SocketAddr,
    pub zone: u16,
    /// Its designated member in each child cell of the copy tree.
    pub nexts: Vec<SocketAddr>,
    pub peers: Vec<SocketAddr>,
}

/// A whole plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Owner slots: a unit's run is hashed to a slot; each member of the first cell holds
    /// slots in proportion to its capacity.
    pub owners: Vec<SocketAddr>,
    /// Every member's plan, in cell order.
    pub members: Vec<MemberPlan>,
    /// The cells in tree order (member ids): cell c > 0 is a child of cell (c - 1) / fanout.
    pub cells: Vec<Vec<ReceiverId>>,
}

/// Owner slots in a plan.
const OWNER_SLOTS: usize = 256;

/// Overhead differences below about this much are noise (a busy receive loop, a scheduler
/// tick, a host whose cores are shared), not capacity: it is added to both sides of the
/// ratio. The weights compare members of one cell, which are in one zone (near each other),
/// so what tells them apart is mostly load, and a member briefly starved of CPU must not lose
/// most of its share of the units: on the namespace bench (four members on two busy cores)
/// a 2 ms floor left one member uploading 1.37x the mean.
const OVERHEAD_FLOOR: Duration = Duration::from_millis(10);

/// A member's capacity weight, in eighths (1..=8): its overhead against the best in its cell
/// (lower overhead: faster to feed; both plus [`OVERHEAD_FLOOR`]) times the share of units it
/// receives (its loss), both floored at a quarter so a slow member still takes part.
/// Quantized so that small changes in measurements do not change the plan.
fn weight(m: &MemberInfo, best: Duration, default_rtt: Duration) -> u32 {
    let rtt = m.rtt_floor.unwrap_or(default_rtt) + OVERHEAD_FLOOR;
    let speed = ((best + OVERHEAD_FLOOR).as_secs_f64() / rtt.as_secs_f64()).clamp(0.25, 1.0);
    let delivery = (1.0 - f64::from(m.loss_ppm) / 1e6).clamp(0.25, 1.0);
    ((speed * delivery * 8.0).round() as u32).clamp(1, 8)
}

/// Builds the plan for `members`; `default_rtt` stands in for members not measured yet.
/// Members keep the cell they had in `prev` (the plan in force) while their zone keeps its
/// number of cells ([`deal`]).
pub(crate) fn plan(
    members: &[MemberInfo],
    cfg: &SplitConfig,
    default_rtt: Duration,
    prev: &Plan,
) -> Plan {
    if members.is_empty() {
        return Plan::default();
    }
    let max_cell = cfg.max_cell.clamp(1, MAX_PLAN_PEERS + 1);
    let rtt_of = |m: &MemberInfo| m.rtt.unwrap_or(default_rtt);
    // Zones, each with its members from the lowest overhead up.
    let mut zones: BTreeMap<u16, Vec<MemberInfo>> = BTreeMap::new();
    for m in members {
        zones.entry(m.zone).or_default().push(*m);
    }
    let mut zones: Vec<(Duration, u16, Vec<MemberInfo>)> = zones
        .into_iter()
        .map(|(z, mut ms)| {
            ms.sort_by_key(|m| (rtt_of(m), m.id));
            let mean = ms.iter().map(rtt_of).sum::<Duration>() / ms.len() as u32;
            (mean, z, ms)
        })
        .collect();
    // The zone with the lowest overhead is served directly; the others follow in order.
    zones.sort_by_key(|(mean, z, _)| (*mean, *z));
    // Cells: a zone of n members becomes ceil(n / max_cell) cells of the same size give or
    // take one, each kept from the plan in force where it can be.
    let mut cells: Vec<Vec<MemberInfo>> = Vec::new();
    for (_, z, ms) in zones {
        cells.extend(deal(ms, max_cell, prev_cells(prev, z)));
    }
    // Owner slots for the first cell, by capacity (largest remainder).
    let first = &cells[0];
    // A member not measured yet counts as the best measured one of its cell: weighted down
    // on no evidence, the first plans (made before every first notice is in) gave the
    // measured members most of the units, and on the namespace bench one member forwarded
    // 1.5 times the file while another forwarded 0.4 (docs/DESIGN.md, 2026-12-02).
    let best = first
        .iter()
        .filter_map(|m| m.rtt_floor)
        .min()
        .unwrap_or(default_rtt);
    let weights: Vec<u32> = first.iter().map(|m| weight(m, best, best)).collect();
    let total: u32 = weights.iter().sum();
    let mut owners = Vec::with_capacity(OWNER_SLOTS);
    let mut counts: Vec<usize> = weights
        .iter()
        .map(|&w| OWNER_SLOTS * w as usize / total as usize)
        .collect();
    let mut short = OWNER_SLOTS - counts.iter().sum::<usize>();
    let mut by_remainder: Vec<usize> = (0..first.len()).collect();
    by_remainder
        .sort_by_key(|&i| std::cmp::Reverse((OWNER_SLOTS * weights[i] as usize) % total as usize));
    for &i in by_remainder.iter().cycle() {
        if short == 0 {
            break;
        }
        counts[i] += 1;
        short -= 1;
    }
    // Interleave the slots (slot s goes to the member whose quota is least used), so a run
    // of hashes near each other still spreads.
    let mut used = vec![0usize; first.len()];
    for _ in 0..OWNER_SLOTS {
        let i = (0..first.len())
            .filter(|&i| used[i] < counts[i])
            .min_by(|&a, &b| {
                let fa = used[a] as f64 / counts[a] as f64;
                let fb = used[b] as f64 / counts[b] as f64;
                fa.total_cmp(&fb).then(a.cmp(&b))
            });
        let Some(i) = i else { break };
        used[i] += 1;
        owners.push(first[i].addr);
    }
    // Load each first-cell member relays: its share of the units.
    let load: Vec<f64> = counts
        .iter()
        .map(|&c| c as f64 / OWNER_SLOTS as f64)
        .collect();
    // The copy tree: cell c > 0 hangs under cell (c - 1) / fanout, so the cells nearest the
    // server (the lowest overhead) are nearest the root and the depth grows with the log of
    // the cell count. Every member of a cell names one member of each child cell.
    let fanout = cfg.fanout.clamp(1, MAX_PLAN_NEXTS);
    let mut loads: Vec<Vec<f64>> = cells.iter().map(|c| vec![0.0; c.len()]).collect();
    loads[0] = load;
    let mut nexts: Vec<Vec<Vec<SocketAddr>>> =
        cells.iter().map(|c| vec![Vec::new(); c.len()]).collect();
    for child in 1..cells.len() {
        let parent = (child - 1) / fanout;
        let (assigned, named) =
            designate(&cells[parent], &loads[parent], &cells[child], default_rtt);
        loads[child] = assigned;
        for (a, t) in named.into_iter().enumerate() {
            nexts[parent][a].push(cells[child][t].addr);
        }
    }
    let mut out = Vec::with_capacity(members.len());
    for (ci, cell) in cells.iter().enumerate() {
        for (mi, m) in cell.iter().enumerate() {
            out.push(MemberPlan {
                id: m.id,
                addr: m.addr,
                zone: m.zone,
                nexts: std::mem::take(&mut nexts[ci][mi]),
                peers: cell
                    .iter()
                    .filter(|p| p.id != m.id)
                    .map(|p| p.addr)
                    .collect(),
            });
        }
    }
    Plan {
        owners,
        members: out,
        cells: cells
            .iter()
            .map(|c| c.iter().map(|m| m.id).collect())
            .collect(),
    }
}

/// The cells of zone `zone` in `prev`, in tree order (member ids).
fn prev_cells(prev: &Plan, zone: u16) -> Vec<&[ReceiverId]> {
    let zone_of: BTreeMap<ReceiverId, u16> = prev.members.iter().map(|m| (m.id, m.zone)).collect();
    prev.cells
        .iter()
        .filter(|c| c.first().and_then(|id| zone_of.get(id)) == Some(&zone))
        .map(Vec::as_slice)
        .collect()
}

/// Deals the members of one zone (`ms`, from the lowest overhead up) into ceil(n / max_cell)
/// cells of the same size give or take one. While the zone keeps the number of cells it had
/// in the plan in force (`prev`), every member stays in its cell: newcomers fill the
/// smallest cells, and a cell more than one member larger than another gives its newest
/// members up. Otherwise the members are dealt round robin, so each cell gets members of
/// every overhead. Why keep cells: a member forwards by the plan it holds, so a plan that
/// moves members between cells makes the units in flight (and any member whose new Plan is
/// late) copy to the old cells and miss the new ones; measurements arriving one by one
/// re-dealt every member each time.
fn deal(ms: Vec<MemberInfo>, max_cell: usize, prev: Vec<&[ReceiverId]>) -> Vec<Vec<MemberInfo>> {
    let n = ms.len().div_ceil(max_cell);
    let mut cells: Vec<Vec<MemberInfo>> = vec![Vec::new(); n];
    if prev.len() != n {
        for (i, m) in ms.into_iter().enumerate() {
            cells[i % n].push(m);
        }
        return cells;
    }
    let mut kept: BTreeMap<ReceiverId, usize> = BTreeMap::new();
    for (c, ids) in prev.iter().enumerate() {
        for id in *ids {
            kept.insert(*id, c);
        }
    }
    let mut newcomers = Vec::new();
    for m in ms {
        match kept.get(&m.id) {
            Some(&c) => cells[c].push(m),
            None => newcomers.push(m),
        }
    }
    // In the order of the plan in force (the newest last), whatever the measurements say.
    for (c, ids) in prev.iter().enumerate() {
        cells[c].sort_by_key(|m| ids.iter().position(|id| *id == m.id));
    }
    for m in newcomers {
        if let Some(c) = (0..n).min_by_key(|&c| (cells[c].len(), c)) {
            cells[c].push(m);
        }
    }
    while let (Some(big), Some(small)) = (
        (0..n).max_by_key(|&c| (cells[c].len(), std::cmp::Reverse(c))),
        (0..n).min_by_key(|&c| (cells[c].len(), c)),
    ) {
        if cells[big].len() <= cells[small].len() + 1 {
            break;
        }
        if let Some(m) = cells[big].pop() {
            cells[small].push(m);
        }
    }
    cells
}

/// Gives each member of cell `from` (relaying `load`, its share of the units) a designated
/// member of cell `to`, greedily: the members relaying most first, each to the member of `to`
/// with the least (relayed load + its load) / capacity, the lower overhead first on a tie, so
/// relaying in `to` is spread in proportion to capacity. Returns the load each member of `to`
/// relays on, and the index in `to` each member of `from` names.
fn designate(
    from: &[MemberInfo],
    load: &[f64],
    to: &[MemberInfo],
    default_rtt: Duration,
) -> (Vec<f64>, Vec<usize>) {
    let rtt_of = |m: &MemberInfo| m.rtt.unwrap_or(default_rtt);
    // Not measured yet: as the best measured (see `plan`).
    let best = to
        .iter()
        .filter_map(|m| m.rtt_floor)
        .min()
        .unwrap_or(default_rtt);
    let cap: Vec<f64> = to
        .iter()
        .map(|m| f64::from(weight(m, best, best)))
        .collect();
    let mut assigned = vec![0.0f64; to.len()];
    let mut named = vec![0usize; from.len()];
    let mut order: Vec<usize> = (0..from.len()).collect();
    order.sort_by(|&a, &b| load[b].total_cmp(&load[a]).then(a.cmp(&b)));
    for a in order {
        // A member that relays nothing yet still gets a designated member (a plan change
        // may give it load); it counts for a sliver so these spread too.
        let l = load[a].max(1e-6);
        // `to` is sorted by overhead within its zone's deal, so the first minimum is the
        // lower overhead.
        let t = (0..to.len())
            .min_by(|&x, &y| {
                ((assigned[x] + l) / cap[x])
                    .total_cmp(&((assigned[y] + l) / cap[y]))
                    .then(rtt_of(&to[x]).cmp(&rtt_of(&to[y])))
                    .then(x.cmp(&y))
            })
            .unwrap_or(0);
        assigned[t] += l;
        named[a] = t;
    }
    (assigned, named)
}

/// The owner slot of a unit: consecutive units of a block (or parity units of a block) share
/// an owner for `run_units` at a time; runs are spread over the slots by a multiplicative hash.
pub(crate) fn owner_slot(
    seq: u64,
    parity: bool,
    index: u16,
    run_units: u16,
    slots: usize,
) -> usize {
    let key = (seq << 17) | (u64::from(parity) << 16) | u64::from(index);
    let run = key / u64::from(run_units.max(1));
    let h = run.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    ((h * slots as u64) >> 32) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(i: u64, zone: u16, rtt_ms: Option<u64>) -> MemberInfo {
        MemberInfo {
            id: ReceiverId(i),
            addr: SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 9000)),
            zone,
            rtt: rtt_ms.map(Duration::from_millis),
            rtt_floor: rtt_ms.map(Duration::from_millis),
            loss_ppm: 0,
        }
    }

    #[test]
    fn the_lowest_overhead_zone_is_served_and_the_others_hang_under_it() {
        let mut ms = Vec::new();
        for i in 0..6 {
            // Zone 7 is near (1 ms), zone 3 middling (5 ms), zone 5 far (20 ms).
            ms.push(member(i, 3, Some(5)));
            ms.push(member(100 + i, 7, Some(1)));
            ms.push(member(200 + i, 5, Some(20)));
        }
        let p = plan(
            &ms,
            &SplitConfig::default(),
            Duration::from_millis(5),
            &Plan::default(),
        );
        assert_eq!(p.cells.len(), 3);
        let zone_of = |id: &ReceiverId| ms.iter().find(|m| m.id == *id).unwrap().zone;
        let order: Vec<u16> = p.cells.iter().map(|c| zone_of(&c[0])).collect();
        assert_eq!(order, [7, 3, 5]);
        // Owners are members of the first cell only, each with a fair share (equal weights).
        for m in &p.cells[0] {
            let addr = ms.iter().find(|x| x.id == *m).unwrap().addr;
            let n = p.owners.iter().filter(|a| **a == addr).count();
            assert!((42..=43).contains(&n), "{n} slots");
        }
        // Both other cells are children of the root: each member of the root names one member
        // of each, and each of those is named once (6 -> 6); the leaves name nobody.
        for (ci, cell) in p.cells.iter().enumerate() {
            let plans: Vec<&MemberPlan> =
                p.members.iter().filter(|m| cell.contains(&m.id)).collect();
            for m in &plans {
                assert_eq!(m.peers.len(), cell.len() - 1);
                assert!(!m.peers.contains(&m.addr));
            }
            if ci > 0 {
                assert!(plans.iter().all(|m| m.nexts.is_empty()));
                continue;
            }
            for (k, child) in p.cells[1..].iter().enumerate() {
                let addrs: Vec<SocketAddr> = ms
                    .iter()
                    .filter(|m| child.contains(&m.id))
                    .map(|m| m.addr)
                    .collect();
                let mut named: Vec<SocketAddr> = plans.iter().map(|m| m.nexts[k]).collect();
                assert!(
                    named.iter().all(|a| addrs.contains(a)),
                    "child {k} in order"
                );
                named.sort();
                named.dedup();
                assert_eq!(named.len(), cell.len(), "balanced: each named once");
            }
        }
    }

    #[test]
    fn big_zones_are_cut_into_bounded_cells() {
        let ms: Vec<MemberInfo> = (0..1000).map(|i| member(i, (i % 3) as u16, None)).collect();
        let cfg = SplitConfig::default();
        let p = plan(&ms, &cfg, Duration::from_millis(5), &Plan::default());
        assert_eq!(p.members.len(), 1000);
        assert!(p
            .cells
            .iter()
            .all(|c| c.len() <= cfg.max_cell && !c.is_empty()));
        assert!(p.members.iter().all(|m| m.peers.len() <= MAX_PLAN_PEERS));
        // 334 members in zone 0 -> 6 cells of 55 or 56.
        assert_eq!(p.cells.len(), 6 + 6 + 6);
        // A tree of fan-out 4 over 18 cells: cells 0..=4 have children (cell 4: only 17), the
        // others are leaves; the depth is 2 (17 -> 4 -> 0).
        let fanout = cfg.fanout;
        for (ci, cell) in p.cells.iter().enumerate() {
            let children = (fanout * ci + 1..=fanout * ci + fanout)
                .filter(|&c| c < p.cells.len())
                .count();
            for m in p.members.iter().filter(|m| cell.contains(&m.id)) {
                assert_eq!(m.nexts.len(), children, "cell {ci}");
            }
        }
        assert_eq!(
            p.members.iter().filter(|m| !m.nexts.is_empty()).count(),
            p.cells[..5].iter().map(Vec::len).sum::<usize>()
        );
    }

    #[test]
    fn members_of_a_tree_upload_evenly() {
        // Every unit enters a cell at one member (in the root: its owner; below: the member
        // its parent's entry names), which sends it to each other member of the cell and to
        // one member of each child cell. Count what each member uploads per unit of the object.
        let ms: Vec<MemberInfo> = (0..600).map(|i| member(i, 0, Some(1))).collect();
        let cfg = SplitConfig::default();
        let p = plan(&ms, &cfg, Duration::from_millis(5), &Plan::default());
        let idx = |a: SocketAddr| p.members.iter().position(|m| m.addr == a).unwrap();
        let cell_of: std::collections::HashMap<SocketAddr, usize> = p
            .members
            .iter()
            .map(|m| {
                let c = p.cells.iter().position(|c| c.contains(&m.id)).unwrap();
                (m.addr, c)
            })
            .collect();
        let mut entry = vec![0.0f64; p.members.len()];
        for a in &p.owners {
            entry[idx(*a)] += 1.0 / p.owners.len() as f64;
        }
        // Cells in tree order: a parent's entries are known before its children's.
        let mut upload = vec![0.0f64; p.members.len()];
        for c in 0..p.cells.len() {
            for (i, m) in p.members.iter().enumerate() {
                if cell_of[&m.addr] != c || entry[i] == 0.0 {
                    continue;
                }
                upload[i] += entry[i] * (m.peers.len() + m.nexts.len()) as f64;
                for n in &m.nexts {
                    entry[idx(*n)] += entry[i];
                }
            }
        }
        let mean = upload.iter().sum::<f64>() / upload.len() as f64;
        let max = upload.iter().cloned().fold(0.0, f64::max);
        assert!(max <= 1.3 * mean, "busiest {max:.3} mean {mean:.3}");
        // Every cell received every unit exactly once (its entries' shares sum to one).
        for c in 0..p.cells.len() {
            let s: f64 = (0..p.members.len())
                .filter(|&i| cell_of[&p.members[i].addr] == c)
                .map(|i| entry[i])
                .sum();
            assert!((s - 1.0).abs() < 1e-9, "cell {c}: {s}");
        }
    }

    #[test]
    fn members_keep_their_cells_as_measurements_arrive_and_newcomers_fill_the_smallest() {
        let cfg = SplitConfig::default();
        let cells_of = |p: &Plan| -> Vec<Vec<ReceiverId>> {
            let mut c: Vec<Vec<ReceiverId>> = p
                .cells
                .iter()
                .map(|c| {
                    let mut c = c.clone();
                    c.sort();
                    c
                })
                .collect();
            c.sort();
            c
        };
        // 300 members of one zone, unmeasured: five cells of 60.
        let mut ms: Vec<MemberInfo> = (0..300).map(|i| member(i, 0, None)).collect();
        let first = plan(&ms, &cfg, Duration::from_millis(5), &Plan::default());
        assert_eq!(first.cells.len(), 5);
        // Every member measured, in an order unlike the ids: dealt afresh, most would move.
        for m in ms.iter_mut() {
            m.rtt = Some(Duration::from_micros(1000 + (m.id.0 * 7919) % 5000));
        }
        let fresh = plan(&ms, &cfg, Duration::from_millis(5), &Plan::default());
        assert_ne!(
            cells_of(&fresh),
            cells_of(&first),
            "the measurements re-deal"
        );
        let kept = plan(&ms, &cfg, Duration::from_millis(5), &first);
        assert_eq!(
            cells_of(&kept),
            cells_of(&first),
            "kept from the plan in force"
        );
        // Ten leave from one cell and ten join: the newcomers fill that cell.
        let gone: Vec<ReceiverId> = first.cells[2][..10].to_vec();
        ms.retain(|m| !gone.contains(&m.id));
        ms.extend((1000..1010).map(|i| member(i, 0, Some(2))));
        let next = plan(&ms, &cfg, Duration::from_millis(5), &kept);
        for (old, new) in kept.cells.iter().zip(&next.cells) {
            let stayed = old.iter().filter(|id| !gone.contains(id));
            assert!(
                stayed.into_iter().all(|id| new.contains(id)),
                "nobody moved"
            );
            assert_eq!(new.len(), 60);
        }
        // More cells are needed (385 members: seven): the zone is dealt again, evenly.
        ms.extend((2000..2085).map(|i| member(i, 0, Some(2))));
        let grown = plan(&ms, &cfg, Duration::from_millis(5), &next);
        assert_eq!(grown.cells.len(), 7);
        assert!(grown.cells.iter().all(|c| c.len() == 55));
    }

    #[test]
    fn capacity_weights_the_owner_shares() {
        // Member 0's overhead is thirty times the others': it owns a quarter of their share.
        let ms = vec![
            member(0, 0, Some(60)),
            member(1, 0, Some(2)),
            member(2, 0, Some(2)),
        ];
        let p = plan(
            &ms,
            &SplitConfig::default(),
            Duration::from_millis(5),
            &Plan::default(),
        );
        let n = |i: usize| p.owners.iter().filter(|a| **a == ms[i].addr).count();
        assert_eq!(n(0) + n(1) + n(2), OWNER_SLOTS);
        assert!(
            n(0) * 3 < n(1) && n(1).abs_diff(n(2)) <= 1,
            "{} {} {}",
            n(0),
            n(1),
            n(2)
        );
    }

    #[test]
    fn runs_of_units_share_an_owner_and_runs_spread() {
        let slot = |u: u16| owner_slot(5, false, u, 32, 256);
        assert!((0..32).all(|u| slot(u) == slot(0)));
        let mut seen = std::collections::HashSet::new();
        for seq in 0..64 {
            for u in (0..749).step_by(32) {
                seen.insert(owner_slot(seq, false, u, 32, 256));
            }
        }
        assert!(seen.len() > 200, "runs reach {} of 256 slots", seen.len());
    }
}

#[cfg(test)]
mod state_machine_tests {
    use std::time::Instant;

    use super::*;
    use crate::wire::{AnnounceRepr, BlockIndex, CopyFlags, ObjectId, Packet, PlanRepr, SessionId};
    use crate::{Destination, MemStore, Receiver, ReceiverConfig, SplitMember};

    const SERVER: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::new(10, 0, 0, 1),
        9000,
    ));

    fn peer(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 1, i], 7000))
    }

    fn emit(p: &Packet<'_>) -> Vec<u8> {
        let mut buf = vec![0u8; p.buffer_len()];
        p.emit(&mut buf).unwrap();
        buf
    }

    #[test]
    fn a_member_asks_for_the_session_and_keeps_the_newest_plan() {
        let now = Instant::now();
        let cfg = ReceiverConfig {
            id: ReceiverId(5),
            split: Some(SplitMember {
                server: SERVER,
                zone: 3,
            }),
            ..ReceiverConfig::default()
        };
        let mut rx = Receiver::new(cfg, MemStore::default());
        let mut buf = [0u8; 2048];
        // Before anything: a Solicit to the server, for any session, with the zone.
        let t = rx.poll_transmit(now, &mut buf).expect("a solicit");
        assert_eq!(t.destination, Destination::Peer(SERVER));
        match Packet::parse(&buf[..t.len]).unwrap() {
            Packet::Solicit(s) => {
                assert_eq!(
                    (s.session, s.receiver, s.zone),
                    (SessionId(0), ReceiverId(5), 3)
                )
            }
            p => panic!("not a solicit: {p:?}"),
        }
        // Not again until the join interval has passed.
        assert!(rx.poll_transmit(now, &mut buf).is_none());
        let session = SessionId(77);
        let announce = Packet::Announce(AnnounceRepr {
            session,
            control: SERVER,
            unit_size: 256,
            units_per_block: 4,
            max_parity: 4,
            stripes: 1,
            object_count: 1,
            total_bytes: 1024,
            manifest_len: 100,
            manifest_hash: [0; 32],
            group_size: 1,
            grtt_us: 1000,
            pass_object: ObjectId(0),
            pass_block: BlockIndex(0),
            timestamp: 5,
            issued: 0,
            statement_sig: None,
            announce_sig: None,
        });
        rx.handle_datagram(now, SERVER, &emit(&announce));
        assert_eq!(rx.session(), Some(session));
        assert!(rx.copy_targets(CopyFlags::ALL).is_empty(), "no plan yet");
        let plan = |epoch, next: Option<SocketAddr>, peers: Vec<SocketAddr>| {
            let nexts = next.into_iter().collect();
            emit(&Packet::Plan(PlanRepr {
                session,
                receiver: ReceiverId(5),
                epoch,
                zone: 3,
                nexts,
                peers,
            }))
        };
        rx.handle_datagram(now, SERVER, &plan(2, Some(peer(9)), vec![peer(1), peer(2)]));
        // An older plan arriving late, and a plan for someone else, change nothing.
        rx.handle_datagram(now, SERVER, &plan(1, None, vec![peer(3)]));
        let mut other = plan(3, None, vec![]);
        other[10..18].copy_from_slice(&6u64.to_be_bytes());
        rx.handle_datagram(now, SERVER, &other);
        assert_eq!(rx.plan_epoch(), Some(2));
        let all = rx.copy_targets(CopyFlags::ALL);
        assert_eq!(all.zone, &[peer(1), peer(2)]);
        assert_eq!(all.next, &[peer(9)]);
        let zone_only = rx.copy_targets(CopyFlags {
            zone: true,
            next: false,
        });
        assert_eq!((zone_only.zone.len(), zone_only.next.len()), (2, 0));
        assert!(rx.copy_targets(CopyFlags::NONE).is_empty());
    }
}
