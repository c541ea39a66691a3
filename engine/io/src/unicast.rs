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

    #[test]
    fn a_super_datagram_is_forwarded_whole_and_arrives_in_segments() {
        let lo = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
        let (a, _) = bind_data_unicast(lo, 1 << 20).unwrap();
        let (b, _) = bind_data_unicast(lo, 1 << 20).unwrap();
        let to = match b.local_addr().unwrap() {
            std::net::SocketAddr::V4(v4) => v4,
            _ => unreachable!("bound to IPv4"),
        };
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
