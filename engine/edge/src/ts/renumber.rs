//! Renumbering H.264 I pictures kept after a gap, so that a key-frame rendition of an open-GOP
//! stream keeps its I pictures that are not IDR.
//!
//! After a dropped reference picture, the next kept I picture's `frame_num` would leave a gap
//! and its `pic_order_cnt_lsb` would be read against the wrong predecessor (see
//! `CriticalFilter::decide`). Both are fixed-width fields near the start of the slice header
//! (Rec. ITU-T H.264 §7.3.3), their widths given by the SPS, so they can be rewritten in place:
//! `frame_num` becomes the last kept reference picture's + 1 and `pic_order_cnt_lsb` its + 2.
//! A picture is renumbered only when every slice can be: an I picture that is a reference, a
//! frame (not a field), with no memory management commands (they could name dropped pictures),
//! and where the new bits change no emulation prevention byte. Otherwise it is dropped.
//!
//! The SPS and PPS are parsed by h264-reader; the slice header fields are read with a small
//! cursor here because h264-reader's bit reader does not say where a field lies.

use std::ops::Range;

use h264_reader::nal::pps::PicParameterSet;
use h264_reader::nal::sps::{FrameMbsFlags, PicOrderCntType, SeqParameterSet};
use h264_reader::rbsp::{decode_nal, BitReader};
use h264_reader::Context;

use super::h264::{nal_ranges, pes_payload_start};

/// The slice header bytes read (after unescaping): enough for every field up to the memory
/// management flag in any slice header whose ids and `frame_num` are of sane size.
const HEADER_BYTES: usize = 32;

/// One fixed-width field of a slice header: where it is in the RBSP, its width and value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Field {
    at: usize,
    bits: u32,
    value: u32,
}

/// What renumbering needs from one slice header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SliceNumbers {
    frame_num: Field,
    poc_lsb: Option<Field>,
    /// An I slice of a frame, with no memory management commands.
    plain_intra_frame: bool,
}

/// The parameter sets seen so far and the numbers of the last kept reference picture.
#[derive(Default)]
pub struct Renumbering {
    context: Context,
    last: Option<(u32, u32)>,
}

impl std::fmt::Debug for Renumbering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renumbering")
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl Renumbering {
    /// Reads the SPS and PPS units of a PES packet (kept or not).
    pub fn handle_parameter_sets(&mut self, pes: &[u8]) {
        for nal in slices_and_sets(pes).into_iter().map(|range| &pes[range]) {
            let Some(&header) = nal.first() else { continue };
            let Ok(rbsp) = decode_nal(nal) else { continue };
            match header & 0x1f {
                7 => {
                    if let Ok(sps) = SeqParameterSet::from_bits(BitReader::new(&rbsp[..])) {
                        self.context.put_seq_param_set(sps);
                    }
                }
                8 => {
                    if let Ok(pps) =
                        PicParameterSet::from_bits(&self.context, BitReader::new(&rbsp[..]))
                    {
                        self.context.put_pic_param_set(pps);
                    }
                }
                _ => {}
            }
        }
    }

    /// Notes a picture kept as it is: if it is a reference, later renumbered pictures follow it.
    pub fn handle_kept(&mut self, pes: &[u8], reference: bool) {
        if !reference {
            return;
        }
        let first = slices(pes)
            .into_iter()
            .find_map(|range| self.numbers(&pes[range]));
        self.last = first.map(|numbers| {
            (
                numbers.frame_num.value,
                numbers.poc_lsb.map_or(0, |poc| poc.value),
            )
        });
    }

    /// Renumbers every slice of a kept I picture in place to follow the last kept reference
    /// picture; false, with `pes` untouched, when one of them cannot be.
    pub fn renumber(&mut self, pes: &mut [u8]) -> bool {
        let Some((last_frame_num, last_poc)) = self.last else {
            return false;
        };
        let ranges = slices(pes);
        let mut edited = pes.to_vec();
        let mut next = None;
        for range in &ranges {
            let nal = &pes[range.clone()];
            let Some(numbers) = self.numbers(nal) else {
                return false;
            };
            if !numbers.plain_intra_frame || nal[0] & 0x60 == 0 {
                return false;
            }
            let frame_num = (last_frame_num + 1) & mask(numbers.frame_num.bits);
            let poc = numbers
                .poc_lsb
                .map(|field| (field, (last_poc + 2) & mask(field.bits)));
            let mut fields = vec![(numbers.frame_num, frame_num)];
            fields.extend(poc);
            if !rewrite(&mut edited[range.clone()], &fields) {
                return false;
            }
            next = Some((frame_num, poc.map_or(0, |(_, value)| value)));
        }
        if next.is_none() {
            return false;
        }
        pes.copy_from_slice(&edited);
        self.last = next;
        true
    }

    /// The numbers of one slice NAL unit (header byte included), if its parameter sets are known
    /// and its header reads.
    fn numbers(&self, nal: &[u8]) -> Option<SliceNumbers> {
        let idr = nal.first()? & 0x1f == 5;
        let reference = nal.first()? & 0x60 != 0;
        let (rbsp, _) = unescape(nal, HEADER_BYTES);
        let mut bits = Bits {
            bytes: &rbsp,
            at: 0,
        };
        bits.ue()?;
        let slice_type = bits.ue()? % 5;
        let pps_id = u8::try_from(bits.ue()?).ok()?;
        let pps = self
            .context
            .pps()
            .find(|pps| pps.pic_parameter_set_id.id() == pps_id)?;
        let sps = self.context.sps_by_id(pps.seq_parameter_set_id)?;
        if sps.chroma_info.separate_colour_plane_flag {
            bits.skip(2)?;
        }
        let frame_num = bits.field(u32::from(sps.log2_max_frame_num()))?;
        let field = sps.frame_mbs_flags != FrameMbsFlags::Frames && bits.flag()?;
        if field {
            // bottom_field_flag
            bits.skip(1)?;
        }
        let frame = !field;
        if idr {
            bits.ue()?;
        }
        let poc_lsb = read_poc_fields(&mut bits, sps, pps, frame)?;
        // In an I slice dec_ref_pic_marking comes next (§7.3.3): for a reference picture that
        // is not IDR, adaptive_ref_pic_marking_mode_flag.
        let intra = slice_type == 2 || slice_type == 4;
        let commands = intra && reference && !idr && bits.flag()?;
        Some(SliceNumbers {
            frame_num,
            poc_lsb,
            plain_intra_frame: intra && frame && !commands,
        })
    }
}

