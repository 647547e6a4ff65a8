//! A small HTTP/1.1 client for the `openwhisk` executor's `/init` and `/run`: one kept-alive
//! connection per action process, acknowledging every segment at once (`TCP_QUICKACK`).
//!
//! Why not a general client: OpenWhisk's Python runtime (Flask on gevent's WSGI server) writes
//! an answer's headers and its body in two segments with Nagle's algorithm on, so the body
//! waits until the client acknowledges the headers; Linux delays that acknowledgement (40 ms)
//! on a kept-alive connection. Quick-ack mode is not sticky (the kernel leaves it on its own),
//! so it is set again after connecting, after writing and after every read, which needs the
//! socket: general clients (ureq) do not give it. The alternative, a new connection per call,
//! costs a connect and the server's accept per call.
//!
//! What it speaks: `POST` with a body in one write; answers with `Content-Length`, chunked, or
//! until the server closes; `1xx` interim answers skipped. A kept-alive connection that the
//! server closed while idle is noticed before reuse (a non-blocking peek) and replaced.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Why a call failed.
#[derive(Debug)]
pub enum Error {
    /// Not 2xx: the status and the first bytes of the body.
    Status(u16, Vec<u8>),
    /// The answer's body is larger than the limit given.
    TooLarge(usize),
    /// Connecting, writing, reading (kind `TimedOut` past the call's time), or an answer that
    /// is not HTTP.
    Io(io::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Status(code, body) => {
                write!(
                    f,
                    "answered {code}: {}",
                    String::from_utf8_lossy(body).trim()
                )
            }
            Error::TooLarge(limit) => write!(f, "{}", super::too_large(*limit)),
            Error::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

/// A client of one server, holding at most one connection.
#[derive(Debug)]
pub struct Client {
    addr: SocketAddr,
    connect_timeout: Duration,
    conn: Option<TcpStream>,
    /// Connections opened, for tests and logs.
    pub connects: u64,
}

/// The longest answer head read.
const MAX_HEAD: usize = 64 * 1024;

impl Client {
    pub fn new(addr: SocketAddr, connect_timeout: Duration) -> Client {
        Client {
            addr,
            connect_timeout,
            conn: None,
            connects: 0,
        }
    }

    /// POSTs `body` as JSON to `path`; the answer's body (at most `max` bytes) when its status
    /// is 2xx. The whole call takes at most `timeout`.
    pub fn post_json(
        &mut self,
        path: &str,
        body: &[u8],
        timeout: Duration,
        max: usize,
    ) -> Result<Vec<u8>, Error> {
        let deadline = Instant::now() + timeout;
        let mut stream = match self.conn.take().filter(idle_and_open) {
            Some(s) => s,
            None => {
                let s = TcpStream::connect_timeout(&self.addr, self.connect_timeout)?;
                s.set_nodelay(true)?;
                self.connects += 1;
                s
            }
        };
        quickack(&stream);
        let mut rq = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        )
        .into_bytes();
        rq.extend_from_slice(body);
        stream.set_write_timeout(Some(left(deadline)?))?;
        stream.write_all(&rq)?;
        quickack(&stream);
        let (status, body, keep) = read_answer(&mut stream, deadline, max)?;
        if keep {
            self.conn = Some(stream);
        }
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(Error::Status(status, body.into_iter().take(4096).collect()))
        }
    }
}

/// Whether a kept-alive connection can carry another request: nothing to read on it (no
/// close from the server, no stray bytes).
fn idle_and_open(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let r = s.peek(&mut [0u8; 1]);
    let _ = s.set_nonblocking(false);
    matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

fn quickack(s: &TcpStream) {
    // Best effort: without it the call is only slower.
    let _ = socket2::SockRef::from(s).set_tcp_quickack(true);
}

fn left(deadline: Instant) -> io::Result<Duration> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no answer within the call's time",
        ));
    }
    Ok(d)
}

/// Reads what is there (at least a byte, or 0 at the server's close) before the deadline,
/// acknowledging at once.
fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> io::Result<usize> {
    s.set_read_timeout(Some(left(deadline)?))?;
    let mut chunk = [0u8; 16 * 1024];
    let n = match s.read(&mut chunk) {
        Ok(n) => n,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no answer within the call's time",
            ))
        }
        Err(e) => return Err(e),
    };
    quickack(s);
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn bad(why: impl Into<String>) -> Error {
    Error::Io(io::Error::new(io::ErrorKind::InvalidData, why.into()))
}

