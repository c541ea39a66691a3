//! Real sockets on loopback multicast: SendRing (io_uring + GSO) to RecvBatch (recvmmsg, with
//! and without GRO).
//!
//! Network safety: every group is in 239.255.0.0/16, the sender sets IP_MULTICAST_IF to
//! 127.0.0.1 with TTL 1, receivers join on 127.0.0.1 with IP_MULTICAST_ALL off; each test uses
//! its own group and a port reserved for it, so tests (and copies of them) can run in
//! parallel. Every wait has a deadline.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use blockcast_io::{
    iface, receive_queue_ppm, BatchError, IoError, MulticastReceiver, MulticastSender, RecvBatch,
    SendRing, SendRingConfig, Source, GRO_BUFFER_SIZE,
};

const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;
const RCVBUF: usize = 16 << 20;

/// A group nobody else on this host uses for the length of a test, even when several copies
/// of these tests run at once: the port is a fresh ephemeral port that the returned socket
/// keeps reserved on 127.0.0.1 (binding the group address to the same port is still allowed),
/// and the third octet comes from the process id.
fn group(last: u8) -> (SocketAddrV4, std::net::UdpSocket) {
    let hold = std::net::UdpSocket::bind((LO, 0)).unwrap();
    let port = hold.local_addr().unwrap().port();
    let octet = (std::process::id() % 256) as u8;
    (
        SocketAddrV4::new(Ipv4Addr::new(239, 255, octet, last), port),
        hold,
    )
}

/// Deterministic pseudo-random bytes (xorshift64*), so a receiver can check every byte.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

struct RxReport {
    seen: Vec<bool>,
    duplicates: u64,
    bad: u64,
    gro_datagrams: u64,
    truncated: u64,
}

/// Drains `rx` until all `count` sequence numbers arrived or `deadline`; checks every byte.
fn drain_receiver(
    rx: MulticastReceiver,
    data: Arc<Vec<u8>>,
    count: usize,
    seg: usize,
    progress: Arc<AtomicU64>,
    deadline: Instant,
) -> RxReport {
    let payload = seg - 8;
    let mut batch = RecvBatch::new(64, GRO_BUFFER_SIZE).unwrap();
    let mut r = RxReport {
        seen: vec![false; count],
        duplicates: 0,
        bad: 0,
        gro_datagrams: 0,
        truncated: 0,
    };
    let mut got = 0usize;
    while got < count && Instant::now() < deadline {
        batch.recv(&rx, Duration::from_millis(100)).unwrap();
        for d in batch.iter() {
            if d.truncated {
                r.truncated += 1;
                continue;
            }
            if d.segment_size.is_some() {
                r.gro_datagrams += 1;
            }
            for s in d.segments() {
                if s.len() != seg {
                    r.bad += 1;
                    continue;
                }
                let seq = u64::from_be_bytes(s[..8].try_into().unwrap()) as usize;
                if seq >= count || s[8..] != data[seq * payload..(seq + 1) * payload] {
                    r.bad += 1;
                    continue;
                }
                if r.seen[seq] {
                    r.duplicates += 1;
                } else {
                    r.seen[seq] = true;
                    got += 1;
                }
            }
        }
        // Release: the sender reads this to keep its window inside our receive buffer.
        progress.store(got as u64, Ordering::Release);
    }
    r
}

