//! End-to-end tests of play-while-receiving on the real `blockcast` binary over loopback
//! multicast: `--play -` (the verified bytes, in order, on stdout), `--http` (GET/HEAD with
//! Range while blocks arrive, and `/status`), and a real MPEG-TS decoded by ffmpeg while the
//! transfer is still running.
//!
//! Every process binds to 127.0.0.1 and a group in 239.255.0.0/16 (never another interface);
//! each test has its own group (third octet 160 + test, apart from loopback.rs's 200 + test)
//! and port, so the tests run in parallel without hearing each other. Every child is bounded
//! by its own flags (`--timeout`, `--max-wait`, `--deadline`) and by the test, which waits
//! with a deadline and kills what is left (see [`Proc`]). Every HTTP request runs on a socket
//! with read and write timeouts.
//!
//! "Early" is shown by state, not by the clock: a first byte, a range answer or decoded frames
//! count as early when, at that moment, the receiver is still running and the first pass has
//! not reached the end of the file. The measured latencies are printed, and only checked
//! against a loose sanity bound.

mod common;

use common::*;
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// 200 MiB: at `--rate 20M` (20 MiB/s) the first pass takes about 10 s.
const BIG: u64 = 200 << 20;
const MIB: u64 = 1 << 20;

/// Group and port for test number `test`: third octet 160 + test (loopback.rs uses
/// 200 + test), port 46_000 + 100 * test (see [`common::group`]).
fn group(test: u8) -> String {
    common::group(160, 46_000, test)
}

/// `len` bytes of `path` from `offset`.
fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut f = File::open(path).expect("open source");
    f.seek(SeekFrom::Start(offset)).expect("seek source");
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).expect("read source");
    buf
}

/// The arguments of `blockcast serve` for one file.
fn serve_args(src: &Path, group: &str, rate: &str) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["serve".into(), src.into()];
    for (flag, value) in [
        ("--group", group),
        ("--iface", IFACE),
        ("--rate", rate),
        ("--min-receivers", "1"),
        ("--max-wait", "10"),
        ("--deadline", "120"),
    ] {
        args.push(flag.into());
        args.push(value.into());
    }
    args.push("--json".into());
    args
}

/// Asserts the server's summary (its stdout, one JSON value) says complete, with one receiver
/// done.
fn assert_served(server: &Proc) {
    let out = server.stdout();
    let v: serde_json::Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("server stdout is not one JSON value ({e}):\n{out}"));
    eprintln!("server summary: {v}");
    assert_eq!(v["result"], "complete", "server summary: {v}");
    let done = v["receivers"]
        .as_array()
        .expect("receivers array")
        .iter()
        .filter(|r| r["complete"] == true)
        .count();
    assert_eq!(done, 1, "server summary: {v}");
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// One HTTP response, read to the end of the connection (the server closes it).
struct Response {
    status: u16,
    /// Header names in lower case.
    headers: Vec<(String, String)>,
    /// Body bytes read.
    len: u64,
    hash: blake3::Hash,
    /// The body, when asked to keep it.
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> u64 {
        self.header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Content-Length in {:?}", self.headers))
    }

    /// Asserts the whole announced body arrived (a stalled block closes the connection short).
    fn assert_whole(&self) {
        assert_eq!(
            self.len,
            self.content_length(),
            "body shorter than Content-Length (status {}, {:?})",
            self.status,
            self.headers
        );
    }
}

/// Sends `GET path` (with `extra` header lines, each ending in CRLF) to 127.0.0.1:`port` on a
/// raw socket and reads the response to EOF, hashing the body and keeping it if `keep`.
/// Every read and write times out after 60 s.
fn http_get(port: u16, path: &str, extra: &str, keep: bool) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.set_write_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Connection: close\r\n\r\n"
    )?;
    let mut r = BufReader::with_capacity(1 << 20, s);
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad(&format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("connection closed inside the head"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l
            .split_once(':')
            .ok_or_else(|| bad(&format!("bad header {l:?}")))?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut h = blake3::Hasher::new();
    let mut body = Vec::new();
    let mut len = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        if keep {
            body.extend_from_slice(&buf[..n]);
        }
        len += n as u64;
    }
    Ok(Response {
        status,
        headers,
        len,
        hash: h.finalize(),
        body,
    })
}

