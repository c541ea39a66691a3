//! Content on request: `blockcast origin` with a catalog of several objects, `fetch` and
//! `agent` against it. Across network namespaces (root; elsewhere skipped with the reason,
//! failed under CI): requests batched into one session, two objects in two concurrent
//! sessions, an agent that picks up a new file and resumes after SIGKILL. On loopback: the
//! metrics endpoint read by `promtool check metrics`, a request storm answered at a bounded
//! rate, an unknown name, a catalog file that disappears mid-session.

mod common;

use common::netns::{Lab, Node};
use common::*;
use std::ffi::OsString;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

/// Writes a sample into the catalog under a hidden name, then renames it: the origin never
/// sees it half-written.
fn publish(catalog: &Path, name: &str, size: u64, seed: u64) {
    let tmp = catalog.join(format!(".{}.tmp", name.replace('/', "_")));
    write_sample(&tmp, size, seed);
    let to = catalog.join(name);
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::rename(&tmp, &to).unwrap();
}

/// The NDJSON events in `path` so far (whole lines only).
fn events(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn of_kind<'a>(ev: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    ev.iter().filter(|e| e["event"] == kind).collect()
}

/// The catalog's latest object count in the origin's events.
fn catalog_objects(ev: &[serde_json::Value]) -> u64 {
    of_kind(ev, "catalog")
        .last()
        .and_then(|e| e["objects"].as_u64())
        .unwrap_or(0)
}

/// `blockcast origin` in `node` on the catalog, listening on port 9100 of its address, groups
/// from 239.255.<octet>.0/24, events into `origin.ndjson`.
fn origin_args(
    catalog: &Path,
    iface: &str,
    listen: &str,
    octet: u8,
    events: &Path,
    extra: &[&str],
) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["origin".into(), "--catalog".into(), catalog.into()];
    for x in [
        "--iface",
        iface,
        "--listen",
        listen,
        "--groups",
        &format!("239.255.{octet}.0/24"),
        "--settle",
        "0",
        "--rescan",
        "0.2",
        "--no-hash-cache",
        "--json",
    ] {
        a.push(x.into());
    }
    a.push("--events".into());
    a.push(events.into());
    a.extend(extra.iter().map(OsString::from));
    a
}

/// An origin started in `srv` of `lab` on a catalog of `files` (name, size, seed) under `dir`,
/// once its catalog is hashed: the process, the catalog directory, its events file and its
/// listen address.
fn origin_in(
    lab: &Lab,
    srv: &Node,
    dir: &Scratch,
    files: &[(&str, u64, u64)],
    octet: u8,
    extra: &[&str],
) -> (Proc, std::path::PathBuf, std::path::PathBuf, String) {
    let catalog = dir.path("catalog");
    std::fs::create_dir_all(&catalog).unwrap();
    for (name, size, seed) in files {
        publish(&catalog, name, *size, *seed);
    }
    let ev_path = dir.path("origin.ndjson");
    let listen = format!("{}:9100", srv.addr);
    let args = origin_args(
        &catalog,
        &srv.addr.to_string(),
        &listen,
        octet,
        &ev_path,
        extra,
    );
    let mut origin = lab.spawn(srv, &dir.0, "origin", args);
    wait_until(Duration::from_secs(30), "the catalog to be hashed", || {
        origin.assert_running();
        catalog_objects(&events(&ev_path)) == files.len() as u64
    });
    (origin, catalog, ev_path, listen)
}

fn fetch_in(
    lab: &Lab,
    node: &Node,
    dir: &Path,
    name: &str,
    origin: &str,
    out: &Path,
    objects: &[&str],
) -> Proc {
    let mut a: Vec<OsString> = vec!["fetch".into()];
    a.extend(objects.iter().map(OsString::from));
    for x in [
        "--origin",
        origin,
        "--iface",
        &node.addr.to_string(),
        "--json",
    ] {
        a.push(x.into());
    }
    a.push("--out".into());
    a.push(out.into());
    lab.spawn(node, dir, name, a)
}

