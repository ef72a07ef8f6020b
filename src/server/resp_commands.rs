//! The RESP commands: what each becomes (a native request, or a reply made here), and how the
//! native answer is turned into the reply Redis would give.
//!
//! Read-modify-write commands become one replicated command each (`kvpb::Incr`, `Append`,
//! `MultiPut`, `DeleteKeys`, a conditional `Put`), executed by the state machine: atomic, and
//! decided the same way on every replica. Reads are LINEARIZABLE (ReadIndex on the leader)
//! unless the connection sent READONLY (then STALE: this node's state, on any node).

use super::resp_conn::{value_reply, Class, RespState};
use super::{Endpoint, Server};
use crate::kv::store::{parse_i64, MAX_SCAN_LIMIT, NOT_AN_INTEGER};
use crate::kv::ApplyResult;
use crate::pb::kvpb::{self, request::Op, PutCondition};
use crate::resp::Reply;
use bytes::Bytes;
use mio::Token;

/// SCAN's page size when COUNT is not given (Redis' default).
const SCAN_DEFAULT_COUNT: u32 = 10;

/// Redis' replies for client authentication (`--client-token-file`, `client_auth.rs`): to a
/// command before AUTH, to a wrong password (or a user other than `default`), and to a HELLO
/// without AUTH before AUTH.
pub(super) const NOAUTH: &str = "NOAUTH Authentication required.";
pub(super) const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
const HELLO_NOAUTH: &str = "NOAUTH HELLO must be called with the client already authenticated, \
     otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the \
     client and select the RESP protocol version at the same time";

/// The commands an unauthenticated connection may send (Redis' no-auth commands, and PING
/// so that health checks need no secret; it reveals nothing).
fn allowed_before_auth(name: &[u8]) -> bool {
    [&b"AUTH"[..], b"HELLO", b"QUIT", b"PING"]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
}

/// How a native answer becomes the command's reply.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Expect {
    /// GET: the value or nil.
    Get,
    /// SET: +OK, nil if its NX/XX condition failed; with GET, the old value or nil.
    Set {
        get: bool,
    },
    /// SETNX: 1 if written, else 0.
    SetNx,
    /// GETSET: the old value or nil.
    GetSet,
    /// MSET: +OK.
    Ok,
    /// DEL: how many keys existed.
    DelCount,
    /// EXISTS: how many of the keys exist.
    ExistsCount,
    MGet,
    /// INCR and friends: the new value.
    Incr,
    /// APPEND: the new length.
    Append,
    Strlen,
    /// RAFTKV.GETV: [value, version] or nil.
    GetV,
    /// RAFTKV.CAS: [1 or 0, version].
    Cas,
    /// SCAN: [cursor, keys].
    Scan,
    /// KEYS: every key, or an error if they do not fit one scan page.
    Keys,
}

/// What a command does.
pub(super) enum Action {
    Reply(Reply),
    Request(Expect, Op),
    /// Commands answered from the server's own state.
    DbSize,
    Info(Vec<String>),
    ClientInfo,
    /// HELLO [2|3 [AUTH user password] [SETNAME name]]: the protocol to switch to (RESP3 or
    /// not), if one was named.
    Hello {
        proto: Option<bool>,
        auth: Option<(Bytes, Bytes)>,
        setname: Option<Bytes>,
    },
    /// AUTH [user] password.
    Auth {
        user: Option<Bytes>,
        password: Bytes,
    },
    /// +OK, then the connection closes.
    Quit,
}

