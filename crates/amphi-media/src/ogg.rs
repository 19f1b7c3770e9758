//! Ogg/Opus (RFC 3533, RFC 7845): the pager that cuts the program into
//! pages once for every listener, and a reader for clients and tests.
//!
//! The live stream is Icecast-style: every listener receives the same
//! pages, with absolute granule positions and page numbers; a new listener
//! first gets the two header pages (OpusHead, OpusTags), which are the
//! same for everyone. RFC 7845 §4.5 allows a stream to begin at a granule
//! position other than zero, which players treat as a start offset.

use std::collections::VecDeque;

use amphi_core::Frame;
use amphi_core::frame::FRAME_SAMPLES;
use bytes::{BufMut, Bytes, BytesMut};

/// Pre-skip announced in OpusHead (libopus's encoder lookahead at 48 kHz).
pub const PRE_SKIP: u16 = 312;
/// Header flag: the page continues a packet from the previous page.
pub const CONTINUED: u8 = 0x01;
/// Header flag: first page of a stream.
pub const BOS: u8 = 0x02;
/// Header flag: last page of a stream.
pub const EOS: u8 = 0x04;
/// Granule position of a page on which no packet ends (RFC 3533).
pub const NO_GRANULE: u64 = u64::MAX;
/// Bytes of a page header before the lacing values.
const HEADER: usize = 27;
/// Largest possible page: header, 255 lacing values, 255 × 255 bytes.
pub const MAX_PAGE: usize = HEADER + 255 + 255 * 255;

/// Why bytes are not an Ogg page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OggError {
    /// The bytes so far are a valid start: at least `needed` bytes in all
    /// are required.
    #[error("incomplete page: {needed} bytes needed")]
    Incomplete {
        /// Total bytes the page needs (a lower bound until its lacing
        /// values are in).
        needed: usize,
    },
    /// The bytes do not start with "OggS".
    #[error("missing capture pattern")]
    NoCapturePattern,
    /// A stream structure version other than 0.
    #[error("unknown ogg version {0}")]
    Version(u8),
    /// The page's checksum does not match its bytes.
    #[error("bad CRC: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc {
        /// CRC in the header.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
}

/// The Ogg CRC-32 lookup table (polynomial 0x04c11db7, no reflection),
/// built once at compile time.
const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut r = (i as u32) << 24;
        let mut j = 0;
        while j < 8 {
            r = if r & 0x8000_0000 != 0 {
                (r << 1) ^ 0x04c1_1db7
            } else {
                r << 1
            };
            j += 1;
        }
        t[i] = r;
        i += 1;
    }
    t
};

fn crc32_update(crc: u32, data: &[u8]) -> u32 {
    data.iter().fold(crc, |crc, b| {
        (crc << 8) ^ CRC_TABLE[usize::from((crc >> 24) as u8 ^ b)]
    })
}

/// The Ogg CRC-32 (polynomial 0x04c11db7, no reflection, init 0, no final
/// xor) of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    crc32_update(0, data)
}

/// Appends whole pages carrying `packets` (each with the granule position
/// at its end) to `out`. A page holds at most 255 lacing values, so many or
/// large packets continue on further pages, flagged [`CONTINUED`]; a page
/// on which no packet ends has granule [`NO_GRANULE`]. `first_flags` go on
/// the first page, `last_flags` on the last. With no packets, one empty page
/// is written with granule `empty_granule` (an EOS page must still say
/// where the stream ends). Returns the pages written.
fn write_pages<P: AsRef<[u8]>>(
    out: &mut BytesMut,
    body: &mut Vec<u8>,
    serial: u32,
    page_seq: &mut u32,
    packets: &[(P, u64)],
    (first_flags, last_flags): (u8, u8),
    empty_granule: u64,
) -> usize {
    body.clear();
    let mut w = PageWriter {
        out,
        serial,
        page_seq,
        lacing: [0; 255],
        nlacing: 0,
        body,
        granule: NO_GRANULE,
        flags: first_flags,
        pages: 0,
    };
    for (p, granule) in packets {
        let p = p.as_ref();
        let mut rest: &[u8] = p;
        loop {
            if w.nlacing == 255 {
                let mid_packet = rest.len() < p.len();
                w.emit(if mid_packet { CONTINUED } else { 0 });
            }
            let n = rest.len().min(255);
            w.lacing[w.nlacing] = n as u8;
            w.nlacing += 1;
            w.body.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if n < 255 {
                w.granule = *granule;
                break;
            }
        }
    }
    if packets.is_empty() {
        w.granule = empty_granule;
    }
    if w.nlacing > 0 || w.pages == 0 {
        w.flags |= last_flags;
        w.emit(0);
    }
    w.pages
}