/// Reads a slice header's picture order count fields and `redundant_pic_cnt` (§7.3.3), and
/// gives `pic_order_cnt_lsb` where the SPS has one.
fn read_poc_fields(
    bits: &mut Bits,
    sps: &SeqParameterSet,
    pps: &PicParameterSet,
    frame: bool,
) -> Option<Option<Field>> {
    let bottom = pps.bottom_field_pic_order_in_frame_present_flag && frame;
    let mut poc_lsb = None;
    match &sps.pic_order_cnt {
        PicOrderCntType::TypeZero {
            log2_max_pic_order_cnt_lsb_minus4,
        } => {
            poc_lsb = Some(bits.field(u32::from(*log2_max_pic_order_cnt_lsb_minus4) + 4)?);
            if bottom {
                bits.ue()?;
            }
        }
        PicOrderCntType::TypeOne {
            delta_pic_order_always_zero_flag: false,
            ..
        } => {
            bits.ue()?;
            if bottom {
                bits.ue()?;
            }
        }
        PicOrderCntType::TypeOne { .. } | PicOrderCntType::TypeTwo => {}
    }
    if pps.redundant_pic_cnt_present_flag {
        bits.ue()?;
    }
    Some(poc_lsb)
}

fn mask(bits: u32) -> u32 {
    if bits >= 32 {
        u32::MAX
    } else {
        (1 << bits) - 1
    }
}

/// The slice NAL units (types 1 and 5) of a PES packet, as ranges of it.
fn slices(pes: &[u8]) -> Vec<Range<usize>> {
    slices_and_sets(pes)
        .into_iter()
        .filter(|range| matches!(pes[range.start] & 0x1f, 1 | 5))
        .collect()
}

/// The non-empty NAL units of a PES packet, as ranges of it.
fn slices_and_sets(pes: &[u8]) -> Vec<Range<usize>> {
    let Some(start) = pes_payload_start(pes) else {
        return Vec::new();
    };
    nal_ranges(&pes[start..])
        .into_iter()
        .map(|range| range.start + start..range.end + start)
        .filter(|range| !range.is_empty())
        .collect()
}

