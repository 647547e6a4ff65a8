//! Small system-call wrappers the engine needs (eventfd, poll, timer slack). All unsafe code of
//! the engine is here.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// An eventfd used to wake a parked polling thread.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own descriptor. A full counter (EAGAIN)
        // means a wake-up is already pending, which is all we want.
        unsafe {
            libc::write(
                self.0.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
    }

    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64; EAGAIN when nothing is pending.
        unsafe {
            libc::read(
                self.0.as_raw_fd(),
                &mut v as *mut u64 as *mut libc::c_void,
                8,
            )
        };
    }

    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// An epoll set over several descriptors: readable when any of them is (the engine parks on
/// one descriptor; the `afxdp` transport has several, a shared device's shard its own wake-up and the device's).
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub fn new(fds: &[RawFd]) -> io::Result<Epoll> {
        // SAFETY: plain epoll_create1 call; the result is checked.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("epoll_create1: {e}")));
        }
        // SAFETY: a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        for &f in fds {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: f as u64,
            };
            // SAFETY: `ev` is a valid event for the call; `f` is a live descriptor of the caller.
            if unsafe { libc::epoll_ctl(fd.as_raw_fd(), libc::EPOLL_CTL_ADD, f, &mut ev) } != 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(e.kind(), format!("epoll_ctl: {e}")));
            }
        }
        Ok(Epoll { fd })
    }
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Blocks until one of `fds` is readable or `timeout` passes; whether one is.
pub fn poll_readable(fds: &[RawFd], timeout: Duration) -> io::Result<bool> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: pfds is a live array of `len` pollfd structs; ts is a live timespec; a null
    // signal mask leaves the mask unchanged.
    let r = unsafe {
        libc::ppoll(
            pfds.as_mut_ptr(),
            pfds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(r > 0)
}

/// Sets this thread's timer slack, so that short sleeps wake on time (the default is 50 us).
pub fn set_timer_slack_ns(ns: u64) {
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument and touches no memory of ours.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0) };
}

/// CPU time the calling thread has consumed (zero if the clock cannot be read).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the valid, exclusive pointer given;
    // CLOCK_THREAD_CPUTIME_ID exists on every Linux this builds for.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Busy-works for `d` of this thread's CPU time (a function's fixed amount of work: on a
/// core shared with other threads it takes longer, as real work does).
pub fn burn_cpu(d: Duration) {
    let start = thread_cpu_time();
    let wall = std::time::Instant::now();
    while thread_cpu_time().saturating_sub(start) < d {
        // If the CPU clock cannot be read, fall back to wall time.
        if start.is_zero() && wall.elapsed() >= d {
            break;
        }
        for _ in 0..64 {
            std::hint::spin_loop();
        }
    }
}

/// Whether this process runs as root (its effective uid is 0, from `/proc/self/status`):
/// tests that mount file systems or make namespaces need it.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// CLOCK_MONOTONIC in microseconds: one clock for every process of a host, so that stamps taken
/// by different members on one host can be subtracted.
pub fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the live `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// Asks the scheduler for a short time slice for this thread (Linux 6.12+ EEVDF "custom
/// slice", `sched_attr.sched_runtime` for a normal task; no privilege needed). A polling thread
/// that yields while idle pushes its virtual deadline back by one slice per yield; with the
/// default slice (about 1.5 ms on 2 CPUs) a poller that yielded through an idle period can wait
/// milliseconds behind others when a frame arrives. Returns false where the kernel refuses.
pub fn set_sched_slice(slice: Duration) -> bool {
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        sched_policy: u32,
        sched_flags: u64,
        sched_nice: i32,
        sched_priority: u32,
        sched_runtime: u64,
        sched_deadline: u64,
        sched_period: u64,
    }
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        sched_flags: 0,
        sched_nice: 0,
        sched_priority: 0,
        sched_runtime: slice.as_nanos() as u64,
        sched_deadline: 0,
        sched_period: 0,
    };
    // SAFETY: sched_setattr reads `attr.size` bytes from a live, fully initialised struct laid
    // out as the kernel's struct sched_attr (version 1, 48 bytes); pid 0 is this thread.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    r == 0
}

/// Moves the calling thread (only it: network namespaces are per thread) into the network
/// namespace `ns` refers to (a file under `/var/run/netns`, or `/proc/thread-self/ns/net`).
/// Threads the caller creates afterwards start in that namespace too. Needs CAP_SYS_ADMIN.
pub fn set_net_namespace(ns: &std::fs::File) -> io::Result<()> {
    // SAFETY: setns only reads the descriptor, which `ns` keeps open for the call; the result
    // is checked.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes a child started by `cmd` the leader of its own process group (so [`kill_group`] ends
/// whatever it started too) and kills it if this process dies first, so that functions'
/// processes never outlive their invoker. The kernel's "parent" here is the *thread* that
/// forks: start such a command with [`spawn_from_a_lasting_thread`], or it is killed when
/// that thread ends (a pool worker retiring after 30 s idle killed the warm servers it had
/// started, whatever their keep-warm time).
pub fn own_group_and_die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    // SAFETY: the closure runs in the child between fork and exec and calls only prctl and
    // getppid, which are async-signal-safe; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the prctl: then we were reparented already.
            if libc::getppid() == 1 {
                return Err(io::Error::other("the invoker exited"));
            }
            Ok(())
        });
    }
}

/// Starts `cmd` from a thread that lives as long as this process (started at the first call,
/// in the calling thread's network namespace), so that a child set to die with its parent
/// ([`own_group_and_die_with_parent`]) dies with the process, not with the caller's thread.
pub fn spawn_from_a_lasting_thread(cmd: std::process::Command) -> io::Result<std::process::Child> {
    use std::sync::mpsc;
    type Request = (
        std::process::Command,
        mpsc::Sender<io::Result<std::process::Child>>,
    );
    static SPAWNER: std::sync::OnceLock<std::sync::Mutex<mpsc::Sender<Request>>> =
        std::sync::OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        // Never ends: the static keeps a sender.
        let _ = std::thread::Builder::new()
            .name("conveyor-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            });
        std::sync::Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    tx.lock()
        .map_err(|_| io::Error::other("the spawner's lock is poisoned"))?
        .send((cmd, reply))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| io::Error::other("the spawner thread is gone"))?
}

/// Sends SIGKILL to the process group `pid` leads (see [`own_group_and_die_with_parent`]).
pub fn kill_group(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 1 {
        return;
    }
    // SAFETY: kill takes plain integers; a negative pid names the group, and a group that is
    // already gone is an ESRCH error, ignored.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

/// A random number for this process (a joiner's nonce): from the kernel's random source, or,
/// should it be unreadable, from the clock and the process id.
pub fn random_u64() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            t ^ (u64::from(std::process::id()) << 32) ^ monotonic_us()
        }
    }
}
