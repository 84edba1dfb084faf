//! `estiba run`: a command in a container of a stored image, in the
//! foreground, with the executor RUN steps use. Nothing it writes is kept.

use super::args::RunArgs;
use super::Failure;
use anyhow::{anyhow, Context};
use estiba::executor::{self, ExtraMount, Network, RunOptions, RunSpec, Stream};
use estiba::solve;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Exit status when the container could not be started, as docker's 125.
const EXIT_NOT_STARTED: i32 = 125;

pub(crate) fn run(args: &RunArgs, root: Option<&Path>) -> Result<(), Failure> {
    let store = super::store::open(root)?;
    let _lock = store.lock_shared().context("cannot lock the store")?;
    let (_, config, layers) =
        solve::load_image(&store, &args.image).map_err(|e| anyhow!(solve::error_chain(&e)))?;
    let mut lower = Vec::with_capacity(layers.len());
    for layer in layers.iter().rev() {
        lower.push(solve::snapshot_of(&store, layer).map_err(|e| anyhow!(solve::error_chain(&e)))?);
    }
    let c = &config.config;
    // docker's rule: ENTRYPOINT, then the given command or else CMD.
    let mut argv = c.entrypoint.clone().unwrap_or_default();
    if args.command.is_empty() {
        argv.extend(c.cmd.clone().unwrap_or_default());
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
        "host" | "default" => Network::Host,
        "none" => Network::None,
        other => {
            return Err(Failure::Usage(format!(
                "invalid --network {other:?}: use host or none"
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
    let spec = RunSpec {
        lower: lower.iter().map(PathBuf::from).collect(),
        upper: upper.path().to_path_buf(),
        work,
        args: argv,
        env,
        user: args.user.clone().unwrap_or_else(|| c.user.clone()),
        workdir,
        network,
        hostname: String::new(),
        files: Default::default(),
        mounts,
    };
    let code = executor::run_with(
        &spec,
        &RunOptions {
            tmp_dir: scratch.path().to_path_buf(),
            ..RunOptions::default()
        },
        &mut |stream, bytes| {
            let _ = match stream {
                Stream::Stdout => std::io::stdout().write_all(bytes),
                Stream::Stderr => std::io::stderr().write_all(bytes),
            };
        },
    );
    let _ = std::io::stdout().flush();
    // `exit` runs no destructors: remove the container's files first.
    drop((upper, scratch));
    match code {
        Ok(0) => Ok(()),
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // docker: 127 when the command is not found, 125 when the
            // container could not start at all.
            let status = match e {
                executor::ExecError::CommandNotFound { .. } => 127,
                _ => EXIT_NOT_STARTED,
            };
            eprint!("{}", super::report::render_chain(&anyhow::Error::new(e)));
            std::process::exit(status);
        }
    }
}
