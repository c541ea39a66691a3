//! The AF_XDP datapath end to end: the real binary in network namespaces (veth pairs to a
//! bridge, native XDP on the node's veth), byte-identical copies with `--datapath xdp`
//! lossless and at 1 % loss, and the fall-back where native XDP is refused. Root only;
//! elsewhere skipped with the reason (failed under CI).

mod common;

use common::netns::{Lab, Node};
use common::*;
use std::path::Path;
use std::time::Duration;

const SERVE: [&str; 8] = [
    "--rate",
    "50M",
    "--min-receivers",
    "2",
    "--max-wait",
    "10",
    "--deadline",
    "40",
];

/// The receiver's JSON summary, after checking its copy of `src` at `out` is identical and
/// that it came through AF_XDP.
fn check_xdp_copy(p: &Proc, src: &Path, out: &Path) -> serde_json::Value {
    assert_identical(src, out);
    let summary = p
        .json_lines()
        .into_iter()
        .find(|l| l["event"] == "summary")
        .unwrap_or_else(|| panic!("no summary: {}", p.stdout()));
    assert_eq!(summary["datapath"], "xdp", "{summary}");
    // Every data unit came through the XSK (frames also carry announces and repairs).
    let frames = summary["xdp_frames"].as_u64().unwrap();
    let units = summary["data_units"].as_u64().unwrap();
    assert!(
        frames >= units && units > 0,
        "{frames} frames, {units} units"
    );
    summary
}

fn lab_with_two_receivers(tag: &str, net: u8) -> (Lab, Node, Node, Node) {
    let mut lab = Lab::new(tag, net);
    let br = lab.add_bridge();
    let srv = lab.add_node("srv", br);
    let clean = lab.add_node("r0", br);
    let lossy = lab.add_node("r1", br);
    (lab, srv, clean, lossy)
}

/// Two receivers on XDP, one lossless (its kernel drops every datagram to the group, so only
/// the XDP path can deliver), one losing 1 % on the way: both copies identical.
#[test]
fn receivers_on_xdp_get_identical_copies_lossless_and_at_1_percent_loss() {
    if !can_run(Lab::skip_reason()) {
        return;
    }
    let dir = Scratch::new("xdp-rx");
    let (lab, srv, clean, lossy) = lab_with_two_receivers("xrx", 95);
    let group = format!("239.255.95.{}:47100", 1 + std::process::id() % 250);
    lab.ban_group_input(&clean, &group);
    lab.segment_leaving(&srv);
    lab.drop_udp_toward(&lossy, 10);
    let src = dir.path("sample.bin");
    write_sample(&src, 8 << 20, 19);
    let xdp = ["--datapath", "xdp", "--timeout", "30"];
    let mut r0 = lab.receive(&clean, &dir.0, "r0", &group, &dir.path("r0.bin"), &xdp);
    let mut r1 = lab.receive(&lossy, &dir.0, "r1", &group, &dir.path("r1.bin"), &xdp);
    let mut s = lab.serve(&srv, &dir.0, &src, &group, &SERVE);
    s.expect_code(Duration::from_secs(60), 0);
    r0.expect_code(Duration::from_secs(10), 0);
    r1.expect_code(Duration::from_secs(10), 0);
    check_xdp_copy(&r0, &src, &dir.path("r0.bin"));
    let lossy_summary = check_xdp_copy(&r1, &src, &dir.path("r1.bin"));
    let dropped = lab.dropped_toward(&lossy);
    eprintln!("1 % loss: {dropped} datagrams dropped toward r1");
    assert!(dropped > 0, "the 1 % loss dropped nothing");
    assert!(
        lossy_summary["nacks"].as_u64().unwrap() > 0,
        "the lossy receiver asked for nothing: {lossy_summary}"
    );
}

