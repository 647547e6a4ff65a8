//! POSIX message queues on Conveyor queues: the safe core of the C client library
//! (`libconveyor.so`, header `conveyor_mq.h`; the C functions are in `ffi`).
//!
//! The calling process is a member of a group: the first `open` starts it as the member named
//! by `CONVEYOR_MEMBER` in the group file `CONVEYOR_CONFIG` (any role; it pushes and takes like
//! a trigger and an invoker), and it stays a member until the process exits (the others then
//! remove it, and what it held goes back to its queues). Queue `/name` is Conveyor queue
//! `name`.
//!
//! - `send` pushes a message through the total order and returns once it is in the queue. A
//!   full queue blocks it (`on_full = block`), or fails it with `EAGAIN` in non-blocking mode;
//!   a timed send retries until its absolute deadline (`ETIMEDOUT`).
//! - `receive` takes one message: each message goes to exactly one receiver, in the queue's
//!   order. A receive that finds none fetched asks the group for one of its queue (a credit
//!   for that queue); one that gives up (timeout, `EAGAIN`) leaves the credit, so the next
//!   message may be fetched ahead for this process: it counts in `mq_curmsgs`, and leaves a
//!   place free in the group's queue. Asking for `fd` keeps one message fetched ahead, and the
//!   fd is readable while one waits (for poll, select or epoll). Closing the last reader puts
//!   a fetched message back at the tail of its queue.
//!
//! Differences from POSIX, by design: messages are taken in the queue's order (FIFO), not by
//! priority (the priority is carried and returned); `mq_msgsize` is the group's largest
//! message, and a receive buffer only needs to hold the message it gets; queues are not
//! removed (no unlink); descriptors are not file descriptors.

pub mod ffi;

use conveyor_config::GroupConfig;
use conveyor_core::queue::{Effect, Meta, OnFull, Op, Order, QueueSpec, RejectReason, Request};
use conveyor_core::shard::{ShardId, ShardMap};
use conveyor_core::types::{MemberId, RequestId};
use conveyor_dataplane::engine::EngineHandle;
use conveyor_dataplane::engine::Event;
use conveyor_dataplane::sys::EventFd;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// Priorities are below this, as POSIX's `MQ_PRIO_MAX` on Linux.
pub const PRIO_MAX: u32 = 32768;
/// The capacity of a queue created without attributes (Linux's default `msg_max`).
pub const DEFAULT_MAXMSG: u32 = 10;

/// A failure: the errno to set, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqError {
    pub errno: i32,
    pub message: String,
}

fn fail<T>(errno: i32, message: impl Into<String>) -> Result<T, MqError> {
    Err(MqError {
        errno,
        message: message.into(),
    })
}

/// `struct mq_attr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attr {
    pub flags: i64,
    pub maxmsg: i64,
    pub msgsize: i64,
    pub curmsgs: i64,
}

/// What became of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Pending,
    Blocked,
    Accepted,
    Rejected(RejectReason),
}

/// This process's share of one queue.
#[derive(Debug)]
struct Local {
    /// Descriptors open for reading.
    readers: usize,
    /// A credit for this queue is out in the group.
    credit_out: bool,
    /// Keep a message fetched ahead (someone polls the fd).
    prefetch: bool,
    /// Messages assigned to this member and not yet received, with the shard that assigned
    /// each (where it is taken or put back).
    fetched: VecDeque<(usize, Request)>,
    /// Readable while `fetched` is not empty.
    ready: Arc<EventFd>,
}

#[derive(Debug, Default)]
struct State {
    fates: HashMap<RequestId, Fate>,
    queues: HashMap<String, Local>,
    stopped: Option<String>,
}

/// The process's member: of each shard, in a sharded group (a queue is then pushed to, and
/// asked of, the shard owning it by the newest map every shard applied).
#[derive(Debug)]
struct Client {
    /// By shard (one without shards).
    handles: Vec<EngineHandle>,
    /// When the map was last read, and the map routed by.
    map: Mutex<(u64, ShardMap)>,
    me: MemberId,
    next_id: AtomicU64,
    st: Mutex<State>,
    changed: Condvar,
    /// The largest message one push carries.
    msgsize: usize,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One open descriptor.
#[derive(Debug, Clone)]
struct Desc {
    queue: String,
    read: bool,
    write: bool,
    nonblock: bool,
}

static CLIENT: OnceLock<Result<Arc<Client>, MqError>> = OnceLock::new();
static DESCS: Mutex<Vec<Option<Desc>>> = Mutex::new(Vec::new());

fn descs() -> MutexGuard<'static, Vec<Option<Desc>>> {
    DESCS.lock().unwrap_or_else(|e| e.into_inner())
}

