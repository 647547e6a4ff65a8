//! Replies, encoded for the protocol version the client chose (`HELLO 2` or `HELLO 3`), as
//! `redis-server` encodes each RESP3 type for a RESP2 client (`networking.c`): a map is a flat
//! array of keys and values, a set or push an array, a double a bulk string, a boolean the
//! integer 1 or 0, a verbatim string or big number a bulk string, and a null the null bulk
//! string, or the null array where Redis answers one (`XREADGROUP` that timed out).

/// The protocol version of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Resp2,
    Resp3,
}

/// A reply, in RESP3's terms.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// `+OK`.
    Simple(String),
    /// `-ERR ...`: the whole message, its code (`ERR`, `NOGROUP`, `WRONGTYPE`...) first.
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    Array(Vec<Reply>),
    /// RESP3 `_`; RESP2 `$-1`.
    Null,
    /// RESP3 `_`; RESP2 `*-1`.
    NullArray,
    Double(f64),
    Boolean(bool),
    Map(Vec<(Reply, Reply)>),
    Set(Vec<Reply>),
    /// Text with a three-letter format (`txt`, `mkd`), as `INFO` or `CLIENT INFO` answer.
    Verbatim(&'static str, String),
    /// An out-of-band message (RESP3 `>`).
    Push(Vec<Reply>),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }
    pub fn bulk(s: impl AsRef<[u8]>) -> Reply {
        Reply::Bulk(s.as_ref().to_vec())
    }
    pub fn err(message: impl Into<String>) -> Reply {
        Reply::Error(message.into())
    }

    /// Appends the reply's encoding in `proto` to `out`.
    pub fn encode(&self, proto: Proto, out: &mut Vec<u8>) {
        let r3 = proto == Proto::Resp3;
        match self {
            Reply::Simple(s) => line(out, b'+', &clean(s)),
            Reply::Error(s) => line(out, b'-', &clean(s)),
            Reply::Integer(n) => line(out, b':', &n.to_string()),
            Reply::Bulk(b) => bulk(out, b'$', b),
            Reply::Array(items) => seq(out, b'*', items, proto),
            Reply::Null | Reply::NullArray if r3 => out.extend_from_slice(b"_\r\n"),
            Reply::Null => out.extend_from_slice(b"$-1\r\n"),
            Reply::NullArray => out.extend_from_slice(b"*-1\r\n"),
            Reply::Double(d) if r3 => line(out, b',', &double(*d)),
            Reply::Double(d) => bulk(out, b'$', double(*d).as_bytes()),
            Reply::Boolean(b) if r3 => line(out, b'#', if *b { "t" } else { "f" }),
            Reply::Boolean(b) => line(out, b':', if *b { "1" } else { "0" }),
            Reply::Map(pairs) => {
                if r3 {
                    line(out, b'%', &pairs.len().to_string());
                } else {
                    line(out, b'*', &(pairs.len() * 2).to_string());
                }
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
            Reply::Set(items) => seq(out, if r3 { b'~' } else { b'*' }, items, proto),
            Reply::Push(items) => seq(out, if r3 { b'>' } else { b'*' }, items, proto),
            Reply::Verbatim(format, text) if r3 => {
                let body = format!("{format}:{text}");
                bulk(out, b'=', body.as_bytes());
            }
            Reply::Verbatim(_, text) => bulk(out, b'$', text.as_bytes()),
        }
    }

    /// The reply's encoding in `proto`.
    pub fn to_bytes(&self, proto: Proto) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(proto, &mut out);
        out
    }
}

/// A simple string or error may not hold a line break: Redis replaces them with spaces.
fn clean(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

fn line(out: &mut Vec<u8>, tag: u8, s: &str) {
    out.push(tag);
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn bulk(out: &mut Vec<u8>, tag: u8, b: &[u8]) {
    line(out, tag, &b.len().to_string());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

fn seq(out: &mut Vec<u8>, tag: u8, items: &[Reply], proto: Proto) {
    line(out, tag, &items.len().to_string());
    for i in items {
        i.encode(proto, out);
    }
}

/// A double as Redis writes one: `inf`, `-inf`, `nan`, or the shortest decimal that reads back.
fn double(d: f64) -> String {
    if d.is_nan() {
        "nan".into()
    } else if d.is_infinite() {
        if d > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{d}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_type_in_both_versions() {
        let cases: Vec<(Reply, &[u8], &[u8])> = vec![
            (Reply::ok(), b"+OK\r\n", b"+OK\r\n"),
            (
                Reply::err("ERR bad\r\nthing"),
                b"-ERR bad  thing\r\n",
                b"-ERR bad  thing\r\n",
            ),
            (Reply::Integer(-3), b":-3\r\n", b":-3\r\n"),
            (Reply::bulk("hi"), b"$2\r\nhi\r\n", b"$2\r\nhi\r\n"),
            (Reply::Null, b"$-1\r\n", b"_\r\n"),
            (Reply::NullArray, b"*-1\r\n", b"_\r\n"),
            (Reply::Double(1.5), b"$3\r\n1.5\r\n", b",1.5\r\n"),
            (Reply::Boolean(true), b":1\r\n", b"#t\r\n"),
            (
                Reply::Map(vec![(Reply::bulk("a"), Reply::Integer(1))]),
                b"*2\r\n$1\r\na\r\n:1\r\n",
                b"%1\r\n$1\r\na\r\n:1\r\n",
            ),
            (
                Reply::Set(vec![Reply::Integer(1)]),
                b"*1\r\n:1\r\n",
                b"~1\r\n:1\r\n",
            ),
            (
                Reply::Verbatim("txt", "x".into()),
                b"$1\r\nx\r\n",
                b"=5\r\ntxt:x\r\n",
            ),
            (
                Reply::Push(vec![Reply::bulk("m")]),
                b"*1\r\n$1\r\nm\r\n",
                b">1\r\n$1\r\nm\r\n",
            ),
        ];
        for (r, two, three) in cases {
            assert_eq!(r.to_bytes(Proto::Resp2), two, "{r:?}");
            assert_eq!(r.to_bytes(Proto::Resp3), three, "{r:?}");
        }
    }
}
