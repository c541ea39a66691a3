//! Relays across hosts: network namespaces on four bridges (an upstream segment and three
//! receiver groups), real multicast on each segment, `blockcast relay` between them, loss
//! injected with nftables, and a relay killed mid-transfer whose receivers fail over to a
//! standby relay. Root only (elsewhere skipped with the reason, failed under CI).

mod common;

use common::netns::{Lab, Node};
use common::*;
use std::time::Duration;

/// Blocks the receiver reported verified so far (its `--json` progress events).
fn verified_blocks(p: &Proc) -> u64 {
    p.json_lines()
        .iter()
        .filter(|v| v["event"] == "progress")
        .filter_map(|v| v["blocks_verified"].as_u64())
        .max()
        .unwrap_or(0)
}

#[test]
fn relays_fan_out_to_three_groups_and_a_dead_relay_is_replaced() {
    if !can_run(Lab::skip_reason()) {
        return;
    }
    let dir = Scratch::new("relay");
    let mut lab = Lab::new("rly", 93);
    let up = lab.add_bridge();
    let groups = [lab.add_bridge(), lab.add_bridge(), lab.add_bridge()];
    let srv = lab.add_node("srv", up);
    // Relays: one per group, plus a standby for group 0 (both on its segment).
    let mut relay_sides: Vec<(Node, Node)> = Vec::new();
    for (name, g) in [("r0", 0), ("r0b", 0), ("r1", 1), ("r2", 2)] {
        let n = lab.add_node(name, up);
        let down = lab.attach(&n, groups[g]);
        relay_sides.push((n, down));
    }
    // Receivers: two in group 0 (the one whose relay dies), one in each other group.
    let rcv: Vec<(Node, usize)> = [("a1", 0), ("a2", 0), ("b1", 1), ("c1", 2)]
        .into_iter()
        .map(|(name, g)| (lab.add_node(name, groups[g]), g))
        .collect();
    // 1 % loss into every receiver and into one relay's upstream side.
    for (n, _) in &rcv {
        lab.drop_udp(n, 10);
    }
    lab.drop_udp(&relay_sides[2].0, 10);

    let src = dir.path("sample.bin");
    write_sample(&src, 24 << 20, 93);
    let pid = std::process::id();
    let g = |i: u32| format!("239.255.93.{}:{}", 1 + i, 46_000 + pid % 1000);
    let upstream = g(0);
    // Group 0's primary relay sends on g(1), its standby on g(4); groups 1 and 2 on g(2), g(3).
    let downstream = [g(1), g(4), g(2), g(3)];

    let mut receivers: Vec<Proc> = rcv
        .iter()
        .enumerate()
        .map(|(i, (n, group))| {
            let out = dir.path(&format!("out{i}.bin"));
            let mut extra = vec!["--timeout", "40"];
            if *group == 0 {
                extra.extend(["--fallback", &downstream[1], "--failover-after", "1"]);
            }
            let name = format!("rcv{i}");
            lab.receive(
                n,
                &dir.0,
                &name,
                &downstream[[0, 2, 3][*group]],
                &out,
                &extra,
            )
        })
        .collect();
    let mut relays: Vec<Proc> = relay_sides
        .iter()
        .enumerate()
        .map(|(i, (n, down))| {
            // The standby waits for a receiver (up to a minute) before it sends anything.
            let (min, wait) = match i {
                0 => ("2", "20"),
                1 => ("1", "60"),
                _ => ("1", "20"),
            };
            lab.spawn(
                n,
                &dir.0,
                &format!("relay{i}"),
                [
                    "relay",
                    "--upstream",
                    &upstream,
                    "--iface",
                    &n.addr.to_string(),
                    "--downstream",
                    &downstream[i],
                    "--downstream-iface",
                    &down.addr.to_string(),
                    "--cache",
                    &dir.path(&format!("cache{i}.bin")).display().to_string(),
                    "--min-receivers",
                    min,
                    "--max-wait",
                    wait,
                    "--rate",
                    "8M",
                    "--timeout",
                    "40",
                    "--json",
                ],
            )
        })
        .collect();
    let extra = [
        "--min-receivers",
        "4",
        "--max-wait",
        "20",
        "--rate",
        "30M",
        "--deadline",
        "90",
    ];
    let mut server = lab.serve(&srv, &dir.0, &src, &upstream, &extra);
    // Kill group 0's relay once its receivers hold part of the object, not all.
    let blocks = (24u64 << 20).div_ceil(1400 * 749);
    wait_until(
        Duration::from_secs(40),
        "group 0 to be partly received",
        || verified_blocks(&receivers[0]) >= blocks / 4,
    );
    relays[0].kill();
    let at_kill = verified_blocks(&receivers[0]);
    assert!(
        at_kill < blocks,
        "the relay died after its receivers were done ({at_kill}/{blocks})"
    );

    for (i, r) in receivers.iter_mut().enumerate() {
        r.expect_code(Duration::from_secs(60), 0);
        assert_identical(&src, &dir.path(&format!("out{i}.bin")));
    }
    // Every copy came through a relay: the surviving relays and the standby finish too, and
    // their caches are verified copies.
    for (i, r) in relays.iter_mut().enumerate().skip(1) {
        r.expect_code(Duration::from_secs(60), 0);
        assert_identical(&src, &dir.path(&format!("cache{i}.bin")));
    }
    // The standby served group 0's receivers (they failed over to it).
    let standby = relays[1].json();
    let complete = standby["downstream"][0]["receivers"]
        .as_array()
        .expect("the standby's downstream receivers")
        .iter()
        .filter(|r| r["complete"] == true)
        .count();
    assert!(
        complete >= 2,
        "the standby did not complete group 0: {standby}"
    );
    // The server drops the dead relay when it times out, then ends complete.
    server.expect_code(Duration::from_secs(60), 0);
}

/// A relay's mistakes get one clear line and their exit code: its upstream group named as a
/// downstream (it would feed itself), a downstream that is not multicast, an unknown
/// interface, no upstream server within --timeout.
#[test]
fn relay_mistakes_are_refused_with_their_exit_codes() {
    let dir = Scratch::new("relay-mistakes");
    let up = group(90, 30_000, 0);
    let other = group(90, 30_000, 1);
    let cache = dir.path("cache.bin").display().to_string();
    let cases: [(&[&str], i32, &str); 4] = [
        (
            &["--iface", IFACE, "--downstream", &up],
            2,
            "is the upstream group",
        ),
        (
            &["--iface", IFACE, "--downstream", "10.0.0.1:9000"],
            2,
            "not a multicast address",
        ),
        (
            &["--iface", "nosuch0", "--downstream", &other],
            5,
            "no such interface",
        ),
        (
            &["--iface", IFACE, "--downstream", &other, "--timeout", "0.5"],
            6,
            "no server heard",
        ),
    ];
    for (args, code, says) in cases {
        let out = std::process::Command::new(BIN)
            .args(["relay", "--upstream", &up, "--cache", &cache])
            .args(args)
            .output()
            .expect("run blockcast relay");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?} should say {says:?}: {err}");
    }
}