/// 10,000 datagrams of 1400 bytes, GSO through SendRing, to two receivers on one group (one
/// with GRO, one without); both get every datagram exactly once, byte for byte.
///
/// Not flaky by construction: the sender never has more datagrams outstanding than a
/// conservative fraction of the smaller receive buffer (a window over the receivers'
/// progress), so the kernel never has a reason to drop.
#[test]
fn gso_to_two_receivers_exact() {
    const COUNT: usize = 10_000;
    const SEG: usize = 1400;
    let (g, _hold) = group(1);
    let rx_gro = MulticastReceiver::new(g, LO, RCVBUF, true).unwrap();
    let rx_plain = MulticastReceiver::new(g, LO, RCVBUF, false).unwrap();
    assert!(rx_gro.gro() && !rx_plain.gro());
    for b in [rx_gro.recv_buffer(), rx_plain.recv_buffer()] {
        if b.capped_by_sysctl {
            eprintln!(
                "warning: receive buffer capped at {} bytes (asked {}): raise net.core.rmem_max; \
                 the test shrinks its window instead",
                b.effective, b.requested
            );
        }
    }
    let rcvbuf = rx_gro
        .recv_buffer()
        .effective
        .min(rx_plain.recv_buffer().effective);
    // A 1400-byte datagram costs ~2.3 KB of receive buffer without GRO; allow 8 KiB each.
    let window = (rcvbuf / 8192).clamp(46, 2000) as u64;

    let data = Arc::new(pattern(COUNT * (SEG - 8), 0x5EED));
    let deadline = Instant::now() + Duration::from_secs(30);
    let progress: Vec<Arc<AtomicU64>> = (0..2).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let handles: Vec<_> = [rx_gro, rx_plain]
        .into_iter()
        .zip(progress.iter().cloned())
        .map(|(rx, p)| {
            let data = Arc::clone(&data);
            thread::spawn(move || drain_receiver(rx, data, COUNT, SEG, p, deadline))
        })
        .collect();

    let tx = MulticastSender::new(g, LO, 1, 0).unwrap();
    let mut ring = SendRing::new(tx, SendRingConfig::default()).unwrap();
    eprintln!("ring mode: {:?}", ring.mode());
    let source: Source = data.clone();
    let mut next = 0usize;
    while next < COUNT {
        assert!(Instant::now() < deadline, "sender timed out at {next}");
        // Acquire pairs with the receivers' Release store of their progress.
        let slowest = progress
            .iter()
            .map(|p| p.load(Ordering::Acquire))
            .min()
            .unwrap_or(0);
        if next as u64 >= slowest + window {
            ring.flush().unwrap();
            thread::yield_now();
            continue;
        }
        if ring.free_slots() == 0 {
            ring.wait(Duration::from_millis(100)).unwrap();
            continue;
        }
        let mut b = ring.batch(SEG as u16).unwrap();
        let allowed = (slowest + window - next as u64) as usize;
        let n = b.room().min(COUNT - next).min(allowed).max(1);
        for seq in next..next + n {
            let p = seq * (SEG - 8);
            b.push(&(seq as u64).to_be_bytes(), &source, p..p + SEG - 8)
                .unwrap();
        }
        b.submit().unwrap();
        ring.flush().unwrap();
        next += n;
    }
    assert!(ring.drain(Duration::from_secs(5)).unwrap());
    let st = ring.stats();
    assert_eq!(st.batches_failed(), 0, "{st:?}");
    assert_eq!(st.segments_sent, COUNT as u64, "{st:?}");
    assert_eq!(st.bytes_sent, (COUNT * SEG) as u64);

    for (i, h) in handles.into_iter().enumerate() {
        let r = h.join().unwrap();
        let missing = r.seen.iter().filter(|s| !**s).count();
        assert_eq!(missing, 0, "receiver {i} missed {missing} datagrams");
        assert_eq!(
            (r.duplicates, r.bad, r.truncated),
            (0, 0, 0),
            "receiver {i}"
        );
        if i == 0 {
            assert!(
                r.gro_datagrams > 0,
                "the GRO receiver saw no super-datagram"
            );
        } else {
            assert_eq!(
                r.gro_datagrams, 0,
                "the plain receiver got a super-datagram"
            );
        }
    }
}

/// Oversized GSO requests are refused with an error before anything reaches the kernel.
#[test]
fn oversized_gso_is_rejected() {
    let (g, _hold) = group(2);
    let rx = MulticastReceiver::new(g, LO, 0, true).unwrap();
    let tx = MulticastSender::new(g, LO, 1, 0).unwrap();
    let cfg = SendRingConfig {
        max_segments: 128,
        ..SendRingConfig::default()
    };
    let mut ring = SendRing::new(tx, cfg).unwrap();
    let source: Source = Arc::new(vec![0u8; 200_000]);

    assert_eq!(ring.batch(65_508).err(), Some(BatchError::SegmentSize));
    {
        let mut b = ring.batch(1400).unwrap();
        for i in 0..46 {
            b.push(&[], &source, i * 1400..(i + 1) * 1400).unwrap();
        }
        // 47 × 1400 = 65800 > 65507.
        assert_eq!(b.push(&[], &source, 0..1400), Err(BatchError::TooLarge));
    } // dropped unsubmitted: the slot returns
    {
        let mut b = ring.batch(100).unwrap();
        for _ in 0..128 {
            b.push(&[], &source, 0..100).unwrap();
        }
        assert_eq!(
            b.push(&[], &source, 0..100),
            Err(BatchError::TooManySegments)
        );
    }
    assert_eq!(ring.stats().batches_submitted, 0);
    assert_eq!(ring.free_slots(), 32);

    // Nothing was sent: the receiver stays empty for a short, bounded wait.
    let mut batch = RecvBatch::new(4, GRO_BUFFER_SIZE).unwrap();
    assert_eq!(batch.recv(&rx, Duration::from_millis(100)).unwrap(), 0);
}

/// A non-existent interface name gives an error that lists the interfaces that exist.
#[test]
fn unknown_interface_lists_the_existing_ones() {
    let (g, _hold) = group(3);
    let err = iface::resolve_ipv4("nosuchif9")
        .and_then(|addr| MulticastReceiver::new(g, addr, 0, true))
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("nosuchif9"), "{msg}");
    assert!(msg.contains("lo (127.0.0.1"), "{msg}");
    assert!(matches!(err, IoError::NoSuchInterface { .. }));
}

