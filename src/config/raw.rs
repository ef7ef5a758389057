//! Step one: the TOML tree checked for its shape (which tables, which
//! keys) but not yet for its values.

use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use super::{DAEMON_KEYS, PIPE_ONLY_KEYS, Report, SHARED_KEYS, Scope, kind_of};

/// A value as written, with where it is.
#[derive(Clone, Copy)]
pub struct Value<'t, 'i> {
    /// The parsed value.
    pub de: &'t DeValue<'i>,
    /// Its text in the file, for messages that quote it.
    pub text: &'t str,
    /// Byte offset of its start.
    pub at: usize,
}

impl<'t, 'i> Value<'t, 'i> {
    /// Wraps a value from the tree; `source` is the whole file.
    pub fn new(
        spanned: &'t Spanned<DeValue<'i>>,
        source: &'t str,
    ) -> Value<'t, 'i> {
        let span = spanned.span();
        Value {
            de: spanned.get_ref(),
            text: source.get(span.clone()).unwrap_or(""),
            at: span.start,
        }
    }
}

/// One known `key = value` of a table.
#[derive(Clone, Copy)]
pub struct Entry<'t, 'i> {
    /// The key, one of the known names.
    pub key: &'t str,
    /// The value.
    pub value: Value<'t, 'i>,
}

/// One `[pipes.NAME]` table.
pub struct Pipe<'t, 'i> {
    /// The name as written.
    pub name: &'t str,
    /// Byte offset of the name.
    pub name_at: usize,
    /// Byte offset of the table's header, where missing keys are
    /// reported.
    pub header_at: usize,
    /// Its known keys, in file order.
    pub entries: Vec<Entry<'t, 'i>>,
}

impl<'t, 'i> Pipe<'t, 'i> {
    /// The entry for `key`, if the table has it.
    pub fn get(&self, key: &str) -> Option<Entry<'t, 'i>> {
        find(&self.entries, key)
    }
}

/// The whole file, shape-checked.
#[derive(Default)]
pub struct File<'t, 'i> {
    /// The known keys of `[daemon]`.
    pub daemon: Vec<Entry<'t, 'i>>,
    /// The known keys of `[defaults]`.
    pub defaults: Vec<Entry<'t, 'i>>,
    /// Every pipe, in file order.
    pub pipes: Vec<Pipe<'t, 'i>>,
}

/// The entry for `key` in `entries`, if there is one.
pub fn find<'t, 'i>(
    entries: &[Entry<'t, 'i>],
    key: &str,
) -> Option<Entry<'t, 'i>> {
    entries.iter().find(|e| e.key == key).copied()
}

/// A table's keys and values in file order (the map may sort them).
fn in_file_order<'t, 'i>(
    table: &'t DeTable<'i>,
) -> Vec<(&'t Spanned<DeString<'i>>, &'t Spanned<DeValue<'i>>)> {
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
}

/// Walks the document, reporting unknown tables and keys.
pub fn walk<'t, 'i>(
    root: &'t DeTable<'i>,
    report: &mut Report<'t>,
) -> File<'t, 'i> {
    let mut file = File::default();
    for (key, value) in in_file_order(root) {
        let name: &'t str = key.get_ref();
        let table = || expect_table(name, value);
        match name {
            "daemon" => match table() {
                Ok(t) => {
                    file.daemon = known(t, Scope::Daemon, DAEMON_KEYS, report);
                }
                Err((at, message)) => report.error(at, message),
            },
            "defaults" => match table() {
                Ok(t) => {
                    file.defaults =
                        known(t, Scope::Defaults, SHARED_KEYS, report);
                }
                Err((at, message)) => report.error(at, message),
            },
            "pipes" => match table() {
                Ok(t) => file.pipes = pipes(t, report),
                Err((at, message)) => report.error(at, message),
            },
            _ => {
                let is_table = matches!(value.get_ref(), DeValue::Table(_));
                let message = Scope::Top.unknown_key(name, is_table);
                report.error(key.span().start, message);
            }
        }
    }
    file
}

/// The table under a top-level key, or an error (offset, message).
fn expect_table<'t, 'i>(
    name: &str,
    value: &'t Spanned<DeValue<'i>>,
) -> Result<&'t DeTable<'i>, (usize, String)> {
    match value.get_ref() {
        DeValue::Table(table) => Ok(table),
        other => {
            let what = if name == "pipes" {
                "expected a table of pipes, as [pipes.NAME]"
            } else {
                "expected a table"
            };
            Err((
                value.span().start,
                Scope::Top
                    .key(name, format!("{what}, found {}", kind_of(other))),
            ))
        }
    }
}

/// The entries of `table` whose keys are in `allowed`; others are
/// reported as unknown.
fn known<'t, 'i>(
    table: &'t DeTable<'i>,
    scope: Scope<'t>,
    allowed: &[&str],
    report: &mut Report<'t>,
) -> Vec<Entry<'t, 'i>> {
    let mut entries = Vec::new();
    for (key, value) in in_file_order(table) {
        let name: &'t str = key.get_ref();
        if allowed.contains(&name) {
            let value = Value::new(value, report.text);
            entries.push(Entry { key: name, value });
        } else {
            let is_table = matches!(value.get_ref(), DeValue::Table(_));
            report.error(key.span().start, scope.unknown_key(name, is_table));
        }
    }
    entries
}

/// Every table under `[pipes]`.
fn pipes<'t, 'i>(
    table: &'t DeTable<'i>,
    report: &mut Report<'t>,
) -> Vec<Pipe<'t, 'i>> {
    let allowed: Vec<&str> =
        PIPE_ONLY_KEYS.iter().chain(SHARED_KEYS).copied().collect();
    let mut pipes = Vec::new();
    for (key, value) in in_file_order(table) {
        let name: &'t str = key.get_ref();
        let DeValue::Table(settings) = value.get_ref() else {
            let message = format!(
                "pipe {}: expected a table of settings, as \
                 [pipes.NAME], found {}",
                super::pipe_label(name),
                kind_of(value.get_ref())
            );
            report.error(value.span().start, message);
            continue;
        };
        let entries = known(settings, Scope::Pipe(name), &allowed, report);
        pipes.push(Pipe {
            name,
            name_at: key.span().start,
            header_at: value.span().start,
            entries,
        });
    }
    pipes
}
