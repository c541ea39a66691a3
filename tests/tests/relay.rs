//! Relays in the simulator: every node ends byte-identical and verified, relays or not.

use std::time::Duration;

use blockcast_sim::{run_relays, FailOver, LossModel, RelayConfig, RelayReport, StoreKind};

fn check(cfg: RelayConfig) -> RelayReport {
    let cfg = cfg.with_env_seed();
    let r = run_relays(&cfg);
    eprintln!(
        "seed {} fanout {:?} complete {}/{} time {:.3}x switches {} leaf NACK bytes {} wall {:?}",
        r.seed,
        r.fanout,
        r.identical,
        r.expected,
        r.completion_ratio(),
        r.switches,
        r.leaf_nack_bytes,
        r.wall
    );
    for t in &r.tiers {
        eprintln!(
            "  tier {}: {} senders, units {:.3}x, parity {}, NACKs {} ({} B), receipts {}, control in {} ({:.0}/s mean, {:.0}/s max)",
            t.tier,
            t.senders,
            t.units_ratio,
            t.parity_units,
            t.nack_packets,
            t.nack_bytes,
            t.receipt_packets,
            t.control_in,
            t.fan_in_mean,
            t.fan_in_max
        );
    }
    r.assert_ok();
    assert_eq!(r.identical, r.expected);
    r
}

#[test]
fn two_tiers_with_loss() {
    let r = check(RelayConfig::small(201, vec![4, 10], 0.02));
    assert_eq!(r.expected, 4 + 40);
    assert!(r.tiers[1].parity_units > 0, "lossy relays never repaired");
    assert_eq!(r.switches, 0, "a live relay was taken for dead");
}

#[test]
fn two_tiers_bursty_and_three_tiers() {
    let mut cfg = RelayConfig::small(211, vec![3, 8], 0.0);
    cfg.base.data_faults.loss = LossModel::Bursty {
        enter: 0.0053,
        leave: 0.05,
        bad_loss: 0.5,
    };
    check(cfg);
    let r = check(RelayConfig::small(212, vec![2, 3, 6], 0.02));
    assert_eq!(r.expected, 2 + 6 + 36);
}

/// A relay dies while its receivers hold 2 of 8 blocks; they hear nothing for the
/// fail-over delay, then finish from a sibling relay (or from the server).
#[test]
fn relay_killed_mid_transfer() {
    for failover in [FailOver::Sibling, FailOver::Up] {
        let mut cfg = RelayConfig::small(221, vec![3, 6], 0.02);
        cfg.failover = failover;
        // 256 KiB (8 blocks) at 1 MB/s: the first pass takes about 270 ms; the relay dies when
        // it has passed on a few blocks.
        cfg.base.rate = 1_000_000;
        cfg.failover_after = Duration::from_millis(100);
        cfg.relay_deaths = vec![(1, 1, Duration::from_millis(160))];
        cfg.base.store = StoreKind::Memory;
        let r = check(cfg);
        // The dead relay is not expected; its six receivers are, and each switched.
        assert_eq!(r.expected, 2 + 18);
        assert!(r.switches >= 6, "only {} fail-overs", r.switches);
    }
}

#[test]
fn late_joiner_behind_a_relay() {
    let mut cfg = RelayConfig::small(231, vec![2, 5], 0.01);
    // Receiver 3 (behind relay 0) starts when the server's first pass is half way.
    cfg.late = vec![(3, Duration::from_millis(10))];
    check(cfg);
}

/// The point of relays: the server hears its relays, not every receiver. Each node reports
/// at about the same rate whoever its source is, so the server's fan-in with R relays is
/// about R/N of its fan-in when all N receivers report to it; and each relay hears only its
/// own K receivers, so its fan-in is about K/N of the direct server's.
#[test]
fn fan_in_at_the_server_is_bounded_by_the_relays() {
    let (relays, per_relay) = (25usize, 40usize);
    let n = relays * per_relay;
    let mut via = RelayConfig::small(241, vec![relays, per_relay], 0.01);
    via.base.objects = vec![64 << 10];
    via.base.store = StoreKind::Hashed;
    let mut direct = via.clone();
    direct.fanout = vec![n];
    let via = check(via);
    let direct = check(direct);
    let per_node = direct.server_fan_in() / n as f64;
    eprintln!(
        "server fan-in: {:.0}/s via relays, {:.0}/s direct; relays {:.0}/s mean, {:.0}/s max; completion {:.3}x direct",
        via.server_fan_in(),
        direct.server_fan_in(),
        via.tiers[1].fan_in_mean,
        via.tiers[1].fan_in_max,
        via.completion.as_secs_f64() / direct.completion.as_secs_f64()
    );
    // Twice the per-node rate of the direct run leaves room for the relays' own losses.
    assert!(
        via.server_fan_in() < 2.0 * relays as f64 * per_node,
        "server fan-in {:.0}/s with {relays} relays; direct per-node rate {per_node:.1}/s",
        via.server_fan_in()
    );
    assert!(
        via.tiers[1].fan_in_max < 2.0 * per_relay as f64 * per_node,
        "a relay's fan-in {:.0}/s with {per_relay} receivers; direct per-node rate {per_node:.1}/s",
        via.tiers[1].fan_in_max
    );
    assert!(direct.server_fan_in() > via.server_fan_in() * (per_relay as f64 / 2.0));
}

/// A run is replayed exactly by its seed, whatever the number of delivery threads.
#[test]
fn a_relay_run_is_replayed_by_its_seed() {
    let figures = |r: &RelayReport| {
        (
            r.completion,
            r.switches,
            r.leaf_nack_bytes,
            r.tiers
                .iter()
                .map(|t| (t.units, t.nack_bytes, t.receipt_packets, t.control_in))
                .collect::<Vec<_>>(),
        )
    };
    let mut cfg = RelayConfig::small(251, vec![2, 4], 0.05);
    cfg.base.rate = 1_000_000;
    cfg.failover_after = Duration::from_millis(100);
    cfg.relay_deaths = vec![(1, 0, Duration::from_millis(90))];
    assert_eq!(figures(&check(cfg.clone())), figures(&check(cfg)));
    // 600 receivers on one group are delivered on threads.
    let mut cfg = RelayConfig::small(252, vec![600], 0.02);
    cfg.base.objects = vec![64 << 10];
    cfg.base.store = StoreKind::Hashed;
    cfg.threads = 1;
    let one = check(cfg.clone());
    cfg.threads = 2;
    assert_eq!(figures(&one), figures(&check(cfg)));
}