/// The first `max` RBSP bytes of a NAL unit (header byte skipped, emulation prevention bytes
/// removed), and where each lies in `nal`.
fn unescape(nal: &[u8], max: usize) -> (Vec<u8>, Vec<usize>) {
    let (mut rbsp, mut at) = (Vec::with_capacity(max), Vec::with_capacity(max));
    let mut zeros = 0;
    for (index, &byte) in nal.iter().enumerate().skip(1) {
        if rbsp.len() == max {
            break;
        }
        if zeros >= 2 && byte == 3 {
            zeros = 0;
            continue;
        }
        zeros = if byte == 0 { zeros + 1 } else { 0 };
        rbsp.push(byte);
        at.push(index);
    }
    (rbsp, at)
}

/// Writes `fields` into a slice NAL unit's header in place; false (and `nal` unchanged) when the
/// new bytes would change how the unit is escaped.
fn rewrite(nal: &mut [u8], fields: &[(Field, u32)]) -> bool {
    let (mut rbsp, at) = unescape(nal, HEADER_BYTES);
    for (field, value) in fields {
        for bit in 0..field.bits as usize {
            let index = field.at + bit;
            let Some(byte) = rbsp.get_mut(index / 8) else {
                return false;
            };
            let mask = 0x80 >> (index % 8);
            let set = value >> (field.bits as usize - 1 - bit) & 1 == 1;
            *byte = if set { *byte | mask } else { *byte & !mask };
        }
    }
    let original = nal.to_vec();
    for (byte, &index) in rbsp.iter().zip(&at) {
        nal[index] = *byte;
    }
    // Same RBSP when read back, and no start code emulated: the escaping is unchanged.
    let (check, check_at) = unescape(nal, HEADER_BYTES);
    let end = at.last().map_or(0, |last| last + 1);
    let emulated = nal[..end.min(nal.len())]
        .windows(3)
        .any(|w| w[0] == 0 && w[1] == 0 && w[2] <= 2);
    if check != rbsp || check_at != at || emulated {
        nal.copy_from_slice(&original);
        return false;
    }
    true
}

