//! The critical rendition: a valid transport stream holding only the video pictures that decode
//! on their own (or, optionally, I and P pictures without B), fed and drained packet by packet.
//! The video is the first H.264 stream of the first program, or else its first H.265 stream.
//!
//! **What is kept.** PAT and PMT, every non-video PID (audio, subtitles, other tables) from the
//! first kept picture on, and the video PES packets of kept pictures, byte for byte: their PES
//! headers keep PTS and DTS, so a player shows the right time and seeks as in the full rendition.
//! A dropped video packet that carried the PCR is replaced in place by an adaptation-field-only
//! packet with the same PCR, so the clock keeps its cadence. Continuity counters are rewritten
//! per PID over what goes out; duplicate packets and null packets are dropped.
//!
//! **Order and delay.** Packets leave in input order. The filter holds the packets that arrived
//! since the current video PES began (one picture, and what is interleaved with it) until the
//! next video PES starts and the picture's kind is known; [`RenditionConfig::max_held_bytes`]
//! bounds that. Nothing leaves before the first kept picture: then the latest PAT and PMT go
//! out, then the other PIDs' packets read since the PMT (audio that precedes the first key
//! frame; the last 1 MiB of them), then the picture. So a caller that has output knows the input is a transport stream
//! with a key frame of a video it reads (the HTTP layer can still choose its status code until
//! then).
//!
//! **Unit of decision.** One video PES packet is one access unit (as muxers write H.264 in TS);
//! a PES packet that holds several pictures is kept only if every slice in it qualifies.

use std::collections::VecDeque;

use super::h264::{self, Picture, PictureKind};
use super::h265;
use super::packet::PacketError;
use super::packet::{
    pcr_only_packet, set_continuity_counter, TsPacket, NULL_PID, PACKET_LEN, PAT_PID,
};
use super::psi::{
    first_program_map_pid, program_streams, SectionBuffer, STREAM_TYPE_H264, STREAM_TYPE_H265,
};
use super::renumber::Renumbering;

/// The video codecs the rendition reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VideoCodec {
    /// H.264 (`stream_type` 0x1b), chosen when a program has both.
    H264,
    /// H.265 (`stream_type` 0x24).
    H265,
}

/// Which pictures the rendition keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rendition {
    /// I pictures only. H.264: IDR pictures, and pictures whose slices are all I or SI, those
    /// after a dropped reference picture renumbered (or dropped where they cannot be: see
    /// `CriticalFilter::decide`); H.265: IRAP pictures.
    KeyFrames,
    /// I and P pictures, no B picture. A P picture may refer to a B picture that is a reference
    /// (B pyramids); after such a B picture is dropped, only I pictures are kept (renumbered)
    /// until the next IDR picture, so every picture that goes out decodes. H.265 pictures are
    /// not told apart into P and B (see [`h265`]): there this is [`Rendition::KeyFrames`].
    NoBFrames,
}

/// How the filter runs.
#[derive(Clone, Copy, Debug)]
pub struct RenditionConfig {
    /// Which pictures are kept.
    pub rendition: Rendition,
    /// The most bytes of input held while a picture's kind is unknown.
    pub max_held_bytes: usize,
    /// The most input bytes read before the PAT and PMT must have named an H.264 stream.
    pub max_bytes_before_video: u64,
}

impl Default for RenditionConfig {
    fn default() -> Self {
        RenditionConfig {
            rendition: Rendition::KeyFrames,
            max_held_bytes: 32 << 20,
            max_bytes_before_video: 8 << 20,
        }
    }
}

/// Why the input cannot give a critical rendition. After an error the filter gives the same
/// error to every later call and no more output. The HTTP layer maps
/// [`RenditionError::NotTransportStream`] to 415 and the others to 422.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenditionError {
    /// A packet does not begin with the sync byte.
    #[error("not an MPEG transport stream: no sync byte at offset {offset}")]
    NotTransportStream {
        /// Input offset of the packet.
        offset: u64,
    },
    /// No PAT and PMT were found (within the configured bytes, or before the input ended).
    #[error("the transport stream has no program map table")]
    NoProgramMap,
    /// The program carries neither H.264 nor H.265 video; `stream_type` is its first stream's
    /// type, if any.
    #[error(
        "the transport stream has no H.264 or H.265 video (first stream type {stream_type:?})"
    )]
    NoSupportedVideo {
        /// The first stream's `stream_type`.
        stream_type: Option<u8>,
    },
    /// The input ended before any picture that decodes on its own.
    #[error("the video has no key frame")]
    NoKeyFrame,
    /// One picture, with what is interleaved with it, exceeds `max_held_bytes`.
    #[error("a video picture exceeds {limit} bytes")]
    PictureTooLarge {
        /// The configured limit.
        limit: usize,
    },
}

