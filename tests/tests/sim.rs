//! Simulated transfers: every receiver must end byte-identical and verified.

use std::time::Duration;

use blockcast_proto::RateLimits;
use blockcast_sim::{run, LinkFaults, LossModel, SimConfig, SimReport, StoreKind};

fn check(cfg: SimConfig) -> SimReport {
    let cfg = cfg.with_env_seed();
    let r = run(&cfg);
    eprintln!(
        "seed {} n={} complete {}/{} time {:.3}x units {:.3}x parity {} repairs {} nacks {} ({:.2}% of data) failed blocks {} wall {:?}",
        r.seed,
        r.receivers,
        r.identical,
        r.expected,
        r.completion_ratio(),
        r.units_ratio(),
        r.parity_units,
        r.repair_units,
        r.nack_packets,
        r.nack_share() * 100.0,
        r.blocks_failed,
        r.wall
    );
    r.assert_ok();
    assert_eq!(r.identical, r.expected);
    r
}

/// The node's block geometry: 749 units of 1400 bytes, up to 128 parity units.
fn node_geometry() -> blockcast_proto::Geometry {
    blockcast_proto::Geometry {
        unit_size: 1400,
        units_per_block: 749,
        max_parity: 128,
    }
}

/// `--rate` fixed at `rate` (the controller's bounds all at it).
fn fixed_rate(rate: u64) -> RateLimits {
    RateLimits {
        start: rate,
        min: rate,
        max: rate,
    }
}

#[test]
fn one_receiver_lossless() {
    let r = check(SimConfig::small(1, 1, 0.0));
    assert_eq!(r.parity_units + r.repair_units, 0);
    assert_eq!(r.nack_packets, 0);
}

#[test]
fn receivers_by_loss() {
    for (n, seed) in [(1usize, 11u64), (10, 12), (100, 13)] {
        for loss in [0.0, 0.01, 0.05, 0.20] {
            let r = check(SimConfig::small(seed, n, loss));
            if loss == 0.0 {
                assert_eq!(r.parity_units + r.repair_units, 0, "lossless run repaired");
            } else {
                assert!(
                    r.parity_units + r.repair_units > 0,
                    "lossy run without repair"
                );
            }
        }
    }
}

#[test]
fn thousand_receivers_by_loss() {
    for loss in [0.0, 0.01, 0.05, 0.20] {
        let mut cfg = SimConfig::small(21, 1000, loss);
        cfg.objects = vec![64 << 10];
        cfg.store = StoreKind::Hashed;
        check(cfg);
    }
}

#[test]
fn bursty_loss() {
    let mut cfg = SimConfig::small(31, 50, 0.0);
    // Mean loss 5 %, in bursts of ~20 copies.
    cfg.data_faults.loss = LossModel::Bursty {
        enter: 0.0053,
        leave: 0.05,
        bad_loss: 0.5,
    };
    check(cfg);
}

#[test]
fn duplicates_and_reordering_are_harmless() {
    let mut cfg = SimConfig::small(41, 20, 0.0);
    cfg.data_faults = LinkFaults {
        duplicate: 0.05,
        reorder: 0.05,
        reorder_delay: Duration::from_millis(3),
        ..LinkFaults::lossy(0.0)
    };
    let r = check(cfg.clone());
    // Without loss, a reordered unit is only late, never missing for good.
    assert_eq!(r.bad_done_blocks, 0);
    cfg.data_faults.loss = LossModel::Independent(0.02);
    check(cfg);
}

#[test]
fn corrupted_units_never_end_in_a_done_block() {
    let mut cfg = SimConfig::small(51, 10, 0.01);
    cfg.data_faults.corrupt = 0.002;
    let r = check(cfg);
    assert!(
        r.blocks_failed > 0,
        "corruption was never detected: the test did not test"
    );
    assert_eq!(r.bad_done_blocks, 0);
}

#[test]
fn late_joiner_completes_without_restart() {
    let mut cfg = SimConfig::small(61, 5, 0.01);
    cfg.sender.min_receivers = 4;
    // 1 MiB: a first pass of 65 ms, so the session is still on when the late receiver has
    // heard an announce (every 20 ms) and joined, however fast the others finish.
    cfg.objects = vec![1 << 20];
    // Receiver 4 starts when the first pass is about a quarter of the way.
    cfg.late = vec![(4, Duration::from_millis(16))];
    let r = check(cfg);
    // The sender never starts over: first-pass units are sent once.
    assert_eq!(r.data_units, r.minimal_units);
}

