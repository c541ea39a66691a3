//! MPEG transport streams: the packet view, PSI tables, H.264 and H.265 picture kinds and the critical
//! rendition built from them.

pub mod h264;
pub mod h265;
pub mod packet;
pub mod psi;
mod rendition;
mod renumber;
pub mod seam;

pub use packet::{TsPacket, PACKET_LEN};
pub use rendition::{
    CriticalFilter, Rendition, RenditionConfig, RenditionError, RenditionStats, VideoCodec,
};

#[cfg(test)]
pub(crate) mod testing;
