//! Closed groups (`--secret`, docs/wire.md §16, docs/SECURITY.md), end to end on loopback:
//! sessions with a secret complete byte-identical at one and four receivers and through a
//! relay; a receiver without the secret, or with another one, cannot finish and what anyone
//! on the segment captures shows nothing of the payload (and does without a secret: the
//! check can fail); packets injected without the secret are dropped and counted. Every socket
//! is on 127.0.0.1, groups in 239.255.0.0/16 with TTL 1; secrets are made here, at test time.

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use blockcast_proto::wire::{DoneReason, DoneRepr, Packet, SessionId, FLAG_TAGGED, HEADER_LEN};
use common::*;

/// Planted every 700 bytes of the samples, so every unit of 1,400 bytes carries it whole.
const MARKER: &[u8] = b"blockcast-plaintext-marker:";
/// Kind of an Announce (docs/wire.md §2.1).
const ANNOUNCE: u8 = 3;

fn group(test: u8) -> String {
    common::group(90, 35_000, test)
}

fn addr(g: &str) -> SocketAddrV4 {
    g.parse().expect("group address")
}

/// `blockcast keygen --secret DIR/NAME`.
fn secret(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let mut p = Proc::spawn(
        dir,
        &format!("keygen-{name}"),
        ["keygen".into(), "--secret".into(), path.clone()],
    );
    p.expect_code(Duration::from_secs(10), 0);
    path
}

/// A sample of `size` bytes: pseudo-random, with [`MARKER`] every 700 bytes.
fn marked_sample(path: &Path, size: usize, seed: u64) {
    write_sample(path, size as u64, seed);
    let mut bytes = std::fs::read(path).expect("read sample");
    for at in (0..size.saturating_sub(MARKER.len())).step_by(700) {
        bytes[at..at + MARKER.len()].copy_from_slice(MARKER);
    }
    let mut f = std::fs::File::create(path).expect("rewrite sample");
    f.write_all(&bytes).expect("write sample");
}

/// `blockcast serve SRC --group G --iface 127.0.0.1 --json --control-port P` and `extra`.
fn serve(dir: &Path, name: &str, g: &str, src: &Path, control: u16, extra: &[&str]) -> Proc {
    let mut args: Vec<std::ffi::OsString> = vec!["serve".into(), src.into()];
    for a in ["--group", g, "--iface", IFACE, "--json", "--control-port"] {
        args.push(a.into());
    }
    args.push(control.to_string().into());
    args.extend(extra.iter().map(Into::into));
    Proc::spawn(dir, name, args)
}

/// A socket that hears `port` of the group on loopback, as any host on the segment can.
fn listen(g: &str, port: u16) -> UdpSocket {
    listen_group(
        SocketAddrV4::new(*addr(g).ip(), port),
        Duration::from_millis(50),
    )
}

/// What a capture saw: datagrams, and whether any held the marker.
#[derive(Debug, Default)]
struct Capture {
    datagrams: u64,
    bytes: u64,
    tagged: u64,
    marked: u64,
    /// The latest sealed Announce seen (to replay and to alter).
    announce: Option<Vec<u8>>,
}

impl Capture {
    fn add(&mut self, o: Capture) {
        self.datagrams += o.datagrams;
        self.bytes += o.bytes;
        self.tagged += o.tagged;
        self.marked += o.marked;
        self.announce = o.announce.or(self.announce.take());
    }
}

/// Reads everything `sock` gets until `stop` is set (at most `limit`).
fn capture_one(sock: &UdpSocket, stop: &AtomicBool, limit: Duration) -> Capture {
    let mut c = Capture::default();
    let mut buf = vec![0u8; 65_536];
    let end = Instant::now() + limit;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        let Ok(n) = sock.recv(&mut buf) else {
            continue;
        };
        let d = &buf[..n];
        c.datagrams += 1;
        c.bytes += n as u64;
        if n > HEADER_LEN && d[4] & FLAG_TAGGED != 0 {
            c.tagged += 1;
            if d[3] == ANNOUNCE {
                // The latest: the receiver joined on an announce the capture saw too, so it
                // has seen this one (the first may predate the receiver's joining the group,
                // on a host slow to start it, and would not read as a replay).
                c.announce = Some(d.to_vec());
            }
        }
        if d.windows(MARKER.len()).any(|w| w == MARKER) {
            c.marked += 1;
        }
    }
    c
}

