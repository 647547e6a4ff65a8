//! Executors: how an invoker runs the external functions of its pipelines, unchanged.
//!
//! - `exec` ([`exec`]): one process per request, OpenFaaS's classic watchdog contract.
//! - `http` ([`http`]): a warm HTTP server, of-watchdog's http mode.
//! - `openwhisk` ([`openwhisk`]): an OpenWhisk action process, `/init` then `/run`.
//! - `lambda` ([`lambda`]): the AWS Lambda Runtime API, served to a runtime process.
//!
//! The invoker hands each request for an external function to [`FunctionHost::dispatch`],
//! which never blocks the polling thread: the request waits in its function's [`Pool`], whose
//! workers (at most the function's `concurrency`, started as needed) run it and submit the
//! completion through the engine. A worker keeps its warm process (openwhisk, lambda; http's
//! server is the pool's) between requests, and stops it once it has been idle for longer than
//! its start-up plus the function's mean execution time (DIFFUSE's policy: a warm process is
//! worth keeping only while requests come faster than that), or `keep_warm_ms` if longer.
//! Every request ends in a completion or a failure with an HTTP status: 500 when the function
//! crashed or failed, 502 when its output breaks its protocol, 504 past `timeout_ms` (the
//! process is killed). The worker then goes on with the next request.

pub mod exec;
pub mod http;
pub mod lambda;
pub mod openwhisk;
pub mod quickack;

use conveyor_core::pipeline::{ExecutorKind, External};
use conveyor_core::queue::Op;
use conveyor_dataplane::engine::{Clock, Submitter};
use conveyor_dataplane::invoker::{Executors, FunctionError, Job};
use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Where completions go: the engine in a member, a channel in tests.
pub type Sink = Arc<dyn Fn(Op) + Send + Sync>;

/// A worker with no warm process exits after this long without work.
const WORKER_IDLE_EXIT: Duration = Duration::from_secs(30);

/// Counters of one function on this invoker.
#[derive(Debug, Default)]
pub struct FunctionStats {
    pub calls: AtomicU64,
    pub failed: AtomicU64,
    pub timeouts: AtomicU64,
    /// Processes that exited while they should have been serving.
    pub crashes: AtomicU64,
    /// Processes started (exec: one per call).
    pub starts: AtomicU64,
    /// Warm processes stopped by the idle policy.
    pub reclaimed: AtomicU64,
}

impl FunctionStats {
    fn line(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "calls {}, failed {}, timeouts {}, crashes {}, processes started {}, reclaimed {}",
            g(&self.calls),
            g(&self.failed),
            g(&self.timeouts),
            g(&self.crashes),
            g(&self.starts),
            g(&self.reclaimed)
        )
    }
}

/// Start-up and execution times of a function, for the idle policy.
#[derive(Debug, Default)]
struct Times {
    bootstrap: Duration,
    /// Exponentially weighted mean of execution times.
    exec_mean: Duration,
}

/// The requests of one function and the workers that run them.
pub struct Pool {
    pub f: Arc<External>,
    jobs: Mutex<VecDeque<Job>>,
    ready: Condvar,
    /// Workers running, and how many of them wait for a job.
    workers: Mutex<(u32, u32)>,
    pub stats: FunctionStats,
    times: Mutex<Times>,
    /// The http executor's server, shared by the pool's workers.
    http: http::Shared,
    sink: Sink,
    clock: Clock,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("function", &self.f.name)
            .finish()
    }
}

impl Pool {
    fn new(f: Arc<External>, sink: Sink, clock: Clock, stop: Arc<AtomicBool>) -> Arc<Pool> {
        Arc::new(Pool {
            http: http::Shared::new(&f),
            f,
            jobs: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            workers: Mutex::new((0, 0)),
            stats: FunctionStats::default(),
            times: Mutex::new(Times::default()),
            sink,
            clock,
            stop,
        })
    }