/// The server's first pass as AF_XDP frames built from the mapped file (headers built once,
/// multicast MAC from the group): a receiver on sockets losing 1 % and one on XDP both get
/// identical copies, and the server says its units left as frames.
#[test]
fn a_server_on_xdp_reaches_socket_and_xdp_receivers() {
    if !can_run(Lab::skip_reason()) {
        return;
    }
    let dir = Scratch::new("xdp-tx");
    let (lab, srv, on_socket, on_xdp) = lab_with_two_receivers("xtx", 96);
    let group = format!("239.255.96.{}:47200", 1 + std::process::id() % 250);
    lab.drop_udp(&on_socket, 10);
    let src = dir.path("sample.bin");
    write_sample(&src, 8 << 20, 23);
    let r0_out = dir.path("r0.bin");
    let mut r0 = lab.receive(
        &on_socket,
        &dir.0,
        "r0",
        &group,
        &r0_out,
        &["--timeout", "30"],
    );
    let xdp = ["--datapath", "xdp", "--timeout", "30"];
    let mut r1 = lab.receive(&on_xdp, &dir.0, "r1", &group, &dir.path("r1.bin"), &xdp);
    let mut extra = SERVE.to_vec();
    extra.extend(["--datapath", "xdp"]);
    let mut s = lab.serve(&srv, &dir.0, &src, &group, &extra);
    s.expect_code(Duration::from_secs(60), 0);
    r0.expect_code(Duration::from_secs(10), 0);
    r1.expect_code(Duration::from_secs(10), 0);
    assert_identical(&src, &r0_out);
    check_xdp_copy(&r1, &src, &dir.path("r1.bin"));
    let served = s.json();
    assert_eq!(served["datapath"], "xdp", "{served}");
    // Every first-pass unit left as a frame (or was dropped for want of one, and repaired):
    // 8 MiB in 1400-byte units is at least 5,992 of them.
    let units = (8u64 << 20).div_ceil(1400);
    let frames = served["xdp_frames"].as_u64().unwrap();
    let dropped = served["xdp_dropped"].as_u64().unwrap();
    eprintln!("server on xdp: {frames} frames, {dropped} dropped, {units} units in the file");
    assert!(frames > 0 && frames + dropped >= units, "{served}");
    let r0_summary = r0.json();
    assert_eq!(r0_summary["datapath"], "socket");
    assert!(r0_summary["nacks"].as_u64().unwrap() > 0, "{r0_summary}");
}

/// Loopback has no native XDP: `--datapath auto` says so and receives on sockets, while
/// `--datapath xdp` (receive or serve) exits at once with the reason (exit 5, network).
#[test]
fn without_native_xdp_auto_falls_back_and_xdp_fails_clearly() {
    if !can_run(Lab::skip_reason()) {
        return;
    }
    let dir = Scratch::new("xdp-lo");
    let mut lab = Lab::new("xlo", 97);
    let br = lab.add_bridge();
    let node = lab.add_node("lo", br);
    // Everything on the node's loopback (its own namespace): server and receivers.
    let on_lo = Node {
        addr: std::net::Ipv4Addr::LOCALHOST,
        iface: "lo",
        ..node
    };
    let group = format!("239.255.97.{}:47300", 1 + std::process::id() % 250);
    let src = dir.path("sample.bin");
    write_sample(&src, 2 << 20, 29);

    // xdp asked for: a clear failure, before any packet.
    let mut rx_xdp = lab.receive(
        &on_lo,
        &dir.0,
        "rx-xdp",
        &group,
        &dir.path("never.bin"),
        &["--datapath", "xdp", "--timeout", "20"],
    );
    rx_xdp.expect_code(Duration::from_secs(10), 5);
    let why = rx_xdp.stderr();
    assert!(
        why.contains("--datapath xdp cannot receive on 127.0.0.1") && why.contains("no native XDP"),
        "{why}"
    );
    let mut srv_xdp = lab.serve(&on_lo, &dir.0, &src, &group, &["--datapath", "xdp"]);
    srv_xdp.expect_code(Duration::from_secs(10), 5);
    let why = srv_xdp.stderr();
    assert!(
        why.contains("--datapath xdp cannot send on 127.0.0.1") && why.contains("no native XDP"),
        "{why}"
    );

    // auto: falls back with a message, and the transfer completes on sockets.
    let out = dir.path("auto.bin");
    let auto = ["--datapath", "auto", "--timeout", "20"];
    let mut r = lab.receive(&on_lo, &dir.0, "rx-auto", &group, &out, &auto);
    let mut extra = SERVE.to_vec();
    extra[3] = "1"; // --min-receivers
    extra.extend(["--datapath", "auto"]);
    let mut s = lab.serve(&on_lo, &dir.0, &src, &group, &extra);
    s.expect_code(Duration::from_secs(60), 0);
    r.expect_code(Duration::from_secs(10), 0);
    assert_identical(&src, &out);
    assert_eq!(r.json()["datapath"], "socket");
    assert_eq!(s.json()["datapath"], "socket");
    for p in [&r, &s] {
        let said = p.stderr();
        assert!(
            said.contains("datapath auto: socket (XDP not possible on 127.0.0.1")
                && said.contains("no native XDP"),
            "{said}"
        );
    }
}

