//! The state machine alone; `control/tests/resp_streams.rs` compares it with `redis-server`.

use super::*;

fn run(s: &mut Streams, now: u64, cmd: &str) -> Value {
    let args: Vec<Vec<u8>> = cmd.split(' ').map(|w| w.as_bytes().to_vec()).collect();
    s.execute(MemberId(0), now, &args)
}

fn ids(v: &Value) -> Vec<String> {
    let Value::Array(items) = v else {
        panic!("not an array: {v:?}")
    };
    items
        .iter()
        .map(|e| match e {
            Value::Array(p) => match &p[0] {
                Value::Bulk(b) => String::from_utf8(b.clone()).unwrap(),
                x => panic!("{x:?}"),
            },
            x => panic!("{x:?}"),
        })
        .collect()
}

/// Entries are shared by a group's consumers, each once; acknowledged ones leave the
/// pending list; `*` ids follow the clock and never go back.
#[test]
fn a_group_shares_entries_once_each() {
    let mut s = Streams::default();
    assert_eq!(run(&mut s, 1000, "XADD k * f 1"), Value::bulk("1000-0"));
    assert_eq!(run(&mut s, 1000, "XADD k * f 2"), Value::bulk("1000-1"));
    assert_eq!(run(&mut s, 999, "XADD k * f 3"), Value::bulk("1000-2"));
    assert_eq!(run(&mut s, 1001, "XADD k * f 4"), Value::bulk("1001-0"));
    assert_eq!(run(&mut s, 1001, "XGROUP CREATE k g 0"), Value::ok());
    let a = run(&mut s, 1002, "XREADGROUP GROUP g a COUNT 3 STREAMS k >");
    let b = run(&mut s, 1002, "XREADGROUP GROUP g b COUNT 3 STREAMS k >");
    let Value::ByKey(a) = a else { panic!("{a:?}") };
    let Value::ByKey(b) = b else { panic!("{b:?}") };
    assert_eq!(ids(&a[0].1), ["1000-0", "1000-1", "1000-2"]);
    assert_eq!(ids(&b[0].1), ["1001-0"]);
    assert_eq!(
        run(&mut s, 1003, "XREADGROUP GROUP g c STREAMS k >"),
        Value::NullArray
    );
    assert_eq!(
        run(&mut s, 1003, "XACK k g 1000-0 1000-0 1001-0"),
        Value::Int(2)
    );
    let Value::Array(summary) = run(&mut s, 1003, "XPENDING k g") else {
        panic!()
    };
    assert_eq!(summary[0], Value::Int(2));
    assert_eq!(
        run(&mut s, 1003, "XADD k 5-0 f x"),
        Value::err(
            "ERR The ID specified in XADD is equal or smaller than the target stream top item"
        )
    );
}

/// A removed member's consumers give their pending entries back: the next read takes them
/// first, with their delivery counts; an acknowledgement before that still counts.
#[test]
fn a_removed_members_pending_entries_go_back_to_the_group() {
    let mut s = Streams::default();
    for i in 1..=3 {
        run(&mut s, 10, &format!("XADD k {i}-0 f {i}"));
    }
    run(&mut s, 10, "XGROUP CREATE k g 0");
    let args: Vec<Vec<u8>> = "XREADGROUP GROUP g gone STREAMS k >"
        .split(' ')
        .map(|w| w.as_bytes().to_vec())
        .collect();
    s.execute(MemberId(2), 11, &args);
    s.members_removed(&[MemberId(2)]);
    assert_eq!(run(&mut s, 12, "XACK k g 3-0"), Value::Int(1));
    let Value::ByKey(r) = run(&mut s, 12, "XREADGROUP GROUP g other STREAMS k >") else {
        panic!()
    };
    assert_eq!(ids(&r[0].1), ["1-0", "2-0"]);
    let Value::Array(p) = run(&mut s, 12, "XPENDING k g - + 10") else {
        panic!()
    };
    assert_eq!(
        p[0],
        Value::Array(vec![
            Value::bulk("1-0"),
            Value::bulk("other"),
            Value::Int(0),
            Value::Int(2)
        ])
    );
    assert_eq!(
        run(&mut s, 13, "XREADGROUP GROUP g other STREAMS k >"),
        Value::NullArray
    );
}

#[test]
fn errors_name_what_redis_names() {
    let mut s = Streams::default();
    assert_eq!(
        run(&mut s, 1, "XADD k"),
        Value::err("ERR wrong number of arguments for 'xadd' command")
    );
    assert_eq!(
        run(&mut s, 1, "XREADGROUP GROUP g c STREAMS k >"),
        Value::err("NOGROUP No such key 'k' or consumer group 'g' in XREADGROUP with GROUP option")
    );
    assert_eq!(
        run(&mut s, 1, "XGROUP FOO k g"),
        Value::err("ERR unknown subcommand 'FOO'. Try XGROUP HELP.")
    );
    assert_eq!(run(&mut s, 1, "XRANGE k (- +"), Value::err(INVALID_ID));
}

fn words(cmd: &str) -> Vec<Vec<u8>> {
    cmd.split(' ').map(|w| w.as_bytes().to_vec()).collect()
}

