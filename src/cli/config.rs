//! Experiment configs: a TOML file whose keys are a subcommand's long flags (`beta = 0.01`,
//! `free_steps = 200`, `seeds = [0, 1]`, `json = true`). The file is turned into flags placed
//! before the command line's own, and clap keeps the last occurrence of a flag, so flags given
//! on the command line override the file. Unknown keys and values of the wrong kind are errors.

use crate::{CmlError, Result};
use clap::ArgAction;
use std::ffi::OsString;
use std::path::Path;

/// Removes `--config FILE` from `args` and splices the file's flags in after the subcommand.
pub fn expand(command: &clap::Command, args: Vec<OsString>) -> Result<Vec<OsString>> {
    let position = args
        .iter()
        .position(|a| a == "--config" || a.to_string_lossy().starts_with("--config="));
    let Some(i) = position else { return Ok(args) };
    let mut args = args;
    let arg = args.remove(i).to_string_lossy().into_owned();
    let path = match arg.strip_prefix("--config=") {
        Some(p) => p.to_string(),
        None if i < args.len() => args.remove(i).to_string_lossy().into_owned(),
        None => {
            return Err(CmlError::invalid(
                "--config",
                "nothing",
                "the path of a TOML config file",
            ));
        }
    };
    // The subcommand is the first argument after the program name.
    let sub_name = args
        .get(1)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sub = command.find_subcommand(&sub_name).ok_or_else(|| {
        CmlError::invalid(
            "--config",
            &sub_name,
            "a config goes with a subcommand: cml train --config FILE",
        )
    })?;
    let flags = flags_from_file(sub, Path::new(&path))?;
    let mut out: Vec<OsString> = args[..2.min(args.len())].to_vec();
    out.extend(flags.into_iter().map(OsString::from));
    out.extend(args.into_iter().skip(2));
    Ok(out)
}

fn flags_from_file(sub: &clap::Command, path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|source| CmlError::Io {
        action: "cannot read config file",
        path: path.into(),
        source,
    })?;
    let err = |reason: String| CmlError::Instance {
        source_name: format!("config {}", path.display()),
        reason,
    };
    let table: toml::Table = text.parse().map_err(|e| err(format!("not valid TOML: {e}")))?;
    let known: Vec<&clap::Arg> = sub
        .get_arguments()
        .filter(|a| a.get_long().is_some_and(|l| l != "config" && l != "help"))
        .collect();
    let allowed = || {
        known
            .iter()
            .filter_map(|a| a.get_long())
            .map(|l| l.replace('-', "_"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut flags = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = known
            .iter()
            .find(|a| a.get_long() == Some(long.as_str()))
            .ok_or_else(|| err(format!("unknown key '{key}'; allowed are {}", allowed())))?;
        let is_flag = matches!(arg.get_action(), ArgAction::SetTrue);
        let kind = |want: &str| err(format!("key '{key}' must be {want}, found {}", value.type_str()));
        match value {
            toml::Value::Boolean(b) if is_flag => {
                if *b {
                    flags.push(format!("--{long}"));
                }
            }
            _ if is_flag => return Err(kind("true or false")),
            toml::Value::String(s) => flags.push(format!("--{long}={s}")),
            toml::Value::Integer(n) => flags.push(format!("--{long}={n}")),
            toml::Value::Float(x) => flags.push(format!("--{long}={x:e}")),
            toml::Value::Array(items) => {
                let parts: Result<Vec<String>> = items
                    .iter()
                    .map(|v| match v {
                        toml::Value::String(s) => Ok(s.clone()),
                        toml::Value::Integer(n) => Ok(n.to_string()),
                        toml::Value::Float(x) => Ok(format!("{x:e}")),
                        _ => Err(kind("a list of numbers or strings")),
                    })
                    .collect();
                flags.push(format!("--{long}={}", parts?.join(",")));
            }
            _ => return Err(kind("a number, a string or a list")),
        }
    }
    Ok(flags)
}
