//! The group configuration: one TOML file describes the whole group; each member picks its own
//! entry by name. `conveyor.sample.toml` at the repository root comments every key.

use conveyor_core::pipeline::Pipeline;
use conveyor_core::proto::{Admission, ProtoConfig};
use conveyor_core::types::{GroupId, MemberId, View, ViewId};
use conveyor_core::wire::{self, Key};
use conveyor_dataplane::engine::{EngineConfig, IdlePolicy};
use conveyor_dataplane::transport::impair::ImpairSpec;
use serde::{Deserialize, Serialize};
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

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFile {
    pub group: GroupSection,
    #[serde(default)]
    pub idle: IdleSection,
    #[serde(rename = "member")]
    pub members: Vec<MemberSection>,
    /// The control plane (optional): where it listens and the token changes need.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<ControlSection>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// host:port of `conveyor control`.
    pub address: String,
    /// Bearer token for changes (and member reports); at least 16 characters.
    pub token: String,
    /// Who admits joins: `group-file` (default: any member of the group file may join) or
    /// `control` (only members on the control plane's allowlist; the members follow it).
    #[serde(default)]
    pub admission: AdmissionMode,
    /// The allowlist the control plane starts with, by member name (default: every member of
    /// the group file). Changed with `conveyor ctl admit|revoke NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admit: Option<Vec<String>>,
    /// With this token (at least 16 characters, not the control token) a member may put
    /// itself on the allowlist: `conveyor node --join-token`, or `$CONVEYOR_JOIN_TOKEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_token: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdmissionMode {
    #[default]
    GroupFile,
    Control,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSection {
    pub name: String,
    pub key: String,
    #[serde(default = "d_transport")]
    pub transport: String,
    #[serde(default)]
    pub pipelines: Vec<PathBuf>,
    #[serde(default = "d_window")]
    pub window: u64,
    #[serde(default = "d_max_frame")]
    pub max_frame: usize,
    #[serde(default = "d_max_payload")]
    pub max_payload: usize,
    #[serde(default = "d_status_interval_us")]
    pub status_interval_us: u64,
    #[serde(default = "d_heartbeat_ms")]
    pub heartbeat_ms: u64,
    #[serde(default = "d_failure_timeout_ms")]
    pub failure_timeout_ms: u64,
    #[serde(default = "d_rto_us")]
    pub rto_us: u64,
    #[serde(default = "d_rto_max_ms")]
    pub rto_max_ms: u64,
    #[serde(default = "d_startup_timeout_s")]
    pub startup_timeout_s: u64,
    #[serde(default = "d_linger_ms")]
    pub linger_ms: u64,
    /// Inject loss, duplication and delay on every member's sends (testing and studies):
    /// e.g. "loss=5%,dup=1%,delay=100us,jitter=50us".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impair: Option<String>,
}

/// The transports the `conveyor` binary runs (chosen by `group.transport`).
pub const TRANSPORTS: [&str; 5] = ["udp", "afxdp", "shm", "dpdk", "rdma"];
/// The largest frame the afxdp transport carries (a UMEM chunk less the kernel's headroom and
/// the headers).
pub const MAX_AFXDP_FRAME: usize = conveyor_dataplane::transport::afxdp::MAX_FRAME;
/// The largest frame the dpdk transport carries (one mbuf's data room less the headers).
pub const MAX_DPDK_FRAME: usize = conveyor_dataplane::transport::dpdk::MAX_FRAME;

fn d_transport() -> String {
    "udp".into()
}
fn d_window() -> u64 {
    256
}
/// 0: not given; resolved by [`GroupFile::resolve_frame_sizes`] for the transport.
fn d_max_frame() -> usize {
    0
}
fn d_max_payload() -> usize {
    0
}

impl GroupFile {
    /// Frame sizes left out take the transport's defaults: one Ethernet frame on a 1500-byte
    /// MTU (1472) for the transports that write Ethernet frames (afxdp, dpdk), 8192 otherwise;
    /// the payload is at most 4096 and what fits the frame.
    fn resolve_frame_sizes(&mut self) {
        let g = &mut self.group;
        if g.max_frame == 0 {
            g.max_frame = match g.transport.as_str() {
                "afxdp" | "dpdk" => 1472,
                _ => 8192,
            };
        }
        if g.max_payload == 0 {
            g.max_payload = wire::max_payload_for(g.max_frame, self.members.len()).min(4096);
        }
    }
}
fn d_status_interval_us() -> u64 {
    2000
}
fn d_heartbeat_ms() -> u64 {
    5
}
fn d_failure_timeout_ms() -> u64 {
    30
}
fn d_rto_us() -> u64 {
    2000
}
fn d_rto_max_ms() -> u64 {
    200
}
fn d_startup_timeout_s() -> u64 {
    30
}
fn d_linger_ms() -> u64 {
    300
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdleSection {
    #[serde(default = "d_spin")]
    pub spin_us: u64,
    #[serde(default = "d_yield")]
    pub yield_us: u64,
    #[serde(default = "d_park")]
    pub park_max_us: u64,
    #[serde(default = "d_slice")]
    pub slice_us: u64,
}

fn d_spin() -> u64 {
    IdlePolicy::SHARED.spin_us
}
fn d_yield() -> u64 {
    IdlePolicy::SHARED.yield_us
}
fn d_park() -> u64 {
    IdlePolicy::SHARED.park_max_us
}
fn d_slice() -> u64 {
    IdlePolicy::SHARED.slice_us
}

impl Default for IdleSection {
    fn default() -> Self {
        IdleSection {
            spin_us: d_spin(),
            yield_us: d_yield(),
            park_max_us: d_park(),
            slice_us: d_slice(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Trigger,
    Invoker,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSection {
    pub name: String,
    pub address: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core: Option<usize>,
    #[serde(default = "d_credits")]
    pub credits: u32,
    /// Invokers: run functions `inline` in the polling thread, or in a `thread` fed by rings.
    #[serde(default)]
    pub executor: Executor,
    /// Come back as a new member after a view change removed this one (default: invokers
    /// do, the trigger does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejoin: Option<bool>,
    /// Not in the group's first view: this member joins a running group when started.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub join: bool,
    /// The network interface that carries `address` (in the member's network namespace).
    /// Given, the member attaches Conveyor's XDP program to it: protocol frames from anyone
    /// outside the view are dropped there. Required by the `afxdp` transport.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// `afxdp`: the interface's receive queue the member's AF_XDP socket binds (the queue the
    /// NIC steers the member's UDP port to; 0 on single-queue links such as veth).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub queue: u32,
    /// `dpdk`: the member's DPDK port and EAL settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpdk: Option<DpdkSection>,
    /// `rdma`: the member's RDMA device and port (default: the first device, port 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdma: Option<RdmaSection>,
    /// Triggers: serve OpenFaaS's HTTP routes in front of the group (see `gateway.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewaySection>,
}

/// `[member.gateway]`: the trigger's OpenFaaS-compatible HTTP gateway.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// host:port to listen on, e.g. "127.0.0.1:8080".
    pub address: String,
    /// How long a synchronous call waits for its output, seconds.
    #[serde(default = "d_gateway_timeout")]
    pub timeout_s: u64,
    /// HTTP worker threads (synchronous calls served at once).
    #[serde(default = "d_gateway_workers")]
    pub workers: usize,
}

fn d_gateway_timeout() -> u64 {
    30
}
fn d_gateway_workers() -> usize {
    16
}

/// `[member.rdma]`: which verbs device and port the member uses.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RdmaSection {
    /// The device's name as `ibv_devices` lists it (`mlx5_0`); default: the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The device's port, from 1.
    #[serde(default = "d_rdma_port")]
    pub port: u8,
    /// The GID index (RoCE v2: the index of the port's IPv4 GID, `show_gids`); 0 on
    /// InfiniBand.
    #[serde(default)]
    pub gid_index: u8,
    /// How often a parked member polls the completion queue, microseconds.
    #[serde(default = "d_dpdk_poll")]
    pub poll_us: u64,
}

fn d_rdma_port() -> u8 {
    1
}

/// `[member.dpdk]`: which port the member drives through DPDK, and the EAL's settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpdkSection {
    /// PCI devices the EAL may use (`-a`), for example a ConnectX port "0000:3b:00.0" (mlx5 is
    /// bifurcated: the port stays bound to mlx5_core, nothing is unbound).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Virtual devices (`--vdev`), for example "net_af_packet0,iface=eth0".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vdevs: Vec<String>,
    /// The port to drive, by DPDK's name for it; default: the only port there is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// `--lcores`; default: lcore 0 on every CPU the process may use (the EAL pins nothing
    /// of the member's; the polling thread is pinned by member.core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lcores: Option<String>,
    /// Hugepages (default) or ordinary memory (`--no-huge`).
    #[serde(default = "d_true")]
    pub hugepages: bool,
    /// The EAL's memory, MiB.
    #[serde(default = "d_dpdk_memory")]
    pub memory_mb: u32,
    #[serde(default = "d_descriptors")]
    pub rx_descriptors: u16,
    #[serde(default = "d_descriptors")]
    pub tx_descriptors: u16,
    /// Packet buffers in the member's pool.
    #[serde(default = "d_mbufs")]
    pub mbufs: u32,
    /// How often a parked member polls the port, microseconds (poll-mode drivers have nothing
    /// to sleep on; set [idle] spin_us to busy-poll).
    #[serde(default = "d_dpdk_poll")]
    pub poll_us: u64,
    /// More EAL arguments, appended as given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub eal_args: Vec<String>,
}

fn d_true() -> bool {
    true
}
fn d_dpdk_memory() -> u32 {
    256
}
fn d_descriptors() -> u16 {
    1024
}
fn d_mbufs() -> u32 {
    8191
}
fn d_dpdk_poll() -> u64 {
    50
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    #[default]
    Inline,
    Thread,
}

fn d_credits() -> u32 {
    2
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
        let key = Key::from_hex(&file.group.key).map_err(|e| fail("group.key", e.to_string()))?;
        if file.group.name.is_empty() {
            return Err(fail("group.name", "must not be empty".into()));
        }
        if !TRANSPORTS.contains(&file.group.transport.as_str()) {
            return Err(fail(
                "group.transport",
                format!(
                    "transport {:?} is not available in this build; available: {}",
                    file.group.transport,
                    TRANSPORTS.join(", ")
                ),
            ));
        }
        if file.members.is_empty() {
            return Err(fail("member", "at least one [[member]] is needed".into()));
        }
        if file.members.len() > wire::MAX_MEMBERS {
            return Err(fail(
                "member",
                format!("at most {} members", wire::MAX_MEMBERS),
            ));
        }
        file.resolve_frame_sizes();
        let g = &file.group;
        if g.window == 0 {
            return Err(fail("group.window", "must be at least 1".into()));
        }
        if !(512..=65_000).contains(&g.max_frame) {
            return Err(fail(
                "group.max_frame",
                "must be between 512 and 65000 bytes".into(),
            ));
        }
        let fits = wire::max_payload_for(g.max_frame, file.members.len());
        if g.max_payload > fits {
            return Err(fail(
                "group.max_payload",
                format!(
                    "{} does not fit a frame of {} bytes for {} members; at most {fits}",
                    g.max_payload,
                    g.max_frame,
                    file.members.len()
                ),
            ));
        }
        for (field, v) in [
            ("group.status_interval_us", g.status_interval_us),
            ("group.heartbeat_ms", g.heartbeat_ms),
            ("group.failure_timeout_ms", g.failure_timeout_ms),
            ("group.rto_us", g.rto_us),
            ("group.rto_max_ms", g.rto_max_ms),
            ("group.startup_timeout_s", g.startup_timeout_s),
        ] {
            if v == 0 {
                return Err(fail(field, "must be greater than 0".into()));
            }
        }
        if g.failure_timeout_ms < 3 * g.heartbeat_ms {
            return Err(fail(
                "group.failure_timeout_ms",
                format!(
                    "{} ms is less than three heartbeats ({} ms each): members would be suspected while alive",
                    g.failure_timeout_ms, g.heartbeat_ms
                ),
            ));
        }
        if !file.members.is_empty() && file.members.iter().all(|m| m.join) {
            return Err(fail(
                "member[0].join",
                "every member has join = true: at least one must start the group".into(),
            ));
        }
        if let Some(i) = file
            .members
            .iter()
            .position(|m| m.join && m.role == Role::Trigger)
        {
            return Err(fail(
                &format!("member[{i}].join"),
                "a trigger cannot join later (it starts the run); only invokers".into(),
            ));
        }
        if let Some(c) = &file.control {
            if c.token.len() < 16 {
                return Err(fail(
                    "control.token",
                    "must be at least 16 characters (it guards every change)".into(),
                ));
            }
            if c.address.parse::<std::net::SocketAddr>().is_err() {
                return Err(fail(
                    "control.address",
                    format!("{:?} is not host:port", c.address),
                ));
            }
            if let Some(t) = &c.join_token {
                if t.len() < 16 || *t == c.token {
                    return Err(fail(
                        "control.join_token",
                        "must be at least 16 characters and differ from control.token".into(),
                    ));
                }
            }
            for (i, n) in c.admit.iter().flatten().enumerate() {
                if !file.members.iter().any(|m| &m.name == n) {
                    return Err(fail(
                        &format!("control.admit[{i}]"),
                        format!("{n:?} is not a member of the group file"),
                    ));
                }
            }
        }
        for (i, m) in file.members.iter().enumerate() {
            if file.group.transport == "afxdp" && m.interface.is_none() {
                return Err(fail(
                    &format!("member[{i}].interface"),
                    format!("the afxdp transport binds an AF_XDP socket to the interface that carries the member's address; name it (for example interface = \"eth0\") for {:?}", m.name),
                ));
            }
            if m.interface.as_deref() == Some("") {
                return Err(fail(
                    &format!("member[{i}].interface"),
                    "must not be empty".into(),
                ));
            }
            if m.queue >= 64 {
                return Err(fail(
                    &format!("member[{i}].queue"),
                    "the XDP program serves queues 0 to 63".into(),
                ));
            }
        }
        if file.group.transport == "dpdk" {
            let ip = |a: &str| a.parse::<SocketAddr>().ok().map(|s| s.ip());
            for (i, m) in file.members.iter().enumerate() {
                let Some(d) = &m.dpdk else {
                    return Err(fail(
                        &format!("member[{i}].dpdk"),
                        format!("the dpdk transport drives a port of {:?}: name it with allow = [\"<PCI address>\"] (a ConnectX port) or vdevs = [\"net_af_packet0,iface=eth0\"]", m.name),
                    ));
                };
                if d.allow.is_empty() && d.vdevs.is_empty() {
                    return Err(fail(
                        &format!("member[{i}].dpdk"),
                        "names no device: give allow (PCI addresses) or vdevs (virtual devices)"
                            .into(),
                    ));
                }
                if d.mbufs < u32::from(d.rx_descriptors) + u32::from(d.tx_descriptors) + 1024 {
                    return Err(fail(
                        &format!("member[{i}].dpdk.mbufs"),
                        format!("{} cannot fill the rx ring ({}) and the tx ring ({}) with 1024 to spare", d.mbufs, d.rx_descriptors, d.tx_descriptors),
                    ));
                }
                if d.memory_mb < 64 {
                    return Err(fail(
                        &format!("member[{i}].dpdk.memory_mb"),
                        "the EAL needs at least 64 MiB".into(),
                    ));
                }
                if let Some(j) = file.members[..i]
                    .iter()
                    .position(|o| ip(&o.address) == ip(&m.address))
                {
                    return Err(fail(
                        &format!("member[{i}].address"),
                        format!("is on member[{j}]'s IP address: the dpdk transport runs one member per port and address (members of one host use shm)"),
                    ));
                }
            }
            if g.max_frame > MAX_DPDK_FRAME {
                return Err(fail(
                    "group.max_frame",
                    format!("{} bytes do not fit one mbuf of the dpdk transport: at most {MAX_DPDK_FRAME} (1472 on a 1500-byte MTU; the member checks its port's MTU at start)", g.max_frame),
                ));
            }
        } else if let Some(i) = file.members.iter().position(|m| m.dpdk.is_some()) {
            return Err(fail(
                &format!("member[{i}].dpdk"),
                format!(
                    "is for the dpdk transport; the group's transport is {:?}",
                    file.group.transport
                ),
            ));
        }
        if file.group.transport != "rdma" {
            if let Some(i) = file.members.iter().position(|m| m.rdma.is_some()) {
                return Err(fail(
                    &format!("member[{i}].rdma"),
                    format!(
                        "is for the rdma transport; the group's transport is {:?}",
                        file.group.transport
                    ),
                ));
            }
        }
        for (i, m) in file.members.iter().enumerate() {
            if let Some(g) = &m.gateway {
                if m.role != Role::Trigger {
                    return Err(fail(
                        &format!("member[{i}].gateway"),
                        "only a trigger serves the gateway (it pushes the requests)".into(),
                    ));
                }
                if g.address.parse::<SocketAddr>().is_err() {
                    return Err(fail(
                        &format!("member[{i}].gateway.address"),
                        format!(
                            "expected host:port with an IP address, found {:?}",
                            g.address
                        ),
                    ));
                }
                if g.timeout_s == 0 {
                    return Err(fail(
                        &format!("member[{i}].gateway.timeout_s"),
                        "must be at least 1".into(),
                    ));
                }
                if !(1..=256).contains(&g.workers) {
                    return Err(fail(
                        &format!("member[{i}].gateway.workers"),
                        "between 1 and 256".into(),
                    ));
                }
            }
            if m.rdma.as_ref().is_some_and(|r| r.port == 0) {
                return Err(fail(
                    &format!("member[{i}].rdma.port"),
                    "ports are numbered from 1".into(),
                ));
            }
        }
        if file.group.transport == "shm" {
            let ip = |a: &str| a.parse::<SocketAddr>().ok().map(|s| s.ip());
            let first = file.members.first().and_then(|m| ip(&m.address));
            if let Some(i) = file.members.iter().position(|m| ip(&m.address) != first) {
                return Err(fail(
                    &format!("member[{i}].address"),
                    format!(
                        "the shm transport joins the members of one host through shared memory; {:?} is not on member[0]'s address ({})",
                        file.members[i].address, file.members[0].address
                    ),
                ));
            }
        }
        if file.group.transport == "afxdp" && g.max_frame > MAX_AFXDP_FRAME {
            return Err(fail(
                "group.max_frame",
                format!(
                    "{} bytes do not fit one Ethernet frame of the afxdp transport: at most {MAX_AFXDP_FRAME} (1472 on a 1500-byte MTU; the member checks its interface's MTU at start)",
                    g.max_frame
                ),
            ));
        }
        let mut addresses = Vec::new();
        for (i, m) in file.members.iter().enumerate() {
            if m.name.is_empty() {
                return Err(fail(
                    &format!("member[{i}].name"),
                    "must not be empty".into(),
                ));
            }
            if file.members[..i].iter().any(|o| o.name == m.name) {
                return Err(fail(
                    &format!("member[{i}].name"),
                    format!("{:?} is used twice", m.name),
                ));
            }
            let addr: SocketAddr = m.address.parse().map_err(|e| {
                fail(
                    &format!("member[{i}].address"),
                    format!("{:?} is not IP:PORT: {e}", m.address),
                )
            })?;
            if addresses.contains(&addr) {
                return Err(fail(
                    &format!("member[{i}].address"),
                    format!("{addr} is used twice"),
                ));
            }
            addresses.push(addr);
            if m.credits == 0 {
                return Err(fail(
                    &format!("member[{i}].credits"),
                    "must be at least 1".into(),
                ));
            }
        }
        let impair = match &file.group.impair {
            None => None,
            Some(text) => Some(
                text.parse::<ImpairSpec>()
                    .map_err(|e| fail("group.impair", e.to_string()))?,
            ),
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let mut pipelines = Vec::new();
        for (i, p) in file.group.pipelines.iter().enumerate() {
            let pp = if p.is_absolute() {
                p.clone()
            } else {
                base.join(p)
            };
            let text = std::fs::read_to_string(&pp).map_err(|e| {
                fail(
                    &format!("group.pipelines[{i}]"),
                    format!("cannot read {}: {e}", pp.display()),
                )
            })?;
            let pipeline = Pipeline::from_json(&text).map_err(|e| ConfigError {
                file: pp.display().to_string(),
                field: e.field,
                message: e.message,
            })?;
            pipelines.push(pipeline);
        }
        Ok(GroupConfig {
            file,
            path: path.to_path_buf(),
            key,
            impair,
            addresses,
            pipelines,
        })
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
            rejoin: self.file.members[me]
                .rejoin
                .unwrap_or(self.file.members[me].role == Role::Invoker),
        }
    }
}

/// A fresh random group key, as 64 hexadecimal digits.
pub fn fresh_key() -> anyhow::Result<String> {
    let mut k = [0u8; 32];
    getrandom::getrandom(&mut k).map_err(|e| anyhow::anyhow!("no randomness for a key: {e}"))?;
    Ok(Key::from_bytes(k).to_hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[group]
name = "g"
key = "0000000000000000000000000000000000000000000000000000000000000001"

[[member]]
name = "trigger"
address = "127.0.0.1:7000"
role = "trigger"

[[member]]
name = "invoker-0"
address = "127.0.0.1:7001"
role = "invoker"
"#;

    fn parse(t: &str) -> Result<GroupConfig, ConfigError> {
        GroupConfig::parse(t, Path::new("/etc/conveyor.toml"))
    }

    #[test]
    fn good_config_loads() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.addresses.len(), 2);
        assert_eq!(c.member_index("invoker-0").unwrap(), 1);
        assert!(c
            .member_index("nobody")
            .unwrap_err()
            .to_string()
            .contains("trigger, invoker-0"));
        let e = c.engine_config(1);
        assert_eq!(e.view.len(), 2);
    }

    #[test]
    fn errors_name_file_and_field() {
        let cases = [
            (GOOD.replace("key = \"00", "key = \"zz"), "group.key"),
            (
                GOOD.replace("127.0.0.1:7001", "localhost"),
                "member[1].address",
            ),
            (
                GOOD.replace("127.0.0.1:7001", "127.0.0.1:7000"),
                "member[1].address",
            ),
            (
                GOOD.replace("role = \"invoker\"", "role = \"worker\""),
                "member[1].role",
            ),
            (
                GOOD.replace("name = \"g\"", "name = \"g\"\nwindow = 0"),
                "group.window",
            ),
            (
                GOOD.replace("name = \"g\"", "name = \"g\"\nwindw = 3"),
                "group.windw",
            ),
            (
                GOOD.replace(
                    "name = \"g\"",
                    "name = \"g\"\ntransport = \"carrier-pigeon\"",
                ),
                "group.transport",
            ),
            (
                GOOD.replace("name = \"g\"", "name = \"g\"\nmax_payload = 100000"),
                "group.max_payload",
            ),
            (
                GOOD.replace(
                    "name = \"g\"",
                    "name = \"g\"\npipelines = [\"missing.json\"]",
                ),
                "group.pipelines[0]",
            ),
            (
                GOOD.replace("name = \"invoker-0\"", "name = \"trigger\""),
                "member[1].name",
            ),
            (
                GOOD.replace("name = \"g\"", "name = \"g\"\ntransport = \"afxdp\""),
                "member[0].interface",
            ),
            (
                GOOD.replace(
                    "name = \"g\"",
                    "name = \"g\"\ntransport = \"afxdp\"\nmax_frame = 4000",
                )
                .replace(
                    "role = \"trigger\"",
                    "role = \"trigger\"\ninterface = \"eth0\"",
                )
                .replace(
                    "role = \"invoker\"",
                    "role = \"invoker\"\ninterface = \"eth0\"",
                ),
                "group.max_frame",
            ),
            (
                GOOD.replace(
                    "role = \"invoker\"",
                    "role = \"invoker\"\ninterface = \"eth0\"\nqueue = 64",
                ),
                "member[1].queue",
            ),
            (
                GOOD.replace("name = \"g\"", "name = \"g\"\ntransport = \"shm\"")
                    .replace("127.0.0.1:7001", "127.0.0.2:7001"),
                "member[1].address",
            ),
        ];
        let cases = cases.into_iter().chain([
            (
                GOOD.replace(
                    "role = \"invoker\"",
                    "role = \"invoker\"\n[member.gateway]\naddress = \"127.0.0.1:8080\"",
                ),
                "member[1].gateway",
            ),
            (
                GOOD.replace(
                    "role = \"trigger\"",
                    "role = \"trigger\"\n[member.gateway]\naddress = \"localhost\"",
                ),
                "member[0].gateway.address",
            ),
            (
                GOOD.replace(
                    "role = \"trigger\"",
                    "role = \"trigger\"\n[member.gateway]\naddress = \"127.0.0.1:8080\"\nworkers = 0",
                ),
                "member[0].gateway.workers",
            ),
        ]);
        for (text, field) in cases {
            let e = parse(&text).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert_eq!(e.file, "/etc/conveyor.toml");
        }
    }

    /// Frame sizes left out follow the transport: one Ethernet frame for the transports that
    /// write them, and a payload that fits.
    #[test]
    fn frame_sizes_default_by_transport() {
        let udp = parse(GOOD).unwrap();
        assert_eq!(udp.file.group.max_frame, 8192);
        assert_eq!(udp.file.group.max_payload, 4096);
        let dpdk = parse(
            &GOOD
                .replace("name = \"g\"", "name = \"g\"\ntransport = \"dpdk\"")
                .replace("127.0.0.1:7001", "127.0.0.2:7001")
                .replace(
                    "role = \"trigger\"",
                    "role = \"trigger\"\n[member.dpdk]\nvdevs = [\"net_ring0\"]",
                )
                .replace(
                    "role = \"invoker\"",
                    "role = \"invoker\"\n[member.dpdk]\nvdevs = [\"net_ring1\"]",
                ),
        )
        .unwrap();
        assert_eq!(dpdk.file.group.max_frame, 1472);
        assert_eq!(dpdk.file.group.max_payload, wire::max_payload_for(1472, 2));
    }

    #[test]
    fn fresh_keys_differ_and_parse() {
        let (a, b) = (fresh_key().unwrap(), fresh_key().unwrap());
        assert_ne!(a, b);
        Key::from_hex(&a).unwrap();
    }

    #[test]
    fn sample_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conveyor.sample.toml");
        let c = GroupConfig::load(&path).unwrap();
        assert!(!c.pipelines.is_empty());
    }
}
