//! A batch frame, encoded once and shared (as reference-counted bytes) by
//! every connection of a room, in each transport's framing.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;

use super::deflate::{deflate_text_frame, WsDeflate, WsEncoding};
use crate::message::{Priority, StoredMessage};

pub struct Frame {
    pub kind: FrameKind,
    pub epoch: Arc<str>,
    /// Cursor before this frame: a viewer at `from` can take it as is.
    pub from: u64,
    /// Cursor after this frame.
    pub to: u64,
    pub full: Encoded,
    /// The same frame without low messages, for connections that fell behind;
    /// `None` when the frame has no low to shed.
    pub lite: Option<Encoded>,
    /// The messages, for the local cache (their JSON bytes are shared).
    pub messages: Arc<[StoredMessage]>,
    /// When the hub encoded it: how late a connection is, seen from a frame.
    pub encoded_at: std::time::Instant,
    /// Subscribers when it was broadcast, and how many have taken it from
    /// the ring since: how far its fan-out has gone (see `Frame::fanout_behind`).
    pub receivers: AtomicUsize,
    pub taken: AtomicUsize,
    /// Number of a broadcast frame, growing over the process's hubs (0: not
    /// a broadcast frame, e.g. a catch-up read).
    pub no: u64,
}

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// `{"type":"batch",...}`: messages; moves the cursor from `from` to `to`.
    Batch,
    /// `{"type":"retract","room","ids"}`: messages to take off the screen.
    /// It moves no cursor (`from == to`), is never cached, and reaches every
    /// viewer of the room wherever its cursor stands (`ViewerFeed`).
    Retract,
    /// `{"type":"online","room","online"}`: the room's viewers over the
    /// cluster changed. Like a retract frame it moves no cursor, is never
    /// cached and reaches every viewer wherever its cursor stands.
    Online,
}

/// One frame's bytes in each transport's framing.
pub struct Encoded {
    pub count: usize,
    /// The batch JSON (long-poll body); shares its buffer with `ws_text`.
    pub json: Bytes,
    /// `{"type":"batch",...}` — the WebSocket text and the long-poll body.
    pub ws_text: Utf8Bytes,
    /// The same JSON as one SSE event with `id: <cursor>`.
    pub sse: Bytes,
    /// The whole WebSocket text frame (header and payload): server frames
    /// are unmasked, so these bytes suit every viewer.
    pub ws_frame: Bytes,
    /// The same frame compressed (permessage-deflate, RSV1), made when a
    /// viewer that negotiated it first needs it, so only rooms with such
    /// viewers pay, once per frame; `None` inside: sent plain (too small,
    /// or compressing saved nothing). See [`Encoded::ws_frame_for`].
    ws_deflated: OnceLock<Option<Bytes>>,
}

impl Encoded {
    fn new(room: &str, epoch: &str, to: u64, messages: &[StoredMessage]) -> Encoded {
        let json = encode_batch(room, epoch, to, messages, false);
        Encoded::framed(json, "batch", Some(to), messages.len())
    }

    /// `json` as every transport frames it: SSE event `event`, with `id:`
    /// when it moves the cursor (an event without one leaves the browser's
    /// Last-Event-ID as it was), and one whole WebSocket text frame.
    fn framed(json: Vec<u8>, event: &str, sse_id: Option<u64>, count: usize) -> Encoded {
        let mut sse = Vec::with_capacity(json.len() + 40);
        if let Some(id) = sse_id {
            writeln!(sse, "id: {id}").expect("vec write");
        }
        write!(sse, "event: {event}\ndata: ").expect("vec write");
        sse.extend_from_slice(&json);
        sse.extend_from_slice(b"\n\n");
        let mut ws_frame = Vec::with_capacity(json.len() + 10);
        ws_text_header(&mut ws_frame, json.len());
        let header = ws_frame.len();
        ws_frame.extend_from_slice(&json);
        let ws_frame = Bytes::from(ws_frame);
        // The JSON is the frame's payload: one buffer for both.
        let json = ws_frame.slice(header..);
        Encoded {
            ws_frame,
            ws_deflated: OnceLock::new(),
            count,
            ws_text: Utf8Bytes::try_from(json.clone()).expect("JSON is UTF-8"),
            json,
            sse: Bytes::from(sse),
        }
    }
}

