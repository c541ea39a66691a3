//! The one contract every protocol endpoint keeps, so that one driver per environment (the
//! node's sockets and threads, the simulator's virtual network) runs any of them.
//!
//! A driver repeats, in this order: feed every datagram that arrived to
//! [`Endpoint::handle_datagram`]; call [`Endpoint::handle_timeout`] once the instant from
//! [`Endpoint::poll_timeout`] has passed; call [`Endpoint::poll_transmit`] until it returns
//! `None`, sending what it gives; drain [`Endpoint::poll_event`]; wait until the next
//! datagram or [`Endpoint::poll_timeout`]. What a node kind adds (a verify thread, a player,
//! a catalog) it adds around this loop through its events, never by writing another loop.

use std::net::SocketAddr;
use std::time::Instant;

use crate::Transmit;

/// A sans-IO protocol endpoint: datagrams and time in, datagrams, timers and events out.
pub trait Endpoint {
    /// What happened, for the node to act on and report.
    type Event;

    /// One datagram that arrived from `from`.
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]);

    /// Timers: call when the instant from [`Endpoint::poll_timeout`] has passed.
    fn handle_timeout(&mut self, now: Instant);

    /// Writes the next datagram due at `now` into `buf` and says where it goes, or returns
    /// `None` when nothing is due. For data units only the header is written: the payload
    /// follows from the endpoint's block source ([`Transmit::payload`]).
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit>;

    /// The next instant at which [`Endpoint::handle_timeout`] must be called (`None`: only a
    /// datagram can wake it).
    fn poll_timeout(&self) -> Option<Instant>;

    /// Drains one event.
    fn poll_event(&mut self) -> Option<Self::Event>;

    /// The endpoint has nothing more to do: its driver may stop.
    fn is_finished(&self) -> bool;
}
