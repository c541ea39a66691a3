//! Joining two renditions of one transport stream at a key frame: the full rendition up to a
//! random access point, then the critical rendition from the same picture on, as one valid
//! stream.
//!
//! Why it works: the critical rendition ([`super::CriticalFilter`]) keeps every packet of
//! every PID but the video in input order, and keeps IDR pictures (H.265: IRAP pictures)
//! byte for byte with their PES headers. So the packet that starts the video PES of an IDR
//! picture with timestamp `T` in the full rendition has a counterpart in the critical
//! rendition, and what follows it there is, PID by PID, what follows it in the full one
//! minus the dropped pictures. Sending the full rendition up to (not including) that packet
//! and the critical one from its counterpart on gives a stream whose clock (PCR, PTS, DTS)
//! runs on unchanged and whose decoder meets a random access point at the seam, so no
//! picture after it refers to one before. What the join must fix is the continuity
//! counters: the critical rendition numbers its packets itself, so [`Continuity`] renumbers
//! every packet sent after the seam to follow the last one sent before it, PID by PID.
//!
//! [`TsFollower`] reads a stream packet by packet and says where video PES packets start
//! and with which PTS; [`KeyFrameIndex`] lists, for the critical rendition, the PTS and byte
//! offset of each random access point.

use std::collections::BTreeMap;

use super::packet::{TsPacket, PACKET_LEN, PAT_PID};
use super::psi::{
    first_program_map_pid, program_streams, SectionBuffer, STREAM_TYPE_H264, STREAM_TYPE_H265,
};
use super::VideoCodec;

/// Follows a transport stream in order: its first program's video PID and codec (from the
/// PAT and PMT), and which packets start a video PES packet.
#[derive(Debug, Default)]
pub struct TsFollower {
    pat: SectionBuffer,
    pmt: Option<(u16, SectionBuffer)>,
    video: Option<(u16, VideoCodec)>,
}

impl TsFollower {
    /// The video PID and codec, once the PMT has named them.
    pub fn video(&self) -> Option<(u16, VideoCodec)> {
        self.video
    }

    /// Reads the next packet. Returns `Some(pts)` when it starts a video PES packet (`pts`
    /// `None` when the header carries none).
    pub fn packet(&mut self, packet: &TsPacket) -> Option<Option<u64>> {
        let pid = packet.pid();
        if pid == PAT_PID {
            if let Some(section) = self.pat.push(packet.unit_start(), packet.payload()) {
                if let Some(pmt_pid) = first_program_map_pid(&section) {
                    if self.pmt.as_ref().is_none_or(|(p, _)| *p != pmt_pid) {
                        self.pmt = Some((pmt_pid, SectionBuffer::default()));
                    }
                }
            }
            return None;
        }
        if let Some((pmt_pid, buffer)) = self.pmt.as_mut() {
            if pid == *pmt_pid {
                if let Some(streams) = buffer
                    .push(packet.unit_start(), packet.payload())
                    .and_then(|s| program_streams(&s))
                {
                    let find = |t| streams.iter().find(|s| s.stream_type == t);
                    self.video = match (find(STREAM_TYPE_H264), find(STREAM_TYPE_H265)) {
                        (Some(v), _) => Some((v.pid, VideoCodec::H264)),
                        (None, Some(v)) => Some((v.pid, VideoCodec::H265)),
                        (None, None) => None,
                    };
                }
                return None;
            }
        }
        match self.video {
            Some((video, _)) if pid == video && packet.unit_start() => {
                Some(pes_pts(packet.payload()))
            }
            _ => None,
        }
    }
}

/// The PTS of a PES packet header at the start of `payload`, if it has one.
pub fn pes_pts(payload: &[u8]) -> Option<u64> {
    if payload.len() < 14 || payload[..3] != [0, 0, 1] || payload[7] & 0x80 == 0 {
        return None;
    }
    let p = &payload[9..14];
    Some(
        (u64::from(p[0] >> 1) & 0x07) << 30
            | u64::from(p[1]) << 22
            | u64::from(p[2] >> 1) << 15
            | u64::from(p[3]) << 7
            | u64::from(p[4] >> 1),
    )
}

/// The bytes of a video PES packet's elementary stream read so far, for its kind.
#[derive(Debug)]
struct OpenPicture {
    pts: Option<u64>,
    offset: u64,
    bytes: Vec<u8>,
}

