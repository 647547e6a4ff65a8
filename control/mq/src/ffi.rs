//! The C functions of the client library: `mq_*` of POSIX as `conveyor_mq_*`, over the safe
//! core ([`crate`]).
//! Each returns -1 (or NULL) and sets `errno` on failure, as POSIX does; `conveyor_mq_error`
//! says why in words. No panic crosses into C: one is caught, and the call fails with `EIO`.
//! All unsafe code of the library is here: reading the caller's pointers and setting errno.

#![allow(unsafe_code)] // The C ABI: every block says why it is sound.

use crate::{self as mq, Attr, MqError};
use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_long, c_uint, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, SystemTime};

/// `struct mq_attr`: flags (`O_NONBLOCK`), capacity in messages, largest message, messages
/// waiting.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct conveyor_mq_attr {
    pub mq_flags: c_long,
    pub mq_maxmsg: c_long,
    pub mq_msgsize: c_long,
    pub mq_curmsgs: c_long,
}

impl From<Attr> for conveyor_mq_attr {
    fn from(a: Attr) -> Self {
        conveyor_mq_attr {
            mq_flags: a.flags as c_long,
            mq_maxmsg: a.maxmsg as c_long,
            mq_msgsize: a.msgsize as c_long,
            mq_curmsgs: a.curmsgs as c_long,
        }
    }
}

// `long` is 64 bits on the 64-bit Linux targets this library is built for.
impl From<conveyor_mq_attr> for Attr {
    fn from(a: conveyor_mq_attr) -> Self {
        Attr {
            flags: a.mq_flags,
            maxmsg: a.mq_maxmsg,
            msgsize: a.mq_msgsize,
            curmsgs: a.mq_curmsgs,
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno, valid for the thread's life.
    unsafe {
        *libc::__errno_location() = e;
    }
}

/// Runs `f`, turning an error (or a panic) into `errno` and `fallback`.
fn guard<T>(fallback: T, f: impl FnOnce() -> Result<T, MqError>) -> T {
    let r = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(MqError {
            errno: libc::EIO,
            message: format!("internal error (a panic, caught): {what}"),
        })
    });
    match r {
        Ok(v) => v,
        Err(e) => {
            let text = CString::new(e.message.replace('\0', " ")).unwrap_or_default();
            LAST_ERROR.with(|l| *l.borrow_mut() = text);
            set_errno(e.errno);
            fallback
        }
    }
}

fn invalid(what: &str) -> MqError {
    MqError {
        errno: libc::EINVAL,
        message: format!("{what} is NULL or invalid"),
    }
}