impl Encoded {
    /// The whole WebSocket frame for a viewer: compressed if it negotiated
    /// permessage-deflate (`deflate`) and the frame is worth compressing.
    /// `deflate` is the process's one setting, so the first caller's choice
    /// holds for every viewer.
    pub fn ws_frame_for(&self, deflate: Option<WsDeflate>) -> (&Bytes, WsEncoding) {
        let Some(cfg) = deflate else {
            return (&self.ws_frame, WsEncoding::Plain);
        };
        match self
            .ws_deflated
            .get_or_init(|| deflate_text_frame(&self.json, cfg))
        {
            Some(bytes) => (bytes, WsEncoding::Deflate),
            None => (&self.ws_frame, WsEncoding::Plain),
        }
    }
}

impl Frame {
    /// Fewer than half of its subscribers have taken this frame yet: its
    /// fan-out (one write per viewer) is still running.
    pub fn fanout_behind(&self) -> bool {
        self.taken.load(Ordering::Relaxed) * 2 < self.receivers.load(Ordering::Relaxed)
    }

    pub fn encode(
        room: &str,
        epoch: Arc<str>,
        from: u64,
        to: u64,
        messages: &[StoredMessage],
    ) -> Frame {
        let has_low = messages.iter().any(|m| m.priority == Priority::Low);
        let lite = has_low.then(|| {
            let kept: Vec<StoredMessage> = messages
                .iter()
                .filter(|m| m.priority != Priority::Low)
                .cloned()
                .collect();
            Encoded::new(room, &epoch, to, &kept)
        });
        Frame {
            kind: FrameKind::Batch,
            full: Encoded::new(room, &epoch, to, messages),
            lite,
            messages: messages.into(),
            encoded_at: std::time::Instant::now(),
            receivers: AtomicUsize::new(0),
            taken: AtomicUsize::new(0),
            no: 0,
            epoch,
            from,
            to,
        }
    }

    /// `{"type":"retract","room","ids"}` at the hub's `cursor` (see
    /// [`FrameKind::Retract`]).
    pub fn retract(room: &str, epoch: Arc<str>, cursor: u64, ids: &[String]) -> Frame {
        let json = serde_json::to_vec(&serde_json::json!({
            "type": "retract",
            "room": room,
            "ids": ids,
        }))
        .expect("a JSON value serialises");
        Frame::announcement(FrameKind::Retract, "retract", json, epoch, cursor)
    }

    /// `{"type":"online","room","online"}` at the hub's `cursor` (see
    /// [`FrameKind::Online`]); encoded once per room and change.
    pub fn online(room: &str, epoch: Arc<str>, cursor: u64, online: usize) -> Frame {
        let json = serde_json::to_vec(&serde_json::json!({
            "type": "online",
            "room": room,
            "online": online,
        }))
        .expect("a JSON value serialises");
        Frame::announcement(FrameKind::Online, "online", json, epoch, cursor)
    }

    /// An announcement (see [`Frame::is_announcement`]): `json` at the hub's
    /// `cursor`, the SSE event `event` without an `id:`.
    fn announcement(
        kind: FrameKind,
        event: &str,
        json: Vec<u8>,
        epoch: Arc<str>,
        cursor: u64,
    ) -> Frame {
        Frame {
            kind,
            full: Encoded::framed(json, event, None, 0),
            lite: None,
            messages: Arc::from([]),
            encoded_at: std::time::Instant::now(),
            receivers: AtomicUsize::new(0),
            taken: AtomicUsize::new(0),
            no: 0,
            epoch,
            from: cursor,
            to: cursor,
        }
    }

    pub fn is_retract(&self) -> bool {
        self.kind == FrameKind::Retract
    }

