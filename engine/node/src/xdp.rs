//! Choosing the datapath (`--datapath auto|socket|xdp`) and opening AF_XDP for a session.
//!
//! With XDP, a program on the interface takes the session's data (UDP to the group's address
//! on its port and the stripe ports above it) into one AF_XDP socket per rx queue, read by the
//! receive thread; everything else (control traffic, other sessions, ARP, IGMP) goes up the
//! kernel's stack as before. The group stays joined on the ordinary data socket, so bridges
//! and switches keep forwarding it, and that socket gets whatever the program passes.

use std::net::{Ipv4Addr, SocketAddrV4};

use blockcast_io::xdp::{
    hardware_address, multicast_mac, Push, UdpFrameHeader, XdpFilter, XdpProgram, XdpSocket,
    XskConfig, FRAME_HEADERS,
};
use blockcast_proto::wire::MAX_STRIPES;

use crate::NodeError;

/// Which datapath a node uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Datapath {
    /// The kernel's UDP sockets (recvmmsg + GRO, io_uring + GSO).
    #[default]
    Socket,
    /// AF_XDP, or fail with the reason.
    Xdp,
    /// AF_XDP where it works (native XDP on the interface), the socket path otherwise, with
    /// the reason logged.
    Auto,
}

impl Datapath {
    /// The name shown and written in summaries: `socket` or `xdp`.
    pub fn name(used_xdp: bool) -> &'static str {
        if used_xdp {
            "xdp"
        } else {
            "socket"
        }
    }
}

/// A session's AF_XDP receive side: the program and a socket per rx queue.
pub(crate) struct XdpInputs {
    /// Declared first: the sockets close before the program detaches.
    pub sockets: Vec<XdpSocket>,
    _program: XdpProgram,
    /// What was opened, for the log: "veth0, 1 queue, copy mode".
    pub described: String,
}

impl XdpInputs {
    /// Frames received on every socket.
    pub(crate) fn received(&self) -> u64 {
        self.sockets.iter().map(XdpSocket::received).sum()
    }

    /// Frames the kernel dropped for a full RX ring or an empty fill ring, on every socket.
    pub(crate) fn dropped(&self) -> u64 {
        self.sockets
            .iter()
            .filter_map(|s| s.stats().ok())
            .map(|s| s.rx_dropped + s.rx_ring_full + s.rx_fill_ring_empty)
            .sum()
    }
}

/// The name of the interface that has address `addr`.
fn iface_named(addr: Ipv4Addr) -> Result<String, String> {
    let all = blockcast_io::iface::list().map_err(|e| e.to_string())?;
    all.into_iter()
        .find(|i| i.ipv4.contains(&addr))
        .map(|i| i.name)
        .ok_or_else(|| format!("no interface has address {addr}"))
}

/// The interface's rx (`rx-`) or tx (`tx-`) queues (sysfs; 1 when it cannot be read).
fn queues(iface: &str, kind: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{iface}/queues"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(kind))
                .count() as u32
        })
        .unwrap_or(1)
        .max(1)
}

/// Opens AF_XDP for the session on `group` arriving at the interface of `iface`: the program
/// (the group's address, its port and the stripe ports above it) and one socket per rx queue.
pub(crate) fn open_receive(group: SocketAddrV4, iface: Ipv4Addr) -> Result<XdpInputs, String> {
    let name = iface_named(iface)?;
    let last = group.port().saturating_add(MAX_STRIPES as u16 - 1);
    let filter = XdpFilter {
        dst: Some(*group.ip()),
        ports: group.port()..=last,
    };
    let program = XdpProgram::attach(&name, &filter).map_err(|e| e.to_string())?;
    let queues = queues(&name, "rx-").min(blockcast_io::xdp::MAX_QUEUES);
    let mut sockets = Vec::with_capacity(queues as usize);
    for q in 0..queues {
        let socket = XdpSocket::open(program.ifindex(), q, XskConfig::default())
            .map_err(|e| e.to_string())?;
        program.register(&socket).map_err(|e| e.to_string())?;
        sockets.push(socket);
    }
    let mode = if sockets.iter().all(XdpSocket::zero_copy) {
        "zero-copy"
    } else {
        "copy mode"
    };
    Ok(XdpInputs {
        described: format!(
            "{name}, {queues} queue{}, {mode}",
            if queues == 1 { "" } else { "s" }
        ),
        sockets,
        _program: program,
    })
}

/// Applies `choice` for a receiver: `Ok(Some)` with XDP open, `Ok(None)` for the socket path
/// (chosen, or `auto` falling back, logged), `Err` when `xdp` was asked for and cannot work.
pub(crate) fn choose_receive(
    choice: Datapath,
    group: SocketAddrV4,
    iface: Ipv4Addr,
) -> Result<Option<XdpInputs>, NodeError> {
    match choice {
        Datapath::Socket => Ok(None),
        Datapath::Xdp => match open_receive(group, iface) {
            Ok(x) => {
                tracing::info!("datapath: xdp ({})", x.described);
                Ok(Some(x))
            }
            Err(why) => Err(NodeError::Datapath(format!(
                "--datapath xdp cannot receive on {iface}: {why}"
            ))),
        },
        Datapath::Auto => match open_receive(group, iface) {
            Ok(x) => {
                tracing::info!("datapath auto: xdp ({})", x.described);
                Ok(Some(x))
            }
            Err(why) => {
                tracing::warn!("datapath auto: socket (XDP not possible on {iface}: {why})");
                Ok(None)
            }
        },
    }
}

