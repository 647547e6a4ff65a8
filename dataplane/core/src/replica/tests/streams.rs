//! Redis commands through the order: every replica runs them, the origin is told the reply,
//! and a failed member's consumers give their pending entries back.

use super::*;
use crate::streams::Value;

fn redis(net: &mut Net, from: u16, token: u64, cmd: &str) {
    let args = cmd.split(' ').map(|w| w.as_bytes().to_vec()).collect();
    net.rs[from as usize]
        .submit(&Op::Redis {
            origin: MemberId(from),
            token,
            now_ms: 1_000 + token,
            args,
        })
        .unwrap();
}

fn reply(net: &Net, at: usize, token: u64) -> Option<Value> {
    net.fx[at].iter().find_map(|e| match e {
        Effect::Redis {
            origin,
            token: t,
            reply,
        } if usize::from(origin.0) == at && *t == token => Some(reply.clone()),
        _ => None,
    })
}

fn entry_ids(v: &Value) -> Vec<Vec<u8>> {
    let Value::ByKey(keys) = v else {
        panic!("{v:?}")
    };
    let Value::Array(entries) = &keys[0].1 else {
        panic!("{v:?}")
    };
    entries
        .iter()
        .map(|e| match e {
            Value::Array(p) => match &p[0] {
                Value::Bulk(id) => id.clone(),
                x => panic!("{x:?}"),
            },
            x => panic!("{x:?}"),
        })
        .collect()
}

#[test]
fn redis_commands_run_in_the_order_and_a_failed_members_entries_go_back() {
    let mut net = Net::new(3);
    redis(&mut net, 0, 1, "XADD s 1-1 f a");
    redis(&mut net, 1, 2, "XADD s 1-2 f b");
    redis(&mut net, 0, 3, "XGROUP CREATE s g 0");
    net.run(10_000);
    assert_eq!(reply(&net, 0, 1), Some(Value::Bulk(b"1-1".to_vec())));
    assert_eq!(reply(&net, 1, 2), Some(Value::Bulk(b"1-2".to_vec())));
    assert_eq!(reply(&net, 1, 1), None, "only the origin is told its reply");
    // Member 2's consumer reads both, then member 2 fails.
    redis(&mut net, 2, 4, "XREADGROUP GROUP g c2 STREAMS s >");
    net.run(10_000);
    assert_eq!(entry_ids(&reply(&net, 2, 4).unwrap()), [b"1-1", b"1-2"]);
    let snapshots: Vec<Vec<u8>> = net.rs.iter().map(|r| r.queue().snapshot()).collect();
    assert!(
        snapshots.windows(2).all(|w| w[0] == w[1]),
        "the replicas agree"
    );
    net.down[2] = true;
    net.run(300_000);
    // Given back to the group: member 0's consumer reads them, each delivered twice now.
    redis(&mut net, 0, 5, "XREADGROUP GROUP g c0 STREAMS s >");
    redis(&mut net, 0, 6, "XPENDING s g - + 10");
    net.run(10_000);
    assert_eq!(entry_ids(&reply(&net, 0, 5).unwrap()), [b"1-1", b"1-2"]);
    let Some(Value::Array(p)) = reply(&net, 0, 6) else {
        panic!()
    };
    for e in &p {
        let Value::Array(f) = e else { panic!() };
        assert_eq!(f[1], Value::Bulk(b"c0".to_vec()));
        assert_eq!(f[3], Value::Int(2));
    }
    assert_eq!(
        net.rs[0].queue().snapshot(),
        net.rs[1].queue().snapshot(),
        "the survivors agree"
    );
}