    /// A frame about the room rather than its stream (retract, online): it
    /// moves no cursor, stays out of the cache and reaches every viewer
    /// wherever its cursor stands.
    pub fn is_announcement(&self) -> bool {
        matches!(self.kind, FrameKind::Retract | FrameKind::Online)
    }

    /// The same batch without the messages `ids` names (a retraction in a
    /// cached frame): same cursors and number, encoded anew; its fan-out is
    /// over (nobody takes the copy from the ring).
    pub fn without(&self, room: &str, ids: &[String]) -> Frame {
        let kept: Vec<StoredMessage> = self
            .messages
            .iter()
            .filter(|m| !ids.contains(&m.id))
            .cloned()
            .collect();
        let mut copy = Frame::encode(room, self.epoch.clone(), self.from, self.to, &kept);
        copy.no = self.no;
        copy.encoded_at = self.encoded_at;
        copy
    }

    /// The bytes for a connection: `lite` sheds low if the frame has any.
    pub fn encoded(&self, lite: bool) -> &Encoded {
        match (&self.lite, lite) {
            (Some(l), true) => l,
            _ => &self.full,
        }
    }
}

/// A long-poll body (a batch object) with `"retracted": ids` added when
/// there are any: messages retracted lately that the client may hold.
pub fn with_retracted(mut batch: Vec<u8>, ids: &[String]) -> Vec<u8> {
    if ids.is_empty() || batch.last() != Some(&b'}') {
        return batch;
    }
    batch.pop();
    batch.extend_from_slice(b",\"retracted\":");
    serde_json::to_writer(&mut batch, ids).expect("vec write");
    batch.push(b'}');
    batch
}

/// A long-poll body (a batch object) with `"online": n` added: the room's
/// viewers over the cluster, as last exchanged.
pub fn with_online(mut batch: Vec<u8>, online: usize) -> Vec<u8> {
    if batch.last() != Some(&b'}') {
        return batch;
    }
    batch.pop();
    write!(batch, ",\"online\":{online}}}").expect("vec write");
    batch
}

/// The header of an unmasked, final WebSocket text frame of `len` bytes.
pub fn ws_text_header(out: &mut Vec<u8>, len: usize) {
    ws_header(out, 0x81, len);
}

/// The header of an unmasked WebSocket frame of `len` bytes whose first
/// byte (FIN, RSV bits, opcode) is `first`.
pub fn ws_header(out: &mut Vec<u8>, first: u8, len: usize) {
    out.push(first);
    match len {
        n if n < 126 => out.push(n as u8),
        n if n <= u16::MAX as usize => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
}

/// One unmasked WebSocket text frame holding `text`.
pub fn ws_text_frame(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 10);
    ws_text_header(&mut out, text.len());
    out.extend_from_slice(text);
    out
}

