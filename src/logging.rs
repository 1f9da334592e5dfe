//! Builds the process's tracing subscriber: journald's native protocol with structured fields when
//! stderr is the journal (`JOURNAL_STREAM` names stderr's device and inode), readable text on
//! stderr otherwise. The filter comes from `ENDPOINT_COPIER_LOG`, else from `[log] level`; the
//! libraries' own events (kube, hyper, tower, h2, rustls) count as debug: they are shown only
//! when the filter asks for debug or names them, because kube-client logs every failed request at
//! error level, without context, next to our own report of the same failure.
//!
//! The journald layer is our own rather than `tracing-journald`'s, for one reason: that crate
//! (0.3.2) sends each entry with a blocking `UnixDatagram::send_to` and no timeout, so once
//! journald stops reading (restarting, stalled on a slow disk) and its socket queue is full
//! (`net.unix.max_dgram_qlen` datagrams), the next event blocks the thread that logs it until
//! journald reads again. Here that is the daemon's only runtime thread: Lease renewals, watches and
//! watchdog pings would stop with it. Measured against a socket nobody reads, the crate's 11th
//! event never returned; ours never blocks (`tests/journald.rs`): an entry that finds the queue
//! full is dropped and counted, and the next entry that gets through is preceded by one warning
//! with the count (`F_DROPPED`). Otherwise it writes what the crate writes: `F_`-prefixed
//! upper-cased field names, `SYSLOG_IDENTIFIER`, the same priorities, `TARGET`, `CODE_FILE`,
//! `CODE_LINE`. [`journald_layer_at`] also lets a test receive the exact datagrams on a socket of
//! its own.
//!
//! What gets logged, and at which level, is left to the modules that log; `main` calls [`init`]
//! (the daemon) or [`init_for_cli`] (`check`, `status`) once, before anything else logs.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::names;

