//! The only unsafe code of the `shm` transport: a file mapped shared between processes, read
//! and written through bounds-checked accessors (atomics for the ring indices, plain copies for
//! frame bytes, ordered by those atomics), and the doorbell FIFO.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

/// A file mapped `MAP_SHARED`: other processes that map it see the same bytes.
pub(super) struct Region {
    ptr: NonNull<u8>,
    len: usize,
    /// The mapped file's inode (a re-created file is another inode).
    pub inode: u64,
}

// SAFETY: the mapping is plain shared memory; all access goes through the accessors below,
// which use atomics or copies, never references that outlive a call.
unsafe impl Send for Region {}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are what mmap returned; no reference into the mapping outlives
        // an accessor call.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

fn map(file: &File, len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: maps `len` bytes of a file that is at least that long; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: mmap succeeded, so the pointer is not null.
    Ok(unsafe { NonNull::new_unchecked(p.cast()) })
}

impl Region {
    /// Creates `path` afresh (a file left by an earlier run is replaced), `len` bytes of
    /// zeros, readable and writable by this user only, and maps it.
    pub fn create(path: &Path, len: usize) -> io::Result<Region> {
        let _ = std::fs::remove_file(path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        file.set_len(len as u64)?;
        let inode = file.metadata()?.ino();
        Ok(Region {
            ptr: map(&file, len)?,
            len,
            inode,
        })
    }

    /// Maps an existing file, whole.
    pub fn open(path: &Path) -> io::Result<Region> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let meta = file.metadata()?;
        let len = usize::try_from(meta.len()).map_err(|_| io::Error::other("file too large"))?;
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "empty file"));
        }
        Ok(Region {
            ptr: map(&file, len)?,
            len,
            inode: meta.ino(),
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    fn check(&self, off: usize, len: usize, align: usize) -> Option<usize> {
        let end = off.checked_add(len)?;
        (end <= self.len && off.is_multiple_of(align)).then_some(off)
    }

    /// The 8-byte atomic at `off` (8-aligned, inside the mapping).
    pub fn u64_at(&self, off: usize) -> Option<&AtomicU64> {
        let off = self.check(off, 8, 8)?;
        // SAFETY: in bounds and aligned (checked); the mapping is page-aligned so the address
        // is 8-aligned; AtomicU64 has the layout of u64 and every bit pattern is valid; the
        // reference lives no longer than `&self`, which keeps the mapping.
        Some(unsafe { &*self.ptr.as_ptr().add(off).cast::<AtomicU64>() })
    }

    /// The 4-byte atomic at `off` (4-aligned, inside the mapping).
    pub fn u32_at(&self, off: usize) -> Option<&AtomicU32> {
        let off = self.check(off, 4, 4)?;
        // SAFETY: as `u64_at`.
        Some(unsafe { &*self.ptr.as_ptr().add(off).cast::<AtomicU32>() })
    }

    /// Copies `src` into the mapping at `off`. The caller orders it with the ring's atomics
    /// (written before the producer index is published).
    pub fn write(&self, off: usize, src: &[u8]) -> bool {
        let Some(off) = self.check(off, src.len(), 1) else {
            return false;
        };
        // SAFETY: the destination range is inside the mapping (checked) and does not overlap
        // `src` (a Rust slice, not in the mapping's slot the ring protocol gives the producer).
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(off), src.len())
        };
        true
    }

    /// Copies bytes at `off` out of the mapping into `dst`. The caller orders it with the
    /// ring's atomics (read after the producer index).
    pub fn read(&self, off: usize, dst: &mut [u8]) -> bool {
        let Some(off) = self.check(off, dst.len(), 1) else {
            return false;
        };
        // SAFETY: the source range is inside the mapping (checked); `dst` is a distinct Rust
        // buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(off), dst.as_mut_ptr(), dst.len())
        };
        true
    }
}

/// A named FIFO used as a doorbell: a parked receiver polls its read end, a sender writes a
/// byte when it finds the receiver parked.
pub(super) struct Doorbell {
    fd: OwnedFd,
}

fn open_fifo(path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: `c` is a valid NUL-terminated path for the call; the result is checked.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Doorbell {
    /// Creates the FIFO at `path` afresh and opens it for reading (read-write, so that it never
    /// reports end of file when no sender has it open).
    pub fn create(path: &Path) -> io::Result<Doorbell> {
        let _ = std::fs::remove_file(path);
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        // SAFETY: `c` is a valid NUL-terminated path.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Doorbell {
            fd: open_fifo(path, libc::O_RDWR)?,
        })
    }

    /// Opens another member's doorbell for ringing.
    pub fn open(path: &Path) -> io::Result<Doorbell> {
        Ok(Doorbell {
            fd: open_fifo(path, libc::O_WRONLY)?,
        })
    }

    /// Rings: one byte; a full FIFO already holds a pending ring.
    pub fn ring(&self) {
        let b = 1u8;
        // SAFETY: writes one byte from a live u8.
        unsafe { libc::write(self.fd.as_raw_fd(), (&b as *const u8).cast(), 1) };
    }

    /// Empties the FIFO (non-blocking).
    pub fn drain(&self) {
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: reads at most 64 bytes into a live buffer.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 || (n as usize) < buf.len() {
                break;
            }
        }
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Whether `fd` is readable right now (for tests of the doorbell).
#[cfg(test)]
pub(super) fn readable_now(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one descriptor the caller owns, without waiting.
    unsafe { libc::poll(&mut p, 1, 0) };
    p.revents & libc::POLLIN != 0
}