/// `GET /status` as JSON; `None` while the endpoint does not answer yet.
fn status(port: u16) -> Option<serde_json::Value> {
    let r = http_get(port, "/status", "", true).ok()?;
    if r.status != 200 {
        return None;
    }
    serde_json::from_slice(&r.body).ok()
}

/// The `/status` entry of the object called `name`.
fn object_status<'a>(st: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    st["objects"]
        .as_array()
        .and_then(|a| a.iter().find(|o| o["name"] == name))
        .unwrap_or_else(|| panic!("no object {name:?} in /status: {st}"))
}

/// What the thread reading `--play -` has seen so far.
#[derive(Default)]
struct Played {
    bytes: AtomicU64,
    first: OnceLock<Instant>,
}

/// Issue item 1: `--play -` starts at once on a slowly paced transfer, and plays the source
/// byte for byte.
#[test]
fn play_to_stdout_starts_while_receiving_and_matches() {
    let dir = Scratch::new("stdout");
    let g = group(1);
    let src = dir.path("src.bin");
    write_sample(&src, BIG, 21);
    let want = hash_file(&src);
    let out = dir.path("copy.bin");

    let started = Instant::now();
    let mut r = Proc::blockcast(
        &dir.0,
        "receiver",
        receive_args(&g, &out, 30, &["--play", "-"]),
        Out::Piped,
    );
    let mut pipe = r.child.stdout.take().expect("receiver stdout pipe");
    let played = Arc::new(Played::default());
    let reader = {
        let played = played.clone();
        std::thread::spawn(move || -> std::io::Result<blake3::Hash> {
            let mut h = blake3::Hasher::new();
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = pipe.read(&mut buf)?;
                if n == 0 {
                    return Ok(h.finalize());
                }
                let _ = played.first.set(Instant::now());
                h.update(&buf[..n]);
                played.bytes.fetch_add(n as u64, Ordering::Release);
            }
        })
    };
    let mut s = Proc::blockcast(&dir.0, "server", serve_args(&src, &g, "20M"), Out::File);

    wait_until(Duration::from_secs(30), "the first played byte", || {
        if played.first.get().is_some() {
            return true;
        }
        r.assert_running();
        s.assert_running();
        false
    });
    // Everything observed here is after the first byte: if it still holds now, it held then.
    let played_then = played.bytes.load(Ordering::Acquire);
    r.assert_running();
    assert!(
        played_then < BIG / 2,
        "{played_then} of {BIG} bytes were already played when the first byte was seen"
    );
    assert!(
        !has_data_at(&out, BIG - 4096),
        "the first pass had reached the end of the file when the first byte was seen"
    );
    let latency = played
        .first
        .get()
        .expect("first byte")
        .duration_since(started);
    eprintln!(
        "--play -: first byte {:.3} s after the receiver started ({played_then} bytes played then)",
        latency.as_secs_f64()
    );
    assert!(
        latency < Duration::from_secs(5),
        "first byte only after {latency:?} (the whole transfer takes about 10 s)"
    );

    s.expect_code(Duration::from_secs(90), 0);
    r.expect_code(Duration::from_secs(60), 0);
    eprintln!(
        "--play -: receiver done {:.2} s after it started",
        started.elapsed().as_secs_f64()
    );
    // The receiver has exited, so the pipe is at its end.
    let got = reader
        .join()
        .expect("reader thread")
        .expect("read the played stream");
    assert_eq!(played.bytes.load(Ordering::Acquire), BIG, "bytes played");
    assert_eq!(got, want, "the played stream differs from the source");
    assert_identical(&src, &out);
    assert_served(&s);
}