struct PageWriter<'a> {
    out: &'a mut BytesMut,
    serial: u32,
    page_seq: &'a mut u32,
    lacing: [u8; 255],
    nlacing: usize,
    /// The page's data so far (a scratch buffer reused across pages).
    body: &'a mut Vec<u8>,
    granule: u64,
    flags: u8,
    pages: usize,
}

impl PageWriter<'_> {
    /// Writes the page built so far; the next one gets `next_flags`.
    fn emit(&mut self, next_flags: u8) {
        let start = self.out.len();
        self.out.reserve(HEADER + self.nlacing + self.body.len());
        self.out.put_slice(b"OggS");
        self.out.put_u8(0);
        self.out.put_u8(self.flags);
        self.out.put_u64_le(self.granule);
        self.out.put_u32_le(self.serial);
        self.out.put_u32_le(*self.page_seq);
        self.out.put_u32_le(0);
        self.out.put_u8(self.nlacing as u8);
        self.out.put_slice(&self.lacing[..self.nlacing]);
        self.out.put_slice(self.body);
        let crc = crc32(&self.out[start..]);
        self.out[start + 22..start + 26].copy_from_slice(&crc.to_le_bytes());
        *self.page_seq = self.page_seq.wrapping_add(1);
        self.pages += 1;
        self.nlacing = 0;
        self.body.clear();
        self.granule = NO_GRANULE;
        self.flags = next_flags;
    }
}

/// The OpusHead packet (RFC 7845 §5.1): mono, 48 kHz, pre-skip 312.
pub fn opus_head() -> [u8; 19] {
    opus_head_for(1)
}

/// The OpusHead packet for `channels` (1 or 2, mapping family 0).
pub fn opus_head_for(channels: u8) -> [u8; 19] {
    let mut h = [0u8; 19];
    h[..8].copy_from_slice(b"OpusHead");
    h[8] = 1;
    h[9] = channels.clamp(1, 2);
    h[10..12].copy_from_slice(&PRE_SKIP.to_le_bytes());
    h[12..16].copy_from_slice(&48_000u32.to_le_bytes());
    h
}

/// The OpusTags packet (RFC 7845 §5.2) naming amphi as the vendor.
pub fn opus_tags() -> Vec<u8> {
    let vendor = b"amphi";
    let mut t = Vec::with_capacity(8 + 4 + vendor.len() + 4);
    t.extend_from_slice(b"OpusTags");
    t.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    t.extend_from_slice(vendor);
    t.extend_from_slice(&0u32.to_le_bytes());
    t
}

/// Cuts program frames into Ogg pages, once for every listener.
#[derive(Debug)]
pub struct OggPager {
    serial: u32,
    frames_per_page: usize,
    /// Packets waiting for their page, with the granule at their end.
    pending: Vec<(Bytes, u64)>,
    /// Program sequence at which the stream's granule count starts.
    origin: u64,
    page_seq: u32,
    /// Granule at the end of the last frame pushed.
    last_granule: u64,
    /// Page body scratch, kept between pages.
    scratch: Vec<u8>,
    /// Channels OpusHead announces.
    channels: u8,
}

impl OggPager {
    /// A pager for the stream `serial`, one page per `frames_per_page`
    /// frames (5 = 100 ms; 1..=50). Granule positions are absolute,
    /// `(seq + 1) × 960`, so every listener of a live stream shares the
    /// same pages whenever it joined.
    pub fn new(serial: u32, frames_per_page: usize) -> Self {
        let frames_per_page = frames_per_page.clamp(1, 50);
        OggPager {
            serial,
            frames_per_page,
            pending: Vec::with_capacity(frames_per_page),
            origin: 0,
            page_seq: 2,
            last_granule: 0,
            scratch: Vec::new(),
            channels: 1,
        }
    }

