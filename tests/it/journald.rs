//! The journald layer as journald sees it: a test binds its own unix datagram socket, points the
//! layer at it, logs through a scoped subscriber and parses the native-protocol datagrams.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use endpoint_copier::logging::{Error, journald_layer_at};
use tracing_subscriber::layer::SubscriberExt;

/// A socket playing journald.
struct FakeJournal {
    _dir: tempfile::TempDir,
    socket: UnixDatagram,
    path: std::path::PathBuf,
}

impl FakeJournal {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.socket");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        FakeJournal {
            _dir: dir,
            socket,
            path,
        }
    }

    /// Runs `f` with the journald layer as the thread's subscriber, then returns every entry
    /// received (skipping the empty probe datagram the layer sends when it is built).
    fn capture(&self, f: impl FnOnce()) -> Vec<BTreeMap<String, Vec<String>>> {
        let layer = journald_layer_at(&self.path).unwrap();
        let subscriber = tracing_subscriber::registry()
            .with(layer)
            .with(tracing_subscriber::filter::LevelFilter::TRACE);
        tracing::subscriber::with_default(subscriber, f);
        self.socket.set_nonblocking(true).unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        while let Ok(n) = self.socket.recv(&mut buf) {
            if n > 0 {
                out.push(parse(&buf[..n]));
            }
        }
        out
    }
}

/// Parses one datagram of journald's native protocol into field → values.
fn parse(mut data: &[u8]) -> BTreeMap<String, Vec<String>> {
    let mut fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
    while !data.is_empty() {
        let nl = data.iter().position(|b| *b == b'\n').unwrap();
        let line = &data[..nl];
        if let Some(eq) = line.iter().position(|b| *b == b'=') {
            let name = String::from_utf8(line[..eq].to_vec()).unwrap();
            let value = String::from_utf8(line[eq + 1..].to_vec()).unwrap();
            fields.entry(name).or_default().push(value);
            data = &data[nl + 1..];
        } else {
            let name = String::from_utf8(line.to_vec()).unwrap();
            let rest = &data[nl + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            let value = String::from_utf8(rest[8..8 + len].to_vec()).unwrap();
            assert_eq!(
                rest[8 + len],
                b'\n',
                "binary field {name} must end with a newline"
            );
            fields.entry(name).or_default().push(value);
            data = &rest[8 + len + 1..];
        }
    }
    fields
}

fn one<'a>(entry: &'a BTreeMap<String, Vec<String>>, field: &str) -> &'a str {
    let values = entry
        .get(field)
        .unwrap_or_else(|| panic!("no {field} in {entry:?}"));
    assert_eq!(values.len(), 1, "{field} given more than once: {values:?}");
    &values[0]
}

#[test]
fn an_info_event_arrives_with_message_priority_identifier_and_prefixed_fields() {
    let journal = FakeJournal::new();
    let entries = journal.capture(|| {
        tracing::info!(
            service = "default/kubernetes-vip",
            endpoints = 3,
            "target slices updated"
        );
    });
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(one(e, "MESSAGE"), "target slices updated");
    assert_eq!(one(e, "PRIORITY"), "5");
    assert_eq!(one(e, "SYSLOG_IDENTIFIER"), "endpoint-copier");
    assert_eq!(one(e, "F_SERVICE"), "default/kubernetes-vip");
    assert_eq!(one(e, "F_ENDPOINTS"), "3");
    assert_eq!(one(e, "TARGET"), module_path!());
    assert!(one(e, "CODE_FILE").ends_with("journald.rs"));
    assert!(!e.contains_key("F_MESSAGE"), "the message is MESSAGE only");
}

#[test]
fn levels_map_to_the_priorities_style_md_gives() {
    let journal = FakeJournal::new();
    let entries = journal.capture(|| {
        tracing::error!("e");
        tracing::warn!("w");
        tracing::info!("i");
        tracing::debug!("d");
        tracing::trace!("t");
    });
    let got: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (one(e, "MESSAGE"), one(e, "PRIORITY")))
        .collect();
    assert_eq!(
        got,
        [("e", "3"), ("w", "4"), ("i", "5"), ("d", "6"), ("t", "7")]
    );
}