fn wrong_args(name: &str) -> Action {
    Action::Reply(Reply::err(format!(
        "wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    )))
}

fn syntax_error() -> Action {
    Action::Reply(Reply::err("syntax error"))
}

fn int_arg(b: &[u8]) -> Result<i64, Action> {
    parse_i64(b).ok_or_else(|| Action::Reply(Reply::err(NOT_AN_INTEGER)))
}

/// Splits `MATCH prefix*` into the prefix. Only a literal prefix followed by one `*` (or `*`
/// alone) is supported: the native scan serves key ranges, not globs.
fn match_prefix(pattern: &[u8]) -> Result<Bytes, Action> {
    let literal = pattern.strip_suffix(b"*").unwrap_or(pattern);
    let glob = |b: &u8| matches!(b, b'*' | b'?' | b'[' | b']' | b'\\');
    if literal.iter().any(glob) || !pattern.ends_with(b"*") {
        return Err(Action::Reply(Reply::err(
            "only 'prefix*' patterns are supported by raftkv",
        )));
    }
    Ok(Bytes::copy_from_slice(literal))
}

fn get(key: &Bytes) -> Op {
    Op::Get(kvpb::Get { key: key.clone() })
}

/// SET key value [NX|XX] [GET] [KEEPTTL]; expiry options are refused (no TTLs).
fn set(args: &[Bytes]) -> Action {
    let (mut condition, mut return_old) = (PutCondition::Always, false);
    for opt in &args[3..] {
        match opt.to_ascii_uppercase().as_slice() {
            b"NX" if condition == PutCondition::Always => condition = PutCondition::IfAbsent,
            b"XX" if condition == PutCondition::Always => condition = PutCondition::IfPresent,
            b"GET" => return_old = true,
            // No key has a TTL, so keeping it is what happens anyway.
            b"KEEPTTL" => {}
            b"EX" | b"PX" | b"EXAT" | b"PXAT" => {
                return Action::Reply(Reply::err(
                    "SET EX/PX/EXAT/PXAT: raftkv has no key expiry (TTL)",
                ))
            }
            _ => return syntax_error(),
        }
    }
    let put = kvpb::Put {
        key: args[1].clone(),
        value: args[2].clone(),
        condition: condition as i32,
        return_old,
    };
    Action::Request(Expect::Set { get: return_old }, Op::Put(put))
}

fn flush() -> Action {
    Action::Request(Expect::Ok, Op::DeleteAll(kvpb::DeleteAll {}))
}

fn incr_by(key: &Bytes, delta: i64) -> Action {
    Action::Request(
        Expect::Incr,
        Op::Incr(kvpb::Incr {
            key: key.clone(),
            delta,
        }),
    )
}

/// SCAN cursor [MATCH prefix*] [COUNT n] [TYPE string].
fn scan(args: &[Bytes], state: &RespState) -> Action {
    let Some(start) = std::str::from_utf8(&args[1])
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
        .and_then(|c| state.cursor(c))
    else {
        return Action::Reply(Reply::err("invalid cursor"));
    };
    let mut req = kvpb::Scan {
        start,
        limit: SCAN_DEFAULT_COUNT,
        keys_only: true,
        ..Default::default()
    };
    let mut opts = args[2..].chunks(2);
    for pair in opts.by_ref() {
        let [name, value] = pair else {
            return syntax_error();
        };
        match name.to_ascii_uppercase().as_slice() {
            b"MATCH" => match match_prefix(value) {
                Ok(p) => req.prefix = p,
                Err(a) => return a,
            },
            b"COUNT" => match int_arg(value) {
                Ok(n) if n >= 1 => req.limit = n.min(MAX_SCAN_LIMIT as i64) as u32,
                Ok(_) => return syntax_error(),
                Err(a) => return a,
            },
            // Every value is a string.
            b"TYPE" if value.eq_ignore_ascii_case(b"string") => {}
            b"TYPE" => {
                return Action::Reply(Reply::Array(vec![Reply::text("0"), Reply::Array(vec![])]))
            }
            _ => return syntax_error(),
        }
    }
    Action::Request(Expect::Scan, Op::Scan(req))
}

/// Longer than any command name served.
const NAME_MAX: usize = 16;

/// What `args` (a command name and its arguments, never empty) does.
pub(super) fn plan(args: &[Bytes], state: &mut RespState) -> Action {
    // Upper-cased on the stack: no command name is longer than NAME_MAX, and a longer one is
    // unknown ("" matches no command).
    let mut upper = [0u8; NAME_MAX];
    let name = match upper.get_mut(..args[0].len()) {
        Some(u) => {
            u.copy_from_slice(&args[0]);
            u.make_ascii_uppercase();
            std::str::from_utf8(u).unwrap_or("")
        }
        None => "",
    };
    let n = args.len();
    let keys = || args[1..].to_vec();
    match (name, n) {
        ("PING", 1) => Action::Reply(Reply::Simple("PONG")),
        ("PING", 2) | ("ECHO", 2) => Action::Reply(Reply::Bulk(args[1].clone())),
        ("QUIT", _) => Action::Quit,
        ("SELECT", 2) if &args[1][..] == b"0" => Action::Reply(Reply::Simple("OK")),
        ("SELECT", 2) => Action::Reply(Reply::err("DB index is out of range")),
        ("HELLO", _) => hello(args),
        ("AUTH", 2) => Action::Auth {
            user: None,
            password: args[1].clone(),
        },
        ("AUTH", 3) => Action::Auth {
            user: Some(args[1].clone()),
            password: args[2].clone(),
        },
        ("READONLY", 1) => {
            state.stale_reads = true;
            Action::Reply(Reply::Simple("OK"))
        }
        ("READWRITE", 1) => {
            state.stale_reads = false;
            Action::Reply(Reply::Simple("OK"))
        }
        ("CLIENT", _) if n >= 2 => client(args, state),
        ("COMMAND", 1) => Action::Reply(Reply::Array(vec![])),
        ("COMMAND", _) if args[1].eq_ignore_ascii_case(b"COUNT") => Action::Reply(Reply::Int(0)),
        ("COMMAND", _) => Action::Reply(Reply::Array(vec![])),
        ("CONFIG", _) if n >= 3 && args[1].eq_ignore_ascii_case(b"GET") => config_get(&args[2]),
        ("DBSIZE", 1) => Action::DbSize,
        ("INFO", _) => Action::Info(
            args[1..]
                .iter()
                .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
                .collect(),
        ),
        ("GET", 2) => Action::Request(Expect::Get, get(&args[1])),
        ("STRLEN", 2) => Action::Request(Expect::Strlen, get(&args[1])),
        ("RAFTKV.GETV", 2) => Action::Request(Expect::GetV, get(&args[1])),
        ("SET", _) if n >= 3 => set(args),
        ("SETNX", 3) => Action::Request(
            Expect::SetNx,
            Op::Put(kvpb::Put {
                key: args[1].clone(),
                value: args[2].clone(),
                condition: PutCondition::IfAbsent as i32,
                return_old: false,
            }),
        ),
        ("GETSET", 3) => Action::Request(
            Expect::GetSet,
            Op::Put(kvpb::Put {
                key: args[1].clone(),
                value: args[2].clone(),
                condition: PutCondition::Always as i32,
                return_old: true,
            }),
        ),
        ("MSET", _) if n >= 3 && n % 2 == 1 => {
            let kvs = args[1..]
                .chunks(2)
                .map(|p| kvpb::KeyValue {
                    key: p[0].clone(),
                    value: p[1].clone(),
                    version: 0,
                })
                .collect();
            Action::Request(Expect::Ok, Op::MultiPut(kvpb::MultiPut { kvs }))
        }
        ("DEL", _) if n >= 2 => Action::Request(
            Expect::DelCount,
            Op::DeleteKeys(kvpb::DeleteKeys { keys: keys() }),
        ),
        ("EXISTS", _) if n >= 2 => Action::Request(
            Expect::ExistsCount,
            Op::MultiGet(kvpb::MultiGet { keys: keys() }),
        ),
        ("MGET", _) if n >= 2 => {
            Action::Request(Expect::MGet, Op::MultiGet(kvpb::MultiGet { keys: keys() }))
        }
        ("INCR", 2) => incr_by(&args[1], 1),
        ("DECR", 2) => incr_by(&args[1], -1),
        ("INCRBY", 3) => match int_arg(&args[2]) {
            Ok(d) => incr_by(&args[1], d),
            Err(a) => a,
        },
        ("DECRBY", 3) => match int_arg(&args[2]).map(i64::checked_neg) {
            Ok(Some(d)) => incr_by(&args[1], d),
            Ok(None) => Action::Reply(Reply::err("decrement would overflow")),
            Err(a) => a,
        },
        ("APPEND", 3) => Action::Request(
            Expect::Append,
            Op::Append(kvpb::Append {
                key: args[1].clone(),
                value: args[2].clone(),
            }),
        ),
        ("RAFTKV.CAS", 4) => match parse_i64(&args[2]).and_then(|v| u64::try_from(v).ok()) {
            Some(expected_version) => Action::Request(
                Expect::Cas,
                Op::Cas(kvpb::Cas {
                    key: args[1].clone(),
                    expected_version,
                    value: args[3].clone(),
                    delete: false,
                }),
            ),
            None => Action::Reply(Reply::err("expected version must be an integer >= 0")),
        },
        ("SCAN", _) if n >= 2 => scan(args, state),
        // One replicated command: every replica empties its key space at the same index.
        ("FLUSHDB" | "FLUSHALL", 1) => flush(),
        ("FLUSHDB" | "FLUSHALL", 2)
            if args[1].eq_ignore_ascii_case(b"SYNC") || args[1].eq_ignore_ascii_case(b"ASYNC") =>
        {
            flush()
        }
        ("KEYS", 2) => match match_prefix(&args[1]) {
            Ok(prefix) => Action::Request(
                Expect::Keys,
                Op::Scan(kvpb::Scan {
                    prefix,
                    limit: MAX_SCAN_LIMIT as u32,
                    keys_only: true,
                    ..Default::default()
                }),
            ),
            Err(a) => a,
        },
        (
            "AUTH" | "PING" | "ECHO" | "SELECT" | "READONLY" | "READWRITE" | "CLIENT" | "CONFIG"
            | "DBSIZE" | "GET" | "STRLEN" | "RAFTKV.GETV" | "SET" | "SETNX" | "GETSET" | "MSET"
            | "DEL" | "EXISTS" | "MGET" | "INCR" | "DECR" | "INCRBY" | "DECRBY" | "APPEND"
            | "RAFTKV.CAS" | "SCAN" | "KEYS" | "FLUSHDB" | "FLUSHALL",
            _,
        ) => wrong_args(name),
        _ => Action::Reply(unknown(args)),
    }
}

/// Redis' wording for a command it does not know.
fn unknown(args: &[Bytes]) -> Reply {
    let quoted: Vec<String> = args[1..]
        .iter()
        .take(8)
        .map(|a| format!("'{}'", String::from_utf8_lossy(&a[..a.len().min(64)])))
        .collect();
    Reply::err(format!(
        "unknown command '{}', with args beginning with: {}",
        String::from_utf8_lossy(&args[0][..args[0].len().min(64)]),
        quoted.join(" ")
    ))
}

/// HELLO [2 [AUTH user password] [SETNAME name]] (Redis' option syntax and errors).
fn hello(args: &[Bytes]) -> Action {
    let proto = match args.get(1).map(|a| &a[..]) {
        None => None,
        Some(b"2") => Some(false),
        Some(b"3") => Some(true),
        Some(_) => {
            return Action::Reply(Reply::Error(
                "NOPROTO unsupported protocol version (raftkv speaks RESP2 and RESP3)".into(),
            ))
        }
    };
    let (mut auth, mut setname) = (None, None);
    let mut i = 2;
    while i < args.len() {
        let more = args.len() - 1 - i;
        match args[i].to_ascii_uppercase().as_slice() {
            b"AUTH" if more >= 2 => {
                auth = Some((args[i + 1].clone(), args[i + 2].clone()));
                i += 3;
            }
            b"SETNAME" if more >= 1 => {
                if let Err(a) = client_name(&args[i + 1]) {
                    return a;
                }
                setname = Some(args[i + 1].clone());
                i += 2;
            }
            _ => {
                return Action::Reply(Reply::err(format!(
                    "Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(&args[i][..args[i].len().min(64)])
                )))
            }
        }
    }
    Action::Hello {
        proto,
        auth,
        setname,
    }
}

/// A client name as CLIENT SETNAME and HELLO SETNAME take it.
fn client_name(name: &[u8]) -> Result<(), Action> {
    if name.iter().any(|b| *b <= b' ' || *b > b'~') {
        return Err(Action::Reply(Reply::err(
            "Client names cannot contain spaces, newlines or special characters.",
        )));
    }
    Ok(())
}

/// CLIENT SETNAME | GETNAME | ID | INFO | SETINFO (accepted, ignored).
fn client(args: &[Bytes], state: &mut RespState) -> Action {
    match (args[1].to_ascii_uppercase().as_slice(), args.len()) {
        (b"SETNAME", 3) => {
            if let Err(a) = client_name(&args[2]) {
                return a;
            }
            state.name = args[2].clone();
            Action::Reply(Reply::Simple("OK"))
        }
        (b"GETNAME", 2) if state.name.is_empty() => Action::Reply(Reply::Nil),
        (b"GETNAME", 2) => Action::Reply(Reply::Bulk(state.name.clone())),
        (b"ID", 2) | (b"INFO", 2) => Action::ClientInfo,
        (b"SETINFO", 4) => Action::Reply(Reply::Simple("OK")),
        _ => Action::Reply(Reply::err(format!(
            "unknown or unsupported CLIENT subcommand or wrong number of arguments for '{}'",
            String::from_utf8_lossy(&args[1])
        ))),
    }
}

/// CONFIG GET: what benchmarks and clients ask for at start; everything else is empty.
fn config_get(param: &[u8]) -> Action {
    let value = match param.to_ascii_lowercase().as_slice() {
        // No RDB snapshots; every write is in the fsynced Raft log before it is acknowledged.
        b"save" => "",
        b"appendonly" => "yes",
        b"appendfsync" => "always",
        b"databases" => "1",
        _ => return Action::Reply(Reply::Map(vec![])),
    };
    // A map, as Redis 7 answers (a flat array in RESP2).
    Action::Reply(Reply::Map(vec![(
        Reply::Bulk(Bytes::copy_from_slice(param)),
        Reply::text(value),
    )]))
}

impl Expect {
    /// The reply for a successful answer (errors are turned into replies by the caller).
    /// `cursor` numbers a SCAN continuation key.
    pub(super) fn reply(self, result: ApplyResult, cursor: &mut dyn FnMut(Bytes) -> u64) -> Reply {
        use ApplyResult as R;
        match (self, result) {
            (Expect::Get, R::Get(g)) => value_reply(&g),
            (Expect::Strlen, R::Get(g)) => Reply::Int(g.value.len() as i64),
            (Expect::GetV, R::Get(g)) if g.found => {
                Reply::Array(vec![Reply::Bulk(g.value), Reply::Int(g.version as i64)])
            }
            (Expect::GetV, R::Get(_)) => Reply::Nil,
            (Expect::Set { get: true }, R::Put(p)) | (Expect::GetSet, R::Put(p)) => {
                p.old.as_ref().map_or(Reply::Nil, value_reply)
            }
            (Expect::Set { get: false }, R::Put(p)) if p.not_written => Reply::Nil,
            (Expect::Set { .. } | Expect::Ok, R::Put(_)) | (Expect::Ok, R::Delete(_)) => {
                Reply::Simple("OK")
            }
            (Expect::SetNx, R::Put(p)) => Reply::Int(i64::from(!p.not_written)),
            (Expect::DelCount, R::Delete(d)) => Reply::Int(d.count as i64),
            (Expect::ExistsCount, R::MultiGet(m)) => {
                Reply::Int(m.values.iter().filter(|g| g.found).count() as i64)
            }
            (Expect::MGet, R::MultiGet(m)) => {
                Reply::Array(m.values.iter().map(value_reply).collect())
            }
            (Expect::Incr, R::Incr(i)) => Reply::Int(i.value),
            (Expect::Append, R::Append(a)) => Reply::Int(a.length as i64),
            (Expect::Cas, R::Cas(c)) => Reply::Array(vec![
                Reply::Int(i64::from(c.succeeded)),
                Reply::Int(c.version as i64),
            ]),
            (Expect::Scan, R::Scan(s)) => {
                let next = if s.next_key.is_empty() {
                    0
                } else {
                    cursor(s.next_key)
                };
                let keys = s.kvs.into_iter().map(|kv| Reply::Bulk(kv.key)).collect();
                Reply::Array(vec![Reply::text(next.to_string()), Reply::Array(keys)])
            }
            (Expect::Keys, R::Scan(s)) if s.next_key.is_empty() => {
                Reply::Array(s.kvs.into_iter().map(|kv| Reply::Bulk(kv.key)).collect())
            }
            (Expect::Keys, R::Scan(s)) => Reply::err(format!(
                "KEYS matched more than one scan page ({} keys); use SCAN",
                s.kvs.len()
            )),
            (e, r) => Reply::err(format!("internal: unexpected answer {r:?} for {e:?}")),
        }
    }
}

impl Server {
    /// Runs one RESP command from connection `token`, or defers it (at the front: it is the
    /// oldest) while requests of the other class are in flight.
    pub(super) fn run_resp_command(&mut self, token: Token, args: Vec<Bytes>) {
        let Some(Endpoint::Client(c)) = self.endpoints.get_mut(&token) else {
            return;
        };
        let authenticated = c.authenticated(self.cfg.client_token.is_some());
        let Some(state) = c.resp.as_mut() else {
            return;
        };
        // Before AUTH only the no-auth commands are even planned (READONLY, CLIENT SETNAME
        // change the connection's state).
        if !authenticated && !allowed_before_auth(&args[0]) {
            self.refuse_unauthenticated(token, "RESP");
            return self.resp_reply(token, Reply::Error(NOAUTH.into()));
        }
        // Planning a request has no side effects, so a deferred command is planned again.
        let action = plan(&args, state);
        let stale = state.stale_reads;
        let reply = match action {
            Action::Reply(r) => r,
            Action::Request(expect, op) => {
                let class = match op {
                    Op::Get(_) | Op::Scan(_) | Op::MultiGet(_) | Op::Status(_) => Class::Read,
                    _ => Class::Write,
                };
                if !state.may_start(class) {
                    state.deferred.push_front(args);
                    c.inflight = state.unreleased();
                    return;
                }
                // Every write in the connection's session (see `RespState::client_id`).
                let (client_id, seq, acked_seq) = match class {
                    Class::Write => state.next_write(),
                    Class::Read => (0, 0, 0),
                };
                let id = state.push_waiting(expect, class, seq);
                c.inflight = state.unreleased();
                let consistency = if stale {
                    kvpb::Consistency::Stale
                } else {
                    kvpb::Consistency::Linearizable
                };
                let req = kvpb::Request {
                    id,
                    consistency: consistency as i32,
                    op: Some(op),
                    client_id,
                    seq,
                    acked_seq,
                };
                self.on_request(token, req);
                return;
            }
            Action::DbSize => Reply::Int(self.replica.kv().len() as i64),
            Action::Info(sections) => Reply::text(self.resp_info(&sections)),
            Action::ClientInfo => Reply::Int(token.0 as i64),
            Action::Auth { user, password } => {
                if self.resp_auth(token, user.as_deref(), &password) {
                    Reply::Simple("OK")
                } else {
                    Reply::Error(WRONGPASS.into())
                }
            }
            Action::Hello {
                proto,
                auth,
                setname,
            } => {
                let refused = match auth {
                    Some((user, password)) if !self.resp_auth(token, Some(&user), &password) => {
                        Some(Reply::Error(WRONGPASS.into()))
                    }
                    Some(_) => None,
                    None if !authenticated => Some(Reply::Error(HELLO_NOAUTH.into())),
                    None => None,
                };
                match refused {
                    Some(r) => r,
                    None => {
                        let mut resp3 = false;
                        if let Some(Endpoint::Client(c)) = self.endpoints.get_mut(&token) {
                            if let Some(state) = c.resp.as_mut() {
                                if let Some(n) = setname {
                                    state.name = n;
                                }
                                // The reply to HELLO is already in the new protocol (as in
                                // Redis).
                                if let Some(p) = proto {
                                    state.resp3 = p;
                                }
                                resp3 = state.resp3;
                            }
                        }
                        self.resp_hello(token, resp3)
                    }
                }
            }
            Action::Quit => {
                self.resp_reply(token, Reply::Simple("OK"));
                self.resp_close_after_replies(token);
                return;
            }
        };
        self.resp_reply(token, reply);
    }

    /// AUTH (and HELLO's AUTH option): only the `default` user exists; its password is the
    /// client token. A node without a token accepts anything, so that clients can be given the
    /// token before the nodes are (Redis refuses a one-argument AUTH then). False: refused
    /// (counted and logged), the connection as it was.
    fn resp_auth(&mut self, token: Token, user: Option<&[u8]>, password: &[u8]) -> bool {
        if self.cfg.client_token.is_none() {
            return true;
        }
        if user.is_some_and(|u| u != b"default") {
            self.client_token_refused(token, "RESP");
            return false;
        }
        self.check_token(token, password, "RESP").is_ok()
    }

    /// HELLO's server description (a map: in RESP2 a flat array of names and values).
    fn resp_hello(&self, token: Token, resp3: bool) -> Reply {
        let role = super::clients::role_name(self.replica.core().role());
        let role = if role == "leader" {
            "master"
        } else {
            "replica"
        };
        let field = |k: &str, v: Reply| (Reply::text(k), v);
        Reply::Map(vec![
            field("server", Reply::text("raftkv")),
            field("version", Reply::text(env!("CARGO_PKG_VERSION"))),
            field("proto", Reply::Int(if resp3 { 3 } else { 2 })),
            field("id", Reply::Int(token.0 as i64)),
            field("mode", Reply::text("standalone")),
            field("role", Reply::text(role)),
            field("modules", Reply::Array(vec![])),
        ])
    }

    /// INFO [section ...]: server, clients, replication, raft, keyspace (all by default).
    fn resp_info(&self, sections: &[String]) -> String {
        let st = self.status_response();
        let want = |s: &str| {
            sections.is_empty()
                || sections
                    .iter()
                    .any(|w| w == s || w == "all" || w == "everything" || w == "default")
        };
        let mut out = String::new();
        let mut section = |name: &str, body: String| {
            if want(&name.to_ascii_lowercase()) {
                out.push_str(&format!("# {name}\r\n{body}\r\n"));
            }
        };
        section(
            "Server",
            format!(
                "redis_version:7.0.0\r\nraftkv_version:{}\r\nredis_mode:standalone\r\n\
                 process_id:{}\r\nnode_id:{}\r\n",
                env!("CARGO_PKG_VERSION"),
                std::process::id(),
                st.node_id
            ),
        );
        section("Clients", format!("connected_clients:{}\r\n", self.clients));
        let leader = self.cfg.redis_addr_of(st.leader_id).unwrap_or("");
        let (role, link) = if st.role == "leader" {
            ("master", String::new())
        } else {
            let (h, p) = leader.rsplit_once(':').unwrap_or(("", ""));
            (
                "slave",
                format!(
                    "master_host:{h}\r\nmaster_port:{p}\r\nmaster_link_status:{}\r\n",
                    if leader.is_empty() { "down" } else { "up" }
                ),
            )
        };
        section("Replication", format!("role:{role}\r\n{link}"));
        section(
            "Raft",
            format!(
                "raft_role:{}\r\nraft_term:{}\r\nraft_leader_id:{}\r\nraft_leader_resp:{leader}\r\n\
                 raft_commit_index:{}\r\nraft_applied_index:{}\r\nraft_last_log_index:{}\r\n",
                st.role, st.term, st.leader_id, st.commit_index, st.applied_index, st.last_log_index
            ),
        );
        section(
            "Keyspace",
            format!("db0:keys={},expires=0,avg_ttl=0\r\n", st.keys),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(words: &[&str]) -> Action {
        let args: Vec<Bytes> = words.iter().map(|w| Bytes::from(w.to_string())).collect();
        plan(&args, &mut RespState::new(1 << 20, 1024, 1))
    }

    fn error(words: &[&str]) -> String {
        match run(words) {
            Action::Reply(Reply::Error(e)) => e,
            _ => panic!("{words:?} is not an error"),
        }
    }

    #[test]
    fn argument_errors_use_redis_wording() {
        assert_eq!(
            error(&["get"]),
            "ERR wrong number of arguments for 'get' command"
        );
        assert_eq!(
            error(&["MSET", "a", "1", "b"]),
            "ERR wrong number of arguments for 'mset' command"
        );
        assert_eq!(error(&["SET", "k", "v", "NX", "XX"]), "ERR syntax error");
        assert_eq!(error(&["SET", "k", "v", "BOGUS"]), "ERR syntax error");
        assert!(error(&["SET", "k", "v", "ex", "1"]).contains("no key expiry"));
        assert_eq!(
            error(&["INCRBY", "k", "1.5"]),
            format!("ERR {NOT_AN_INTEGER}")
        );
        assert_eq!(
            error(&["DECRBY", "k", &i64::MIN.to_string()]),
            "ERR decrement would overflow"
        );
        assert!(error(&["RAFTKV.CAS", "k", "-1", "v"]).contains("expected version"));
        assert_eq!(
            error(&["NOPE", "a", "b"]),
            "ERR unknown command 'NOPE', with args beginning with: 'a' 'b'"
        );
    }

    #[test]
    fn match_patterns_are_prefixes() {
        assert_eq!(
            match_prefix(b"user:*").ok(),
            Some(Bytes::from_static(b"user:"))
        );
        assert_eq!(match_prefix(b"*").ok(), Some(Bytes::new()));
        for bad in [&b"user"[..], b"u*r*", b"u?*", b"[ab]*"] {
            assert!(match_prefix(bad).is_err(), "{bad:?}");
        }
        assert!(error(&["SCAN", "0", "COUNT", "0"]).contains("syntax"));
        assert!(error(&["SCAN", "7"]).contains("invalid cursor"));
        assert!(error(&["SCAN", "0", "MATCH"]).contains("syntax"));
        assert!(matches!(
            run(&["SCAN", "0", "TYPE", "hash"]),
            Action::Reply(Reply::Array(_))
        ));
        assert!(matches!(
            run(&["SCAN", "0", "MATCH", "a*", "COUNT", "99999"]),
            Action::Request(Expect::Scan, Op::Scan(s)) if s.limit == MAX_SCAN_LIMIT as u32 && s.prefix == b"a"[..]
        ));
    }

    #[test]
    fn auth_and_hello_parse_like_redis() {
        assert!(
            matches!(run(&["AUTH", "pw"]), Action::Auth { user: None, password } if password == "pw")
        );
        assert!(matches!(
            run(&["auth", "default", "pw"]),
            Action::Auth { user: Some(u), password } if u == "default" && password == "pw"
        ));
        assert_eq!(
            error(&["AUTH"]),
            "ERR wrong number of arguments for 'auth' command"
        );
        assert!(matches!(
            run(&["HELLO", "2", "setname", "me", "AUTH", "default", "pw"]),
            Action::Hello { proto: Some(false), auth: Some((u, p)), setname: Some(n) } if u == "default" && p == "pw" && n == "me"
        ));
        assert!(matches!(
            run(&["HELLO", "3", "AUTH", "default", "pw"]),
            Action::Hello { proto: Some(true), auth: Some((u, p)), setname: None } if u == "default" && p == "pw"
        ));
        assert!(matches!(
            run(&["HELLO"]),
            Action::Hello {
                proto: None,
                auth: None,
                setname: None
            }
        ));
        assert_eq!(
            error(&["HELLO", "2", "AUTH", "default"]),
            "ERR Syntax error in HELLO option 'AUTH'"
        );
        assert!(error(&["HELLO", "2", "SETNAME", "a b"]).contains("Client names"));
        assert!(error(&["HELLO", "4", "AUTH", "default", "pw"]).starts_with("NOPROTO"));
        for (name, allowed) in [
            ("ping", true),
            ("Auth", true),
            ("HELLO", true),
            ("quit", true),
        ]
        .into_iter()
        .chain([
            ("GET", false),
            ("ECHO", false),
            ("READONLY", false),
            ("CLIENT", false),
        ]) {
            assert_eq!(allowed_before_auth(name.as_bytes()), allowed, "{name}");
        }
    }

    #[test]
    fn set_options_become_put_fields() {
        let Action::Request(Expect::Set { get: true }, Op::Put(p)) =
            run(&["set", "k", "v", "xx", "get"])
        else {
            panic!("not a conditional put")
        };
        assert_eq!(
            (p.condition(), p.return_old),
            (PutCondition::IfPresent, true)
        );
        let unwritten = ApplyResult::Put(kvpb::PutResponse {
            not_written: true,
            ..Default::default()
        });
        assert_eq!(
            Expect::Set { get: false }.reply(unwritten.clone(), &mut |_| 0),
            Reply::Nil
        );
        assert_eq!(Expect::SetNx.reply(unwritten, &mut |_| 0), Reply::Int(0));
    }
}
