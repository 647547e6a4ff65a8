//! The replicated stream commands against a real `redis-server` (Debian's 7.0): one script of
//! commands, run on both, in RESP2 and in RESP3; every reply compared field by field, as
//! the wire carries it (our reply encoded by the server's codec, both parsed alike). Only the
//! times differ: idle times and the like are compared as "present", and the internals of
//! Redis's radix tree are not ours to match.

mod common;

use conveyor_core::streams::Streams;
use conveyor_core::types::MemberId;
use conveyor_resp::Proto;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{SystemTime, UNIX_EPOCH};

/// A reply as parsed off the wire (RESP2 and the RESP3 types streams use).
#[derive(Clone, Debug, PartialEq)]
enum T {
    Simple(String),
    Err(String),
    Int(i64),
    Bulk(Vec<u8>),
    NullBulk,
    NullArray,
    Null,
    Array(Vec<T>),
    Map(Vec<(T, T)>),
    /// A time, or a figure of Redis's internals: not compared.
    Any,
}

/// The whole reply at the start of `b`, and its length.
fn read(b: &[u8]) -> Option<(T, usize)> {
    let nl = b.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&b[1..nl]).ok()?;
    let at = nl + 2;
    let items = |n: usize, mut at: usize| -> Option<(Vec<T>, usize)> {
        let mut v = Vec::new();
        for _ in 0..n {
            let (t, k) = read(&b[at..])?;
            v.push(t);
            at += k;
        }
        Some((v, at))
    };
    Some(match b[0] {
        b'+' => (T::Simple(line.into()), at),
        b'-' => (T::Err(line.into()), at),
        b':' => (T::Int(line.parse().ok()?), at),
        b'_' => (T::Null, at),
        b'$' if line == "-1" => (T::NullBulk, at),
        b'*' if line == "-1" => (T::NullArray, at),
        b'$' => {
            let n: usize = line.parse().ok()?;
            if b.len() < at + n + 2 {
                return None;
            }
            (T::Bulk(b[at..at + n].to_vec()), at + n + 2)
        }
        b'*' => {
            let (v, end) = items(line.parse().ok()?, at)?;
            (T::Array(v), end)
        }
        b'%' => {
            let (v, end) = items(2 * line.parse::<usize>().ok()?, at)?;
            let mut it = v.into_iter();
            let mut pairs = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            (T::Map(pairs), end)
        }
        other => panic!("unexpected reply type {:?}", other as char),
    })
}

/// Values after these names (in maps, or flat arrays of names and values) are times or
/// Redis's internals.
const UNCOMPARED: [&[u8]; 5] = [
    b"idle",
    b"seen-time",
    b"radix-tree-keys",
    b"radix-tree-nodes",
    b"active-time",
];

fn mask(t: T, command: &str) -> T {
    match t {
        T::Map(pairs) => T::Map(
            pairs
                .into_iter()
                .map(|(k, v)| {
                    let skip = matches!(&k, T::Bulk(n) if UNCOMPARED.contains(&n.as_slice()));
                    let v = if skip { T::Any } else { mask(v, command) };
                    (k, v)
                })
                .collect(),
        ),
        T::Array(items) => {
            // XPENDING's extended form: [id, consumer, idle, count].
            let pending = command == "xpending"
                && items.len() == 4
                && matches!(items[1], T::Bulk(_))
                && matches!(items[2], T::Int(_));
            let mut out = Vec::new();
            let mut skip_next = false;
            for (i, x) in items.into_iter().enumerate() {
                if skip_next || (pending && i == 2) {
                    out.push(T::Any);
                    skip_next = false;
                    continue;
                }
                skip_next = matches!(&x, T::Bulk(n) if UNCOMPARED.contains(&n.as_slice()));
                out.push(mask(x, command));
            }
            T::Array(out)
        }
        // XINFO STREAM FULL's delivery times: each side's clock when the read ran (they may
        // fall in different milliseconds).
        T::Int(t) if command == "xinfo" && t > 1_000_000_000_000 => T::Any,
        other => other,
    }
}

