//! The Kafka-protocol baseline of `conveyor bench --backend kafka`: DIFFUSE's middleware
//! abstraction (see `middleware`) over the Kafka protocol, through librdkafka (the `rdkafka`
//! crate, with librdkafka built from its bundled source), configured as the paper ran Kafka:
//! at least once, one topic per stage with as many partitions as invokers, replication 1, and
//! every invoker a member of one consumer group subscribed to every stage.
//!
//! The broker is **tansu** (a Kafka-protocol broker written in Rust, in-memory storage), not
//! Apache Kafka: Apache Kafka cannot be installed on the machines this was built on. The bench
//! starts and stops it itself, on loopback or inside a namespace host of `--hosts netns`.
//!
//! At least once: producers wait for the broker's acknowledgement (`acks=all`, which with
//! replication 1 is the partition leader's); an invoker stores the offset of a record it took
//! only when the broker has acknowledged the record's continuation (in the producer's delivery
//! report), and the consumer commits stored offsets in the background
//! (`enable.auto.offset.store=false`). Continuations are pipelined, not awaited one by one. A
//! crash in between redelivers the record: a duplicate, never a loss. The trigger spreads requests over the partitions round
//! robin (as the paper's Kafka does, which is why its load split stays near 50%).

use crate::bench::baselines::{Connection, Dest, Middleware, Place, Record, Role, Taken};
use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const GROUP: &str = "conveyor";
const RESULTS: &str = "results";

/// Where `tansu` is, or a clear error (checked before any run starts): `$CONVEYOR_TANSU`, then
/// `PATH`, then `~/.cargo/bin`.
pub fn find_broker() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CONVEYOR_TANSU") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!(
            "--backend kafka: CONVEYOR_TANSU={} is not a file; nothing was run",
            p.display()
        );
    }
    let cargo_bin = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin"));
    if let Some(p) = crate::bench::baselines::find_program("tansu", cargo_bin) {
        return Ok(p);
    }
    bail!("--backend kafka: the Kafka-protocol broker `tansu` is not installed (cargo install tansu --version 0.6.0 --features dynostore --locked, about 8 minutes; or CONVEYOR_SETUP_KAFKA=1 bash testbed/setup.sh); nothing was run")
}

/// A tansu broker this process started; stopped when dropped.
pub struct TansuBroker {
    child: Child,
    place: Place,
    pub port: u16,
    /// The consumers' `fetch.wait.max.ms`: how long the broker may park a fetch that found
    /// nothing (tansu does not answer a parked fetch early when data arrives).
    pub fetch_wait_ms: u32,
}

impl TansuBroker {
    /// Starts `tansu broker` with in-memory storage at `place`, port `port` (0: a free one),
    /// and waits until it answers a metadata request.
    pub fn start(
        tansu: &Path,
        place: &Place,
        port: u16,
        fetch_wait_ms: u32,
    ) -> Result<TansuBroker> {
        let port = place.port(port, "--kafka-port")?;
        let url = format!("tcp://{}:{port}", place.addr);
        let mut cmd = place.command(tansu);
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
            "--silent",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", tansu.display()))?;
        let mut b = TansuBroker {
            child,
            place: place.clone(),
            port,
            fetch_wait_ms,
        };
        let t = Instant::now();
        let bootstrap = b.bootstrap();
        loop {
            if let Ok(Some(st)) = b.child.try_wait() {
                bail!("tansu exited at once ({st}) on {bootstrap}");
            }
            let addr = format!("{}:{port}", b.place.addr);
            let ready = b.place.within(|| -> Result<()> {
                // A listening socket first: a client started before it would log refusals.
                std::net::TcpStream::connect(&addr)?;
                let p: BaseProducer = ClientConfig::new()
                    .set("bootstrap.servers", &bootstrap)
                    .set("log_level", "0")
                    .create()?;
                p.client()
                    .fetch_metadata(None, Duration::from_millis(500))?;
                Ok(())
            });
            if ready.is_ok() {
                return Ok(b);
            }
            if t.elapsed() > Duration::from_secs(20) {
                bail!("tansu on {bootstrap} did not answer within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn bootstrap(&self) -> String {
        format!("{}:{}", self.place.addr, self.port)
    }

    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap())
            // librdkafka's own log lines would interleave with the bench's output.
            .set("log_level", "3")
            // Small requests must not wait for Nagle and delayed acknowledgements.
            .set("socket.nagle.disable", "true")
            // tansu 0.6 loses answers to requests pipelined on one connection (a producer's
            // flush then never ends, and records stay unacknowledged): one at a time.
            .set("max.in.flight.requests.per.connection", "1");
        // librdkafka settings to try on top (`KEY=VALUE;KEY=VALUE`), e.g. for a real Kafka.
        if let Ok(extra) = std::env::var("CONVEYOR_KAFKA_CONFIG") {
            for kv in extra.split(';').filter(|kv| !kv.trim().is_empty()) {
                if let Some((k, v)) = kv.split_once('=') {
                    c.set(k.trim(), v.trim());
                }
            }
        }
        c
    }
}

impl Drop for TansuBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn topic(to: Dest) -> String {
    match to {
        Dest::Stage(i) => format!("stage{i}"),
        Dest::Results => RESULTS.to_string(),
    }
}

/// A taken record: (topic, partition, offset).
type Token = (String, i32, i64);

/// The producer's delivery reports: refusals are counted, and the records whose continuation
/// the broker acknowledged are set aside for their offsets to be stored.
#[derive(Default)]
pub struct Deliveries {
    failed: AtomicU64,
    last: Mutex<Option<String>>,
    acknowledged: Mutex<Vec<Token>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    /// The record the delivered one continues, if any.
    type DeliveryOpaque = Box<Option<Token>>;
    fn delivery(&self, r: &DeliveryResult<'_>, continues: Box<Option<Token>>) {
        match r {
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut l) = self.last.lock() {
                    *l = Some(e.to_string());
                }
            }
            Ok(_) => {
                if let (Some(t), Ok(mut a)) = (*continues, self.acknowledged.lock()) {
                    a.push(t);
                }
            }
        }
    }
}