    /// The stream's channel count in OpusHead (2: a music space's stereo
    /// program; mono packets in it play in both channels).
    pub fn with_channels(mut self, channels: u8) -> Self {
        self.channels = channels.clamp(1, 2);
        self
    }

    /// A pager whose granule positions count from frame `origin` (a
    /// recording that starts mid-program starts at granule zero).
    pub fn with_origin(serial: u32, frames_per_page: usize, origin: u64) -> Self {
        let mut p = Self::new(serial, frames_per_page);
        p.origin = origin;
        p
    }

    /// The two header pages every stream starts with: OpusHead (BOS, page
    /// 0) and OpusTags (page 1), the same bytes for every listener.
    pub fn headers(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(2 * HEADER + 64);
        let mut body = Vec::new();
        let mut seq = 0;
        let (head, tags) = (opus_head_for(self.channels), opus_tags());
        let s = self.serial;
        write_pages(&mut out, &mut body, s, &mut seq, &[(head, 0)], (BOS, 0), 0);
        write_pages(&mut out, &mut body, s, &mut seq, &[(tags, 0)], (0, 0), 0);
        out.freeze()
    }

    /// Adds a frame; every `frames_per_page` frames returns the page. (If
    /// the packets need more than 255 lacing values, which Opus packets of
    /// at most 1275 bytes never do below 50 frames per page, the `Bytes`
    /// hold several consecutive pages.)
    pub fn push(&mut self, frame: &Frame) -> Option<Bytes> {
        let granule = frame
            .seq
            .saturating_add(1)
            .saturating_sub(self.origin)
            .saturating_mul(u64::from(FRAME_SAMPLES));
        self.pending.push((frame.opus.clone(), granule));
        self.last_granule = granule;
        (self.pending.len() >= self.frames_per_page).then(|| self.page(0))
    }

    /// A page of whatever is pending (e.g. at the end of a space).
    pub fn flush(&mut self) -> Option<Bytes> {
        (!self.pending.is_empty()).then(|| self.page(0))
    }

    /// The last page of a file: the pending frames (or none) flagged EOS.
    pub fn finish(&mut self) -> Bytes {
        self.page(EOS)
    }

    fn page(&mut self, last_flags: u8) -> Bytes {
        let body: usize = self.pending.iter().map(|(p, _)| p.len()).sum();
        let mut out = BytesMut::with_capacity(HEADER + 255 + body);
        write_pages(
            &mut out,
            &mut self.scratch,
            self.serial,
            &mut self.page_seq,
            &self.pending,
            (0, last_flags),
            self.last_granule,
        );
        self.pending.clear();
        out.freeze()
    }
}

/// One parsed page, borrowing its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<'a> {
    /// Header flags ([`CONTINUED`], [`BOS`], [`EOS`]).
    pub flags: u8,
    /// Granule position at the end of the last packet that ends here.
    pub granule: u64,
    /// Stream serial number.
    pub serial: u32,
    /// Page sequence number.
    pub seq: u32,
    /// Packet pieces in order. The first continues the previous page's
    /// packet if [`CONTINUED`] is set; the last continues on the next page
    /// if `last_incomplete`.
    pub packets: Vec<&'a [u8]>,
    /// Whether the last piece is cut and continues on the next page.
    pub last_incomplete: bool,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// Parses the page at the start of `buf`, verifying its CRC. Returns the