/// journald's socket for the native protocol.
pub const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";
/// Environment variable systemd sets to stderr's `device:inode` when stderr is the journal.
const JOURNAL_STREAM_ENV: &str = "JOURNAL_STREAM";
/// Prefix of our own fields in the journal (`service` becomes `F_SERVICE`), so they never collide
/// with journald's trusted or standard fields.
pub const FIELD_PREFIX: &str = "F_";
/// Longest value kept per field, in bytes, when a whole entry is too large for one datagram
/// (trace-level API payloads); the entry then also carries `F_TRUNCATED=true`.
const TRUNCATED_VALUE_BYTES: usize = 4096;
/// Libraries whose events count as debug (a directive's target matches every target it
/// prefixes: `kube` covers `kube_client::client::builder`).
const LIBRARY_TARGETS: [&str; 5] = ["kube", "hyper", "tower", "h2", "rustls"];

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The filter directive does not parse.
    #[error("invalid log filter '{spec}' from {origin}")]
    Filter {
        /// The directive, e.g. `info,kube=debug`.
        spec: String,
        /// Where it came from: `ENDPOINT_COPIER_LOG` or `[log] level`.
        origin: &'static str,
        /// The parse error.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// The journald socket could not be opened or reached.
    #[error("failed to reach journald at '{path}'")]
    Journald {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A global subscriber was already installed (init called twice).
    #[error("failed to install the log subscriber")]
    Install(#[source] tracing_subscriber::util::TryInitError),
}

/// Installs the global subscriber. `ENDPOINT_COPIER_LOG` ([`names::LOG_ENV`]), when set and not
/// empty, wins over `level` (the config's `[log] level`, e.g. `info` or `info,kube=debug`).
///
/// Under systemd with stderr connected to the journal, events go to journald with
/// `SYSLOG_IDENTIFIER=endpoint-copier`, `PRIORITY` (error 3, warn 4, info 5, debug 6, trace 7) and
/// one `F_<FIELD>` per event and span field, without timestamps of our own. Otherwise they are
/// written as text to stderr, with colours only when stderr is a terminal. If journald cannot be
/// reached, stderr is used and a warning says why.
///
/// # Errors
/// [`Error::Filter`] naming the directive and its origin, [`Error::Install`] when called twice.
pub fn init(level: &str) -> Result<(), Error> {
    let filter = build_filter(level)?;
    let journal = stderr_is_journal().then(|| journald_layer_at(Path::new(JOURNALD_SOCKET)));
    let registry = tracing_subscriber::registry().with(filter);
    match journal {
        Some(Ok(layer)) => installed(registry.with(layer).try_init()),
        other => {
            let stderr = std::io::stderr();
            let text = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(stderr.is_terminal());
            installed(registry.with(text).try_init())?;
            if let Some(Err(error)) = other {
                tracing::warn!(error = %crate::error::chain(&error), "logging to stderr instead of journald");
            }
            Ok(())
        }
    }
}

/// Installs the global subscriber for the one-shot commands (`check`, `status`): always text on
/// stderr (their report goes to stdout, and an operator reads both in a terminal), without
/// timestamps or module paths; the filter is chosen as in [`init`].
///
/// # Errors
/// [`Error::Filter`] naming the directive and its origin, [`Error::Install`] when called twice.
pub fn init_for_cli(level: &str) -> Result<(), Error> {
    let filter = build_filter(level)?;
    let text = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .with_target(false);
    installed(
        tracing_subscriber::registry()
            .with(filter)
            .with(text)
            .try_init(),
    )
}

/// Whether a global subscriber is installed, so `main` knows if an error it logs will be seen or
/// must also be printed to stderr (a config error happens before logging is set up).
pub fn is_initialized() -> bool {
    INITIALIZED.load(Ordering::Relaxed)
}

/// Set once [`init`] or [`init_for_cli`] installed the subscriber (tracing's own flag also counts
/// scoped subscribers, which tests use).
static INITIALIZED: AtomicBool = AtomicBool::new(false);

fn installed(result: Result<(), tracing_subscriber::util::TryInitError>) -> Result<(), Error> {
    result.map_err(Error::Install)?;
    INITIALIZED.store(true, Ordering::Relaxed);
    Ok(())
}

/// The filter for `level` (or `ENDPOINT_COPIER_LOG`), with the libraries quietened as the module
/// doc says.
fn build_filter(level: &str) -> Result<EnvFilter, Error> {
    let (spec, origin) = filter_spec(level, std::env::var(names::LOG_ENV).ok());
    let invalid = |source| Error::Filter {
        spec: spec.clone(),
        origin,
        source,
    };
    // The operator's directive alone first, so an error names only what they wrote.
    EnvFilter::try_new(&spec).map_err(invalid)?;
    EnvFilter::try_new(with_quiet_libraries(&spec)).map_err(invalid)
}

/// `spec` plus `<library>=off` for each library it neither names nor lets through with a
/// `debug` or `trace` default level.
fn with_quiet_libraries(spec: &str) -> String {
    let directives: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    let verbose_default = directives.iter().any(|d| {
        d.parse::<tracing_subscriber::filter::LevelFilter>()
            .is_ok_and(|l| l >= tracing_subscriber::filter::LevelFilter::DEBUG)
    });
    if verbose_default {
        return spec.to_owned();
    }
    let mut out = spec.to_owned();
    for library in LIBRARY_TARGETS {
        let named = directives.iter().any(|d| d.starts_with(library));
        if !named {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(library);
            out.push_str("=off");
        }
    }
    out
}

/// The filter directive and where it came from: the environment wins when set and not blank.
fn filter_spec(level: &str, env: Option<String>) -> (String, &'static str) {
    match env {
        Some(spec) if !spec.trim().is_empty() => (spec.trim().to_owned(), names::LOG_ENV),
        _ => (level.trim().to_owned(), "[log] level"),
    }
}

/// Whether stderr is the journal: `JOURNAL_STREAM` is `device:inode` of the stream systemd
/// connected, and it only counts if stderr still is that stream (a shell started from the unit
/// inherits the variable but not the file).
fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var(JOURNAL_STREAM_ENV) else {
        return false;
    };
    // fstat(2) on a duplicate of fd 2, through std: no unsafe, no nix.
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    matches_journal_stream(&stream, meta.dev(), meta.ino())
}

/// Whether `JOURNAL_STREAM` (`"dev:ino"`, decimal) names the file with this device and inode.
fn matches_journal_stream(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

/// A tracing layer that sends each event to journald over the native protocol, never blocking:
/// an entry that finds journald's queue full is dropped and counted (see the module doc).
#[derive(Debug)]
pub struct JournaldLayer {
    /// Non-blocking, unbound: each entry is addressed, so a restarted journald is reached again.
    socket: UnixDatagram,
    path: PathBuf,
    /// Entries dropped because journald's queue was full, not yet reported to journald.
    dropped: AtomicU64,
}

/// How one send went.
enum Sent {
    /// journald has it.
    Delivered,
    /// journald's queue is full: it is not reading.
    QueueFull,
    /// Anything else (journald gone, entry too large even cut).
    Failed,
}

/// A journald layer sending to the datagram socket at `socket` ([`JOURNALD_SOCKET`] in
/// production; a test's own socket in tests). Checks once that somebody listens there.
///
/// # Errors
/// [`Error::Journald`] naming the socket when it cannot be created or nobody listens there.
pub fn journald_layer_at(socket: &Path) -> Result<JournaldLayer, Error> {
    let err = |source| Error::Journald {
        path: socket.to_owned(),
        source,
    };
    let sock = UnixDatagram::unbound().map_err(err)?;
    sock.set_nonblocking(true).map_err(err)?;
    // journald discards an empty datagram; sending one proves somebody listens (a full queue
    // proves it too: somebody bound the socket, and will read again).
    match sock.send_to(&[], socket) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(err(e)),
    }
    Ok(JournaldLayer {
        socket: sock,
        path: socket.to_owned(),
        dropped: AtomicU64::new(0),
    })
}

/// The syslog priority of a tracing level, as STYLE.md maps them: error 3 (a person must act),
/// warn 4, info 5 (notice: state changes), debug 6, trace 7.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 5,
        Level::DEBUG => 6,
        Level::TRACE => 7,
    }
}

