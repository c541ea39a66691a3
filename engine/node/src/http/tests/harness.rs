//! A server over three small objects on 127.0.0.1, and a client that reads each response
//! to the server's close.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blockcast_proto::wire::{Manifest, ObjectEntry};

use crate::http::{serve_http, HttpConfig};
use crate::published::{Ask, Published};

/// 16-byte units, 4 per block: 64-byte blocks.
pub(super) const BLOCK: u64 = 64;
pub(super) const LIMIT: Duration = Duration::from_secs(10);

pub(super) fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Objects: 0 "a.txt" (1000 bytes, 16 blocks), 1 "dir/video file.ts" (300 bytes),
/// 2 "empty.bin" (0 bytes).
pub(super) fn objects() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("a.txt", content(1000, 1)),
        ("dir/video file.ts", content(300, 7)),
        ("empty.bin", Vec::new()),
    ]
}

pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "blockcast-http-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes the objects' files and publishes the manifest (no blocks yet).
pub(super) fn publish_files(dir: &TempDir, published: &Published) {
    let objs = objects();
    let manifest = Manifest {
        unit_size: 16,
        units_per_block: 4,
        objects: objs
            .iter()
            .map(|(name, data)| ObjectEntry::from_content(*name, data, BLOCK as usize))
            .collect(),
    };
    let paths: Vec<PathBuf> = objs
        .iter()
        .enumerate()
        .map(|(i, (_, data))| {
            let p = dir.0.join(format!("obj{i}"));
            std::fs::write(&p, data).unwrap();
            p
        })
        .collect();
    published.publish_manifest(&manifest, paths);
}

/// Publishes every block except those in `missing` (object, block).
pub(super) fn publish_all_but(published: &Published, missing: &[(u32, u32)]) {
    let m = published.manifest().unwrap().clone();
    for (o, entry) in m.objects.iter().enumerate() {
        for b in 0..entry.block_hashes.len() as u32 {
            if !missing.contains(&(o as u32, b)) {
                published.publish_block(o as u32, b);
            }
        }
    }
    published.notify();
}

pub(super) struct Server {
    pub(super) addr: SocketAddr,
    pub(super) published: Arc<Published>,
    pub(super) asks: mpsc::Receiver<Ask>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<()>>>,
    pub(super) _dir: TempDir,
}

impl Server {
    /// A server over the test objects, all blocks published but `missing`.
    pub(super) fn new(missing: &[(u32, u32)], cfg: HttpConfig) -> Self {
        let dir = TempDir::new();
        let published = Arc::new(Published::default());
        publish_files(&dir, &published);
        publish_all_but(&published, missing);
        Self::start(published, cfg, dir)
    }

    pub(super) fn start(published: Arc<Published>, cfg: HttpConfig, dir: TempDir) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let published = published.clone();
            let stop = stop.clone();
            std::thread::spawn(move || serve_http(listener, published, tx, cfg, &stop))
        };
        Server {
            addr,
            published,
            asks: rx,
            stop,
            thread: Some(thread),
            _dir: dir,
        }
    }

    pub(super) fn get(&self, path: &str, extra: &str) -> Response {
        request(
            self.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n"),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let started = Instant::now();
            let r = t.join();
            if !std::thread::panicking() {
                assert!(r.unwrap().is_ok());
                assert!(started.elapsed() < Duration::from_secs(1));
            }
        }
    }
}

pub(super) fn cfg() -> HttpConfig {
    HttpConfig {
        wait_timeout: LIMIT,
        max_connections: 64,
    }
}

pub(super) fn short_cfg() -> HttpConfig {
    HttpConfig {
        wait_timeout: Duration::from_millis(200),
        max_connections: 64,
    }
}

#[derive(Debug)]
pub(super) struct Response {
    pub(super) status: u16,
    headers: Vec<(String, String)>,
    pub(super) body: Vec<u8>,
}

impl Response {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn content_length(&self) -> u64 {
        self.header("content-length").unwrap().parse().unwrap()
    }
}

pub(super) fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.set_write_timeout(Some(LIMIT)).unwrap();
    s
}

pub(super) fn request(addr: SocketAddr, raw: &str) -> Response {
    let mut s = connect(addr);
    s.write_all(raw.as_bytes()).unwrap();
    read_response(&mut s)
}

/// Reads a whole response, up to the server's close.
pub(super) fn read_response(s: &mut TcpStream) -> Response {
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let head = std::str::from_utf8(&all[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
    let status = status_line[9..12].parse().unwrap();
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.to_string(), v.trim().to_string())
        })
        .collect();
    Response {
        status,
        headers,
        body: all[end..].to_vec(),
    }
}
