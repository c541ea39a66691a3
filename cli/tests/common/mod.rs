//! Helpers shared by the end-to-end tests of the real `blockcast` binary (loopback.rs,
//! play.rs): each test file is its own crate and uses the part of this it needs.

#![allow(dead_code)]

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_blockcast");
/// The only interface any test uses.
pub const IFACE: &str = "127.0.0.1";
/// What a receiver asks for (a default `net.core.rmem_max`).
pub const RCVBUF: &str = "4194304";

/// Group and port for test number `test` of a suite whose third octets start at `octet_base`
/// and ports at `port_base`: the third octet and the port are the test's, the fourth octet and
/// the port's low digits come from the process id, so two runs of a suite at once do not
/// collide either.
pub fn group(octet_base: u8, port_base: u16, test: u8) -> String {
    let pid = std::process::id();
    let host = 1 + (pid % 253) as u8;
    let port = port_base + u16::from(test) * 100 + (pid % 100) as u16;
    format!(
        "239.255.{}.{host}:{port}",
        u16::from(octet_base) + u16::from(test)
    )
}

/// A scratch directory under the system temp dir, removed when dropped. Its name carries the
/// test crate's name (`blockcast-loopback-…`, `blockcast-play-…`).
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(test: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "blockcast-{}-{test}-{}",
            env!("CARGO_CRATE_NAME"),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create scratch dir");
        Scratch(p)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running child, its stderr (and stdout, unless the test reads it from a pipe) captured in
/// files (no pipe can fill up). Dropping it kills the child if it is still running, so a
/// failing test leaves nothing behind.
pub struct Proc {
    pub name: String,
    pub child: Child,
    status: Option<ExitStatus>,
    stdout: Option<PathBuf>,
    stderr: PathBuf,
}

/// Where a child's stdout goes.
pub enum Out {
    /// A file in the scratch directory (read with [`Proc::stdout`]).
    File,
    /// A pipe the test takes from [`Proc::child`].
    Piped,
}

impl Proc {
    /// Starts `cmd` with stderr in a file and stdout as `out` says; stdin is the caller's
    /// choice (set on `cmd`).
    pub fn start(dir: &Path, name: &str, cmd: &mut Command, out: Out) -> Proc {
        // `serve` keeps a hash cache under XDG_CACHE_HOME: inside the scratch dir, never in
        // the home of whoever runs the tests.
        cmd.env("XDG_CACHE_HOME", dir.join("cache"));
        let stderr = dir.join(format!("{name}.stderr"));
        let stdout = match out {
            Out::File => {
                let p = dir.join(format!("{name}.stdout"));
                cmd.stdout(File::create(&p).expect("stdout file"));
                Some(p)
            }
            Out::Piped => {
                cmd.stdout(Stdio::piped());
                None
            }
        };
        let child = cmd
            .stderr(File::create(&stderr).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_string(),
            child,
            status: None,
            stdout,
            stderr,
        }
    }

    /// Starts `blockcast` with `args` and stdin closed.
    pub fn blockcast<I, S>(dir: &Path, name: &str, args: I, out: Out) -> Proc
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        Proc::start(
            dir,
            name,
            Command::new(BIN).args(&args).stdin(Stdio::null()),
            out,
        )
    }

    /// Starts `blockcast` with `args`, stdin closed and stdout in a file.
    pub fn spawn<I, S>(dir: &Path, name: &str, args: I) -> Proc
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Proc::blockcast(dir, name, args, Out::File)
    }

    /// The exit status if the child has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits for the child to exit, at most `limit`; panics (and the guard kills it) past that.
    pub fn wait_within(&mut self, limit: Duration) -> ExitStatus {
        let end = Instant::now() + limit;
        loop {
            if let Some(s) = self.exited() {
                return s;
            }
            if Instant::now() >= end {
                panic!(
                    "{} still running after {limit:?}\nstderr:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for exit within `limit` and asserts the exit code.
    pub fn expect_code(&mut self, limit: Duration, code: i32) {
        let s = self.wait_within(limit);
        assert_eq!(
            s.code(),
            Some(code),
            "{} exited with {s}, wanted code {code}\nstdout:\n{}\nstderr:\n{}",
            self.name,
            self.stdout(),
            self.stderr()
        );
    }

    /// Panics if the child has already exited (used while waiting for it to make progress).
    pub fn assert_running(&mut self) {
        if let Some(s) = self.exited() {
            panic!(
                "{} exited early with {s}\nstdout:\n{}\nstderr:\n{}",
                self.name,
                self.stdout(),
                self.stderr()
            );
        }
    }

    pub fn kill(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// Sends SIGINT (what Ctrl-C sends).
    pub fn interrupt(&mut self) {
        let pid = self.child.id();
        let st = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -INT {pid} ({}): {st}", self.name);
    }

    /// What the child wrote to stdout so far, or `(piped)` if the test reads it from a pipe.
    pub fn stdout(&self) -> String {
        self.stdout
            .as_ref()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .unwrap_or_else(|| "(piped)".into())
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The JSON summary the child printed on stdout (`--json`): the last line (a receiver
    /// prints progress events before it).
    pub fn json(&self) -> serde_json::Value {
        let out = self.stdout();
        let last = out.trim().lines().last().unwrap_or("");
        serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("{}: last stdout line is not JSON ({e}):\n{out}", self.name))
    }

    /// Every line the child has finished writing to stdout so far, each parsed as one JSON
    /// document (`--json` prints one per line: a receiver's progress events, then its
    /// summary). A line still being written is left out.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        let out = self.stdout();
        out.split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!("{}: stdout line is not JSON ({e}): {l}\n{out}", self.name)
                })
            })
            .collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a test that cannot run here does.
#[derive(Debug, PartialEq, Eq)]
pub enum CannotRun {
    /// Print this line and return, green: off CI, where the reason is the machine's.
    Skip(String),
    /// Panic with this message, red: under CI a skipped test is a test that cannot fail.
    Fail(String),
}

/// The rule for a test that cannot run for `reason`, given the value of `CI` (`None`: unset):
/// it fails when `CI` is set to anything but "", "0" or "false", and is skipped otherwise.
pub fn cannot_run(ci: Option<&str>, reason: &str) -> CannotRun {
    let ci = ci.map(str::trim).unwrap_or("");
    if ci.is_empty() || ci == "0" || ci.eq_ignore_ascii_case("false") {
        CannotRun::Skip(format!("skipped: {reason}"))
    } else {
        CannotRun::Fail(format!("cannot run under CI={ci}: {reason}"))
    }
}

/// Whether the test can run: `true` when `why_not` is `None`. Otherwise the test is skipped
/// (the reason printed) or, under CI, failed here ([`cannot_run`]); the caller returns on
/// `false`.
#[track_caller]
pub fn can_run(why_not: Option<String>) -> bool {
    let Some(reason) = why_not else {
        return true;
    };
    let ci = std::env::var_os("CI").map(|v| v.to_string_lossy().into_owned());
    match cannot_run(ci.as_deref(), &reason) {
        CannotRun::Skip(line) => {
            eprintln!("{line}");
            false
        }
        CannotRun::Fail(message) => panic!("{message}"),
    }
}

/// Polls `cond` every 10 ms until it holds; panics after `limit`, saying `what` was awaited.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < end,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Writes `size` pseudo-random bytes (xorshift from `seed`), creating the parent directories.
/// The arguments of `blockcast receive` on `group` into `out` (127.0.0.1, the 4 MiB buffer
/// every test asks for, giving up after `timeout_s` without a server), followed by `extra`.
pub fn receive_args(group: &str, out: &Path, timeout_s: u32, extra: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "receive".into(),
        "--group".into(),
        group.into(),
        "--iface".into(),
        IFACE.into(),
        "--out".into(),
        out.into(),
        "--timeout".into(),
        timeout_s.to_string().into(),
        "--rcvbuf".into(),
        RCVBUF.into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    args
}

pub fn write_sample(path: &Path, size: u64, seed: u64) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("sample dir");
    }
    blockcast_node::local::write_sample(path, size, seed).expect("write sample");
}

