//! `brood ctl`: a client for a running `brood run`, over its socket.
//! A plain blocking client: one request line, then the answer lines.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::cli::{CtlArgs, CtlVerb};
use crate::config;
use crate::core::status::{render_table, InstanceStatus};
use crate::error::Error;

fn socket_path(args: &CtlArgs) -> Result<PathBuf, Error> {
    if let Some(p) = &args.socket {
        return Ok(p.clone());
    }
    let config = match &args.file {
        Some(f) => f.clone(),
        None => config::find_config(None).unwrap_or_else(|_| PathBuf::from("brood.toml")),
    };
    Ok(config::config_dir(&config).join(".brood.sock"))
}

fn request(verb: &CtlVerb) -> Result<Value, Error> {
    Ok(match verb {
        CtlVerb::Status { .. } => json!({"verb": "status"}),
        CtlVerb::Start { target } => json!({"verb": "start", "target": target}),
        CtlVerb::Stop { target } => json!({"verb": "stop", "target": target}),
        CtlVerb::Restart { target } => json!({"verb": "restart", "target": target}),
        CtlVerb::Signal { signal, target } => {
            if crate::signals::parse(signal).is_none() {
                return Err(Error::usage(format!("unknown signal '{signal}'")));
            }
            json!({"verb": "signal", "signal": signal, "target": target})
        }
        CtlVerb::Scale { spec } => {
            let (name, count) = spec
                .split_once('=')
                .and_then(|(n, c)| Some((n, c.parse::<u32>().ok()?)))
                .ok_or_else(|| Error::usage(format!("scale takes NAME=N, not '{spec}'")))?;
            json!({"verb": "scale", "name": name, "count": count})
        }
        CtlVerb::Logs {
            lines,
            follow,
            target,
        } => {
            json!({"verb": "logs", "target": target, "lines": lines, "follow": follow})
        }
        CtlVerb::Shutdown => json!({"verb": "shutdown"}),
    })
}

pub fn run(args: CtlArgs) -> Result<i32, Error> {
    let req = request(&args.verb)?;
    let path = socket_path(&args)?;
    let stream = UnixStream::connect(&path)
        .map_err(|e| Error::no_server(format!("no brood answering at {}: {e}", path.display())))?;
    let mut writer = stream
        .try_clone()
        .map_err(|e| Error::io("cannot use the socket", e))?;
    // A brood that refuses us answers and hangs up before reading the
    // request: a failed write is "no brood" only if no answer is waiting.
    let write_error = writer.write_all(format!("{req}\n").as_bytes()).err();
    let mut lines = BufReader::new(stream).lines();
    let first = match (lines.next(), write_error) {
        (Some(Ok(l)), _) => l,
        (_, Some(e)) => {
            return Err(Error::no_server(format!(
                "no brood answering at {}: {e}",
                path.display()
            )))
        }
        _ => {
            return Err(Error::no_server(format!(
                "brood at {} closed the connection",
                path.display()
            )))
        }
    };
    let reply: Value = serde_json::from_str(&first)
        .map_err(|e| Error::runtime(format!("malformed answer from brood: {e}")))?;
    if reply["ok"] != Value::Bool(true) {
        let why = reply["error"].as_str().unwrap_or("refused");
        eprintln!("brood ctl: {why}");
        return Ok(1);
    }
    match &args.verb {
        CtlVerb::Status { json: true } => println!("{}", json!({"programs": reply["programs"]})),
        CtlVerb::Status { json: false } => print_status(&reply["programs"]),
        CtlVerb::Logs { follow, .. } => {
            for l in reply["lines"].as_array().into_iter().flatten() {
                print_line(l);
            }
            if *follow {
                for line in lines.map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        print_line(&v);
                    }
                }
            }
        }
        CtlVerb::Scale { .. } => println!(
            "scaled {} to {}",
            reply["name"].as_str().unwrap_or(""),
            reply["count"]
        ),
        CtlVerb::Shutdown => println!("shutting down"),
        _ => {
            let labels: Vec<&str> = reply["affected"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if labels.is_empty() {
                println!("nothing to do");
            } else {
                println!("{}", labels.join(" "));
            }
        }
    }
    Ok(0)
}

fn print_line(v: &Value) {
    let label = v["label"].as_str().unwrap_or("?");
    let text = v["line"].as_str().unwrap_or("");
    if v["stream"] == "stderr" {
        eprintln!("{label} | {text}");
    } else {
        println!("{label} | {text}");
    }
}

fn print_status(programs: &Value) {
    match serde_json::from_value::<Vec<InstanceStatus>>(programs.clone()) {
        Ok(rows) => print!("{}", render_table(&rows)),
        Err(e) => eprintln!("brood: error: malformed status reply: {e}"),
    }
}