/// Reads everything `socks` get, a thread each, until `stop` is set (at most `limit`).
fn capture(socks: &[UdpSocket], stop: &AtomicBool, limit: Duration) -> Capture {
    std::thread::scope(|s| {
        let threads: Vec<_> = socks
            .iter()
            .map(|sock| s.spawn(move || capture_one(sock, stop, limit)))
            .collect();
        let mut all = Capture::default();
        for t in threads {
            all.add(t.join().expect("capture thread"));
        }
        all
    })
}

fn sealed(p: &Proc) -> serde_json::Value {
    let j = p.json();
    let s = if j["role"] == "relay" {
        j["upstream"]["sealed"].clone()
    } else {
        j["sealed"].clone()
    };
    assert!(s.is_object(), "{}: no sealed counters: {j}", p.name);
    s
}

#[test]
fn a_closed_session_completes_byte_identical_at_one_and_four_receivers() {
    let dir = Scratch::new("n1-n4");
    let key = secret(&dir.0, "group.secret");
    let key = key.to_str().unwrap();
    let src = dir.path("sample.bin");
    marked_sample(&src, 8 << 20, 1);
    for (test, n) in [(1u8, 1usize), (2, 4)] {
        let g = group(test);
        let outs: Vec<PathBuf> = (0..n).map(|i| dir.path(&format!("n{n}-{i}.bin"))).collect();
        let mut rxs: Vec<Proc> = outs
            .iter()
            .enumerate()
            .map(|(i, out)| {
                Proc::spawn(
                    &dir.0,
                    &format!("receiver-n{n}-{i}"),
                    receive_args(&g, out, 30, &["--json", "--secret", key, "--threads", "2"]),
                )
            })
            .collect();
        let min = n.to_string();
        let mut server = serve(
            &dir.0,
            &format!("server-n{n}"),
            &g,
            &src,
            addr(&g).port() + 90,
            &[
                "--secret",
                key,
                "--rate",
                "100M",
                "--threads",
                "2",
                "--min-receivers",
                &min,
            ],
        );
        for (rx, out) in rxs.iter_mut().zip(&outs) {
            rx.expect_code(Duration::from_secs(60), 0);
            assert_identical(&src, out);
            let s = sealed(rx);
            assert!(s["opened"].as_u64().unwrap() > 0, "{s}");
            assert_eq!(s["dropped"], 0, "{s}");
            assert!(
                rx.json()["stripe_datagrams"].as_u64().unwrap() > 0,
                "both stripes read"
            );
        }
        server.expect_code(Duration::from_secs(30), 0);
        let s = sealed(&server);
        assert!(s["opened"].as_u64().unwrap() >= n as u64, "{s}");
        assert_eq!(s["dropped"], 0, "{s}");
    }
}

