//! The group file: good files load, bad ones name the field.

use super::*;
use conveyor_core::wire;

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
    // Speculation is on by default, for invokers only (a trigger runs no function).
    assert!(e.speculate);
    assert!(!c.engine_config(0).speculate);
    let off = GroupConfig::parse(
        &GOOD.replace("[group]", "[group]\nspeculate = false"),
        Path::new("x.toml"),
    );
    assert!(!off.unwrap().engine_config(1).speculate);
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
        (
            GOOD.replace(
                "role = \"trigger\"",
                "role = \"trigger\"\n[member.gateway]\naddress = \"127.0.0.1:8080\"\nbasic_auth_user = \"admin\"",
            ),
            "member[0].gateway.basic_auth_password_file",
        ),
        (
            GOOD.replace(
                "role = \"trigger\"",
                "role = \"trigger\"\n[member.gateway]\naddress = \"127.0.0.1:8080\"\nbasic_auth_password_file = \"p\"",
            ),
            "member[0].gateway.basic_auth_user",
        ),
        (
            GOOD.replace(
                "role = \"trigger\"",
                "role = \"trigger\"\n[member.gateway]\naddress = \"127.0.0.1:8080\"\nbasic_auth_user = \"a:b\"\nbasic_auth_password_file = \"p\"",
            ),
            "member[0].gateway.basic_auth_user",
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
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conveyor.sample.toml");
    let c = GroupConfig::load(&path).unwrap();
    assert!(!c.pipelines.is_empty());
}

/// A pipeline with a durable queue needs every member to have a data directory (the field
/// of the first one without is named); with them, each member's engine logs there.
#[test]
fn a_durable_queue_needs_every_member_to_have_a_data_directory() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(
        t.path().join("p.json"),
        r#"{"name": "p", "entry": "a", "queue_defaults": {"durability": "log"},
            "steps": {"a": {"function": "echo"}}}"#,
    )
    .unwrap();
    let path = t.path().join("conveyor.toml");
    let text = GOOD.replace("name = \"g\"", "name = \"g\"\npipelines = [\"p.json\"]");
    let with_dir = text.replacen(
        "role = \"trigger\"",
        "role = \"trigger\"\ndata_dir = \"/var/lib/conveyor\"",
        1,
    );
    let e = GroupConfig::parse(&with_dir, &path).unwrap_err();
    assert_eq!(e.field, "member[1].data_dir", "{e}");
    assert!(e.message.contains("\"invoker-0\" has none"), "{e}");
    let both = with_dir.replacen(
        "role = \"invoker\"",
        "role = \"invoker\"\ndata_dir = \"/var/lib/conveyor-1\"",
        1,
    );
    let c = GroupConfig::parse(&both, &path).unwrap();
    assert_eq!(
        c.engine_config(1).data_dir.as_deref(),
        Some(Path::new("/var/lib/conveyor-1"))
    );
    // A relative one is relative to the group file's folder.
    let relative = both.replace("data_dir = \"/var/lib/conveyor\"", "data_dir = \"data/t\"");
    let c = GroupConfig::parse(&relative, &path).unwrap();
    assert_eq!(c.engine_config(0).data_dir, Some(t.path().join("data/t")));
    // Without a durable queue, no data directory is needed.
    assert!(GroupConfig::parse(GOOD, &path).is_ok());
}

/// `[group] durability` is the default of the pipelines that do not say: written into their
/// documents at load, it needs every member's data directory even with no pipeline yet (the
/// control plane may install one), and a bad value is refused by name.
#[test]
fn the_group_durability_is_the_pipelines_default() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(
        t.path().join("p.json"),
        r#"{"name": "p", "entry": "a", "steps": {"a": {"function": "echo", "next": [{"to": ["b"]}]},
            "b": {"function": "echo", "queue_options": {"durability": "memory"}}}}"#,
    )
    .unwrap();
    let path = t.path().join("conveyor.toml");
    let durable = GOOD.replace("name = \"g\"", "name = \"g\"\ndurability = \"log\"");
    let e = GroupConfig::parse(&durable, &path).unwrap_err();
    assert_eq!(e.field, "member[0].data_dir", "{e}");
    assert!(e.message.contains("group.durability is \"log\""), "{e}");
    let with_dirs = durable
        .replace(
            "role = \"trigger\"",
            "role = \"trigger\"\ndata_dir = \"d0\"",
        )
        .replace(
            "role = \"invoker\"",
            "role = \"invoker\"\ndata_dir = \"d1\"",
        )
        .replace("name = \"g\"", "name = \"g\"\npipelines = [\"p.json\"]");
    let c = GroupConfig::parse(&with_dirs, &path).unwrap();
    let specs = c.pipelines[0].queue_specs();
    let by = |n: &str| specs.iter().find(|q| q.name == n).unwrap().durability;
    assert_eq!(by("p.a"), Durability::Log);
    assert_eq!(by("p.b"), Durability::Memory);
    // The document the group is handed says it (members read it without the group file).
    let doc: serde_json::Value = serde_json::from_str(&c.pipelines[0].to_json()).unwrap();
    assert_eq!(doc["queue_defaults"]["durability"], "log");
    let bad = GOOD.replace("name = \"g\"", "name = \"g\"\ndurability = \"disk\"");
    let e = GroupConfig::parse(&bad, &path).unwrap_err();
    assert_eq!(e.field, "group.durability", "{e}");
}

