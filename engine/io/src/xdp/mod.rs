//! AF_XDP: a datapath beside the socket path, for frames of one session on one interface.
//!
//! * [`XdpProgram`]: an XDP program (assembled in [`bpf`](self) as BPF instructions, no C
//!   toolchain or libbpf) that redirects only UDP to one destination and port range into an
//!   XSKMAP by rx queue, and passes everything else to the kernel. It is attached in native
//!   (driver) mode through a BPF link, so it detaches when the [`XdpProgram`] is dropped or
//!   the process dies.
//! * [`XdpSocket`]: an AF_XDP socket with its UMEM and fill, completion, RX and TX rings;
//!   zero-copy where the driver has it, copy mode otherwise ([`BindMode`]).
//! * [`UdpFrameHeader`], [`multicast_mac`], [`parse_udp`]: Ethernet/IPv4/UDP headers built
//!   once per destination, and found again in received frames.
//!
//! Group membership (IGMP) is not done here: the caller keeps an ordinary socket joined to
//! the group so bridges and switches keep forwarding it; the program takes the frames before
//! that socket would see them.

mod bpf;
mod frame;
mod xsk;

use std::os::fd::{AsRawFd, OwnedFd};

pub use bpf::XdpFilter;
pub use frame::{
    multicast_mac, parse_udp, udp_payload_range, UdpFrame, UdpFrameHeader, FRAME_HEADERS,
};
pub use xsk::{BindMode, Push, XdpSocket, XskBatch, XskConfig, XskStats};

use crate::error::IoError;

/// XSKMAP slots: frames on a queue at or above this pass to the kernel.
pub const MAX_QUEUES: u32 = 64;

/// The XDP program attached to one interface, with its XSKMAP. Dropping it detaches the
/// program (the link's fd closes first).
pub struct XdpProgram {
    // Drop order: the link (detaches), then the program, then the map.
    _link: OwnedFd,
    _prog: OwnedFd,
    map: OwnedFd,
    iface: String,
    ifindex: u32,
}

impl XdpProgram {
    /// Loads the program for `filter` and attaches it to `iface` in native mode. Fails (with
    /// the verifier's log, or the kernel's reason) where native XDP is not possible: a driver
    /// without XDP support (`EOPNOTSUPP`), another program already attached (`EBUSY`), no
    /// permission (`EPERM`).
    pub fn attach(iface: &str, filter: &XdpFilter) -> Result<XdpProgram, IoError> {
        let ifindex = ifindex(iface)?;
        let map = bpf::create_xskmap(MAX_QUEUES)?;
        let prog = bpf::load_xdp(&bpf::program(filter, map.as_raw_fd()))?;
        let link = bpf::attach_xdp(&prog, ifindex, iface)?;
        Ok(XdpProgram {
            _link: link,
            _prog: prog,
            map,
            iface: iface.to_string(),
            ifindex,
        })
    }

    /// Whether `iface` takes a native XDP program: attaches one that passes every frame and
    /// detaches it at once. A sender needs no program of its own (AF_XDP sends without one),
    /// but where native XDP is refused the driver has no XDP support and AF_XDP only copies.
    pub fn probe_native(iface: &str) -> Result<(), IoError> {
        let ifindex = ifindex(iface)?;
        let prog = bpf::load_xdp(&bpf::pass_program())?;
        let link = bpf::attach_xdp(&prog, ifindex, iface)?;
        drop(link);
        Ok(())
    }

    /// The interface's index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The interface's name.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Sends the frames the program takes on `socket`'s queue to `socket`.
    pub fn register(&self, socket: &XdpSocket) -> Result<(), IoError> {
        let (ifindex, queue) = socket.queue();
        if ifindex != self.ifindex || queue >= MAX_QUEUES {
            return Err(IoError::invalid(
                "XdpProgram::register",
                format!(
                    "socket on queue {queue} of interface index {ifindex}, program on {} (index {}, {MAX_QUEUES} queues)",
                    self.iface, self.ifindex
                ),
            ));
        }
        bpf::set_xskmap(&self.map, queue, Some(socket.as_raw_fd()))
    }
}

/// The index of interface `name` (in the calling thread's network namespace).
pub fn ifindex(name: &str) -> Result<u32, IoError> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| IoError::invalid("if_nametoindex", format!("{name:?} contains NUL")))?;
    // SAFETY: `c` is a NUL-terminated string that lives across the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(IoError::last_os("if_nametoindex", name.to_string()));
    }
    Ok(index)
}

/// The Ethernet address of interface `name` (`SIOCGIFHWADDR`).
pub fn hardware_address(name: &str) -> Result<[u8; 6], IoError> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(IoError::invalid(
            "SIOCGIFHWADDR",
            format!("{name:?} is too long"),
        ));
    }
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
        .map_err(|e| IoError::os("socket", "for SIOCGIFHWADDR", e))?;
    // SAFETY: ifreq is a plain C struct (a name and a union of integers); all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: `req` is a live ifreq with a NUL-terminated name; the kernel writes the
    // hardware address into its union.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if rc != 0 {
        return Err(IoError::last_os("ioctl(SIOCGIFHWADDR)", name.to_string()));
    }
    // SAFETY: after SIOCGIFHWADDR succeeds the union holds `ifru_hwaddr`.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(data.iter()) {
        *d = *s as u8;
    }
    Ok(mac)
}
