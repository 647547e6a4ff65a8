//! The Redis protocol server (issue 23): what a member with `[member.resp]` serves, and
//! `conveyor demo --serve`. The stream commands run in the group's order on every replica
//! ([`conveyor_core::streams`], as `Op::Redis`); this side reads requests
//! ([`conveyor_resp::parse`]), answers the connection's own commands (`HELLO`, `AUTH`, `PING`,
//! `SELECT`, `CLIENT`, `INFO`, `QUIT`...), submits the others to the group, waits for their
//! replies ([`Hub`]) and encodes them for the connection's protocol version.
//!
//! One thread per connection, requests served in order (pipelining: replies in order), at most
//! [`MAX_CLIENTS`] connections, a request at most the group's `max_payload` (a larger one gets
//! an error and the connection closes, as a malformed one does). A blocked `XREADGROUP` or
//! `XREAD` waits in the group's replicated state, served in the order when an entry for it
//! comes; when its time is up the server asks the group to end it.
//!
//! In a sharded deployment (`[shards]`), the server is the process's member of every shard: a
//! command is ordered in the shard that owns its streams by the group file's placement (the
//! same hash and overrides as queues; see [`Routing`]), and a command whose streams live in
//! several shards is refused as Redis Cluster refuses it (`CROSSSLOT`).

use anyhow::{Context, Result};
use conveyor_core::queue::{Effect, Op};
use conveyor_core::shard::ShardMap;
use conveyor_core::streams::{self, Value};
use conveyor_core::types::MemberId;
use conveyor_dataplane::engine::Submitter;
use conveyor_resp::{parse, Limits, Parsed, Proto, Reply};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Connections served at once; one more is told `ERR max number of clients reached`.
pub const MAX_CLIENTS: usize = 1024;

/// How long a command waits for the group to order it before the client is told to try again
/// (the member is cut off from a majority, or stopping).
const ORDER_TIMEOUT: Duration = Duration::from_secs(10);

/// A replicated reply, as the RESP codec encodes it for `proto`.
pub fn reply(v: &Value, proto: Proto) -> Reply {
    let reply = |v: &Value| reply(v, proto);
    match v {
        Value::Simple(s) => Reply::Simple(s.clone()),
        Value::Error(s) => Reply::Error(s.clone()),
        Value::Int(n) => Reply::Integer(*n),
        Value::Bulk(b) => Reply::Bulk(b.clone()),
        Value::Array(items) => Reply::Array(items.iter().map(reply).collect()),
        Value::Null => Reply::Null,
        Value::NullArray => Reply::NullArray,
        Value::Map(pairs) => Reply::Map(pairs.iter().map(|(k, v)| (reply(k), reply(v))).collect()),
        Value::ByKey(pairs) if proto == Proto::Resp3 => {
            Reply::Map(pairs.iter().map(|(k, v)| (reply(k), reply(v))).collect())
        }
        Value::ByKey(pairs) => Reply::Array(
            pairs
                .iter()
                .map(|(k, v)| Reply::Array(vec![reply(k), reply(v)]))
                .collect(),
        ),
    }
}

/// Where replies meet the connections waiting for them: fed by whoever reads the member's
/// events ([`Hub::on_effect`]).
#[derive(Debug, Default)]
pub struct Hub {
    waiting: Mutex<HashMap<u64, mpsc::Sender<Value>>>,
    next: AtomicU64,
    stopped: AtomicBool,
}

impl Hub {
    /// Takes the effects meant for the RESP server (whether it was one of them).
    pub fn on_effect(&self, e: &Effect) -> bool {
        match e {
            Effect::Redis { token, reply, .. } => {
                let tx = self.waiting.lock().ok().and_then(|mut w| w.remove(token));
                if let Some(tx) = tx {
                    let _ = tx.send(reply.clone());
                }
                true
            }
            _ => false,
        }
    }

    /// The member's engine stopped: everyone waiting is told.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Ok(mut w) = self.waiting.lock() {
            w.clear();
        }
    }
}

/// What a server needs from its member.
#[derive(Clone)]
pub struct RespConfig {
    pub address: SocketAddr,
    /// `AUTH` must give it before anything else (`None`: no authentication).
    pub token: Option<String>,
    /// The group's largest operation: a larger request is refused.
    pub max_payload: usize,
    /// For `INFO`.
    pub group: String,
    pub member: String,
}