#[test]
fn a_closed_session_crosses_a_relay_with_one_secret_or_one_per_side() {
    let dir = Scratch::new("relay");
    let up_key = secret(&dir.0, "up.secret");
    let down_key = secret(&dir.0, "down.secret");
    let (up_key, down_key) = (up_key.to_str().unwrap(), down_key.to_str().unwrap());
    let src = dir.path("sample.bin");
    marked_sample(&src, 4 << 20, 2);
    let (up, down_same, down_other) = (group(3), group(4), group(5));
    let relay = |name: &str, down: &str, extra: &[&str]| {
        let cache = dir.path(&format!("{name}.cache"));
        let mut args: Vec<std::ffi::OsString> = vec!["relay".into()];
        for a in [
            "--upstream",
            up.as_str(),
            "--iface",
            IFACE,
            "--downstream",
            down,
            "--cache",
            cache.to_str().unwrap(),
            "--json",
            "--timeout",
            "30",
        ] {
            args.push(a.into());
        }
        args.extend(extra.iter().map(Into::into));
        Proc::spawn(&dir.0, name, args)
    };
    // One secret for both sides, and a secret of its own downstream.
    let mut same = relay("relay-same", &down_same, &["--secret", up_key]);
    let mut other = relay(
        "relay-other",
        &down_other,
        &["--secret", down_key, "--upstream-secret", up_key],
    );
    let (out_a, out_b) = (dir.path("a.bin"), dir.path("b.bin"));
    let mut a = Proc::spawn(
        &dir.0,
        "receiver-a",
        receive_args(&down_same, &out_a, 30, &["--json", "--secret", up_key]),
    );
    let mut b = Proc::spawn(
        &dir.0,
        "receiver-b",
        receive_args(&down_other, &out_b, 30, &["--json", "--secret", down_key]),
    );
    let mut server = serve(
        &dir.0,
        "server",
        &up,
        &src,
        addr(&up).port() + 90,
        &["--secret", up_key, "--rate", "50M", "--min-receivers", "2"],
    );
    a.expect_code(Duration::from_secs(60), 0);
    b.expect_code(Duration::from_secs(60), 0);
    server.expect_code(Duration::from_secs(30), 0);
    same.expect_code(Duration::from_secs(30), 0);
    other.expect_code(Duration::from_secs(30), 0);
    assert_identical(&src, &out_a);
    assert_identical(&src, &out_b);
    for p in [&a, &b, &same, &other] {
        let s = sealed(p);
        assert!(s["opened"].as_u64().unwrap() > 0, "{}: {s}", p.name);
        assert_eq!(s["dropped"], 0, "{}: {s}", p.name);
    }
}

/// One session on `g`: a receiver with `key`, outsiders without it and with `wrong`, and a
/// capture of the group's two stripe ports until the keyed receiver is done. Returns the
/// capture and checks the outcome for `sealed` (with a secret) or not.
fn session_seen_by_outsiders(
    dir: &Path,
    g: &str,
    src: &Path,
    key: Option<(&str, &str)>,
) -> Capture {
    let tag = if key.is_some() { "closed" } else { "open" };
    let port = addr(g).port();
    let socks = [listen(g, port), listen(g, port + 1)];
    let out = dir.join(format!("{tag}-member.bin"));
    let member_args: Vec<&str> = match key {
        Some((k, _)) => vec!["--json", "--secret", k],
        None => vec!["--json"],
    };
    let mut member = Proc::spawn(
        dir,
        &format!("{tag}-member"),
        receive_args(g, &out, 30, &member_args),
    );
    // Outsiders: none has the secret; one has another group's.
    let outsiders: Vec<(Proc, PathBuf)> = match key {
        Some((_, wrong)) => [("none", None), ("wrong", Some(wrong))]
            .into_iter()
            .map(|(who, k)| {
                let out = dir.join(format!("{tag}-outsider-{who}.bin"));
                let mut extra = vec!["--json"];
                if let Some(k) = k {
                    extra.extend(["--secret", k]);
                }
                let p = Proc::spawn(
                    dir,
                    &format!("{tag}-outsider-{who}"),
                    receive_args(g, &out, 6, &extra),
                );
                (p, out)
            })
            .collect(),
        None => Vec::new(),
    };
    let mut serve_args = vec!["--rate", "20M", "--threads", "2"];
    if let Some((k, _)) = key {
        serve_args.extend(["--secret", k]);
    }
    let mut server = serve(
        dir,
        &format!("{tag}-server"),
        g,
        src,
        port + 90,
        &serve_args,
    );
    let stop = AtomicBool::new(false);
    let seen = std::thread::scope(|s| {
        let cap = s.spawn(|| capture(&socks, &stop, Duration::from_secs(90)));
        member.expect_code(Duration::from_secs(60), 0);
        server.expect_code(Duration::from_secs(30), 0);
        stop.store(true, Ordering::Relaxed);
        cap.join().expect("capture thread")
    });
    assert_identical(src, &out);
    for (mut p, out) in outsiders {
        // No server it can take is ever heard: it gives up (exit 6), having stored nothing.
        p.expect_code(Duration::from_secs(30), 6);
        assert!(p.stderr().contains("no server heard"), "{}", p.stderr());
        assert!(!out.exists(), "{} wrote {}", p.name, out.display());
    }
    seen
}