#[test]
fn leaving_or_dying_receivers_do_not_hold_the_others() {
    let mut cfg = SimConfig::small(71, 10, 0.05);
    cfg.leaves = vec![(2, Duration::from_millis(5))];
    cfg.deaths = vec![(3, Duration::from_millis(7)), (7, Duration::from_millis(1))];
    let r = check(cfg);
    assert!(r.sender_finished);
}

#[test]
fn striped_first_pass_from_data_threads() {
    // Three stripes sent by separate "threads" that drift apart, as the server's data threads do.
    for loss in [0.0, 0.02] {
        let mut cfg = SimConfig::small(81, 20, loss);
        cfg.stripes = 3;
        cfg.objects = vec![100_000, 0, 200_000];
        let r = check(cfg);
        assert_eq!(
            r.data_units, r.minimal_units,
            "each first-pass unit is sent exactly once"
        );
        if loss == 0.0 {
            assert_eq!(
                r.parity_units + r.repair_units,
                0,
                "stripe drift was taken for loss"
            );
        }
    }
}

#[test]
fn threads_do_not_change_a_run() {
    let mut cfg = SimConfig::small(91, 600, 0.02);
    cfg.objects = vec![64 << 10];
    cfg.store = StoreKind::Hashed;
    cfg.threads = 1;
    let one = check(cfg.clone());
    cfg.threads = 2;
    let two = check(cfg);
    assert_eq!(
        (
            one.completion,
            one.parity_units,
            one.nack_packets,
            one.nack_bytes,
            one.receipt_packets
        ),
        (
            two.completion,
            two.parity_units,
            two.nack_packets,
            two.nack_bytes,
            two.receipt_packets
        )
    );
}

#[test]
fn priority_request_is_served_before_the_first_pass_gets_there() {
    use blockcast_proto::wire::{BlockIndex, ObjectId, UnitIndex};
    // The last block is asked for at the start; it must be verified long before the first
    // pass reaches it, and the other receivers must still get everything.
    let mut cfg = SimConfig::small(101, 5, 0.01);
    cfg.objects = vec![1 << 20];
    cfg.priority = Some((0, ObjectId(0), BlockIndex(31), UnitIndex(0), 1));
    let r = check(cfg);
    let (got, pass_reached) = r
        .priority_verified
        .expect("the asked-for block was verified");
    assert!(
        got < pass_reached,
        "asked-for block verified at {got:?}, first pass reached it at {pass_reached:?}"
    );
}

#[test]
fn external_verification_is_the_same_protocol() {
    // Blocks hashed outside the state machine (as the node does on another core), with
    // corruption so that failed blocks take that path too.
    let mut cfg = SimConfig::small(111, 10, 0.01);
    cfg.receiver.external_verify = true;
    cfg.data_faults.corrupt = 0.002;
    let r = check(cfg);
    assert!(
        r.blocks_failed > 0,
        "no block failed: the failure path was not exercised"
    );
    assert_eq!(r.bad_done_blocks, 0);
}

#[test]
fn small_groups_are_repaired_with_originals_large_ones_with_parity() {
    // Four receivers that lose alike: resending the union of their holes costs about 4x
    // parity's units and spares each of them a decode of the whole block.
    let small = check(SimConfig::small(91, 4, 0.05));
    // Parity only where the tail's repairs carry it for their own loss.
    assert!(small.parity_units <= small.tail_parity);
    assert!(small.repair_units + small.xor_units > 0);
    // Forty: the originals would cost about 40x, so parity it is.
    let large = check(SimConfig::small(92, 40, 0.05));
    assert!(large.parity_units > 0);
    assert!(large.repair_units < large.parity_units);
}

#[test]
fn xor_repairs_send_fewer_units_than_the_union_of_holes() {
    // Four receivers losing 5 % each: resending the union of their holes costs about 18 % of
    // the content; combining units different receivers miss into XOR repairs costs about
    // the largest receiver's losses. Every copy is still verified block by block.
    let mut with = SimConfig::small(93, 4, 0.05);
    with.store = StoreKind::Hashed;
    let mut without = with.clone();
    without.sender.xor_repairs = false;
    let x = check(with);
    let o = check(without);
    assert!(x.xor_units > 0, "no XOR repair sent");
    assert_eq!(o.xor_units, 0);
    assert_eq!(x.blocks_failed, 0, "an XOR rebuild produced a bad block");
    let repairs = |r: &SimReport| r.repair_units + r.xor_units + r.parity_units;
    assert!(
        repairs(&x) * 10 < repairs(&o) * 7,
        "XOR repairs: {} datagrams, originals: {}",
        repairs(&x),
        repairs(&o)
    );
}