/// Two groups on the same port: each receiver gets its own group's datagrams only.
#[test]
fn receivers_see_only_their_group() {
    const N: usize = 10;
    // Same port for both groups: only the group address tells them apart.
    let (ga, _hold) = group(4);
    let gb = SocketAddrV4::new(Ipv4Addr::new(239, 255, ga.ip().octets()[2], 5), ga.port());
    let rxa = MulticastReceiver::new(ga, LO, RCVBUF, false).unwrap();
    let rxb = MulticastReceiver::new(gb, LO, RCVBUF, false).unwrap();
    for (g, tag) in [(ga, b'A'), (gb, b'B')] {
        let tx = MulticastSender::new(g, LO, 1, 0).unwrap();
        let mut ring = SendRing::new(tx, SendRingConfig::default()).unwrap();
        let source: Source = Arc::new(vec![tag; 100]);
        let mut b = ring.batch(100).unwrap();
        for _ in 0..N {
            b.push(&[], &source, 0..100).unwrap();
        }
        b.submit().unwrap();
        assert!(ring.drain(Duration::from_secs(5)).unwrap());
        assert_eq!(ring.stats().segments_sent, N as u64);
    }
    for (rx, tag) in [(rxa, b'A'), (rxb, b'B')] {
        let mut batch = RecvBatch::new(64, 2048).unwrap();
        let mut got = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while got < N && Instant::now() < deadline {
            batch.recv(&rx, Duration::from_millis(100)).unwrap();
            for d in batch.iter() {
                assert!(
                    d.bytes.iter().all(|&b| b == tag),
                    "foreign group's datagram"
                );
                got += d.segments().count();
            }
        }
        assert_eq!(got, N);
        // Nothing more (in particular nothing from the other group) within a bounded wait.
        assert_eq!(batch.recv(&rx, Duration::from_millis(50)).unwrap(), 0);
    }
}

/// A receiver whose buffer overflows learns how many datagrams its socket dropped
/// (`SO_RXQ_OVFL`), and the count matches what was sent and not received.
#[test]
fn socket_drops_are_reported() {
    const N: u64 = 400;
    let (g, _hold) = group(6);
    // The smallest buffer the kernel grants: a few datagrams fit, the rest are dropped.
    let rx = MulticastReceiver::new(g, LO, 1, false).unwrap();
    // The sender's socket is connected to the group: send on it as a plain UDP socket.
    let tx = std::net::UdpSocket::from(std::os::fd::OwnedFd::from(
        MulticastSender::new(g, LO, 1, 0).unwrap(),
    ));
    // Loopback delivers inside the send call, so every datagram is queued or dropped by the
    // time it returns; nothing reads meanwhile.
    let payload = vec![7u8; 1400];
    for _ in 0..N {
        let _ = tx.send(&payload);
    }
    let mut batch = RecvBatch::new(64, 2048).unwrap();
    let drain = |batch: &mut RecvBatch| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && batch.recv(&rx, Duration::from_millis(50)).unwrap() > 0 {
        }
    };
    drain(&mut batch);
    // The count travels with datagrams queued after the drops: send one more.
    let queued = batch.received();
    tx.send(&payload).unwrap();
    drain(&mut batch);
    assert_eq!(batch.received(), queued + 1);
    let drops = u64::from(batch.socket_drops().expect("the socket reports its drops"));
    assert!(queued > 0 && queued < N, "received {queued} of {N}");
    assert_eq!(queued + drops, N, "received {queued} + dropped {drops}");
}

/// The receive queue's fill (`SO_MEMINFO`) rises with queued datagrams and falls back to
/// zero once they are read.
#[test]
fn receive_queue_fill_is_reported() {
    let (g, _hold) = group(7);
    let rx = MulticastReceiver::new(g, LO, 1 << 20, false).unwrap();
    let tx = std::net::UdpSocket::from(std::os::fd::OwnedFd::from(
        MulticastSender::new(g, LO, 1, 0).unwrap(),
    ));
    assert_eq!(receive_queue_ppm(&rx), Some(0));
    let payload = vec![7u8; 1400];
    for _ in 0..50 {
        tx.send(&payload).unwrap();
    }
    // Loopback queues inside the send call: the 50 datagrams are there now.
    let full = receive_queue_ppm(&rx).unwrap();
    // At least their payload, at most the whole buffer (nothing was dropped).
    let buffer = rx.recv_buffer().effective as u64;
    assert!(
        u64::from(full) >= 50 * 1400 * 1_000_000 / buffer,
        "{full} ppm"
    );
    assert!(full < 1_000_000, "{full} ppm");
    let mut batch = RecvBatch::new(64, 2048).unwrap();
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while got < 50 && Instant::now() < deadline {
        got += batch.recv(&rx, Duration::from_millis(50)).unwrap();
    }
    assert_eq!(got, 50);
    assert_eq!(receive_queue_ppm(&rx), Some(0));
}