/// The fields of a span, kept in its extensions so every event inside it carries them.
struct SpanFields(Vec<(String, String)>);

/// Collects event or span fields as (journal name, value) pairs.
struct Collector<'a> {
    fields: &'a mut Vec<(String, String)>,
    message: Option<&'a mut String>,
}

impl Visit for Collector<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.put(field, text);
    }
}

impl Collector<'_> {
    fn put(&mut self, field: &Field, value: String) {
        if field.name() == "message"
            && let Some(message) = self.message.as_deref_mut()
        {
            *message = value;
            return;
        }
        self.fields.push((journal_field_name(field.name()), value));
    }
}

/// `F_` + the field name upper-cased, with anything but ASCII letters, digits and `_` dropped
/// (journald silently discards entries with invalid names); at most 64 characters.
fn journal_field_name(name: &str) -> String {
    let mut out = String::from(FIELD_PREFIX);
    out.extend(
        name.chars()
            .map(|c| if c == '.' { '_' } else { c })
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .map(|c| c.to_ascii_uppercase()),
    );
    out.truncate(64);
    out
}

/// Appends one field in the native protocol: `NAME=value\n`, or, when the value holds a newline,
/// `NAME\n` + little-endian u64 length + value + `\n`.
fn put_field(buf: &mut Vec<u8>, name: &str, value: &[u8], cap: Option<usize>) {
    let value = match cap {
        Some(cap) if value.len() > cap => &value[..cap],
        _ => value,
    };
    buf.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value);
    buf.push(b'\n');
}

/// One journal entry, before encoding.
struct Entry {
    priority: u8,
    message: String,
    target: String,
    file: Option<String>,
    line: Option<u32>,
    fields: Vec<(String, String)>,
}

