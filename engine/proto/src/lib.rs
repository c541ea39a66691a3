//! blockcast's protocol core: wire formats and sans-IO state machines.
//!
//! This crate does no I/O: no sockets, threads, files or clock. The node layer (and the
//! simulator) feed it datagrams and the current time, and send what it asks them to send.
//! See `docs/wire.md` for the packet formats and `docs/DESIGN.md` for the protocol.
#![forbid(unsafe_code)]

pub mod wire;