/// A read that blocks waits in the state and is served, oldest first, by the command that
/// gives it something (an XADD; a removed member's entries given back); its server's UNBLOCK
/// ends it with nil unless it was served first; a removed member's waiting reads go.
#[test]
fn blocked_reads_wait_in_the_state_and_are_served_in_order() {
    let mut s = Streams::default();
    let (m0, m1, m2) = (MemberId(0), MemberId(1), MemberId(2));
    assert_eq!(
        s.run(m0, 1, 5, &words("XGROUP CREATE k g $ MKSTREAM"))
            .len(),
        1
    );
    // Two consumers block (on two members), and an XREAD with `$`.
    assert!(s
        .run(m0, 2, 6, &words("XREADGROUP GROUP g a BLOCK 0 STREAMS k >"))
        .is_empty());
    assert!(s
        .run(
            m1,
            3,
            6,
            &words("XREADGROUP GROUP g b COUNT 5 BLOCK 100 STREAMS k >")
        )
        .is_empty());
    assert!(s
        .run(m2, 4, 6, &words("XREAD BLOCK 0 STREAMS k $"))
        .is_empty());
    assert_eq!(s.blocked(), 3);
    // A history read and a non-blocking one answer at once.
    assert_eq!(
        s.run(m1, 5, 6, &words("XREADGROUP GROUP g c STREAMS k >")),
        vec![(m1, 5, Value::NullArray)]
    );
    // One entry: the XADD's reply, then the oldest group read (the group's one entry) and the
    // XREAD (every reader of the stream sees it); b still waits.
    let out = s.run(m0, 6, 7, &words("XADD k 1-1 f v"));
    let tokens: Vec<(MemberId, u64)> = out.iter().map(|(m, t, _)| (*m, *t)).collect();
    assert_eq!(tokens, vec![(m0, 6), (m0, 2), (m2, 4)]);
    assert!(matches!(&out[1].2, Value::ByKey(k) if ids(&k[0].1) == ["1-1"]));
    assert!(matches!(&out[2].2, Value::ByKey(k) if ids(&k[0].1) == ["1-1"]));
    assert_eq!(s.blocked(), 1);
    // b's server gives up: nil, once; a second UNBLOCK finds nothing.
    assert_eq!(
        s.run(m1, 7, 8, &words("conveyor-unblock 3")),
        vec![(m1, 3, Value::NullArray)]
    );
    assert!(s.run(m1, 8, 8, &words("conveyor-unblock 3")).is_empty());
    // The entry a (through m0) holds goes back when m0 is removed, to a reader waiting.
    assert!(s
        .run(m1, 9, 9, &words("XREADGROUP GROUP g d BLOCK 0 STREAMS k >"))
        .is_empty());
    assert!(s
        .run(
            m0,
            10,
            9,
            &words("XREADGROUP GROUP g e BLOCK 0 STREAMS k >")
        )
        .is_empty());
    let out = s.members_removed(&[m0]);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!((out[0].0, out[0].1), (m1, 9));
    assert_eq!(s.blocked(), 0, "m0's own waiting read went with it");
    // A restart of the whole group: no waiting read survives it.
    assert!(s
        .run(m1, 11, 10, &words("XREAD BLOCK 0 STREAMS k $"))
        .is_empty());
    s.drop_waiters();
    assert_eq!(s.blocked(), 0);
}

/// After a whole-group restart every pending entry goes back to its group (no member through
/// which one went lives): read again, acknowledged once.
#[test]
fn a_restart_gives_every_pending_entry_back() {
    let mut s = Streams::default();
    run(&mut s, 1, "XADD k 1-1 f v");
    run(&mut s, 1, "XGROUP CREATE k g 0");
    let Value::ByKey(r) = run(&mut s, 2, "XREADGROUP GROUP g a STREAMS k >") else {
        panic!()
    };
    assert_eq!(ids(&r[0].1), ["1-1"]);
    s.requeue_all();
    let Value::Array(p) = run(&mut s, 3, "XPENDING k g") else {
        panic!()
    };
    assert_eq!(p[0], Value::Int(0));
    let Value::ByKey(r) = run(&mut s, 3, "XREADGROUP GROUP g b STREAMS k >") else {
        panic!()
    };
    assert_eq!(ids(&r[0].1), ["1-1"]);
    assert_eq!(run(&mut s, 4, "XACK k g 1-1"), Value::Int(1));
    assert_eq!(run(&mut s, 4, "XACK k g 1-1"), Value::Int(0));
}

#[test]
fn keys_are_the_streams_a_command_names_as_redis_cluster_routes_it() {
    let k = |line: &str| {
        let w = words(line);
        keys(&w)
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(k("XADD s * f v"), ["s"]);
    assert_eq!(k("xlen s"), ["s"]);
    assert_eq!(k("XACK s g 1-1 2-2"), ["s"]);
    assert_eq!(k("XGROUP CREATE s g $ MKSTREAM"), ["s"]);
    assert_eq!(k("XGROUP HELP"), Vec::<String>::new());
    assert_eq!(k("XINFO STREAM s"), ["s"]);
    assert_eq!(k("XREAD COUNT 2 BLOCK 10 STREAMS a b 0 0"), ["a", "b"]);
    // A group or consumer called "streams" is not where the keys start.
    assert_eq!(
        k("XREADGROUP GROUP streams STREAMS COUNT 1 STREAMS s t > >"),
        ["s", "t"]
    );
    assert_eq!(k("DEL a b c"), ["a", "b", "c"]);
    assert_eq!(k("TYPE a"), ["a"]);
    assert_eq!(k("XADD"), Vec::<String>::new());
    assert_eq!(k("XREAD STREAMS"), Vec::<String>::new());
}
