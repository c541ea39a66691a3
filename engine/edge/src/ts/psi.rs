//! Program specific information: sections carried over packets (ISO/IEC 13818-1 §2.4.4), the
//! program association table and the program map table, each checked by its CRC.

use crc::{Crc, CRC_32_MPEG_2};

/// The longest PAT or PMT section (§2.4.4.4: `section_length` at most 1021, plus 3).
const MAX_SECTION: usize = 1024;
/// A section's CRC, over the whole section including its last four bytes, leaves no remainder.
pub(crate) const SECTION_CRC: Crc<u32> = Crc::<u32>::new(&CRC_32_MPEG_2);

/// H.264 video (Rec. ITU-T H.222.0 Table 2-34).
pub const STREAM_TYPE_H264: u8 = 0x1b;
/// H.265 video.
pub const STREAM_TYPE_H265: u8 = 0x24;

/// Collects one PID's payloads into whole sections.
#[derive(Debug, Default)]
pub struct SectionBuffer {
    buf: Vec<u8>,
    active: bool,
}

impl SectionBuffer {
    /// Feeds one packet's payload, in order; returns the first section that ends in it. Sections
    /// longer than a PAT or PMT may be are dropped.
    pub fn push(&mut self, unit_start: bool, payload: &[u8]) -> Option<Vec<u8>> {
        let mut rest = payload;
        if unit_start {
            let (&pointer, after) = rest.split_first()?;
            let pointer = usize::from(pointer).min(after.len());
            // The bytes before the pointer end the previous section.
            if self.active {
                self.buf.extend_from_slice(&after[..pointer]);
                if let Some(section) = self.take_complete() {
                    self.active = false;
                    return Some(section);
                }
            }
            self.buf.clear();
            self.active = true;
            rest = &after[pointer..];
        }
        if !self.active {
            return None;
        }
        self.buf.extend_from_slice(rest);
        if self.buf.len() > MAX_SECTION + crate::ts::PACKET_LEN {
            self.active = false;
            return None;
        }
        let section = self.take_complete();
        if section.is_some() {
            self.active = false;
        }
        section
    }

    fn take_complete(&mut self) -> Option<Vec<u8>> {
        if self.buf.len() < 3 {
            return None;
        }
        let len = 3 + usize::from(u16::from_be_bytes([self.buf[1] & 0x0f, self.buf[2]]));
        if len > MAX_SECTION || self.buf.len() < len {
            return None;
        }
        Some(self.buf[..len].to_vec())
    }
}

/// The part of a long-form section between its 8-byte header and its CRC, if the section is
/// one of `table_id` with a good CRC and `section_syntax_indicator` set.
fn section_body(section: &[u8], table_id: u8) -> Option<&[u8]> {
    if section.len() < 12 || section[0] != table_id || section[1] & 0x80 == 0 {
        return None;
    }
    if SECTION_CRC.checksum(section) != 0 {
        return None;
    }
    Some(&section[8..section.len() - 4])
}

/// The PMT PID of the first program a PAT section lists (program 0 is the network PID).
pub fn first_program_map_pid(section: &[u8]) -> Option<u16> {
    let body = section_body(section, 0x00)?;
    body.chunks_exact(4)
        .find(|entry| entry[0] != 0 || entry[1] != 0)
        .map(|entry| u16::from_be_bytes([entry[2] & 0x1f, entry[3]]))
}

/// One elementary stream a PMT lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamEntry {
    /// `stream_type` (Table 2-34).
    pub stream_type: u8,
    /// The PID carrying it.
    pub pid: u16,
}

/// The elementary streams of a PMT section, in the table's order.
pub fn program_streams(section: &[u8]) -> Option<Vec<StreamEntry>> {
    let body = section_body(section, 0x02)?;
    // PCR_PID (2), program_info_length (2), then the descriptors.
    let info_len = usize::from(u16::from_be_bytes([*body.get(2)? & 0x0f, *body.get(3)?]));
    let mut rest = body.get(4 + info_len..)?;
    let mut streams = Vec::new();
    while rest.len() >= 5 {
        let es_info_len = usize::from(u16::from_be_bytes([rest[3] & 0x0f, rest[4]]));
        streams.push(StreamEntry {
            stream_type: rest[0],
            pid: u16::from_be_bytes([rest[1] & 0x1f, rest[2]]),
        });
        rest = rest.get(5 + es_info_len..)?;
    }
    Some(streams)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_crc(mut section: Vec<u8>) -> Vec<u8> {
        let len = section.len() - 3 + 4;
        section[1] = 0xb0 | (len >> 8) as u8;
        section[2] = len as u8;
        let crc = SECTION_CRC.checksum(&section);
        section.extend_from_slice(&crc.to_be_bytes());
        section
    }

    fn pat() -> Vec<u8> {
        with_crc(vec![0x00, 0, 0, 0, 1, 0xc1, 0, 0, 0, 1, 0xf0, 0x00])
    }

    fn pmt() -> Vec<u8> {
        with_crc(vec![
            0x02, 0, 0, 0, 1, 0xc1, 0, 0, 0xe1, 0x00, 0xf0, 0x00, // header, PCR PID, no info
            0x1b, 0xe1, 0x00, 0xf0, 0x00, // H.264 on 0x100
            0x0f, 0xe1, 0x01, 0xf0, 0x02, 0x0a, 0x00, // AAC on 0x101, a 2-byte descriptor
        ])
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_payloads_never_panic(
            payloads in proptest::collection::vec((proptest::bool::ANY, proptest::collection::vec(0u8.., 0..184)), 0..20),
        ) {
            let mut buffer = SectionBuffer::default();
            for (start, payload) in &payloads {
                if let Some(section) = buffer.push(*start, payload) {
                    proptest::prop_assert!(section.len() <= MAX_SECTION);
                    let _ = first_program_map_pid(&section);
                    let _ = program_streams(&section);
                }
                let _ = program_streams(payload);
                let _ = first_program_map_pid(payload);
            }
        }
    }

    #[test]
    fn a_pat_names_its_first_program_map() {
        assert_eq!(first_program_map_pid(&pat()), Some(0x1000));
    }

    #[test]
    fn a_pmt_lists_its_streams_and_a_bad_crc_is_refused() {
        let mut section = pmt();
        let streams = program_streams(&section).unwrap();
        assert_eq!(
            streams,
            vec![
                StreamEntry {
                    stream_type: 0x1b,
                    pid: 0x100
                },
                StreamEntry {
                    stream_type: 0x0f,
                    pid: 0x101
                },
            ]
        );
        section[13] ^= 1;
        assert_eq!(program_streams(&section), None);
    }

    #[test]
    fn a_section_split_over_two_packets_is_put_back_together() {
        let section = pmt();
        let mut buffer = SectionBuffer::default();
        let mut first = vec![0u8];
        first.extend_from_slice(&section[..10]);
        assert_eq!(buffer.push(true, &first), None);
        let mut second = section[10..].to_vec();
        second.extend_from_slice(&[0xff; 20]);
        assert_eq!(buffer.push(false, &second), Some(section));
    }
}
