//! blockcast nodes: the server, the receiver and the relay, driving the sans-IO protocol core over real
//! sockets (blockcast-io: multicast, UDP GSO/GRO, io_uring) and real files.
//!
//! This is the only layer that reads the clock. It reports progress through a callback and
//! stops when asked through an [`AtomicBool`](std::sync::atomic::AtomicBool).

pub mod agent;
pub mod catalog;
pub mod client;
mod content;
mod driver;
pub mod edge;
mod error;
pub mod events;
pub mod fetch;
pub mod glob;
mod hashcache;
pub mod http;
pub mod keys;
pub mod local;
pub mod metrics;
pub mod names;
pub mod origin;
pub mod play;
pub mod published;
mod receive;
mod relay;
mod serve;
mod stripe;
mod stripe_rx;
mod xdp;

pub use content::{collect_inputs, hash_inputs, Input};
pub use error::{NodeError, ThreadFailure};
pub use hashcache::HashCache;
pub use receive::{
    fuzz_state_file, is_own_partial, receive, ReceiveConfig, ReceiveProgress, ReceiveSummary,
    SessionTrust, DEFAULT_BLOCK_BUFFER_BYTES,
};
pub use relay::{relay, Downstream, RelayConfig, RelayProgress, RelaySummary};
pub use serve::{serve, ReceiverSummary, ServeConfig, ServeProgress, ServeSummary, StartGate};
pub use xdp::Datapath;

/// CPU time the calling thread has used, in seconds.
pub use blockcast_io::os::thread_cpu_seconds;
pub use blockcast_seal::{OpenStats, Secret, TRAILER_LEN};
