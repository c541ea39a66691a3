//! blockcast nodes: the server and the receiver, driving the sans-IO protocol core over real
//! sockets (blockcast-io: multicast, UDP GSO/GRO, io_uring) and real files.
//!
//! This is the only layer that reads the clock. It reports progress through a callback and
//! stops when asked through an [`AtomicBool`](std::sync::atomic::AtomicBool).

mod content;
mod error;
mod receive;
mod serve;
mod wait;

pub use content::{collect_inputs, Input};
pub use error::NodeError;
pub use receive::{receive, ReceiveConfig, ReceiveProgress, ReceiveSummary};
pub use serve::{serve, ReceiverSummary, ServeConfig, ServeProgress, ServeSummary};
