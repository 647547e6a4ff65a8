//! Requests: what a client sends, parsed as `redis-server` parses it (`networking.c`:
//! `processMultibulkBuffer`, `processInlineBuffer`), with its limits and its error messages.
//!
//! A request is an array of bulk strings (`*2\r\n$4\r\nPING\r\n$2\r\nhi\r\n`), or an inline
//! command, a line split into words as `sdssplitargs` does (`PING hi`, with double quotes that
//! take escapes and single quotes that take `\'`). [`parse`] takes the bytes received so far
//! and says whether a whole request is there (and how many bytes it took), whether more are
//! needed, or what is wrong; it never allocates more than the bytes it was given justify, so a
//! declared length of gigabytes costs nothing until the bytes arrive (and more than
//! [`Limits::max_bulk`] is an error at once).

/// How far a request may go (Redis's defaults: `proto-max-bulk-len` 512 MB, 1024 * 1024
/// arguments, 64 KB for an inline command or a length line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_args: usize,
    pub max_bulk: usize,
    pub max_inline: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_args: 1024 * 1024,
            max_bulk: 512 * 1024 * 1024,
            max_inline: 64 * 1024,
        }
    }
}

/// A malformed request, with Redis's message (sent as `-ERR <message>`; the connection is
/// closed after it, as Redis does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProtocolError {}

fn err<T>(m: impl Into<String>) -> Result<T, ProtocolError> {
    Err(ProtocolError(m.into()))
}

/// What the bytes received so far hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole request (its words) and the bytes it took.
    Request(Vec<Vec<u8>>, usize),
    /// Nothing to run, and the bytes it took: an empty line, or an array of zero or fewer
    /// elements (Redis skips both).
    Skip(usize),
    /// More bytes are needed.
    Incomplete,
}

/// Parses the request at the start of `buf`.
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Parsed, ProtocolError> {
    match buf.first() {
        None => Ok(Parsed::Incomplete),
        Some(b'*') => multibulk(buf, limits),
        Some(_) => inline(buf, limits),
    }
}

/// The line at `at` (without its `\r\n`) and the offset after it; `None` if not whole yet.
fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let nl = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..nl], at + nl + 2))
}

/// A length as Redis's `string2ll` reads it: an optional `-`, digits, nothing else, no
/// leading `+` or zero padding beyond "0", within i64.
fn number(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', d)) => (true, d),
        _ => (false, s),
    };
    if digits.is_empty()
        || !digits.iter().all(u8::is_ascii_digit)
        || (digits.len() > 1 && digits[0] == b'0')
        || (neg && digits == b"0")
    {
        return None;
    }
    let v: i64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(if neg { -v } else { v })
}

fn multibulk(buf: &[u8], limits: &Limits) -> Result<Parsed, ProtocolError> {
    let Some((head, mut at)) = line(buf, 0) else {
        if buf.len() > limits.max_inline {
            return err("Protocol error: too big mbulk count string");
        }
        return Ok(Parsed::Incomplete);
    };
    if head.len() > limits.max_inline {
        return err("Protocol error: too big mbulk count string");
    }
    let count = match number(&head[1..]) {
        Some(n) if n <= limits.max_args as i64 => n,
        _ => return err("Protocol error: invalid multibulk length"),
    };
    if count <= 0 {
        return Ok(Parsed::Skip(at));
    }
    let count = count as usize;
    // Grown as arguments arrive: a declared count costs nothing by itself.
    let mut args = Vec::with_capacity(count.min(64));
    while args.len() < count {
        let Some(&first) = buf.get(at) else {
            return Ok(Parsed::Incomplete);
        };
        if first != b'$' {
            return err(format!(
                "Protocol error: expected '$', got '{}'",
                char::from(first)
            ));
        }
        let Some((len_line, body)) = line(buf, at) else {
            if buf.len() - at > limits.max_inline {
                return err("Protocol error: too big bulk count string");
            }
            return Ok(Parsed::Incomplete);
        };
        if len_line.len() > limits.max_inline {
            return err("Protocol error: too big bulk count string");
        }
        let len = match number(&len_line[1..]) {
            Some(n) if n >= 0 && n <= limits.max_bulk as i64 => n as usize,
            _ => return err("Protocol error: invalid bulk length"),
        };
        if buf.len() < body + len + 2 {
            return Ok(Parsed::Incomplete);
        }
        // Redis takes the two bytes after the body as its end whatever they are.
        args.push(buf[body..body + len].to_vec());
        at = body + len + 2;
    }
    Ok(Parsed::Request(args, at))
}