fn client() -> Result<Arc<Client>, MqError> {
    CLIENT.get_or_init(|| start().map(Arc::new)).clone()
}

/// Starts this process's member from `CONVEYOR_CONFIG` and `CONVEYOR_MEMBER`.
fn start() -> Result<Client, MqError> {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
    let (Some(path), Some(member)) = (
        std::env::var_os("CONVEYOR_CONFIG"),
        std::env::var("CONVEYOR_MEMBER").ok(),
    ) else {
        return fail(
            libc::ENOENT,
            "set CONVEYOR_CONFIG to the group file and CONVEYOR_MEMBER to this process's member",
        );
    };
    start_member(std::path::Path::new(&path), &member)
}

/// Starts member `member` of the group file at `path`: its member of every shard, with the
/// process's forwarders between them, in a sharded group.
fn start_member(path: &std::path::Path, member: &str) -> Result<Client, MqError> {
    let cfg = GroupConfig::load(path).map_err(|e| MqError {
        errno: libc::EINVAL,
        message: e.to_string(),
    })?;
    let idx = cfg.member_index(member).map_err(|e| MqError {
        errno: libc::EINVAL,
        message: e.to_string(),
    })?;
    let mut handles = Vec::new();
    let mut me = conveyor_core::types::MemberId(idx as u16);
    let mut max_payload = usize::MAX;
    for shard in 0..cfg.shard_count() {
        let scfg = cfg.for_shard(shard);
        let mut ecfg = scfg.engine_config(idx);
        // This library takes only delivered assignments (not the speculation's effects).
        ecfg.speculate = false;
        // Nor does it push again what a removal kept from the order: unless the group file
        // says otherwise, its member stops when removed (its calls then fail).
        ecfg.rejoin = cfg.file.members[idx].rejoin.unwrap_or(false);
        // A medium this build lacks (the library is built without DPDK, libibverbs and
        // libbpf) is said by name here.
        let opened =
            conveyor_dataplane::transport::open(&scfg.transport_spec(idx)).map_err(|e| {
                MqError {
                    errno: libc::EIO,
                    message: e.to_string(),
                }
            })?;
        let startup = ecfg.startup_timeout;
        max_payload = max_payload.min(ecfg.proto.max_payload);
        me = ecfg.me;
        let handle = EngineHandle::start(
            ecfg,
            opened.transport,
            conveyor_dataplane::engine::Clock::new(),
        )
        .map_err(|e| MqError {
            errno: libc::EIO,
            message: format!("member {member}: {e}"),
        })?;
        handle.wait_ready(startup).map_err(|e| MqError {
            errno: libc::EIO,
            message: format!("member {member}, shard {shard}: {e}"),
        })?;
        handles.push(handle);
    }
    let map = cfg.shard_map();
    if handles.len() > 1 {
        // The file's map in every shard (a shard that has it, or a newer one, ignores it),
        // and this process's forwarders, for as long as it lives.
        conveyor_dataplane::shard::submit_map(&handles, &map).map_err(|e| MqError {
            errno: libc::EIO,
            message: e.to_string(),
        })?;
        let members: Vec<conveyor_dataplane::shard::ShardMember> = handles
            .iter()
            .enumerate()
            .map(|(s, h)| conveyor_dataplane::shard::ShardMember {
                shard: ShardId(s as u16),
                me,
                probe: h.probe(),
                submitter: h.submitter(),
            })
            .collect();
        let cfg = conveyor_core::shard::ForwarderConfig {
            resend_after: Duration::from_millis(20),
            ..Default::default()
        };
        let _ = std::thread::Builder::new()
            .name("conveyor-mq-fwd".into())
            .spawn(move || {
                static NEVER: std::sync::atomic::AtomicBool =
                    std::sync::atomic::AtomicBool::new(false);
                conveyor_dataplane::shard::Forwarders::new(members, cfg).run(
                    &conveyor_dataplane::engine::Clock::new(),
                    Duration::from_millis(1),
                    &NEVER,
                )
            });
    }
    // The largest payload: what one push carries once its own fields are encoded.
    let probe = Op::Push {
        pusher: me,
        req: Request {
            id: RequestId(u64::MAX),
            instance: u64::MAX,
            step: format!("p{}", PRIO_MAX - 1),
            queue: "x".repeat(64),
            payload: Vec::new(),
            meta: Meta {
                sent_us: u64::MAX,
                exec_us: u64::MAX,
                hops: u16::MAX,
                submitted_us: u64::MAX,
                order_us: u64::MAX,
                handoff_us: u64::MAX,
                origin_shard: Some(conveyor_core::shard::ShardId(u16::MAX)),
            },
            http: None,
        },
    };
    let msgsize = max_payload.saturating_sub(probe.encode().len() + 16);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1);
    let c = Client {
        handles,
        map: Mutex::new((0, map)),
        me,
        // Unique across restarts of this member.
        next_id: AtomicU64::new(now),
        st: Mutex::new(State::default()),
        changed: Condvar::new(),
        msgsize,
    };
    Ok(c)
}