/// page and the bytes it took; [`OggError::Incomplete`] if `buf` is a valid
/// but unfinished start. Never panics, whatever the bytes.
pub fn parse_page(buf: &[u8]) -> Result<(Page<'_>, usize), OggError> {
    let capture = &b"OggS"[..buf.len().min(4)];
    if buf[..capture.len()] != *capture {
        return Err(OggError::NoCapturePattern);
    }
    if buf.len() < HEADER {
        return Err(OggError::Incomplete { needed: HEADER });
    }
    if buf[4] != 0 {
        return Err(OggError::Version(buf[4]));
    }
    let nsegs = usize::from(buf[26]);
    if buf.len() < HEADER + nsegs {
        return Err(OggError::Incomplete {
            needed: HEADER + nsegs,
        });
    }
    let lacing = &buf[HEADER..HEADER + nsegs];
    let body_len: usize = lacing.iter().map(|l| usize::from(*l)).sum();
    let total = HEADER + nsegs + body_len;
    if buf.len() < total {
        return Err(OggError::Incomplete { needed: total });
    }
    let stored = le_u32(buf, 22);
    let crc = crc32_update(0, &buf[..22]);
    let crc = crc32_update(crc, &[0; 4]);
    let computed = crc32_update(crc, &buf[26..total]);
    if computed != stored {
        return Err(OggError::BadCrc { stored, computed });
    }
    let mut packets = Vec::with_capacity(nsegs);
    let mut at = HEADER + nsegs;
    let mut start = at;
    for l in lacing {
        at += usize::from(*l);
        if *l < 255 {
            packets.push(&buf[start..at]);
            start = at;
        }
    }
    let last_incomplete = nsegs > 0 && lacing[nsegs - 1] == 255;
    if last_incomplete {
        packets.push(&buf[start..at]);
    }
    let mut granule = [0u8; 8];
    granule.copy_from_slice(&buf[6..14]);
    Ok((
        Page {
            flags: buf[5],
            granule: u64::from_le_bytes(granule),
            serial: le_u32(buf, 14),
            seq: le_u32(buf, 18),
            packets,
            last_incomplete,
        },
        total,
    ))
}

/// A page with owned bytes, from [`PageReader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedPage {
    /// Header flags ([`CONTINUED`], [`BOS`], [`EOS`]).
    pub flags: u8,
    /// Granule position at the end of the last packet that ends here.
    pub granule: u64,
    /// Stream serial number.
    pub serial: u32,
    /// Page sequence number.
    pub seq: u32,
    /// Packet pieces, as in [`Page::packets`].
    pub packets: Vec<Bytes>,
    /// Whether the last piece continues on the next page.
    pub last_incomplete: bool,
}

/// Reads pages from a byte stream fed in arbitrary chunks, resynchronising
/// on the capture pattern after garbage or a corrupt page. Memory is
/// bounded: unread input beyond [`MAX_BUFFER`] is discarded and counted in
/// `skipped`.
#[derive(Debug, Default)]
pub struct PageReader {
    buf: BytesMut,
    /// Bytes skipped to resynchronise (garbage, corrupt pages, overflow).
    pub skipped: u64,
}

/// Largest buffered input: many maximal pages.
pub const MAX_BUFFER: usize = 16 * MAX_PAGE;

impl PageReader {
    /// A reader with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.buf.len() + data.len() > MAX_BUFFER {
            self.skipped += self.buf.len() as u64;
            self.buf.clear();
        }
        let cut = data.len().saturating_sub(MAX_BUFFER);
        self.skipped += cut as u64;
        self.buf.extend_from_slice(&data[cut..]);
    }

    /// The next complete, checksum-verified page, if one is buffered.
    pub fn next_page(&mut self) -> Option<OwnedPage> {
        loop {
            match parse_page(&self.buf) {
                Err(OggError::Incomplete { .. }) => return None,
                Ok((p, n)) => {
                    let owned = OwnedPage {
                        flags: p.flags,
                        granule: p.granule,
                        serial: p.serial,
                        seq: p.seq,
                        packets: p
                            .packets
                            .iter()
                            .map(|s| Bytes::copy_from_slice(s))
                            .collect(),
                        last_incomplete: p.last_incomplete,
                    };
                    let _ = self.buf.split_to(n);
                    return Some(owned);
                }
                Err(_) => {
                    // Skip to the next capture pattern after this byte,
                    // keeping a tail that may be the start of one.
                    let len = self.buf.len();
                    let next = self.buf[len.min(1)..]
                        .windows(4)
                        .position(|w| w == b"OggS")
                        .map_or(len.saturating_sub(3), |i| i + 1)
                        .clamp(len.min(1), len);
                    if next == 0 {
                        return None;
                    }
                    self.skipped += next as u64;
                    let _ = self.buf.split_to(next);
                }
            }
        }
    }
}