impl std::fmt::Debug for RespConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RespConfig")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .field("max_payload", &self.max_payload)
            .finish_non_exhaustive()
    }
}

/// A running server.
#[derive(Debug)]
pub struct RespServer {
    pub address: SocketAddr,
    pub hub: Arc<Hub>,
    stop: Arc<AtomicBool>,
}

/// Where a server orders each command: its member's group, or in a sharded deployment the
/// shard owning the command's streams.
#[derive(Clone, Debug)]
pub struct Routing {
    /// This process's member of each shard (one without shards).
    pub submitters: Vec<Submitter>,
    /// Which shard owns each stream: the group file's placement. Fixed for the server's life:
    /// a stream's entries live in its shard's replicated state, and a map change moves
    /// queues' waiting requests, not streams (`conveyor ctl shard move` of a stream's name
    /// would strand its entries in the old shard; the checks do not stop it).
    pub map: ShardMap,
}

impl Routing {
    /// The shard a command is ordered in: the one owning its streams (shard 0 for a command
    /// without any), or Redis Cluster's `CROSSSLOT` error if they live in several.
    fn shard(&self, args: &[Vec<u8>]) -> Result<usize, Reply> {
        if self.submitters.len() < 2 {
            return Ok(0);
        }
        let mut owner = None;
        for k in streams::keys(args) {
            let s = self.map.owner(&String::from_utf8_lossy(k)).0 as usize;
            if owner.is_some_and(|o| o != s) {
                return Err(Reply::err(
                    "CROSSSLOT Keys in request don't hash to the same slot (they live in different shards of this Conveyor deployment)",
                ));
            }
            owner = Some(s);
        }
        Ok(owner.unwrap_or(0).min(self.submitters.len() - 1))
    }
}

struct Shared {
    cfg: RespConfig,
    me: MemberId,
    routing: Routing,
    hub: Arc<Hub>,
    clients: AtomicUsize,
    next_client: AtomicU64,
    stop: Arc<AtomicBool>,
    started: Instant,
}

impl RespServer {
    /// Listens on `cfg.address` and serves until [`RespServer::stop`]. Replies come through
    /// the returned server's [`Hub`], which the member's event readers (every shard's) must
    /// feed.
    pub fn start(cfg: RespConfig, me: MemberId, routing: Routing) -> Result<RespServer> {
        let listener = TcpListener::bind(cfg.address)
            .with_context(|| format!("the RESP server cannot listen on {}", cfg.address))?;
        let address = listener.local_addr()?;
        let hub = Arc::new(Hub::default());
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            cfg,
            me,
            routing,
            hub: hub.clone(),
            clients: AtomicUsize::new(0),
            next_client: AtomicU64::new(1),
            stop: stop.clone(),
            started: Instant::now(),
        });
        std::thread::Builder::new()
            .name("resp-accept".into())
            .spawn(move || accept(listener, shared))?;
        Ok(RespServer { address, hub, stop })
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.hub.stop();
        // Wake the accepting thread.
        let _ = TcpStream::connect(self.address);
    }
}