fn encode(args: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

struct Conn(TcpStream, Vec<u8>);

impl Conn {
    fn ask(&mut self, args: &[Vec<u8>]) -> T {
        self.0.write_all(&encode(args)).unwrap();
        loop {
            if let Some((t, n)) = read(&self.1) {
                self.1.drain(..n);
                return t;
            }
            let mut buf = [0u8; 65536];
            let n = self.0.read(&mut buf).unwrap();
            assert!(n > 0, "redis-server closed the connection");
            self.1.extend_from_slice(&buf[..n]);
        }
    }
}

fn words(cmd: &str) -> Vec<Vec<u8>> {
    cmd.split_whitespace()
        .map(|w| w.as_bytes().to_vec())
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Commands whose every reply is compared. No `*` ids (the clocks differ); idle times that
/// matter are made with IDLE/TIME or waited for.
const SCRIPT: &[&str] = &[
    "TYPE s",
    "EXISTS s",
    "XLEN s",
    "XRANGE s - +",
    "XADD s NOMKSTREAM 1-1 a 1",
    "XADD s 0-0 a 1",
    "XADD s 0 a 1",
    "XADD s 1-1 a",
    "XADD s",
    "XADD s 1-x a 1",
    "XADD s 1-1 a 1 b 2",
    "XADD s 1-1 a 1",
    "XADD s 1-0 a 1",
    "XADD s 1-* a 3",
    "XADD s 2 c 4",
    "XADD s 2-* c 5",
    "XADD s 5-1 d 6",
    "XADD s 7-0 e 7",
    "XADD s 8-0 f 8",
    "XADD s 9-0 g 9",
    "XADD s MAXLEN -1 10-0 h 10",
    "XADD s MAXLEN = x 10-0 h 10",
    "XADD s MAXLEN 3 MINID 1 10-0 h 10",
    "XADD s LIMIT 5 10-0 h 10",
    "XADD s MAXLEN 5 LIMIT 5 10-0 h 10",
    "TYPE s",
    "EXISTS s s nope",
    "XLEN s",
    "XRANGE s - +",
    "XRANGE s - + COUNT 2",
    "XRANGE s - + COUNT 0",
    "XRANGE s - + COUNT -3",
    "XRANGE s 2 2",
    "XRANGE s (2-0 +",
    "XRANGE s (1-1 (5-1",
    "XRANGE s - + COUNT",
    "XRANGE s - + LIMIT 3",
    "XRANGE s 5 1",
    "XRANGE s x +",
    "XRANGE s (18446744073709551615-18446744073709551615 +",
    "XRANGE s - (0-0",
    "XRANGE nope - +",
    "XREVRANGE s + -",
    "XREVRANGE s + - COUNT 3",
    "XREVRANGE s (8-0 (2-0",
    "XGROUP CREATE nope g 0",
    "XGROUP CREATE s g 0",
    "XGROUP CREATE s g 0",
    "XGROUP CREATE s late $",
    "XGROUP CREATE s x 0 FOO",
    "XGROUP CREATE s x bad",
    "XGROUP CREATE m g $ MKSTREAM",
    "XGROUP CREATECONSUMER s nope c",
    "XGROUP CREATECONSUMER s g alice",
    "XGROUP CREATECONSUMER s g alice",
    "XGROUP BOGUS s g",
    "XGROUP DESTROY s",
    "XINFO GROUPS s",
    "XREADGROUP GROUP g alice STREAMS s",
    "XREADGROUP GROUP g alice STREAMS s $",
    "XREADGROUP GROUP nope alice STREAMS s >",
    "XREADGROUP GROUP g alice STREAMS nope >",
    "XREADGROUP g alice STREAMS s >",
    "XREADGROUP GROUP g alice COUNT x STREAMS s >",
    "XREADGROUP GROUP g alice COUNT 2 STREAMS s >",
    "XREADGROUP GROUP g bob COUNT 2 STREAMS s m > >",
    "XREADGROUP GROUP g carol COUNT 1 NOACK STREAMS s >",
    "XREADGROUP GROUP g alice STREAMS s 0",
    "XREADGROUP GROUP g alice COUNT 1 STREAMS s 1-1",
    "XREADGROUP GROUP g alice STREAMS s 9-0",
    "XREADGROUP GROUP g dave STREAMS s 0",
    "XREADGROUP GROUP late erin STREAMS s >",
    "XREAD STREAMS s 0",
    "XREAD COUNT 2 STREAMS s m nope 1-1 0 0",
    "XREAD STREAMS s $",
    "XREAD STREAMS s 9-0",
    "XREAD STREAMS s >",
    "XREAD STREAMS s",
    "XREAD GROUP g a STREAMS s 0",
    "XREAD NOACK STREAMS s 0",
    "XREAD COUNT x STREAMS s 0",
    "XREAD STREAMS s x",
    "XREAD BLOCK 0 STREAMS s 1",
    "XPENDING s g",
    "XPENDING s g - + 10",
    "XPENDING s g - + 10 alice",
    "XPENDING s g - + 10 nobody",
    "XPENDING s g (1-0 + 1",
    "XPENDING s g IDLE 0 - + 10",
    "XPENDING s g - +",
    "XPENDING s g x + 10",
    "XPENDING s g - + x",
    "XPENDING s nope",
    "XPENDING nope g",
    "XINFO GROUPS s",
    "XINFO CONSUMERS s g",
    "XINFO CONSUMERS s nope",
    "XINFO STREAM s",
    "XINFO STREAM nope",
    "XINFO BOGUS s",
    "XACK s g 1-0",
    "XACK s g 1-0 1-0 9-9",
    "XACK s g x",
    "XACK nope g x",
    "XACK s nope 1-1",
    "XPENDING s g",
    "XDEL s 1-1",
    "XDEL s 1-1 x",
    "XDEL nope 1-1",
    "XINFO STREAM s",
    "XINFO GROUPS s",
    "XREADGROUP GROUP g alice STREAMS s 0",
    "XCLAIM s g zed 0 1-1 2-0",
    "XCLAIM s g zed 0 2-0 JUSTID",
    "XCLAIM s g zed 0 2-0 RETRYCOUNT 7",
    "XCLAIM s g zed 0 5-1 FORCE",
    "XCLAIM s g zed 0 8-0 FORCE JUSTID",
    "XCLAIM s g zed 0 99-0 FORCE",
    "XCLAIM s g zed 0 2-0 BOGUS",
    "XCLAIM s g zed x 2-0",
    "XCLAIM s nope zed 0 2-0",
    "XCLAIM s g zed 0 2-0 IDLE x",
    "XCLAIM s g zed 3600000 2-0",
    "XCLAIM s g yan 0 2-0 IDLE 5000 JUSTID",
    "XCLAIM s g zed 1000 2-0 JUSTID",
    "XCLAIM s g zed 0 2-0 LASTID 50-0 JUSTID",
    "XINFO GROUPS s",
    "XPENDING s g - + 10",
    "XDEL s 5-1",
    "XAUTOCLAIM s g wu 0 0",
    "XAUTOCLAIM s g wu 0 0 COUNT 1",
    "XAUTOCLAIM s g wu 0 0 COUNT 2 JUSTID",
    "XAUTOCLAIM s g wu 0 (2-0 JUSTID",
    "XAUTOCLAIM s g wu 0 0 COUNT 0",
    "XAUTOCLAIM s g wu x 0",
    "XAUTOCLAIM s g wu 0 0 BOGUS",
    "XAUTOCLAIM s nope wu 0 0",
    "XAUTOCLAIM s g wu 3600000 0",
    "XPENDING s g",
    "XINFO CONSUMERS s g",
    "XGROUP DELCONSUMER s g wu",
    "XGROUP DELCONSUMER s g wu",
    "XGROUP DELCONSUMER s nope wu",
    "XPENDING s g",
    "XGROUP SETID s g 0",
    "XGROUP SETID s g $ ENTRIESREAD 3",
    "XINFO GROUPS s",
    "XGROUP SETID s g 1-1 ENTRIESREAD -5",
    "XTRIM s",
    "XTRIM s MAXLEN 4",
    "XTRIM s MINID 8",
    "XTRIM s MAXLEN 2 LIMIT 3",
    "XTRIM nope MAXLEN 1",
    "XRANGE s - +",
    "XINFO STREAM s",
    "XINFO GROUPS s",
    "XADD s MAXLEN 2 20-0 z 20",
    "XADD s MINID 20 21-0 z 21",
    "XRANGE s - +",
    "XADD s NOMKSTREAM 22-0 z 22",
    "XREADGROUP GROUP g alice STREAMS s >",
    "XINFO GROUPS s",
    "XGROUP DESTROY s late",
    "XGROUP DESTROY s late",
    "XINFO STREAM s FULL",
    "XINFO STREAM s FULL COUNT 1",
    "XINFO STREAM s FULL COUNT",
    "XLEN",
    "DEL s m nope",
    "EXISTS s",
    "XINFO GROUPS s",
    "XGROUP CREATE s g 0",
    "XGROUP CREATE e g $ MKSTREAM",
    "XINFO STREAM e",
    "XINFO GROUPS e",
    "XADD e 1-1 a 1",
    "XADD e 1-2 a 2",
    "XDEL e 1-1",
    "XINFO GROUPS e",
    "XREADGROUP GROUP g c STREAMS e >",
    "XINFO GROUPS e",
    "XDEL e 1-2",
    "XINFO STREAM e",
    "XINFO GROUPS e",
    "XLEN e",
    "TYPE e",
];

fn run_script(proto: Proto) {
    let server = common::redis_server();
    let mut c = Conn(
        TcpStream::connect(("127.0.0.1", server.1)).unwrap(),
        Vec::new(),
    );
    if proto == Proto::Resp3 {
        let hello = c.ask(&words("HELLO 3"));
        assert!(matches!(hello, T::Map(_)), "{hello:?}");
    }
    let mut ours = Streams::default();
    let mut differ = Vec::new();
    for cmd in SCRIPT {
        let args = words(cmd);
        let theirs = c.ask(&args);
        let mine =
            conveyor_control::resp::reply(&ours.execute(MemberId(0), now_ms(), &args), proto)
                .to_bytes(proto);
        let (mine, n) = read(&mine).expect("our reply parses");
        assert!(n > 0);
        let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
        let (theirs, mine) = (mask(theirs, &name), mask(mine, &name));
        if theirs != mine {
            differ.push(format!(
                "{cmd}\n  redis-server: {theirs:?}\n  conveyor:     {mine:?}"
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "{:?}: {} of {} replies differ:\n{}",
        proto,
        differ.len(),
        SCRIPT.len(),
        differ.join("\n")
    );
}

#[test]
fn stream_commands_answer_as_redis_server_does_in_resp2() {
    run_script(Proto::Resp2);
}

#[test]
fn stream_commands_answer_as_redis_server_does_in_resp3() {
    run_script(Proto::Resp3);
}
