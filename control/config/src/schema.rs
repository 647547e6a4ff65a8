//! The group file's schema: every section and key, with its default. `conveyor.sample.toml` at
//! the repository root comments every key; unknown keys are refused.

use conveyor_core::wire;
use conveyor_dataplane::engine::IdlePolicy;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
    /// Shards (optional): the group is several total-order groups, one per shard, each
    /// ordering the queues the shard map places on it. Every member hosts a member of every
    /// shard (member `i` of each shard runs in member `i`'s process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<ShardsSection>,
}

/// `[shards]`: how many shards, where each member's shards listen, and the queues placed by
/// hand (the others by their name's hash: `conveyor_core::shard::ShardMap`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardsSection {
    /// Shards, 1 to 64.
    pub count: u16,
    /// Shard `s` of a member listens on its `address`'s port plus `s * port_stride`.
    #[serde(default = "d_port_stride")]
    pub port_stride: u16,
    /// Queue name to shard, whatever the name's hash says.
    #[serde(default)]
    pub place: std::collections::BTreeMap<String, u16>,
}

/// The most shards a group file may have.
pub const MAX_SHARDS: u16 = 64;

fn d_port_stride() -> u16 {
    1
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
    /// Invokers start a request as soon as the order they hold assigns it to them, and submit
    /// its completion once the assignment is delivered (speculation; see
    /// `conveyor_core::replica`). On by default.
    #[serde(default = "d_speculate")]
    pub speculate: bool,
    /// The durability of the queues whose pipeline does not say (`"memory"`, the default, or
    /// `"log"`: every member writes them to its log in `[member] data_dir`, and a push is told
    /// accepted once a majority has it on disk). Written into each pipeline's document as the
    /// group installs it (loaded from this file or put through the control plane), so every
    /// member reads the same; a queue that exists keeps the options it was created with.
    #[serde(default)]
    pub durability: conveyor_core::queue::Durability,
    /// Inject loss, duplication and delay on every member's sends (testing and studies):
    /// e.g. "loss=5%,dup=1%,delay=100us,jitter=50us".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impair: Option<String>,
}

/// The transports (`group.transport`); which of them this binary runs is
/// [`conveyor_dataplane::transport::open::missing_feature`]'s to say.
pub const TRANSPORTS: [&str; 5] = conveyor_dataplane::transport::open::MEDIA;
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
    pub(crate) fn resolve_frame_sizes(&mut self) {
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
    500
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
fn d_speculate() -> bool {
    true
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
    /// Come back as a new member after a view change removed this one (default: yes; a
    /// member used by the C library does not, unless this says so).
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
    /// Serve the Redis protocol (streams and consumer groups on the group's replicated state;
    /// see `control/src/resp`): any member (a trigger serving, or any invoker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resp: Option<RespSection>,
    /// host:port where the member serves its own `/metrics` (Prometheus' text format), for a
    /// scraper that reaches members rather than the control plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_address: Option<String>,
    /// The member's data directory: every step of the order is logged there, pushes to
    /// durable queues (`durability = "log"`) are told accepted once a majority of the group
    /// file's members have them on disk, and a member started again recovers from it (the
    /// whole group restarting loses nothing it was told). Made if missing; another group's
    /// directory is refused. A relative path is relative to the group file's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<std::path::PathBuf>,
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
    /// A client that does not read the answer for this long loses its connection, seconds.
    #[serde(default = "d_gateway_write_timeout")]
    pub write_timeout_s: u64,
    /// A client that takes longer than this to send a request's head (or to send the next on
    /// a kept-alive connection), or pauses longer inside a body, loses its connection (408
    /// for a body), seconds.
    #[serde(default = "d_gateway_write_timeout")]
    pub read_timeout_s: u64,
    /// With `basic_auth_password_file`: the `/system/` API needs HTTP basic auth with this
    /// user, as OpenFaaS's gateway with `basic_auth` on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth_user: Option<String>,
    /// The file holding the password (its first line; relative to the group file), as
    /// OpenFaaS's `basic-auth-password` secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth_password_file: Option<String>,
}

/// `[member.resp]`: where the member serves the Redis protocol.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespSection {
    /// host:port to listen on, e.g. "127.0.0.1:6390".
    pub address: String,
    /// What `AUTH` must give (at least 16 characters) before any other command. Needed
    /// unless the address is a loopback one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

fn d_gateway_timeout() -> u64 {
    30
}
fn d_gateway_workers() -> usize {
    16
}
fn d_gateway_write_timeout() -> u64 {
    30
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

/// Requests an invoker may hold at once unless its member entry says otherwise. Enough to
/// cover the ordering delay while functions are short: one runs while the next ones' assignments
/// are ordered. A queue gives each request to the least loaded ready invoker, so unused credits
/// do not pile requests on one invoker while another is idle. Measured on 2 cores, 2 invokers,
/// 10,000 chain-3 requests of 60 us functions at once: drained in 1.5 to 1.7 s with 2 credits,
/// 1.3 to 1.4 s with 8; no gain beyond (README, "Measured here").
pub const DEFAULT_CREDITS: u32 = 8;

fn d_credits() -> u32 {
    DEFAULT_CREDITS
}