/// How much of a picture's elementary stream is read to find its first slice (parameter
/// sets and SEI come first; x264's first SEI is about 700 bytes).
const KIND_BYTES: usize = 4096;

/// The random access points of a transport stream (the critical rendition), read in chunks
/// of any size: for each video PES packet whose first slice is an IDR slice (H.265: an IRAP
/// picture), its PTS and the byte offset of the packet that starts it.
#[derive(Debug, Default)]
pub struct KeyFrameIndex {
    follower: TsFollower,
    partial: Vec<u8>,
    offset: u64,
    open: Option<OpenPicture>,
    points: BTreeMap<u64, u64>,
    broken: bool,
}

impl KeyFrameIndex {
    /// Reads the next `input` bytes.
    pub fn push(&mut self, mut input: &[u8]) {
        if self.broken {
            return;
        }
        if !self.partial.is_empty() {
            let take = (PACKET_LEN - self.partial.len()).min(input.len());
            self.partial.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.partial.len() < PACKET_LEN {
                return;
            }
            let mut packet = [0; PACKET_LEN];
            packet.copy_from_slice(&self.partial);
            self.partial.clear();
            self.packet(&packet);
        }
        let mut packets = input.chunks_exact(PACKET_LEN);
        for chunk in &mut packets {
            let packet: &[u8; PACKET_LEN] = chunk.try_into().expect("whole packets");
            self.packet(packet);
        }
        self.partial.extend_from_slice(packets.remainder());
    }

    /// Ends the input; returns the random access points, PTS to byte offset. A stream that
    /// is not a transport stream gives none.
    pub fn finish(mut self) -> BTreeMap<u64, u64> {
        self.close_picture();
        if self.broken {
            return BTreeMap::new();
        }
        self.points
    }

    fn packet(&mut self, bytes: &[u8; PACKET_LEN]) {
        let Ok(packet) = TsPacket::new_checked(bytes) else {
            self.broken = true;
            return;
        };
        let at = self.offset;
        self.offset += PACKET_LEN as u64;
        if let Some(pts) = self.follower.packet(&packet) {
            self.close_picture();
            let payload = packet.payload();
            let header = 9 + usize::from(payload.get(8).copied().unwrap_or(0));
            self.open = Some(OpenPicture {
                pts,
                offset: at,
                bytes: payload.get(header..).unwrap_or_default().to_vec(),
            });
        } else if let (Some(open), Some((video, _))) = (&mut self.open, self.follower.video()) {
            if packet.pid() == video && open.bytes.len() < KIND_BYTES {
                open.bytes.extend_from_slice(packet.payload());
            }
        }
    }

    fn close_picture(&mut self) {
        let (Some(open), Some((_, codec))) = (self.open.take(), self.follower.video()) else {
            return;
        };
        if let (Some(pts), true) = (open.pts, is_random_access(&open.bytes, codec)) {
            self.points.insert(pts, open.offset);
        }
    }
}

/// Whether the first slice NAL unit in `es` (Annex B byte stream) starts a random access
/// point: an IDR slice (H.264 `nal_unit_type` 5), an IRAP picture (H.265 types 16 to 23).
fn is_random_access(es: &[u8], codec: VideoCodec) -> bool {
    let mut i = 0;
    while i + 3 < es.len() {
        if es[i..i + 3] != [0, 0, 1] {
            i += 1;
            continue;
        }
        let header = es[i + 3];
        i += 3;
        match codec {
            VideoCodec::H264 => match header & 0x1f {
                5 => return true,
                1..=4 => return false,
                _ => {}
            },
            VideoCodec::H265 => match (header >> 1) & 0x3f {
                16..=23 => return true,
                0..=15 | 24..=31 => return false,
                _ => {}
            },
        }
    }
    false
}

/// Continuity counters across a seam: packets of the first stream go out as they are and
/// are remembered; packets of the second are renumbered to follow them, PID by PID (+1 per
/// packet with a payload, unchanged on one without: ISO/IEC 13818-1 §2.4.3.3).
#[derive(Debug)]
pub struct Continuity {
    last: Vec<Option<u8>>,
}

impl Default for Continuity {
    fn default() -> Self {
        Continuity {
            last: vec![None; 1 << 13],
        }
    }
}