#[test]
fn outsiders_without_the_secret_cannot_finish_and_captured_datagrams_never_show_the_payload() {
    let dir = Scratch::new("outsiders");
    let key = secret(&dir.0, "group.secret");
    let wrong = secret(&dir.0, "wrong.secret");
    let src = dir.path("sample.bin");
    let size = 4 << 20;
    marked_sample(&src, size, 3);
    let closed = session_seen_by_outsiders(
        &dir.0,
        &group(6),
        &src,
        Some((key.to_str().unwrap(), wrong.to_str().unwrap())),
    );
    // The capture saw the session (at least half of its first pass: a plain socket may drop
    // some for lack of buffer).
    let units = (size / 1400) as u64;
    assert!(closed.datagrams >= units / 2, "{closed:?}");
    assert_eq!(closed.tagged, closed.datagrams, "{closed:?}");
    assert_eq!(closed.marked, 0, "the marker leaked: {closed:?}");
    // The same session without a secret: the marker is there for anyone, in (nearly) every
    // unit, so the check above can fail.
    let open = session_seen_by_outsiders(&dir.0, &group(7), &src, None);
    assert_eq!(open.tagged, 0, "{open:?}");
    assert!(open.marked >= units / 2, "{open:?}");
}

#[test]
fn packets_injected_without_the_secret_are_dropped_and_counted() {
    let dir = Scratch::new("inject");
    let key = secret(&dir.0, "group.secret");
    let key = key.to_str().unwrap();
    let src = dir.path("sample.bin");
    marked_sample(&src, 8 << 20, 4);
    let g = group(8);
    let control_port = addr(&g).port() + 90;
    let control = SocketAddrV4::new(Ipv4Addr::LOCALHOST, control_port);
    let watch = listen(&g, addr(&g).port());
    let out = dir.path("out.bin");
    let mut rx = Proc::spawn(
        &dir.0,
        "receiver",
        receive_args(&g, &out, 30, &["--json", "--secret", key]),
    );
    let mut server = serve(
        &dir.0,
        "server",
        &g,
        &src,
        control_port,
        &["--secret", key, "--rate", "8M"],
    );
    // A sealed Announce, as anyone on the segment hears it: only its header is readable.
    let stop = AtomicBool::new(false);
    let announce = std::thread::scope(|s| {
        let cap = s.spawn(|| capture(std::slice::from_ref(&watch), &stop, Duration::from_secs(20)));
        wait_until(
            Duration::from_secs(20),
            "the receiver's first progress",
            || {
                rx.assert_running();
                rx.json_lines().iter().any(|v| v["event"] == "progress")
            },
        );
        stop.store(true, Ordering::Relaxed);
        cap.join().expect("capture").announce
    })
    .expect("a sealed announce on the group");
    let session = SessionId(u32::from_be_bytes(announce[6..10].try_into().unwrap()));
    // The Announce with a counter not seen yet: it passes the replay window and fails the tag.
    let mut altered = announce.clone();
    let at = altered.len() - 24;
    altered[at..at + 8].copy_from_slice(&(1u64 << 40).to_be_bytes());
    let mut buf = vec![0u8; 256];
    let n = Packet::Done(DoneRepr::Session {
        session,
        reason: DoneReason::Aborted,
        sig: None,
    })
    .emit(&mut buf)
    .expect("emit done");
    let plain_done = buf[..n].to_vec();
    let tx = loopback_sender();
    let to_group = addr(&g);
    // To the receiver: a plain Done that would end an open session, an altered Announce,
    // and the genuine Announce again (a replay).
    for _ in 0..3 {
        tx.send_to(&plain_done, to_group).expect("send");
        tx.send_to(&altered, to_group).expect("send");
    }
    tx.send_to(&announce, to_group).expect("send");
    // To the server: the same, at its control address.
    for _ in 0..3 {
        tx.send_to(&plain_done, control).expect("send");
        tx.send_to(&altered, control).expect("send");
    }
    rx.expect_code(Duration::from_secs(60), 0);
    server.expect_code(Duration::from_secs(30), 0);
    assert_identical(&src, &out);
    let r = sealed(&rx);
    assert_eq!(r["untagged"], 3, "{r}");
    assert_eq!(r["forged"], 3, "{r}");
    assert_eq!(r["replayed"], 1, "{r}");
    let s = sealed(&server);
    assert_eq!(s["untagged"], 3, "{s}");
    assert_eq!(s["forged"], 3, "{s}");
}