#[test]
fn a_striped_first_pass_runs_the_real_stripe_passes() {
    // Four stripes, each a real StripePass made by the sender (as the server's data threads
    // are), paced at the sender's first-pass rate and reporting their progress to it.
    for loss in [0.0, 0.02] {
        let mut cfg = SimConfig::small(131, 20, loss);
        cfg.stripes = 4;
        cfg.objects = vec![300_000, 5_000, 200_000];
        let r = check(cfg);
        assert_eq!(
            r.stripe_units.len(),
            4,
            "stripes made: {:?}",
            r.stripe_units
        );
        assert!(
            r.stripe_units.iter().all(|&u| u > 0),
            "a stripe sent nothing: {:?}",
            r.stripe_units
        );
        assert_eq!(
            r.stripe_units.iter().sum::<u64>(),
            r.data_units,
            "the sender sent first-pass units itself"
        );
        assert_eq!(r.data_units, r.minimal_units);
    }
}

#[test]
fn rate_control_runs_in_the_simulator() {
    // `--rate auto`'s controller lives in the sender, so the simulator runs it as it ships:
    // with no congestion reported the rate climbs from its start and the transfer ends
    // sooner; on a link that loses more than the controller tolerates it backs off.
    let mut cfg = SimConfig::small(121, 10, 0.0);
    // A first pass of about half a second: several of the controller's steps.
    cfg.objects = vec![1 << 20];
    cfg.rate = 2_000_000;
    let fixed = check(cfg.clone());
    cfg.rate_control = Some(RateLimits {
        start: cfg.rate,
        min: cfg.rate / 8,
        max: cfg.rate * 16,
    });
    let auto = check(cfg.clone());
    assert_eq!(fixed.final_rate, cfg.rate, "a fixed rate moved");
    assert!(
        auto.final_rate > cfg.rate,
        "the rate stayed at {} from {}",
        auto.final_rate,
        cfg.rate
    );
    assert!(
        auto.completion < fixed.completion,
        "auto {:?}, fixed {:?}",
        auto.completion,
        fixed.completion
    );
    // Half again the loss the controller takes for a link collapsing under the rate.
    let heavy = f64::from(blockcast_proto::rate::HEAVY_LOSS_PPM) * 1.5 / 1e6;
    cfg.data_faults = LinkFaults::lossy(heavy);
    cfg.control_faults = LinkFaults::lossy(heavy);
    let lossy = check(cfg.clone());
    assert!(
        lossy.final_rate < cfg.rate,
        "at {heavy} loss the rate went from {} to {}",
        cfg.rate,
        lossy.final_rate
    );
}

#[test]
fn a_burst_of_overflow_does_not_turn_into_a_storm_of_repairs() {
    use blockcast_sim::ReceiverLimits;
    // Four receivers as the node runs them, each with a 1 MiB socket buffer emptied at
    // 7.8 MB/s, and `--rate auto` starting at eight times that: the first notices say the
    // buffers are full and overflowing, and the news of overflow comes a buffer's worth of
    // time late (the kernel stamps each datagram with the drop count as it queues it). The
    // controller that backed off by a fixed share, then held 300 ms whatever the news, and
    // cut again on notices that reported what the old rate did, repaired 1.4 times the
    // object's units and took 1.3 times what the receivers need (docs/DESIGN.md).
    let geometry = node_geometry();
    let service: u64 = 7_812_500;
    let limits = RateLimits {
        start: service * 8,
        min: service / 100,
        max: service * 64,
    };
    let mut cfg = SimConfig::node_like(141, 4, 16 << 20, geometry, limits);
    cfg.receiver_limits = Some(ReceiverLimits::new(1 << 20, service));
    // With the default repair budget: the 14 % of the object these receivers lose before the
    // first notices cut the rate is a loss all four share, and each pays a quarter of it.
    // Charged to the first that asked, it went over that member's budget and was mended at
    // its share of the rate: 3.73 s, 1.70x what they need (docs/DESIGN.md, "the repair budget
    // against an early burst of overflow").
    let r = check(cfg);
    assert!(
        r.socket_drops() > 0,
        "no socket overflowed: the test did not test"
    );
    let repairs = r.repair_units + r.xor_units + r.parity_units;
    assert!(
        repairs * 2 < r.minimal_units,
        "{repairs} repairs for {} units ({} dropped at the sockets, {} duplicates)",
        r.minimal_units,
        r.socket_drops(),
        r.duplicates
    );
    // What the receivers need: every datagram of the object through 7.8 MB/s.
    let bytes = r.minimal_units * (1400 + 26);
    let need = Duration::from_secs_f64(bytes as f64 / service as f64);
    eprintln!(
        "took {:?}, the receivers need {need:?}: {:.3}x; {repairs} repair units, {} refused",
        r.completion,
        r.completion.as_secs_f64() / need.as_secs_f64(),
        r.repair_denied
    );
    assert!(
        r.completion < need.mul_f64(1.25),
        "took {:?}, the receivers need {need:?} ({} repair units refused, {} members dropped)",
        r.completion,
        r.repair_denied,
        r.dropped_slow
    );
}