fn inline(buf: &[u8], limits: &Limits) -> Result<Parsed, ProtocolError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > limits.max_inline {
            return err("Protocol error: too big inline request");
        }
        return Ok(Parsed::Incomplete);
    };
    if nl > limits.max_inline {
        return err("Protocol error: too big inline request");
    }
    let mut text = &buf[..nl];
    if text.last() == Some(&b'\r') {
        text = &text[..text.len() - 1];
    }
    let words = split_args(text)
        .ok_or_else(|| ProtocolError("Protocol error: unbalanced quotes in request".into()))?;
    if words.is_empty() {
        return Ok(Parsed::Skip(nl + 1));
    }
    if words.len() > limits.max_args {
        return err("Protocol error: invalid multibulk length");
    }
    Ok(Parsed::Request(words, nl + 1))
}

/// Splits a line into words as Redis's `sdssplitargs` does; `None` for unbalanced quotes (or
/// a closing quote not followed by a space).
pub fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut i = 0;
    let space = |b: u8| matches!(b, b' ' | b'\n' | b'\r' | b'\t' | 0x0b | 0x0c);
    loop {
        while i < line.len() && space(line[i]) {
            i += 1;
        }
        if i >= line.len() {
            return Some(out);
        }
        let mut word = Vec::new();
        let (mut in_dq, mut in_sq) = (false, false);
        loop {
            let c = line.get(i).copied();
            if in_dq {
                match c {
                    None => return None,
                    Some(b'\\') if line.get(i + 1) == Some(&b'x') => {
                        let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
                        match (hex(line.get(i + 2)), hex(line.get(i + 3))) {
                            (Some(h), Some(l)) => {
                                word.push((h * 16 + l) as u8);
                                i += 3;
                            }
                            _ => {
                                word.push(b'\\');
                            }
                        }
                    }
                    Some(b'\\') if i + 1 < line.len() => {
                        i += 1;
                        word.push(match line[i] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                    }
                    Some(b'"') => {
                        // A closing quote must be followed by a space or the end.
                        if line.get(i + 1).is_some_and(|b| !space(*b)) {
                            return None;
                        }
                        in_dq = false;
                        i += 1;
                        break;
                    }
                    Some(b) => word.push(b),
                }
            } else if in_sq {
                match c {
                    None => return None,
                    Some(b'\\') if line.get(i + 1) == Some(&b'\'') => {
                        i += 1;
                        word.push(b'\'');
                    }
                    Some(b'\'') => {
                        if line.get(i + 1).is_some_and(|b| !space(*b)) {
                            return None;
                        }
                        in_sq = false;
                        i += 1;
                        break;
                    }
                    Some(b) => word.push(b),
                }
            } else {
                match c {
                    None => break,
                    Some(b) if space(b) => break,
                    Some(b'"') => in_dq = true,
                    Some(b'\'') => in_sq = true,
                    Some(b) => word.push(b),
                }
            }
            i += 1;
        }
        let _ = (in_dq, in_sq);
        out.push(word);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn words(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
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

    #[test]
    fn pipelined_requests_come_one_at_a_time() {
        let l = Limits::default();
        let mut buf = encode(&words(&["SET", "k", "v"]));
        buf.extend_from_slice(b"PING\r\n");
        buf.extend_from_slice(&encode(&words(&["GET", "k"])));
        let mut at = 0;
        let mut got = Vec::new();
        while at < buf.len() {
            match parse(&buf[at..], &l).unwrap() {
                Parsed::Request(w, n) => {
                    got.push(w);
                    at += n;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            got,
            vec![
                words(&["SET", "k", "v"]),
                words(&["PING"]),
                words(&["GET", "k"])
            ]
        );
    }

    #[test]
    fn inline_commands_split_as_redis_splits_them() {
        let l = Limits::default();
        let p = |s: &str| match parse(s.as_bytes(), &l) {
            Ok(Parsed::Request(w, _)) => Ok(w),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.0),
        };
        assert_eq!(
            p("set  k \"a b\"\r\n").unwrap(),
            words(&["set", "k", "a b"])
        );
        assert_eq!(
            p("echo \"\\x41\\n\" 'it\\'s'\n").unwrap(),
            words(&["echo", "A\n", "it's"])
        );
        assert_eq!(
            p("echo \"\"\r\n").unwrap(),
            vec![b"echo".to_vec(), Vec::new()]
        );
        assert_eq!(
            p("echo \"abc\r\n").unwrap_err(),
            "Protocol error: unbalanced quotes in request"
        );
        assert_eq!(
            p("echo \"a\"b\r\n").unwrap_err(),
            "Protocol error: unbalanced quotes in request"
        );
        assert_eq!(parse(b"\r\n", &l).unwrap(), Parsed::Skip(2));
        assert_eq!(parse(b"PING", &l).unwrap(), Parsed::Incomplete);
    }

    #[test]
    fn malformed_requests_get_redis_messages() {
        let l = Limits::default();
        let e = |b: &[u8]| parse(b, &l).unwrap_err().0;
        assert_eq!(e(b"*x\r\n"), "Protocol error: invalid multibulk length");
        assert_eq!(
            e(b"*99999999999\r\n"),
            "Protocol error: invalid multibulk length"
        );
        assert_eq!(e(b"*1\r\n*1\r\n"), "Protocol error: expected '$', got '*'");
        assert_eq!(e(b"*1\r\n$-5\r\n"), "Protocol error: invalid bulk length");
        assert_eq!(
            e(b"*1\r\n$999999999999\r\n"),
            "Protocol error: invalid bulk length"
        );
        assert_eq!(parse(b"*0\r\n", &l).unwrap(), Parsed::Skip(4));
        assert_eq!(parse(b"*-1\r\n", &l).unwrap(), Parsed::Skip(5));
        let long = vec![b'a'; 70_000];
        assert_eq!(e(&long), "Protocol error: too big inline request");
        let mut star = b"*".to_vec();
        star.extend(vec![b'1'; 70_000]);
        assert_eq!(e(&star), "Protocol error: too big mbulk count string");
    }

    #[test]
    fn a_declared_length_allocates_nothing_until_its_bytes_arrive() {
        let l = Limits::default();
        // 500 MB declared, 10 bytes there: more needed, nothing allocated for it.
        assert_eq!(
            parse(b"*1\r\n$500000000\r\nabcdefghij", &l).unwrap(),
            Parsed::Incomplete
        );
        assert_eq!(
            parse(b"*1000000\r\n$1\r\na\r\n", &l).unwrap(),
            Parsed::Incomplete
        );
        let small = Limits {
            max_bulk: 1024,
            ..l
        };
        assert_eq!(
            parse(b"*1\r\n$2048\r\n", &small).unwrap_err().0,
            "Protocol error: invalid bulk length"
        );
    }

    proptest! {
        /// Every proper prefix of a request is incomplete; the whole is the request.
        #[test]
        fn prefixes_are_incomplete(args in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..20), 1..5)) {
            let l = Limits::default();
            let b = encode(&args);
            for cut in 0..b.len() {
                prop_assert_eq!(parse(&b[..cut], &l).unwrap(), Parsed::Incomplete);
            }
            prop_assert_eq!(parse(&b, &l).unwrap(), Parsed::Request(args, b.len()));
        }

        /// Any bytes: a request, a skip, more needed or a protocol error; never a panic, and
        /// never more bytes taken than given.
        #[test]
        fn any_bytes(b in prop::collection::vec(any::<u8>(), 0..200)) {
            match parse(&b, &Limits::default()) {
                Ok(Parsed::Request(_, n)) | Ok(Parsed::Skip(n)) => prop_assert!(n <= b.len() && n > 0),
                _ => {}
            }
        }
    }
}