#[test]
fn span_fields_are_carried_by_the_events_inside_the_span() {
    let journal = FakeJournal::new();
    let entries = journal.capture(|| {
        let span = tracing::info_span!("pair", service = "default/kubernetes-vip");
        let _guard = span.enter();
        tracing::warn!(
            attempt = 2,
            backoff_ms = 400,
            "source read failed, retrying"
        );
    });
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(one(e, "F_SERVICE"), "default/kubernetes-vip");
    assert_eq!(one(e, "F_ATTEMPT"), "2");
    assert_eq!(one(e, "F_BACKOFF_MS"), "400");
    assert_eq!(one(e, "PRIORITY"), "4");
}

#[test]
fn display_and_debug_values_are_recorded_as_text() {
    let journal = FakeJournal::new();
    let entries = journal.capture(|| {
        let error = std::io::Error::other("connection refused");
        tracing::error!(error = %error, holder = ?Some("node-2"), "lease renewal failed");
    });
    let e = &entries[0];
    assert_eq!(one(e, "F_ERROR"), "connection refused");
    assert_eq!(one(e, "F_HOLDER"), "Some(\"node-2\")");
    assert_eq!(one(e, "PRIORITY"), "3");
}

#[test]
fn multi_line_messages_arrive_intact() {
    let journal = FakeJournal::new();
    let entries = journal.capture(|| {
        tracing::info!(error = "first\nsecond", "two\nlines");
    });
    let e = &entries[0];
    assert_eq!(one(e, "MESSAGE"), "two\nlines");
    assert_eq!(one(e, "F_ERROR"), "first\nsecond");
}

#[test]
fn an_entry_too_large_for_one_datagram_arrives_truncated_and_marked() {
    let journal = FakeJournal::new();
    // Larger than the kernel's default datagram limit (wmem_max, about 208 KiB).
    let payload = "x".repeat(4 << 20);
    let entries = journal.capture(|| {
        tracing::trace!(payload = %payload, "response body");
    });
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(one(e, "MESSAGE"), "response body");
    assert_eq!(one(e, "F_TRUNCATED"), "true");
    assert_eq!(one(e, "F_PAYLOAD").len(), 4096);
}

#[test]
fn a_journald_that_stops_reading_never_blocks_the_logging_thread_and_the_drops_are_counted() {
    // journald stalled: its socket is bound but nobody reads, so the kernel queue fills
    // (net.unix.max_dgram_qlen datagrams). tracing-journald blocks here for good, on the 11th
    // event with the kernel default of 10; this layer must return at once and count.
    let journal = FakeJournal::new();
    let layer = journald_layer_at(&journal.path).unwrap();
    let subscriber = tracing_subscriber::registry().with(layer);
    let dispatch = tracing::Dispatch::new(subscriber);
    const EVENTS: u64 = 2000;
    let (done, finished) = std::sync::mpsc::channel();
    let logging = {
        let dispatch = dispatch.clone();
        std::thread::spawn(move || {
            tracing::dispatcher::with_default(&dispatch, || {
                let start = std::time::Instant::now();
                for i in 0..EVENTS {
                    tracing::info!(i, "while journald is stalled");
                }
                done.send(start.elapsed()).unwrap();
            });
        })
    };
    let took = finished
        .recv_timeout(Duration::from_secs(10))
        .expect("logging blocked on a stalled journald");
    logging.join().unwrap();
    assert!(took < Duration::from_secs(2), "{took:?}");

    // journald reads again: what was queued, then one warning with the count, then new entries.
    journal.socket.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut queued = 0u64;
    while let Ok(n) = journal.socket.recv(&mut buf) {
        if n > 0 {
            queued += 1;
        }
    }
    assert!(queued > 0 && queued < EVENTS, "queued {queued}");
    tracing::dispatcher::with_default(&dispatch, || tracing::info!("journald is back"));
    let mut after = Vec::new();
    while let Ok(n) = journal.socket.recv(&mut buf) {
        after.push(parse(&buf[..n]));
    }
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(
        one(&after[0], "MESSAGE"),
        "journald was not reading: log entries dropped"
    );
    assert_eq!(one(&after[0], "PRIORITY"), "4");
    assert_eq!(one(&after[0], "F_DROPPED"), (EVENTS - queued).to_string());
    assert_eq!(one(&after[1], "MESSAGE"), "journald is back");
}