/// Starts the thread that reads the member's events (once).
fn events_thread(c: &Arc<Client>) {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        for shard in 0..c.handles.len() {
            let c = c.clone();
            let _ = std::thread::Builder::new()
                .name(format!("conveyor-mq-{shard}"))
                .spawn(move || c.events(shard));
        }
    });
}

impl Client {
    /// Reads shard `shard`'s events.
    fn events(&self, shard: usize) {
        let handle = &self.handles[shard];
        loop {
            let Some(Event { effect, .. }) = handle.next_event(Duration::from_millis(100)) else {
                if handle.is_finished() {
                    lock(&self.st).stopped = Some(handle.status());
                    self.changed.notify_all();
                    return;
                }
                continue;
            };
            let mut st = lock(&self.st);
            match effect {
                Effect::Accepted { id, .. } | Effect::Admitted { id, .. } => {
                    st.fates.insert(id, Fate::Accepted);
                }
                Effect::Blocked { id, .. } => {
                    st.fates.insert(id, Fate::Blocked);
                }
                Effect::Rejected { id, reason, .. } => {
                    st.fates.insert(id, Fate::Rejected(reason));
                }
                Effect::Assigned { consumer, req } if consumer == self.me => {
                    let reading = match st.queues.get_mut(&req.queue) {
                        Some(l) => {
                            l.credit_out = false;
                            l.readers > 0
                        }
                        None => false,
                    };
                    if reading {
                        if let Some(l) = st.queues.get_mut(&req.queue) {
                            l.fetched.push_back((shard, req));
                            l.ready.wake();
                        }
                    } else {
                        // Nobody reads it here any more: back to the tail of its queue.
                        drop(st);
                        self.put_back(shard, req);
                        continue;
                    }
                }
                Effect::Shutdown { .. } => {
                    st.stopped = Some("the group was shut down".into());
                }
                _ => continue,
            }
            drop(st);
            self.changed.notify_all();
        }
    }

    /// Completes a fetched message (assigned by shard `shard`) with itself as the
    /// continuation: it goes back to its queue.
    fn put_back(&self, shard: usize, req: Request) {
        let mut again = req.clone();
        again.instance = 0;
        let _ = self.handles[shard].submit(&Op::Complete {
            consumer: self.me,
            id: req.id,
            instance: req.instance,
            step: req.step,
            outputs: vec![again],
            result: None,
            reply: None,
            meta: req.meta,
            credits: 0,
        });
    }

    /// Submits `op` to shard `shard`.
    fn submit_to(&self, shard: usize, op: &Op) -> Result<(), MqError> {
        self.handles[shard].submit(op).map_err(|e| MqError {
            errno: libc::EIO,
            message: e.to_string(),
        })
    }