pub fn hash_file(path: &Path) -> blake3::Hash {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = blake3::Hasher::new();
    h.update_reader(f)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    h.finalize()
}

pub fn assert_identical(want: &Path, got: &Path) {
    let want_len = std::fs::metadata(want).expect("source metadata").len();
    let got_len = std::fs::metadata(got)
        .unwrap_or_else(|e| panic!("{}: {e}", got.display()))
        .len();
    assert_eq!(got_len, want_len, "{} has the wrong length", got.display());
    assert_eq!(
        hash_file(got),
        hash_file(want),
        "{} differs from {}",
        got.display(),
        want.display()
    );
}

/// True once the 4 KiB at `offset` of `path` are not all zero: the receiver preallocates its
/// file with zeros when it gets the manifest and the first pass fills it in order, so for a
/// random sample (or an MPEG-TS, with a sync byte every 188 bytes) this says the first pass
/// has reached `offset`.
pub fn has_data_at(path: &Path, offset: u64) -> bool {
    let Ok(mut f) = File::open(path) else {
        return false;
    };
    let mut buf = [0u8; 4096];
    if f.seek(SeekFrom::Start(offset)).is_err() || f.read_exact(&mut buf).is_err() {
        return false;
    }
    buf.iter().any(|&b| b != 0)
}

pub mod netns;

/// A socket that hears `at` (a group and port) on loopback, as any host on the segment can;
/// reads wait at most `timeout`.
pub fn listen_group(at: std::net::SocketAddrV4, timeout: Duration) -> std::net::UdpSocket {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
    s.set_reuse_address(true).expect("reuse");
    s.set_multicast_all_v4(false).expect("multicast all");
    s.set_recv_buffer_size(8 << 20).expect("rcvbuf");
    s.bind(&std::net::SocketAddr::V4(at).into())
        .expect("bind group");
    s.join_multicast_v4(at.ip(), &std::net::Ipv4Addr::LOCALHOST)
        .expect("join");
    s.set_read_timeout(Some(timeout)).expect("timeout");
    s.into()
}

/// A socket that sends to groups through loopback only (TTL 1).
pub fn loopback_sender() -> std::net::UdpSocket {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let sock = socket2::Socket::from(s);
    sock.set_multicast_if_v4(&std::net::Ipv4Addr::LOCALHOST)
        .expect("if");
    sock.set_multicast_ttl_v4(1).expect("ttl");
    sock.into()
}

/// `promtool check metrics` on `text` (Debian's prometheus package; .ci/run installs it).
pub fn promtool_check(text: &str) {
    use std::io::Write;
    let spawned = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let why = "promtool is not installed (Debian package prometheus)".to_string();
    let Ok(mut check) = spawned else {
        assert!(!can_run(Some(why)));
        return;
    };
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