/// An answer's head: status, body framing, whether the connection stays open.
struct Head {
    len: usize,
    status: u16,
    length: Option<usize>,
    chunked: bool,
    keep: bool,
}

fn parse_head(buf: &[u8]) -> Result<Option<Head>, Error> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut headers);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(bad(format!("the answer is not HTTP: {e}"))),
    };
    let mut head = Head {
        len,
        status: r.code.unwrap_or(0),
        length: None,
        chunked: false,
        keep: r.version == Some(1),
    };
    for h in r.headers.iter() {
        let v = String::from_utf8_lossy(h.value);
        if h.name.eq_ignore_ascii_case("Content-Length") {
            head.length = Some(
                v.trim()
                    .parse()
                    .map_err(|_| bad(format!("Content-Length {v:?}")))?,
            );
        } else if h.name.eq_ignore_ascii_case("Transfer-Encoding") {
            head.chunked = v.to_ascii_lowercase().contains("chunked");
        } else if h.name.eq_ignore_ascii_case("Connection") {
            head.keep = !v.to_ascii_lowercase().contains("close");
        }
    }
    Ok(Some(head))
}

/// Reads one answer: status, body, and whether the connection may carry another request.
fn read_answer(
    s: &mut TcpStream,
    deadline: Instant,
    max: usize,
) -> Result<(u16, Vec<u8>, bool), Error> {
    let mut buf = Vec::new();
    let head = loop {
        match parse_head(&buf)? {
            Some(h) if (100..200).contains(&h.status) => {
                buf.drain(..h.len);
            }
            Some(h) => break h,
            None if buf.len() > MAX_HEAD => return Err(bad("the answer's head is too long")),
            None => {
                if read_more(s, &mut buf, deadline)? == 0 {
                    return Err(Error::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection closed before an answer",
                    )));
                }
            }
        }
    };
    let mut rest = buf.split_off(head.len);
    if matches!(head.status, 204 | 304) {
        return Ok((head.status, Vec::new(), head.keep && rest.is_empty()));
    }
    if head.chunked {
        let body = read_chunked(s, rest, deadline, max)?;
        return Ok((head.status, body.0, head.keep && body.1));
    }
    match head.length {
        Some(n) if n > max => Err(Error::TooLarge(max)),
        Some(n) => {
            while rest.len() < n {
                if read_more(s, &mut rest, deadline)? == 0 {
                    return Err(bad("the connection closed inside the answer's body"));
                }
            }
            // Bytes beyond the body: the connection is out of step; not reused.
            let clean = rest.len() == n;
            rest.truncate(n);
            Ok((head.status, rest, head.keep && clean))
        }
        None => {
            while read_more(s, &mut rest, deadline)? > 0 {
                if rest.len() > max {
                    return Err(Error::TooLarge(max));
                }
            }
            Ok((head.status, rest, false))
        }
    }
}