#[test]
fn a_socket_nobody_listens_on_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-journald");
    let err = journald_layer_at(&path).unwrap_err();
    assert!(matches!(err, Error::Journald { .. }));
    assert!(err.to_string().contains("no-journald"), "{err}");
}

// --- `init` in a real process ---------------------------------------------------------------
// `init` installs the global subscriber, once per process, so these tests run it in a child: the
// test binary re-executes itself with `CHILD_ENV` set, running only the entry point below.

/// Set in the child's environment; the entry point does nothing without it.
const CHILD_ENV: &str = "ENDPOINT_COPIER_TEST_LOGGING_CHILD";
/// Set in the child's environment to use `init_for_cli` instead of `init`.
const CLI_ENV: &str = "ENDPOINT_COPIER_TEST_LOGGING_CLI";
/// The child's exit code when `init` fails.
const INIT_FAILED: i32 = 3;

#[test]
fn child_entry_point_logs_through_init() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return; // Not a child: the parent tests below drive this.
    }
    assert!(!endpoint_copier::logging::is_initialized());
    let init = if std::env::var_os(CLI_ENV).is_some() {
        endpoint_copier::logging::init_for_cli("info")
    } else {
        endpoint_copier::logging::init("info")
    };
    if let Err(error) = init {
        eprintln!("init failed: {error}");
        std::process::exit(INIT_FAILED);
    }
    assert!(endpoint_copier::logging::is_initialized());
    tracing::info!(service = "default/kubernetes-vip", "info shown");
    tracing::debug!(endpoints = 3, "debug shown");
    tracing::trace!("trace shown");
}

/// Runs the entry point in a child with `env` (`None` removes the variable) and stderr sent to
/// `stderr`; returns the exit code.
fn run_child(env: &[(&str, Option<&str>)], stderr: std::process::Stdio) -> i32 {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "journald::child_entry_point_logs_through_init",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, "1")
    .env_remove("JOURNAL_STREAM")
    .env_remove("ENDPOINT_COPIER_LOG")
    .stdout(std::process::Stdio::null())
    .stderr(stderr);
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.status().unwrap().code().unwrap()
}

/// Runs the child with stderr in a file and returns (exit code, stderr text).
fn run_child_capturing(env: &[(&str, Option<&str>)]) -> (i32, String) {
    let file = tempfile::NamedTempFile::new().unwrap();
    let code = run_child(env, file.reopen().unwrap().into());
    (code, std::fs::read_to_string(file.path()).unwrap())
}

#[test]
fn init_writes_plain_text_to_stderr_at_the_configured_level() {
    let (code, err) = run_child_capturing(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("info shown"), "{err}");
    assert!(err.contains("service=\"default/kubernetes-vip\""), "{err}");
    assert!(!err.contains("debug shown"), "{err}");
    assert!(
        !err.contains('\x1b'),
        "no colours when stderr is not a terminal: {err}"
    );
}

#[test]
fn init_lets_the_environment_variable_win_over_the_configured_level() {
    let (code, err) = run_child_capturing(&[("ENDPOINT_COPIER_LOG", Some("debug"))]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("debug shown") && err.contains("endpoints=3"),
        "{err}"
    );
    assert!(!err.contains("trace shown"), "{err}");
}

#[test]
fn init_rejects_an_invalid_filter_naming_where_it_came_from() {
    let (code, err) = run_child_capturing(&[("ENDPOINT_COPIER_LOG", Some("info,kube=loud"))]);
    assert_eq!(code, INIT_FAILED, "{err}");
    assert!(err.contains("info,kube=loud"), "{err}");
    assert!(err.contains("ENDPOINT_COPIER_LOG"), "{err}");
}