/// Issue items 2-4 on one transfer: a range near the end is answered long before the first
/// pass gets there, a range past the end gets 416, the whole object streams over HTTP while it
/// arrives and equals the source, and after completion the receiver serves until SIGINT, then
/// exits 0.
#[test]
fn http_ranges_while_receiving() {
    let dir = Scratch::new("http");
    let g = group(2);
    let src = dir.path("src.bin");
    write_sample(&src, BIG, 22);
    let want = hash_file(&src);
    // Stored under another name: HTTP serves the object by its served name, src.bin.
    let out = dir.path("copy.bin");
    let port = free_port();
    let http = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let mut r = Proc::blockcast(
        &dir.0,
        "receiver",
        receive_args(&g, &out, 30, &["--http", &http, "--json"]),
        Out::File,
    );
    let mut s = Proc::blockcast(&dir.0, "server", serve_args(&src, &g, "20M"), Out::File);

    wait_until(
        Duration::from_secs(30),
        "/status to report the manifest",
        || {
            r.assert_running();
            s.assert_running();
            status(port).is_some_and(|v| v["manifest"] == true)
        },
    );
    let manifest_at = started.elapsed();

    // Item 2: the last MiB.
    let (a, b) = (BIG - MIB, BIG - 1);
    let asked = Instant::now();
    let tail = http_get(port, "/src.bin", &format!("Range: bytes={a}-{b}\r\n"), true)
        .expect("GET the last MiB");
    let answered = asked.elapsed();
    assert_eq!(tail.status, 206, "headers: {:?}", tail.headers);
    assert_eq!(
        tail.header("content-range"),
        Some(format!("bytes {a}-{b}/{BIG}").as_str())
    );
    tail.assert_whole();
    let st = status(port).expect("/status after the range");
    let prefix = object_status(&st, "src.bin")["verified_prefix_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no verified_prefix_bytes: {st}"));
    eprintln!(
        "http: manifest {:.3} s after start; last MiB answered in {:.3} s, with the verified \
         prefix at {prefix} of {BIG} bytes",
        manifest_at.as_secs_f64(),
        answered.as_secs_f64()
    );
    assert!(
        prefix < BIG / 2,
        "the first pass was past half the object ({prefix} of {BIG} bytes) when the last MiB \
         came: the range was not fetched first"
    );
    assert!(
        tail.body == read_at(&src, a, MIB as usize),
        "the last MiB differs from the source"
    );

    // Item 3: a range that starts at the end.
    let past = http_get(port, "/src.bin", &format!("Range: bytes={BIG}-\r\n"), true)
        .expect("GET past the end");
    assert_eq!(past.status, 416, "headers: {:?}", past.headers);
    assert_eq!(
        past.header("content-range"),
        Some(format!("bytes */{BIG}").as_str())
    );

    // Item 4: the whole object, streamed while its blocks arrive.
    let asked = Instant::now();
    let whole = http_get(port, "/src.bin", "", false).expect("GET the whole object");
    assert_eq!(whole.status, 200, "headers: {:?}", whole.headers);
    assert_eq!(whole.content_length(), BIG);
    whole.assert_whole();
    assert_eq!(whole.hash, want, "the object served over HTTP differs");
    eprintln!(
        "http: whole object in {:.2} s",
        asked.elapsed().as_secs_f64()
    );

    // The receive loop has ended (complete) once /status says so; the receiver keeps serving.
    wait_until(
        Duration::from_secs(60),
        "/status to report the transfer ended",
        || {
            r.assert_running();
            status(port).is_some_and(|v| v["ended"] == true)
        },
    );
    let st = status(port).expect("/status after the end");
    let o = object_status(&st, "src.bin");
    assert_eq!(o["blocks_verified"], o["blocks"], "/status: {st}");
    assert_eq!(o["verified_prefix_bytes"], BIG, "/status: {st}");
    s.expect_code(Duration::from_secs(60), 0);
    assert_served(&s);
    // Still serving after completion (and after the server left).
    r.assert_running();
    let head = http_get(port, "/src.bin", "Range: bytes=0-4095\r\n", true).expect("GET after");
    assert_eq!(head.status, 206, "headers: {:?}", head.headers);
    assert!(head.body == read_at(&src, 0, 4096));

    r.interrupt();
    r.expect_code(Duration::from_secs(10), 0);
    let sum = r.json();
    assert_eq!(sum["event"], "summary", "{sum}");
    assert_eq!(sum["bytes"], BIG, "{sum}");
    assert_eq!(sum["blocks_failed"], 0, "{sum}");
    assert_identical(&src, &out);
}