    /// The shard owning `queue` (0 without shards), by the newest map every shard applied
    /// (read at most a hundred times a second). When that map changes, the credits out for
    /// queues are asked again (in their owner now): one left in a shard no longer owning its
    /// queue finds nothing there.
    fn owner(&self, queue: &str) -> usize {
        if self.handles.len() < 2 {
            return 0;
        }
        let changed = {
            let Ok(mut m) = self.map.lock() else {
                return 0;
            };
            let now = self.handles[0].clock().now_us();
            let mut changed = false;
            if now >= m.0 + 10_000 {
                m.0 = now;
                let probes = self.handles.iter().map(|h| h.probe());
                if let Some(newer) = conveyor_dataplane::shard::applied_map(probes)
                    .filter(|x| x.version > m.1.version)
                {
                    m.1 = newer;
                    changed = true;
                }
            }
            let k = usize::from(m.1.owner(queue).0).min(self.handles.len() - 1);
            (changed, k)
        };
        if changed.0 {
            if let Ok(mut st) = self.st.try_lock() {
                for l in st.queues.values_mut() {
                    l.credit_out = false;
                }
            }
        }
        changed.1
    }

    /// Asks for one message of `queue` if none is fetched or asked for.
    fn want(&self, st: &mut State, queue: &str) -> Result<(), MqError> {
        let Some(l) = st.queues.get_mut(queue) else {
            return Ok(());
        };
        if l.readers > 0 && !l.credit_out && l.fetched.is_empty() {
            l.credit_out = true;
            self.submit_to(
                self.owner(queue),
                &Op::ReadyFor {
                    consumer: self.me,
                    queue: queue.to_string(),
                    credits: 1,
                },
            )?;
        }
        Ok(())
    }

    fn spec(&self, queue: &str) -> Option<(QueueSpec, usize)> {
        let live = self.handles[self.owner(queue)].probe().live();
        let i = live.specs.iter().position(|s| s.name == queue)?;
        let depth = live
            .queues
            .iter()
            .find(|(n, _)| n == queue)
            .map(|(_, d)| *d)
            .unwrap_or(0);
        Some((live.specs[i].clone(), depth))
    }

