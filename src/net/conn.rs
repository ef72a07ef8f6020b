//! A buffered, non-blocking framed connection over a mio `TcpStream`.
//!
//! Reading: bytes go into a `BytesMut`; [`Conn::next_frame`] splits complete frames off it,
//! refusing any header announcing more than `max_frame` bytes before buffering the payload.
//! Writing: encoded frames are queued as `Bytes` (no copy) and written until the socket would
//! block; the owner registers for WRITABLE (edge-triggered) and calls [`Conn::flush`] again
//! when the socket drains. [`Conn::pending_out`] lets the owner apply backpressure (stop
//! reading from a client whose responses pile up).
//!
//! With a TLS session ([`Conn::set_tls`], see `net::tls`) the same calls read and write
//! ciphertext on the socket while the read buffer and the write queue hold plaintext, so the
//! owners' parsing, limits and backpressure are the same with TLS as without.

use super::framing::{split_frame, FrameError};
use super::tls::TlsSession;
use bytes::{Buf, Bytes, BytesMut};
use mio::net::TcpStream;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

/// Bytes requested from the socket per read call.
const READ_CHUNK: usize = 64 * 1024;

/// Result of one [`Conn::read_some`] call.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// Read this many bytes; the socket may hold more.
    Data(usize),
    /// Read this many bytes, fewer than asked for: the socket's receive queue was empty
    /// afterwards. With edge-triggered readiness, bytes arriving later raise a new event, so a
    /// caller may stop here instead of spending a `read` on `WouldBlock` (but not when the
    /// event also said the peer closed: that end-of-file raises no new event).
    Drained(usize),
    /// Nothing more to read right now.
    WouldBlock,
    /// The peer closed its sending side.
    Eof,
}

/// One framed connection.
pub struct Conn {
    pub stream: TcpStream,
    rbuf: BytesMut,
    wq: VecDeque<Bytes>,
    wq_bytes: usize,
    max_frame: usize,
    /// Some for a TLS connection (boxed: most connections of a plain node have none).
    tls: Option<Box<TlsSession>>,
}

impl Conn {
    /// Wraps a connected (or connecting) stream.
    pub fn new(stream: TcpStream, max_frame: usize) -> Conn {
        // Latency matters more than packet count for Raft and for request/response clients.
        let _ = stream.set_nodelay(true);
        Conn {
            stream,
            rbuf: BytesMut::new(),
            wq: VecDeque::new(),
            wq_bytes: 0,
            max_frame,
            tls: None,
        }
    }

    /// Runs this connection over `tls` from now on (call before anything is read or
    /// written). Plaintext queued before the handshake completes waits in the write queue.
    pub fn set_tls(&mut self, tls: TlsSession) {
        self.tls = Some(Box::new(tls));
    }

    /// True for a TLS connection.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// True for a TLS connection whose handshake has not completed.
    pub fn tls_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// One `read` call into the read buffer. `Interrupted` is retried.
    ///
    /// Reads straight into the buffer's spare capacity with `read(2)` on the raw descriptor: no
    /// zero-filling first (that memset of 64 KiB per call was a quarter of a busy leader's CPU
    /// time) and no `&mut [u8]` over uninitialised memory.
    pub fn read_some(&mut self) -> io::Result<ReadStatus> {
        use std::os::unix::io::AsRawFd;
        if let Some(tls) = &mut self.tls {
            let was_handshaking = tls.is_handshaking();
            let status = tls.read_some(&mut self.stream, &mut self.rbuf)?;
            if was_handshaking && !tls.is_handshaking() && !self.wq.is_empty() {
                // What was queued during the handshake (a peer's HELLO) can go now; if the
                // socket is full, the WRITABLE event's flush sends the rest.
                self.flush()?;
            }
            return Ok(status);
        }
        // A connection capped at small frames (a peer in its handshake) reads no more than
        // one such frame at a time: a thousand half-open handshakes cost ~130 bytes each, not
        // 64 KiB each.
        self.rbuf
            .reserve(READ_CHUNK.min(self.max_frame + super::framing::HEADER_LEN));
        let fd = self.stream.as_raw_fd();
        loop {
            let spare = self.rbuf.spare_capacity_mut();
            let asked = spare.len();
            // SAFETY: the kernel writes at most `asked` bytes into memory we own (the
            // buffer's reserved, unused capacity); nothing reads it before `set_len` below.
            let n = unsafe { libc::read(fd, spare.as_mut_ptr().cast(), asked) };
            if n > 0 {
                let n = n as usize;
                // SAFETY: `read` initialised exactly `n` bytes right after the current length.
                unsafe { self.rbuf.set_len(self.rbuf.len() + n) };
                return Ok(if n < asked {
                    ReadStatus::Drained(n)
                } else {
                    ReadStatus::Data(n)
                });
            }
            if n == 0 {
                return Ok(ReadStatus::Eof);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(ReadStatus::WouldBlock),
                _ => return Err(e),
            }
        }
    }