/// A relay whose upstream side is on XDP forwards a copy that arrives whole downstream.
#[test]
fn a_relay_receives_its_upstream_over_xdp() {
    if !can_run(Lab::skip_reason()) {
        return;
    }
    let dir = Scratch::new("xdp-relay");
    let mut lab = Lab::new("xrl", 98);
    let (up, down) = (lab.add_bridge(), lab.add_bridge());
    let srv = lab.add_node("srv", up);
    let relay = lab.add_node("rly", up);
    let relay_down = lab.attach(&relay, down);
    let rcv = lab.add_node("rcv", down);
    let pid = std::process::id();
    let upstream = format!("239.255.98.1:{}", 47_400 + pid % 100);
    let downstream = format!("239.255.98.2:{}", 47_600 + pid % 100);
    let src = dir.path("sample.bin");
    write_sample(&src, 4 << 20, 31);
    let out = dir.path("rcv.bin");
    let mut r = lab.receive(&rcv, &dir.0, "rcv", &downstream, &out, &["--timeout", "30"]);
    let cache = dir.path("cache.bin").display().to_string();
    let mut relay_proc = lab.spawn(
        &relay,
        &dir.0,
        "relay",
        [
            "relay",
            "--upstream",
            &upstream,
            "--iface",
            &relay.addr.to_string(),
            "--downstream",
            &downstream,
            "--downstream-iface",
            &relay_down.addr.to_string(),
            "--cache",
            &cache,
            "--datapath",
            "xdp",
            "--rate",
            "50M",
            "--max-wait",
            "20",
            "--timeout",
            "30",
            "--json",
        ],
    );
    let mut extra = SERVE.to_vec();
    extra[3] = "1"; // --min-receivers: the relay
    let mut s = lab.serve(&srv, &dir.0, &src, &upstream, &extra);
    s.expect_code(Duration::from_secs(60), 0);
    r.expect_code(Duration::from_secs(60), 0);
    relay_proc.expect_code(Duration::from_secs(30), 0);
    assert_identical(&src, &out);
    let summary = relay_proc.json();
    assert_eq!(summary["upstream"]["datapath"], "xdp", "{summary}");
    assert!(
        summary["upstream"]["xdp_frames"].as_u64().unwrap() > 0,
        "{summary}"
    );
}

/// A closed group on XDP both ways: the server seals each unit into its frame, the receiver
/// opens it in place in the UMEM; the copy is whole and every datagram opened.
#[test]
fn a_closed_group_runs_on_xdp_both_ways() {
    if !can_run(Lab::skip_reason()) {
        return;
    }
    let dir = Scratch::new("xdp-sealed");
    let mut lab = Lab::new("xsl", 99);
    let br = lab.add_bridge();
    let srv = lab.add_node("srv", br);
    let rcv = lab.add_node("rcv", br);
    let secret = dir.path("group.secret");
    let mut keygen = Proc::spawn(
        &dir.0,
        "keygen",
        [
            "keygen".into(),
            "--secret".into(),
            secret.clone().into_os_string(),
        ],
    );
    keygen.expect_code(Duration::from_secs(10), 0);
    let secret = secret.display().to_string();
    let group = format!("239.255.99.{}:47500", 1 + std::process::id() % 250);
    let src = dir.path("sample.bin");
    write_sample(&src, 4 << 20, 37);
    let out = dir.path("rcv.bin");
    let rx_args = ["--datapath", "xdp", "--timeout", "30", "--secret", &secret];
    let mut r = lab.receive(&rcv, &dir.0, "rcv", &group, &out, &rx_args);
    let mut extra = SERVE.to_vec();
    extra[3] = "1"; // --min-receivers
    extra.extend(["--datapath", "xdp", "--secret", &secret]);
    let mut s = lab.serve(&srv, &dir.0, &src, &group, &extra);
    s.expect_code(Duration::from_secs(60), 0);
    r.expect_code(Duration::from_secs(10), 0);
    let summary = check_xdp_copy(&r, &src, &out);
    let sealed = &summary["sealed"];
    assert!(sealed["opened"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(sealed["dropped"], 0, "{summary}");
    let served = s.json();
    assert_eq!(served["datapath"], "xdp", "{served}");
    assert!(served["xdp_frames"].as_u64().unwrap() > 0, "{served}");
}