/// What the filter has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenditionStats {
    /// Input packets read.
    pub packets_in: u64,
    /// Packets written.
    pub packets_out: u64,
    /// Video pictures kept.
    pub pictures_kept: u64,
    /// Video pictures dropped.
    pub pictures_dropped: u64,
    /// Dropped packets whose PCR went out in a packet of its own.
    pub pcr_packets: u64,
    /// Packets dropped as damaged (transport error indicator, bad adaptation field).
    pub damaged: u64,
    /// Duplicate packets dropped.
    pub duplicates: u64,
}

#[derive(Clone, Copy)]
enum Held {
    Video([u8; PACKET_LEN]),
    Other([u8; PACKET_LEN]),
}

/// The streaming filter. Feed the input with [`CriticalFilter::push`] in order, in chunks of
/// any size, then call [`CriticalFilter::finish`] once.
pub struct CriticalFilter {
    config: RenditionConfig,
    failed: Option<RenditionError>,
    partial: Vec<u8>,
    offset: u64,
    pat: SectionBuffer,
    pmt: Option<(u16, SectionBuffer)>,
    video_pid: Option<u16>,
    codec: VideoCodec,
    /// Before the first kept picture: the latest PAT and PMT packets.
    pat_hold: Vec<[u8; PACKET_LEN]>,
    pmt_hold: Vec<[u8; PACKET_LEN]>,
    /// Before the first kept picture: the latest other packets, at most [`MAX_EARLY_PACKETS`].
    early: VecDeque<[u8; PACKET_LEN]>,
    /// Packets since the current video PES began, in input order.
    held: Vec<Held>,
    /// The current video PES packet's bytes.
    picture: Vec<u8>,
    /// Where they came from: (index in `held`, offset of the payload in that packet).
    picture_parts: Vec<(usize, usize)>,
    renumbering: Renumbering,
    in_picture: bool,
    started: bool,
    /// A reference picture was dropped since the last random access point.
    gap: bool,
    last_counter_in: Vec<Option<u8>>,
    next_counter_out: Vec<u8>,
    stats: RenditionStats,
}

/// The most packets of one PSI table held before the first kept picture.
const MAX_PSI_HOLD: usize = 8;
/// The most packets of other PIDs held before the first kept picture (1 MiB: the audio a muxer
/// interleaves ahead of the video, not a whole stream without key frames).
const MAX_EARLY_PACKETS: usize = (1 << 20) / PACKET_LEN;

impl CriticalFilter {
    /// A filter that has read nothing.
    pub fn new(config: RenditionConfig) -> Self {
        CriticalFilter {
            config,
            failed: None,
            partial: Vec::with_capacity(PACKET_LEN),
            offset: 0,
            pat: SectionBuffer::default(),
            pmt: None,
            video_pid: None,
            codec: VideoCodec::H264,
            pat_hold: Vec::new(),
            pmt_hold: Vec::new(),
            early: VecDeque::new(),
            held: Vec::new(),
            picture: Vec::new(),
            picture_parts: Vec::new(),
            renumbering: Renumbering::default(),
            in_picture: false,
            started: false,
            // Nothing before the input is there: the first kept picture is a random access point.
            gap: true,
            last_counter_in: vec![None; 1 << 13],
            next_counter_out: vec![0; 1 << 13],
            stats: RenditionStats::default(),
        }
    }

    /// What the filter has done so far.
    pub fn stats(&self) -> RenditionStats {
        self.stats
    }

    /// The PID and codec of the video stream, once the PMT has named it.
    pub fn video(&self) -> Option<(u16, VideoCodec)> {
        self.video_pid.map(|pid| (pid, self.codec))
    }

