//! Pipelines: parsing, validation, rules and the built-in functions' outputs.

use super::*;
use crate::types::MemberId;

const BRANCHING: &str = r#"{
  "name": "demo", "entry": "a",
  "steps": {
    "a": {"function": "branch", "args": {"threshold": 4},
          "next": [{"route": "big", "to": ["b", "c"]}, {"to": ["c"]}]},
    "b": {"function": "spin", "args": {"us": 1}},
    "c": {"function": "echo"}
  }
}"#;

fn req(p: &Pipeline, payload: &[u8]) -> Request {
    p.entry_request(
        RequestId::new(MemberId(0), 1),
        payload.to_vec(),
        Meta::default(),
    )
}

#[test]
fn branching_follows_the_output() {
    let p = Pipeline::from_json(BRANCHING).unwrap();
    let r = req(&p, b"hello");
    let out = p.steps["a"].function.builtin().unwrap().output(&r.payload);
    assert_eq!(out.route.as_deref(), Some("big"));
    let next: Vec<_> = p
        .continuations(&r, &out, Meta::default())
        .into_iter()
        .map(|r| r.step)
        .collect();
    assert_eq!(next, vec!["b", "c"]);

    let r = req(&p, b"hi");
    let out = p.steps["a"].function.builtin().unwrap().output(&r.payload);
    let next: Vec<_> = p
        .continuations(&r, &out, Meta::default())
        .into_iter()
        .map(|r| r.step)
        .collect();
    assert_eq!(next, vec!["c"]);

    let c = Request {
        step: "c".into(),
        ..r
    };
    assert!(p.continuations(&c, &out, Meta::default()).is_empty());
    assert_eq!(p.steps["b"].queue.name, "demo.b");
}

#[test]
fn errors_name_the_field() {
    let cases = [
        (
            r#"{"name":"x","entry":"a","steps":{"a":{"function":"echo","next":[{"to":["zz"]}]}}}"#,
            "steps.a.next[0].to[0]",
        ),
        (
            r#"{"name":"x","entry":"b","steps":{"a":{"function":"echo"}}}"#,
            "entry",
        ),
        (
            r#"{"name":"x","entry":"a","steps":{"a":{"function":"nope"}}}"#,
            "steps.a.function",
        ),
        (
            r#"{"name":"x","entry":"a","steps":{"a":{"function":"spin","args":{"us":"x"}}}}"#,
            "steps.a.args.us",
        ),
        (
            r#"{"name":"x","entry":"a","steps":{"a":{"function":"spin","args":{"ms":1}}}}"#,
            "steps.a.args.ms",
        ),
        (
            r#"{"name":"x","entry":"a","steps":{"a":{"function":"echo","nxt":[]}}}"#,
            "steps.a.nxt",
        ),
        (
            r#"{"name":"x","entry":"a","steps":{"a":{"function":"echo","queue_options":{"order":"random"}}}}"#,
            "steps.a.queue_options.order",
        ),
        (
            r#"{"name":"x","entry":"a","steps":{"a":{"function":"echo","next":[{"to":["b"]}]},"b":{"function":"echo","next":[{"to":["a"]}]}}}"#,
            "steps.b.next",
        ),
        (
            r#"{"name":"","entry":"a","steps":{"a":{"function":"echo"}}}"#,
            "name",
        ),
        (
            r#"{"name":"x","entry":"a","steps":{"a":{"function":"echo","next":[{"to":[]}]}}}"#,
            "steps.a.next[0].to",
        ),
    ];
    for (doc, field) in cases {
        let e = Pipeline::from_json(doc).unwrap_err();
        assert_eq!(e.field, field, "{doc}: {e}");
    }
}

