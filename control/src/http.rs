//! The HTTP servers' listening sockets. tiny_http has no timeouts of its own; a write timeout
//! set on the listener is copied by Linux to every connection it accepts, so a client that
//! stops reading its answer loses its connection after that long instead of holding a worker.
//! (A read timeout cannot be given that way: the listener's would end tiny_http's accept
//! loop. A client that stalls while sending its headers holds only tiny_http's own thread for
//! that connection; one that stalls in its body holds the worker reading it.)

use std::time::Duration;

/// A tiny_http server on `address` whose connections time out after `timeout` when the client
/// does not read what they write.
pub fn listen(address: &str, timeout: Duration) -> std::io::Result<tiny_http::Server> {
    let listener = std::net::TcpListener::bind(address)?;
    socket2::SockRef::from(&listener).set_write_timeout(Some(timeout))?;
    tiny_http::Server::from_listener(listener, None).map_err(std::io::Error::other)
}