/// Reassembles packets from pages (a packet may span pages), for players,
/// the load generator and tests. A packet whose start or end was lost to a
/// corrupt page is dropped and counted, never returned truncated.
#[derive(Debug, Default)]
pub struct PacketReader {
    pages: PageReader,
    partial: Option<BytesMut>,
    ready: VecDeque<(Bytes, u64)>,
    last_page_seq: Option<u32>,
    /// Packet pieces dropped because a page was missing or corrupt.
    pub dropped: u64,
}

impl PacketReader {
    /// A reader with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.pages.push(data);
    }

    /// Bytes skipped to resynchronise.
    pub fn skipped(&self) -> u64 {
        self.pages.skipped
    }

    /// The next complete packet and the granule position of the page it
    /// ends on.
    pub fn next_packet(&mut self) -> Option<(Bytes, u64)> {
        while self.ready.is_empty() {
            let page = self.pages.next_page()?;
            let in_order = self
                .last_page_seq
                .is_none_or(|s| s.wrapping_add(1) == page.seq);
            self.last_page_seq = Some(page.seq);
            let n = page.packets.len();
            for (i, piece) in page.packets.into_iter().enumerate() {
                let continues = i == 0 && page.flags & CONTINUED != 0;
                let complete = !(i + 1 == n && page.last_incomplete);
                let mut acc = match (continues, self.partial.take()) {
                    (true, Some(acc)) if in_order => acc,
                    (true, _) => {
                        // The start of this packet was lost.
                        self.dropped += 1;
                        continue;
                    }
                    (false, Some(_)) => {
                        // The end of the previous packet was lost.
                        self.dropped += 1;
                        BytesMut::new()
                    }
                    (false, None) => BytesMut::new(),
                };
                if complete && acc.is_empty() {
                    self.ready.push_back((piece, page.granule));
                    continue;
                }
                acc.extend_from_slice(&piece);
                if complete {
                    self.ready.push_back((acc.freeze(), page.granule));
                } else {
                    self.partial = Some(acc);
                }
            }
        }
        self.ready.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn frame(seq: u64, len: usize) -> Frame {
        Frame {
            seq,
            captured_at_us: 0,
            opus: Bytes::from(
                (0..len)
                    .map(|i| (seq as usize + i) as u8)
                    .collect::<Vec<u8>>(),
            ),
            program_level: 0,
            speakers: Arc::from(Vec::new()),
        }
    }

    /// (granule, page seq, flags, packets) of the one page in `b`.
    fn summary(b: &[u8]) -> (u64, u32, u8, usize) {
        let (p, n) = parse_page(b).unwrap();
        assert_eq!(n, b.len());
        (p.granule, p.seq, p.flags, p.packets.len())
    }

    /// Fuzz-found: the last sequence number of u64 overflowed the
    /// granule computation.
    #[test]
    fn the_last_sequence_number_does_not_overflow() {
        let mut p = OggPager::new(1, 1);
        let f = Frame {
            seq: u64::MAX,
            captured_at_us: 0,
            opus: Bytes::from_static(&[0xf8]),
            program_level: 0,
            speakers: Arc::from(Vec::new()),
        };
        let page = p.push(&f).expect("one frame per page");
        let (parsed, _) = parse_page(&page).unwrap();
        assert_eq!(parsed.granule, u64::MAX);
    }

    #[test]
    fn crc_matches_the_reference_check_value() {
        // CRC-32/MPEG-2 without the final inversion and init: the Ogg CRC
        // of "123456789" is 0x89a1897f.
        assert_eq!(crc32(b"123456789"), 0x89a1_897f);
    }

    #[test]
    fn headers_and_pages_parse_back() {
        let mut pager = OggPager::new(7, 5);
        let headers = pager.headers();
        assert_eq!(headers, OggPager::new(7, 5).headers(), "shared by all");
        let (head, n) = parse_page(&headers).unwrap();
        assert_eq!(
            (head.flags, head.seq, head.granule, head.serial),
            (BOS, 0, 0, 7)
        );
        let h = head.packets[0];
        assert_eq!(&h[..8], b"OpusHead");
        assert_eq!((h[8], h[9]), (1, 1), "version 1, mono");
        assert_eq!(u16::from_le_bytes([h[10], h[11]]), 312);
        assert_eq!(u32::from_le_bytes([h[12], h[13], h[14], h[15]]), 48_000);
        let (tags, m) = parse_page(&headers[n..]).unwrap();
        assert_eq!((tags.flags, tags.seq), (0, 1));
        assert_eq!(
            tags.packets[0],
            &b"OpusTags\x05\x00\x00\x00amphi\x00\x00\x00\x00"[..]
        );
        assert_eq!(n + m, headers.len());

        let pages: Vec<Bytes> = (100..110)
            .filter_map(|s| pager.push(&frame(s, 300)))
            .collect();
        assert_eq!(pages.len(), 2);
        let (p, len) = parse_page(&pages[0]).unwrap();
        assert_eq!(len, pages[0].len());
        assert_eq!((p.granule, p.seq, p.packets.len()), (105 * 960, 2, 5));
        assert_eq!(
            p.packets[0],
            &frame(100, 300).opus[..],
            "300 bytes: 255 + 45"
        );
        let (p, _) = parse_page(&pages[1]).unwrap();
        assert_eq!((p.granule, p.seq), (110 * 960, 3));
        assert!(pager.flush().is_none());
        pager.push(&frame(110, 3));
        assert_eq!(summary(&pager.flush().unwrap()), (111 * 960, 4, 0, 1));
        assert_eq!(summary(&pager.finish()), (111 * 960, 5, EOS, 0));
    }

    #[test]
    fn a_recording_counts_granules_from_its_origin() {
        let mut pager = OggPager::with_origin(1, 2, 1000);
        pager.push(&frame(1000, 10));
        let page = pager.push(&frame(1001, 10)).unwrap();
        assert_eq!(summary(&page), (2 * 960, 2, 0, 2));
        pager.push(&frame(1002, 10));
        assert_eq!(summary(&pager.finish()), (3 * 960, 3, EOS, 1));
    }

    #[test]
    fn lacing_of_exact_multiples_of_255() {
        let mut pager = OggPager::new(1, 3);
        pager.push(&frame(0, 255));
        pager.push(&frame(1, 510));
        let page = pager.push(&frame(2, 0)).unwrap();
        let (p, _) = parse_page(&page).unwrap();
        assert_eq!(&page[27..27 + 6], &[255, 0, 255, 255, 0, 0]);
        let lens: Vec<usize> = p.packets.iter().map(|p| p.len()).collect();
        assert_eq!(lens, vec![255, 510, 0]);
    }

    #[test]
    fn a_packet_larger_than_a_page_spans_pages() {
        let mut pager = OggPager::new(3, 2);
        pager.push(&frame(0, 70_000));
        let bytes = pager.push(&frame(1, 20)).unwrap();
        let (first, n) = parse_page(&bytes).unwrap();
        assert_eq!((first.granule, first.last_incomplete), (NO_GRANULE, true));
        let (second, m) = parse_page(&bytes[n..]).unwrap();
        assert_eq!(second.flags & CONTINUED, CONTINUED);
        assert_eq!((second.seq, second.granule), (3, 2 * 960));
        assert_eq!(n + m, bytes.len());
        let mut r = PacketReader::new();
        r.push(&bytes);
        let (p, g) = r.next_packet().unwrap();
        assert_eq!((p, g), (frame(0, 70_000).opus, 2 * 960));
        assert_eq!(r.next_packet().unwrap().0, frame(1, 20).opus);
    }

    #[test]
    fn corrupt_crc_is_rejected_and_the_reader_resyncs() {
        let mut pager = OggPager::new(1, 1);
        let good = pager.push(&frame(0, 10)).unwrap();
        let mut bad = good.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(matches!(parse_page(&bad), Err(OggError::BadCrc { .. })));
        assert!(matches!(
            parse_page(&good[..good.len() - 1]),
            Err(OggError::Incomplete { .. })
        ));
        assert_eq!(parse_page(b"OggX"), Err(OggError::NoCapturePattern));
        let mut r = PageReader::new();
        r.push(b"garbage");
        r.push(&bad);
        r.push(&good);
        let p = r.next_page().unwrap();
        assert_eq!(p.packets[0], frame(0, 10).opus);
        assert_eq!(r.skipped as usize, 7 + bad.len());
        assert!(r.next_page().is_none());
    }

    proptest! {
        #[test]
        fn pager_reader_roundtrip(
            lens in proptest::collection::vec(prop_oneof![9 => 0usize..1300, 1 => 1300usize..70_000], 1..30),
            fpp in 1usize..8,
            chunk in 1usize..5000,
            start in 0u64..1_000_000,
        ) {
            let mut pager = OggPager::new(99, fpp);
            let mut bytes = pager.headers().to_vec();
            let frames: Vec<Frame> = lens.iter().enumerate().map(|(i, l)| frame(start + i as u64, *l)).collect();
            for f in &frames {
                if let Some(p) = pager.push(f) { bytes.extend_from_slice(&p); }
            }
            bytes.extend_from_slice(&pager.finish());

            // Page level: every page parses (so its CRC verifies), numbers
            // are consecutive, granules are those of the last packet ended.
            let mut at = 0;
            let mut seq = 0;
            let mut ended = 0usize;
            let mut last_flags = 0;
            while at < bytes.len() {
                let (p, n) = parse_page(&bytes[at..]).unwrap();
                prop_assert_eq!(p.seq, seq);
                seq += 1;
                at += n;
                if p.seq >= 2 {
                    let ends = p.packets.len() - usize::from(p.last_incomplete);
                    ended += ends;
                    if ends > 0 || p.packets.is_empty() {
                        prop_assert_eq!(p.granule, (start + ended as u64) * 960);
                    } else {
                        prop_assert_eq!(p.granule, NO_GRANULE);
                    }
                }
                last_flags = p.flags;
            }
            prop_assert_eq!(ended, frames.len());
            prop_assert_eq!(last_flags & EOS, EOS);

            // Stream level, fed in arbitrary chunks.
            let mut r = PacketReader::new();
            let mut packets = Vec::new();
            for c in bytes.chunks(chunk) {
                r.push(c);
                while let Some(p) = r.next_packet() { packets.push(p); }
            }
            prop_assert_eq!(packets.len(), frames.len() + 2);
            for ((p, _), f) in packets[2..].iter().zip(&frames) {
                prop_assert_eq!(p, &f.opus);
            }
            prop_assert_eq!((r.skipped(), r.dropped), (0, 0));
        }

        #[test]
        fn reader_never_panics(data in proptest::collection::vec(any::<u8>(), 0..3000), chunk in 1usize..300) {
            let _ = parse_page(&data);
            let mut r = PacketReader::new();
            for c in data.chunks(chunk) {
                r.push(c);
                while r.next_packet().is_some() {}
            }
        }

        #[test]
        fn reader_survives_corruption_of_valid_pages(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..20)) {
            let mut pager = OggPager::new(5, 2);
            let mut bytes = pager.headers().to_vec();
            for s in 0..40 {
                if let Some(p) = pager.push(&frame(s, 100 + s as usize * 37)) { bytes.extend_from_slice(&p); }
            }
            for (at, x) in flips {
                let i = at % bytes.len();
                bytes[i] ^= x;
            }
            let mut r = PacketReader::new();
            r.push(&bytes);
            let mut n = 0;
            while let Some((p, g)) = r.next_packet() {
                // Whatever survives is a real packet with its own granule.
                if g != 0 && g != NO_GRANULE && g % 960 == 0 && g / 960 <= 40 {
                    prop_assert!(p.len() <= 100 + 40 * 37);
                }
                n += 1;
            }
            prop_assert!(n <= 42);
        }
    }
}
