//! The edge's own pieces, below the HTTP front and the fills that the node wires together:
//!
//! - [`ts`]: MPEG-TS parsing and the critical rendition ([`ts::CriticalFilter`]), a streaming
//!   filter that keeps the key frames of an H.264 program as a valid transport stream.
//! - [`cache`]: the block cache ([`cache::BlockCache`]): a RAM tier and a disk tier, each bounded
//!   by bytes and evicted by S3-FIFO, blocks written through to disk and re-verified by their
//!   BLAKE3 hash when read back.
//!
//! Pure library code: no sockets, threads or clock.
#![forbid(unsafe_code)]

pub mod cache;
pub mod ts;
