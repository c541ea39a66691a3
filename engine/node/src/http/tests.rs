//! The endpoint over real sockets on 127.0.0.1 ([`harness`]: the server and the client).

mod harness;

use super::server::{AHEAD, BODY_BUF};
use super::*;
use blockcast_proto::wire::{Manifest, ObjectEntry};
use harness::*;
use std::time::Instant;

#[test]
fn http_whole_object() {
    let server = Server::new(&[], cfg());
    let r = server.get("/a.txt", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, objects()[0].1);
    assert_eq!(r.content_length(), 1000);
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(server.asks.try_recv().is_err());
}

#[test]
fn http_percent_decoded_name_and_type() {
    let server = Server::new(&[], cfg());
    let r = server.get("/dir/video%20file.ts?x=1", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("video/mp2t"));
    assert_eq!(r.body, objects()[1].1);
    // Absolute form.
    let r = server.get(&format!("http://{}/dir%2Fvideo%20file.ts", server.addr), "");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, objects()[1].1);
}

#[test]
fn http_range_206() {
    let server = Server::new(&[], cfg());
    let data = &objects()[0].1;
    let r = server.get("/a.txt", "Range: bytes=100-299\r\n");
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 100-299/1000"));
    assert_eq!(r.content_length(), 200);
    assert_eq!(r.body, data[100..300]);
    // Open-ended, and a last position past the end (clamped).
    let r = server.get("/a.txt", "Range: bytes=990-\r\n");
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 990-999/1000"));
    assert_eq!(r.body, data[990..]);
    let r = server.get("/a.txt", "range: BYTES=5-99999999999999999999999\r\n");
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 5-999/1000"));
    assert_eq!(r.body, data[5..]);
    // One byte, within one block.
    let r = server.get("/a.txt", "Range: bytes=64-64\r\n");
    assert_eq!(r.status, 206);
    assert_eq!(r.body, data[64..65]);
}

#[test]
fn http_suffix_range() {
    let server = Server::new(&[], cfg());
    let data = &objects()[0].1;
    let r = server.get("/a.txt", "Range: bytes=-100\r\n");
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 900-999/1000"));
    assert_eq!(r.body, data[900..]);
    let r = server.get("/a.txt", "Range: bytes=-5000\r\n");
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 0-999/1000"));
    assert_eq!(r.body, *data);
}

#[test]
fn http_unsatisfiable_416() {
    let server = Server::new(&[], cfg());
    for (path, range, size) in [
        ("/a.txt", "bytes=1000-", 1000),
        ("/a.txt", "bytes=5000-6000", 1000),
        ("/a.txt", "bytes=-0", 1000),
        ("/empty.bin", "bytes=0-", 0),
        ("/empty.bin", "bytes=-10", 0),
    ] {
        let r = server.get(path, &format!("Range: {range}\r\n"));
        assert_eq!(r.status, 416, "{path} {range}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes */{size}").as_str())
        );
        assert!(r.body.is_empty());
    }
}

#[test]
fn http_ignored_ranges_200() {
    let server = Server::new(&[], cfg());
    for extra in [
        "Range: bytes=abc\r\n",
        "Range: bytes=10-5\r\n",
        "Range: items=0-5\r\n",
        "Range: bytes=\r\n",
        "Range: bytes=0-1, 5-6\r\n",
        "Range: bytes=0-1\r\nRange: bytes=2-3\r\n",
    ] {
        let r = server.get("/a.txt", extra);
        assert_eq!(r.status, 200, "{extra}");
        assert_eq!(r.body, objects()[0].1);
    }
}

#[test]
fn http_empty_object() {
    let server = Server::new(&[], cfg());
    let r = server.get("/empty.bin", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.content_length(), 0);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert!(r.body.is_empty());
}