#[test]
fn repairs_go_inside_the_rate_not_on_top_of_the_first_pass() {
    // Data threads send the first pass (as the node does) at a fixed rate; four receivers lose
    // 5 %, and NACKs come in all through the pass. Repairs used to be queued only briefly
    // between NACKs, so the first pass kept the whole rate and the repairs went on top.
    let geometry = node_geometry();
    let rate: u64 = 64_000_000;
    let limits = fixed_rate(rate);
    let mut cfg = SimConfig::node_like(151, 4, 32 << 20, geometry, limits);
    cfg.data_faults = LinkFaults::lossy(0.05);
    let r = check(cfg);
    assert!(
        r.repair_units + r.xor_units > 100,
        "few repairs: the test did not test"
    );
    // Pacing lets a 64 KiB quantum and a 500 us burst through: a few percent in 200 ms.
    assert!(
        r.peak_rate < rate * 21 / 20,
        "sent {} B/s in 200 ms at a rate of {rate}",
        r.peak_rate
    );
}

/// Four receivers as the node runs them, each taking `service` bytes per second from a
/// `buffer`-byte socket buffer and kept off its core `stall` of every `period` (in turn), at
/// seeds `seeds`: each session must end within `bound` times what the receivers need (every
/// datagram through their take, less the stalls' share) with repairs under 1 % of the units.
struct Stalls {
    object: usize,
    service: u64,
    buffer: usize,
    period: Duration,
    stall: Duration,
    limits: RateLimits,
    bound: f64,
}

fn stalled_receivers_keep_up(t: Stalls, seeds: std::ops::RangeInclusive<u64>) {
    use blockcast_sim::ReceiverLimits;
    let geometry = node_geometry();
    for seed in seeds {
        let mut cfg = SimConfig::node_like(seed, 4, t.object, geometry, t.limits);
        let mut l = ReceiverLimits::new(t.buffer, t.service);
        l.stalls = Some((t.period, t.stall));
        cfg.receiver_limits = Some(l);
        let r = check(cfg);
        assert!(
            r.sockets.iter().all(|s| s.stalls > 0),
            "no receiver stalled: the test did not test"
        );
        let bytes = r.minimal_units * (1400 + 26);
        let awake = 1.0 - t.stall.as_secs_f64() / t.period.as_secs_f64();
        let need = Duration::from_secs_f64(bytes as f64 / (t.service as f64 * awake));
        eprintln!(
            "seed {seed}: took {:?}, the receivers need {need:?}: {:.3}x, drops {}",
            r.completion,
            r.completion.as_secs_f64() / need.as_secs_f64(),
            r.sockets.iter().map(|s| s.dropped).sum::<u64>()
        );
        assert!(
            r.completion < need.mul_f64(t.bound),
            "seed {seed}: took {:?}, the receivers need {need:?}",
            r.completion
        );
        let repairs = r.repair_units + r.xor_units + r.parity_units;
        assert!(
            repairs * 100 < r.minimal_units,
            "seed {seed}: {repairs} repairs for {} units",
            r.minimal_units
        );
    }
}