#[test]
fn three_fetches_in_the_window_share_one_session_and_two_objects_run_at_once() {
    if !can_run(Lab::skip_reason()) {
        return;
    }
    let dir = Scratch::new("batch");
    let mut lab = Lab::new("orb", 94);
    let br = lab.add_bridge();
    let srv = lab.add_node("srv", br);
    let clients: Vec<Node> = ["c1", "c2", "c3"]
        .iter()
        .map(|n| lab.add_node(n, br))
        .collect();
    let (mut origin, catalog, ev_path, listen) = origin_in(
        &lab,
        &srv,
        &dir,
        &[
            ("a.bin", 24 << 20, 1),
            ("sub/b.bin", 16 << 20, 2),
            ("c.txt", 5_000, 3),
        ],
        94,
        &["--batch-window", "3", "--rate", "60M"],
    );
    // Three fetches of a.bin within the window, and one of b.bin beside them.
    let outs: Vec<_> = (0..3).map(|i| dir.path(&format!("out{i}"))).collect();
    let mut fetches: Vec<Proc> = clients
        .iter()
        .zip(&outs)
        .enumerate()
        .map(|(i, (c, out))| {
            fetch_in(
                &lab,
                c,
                &dir.0,
                &format!("fetch{i}"),
                &listen,
                out,
                &["a.bin"],
            )
        })
        .collect();
    let out_b = dir.path("out_b");
    fetches.push(fetch_in(
        &lab,
        &clients[0],
        &dir.0,
        "fetch_b",
        &listen,
        &out_b,
        &["sub/b.bin"],
    ));
    // An unknown name is answered at once, beside them.
    let mut unknown = fetch_in(
        &lab,
        &clients[1],
        &dir.0,
        "unknown",
        &listen,
        &dir.path("none"),
        &["nope.iso"],
    );
    unknown.expect_code(Duration::from_secs(10), 3);
    assert!(
        unknown.stderr().contains("not in the catalog"),
        "{}",
        unknown.stderr()
    );
    for f in &mut fetches {
        f.expect_code(Duration::from_secs(90), 0);
    }
    for out in &outs {
        assert_identical(&catalog.join("a.bin"), &out.join("a.bin"));
        assert!(
            !out.join(".blockcast-partial").exists(),
            "staging left behind"
        );
    }
    assert_identical(&catalog.join("sub/b.bin"), &out_b.join("sub/b.bin"));
    // Each fetch names the session it came from: one for a.bin, another for b.bin.
    let sessions: Vec<u64> = fetches[..3]
        .iter()
        .map(|f| {
            f.json()["objects"][0]["session"]
                .as_u64()
                .expect("a session")
        })
        .collect();
    assert!(sessions.iter().all(|s| *s == sessions[0]), "{sessions:?}");
    let b_session = fetches[3].json()["objects"][0]["session"].as_u64().unwrap();
    assert_ne!(b_session, sessions[0]);
    origin.interrupt();
    origin.expect_code(Duration::from_secs(20), 0);
    let ev = events(&ev_path);
    let started = of_kind(&ev, "session_started");
    assert_eq!(
        started.iter().filter(|e| e["object"] == "a.bin").count(),
        1,
        "one session for a.bin: {started:?}"
    );
    let ended = of_kind(&ev, "session_ended");
    let a_end = ended
        .iter()
        .find(|e| e["object"] == "a.bin")
        .expect("a.bin's session ended");
    assert_eq!(a_end["receivers"], 3, "{a_end}");
    assert_eq!(a_end["complete"], 3, "{a_end}");
    // Concurrent: both sessions started before either ended (the log is in order).
    let pos = |kind: &str, obj: &str| {
        ev.iter()
            .position(|e| e["event"] == kind && e["object"] == obj)
            .unwrap_or_else(|| panic!("no {kind} for {obj}"))
    };
    let last_start = pos("session_started", "a.bin").max(pos("session_started", "sub/b.bin"));
    let first_end = pos("session_ended", "a.bin").min(pos("session_ended", "sub/b.bin"));
    assert!(
        last_start < first_end,
        "the two sessions did not overlap:\n{ev:#?}"
    );
    let summary = origin.json();
    assert_eq!(summary["role"], "origin");
    assert_eq!(summary["sessions"], 2);
    assert_eq!(summary["not_found"], 1);
}