fn have_ffmpeg() -> bool {
    Command::new("ffmpeg")
        .arg("-version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Issue item 5: a real MPEG-TS, played with `--play -` into ffmpeg, decodes while the
/// transfer is still running.
#[test]
fn mpeg_ts_decodes_while_receiving() {
    let why_not = (!have_ffmpeg()).then(|| "ffmpeg is not on PATH (.ci/run installs it)".into());
    if !can_run(why_not) {
        return;
    }
    let dir = Scratch::new("mpegts");
    let g = group(3);
    let sample = dir.path("sample.ts");
    // 30 s of 25 fps test pattern at a constant 4 Mbit/s (about 15 MB). Without -minrate and
    // -maxrate, mpeg2video compresses the test pattern to about 2.3 MB (3 blocks), too few
    // blocks to watch playback run ahead of the transfer.
    let mut gen = Proc::start(
        &dir.0,
        "ffmpeg-sample",
        Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"])
            .arg("testsrc=duration=30:size=640x360:rate=25")
            .args(["-c:v", "mpeg2video", "-b:v", "4M"])
            .args(["-minrate", "4M", "-maxrate", "4M", "-bufsize", "2M"])
            .args(["-f", "mpegts"])
            .arg(&sample)
            .stdin(Stdio::null()),
        Out::File,
    );
    gen.expect_code(Duration::from_secs(60), 0);
    let size = std::fs::metadata(&sample).expect("sample.ts").len();
    assert!(size > 8 * MIB, "sample.ts is only {size} bytes");
    // About 9 s for the first pass.
    let rate = (size / 9).to_string();
    let out = dir.path("copy.ts");

    let started = Instant::now();
    let mut r = Proc::blockcast(
        &dir.0,
        "receiver",
        receive_args(&g, &out, 30, &["--play", "-"]),
        Out::Piped,
    );
    let played = Stdio::from(r.child.stdout.take().expect("receiver stdout pipe"));
    let mut ff = Proc::start(
        &dir.0,
        "ffmpeg-decode",
        Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-i", "pipe:0"])
            .args(["-map", "0:v", "-f", "framecrc", "-"])
            .stdin(played),
        Out::Piped,
    );
    let frames = Arc::new(AtomicU64::new(0));
    let reader = {
        let frames = frames.clone();
        let lines = BufReader::new(ff.child.stdout.take().expect("ffmpeg stdout pipe"));
        std::thread::spawn(move || -> std::io::Result<()> {
            for line in lines.split(b'\n') {
                let line = line?;
                if !line.is_empty() && !line.starts_with(b"#") {
                    frames.fetch_add(1, Ordering::Release);
                }
            }
            Ok(())
        })
    };
    let mut s = Proc::blockcast(&dir.0, "server", serve_args(&sample, &g, &rate), Out::File);

    wait_until(Duration::from_secs(40), "25 decoded frames", || {
        if frames.load(Ordering::Acquire) >= 25 {
            return true;
        }
        r.assert_running();
        ff.assert_running();
        s.assert_running();
        false
    });
    // Observed after the 25th frame: if the transfer is still running now, it was then.
    let decoded_then = frames.load(Ordering::Acquire);
    let at = started.elapsed();
    r.assert_running();
    assert!(
        !has_data_at(&out, size - 4096),
        "the first pass had reached the end of sample.ts before 25 frames were decoded"
    );
    eprintln!(
        "mpegts: {decoded_then} frames decoded {:.2} s after the receiver started, transfer \
         still running ({size} bytes at {rate} B/s)",
        at.as_secs_f64()
    );

    s.expect_code(Duration::from_secs(90), 0);
    r.expect_code(Duration::from_secs(60), 0);
    ff.expect_code(Duration::from_secs(30), 0);
    reader
        .join()
        .expect("reader thread")
        .expect("read ffmpeg's output");
    let total = frames.load(Ordering::Acquire);
    eprintln!(
        "mpegts: {total} frames decoded in all, {:.2} s after the receiver started",
        started.elapsed().as_secs_f64()
    );
    // 30 s at 25 fps is 750 frames; allow a few lost to ffmpeg's probing at either end.
    assert!(total >= 740, "only {total} of 750 frames decoded");
    assert!(has_data_at(&out, size - 4096));
    assert_identical(&sample, &out);
    assert_served(&s);
}
