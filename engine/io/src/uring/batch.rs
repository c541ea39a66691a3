//! [`GsoBatch`]: one super-buffer being built in a slot of the [`SendRing`], submitted or
//! given back when it drops.

use super::*;

/// A super-buffer being built in one of the ring's slots. See [`SendRing::batch`].
pub struct GsoBatch<'r> {
    pub(super) ring: &'r mut SendRing,
    pub(super) idx: u16,
    pub(super) segment_size: u16,
    /// A short segment was pushed: no more may follow.
    pub(super) closed: bool,
    pub(super) submitted: bool,
}

impl GsoBatch<'_> {
    /// Appends one segment, `header` followed by `source[range]`; the two together must be
    /// `segment_size` bytes, or fewer for the last segment of the super-buffer.
    ///
    /// Call it once per unit. The header is copied into the ring; the payload is sent from
    /// where it lies, and the ring keeps `source` alive until the send completes. Pushing
    /// consecutive segments from one source costs one `Arc` clone per super-buffer.
    pub fn push(
        &mut self,
        header: &[u8],
        source: &Source,
        range: Range<usize>,
    ) -> Result<(), BatchError> {
        let payload = source
            .stable_bytes()
            .get(range)
            .ok_or(BatchError::OutOfRange)?;
        self.check(header.len(), payload.len())?;
        let (ptr, len) = (payload.as_ptr(), payload.len());
        let slot = self.ring.slot_mut(self.idx);
        if slot.keep.last().is_none_or(|k| !Arc::ptr_eq(k, source)) {
            slot.keep.push(Arc::clone(source));
        }
        self.append(header, ptr, len);
        Ok(())
    }

    /// Appends one segment like [`push`](Self::push), with the payload borrowed instead of
    /// kept alive by the ring.
    ///
    /// # Safety
    ///
    /// `payload` must stay valid for reads, and unchanged if its bytes matter, until this
    /// super-buffer's completion has been reaped by [`SendRing::flush`], [`SendRing::wait`] or
    /// [`SendRing::drain`] (`in_flight()` reaching 0 proves it), or until the ring is dropped.
    pub unsafe fn push_borrowed(
        &mut self,
        header: &[u8],
        payload: &[u8],
    ) -> Result<(), BatchError> {
        self.check(header.len(), payload.len())?;
        self.append(header, payload.as_ptr(), payload.len());
        Ok(())
    }

    /// Appends one segment of `len` bytes that the caller writes into storage the slot owns,
    /// and returns it to be filled (all of it) before [`submit`](Self::submit).
    ///
    /// Call it for a segment that cannot be sent from where its bytes lie: a sealed unit,
    /// whose ciphertext exists nowhere else. The storage is the slot's, reused only after
    /// this super-buffer's completion is reaped; consecutive owned segments go out as one
    /// iovec.
    pub fn push_owned(&mut self, len: usize) -> Result<&mut [u8], BatchError> {
        self.check(0, len)?;
        if len < usize::from(self.segment_size) {
            self.closed = true;
        }
        let slot = self.ring.slot_mut(self.idx);
        if slot.owned.is_empty() {
            slot.owned = vec![0u8; MAX_SEND_BYTES].into_boxed_slice();
        }
        // owned_len <= bytes and bytes + len <= MAX_SEND_BYTES were checked: it fits.
        let at = slot.owned_len;
        let Slot {
            owned,
            iov,
            iov_len,
            segments,
            bytes,
            owned_len,
            ..
        } = slot;
        let seg = &mut owned[at..at + len];
        let ptr = seg.as_mut_ptr();
        match iov[..*iov_len].last_mut() {
            // The previous segment was owned too and ends where this one starts.
            Some(last) if (last.iov_base as usize).wrapping_add(last.iov_len) == ptr as usize => {
                last.iov_len += len;
            }
            _ => {
                iov[*iov_len] = libc::iovec {
                    iov_base: ptr.cast(),
                    iov_len: len,
                };
                *iov_len += 1;
            }
        }
        *owned_len += len;
        *segments += 1;
        *bytes += len;
        Ok(seg)
    }

    /// Appends `source[range]` as one or more segments already laid out back to back (say a
    /// received GRO super-datagram being relayed, or pre-built datagrams): the kernel cuts it
    /// every `segment_size` bytes, and only its last segment may be shorter.
    ///
    /// Call it instead of [`push`](Self::push) when the segments are contiguous in memory: one
    /// iovec for the whole run instead of two per segment. The ring keeps `source` alive until
    /// the send completes.
    pub fn push_run(&mut self, source: &Source, range: Range<usize>) -> Result<(), BatchError> {
        let run = source
            .stable_bytes()
            .get(range)
            .ok_or(BatchError::OutOfRange)?;
        if self.closed {
            return Err(BatchError::AfterShortSegment);
        }
        if run.is_empty() {
            return Err(BatchError::EmptySegment);
        }
        let seg = usize::from(self.segment_size);
        let count = run.len().div_ceil(seg);
        let slot = self.slot();
        if usize::from(slot.segments) + count > usize::from(self.ring.config.max_segments) {
            return Err(BatchError::TooManySegments);
        }
        if slot.bytes + run.len() > MAX_SEND_BYTES {
            return Err(BatchError::TooLarge);
        }
        if run.len() % seg != 0 {
            self.closed = true;
        }
        let (ptr, len) = (run.as_ptr(), run.len());
        let slot = self.ring.slot_mut(self.idx);
        if slot.keep.last().is_none_or(|k| !Arc::ptr_eq(k, source)) {
            slot.keep.push(Arc::clone(source));
        }
        slot.iov[slot.iov_len] = libc::iovec {
            // The kernel only reads through this pointer (sendmsg).
            iov_base: ptr.cast_mut().cast(),
            iov_len: len,
        };
        slot.iov_len += 1;
        // count <= max_segments <= 128 was checked above.
        slot.segments += count as u16;
        slot.bytes += len;
        Ok(())
    }

    /// Sends this super-buffer to `to` instead of the socket's connected peer (an unconnected
    /// unicast socket, split mode: one destination per super-buffer).
    ///
    /// Call it any time before [`submit`](Self::submit); the address is kept in the slot while
    /// the send is in flight.
    pub fn set_destination(&mut self, to: std::net::SocketAddrV4) {
        self.ring.slot_mut(self.idx).dest = Some(crate::sys::sockaddr_in_from_std(to));
    }

    /// Full-size segments that still fit (0 once a short segment was pushed).
    ///
    /// Call it to fill a super-buffer exactly.
    pub fn room(&self) -> usize {
        if self.closed {
            return 0;
        }
        let seg = usize::from(self.segment_size);
        let slot = self.slot();
        let by_count = usize::from(self.ring.config.max_segments) - usize::from(slot.segments);
        let by_bytes = (MAX_SEND_BYTES - slot.bytes) / seg;
        by_count.min(by_bytes)
    }

    /// Segments pushed so far.
    pub fn segments(&self) -> u16 {
        self.slot().segments
    }

    /// Bytes pushed so far.
    pub fn len(&self) -> usize {
        self.slot().bytes
    }

    /// No segment pushed yet.
    pub fn is_empty(&self) -> bool {
        self.slot().segments == 0
    }

    /// Queues the super-buffer for sending; it leaves at the next [`SendRing::flush`] (or
    /// `wait`/`drain`). Call it once the super-buffer is full, or when there is no more to
    /// send now.
    pub fn submit(mut self) -> Result<(), BatchError> {
        let segment_size = self.segment_size;
        let target = self.ring.target;
        let idx = self.idx;
        let slot = self.ring.slot_mut(idx);
        if slot.segments == 0 {
            return Err(BatchError::Empty);
        }
        match slot.dest.as_mut() {
            Some(dest) => {
                slot.msg.msg_name = (dest as *mut libc::sockaddr_in).cast();
                slot.msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as _;
            }
            None => {
                slot.msg.msg_name = std::ptr::null_mut();
                slot.msg.msg_namelen = 0;
            }
        }
        slot.msg.msg_iov = slot.iov.as_mut_ptr();
        slot.msg.msg_iovlen = slot.iov_len as _;
        slot.msg.msg_flags = 0;
        if slot.segments > 1 {
            // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic on the length.
            let (space, len) = unsafe {
                (
                    libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as usize,
                    libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize,
                )
            };
            debug_assert!(space <= slot.cmsg.0.len());
            slot.cmsg.0.fill(0);
            slot.msg.msg_control = slot.cmsg.0.as_mut_ptr().cast();
            slot.msg.msg_controllen = space as _;
            // SAFETY: msg_control points at `space` zeroed, 8-aligned bytes owned by the slot,
            // so CMSG_FIRSTHDR returns a non-null, aligned header inside them, and CMSG_DATA
            // of it has room for the u16 (space >= CMSG_LEN(2)).
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&slot.msg);
                debug_assert!(!cmsg.is_null());
                (*cmsg).cmsg_level = libc::SOL_UDP;
                (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                (*cmsg).cmsg_len = len as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment_size);
            }
        } else {
            slot.msg.msg_control = std::ptr::null_mut();
            slot.msg.msg_controllen = 0;
        }
        let msg: *const libc::msghdr = &slot.msg;
        // Marked before the entry is queued: from here on the kernel may read the slot.
        slot.state = SlotState::InFlight;
        let entry = match target {
            Target::Fixed => opcode::SendMsg::new(types::Fixed(0), msg).build(),
            Target::Fd(fd) => opcode::SendMsg::new(types::Fd(fd), msg).build(),
        }
        .user_data(u64::from(idx))
        .flags(squeue::Flags::empty());
        // SAFETY: the entry points at this slot's msghdr, which points at the slot's iovecs,
        // destination address (if any),
        // control message and header storage, and at payload memory kept alive by the slot's
        // `keep` sources or promised by the caller of `push_borrowed`. The slot is marked
        // InFlight below and not touched, reused or freed until its completion is reaped
        // (or it is leaked on drop).
        let pushed = unsafe { self.ring.ring.submission().push(&entry) };
        if pushed.is_err() {
            // Cannot happen: the queue has at least as many entries as there are slots. The
            // entry was not queued, so the slot is not in flight; Drop frees it.
            // SAFETY: the push failed, so no request references this slot.
            unsafe { (*self.ring.slots[usize::from(idx)].get()).state = SlotState::Building };
            return Err(BatchError::QueueFull);
        }
        self.ring.in_flight += 1;
        self.ring.stats.batches_submitted += 1;
        self.submitted = true;
        Ok(())
    }

    fn slot(&self) -> &Slot {
        // SAFETY: this batch's slot is Building (not in flight), and the batch borrows the
        // ring mutably, so no `&mut` to it exists while this shared reference lives.
        unsafe { &*self.ring.slots[usize::from(self.idx)].get() }
    }

    fn check(&self, header_len: usize, payload_len: usize) -> Result<(), BatchError> {
        if self.closed {
            return Err(BatchError::AfterShortSegment);
        }
        if header_len > usize::from(self.ring.config.header_room) {
            return Err(BatchError::HeaderTooLong);
        }
        let seg = header_len + payload_len;
        if seg == 0 {
            return Err(BatchError::EmptySegment);
        }
        if seg > usize::from(self.segment_size) {
            return Err(BatchError::SegmentTooLong);
        }
        let slot = self.slot();
        if slot.segments >= self.ring.config.max_segments {
            return Err(BatchError::TooManySegments);
        }
        if slot.bytes + seg > MAX_SEND_BYTES {
            return Err(BatchError::TooLarge);
        }
        Ok(())
    }

    /// Records a checked segment: copies the header into the slot and adds the iovecs.
    fn append(&mut self, header: &[u8], payload: *const u8, payload_len: usize) {
        let room = usize::from(self.ring.config.header_room);
        let seg_len = header.len() + payload_len;
        if seg_len < usize::from(self.segment_size) {
            self.closed = true;
        }
        let slot = self.ring.slot_mut(self.idx);
        let at = usize::from(slot.segments) * room;
        let hdr = &mut slot.headers[at..at + header.len()];
        hdr.copy_from_slice(header);
        if !header.is_empty() {
            slot.iov[slot.iov_len] = libc::iovec {
                iov_base: hdr.as_mut_ptr().cast(),
                iov_len: header.len(),
            };
            slot.iov_len += 1;
        }
        if payload_len > 0 {
            slot.iov[slot.iov_len] = libc::iovec {
                // The kernel only reads through this pointer (sendmsg).
                iov_base: payload.cast_mut().cast(),
                iov_len: payload_len,
            };
            slot.iov_len += 1;
        }
        slot.segments += 1;
        slot.bytes += seg_len;
    }
}

impl Drop for GsoBatch<'_> {
    fn drop(&mut self) {
        if !self.submitted {
            let idx = self.idx;
            self.ring.slot_mut(idx).reset();
            self.ring.free.push(idx);
        }
    }
}