#[test]
fn rules_look_into_json_outputs_and_the_call_travels_on() {
    let p = Pipeline::from_json(
        r#"{"name":"m","entry":"a","steps":{
          "a":{"function":"classify","executor":{"kind":"exec","command":["classify"]},
               "next":[{"when":{"pointer":"/kind","equals":"long"},"to":["b"]},
                       {"route":"urgent","to":["c"]},
                       {"to":["d"]}]},
          "b":{"function":"echo"},"c":{"function":"echo"},"d":{"function":"echo"}}}"#,
    )
    .unwrap();
    let mut r = req(&p, b"{}");
    r.http = Some(Box::new(Http {
        method: "POST".into(),
        path: "/".into(),
        headers: vec![("Content-Type".into(), "text/plain".into())],
        ..Http::default()
    }));
    let next = |payload: &[u8], route: Option<&str>| {
        let out = Output {
            payload: payload.to_vec(),
            route: route.map(str::to_string),
            http: Some(Box::new(Http {
                status: 200,
                headers: vec![("content-type".into(), "application/json".into())],
                ..Http::default()
            })),
            failed: false,
        };
        p.continuations(&r, &out, Meta::default())
    };
    let long = next(br#"{"kind":"long","n":5}"#, None);
    assert_eq!(long.len(), 1);
    assert_eq!(long[0].step, "b");
    // The next step sees the call, with this output's content type.
    let h = long[0].http.as_ref().unwrap();
    assert_eq!(h.method, "POST");
    assert_eq!(h.header("Content-Type"), Some("application/json"));
    assert_eq!(h.headers.len(), 1);
    assert_eq!(next(br#"{"kind":"short"}"#, None)[0].step, "d");
    assert_eq!(next(b"not json", Some("urgent"))[0].step, "c");
    assert_eq!(next(b"not json", None)[0].step, "d");
}

#[test]
fn executor_errors_name_the_field() {
    let step = |body: &str| {
        format!(r#"{{"name":"x","entry":"a","steps":{{"a":{{"function":"f",{body}}}}}}}"#)
    };
    let cases = [
        (
            step(r#""executor":{"kind":"exec"}"#),
            "steps.a.executor.command",
        ),
        (
            step(r#""executor":{"kind":"ssh","command":["x"]}"#),
            "steps.a.executor.kind",
        ),
        (
            step(r#""executor":{"kind":"exec","command":["x"],"timeout_ms":0}"#),
            "steps.a.executor.timeout_ms",
        ),
        (
            step(r#""executor":{"kind":"http","command":["x"],"concurrency":0}"#),
            "steps.a.executor.concurrency",
        ),
        (
            step(r#""executor":{"kind":"http","upstream_url":"https://x:1"}"#),
            "steps.a.executor.upstream_url",
        ),
        (
            step(r#""executor":{"kind":"lambda","command":["b"],"code":"x"}"#),
            "steps.a.executor.code",
        ),
        (
            step(r#""executor":{"kind":"exec","command":["b"]},"args":{"a":1}"#),
            "steps.a.args",
        ),
        (
            step(r#""executor":{"kind":"exec","command":["b"],"env":{"A=B":"1"}}"#),
            "steps.a.executor.env.A=B",
        ),
        (
            step(r#""executor":{"kind":"exec","command":["b"],"colour":1}"#),
            "steps.a.executor.colour",
        ),
        (
            r#"{"name":"x","entry":"a","steps":{"a":{"function":"echo",
                "next":[{"when":{"pointer":"kind","equals":1},"to":["b"]}]},
                "b":{"function":"echo"}}}"#
                .to_string(),
            "steps.a.next[0].when.pointer",
        ),
    ];
    for (doc, field) in cases {
        let e = Pipeline::from_json(&doc).unwrap_err();
        assert_eq!(e.field, field, "{doc}: {e}");
    }
    // An http function may be a server run by someone else.
    let ok = step(r#""executor":{"kind":"http","upstream_url":"http://127.0.0.1:5000"}"#);
    let p = Pipeline::from_json(&ok).unwrap();
    assert!(p.steps["a"].function.builtin().is_none());
    assert_eq!(Pipeline::from_json(&p.to_json()).unwrap(), p);
}

#[test]
fn chain_is_linear() {
    let p = Pipeline::chain("bench", 3, 5);
    assert_eq!(p.queue_specs().len(), 3);
    let mut r = req(&p, b"x");
    let mut seen = vec![r.step.clone()];
    loop {
        let out = p.steps[&r.step]
            .function
            .builtin()
            .unwrap()
            .output(&r.payload);
        let mut next = p.continuations(&r, &out, Meta::default());
        if next.is_empty() {
            break;
        }
        r = next.remove(0);
        seen.push(r.step.clone());
    }
    assert_eq!(seen, vec!["f0", "f1", "f2"]);
    // A document round-trips through JSON.
    assert_eq!(Pipeline::from_json(&p.to_json()).unwrap(), p);
}

#[test]
fn spin_asks_for_its_cpu_time_and_echoes() {
    let b = Builtin::Spin { us: 2000 };
    assert_eq!(b.cpu_time(), Some(core::time::Duration::from_micros(2000)));
    assert_eq!(b.output(b"x").payload, b"x".to_vec());
    assert_eq!(Builtin::Echo.cpu_time(), None);
}

#[test]
fn queue_durability_is_read_from_the_step_or_the_defaults() {
    let durable = |doc: &str| {
        Pipeline::from_json(doc)
            .unwrap()
            .queue_specs()
            .iter()
            .map(|q| q.durability)
            .collect::<Vec<_>>()
    };
    let doc = r#"{"name": "p", "entry": "a",
        "steps": {"a": {"function": "echo", "queue_options": {"durability": "log"}}}}"#;
    assert_eq!(durable(doc), vec![Durability::Log]);
    let doc = r#"{"name": "p", "entry": "a", "queue_defaults": {"durability": "log"},
        "steps": {"a": {"function": "echo"}}}"#;
    assert_eq!(durable(doc), vec![Durability::Log]);
    let doc = r#"{"name": "p", "entry": "a", "queue_defaults": {"durability": "memory"},
        "steps": {"a": {"function": "echo"}}}"#;
    assert!(Pipeline::from_json(doc).is_ok());
    let doc = r#"{"name": "p", "entry": "a", "queue_defaults": {"durability": "disk"},
        "steps": {"a": {"function": "echo"}}}"#;
    assert_eq!(
        Pipeline::from_json(doc).unwrap_err().field,
        "queue_defaults.durability"
    );
}

#[test]
fn the_group_default_durability_is_written_into_the_document() {
    let durable = |doc: &str, group| {
        let p = Pipeline::from_json_in_group(doc, group).unwrap();
        // What the group orders is the settled document: read alone, it says the same.
        let again = Pipeline::from_json(&p.to_json()).unwrap();
        assert_eq!(again.queue_specs(), p.queue_specs());
        p.queue_specs()
            .iter()
            .map(|q| (q.name.clone(), q.durability))
            .collect::<Vec<_>>()
    };
    let (m, l) = (Durability::Memory, Durability::Log);
    let q = |a, b| vec![("p.a".to_string(), a), ("p.b".to_string(), b)];
    // Nothing said: the group's default, for steps with and without queue options.
    let doc = r#"{"name": "p", "entry": "a", "steps": {"a": {"function": "echo",
        "queue_options": {"capacity": 8}, "next": [{"to": ["b"]}]}, "b": {"function": "echo"}}}"#;
    assert_eq!(durable(doc, l), q(l, l));
    assert_eq!(durable(doc, m), q(m, m));
    // The pipeline's default wins over the group's, and a step's queue options inherit it.
    let doc = r#"{"name": "p", "entry": "a", "queue_defaults": {"durability": "memory"},
        "steps": {"a": {"function": "echo", "queue_options": {"capacity": 8},
        "next": [{"to": ["b"]}]}, "b": {"function": "echo"}}}"#;
    assert_eq!(durable(doc, l), q(m, m));
    // A step's own setting wins over both.
    let doc = r#"{"name": "p", "entry": "a", "queue_defaults": {"durability": "memory"},
        "steps": {"a": {"function": "echo", "queue_options": {"durability": "log"},
        "next": [{"to": ["b"]}]}, "b": {"function": "echo"}}}"#;
    assert_eq!(durable(doc, m), q(l, m));
    // A document of the wrong shape is refused by name as before.
    let doc =
        r#"{"name": "p", "entry": "a", "queue_defaults": 3, "steps": {"a": {"function": "echo"}}}"#;
    assert_eq!(
        Pipeline::from_json_in_group(doc, l).unwrap_err().field,
        "queue_defaults"
    );
    assert_eq!(
        Pipeline::from_json_in_group("{", l).unwrap_err(),
        Pipeline::from_json("{").unwrap_err()
    );
}
