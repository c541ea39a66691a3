//! Builders of small transport streams for the unit tests.

use super::packet::{PACKET_LEN, SYNC_BYTE};
use super::psi::SECTION_CRC;

pub const PMT_PID: u16 = 0x1000;
pub const VIDEO_PID: u16 = 0x100;
pub const AUDIO_PID: u16 = 0x101;

/// One packet: `payload` behind an adaptation field that fills the rest (with a PCR if asked).
pub fn packet(pid: u16, start: bool, counter: u8, pcr: bool, payload: &[u8]) -> [u8; PACKET_LEN] {
    assert!(payload.len() <= if pcr { 176 } else { 184 });
    let mut bytes = [0xff; PACKET_LEN];
    let [hi, lo] = pid.to_be_bytes();
    bytes[0] = SYNC_BYTE;
    bytes[1] = (hi & 0x1f) | if start { 0x40 } else { 0 };
    bytes[2] = lo;
    let at = if pcr || payload.len() < 184 {
        bytes[3] = 0x30 | counter;
        bytes[4] = (183 - payload.len()) as u8;
        if bytes[4] > 0 {
            bytes[5] = if pcr { 0x10 } else { 0 };
        }
        if pcr {
            bytes[6..12].copy_from_slice(&[0, 0, 0, 1, 0x7e, 0]);
        }
        PACKET_LEN - payload.len()
    } else {
        bytes[3] = 0x10 | counter;
        4
    };
    bytes[at..].copy_from_slice(payload);
    bytes
}

fn section(mut body: Vec<u8>) -> Vec<u8> {
    let len = body.len() - 3 + 4;
    body[1] = 0xb0 | (len >> 8) as u8;
    body[2] = len as u8;
    let crc = SECTION_CRC.checksum(&body);
    body.extend_from_slice(&crc.to_be_bytes());
    let mut payload = vec![0];
    payload.extend_from_slice(&body);
    payload
}

/// A PAT naming [`PMT_PID`] for program 1.
pub fn pat(counter: u8) -> [u8; PACKET_LEN] {
    let body = vec![0x00, 0, 0, 0, 1, 0xc1, 0, 0, 0, 1, 0xf0, 0x00];
    packet(0, true, counter, false, &section(body))
}

/// A PMT with video of `video_type` on [`VIDEO_PID`] and AAC on [`AUDIO_PID`].
pub fn pmt(counter: u8, video_type: u8) -> [u8; PACKET_LEN] {
    let body = vec![
        0x02, 0, 0, 0, 1, 0xc1, 0, 0, 0xe1, 0x00, 0xf0, 0x00, video_type, 0xe1, 0x00, 0xf0, 0x00,
        0x0f, 0xe1, 0x01, 0xf0, 0x00,
    ];
    packet(PMT_PID, true, counter, false, &section(body))
}

/// The pictures the tests use, as slice NAL units (first_mb_in_slice 0, then slice_type).
pub const IDR: &[u8] = &[0, 0, 1, 0x65, 0b1000_1000, 0x80];
pub const INTRA: &[u8] = &[0, 0, 1, 0x41, 0b1000_1000, 0x80];
pub const P: &[u8] = &[0, 0, 1, 0x41, 0b1100_0000];
pub const B: &[u8] = &[0, 0, 1, 0x01, 0b1010_0000];
pub const B_REFERENCE: &[u8] = &[0, 0, 1, 0x21, 0b1010_0000];

/// The first packet of a video PES packet holding `slice`.
pub fn picture(counter: u8, pcr: bool, slice: &[u8]) -> [u8; PACKET_LEN] {
    let mut pes = vec![0, 0, 1, 0xe0, 0, 0, 0x80, 0x00, 0x00];
    pes.extend_from_slice(slice);
    packet(VIDEO_PID, true, counter, pcr, &pes)
}

/// A packet of audio.
pub fn audio(counter: u8) -> [u8; PACKET_LEN] {
    packet(AUDIO_PID, true, counter, false, &[0, 0, 1, 0xc0, 0, 0])
}

/// (PID, has payload) of each output packet.
pub fn pids(out: &[u8]) -> Vec<(u16, bool)> {
    out.chunks_exact(PACKET_LEN)
        .map(|packet| {
            (
                u16::from_be_bytes([packet[1] & 0x1f, packet[2]]),
                packet[3] & 0x10 != 0,
            )
        })
        .collect()
}