    fn push(self: &Arc<Self>, job: Job) {
        // A new worker when none waits and the limit allows, decided under the queue's lock:
        // a worker counts itself waiting, and retires, only under it too (no job is left with
        // no worker to take it).
        let spawn = {
            let mut q = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
            q.push_back(job);
            match self.workers.lock() {
                Ok(mut w) if w.1 == 0 && w.0 < self.f.executor.concurrency => {
                    w.0 += 1;
                    true
                }
                _ => false,
            }
        };
        if spawn {
            let pool = self.clone();
            let name = format!("conveyor-fn-{}", self.f.name);
            if let Err(e) = std::thread::Builder::new()
                .name(name)
                .spawn(move || pool.worker())
            {
                tracing::error!("function {}: cannot start a worker: {e}", self.f.name);
                if let Ok(mut w) = self.workers.lock() {
                    w.0 -= 1;
                }
            }
        }
        self.ready.notify_one();
    }

    /// How long a warm process may stay idle.
    fn reclaim_after(&self) -> Duration {
        let t = self
            .times
            .lock()
            .map(|t| t.bootstrap + t.exec_mean)
            .unwrap_or_default();
        t.max(Duration::from_millis(self.f.executor.keep_warm_ms))
    }

    pub(crate) fn started(&self, bootstrap: Duration) {
        self.stats.starts.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut t) = self.times.lock() {
            t.bootstrap = bootstrap;
        }
    }

    /// The next job, or None after `wait` without one.
    fn next_job(&self, wait: Duration) -> Option<Job> {
        let deadline = Instant::now() + wait;
        let mut q = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(j) = q.pop_front() {
                return Some(j);
            }
            let now = Instant::now();
            if now >= deadline || self.stop.load(Ordering::Relaxed) {
                return None;
            }
            if let Ok(mut w) = self.workers.lock() {
                w.1 += 1;
            }
            let r = self.ready.wait_timeout(q, deadline - now);
            if let Ok(mut w) = self.workers.lock() {
                w.1 -= 1;
            }
            q = r.unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    fn worker(self: Arc<Self>) {
        let mut warm = Warm::None;
        let mut idle_since = Instant::now();
        loop {
            let wait = if warm.is_some() || self.f.executor.kind == ExecutorKind::Http {
                self.reclaim_after()
                    .saturating_sub(idle_since.elapsed())
                    .max(Duration::from_millis(1))
            } else {
                WORKER_IDLE_EXIT
            };
            let Some(job) = self.next_job(wait.min(WORKER_IDLE_EXIT)) else {
                if self.stop.load(Ordering::Relaxed) {
                    break;
                }
                let idle = idle_since.elapsed();
                if warm.is_some() && idle >= self.reclaim_after() {
                    tracing::debug!(
                        "function {}: warm process idle {} ms, reclaimed",
                        self.f.name,
                        idle.as_millis()
                    );
                    warm = Warm::None;
                    self.stats.reclaimed.fetch_add(1, Ordering::Relaxed);
                }
                if self.f.executor.kind == ExecutorKind::Http && self.http.reclaim(&self) {
                    self.stats.reclaimed.fetch_add(1, Ordering::Relaxed);
                }
                if !warm.is_some() && idle >= WORKER_IDLE_EXIT && self.retire() {
                    return;
                }
                continue;
            };
            self.stats.calls.fetch_add(1, Ordering::Relaxed);
            let t0 = self.clock.now_us();
            let started = Instant::now();
            let result = match self.f.executor.kind {
                ExecutorKind::Exec => exec::run(&self, &job),
                ExecutorKind::Http => self.http.call(&self, &job),
                ExecutorKind::Openwhisk => openwhisk::call(&self, &mut warm, &job),
                ExecutorKind::Lambda => lambda::call(&self, &mut warm, &job),
            };
            let took = started.elapsed();
            let t1 = self.clock.now_us();
            if let Err(e) = &result {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                if e.status == 504 {
                    self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!("function {}: {} {}", self.f.name, e.status, e.message);
            } else if let Ok(mut t) = self.times.lock() {
                t.exec_mean = if t.exec_mean.is_zero() {
                    took
                } else {
                    (t.exec_mean * 7 + took) / 8
                };
            }
            for op in job.finish(result, t0, t1) {
                (self.sink)(op);
            }
            idle_since = Instant::now();
        }
        // The warm process (and what goes with it) goes before the worker counts itself out:
        // `FunctionHost::stop` waits for that count.
        drop(warm);
        if let Ok(mut w) = self.workers.lock() {
            w.0 -= 1;
        }
    }

    /// Leaves the pool if no job waits (checked under the queue's lock, as `push` decides).
    fn retire(&self) -> bool {
        let q = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if !q.is_empty() {
            return false;
        }
        if let Ok(mut w) = self.workers.lock() {
            w.0 -= 1;
        }
        true
    }

    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_millis(self.f.executor.timeout_ms)
    }

    pub(crate) fn start_timeout(&self) -> Duration {
        Duration::from_millis(self.f.executor.start_timeout_ms)
    }
}

