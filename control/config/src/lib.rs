//! The group configuration: one TOML file describes the whole group; each member picks its own
//! entry by name. `conveyor.sample.toml` at the repository root comments every key.
//!
//! - [`schema`]: the file's sections and keys, with their defaults (unknown keys are refused);
//! - `validate`: the checks beyond the schema, each naming the offending field;
//! - [`GroupConfig`]: a loaded, checked file with its pipelines, and what it means for one
//!   member: its engine's configuration ([`GroupConfig::engine_config`]) and its transport's
//!   ([`GroupConfig::transport_spec`], which `conveyor_dataplane::transport::open` opens).

pub mod schema;
mod validate;

pub use schema::*;

use conveyor_core::pipeline::Pipeline;
use conveyor_core::proto::{Admission, ProtoConfig};
use conveyor_core::queue::Durability;
use conveyor_core::shard::{ShardId, ShardMap};
use conveyor_core::types::{GroupId, MemberId, View, ViewId};
use conveyor_core::wire::Key;
use conveyor_dataplane::engine::{EngineConfig, IdlePolicy};
use conveyor_dataplane::transport::dpdk::EalOptions;
use conveyor_dataplane::transport::impair::ImpairSpec;
use conveyor_dataplane::transport::open::{DpdkSpec, Medium, TransportSpec, XdpSpec};
use conveyor_dataplane::transport::rdma::IbvConfig;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration error: the file, the field and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub field: String,
    pub message: String,
}

/// A loaded, validated group configuration.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    pub file: GroupFile,
    pub path: PathBuf,
    pub key: Key,
    pub impair: Option<ImpairSpec>,
    pub addresses: Vec<SocketAddr>,
    pub pipelines: Vec<Pipeline>,
}

