//! The HTTP servers (the gateway, the control plane, a member's `/metrics`, the Lambda Runtime
//! API) on hyper, with the timeouts a server facing the network needs, and handlers that stay
//! plain blocking code.
//!
//! - **Read timeouts**: a client must send its request's head within `read_timeout` of
//!   connecting or of its previous answer (hyper's header timeout, which also ends idle
//!   kept-alive connections), and must not pause longer than `read_timeout` inside a body: a
//!   handler reading it then gets an error of kind [`std::io::ErrorKind::TimedOut`] (the
//!   gateway and the control plane answer 408) and the connection closes.
//! - **Write timeouts**: a client that reads nothing of its answer for `write_timeout` loses
//!   its connection.
//! - **Workers**: handlers run on at most `workers` threads (a synchronous gateway call holds
//!   one while it waits for its output); requests beyond wait for one, their bodies unread.
//!   Connections beyond `max_connections` wait to be accepted.
//!
//! A slow or stalled client therefore costs a task and a socket, never a worker thread, until
//! its request is whole enough for a handler to run (a handler reading a slow body is held by
//! it, at most `read_timeout` per pause).
//!
//! Header names reach handlers in the canonical form Go's `net/http` gives them
//! (`X-Forwarded-For`), as functions behind OpenFaaS's gateway see them; answers are written
//! with title-case names.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

/// How a server treats its clients.
#[derive(Clone, Debug)]
pub struct Options {
    /// Threads running handlers at once.
    pub workers: usize,
    /// The longest wait for a request's head, and the longest pause inside a body.
    pub read_timeout: Duration,
    /// The longest a client may leave its answer unread.
    pub write_timeout: Duration,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
}

impl Options {
    /// `workers` handler threads, 30 s timeouts, 1024 connections.
    pub fn new(workers: usize) -> Options {
        Options {
            workers: workers.max(1),
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

/// An answer: status, headers (a name may repeat: each is a line of its own) and body.
#[derive(Clone, Debug)]
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Adds a header line (another line if the name is there already).
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.add_header(name, value);
        self
    }

    /// Adds a header line (another line if the name is there already). A name or value that
    /// HTTP cannot carry (a line break in it, say) is left out when the answer is written.
    pub fn add_header(&mut self, name: &str, value: impl Into<String>) {
        self.headers.push((name.to_string(), value.into()));
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    fn into_hyper(self) -> hyper::Response<Full<Bytes>> {
        let mut r = hyper::Response::new(Full::new(Bytes::from(self.body)));
        *r.status_mut() = hyper::StatusCode::from_u16(self.status)
            .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        let map = r.headers_mut();
        for (k, v) in self.headers {
            let name = hyper::header::HeaderName::from_bytes(k.as_bytes());
            let value = hyper::header::HeaderValue::from_bytes(v.as_bytes());
            match (name, value) {
                (Ok(n), Ok(v)) => {
                    map.append(n, v);
                }
                _ => tracing::debug!("http: header {k:?} left out of an answer: not valid HTTP"),
            }
        }
        r
    }
}

/// A request's body, read as it arrives (see the module docs for its timeout).
#[derive(Debug)]
pub struct Body {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    buf: Bytes,
}

impl Read for Body {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.buf.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(b)) => self.buf = b,
                Some(Err(e)) => return Err(e),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf.split_to(n));
        Ok(n)
    }
}

/// A request handed to a handler, answered with [`Request::respond`] (from any thread, later
/// if need be: a long poll). A request dropped unanswered is answered 500.
#[derive(Debug)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    remote: SocketAddr,
    length: Option<usize>,
    body: Body,
    reply: Option<oneshot::Sender<Response>>,
}

impl Request {
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path and query, as the client sent them.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn path(&self) -> &str {
        self.url.split('?').next().unwrap_or("")
    }

    /// The query, without its `?` (empty when there is none).
    pub fn query(&self) -> &str {
        self.url.split_once('?').map(|x| x.1).unwrap_or("")
    }

    /// Every header line, in order, names in canonical form.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// The body's length when the client said it (Content-Length).
    pub fn body_length(&self) -> Option<usize> {
        self.length
    }

    pub fn as_reader(&mut self) -> &mut Body {
        &mut self.body
    }

    /// Reads the body, at most `limit` bytes: `Err(None)` when there is more, `Err(Some(e))`
    /// when it could not be read (a pause longer than the read timeout: kind `TimedOut`).
    pub fn read_body(&mut self, limit: usize) -> Result<Vec<u8>, Option<io::Error>> {
        if self.length.is_some_and(|n| n > limit) {
            return Err(None);
        }
        let mut body = Vec::new();
        (&mut self.body)
            .take(limit as u64 + 1)
            .read_to_end(&mut body)
            .map_err(Some)?;
        if body.len() > limit {
            return Err(None);
        }
        Ok(body)
    }

