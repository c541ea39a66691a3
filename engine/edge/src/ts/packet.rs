//! One 188-byte transport stream packet (ISO/IEC 13818-1 §2.4.3.2): a view over the bytes and
//! the two packets the rendition writes itself.

/// Bytes in one transport stream packet.
pub const PACKET_LEN: usize = 188;
/// The first byte of every packet.
pub const SYNC_BYTE: u8 = 0x47;
/// The PID of the program association table.
pub const PAT_PID: u16 = 0x0000;
/// The PID of null (padding) packets.
pub const NULL_PID: u16 = 0x1fff;

/// Why a packet was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketError {
    /// The first byte is not [`SYNC_BYTE`]: this is not a transport stream, or sync was lost.
    Sync,
    /// The adaptation field claims more bytes than the packet holds.
    Malformed,
}

/// A checked view of one packet. After [`TsPacket::new_checked`] succeeds no accessor panics.
#[derive(Clone, Copy, Debug)]
pub struct TsPacket<'a> {
    bytes: &'a [u8; PACKET_LEN],
}

impl<'a> TsPacket<'a> {
    /// Checks the sync byte and the adaptation field's length.
    pub fn new_checked(bytes: &'a [u8; PACKET_LEN]) -> Result<Self, PacketError> {
        if bytes[0] != SYNC_BYTE {
            return Err(PacketError::Sync);
        }
        let packet = TsPacket { bytes };
        if packet.has_adaptation() {
            // With a payload the field leaves at least one byte for it (§2.4.3.5).
            let max = if packet.has_payload() { 182 } else { 183 };
            if usize::from(bytes[4]) > max {
                return Err(PacketError::Malformed);
            }
        }
        Ok(packet)
    }

    /// The packet's bytes.
    pub fn bytes(&self) -> &'a [u8; PACKET_LEN] {
        self.bytes
    }

    /// The packet identifier (13 bits).
    pub fn pid(&self) -> u16 {
        u16::from_be_bytes([self.bytes[1] & 0x1f, self.bytes[2]])
    }

    /// The transport error indicator: a demodulator marked the packet as damaged.
    pub fn transport_error(&self) -> bool {
        self.bytes[1] & 0x80 != 0
    }

    /// The payload unit start indicator: a PES packet or a PSI section starts here.
    pub fn unit_start(&self) -> bool {
        self.bytes[1] & 0x40 != 0
    }

    /// Whether the adaptation field control says an adaptation field is present.
    pub fn has_adaptation(&self) -> bool {
        self.bytes[3] & 0x20 != 0
    }

    /// Whether the adaptation field control says a payload is present.
    pub fn has_payload(&self) -> bool {
        self.bytes[3] & 0x10 != 0
    }

    /// The continuity counter (4 bits).
    pub fn continuity_counter(&self) -> u8 {
        self.bytes[3] & 0x0f
    }

    fn adaptation_len(&self) -> usize {
        if self.has_adaptation() {
            1 + usize::from(self.bytes[4])
        } else {
            0
        }
    }

    /// The payload (empty when the packet carries none).
    pub fn payload(&self) -> &'a [u8] {
        if self.has_payload() {
            &self.bytes[4 + self.adaptation_len()..]
        } else {
            &[]
        }
    }

    /// The program clock reference's six bytes, when the adaptation field carries one.
    pub fn pcr(&self) -> Option<[u8; 6]> {
        // Length byte, flags byte, then the 6-byte PCR first among the optional fields.
        if self.adaptation_len() >= 8 && self.bytes[5] & 0x10 != 0 {
            let mut pcr = [0; 6];
            pcr.copy_from_slice(&self.bytes[6..12]);
            Some(pcr)
        } else {
            None
        }
    }

    /// The adaptation field's discontinuity indicator.
    pub fn discontinuity(&self) -> bool {
        self.adaptation_len() >= 2 && self.bytes[5] & 0x80 != 0
    }
}

/// Rewrites a packet's continuity counter.
pub fn set_continuity_counter(bytes: &mut [u8; PACKET_LEN], counter: u8) {
    bytes[3] = (bytes[3] & 0xf0) | (counter & 0x0f);
}

/// A packet with no payload whose adaptation field carries only `pcr` (and the discontinuity
/// indicator when `discontinuity`): what stands in for a dropped packet that carried the clock.
pub fn pcr_only_packet(
    pid: u16,
    counter: u8,
    pcr: [u8; 6],
    discontinuity: bool,
) -> [u8; PACKET_LEN] {
    let mut bytes = [0xff; PACKET_LEN];
    let [pid_hi, pid_lo] = pid.to_be_bytes();
    bytes[0] = SYNC_BYTE;
    bytes[1] = pid_hi & 0x1f;
    bytes[2] = pid_lo;
    // Adaptation field only ('10'): the counter does not advance (§2.4.3.3).
    bytes[3] = 0x20 | (counter & 0x0f);
    bytes[4] = 183;
    bytes[5] = 0x10 | if discontinuity { 0x80 } else { 0 };
    bytes[6..12].copy_from_slice(&pcr);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pcr_only_packet_reads_back_its_clock_and_carries_no_payload() {
        let pcr = [1, 2, 3, 4, 5, 6];
        let bytes = pcr_only_packet(0x100, 7, pcr, true);
        let packet = TsPacket::new_checked(&bytes).unwrap();
        assert_eq!(packet.pid(), 0x100);
        assert_eq!(packet.pcr(), Some(pcr));
        assert!(packet.discontinuity());
        assert!(!packet.has_payload());
        assert!(packet.payload().is_empty());
        assert_eq!(packet.continuity_counter(), 7);
    }

    #[test]
    fn a_packet_without_sync_or_with_an_overlong_adaptation_field_is_refused() {
        let mut bytes = [0u8; PACKET_LEN];
        assert_eq!(
            TsPacket::new_checked(&bytes).unwrap_err(),
            PacketError::Sync
        );
        bytes[0] = SYNC_BYTE;
        bytes[3] = 0x30;
        bytes[4] = 183;
        assert_eq!(
            TsPacket::new_checked(&bytes).unwrap_err(),
            PacketError::Malformed
        );
        bytes[4] = 182;
        assert_eq!(TsPacket::new_checked(&bytes).unwrap().payload().len(), 1);
    }
}
