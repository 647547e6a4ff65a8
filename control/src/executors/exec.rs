//! `exec`: one process per request, as OpenFaaS's classic watchdog runs a function: the body on
//! stdin, the output from stdout, the call's details in environment variables (`Http_Method`,
//! `Http_Path`, `Http_Query`, and each header as `Http_` and its name with `-` as `_`, e.g.
//! `Http_Content_Type`). A non-zero exit is a 500 with the end of stderr; a run past
//! `timeout_ms` is killed (with whatever it started) and answers 504.

use super::{canonical_header, read_limited, Pool, Proc};
use conveyor_core::pipeline::Output;
use conveyor_core::queue::Http;
use conveyor_dataplane::invoker::{FunctionError, Job};
use std::io::{Read, Write};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Instant;

/// How much of stderr is kept for the error message.
const STDERR_KEPT: usize = 4096;

/// The `Http_*` variables of a call.
pub fn environment(http: Option<&Http>) -> Vec<(String, String)> {
    let Some(h) = http else {
        return vec![("Http_Method".into(), "POST".into())];
    };
    let mut env = vec![
        ("Http_Method".to_string(), h.method.clone()),
        ("Http_Path".to_string(), h.path.clone()),
    ];
    if !h.query.is_empty() {
        env.push(("Http_Query".into(), h.query.clone()));
    }
    for (k, v) in &h.headers {
        let name = format!("Http_{}", canonical_header(k).replace('-', "_"));
        if name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            env.push((name, v.clone()));
        }
    }
    env
}

pub fn run(pool: &Pool, job: &Job) -> Result<Output, FunctionError> {
    let f = &pool.f;
    let limit = job.max_output();
    let started = Instant::now();
    let mut p = Proc::spawn(
        f,
        &environment(job.req.http.as_deref()),
        Stdio::piped(),
        Stdio::piped(),
        Stdio::piped(),
    )
    .map_err(|e| FunctionError::new(500, e.to_string()))?;
    pool.started(started.elapsed());
    // The body goes in, stdout and stderr come out, each on its own thread so that no pipe
    // fills while another is waited for.
    let stdin = p.child.stdin.take();
    let body = job.req.payload.clone();
    let writer = std::thread::spawn(move || {
        if let Some(mut w) = stdin {
            // A function that does not read its input closes the pipe: not an error.
            let _ = w.write_all(&body);
        }
    });
    let (tx, rx) = mpsc::channel();
    let stdout = p.child.stdout.take();
    let out_tx = tx.clone();
    std::thread::spawn(move || {
        let r = match stdout {
            Some(o) => read_limited(o, limit),
            None => Ok(Vec::new()),
        };
        let _ = out_tx.send(r);
    });
    let stderr = p.child.stderr.take();
    let (etx, erx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        if let Some(mut e) = stderr {
            let mut buf = [0u8; 4096];
            while let Ok(n) = e.read(&mut buf) {
                if n == 0 {
                    break;
                }
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > STDERR_KEPT {
                    kept.drain(..kept.len() - STDERR_KEPT);
                }
            }
        }
        let _ = etx.send(kept);
    });
    drop(tx);
    let out = match rx.recv_timeout(pool.timeout()) {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            p.kill();
            return Err(FunctionError::new(500, e.to_string()));
        }
        Err(_) => {
            p.kill();
            return Err(FunctionError::new(
                504,
                format!(
                    "{} exceeded its timeout of {} ms and was killed",
                    f.name, f.executor.timeout_ms
                ),
            ));
        }
    };
    // stdout closed: the process is exiting; what remains of the timeout bounds the wait.
    let left = pool.timeout().saturating_sub(started.elapsed());
    let status = loop {
        if let Some(st) = p.exited() {
            break Some(st);
        }
        if started.elapsed() >= pool.timeout() || left.is_zero() {
            break None;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    };
    let _ = writer.join();
    let Some(status) = status else {
        p.kill();
        return Err(FunctionError::new(
            504,
            format!(
                "{} closed its output but did not exit within its timeout of {} ms",
                f.name, f.executor.timeout_ms
            ),
        ));
    };
    // Something the function left running may hold stderr open: do not wait for it long.
    let err_text = erx
        .recv_timeout(std::time::Duration::from_millis(100))
        .unwrap_or_default();
    if !status.success() {
        let tail = String::from_utf8_lossy(&err_text);
        let tail = tail.trim();
        return Err(FunctionError::new(
            500,
            if tail.is_empty() {
                format!("{} failed: {status}", f.name)
            } else {
                format!("{} failed: {status}: {tail}", f.name)
            },
        ));
    }
    let ctype = f
        .executor
        .content_type
        .clone()
        .or_else(|| {
            job.req
                .http
                .as_ref()
                .and_then(|h| h.header("Content-Type").map(str::to_string))
        })
        .unwrap_or_else(|| "application/octet-stream".into());
    Ok(Output {
        payload: out,
        route: None,
        http: Some(Box::new(Http {
            status: 200,
            headers: vec![("Content-Type".into(), ctype)],
            ..Http::default()
        })),
        failed: false,
    })
}