/// The agent's events so far.
fn agent_synced(ev: &[serde_json::Value]) -> Vec<String> {
    of_kind(ev, "object_synced")
        .iter()
        .filter_map(|e| e["object"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn an_agent_picks_up_a_new_file_and_after_sigkill_fetches_only_what_it_lacked() {
    if !can_run(Lab::skip_reason()) {
        return;
    }
    let dir = Scratch::new("agent");
    let mut lab = Lab::new("ora", 95);
    let br = lab.add_bridge();
    let srv = lab.add_node("srv", br);
    let host = lab.add_node("host", br);
    let (mut origin, catalog, ev_path, listen) = origin_in(
        &lab,
        &srv,
        &dir,
        &[
            ("x1.iso", 6 << 20, 11),
            ("img/x2.iso", 6 << 20, 12),
            ("notes.txt", 10_000, 13),
        ],
        95,
        &["--batch-window", "0.1", "--rate", "25M"],
    );
    // The agent's settings in a config file (flags would override them).
    let synced = dir.path("synced");
    let config = dir.path("agent.toml");
    std::fs::write(
        &config,
        format!(
            "origin = \"{listen}\"\niface = \"{}\"\ndir = \"{}\"\nsubscribe = [\"*.iso\", \"img/**\"]\npoll = 0.3\nconcurrency = 1\nhook = \"echo \\\"$BLOCKCAST_OBJECT $BLOCKCAST_BLAKE3\\\" >> {}\"\n",
            host.addr,
            synced.display(),
            dir.path("hook.log").display()
        ),
    )
    .unwrap();
    let agent_ev = dir.path("agent.ndjson");
    let agent_args = |extra: &[&str]| {
        let mut a: Vec<OsString> = vec!["agent".into(), "--config".into(), config.clone().into()];
        a.push("--events".into());
        a.push(agent_ev.clone().into());
        a.extend(extra.iter().map(OsString::from));
        a
    };
    let mut agent = lab.spawn(&host, &dir.0, "agent", agent_args(&[]));
    wait_until(Duration::from_secs(60), "x1 and x2 to be synced", || {
        agent.assert_running();
        let s = agent_synced(&events(&agent_ev));
        s.contains(&"x1.iso".to_string()) && s.contains(&"img/x2.iso".to_string())
    });
    // A file added after the agent started is picked up.
    publish(&catalog, "new.iso", 3 << 20, 14);
    wait_until(Duration::from_secs(60), "new.iso to be synced", || {
        agent.assert_running();
        agent_synced(&events(&agent_ev)).contains(&"new.iso".to_string())
    });
    // A large one, killed mid-transfer.
    publish(&catalog, "big.iso", 64 << 20, 15);
    let staging = synced.join(".blockcast-partial");
    wait_until(
        Duration::from_secs(60),
        "big.iso to be partly received",
        || {
            agent.assert_running();
            std::fs::read_dir(&staging)
                .map(|d| {
                    d.flatten()
                        .any(|e| has_data_at(&e.path().join("big.iso"), 8 << 20))
                })
                .unwrap_or(false)
        },
    );
    agent.kill();
    assert!(
        !synced.join("big.iso").exists(),
        "killed after big.iso was whole"
    );
    // Restarted: once everything subscribed is held it exits, and it fetched only big.iso.
    let mut again = lab.spawn(&host, &dir.0, "agent2", agent_args(&["--once", "--json"]));
    again.expect_code(Duration::from_secs(90), 0);
    let summary = again.json();
    assert_eq!(summary["role"], "agent");
    assert_eq!(
        summary["synced"],
        serde_json::json!(["big.iso"]),
        "{summary}"
    );
    assert_eq!(summary["held"], 4, "{summary}");
    for name in ["x1.iso", "img/x2.iso", "new.iso", "big.iso"] {
        assert_identical(&catalog.join(name), &synced.join(name));
    }
    assert!(
        !synced.join("notes.txt").exists(),
        "notes.txt is not subscribed"
    );
    // The origin sent x1 once: nothing held was fetched again.
    let ev = events(&ev_path);
    let sessions_of = |o: &str| {
        of_kind(&ev, "session_started")
            .iter()
            .filter(|e| e["object"] == o)
            .count()
    };
    assert_eq!(sessions_of("x1.iso"), 1);
    assert_eq!(sessions_of("new.iso"), 1);
    // The hook ran once per object.
    let hooks = std::fs::read_to_string(dir.path("hook.log")).unwrap();
    assert_eq!(hooks.lines().count(), 4, "{hooks}");
    assert!(hooks.lines().any(|l| l.starts_with("big.iso ")), "{hooks}");
    origin.interrupt();
    origin.expect_code(Duration::from_secs(20), 0);
}

/// A free TCP port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn loopback_origin(
    dir: &Scratch,
    name: &str,
    catalog: &Path,
    octet: u8,
    extra: &[&str],
) -> (Proc, String, std::path::PathBuf) {
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let ev = dir.path(&format!("{name}.ndjson"));
    let data_port = (20_000 + std::process::id() % 20_000 + u32::from(octet) * 7) as u16;
    let mut args = origin_args(catalog, IFACE, &listen, octet, &ev, extra);
    args.push("--data-port".into());
    args.push(data_port.to_string().into());
    let p = Proc::spawn(&dir.0, name, args);
    (p, listen, ev)
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    r
}

#[test]
fn the_metrics_pass_promtool_and_a_request_storm_is_answered_at_a_bounded_rate() {
    let why = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_none()
        .then(|| {
            "promtool is not installed (Debian package prometheus; .ci/run installs it)".to_string()
        });
    if !can_run(why) {
        return;
    }
    let dir = Scratch::new("metrics");
    let catalog = dir.path("catalog");
    std::fs::create_dir_all(&catalog).unwrap();
    publish(&catalog, "m.bin", 2 << 20, 21);
    let metrics = format!("127.0.0.1:{}", free_port());
    let (mut origin, listen, ev_path) = loopback_origin(
        &dir,
        "origin",
        &catalog,
        (40 + std::process::id() % 50) as u8,
        &[
            "--metrics",
            &metrics,
            "--answers-per-sec",
            "100",
            "--batch-window",
            "0",
        ],
    );
    wait_until(Duration::from_secs(30), "the catalog", || {
        origin.assert_running();
        catalog_objects(&events(&ev_path)) == 1
    });
    // A storm: 20,000 requests for an unknown name, as fast as one socket sends them.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to: SocketAddr = listen.parse().unwrap();
    let mut buf = [0u8; 512];
    let started = Instant::now();
    for i in 0..20_000u64 {
        let p = blockcast_proto::wire::origin::OriginPacket::Request(
            blockcast_proto::wire::origin::RequestRepr {
                request_id: i + 1,
                mode: blockcast_proto::wire::origin::RequestMode::Fetch,
                name: "storm.iso".into(),
            },
        );
        let n = p.emit(&mut buf).unwrap();
        let _ = sock.send_to(&buf[..n], to);
    }
    let sent_for = started.elapsed();
    // Every answer that came (the socket buffer holds far more than can come).
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut answers = 0u64;
    while sock.recv(&mut buf).is_ok() {
        answers += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The burst (256) plus 100 per second for as long as the storm and the drain lasted.
    let bound = 256.0 + 100.0 * elapsed + 1.0;
    assert!(
        (answers as f64) <= bound,
        "{answers} answers in {elapsed:.2} s (sent in {sent_for:?}): more than {bound:.0}"
    );
    assert!(
        answers >= 100,
        "{answers} answers: the storm starved the answers"
    );
    // A real fetch still works after it.
    let mut f = Proc::spawn(
        &dir.0,
        "fetch",
        [
            "fetch", "m.bin", "--origin", &listen, "--iface", IFACE, "--rcvbuf", RCVBUF, "--json",
            "--out",
        ]
        .iter()
        .map(OsString::from)
        .chain([dir.path("out").into_os_string()]),
    );
    f.expect_code(Duration::from_secs(60), 0);
    assert_identical(&catalog.join("m.bin"), &dir.path("out/m.bin"));
    let text = http_get(&metrics, "/metrics");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    assert!(body.contains("blockcast_origin_sessions_total 1"), "{body}");
    let counter = |status: &str| -> f64 {
        let key = format!("blockcast_origin_requests_total{{status=\"{status}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {status} count in\n{body}"))
    };
    // What the origin read of the storm was either answered or dropped unanswered (the
    // kernel drops what overflows its socket buffer before the origin sees it).
    let (limited, not_found) = (counter("rate_limited"), counter("not_found"));
    assert!(limited > 0.0, "the storm never reached the limit");
    // Answered by the time of the scrape: the same bound over the time since the storm began.
    let bound_now = 256.0 + 100.0 * started.elapsed().as_secs_f64() + 1.0;
    assert!(
        not_found <= bound_now,
        "the origin answered {not_found}: more than {bound_now:.0}"
    );
    assert!(
        answers as f64 <= not_found,
        "{answers} answers, {not_found} counted"
    );
    assert!(limited + not_found <= 20_000.0, "{limited} + {not_found}");
    // The real Prometheus tool reads it.
    promtool_check(body);
    origin.interrupt();
    origin.expect_code(Duration::from_secs(20), 0);
}

#[test]
fn a_catalog_file_that_disappears_ends_its_session_and_not_the_others() {
    let dir = Scratch::new("vanish");
    let catalog = dir.path("catalog");
    std::fs::create_dir_all(&catalog).unwrap();
    publish(&catalog, "gone.bin", 48 << 20, 31);
    publish(&catalog, "stays.bin", 12 << 20, 32);
    let (mut origin, listen, ev_path) = loopback_origin(
        &dir,
        "origin",
        &catalog,
        (100 + std::process::id() % 50) as u8,
        &["--rate", "12M", "--batch-window", "0"],
    );
    wait_until(Duration::from_secs(30), "the catalog", || {
        origin.assert_running();
        catalog_objects(&events(&ev_path)) == 2
    });
    let fetch = |name: &str, obj: &str| {
        Proc::spawn(
            &dir.0,
            name,
            [
                "fetch",
                obj,
                "--origin",
                &listen,
                "--iface",
                IFACE,
                "--rcvbuf",
                RCVBUF,
                "--request-timeout",
                "3",
                "--json",
                "--out",
            ]
            .iter()
            .map(OsString::from)
            .chain([dir.path(&format!("out-{name}")).into_os_string()]),
        )
    };
    let mut gone = fetch("gone", "gone.bin");
    let mut stays = fetch("stays", "stays.bin");
    wait_until(Duration::from_secs(30), "both sessions to run", || {
        of_kind(&events(&ev_path), "session_started").len() == 2
    });
    wait_until(
        Duration::from_secs(30),
        "gone.bin to be partly received",
        || {
            gone.assert_running();
            std::fs::read_dir(dir.path("out-gone/.blockcast-partial"))
                .map(|d| {
                    d.flatten()
                        .any(|e| has_data_at(&e.path().join("gone.bin"), 4 << 20))
                })
                .unwrap_or(false)
        },
    );
    std::fs::remove_file(catalog.join("gone.bin")).unwrap();
    let st = gone.wait_within(Duration::from_secs(60));
    assert!(
        !st.success(),
        "gone.bin's fetch succeeded:\n{}",
        gone.stderr()
    );
    stays.expect_code(Duration::from_secs(60), 0);
    assert_identical(&catalog.join("stays.bin"), &dir.path("out-stays/stays.bin"));
    assert!(!dir.path("out-gone/gone.bin").exists());
    let ev = events(&ev_path);
    let end = of_kind(&ev, "session_ended")
        .into_iter()
        .find(|e| e["object"] == "gone.bin")
        .expect("gone.bin's session ended");
    assert!(
        end["error"]
            .as_str()
            .is_some_and(|e| e.contains("disappeared during its session")),
        "{end}"
    );
    origin.assert_running();
    origin.interrupt();
    origin.expect_code(Duration::from_secs(20), 0);
    assert_eq!(origin.json()["session_failures"], 1);
}
