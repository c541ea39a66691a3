//! Split mode end to end, across hosts that carry no multicast: a server and members in their
//! own network namespaces on a bridge (common/netns.rs), every member namespace dropping all
//! multicast and 1 % of the UDP it receives. Three zones of two members each; every member must
//! end with the file byte-identical, and none may have tried multicast. A second run kills a
//! member mid-transfer: the server times it out, plans without it, and the others complete.
//!
//! Root only (elsewhere skipped with the reason, failed under CI). Every child is bounded by
//! its own flags (`--timeout`, `--max-wait`, `--deadline`) and killed by the test at a deadline.

mod common;

use common::netns::{namespaces, Lab, Node};
use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const CONTROL_PORT: &str = "47100";

struct Setup {
    lab: Lab,
    server: Node,
    members: Vec<(Node, u16)>,
}

/// A server and `zones` x 2 members on one bridge; members ban multicast and lose 1 %.
fn setup(tag: &str, net: u8, zones: u16) -> Setup {
    let mut lab = Lab::new(tag, net);
    let br = lab.add_bridge();
    let server = lab.add_node("srv", br);
    lab.drop_multicast(&server);
    let mut members = Vec::new();
    for z in 0..zones {
        for m in 0..2 {
            let node = lab.add_node(&format!("z{z}m{m}"), br);
            lab.drop_multicast(&node);
            lab.drop_udp(&node, 10);
            members.push((node, z));
        }
    }
    Setup {
        lab,
        server,
        members,
    }
}

fn serve(s: &Setup, dir: &Path, src: &Path, rate: &str) -> Proc {
    let members = s.members.len().to_string();
    let iface = s.server.addr.to_string();
    s.lab.spawn(
        &s.server,
        dir,
        "server",
        [
            "serve",
            src.to_str().expect("utf-8 path"),
            "--split",
            "--iface",
            &iface,
            "--control-port",
            CONTROL_PORT,
            "--rate",
            rate,
            "--min-receivers",
            &members,
            "--max-wait",
            "20",
            "--deadline",
            "60",
            "--receiver-timeout",
            "2",
            "--json",
        ],
    )
}

fn receive(s: &Setup, dir: &Path, i: usize) -> (Proc, PathBuf) {
    let (node, zone) = &s.members[i];
    let out = dir.join(format!("member-{i}.bin"));
    let server = format!("{}:{CONTROL_PORT}", s.server.addr);
    let p = s.lab.spawn(
        node,
        dir,
        &format!("member-{i}"),
        [
            "receive".to_string(),
            "--server".into(),
            server,
            "--zone".into(),
            zone.to_string(),
            "--iface".into(),
            node.addr.to_string(),
            "--out".into(),
            out.to_str().expect("utf-8 path").into(),
            "--timeout".into(),
            "20".into(),
            "--json".into(),
        ],
    );
    (p, out)
}

fn assert_clean(made: &[String]) {
    let left = namespaces();
    assert!(
        made.iter().all(|n| !left.contains(n)),
        "namespaces left behind: {left:?}"
    );
}

#[test]
fn three_zones_without_multicast_under_loss_get_identical_copies() {
    if !can_run(Lab::skip_reason()) {
        return;
    }
    let dir = Scratch::new("zones");
    let src = dir.path("sample.bin");
    write_sample(&src, (24 << 20) + 4321, 51);
    let s = setup("sz", 93, 3);
    let made = s.lab.namespaces().to_vec();
    let mut members: Vec<(Proc, PathBuf)> = (0..s.members.len())
        .map(|i| receive(&s, &dir.0, i))
        .collect();
    let mut server = serve(&s, &dir.0, &src, "40M");
    server.expect_code(Duration::from_secs(70), 0);
    for (p, _) in &mut members {
        p.expect_code(Duration::from_secs(20), 0);
    }
    let v = server.json();
    eprintln!("server summary: {v}");
    assert_eq!(v["result"], "complete", "{v}");
    let receivers = v["receivers"].as_array().expect("receivers");
    assert_eq!(receivers.len(), 6, "{v}");
    assert!(receivers.iter().all(|r| r["complete"] == true), "{v}");
    let mut forwarded = 0;
    for (i, (p, out)) in members.iter().enumerate() {
        assert_identical(&src, out);
        let j = p.json();
        assert_eq!(j["blocks_failed"], 0, "member {i}: {j}");
        forwarded += j["forwarded"].as_u64().expect("forwarded");
        // Not one multicast datagram was sent or received.
        assert_eq!(s.lab.multicast_dropped(&s.members[i].0), 0, "member {i}");
    }
    assert_eq!(s.lab.multicast_dropped(&s.server), 0, "server");
    // The members carried the copies: the server sent each unit about once, not six times.
    let units = v["data_units"].as_u64().expect("data units");
    let object_units = (src.metadata().expect("src").len()).div_ceil(1400);
    assert!(
        units < object_units * 2,
        "server sent {units} data units for {object_units}"
    );
    assert!(
        forwarded >= object_units * 5,
        "members forwarded {forwarded}"
    );
    drop(members);
    drop(server);
    drop(s);
    assert_clean(&made);
}

#[test]
fn a_member_killed_mid_transfer_is_planned_around() {
    if !can_run(Lab::skip_reason()) {
        return;
    }
    let dir = Scratch::new("kill");
    let src = dir.path("sample.bin");
    write_sample(&src, 24 << 20, 52);
    let s = setup("sk", 94, 3);
    let made = s.lab.namespaces().to_vec();
    let mut members: Vec<(Proc, PathBuf)> = (0..s.members.len())
        .map(|i| receive(&s, &dir.0, i))
        .collect();
    let mut server = serve(&s, &dir.0, &src, "20M");
    // Once the victim holds data 4 MiB in (a sixth of the file), it dies.
    let victim = 2;
    {
        let (p, out) = &mut members[victim];
        wait_until(
            Duration::from_secs(30),
            "the victim to receive data",
            || {
                p.assert_running();
                has_data_at(out, 4 << 20)
            },
        );
        p.kill();
    }
    server.expect_code(Duration::from_secs(70), 0);
    let v = server.json();
    eprintln!("server summary: {v}");
    for (i, (p, out)) in members.iter_mut().enumerate() {
        if i == victim {
            continue;
        }
        p.expect_code(Duration::from_secs(20), 0);
        assert_identical(&src, out);
    }
    assert_eq!(v["result"], "complete", "{v}");
    let receivers = v["receivers"].as_array().expect("receivers");
    assert_eq!(receivers.len(), 5, "the dead member is timed out: {v}");
    assert!(receivers.iter().all(|r| r["complete"] == true), "{v}");
    drop(members);
    drop(server);
    drop(s);
    assert_clean(&made);
}