/// A server's AF_XDP sockets, one per data thread (each on a tx queue of its own), and what
/// their frames need.
pub(crate) struct XdpSendSockets {
    pub sockets: Vec<XdpSocket>,
    /// The interface's Ethernet address (the frames' source).
    pub mac: [u8; 6],
    pub described: String,
}

/// Opens AF_XDP for sending on the interface of `iface`: checks that the interface takes
/// native XDP and that a datagram of `max_datagram` bytes fits a frame, then opens up to
/// `stripes` sockets, one per tx queue.
pub(crate) fn open_send(
    iface: Ipv4Addr,
    stripes: usize,
    max_datagram: usize,
) -> Result<XdpSendSockets, String> {
    let name = iface_named(iface)?;
    let config = XskConfig {
        tx_frames: XskConfig::default().frames,
        ..XskConfig::default()
    };
    if max_datagram + FRAME_HEADERS > config.frame_size as usize {
        return Err(format!(
            "a datagram of {max_datagram} bytes does not fit a {}-byte frame: use a smaller --unit-size",
            config.frame_size
        ));
    }
    XdpProgram::probe_native(&name).map_err(|e| e.to_string())?;
    let index = blockcast_io::xdp::ifindex(&name).map_err(|e| e.to_string())?;
    let mac = hardware_address(&name).map_err(|e| e.to_string())?;
    let n = (queues(&name, "tx-") as usize).min(stripes.max(1));
    let mut sockets = Vec::with_capacity(n);
    for q in 0..n as u32 {
        sockets.push(XdpSocket::open(index, q, config).map_err(|e| e.to_string())?);
    }
    let mode = if sockets.iter().all(XdpSocket::zero_copy) {
        "zero-copy"
    } else {
        "copy mode"
    };
    Ok(XdpSendSockets {
        described: format!(
            "{name}, {n} tx queue{}, {mode}",
            if n == 1 { "" } else { "s" }
        ),
        sockets,
        mac,
    })
}

/// Applies `choice` for a server: `Ok(Some)` with the sockets, `Ok(None)` for the socket path
/// (chosen, or `auto` falling back, logged), `Err` when `xdp` was asked for and cannot work.
pub(crate) fn choose_send(
    choice: Datapath,
    iface: Ipv4Addr,
    stripes: usize,
    max_datagram: usize,
) -> Result<Option<XdpSendSockets>, NodeError> {
    if choice == Datapath::Socket {
        return Ok(None);
    }
    match (open_send(iface, stripes, max_datagram), choice) {
        (Ok(x), _) => {
            tracing::info!("datapath: xdp ({})", x.described);
            if x.sockets.len() < stripes {
                tracing::warn!(
                    "datapath xdp: {} data thread(s), one per tx queue of the interface ({} asked for)",
                    x.sockets.len(),
                    stripes
                );
            }
            Ok(Some(x))
        }
        (Err(why), Datapath::Xdp) => Err(NodeError::Datapath(format!(
            "--datapath xdp cannot send on {iface}: {why}"
        ))),
        (Err(why), _) => {
            tracing::warn!("datapath auto: socket (XDP not possible on {iface}: {why})");
            Ok(None)
        }
    }
}

/// One data thread's AF_XDP sender: its socket and the headers of every frame it sends (to
/// its stripe's port of the group), built once.
pub(crate) struct XdpOut {
    socket: XdpSocket,
    header: UdpFrameHeader,
    /// Units sent as frames.
    pub frames: u64,
    /// Units dropped because no frame came free in time (repaired like any loss).
    pub dropped: u64,
}

/// How long a send waits for a frame to come free before the unit is dropped.
const FRAME_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

impl XdpOut {
    /// A sender on `socket` of frames from `src` (on an interface with Ethernet address `mac`)
    /// to `group` (its multicast Ethernet address), with IPv4 time-to-live `ttl`.
    pub(crate) fn new(
        socket: XdpSocket,
        mac: [u8; 6],
        src: SocketAddrV4,
        group: SocketAddrV4,
        ttl: u8,
    ) -> XdpOut {
        XdpOut {
            socket,
            header: UdpFrameHeader::new(mac, multicast_mac(*group.ip()), src, group, ttl),
            frames: 0,
            dropped: 0,
        }
    }

    /// Queues one datagram whose bytes `write` puts at the start of the slice it is given
    /// (the frame after its headers), returning their length or `None` (nothing sent).
    pub(crate) fn send(
        &mut self,
        mut write: impl FnMut(&mut [u8]) -> Option<usize>,
    ) -> Result<(), NodeError> {
        let started = std::time::Instant::now();
        loop {
            let header = &mut self.header;
            let pushed = self.socket.push(|frame| {
                let n = write(frame.get_mut(FRAME_HEADERS..)?)?;
                header.write(frame, n)
            });
            match pushed {
                Push::Queued => {
                    self.frames += 1;
                    return Ok(());
                }
                Push::Refused => return Ok(()),
                Push::Full if started.elapsed() > FRAME_WAIT => {
                    self.dropped += 1;
                    return Ok(());
                }
                Push::Full => {
                    self.flush()?;
                    std::thread::yield_now();
                }
            }
        }
    }

    /// Hands what is queued to the kernel.
    pub(crate) fn flush(&mut self) -> Result<(), NodeError> {
        self.socket.flush()?;
        Ok(())
    }
}