impl Continuity {
    /// A packet went out unchanged.
    pub fn sent(&mut self, packet: &TsPacket) {
        self.last[usize::from(packet.pid())] = Some(packet.continuity_counter());
    }

    /// Renumbers a packet of the second stream to follow what went out on its PID.
    pub fn rewrite(&mut self, bytes: &mut [u8; PACKET_LEN]) {
        let Ok(packet) = TsPacket::new_checked(bytes) else {
            return;
        };
        let pid = usize::from(packet.pid());
        let counter = match (self.last[pid], packet.has_payload()) {
            (Some(c), true) => (c + 1) & 0x0f,
            (Some(c), false) => c,
            (None, _) => packet.continuity_counter(),
        };
        super::packet::set_continuity_counter(bytes, counter);
        self.last[pid] = Some(counter);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    /// The first packet of a video PES packet with a PTS, holding `slice`.
    fn timed_picture(counter: u8, pts: u64, slice: &[u8]) -> [u8; PACKET_LEN] {
        let mut pes = vec![0, 0, 1, 0xe0, 0, 0, 0x80, 0x80, 5];
        pes.extend_from_slice(&[
            0x21 | ((pts >> 29) as u8 & 0x0e),
            (pts >> 22) as u8,
            ((pts >> 14) as u8 & 0xfe) | 1,
            (pts >> 7) as u8,
            ((pts << 1) as u8) | 1,
        ]);
        pes.extend_from_slice(slice);
        packet(VIDEO_PID, true, counter, false, &pes)
    }

    #[test]
    fn a_pts_reads_back() {
        for pts in [0, 1, 90_000, (1 << 33) - 1] {
            let p = timed_picture(0, pts, IDR);
            let packet = TsPacket::new_checked(&p).unwrap();
            assert_eq!(pes_pts(packet.payload()), Some(pts));
        }
    }

    #[test]
    fn the_index_lists_idr_pictures_at_their_offsets_in_chunks_of_any_size() {
        let mut ts = Vec::new();
        ts.extend_from_slice(&pat(0));
        ts.extend_from_slice(&pmt(0, 0x1b));
        ts.extend_from_slice(&timed_picture(0, 1000, IDR));
        ts.extend_from_slice(&audio(0));
        ts.extend_from_slice(&timed_picture(1, 4600, P));
        ts.extend_from_slice(&timed_picture(2, 8200, INTRA));
        ts.extend_from_slice(&audio(1));
        ts.extend_from_slice(&timed_picture(3, 11_800, IDR));
        let want: BTreeMap<u64, u64> = [(1000, 2 * 188), (11_800, 7 * 188)].into();
        for chunk in [1, 7, 188, 1000, ts.len()] {
            let mut index = KeyFrameIndex::default();
            ts.chunks(chunk).for_each(|c| index.push(c));
            assert_eq!(index.finish(), want, "chunks of {chunk}");
        }
        let mut index = KeyFrameIndex::default();
        index.push(b"not a transport stream at all, no sync byte anywhere here.........");
        assert!(index.finish().is_empty());
    }

    #[test]
    fn counters_after_the_seam_follow_those_before_it() {
        let mut c = Continuity::default();
        for counter in [0, 1, 2] {
            c.sent(&TsPacket::new_checked(&audio(counter)).unwrap());
        }
        // The second stream's own counters (7, 8; a packet without payload) are renumbered.
        let mut a = audio(7);
        c.rewrite(&mut a);
        assert_eq!(TsPacket::new_checked(&a).unwrap().continuity_counter(), 3);
        let mut pcr_only = super::super::packet::pcr_only_packet(AUDIO_PID, 9, [0; 6], false);
        c.rewrite(&mut pcr_only);
        assert_eq!(
            TsPacket::new_checked(&pcr_only)
                .unwrap()
                .continuity_counter(),
            3
        );
        let mut b = audio(8);
        c.rewrite(&mut b);
        assert_eq!(TsPacket::new_checked(&b).unwrap().continuity_counter(), 4);
        // A PID not seen before the seam keeps its counter.
        let mut v = timed_picture(5, 0, IDR);
        c.rewrite(&mut v);
        assert_eq!(TsPacket::new_checked(&v).unwrap().continuity_counter(), 5);
    }
}
