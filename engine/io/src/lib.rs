//! blockcast's datapath: it moves bytes.
//!
//! Like quinn-udp, this crate knows UDP GSO/GRO, multicast socket options and io_uring, and
//! nothing of blocks, units, NACKs or the protocol.
//!
//! * [`iface`]: find an interface's IPv4 address by name; list interfaces.
//! * [`MulticastSender`] / [`MulticastReceiver`]: sockets with every multicast option set
//!   explicitly (interface, TTL, loop, `IP_MULTICAST_ALL` off, `UDP_GRO`), buffer sizes
//!   requested and reported ([`BufferSize`]); [`bind_unicast`] for the control plane;
//!   [`bind_data_unicast`] and [`send_segments`] for split mode's unicast data (GRO in, GSO
//!   out, one destination per send).
//! * [`SendRing`]: io_uring `SENDMSG` of GSO super-buffers gathered from
//!   `[header | payload]` segments, payload sent from where it lies; in-flight memory is owned
//!   by the ring's slots until the completion is reaped.
//! * [`WriteRing`]: io_uring positioned file writes (`O_DIRECT` ones several in flight) from
//!   [`AlignedBuf`]s the ring owns until each completion is reaped.
//! * [`RecvBatch`]: `recvmmsg` of up to 64 datagrams, with the GRO segment size of each, and
//!   [`split_segments`] to cut a super-datagram back into datagrams.
//!
//! * [`xdp`]: AF_XDP beside the socket path: an XDP program assembled here and loaded with
//!   `bpf(2)`, sockets with their UMEM and rings, Ethernet/IPv4/UDP frames.
//! * [`beneath`]: files opened beneath a directory, never through a symbolic link.
//! * [`os`]: the other system calls the nodes make (waiting with a deadline, eventfd,
//!   thread CPU time, preallocation, vectored positioned writes, write-out), wrapped once.
//!
//! Linux only; io_uring needs kernel 6.1 or newer for the preferred ring setup
//! (`SINGLE_ISSUER | DEFER_TASKRUN`), older setups fall back.
//!
//! Every `unsafe` block carries a `// SAFETY:` comment naming the invariant and who upholds it.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod beneath;
mod error;
pub mod iface;
pub mod os;
mod recv;
mod socket;
mod sys;
mod unicast;
mod uring;
pub mod xdp;

pub use error::IoError;
pub use recv::{
    split_segments, BatchLocator, BatchRange, Datagram, PlacedSegments, ReceivedBytes, RecvBatch,
    Segment, Slot, GRO_BUFFER_SIZE, MAX_RECV_BATCH,
};
pub use socket::{bind_unicast, receive_queue_ppm, BufferSize, MulticastReceiver, MulticastSender};
pub use unicast::{bind_data_unicast, send_segments};
pub use uring::{
    AlignedBuf, BatchError, GsoBatch, RingMode, SendRing, SendRingConfig, SendStats, Source,
    StableBytes, WriteDone, WriteRing, MAX_GSO_SEGMENTS, MAX_SEND_BYTES,
};