impl GroupConfig {
    pub fn load(path: &Path) -> Result<GroupConfig, ConfigError> {
        let file_name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file_name.clone(),
            field: "(file)".into(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks the text of the group file at `path` (relative pipeline paths are
    /// relative to its folder), and loads the pipelines it names.
    pub fn parse(text: &str, path: &Path) -> Result<GroupConfig, ConfigError> {
        let file_name = path.display().to_string();
        let fail = |field: &str, message: String| ConfigError {
            file: file_name.clone(),
            field: field.to_string(),
            message,
        };
        let de = toml::Deserializer::new(text);
        let mut file: GroupFile = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner.message().to_string();
            let msg = match inner.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].lines().count().max(1);
                    format!("{msg} (line {line})")
                }
                None => msg,
            };
            fail(if field == "." { "(document)" } else { &field }, msg)
        })?;
        let checked = validate::check(&mut file).map_err(|b| fail(&b.field, b.message))?;
        let pipelines = load_pipelines(&file, path)?;
        // A relative data directory is relative to the group file's folder, as pipelines are.
        let base = path.parent().unwrap_or(Path::new("."));
        for m in &mut file.members {
            if let Some(d) = m.data_dir.as_mut().filter(|d| d.is_relative()) {
                *d = base.join(&*d);
            }
        }
        // A durable queue is told accepted once a majority of the members have it on disk:
        // every member needs a data directory to write it to.
        let durable = pipelines.iter().find_map(|p| {
            p.queue_specs()
                .into_iter()
                .find(|q| q.durability == Durability::Log)
                .map(|q| {
                    format!(
                        "pipeline {:?} has a durable queue ({:?}, durability \"log\")",
                        p.name, q.name
                    )
                })
        });
        let durable = durable.or_else(|| {
            (file.group.durability == Durability::Log)
                .then(|| "group.durability is \"log\"".to_string())
        });
        if let Some(why) = durable {
            if let Some(i) = file.members.iter().position(|m| m.data_dir.is_none()) {
                return Err(fail(
                    &format!("member[{i}].data_dir"),
                    format!(
                        "{why}: every member needs a data directory; {:?} has none",
                        file.members[i].name
                    ),
                ));
            }
        }
        Ok(GroupConfig {
            file,
            path: path.to_path_buf(),
            key: checked.key,
            impair: checked.impair,
            addresses: checked.addresses,
            pipelines,
        })
    }

    /// Whether this binary can run the group's transport: the file may name one whose cargo
    /// feature the binary was built without (said by name; opening it would fail the same way).
    pub fn check_built(&self) -> Result<(), ConfigError> {
        let t = self.file.group.transport.as_str();
        match conveyor_dataplane::transport::open::missing_feature(t) {
            None => Ok(()),
            Some(feature) => Err(ConfigError {
                file: self.path.display().to_string(),
                field: "group.transport".into(),
                message: format!(
                    "the {t} transport is not built into this binary (it needs the cargo feature `{feature}`)"
                ),
            }),
        }
    }

    pub fn member_index(&self, name: &str) -> Result<usize, ConfigError> {
        self.file
            .members
            .iter()
            .position(|m| m.name == name)
            .ok_or_else(|| ConfigError {
                file: self.path.display().to_string(),
                field: "member".into(),
                message: format!(
                    "no member named {name:?}; members are {}",
                    self.file
                        .members
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }

    /// How many shards the group is (1 without `[shards]`).
    pub fn shard_count(&self) -> u16 {
        self.file.shards.as_ref().map_or(1, |s| s.count)
    }

    /// The shard map the file describes (version 1): the queues of `[shards] place` where it
    /// puts them, the others by their name's hash.
    pub fn shard_map(&self) -> ShardMap {
        let mut map = ShardMap::hashed(1, self.shard_count());
        if let Some(sh) = &self.file.shards {
            for (q, &s) in &sh.place {
                map = map.with_override(q, ShardId(s));
            }
        }
        map
    }

    /// Shard `s` of the group as a group of its own: shard 0 is the file as written; shard
    /// `s > 0` is named `NAME#s` (its own group id and shared-memory names), has its own key
    /// (derived from the group's: frames of one shard are not taken by another), listens on
    /// each member's port plus `s * port_stride` and keeps its log in `data_dir/shard-s`. The
    /// gateway and metrics stay with shard 0's.
    pub fn for_shard(&self, s: u16) -> GroupConfig {
        let mut c = self.clone();
        if s == 0 {
            return c;
        }
        let stride = self.file.shards.as_ref().map_or(1, |x| x.port_stride);
        let offset = s.saturating_mul(stride);
        c.file.group.name = format!("{}#{s}", self.file.group.name);
        let mut h = blake3::Hasher::new_derive_key("conveyor 2026-12 shard key");
        h.update(self.file.group.key.as_bytes());
        h.update(&s.to_le_bytes());
        c.key = Key::from_bytes(*h.finalize().as_bytes());
        c.file.group.key = c.key.to_hex();
        for (a, m) in c.addresses.iter_mut().zip(c.file.members.iter_mut()) {
            a.set_port(a.port().saturating_add(offset));
            m.address = a.to_string();
            m.data_dir = m.data_dir.take().map(|d| d.join(format!("shard-{s}")));
            m.metrics_address = None;
            m.gateway = None;
            m.resp = None;
        }
        c
    }

    pub fn group_id(&self) -> GroupId {
        let h = blake3::hash(self.file.group.name.as_bytes());
        let b = h.as_bytes();
        GroupId(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Who may join when a member starts. By the group file: its members (again, after an
    /// exclusion), no one else. By the control plane: the members of the first view until the
    /// member hears the control plane's allowlist (which it then follows).
    pub fn initial_admission(&self) -> Admission {
        let by_control = self
            .file
            .control
            .as_ref()
            .is_some_and(|c| c.admission == AdmissionMode::Control);
        Admission::Listed(
            (0..self.file.members.len() as u16)
                .filter(|&i| !by_control || !self.file.members[i as usize].join)
                .map(MemberId)
                .collect(),
        )
    }

    // Field by field: the core's configuration has fields only its tests' builds have (a
    // struct literal would not build in one of the two).
    #[allow(clippy::field_reassign_with_default)]
    pub fn engine_config(&self, me: usize) -> EngineConfig {
        let g = &self.file.group;
        let mut proto = ProtoConfig::default();
        proto.window = g.window;
        proto.max_frame = g.max_frame;
        proto.max_payload = g.max_payload;
        proto.status_interval = Duration::from_micros(g.status_interval_us);
        proto.heartbeat = Duration::from_millis(g.heartbeat_ms);
        proto.failure_timeout = Duration::from_millis(g.failure_timeout_ms);
        proto.admission = self.initial_admission();
        proto.rto = Duration::from_micros(g.rto_us);
        proto.rto_max = Duration::from_millis(g.rto_max_ms);
        // A member of the first view never heard from is waited for as long as the start-up.
        proto.startup_grace = Duration::from_secs(g.startup_timeout_s);
        EngineConfig {
            proto,
            key: self.key.clone(),
            group: self.group_id(),
            view: View::new(
                ViewId(1),
                (0..self.file.members.len() as u16)
                    .filter(|&i| !self.file.members[i as usize].join)
                    .map(MemberId)
                    .collect(),
            ),
            join: self.file.members[me].join,
            me: MemberId(me as u16),
            names: self.file.members.iter().map(|m| m.name.clone()).collect(),
            idle: IdlePolicy {
                spin_us: self.file.idle.spin_us,
                yield_us: self.file.idle.yield_us,
                park_max_us: self.file.idle.park_max_us,
                slice_us: self.file.idle.slice_us,
            },
            core: self.file.members[me].core,
            startup_timeout: Duration::from_secs(g.startup_timeout_s),
            linger: Duration::from_millis(g.linger_ms),
            // Triggers too: a trigger that comes back is told what became of its requests
            // while it was out and pushes again those the group never ordered.
            rejoin: self.file.members[me].rejoin.unwrap_or(true),
            // Only invokers run what is assigned to them; their application handles the
            // speculation's effects.
            speculate: g.speculate && self.file.members[me].role == Role::Invoker,
            data_dir: self.file.members[me].data_dir.clone(),
            log_segment_bytes: None,
        }
    }

    /// Names this group's shared-memory files and RDMA side channel apart from other groups'
    /// on the host (and from other runs of a group of the same name with another key).
    pub fn shm_tag(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update(self.file.group.name.as_bytes());
        h.update(b"\0");
        h.update(self.file.group.key.as_bytes());
        h.finalize().to_hex()[..16].to_string()
    }

    /// What member `me`'s transport is: its medium as `group.transport` says, the XDP
    /// program on its `interface` if it names one, and `group.impair` seeded for it.
    pub fn transport_spec(&self, me: usize) -> TransportSpec {
        let m = &self.file.members[me];
        let medium = match self.file.group.transport.as_str() {
            "afxdp" => Medium::AfXdp {
                interface: m.interface.clone().unwrap_or_default(),
                queue: m.queue,
            },
            "dpdk" => Medium::Dpdk(match m.dpdk.clone() {
                Some(d) => DpdkSpec {
                    eal: EalOptions {
                        lcores: d.lcores,
                        allow: d.allow,
                        vdevs: d.vdevs,
                        hugepages: d.hugepages,
                        memory_mb: d.memory_mb,
                        extra: d.eal_args,
                    },
                    port: d.port,
                    rx_descriptors: d.rx_descriptors,
                    tx_descriptors: d.tx_descriptors,
                    mbufs: d.mbufs,
                    poll_us: d.poll_us,
                },
                // The checks refuse it; opening it says that no port is configured.
                None => DpdkSpec {
                    eal: EalOptions::default(),
                    port: None,
                    rx_descriptors: 1024,
                    tx_descriptors: 1024,
                    mbufs: 8191,
                    poll_us: 50,
                },
            }),
            "rdma" => {
                let r = m.rdma.clone().unwrap_or(RdmaSection {
                    port: 1,
                    poll_us: 50,
                    ..Default::default()
                });
                Medium::Rdma {
                    ibv: IbvConfig {
                        device: r.device,
                        port: r.port,
                        gid_index: r.gid_index,
                    },
                    poll_us: r.poll_us,
                    tag: self.shm_tag(),
                }
            }
            "shm" => Medium::Shm {
                dir: std::env::var_os("CONVEYOR_SHM_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| "/dev/shm".into()),
                tag: self.shm_tag(),
            },
            _ => Medium::Udp,
        };
        let engine = self.engine_config(me);
        TransportSpec {
            name: m.name.clone(),
            me,
            addresses: self.addresses.clone(),
            max_frame: self.file.group.max_frame,
            medium,
            xdp: m.interface.as_ref().map(|i| XdpSpec {
                interface: i.clone(),
                group: engine.group.0,
            }),
            impair: self.impair.clone().map(|mut i| {
                i.seed = i.seed.wrapping_mul(1000).wrapping_add(me as u64);
                i
            }),
            first_view: engine
                .view
                .members
                .iter()
                .map(|m| usize::from(m.0))
                .collect(),
            local_ports: Vec::new(),
            also_groups: Vec::new(),
        }
    }
}

/// A fresh random group key, as 64 hexadecimal digits.
pub fn fresh_key() -> anyhow::Result<String> {
    let mut k = [0u8; 32];
    getrandom::getrandom(&mut k).map_err(|e| anyhow::anyhow!("no randomness for a key: {e}"))?;
    Ok(Key::from_bytes(k).to_hex())
}

/// Reads and parses every pipeline the file names (relative to its folder).
fn load_pipelines(file: &GroupFile, path: &Path) -> Result<Vec<Pipeline>, ConfigError> {
    let base = path.parent().unwrap_or(Path::new("."));
    let mut pipelines = Vec::new();
    for (i, p) in file.group.pipelines.iter().enumerate() {
        let pp = if p.is_absolute() {
            p.clone()
        } else {
            base.join(p)
        };
        let text = std::fs::read_to_string(&pp).map_err(|e| ConfigError {
            file: path.display().to_string(),
            field: format!("group.pipelines[{i}]"),
            message: format!("cannot read {}: {e}", pp.display()),
        })?;
        let pipeline = Pipeline::from_json_in_group(&text, file.group.durability).map_err(|e| {
            ConfigError {
                file: pp.display().to_string(),
                field: e.field,
                message: e.message,
            }
        })?;
        pipelines.push(pipeline);
    }
    Ok(pipelines)
}

#[cfg(test)]
mod tests;