    /// The next complete frame payload in the read buffer, if any.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        split_frame(&mut self.rbuf, self.max_frame)
    }

    /// The bytes received and not yet consumed, for a connection that parses its own
    /// protocol (RESP) instead of length-prefixed frames.
    pub fn input_mut(&mut self) -> &mut BytesMut {
        &mut self.rbuf
    }

    /// Changes the largest frame accepted from here on (a peer connection past its handshake).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// Drops everything received and not yet consumed (a connection being closed).
    pub fn discard_input(&mut self) {
        self.rbuf.clear();
    }

    /// Bytes received but not yet split into frames (a partial frame).
    pub fn buffered_in(&self) -> usize {
        self.rbuf.len()
    }

    /// Queues one encoded frame for sending (call [`flush`](Self::flush) to write it).
    pub fn queue(&mut self, frame: Bytes) {
        if !frame.is_empty() {
            self.wq_bytes += frame.len();
            self.wq.push_back(frame);
        }
    }

    /// Bytes queued but not yet written to the socket.
    pub fn pending_out(&self) -> usize {
        self.wq_bytes + self.tls.as_ref().map_or(0, |t| t.unsent())
    }

    /// Ends our sending side: a TLS close_notify first (best effort), then a TCP FIN.
    pub fn shutdown_write(&mut self) {
        if let Some(tls) = &mut self.tls {
            tls.close_notify(&mut self.stream);
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }

    /// Writes queued bytes until the queue is empty (`Ok(true)`) or the socket would block
    /// (`Ok(false)`; wait for a WRITABLE event). On a TLS connection still in its handshake,
    /// handshake records are written and the queue waits (`Ok(false)`): the read that
    /// completes the handshake flushes it.
    pub fn flush(&mut self) -> io::Result<bool> {
        if self.tls.is_some() {
            return self.flush_tls();
        }
        while !self.wq.is_empty() {
            let n = {
                let bufs: Vec<IoSlice<'_>> =
                    self.wq.iter().take(64).map(|b| IoSlice::new(b)).collect();
                match self.stream.write_vectored(&bufs) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) => return Err(e),
                }
            };
            self.consume(n);
        }
        Ok(true)
    }

    /// [`flush`](Self::flush) through TLS: pending records out first, then the next batch of
    /// plaintext encrypted (at most rustls' buffer limit at a time, so the queue, not rustls,
    /// holds what a slow reader has not taken).
    fn flush_tls(&mut self) -> io::Result<bool> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(true);
        };
        loop {
            if !tls.write_out(&mut self.stream)? {
                return Ok(false);
            }
            if self.wq.is_empty() {
                return Ok(true);
            }
            if tls.is_handshaking() {
                return Ok(false);
            }
            let mut moved = 0;
            while let Some(front) = self.wq.front_mut() {
                let n = tls.encrypt(&front[..])?;
                if n == 0 {
                    break;
                }
                moved += n;
                self.wq_bytes -= n;
                if n == front.len() {
                    self.wq.pop_front();
                } else {
                    front.advance(n);
                    break;
                }
            }
            if moved == 0 {
                return Err(io::Error::other("TLS session took no data"));
            }
        }
    }

    /// Drops `n` written bytes from the front of the queue.
    fn consume(&mut self, mut n: usize) {
        self.wq_bytes -= n;
        while n > 0 {
            let Some(front) = self.wq.front_mut() else {
                return;
            };
            if front.len() <= n {
                n -= front.len();
                self.wq.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::framing::{encode_frame, frame_bytes};
    use crate::pb::kvpb;
    use mio::{Events, Interest, Poll, Token};
    use std::io::Read;
    use std::time::{Duration, Instant};

    /// A connected pair: (mio side wrapped in a Conn, std blocking side).
    fn pair(max_frame: usize) -> (Poll, Conn, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let other = std::net::TcpStream::connect(addr).unwrap();
        let (ours, _) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        let poll = Poll::new().unwrap();
        let mut conn = Conn::new(TcpStream::from_std(ours), max_frame);
        poll.registry()
            .register(
                &mut conn.stream,
                Token(0),
                Interest::READABLE | Interest::WRITABLE,
            )
            .unwrap();
        (poll, conn, other)
    }

    fn req(id: u64) -> kvpb::Request {
        kvpb::Request {
            id,
            op: Some(kvpb::request::Op::Get(kvpb::Get {
                key: Bytes::from_static(b"key"),
            })),
            ..Default::default()
        }
    }

    /// Reads until `n` frames arrived or the deadline passed.
    fn read_frames(poll: &mut Poll, conn: &mut Conn, n: usize) -> Vec<Bytes> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut events = Events::with_capacity(8);
        let mut got = Vec::new();
        while got.len() < n {
            assert!(Instant::now() < deadline, "timed out reading frames");
            poll.poll(&mut events, Some(Duration::from_millis(50)))
                .unwrap();
            while let ReadStatus::Data(_) | ReadStatus::Drained(_) = conn.read_some().unwrap() {}
            while let Some(f) = conn.next_frame().unwrap() {
                got.push(f);
            }
        }
        got
    }

    #[test]
    fn frames_split_across_writes_are_reassembled() {
        let (mut poll, mut conn, mut other) = pair(1024);
        let mut wire = BytesMut::new();
        for id in 0..3 {
            encode_frame(&req(id), &mut wire);
        }
        let (a, b) = wire.split_at(7);
        other.write_all(a).unwrap();
        other.flush().unwrap();
        other.write_all(b).unwrap();
        let frames = read_frames(&mut poll, &mut conn, 3);
        let ids: Vec<u64> = frames
            .into_iter()
            .map(|f| crate::net::framing::decode::<kvpb::Request>(f).unwrap().id)
            .collect();
        assert_eq!(ids, vec![0, 1, 2]);
        assert_eq!(conn.buffered_in(), 0);
    }

    /// Waits for a readable event on the pair's connection; returns its read-closed flag.
    fn wait_readable(poll: &mut Poll) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut events = Events::with_capacity(8);
        loop {
            assert!(Instant::now() < deadline, "no readable event");
            poll.poll(&mut events, Some(Duration::from_millis(50)))
                .unwrap();
            if let Some(ev) = events
                .iter()
                .find(|e| e.is_readable() || e.is_read_closed())
            {
                return ev.is_read_closed();
            }
        }
    }

    /// The contract the server's read loop relies on when it stops at a short read: the read
    /// reports `Drained`, and bytes sent afterwards raise a new edge-triggered event (no
    /// `WouldBlock` read in between); a close that came with the data is flagged on the event.
    #[test]
    fn short_read_is_drained_and_later_bytes_raise_a_new_event() {
        let (mut poll, mut conn, mut other) = pair(1024);
        other.write_all(b"0123456789").unwrap();
        assert!(!wait_readable(&mut poll));
        assert_eq!(conn.read_some().unwrap(), ReadStatus::Drained(10));
        other.write_all(b"abcde").unwrap();
        assert!(!wait_readable(&mut poll));
        assert_eq!(conn.read_some().unwrap(), ReadStatus::Drained(5));
        other.write_all(b"xyz").unwrap();
        drop(other);
        // Data and close may arrive as one event or two; the close is flagged either way.
        let mut closed = wait_readable(&mut poll);
        assert_eq!(conn.read_some().unwrap(), ReadStatus::Drained(3));
        if !closed {
            closed = wait_readable(&mut poll);
        }
        assert!(closed);
        assert_eq!(conn.read_some().unwrap(), ReadStatus::Eof);
        assert_eq!(conn.buffered_in(), 18);
    }

    #[test]
    fn oversized_header_is_an_error_and_eof_is_seen() {
        let (mut poll, mut conn, mut other) = pair(16);
        other.write_all(&1000u32.to_be_bytes()).unwrap();
        drop(other);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut events = Events::with_capacity(8);
        let mut eof = false;
        while !eof {
            assert!(Instant::now() < deadline);
            poll.poll(&mut events, Some(Duration::from_millis(50)))
                .unwrap();
            loop {
                match conn.read_some().unwrap() {
                    ReadStatus::Data(_) | ReadStatus::Drained(_) => continue,
                    ReadStatus::Eof => eof = true,
                    ReadStatus::WouldBlock => {}
                }
                break;
            }
        }
        assert!(matches!(
            conn.next_frame(),
            Err(FrameError::TooLarge {
                len: 1000,
                max: 16,
                id: 0
            })
        ));
    }

    #[test]
    fn write_queue_backs_up_then_drains() {
        let (mut poll, mut conn, mut other) = pair(1 << 20);
        // Queue far more than the socket buffers hold while nobody reads.
        let frame = frame_bytes(&kvpb::Request {
            id: 1,
            op: Some(kvpb::request::Op::Put(kvpb::Put {
                key: Bytes::from_static(b"k"),
                value: Bytes::from(vec![7u8; 64 * 1024]),
                ..Default::default()
            })),
            ..Default::default()
        });
        let total = frame.len() * 256;
        for _ in 0..256 {
            conn.queue(frame.clone());
        }
        assert_eq!(conn.pending_out(), total);
        assert!(
            !conn.flush().unwrap(),
            "16 MiB cannot fit in socket buffers"
        );
        assert!(conn.pending_out() > 0 && conn.pending_out() < total);
        // Drain on the other side in a thread while we keep flushing on WRITABLE events.
        let reader = std::thread::spawn(move || {
            let mut n = 0usize;
            let mut buf = vec![0u8; 1 << 16];
            while n < total {
                n += other.read(&mut buf).unwrap();
            }
            n
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut events = Events::with_capacity(8);
        while !conn.flush().unwrap() {
            assert!(Instant::now() < deadline, "never drained");
            poll.poll(&mut events, Some(Duration::from_millis(50)))
                .unwrap();
        }
        assert_eq!(conn.pending_out(), 0);
        assert_eq!(reader.join().unwrap(), total);
    }
}