/// `{"type":"batch","room","epoch","cursor","messages":[...]}` built by
/// concatenating the messages' stored JSON (no re-encoding per message).
/// Takes borrowed messages (a slice, or several frames' in turn); they are
/// walked twice, to reserve the whole length first.
pub fn encode_batch<'a, I>(
    room: &str,
    epoch: &str,
    cursor: u64,
    messages: I,
    reset: bool,
) -> Vec<u8>
where
    I: IntoIterator<Item = &'a StoredMessage>,
    I::IntoIter: Clone,
{
    let messages = messages.into_iter();
    let body_len: usize = messages.clone().map(|m| m.json.len() + 1).sum();
    let mut out = Vec::with_capacity(body_len + room.len() + epoch.len() + 96);
    out.extend_from_slice(b"{\"type\":\"batch\",\"room\":");
    serde_json::to_writer(&mut out, room).expect("vec write");
    out.extend_from_slice(b",\"epoch\":");
    serde_json::to_writer(&mut out, epoch).expect("vec write");
    write!(out, ",\"cursor\":{cursor}").expect("vec write");
    if reset {
        out.extend_from_slice(b",\"reset\":true");
    }
    out.extend_from_slice(b",\"messages\":[");
    for (i, m) in messages.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&m.json);
    }
    out.extend_from_slice(b"]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_valid_json_in_every_framing() {
        let m = |seq: u64| StoredMessage {
            seq,
            priority: if seq == 5 {
                Priority::High
            } else {
                Priority::Low
            },
            ts: 1,
            id: seq.to_string(),
            json: Bytes::from(format!(r#"{{"seq":{seq},"text":"x"}}"#)),
        };
        let f = Frame::encode("r1", Arc::from("e1"), 4, 6, &[m(5), m(6)]);
        let v: serde_json::Value = serde_json::from_str(f.full.ws_text.as_str()).unwrap();
        assert_eq!(v["type"], "batch");
        assert_eq!(v["cursor"], 6);
        assert_eq!(v["epoch"], "e1");
        assert_eq!(v["messages"][1]["seq"], 6);
        let lite: serde_json::Value =
            serde_json::from_str(f.encoded(true).ws_text.as_str()).unwrap();
        assert_eq!(lite["messages"].as_array().unwrap().len(), 1, "low shed");
        assert_eq!(lite["cursor"], 6);
        assert_eq!(f.full.ws_frame[0], 0x81, "final text frame");
        assert_eq!(
            &f.full.ws_frame[f.full.ws_frame.len() - f.full.json.len()..],
            &f.full.json[..]
        );
        for len in [0usize, 125, 126, 65535, 65536] {
            let frame = ws_text_frame(&vec![b'x'; len]);
            let (hdr, n) = match frame[1] {
                126 => (4, u16::from_be_bytes([frame[2], frame[3]]) as usize),
                127 => (
                    10,
                    u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
                ),
                n => (2, n as usize),
            };
            assert_eq!((n, frame.len()), (len, hdr + len), "payload length {len}");
        }
        let sse = std::str::from_utf8(&f.full.sse).unwrap();
        assert!(sse.starts_with("id: 6\nevent: batch\ndata: {"));
        assert!(sse.ends_with("}\n\n"));
        let empty = encode_batch("r1", "e1", 0, &[], true);
        let v: serde_json::Value = serde_json::from_slice(&empty).unwrap();
        assert_eq!(v["reset"], true);
        assert_eq!(v["messages"].as_array().unwrap().len(), 0);
    }

    #[test]
    fn the_compressed_frame_is_made_once_and_shared() {
        let m = |seq: u64| StoredMessage {
            seq,
            priority: Priority::High,
            ts: 1,
            id: seq.to_string(),
            json: Bytes::from(format!(r#"{{"seq":{seq},"text":"主播太强了 gg wp"}}"#)),
        };
        let messages: Vec<StoredMessage> = (1..=20).map(m).collect();
        let f = Frame::encode("r1", Arc::from("e1"), 0, 20, &messages);
        let cfg = WsDeflate {
            min_bytes: 256,
            level: 6,
        };
        assert_eq!(
            f.full.ws_frame_for(None),
            (&f.full.ws_frame, WsEncoding::Plain)
        );
        let (a, encoding) = f.full.ws_frame_for(Some(cfg));
        assert_eq!(encoding, WsEncoding::Deflate);
        assert_eq!(a[0], 0xC1, "FIN, RSV1, text");
        assert!(
            a.len() * 3 < f.full.ws_frame.len(),
            "{} vs {}",
            a.len(),
            f.full.ws_frame.len()
        );
        let (b, _) = f.full.ws_frame_for(Some(cfg));
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same shared bytes");
        let small = Frame::encode("r1", Arc::from("e1"), 0, 1, &messages[..1]);
        let (bytes, encoding) = small.full.ws_frame_for(Some(cfg));
        assert_eq!(
            (bytes, encoding),
            (&small.full.ws_frame, WsEncoding::Plain),
            "under min_bytes"
        );
    }

    #[test]
    fn a_retract_frame_in_every_framing() {
        let ids = vec!["a1".to_string(), "b\"2".to_string()];
        let f = Frame::retract("r1", Arc::from("e1"), 7, &ids);
        assert!(f.is_retract());
        assert_eq!((f.from, f.to, f.full.count), (7, 7, 0));
        let v: serde_json::Value = serde_json::from_str(f.full.ws_text.as_str()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "retract", "room": "r1", "ids": ids})
        );
        let sse = std::str::from_utf8(&f.full.sse).unwrap();
        assert!(
            sse.starts_with("event: retract\ndata: {"),
            "no id line: {sse}"
        );
        assert!(sse.ends_with("}\n\n"));
        assert_eq!(f.full.ws_frame[0], 0x81);
        assert!(f.full.ws_frame.ends_with(&f.full.json));
    }

    #[test]
    fn an_online_frame_in_every_framing() {
        let f = Frame::online("r1", Arc::from("e1"), 9, 1234);
        assert!(f.is_announcement() && !f.is_retract());
        assert_eq!((f.from, f.to, f.full.count), (9, 9, 0));
        assert!(f.lite.is_none());
        let v: serde_json::Value = serde_json::from_str(f.full.ws_text.as_str()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "online", "room": "r1", "online": 1234})
        );
        let sse = std::str::from_utf8(&f.full.sse).unwrap();
        assert!(
            sse.starts_with("event: online\ndata: {"),
            "no id line: {sse}"
        );
        assert!(sse.ends_with("}\n\n"));
        assert_eq!(f.full.ws_frame[0], 0x81);
        assert!(f.full.ws_frame.ends_with(&f.full.json));
        let retract = Frame::retract("r1", Arc::from("e1"), 9, &[]);
        assert!(retract.is_announcement());
        let batch = Frame::encode("r1", Arc::from("e1"), 0, 0, &[]);
        assert!(!batch.is_announcement());
    }

    #[test]
    fn poll_bodies_carry_the_online_count() {
        let body = with_retracted(encode_batch("r", "e", 3, &[], false), &["x".to_string()]);
        let v: serde_json::Value = serde_json::from_slice(&with_online(body, 42)).unwrap();
        assert_eq!(v["online"], 42);
        assert_eq!(v["retracted"], serde_json::json!(["x"]));
        assert_eq!(v["cursor"], 3);
    }

    #[test]
    fn a_frame_without_retracted_messages_keeps_its_place() {
        let m = |seq: u64, p: Priority| StoredMessage {
            seq,
            priority: p,
            ts: 1,
            id: format!("m{seq}"),
            json: Bytes::from(format!(r#"{{"seq":{seq}}}"#)),
        };
        let mut f = Frame::encode(
            "r",
            "e".into(),
            2,
            5,
            &[m(3, Priority::Low), m(5, Priority::High)],
        );
        f.no = 9;
        let copy = f.without("r", &["m3".to_string()]);
        assert_eq!((copy.from, copy.to, copy.no), (2, 5, 9));
        let v: serde_json::Value = serde_json::from_slice(&copy.full.json).unwrap();
        assert_eq!(v["messages"], serde_json::json!([{"seq": 5}]));
        assert!(copy.lite.is_none(), "no low left to shed");
        assert!(!copy.fanout_behind());
    }

    #[test]
    fn poll_bodies_carry_retracted_ids_only_when_there_are_some() {
        let body = encode_batch("r", "e", 3, &[], false);
        assert_eq!(with_retracted(body.clone(), &[]), body);
        let with = with_retracted(body, &["x".to_string()]);
        let v: serde_json::Value = serde_json::from_slice(&with).unwrap();
        assert_eq!(v["retracted"], serde_json::json!(["x"]));
        assert_eq!(v["cursor"], 3);
    }

    #[test]
    fn a_frame_is_behind_until_half_its_receivers_took_it() {
        let f = Frame::encode("r", "e".into(), 0, 0, &[]);
        f.receivers.store(10, Ordering::Relaxed);
        f.taken.store(4, Ordering::Relaxed);
        assert!(f.fanout_behind());
        f.taken.store(5, Ordering::Relaxed);
        assert!(!f.fanout_behind());
    }
}