impl Entry {
    /// The warning that `count` entries were dropped while journald's queue was full.
    fn dropped(count: u64) -> Entry {
        Entry {
            priority: priority(&Level::WARN),
            message: "journald was not reading: log entries dropped".to_owned(),
            target: module_path!().to_owned(),
            file: None,
            line: None,
            fields: vec![(journal_field_name("dropped"), count.to_string())],
        }
    }

    fn encode(&self, cap: Option<usize>) -> Vec<u8> {
        let mut buf = Vec::with_capacity(256);
        put_field(&mut buf, "PRIORITY", &[b'0' + self.priority], None);
        put_field(&mut buf, "SYSLOG_IDENTIFIER", names::NAME.as_bytes(), None);
        put_field(&mut buf, "MESSAGE", self.message.as_bytes(), cap);
        put_field(&mut buf, "TARGET", self.target.as_bytes(), None);
        if let Some(file) = &self.file {
            put_field(&mut buf, "CODE_FILE", file.as_bytes(), None);
        }
        if let Some(line) = self.line {
            put_field(&mut buf, "CODE_LINE", line.to_string().as_bytes(), None);
        }
        for (name, value) in &self.fields {
            put_field(&mut buf, name, value.as_bytes(), cap);
        }
        if cap.is_some() {
            put_field(&mut buf, "F_TRUNCATED", b"true", None);
        }
        buf
    }

    /// The entry as one stderr line with a `<N>` priority prefix, which journald's stream reader
    /// understands: the fallback when the native socket fails.
    fn to_stderr_line(&self) -> String {
        let mut line = format!("<{}>{}", self.priority, self.message.replace('\n', " "));
        for (name, value) in &self.fields {
            let key = name
                .strip_prefix(FIELD_PREFIX)
                .unwrap_or(name)
                .to_lowercase();
            let _ = write!(line, " {key}={}", value.replace('\n', " "));
        }
        line.push('\n');
        line
    }
}

