//! `validate` and `import`: a policy file checked offline, or written into the store.

use std::path::Path;
use std::process::ExitCode;

use super::{EXIT_CONFIG, runtime_with};
use crate::config::{EtcdArgs, Source, source};
use crate::fleet;
use crate::model::file::load_policy_file_max;
use crate::startup::{etcd_config, read_seed_max};
use crate::store::{ImportMode, MutableStore, SledStore};

/// `authz-sidecar validate`: every problem of a policy file, with its line.
pub(super) fn validate(file: &Path, max_bytes: u64) -> ExitCode {
    match load_policy_file_max(file, max_bytes) {
        Ok(policy) => {
            println!(
                "{}: ok ({} permissions, {} roles, {} subjects)",
                file.display(),
                policy.catalog.permissions.len(),
                policy.roles.len(),
                policy.subjects.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            // `{:#}`: each problem with its source line and a caret.
            eprintln!("{e:#}");
            eprintln!("{}: {} problem(s)", file.display(), e.problems.len());
            ExitCode::from(1)
        }
    }
}

/// `authz-sidecar import`: into the data dir or, with `--source etcd`, under the etcd prefix.
pub(super) fn import(
    data_dir: &Path,
    source_text: &str,
    etcd: &EtcdArgs,
    file: &Path,
    max_bytes: u64,
) -> ExitCode {
    let mut errors = Vec::new();
    match source(source_text, &mut errors) {
        Some(Source::Embedded) => import_embedded(data_dir, file, max_bytes),
        Some(Source::Etcd) => import_etcd(etcd, file, max_bytes),
        None => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn import_embedded(data_dir: &Path, file: &Path, max_bytes: u64) -> ExitCode {
    let seed = match read_seed_max(file, max_bytes) {
        Ok(seed) => seed,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(1);
        }
    };
    let imported = SledStore::open(data_dir)
        .and_then(|s| s.import(&seed.policy, "import", ImportMode::Reseed, &seed.digest));
    match imported {
        Ok(revision) => {
            println!(
                "imported {} into {} at revision {revision}",
                file.display(),
                data_dir.display()
            );
            // The import is done and flushed; settling only makes the next start faster.
            if let Err(e) = SledStore::settle(data_dir) {
                eprintln!("note: the sidecar's next start will replay the import's log ({e})");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("import failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// Seeds (or replaces) a fleet's policy in etcd; every sidecar on the prefix follows.
fn import_etcd(etcd: &EtcdArgs, file: &Path, max_bytes: u64) -> ExitCode {
    let mut errors = Vec::new();
    let config = etcd
        .settings(&mut errors)
        .and_then(|settings| etcd_config(settings, &mut errors));
    let seed = read_seed_max(file, max_bytes);
    let (config, seed) = match (config, seed) {
        (Some(config), Ok(seed)) if errors.is_empty() => (config, seed),
        (_, seed) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            if let Err(e) = seed {
                eprintln!("{e}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match runtime_with(None) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let client = fleet::EtcdClient::new(&config)?;
        let layout = fleet::Layout::new(&config.prefix);
        fleet::import_policy(&client, &layout, &seed.policy, "import").await
    });
    match result {
        Ok(revision) => {
            println!(
                "imported {} into etcd prefix {} at revision {revision}",
                file.display(),
                config.prefix
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("import failed: {e}");
            ExitCode::from(1)
        }
    }
}