/// The absolute `CLOCK_REALTIME` time `ts` points to.
///
/// # Safety
/// `ts` is NULL or points to a readable `struct timespec`.
unsafe fn deadline(ts: *const libc::timespec) -> Result<SystemTime, MqError> {
    // SAFETY: the caller's contract; NULL was checked by as_ref.
    let ts = unsafe { ts.as_ref() }.ok_or_else(|| invalid("abs_timeout"))?;
    if ts.tv_sec < 0 || !(0..1_000_000_000).contains(&ts.tv_nsec) {
        return Err(invalid("abs_timeout (tv_nsec 0 to 999999999)"));
    }
    Ok(SystemTime::UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// Opens (with `O_CREAT`, creates) the queue `name` ("/orders"): `mq_open`. `oflag` is
/// `O_RDONLY`, `O_WRONLY` or `O_RDWR` with `O_CREAT`, `O_EXCL`, `O_NONBLOCK`; `mode` is
/// ignored (queues are the group's); `attr` may be NULL (10 messages). The first call makes
/// the process the member `CONVEYOR_MEMBER` of the group file `CONVEYOR_CONFIG`. Returns a
/// descriptor, or -1 and errno (ENOENT, EEXIST, EINVAL, ENAMETOOLONG, EIO).
///
/// # Safety
/// `name` is a NUL-terminated string; `attr` is NULL or points to a `conveyor_mq_attr`.
#[no_mangle]
pub unsafe extern "C" fn conveyor_mq_open(
    name: *const c_char,
    oflag: c_int,
    mode: libc::mode_t,
    attr: *const conveyor_mq_attr,
) -> c_int {
    let _ = mode;
    guard(-1, || {
        if name.is_null() {
            return Err(invalid("name"));
        }
        // SAFETY: not NULL, and NUL-terminated by the caller's contract.
        let name = unsafe { CStr::from_ptr(name) }
            .to_str()
            .map_err(|_| invalid("name (not UTF-8)"))?;
        // SAFETY: NULL or a valid attr, by the caller's contract.
        let attr = unsafe { attr.as_ref() }.map(|a| Attr::from(*a));
        mq::open(name, oflag, attr)
    })
}

/// `mq_close`. Returns 0, or -1 and EBADF.
#[no_mangle]
pub extern "C" fn conveyor_mq_close(mqd: c_int) -> c_int {
    guard(-1, || mq::close(mqd).map(|()| 0))
}

/// # Safety
/// `msg` points to `len` readable bytes (or `len` is 0).
unsafe fn message<'a>(msg: *const c_char, len: usize) -> Result<&'a [u8], MqError> {
    if len == 0 {
        return Ok(&[]);
    }
    if msg.is_null() {
        return Err(invalid("msg_ptr"));
    }
    // SAFETY: not NULL; `len` readable bytes by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(msg.cast::<u8>(), len) })
}

/// `mq_send`: returns 0 once the message is in the queue, or -1 and errno (EAGAIN full in
/// non-blocking mode, EMSGSIZE, EBADF, EINVAL priority, EIO).
///
/// # Safety
/// `msg` points to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn conveyor_mq_send(
    mqd: c_int,
    msg: *const c_char,
    len: usize,
    prio: c_uint,
) -> c_int {
    guard(-1, || {
        // SAFETY: the caller's contract.
        let m = unsafe { message(msg, len) }?;
        mq::send(mqd, m, prio, None).map(|()| 0)
    })
}

/// `mq_timedsend`: as `conveyor_mq_send`, waiting for room at most until `abs_timeout`
/// (`CLOCK_REALTIME`), then -1 and ETIMEDOUT.
///
/// # Safety
/// `msg` points to `len` readable bytes; `abs_timeout` to a `struct timespec`.
#[no_mangle]
pub unsafe extern "C" fn conveyor_mq_timedsend(
    mqd: c_int,
    msg: *const c_char,
    len: usize,
    prio: c_uint,
    abs_timeout: *const libc::timespec,
) -> c_int {
    guard(-1, || {
        // SAFETY: the caller's contract.
        let m = unsafe { message(msg, len) }?;
        // SAFETY: the caller's contract.
        let dl = unsafe { deadline(abs_timeout) }?;
        mq::send(mqd, m, prio, Some(dl)).map(|()| 0)
    })
}

/// # Safety
/// `buf` points to `len` writable bytes; `prio` is NULL or writable.
unsafe fn receive_into(
    mqd: c_int,
    buf: *mut c_char,
    len: usize,
    prio: *mut c_uint,
    dl: Option<SystemTime>,
) -> Result<libc::ssize_t, MqError> {
    if buf.is_null() && len > 0 {
        return Err(invalid("msg_ptr"));
    }
    let (m, p) = mq::receive(mqd, len, dl)?;
    if !m.is_empty() {
        // SAFETY: `m.len() <= len` (receive checked it) and `buf` has `len` writable bytes;
        // the regions cannot overlap (`m` is ours).
        unsafe { std::ptr::copy_nonoverlapping(m.as_ptr(), buf.cast::<u8>(), m.len()) };
    }
    // SAFETY: NULL or writable, by the caller's contract.
    if let Some(out) = unsafe { prio.as_mut() } {
        *out = p;
    }
    Ok(m.len() as libc::ssize_t)
}

/// `mq_receive`: the next message of the queue into `buf`, its priority into `prio` (may be
/// NULL); returns its length, or -1 and errno (EAGAIN empty in non-blocking mode, EMSGSIZE
/// buffer too small, the message stays; EBADF; EIO).
///
/// # Safety
/// `buf` points to `len` writable bytes; `prio` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn conveyor_mq_receive(
    mqd: c_int,
    buf: *mut c_char,
    len: usize,
    prio: *mut c_uint,
) -> libc::ssize_t {
    // SAFETY: the caller's contract.
    guard(-1, || unsafe { receive_into(mqd, buf, len, prio, None) })
}