/// A chunked body: the body, and whether the connection ended clean after it.
fn read_chunked(
    s: &mut TcpStream,
    mut buf: Vec<u8>,
    deadline: Instant,
    max: usize,
) -> Result<(Vec<u8>, bool), Error> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        match httparse::parse_chunk_size(&buf[at..]) {
            Ok(httparse::Status::Complete((n, size))) => {
                let size = usize::try_from(size).map_err(|_| bad("a chunk's size"))?;
                if body.len() + size > max {
                    return Err(Error::TooLarge(max));
                }
                let start = at + n;
                if size == 0 {
                    // No trailers: the last chunk's line then an empty line.
                    while buf.len() < start + 2 {
                        if read_more(s, &mut buf, deadline)? == 0 {
                            return Err(bad("the connection closed inside a chunked body"));
                        }
                    }
                    if &buf[start..start + 2] != b"\r\n" {
                        return Err(bad("trailers after a chunked body"));
                    }
                    return Ok((body, buf.len() == start + 2));
                }
                while buf.len() < start + size + 2 {
                    if read_more(s, &mut buf, deadline)? == 0 {
                        return Err(bad("the connection closed inside a chunked body"));
                    }
                }
                body.extend_from_slice(&buf[start..start + size]);
                at = start + size + 2;
            }
            Ok(httparse::Status::Partial) => {
                if read_more(s, &mut buf, deadline)? == 0 {
                    return Err(bad("the connection closed inside a chunked body"));
                }
            }
            Err(_) => return Err(bad("a chunk's size line is not HTTP")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A server answering each request with `answer(n)` (n counts requests), written as
    /// gevent's does: the head, then the body, in two writes with Nagle on. Counts connections.
    fn server(
        answer: impl Fn(usize) -> Vec<Vec<u8>> + Send + Sync + 'static,
        close_after: Option<usize>,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let (c, answer) = (conns.clone(), Arc::new(answer));
        std::thread::spawn(move || {
            let mut n = 0;
            for s in l.incoming() {
                let Ok(s) = s else { return };
                c.fetch_add(1, Ordering::SeqCst);
                let mut r = std::io::BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                let mut served = 0;
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            break;
                        }
                        if let Some(v) = line.strip_prefix("Content-Length: ") {
                            len = v.trim().parse().unwrap();
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    if line != "\r\n" {
                        break;
                    }
                    let mut body = vec![0u8; len];
                    r.read_exact(&mut body).unwrap();
                    for part in answer(n) {
                        w.write_all(&part).unwrap();
                    }
                    n += 1;
                    served += 1;
                    if close_after == Some(served) {
                        break;
                    }
                }
            }
        });
        (addr, conns)
    }

    fn client(addr: SocketAddr) -> Client {
        Client::new(addr, Duration::from_secs(2))
    }

    fn post(c: &mut Client) -> Result<Vec<u8>, Error> {
        c.post_json("/run", b"{}", Duration::from_secs(5), 1024)
    }

    #[test]
    fn calls_share_one_connection_whatever_the_body_framing() {
        let (addr, conns) = server(
            |n| {
                match n % 3 {
                0 => vec![
                    b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n".to_vec(),
                    b"{\"a\":1".to_vec(),
                ],
                1 => vec![
                    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        .to_vec(),
                    b"3\r\n{\"b\r\n2\r\n\":\r\n0\r\n\r\n".to_vec(),
                ],
                _ => vec![b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()],
            }
            },
            None,
        );
        let mut c = client(addr);
        for _ in 0..3 {
            assert_eq!(post(&mut c).unwrap(), b"{\"a\":1");
            assert_eq!(post(&mut c).unwrap(), b"{\"b\":");
            assert_eq!(post(&mut c).unwrap(), b"");
        }
        assert_eq!((conns.load(Ordering::SeqCst), c.connects), (1, 1));
    }

    #[test]
    fn a_connection_the_server_closed_is_replaced_before_use() {
        let (addr, conns) = server(
            |_| vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()],
            Some(1),
        );
        let mut c = client(addr);
        for _ in 0..3 {
            assert_eq!(post(&mut c).unwrap(), b"ok");
            // Let the server's close arrive.
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(conns.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn errors_say_what_the_server_did() {
        let (addr, _) = server(
            |n| match n {
                0 => vec![b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 4\r\n\r\noops".to_vec()],
                1 => vec![b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n".to_vec()],
                _ => vec![b"garbage\r\n\r\n".to_vec()],
            },
            None,
        );
        let mut c = client(addr);
        assert!(matches!(post(&mut c), Err(Error::Status(502, b)) if b == b"oops"));
        assert!(matches!(post(&mut c), Err(Error::TooLarge(1024))));
        // The connection was dropped after the refused body; this answer ends at the close.
        let (addr2, _) = server(
            |_| vec![b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close".to_vec()],
            Some(1),
        );
        let mut c2 = client(addr2);
        assert_eq!(post(&mut c2).unwrap(), b"until close");
        let r = post(&mut c);
        assert!(
            matches!(&r, Err(Error::Io(e)) if e.kind() == io::ErrorKind::InvalidData),
            "{r:?}"
        );
    }

    #[test]
    fn a_server_that_does_not_answer_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = client(l.local_addr().unwrap());
        let t0 = Instant::now();
        let r = c.post_json("/run", b"{}", Duration::from_millis(300), 1024);
        assert!(
            matches!(&r, Err(Error::Io(e)) if e.kind() == io::ErrorKind::TimedOut),
            "{r:?}"
        );
        assert!(t0.elapsed() < Duration::from_secs(3));
        drop(l);
    }
}
