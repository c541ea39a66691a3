//! UDP sockets: multicast sender and receiver with every option set explicitly, and a plain
//! unicast socket for the control plane.
//!
//! Safety rules these constructors enforce (docs/DESIGN.md, "Safety and honesty rules"):
//! the interface is always given explicitly (never `0.0.0.0`) and must exist on this host;
//! the sender sets `IP_MULTICAST_IF` and binds to that interface's address; receivers turn
//! `IP_MULTICAST_ALL` off, so they see only the group they joined.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::error::IoError;
use crate::iface;
use crate::sys;

/// A socket buffer size: what was asked for and what the kernel granted.
///
/// The kernel doubles a `SO_RCVBUF`/`SO_SNDBUF` request to account for per-packet overhead, so
/// `effective` (the kernel's own figure, read back with `getsockopt`) is twice `requested` when
/// the request was granted in full. When `net.core.rmem_max` (`wmem_max` for send buffers)
/// is below the request and `SO_*BUFFORCE` is not permitted (not root), the kernel silently
/// clamps it: then `capped_by_sysctl` is true and the caller should warn, e.g.
/// "raise net.core.rmem_max to at least `requested`".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferSize {
    /// Bytes asked for (0 = keep the kernel default).
    pub requested: usize,
    /// Bytes the kernel reports for the socket after the request (`getsockopt`).
    pub effective: usize,
    /// The kernel clamped the request to its sysctl maximum.
    pub capped_by_sysctl: bool,
}

#[derive(Clone, Copy)]
pub(crate) enum BufKind {
    Recv,
    Send,
}

/// Asks for a socket buffer of `requested` bytes: `SO_RCVBUF`/`SO_SNDBUF` first, then (when
/// the sysctl maximum clamped it) `SO_*BUFFORCE`, which works with CAP_NET_ADMIN.
/// Options every data receiver sets: `UDP_GRO` when asked, and `SO_RXQ_OVFL`, so that each
/// datagram carries the socket's count of datagrams dropped for lack of buffer space
/// (`RecvBatch::socket_drops`): congestion at this receiver, told apart from loss on the way.
pub(crate) fn receive_options(socket: &Socket, gro: bool) -> Result<(), IoError> {
    if gro {
        sys::setsockopt_int(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            1,
            "setsockopt(UDP_GRO)",
        )?;
    }
    sys::setsockopt_int(
        socket.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RXQ_OVFL,
        1,
        "setsockopt(SO_RXQ_OVFL)",
    )
}

