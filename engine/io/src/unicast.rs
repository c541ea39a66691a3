//! Unicast data sockets for split mode (no multicast): a member receives units and control
//! packets on one socket and forwards copies from it, a GRO super-datagram at a time.

use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::error::IoError;
use crate::socket::{check_iface_addr, receive_options, request_buffer, BufKind, BufferSize};
use crate::sys;

/// Opens a unicast UDP socket bound to `addr` (an explicit interface address; port 0 lets the
/// kernel pick) for data and control at once: non-blocking, `rcvbuf` bytes of receive buffer
/// asked for (see [`BufferSize`]), 4 MiB of send buffer (forwarding sends bursts), and
/// `UDP_GRO` on, so a run of units from one peer arrives
/// as one super-datagram (read it with [`RecvBatch`](crate::RecvBatch) and
/// [`GRO_BUFFER_SIZE`](crate::GRO_BUFFER_SIZE) buffers).
///
/// Call it once per member at setup.
pub fn bind_data_unicast(
    addr: SocketAddrV4,
    rcvbuf: usize,
) -> Result<(UdpSocket, BufferSize), IoError> {
    const OP: &str = "bind_data_unicast";
    check_iface_addr(OP, *addr.ip())?;
    let ctx = format!("{addr}");
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| IoError::os("socket", &ctx, e))?;
    let granted = request_buffer(&socket, BufKind::Recv, rcvbuf)?;
    // Forwarding sends a super-datagram to each peer in a burst: room for several.
    request_buffer(&socket, BufKind::Send, 4 << 20)?;
    receive_options(&socket, true)?;
    socket
        .bind(&SockAddr::from(addr))
        .map_err(|e| IoError::os("bind", &ctx, e))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| IoError::os("fcntl(O_NONBLOCK)", &ctx, e))?;
    Ok((socket.into(), granted))
}