impl JournaldLayer {
    fn send(&self, entry: &Entry) {
        let backlog = self.dropped.load(Ordering::Relaxed);
        if backlog > 0 {
            match self.try_send(&Entry::dropped(backlog)) {
                Sent::Delivered => {
                    self.dropped.fetch_sub(backlog, Ordering::Relaxed);
                }
                Sent::QueueFull => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                // The entry below meets the same fate and says so on stderr.
                Sent::Failed => {}
            }
        }
        match self.try_send(entry) {
            Sent::Delivered => {}
            Sent::QueueFull => {
                // Waiting would stall the daemon's only thread until journald reads again.
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Sent::Failed => {
                // Logging about logging would recurse: keep the entry on stderr, which under
                // systemd is the journal's stream socket anyway.
                let _ = std::io::stderr().write_all(entry.to_stderr_line().as_bytes());
            }
        }
    }

    fn try_send(&self, entry: &Entry) -> Sent {
        let full = entry.encode(None);
        let mut sent = self.socket.send_to(&full, &self.path);
        if let Err(e) = &sent
            && e.kind() != std::io::ErrorKind::WouldBlock
        {
            // Most likely too large for one datagram (EMSGSIZE/ENOBUFS): cut each value rather
            // than lose the entry. journald would also take a memfd, but passing one needs unsafe
            // code or more of nix.
            let cut = entry.encode(Some(TRUNCATED_VALUE_BYTES));
            if cut.len() < full.len() {
                sent = self.socket.send_to(&cut, &self.path);
            }
        }
        match sent {
            Ok(_) => Sent::Delivered,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Sent::QueueFull,
            Err(_) => Sent::Failed,
        }
    }
}

impl<S> Layer<S> for JournaldLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Vec::new();
        attrs.record(&mut Collector {
            fields: &mut fields,
            message: None,
        });
        span.extensions_mut().insert(SpanFields(fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(SpanFields(fields)) = ext.get_mut::<SpanFields>() {
            values.record(&mut Collector {
                fields,
                message: None,
            });
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = Vec::new();
        // Outer spans first; an event field of the same name comes later and journalctl shows
        // both values.
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(SpanFields(f)) = span.extensions().get::<SpanFields>() {
                    fields.extend(f.iter().cloned());
                }
            }
        }
        let mut message = String::new();
        event.record(&mut Collector {
            fields: &mut fields,
            message: Some(&mut message),
        });
        self.send(&Entry {
            priority: priority(meta.level()),
            message,
            target: meta.target().to_owned(),
            file: meta.file().map(str::to_owned),
            line: meta.line(),
            fields,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_filter_wins_over_the_configured_level_unless_blank() {
        assert_eq!(
            filter_spec("info", Some("debug,kube=warn".into())),
            ("debug,kube=warn".to_owned(), names::LOG_ENV)
        );
        assert_eq!(
            filter_spec("info", Some("  ".into())),
            ("info".to_owned(), "[log] level")
        );
        assert_eq!(
            filter_spec("warn", None),
            ("warn".to_owned(), "[log] level")
        );
    }

    #[test]
    fn libraries_are_quiet_unless_the_filter_asks_for_debug_or_names_them() {
        assert_eq!(
            with_quiet_libraries("info"),
            "info,kube=off,hyper=off,tower=off,h2=off,rustls=off"
        );
        assert_eq!(
            with_quiet_libraries("info,endpoint_copier=debug"),
            "info,endpoint_copier=debug,kube=off,hyper=off,tower=off,h2=off,rustls=off"
        );
        assert_eq!(
            with_quiet_libraries("warn,kube_client=debug"),
            "warn,kube_client=debug,hyper=off,tower=off,h2=off,rustls=off"
        );
        assert_eq!(with_quiet_libraries("debug"), "debug");
        assert_eq!(with_quiet_libraries("trace,kube=info"), "trace,kube=info");
        assert_eq!(
            with_quiet_libraries(""),
            "kube=off,hyper=off,tower=off,h2=off,rustls=off"
        );
    }

    #[test]
    fn journal_stream_must_name_stderrs_device_and_inode() {
        assert!(matches_journal_stream("8:12345", 8, 12345));
        assert!(!matches_journal_stream("8:12345", 8, 12346));
        assert!(!matches_journal_stream("9:12345", 8, 12345));
        assert!(!matches_journal_stream("garbage", 8, 12345));
        assert!(!matches_journal_stream("", 8, 12345));
    }

    #[test]
    fn field_names_are_prefixed_upper_cased_and_sanitised() {
        assert_eq!(journal_field_name("service"), "F_SERVICE");
        assert_eq!(journal_field_name("resource_version"), "F_RESOURCE_VERSION");
        assert_eq!(journal_field_name("a.b-c"), "F_A_BC");
        assert_eq!(journal_field_name(&"x".repeat(100)).len(), 64);
    }

    #[test]
    fn multi_line_values_use_the_length_prefixed_form() {
        let mut buf = Vec::new();
        put_field(&mut buf, "MESSAGE", b"a\nb", None);
        let mut want = b"MESSAGE\n".to_vec();
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"a\nb\n");
        assert_eq!(buf, want);

        let mut buf = Vec::new();
        put_field(&mut buf, "F_SERVICE", b"default/kubernetes-vip", None);
        assert_eq!(buf, b"F_SERVICE=default/kubernetes-vip\n");
    }

    #[test]
    fn invalid_filter_names_the_directive_and_its_origin() {
        let err = EnvFilter::try_new("info,kube=loud").map_err(|source| Error::Filter {
            spec: "info,kube=loud".into(),
            origin: "[log] level",
            source,
        });
        let msg = err.unwrap_err().to_string();
        assert!(
            msg.contains("info,kube=loud") && msg.contains("[log] level"),
            "{msg}"
        );
    }

    #[test]
    fn stderr_fallback_line_carries_priority_message_and_fields() {
        let entry = Entry {
            priority: 4,
            message: "watch restarted".into(),
            target: "endpoint_copier::watch".into(),
            file: None,
            line: None,
            fields: vec![("F_SERVICE".into(), "default/kubernetes".into())],
        };
        assert_eq!(
            entry.to_stderr_line(),
            "<4>watch restarted service=default/kubernetes\n"
        );
    }
}
