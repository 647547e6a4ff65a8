//! The codec against components no one here wrote: a real `redis-server` (Debian's) answers
//! the same malformed requests with the same protocol errors, and the `redis` crate's parser
//! reads every reply back as the type it is.

use conveyor_resp::{parse, Limits, Proto, Reply};
use redis::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server(Child, u16, std::path::PathBuf);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.2);
    }
}

fn redis_server() -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("conveyor-resp-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--dir"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "redis-server (Debian: apt-get install redis-server; testbed/setup.sh installs it)",
        );
    let s = Server(child, port, dir);
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    s
}

/// What redis-server answers `bytes` with, up to its closing the connection.
fn ask(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    c.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = c.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[test]
fn malformed_requests_get_the_errors_redis_server_gives() {
    let server = redis_server();
    let mut huge_inline = vec![b'a'; 70_000];
    huge_inline.push(b' ');
    let cases: Vec<Vec<u8>> = vec![
        b"*x\r\n".to_vec(),
        b"*99999999999\r\n".to_vec(),
        b"*+1\r\n".to_vec(),
        b"*1\r\n*1\r\n".to_vec(),
        b"*1\r\n:1\r\n".to_vec(),
        b"*1\r\n$-5\r\n".to_vec(),
        b"*1\r\n$x\r\n".to_vec(),
        b"*1\r\n$999999999999\r\n".to_vec(),
        b"PING \"abc\r\n".to_vec(),
        b"ECHO \"a\"b\r\n".to_vec(),
        b"ECHO 'a\r\n".to_vec(),
        huge_inline,
    ];
    for case in cases {
        let theirs = ask(server.1, &case);
        let ours = match parse(&case, &Limits::default()) {
            Err(e) => Reply::err(format!("ERR {e}")).to_bytes(Proto::Resp2),
            Ok(p) => panic!(
                "{:?}: parsed as {p:?}",
                String::from_utf8_lossy(&case[..case.len().min(40)])
            ),
        };
        assert_eq!(
            String::from_utf8_lossy(&theirs),
            String::from_utf8_lossy(&ours),
            "for {:?}",
            String::from_utf8_lossy(&case[..case.len().min(40)])
        );
    }
    // And what both take as requests: one reply per request, in order.
    let pipelined = b"PING\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\nECHO \"a b\"\r\n";
    let mut at = 0;
    let mut n = 0;
    while at < pipelined.len() {
        match parse(&pipelined[at..], &Limits::default()).unwrap() {
            conveyor_resp::Parsed::Request(_, k) => {
                at += k;
                n += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(n, 3);
    let mut c = TcpStream::connect(("127.0.0.1", server.1)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    c.write_all(pipelined).unwrap();
    let want = b"+PONG\r\n$2\r\nhi\r\n$3\r\na b\r\n";
    let mut got = vec![0u8; want.len()];
    c.read_exact(&mut got).unwrap();
    assert_eq!(got, want);
}

#[test]
fn the_redis_crate_reads_every_reply_back() {
    let r3 = |r: &Reply| redis::parse_redis_value(&r.to_bytes(Proto::Resp3)).unwrap();
    let r2 = |r: &Reply| redis::parse_redis_value(&r.to_bytes(Proto::Resp2)).unwrap();
    assert_eq!(r2(&Reply::ok()), Value::Okay);
    assert_eq!(r2(&Reply::Integer(7)), Value::Int(7));
    assert_eq!(r2(&Reply::bulk("x")), Value::BulkString(b"x".to_vec()));
    assert_eq!(r2(&Reply::Null), Value::Nil);
    assert_eq!(r2(&Reply::NullArray), Value::Nil);
    assert_eq!(r3(&Reply::Null), Value::Nil);
    assert!(
        matches!(r2(&Reply::err("NOGROUP no such group")), Value::ServerError(e) if e.code() == "NOGROUP")
    );
    assert_eq!(
        r2(&Reply::Map(vec![(Reply::bulk("a"), Reply::Integer(1))])),
        Value::Array(vec![Value::BulkString(b"a".to_vec()), Value::Int(1)])
    );
    assert_eq!(
        r3(&Reply::Map(vec![(Reply::bulk("a"), Reply::Integer(1))])),
        Value::Map(vec![(Value::BulkString(b"a".to_vec()), Value::Int(1))])
    );
    assert_eq!(r3(&Reply::Double(2.5)), Value::Double(2.5));
    assert_eq!(r3(&Reply::Boolean(false)), Value::Boolean(false));
    assert_eq!(
        r3(&Reply::Set(vec![Reply::Integer(1)])),
        Value::Set(vec![Value::Int(1)])
    );
    assert!(
        matches!(r3(&Reply::Verbatim("txt", "hello".into())), Value::VerbatimString { text, .. } if text == "hello")
    );
    assert!(matches!(
        r3(&Reply::Push(vec![Reply::bulk("message")])),
        Value::Push { .. }
    ));
    let nested = Reply::Array(vec![
        Reply::Array(vec![
            Reply::bulk("1-0"),
            Reply::Array(vec![Reply::bulk("f"), Reply::bulk("v")]),
        ]),
        Reply::NullArray,
    ]);
    assert_eq!(
        r2(&nested),
        Value::Array(vec![
            Value::Array(vec![
                Value::BulkString(b"1-0".to_vec()),
                Value::Array(vec![
                    Value::BulkString(b"f".to_vec()),
                    Value::BulkString(b"v".to_vec())
                ]),
            ]),
            Value::Nil,
        ])
    );
}
