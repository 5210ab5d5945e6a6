//! `blue-authz gen`: generate realistic Blue data for benchmarks, deterministic by seed, into a
//! Cedar JSON file or straight into a new database (validated against the schema).

use std::io::Write as _;
use std::path::PathBuf;

use super::{load_or_report, AnyError, Exit};
use crate::bench::gen;
use crate::bench::progress::Progress;
use crate::engine::index::parse_entity;
use crate::engine::pack::PackSpec;
use crate::service::offline::NewDatabase;

#[derive(clap::Args)]
pub struct GenCommand {
    /// 1.0: 100 companies, 10,000 projects, 100,000 users, 1,000,000 records.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Write a Cedar JSON entities file.
    #[arg(long, conflicts_with = "into_db", required_unless_present = "into_db")]
    out: Option<PathBuf>,
    /// Write straight into a new (empty) database, validated against the schema.
    #[arg(long)]
    into_db: Option<PathBuf>,
}

pub fn run(spec: &PackSpec, args: GenCommand) -> Result<Exit, AnyError> {
    let GenCommand {
        scale,
        seed,
        out,
        into_db,
    } = args;
    let started = std::time::Instant::now();
    if let Some(path) = out {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut first = true;
        let mut failed = None;
        let mut progress = Progress::new("generating entities", Some(expected(scale)));
        let mut n = 0u64;
        w.write_all(b"[")?;
        let g = gen::generate(scale, seed, &mut |e| {
            n += 1;
            progress.set(n);
            let sep: &[u8] = if first { b"\n" } else { b",\n" };
            first = false;
            if let Err(e) = w
                .write_all(sep)
                .and_then(|_| serde_json::to_writer(&mut w, &e).map_err(Into::into))
            {
                failed.get_or_insert(e);
            }
        });
        progress.finish();
        if let Some(e) = failed {
            return Err(e.into());
        }
        w.write_all(b"\n]\n")?;
        w.flush()?;
        println!(
            "generated {:?} into {} in {:.1?}",
            g.sizes,
            path.display(),
            started.elapsed()
        );
        return Ok(Exit::Success);
    }
    let Some(db) = into_db else {
        return Err("give --out FILE or --into-db PATH".into());
    };
    let Some(pack) = load_or_report(spec)? else {
        return Ok(Exit::Problems);
    };
    let target = NewDatabase::open(&db)?;
    let mut puts = Vec::new();
    let mut count = 0usize;
    let mut failed = None;
    let mut progress = Progress::new("generating and validating entities", Some(expected(scale)));
    let g = gen::generate(scale, seed, &mut |e| {
        if failed.is_some() {
            return;
        }
        progress.set(count as u64);
        match parse_entity(e, &pack.entities, "generated") {
            Ok(e) => {
                let json = e.to_json();
                puts.push((e.uid().to_string(), json.to_string().into_bytes()));
                count += 1;
            }
            Err(err) => failed = Some(err),
        }
    });
    progress.finish();
    if let Some(e) = failed {
        return Err(e.into());
    }
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprint!("writing {count} entities into {} ...", db.display());
    }
    target.write(&pack, puts)?;
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!(" done");
    }
    println!(
        "generated {:?}: {count} entities into {} in {:.1?}",
        g.sizes,
        db.display(),
        started.elapsed()
    );
    Ok(Exit::Success)
}

/// About how many entities `gen` makes at `scale` (1,190,600 at 1.0), for the progress line.
fn expected(scale: f64) -> u64 {
    (scale * 1_190_600.0).round() as u64
}