impl Drop for RespServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept(listener: TcpListener, s: Arc<Shared>) {
    for conn in listener.incoming() {
        if s.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(mut conn) = conn else {
            continue;
        };
        if s.clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
            s.clients.fetch_sub(1, Ordering::SeqCst);
            let _ = conn.write_all(b"-ERR max number of clients reached\r\n");
            continue;
        }
        let s2 = s.clone();
        let spawned = std::thread::Builder::new()
            .name("resp-client".into())
            .spawn(move || {
                let _ = serve(&s2, conn);
                s2.clients.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            s.clients.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// One connection's state.
struct Client {
    id: u64,
    proto: Proto,
    authenticated: bool,
    name: Option<Vec<u8>>,
}

enum Next {
    Reply(Reply),
    /// Reply, then close the connection.
    Close(Reply),
    /// Submitted to the group: the reply comes later (pipelined commands are submitted
    /// together and their replies collected in order).
    Later(Pending),
}

/// A submitted command's reply to come.
struct Pending {
    token: u64,
    rx: mpsc::Receiver<Value>,
}

/// A reply to write, in the order the requests came.
enum Slot {
    Ready(Reply, Proto),
    Later(Pending, Proto),
}

/// Encodes every slot, waiting for the replies still to come.
fn flush(s: &Shared, slots: &mut Vec<Slot>, out: &mut Vec<u8>) {
    for slot in slots.drain(..) {
        match slot {
            Slot::Ready(r, proto) => r.encode(proto, out),
            Slot::Later(p, proto) => match wait(s, p) {
                Ok(v) => reply(&v, proto).encode(proto, out),
                Err(r) => r.encode(proto, out),
            },
        }
    }
}

fn serve(s: &Shared, mut conn: TcpStream) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    let mut client = Client {
        id: s.next_client.fetch_add(1, Ordering::Relaxed),
        proto: Proto::Resp2,
        authenticated: s.cfg.token.is_none(),
        name: None,
    };
    let limits = Limits {
        max_bulk: s.cfg.max_payload.max(1024),
        ..Limits::default()
    };
    let max_request = s.cfg.max_payload + 64 * 1024;
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut out = Vec::new();
    let mut slots: Vec<Slot> = Vec::new();
    // Reads time out now and then to notice a stopped server.
    conn.set_read_timeout(Some(Duration::from_millis(500)))?;
    loop {
        // Every whole request in the buffer, in order; their replies go out together.
        let mut at = 0;
        let mut close = false;
        loop {
            match parse(&buf[at..], &limits) {
                Ok(Parsed::Incomplete) => break,
                Ok(Parsed::Skip(n)) => at += n,
                Ok(Parsed::Request(args, n)) => {
                    at += n;
                    if blocking(&args).is_some() {
                        // Waits for other clients: what came before it is answered first.
                        flush(s, &mut slots, &mut out);
                    }
                    let next = command(s, &mut client, &args);
                    // After the command: HELLO answers in the version it chose (as Redis).
                    let proto = client.proto;
                    match next {
                        Next::Reply(r) => slots.push(Slot::Ready(r, proto)),
                        Next::Later(p) => slots.push(Slot::Later(p, proto)),
                        Next::Close(r) => {
                            slots.push(Slot::Ready(r, proto));
                            close = true;
                            break;
                        }
                    }
                }
                Err(e) => {
                    // As Redis: the error, then the connection closes.
                    slots.push(Slot::Ready(Reply::err(format!("ERR {e}")), client.proto));
                    close = true;
                    break;
                }
            }
        }
        flush(s, &mut slots, &mut out);
        buf.drain(..at);
        if !close && buf.len() > max_request {
            // A request the group could never order (its operations are at most
            // max_payload): refused before it fills the memory.
            Reply::err(format!(
                "ERR Protocol error: request of more than {max_request} bytes (the group's operations are at most {} bytes)",
                s.cfg.max_payload
            ))
            .encode(client.proto, &mut out);
            close = true;
        }
        if !out.is_empty() {
            conn.write_all(&out)?;
            out.clear();
        }
        if close {
            // What the client still sends is read and dropped a moment, so that closing with
            // it unread does not reset the connection before the error is read.
            let _ = conn.shutdown(std::net::Shutdown::Write);
            let until = Instant::now() + Duration::from_millis(200);
            conn.set_read_timeout(Some(Duration::from_millis(50)))?;
            while Instant::now() < until {
                match conn.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => break,
                }
            }
            return Ok(());
        }
        let n = loop {
            if s.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            match conn.read(&mut chunk) {
                Ok(n) => break n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn lower(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_lowercase()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn arity(name: &str) -> Reply {
    Reply::err(format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

/// Redis's answer to a command it does not know.
fn unknown(args: &[Vec<u8>]) -> Reply {
    let mut m = format!(
        "ERR unknown command '{}', with args beginning with: ",
        text(&args[0]).chars().take(128).collect::<String>()
    );
    for a in args[1..].iter() {
        m.push_str(&format!(
            "'{}' ",
            text(a).chars().take(128).collect::<String>()
        ));
    }
    Reply::err(m)
}

fn command(s: &Shared, c: &mut Client, args: &[Vec<u8>]) -> Next {
    let name = lower(&args[0]);
    // Before authentication only these (as Redis: HELLO may carry AUTH).
    if !c.authenticated && !matches!(name.as_str(), "auth" | "hello" | "quit") {
        return Next::Reply(Reply::err("NOAUTH Authentication required."));
    }
    let r = match name.as_str() {
        "ping" => match args.len() {
            1 => Reply::Simple("PONG".into()),
            2 => Reply::Bulk(args[1].clone()),
            _ => arity("ping"),
        },
        "echo" if args.len() == 2 => Reply::Bulk(args[1].clone()),
        "echo" => arity("echo"),
        "quit" => return Next::Close(Reply::ok()),
        "auth" => match args.len() {
            2 | 3 => auth(s, c, args.last().expect("two or three")),
            _ => Reply::err("ERR syntax error"),
        },
        "hello" => hello(s, c, args),
        "select" if args.len() == 2 => match args[1].as_slice() {
            b"0" => Reply::ok(),
            x if std::str::from_utf8(x)
                .ok()
                .and_then(|t| t.parse::<i64>().ok())
                .is_some() =>
            {
                Reply::err("ERR DB index is out of range")
            }
            _ => Reply::err("ERR value is not an integer or out of range"),
        },
        "select" => arity("select"),
        "client" => client(c, args),
        "info" => Reply::Verbatim("txt", info(s)),
        "command" => Reply::Array(Vec::new()),
        n if streams::is_stream_command(n.as_bytes()) => {
            if blocking(args).is_some() {
                ordered(s, c, args)
            } else {
                match send(s, args) {
                    Ok(p) => return Next::Later(p),
                    Err(r) => r,
                }
            }
        }
        _ => unknown(args),
    };
    Next::Reply(r)
}

fn auth(s: &Shared, c: &mut Client, given: &[u8]) -> Reply {
    match &s.cfg.token {
        None => Reply::err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"),
        Some(t) if t.as_bytes() == given => {
            c.authenticated = true;
            Reply::ok()
        }
        Some(_) => Reply::err("WRONGPASS invalid username-password pair or user is disabled."),
    }
}

fn hello(s: &Shared, c: &mut Client, args: &[Vec<u8>]) -> Reply {
    let mut proto = c.proto;
    let mut i = 1;
    if let Some(v) = args.get(1) {
        match v.as_slice() {
            b"2" => proto = Proto::Resp2,
            b"3" => proto = Proto::Resp3,
            x if std::str::from_utf8(x)
                .ok()
                .and_then(|t| t.parse::<i64>().ok())
                .is_some() =>
            {
                return Reply::err("NOPROTO unsupported protocol version")
            }
            _ => return Reply::err("ERR Protocol version is not an integer or out of range"),
        }
        i = 2;
    }
    let mut name = None;
    while i < args.len() {
        let more = args.len() - 1 - i;
        match lower(&args[i]).as_str() {
            "auth" if more >= 2 => {
                let r = auth(s, c, &args[i + 2]);
                if matches!(r, Reply::Error(_)) {
                    return r;
                }
                i += 3;
            }
            "setname" if more >= 1 => {
                name = Some(args[i + 1].clone());
                i += 2;
            }
            _ => {
                return Reply::err(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    text(&args[i])
                ))
            }
        }
    }
    if !c.authenticated {
        return Reply::err("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
    }
    c.proto = proto;
    if name.is_some() {
        c.name = name;
    }
    let b = |s: &str| Reply::bulk(s);
    Reply::Map(vec![
        (b("server"), b("redis")),
        (b("version"), b("7.0.15")),
        (
            b("proto"),
            Reply::Integer(if proto == Proto::Resp3 { 3 } else { 2 }),
        ),
        (b("id"), Reply::Integer(c.id as i64)),
        (b("mode"), b("standalone")),
        (b("role"), b("master")),
        (b("modules"), Reply::Array(Vec::new())),
    ])
}

fn client(c: &mut Client, args: &[Vec<u8>]) -> Reply {
    let Some(sub) = args.get(1) else {
        return arity("client");
    };
    match (lower(sub).as_str(), args.len()) {
        ("setname", 3) => {
            if args[2].iter().any(|b| *b <= b' ' || *b > b'~') {
                return Reply::err(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
            c.name = (!args[2].is_empty()).then(|| args[2].clone());
            Reply::ok()
        }
        ("getname", 2) => c.name.clone().map_or(Reply::Null, Reply::Bulk),
        ("id", 2) => Reply::Integer(c.id as i64),
        // redis-py and others announce their library; nothing to keep.
        ("setinfo", 4) => Reply::ok(),
        (s @ ("setname" | "getname" | "id" | "setinfo"), _) => arity(&format!("client|{s}")),
        _ => Reply::err(format!(
            "ERR unknown subcommand '{}'. Try CLIENT HELP.",
            text(sub)
        )),
    }
}

fn info(s: &Shared) -> String {
    format!(
        "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\nconveyor_group:{}\r\nconveyor_member:{}\r\nuptime_in_seconds:{}\r\ntcp_port:{}\r\n\r\n# Clients\r\nconnected_clients:{}\r\n\r\n# Replication\r\nrole:master\r\n",
        s.cfg.group,
        s.cfg.member,
        s.started.elapsed().as_secs(),
        s.cfg.address.port(),
        s.clients.load(Ordering::Relaxed),
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether a command is a read that blocks (see [`streams::blocking`]).
fn blocking(args: &[Vec<u8>]) -> Option<(Vec<Vec<u8>>, u64)> {
    streams::blocking(args)
}

/// A read that blocks: it waits in the group's state (every replica serves it when an entry
/// for it is applied); when its time is up (or the server stops) this server asks the group
/// to end it, and the reply is whichever came first in the order: entries, or nil.
fn ordered(s: &Shared, c: &Client, args: &[Vec<u8>]) -> Reply {
    let block_ms = blocking(args).map_or(0, |(_, ms)| ms);
    let until = (block_ms > 0).then(|| Instant::now() + Duration::from_millis(block_ms));
    let shard = match s.routing.shard(args) {
        Ok(shard) => shard,
        Err(r) => return r,
    };
    let p = match send_to(s, shard, args) {
        Ok(p) => p,
        Err(r) => return r,
    };
    loop {
        let slice = Duration::from_millis(500);
        let wait = until.map_or(slice, |u| {
            u.saturating_duration_since(Instant::now()).min(slice)
        });
        match p.rx.recv_timeout(wait) {
            Ok(v) => {
                forget(s, p.token);
                return reply(&v, c.proto);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Reply::err("ERR this member stopped while the read waited")
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let stopping = s.stop.load(Ordering::SeqCst) || s.hub.stopped.load(Ordering::SeqCst);
        if until.is_some_and(|u| Instant::now() >= u) || stopping {
            break;
        }
    }
    // Time is up: the group ends the read unless an entry came first.
    let unblock = [
        streams::UNBLOCK.as_bytes().to_vec(),
        p.token.to_string().into_bytes(),
    ];
    // In the shard the read waits in.
    if let Ok(u) = send_to(s, shard, &unblock) {
        forget(s, u.token);
    }
    match wait(s, p) {
        Ok(v) => reply(&v, c.proto),
        Err(r) => r,
    }
}

fn forget(s: &Shared, token: u64) {
    if let Ok(mut w) = s.hub.waiting.lock() {
        w.remove(&token);
    }
}

/// Waits for a submitted command's reply.
fn wait(s: &Shared, p: Pending) -> Result<Value, Reply> {
    match p.rx.recv_timeout(ORDER_TIMEOUT) {
        Ok(v) => Ok(v),
        Err(_) => {
            if let Ok(mut w) = s.hub.waiting.lock() {
                w.remove(&p.token);
            }
            Err(Reply::err(format!(
                "TRYAGAIN the group did not order the command within {} s (this member may be cut off from a majority, or stopping): try another member",
                ORDER_TIMEOUT.as_secs()
            )))
        }
    }
}

/// Submits one command to the group (the shard owning its streams).
fn send(s: &Shared, args: &[Vec<u8>]) -> Result<Pending, Reply> {
    send_to(s, s.routing.shard(args)?, args)
}

/// Submits one command to shard `shard`'s group.
fn send_to(s: &Shared, shard: usize, args: &[Vec<u8>]) -> Result<Pending, Reply> {
    let token = s.hub.next.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel();
    if let Ok(mut w) = s.hub.waiting.lock() {
        w.insert(token, tx);
    }
    let op = Op::Redis {
        origin: s.me,
        token,
        now_ms: now_ms(),
        args: args.to_vec(),
    };
    let forget = || {
        if let Ok(mut w) = s.hub.waiting.lock() {
            w.remove(&token);
        }
    };
    if let Err(e) = s.routing.submitters[shard].submit(&op) {
        forget();
        return Err(Reply::err(format!(
            "ERR this member cannot take the command: {e}"
        )));
    }
    Ok(Pending { token, rx })
}
