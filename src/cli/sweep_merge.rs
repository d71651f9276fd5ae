//! `cml sweep-merge`: the shards of one sweep (run anywhere, e.g. as a cluster job array) into
//! the CSV the unsharded sweep writes, after checking that they belong together.

use crate::io::write_atomically;
use crate::sweep::{CSV_HEADER, parse_shard};
use crate::{CmlError, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct SweepMergeArgs {
    /// The shards' CSV files, in any order (each with its OUT.config.json beside it).
    #[arg(required = true)]
    shards: Vec<PathBuf>,
    /// The merged CSV.
    #[arg(long)]
    out: PathBuf,
}

/// One shard: its index, the count it was cut into, the sweep config it ran, and its rows.
struct Shard {
    index: usize,
    count: usize,
    config: serde_json::Value,
    rows: String,
}

fn read_shard(csv: &Path) -> Result<Shard> {
    let io = |action, path: &Path, source| CmlError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    let meta_path = csv.with_extension("config.json");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta_path).map_err(|e| io("read", &meta_path, e))?)
            .map_err(|e| {
                CmlError::invalid(
                    "shard config",
                    meta_path.display(),
                    format!("JSON written by cml sweep ({e})"),
                )
            })?;
    let shard = meta["shard"].as_str().ok_or_else(|| {
        CmlError::invalid(
            "shard config",
            meta_path.display(),
            "an object with \"sweep\" and \"shard\" (written by cml sweep)",
        )
    })?;
    let (index, count) = parse_shard(shard)?;
    let text = std::fs::read_to_string(csv).map_err(|e| io("read", csv, e))?;
    let rows = text.strip_prefix(&format!("{CSV_HEADER}\n")).ok_or_else(|| {
        CmlError::invalid(
            "shard CSV",
            csv.display(),
            "a CSV written by this version of cml sweep (its header differs)",
        )
    })?;
    Ok(Shard {
        index,
        count,
        config: meta["sweep"].clone(),
        rows: rows.to_string(),
    })
}

/// Checks that the shards are `0/n .. n-1/n` of one config, each once, and concatenates them.
pub fn merge(paths: &[PathBuf]) -> Result<String> {
    let mut shards = paths.iter().map(|p| read_shard(p)).collect::<Result<Vec<_>>>()?;
    shards.sort_by_key(|s| s.index);
    let n = shards[0].count;
    for (s, path) in shards.iter().zip(paths) {
        if s.count != n {
            return Err(CmlError::invalid(
                "shard",
                format!("{}/{} ({})", s.index, s.count, path.display()),
                format!("every shard of one sweep is i/{n}"),
            ));
        }
        if s.config != shards[0].config {
            return Err(CmlError::invalid(
                "shard",
                path.display(),
                "every shard must come from the same sweep config (OUT.config.json differs)",
            ));
        }
    }
    let present: Vec<usize> = shards.iter().map(|s| s.index).collect();
    if present != (0..n).collect::<Vec<_>>() {
        return Err(CmlError::invalid(
            "shards",
            format!("{present:?} of {n}"),
            format!("each of 0..{n} exactly once"),
        ));
    }
    let mut csv = format!("{CSV_HEADER}\n");
    for s in &shards {
        csv.push_str(&s.rows);
    }
    Ok(csv)
}

pub fn run(args: SweepMergeArgs) -> Result<()> {
    let csv = merge(&args.shards)?;
    write_atomically(&args.out, csv.as_bytes())?;
    println!(
        "merged {} shards ({} rows) into {}",
        args.shards.len(),
        csv.lines().count() - 1,
        args.out.display()
    );
    Ok(())
}
