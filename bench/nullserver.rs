//! A trivial in-process server speaking the raftkv client protocol, answering every request at
//! once from no state. It measures the load generator itself: whatever rate the bench reaches
//! against it is the ceiling of the tool on this machine (`raftkv-bench put --system null`).

use bytes::{Bytes, BytesMut};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use raftkv::net::framing::{self, encode_frame, split_frame};
use raftkv::pb::kvpb;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

/// A running null server; stopped and joined on drop.
pub struct NullServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl NullServer {
    /// Starts on 127.0.0.1 with a free port.
    pub fn start() -> io::Result<NullServer> {
        Self::start_with(None)
    }

    /// A server that plays a follower: every request is answered NOT_LEADER naming `leader`.
    #[cfg(test)]
    pub fn start_follower_of(leader: SocketAddr) -> io::Result<NullServer> {
        Self::start_with(Some(leader))
    }

    fn start_with(redirect: Option<SocketAddr>) -> io::Result<NullServer> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind("127.0.0.1:0".parse().expect("literal address"))?;
        let addr = listener.local_addr()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("null-server".into())
            .spawn(move || serve(poll, listener, stop2, addr, redirect))?;
        Ok(NullServer {
            addr,
            stop,
            waker,
            thread: Some(thread),
        })
    }
}

impl Drop for NullServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Client {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

fn answer(req: kvpb::Request, addr: SocketAddr, version: &mut u64) -> kvpb::Response {
    use kvpb::request::Op as P;
    use kvpb::response::Result as R;
    *version += 1;
    let result = match req.op {
        Some(P::Put(_)) => R::Put(kvpb::PutResponse {
            version: *version,
            ..Default::default()
        }),
        Some(P::Get(_)) => R::Get(kvpb::GetResponse {
            found: true,
            value: Bytes::from_static(b"v"),
            version: 1,
        }),
        Some(P::Delete(_)) => R::Delete(kvpb::DeleteResponse {
            deleted: true,
            count: 0,
        }),
        Some(P::Cas(_)) => R::Cas(kvpb::CasResponse {
            succeeded: true,
            version: *version,
        }),
        Some(P::Scan(_)) => R::Scan(kvpb::ScanResponse::default()),
        Some(P::Status(_)) | Some(P::Alarm(_)) => R::Status(kvpb::StatusResponse {
            node_id: 1,
            role: "leader".into(),
            leader_id: 1,
            leader_addr: addr.to_string(),
            ..Default::default()
        }),
        // The bench drives only the ops above.
        Some(_) | None => R::Error(kvpb::Error {
            code: kvpb::ErrorCode::BadRequest as i32,
            message: "no op".into(),
            ..Default::default()
        }),
    };
    kvpb::Response {
        id: req.id,
        result: Some(result),
    }
}

fn serve(
    mut poll: Poll,
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    redirect: Option<SocketAddr>,
) {
    let mut events = Events::with_capacity(256);
    let mut clients: Vec<Option<Client>> = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    let mut version = 0u64;
    while !stop.load(Ordering::SeqCst) {
        if poll.poll(&mut events, None).is_err() {
            continue;
        }
        for ev in events.iter() {
            match ev.token() {
                WAKER => {}
                LISTENER => {
                    while let Ok((mut stream, _)) = listener.accept() {
                        let _ = stream.set_nodelay(true);
                        let tok = Token(clients.len());
                        if poll
                            .registry()
                            .register(&mut stream, tok, Interest::READABLE | Interest::WRITABLE)
                            .is_ok()
                        {
                            clients.push(Some(Client {
                                stream,
                                rbuf: BytesMut::new(),
                                wbuf: BytesMut::new(),
                            }));
                        }
                    }
                }
                Token(i) => {
                    let Some(slot) = clients.get_mut(i) else {
                        continue;
                    };
                    let Some(c) = slot.as_mut() else { continue };
                    if service(c, &mut chunk, addr, redirect, &mut version).is_err() {
                        let _ = poll.registry().deregister(&mut c.stream);
                        *slot = None;
                    }
                }
            }
        }
    }
}

/// Reads everything available, answers every complete request, writes what the socket takes.
fn service(
    c: &mut Client,
    chunk: &mut [u8],
    addr: SocketAddr,
    redirect: Option<SocketAddr>,
    version: &mut u64,
) -> io::Result<()> {
    loop {
        match c.stream.read(chunk) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => c.rbuf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    while let Some(p) = split_frame(&mut c.rbuf, framing::DEFAULT_MAX_FRAME)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
    {
        let req: kvpb::Request =
            framing::decode(p).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let resp = match redirect {
            Some(leader) => kvpb::Response {
                id: req.id,
                result: Some(kvpb::response::Result::Error(kvpb::Error {
                    code: kvpb::ErrorCode::NotLeader as i32,
                    leader_addr: leader.to_string(),
                    ..Default::default()
                })),
            },
            None => answer(req, addr, version),
        };
        encode_frame(&resp, &mut c.wbuf);
    }
    while !c.wbuf.is_empty() {
        match c.stream.write(&c.wbuf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                let _ = c.wbuf.split_to(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