#[test]
fn http_head() {
    // HEAD neither waits for blocks nor asks for them.
    let server = Server::new(&[(0, 0)], cfg());
    let r = request(server.addr, "HEAD /a.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.content_length(), 1000);
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert!(r.body.is_empty());
    // Range is ignored for HEAD.
    let r = request(
        server.addr,
        "HEAD /a.txt HTTP/1.1\r\nRange: bytes=0-9\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.content_length(), 1000);
    assert!(r.body.is_empty());
    assert!(server.asks.try_recv().is_err());
    let r = request(server.addr, "HEAD /nope HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 404);
    assert!(r.body.is_empty());
}

#[test]
fn http_not_found_and_bad_requests() {
    let server = Server::new(&[], cfg());
    assert_eq!(server.get("/nope.txt", "").status, 404);
    assert_eq!(server.get("/dir", "").status, 404);
    assert_eq!(server.get("/a.txt/", "").status, 404);
    assert_eq!(server.get("/%ff%fe", "").status, 404);
    assert_eq!(server.get("/a%2.txt", "").status, 400);
    assert_eq!(server.get("a.txt", "").status, 400);
    assert_eq!(request(server.addr, "garbage\r\n\r\n").status, 400);
    assert_eq!(
        request(server.addr, "GET / HTTP/1.1\r\nno colon\r\n\r\n").status,
        400
    );
    assert_eq!(request(server.addr, "GET / SPDY/3\r\n\r\n").status, 400);
    // Request cut short by the client.
    let mut s = connect(server.addr);
    s.write_all(b"GET /a.txt HTTP/1.1\r\n").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_response(&mut s).status, 400);
}

#[test]
fn http_head_sent_in_pieces_is_answered_once_whole() {
    // Loopback with no delay mostly delivers each piece on its own, so the server reads a
    // partial head several times; the parse tests cover every cut of a head.
    let server = Server::new(&[], cfg());
    let mut s = connect(server.addr);
    s.set_nodelay(true).unwrap();
    let head = b"GET /a.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n";
    for piece in head.chunks(5) {
        s.write_all(piece).unwrap();
    }
    let r = read_response(&mut s);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, objects()[0].1[..10]);
}

#[test]
fn http_bad_head_is_answered_before_its_end() {
    // The client keeps the connection open without ever ending its head: the answer comes
    // from the bad request line, not from the 10 s read timeout (408).
    let server = Server::new(&[], cfg());
    let mut s = connect(server.addr);
    s.write_all(b"garbage\r\nHost: x\r\n").unwrap();
    let started = Instant::now();
    assert_eq!(read_response(&mut s).status, 400);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn http_headers_too_large() {
    let server = Server::new(&[], cfg());
    let mut s = connect(server.addr);
    let big = format!("GET /a.txt HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(20_000));
    // The server may stop reading (and answer) before all of it is written.
    let _ = s.write_all(big.as_bytes());
    assert_eq!(read_response(&mut s).status, 431);
}

#[test]
fn http_method_not_allowed() {
    let server = Server::new(&[], cfg());
    let r = request(
        server.addr,
        "POST /a.txt HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    let r = request(server.addr, "DELETE /status HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 405);
}

#[test]
fn http_status_json() {
    let server = Server::new(&[(0, 3)], cfg());
    let r = server.get("/status", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = String::from_utf8(r.body).unwrap();
    assert!(body.contains("\"blocks_verified\":15"), "{body}");
    assert!(body.contains("\"verified_prefix_bytes\":192"), "{body}");
    assert!(body.contains("\"name\":\"dir/video file.ts\""), "{body}");
}

#[test]
fn http_listing() {
    let server = Server::new(&[], cfg());
    let r = server.get("/", "");
    assert_eq!(r.status, 200);
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        "a.txt\t1000\ndir/video file.ts\t300\nempty.bin\t0\n"
    );
}

#[test]
fn http_waits_for_missing_block_and_asks() {
    // Block 5 of a.txt (bytes 320..384) is missing.
    let server = Server::new(&[(0, 5)], cfg());
    let addr = server.addr;
    let client = std::thread::spawn(move || {
        request(addr, "GET /a.txt HTTP/1.1\r\nRange: bytes=300-399\r\n\r\n")
    });
    // The first block of the range (4) is there: the server sends the head, then
    // waits for block 5 and asks for it.
    let ask = server.asks.recv_timeout(LIMIT).expect("an ask");
    assert_eq!(
        ask,
        Ask {
            object: 0,
            block: 5,
            count: AHEAD + 1
        }
    );
    assert!(!client.is_finished());
    server.published.publish_block(0, 5);
    server.published.notify();
    let r = client.join().unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 300-399/1000"));
    assert_eq!(r.body, objects()[0].1[300..400]);
}

#[test]
fn http_waits_for_first_block_before_the_head() {
    // The last block of a.txt (block 15, bytes 960..1000) is missing.
    let server = Server::new(&[(0, 15)], cfg());
    let addr = server.addr;
    let client = std::thread::spawn(move || {
        request(addr, "GET /a.txt HTTP/1.1\r\nRange: bytes=-10\r\n\r\n")
    });
    let ask = server.asks.recv_timeout(LIMIT).expect("an ask");
    // Only one block is left from 15 on.
    assert_eq!(
        ask,
        Ask {
            object: 0,
            block: 15,
            count: 1
        }
    );
    server.published.publish_block(0, 15);
    server.published.notify();
    let r = client.join().unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.body, objects()[0].1[990..]);
}

#[test]
fn http_first_block_timeout_504() {
    let server = Server::new(&[(0, 0)], short_cfg());
    let r = server.get("/a.txt", "");
    assert_eq!(r.status, 504);
    assert_eq!(
        server.asks.try_recv().ok().map(|a| (a.object, a.block)),
        Some((0, 0))
    );
    // Other objects still answer.
    assert_eq!(server.get("/dir/video%20file.ts", "").status, 200);
}

#[test]
fn http_ended_without_block_503() {
    let server = Server::new(&[(1, 2)], cfg());
    server.published.end();
    let r = server.get("/dir/video%20file.ts", "Range: bytes=130-\r\n");
    assert_eq!(r.status, 503);
    // Bytes that are there are still served after the end.
    let r = server.get("/dir/video%20file.ts", "Range: bytes=0-127\r\n");
    assert_eq!(r.status, 206);
    assert_eq!(r.body, objects()[1].1[..128]);
}

#[test]
fn http_later_block_timeout_truncates() {
    let server = Server::new(&[(0, 2)], short_cfg());
    let r = server.get("/a.txt", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.content_length(), 1000);
    // Blocks 0 and 1 went out, then the connection closed.
    assert_eq!(r.body, objects()[0].1[..128]);
}

#[test]
fn http_manifest_not_known_503() {
    let published = Arc::new(Published::default());
    let server = Server::start(published, short_cfg(), TempDir::new());
    let r = server.get("/a.txt", "");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    // The status answers at once.
    let r = server.get("/status", "");
    assert_eq!(r.status, 200);
    assert!(String::from_utf8(r.body)
        .unwrap()
        .contains("\"manifest\":false"));
}

#[test]
fn http_waits_for_the_manifest() {
    let dir = TempDir::new();
    let published = Arc::new(Published::default());
    let server = Server::start(published.clone(), cfg(), dir);
    let addr = server.addr;
    let client = std::thread::spawn(move || request(addr, "GET /a.txt HTTP/1.1\r\n\r\n"));
    publish_files(&server._dir, &published);
    publish_all_but(&published, &[]);
    let r = client.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, objects()[0].1);
}

#[test]
fn http_connection_limit_503() {
    let server = Server::new(
        &[],
        HttpConfig {
            wait_timeout: LIMIT,
            max_connections: 1,
        },
    );
    // The first connection holds the only slot while it has not sent its request.
    let mut first = connect(server.addr);
    let mut second = connect(server.addr);
    let r = read_response(&mut second);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    first.write_all(b"GET /a.txt HTTP/1.1\r\n\r\n").unwrap();
    let r = read_response(&mut first);
    assert_eq!(r.status, 200);
    // The slot is free again once the first thread is done.
    let deadline = Instant::now() + LIMIT;
    loop {
        let r = server.get("/a.txt", "");
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503);
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn http_stops_promptly() {
    let server = Server::new(&[], cfg());
    let started = Instant::now();
    drop(server); // Drop asserts serve_http returned Ok within a second.
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn http_blocks_larger_than_the_buffer() {
    // 2 MiB blocks, a 3 MiB + 5 object: reads go out in 1 MiB pieces within a block.
    let data = content(3 * BODY_BUF + 5, 3);
    let block = 64 * 32768;
    let manifest = Manifest {
        unit_size: 64,
        units_per_block: 32768,
        objects: vec![ObjectEntry::from_content("big.bin", &data, block)],
    };
    let dir = TempDir::new();
    let path = dir.0.join("big");
    std::fs::write(&path, &data).unwrap();
    let published = Arc::new(Published::default());
    published.publish_manifest(&manifest, vec![path]);
    published.publish_block(0, 0);
    published.publish_block(0, 1);
    published.notify();
    let server = Server::start(published, cfg(), dir);
    let r = server.get("/big.bin", "");
    assert_eq!(r.status, 200);
    assert!(r.body == data);
    let (a, b) = (BODY_BUF - 3, 2 * BODY_BUF + 17);
    let r = server.get("/big.bin", &format!("Range: bytes={a}-{b}\r\n"));
    assert_eq!(r.status, 206);
    assert!(r.body == data[a..=b]);
}
