//! Length-prefixed framing shared by peer and client connections.
//!
//! A frame is a 4-byte big-endian payload length followed by that many bytes of protobuf. The
//! decoder never trusts the length: anything above the configured maximum is an error before a
//! single payload byte is buffered, so a hostile peer cannot make us allocate.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use std::fmt;

/// Length of the frame header.
pub const HEADER_LEN: usize = 4;

/// Default maximum payload size of one frame (16 MiB).
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Why a byte stream could not be split into frames or a frame could not be decoded.
///
/// Both carry `id`: the message's leading field 1 if the bytes read so far begin with it (see
/// [`leading_id`]; for a `kvpb::Request` that is the request id), else 0. A server answers a
/// framing error with that id, so the client can match the error to its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The header announced `len` bytes, more than the maximum `max`.
    TooLarge { len: usize, max: usize, id: u64 },
    /// The payload is not a valid protobuf message of the expected type.
    Decode { reason: String, id: u64 },
}

impl FrameError {
    /// The request id the failed frame carried, if it could be read (else 0).
    pub fn request_id(&self) -> u64 {
        match self {
            FrameError::TooLarge { id, .. } | FrameError::Decode { id, .. } => *id,
        }
    }
}

/// The value of field 1 if `payload` (or the part of it read so far) starts with it as a
/// varint (tag byte `0x08`), else 0. prost writes fields in field-number order, so a
/// `kvpb::Request` or `kvpb::Response` with a nonzero `id` begins with it: the id of an
/// oversized frame can be read from its first bytes, without buffering the rest.
pub fn leading_id(payload: &[u8]) -> u64 {
    let Some((&0x08, rest)) = payload.split_first() else {
        return 0;
    };
    let mut v: u64 = 0;
    for (i, &b) in rest.iter().take(10).enumerate() {
        v |= u64::from(b & 0x7f) << (7 * i as u32);
        if b & 0x80 == 0 {
            return v;
        }
    }
    0 // truncated or over-long varint
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { len, max, .. } => {
                write!(f, "frame of {len} bytes exceeds the maximum of {max} bytes")
            }
            FrameError::Decode { reason, .. } => write!(f, "undecodable frame: {reason}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Appends `msg` to `buf` as one frame.
pub fn encode_frame<M: Message>(msg: &M, buf: &mut BytesMut) {
    let len = msg.encoded_len();
    buf.reserve(HEADER_LEN + len);
    buf.put_u32(len as u32);
    // `encode` only fails when the buffer lacks capacity, and we just reserved it.
    msg.encode(buf).expect("reserved capacity for the frame");
}

/// Encodes `msg` into a fresh buffer holding exactly one frame.
pub fn frame_bytes<M: Message>(msg: &M) -> Bytes {
    let mut buf = BytesMut::new();
    encode_frame(msg, &mut buf);
    buf.freeze()
}

/// Frames an already encoded payload (the handshake's fixed-layout messages).
pub fn frame_bytes_raw(payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(HEADER_LEN + payload.len());
    buf.put_u32(payload.len() as u32);
    buf.put_slice(payload);
    buf.freeze()
}

/// Splits the next complete frame off the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame (read more), `Ok(Some(payload))`
/// for a complete frame, and `Err` when the header announces more than `max` bytes (the
/// connection should be answered with an error if possible and closed).
pub fn split_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max {
        let id = leading_id(&buf[HEADER_LEN..]);
        return Err(FrameError::TooLarge { len, max, id });
    }
    if buf.len() < HEADER_LEN + len {
        // Make room for the rest of the frame in one go (bounded by `max`).
        buf.reserve(HEADER_LEN + len - buf.len());
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    Ok(Some(buf.split_to(len).freeze()))
}

/// Decodes a frame payload as `M`.
pub fn decode<M: Message + Default>(payload: Bytes) -> Result<M, FrameError> {
    // A `Bytes` clone is a reference count: decoding from it keeps `bytes` fields zero-copy.
    match M::decode(payload.clone()) {
        Ok(m) => Ok(m),
        Err(e) => Err(FrameError::Decode {
            reason: e.to_string(),
            id: leading_id(&payload),
        }),
    }
}

/// Blocking helpers for std sockets (client library, bench, tests).
pub mod blocking {
    use super::*;
    use std::io::{self, Read, Write};

    /// Writes `msg` as one frame.
    pub fn write_msg<M: Message, W: Write>(w: &mut W, msg: &M) -> io::Result<()> {
        w.write_all(&frame_bytes(msg))
    }

    /// Reads one frame and decodes it as `M`. Oversized and undecodable frames are
    /// `InvalidData` errors; a clean EOF before a header is `UnexpectedEof`.
    pub fn read_msg<M: Message + Default, R: Read>(r: &mut R, max: usize) -> io::Result<M> {
        let mut header = [0u8; HEADER_LEN];
        r.read_exact(&mut header)?;
        let len = u32::from_be_bytes(header) as usize;
        if len > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                FrameError::TooLarge { len, max, id: 0 },
            ));
        }
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload)?;
        decode(Bytes::from(payload)).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::kvpb;

    fn sample() -> kvpb::Request {
        kvpb::Request {
            id: 7,
            op: Some(kvpb::request::Op::Put(kvpb::Put {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_byte_by_byte() {
        let mut wire = BytesMut::new();
        encode_frame(&sample(), &mut wire);
        encode_frame(&sample(), &mut wire);
        let wire = wire.freeze();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(p) = split_frame(&mut buf, 1024).unwrap() {
                got.push(decode::<kvpb::Request>(p).unwrap());
            }
        }
        assert_eq!(got, vec![sample(), sample()]);
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_header_is_rejected_before_buffering() {
        let mut buf = BytesMut::new();
        buf.put_u32(1025);
        assert_eq!(
            split_frame(&mut buf, 1024),
            Err(FrameError::TooLarge {
                len: 1025,
                max: 1024,
                id: 0
            })
        );
    }

    #[test]
    fn garbage_payload_is_a_decode_error() {
        let payload = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            decode::<kvpb::Request>(payload),
            Err(FrameError::Decode { .. })
        ));
    }

    #[test]
    fn errors_carry_the_request_id_when_it_was_read() {
        // An oversized request: only its first bytes have arrived.
        let mut req = sample();
        req.id = 300; // a two-byte varint
        let wire = frame_bytes(&req);
        let mut buf = BytesMut::from(&wire[..HEADER_LEN + 3]);
        let e = split_frame(&mut buf, 2).unwrap_err();
        assert_eq!(e.request_id(), 300, "{e:?}");
        // The varint is cut short: unknown.
        let mut buf = BytesMut::from(&wire[..HEADER_LEN + 2]);
        assert_eq!(split_frame(&mut buf, 2).unwrap_err().request_id(), 0);
        // No id field (id 0 is not encoded): unknown.
        req.id = 0;
        let wire = frame_bytes(&req);
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(split_frame(&mut buf, 2).unwrap_err().request_id(), 0);
        // A valid id followed by garbage.
        let payload = Bytes::from_static(&[0x08, 0x07, 0xff, 0xff, 0xff]);
        assert_eq!(
            decode::<kvpb::Request>(payload).unwrap_err().request_id(),
            7
        );
        assert_eq!(
            leading_id(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            0
        );
    }

    #[test]
    fn blocking_read_rejects_oversize_and_truncation() {
        let mut wire = frame_bytes(&sample()).to_vec();
        let ok: kvpb::Request = blocking::read_msg(&mut &wire[..], 1024).unwrap();
        assert_eq!(ok, sample());
        let err = blocking::read_msg::<kvpb::Request, _>(&mut &wire[..], 2).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        wire.truncate(wire.len() - 1);
        let err = blocking::read_msg::<kvpb::Request, _>(&mut &wire[..], 1024).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
