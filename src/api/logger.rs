//! Firecracker's log lines for the `log` facade: `--log-path`/`--level`/`PUT /logger`.
//!
//! ```text
//! 2026-11-30T14:02:03.123456789 [my-vm:fc_api:INFO:src/api/server.rs:80] message
//! ```
//! The level and origin parts appear with `show_level` / `show_log_origin`. Lines go to
//! stderr until a log file is set.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::SystemTime;

use super::models::{LogLevel, Logger};
use super::router::Fault;

#[derive(Debug)]
struct Settings {
    id: String,
    file: Option<File>,
    show_level: bool,
    show_origin: bool,
    module: Option<String>,
}

#[derive(Debug)]
struct FirecrackerLogger(Mutex<Settings>);

static LOGGER: OnceLock<FirecrackerLogger> = OnceLock::new();

/// The `log` filter of a Firecracker level.
pub fn level_filter(level: LogLevel) -> log::LevelFilter {
    match level {
        LogLevel::Off => log::LevelFilter::Off,
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warning => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Trace => log::LevelFilter::Trace,
    }
}

/// Installs the Firecracker-format logger for instance `id` as the process's `log`
/// logger, at Firecracker's default level (Info) unless `level` says otherwise. If
/// another logger is installed already, it stays.
pub fn install(id: &str, level: Option<LogLevel>) {
    let logger = LOGGER.get_or_init(|| {
        FirecrackerLogger(Mutex::new(Settings {
            id: id.to_string(),
            file: None,
            show_level: false,
            show_origin: false,
            module: None,
        }))
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level_filter(level.unwrap_or_default()));
    }
}

/// Applies a logger configuration (from `PUT /logger`, the config file or the flags).
pub fn configure(l: &Logger) -> Result<(), Fault> {
    let file = match &l.log_path {
        Some(path) => Some(open(Path::new(path))?),
        None => None,
    };
    if let Some(logger) = LOGGER.get() {
        let mut s = logger.0.lock().unwrap_or_else(PoisonError::into_inner);
        if file.is_some() {
            s.file = file;
        }
        s.show_level = l.show_level.unwrap_or(s.show_level);
        s.show_origin = l.show_log_origin.unwrap_or(s.show_origin);
        if l.module.is_some() {
            s.module.clone_from(&l.module);
        }
    }
    if let Some(level) = l.level {
        log::set_max_level(level_filter(level));
    }
    Ok(())
}

fn open(path: &Path) -> Result<File, Fault> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Fault(format!("Cannot open the log file {}: {e}", path.display())))
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnn` in UTC, as Firecracker's log lines start.
fn timestamp() -> String {
    let mut t = humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
    // RFC 3339's zone designator; Firecracker's lines have none.
    t.pop();
    t
}

impl log::Log for FirecrackerLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = &s.module {
            if !record.module_path().unwrap_or("").starts_with(m.as_str()) {
                return;
            }
        }
        let thread = std::thread::current();
        let mut tag = format!("{}:{}", s.id, thread.name().unwrap_or("-"));
        if s.show_level {
            tag.push(':');
            tag.push_str(match record.level() {
                log::Level::Error => "ERROR",
                log::Level::Warn => "WARN",
                log::Level::Info => "INFO",
                log::Level::Debug => "DEBUG",
                log::Level::Trace => "TRACE",
            });
        }
        if s.show_origin {
            tag.push_str(&format!(
                ":{}:{}",
                record.file().unwrap_or("?"),
                record.line().unwrap_or(0)
            ));
        }
        let line = format!("{} [{tag}] {}\n", timestamp(), record.args());
        match &mut s.file {
            Some(f) => {
                let _ = f.write_all(line.as_bytes());
            }
            None => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_are_iso_8601() {
        let t = super::timestamp();
        assert_eq!(t.len(), 29, "{t}");
        assert_eq!(&t[4..5], "-");
        assert_eq!(&t[10..11], "T");
        assert!(t.starts_with("20"), "{t}");
    }
}
