//! Where the `AUTHZ_*` variables are read from: the process environment, or a map in tests.
//!
//! clap reads an argument's variable when the argument is built (`Arg::env` captures the
//! process environment then), so a test could not tell it another one. [`command`] answers
//! those lookups from a [`Strings`] instead: each variable that is set becomes the argument's
//! default, below the command line and above the built-in default. The precedence is thus
//! clap's own, values go through the same parsers and fail with the same messages, and a
//! test drives it with a map. `--help` still comes from the plain command, which names every
//! variable.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};

use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches};

use super::Cli;

/// A source of `AUTHZ_*` values (after linkerd2-proxy's `Strings`): [`Env`] in the binary,
/// a map in tests.
pub trait Strings {
    /// The value of the variable `key`, if it is set.
    fn get(&self, key: &str) -> Option<OsString>;

    /// The value of `key` as text; `None` when unset or not UTF-8 (as `std::env::var`).
    fn text(&self, key: &str) -> Option<String> {
        self.get(key).and_then(|v| v.into_string().ok())
    }
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Env;

impl Strings for Env {
    fn get(&self, key: &str) -> Option<OsString> {
        std::env::var_os(key)
    }
}

impl<K, V> Strings for HashMap<K, V>
where
    K: std::borrow::Borrow<str> + std::hash::Hash + Eq,
    V: AsRef<OsStr>,
{
    fn get(&self, key: &str) -> Option<OsString> {
        HashMap::get(self, key).map(|v| v.as_ref().to_owned())
    }
}

/// Subcommands that keep clap's own reading of the process environment: `ctl` is a client of
/// a running sidecar, with `requires` between its TLS flags that a default would not trigger.
const OWN_ENVIRONMENT: &[&str] = &["ctl"];

/// The command line of the binary with every `AUTHZ_*` lookup answered from `env`.
pub fn command(env: &dyn Strings) -> clap::Command {
    answer_from(Cli::command(), env)
}

fn answer_from(cmd: clap::Command, env: &dyn Strings) -> clap::Command {
    let subcommands: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .filter(|name| !OWN_ENVIRONMENT.contains(&name.as_str()))
        .collect();
    let mut cmd = cmd.mut_args(|arg| {
        let Some(name) = arg.get_env().and_then(OsStr::to_str).map(str::to_owned) else {
            return arg;
        };
        // Drop what clap captured from the process; the variable, when set, is the default.
        let arg = arg.env(None);
        match env.get(&name) {
            Some(value) => arg.default_value(value),
            None => arg,
        }
    });
    for name in subcommands {
        cmd = cmd.mut_subcommand(name, |sub| answer_from(sub, env));
    }
    cmd
}

/// Parses `argv` with the `AUTHZ_*` variables of `env`; `Err` is clap's (usage error, help or
/// version), to print with `exit()`.
pub fn parse_cli<I, T>(argv: I, env: &dyn Strings) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    match command(env).try_get_matches_from(&argv) {
        Ok(matches) => Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut Cli::command())),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            // Help from the plain command: it names each variable (`[env: AUTHZ_…=]`).
            Err(Cli::command()
                .try_get_matches_from(&argv)
                .err()
                .unwrap_or(e))
        }
        Err(e) => Err(e),
    }
}
