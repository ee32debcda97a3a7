//! Configuration: one set of settings from flags, `ENGRAM_*` environment
//! variables and an optional TOML file, in that order of precedence.
//!
//! Every setting is a clap argument with an `ENGRAM_<NAME>` variable; its key
//! in the file is `<name>` in lower case (`ENGRAM_DATA_DIR` → `data_dir`).
//! The file's values become the arguments' defaults before parsing, so clap
//! validates them like flags, and flags and variables still win. An unknown
//! key is an error, not silently ignored.
//!
//! ```toml
//! listen = "0.0.0.0:8420"
//! data_dir = "/var/lib/engram"
//! rate_limit_per_minute = 600
//! cors_origins = ["https://app.example"]
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, Command};

/// The environment variable that names the config file (also `--config`).
pub const CONFIG_ENV: &str = "ENGRAM_CONFIG";

/// `engram config …`
#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print the effective server configuration (flags > env > file > defaults), secrets masked.
    Print(PrintArgs),
}

#[derive(clap::Args, Debug)]
pub struct PrintArgs {
    #[command(flatten)]
    pub serve: crate::serve::ServeArgs,
    #[command(flatten)]
    pub client: crate::target::ClientArgs,
}

/// The config file named by `--config <path>` / `--config=<path>` or `ENGRAM_CONFIG`.
pub fn config_path(args: &[std::ffi::OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    std::env::var_os(CONFIG_ENV).map(PathBuf::from)
}

fn file_key(env: &str) -> Option<String> {
    env.strip_prefix("ENGRAM_").map(str::to_ascii_lowercase)
}

/// Every (file key) a command tree understands.
fn known_keys(cmd: &Command, out: &mut BTreeSet<String>) {
    for arg in cmd.get_arguments() {
        if let Some(key) = arg.get_env().and_then(|e| e.to_str()).and_then(file_key) {
            out.insert(key);
        }
    }
    for sub in cmd.get_subcommands() {
        known_keys(sub, out);
    }
}

fn value_string(key: &str, v: &toml::Value) -> anyhow::Result<String> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Array(items) => items
            .iter()
            .map(|i| value_string(key, i))
            .collect::<anyhow::Result<Vec<_>>>()?
            .join(","),
        other => bail!(
            "`{key}` must be a string, number, boolean or list, not a {}",
            other.type_str()
        ),
    })
}

/// Sets the file's values as defaults throughout the command tree.
fn apply(cmd: Command, table: &toml::Table) -> anyhow::Result<Command> {
    let mut cmd = cmd;
    let ids: Vec<(String, String)> = cmd
        .get_arguments()
        .filter_map(|a| {
            let key = a.get_env().and_then(|e| e.to_str()).and_then(file_key)?;
            Some((a.get_id().to_string(), key))
        })
        .collect();
    for (id, key) in ids {
        if let Some(v) = table.get(&key) {
            let value = value_string(&key, v)?;
            cmd = cmd.mut_arg(id, |a| a.default_value(value));
        }
    }
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in subs {
        let mut result = Ok(());
        cmd = cmd.mut_subcommand(name, |sub| match apply(sub.clone(), table) {
            Ok(s) => s,
            Err(e) => {
                result = Err(e);
                sub
            }
        });
        result?;
    }
    Ok(cmd)
}

/// A parsed config file.
pub struct FileConfig {
    pub path: PathBuf,
    table: toml::Table,
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        let table = toml::from_str(&text)
            .with_context(|| format!("parsing config file {}", path.display()))?;
        Ok(FileConfig {
            path: path.to_owned(),
            table,
        })
    }
}

/// Applies a config file to `cmd`; refuses unknown keys with the list of known ones.
pub fn with_file(cmd: Command, file: &FileConfig) -> anyhow::Result<Command> {
    let (path, table) = (&file.path, &file.table);
    let mut known = BTreeSet::new();
    known_keys(&cmd, &mut known);
    known.insert("config".into());
    for key in table.keys() {
        if !known.contains(key) {
            bail!(
                "{}: unknown setting `{key}`; known settings: {}",
                path.display(),
                known.iter().cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
    apply(cmd, table).with_context(|| format!("in config file {}", path.display()))
}

/// `engram config print`: every setting of the `config print` command with its
/// effective value and where it came from; secrets (`hide_env_values`) masked.
pub fn print(cmd: &Command, matches: &ArgMatches, file: Option<&FileConfig>) -> String {
    let mut out = String::from(
        "# Effective Engram configuration (flags > ENGRAM_* env > config file > defaults)\n",
    );
    if let Some(f) = file {
        out.push_str(&format!("# config file: {}\n", f.path.display()));
    }
    let mut rows: Vec<(String, String, &'static str)> = Vec::new();
    for arg in cmd.get_arguments() {
        let Some(key) = arg.get_env().and_then(|e| e.to_str()).and_then(file_key) else {
            continue;
        };
        let id = arg.get_id().as_str();
        let values: Vec<String> = matches
            .get_raw(id)
            .map(|vs| vs.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "env",
            Some(ValueSource::DefaultValue) => "default",
            _ => "unset",
        };
        let source = match file {
            Some(f) if source == "default" && f.table.contains_key(&key) => "file",
            _ => source,
        };
        let value = if values.is_empty() {
            "# (unset)".to_owned()
        } else if arg.is_hide_env_values_set() {
            "\"********\"".to_owned()
        } else if values.len() == 1 {
            toml_literal(&values[0])
        } else {
            format!(
                "[{}]",
                values
                    .iter()
                    .map(|v| toml_literal(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        rows.push((key, value, source));
    }
    rows.sort();
    for (key, value, source) in rows {
        if value.starts_with('#') {
            out.push_str(&format!("# {key} {value}\n"));
        } else {
            out.push_str(&format!("{key} = {value}  # {source}\n"));
        }
    }
    out
}

fn toml_literal(v: &str) -> String {
    if v == "true" || v == "false" || v.parse::<f64>().is_ok() {
        v.to_owned()
    } else {
        toml::Value::String(v.to_owned()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    fn parse(file: &str, args: &[&str]) -> anyhow::Result<crate::cli::Cli> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("engram.toml");
        std::fs::write(&path, file)?;
        let cmd = with_file(crate::cli::Cli::command(), &FileConfig::load(&path)?)?;
        let m = cmd.try_get_matches_from(args)?;
        Ok(crate::cli::Cli::from_arg_matches(&m)?)
    }

    #[test]
    fn file_values_are_defaults_that_flags_override() {
        let cli = parse(
            "listen = \"127.0.0.1:9999\"\nrate_limit_per_minute = 60\ncors_origins = [\"https://a.example\", \"https://b.example\"]\n",
            &["engram", "serve", "--rate-limit-per-minute", "30"],
        )
        .unwrap();
        let crate::cli::Command::Serve(s) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(s.listen.port(), 9999);
        assert_eq!(s.rate_limit_per_minute, 30, "the flag wins over the file");
        assert_eq!(s.cors_origins.len(), 2);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let e = parse("lisen = \"x\"\n", &["engram", "serve"]).unwrap_err();
        assert!(e.to_string().contains("unknown setting `lisen`"), "{e}");
        let e = parse("rate_limit_per_minute = \"many\"\n", &["engram", "serve"]).unwrap_err();
        assert!(format!("{e:#}").contains("many"), "{e:#}");
        let e = parse("listen = { a = 1 }\n", &["engram", "serve"]).unwrap_err();
        assert!(format!("{e:#}").contains("must be a string"), "{e:#}");
    }
}
