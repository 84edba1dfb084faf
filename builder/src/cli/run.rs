//! `estiba run`: a command in a container of a stored image, in the
//! foreground, with the executor RUN steps use. Nothing it writes is kept.

use super::args::RunArgs;
use super::Failure;
use anyhow::{anyhow, Context};
use estiba::executor::{
    self, ExtraMount, Network, Publish, RunOptions, RunSpec, Security, Stdin, Stream,
};
use std::io::Write;
use std::path::{Path, PathBuf};

mod terminal;

/// Exit status when the container could not be started, as docker's 125.
const EXIT_NOT_STARTED: i32 = 125;

pub(crate) fn run(args: &RunArgs, root: Option<&Path>) -> Result<(), Failure> {
    if args.detach {
        return Err(Failure::Usage(
            "estiba run has no daemon to keep a container running: -d is not supported \
             (run it in the background from your shell or a service manager)"
                .to_owned(),
        ));
    }
    if let Some(name) = &args.name {
        // docker's container names, `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, cut to
        // a host name's 63 bytes.
        let valid = name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            return Err(Failure::Usage(format!(
                "invalid --name {name:?}: a letter or digit, then letters, digits, '.', '_' \
                 and '-', up to 63"
            )));
        }
    }
    let store = super::store::open(root)?;
    let _lock = store.lock_shared().context("cannot lock the store")?;
    let (_, image) = super::images::find(&store, &args.image)?;
    let config = image.config;
    let mut lower = Vec::with_capacity(image.layers.len());
    for layer in image.layers.iter().rev() {
        lower.push(
            estiba::image::snapshot(&store, layer)
                .map_err(|e| anyhow!(estiba::solve::error_chain(&e)))?,
        );
    }
    let c = &config.config;
    // docker's rule: ENTRYPOINT, then the given command or else CMD; an
    // --entrypoint replaces the ENTRYPOINT and drops the CMD.
    let (mut argv, cmd) = match &args.entrypoint {
        Some(e) if e.is_empty() => (Vec::new(), None),
        Some(e) => (vec![e.clone()], None),
        None => (c.entrypoint.clone().unwrap_or_default(), c.cmd.clone()),
    };
    if args.command.is_empty() {
        argv.extend(cmd.unwrap_or_default());
    } else {
        argv.extend(args.command.iter().cloned());
    }
    if argv.is_empty() {
        return Err(Failure::Usage(format!(
            "{} has no ENTRYPOINT or CMD: give a command to run",
            args.image
        )));
    }
    let mut env = c.env.clone().unwrap_or_default();
    for e in &args.env {
        let kv = match e.split_once('=') {
            Some(_) => e.clone(),
            None => match std::env::var(e) {
                Ok(v) => format!("{e}={v}"),
                Err(_) => continue,
            },
        };
        let key = kv.split('=').next().unwrap_or_default().to_string();
        env.retain(|old| old.split('=').next() != Some(key.as_str()));
        env.push(kv);
    }
    let mut mounts = Vec::new();
    for v in &args.volumes {
        let parts: Vec<&str> = v.split(':').collect();
        let (src, dst, readonly) = match parts.as_slice() {
            [src, dst] => (*src, *dst, false),
            [src, dst, "ro"] => (*src, *dst, true),
            [src, dst, "rw"] => (*src, *dst, false),
            _ => {
                return Err(Failure::Usage(format!(
                    "invalid -v {v:?}: expected SRC:DST[:ro]"
                )))
            }
        };
        let source =
            std::fs::canonicalize(src).with_context(|| format!("cannot use -v source {src}"))?;
        mounts.push(ExtraMount::Bind {
            source,
            target: dst.to_string(),
            readonly,
        });
    }
    let network = match args.network.as_str() {
        "default" | "bridge" => Network::Private,
        "host" => Network::Host,
        "none" => Network::None,
        other => {
            return Err(Failure::Usage(format!(
                "invalid --network {other:?}: use default, host or none"
            )))
        }
    };
    let upper = store.temp_dir("run-upper")?;
    // The overlay's work dir and the executor's own scratch files.
    let scratch = store.temp_dir("run")?;
    let work = scratch.path().join("work");
    std::fs::create_dir(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let workdir = args
        .workdir
        .clone()
        .or_else(|| (!c.working_dir.is_empty()).then(|| c.working_dir.clone()))
        .unwrap_or_else(|| "/".to_string());
    let publish = args
        .publish
        .iter()
        .map(|p| parse_publish(p))
        .collect::<Result<Vec<_>, _>>()?;
    if !publish.is_empty() && network != Network::Private {
        return Err(Failure::Usage(
            "-p publishes ports of the default network: leave out --network".to_owned(),
        ));
    }
    let spec = RunSpec {
        lower: lower.iter().map(PathBuf::from).collect(),
        upper: upper.path().to_path_buf(),
        work,
        args: argv,
        env,
        user: args.user.clone().unwrap_or_else(|| c.user.clone()),
        workdir,
        network,
        hostname: args.name.clone().unwrap_or_default(),
        files: Default::default(),
        mounts,
        publish,
        security: Security::Sandbox,
        host: Default::default(),
        tty: args.tty,
        skip_sync: false,
    };
    let terminal = if args.tty {
        Some(terminal::Session::open(args.interactive)?)
    } else {
        None
    };
    let stdin = match &terminal {
        Some(t) => Stdin::Tty(t.slave()),
        None if args.interactive => Stdin::Inherit,
        None => Stdin::Null,
    };
    let code = executor::run_with(
        &spec,
        &RunOptions {
            tmp_dir: scratch.path().to_path_buf(),
            stdin,
            ..RunOptions::default()
        },
        &mut |stream, bytes| {
            let _ = match stream {
                Stream::Stdout => std::io::stdout().write_all(bytes),
                Stream::Stderr => std::io::stderr().write_all(bytes),
            };
        },
    );
    // The rest of the terminal's output, then the host terminal as it was.
    drop(terminal);
    let _ = std::io::stdout().flush();
    // `exit` runs no destructors: remove the container's files first.
    drop((upper, scratch));
    match code {
        Ok(0) => Ok(()),
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // docker: 127 when the command is not found, 126 when it
            // cannot be executed, 125 when the container could not start.
            let status = match &e {
                executor::ExecError::CommandNotFound { .. } => 127,
                executor::ExecError::Exec { source, .. }
                    if source.raw_os_error() == Some(libc::ENOENT) =>
                {
                    127
                }
                executor::ExecError::Exec { .. } => 126,
                _ => EXIT_NOT_STARTED,
            };
            eprint!("{}", super::report::render_chain(&anyhow::Error::new(e)));
            std::process::exit(status);
        }
    }
}