    pub fn respond(mut self, r: Response) {
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(r);
        }
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(Response::new(500, "the server dropped this request\n"));
        }
    }
}

/// What a body that could not be read is answered.
pub fn unreadable(e: &io::Error) -> Response {
    if e.kind() == io::ErrorKind::TimedOut {
        Response::new(408, format!("{e}\n"))
    } else {
        Response::new(400, format!("the body could not be read: {e}\n"))
    }
}

type Handler = Arc<dyn Fn(Request) + Send + Sync>;

/// A running server; dropped (or [`Server::stop`]ped), it stops accepting and closes its
/// connections (handlers still running finish on their own).
pub struct Server {
    address: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Listens on `address` and calls `handler` for each request on one of `opts.workers`
    /// threads (named `{name}-N`).
    pub fn start(
        address: &str,
        name: &str,
        opts: Options,
        handler: impl Fn(Request) + Send + Sync + 'static,
    ) -> io::Result<Server> {
        let listener = std::net::TcpListener::bind(address)?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let thread_name = name.to_string();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(opts.workers.max(1))
            .thread_name(format!("{name}-worker"))
            .build()?;
        let (stop, stopped) = watch::channel(false);
        let handler: Handler = Arc::new(handler);
        let thread = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                rt.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => accept(l, opts, handler, stopped).await,
                        Err(e) => tracing::error!("http: cannot serve on {local}: {e}"),
                    }
                });
                // Connections close now; handlers still running end on their own.
                rt.shutdown_background();
            })?;
        Ok(Server {
            address: local,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens (the port chosen when asked for port 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops accepting and closes the connections.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits until the server is stopped.
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept(
    listener: tokio::net::TcpListener,
    opts: Options,
    handler: Handler,
    mut stopped: watch::Receiver<bool>,
) {
    let connections = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => p,
            _ = stopped.changed() => return,
        };
        let Ok(permit) = permit else { return };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was accepted.
                    tracing::debug!("http: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stopped.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let mut io = tokio_io_timeout::TimeoutStream::new(stream);
        io.set_write_timeout(Some(opts.write_timeout));
        let io = TokioIo::new(Box::pin(io));
        let (handler, read_timeout) = (handler.clone(), opts.read_timeout);
        let service =
            hyper::service::service_fn(move |rq| serve(rq, peer, handler.clone(), read_timeout));
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(read_timeout)
                .title_case_headers(true)
                .serve_connection(io, service);
            if let Err(e) = conn.await {
                tracing::debug!("http: connection from {peer}: {e}");
            }
            drop(permit);
        });
    }
}