/// Sends `bytes` to `to` with one `sendmsg`: as one datagram, or with `segment_size` as
/// datagrams of that size cut by the kernel (UDP GSO; the last may be shorter), which is how a
/// received GRO super-datagram is forwarded whole.
///
/// Call it per destination; it does not block (a full send buffer is an error the caller
/// treats as loss). Returns the bytes sent.
pub fn send_segments(
    socket: &impl AsFd,
    to: SocketAddrV4,
    bytes: &[u8],
    segment_size: Option<u16>,
) -> Result<usize, IoError> {
    let fd = socket.as_fd().as_raw_fd();
    let mut name = sys::sockaddr_in_from_std(to);
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    // Room for one UDP_SEGMENT control message (a u16), 8-aligned.
    let mut cmsg = [0u64; 4];
    // SAFETY: msghdr is a C struct of pointers and integers; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut name as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(seg) = segment_size.filter(|&s| s > 0 && bytes.len() > usize::from(s)) {
        // SAFETY: CMSG_SPACE/CMSG_LEN are arithmetic; CMSG_FIRSTHDR of a msghdr whose control
        // buffer is `cmsg` (32 zeroed, 8-aligned bytes, at least CMSG_SPACE(2)) is non-null and
        // inside it, and CMSG_DATA has room for the u16.
        unsafe {
            let space = libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as usize;
            msg.msg_control = cmsg.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = libc::UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
        }
    }
    // SAFETY: `msg` points at `name`, `iov` (which describes the initialized slice `bytes`)
    // and `cmsg`, all alive across the call; the kernel only reads them.
    let rc = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT) };
    if rc < 0 {
        return Err(IoError::last_os("sendmsg", format!("to {to}")));
    }
    Ok(rc as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RecvBatch;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    /// Two data sockets on loopback (with GRO), and the second one's address.
    fn pair() -> (UdpSocket, UdpSocket, SocketAddrV4) {
        let lo = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
        let (a, _) = bind_data_unicast(lo, 1 << 20).unwrap();
        let (b, _) = bind_data_unicast(lo, 1 << 20).unwrap();
        let to = match b.local_addr().unwrap() {
            std::net::SocketAddr::V4(v4) => v4,
            _ => unreachable!("bound to IPv4"),
        };
        (a, b, to)
    }

    #[test]
    fn a_super_datagram_is_forwarded_whole_and_arrives_in_segments() {
        let (a, b, to) = pair();
        // Ten 100-byte segments and a short one, numbered.
        let mut bytes = Vec::new();
        for i in 0..11u8 {
            let len = if i == 10 { 40 } else { 100 };
            bytes.extend(std::iter::repeat_n(i, len));
        }
        assert_eq!(
            send_segments(&a, to, &bytes, Some(100)).unwrap(),
            bytes.len()
        );
        let mut rx = RecvBatch::new(16, crate::GRO_BUFFER_SIZE).unwrap();
        let mut got = Vec::new();
        while got.len() < 11 {
            assert!(
                rx.recv(&b, Duration::from_secs(2)).unwrap() > 0,
                "timed out"
            );
            for d in rx.iter() {
                got.extend(d.segments().map(|s| s.to_vec()));
            }
        }
        assert_eq!(got.len(), 11);
        for (i, s) in got.iter().enumerate() {
            assert_eq!(s.len(), if i == 10 { 40 } else { 100 });
            assert!(s.iter().all(|&x| x == i as u8));
        }
    }

    /// Datagram `i` of a test stream: a 4-byte header `[i; 4]`, then `len` bytes of `i + 100`.
    fn numbered(i: u8, len: usize) -> Vec<u8> {
        let mut d = vec![i; 4];
        d.extend(std::iter::repeat_n(i + 100, len));
        d
    }

    #[test]
    fn a_laid_out_receive_puts_expected_payloads_in_their_slots_and_the_rest_whole() {
        use crate::{Segment, Slot};
        let (a, b, to) = pair();
        let mut dest = vec![0u8; 6 * 100];
        let base = dest.as_mut_ptr();
        let mut rx = RecvBatch::new(4, crate::GRO_BUFFER_SIZE).unwrap();
        // Sends `bytes` (in `seg`-byte segments), lays the receive out for up to six
        // 100-byte payloads with slots where `with_slot`, and returns each datagram
        // received: how it came, its bytes, and whether its payload lies in `dest`.
        let mut round = |bytes: &[u8], seg: Option<u16>, with_slot: &dyn Fn(usize) -> bool| {
            send_segments(&a, to, bytes, seg).unwrap();
            let slots: Vec<Option<Slot>> = (0..6)
                // SAFETY (of the pointer arithmetic): j * 100 + 100 <= dest.len().
                .map(|j| with_slot(j).then(|| Slot::new(unsafe { base.add(j * 100) }, 100)))
                .collect();
            let mut got = Vec::new();
            let mut received = 0;
            while received < bytes.len() {
                // SAFETY: the slots lie apart in `dest`, which outlives the batch and is
                // read only after the segments are dropped.
                unsafe { rx.place_next(4, 6, 100, &slots) };
                assert!(
                    rx.recv(&b, Duration::from_secs(2)).unwrap() > 0,
                    "timed out"
                );
                for i in 0..rx.len() {
                    let (_, segs) = rx.segments_placed(i).unwrap();
                    for s in segs {
                        let got_one = match s {
                            Segment::Whole(w) => ("whole", w.to_vec(), false),
                            Segment::Parts { head, payload } => {
                                let at = payload.as_ptr() as usize;
                                let inside = (base as usize..base as usize + 600).contains(&at);
                                ("parts", [head, payload].concat(), inside)
                            }
                            Segment::Joined(j) => ("joined", j, false),
                        };
                        received += got_one.1.len();
                        got.push(got_one);
                    }
                }
            }
            got
        };

        // As expected: six 104-byte datagrams in one super-datagram (the last 44 bytes), the
        // third without a slot.
        let first: Vec<u8> = (0..6u8)
            .flat_map(|i| numbered(i, if i == 5 { 40 } else { 100 }))
            .collect();
        let got = round(&first, Some(104), &|j| j != 2);
        assert_eq!(got.len(), 6);
        for (i, (kind, bytes, in_dest)) in got.iter().enumerate() {
            assert_eq!(bytes, &numbered(i as u8, if i == 5 { 40 } else { 100 }));
            assert_eq!(
                (*kind, *in_dest),
                if i == 2 {
                    ("whole", false)
                } else {
                    ("parts", true)
                }
            );
        }
        let dest_now = |r: std::ops::Range<usize>| {
            // SAFETY: within `dest`, which nothing writes to between receives.
            unsafe { std::slice::from_raw_parts(base.add(r.start), r.len()) }.to_vec()
        };
        assert_eq!(
            dest_now(100..200),
            [101u8; 100],
            "datagram 1's payload in its slot"
        );
        assert_eq!(
            dest_now(500..540),
            [105u8; 40],
            "the short last one's, at its slot's start"
        );
        assert_eq!(
            dest_now(200..300),
            [0u8; 100],
            "no slot, nothing written there"
        );
        // Another datagram than expected still comes whole: a 30-byte one in two pieces,
        // three 60-byte segments across the layout, joined in a copy where they straddle it.
        let got = round(&numbered(6, 26), None, &|_| true);
        assert_eq!(got, vec![("parts", numbered(6, 26), true)]);
        let third: Vec<u8> = (7..10u8).flat_map(|i| numbered(i, 56)).collect();
        let got = round(&third, Some(60), &|_| true);
        let kinds: Vec<&str> = got.iter().map(|g| g.0).collect();
        assert_eq!(kinds, ["parts", "joined", "joined"]);
        for (k, (_, bytes, _)) in got.iter().enumerate() {
            assert_eq!(bytes, &numbered(7 + k as u8, 56));
        }
        // Unplanned: a plain receive.
        send_segments(&a, to, &numbered(10, 20), None).unwrap();
        assert!(rx.recv(&b, Duration::from_secs(2)).unwrap() > 0);
        let (_, segs) = rx.segments_placed(0).unwrap();
        let segs: Vec<Segment<'_>> = segs.collect();
        assert_eq!(segs, vec![Segment::Whole(&numbered(10, 20)[..])]);
        assert_eq!(rx.get(0).unwrap().bytes, &numbered(10, 20)[..]);
        drop(segs);
        // The slots took whatever came: datagram 8's tail and 9's head now lie in slot 1.
        assert_eq!(&dest[112..116], &[9u8; 4][..]);
    }

    #[test]
    fn a_ring_sends_each_super_buffer_to_its_own_destination() {
        use crate::{SendRing, SendRingConfig, Source};
        use std::sync::Arc;
        let lo = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
        let tx = crate::bind_unicast(std::net::SocketAddr::V4(lo), true).unwrap();
        let mut ring = SendRing::new(tx, SendRingConfig::default()).unwrap();
        let peers: Vec<UdpSocket> = (0..2)
            .map(|_| bind_data_unicast(lo, 1 << 20).unwrap().0)
            .collect();
        let payload: Source = Arc::new(vec![9u8; 4 * 96]);
        for (i, p) in peers.iter().enumerate() {
            let to = match p.local_addr().unwrap() {
                std::net::SocketAddr::V4(v4) => v4,
                _ => unreachable!("bound to IPv4"),
            };
            let mut b = ring.batch(100).unwrap();
            b.set_destination(to);
            for _ in 0..=i {
                b.push(&[i as u8; 4], &payload, 0..96).unwrap();
            }
            b.submit().unwrap();
        }
        ring.flush().unwrap();
        assert!(ring.drain(Duration::from_secs(2)).unwrap());
        let mut rx = RecvBatch::new(8, crate::GRO_BUFFER_SIZE).unwrap();
        for (i, p) in peers.iter().enumerate() {
            let mut segs = 0;
            while segs < i + 1 {
                assert!(
                    rx.recv(p, Duration::from_secs(2)).unwrap() > 0,
                    "peer {i} got nothing"
                );
                for d in rx.iter() {
                    for s in d.segments() {
                        assert_eq!(s[0], i as u8, "peer {i} got another's segment");
                        segs += 1;
                    }
                }
            }
            assert_eq!(segs, i + 1);
        }
    }

    #[test]
    fn refuses_an_unspecified_interface() {
        let e = bind_data_unicast(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), 0).unwrap_err();
        assert!(e.to_string().contains("explicitly"), "{e}");
    }
}
