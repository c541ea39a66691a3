//! AF_XDP across a veth pair between two network namespaces this test makes and deletes.
//!
//! Root only: elsewhere the test is skipped with the reason, and fails under `CI=true`. The
//! namespaces are named `bcx<pid>-a` and `bcx<pid>-b`; they have one veth pair and nothing
//! else, so no frame can leave them.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use blockcast_io::xdp::{
    hardware_address, ifindex, parse_udp, BindMode, Push, UdpFrameHeader, XdpFilter, XdpProgram,
    XdpSocket, XskConfig, FRAME_HEADERS,
};

const A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

fn skip_reason() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("");
    if euid != "0" {
        return Some(format!(
            "AF_XDP namespace tests need root (effective uid {euid:?})"
        ));
    }
    let ip = Command::new("ip").arg("-V").stdout(Stdio::null()).status();
    if !ip.is_ok_and(|s| s.success()) {
        return Some("AF_XDP namespace tests need `ip` installed".into());
    }
    None
}

/// True when the test can run; prints why not and returns false off CI, panics under CI.
fn can_run() -> bool {
    let Some(reason) = skip_reason() else {
        return true;
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{reason} (CI=true: a skipped test here is a test that cannot fail)");
    }
    eprintln!("skipped: {reason}");
    false
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair (`va` in a at 10.77.0.1, `vb` in b at 10.77.0.2);
/// deleted on drop, also when the test panics.
struct Pair {
    a: String,
    b: String,
}

impl Pair {
    fn new() -> Pair {
        let a = format!("bcx{}-a", std::process::id());
        let b = format!("bcx{}-b", std::process::id());
        for ns in [&a, &b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            run(&["ip", "netns", "add", ns]);
        }
        let pair = Pair { a, b };
        run(&[
            "ip", "-n", &pair.a, "link", "add", "va", "type", "veth", "peer", "name", "vb",
            "netns", &pair.b,
        ]);
        for (ns, dev, addr) in [(&pair.a, "va", A), (&pair.b, "vb", B)] {
            run(&[
                "ip",
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
            ]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                dev,
            ]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        pair
    }

    /// `ip link show dev` inside `ns`.
    fn link(ns: &str, dev: &str) -> String {
        let out = Command::new("ip")
            .args(["-n", ns, "link", "show", "dev", dev])
            .output()
            .expect("ip link show");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Moves the calling thread into network namespace `ns` (only this thread).
fn enter(ns: &str) {
    let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("open the namespace");
    // SAFETY: setns with a valid namespace fd changes only the calling thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// Sends an ICMP echo request to `to` from a raw socket and waits (bounded) for its reply.
fn echo(to: Ipv4Addr) {
    use socket2::{Domain, Protocol, Socket, Type};
    let raw =
        Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).expect("raw ICMP socket");
    raw.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let id = std::process::id() as u16;
    let mut req = [8u8, 0, 0, 0, 0, 0, 0, 1, b'b', b'c', b'x', b'd'];
    req[4..6].copy_from_slice(&id.to_be_bytes());
    let sum: u32 = req
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    req[2..4].copy_from_slice(&sum.to_be_bytes());
    let end = Instant::now() + LIMIT;
    let to = SocketAddrV4::new(to, 0).into();
    while Instant::now() < end {
        raw.send_to(&req, &to).expect("send the echo");
        let mut buf = [0u8; 256];
        while let Ok(n) = std::io::Read::read(&mut &raw, &mut buf) {
            let reply = &buf[..n];
            let icmp = &reply[usize::from(reply[0] & 0x0f) * 4..];
            if icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() {
                return;
            }
        }
    }
    panic!("no ICMP echo reply from {to:?}");
}

const SESSION_PORT: u16 = 5000;
const OTHER_PORT: u16 = 5001;
const BACK_PORT: u16 = 6000;
const COUNT: u32 = 100;
const LIMIT: Duration = Duration::from_secs(10);

#[test]
fn the_program_takes_only_the_session_port_and_the_tx_ring_reaches_a_socket() {
    if !can_run() {
        return;
    }
    let pair = Pair::new();
    let (ready_tx, ready_rx) = mpsc::channel::<[u8; 6]>();
    let (mac_tx, mac_rx) = mpsc::channel::<[u8; 6]>();
    let ns_b = pair.b.clone();
    std::thread::scope(|s| {
        // b: the XDP side.
        let b = s.spawn(move || {
            enter(&ns_b);
            let filter = XdpFilter {
                dst: Some(B),
                ports: SESSION_PORT..=SESSION_PORT,
            };
            let program = XdpProgram::attach("vb", &filter).expect("attach XDP natively to vb");
            let link = Pair::link(&ns_b, "vb");
            assert!(
                link.contains(" xdp ") || link.contains(" xdp\n"),
                "native XDP on vb: {link}"
            );
            // veth has no zero-copy mode: asked for alone it is refused, and auto copies.
            let zero_copy = XskConfig {
                mode: BindMode::ZeroCopy,
                ..XskConfig::default()
            };
            let refused = XdpSocket::open(ifindex("vb").unwrap(), 0, zero_copy)
                .err()
                .expect("zero-copy refused on veth");
            assert!(refused.to_string().contains("XDP_ZEROCOPY"), "{refused}");
            let mut xsk = XdpSocket::open(ifindex("vb").unwrap(), 0, XskConfig::default())
                .expect("open an AF_XDP socket on vb");
            assert!(!xsk.zero_copy(), "veth has no zero-copy mode");
            program.register(&xsk).expect("register the socket");
            let kernel_session = UdpSocket::bind((B, SESSION_PORT)).unwrap();
            let kernel_other = UdpSocket::bind((B, OTHER_PORT)).unwrap();
            ready_tx.send(hardware_address("vb").unwrap()).unwrap();

            // Every datagram to the session port arrives on the XSK, none on the kernel's socket.
            let end = Instant::now() + LIMIT;
            let mut seen = BTreeSet::new();
            while seen.len() < COUNT as usize {
                assert!(Instant::now() < end, "XSK got {} of {COUNT}", seen.len());
                xsk.wait_rx(Duration::from_millis(100));
                xsk.receive(64, |frame| {
                    let udp = parse_udp(frame).expect("a UDP frame");
                    assert_eq!(udp.dst, SocketAddrV4::new(B, SESSION_PORT));
                    let seq = u32::from_be_bytes(udp.payload[..4].try_into().unwrap());
                    assert!(seen.insert(seq), "datagram {seq} twice");
                });
            }
            // Other UDP reaches the kernel.
            kernel_other.set_read_timeout(Some(LIMIT)).unwrap();
            let mut buf = [0u8; 64];
            for i in 0..COUNT {
                let n = kernel_other
                    .recv(&mut buf)
                    .expect("datagram on the other port");
                assert_eq!(u32::from_be_bytes(buf[..4].try_into().unwrap()), i);
                assert_eq!(n, 16);
            }
            kernel_session.set_nonblocking(true).unwrap();
            assert!(
                kernel_session.recv(&mut buf).is_err(),
                "the kernel saw a session datagram"
            );

            // Frames through the TX ring reach an ordinary socket in a.
            let a_mac = mac_rx.recv().unwrap();
            let mut header = UdpFrameHeader::new(
                hardware_address("vb").unwrap(),
                a_mac,
                SocketAddrV4::new(B, SESSION_PORT),
                SocketAddrV4::new(A, BACK_PORT),
                64,
            );
            for i in 0..COUNT {
                let pushed = xsk.push(|frame| {
                    frame[FRAME_HEADERS..FRAME_HEADERS + 4].copy_from_slice(&i.to_be_bytes());
                    frame[FRAME_HEADERS + 4..FRAME_HEADERS + 32].fill(0x5a);
                    header.write(frame, 32)
                });
                assert_eq!(pushed, Push::Queued, "a free frame for datagram {i}");
                if i % 16 == 15 {
                    xsk.flush().unwrap();
                }
            }
            xsk.flush().unwrap();
            let stats = xsk.stats().unwrap();
            assert_eq!(stats.tx_invalid, 0);
            (program, xsk)
        });

        // a: ordinary sockets.
        let ns_a = pair.a.clone();
        let a = s.spawn(move || {
            enter(&ns_a);
            let back = UdpSocket::bind((A, BACK_PORT)).unwrap();
            back.set_read_timeout(Some(LIMIT)).unwrap();
            let b_mac = ready_rx.recv().expect("b is ready");
            let out = UdpSocket::bind((A, 0)).unwrap();
            let mut d = [0u8; 16];
            for port in [SESSION_PORT, OTHER_PORT] {
                for i in 0..COUNT {
                    d[..4].copy_from_slice(&i.to_be_bytes());
                    out.send_to(&d, (B, port)).unwrap();
                }
            }
            // ICMP reaches b's kernel while the program is attached: an echo is answered.
            echo(B);
            mac_tx.send(hardware_address("va").unwrap()).unwrap();
            let mut buf = [0u8; 64];
            for i in 0..COUNT {
                let (n, from) = back.recv_from(&mut buf).expect("a frame from b's TX ring");
                assert_eq!((n, from), (32, SocketAddrV4::new(B, SESSION_PORT).into()));
                assert_eq!(u32::from_be_bytes(buf[..4].try_into().unwrap()), i);
                assert!(buf[4..32].iter().all(|&x| x == 0x5a));
            }
            b_mac
        });
        a.join().expect("a's side");
        let (program, xsk) = b.join().expect("b's side");
        drop(xsk);
        drop(program);
    });
    // The link's fd closed with the program: nothing is left attached.
    let link = Pair::link(&pair.b, "vb");
    assert!(
        !link.contains("xdp"),
        "XDP still attached after drop: {link}"
    );
}
