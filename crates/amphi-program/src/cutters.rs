//! The cutters of one space: each program frame, once, into the history
//! and every listener output.

use std::collections::VecDeque;
use std::sync::Arc;

use amphi_core::{Frame, History, SpaceId};
use amphi_hls::{HlsEvent, Segmenter};
use amphi_media::wire::{CLOSE_SPACE_ENDED, MAX_FRAMES, ws_close_frame, ws_message};
use amphi_media::{OggPager, WsBatcher};
use bytes::Bytes;
use parking_lot::Mutex;

use crate::output::{Output, UnitKind};

/// How frames are grouped into units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutConfig {
    /// Frames per Ogg page (5 = 100 ms).
    pub ogg_frames_per_page: usize,
    /// Frames per `live.ws` message (5 = 100 ms).
    pub ws_frames_per_message: usize,
}

impl Default for CutConfig {
    fn default() -> Self {
        CutConfig {
            ogg_frames_per_page: 5,
            ws_frames_per_message: 5,
        }
    }
}

/// What a space's outputs keep for listeners who join or resume: the
/// recent frames and the LL-HLS parts and segments. The program writes
/// them as it cuts; the HTTP side reads them (short locks, never held
/// across IO). Both are bounded by their own capacity.
#[derive(Debug, Clone)]
pub struct Stores {
    pub history: Arc<Mutex<History>>,
    pub hls: Arc<Mutex<Segmenter>>,
}

impl Stores {
    /// Empty stores keeping `history_frames` frames and a DVR window of
    /// `hls_segments` segments.
    pub fn new(history_frames: usize, hls_segments: usize) -> Self {
        Stores {
            history: Arc::new(Mutex::new(History::new(history_frames))),
            hls: Arc::new(Mutex::new(Segmenter::new(hls_segments))),
        }
    }
}

/// The serial number of a space's Ogg stream (the same on every node, so
/// an edge's pages are the origin's).
pub fn ogg_serial(space: SpaceId) -> u32 {
    (space.0 as u32) ^ ((space.0 >> 32) as u32)
}

/// `live.ws` frames carrying the history from frame `from` up to frame
/// `upto` (the last frame of the newest message published), so that the
/// live messages after it continue without a gap or an overlap.
pub fn resume_ws(history: &History, from: u64, upto: u64) -> Vec<Bytes> {
    let frames: Vec<Frame> = history
        .since(from)
        .take_while(|f| f.seq <= upto)
        .cloned()
        .collect();
    frames.chunks(MAX_FRAMES).map(ws_message).collect()
}

/// Cuts one space's frames into its outputs, once per frame for every
/// listener. An origin's mixer and an edge's remote frames use the same
/// cutters, so an edge's units are the origin's bytes.
#[derive(Debug)]
pub struct Cutters {
    space: SpaceId,
    pager: OggPager,
    batcher: WsBatcher,
    stores: Stores,
    last_seq: Option<u64>,
}

impl Cutters {
    /// Cutters for `space` writing into `stores` (which may already hold
    /// frames: an edge's outputs kept by a node that now mixes the space).
    pub fn new(space: SpaceId, cfg: &CutConfig, stores: Stores) -> Self {
        let last_seq = stores.history.lock().last_seq();
        Cutters {
            space,
            pager: OggPager::new(ogg_serial(space), cfg.ogg_frames_per_page),
            batcher: WsBatcher::new(cfg.ws_frames_per_message),
            stores,
            last_seq,
        }
    }

    /// The stores these cutters write.
    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    /// Sequence number of the last frame cut (or found in the history).
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// Takes one frame into every output; the units it completes are
    /// appended to `out`.
    pub fn cut(&mut self, frame: &Frame, out: &mut VecDeque<Output>) {
        let space = self.space;
        self.last_seq = Some(frame.seq);
        self.stores.history.lock().push(frame.clone());
        let events = self.stores.hls.lock().push(frame);
        push_hls(space, events, frame.seq, out);
        if let Some(bytes) = self.pager.push(frame) {
            out.push_back(Output::Unit {
                space,
                kind: UnitKind::Ogg,
                bytes,
                last_frame: frame.seq,
            });
        }
        if let Some(bytes) = self.batcher.push(frame) {
            out.push_back(Output::Unit {
                space,
                kind: UnitKind::Ws,
                bytes,
                last_frame: frame.seq,
            });
        }
    }

    /// The end of the space: the last Ogg page, the last HLS segment and
    /// `EXT-X-ENDLIST`, and a close frame for every WebSocket listener (so
    /// they do not reconnect).
    pub fn finish(&mut self, out: &mut VecDeque<Output>) {
        let space = self.space;
        let last = self.last_seq.unwrap_or(0);
        if let Some(bytes) = self.pager.flush() {
            out.push_back(Output::Unit {
                space,
                kind: UnitKind::Ogg,
                bytes,
                last_frame: last,
            });
        }
        let events = self.stores.hls.lock().finish();
        push_hls(space, events, last, out);
        out.push_back(Output::Unit {
            space,
            kind: UnitKind::Ws,
            bytes: ws_close_frame(CLOSE_SPACE_ENDED, "space ended"),
            last_frame: last,
        });
    }
}

fn push_hls(space: SpaceId, events: Vec<HlsEvent>, last_frame: u64, out: &mut VecDeque<Output>) {
    for e in events {
        let (kind, bytes) = match e {
            HlsEvent::PartReady { msn, part, bytes } => (UnitKind::HlsPart { msn, part }, bytes),
            HlsEvent::SegmentReady { msn, bytes, .. } => (UnitKind::HlsSegment { msn }, bytes),
        };
        out.push_back(Output::Unit {
            space,
            kind,
            bytes,
            last_frame,
        });
    }
}
