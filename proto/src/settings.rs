//! Settings from three places, in order of precedence: a command-line flag, its `IXN_*` environment
//! variable, a key of the optional TOML file, the default. clap parses and checks all of them, so a
//! bad value is refused the same way wherever it came from, and names its setting.
//!
//! The file's top-level keys are the flags' long names with `_` for `-` (`metrics_listen = "…"`);
//! its tables are the service's own structured configuration (interaction-server's `[platform]`).
//! A key that is no setting is an error, not something silently ignored.

use clap::parser::ValueSource;
use clap::{ArgMatches, Command, Parser};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

/// The exit code of a configuration error (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

/// The parsed settings and the configuration file they were read with, if any.
#[derive(Debug)]
pub struct Loaded<T> {
    pub cli: T,
    /// The file's path and contents; its tables are the caller's to read.
    pub file: Option<(PathBuf, toml::Table)>,
}

/// Why settings could not be loaded.
#[derive(Debug)]
pub enum Error {
    /// A flag or variable was wrong, or `--help` / `--version` was asked for (clap's own output).
    Cli(clap::Error),
    /// The configuration file could not be read, or holds something that is no setting.
    File(String),
}

impl Error {
    /// Prints the error (or the help) and gives the process's exit code: 0 for `--help` and
    /// `--version`, [`EXIT_CONFIG`] for everything else.
    pub fn report(&self) -> ExitCode {
        match self {
            Error::Cli(e) => {
                let _ = e.print();
                if e.use_stderr() {
                    ExitCode::from(EXIT_CONFIG)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Error::File(message) => {
                eprintln!("configuration error: {message}");
                ExitCode::from(EXIT_CONFIG)
            }
        }
    }
}

/// Parses `args` into `T`. `config` is the id of `T`'s flag naming the TOML file (on the top-level
/// command or on its one subcommand in use); `tables` are the file's tables the caller reads itself.
pub fn load<T: Parser>(
    args: Vec<OsString>,
    config: &str,
    tables: &[&str],
) -> Result<Loaded<T>, Error> {
    let command = T::command();
    let matches = command
        .clone()
        .try_get_matches_from(&args)
        .map_err(Error::Cli)?;
    let (command, matches_in_use) = match matches.subcommand() {
        Some((name, sub)) => (
            command
                .find_subcommand(name)
                .cloned()
                .expect("a parsed subcommand exists"),
            sub,
        ),
        None => (command, &matches),
    };
    let path = matches_in_use
        .try_get_one::<PathBuf>(config)
        .ok()
        .flatten()
        .cloned();
    let Some(path) = path else {
        let cli = T::from_arg_matches(&matches).map_err(Error::Cli)?;
        return Ok(Loaded { cli, file: None });
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::File(format!("cannot read {}: {e}", path.display())))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| Error::File(format!("{}: {e}", path.display())))?;
    let mut args = args;
    args.extend(
        from_file(&command, matches_in_use, &table, config, tables)
            .map_err(|message| Error::File(format!("{}: {message}", path.display())))?,
    );
    // Appended after everything given, the file's flags land on the command or subcommand in use.
    let matches = T::command().try_get_matches_from(&args).map_err(|e| {
        Error::File(format!(
            "{} (a setting read from {})",
            e.render().to_string().trim_end(),
            path.display()
        ))
    })?;
    let cli = T::from_arg_matches(&matches).map_err(Error::Cli)?;
    Ok(Loaded {
        cli,
        file: Some((path, table)),
    })
}

/// The flags the file sets that neither the command line nor the environment did.
fn from_file(
    command: &Command,
    matches: &ArgMatches,
    table: &toml::Table,
    config: &str,
    tables: &[&str],
) -> Result<Vec<OsString>, String> {
    let mut flags = Vec::new();
    for (key, value) in table {
        if let toml::Value::Table(_) = value {
            if tables.contains(&key.as_str()) {
                continue;
            }
            return Err(format!("unknown table [{key}]"));
        }
        let long = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && a.get_id() != config)
            .ok_or_else(|| format!("unknown setting `{key}`"))?;
        let value = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => return Err(format!("`{key}` must be a single value")),
        };
        let given = matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if !given {
            flags.push(OsString::from(format!("--{long}={value}")));
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[derive(Debug, Parser)]
    struct Cli {
        #[arg(long, default_value = "127.0.0.1:1")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value_t = 5)]
        timeout_ms: u64,
        #[arg(long, env = "IXN_SETTINGS_TEST_LEVEL", default_value = "low")]
        level: String,
        #[arg(long)]
        config: Option<PathBuf>,
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn args(extra: &[&str]) -> Vec<OsString> {
        std::iter::once("svc")
            .chain(extra.iter().copied())
            .map(OsString::from)
            .collect()
    }

    #[test]
    fn the_file_fills_what_flags_leave_at_their_default() {
        let f = file("listen = \"127.0.0.1:7\"\ntimeout_ms = 9\n[platform]\nx = 1\n");
        let path = f.path().to_str().unwrap();
        let loaded = load::<Cli>(
            args(&["--config", path, "--timeout-ms", "3"]),
            "config",
            &["platform"],
        )
        .unwrap();
        assert_eq!(loaded.cli.listen.port(), 7);
        assert_eq!(loaded.cli.timeout_ms, 3, "the flag wins over the file");
        let (_, table) = loaded.file.unwrap();
        assert!(table.contains_key("platform"));
    }

    #[test]
    fn an_unknown_key_or_table_is_refused_by_name() {
        for (text, expected) in [
            ("listne = \"x\"", "unknown setting `listne`"),
            ("[plat]\na = 1", "unknown table [plat]"),
            ("config = \"other.toml\"", "unknown setting `config`"),
        ] {
            let f = file(text);
            let err = load::<Cli>(
                args(&["--config", f.path().to_str().unwrap()]),
                "config",
                &["platform"],
            )
            .unwrap_err();
            match err {
                Error::File(message) => assert!(message.contains(expected), "{message}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_bad_value_in_the_file_names_the_setting_and_the_file() {
        let f = file("listen = \"nowhere\"");
        let err = load::<Cli>(
            args(&["--config", f.path().to_str().unwrap()]),
            "config",
            &[],
        )
        .unwrap_err();
        match &err {
            Error::File(message) => {
                assert!(message.contains("--listen"), "{message}");
                assert!(message.contains(f.path().to_str().unwrap()), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(err.report(), ExitCode::from(EXIT_CONFIG));
    }

    #[test]
    fn a_bad_flag_exits_64_and_help_exits_0() {
        let err = load::<Cli>(args(&["--timeout-ms", "soon"]), "config", &[]).unwrap_err();
        assert_eq!(err.report(), ExitCode::from(EXIT_CONFIG));
        let help = load::<Cli>(args(&["--help"]), "config", &[]).unwrap_err();
        assert_eq!(help.report(), ExitCode::SUCCESS);
    }

    #[test]
    fn without_a_file_the_defaults_hold() {
        let loaded = load::<Cli>(args(&[]), "config", &[]).unwrap();
        assert_eq!(loaded.cli.timeout_ms, 5);
        assert!(loaded.file.is_none());
    }
}