#[test]
fn receivers_kept_off_their_cores_in_turn_do_not_hold_the_rate_down() {
    // Four receivers as the node runs them, each taking 37.5 MB/s but kept off its core for
    // 200 ms of every second (in turn), as on a host whose cores other work shares: each
    // comes back to a queue it then drains. Held while any buffer was over a tenth full, the
    // rate stayed at the three quarters of their take that the last cut left. Cut on the
    // queue a receiver found when it came back (the queue of its pause, not of the rate), it
    // took 1.19-1.32x what they need at seeds 2-8 (1.10x at seed 1): several seeds, since
    // where the pauses fall against the rate's steps decides which notices cut.
    let t = Stalls {
        object: 64 << 20,
        service: 37_500_000,
        buffer: 16 << 20,
        period: Duration::from_secs(1),
        stall: Duration::from_millis(200),
        limits: RateLimits {
            start: 250_000_000,
            min: 2_500_000,
            max: 2_000_000_000,
        },
        bound: 1.15,
    };
    stalled_receivers_keep_up(t, 1..=4);
}

#[test]
fn short_stalls_the_buffer_absorbs_do_not_ratchet_the_rate_down() {
    // Four receivers taking 500 MB/s each from a 32 MiB buffer, each kept off its core 30 ms
    // of every 700 ms in turn: too short for the notices' pace to show a pause, and a 30 ms
    // excursion at 400 MB/s is 12 MB, over a quarter of the buffer. Cut on each such
    // excursion, the rate ratcheted down until one stayed under a quarter (about half their
    // take): 1.37-1.54x what they need at seeds 1-3. Only a queue seen at two notices in a
    // row (or one over three quarters full) cuts now. 320 MiB, not 256: the fourth receiver's
    // first stall comes 700 ms in, and a 256 MiB session is over by then (it was counted
    // stalled only because the server's close, spaced by a GRTT that held the receivers'
    // queue, outlasted it).
    let t = Stalls {
        object: 320 << 20,
        service: 500_000_000,
        buffer: 32 << 20,
        period: Duration::from_millis(700),
        stall: Duration::from_millis(30),
        limits: RateLimits {
            start: 1_000_000_000,
            min: 10_000_000,
            max: 8_000_000_000,
        },
        bound: 1.30,
    };
    stalled_receivers_keep_up(t, 1..=3);
}

/// A lossy run against its lossless twin: printed, checked that something was repaired (else
/// the test did not test), and the lossy time over the lossless returned.
fn loss_cost(label: &str, lossless: &SimReport, lossy: &SimReport) -> f64 {
    let ratio = lossy.completion.as_secs_f64() / lossless.completion.as_secs_f64();
    eprintln!(
        "{label}: lossless {:?}, lossy {:?} ({ratio:.3}x; first pass {:?}), \
         {} originals, {} XOR, {} parity, {} NACKs, {} units refused",
        lossless.completion,
        lossy.completion,
        lossy.first_pass,
        lossy.repair_units,
        lossy.xor_units,
        lossy.parity_units,
        lossy.nack_packets,
        lossy.repair_denied
    );
    assert!(
        lossy.repair_units + lossy.xor_units > 0,
        "{label}: nothing repaired: the test did not test"
    );
    ratio
}

/// `receivers` receivers taking 300 MB/s each from a 32 MiB buffer, `--rate auto` from
/// 1 GB/s (the receivers set the pace), 128 MiB: the time with `loss` on every copy of the
/// data over the time without ([`loss_cost`]).
fn paced_loss_cost(seed: u64, receivers: usize, loss: f64) -> f64 {
    use blockcast_sim::ReceiverLimits;
    let geometry = node_geometry();
    let mut cfg = SimConfig::node_like(seed, receivers, 128 << 20, geometry, RateLimits::default());
    cfg.receiver_limits = Some(ReceiverLimits::new(32 << 20, 300_000_000));
    let lossless = check(cfg.clone());
    cfg.data_faults = LinkFaults::lossy(loss);
    let lossy = check(cfg);
    loss_cost(
        &format!("seed {seed}, {receivers} receivers"),
        &lossless,
        &lossy,
    )
}

