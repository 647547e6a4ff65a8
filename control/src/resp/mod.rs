//! The Redis protocol server (issue 23): what a member with `[member.resp]` serves. The stream
//! commands run in the group's order on every replica ([`conveyor_core::streams`]); this side
//! reads requests ([`conveyor_resp::parse`]), answers the connection's own commands, submits
//! the others and encodes the replies for the connection's protocol version.

use conveyor_core::streams::Value;
use conveyor_resp::{Proto, Reply};

/// A replicated reply, as the RESP codec encodes it for `proto`.
pub fn reply(v: &Value, proto: Proto) -> Reply {
    let reply = |v: &Value| reply(v, proto);
    match v {
        Value::Simple(s) => Reply::Simple(s.clone()),
        Value::Error(s) => Reply::Error(s.clone()),
        Value::Int(n) => Reply::Integer(*n),
        Value::Bulk(b) => Reply::Bulk(b.clone()),
        Value::Array(items) => Reply::Array(items.iter().map(reply).collect()),
        Value::Null => Reply::Null,
        Value::NullArray => Reply::NullArray,
        Value::Map(pairs) => Reply::Map(pairs.iter().map(|(k, v)| (reply(k), reply(v))).collect()),
        Value::ByKey(pairs) if proto == Proto::Resp3 => {
            Reply::Map(pairs.iter().map(|(k, v)| (reply(k), reply(v))).collect())
        }
        Value::ByKey(pairs) => Reply::Array(
            pairs
                .iter()
                .map(|(k, v)| Reply::Array(vec![reply(k), reply(v)]))
                .collect(),
        ),
    }
}