#[test]
fn a_sharded_group_is_one_group_per_shard() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(
        t.path().join("p.json"),
        r#"{"name": "p", "entry": "a", "steps": {
            "a": {"function": "echo", "next": [{"to": ["b"]}]}, "b": {"function": "echo"}}}"#,
    )
    .unwrap();
    let path = t.path().join("conveyor.toml");
    let sharded = GOOD.replace("name = \"g\"", "name = \"g\"\npipelines = [\"p.json\"]")
        + "\n[shards]\ncount = 3\nport_stride = 100\nplace = { \"p.b\" = 2 }\n";
    let c = GroupConfig::parse(&sharded, &path).unwrap();
    assert_eq!(c.shard_count(), 3);
    let map = c.shard_map();
    assert_eq!(map.version, 1);
    assert_eq!(map.owner("p.b"), ShardId(2));
    let s0 = c.for_shard(0);
    let s2 = c.for_shard(2);
    assert_eq!(s0.addresses, c.addresses);
    assert_eq!(s2.addresses[1].port(), 7201);
    assert_eq!(s2.file.members[1].address, "127.0.0.1:7201");
    // Each shard is its own group: id and key differ, the same file gives the same ones.
    assert_ne!(s0.group_id(), s2.group_id());
    assert_ne!(c.for_shard(1).group_id(), s2.group_id());
    assert_ne!(s0.key.to_hex(), s2.key.to_hex());
    assert_ne!(c.for_shard(1).key.to_hex(), s2.key.to_hex());
    assert_eq!(c.for_shard(2).key.to_hex(), s2.key.to_hex());
    assert_eq!(s2.transport_spec(1).addresses[1].port(), 7201);
    // Over rdma each shard is its own set of queue pairs: a side channel on the shard's port,
    // its own group tag (the device and port the member's).
    let rdma = GroupConfig::parse(
        &sharded.replace("name = \"g\"", "name = \"g\"\ntransport = \"rdma\""),
        &path,
    )
    .unwrap();
    let tag = |s: u16| match rdma.for_shard(s).transport_spec(1).medium {
        conveyor_dataplane::transport::open::Medium::Rdma { tag, .. } => tag,
        other => panic!("{other:?}"),
    };
    assert_ne!(tag(0), tag(2));
    assert_eq!(
        rdma.for_shard(2).transport_spec(1).addresses[1].port(),
        7201
    );
    // Without [shards]: one shard owning everything.
    let one = GroupConfig::parse(
        &GOOD.replace("name = \"g\"", "name = \"g\"\npipelines = [\"p.json\"]"),
        &path,
    )
    .unwrap();
    assert_eq!(one.shard_count(), 1);
    assert_eq!(one.shard_map().owner("p.b"), ShardId(0));
    // Bad sections name their field.
    let cases = [
        (sharded.replace("count = 3", "count = 0"), "shards.count"),
        (sharded.replace("count = 3", "count = 65"), "shards.count"),
        (
            sharded.replace("port_stride = 100", "port_stride = 0"),
            "shards.port_stride",
        ),
        (
            sharded.replace("\"p.b\" = 2", "\"p.b\" = 3"),
            "shards.place.p.b",
        ),
        (
            sharded.replace("port_stride = 100", "port_stride = 30000"),
            "member[0].address",
        ),
        (
            sharded.replace(
                "role = \"trigger\"",
                "role = \"trigger\"\ninterface = \"eth0\"",
            ),
            "member[0].interface",
        ),
        (
            sharded.replace("count = 3", "count = 3\nsize = 2"),
            "shards",
        ),
    ];
    for (text, field) in cases {
        let e = GroupConfig::parse(&text, &path).unwrap_err();
        assert!(e.field.starts_with(field), "{field}: {e}");
    }
}
