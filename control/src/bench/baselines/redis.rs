//! The Redis Streams baseline of `conveyor bench --backend redis`: DIFFUSE's middleware
//! abstraction (section 4.1: create a channel, send, take, acknowledge; see `middleware`) on
//! Redis Streams, as the paper compares it. One stream per pipeline stage with one consumer
//! group (`XGROUP CREATE ... MKSTREAM`); the trigger sends with `XADD`; every invoker takes
//! from all stages with `XREADGROUP ... BLOCK` (the first to ask gets the entry: Redis's own
//! load balancing), runs the function, then sends the continuation to the next stage and
//! acknowledges (`XADD` and `XACK`, pipelined in one round trip). The last stage posts to a
//! results stream the collector reads.
//!
//! The bench starts and stops a real `redis-server` (Debian's package) itself, without
//! persistence by default (as DIFFUSE ran it: in memory), or with its append-only file and
//! the `appendfsync` policy `--redis-aof` names (checked with `CONFIG GET` once it answers),
//! on loopback or, with `--hosts netns`, inside a namespace host of its own. The trigger, the collector and the invokers are threads of the
//! bench process (with `--hosts netns`, each inside its own namespace host), each with its
//! own connection.

use crate::bench::baselines::{Connection, Dest, Middleware, Place, Record, Role, Taken};
use anyhow::{bail, Context, Result};
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{Commands, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Where `redis-server` is, or a clear error (checked before any run starts).
pub fn find_server() -> Result<PathBuf> {
    if let Some(p) = crate::bench::baselines::find_program("redis-server", None) {
        return Ok(p);
    }
    bail!("--backend redis: redis-server is not installed (Debian: apt-get install redis-server); nothing was run")
}

/// A `redis-server` this process started; stopped when dropped.
pub struct RedisServer {
    child: Child,
    place: Place,
    pub port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts `redis-server` at `place` on `port` (0: a free port), in memory only (`aof`
    /// "off") or with its append-only file synced as `aof` says (`always`, `everysec`, `no`),
    /// and waits until it answers. A port in use is an error before anything runs.
    pub fn start(server: &Path, place: &Place, port: u16, aof: &str) -> Result<RedisServer> {
        let port = place.port(port, "--redis-port")?;
        let dir =
            std::env::temp_dir().join(format!("conveyor-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let child = place
            .command(server)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                &place.addr,
                "--save",
                "",
                "--appendonly",
                if aof == "off" { "no" } else { "yes" },
                "--appendfsync",
                if aof == "off" { "everysec" } else { aof },
                "--protected-mode",
                if aof == "off" { "no" } else { "yes" },
                "--dir",
                &dir.to_string_lossy(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", server.display()))?;
        let mut s = RedisServer {
            child,
            place: place.clone(),
            port,
            dir,
        };
        let t = Instant::now();
        loop {
            if let Ok(Some(st)) = s.child.try_wait() {
                bail!("redis-server exited at once ({st}) on port {port}");
            }
            let client = s.client()?;
            let ping = s.place.within(|| -> Result<String> {
                let mut c = client.get_connection()?;
                Ok(redis::cmd("PING").query::<String>(&mut c)?)
            });
            if ping.is_ok() {
                s.check_aof(aof)?;
                return Ok(s);
            }
            if t.elapsed() > Duration::from_secs(10) {
                bail!("redis-server on port {port} did not answer within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server runs with the persistence asked for (`CONFIG GET`), or an error.
    fn check_aof(&self, aof: &str) -> Result<()> {
        let client = self.client()?;
        let (appendonly, appendfsync) = self.place.within(|| -> Result<(String, String)> {
            let mut c = client.get_connection()?;
            let get = |c: &mut redis::Connection, key: &str| -> Result<String> {
                let v: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(key).query(c)?;
                Ok(v.get(1).cloned().unwrap_or_default())
            };
            Ok((get(&mut c, "appendonly")?, get(&mut c, "appendfsync")?))
        })?;
        let want_on = aof != "off";
        if (appendonly == "yes") != want_on || (want_on && appendfsync != aof) {
            bail!("redis-server runs with appendonly {appendonly}, appendfsync {appendfsync}; --redis-aof {aof} asked otherwise");
        }
        Ok(())
    }

    fn client(&self) -> Result<redis::Client> {
        Ok(redis::Client::open(format!(
            "redis://{}:{}/",
            self.place.addr, self.port
        ))?)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `--redis-url`: redis://HOST:PORT on a loopback address.
pub fn check_url(url: &str) -> Result<()> {
    let addr = url
        .strip_prefix("redis://")
        .map(|r| r.trim_end_matches('/'))
        .and_then(|r| r.rsplit('@').next())
        .and_then(|r| r.parse::<std::net::SocketAddr>().ok());
    match addr {
        Some(a) if a.ip().is_loopback() => Ok(()),
        Some(a) => bail!("--redis-url {url}: {a} is not a loopback address (the bench's hosts are this host); nothing was run"),
        None => bail!("--redis-url {url:?}: expected redis://HOST:PORT with an IP address; nothing was run"),
    }
}

/// A Redis-protocol server the bench did not start as a `redis-server`: one given with
/// `--redis-url`, or a Conveyor group serving the Redis protocol (`--backend resp`: three
/// members, processes on loopback over UDP, each serving RESP; the trigger and the collector
/// talk to the first, invoker i to member i mod 3).
pub struct RespTarget {
    name: &'static str,
    urls: Vec<String>,
    group: Option<(crate::bench::group::Members, PathBuf)>,
}

impl RespTarget {
    pub fn url(url: &str) -> RespTarget {
        RespTarget {
            name: "redis",
            urls: vec![url.to_string()],
            group: None,
        }
    }

    /// Starts a Conveyor group of three members serving RESP and waits until each answers.
    pub fn conveyor_group() -> Result<RespTarget> {
        let dir = std::env::temp_dir().join(format!("conveyor-resp-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let udp = crate::bench::group::free_udp_ports(3)?;
        let tcp: Vec<u16> = (0..3)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .map(|a| a.port())
            })
            .collect::<std::io::Result<_>>()?;
        let mut toml = format!(
            "# Written by conveyor bench --backend resp.\n[group]\nname = \"resp\"\nkey = \"{}\"\nstartup_timeout_s = 20\n",
            crate::config::fresh_key()?
        );
        for i in 0..3 {
            toml.push_str(&format!(
                "\n[[member]]\nname = \"m{i}\"\naddress = \"127.0.0.1:{}\"\nrole = \"trigger\"\n[member.resp]\naddress = \"127.0.0.1:{}\"\n",
                udp[i], tcp[i]
            ));
        }
        std::fs::write(dir.join("conveyor.toml"), toml)?;
        let exe = std::env::current_exe().context("locating the conveyor binary")?;
        let mut members = crate::bench::group::Members {
            children: Vec::new(),
        };
        for i in 0..3 {
            let name = format!("m{i}");
            let mut cmd = std::process::Command::new(&exe);
            crate::bench::group::node_command(&mut cmd, &dir, &name)?;
            let child = cmd
                .spawn()
                .with_context(|| format!("starting member {name}"))?;
            members.children.push((name, child));
        }
        let urls: Vec<String> = tcp
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect();
        let t = Instant::now();
        for (i, url) in urls.iter().enumerate() {
            loop {
                let pong = redis::Client::open(url.as_str())
                    .and_then(|c| c.get_connection())
                    .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
                if pong.is_ok() {
                    break;
                }
                if let Some((_, c)) = members.children.get_mut(i) {
                    if let Ok(Some(st)) = c.try_wait() {
                        bail!(
                            "member m{i} of the resp group ended ({st}): {}",
                            crate::bench::group::tail(&dir.join(format!("m{i}.log")), 5)
                        );
                    }
                }
                if t.elapsed() > Duration::from_secs(30) {
                    bail!(
                        "the resp group did not answer within 30 s; logs in {}",
                        dir.display()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(RespTarget {
            name: "resp",
            urls,
            group: Some((members, dir)),
        })
    }
}

impl Drop for RespTarget {
    fn drop(&mut self) {
        if let Some((members, dir)) = self.group.take() {
            drop(members);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Middleware for RespTarget {
    type Conn = RedisConn;

    fn name(&self) -> &'static str {
        self.name
    }

    /// The bench's streams, fresh: deleted first (the server may hold an earlier run's).
    fn create_channels(&self, chain: usize, _invokers: usize) -> Result<()> {
        let mut con = redis::Client::open(self.urls[0].as_str())?.get_connection()?;
        let mut keys: Vec<String> = (0..chain).map(|s| stream(Dest::Stage(s))).collect();
        keys.push(RESULTS.to_string());
        let _: () = redis::cmd("DEL").arg(&keys).query(&mut con)?;
        for s in 0..chain {
            let _: () = con.xgroup_create_mkstream(stream(Dest::Stage(s)), GROUP, "$")?;
        }
        Ok(())
    }

    fn connect(&self, role: Role, chain: usize) -> Result<RedisConn> {
        let url = match role {
            Role::Invoker(i) => &self.urls[i % self.urls.len()],
            Role::Trigger | Role::Collector => &self.urls[0],
        };
        Ok(RedisConn {
            con: redis::Client::open(url.as_str())?
                .get_connection()
                .with_context(|| format!("connecting to {url}"))?,
            role,
            stages: (0..chain).map(|s| stream(Dest::Stage(s))).collect(),
            last_result: "0".into(),
        })
    }
}

const GROUP: &str = "conveyor";
const RESULTS: &str = "results";

fn stream(to: Dest) -> String {
    match to {
        Dest::Stage(i) => format!("stage{i}"),
        Dest::Results => RESULTS.to_string(),
    }
}

fn field_u64(map: &std::collections::HashMap<String, Value>, k: &str) -> u64 {
    match map.get(k) {
        Some(Value::BulkString(b)) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        Some(Value::Int(i)) => *i as u64,
        _ => 0,
    }
}

fn field_bytes(map: &std::collections::HashMap<String, Value>, k: &str) -> Vec<u8> {
    match map.get(k) {
        Some(Value::BulkString(b)) => b.clone(),
        _ => Vec::new(),
    }
}

impl Middleware for RedisServer {
    type Conn = RedisConn;

    fn name(&self) -> &'static str {
        "redis"
    }

    fn create_channels(&self, chain: usize, _invokers: usize) -> Result<()> {
        let mut con = self.client()?.get_connection()?;
        for s in 0..chain {
            let _: () = con.xgroup_create_mkstream(stream(Dest::Stage(s)), GROUP, "$")?;
        }
        Ok(())
    }

    fn connect(&self, role: Role, chain: usize) -> Result<RedisConn> {
        Ok(RedisConn {
            con: self
                .client()?
                .get_connection()
                .context("connecting to redis")?,
            role,
            stages: (0..chain).map(|s| stream(Dest::Stage(s))).collect(),
            last_result: "0".into(),
        })
    }
}

/// One thread's connection to the `redis-server`.
pub struct RedisConn {
    con: redis::Connection,
    role: Role,
    stages: Vec<String>,
    /// The collector reads the results stream without a group, from after this entry.
    last_result: String,
}

fn xadd(p: &mut redis::Pipeline, to: Dest, r: &Record) {
    let cmd = p.cmd("XADD");
    cmd.arg(stream(to))
        .arg("*")
        .arg("id")
        .arg(r.id)
        .arg("sent")
        .arg(r.sent)
        .arg("exec")
        .arg(r.exec);
    if !r.payload.is_empty() {
        cmd.arg("p").arg(&r.payload[..]);
    }
    cmd.ignore();
}

impl Connection for RedisConn {
    /// (stream, entry id)
    type Token = (String, String);

    fn send(&mut self, to: Dest, record: &Record) -> Result<()> {
        let mut p = redis::pipe();
        xadd(&mut p, to, record);
        let _: () = p.query(&mut self.con)?;
        Ok(())
    }

    fn take(&mut self, max: usize, wait: Duration) -> Result<Vec<Taken<Self::Token>>> {
        let block = wait.as_millis().max(1) as usize;
        let reply: StreamReadReply = match self.role {
            Role::Trigger => return Ok(Vec::new()),
            Role::Invoker(i) => {
                let ids: Vec<&str> = vec![">"; self.stages.len()];
                let opts = StreamReadOptions::default()
                    .group(GROUP, format!("invoker-{i}"))
                    .count(max)
                    .block(block);
                self.con.xread_options(&self.stages, &ids, &opts)?
            }
            Role::Collector => {
                let opts = StreamReadOptions::default().count(max).block(block);
                self.con
                    .xread_options(&[RESULTS], &[&self.last_result], &opts)?
            }
        };
        let mut out = Vec::new();
        for key in reply.keys {
            let stage = key.key.strip_prefix("stage").and_then(|s| s.parse().ok());
            for e in key.ids {
                if stage.is_none() {
                    self.last_result = e.id.clone();
                }
                out.push(Taken {
                    stage,
                    record: Record {
                        id: field_u64(&e.map, "id"),
                        sent: field_u64(&e.map, "sent"),
                        exec: field_u64(&e.map, "exec"),
                        payload: field_bytes(&e.map, "p"),
                    },
                    token: (key.key.clone(), e.id),
                });
            }
        }
        Ok(out)
    }

    fn ack(&mut self, taken: &Taken<Self::Token>) -> Result<()> {
        if taken.stage.is_some() {
            let _: () = self.con.xack(&taken.token.0, GROUP, &[&taken.token.1])?;
        }
        Ok(())
    }

    /// `XADD` and `XACK` pipelined: one round trip.
    fn forward(&mut self, to: Dest, record: &Record, taken: &Taken<Self::Token>) -> Result<()> {
        let mut p = redis::pipe();
        xadd(&mut p, to, record);
        p.cmd("XACK")
            .arg(&taken.token.0)
            .arg(GROUP)
            .arg(&taken.token.1)
            .ignore();
        let _: () = p.query(&mut self.con)?;
        Ok(())
    }
}