/// `mq_timedreceive`: as `conveyor_mq_receive`, waiting at most until `abs_timeout`
/// (`CLOCK_REALTIME`), then -1 and ETIMEDOUT.
///
/// # Safety
/// As `conveyor_mq_receive`; `abs_timeout` points to a `struct timespec`.
#[no_mangle]
pub unsafe extern "C" fn conveyor_mq_timedreceive(
    mqd: c_int,
    buf: *mut c_char,
    len: usize,
    prio: *mut c_uint,
    abs_timeout: *const libc::timespec,
) -> libc::ssize_t {
    guard(-1, || {
        // SAFETY: the caller's contract.
        let dl = unsafe { deadline(abs_timeout) }?;
        // SAFETY: the caller's contract.
        unsafe { receive_into(mqd, buf, len, prio, Some(dl)) }
    })
}

/// `mq_getattr`. Returns 0, or -1 and errno.
///
/// # Safety
/// `attr` points to a writable `conveyor_mq_attr`.
#[no_mangle]
pub unsafe extern "C" fn conveyor_mq_getattr(mqd: c_int, attr: *mut conveyor_mq_attr) -> c_int {
    guard(-1, || {
        let a = mq::getattr(mqd)?;
        // SAFETY: NULL or writable, by the caller's contract.
        let out = unsafe { attr.as_mut() }.ok_or_else(|| invalid("attr"))?;
        *out = a.into();
        Ok(0)
    })
}

/// `mq_setattr`: sets `O_NONBLOCK` from `newattr->mq_flags` (the rest is ignored, as in
/// POSIX); the attributes before go to `oldattr` unless it is NULL.
///
/// # Safety
/// `newattr` points to a `conveyor_mq_attr`; `oldattr` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn conveyor_mq_setattr(
    mqd: c_int,
    newattr: *const conveyor_mq_attr,
    oldattr: *mut conveyor_mq_attr,
) -> c_int {
    guard(-1, || {
        // SAFETY: NULL or readable, by the caller's contract.
        let new = unsafe { newattr.as_ref() }.ok_or_else(|| invalid("newattr"))?;
        let old = mq::setattr(mqd, Attr::from(*new))?;
        // SAFETY: NULL or writable, by the caller's contract.
        if let Some(o) = unsafe { oldattr.as_mut() } {
            *o = old.into();
        }
        Ok(0)
    })
}

/// A file descriptor that is readable (poll, select, epoll) while a message waits for the
/// queue of `mqd`, which must be open for reading. Owned by the library: do not close it.
#[no_mangle]
pub extern "C" fn conveyor_mq_fd(mqd: c_int) -> c_int {
    guard(-1, || mq::fd(mqd))
}

/// Why the last failed call of this thread failed, in words (valid until this thread's next
/// call; never NULL).
#[no_mangle]
pub extern "C" fn conveyor_mq_error() -> *const c_char {
    LAST_ERROR.with(|l| l.borrow().as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno() -> c_int {
        // SAFETY: this thread's errno.
        unsafe { *libc::__errno_location() }
    }

    #[test]
    fn a_panic_becomes_eio_and_errors_set_errno_and_say_why() {
        let r = guard(-1, || -> Result<c_int, MqError> { panic!("deliberate") });
        assert_eq!((r, errno()), (-1, libc::EIO));
        // SAFETY: conveyor_mq_error returns a NUL-terminated string.
        let why = unsafe { CStr::from_ptr(conveyor_mq_error()) };
        assert!(why.to_str().unwrap().contains("deliberate"), "{why:?}");
        assert_eq!(conveyor_mq_close(4242), -1);
        assert_eq!(errno(), libc::EBADF);
        // SAFETY: a NUL-terminated string and a NULL attr.
        let r =
            unsafe { conveyor_mq_open(c"no-slash".as_ptr(), libc::O_RDWR, 0, std::ptr::null()) };
        assert_eq!((r, errno()), (-1, libc::EINVAL));
        // SAFETY: NULL name is refused before any use.
        let r = unsafe { conveyor_mq_open(std::ptr::null(), libc::O_RDWR, 0, std::ptr::null()) };
        assert_eq!((r, errno()), (-1, libc::EINVAL));
        let past = libc::timespec {
            tv_sec: 1,
            tv_nsec: 2_000_000_000,
        };
        // SAFETY: a valid timespec.
        assert!(unsafe { deadline(&past) }.is_err());
    }
}