    /// Reads the next `input` bytes and appends whole output packets to `out`.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), RenditionError> {
        self.check()?;
        if !self.partial.is_empty() {
            let take = (PACKET_LEN - self.partial.len()).min(input.len());
            self.partial.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.partial.len() < PACKET_LEN {
                return Ok(());
            }
            let mut packet = [0; PACKET_LEN];
            packet.copy_from_slice(&self.partial);
            self.partial.clear();
            self.record(|filter| filter.handle_packet(&packet, out))?;
        }
        let mut packets = input.chunks_exact(PACKET_LEN);
        for chunk in &mut packets {
            let packet: &[u8; PACKET_LEN] =
                chunk.try_into().expect("chunks_exact gives whole packets");
            self.record(|filter| filter.handle_packet(packet, out))?;
        }
        self.partial.extend_from_slice(packets.remainder());
        Ok(())
    }

    /// Ends the input: decides the last picture and writes what is left. A partial packet at
    /// the end is dropped.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), RenditionError> {
        self.check()?;
        self.record(|filter| {
            if filter.in_picture {
                filter.end_picture(out);
            }
            match (filter.video_pid, filter.started) {
                (None, _) => Err(RenditionError::NoProgramMap),
                (Some(_), false) => Err(RenditionError::NoKeyFrame),
                (Some(_), true) => Ok(()),
            }
        })
    }

    fn check(&self) -> Result<(), RenditionError> {
        self.failed.map_or(Ok(()), Err)
    }

    fn record(
        &mut self,
        step: impl FnOnce(&mut Self) -> Result<(), RenditionError>,
    ) -> Result<(), RenditionError> {
        let result = step(self);
        if let Err(error) = result {
            self.failed = Some(error);
            self.held.clear();
            self.early.clear();
            self.picture.clear();
        }
        result
    }

    fn handle_packet(
        &mut self,
        bytes: &[u8; PACKET_LEN],
        out: &mut Vec<u8>,
    ) -> Result<(), RenditionError> {
        let offset = self.offset;
        self.offset += PACKET_LEN as u64;
        self.stats.packets_in += 1;
        let packet = match TsPacket::new_checked(bytes) {
            Ok(packet) if !packet.transport_error() => packet,
            Err(PacketError::Sync) => return Err(RenditionError::NotTransportStream { offset }),
            Ok(_) | Err(PacketError::Malformed) => {
                self.stats.damaged += 1;
                return Ok(());
            }
        };
        if packet.pid() == NULL_PID || self.is_duplicate(&packet) {
            return Ok(());
        }
        if packet.pid() == PAT_PID {
            self.handle_pat(&packet);
            self.handle_psi_packet(&packet, out);
        } else if self
            .pmt
            .as_ref()
            .is_some_and(|(pid, _)| *pid == packet.pid())
        {
            self.handle_pmt(&packet)?;
            self.handle_psi_packet(&packet, out);
        } else if Some(packet.pid()) == self.video_pid {
            self.handle_video(&packet, out)?;
        } else if self.in_picture {
            self.hold(Held::Other(*packet.bytes()))?;
        } else if self.started {
            self.emit(*packet.bytes(), out);
        } else if self.video_pid.is_some() {
            self.keep_early(*packet.bytes());
        }
        if self.video_pid.is_none() && self.offset > self.config.max_bytes_before_video {
            return Err(RenditionError::NoProgramMap);
        }
        Ok(())
    }

    /// A packet with a payload and the same counter as the one before on its PID repeats it.
    fn is_duplicate(&mut self, packet: &TsPacket) -> bool {
        if !packet.has_payload() {
            return false;
        }
        let last = &mut self.last_counter_in[usize::from(packet.pid())];
        let duplicate = *last == Some(packet.continuity_counter()) && !packet.discontinuity();
        *last = Some(packet.continuity_counter());
        self.stats.duplicates += u64::from(duplicate);
        duplicate
    }

    fn handle_pat(&mut self, packet: &TsPacket) {
        let Some(section) = self.pat.push(packet.unit_start(), packet.payload()) else {
            return;
        };
        let Some(pmt_pid) = first_program_map_pid(&section) else {
            return;
        };
        if self.pmt.as_ref().is_none_or(|(pid, _)| *pid != pmt_pid) {
            self.pmt = Some((pmt_pid, SectionBuffer::default()));
            self.pmt_hold.clear();
        }
    }

    fn handle_pmt(&mut self, packet: &TsPacket) -> Result<(), RenditionError> {
        let Some((_, buffer)) = self.pmt.as_mut() else {
            return Ok(());
        };
        let Some(section) = buffer.push(packet.unit_start(), packet.payload()) else {
            return Ok(());
        };
        let Some(streams) = program_streams(&section) else {
            return Ok(());
        };
        if self.video_pid.is_some() {
            return Ok(());
        }
        let find = |stream_type| {
            streams
                .iter()
                .find(|stream| stream.stream_type == stream_type)
        };
        let (video, codec) = match (find(STREAM_TYPE_H264), find(STREAM_TYPE_H265)) {
            (Some(video), _) => (video, VideoCodec::H264),
            (None, Some(video)) => (video, VideoCodec::H265),
            (None, None) => {
                let stream_type = streams.first().map(|stream| stream.stream_type);
                return Err(RenditionError::NoSupportedVideo { stream_type });
            }
        };
        self.video_pid = Some(video.pid);
        self.codec = codec;
        Ok(())
    }

    fn handle_psi_packet(&mut self, packet: &TsPacket, out: &mut Vec<u8>) {
        if self.started {
            if self.in_picture {
                self.held.push(Held::Other(*packet.bytes()));
            } else {
                self.emit(*packet.bytes(), out);
            }
            return;
        }
        let hold = if packet.pid() == PAT_PID {
            &mut self.pat_hold
        } else {
            &mut self.pmt_hold
        };
        if packet.unit_start() {
            hold.clear();
        }
        if hold.len() < MAX_PSI_HOLD {
            hold.push(*packet.bytes());
        }
    }

    fn handle_video(&mut self, packet: &TsPacket, out: &mut Vec<u8>) -> Result<(), RenditionError> {
        if packet.unit_start() {
            if self.in_picture {
                self.end_picture(out);
            }
            self.in_picture = true;
        }
        if !self.in_picture {
            return Ok(());
        }
        self.picture_parts
            .push((self.held.len(), PACKET_LEN - packet.payload().len()));
        self.picture.extend_from_slice(packet.payload());
        self.hold(Held::Video(*packet.bytes()))
    }

    fn hold(&mut self, entry: Held) -> Result<(), RenditionError> {
        self.held.push(entry);
        let limit = self.config.max_held_bytes;
        if self.held.len() * PACKET_LEN > limit {
            return Err(RenditionError::PictureTooLarge { limit });
        }
        Ok(())
    }

    /// Decides the current picture and writes what was held with it.
    fn end_picture(&mut self, out: &mut Vec<u8>) {
        let picture = match self.codec {
            VideoCodec::H264 => h264::classify_pes(&self.picture),
            VideoCodec::H265 => h265::classify_pes(&self.picture),
        };
        let keep = self.decide(picture);
        self.picture.clear();
        self.picture_parts.clear();
        self.in_picture = false;
        if keep {
            self.stats.pictures_kept += 1;
        } else {
            self.stats.pictures_dropped += 1;
        }
        if keep && !self.started {
            self.started = true;
            let early: Vec<_> = self
                .pat_hold
                .drain(..)
                .chain(self.pmt_hold.drain(..))
                .collect();
            let early = early.into_iter().chain(std::mem::take(&mut self.early));
            for packet in early {
                self.emit(packet, out);
            }
        }
        let held = std::mem::take(&mut self.held);
        for entry in &held {
            match entry {
                _ if self.started => self.write_held(*entry, keep, out),
                // Before the first kept picture the other PIDs wait for it (audio that
                // precedes the first key frame still plays); the dropped picture goes.
                Held::Other(packet) => self.keep_early(*packet),
                Held::Video(_) => {}
            }
        }
        self.held = held;
        self.held.clear();
    }

    fn keep_early(&mut self, packet: [u8; PACKET_LEN]) {
        if self.early.len() == MAX_EARLY_PACKETS {
            self.early.pop_front();
        }
        self.early.push_back(packet);
    }

    fn write_held(&mut self, entry: Held, keep: bool, out: &mut Vec<u8>) {
        match entry {
            Held::Other(packet) => self.emit(packet, out),
            Held::Video(packet) if keep => self.emit(packet, out),
            Held::Video(bytes) => {
                let Ok(packet) = TsPacket::new_checked(&bytes) else {
                    return;
                };
                if let Some(pcr) = packet.pcr() {
                    let pid = packet.pid();
                    let counter = self.next_counter_out[usize::from(pid)].wrapping_sub(1);
                    self.stats.pcr_packets += 1;
                    self.emit(
                        pcr_only_packet(pid, counter, pcr, packet.discontinuity()),
                        out,
                    );
                }
            }
        }
    }

    /// Whether the rendition keeps a picture of this kind, here in the stream (renumbering it
    /// if it must).
    ///
    /// A picture is kept as it is only while no reference picture has been dropped since the
    /// last random access point (`gap`): a later picture may refer to the dropped one, and in
    /// H.264 its `frame_num` would be missing. A decoder fills such a gap with made-up frames
    /// whose `frame_num`s wrap (4 bits at x264's defaults) onto the next kept picture's
    /// ("illegal short term buffer state"), and the POC of the pictures after it is derived from
    /// the wrong predecessor. In H.264 a random access point is an IDR picture; an I picture
    /// after a gap is kept only if it can be renumbered to close the gap ([`Renumbering`]). In
    /// H.265 every IRAP picture is a random access point.
    fn decide(&mut self, picture: Picture) -> bool {
        let kind = picture.kind;
        let h264 = self.codec == VideoCodec::H264;
        if h264 {
            self.renumbering.handle_parameter_sets(&self.picture);
        }
        let random_access = if h264 {
            kind == PictureKind::Idr
        } else {
            kind.is_intra()
        };
        let wanted = random_access
            || match self.config.rendition {
                Rendition::KeyFrames => kind.is_intra(),
                Rendition::NoBFrames => matches!(kind, PictureKind::Intra | PictureKind::Predicted),
            };
        if random_access || (wanted && !self.gap) {
            self.gap &= !random_access;
            if h264 {
                self.renumbering
                    .handle_kept(&self.picture, picture.reference);
            }
            return true;
        }
        if wanted && h264 && kind.is_intra() && self.renumbering.renumber(&mut self.picture) {
            self.write_back_picture();
            return true;
        }
        self.gap |= picture.reference;
        false
    }

    /// Copies the (renumbered) picture bytes back into the held packets they came from.
    fn write_back_picture(&mut self) {
        let mut at = 0;
        for &(index, offset) in &self.picture_parts {
            if let Some(Held::Video(packet)) = self.held.get_mut(index) {
                let len = PACKET_LEN - offset;
                packet[offset..].copy_from_slice(&self.picture[at..at + len]);
                at += len;
            }
        }
    }

    /// Writes one packet with its PID's next continuity counter.
    fn emit(&mut self, mut packet: [u8; PACKET_LEN], out: &mut Vec<u8>) {
        let pid = usize::from(u16::from_be_bytes([packet[1] & 0x1f, packet[2]]));
        let next = &mut self.next_counter_out[pid];
        if packet[3] & 0x10 != 0 {
            set_continuity_counter(&mut packet, *next);
            *next = (*next + 1) & 0x0f;
        } else {
            // No payload: the counter repeats the last one sent (§2.4.3.3).
            set_continuity_counter(&mut packet, next.wrapping_sub(1));
        }
        self.stats.packets_out += 1;
        out.extend_from_slice(&packet);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn run(
        rendition: Rendition,
        packets: &[[u8; PACKET_LEN]],
    ) -> (Result<Vec<u8>, RenditionError>, RenditionStats) {
        let mut filter = CriticalFilter::new(RenditionConfig {
            rendition,
            ..RenditionConfig::default()
        });
        let mut out = Vec::new();
        let result = packets
            .iter()
            .try_for_each(|packet| filter.push(packet, &mut out))
            .and_then(|()| filter.finish(&mut out));
        (result.map(|()| out), filter.stats())
    }

    #[test]
    fn nothing_goes_out_before_the_first_key_frame_and_then_the_tables_lead() {
        let input = [
            pat(0),
            pmt(0, 0x1b),
            audio(0),
            picture(0, false, P),
            audio(1),
            picture(1, false, IDR),
            audio(2),
            picture(2, true, P),
            picture(3, false, B),
        ];
        let (out, stats) = run(Rendition::KeyFrames, &input);
        let out = out.unwrap();
        let expected = [
            (0, true),
            (PMT_PID, true),
            (AUDIO_PID, true),
            (AUDIO_PID, true),
            (VIDEO_PID, true),
            (AUDIO_PID, true),
            // The dropped P picture carried the PCR: it goes out alone.
            (VIDEO_PID, false),
        ];
        assert_eq!(pids(&out), expected);
        assert_eq!(
            (
                stats.pictures_kept,
                stats.pictures_dropped,
                stats.pcr_packets
            ),
            (1, 3, 1)
        );
        // Counters restart from 0 per PID and the PCR-only packet repeats the video's.
        let counters: Vec<u8> = out
            .chunks_exact(PACKET_LEN)
            .map(|packet| packet[3] & 0x0f)
            .collect();
        assert_eq!(counters, [0, 0, 0, 1, 0, 2, 0]);
        assert_eq!(
            &out[4 * PACKET_LEN..5 * PACKET_LEN],
            &picture(0, false, IDR)[..]
        );
    }

    #[test]
    fn a_long_stretch_without_key_frames_keeps_only_the_latest_early_packets() {
        let mut input = vec![pat(0), pmt(0, 0x1b), picture(0, false, P)];
        input.extend((0..2 * MAX_EARLY_PACKETS).map(|at| audio(at as u8 & 0x0f)));
        input.push(picture(1, false, P));
        input.extend((0..2 * MAX_EARLY_PACKETS).map(|at| audio(at as u8 & 0x0f)));
        let (out, _) = run(Rendition::KeyFrames, &input);
        assert_eq!(out, Err(RenditionError::NoKeyFrame));

        input.push(picture(2, false, IDR));
        let (out, _) = run(Rendition::KeyFrames, &input);
        // PAT, PMT, the latest early audio, the picture.
        assert_eq!(out.unwrap().len(), (3 + MAX_EARLY_PACKETS) * PACKET_LEN);
    }

    #[test]
    fn a_repeated_packet_goes_out_once() {
        let input = [
            pat(0),
            pmt(0, 0x1b),
            picture(0, false, IDR),
            audio(5),
            audio(5),
            audio(6),
        ];
        let (out, stats) = run(Rendition::KeyFrames, &input);
        let audio = pids(&out.unwrap())
            .iter()
            .filter(|(pid, _)| *pid == AUDIO_PID)
            .count();
        assert_eq!((audio, stats.duplicates), (2, 1));
    }

    /// The rendered pictures' slices, in order (PAT and PMT skipped).
    fn kept_slices(out: &[u8]) -> Vec<Vec<u8>> {
        out.chunks_exact(PACKET_LEN)
            .skip(2)
            .map(|packet| packet[PACKET_LEN - 6..].to_vec())
            .collect()
    }

    fn render_pictures(rendition: Rendition, pictures: &[&[u8]]) -> (Vec<Vec<u8>>, RenditionStats) {
        let mut input = vec![pat(0), pmt(0, 0x1b)];
        input.extend(
            pictures
                .iter()
                .enumerate()
                .map(|(at, slice)| picture(at as u8 & 0x0f, false, slice)),
        );
        let (out, stats) = run(rendition, &input);
        (kept_slices(&out.unwrap()), stats)
    }

    fn tail(slice: &[u8]) -> Vec<u8> {
        let mut pes = vec![0, 0, 1, 0xe0, 0, 0, 0x80, 0x00, 0x00];
        pes.extend_from_slice(slice);
        pes[pes.len() - 6..].to_vec()
    }

    #[test]
    fn without_b_the_p_pictures_stay_until_a_reference_b_is_dropped_then_wait_for_an_idr() {
        let pictures = [IDR, P, B, P, B_REFERENCE, P, INTRA, P, IDR, P];
        let (kept, stats) = render_pictures(Rendition::NoBFrames, &pictures);
        let expected: Vec<_> = [IDR, P, P, IDR, P]
            .iter()
            .map(|slice| tail(slice))
            .collect();
        assert_eq!(kept, expected);
        assert_eq!((stats.pictures_kept, stats.pictures_dropped), (5, 5));
    }

    #[test]
    fn an_i_picture_that_is_not_idr_is_kept_only_with_no_dropped_reference_before_it() {
        // Dropping the non-reference B leaves no gap; dropping the P does. These pictures come
        // with no SPS or PPS, so an I picture after the gap cannot be renumbered either
        // (tests/critical.rs renumbers a real one).
        let pictures = [INTRA, IDR, B, INTRA, P, INTRA, IDR, INTRA];
        let (kept, _) = render_pictures(Rendition::KeyFrames, &pictures);
        let expected: Vec<_> = [IDR, INTRA, IDR, INTRA]
            .iter()
            .map(|slice| tail(slice))
            .collect();
        assert_eq!(kept, expected);
    }

    #[test]
    fn a_program_without_h264_or_h265_is_refused_as_soon_as_its_pmt_is_read() {
        let mut filter = CriticalFilter::new(RenditionConfig::default());
        let mut out = Vec::new();
        filter.push(&pat(0), &mut out).unwrap();
        filter.push(&pmt(0, 0x24), &mut out).unwrap();
        assert_eq!(filter.video(), Some((VIDEO_PID, VideoCodec::H265)));

        let mut filter = CriticalFilter::new(RenditionConfig::default());
        filter.push(&pat(0), &mut out).unwrap();
        // 0x02: MPEG-2 video.
        let error = RenditionError::NoSupportedVideo {
            stream_type: Some(0x02),
        };
        assert_eq!(filter.push(&pmt(0, 0x02), &mut out), Err(error));
        assert_eq!(filter.push(&audio(0), &mut out), Err(error));
        assert!(out.is_empty());
    }

    #[test]
    fn a_picture_past_the_bound_is_an_error_and_without_key_frames_there_is_nothing() {
        let config = RenditionConfig {
            max_held_bytes: 3 * PACKET_LEN,
            ..RenditionConfig::default()
        };
        let mut filter = CriticalFilter::new(config);
        let mut out = Vec::new();
        let mut input = vec![pat(0), pmt(0, 0x1b), picture(0, false, IDR)];
        input.extend((1..4).map(|counter| packet(VIDEO_PID, false, counter, false, &[0; 184])));
        let result = input
            .iter()
            .try_for_each(|packet| filter.push(packet, &mut out));
        assert_eq!(
            result,
            Err(RenditionError::PictureTooLarge {
                limit: 3 * PACKET_LEN
            })
        );

        let (out, _) = run(
            Rendition::KeyFrames,
            &[pat(0), pmt(0, 0x1b), picture(0, false, P)],
        );
        assert_eq!(out, Err(RenditionError::NoKeyFrame));
    }

    #[test]
    fn input_split_anywhere_gives_the_same_output() {
        let input: Vec<u8> = [
            pat(0),
            pmt(0, 0x1b),
            picture(0, true, IDR),
            audio(0),
            picture(1, true, P),
        ]
        .concat();
        let (whole, _) = run(Rendition::KeyFrames, &[]);
        assert_eq!(whole, Err(RenditionError::NoProgramMap));
        let mut expected = None;
        for chunk in [1, 7, 187, 188, 189, 1000] {
            let mut filter = CriticalFilter::new(RenditionConfig::default());
            let mut out = Vec::new();
            for piece in input.chunks(chunk) {
                filter.push(piece, &mut out).unwrap();
            }
            filter.finish(&mut out).unwrap();
            assert_eq!(out.len(), 5 * PACKET_LEN);
            assert_eq!(
                expected.get_or_insert_with(|| out.clone()),
                &out,
                "chunks of {chunk}"
            );
        }
    }
}

