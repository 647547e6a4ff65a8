//! `conveyor ctl`: the control plane's client.

use super::*;

/// `conveyor ctl`: a client of the control plane.
pub fn ctl(address: &str, token: Option<&str>, args: &[String]) -> Result<()> {
    let base = if address.starts_with("http") {
        address.trim_end_matches('/').to_string()
    } else {
        format!("http://{address}")
    };
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    let auth = |r: ureq::Request| match token {
        Some(t) => r.set("Authorization", &format!("Bearer {t}")),
        None => r,
    };
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let resp = match a.as_slice() {
        ["health"] => agent.get(&format!("{base}/health")).call(),
        ["view"] => agent.get(&format!("{base}/v1/view")).call(),
        ["view", shard] => agent.get(&format!("{base}/v1/view?shard={shard}")).call(),
        ["queues"] => agent.get(&format!("{base}/v1/queues")).call(),
        ["queues", shard] => agent.get(&format!("{base}/v1/queues?shard={shard}")).call(),
        ["metrics"] => agent.get(&format!("{base}/metrics")).call(),
        ["pipelines"] | ["pipelines", "list"] => {
            auth(agent.get(&format!("{base}/v1/pipelines"))).call()
        }
        ["pipelines", "get", name] => {
            auth(agent.get(&format!("{base}/v1/pipelines/{name}"))).call()
        }
        ["pipelines", "put", file] => {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
            let p = Pipeline::from_json(&text).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
            auth(agent.put(&format!("{base}/v1/pipelines/{}", p.name))).send_string(&text)
        }
        ["pipelines", "delete", name] => {
            auth(agent.delete(&format!("{base}/v1/pipelines/{name}"))).call()
        }
        ["admissions"] => agent.get(&format!("{base}/v1/admissions")).call(),
        ["admit", name] => auth(agent.put(&format!("{base}/v1/admissions/{name}"))).call(),
        ["revoke", name] => auth(agent.delete(&format!("{base}/v1/admissions/{name}"))).call(),
        ["shards"] => agent.get(&format!("{base}/v1/shards")).call(),
        ["shard", "move", queue, to] => {
            auth(agent.put(&format!("{base}/v1/shards/queues/{queue}"))).send_string(to)
        }
        ["leave", name] => auth(agent.post(&format!("{base}/v1/members/{name}/leave"))).call(),
        _ => bail!("usage: conveyor ctl [--control ADDR] [--token T] health | view [SHARD] | queues [SHARD] | metrics | pipelines [list | get NAME | put FILE | delete NAME] | admissions | admit NAME | revoke NAME | leave NAME | shards | shard move QUEUE SHARD"),
    };
    match resp {
        Ok(r) => {
            println!("{}", r.into_string()?);
            Ok(())
        }
        Err(ureq::Error::Status(code, r)) => {
            let body = r.into_string().unwrap_or_default();
            bail!("the control plane answered {code}: {body}")
        }
        Err(e) => bail!("cannot reach the control plane at {base}: {e}"),
    }
}