pub(crate) fn request_buffer(
    sock: &Socket,
    kind: BufKind,
    requested: usize,
) -> Result<BufferSize, IoError> {
    let fd = sock.as_raw_fd();
    let (opt, force, set_op, get_op, force_op) = match kind {
        BufKind::Recv => (
            libc::SO_RCVBUF,
            libc::SO_RCVBUFFORCE,
            "setsockopt(SO_RCVBUF)",
            "getsockopt(SO_RCVBUF)",
            "setsockopt(SO_RCVBUFFORCE)",
        ),
        BufKind::Send => (
            libc::SO_SNDBUF,
            libc::SO_SNDBUFFORCE,
            "setsockopt(SO_SNDBUF)",
            "getsockopt(SO_SNDBUF)",
            "setsockopt(SO_SNDBUFFORCE)",
        ),
    };
    let read = || -> Result<usize, IoError> {
        let v = sys::getsockopt_int(fd, libc::SOL_SOCKET, opt, get_op)?;
        Ok(usize::try_from(v).unwrap_or(0))
    };
    if requested == 0 {
        return Ok(BufferSize {
            requested,
            effective: read()?,
            capped_by_sysctl: false,
        });
    }
    // The kernel takes an int and doubles it; keep the doubled value representable.
    let req = requested.min(i32::MAX as usize / 2);
    let wanted = req * 2;
    sys::setsockopt_int(fd, libc::SOL_SOCKET, opt, req as libc::c_int, set_op)?;
    let mut effective = read()?;
    if effective < wanted {
        // Without CAP_NET_ADMIN this fails with EPERM; the clamped size then stands.
        match sys::setsockopt_int(fd, libc::SOL_SOCKET, force, req as libc::c_int, force_op) {
            Ok(()) => effective = read()?,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(BufferSize {
        requested,
        effective,
        capped_by_sysctl: effective < wanted,
    })
}

/// Checks that `iface_addr` can name an interface for multicast: not unspecified, not
/// multicast, and assigned to an interface of this host (the error lists those that exist).
pub(crate) fn check_iface_addr(op: &'static str, iface_addr: Ipv4Addr) -> Result<(), IoError> {
    if iface_addr.is_unspecified() {
        return Err(IoError::invalid(
            op,
            "interface address 0.0.0.0: choose the interface explicitly (e.g. 127.0.0.1 for lo)",
        ));
    }
    if iface_addr.is_multicast() {
        return Err(IoError::invalid(
            op,
            format!("interface address {iface_addr} is a multicast address"),
        ));
    }
    iface::resolve_ipv4(&iface_addr.to_string()).map(drop)
}

fn check_group(op: &'static str, group: SocketAddrV4) -> Result<(), IoError> {
    if !group.ip().is_multicast() {
        return Err(IoError::invalid(
            op,
            format!("{group} is not an IPv4 multicast address (224.0.0.0/4)"),
        ));
    }
    if group.port() == 0 {
        return Err(IoError::invalid(
            op,
            format!("{group}: the group needs a port"),
        ));
    }
    Ok(())
}

fn new_udp(op: &'static str, context: &str) -> Result<Socket, IoError> {
    Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| IoError::os(op, context, e))
}

/// A UDP socket that sends to one multicast group through one interface.
///
/// Bound to `iface_addr:0`, `IP_MULTICAST_IF = iface_addr`, TTL as given, multicast loop on
/// (local receivers get a copy), connected to the group. Hand it to
/// [`SendRing::new`](crate::SendRing::new) to send with io_uring and GSO.
#[derive(Debug)]
pub struct MulticastSender {
    socket: Socket,
    group: SocketAddrV4,
    iface_addr: Ipv4Addr,
    send_buffer: BufferSize,
}

impl MulticastSender {
    /// Opens a sender for `group` on the interface whose address is `iface_addr`.
    ///
    /// Call it once per group at setup. `ttl` is the multicast TTL (1 keeps packets on the
    /// local link; at most 255). `sndbuf` is the send buffer to ask for in bytes (0 keeps the
    /// kernel default); see [`send_buffer`](Self::send_buffer) for what was granted.
    pub fn new(
        group: SocketAddrV4,
        iface_addr: Ipv4Addr,
        ttl: u32,
        sndbuf: usize,
    ) -> Result<Self, IoError> {
        const OP: &str = "MulticastSender::new";
        check_group(OP, group)?;
        check_iface_addr(OP, iface_addr)?;
        if ttl > 255 {
            return Err(IoError::invalid(OP, format!("ttl {ttl} is above 255")));
        }
        let ctx = format!("group {group} on {iface_addr}");
        let socket = new_udp("socket", &ctx)?;
        socket
            .set_multicast_if_v4(&iface_addr)
            .map_err(|e| IoError::os("setsockopt(IP_MULTICAST_IF)", &ctx, e))?;
        socket
            .set_multicast_ttl_v4(ttl)
            .map_err(|e| IoError::os("setsockopt(IP_MULTICAST_TTL)", &ctx, e))?;
        socket
            .set_multicast_loop_v4(true)
            .map_err(|e| IoError::os("setsockopt(IP_MULTICAST_LOOP)", &ctx, e))?;
        socket
            .bind(&SockAddr::from(SocketAddrV4::new(iface_addr, 0)))
            .map_err(|e| IoError::os("bind", &ctx, e))?;
        let send_buffer = request_buffer(&socket, BufKind::Send, sndbuf)?;
        socket
            .connect(&SockAddr::from(group))
            .map_err(|e| IoError::os("connect", &ctx, e))?;
        Ok(MulticastSender {
            socket,
            group,
            iface_addr,
            send_buffer,
        })
    }

    /// The group this socket sends to.
    pub fn group(&self) -> SocketAddrV4 {
        self.group
    }

    /// The interface address it sends from.
    pub fn iface_addr(&self) -> Ipv4Addr {
        self.iface_addr
    }

    /// The send buffer asked for and granted; check `capped_by_sysctl` once after setup.
    pub fn send_buffer(&self) -> BufferSize {
        self.send_buffer
    }

    /// The local address (`iface_addr:port`) receivers see as the source.
    pub fn local_addr(&self) -> Result<SocketAddrV4, IoError> {
        let addr = self
            .socket
            .local_addr()
            .map_err(|e| IoError::os("getsockname", format!("group {}", self.group), e))?;
        addr.as_socket_ipv4()
            .ok_or_else(|| IoError::invalid("getsockname", "not an IPv4 address"))
    }
}

impl AsFd for MulticastSender {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl AsRawFd for MulticastSender {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl From<MulticastSender> for OwnedFd {
    fn from(s: MulticastSender) -> OwnedFd {
        s.socket.into()
    }
}

/// A UDP socket that receives one multicast group on one interface.
///
/// `SO_REUSEADDR` (several receivers may share a group on one host), bound to the group's
/// `address:port` (so only that group's datagrams arrive), joined with `IP_ADD_MEMBERSHIP` on
/// `iface_addr`, `IP_MULTICAST_ALL` off, and `UDP_GRO` on when asked. Read it with
/// [`RecvBatch`](crate::RecvBatch).
#[derive(Debug)]
pub struct MulticastReceiver {
    socket: Socket,
    group: SocketAddrV4,
    iface_addr: Ipv4Addr,
    recv_buffer: BufferSize,
    gro: bool,
}

impl MulticastReceiver {
    /// Joins `group` on the interface whose address is `iface_addr`.
    ///
    /// Call it once per group at setup. `rcvbuf` is the receive buffer to ask for (0 keeps the
    /// kernel default of ~208 KiB, which loses datagrams at speed: ask for 16 MiB or more and
    /// check [`recv_buffer`](Self::recv_buffer)). With `gro` the kernel hands over coalesced
    /// super-datagrams (read them with 64 KiB buffers and split them by their segment size).
    pub fn new(
        group: SocketAddrV4,
        iface_addr: Ipv4Addr,
        rcvbuf: usize,
        gro: bool,
    ) -> Result<Self, IoError> {
        const OP: &str = "MulticastReceiver::new";
        check_group(OP, group)?;
        check_iface_addr(OP, iface_addr)?;
        let ctx = format!("group {group} on {iface_addr}");
        let socket = new_udp("socket", &ctx)?;
        socket
            .set_reuse_address(true)
            .map_err(|e| IoError::os("setsockopt(SO_REUSEADDR)", &ctx, e))?;
        socket
            .set_multicast_all_v4(false)
            .map_err(|e| IoError::os("setsockopt(IP_MULTICAST_ALL)", &ctx, e))?;
        let recv_buffer = request_buffer(&socket, BufKind::Recv, rcvbuf)?;
        receive_options(&socket, gro)?;
        socket
            .bind(&SockAddr::from(group))
            .map_err(|e| IoError::os("bind", &ctx, e))?;
        socket
            .join_multicast_v4(group.ip(), &iface_addr)
            .map_err(|e| IoError::os("setsockopt(IP_ADD_MEMBERSHIP)", &ctx, e))?;
        Ok(MulticastReceiver {
            socket,
            group,
            iface_addr,
            recv_buffer,
            gro,
        })
    }

    /// The group this socket joined.
    pub fn group(&self) -> SocketAddrV4 {
        self.group
    }

    /// The interface address it joined on.
    pub fn iface_addr(&self) -> Ipv4Addr {
        self.iface_addr
    }

    /// The receive buffer asked for and granted; warn once after setup when
    /// `capped_by_sysctl` ("raise net.core.rmem_max").
    pub fn recv_buffer(&self) -> BufferSize {
        self.recv_buffer
    }

    /// Whether `UDP_GRO` is on.
    pub fn gro(&self) -> bool {
        self.gro
    }
}

impl AsFd for MulticastReceiver {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl AsRawFd for MulticastReceiver {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl From<MulticastReceiver> for OwnedFd {
    fn from(s: MulticastReceiver) -> OwnedFd {
        s.socket.into()
    }
}

/// `SO_MEMINFO` (include/uapi/asm-generic/socket.h; libc does not name it).
const SO_MEMINFO: libc::c_int = 55;

/// How full `socket`'s receive buffer is, in parts per million of it: the memory its queued
/// datagrams take (`SK_MEMINFO_RMEM_ALLOC`) over the buffer's size (`SK_MEMINFO_RCVBUF`),
/// from `SO_MEMINFO`. `None` if the kernel does not say. One `getsockopt`, no allocation.
pub fn receive_queue_ppm(socket: &impl AsFd) -> Option<u32> {
    let mut info = [0u32; 16];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` and `len` are valid for writes during the call and `len` holds the size
    // of `info`; the kernel writes at most `len` bytes and sets `len` to what it wrote.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let alloc = info[libc::SK_MEMINFO_RMEM_ALLOC as usize];
    let size = info[libc::SK_MEMINFO_RCVBUF as usize];
    if rc != 0 || (len as usize) < 8 || size == 0 {
        return None;
    }
    Some((u64::from(alloc) * 1_000_000 / u64::from(size)).min(1_000_000) as u32)
}

/// Opens a unicast UDP socket bound to `addr` for the control plane (joins, NACKs, receipt
/// notices).
///
/// Call it once at setup; port 0 lets the kernel pick a port (read it back with
/// `local_addr`). With `nonblocking`, reads and writes return `WouldBlock` instead of waiting.
pub fn bind_unicast(addr: SocketAddr, nonblocking: bool) -> Result<UdpSocket, IoError> {
    let ctx = format!("{addr}");
    if addr.ip().is_multicast() {
        return Err(IoError::invalid(
            "bind_unicast",
            format!("{addr} is a multicast address; use MulticastReceiver"),
        ));
    }
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| IoError::os("socket", &ctx, e))?;
    socket
        .bind(&SockAddr::from(addr))
        .map_err(|e| IoError::os("bind", &ctx, e))?;
    socket
        .set_nonblocking(nonblocking)
        .map_err(|e| IoError::os("fcntl(O_NONBLOCK)", &ctx, e))?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unspecified_interface_and_non_multicast_group() {
        let g = SocketAddrV4::new(Ipv4Addr::new(239, 255, 90, 1), 41001);
        let e = MulticastSender::new(g, Ipv4Addr::UNSPECIFIED, 1, 0).unwrap_err();
        assert!(e.to_string().contains("explicitly"), "{e}");
        let e = MulticastReceiver::new(g, Ipv4Addr::UNSPECIFIED, 0, false).unwrap_err();
        assert!(e.to_string().contains("explicitly"), "{e}");
        let unicast = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 41001);
        assert!(MulticastSender::new(unicast, Ipv4Addr::LOCALHOST, 1, 0).is_err());
        assert!(MulticastReceiver::new(unicast, Ipv4Addr::LOCALHOST, 0, false).is_err());
        assert!(MulticastSender::new(g, Ipv4Addr::LOCALHOST, 256, 0).is_err());
    }

    #[test]
    fn interface_address_must_exist() {
        let g = SocketAddrV4::new(Ipv4Addr::new(239, 255, 90, 2), 41002);
        let e = MulticastReceiver::new(g, Ipv4Addr::new(203, 0, 113, 254), 0, true).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("lo (127.0.0.1"), "{msg}");
    }

    #[test]
    fn options_are_set_as_documented() {
        let g = SocketAddrV4::new(Ipv4Addr::new(239, 255, 90, 3), 41003);
        let rx = MulticastReceiver::new(g, Ipv4Addr::LOCALHOST, 1 << 20, true).unwrap();
        let fd = rx.as_raw_fd();
        let all = sys::getsockopt_int(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_ALL, "t").unwrap();
        assert_eq!(all, 0);
        let gro = sys::getsockopt_int(fd, libc::SOL_UDP, libc::UDP_GRO, "t").unwrap();
        assert_eq!(gro, 1);
        let b = rx.recv_buffer();
        assert_eq!(b.requested, 1 << 20);
        assert!(b.effective >= 1 << 20, "{b:?}");

        let tx = MulticastSender::new(g, Ipv4Addr::LOCALHOST, 1, 0).unwrap();
        let fd = tx.as_raw_fd();
        let ttl = sys::getsockopt_int(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_TTL, "t").unwrap();
        assert_eq!(ttl, 1);
        assert_eq!(*tx.local_addr().unwrap().ip(), Ipv4Addr::LOCALHOST);
        assert_eq!(tx.send_buffer().requested, 0);
        assert!(!tx.send_buffer().capped_by_sysctl);
    }

    #[test]
    fn unicast_socket_binds_loopback() {
        let s = bind_unicast("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let local = s.local_addr().unwrap();
        assert!(local.ip().is_loopback());
        assert_ne!(local.port(), 0);
        let mut buf = [0u8; 16];
        let e = s.recv_from(&mut buf).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    }
}