/// The consumers' group events: revocations are counted (each one a rebalance during which
/// records may be taken again elsewhere).
#[derive(Default)]
pub struct Group {
    revoked: AtomicU64,
}

impl ClientContext for Group {}

impl ConsumerContext for Group {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Revoke(_) = r {
            self.revoked.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Middleware for TansuBroker {
    type Conn = KafkaConn;

    fn name(&self) -> &'static str {
        "kafka"
    }

    fn create_channels(&self, chain: usize, invokers: usize) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = self.config().create()?;
        let names: Vec<String> = (0..chain)
            .map(|s| topic(Dest::Stage(s)))
            .chain([RESULTS.to_string()])
            .collect();
        let parts = invokers.max(1) as i32;
        let topics: Vec<NewTopic> = names
            .iter()
            .map(|n| NewTopic::new(n, parts, TopicReplication::Fixed(1)))
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = futures_executor::block_on(admin.create_topics(&topics, &opts))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, e)) => bail!("creating topic {t}: {e}"),
            }
        }
        Ok(())
    }

    fn connect(&self, role: Role, chain: usize) -> Result<KafkaConn> {
        let producer = |linger: &str| -> Result<BaseProducer<Deliveries>> {
            Ok(self
                .config()
                .set("acks", "all")
                .set("linger.ms", linger)
                .set("enable.idempotence", "false")
                .create_with_context(Deliveries::default())?)
        };
        let consumer = |group: &str| -> Result<BaseConsumer<Group>> {
            Ok(self
                .config()
                .set("group.id", group)
                .set("enable.auto.commit", "true")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                .set("fetch.wait.max.ms", self.fetch_wait_ms.to_string())
                .set("fetch.min.bytes", "1")
                .set("session.timeout.ms", "10000")
                .set("heartbeat.interval.ms", "1000")
                .create_with_context(Group::default())?)
        };
        let stages: Vec<String> = (0..chain).map(|s| topic(Dest::Stage(s))).collect();
        Ok(match role {
            Role::Trigger => KafkaConn::new(role, Some(producer("0")?), None),
            Role::Invoker(_) => {
                let c = consumer(GROUP)?;
                let names: Vec<&str> = stages.iter().map(String::as_str).collect();
                c.subscribe(&names)?;
                KafkaConn::new(role, Some(producer("0")?), Some(c))
            }
            Role::Collector => {
                // Every partition of the results topic, without group management.
                let c = consumer("conveyor-collector")?;
                let md = c
                    .fetch_metadata(Some(RESULTS), Duration::from_secs(10))
                    .context("the results topic's metadata")?;
                let mut tpl = TopicPartitionList::new();
                for t in md.topics() {
                    for p in t.partitions() {
                        tpl.add_partition_offset(RESULTS, p.id(), rdkafka::Offset::Beginning)?;
                    }
                }
                if tpl.count() == 0 {
                    bail!("the results topic has no partitions");
                }
                c.assign(&tpl)?;
                KafkaConn::new(role, None, Some(c))
            }
        })
    }

    /// Waits until the group has given every partition of every stage to an invoker, each
    /// invoker its share (polling is what moves a consumer through the group protocol).
    fn settle(&self, conns: &mut [&mut KafkaConn]) -> Result<()> {
        let t = Instant::now();
        loop {
            let mut all_assigned = true;
            let mut total = 0;
            let mut expected = 0;
            for c in conns.iter_mut() {
                if let (Role::Invoker(_), Some(con)) = (c.role, &c.consumer) {
                    if let Some(Ok(m)) = con.poll(Duration::from_millis(20)) {
                        bail!(
                            "an invoker took a record from {} before the run started",
                            m.topic()
                        );
                    }
                    let n = con.assignment()?.count();
                    all_assigned &= n > 0;
                    total += n;
                    expected += 1;
                }
            }
            if let Some(c) = conns.iter().find(|c| matches!(c.role, Role::Invoker(_))) {
                if let Some(con) = &c.consumer {
                    let md = con.fetch_metadata(None, Duration::from_secs(5))?;
                    let stage_parts: usize = md
                        .topics()
                        .iter()
                        .filter(|t| t.name().starts_with("stage"))
                        .map(|t| t.partitions().len())
                        .sum();
                    if all_assigned && total == stage_parts && expected > 0 {
                        break;
                    }
                }
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("the consumer group did not assign every stage partition within 30 s ({total} assigned)");
            }
        }
        // Rebalances that count are the ones during the run.
        for c in conns.iter_mut() {
            if let Some(con) = &c.consumer {
                con.context().revoked.store(0, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// One thread's clients of the broker.
pub struct KafkaConn {
    role: Role,
    producer: Option<BaseProducer<Deliveries>>,
    consumer: Option<BaseConsumer<Group>>,
    /// Round robin over the partitions of the first stage (the trigger).
    next_partition: i32,
    partitions: i32,
    /// The collector: where each request's result was read (partition, offset), to say where
    /// a duplicate came from: the same offset read twice (the broker), or two records.
    results_seen: std::collections::HashMap<u64, (i32, i64)>,
    served_twice: u64,
    ran_twice: u64,
}

impl KafkaConn {
    fn new(
        role: Role,
        producer: Option<BaseProducer<Deliveries>>,
        consumer: Option<BaseConsumer<Group>>,
    ) -> KafkaConn {
        KafkaConn {
            role,
            producer,
            consumer,
            next_partition: 0,
            partitions: 0,
            results_seen: Default::default(),
            served_twice: 0,
            ran_twice: 0,
        }
    }

    fn produce(&mut self, to: Dest, record: &Record, continues: Option<Token>) -> Result<()> {
        let Some(p) = &self.producer else {
            bail!("this connection does not send");
        };
        let name = topic(to);
        let bytes = record.encode();
        if self.partitions == 0 {
            let md = p
                .client()
                .fetch_metadata(Some(&name), Duration::from_secs(10))?;
            self.partitions = md
                .topics()
                .first()
                .map_or(1, |t| t.partitions().len().max(1) as i32);
        }
        let partition = self.next_partition % self.partitions;
        self.next_partition = self.next_partition.wrapping_add(1) & i32::MAX;
        let mut rec = BaseRecord::<(), [u8], _>::with_opaque_to(&name, Box::new(continues))
            .partition(partition)
            .payload(&bytes);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                // Backpressure: the local queue is full; serve delivery reports and retry.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    p.poll(Duration::from_millis(1));
                    rec = r;
                }
                Err((e, _)) => return Err(e).context(format!("producing to {name}")),
            }
        }
        self.serve_deliveries()
    }

    /// Serves the producer's delivery reports: stores the offsets of the records whose
    /// continuation the broker acknowledged; fails if the broker refused any record.
    fn serve_deliveries(&self) -> Result<()> {
        if let Some(p) = &self.producer {
            p.poll(Duration::ZERO);
            let ctx = p.context();
            let done: Vec<Token> = ctx
                .acknowledged
                .lock()
                .map(|mut a| std::mem::take(&mut *a))
                .unwrap_or_default();
            if let Some(c) = &self.consumer {
                for (topic, partition, offset) in done {
                    // After a rebalance the partition may be someone else's: the record will
                    // be delivered there again (at least once), so a refused store is no error.
                    let _ = c.store_offset(&topic, partition, offset);
                }
            }
            if ctx.failed.load(Ordering::Relaxed) > 0 {
                let last = ctx.last.lock().ok().and_then(|l| l.clone());
                bail!(
                    "{} record(s) were not delivered; the last error: {}",
                    ctx.failed.load(Ordering::Relaxed),
                    last.unwrap_or_default()
                );
            }
        }
        Ok(())
    }
}

impl Connection for KafkaConn {
    type Token = Token;

    fn send(&mut self, to: Dest, record: &Record) -> Result<()> {
        // Every stage has as many partitions as the first: the round robin holds for all.
        self.produce(to, record, None)
    }

    fn take(&mut self, max: usize, wait: Duration) -> Result<Vec<Taken<Self::Token>>> {
        self.serve_deliveries()?;
        let Some(c) = &self.consumer else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut timeout = wait;
        while out.len() < max {
            match c.poll(timeout) {
                None => break,
                Some(Err(e)) => return Err(e).context("consuming"),
                Some(Ok(m)) => {
                    let stage = m.topic().strip_prefix("stage").and_then(|s| s.parse().ok());
                    let Some(record) = m.payload().and_then(Record::decode) else {
                        // Not a record of this bench: skip it (and let the group move on).
                        let _ = c.store_offset(m.topic(), m.partition(), m.offset());
                        continue;
                    };
                    if stage.is_none() {
                        let here = (m.partition(), m.offset());
                        if let Some(first) = self.results_seen.insert(record.id, here) {
                            if first == here {
                                self.served_twice += 1;
                            } else {
                                self.ran_twice += 1;
                            }
                            if self.served_twice + self.ran_twice <= 3 {
                                tracing::warn!(
                                    "kafka: the result of request {} was read twice: partition {} offset {}, then partition {} offset {}{}",
                                    record.id,
                                    first.0,
                                    first.1,
                                    here.0,
                                    here.1,
                                    if first == here {
                                        " (the broker served the same record twice)"
                                    } else {
                                        " (two records: the request ran twice)"
                                    }
                                );
                            }
                        }
                    }
                    out.push(Taken {
                        stage,
                        record,
                        token: (m.topic().to_string(), m.partition(), m.offset()),
                    });
                }
            }
            timeout = Duration::ZERO;
        }
        Ok(out)
    }

    /// Stores the offset at once (for a record that has no continuation: the collector's).
    fn ack(&mut self, t: &Taken<Self::Token>) -> Result<()> {
        if let (Some(c), Role::Invoker(_)) = (&self.consumer, self.role) {
            let _ = c.store_offset(&t.token.0, t.token.1, t.token.2);
        }
        Ok(())
    }

    /// Waits until the broker has acknowledged everything this connection sent, and says how
    /// often the consumer group rebalanced during the run.
    fn finish(&mut self) -> Result<Vec<String>> {
        if let Some(p) = &self.producer {
            p.flush(Duration::from_secs(10))
                .context("waiting for the broker to acknowledge the last records")?;
        }
        self.serve_deliveries()?;
        let mut notes = Vec::new();
        if self.served_twice + self.ran_twice > 0 {
            notes.push(format!(
                "kafka: {} result read(s) at an offset already read (the broker served the same record again), {} result(s) found in two records (the request ran twice)",
                self.served_twice, self.ran_twice
            ));
        }
        if let (Some(c), Role::Invoker(i)) = (&self.consumer, self.role) {
            let n = c.context().revoked.load(Ordering::Relaxed);
            if n > 0 {
                notes.push(format!(
                    "kafka: the consumer group took partitions from invoker-{i} {n} time(s) during the run (records taken there may run again elsewhere: at least once)"
                ));
            }
        }
        Ok(notes)
    }

    /// Sends the continuation; the taken record's offset is stored when the broker
    /// acknowledges the continuation (see `serve_deliveries`).
    fn forward(&mut self, to: Dest, record: &Record, taken: &Taken<Self::Token>) -> Result<()> {
        self.produce(to, record, Some(taken.token.clone()))
    }
}