#[cfg(test)]
mod never_panics {
    use super::super::testing::*;
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary packets after a valid PAT and PMT (sync bytes in place, everything else
        /// random) never panic, and whatever goes out is whole packets.
        #[test]
        fn arbitrary_packets_never_panic(bodies in proptest::collection::vec(any::<[u8; 32]>(), 0..200), seed in any::<u64>()) {
            let mut filter = CriticalFilter::new(RenditionConfig::default());
            let mut out = Vec::new();
            let mut input = [pat(0), pmt(0, 0x1b)].concat();
            for (at, body) in bodies.iter().enumerate() {
                let mut packet = [0u8; PACKET_LEN];
                for (index, byte) in packet.iter_mut().enumerate() {
                    *byte = body[index % 32] ^ (seed >> (index % 8 * 8)) as u8 ^ at as u8;
                }
                packet[0] = 0x47;
                // Most on the video PID, so pictures are assembled and classified.
                if body[0] & 1 == 0 {
                    packet[1] = (packet[1] & 0xe0) | 0x01;
                    packet[2] = 0x00;
                }
                input.extend_from_slice(&packet);
            }
            let _ = filter.push(&input, &mut out).and_then(|()| filter.finish(&mut out));
            prop_assert_eq!(out.len() % PACKET_LEN, 0);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4000)) {
            let mut filter = CriticalFilter::new(RenditionConfig::default());
            let mut out = Vec::new();
            let _ = filter.push(&bytes, &mut out).and_then(|()| filter.finish(&mut out));
            prop_assert_eq!(out.len() % PACKET_LEN, 0);
        }
    }
}