/// One request: its body pumped to the handler as it arrives, the handler run on a worker
/// thread, its answer written back.
async fn serve(
    rq: hyper::Request<Incoming>,
    peer: SocketAddr,
    handler: Handler,
    read_timeout: Duration,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, mut body) = rq.into_parts();
    let length = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(2);
    tokio::spawn(async move {
        loop {
            let frame = match tokio::time::timeout(read_timeout, body.frame()).await {
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the client paused its body for more than {} s (the read timeout)",
                        read_timeout.as_secs_f64()
                    ),
                )),
                Ok(None) => return,
                Ok(Some(Err(e))) => Err(io::Error::other(e)),
                Ok(Some(Ok(f))) => match f.into_data() {
                    Ok(d) if d.is_empty() => continue,
                    Ok(d) => Ok(d),
                    // Trailers: nothing a handler reads.
                    Err(_) => continue,
                },
            };
            let last = frame.is_err();
            if tx.send(frame).await.is_err() || last {
                return;
            }
        }
    });
    let (reply, answer) = oneshot::channel();
    let request = Request {
        method: parts.method.as_str().to_string(),
        url: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    crate::executors::canonical_header(k.as_str()),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        remote: peer,
        length,
        body: Body {
            rx,
            buf: Bytes::new(),
        },
        reply: Some(reply),
    };
    // Not awaited: a handler may answer and go on (or answer later, from elsewhere).
    drop(tokio::task::spawn_blocking(move || handler(request)));
    let r = answer
        .await
        .unwrap_or_else(|_| Response::new(500, "the server stopped\n"));
    Ok(r.into_hyper())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpStream;
    use std::time::Instant;

    fn opts(workers: usize, read_ms: u64) -> Options {
        Options {
            workers,
            read_timeout: Duration::from_millis(read_ms),
            write_timeout: Duration::from_millis(read_ms),
            max_connections: 64,
        }
    }

    /// Sends `raw` and reads until the server closes (or 5 s pass).
    fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(raw).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn echo() -> Server {
        Server::start("127.0.0.1:0", "test-http", opts(2, 300), |mut rq| {
            let r = match rq.read_body(16) {
                Ok(b) => Response::new(200, b)
                    .with_header("Set-Cookie", "a=1")
                    .with_header("Set-Cookie", "b=2")
                    .with_header("X-Seen", rq.header("x-custom-thing").unwrap_or("-"))
                    .with_header("X-Bad", "line\nbreak"),
                Err(None) => Response::new(413, "too large\n"),
                Err(Some(e)) => unreadable(&e),
            };
            rq.respond(r);
        })
        .unwrap()
    }

    #[test]
    fn answers_with_repeated_headers_and_canonical_names() {
        let s = echo();
        let out = exchange(
            s.address(),
            b"POST /x?y=1 HTTP/1.1\r\nHost: a\r\nx-custom-THING: v\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        );
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("Set-Cookie: a=1\r\n"), "{out}");
        assert!(out.contains("Set-Cookie: b=2\r\n"), "{out}");
        assert!(out.contains("X-Seen: v\r\n"), "{out}");
        assert!(!out.contains("X-Bad"), "{out}");
        assert!(out.ends_with("\r\n\r\nhello"), "{out}");
    }

    #[test]
    fn a_large_body_is_413_and_head_has_no_body() {
        let s = echo();
        let out = exchange(
            s.address(),
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 17\r\nConnection: close\r\n\r\n01234567890123456",
        );
        assert!(out.starts_with("HTTP/1.1 413"), "{out}");
        let out = exchange(
            s.address(),
            b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.ends_with("\r\n\r\n"), "{out}");
    }

    #[test]
    fn a_client_stalled_in_its_head_or_idle_is_closed_after_the_read_timeout() {
        let s = echo();
        for raw in [&b"POST / HTTP/1.1\r\nHost: a\r\n"[..], b""] {
            let t0 = Instant::now();
            let out = exchange(s.address(), raw);
            let took = t0.elapsed();
            // Closed by the server (hyper may say 408 first), well before our 5 s.
            assert!(!out.contains("200 OK"), "{out}");
            assert!(took < Duration::from_secs(3), "{took:?}");
        }
        // A kept-alive connection, idle after its answer, is closed as well.
        let t0 = Instant::now();
        let out = exchange(
            s.address(),
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(t0.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn a_body_paused_past_the_read_timeout_is_408_and_frees_the_worker() {
        let s = echo();
        let mut c = TcpStream::connect(s.address()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
            .unwrap();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 408"), "{out}");
        assert!(out.contains("read timeout"), "{out}");
        // Both workers are free again.
        for _ in 0..4 {
            let out = exchange(
                s.address(),
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
            );
            assert!(out.ends_with("ok"), "{out}");
        }
    }

    #[test]
    fn stalled_clients_hold_no_worker() {
        // One worker; ten clients stalled in their heads and bodies; calls still answered.
        let s = Server::start("127.0.0.1:0", "test-http", opts(1, 5000), |mut rq| {
            let r = match rq.read_body(1 << 20) {
                Ok(b) => Response::new(200, b),
                Err(_) => Response::new(400, ""),
            };
            rq.respond(r);
        })
        .unwrap();
        let stalled: Vec<TcpStream> = (0..10)
            .map(|_| {
                let mut c = TcpStream::connect(s.address()).unwrap();
                c.write_all(b"POST / HTTP/1.1\r\nHost: a\r\n").unwrap();
                c
            })
            .collect();
        let out = exchange(
            s.address(),
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        );
        assert!(out.ends_with("ok"), "{out}");
        drop(stalled);
    }

    #[test]
    fn a_client_that_reads_nothing_loses_its_connection_after_the_write_timeout() {
        let big = vec![b'x'; 64 << 20];
        let s = Server::start("127.0.0.1:0", "test-http", opts(1, 300), move |rq| {
            rq.respond(Response::new(200, big.clone()));
        })
        .unwrap();
        let mut c = TcpStream::connect(s.address()).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        // The answer fills the socket buffers; the server gives up on it.
        std::thread::sleep(Duration::from_millis(1500));
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        assert!(got < 64 << 20, "read the whole answer: {got} bytes");
    }

    #[test]
    fn a_dropped_request_is_500_and_stop_closes_the_server() {
        let s = Server::start("127.0.0.1:0", "test-http", opts(1, 300), drop).unwrap();
        let addr = s.address();
        let out = exchange(
            addr,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        assert!(out.starts_with("HTTP/1.1 500"), "{out}");
        drop(s);
        assert!(TcpStream::connect(addr).is_err());
    }
}