#[test]
fn five_percent_loss_costs_at_most_a_tenth_more_time_than_none() {
    // One and four receivers as the node runs them (a data thread's first pass at a fixed
    // rate), 256 MiB of 1400-byte units, with no loss and with 5 % independent loss on every
    // copy of the data. (At 64 MiB a member's repair budget hid that an allowance of 1/20
    // is short of the 5.26 % a 5 % loss needs: its burst covered the difference.) The loss's repairs take their share of the rate; what must not be
    // added is the tail: NACK round trips after the first pass for repairs lost on the way
    // (each retried after its backoff), and repairs that waited for the pass to end.
    let geometry = node_geometry();
    let rate: u64 = 200_000_000;
    let limits = fixed_rate(rate);
    for n in [1, 4] {
        let mut cfg = SimConfig::node_like(171, n, 256 << 20, geometry, limits);
        let lossless = check(cfg.clone());
        // Nobody reports loss: no repair, and no parity ahead of NACKs either.
        assert_eq!(
            lossless.repair_units + lossless.xor_units + lossless.parity_units,
            0
        );
        cfg.data_faults = LinkFaults::lossy(0.05);
        let lossy = check(cfg);
        let ratio = loss_cost(&format!("{n} receivers"), &lossless, &lossy);
        assert_eq!(
            lossy.repair_denied, 0,
            "{n} receivers: an honest member's repairs were refused"
        );
        assert!(ratio <= 1.10, "{n} receivers: 5 % loss took {ratio:.3}x");
    }
}

#[test]
fn a_receiver_that_overflows_in_slow_start_is_mended_at_the_link_s_pace_not_its_budget_s() {
    // One receiver taking 300 MB/s from a 32 MiB buffer, `--rate auto` from 1 GB/s, 5 % loss
    // on the way. At these seeds slow start fills the buffer before the receiver's first
    // notice is back, and its socket drops a few per cent of the object on top of the
    // link's 5 %. That is more than the 1/18 of what was sent that a member could ask for at
    // once; the rest came from its bucket, at 1/32 of the rate (200,000-450,000 units
    // refused): 0.83-0.98 s against 0.46-0.49 s lossless (1.82-2.02x); 1.05-1.07x now that
    // the allowance follows the loss its notices report.
    for seed in [2, 5, 10, 11] {
        let ratio = paced_loss_cost(seed, 1, 0.05);
        assert!(ratio <= 1.25, "seed {seed}: 5 % loss took {ratio:.3}x");
    }
}

#[test]
fn ten_percent_loss_costs_its_repairs_and_no_wait_for_a_budget() {
    // 10 % loss needs 11 % of what is sent again: twice the 1/18 a member could ask for at
    // once, and the rest came from its bucket at 1/32 of the rate. One receiver at a fixed
    // 200 MB/s: 1.84 s against 0.68 s lossless (2.69x); four where the receivers set the
    // pace: 0.87 s against 0.47 s (1.85x). Now 1.11x and 1.08x.
    let mut cfg = SimConfig::node_like(1, 1, 128 << 20, node_geometry(), fixed_rate(200_000_000));
    let lossless = check(cfg.clone());
    cfg.data_faults = LinkFaults::lossy(0.10);
    let lossy = check(cfg);
    let fixed = loss_cost("one, fixed rate", &lossless, &lossy);
    assert!(fixed <= 1.25, "one, fixed rate: 10 % loss took {fixed:.3}x");
    let paced = paced_loss_cost(1, 4, 0.10);
    assert!(paced <= 1.25, "four, paced: 10 % loss took {paced:.3}x");
}

#[test]
fn five_percent_loss_where_the_receivers_set_the_pace_costs_little_more_than_none() {
    // Four receivers taking 300 MB/s each from a 32 MiB buffer, `--rate auto` from 1 GB/s:
    // the receivers set the pace, with a queue in their sockets (70-80 ms after slow start
    // filled them). Counted into the round trips the server measured, that queue made the
    // GRTT 70 ms for the whole session: after the pass, when the buffers had drained and a
    // round trip took 0.2 ms, each round of repairs still waited 70 ms, and early NACKs were
    // retried on the 2 ms GRTT of the start, behind repairs still queued in the socket (each
    // re-asked unit charged again, until the repair budget refused 9,830-25,605 units). 5 %
    // loss took 1.38-1.60x the lossless time at seeds 1-3 (1.03-1.05x now): the receivers
    // measure their own socket's queue, leave it out of the round trips they report and wait
    // it out themselves before asking again.
    for seed in 1..=3 {
        let ratio = paced_loss_cost(seed, 4, 0.05);
        assert!(ratio <= 1.25, "seed {seed}: 5 % loss took {ratio:.3}x");
    }
}