#[test]
fn a_journal_stream_that_is_not_stderr_keeps_text_on_stderr() {
    // JOURNAL_STREAM inherited from a unit by a shell: it names some other stream.
    let (code, err) = run_child_capturing(&[("JOURNAL_STREAM", Some("1:1"))]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("info shown"), "{err}");
    assert!(
        !err.contains("instead of journald"),
        "journald was not tried: {err}"
    );
}

#[test]
fn a_journal_stream_naming_stderr_selects_journald() {
    use std::os::unix::fs::MetadataExt;
    if std::path::Path::new(endpoint_copier::logging::JOURNALD_SOCKET).exists() {
        // A real journald would receive the entries; this test needs it absent to observe the
        // choice through the fallback warning.
        eprintln!(
            "skipped: {} exists",
            endpoint_copier::logging::JOURNALD_SOCKET
        );
        return;
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    let meta = file.as_file().metadata().unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let code = run_child(
        &[("JOURNAL_STREAM", Some(&stream))],
        file.reopen().unwrap().into(),
    );
    let err = std::fs::read_to_string(file.path()).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("logging to stderr instead of journald"),
        "{err}"
    );
    assert!(err.contains("/run/systemd/journal/socket"), "{err}");
    assert!(err.contains("info shown"), "{err}");
}

#[test]
fn under_systemd_init_sends_to_journalds_own_socket_with_the_fields_operators_query() {
    // The production path, JOURNALD_SOCKET included: the child runs in a private mount namespace
    // where this test's socket is bind-mounted over /run/systemd/journal/socket. Needs root (or
    // unprivileged user namespaces) and unshare(1); skipped without them.
    use std::os::unix::fs::MetadataExt;
    let journal = FakeJournal::new();
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let meta = stderr.as_file().metadata().unwrap();
    let script = format!(
        "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && touch {sock} && \
         mount --bind \"$0\" {sock} && exec \"$1\" --exact journald::child_entry_point_logs_through_init \
         --nocapture --test-threads=1",
        sock = endpoint_copier::logging::JOURNALD_SOCKET
    );
    let status = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(&journal.path)
        .arg(std::env::current_exe().unwrap())
        .env(CHILD_ENV, "1")
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env_remove("ENDPOINT_COPIER_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(stderr.reopen().unwrap())
        .status();
    let err = std::fs::read_to_string(stderr.path()).unwrap();
    match status {
        Ok(s) if s.success() => {}
        Ok(_) if err.contains("Operation not permitted") || err.contains("unshare failed") => {
            eprintln!("skipped: no private mount namespace here: {err}");
            return;
        }
        Ok(s) => panic!("child failed ({s}): {err}"),
        Err(e) => {
            eprintln!("skipped: unshare(1) not available: {e}");
            return;
        }
    }
    journal.socket.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut entries = Vec::new();
    while let Ok(n) = journal.socket.recv(&mut buf) {
        if n > 0 {
            entries.push(parse(&buf[..n]));
        }
    }
    assert_eq!(
        entries.len(),
        1,
        "info only, at the configured level: {entries:?}"
    );
    let e = &entries[0];
    assert_eq!(one(e, "MESSAGE"), "info shown");
    assert_eq!(one(e, "PRIORITY"), "5");
    assert_eq!(one(e, "SYSLOG_IDENTIFIER"), "endpoint-copier");
    assert_eq!(one(e, "F_SERVICE"), "default/kubernetes-vip");
    assert!(!err.contains("info shown"), "not on stderr as well: {err}");
}

#[test]
fn init_for_cli_writes_bare_text_to_stderr_even_under_the_journal() {
    use std::os::unix::fs::MetadataExt;
    let file = tempfile::NamedTempFile::new().unwrap();
    let meta = file.as_file().metadata().unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let code = run_child(
        &[(CLI_ENV, Some("1")), ("JOURNAL_STREAM", Some(&stream))],
        file.reopen().unwrap().into(),
    );
    let err = std::fs::read_to_string(file.path()).unwrap();
    assert_eq!(code, 0, "{err}");
    let line = err.lines().find(|l| l.contains("info shown")).expect(&err);
    assert!(
        line.trim_start().starts_with("INFO info shown"),
        "no time, no module: {line}"
    );
    assert!(!err.contains("journald"), "{err}");
}