    /// The queue's settings as the group has them, waiting up to `within` for them to show
    /// (they are published every 200 ms).
    fn wait_spec(&self, queue: &str, within: Duration) -> Option<(QueueSpec, usize)> {
        let until = Instant::now() + within;
        loop {
            if let Some(s) = self.spec(queue) {
                return Some(s);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the fate of push `id` (not `Pending`, and not `Blocked` unless `blocked_ok`).
    fn fate(&self, id: RequestId, deadline: Option<Instant>) -> Result<Fate, MqError> {
        let mut st = lock(&self.st);
        loop {
            match st.fates.get(&id).copied().unwrap_or(Fate::Pending) {
                Fate::Pending | Fate::Blocked => {}
                f => {
                    st.fates.remove(&id);
                    return Ok(f);
                }
            }
            if let Some(why) = &st.stopped {
                return fail(libc::EIO, format!("the member stopped: {why}"));
            }
            let wait = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(w) => w,
                    None => return fail(libc::ETIMEDOUT, "timed out"),
                },
                None => Duration::from_millis(100),
            };
            st = self
                .changed
                .wait_timeout(st, wait)
                .map(|r| r.0)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

fn queue_name(name: &str) -> Result<String, MqError> {
    let Some(rest) = name.strip_prefix('/') else {
        return fail(
            libc::EINVAL,
            format!("{name:?}: a queue name starts with '/'"),
        );
    };
    if rest.len() > 64 {
        return fail(
            libc::ENAMETOOLONG,
            format!("{name:?}: at most 64 characters after '/'"),
        );
    }
    if rest.is_empty()
        || !rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return fail(
            libc::EINVAL,
            format!("{name:?}: expected '/' and 1 to 64 characters of [A-Za-z0-9._-]"),
        );
    }
    Ok(rest.to_string())
}

fn desc(mqd: i32) -> Result<Desc, MqError> {
    usize::try_from(mqd)
        .ok()
        .and_then(|i| descs().get(i).cloned().flatten())
        .ok_or(MqError {
            errno: libc::EBADF,
            message: format!("{mqd} is not an open queue descriptor"),
        })
}

/// `mq_open`: `oflag` is `O_RDONLY`, `O_WRONLY` or `O_RDWR`, with `O_CREAT`, `O_EXCL` and
/// `O_NONBLOCK`; `attr` (with `O_CREAT`) sets the new queue's capacity (`maxmsg`).
pub fn open(name: &str, oflag: i32, attr: Option<Attr>) -> Result<i32, MqError> {
    let queue = queue_name(name)?;
    let (read, write) = match oflag & libc::O_ACCMODE {
        libc::O_RDONLY => (true, false),
        libc::O_WRONLY => (false, true),
        libc::O_RDWR => (true, true),
        _ => return fail(libc::EINVAL, "oflag: O_RDONLY, O_WRONLY or O_RDWR"),
    };
    let c = client()?;
    events_thread(&c);
    let create = oflag & libc::O_CREAT != 0;
    let exists = c.spec(&queue).is_some();
    if create && oflag & libc::O_EXCL != 0 && exists {
        return fail(libc::EEXIST, format!("{name} exists"));
    }
    if create && !exists {
        let maxmsg = match attr {
            Some(a) if a.maxmsg <= 0 || a.maxmsg > i64::from(u32::MAX) => {
                return fail(libc::EINVAL, "attr.mq_maxmsg: 1 or more")
            }
            Some(a) if a.msgsize <= 0 || a.msgsize > c.msgsize as i64 => {
                return fail(
                    libc::EINVAL,
                    format!(
                        "attr.mq_msgsize: 1 to {}, the group's largest message",
                        c.msgsize
                    ),
                )
            }
            Some(a) => a.maxmsg as u32,
            None => DEFAULT_MAXMSG,
        };
        // In every shard: the one owning it takes its messages; another holds its settings
        // for when the map gives it the queue.
        for shard in 0..c.handles.len() {
            c.submit_to(
                shard,
                &Op::Create(QueueSpec {
                    name: queue.clone(),
                    capacity: maxmsg,
                    order: Order::Fifo,
                    on_full: OnFull::Block,
                    durability: Default::default(),
                }),
            )?;
        }
    }
    // A queue just created (here or by another member) shows within a publication.
    let within = if create {
        Duration::from_secs(5)
    } else {
        Duration::from_millis(250)
    };
    if c.wait_spec(&queue, within).is_none() {
        return fail(libc::ENOENT, format!("no queue {name}"));
    }
    {
        let mut st = lock(&c.st);
        let ready = match st.queues.get(&queue) {
            Some(l) => l.ready.clone(),
            None => Arc::new(EventFd::new().map_err(|e| MqError {
                errno: libc::EMFILE,
                message: format!("eventfd: {e}"),
            })?),
        };
        let l = st.queues.entry(queue.clone()).or_insert(Local {
            readers: 0,
            credit_out: false,
            prefetch: false,
            fetched: VecDeque::new(),
            ready,
        });
        if read {
            l.readers += 1;
        }
    }
    let d = Desc {
        queue,
        read,
        write,
        nonblock: oflag & libc::O_NONBLOCK != 0,
    };
    let mut table = descs();
    let i = match table.iter().position(Option::is_none) {
        Some(i) => {
            table[i] = Some(d);
            i
        }
        None => {
            table.push(Some(d));
            table.len() - 1
        }
    };
    i32::try_from(i).or_else(|_| fail(libc::EMFILE, "too many open descriptors"))
}

/// `mq_close`.
pub fn close(mqd: i32) -> Result<(), MqError> {
    let d = {
        let mut table = descs();
        let slot = usize::try_from(mqd)
            .ok()
            .and_then(|i| table.get_mut(i))
            .filter(|s| s.is_some());
        match slot {
            Some(s) => s.take(),
            None => None,
        }
    }
    .ok_or(MqError {
        errno: libc::EBADF,
        message: format!("{mqd} is not an open queue descriptor"),
    })?;
    if d.read {
        let c = client()?;
        let back: Vec<(usize, Request)> = {
            let mut st = lock(&c.st);
            match st.queues.get_mut(&d.queue) {
                Some(l) => {
                    l.readers = l.readers.saturating_sub(1);
                    if l.readers == 0 {
                        l.prefetch = false;
                        l.ready.drain();
                        l.fetched.drain(..).collect()
                    } else {
                        Vec::new()
                    }
                }
                None => Vec::new(),
            }
        };
        for (shard, r) in back {
            c.put_back(shard, r);
        }
    }
    Ok(())
}

/// `mq_send` / `mq_timedsend` (`deadline`: an absolute `CLOCK_REALTIME` time).
pub fn send(mqd: i32, msg: &[u8], prio: u32, deadline: Option<SystemTime>) -> Result<(), MqError> {
    let d = desc(mqd)?;
    if !d.write {
        return fail(libc::EBADF, "the descriptor is not open for writing");
    }
    if prio >= PRIO_MAX {
        return fail(libc::EINVAL, format!("msg_prio: below {PRIO_MAX}"));
    }
    let c = client()?;
    if msg.len() > c.msgsize {
        return fail(
            libc::EMSGSIZE,
            format!("{} bytes; the largest message is {}", msg.len(), c.msgsize),
        );
    }
    let deadline = deadline.map(instant_of);
    let mut backoff = Duration::from_millis(1);
    loop {
        let id = RequestId::new(c.me, c.next_id.fetch_add(1, Ordering::Relaxed));
        let req = Request {
            id,
            instance: 0,
            step: format!("p{prio}"),
            queue: d.queue.clone(),
            payload: msg.to_vec(),
            meta: Meta::default(),
            http: None,
        };
        // A blocking send without a deadline waits in the group's order for room; the others
        // must not leave a push behind them, so they are refused when the queue is full.
        let wait_in_group = !d.nonblock && deadline.is_none();
        c.submit_to(
            c.owner(&d.queue),
            &if wait_in_group {
                Op::Push { pusher: c.me, req }
            } else {
                Op::TryPush { pusher: c.me, req }
            },
        )?;
        match c.fate(id, None)? {
            Fate::Accepted => return Ok(()),
            Fate::Rejected(RejectReason::Full) if d.nonblock => {
                return fail(libc::EAGAIN, "the queue is full")
            }
            Fate::Rejected(RejectReason::Full) => {
                // Full (a timed send, or a queue whose policy rejects): try again until the
                // deadline.
                if let Some(dl) = deadline {
                    let now = Instant::now();
                    if now >= dl {
                        return fail(libc::ETIMEDOUT, "the queue stayed full");
                    }
                    std::thread::sleep(backoff.min(dl - now));
                } else {
                    std::thread::sleep(backoff);
                }
                backoff = (backoff * 2).min(Duration::from_millis(20));
            }
            Fate::Rejected(RejectReason::DisksFull) => {
                return fail(
                    libc::EAGAIN,
                    "the members' disks do not take the queue's log",
                )
            }
            Fate::Rejected(_) => return fail(libc::EBADF, "the queue no longer exists"),
            Fate::Pending | Fate::Blocked => return fail(libc::EIO, "unreachable fate"),
        }
    }
}

/// `mq_receive` / `mq_timedreceive`: the message and its priority. A buffer of `capacity`
/// bytes too small for the next message is `EMSGSIZE`, and the message stays.
pub fn receive(
    mqd: i32,
    capacity: usize,
    deadline: Option<SystemTime>,
) -> Result<(Vec<u8>, u32), MqError> {
    let d = desc(mqd)?;
    if !d.read {
        return fail(libc::EBADF, "the descriptor is not open for reading");
    }
    let c = client()?;
    let deadline = deadline.map(instant_of);
    let mut st = lock(&c.st);
    loop {
        let Some(l) = st.queues.get_mut(&d.queue) else {
            return fail(libc::EBADF, "the queue is not open here");
        };
        if let Some((_, next)) = l.fetched.front() {
            if next.payload.len() > capacity {
                return fail(
                    libc::EMSGSIZE,
                    format!(
                        "the message has {} bytes, the buffer {capacity}",
                        next.payload.len()
                    ),
                );
            }
            let (shard, req) = l.fetched.pop_front().ok_or(MqError {
                errno: libc::EIO,
                message: "no message".into(),
            })?;
            if l.fetched.is_empty() {
                l.ready.drain();
            }
            if l.prefetch {
                c.want(&mut st, &d.queue)?;
            }
            drop(st);
            // Taken: it leaves the in-flight set of the shard that assigned it.
            c.submit_to(
                shard,
                &Op::Complete {
                    consumer: c.me,
                    id: req.id,
                    instance: req.instance,
                    step: req.step.clone(),
                    outputs: Vec::new(),
                    result: None,
                    reply: None,
                    meta: req.meta,
                    credits: 0,
                },
            )?;
            let prio = req
                .step
                .strip_prefix('p')
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            return Ok((req.payload, prio));
        }
        c.want(&mut st, &d.queue)?;
        if let Some(why) = &st.stopped {
            return fail(libc::EIO, format!("the member stopped: {why}"));
        }
        if d.nonblock {
            return fail(libc::EAGAIN, "no message");
        }
        let wait = match deadline {
            Some(dl) => match dl.checked_duration_since(Instant::now()) {
                Some(w) if !w.is_zero() => w,
                _ => return fail(libc::ETIMEDOUT, "no message before the deadline"),
            },
            None => Duration::from_millis(100),
        };
        st = c
            .changed
            .wait_timeout(st, wait)
            .map(|r| r.0)
            .unwrap_or_else(|e| e.into_inner().0);
    }
}

/// `mq_getattr`.
pub fn getattr(mqd: i32) -> Result<Attr, MqError> {
    let d = desc(mqd)?;
    let c = client()?;
    let (spec, depth) = c.spec(&d.queue).ok_or(MqError {
        errno: libc::EBADF,
        message: "the queue no longer exists".into(),
    })?;
    let fetched = lock(&c.st)
        .queues
        .get(&d.queue)
        .map(|l| l.fetched.len())
        .unwrap_or(0);
    Ok(Attr {
        flags: if d.nonblock {
            i64::from(libc::O_NONBLOCK)
        } else {
            0
        },
        maxmsg: i64::from(spec.capacity),
        msgsize: c.msgsize as i64,
        curmsgs: (depth + fetched) as i64,
    })
}

/// `mq_setattr`: only `O_NONBLOCK` in `flags` changes; returns the attributes before.
pub fn setattr(mqd: i32, new: Attr) -> Result<Attr, MqError> {
    let old = getattr(mqd)?;
    if new.flags & !i64::from(libc::O_NONBLOCK) != 0 {
        return fail(libc::EINVAL, "attr.mq_flags: only O_NONBLOCK");
    }
    let mut table = descs();
    if let Some(Some(d)) = usize::try_from(mqd).ok().and_then(|i| table.get_mut(i)) {
        d.nonblock = new.flags & i64::from(libc::O_NONBLOCK) != 0;
    }
    Ok(old)
}

/// A file descriptor readable while a message waits for this descriptor's queue.
pub fn fd(mqd: i32) -> Result<i32, MqError> {
    let d = desc(mqd)?;
    if !d.read {
        return fail(libc::EBADF, "the descriptor is not open for reading");
    }
    let c = client()?;
    let mut st = lock(&c.st);
    let fd = match st.queues.get_mut(&d.queue) {
        Some(l) => {
            l.prefetch = true;
            l.ready.raw()
        }
        None => return fail(libc::EBADF, "the queue is not open here"),
    };
    c.want(&mut st, &d.queue)?;
    Ok(fd)
}

/// The `Instant` of an absolute wall-clock time (a time past is now).
fn instant_of(t: SystemTime) -> Instant {
    let now_wall = SystemTime::now();
    let now = Instant::now();
    match t.duration_since(now_wall) {
        Ok(ahead) => now + ahead,
        Err(_) => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A group file asking for a medium the library was built without is refused by name
    /// (built on its own, the library has neither rdma nor dpdk nor afxdp); one it has fails
    /// only for want of the device. rdma is the medium whose absence is cheap to meet either
    /// way: without a device, opening it fails at once.
    #[test]
    fn a_medium_not_built_in_is_named_with_its_feature() {
        let dir = std::env::temp_dir().join(format!("conveyor-mq-media-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("g.toml");
        std::fs::write(
            &path,
            "[group]\nname = \"m\"\nkey = \"0000000000000000000000000000000000000000000000000000000000000001\"\ntransport = \"rdma\"\nstartup_timeout_s = 1\n\n[[member]]\nname = \"a\"\naddress = \"127.0.0.1:7791\"\nrole = \"invoker\"\n\n[[member]]\nname = \"b\"\naddress = \"127.0.0.1:7792\"\nrole = \"invoker\"\n",
        )
        .unwrap();
        let Err(e) = start_member(&path, "a") else {
            panic!("an rdma member started on a machine without an RDMA device");
        };
        assert_eq!(e.errno, libc::EIO, "{}", e.message);
        if conveyor_dataplane::transport::open::missing_feature("rdma").is_some() {
            assert!(
                e.message
                    .contains("the rdma transport is not built into this binary")
                    && e.message.contains("`rdma`"),
                "{}",
                e.message
            );
        } else {
            assert!(
                e.message.contains("starting the rdma transport"),
                "{}",
                e.message
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