/// `-p [IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]`, as docker takes it (one
/// port each; docker's ranges and random host ports are not taken).
fn parse_publish(text: &str) -> Result<Publish, Failure> {
    let invalid = || {
        Failure::Usage(format!(
            "invalid -p {text:?}: expected [IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]"
        ))
    };
    let (ports, udp) = match text.rsplit_once('/') {
        Some((ports, "tcp")) => (ports, false),
        Some((ports, "udp")) => (ports, true),
        Some(_) => return Err(invalid()),
        None => (text, false),
    };
    let (rest, container) = ports.rsplit_once(':').ok_or_else(invalid)?;
    let (host_ip, host) = match rest.rsplit_once(':') {
        Some((ip, host)) => {
            let ip = ip.trim_start_matches('[').trim_end_matches(']');
            (Some(ip.parse().map_err(|_| invalid())?), host)
        }
        None => (None, rest),
    };
    Ok(Publish {
        host_ip,
        host_port: host.parse().map_err(|_| invalid())?,
        container_port: container.parse().map_err(|_| invalid())?,
        udp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_specs_parse_as_dockers() {
        let Ok(p) = parse_publish("8080:80") else {
            panic!("{} is a valid -p", "8080:80")
        };
        assert_eq!(
            (p.host_ip, p.host_port, p.container_port, p.udp),
            (None, 8080, 80, false)
        );
        let Ok(p) = parse_publish("127.0.0.1:5353:53/udp") else {
            panic!("{} is a valid -p", "127.0.0.1:5353:53/udp")
        };
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().expect("ip")));
        assert!(p.udp);
        let Ok(p) = parse_publish("[::1]:8080:80/tcp") else {
            panic!("{} is a valid -p", "[::1]:8080:80/tcp")
        };
        assert_eq!(p.host_ip, Some("::1".parse().expect("ip")));
        for bad in ["80", "x:80", "8080:80/sctp", "1.2.3:8080:80", "70000:80"] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
    }
}