/// A bit cursor over RBSP bytes that knows where it is.
struct Bits<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Bits<'_> {
    fn flag(&mut self) -> Option<bool> {
        let byte = self.bytes.get(self.at / 8)?;
        let bit = byte >> (7 - self.at % 8) & 1;
        self.at += 1;
        Some(bit == 1)
    }

    fn skip(&mut self, bits: usize) -> Option<()> {
        for _ in 0..bits {
            self.flag()?;
        }
        Some(())
    }

    fn field(&mut self, bits: u32) -> Option<Field> {
        let at = self.at;
        let mut value = 0u32;
        for _ in 0..bits {
            value = value << 1 | u32::from(self.flag()?);
        }
        Some(Field { at, bits, value })
    }

    /// An unsigned Exp-Golomb code (§9.1), at most 32 bits of value.
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while !self.flag()? {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let rest = self.field(zeros)?.value;
        Some(((1u64 << zeros) - 1 + u64::from(rest)) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// x264's SPS, PPS and the start of an IDR slice (320x240, High 4:4:4, log2_max_frame_num 4,
    /// POC type 0 with 6-bit lsb).
    const SPS: &str = "67f4000d919b28283f6022000003000200000300641e28532c";
    const PPS: &str = "68ebe3c44844";
    const IDR: &str = "658884003bfffef6fcfc0a6d";

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&text[at..at + 2], 16).unwrap())
            .collect()
    }

    fn pes(nals: &[Vec<u8>]) -> Vec<u8> {
        let mut pes = vec![0, 0, 1, 0xe0, 0, 0, 0x80, 0x00, 0x00];
        for nal in nals {
            pes.extend_from_slice(&[0, 0, 0, 1]);
            pes.extend_from_slice(nal);
        }
        pes
    }

    /// A slice NAL unit whose header is `bits` ('0' and '1', spaces ignored), padded with ones.
    fn slice(header: u8, bits: &str) -> Vec<u8> {
        let mut bits: Vec<bool> = bits
            .chars()
            .filter(|c| !c.is_whitespace())
            .map(|c| c == '1')
            .collect();
        bits.resize(bits.len().div_ceil(8) * 8 + 16, true);
        let mut nal = vec![header];
        nal.extend(
            bits.chunks(8)
                .map(|byte| byte.iter().fold(0u8, |acc, &bit| acc << 1 | u8::from(bit))),
        );
        nal
    }

    #[test]
    fn an_i_picture_after_a_gap_follows_the_last_kept_reference_picture() {
        let mut renumbering = Renumbering::default();
        let idr = pes(&[hex(SPS), hex(PPS), hex(IDR)]);
        renumbering.handle_parameter_sets(&idr);
        renumbering.handle_kept(&idr, true);
        assert_eq!(renumbering.last, Some((0, 0)));

        // first_mb 0, slice_type 7 (I), pps 0, frame_num 5, POC lsb 50, no memory commands.
        let intra = slice(0x41, "1 0001000 1 0101 110010 0");
        let mut picture = pes(&[intra.clone(), intra]);
        assert!(renumbering.renumber(&mut picture));
        assert_eq!(renumbering.last, Some((1, 2)));
        for range in slices(&picture) {
            let numbers = renumbering.numbers(&picture[range]).unwrap();
            assert_eq!(
                (
                    numbers.frame_num.value,
                    numbers.poc_lsb.map(|poc| poc.value)
                ),
                (1, Some(2))
            );
        }
        assert!(renumbering.renumber(&mut picture));
        assert_eq!(renumbering.last, Some((2, 4)));
    }

    proptest::proptest! {
        /// Arbitrary slices after real parameter sets never panic, and a picture that is not
        /// renumbered is left as it was.
        #[test]
        fn arbitrary_slices_never_panic(
            slices in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 1..40), 1..4),
        ) {
            let mut renumbering = Renumbering::default();
            let idr = pes(&[hex(SPS), hex(PPS), hex(IDR)]);
            renumbering.handle_parameter_sets(&idr);
            renumbering.handle_kept(&idr, true);
            let mut picture = pes(&slices);
            let before = picture.clone();
            if !renumbering.renumber(&mut picture) {
                proptest::prop_assert_eq!(&picture, &before);
            }
            renumbering.handle_parameter_sets(&before);
            renumbering.handle_kept(&before, true);
        }
    }

    #[test]
    fn p_pictures_memory_commands_and_unknown_parameter_sets_are_not_renumbered() {
        let mut renumbering = Renumbering::default();
        let intra = slice(0x41, "1 0001000 1 0101 110010 0");
        // No SPS or PPS seen yet.
        assert!(!renumbering.renumber(&mut pes(&[intra])));
        let idr = pes(&[hex(SPS), hex(PPS), hex(IDR)]);
        renumbering.handle_parameter_sets(&idr);
        renumbering.handle_kept(&idr, true);
        let cases = [
            slice(0x41, "1 00110 1 0101 110010"),     // slice_type 5: P
            slice(0x41, "1 0001000 1 0101 110010 1"), // adaptive_ref_pic_marking_mode_flag
            slice(0x01, "1 0001000 1 0101 110010"),   // nal_ref_idc 0: not a reference
        ];
        for case in cases {
            let mut picture = pes(&[case]);
            let before = picture.clone();
            assert!(!renumbering.renumber(&mut picture));
            assert_eq!(picture, before);
        }
        assert_eq!(renumbering.last, Some((0, 0)));
    }

    #[test]
    fn exp_golomb_codes_and_fields_read_where_they_lie() {
        // ue 0 = 1, ue 3 = 00100, then a 4-bit field 1010.
        let bytes = [0b1001_0010, 0b1000_0000];
        let mut bits = Bits {
            bytes: &bytes,
            at: 0,
        };
        assert_eq!((bits.ue(), bits.ue()), (Some(0), Some(3)));
        assert_eq!(
            bits.field(4),
            Some(Field {
                at: 6,
                bits: 4,
                value: 0b1010
            })
        );
        assert_eq!(
            Bits {
                bytes: &[0, 0, 0, 0, 0],
                at: 0
            }
            .ue(),
            None
        );
    }

    #[test]
    fn a_rewrite_that_would_emulate_a_start_code_is_refused() {
        // Header byte, then RBSP 80 00 00 01, escaped as 80 00 00 03 01: clearing the first
        // bit would give 00 00 00, which cannot be escaped in place.
        let mut nal = [0x41, 0x80, 0x00, 0x00, 0x03, 0x01];
        let first_bit = Field {
            at: 0,
            bits: 1,
            value: 1,
        };
        assert!(!rewrite(&mut nal, &[(first_bit, 0)]));
        assert_eq!(nal, [0x41, 0x80, 0x00, 0x00, 0x03, 0x01]);
        let next_bits = Field {
            at: 1,
            bits: 2,
            value: 0,
        };
        assert!(rewrite(&mut nal, &[(next_bits, 0b11)]));
        assert_eq!(nal, [0x41, 0xe0, 0x00, 0x00, 0x03, 0x01]);
    }
}
