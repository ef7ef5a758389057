//! Log output: `tracing` to stderr, filtered by `--log-level` or
//! `RUST_LOG` (`info` by default), in one of three shapes.
//!
//! Under systemd (`JOURNAL_STREAM` set) lines carry no timestamp, since the
//! journal adds its own, and start with a syslog priority prefix (`<4>`
//! for warn) so that `journalctl -p warning` works. `--log-format json`
//! writes one JSON object per event for log collectors.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The shape of log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable text; journal-friendly under systemd.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. `filter` (from `--log-level`) wins over
/// `RUST_LOG`.
pub fn init(filter: Option<&str>, format: LogFormat) -> Result<(), String> {
    let filter = match filter {
        Some(f) => EnvFilter::try_new(f),
        None => EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new("info")),
    }
    .map_err(|e| format!("bad log filter: {e}"))?;

    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let result = if format == LogFormat::Json {
        builder.json().try_init()
    } else if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder
            .with_ansi(false)
            .without_time()
            .event_format(journal::Format)
            .try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
    result.map_err(|e| e.to_string())
}

/// Text lines for the journal: a `<N>` syslog priority, then the level's
/// fields and message, with no timestamp.
mod journal {
    use std::fmt;

    use tracing::{Event, Level, Subscriber};
    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
    use tracing_subscriber::registry::LookupSpan;

    /// The journal line format.
    pub struct Format;

    impl<S, N> FormatEvent<S, N> for Format
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        fn format_event(
            &self,
            ctx: &FmtContext<'_, S, N>,
            mut writer: Writer<'_>,
            event: &Event<'_>,
        ) -> fmt::Result {
            // sd-daemon(3) priorities: err 3, warning 4, info 6, debug 7.
            let priority = match *event.metadata().level() {
                Level::ERROR => 3,
                Level::WARN => 4,
                Level::INFO => 6,
                Level::DEBUG | Level::TRACE => 7,
            };
            write!(writer, "<{priority}>")?;

            // The fields of the enclosing spans (pipe, connection id,
            // peer), then the event's own.
            if let Some(scope) = ctx.event_scope() {
                for span in scope.from_root() {
                    let ext = span.extensions();
                    let fields = ext
                        .get::<tracing_subscriber::fmt::FormattedFields<N>>();
                    if let Some(fields) = fields
                        && !fields.is_empty()
                    {
                        write!(writer, "{}: ", fields)?;
                    }
                }
            }
            ctx.field_format().format_fields(writer.by_ref(), event)?;
            writeln!(writer)
        }
    }
}