/// A worker's warm process.
#[derive(Debug)]
pub enum Warm {
    None,
    Openwhisk(openwhisk::Action),
    Lambda(lambda::Runtime),
}

impl Warm {
    fn is_some(&self) -> bool {
        !matches!(self, Warm::None)
    }
}

/// The invoker's executors: a pool per external function.
pub struct FunctionHost {
    pools: Mutex<BTreeMap<String, Arc<Pool>>>,
    sink: Sink,
    clock: Clock,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for FunctionHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionHost").finish_non_exhaustive()
    }
}

impl FunctionHost {
    pub fn new(sink: Sink, clock: Clock) -> Arc<FunctionHost> {
        Arc::new(FunctionHost {
            pools: Mutex::new(BTreeMap::new()),
            sink,
            clock,
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Completions go to the engine's submitter, set once the engine started (before any
    /// request can be assigned). One that cannot be submitted (the member stopped) is dropped
    /// with a warning: the group requeues the requests of members that left.
    pub fn for_engine(submitter: Arc<OnceLock<Submitter>>, clock: Clock) -> Arc<FunctionHost> {
        let sink: Sink = Arc::new(move |op: Op| {
            let mut waited = 0;
            let s = loop {
                if let Some(s) = submitter.get() {
                    break s;
                }
                if waited > 10_000 {
                    tracing::warn!("a function's completion found no engine to submit to");
                    return;
                }
                waited += 1;
                std::thread::sleep(Duration::from_millis(1));
            };
            if let Err(e) = s.submit(&op) {
                tracing::warn!("a function's completion was not submitted: {e}");
            }
        });
        FunctionHost::new(sink, clock)
    }

    /// The pool of `f`; a function whose executor settings changed (a pipeline update) gets a
    /// new pool, and the old one's processes are reclaimed when idle.
    pub fn pool(&self, f: &Arc<External>) -> Option<Arc<Pool>> {
        let key = format!(
            "{}\u{0}{}\u{0}{}",
            f.name,
            serde_json::to_string(&f.executor).unwrap_or_default(),
            serde_json::to_string(&f.args).unwrap_or_default()
        );
        let mut pools = self.pools.lock().ok()?;
        Some(
            pools
                .entry(key)
                .or_insert_with(|| {
                    Pool::new(f.clone(), self.sink.clone(), self.clock, self.stop.clone())
                })
                .clone(),
        )
    }

    /// Each function's counters, one line each.
    pub fn summary(&self) -> Vec<String> {
        self.pools
            .lock()
            .map(|p| {
                p.values()
                    .map(|p| {
                        format!(
                            "function {} ({}): {}",
                            p.f.name,
                            p.f.executor.kind.name(),
                            p.stats.line()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Stops the workers and every process they started, and waits (at most 2 s) for the
    /// workers to leave: each drops its warm process and what goes with it (an openwhisk
    /// action's firewall table). A worker still inside a call after that is left; its process
    /// dies with the invoker's (PR_SET_PDEATHSIG).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let pools: Vec<Arc<Pool>> = self
            .pools
            .lock()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default();
        for p in &pools {
            p.ready.notify_all();
            p.http.stop();
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let running = || {
            pools
                .iter()
                .map(|p| p.workers.lock().map(|w| w.0).unwrap_or(0))
                .sum::<u32>()
        };
        while running() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Executors for FunctionHost {
    fn dispatch(&self, job: Job) {
        match self.pool(&job.function) {
            Some(p) => p.push(job),
            None => {
                let broken = FunctionError::new(500, "the invoker's executors are broken");
                for op in job.finish(Err(broken), 0, 0) {
                    (self.sink)(op);
                }
            }
        }
    }
}

impl Drop for FunctionHost {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A function's process: its own process group, killed with everything it started when
/// dropped, and when the invoker dies.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
}

impl Proc {
    /// Starts `f`'s command with its environment and `extra` variables.
    pub fn spawn(
        f: &External,
        extra: &[(String, String)],
        stdin: Stdio,
        stdout: Stdio,
        stderr: Stdio,
    ) -> io::Result<Proc> {
        let (prog, args) = f
            .executor
            .command
            .split_first()
            .ok_or_else(|| io::Error::other("no command"))?;
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .envs(&f.executor.env)
            .envs(extra.iter().map(|(k, v)| (k, v)))
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr);
        if let Some(d) = &f.executor.dir {
            cmd.current_dir(d);
        }
        conveyor_dataplane::sys::own_group_and_die_with_parent(&mut cmd);
        let child = conveyor_dataplane::sys::spawn_from_a_lasting_thread(cmd).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start {:?}: {e}", f.executor.command.join(" ")),
            )
        })?;
        Ok(Proc { child })
    }

    /// The exit status, if it exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn kill(&mut self) {
        conveyor_dataplane::sys::kill_group(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free TCP port on loopback, for a function server to listen on. Found free, then closed
/// for the server to take: meanwhile another listener must not take it, or `wait_listening`
/// would take that one for the server (seen: an http function's requests answered by the
/// Lambda runtime API's server of the same process, which binds port 0). So the port is drawn
/// below the kernel's ephemeral range, where `bind` to port 0 never lands, and this process
/// does not hand the same port out again within `PORT_REUSE_AFTER`.
pub fn free_port() -> io::Result<u16> {
    static GIVEN: Mutex<VecDeque<(u16, std::time::Instant)>> = Mutex::new(VecDeque::new());
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (lo, hi) = (20_000u16, ephemeral_from);
    if hi <= lo + 1000 {
        // An ephemeral range that leaves no room below it: the kernel's choice.
        return Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port());
    }
    let mut given = GIVEN
        .lock()
        .map_err(|_| io::Error::other("port table poisoned"))?;
    while given
        .front()
        .is_some_and(|(_, at)| at.elapsed() > PORT_REUSE_AFTER)
    {
        given.pop_front();
    }
    let seed = std::collections::hash_map::RandomState::new();
    for attempt in 0u64..1000 {
        use std::hash::BuildHasher;
        let port = lo + (seed.hash_one(attempt) % u64::from(hi - lo)) as u16;
        if given.iter().any(|(p, _)| *p == port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push_back((port, std::time::Instant::now()));
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no free port between {lo} and {hi} on 127.0.0.1 after 1000 tries"),
    ))
}

/// How long a port [`free_port`] handed out is not handed out again (its server had that long
/// to start and take it).
const PORT_REUSE_AFTER: Duration = Duration::from_secs(60);

/// Waits until something listens on `addr`, failing early if `proc` exits.
pub fn wait_listening(addr: SocketAddr, proc: &mut Proc, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        if let Some(st) = proc.exited() {
            return Err(format!("the process exited while starting ({st})"));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "nothing listened on {addr} within {} ms (start_timeout_ms)",
                within.as_millis()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads at most `limit` bytes of `r`; more is an error naming the limit.
pub fn read_limited(r: impl Read, limit: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(limit as u64 + 1).read_to_end(&mut buf)?;
    if buf.len() > limit {
        return Err(io::Error::other(too_large(limit)));
    }
    Ok(buf)
}

/// What an output above `limit` bytes is told: the limit and the settings that make it.
pub fn too_large(limit: usize) -> String {
    format!(
        "the output is larger than {limit} bytes, what one request carries (group.max_payload: \
         raise it in the group file, with group.max_frame, up to 65000 bytes a frame)"
    )
}

/// `content-type` as `Content-Type`, as OpenFaaS's watchdog names headers.
pub fn canonical_header(name: &str) -> String {
    name.split('-')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use conveyor_core::pipeline::Pipeline;
    use conveyor_core::queue::{Effect, Meta};
    use conveyor_core::types::{MemberId, RequestId};
    use conveyor_dataplane::engine::Event;
    use conveyor_dataplane::invoker::InvokerApp;
    use std::sync::mpsc;

    /// A function's process lives as long as its invoker, not as long as the thread that
    /// started it (PR_SET_PDEATHSIG follows the forking thread: warm servers started by a
    /// pool worker were killed when the worker retired, 30 s into an idle spell).
    #[test]
    fn a_function_servers_port_is_never_one_a_bind_to_port_0_could_take_nor_given_twice() {
        let from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
            .unwrap_or(32768);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let p = free_port().unwrap();
            if from > 21_000 {
                assert!((20_000..from).contains(&p), "{p} (ephemeral from {from})");
            }
            assert!(seen.insert(p), "{p} handed out twice");
            // Free when handed out.
            drop(std::net::TcpListener::bind(("127.0.0.1", p)).unwrap());
        }
    }

    #[test]
    fn a_functions_process_outlives_the_thread_that_started_it() {
        let f = External {
            name: "sleeper".into(),
            args: Default::default(),
            executor: serde_json::from_str(r#"{"kind":"exec","command":["sleep","30"]}"#).unwrap(),
        };
        let mut p = std::thread::spawn(move || {
            Proc::spawn(&f, &[], Stdio::null(), Stdio::null(), Stdio::null()).unwrap()
        })
        .join()
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            p.exited().is_none(),
            "killed with the thread that started it"
        );
        p.kill();
        assert!(p.exited().is_some());
    }

    fn host() -> (Arc<FunctionHost>, mpsc::Receiver<Op>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let sink: Sink = Arc::new(move |op| {
            if let Ok(t) = tx.lock() {
                let _ = t.send(op);
            }
        });
        (FunctionHost::new(sink, Clock::new()), rx)
    }

    /// The next completion or failure; the queue credits given back meanwhile are added to
    /// `freed`, and a completion gives back no generic credit.
    fn next_done(rx: &mpsc::Receiver<Op>, freed: &mut u32) -> Op {
        loop {
            match rx.recv_timeout(Duration::from_secs(20)).unwrap() {
                Op::ReadyFor { credits, .. } => *freed += credits,
                op => {
                    if let Op::Complete { credits, .. } | Op::Fail { credits, .. } = &op {
                        assert_eq!(*credits, 0, "{op:?}");
                    }
                    return op;
                }
            }
        }
    }

    fn assign(app: &mut InvokerApp, p: &Pipeline, i: u64, payload: &[u8]) -> Vec<Op> {
        let mut req = p.entry_request(RequestId(i), payload.to_vec(), Meta::default());
        req.instance = i;
        let ev = Event {
            at_us: 0,
            effect: Effect::Assigned {
                consumer: MemberId(1),
                req,
            },
        };
        app.handle(ev, &Clock::new())
    }

    #[test]
    fn at_most_concurrency_run_at_once_and_every_request_completes() {
        let dir = std::env::temp_dir().join(format!("conveyor-fn-conc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        let p = Pipeline::from_json(&format!(
            r#"{{"name":"c","entry":"s","steps":{{"s":{{"function":"slow","executor":{{"kind":"exec",
              "command":["sh","-c","echo s >> {0}; sleep 0.3; echo e >> {0}; cat"],
              "concurrency":2}}}}}}}}"#,
            log.display()
        ))
        .unwrap();
        let (h, rx) = host();
        let mut freed = 0;
        let mut app = InvokerApp::new(MemberId(1), vec![p.clone()], 16, 65536).with_executors(h);
        for i in 0..6 {
            assert!(assign(&mut app, &p, i, format!("in{i}").as_bytes()).is_empty());
        }
        let mut done = Vec::new();
        for _ in 0..6 {
            match next_done(&rx, &mut freed) {
                Op::Complete { id, result, .. } => {
                    assert_eq!(result.unwrap(), format!("in{}", id.0).into_bytes());
                    done.push(id.0);
                }
                other => panic!("expected a completion, got {other:?}"),
            }
        }
        done.sort();
        assert_eq!(done, [0, 1, 2, 3, 4, 5]);
        // Each completion gives its credit back to the function's queue.
        while freed < 6 {
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(Op::ReadyFor { queue, credits, .. }) => {
                    assert_eq!(queue, p.steps["s"].queue.name);
                    freed += credits;
                }
                other => panic!("expected a credit, got {other:?}"),
            }
        }
        assert_eq!(freed, 6);
        let (mut now, mut most) = (0i32, 0i32);
        for l in std::fs::read_to_string(&log).unwrap().lines() {
            now += if l == "s" { 1 } else { -1 };
            most = most.max(now);
        }
        assert_eq!(most, 2, "two at once, never more");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_crash_and_a_timeout_fail_their_request_and_the_next_one_runs() {
        let p = Pipeline::from_json(
            r#"{"name":"b","entry":"s","steps":{"s":{"function":"moody","executor":{"kind":"exec",
              "command":["sh","-c","read x; case $x in crash) echo oops >&2; exit 7;; hang) sleep 30;; esac; echo ok $x"],
              "timeout_ms":500,"concurrency":1}}}}"#,
        )
        .unwrap();
        let (h, rx) = host();
        let mut freed = 0;
        let mut app = InvokerApp::new(MemberId(1), vec![p.clone()], 16, 65536).with_executors(h);
        for (i, input) in ["crash\n", "hang\n", "fine\n"].iter().enumerate() {
            assign(&mut app, &p, i as u64, input.as_bytes());
        }
        let mut got = BTreeMap::new();
        for _ in 0..3 {
            match next_done(&rx, &mut freed) {
                Op::Complete { id, result, .. } => {
                    got.insert(id.0, (200, String::from_utf8(result.unwrap()).unwrap()));
                }
                Op::Fail {
                    id, status, error, ..
                } => {
                    got.insert(id.0, (status, error));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got[&0].0, 500);
        assert!(
            got[&0].1.contains("exit status: 7") && got[&0].1.contains("oops"),
            "{got:?}"
        );
        assert_eq!(got[&1].0, 504);
        assert!(got[&1].1.contains("timeout of 500 ms"), "{got:?}");
        assert_eq!(got[&2], (200, "ok fine\n".to_string()));
    }

    #[test]
    fn a_real_functions_output_fans_out_and_branches_by_its_json() {
        // The function's JSON output picks the rule; its rule sends it to two steps at once.
        let p = Pipeline::from_json(
            r#"{"name":"f","entry":"s","steps":{
              "s":{"function":"decide","executor":{"kind":"exec",
                   "command":["sh","-c","read x; echo \"{\\\"kind\\\": \\\"$x\\\"}\""]},
                   "next":[{"when":{"pointer":"/kind","equals":"both"},"to":["a","b"]},
                           {"to":["b"]}]},
              "a":{"function":"echo"},"b":{"function":"echo"}}}"#,
        )
        .unwrap();
        let (h, rx) = host();
        let mut freed = 0;
        let mut app = InvokerApp::new(MemberId(1), vec![p.clone()], 16, 65536).with_executors(h);
        for (i, input) in ["both\n", "one\n"].iter().enumerate() {
            assign(&mut app, &p, i as u64, input.as_bytes());
            match next_done(&rx, &mut freed) {
                Op::Complete {
                    outputs, result, ..
                } => {
                    assert!(result.is_none(), "not terminal");
                    let steps: Vec<&str> = outputs.iter().map(|r| r.step.as_str()).collect();
                    let kind = input.trim();
                    let want: &[&str] = if kind == "both" { &["a", "b"] } else { &["b"] };
                    assert_eq!(steps, want);
                    for o in &outputs {
                        let v: serde_json::Value = serde_json::from_slice(&o.payload).unwrap();
                        assert_eq!(v["kind"], kind);
                    }
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn headers_become_classic_watchdog_variables() {
        let h = conveyor_core::queue::Http {
            method: "PUT".into(),
            path: "/a/b".into(),
            query: "x=1&y=2".into(),
            headers: vec![
                ("content-type".into(), "text/plain".into()),
                ("X-Call-Id".into(), "42".into()),
                ("bad header!".into(), "dropped".into()),
            ],
            status: 0,
        };
        let env = exec::environment(Some(&h));
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("Http_Method"), Some("PUT"));
        assert_eq!(get("Http_Path"), Some("/a/b"));
        assert_eq!(get("Http_Query"), Some("x=1&y=2"));
        assert_eq!(get("Http_Content_Type"), Some("text/plain"));
        assert_eq!(get("Http_X_Call_Id"), Some("42"));
        assert_eq!(env.len(), 5, "{env:?}");
    }
}
