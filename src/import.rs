//! `spipes import`: turns spiped command lines into TOML pipes.
//!
//! The input is either plain command lines, one per line, as in a shell
//! script or a list copied from `ps`, or systemd unit files, whose
//! `ExecStart=` lines are the commands. Words are split as a shell does
//! (quotes and backslashes), the flags are read as spiped reads them, and
//! each command becomes one `[pipes.NAME]` table. Anything that cannot be
//! carried over faithfully is refused, naming the line, and then no TOML
//! is printed at all: a half-converted set of pipes is worse than none.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::address::Address;

/// The longest duration the config accepts, in seconds.
const MAX_SECONDS: f64 = 1e9;

/// spiped's flags that take no value.
const SWITCHES: &[char] = &['e', 'd', 'D', 'F', 'j', 'f', 'g', 'R', '1', 'v'];

/// spiped's flags that take a value.
const WITH_VALUE: &[char] = &['s', 't', 'k', 'n', 'o', 'p', 'r', 'b', 'u'];

/// Reads spiped command lines from `files` (standard input when empty)
/// and returns the equivalent `[pipes.NAME]` tables.
///
/// Every problem found is reported, one per line of the error, and then
/// nothing is returned: either every command converts or none does.
pub fn from_files(files: &[PathBuf]) -> anyhow::Result<String> {
    let mut inputs = Vec::new();
    if files.is_empty() {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        inputs.push(Input::new(None, text));
    }
    for path in files {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        inputs.push(Input::new(Some(path.clone()), text));
    }
    convert(&inputs).map_err(|problems| anyhow::anyhow!(problems.join("\n")))
}

/// One file, or standard input, with what it holds.
#[derive(Debug)]
struct Input {
    /// Where it came from; `None` for standard input.
    path: Option<PathBuf>,
    /// Its contents.
    text: String,
    /// Whether it is a systemd unit rather than plain command lines.
    unit: bool,
    /// The pipe name its file name suggests.
    name_hint: Option<String>,
}

impl Input {
    /// An input; a unit file is told by its name (`.service`) or by a
    /// section header such as `[Service]` in it.
    fn new(path: Option<PathBuf>, text: String) -> Input {
        let named = path
            .as_deref()
            .is_some_and(|p| p.extension().is_some_and(|e| e == "service"));
        let unit = named
            || text.lines().any(|l| {
                let l = l.trim();
                l.len() > 2
                    && l.starts_with('[')
                    && l.ends_with(']')
                    && l[1..l.len() - 1]
                        .bytes()
                        .all(|b| b.is_ascii_alphabetic())
            });
        let name_hint = match &path {
            Some(path) if unit => name_hint(path),
            _ => None,
        };
        Input {
            path,
            text,
            unit,
            name_hint,
        }
    }

    /// How messages name a line of this input.
    fn at(&self, line: usize) -> String {
        match &self.path {
            Some(path) => format!("{}: line {line}", path.display()),
            None => format!("line {line}"),
        }
    }

    /// How messages and comments name the input.
    fn label(&self) -> String {
        match &self.path {
            Some(path) => path.display().to_string(),
            None => "standard input".to_owned(),
        }
    }
}

/// The pipe name a unit file's name suggests: `spiped-web.service` and
/// `spiped@web.service` give `web`, `spiped.service` none.
fn name_hint(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".service").unwrap_or(name);
    let stem = match stem.strip_prefix("spiped") {
        Some("") => "",
        Some(rest) if rest.starts_with(['-', '@', '_', '.']) => &rest[1..],
        _ => stem,
    };
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches(['-', '.']).to_owned();
    (!name.is_empty()).then_some(name)
}

/// Converts every input; the TOML, or every problem found.
fn convert(inputs: &[Input]) -> Result<String, Vec<String>> {
    let mut problems = Vec::new();
    let mut pipes = Vec::new();
    for input in inputs {
        let before = pipes.len() + problems.len();
        for line in logical_lines(input) {
            match convert_line(input, &line) {
                Ok(Some(pipe)) => pipes.push(pipe),
                Ok(None) => {}
                Err(mut p) => problems.append(&mut p),
            }
        }
        if pipes.len() + problems.len() == before {
            problems
                .push(format!("{}: no spiped command found", input.label()));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }

    let names = unique_names(&pipes);
    let mut out = String::from(
        "# Pipes converted by `spipes import` from spiped command lines.\n\
         # Check them with `spipes check -c FILE` before use.\n",
    );
    for (pipe, name) in pipes.iter().zip(names) {
        out.push('\n');
        pipe.write_toml(&name, &mut out);
    }
    Ok(out)
}

/// A command line joined from its physical lines, with the number of its
/// first line.
#[derive(Debug)]
struct Line {
    number: usize,
    text: String,
}

/// Splits an input into logical lines: a line ending in a backslash
/// continues on the next. A shell removes the backslash and the newline;
/// systemd puts a space in their place. Comment lines never continue.
fn logical_lines(input: &Input) -> Vec<Line> {
    let unit = input.unit;
    let mut out = Vec::new();
    let mut current: Option<Line> = None;
    for (i, raw) in input.text.lines().enumerate() {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let (text, continues) = match raw.strip_suffix('\\') {
            // An even number of backslashes is escaped ones, not a
            // continuation.
            Some(rest) if trailing_backslashes(rest).is_multiple_of(2) => {
                (rest, true)
            }
            _ => (raw, false),
        };
        let line = match current.take() {
            Some(mut line) => {
                if unit {
                    line.text.push(' ');
                }
                line.text.push_str(text);
                line
            }
            None => {
                let trimmed = raw.trim_start();
                if is_comment(trimmed, unit) {
                    continue;
                }
                Line {
                    number: i + 1,
                    text: text.to_owned(),
                }
            }
        };
        if continues {
            current = Some(line);
        } else {
            out.push(line);
        }
    }
    // A backslash on the last line continues into nothing.
    out.extend(current);
    out
}

/// How many backslashes `s` ends with.
fn trailing_backslashes(s: &str) -> usize {
    s.bytes().rev().take_while(|&b| b == b'\\').count()
}

/// Whether a line (leading blanks removed) is a comment: `#`, and in
/// unit files also `;`.
fn is_comment(trimmed: &str, unit: bool) -> bool {
    trimmed.starts_with('#') || (unit && trimmed.starts_with(';'))
}

/// One converted command.
#[derive(Debug)]
struct Pipe {
    /// Where it came from, for the comment above the table.
    origin: String,
    /// The command as written, for the same comment.
    command: String,
    /// The name the unit file suggests.
    name_hint: Option<String>,
    /// `(setting, TOML value)` pairs, in output order.
    settings: Vec<(&'static str, String)>,
    /// Comments inside the table: flags that were dropped, and why.
    comments: Vec<String>,
}

impl Pipe {
    /// Appends this pipe's table to `out`.
    fn write_toml(&self, name: &str, out: &mut String) {
        let _ = writeln!(
            out,
            "# {}: {}",
            comment_text(&self.origin),
            comment_text(&self.command)
        );
        let _ = writeln!(out, "[pipes.{}]", table_key(name));
        for (setting, value) in &self.settings {
            let _ = writeln!(out, "{setting} = {value}");
        }
        for comment in &self.comments {
            let _ = writeln!(out, "# {}", comment_text(comment));
        }
    }
}

/// Picks a unique name for every pipe: the unit file's, else `pipeN`,
/// with `-2`, `-3`... added where two would clash.
fn unique_names(pipes: &[Pipe]) -> Vec<String> {
    let mut used = HashSet::new();
    let mut next_unnamed = 1;
    let mut names = Vec::with_capacity(pipes.len());
    for pipe in pipes {
        let name = match &pipe.name_hint {
            Some(hint) => {
                let mut name = hint.clone();
                let mut n = 2;
                while used.contains(&name) {
                    name = format!("{hint}-{n}");
                    n += 1;
                }
                name
            }
            None => loop {
                let name = format!("pipe{next_unnamed}");
                next_unnamed += 1;
                if !used.contains(&name) {
                    break name;
                }
            },
        };
        used.insert(name.clone());
        names.push(name);
    }
    names
}

/// A table key: bare if it can be, else quoted (a `.` would nest).
fn table_key(name: &str) -> String {
    let bare = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if bare {
        name.to_owned()
    } else {
        toml_string(name)
    }
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Text safe in a TOML comment, which may hold no control characters but
/// tab.
fn comment_text(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
        .collect()
}

/// A number of seconds as TOML: an integer when it is whole.
fn toml_seconds(secs: f64) -> String {
    if secs.fract() == 0.0 {
        format!("{}", secs as u64)
    } else {
        format!("{secs}")
    }
}

/// Converts one logical line: `Ok(None)` for lines that hold no command
/// (blank, or a unit line other than `ExecStart=`).
fn convert_line(
    input: &Input,
    line: &Line,
) -> Result<Option<Pipe>, Vec<String>> {
    let at = input.at(line.number);
    let unit = input.unit;
    let text = line.text.trim();
    if text.is_empty() || is_comment(text, unit) {
        return Ok(None);
    }
    let command = if unit {
        match exec_start(text) {
            Some(command) => command,
            None => return Ok(None),
        }
    } else {
        text
    };
    if command.is_empty() {
        return Ok(None);
    }

    let words =
        split_words(command, unit).map_err(|e| vec![format!("{at}: {e}")])?;
    let Some((program, args)) = words.split_first() else {
        return Ok(None);
    };
    if program != "spiped" && !program.ends_with("/spiped") {
        return Err(vec![format!("{at}: not a spiped command: `{program}`")]);
    }

    let flags = parse_flags(args);
    let mut problems: Vec<String> = flags
        .problems
        .iter()
        .map(|p| format!("{at}: {p}"))
        .collect();
    match build(&flags) {
        Ok((settings, comments)) if problems.is_empty() => Ok(Some(Pipe {
            origin: format!("from {}, line {}", input.label(), line.number),
            command: command.to_owned(),
            name_hint: input.name_hint.clone(),
            settings,
            comments,
        })),
        Ok(_) => Err(problems),
        Err(more) => {
            problems.extend(more.iter().map(|p| format!("{at}: {p}")));
            Err(problems)
        }
    }
}

/// The command of an `ExecStart=` unit line, without systemd's prefixes
/// (`-`, `@`, `:`, `+`, `!`); `None` for every other unit line.
fn exec_start(line: &str) -> Option<&str> {
    if line.starts_with('[') {
        return None;
    }
    let (key, value) = line.split_once('=')?;
    if key.trim() != "ExecStart" {
        return None;
    }
    Some(value.trim().trim_start_matches(['-', '@', ':', '+', '!']))
}

/// Splits a command into words as a shell would: blanks separate words,
/// single quotes keep everything, double quotes keep all but `\"`, `\\`,
/// `\$` and `` \` ``, a backslash outside quotes keeps the next
/// character, and an unquoted `#` starting a word starts a comment.
/// What only a shell (or systemd) could expand is refused.
fn split_words(line: &str, unit: bool) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '#' if !in_word => break,
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated ' quote".to_owned()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => {
                                return Err("unterminated \" quote".to_owned());
                            }
                        },
                        Some(c @ ('$' | '`')) => {
                            return Err(expansion(c, &mut chars));
                        }
                        Some('%') if unit => specifier(&mut chars, &mut word)?,
                        Some(c) => word.push(c),
                        None => return Err("unterminated \" quote".to_owned()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    word.push(c);
                }
            }
            '$' | '`' => return Err(expansion(c, &mut chars)),
            '%' if unit => {
                in_word = true;
                specifier(&mut chars, &mut word)?;
            }
            ';' | '&' | '|' | '<' | '>' | '(' | ')' => {
                return Err(format!(
                    "shell syntax `{c}` is not supported; write one spiped \
                     command per line"
                ));
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// The message for a `$` or backquote expansion starting at `first`.
fn expansion(
    first: char,
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
) -> String {
    if first == '`' {
        return "a backquoted command needs a shell to run; write its output \
                instead"
            .to_owned();
    }
    let mut shown = String::from(first);
    {
        while let Some(&c) = chars.peek() {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '{' | '}') {
                shown.push(c);
                chars.next();
            } else {
                break;
            }
        }
    }
    format!("`{shown}` needs a shell to expand; write its value instead")
}

/// A systemd specifier after `%`: `%%` is a `%`, the others are refused.
fn specifier(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    word: &mut String,
) -> Result<(), String> {
    match chars.next() {
        Some('%') => {
            word.push('%');
            Ok(())
        }
        Some(c) => Err(format!(
            "`%{c}` is a systemd specifier; write its value instead"
        )),
        None => {
            word.push('%');
            Ok(())
        }
    }
}

/// What a command line's flags said, before they are checked together.
#[derive(Debug, Default)]
struct Flags {
    encrypt: bool,
    decrypt: bool,
    source: Option<String>,
    target: Option<String>,
    key: Option<String>,
    max_connections: Option<String>,
    timeout: Option<String>,
    resolve: Option<String>,
    no_resolve: bool,
    bind: Option<String>,
    no_keepalive: bool,
    fast: bool,
    require_fs: bool,
    foreground: bool,
    wait_dns: bool,
    pidfile: Option<String>,
    user: Option<String>,
    syslog: bool,
    /// Problems found while reading them.
    problems: Vec<String>,
}

/// Reads spiped's flags as its getopt does: switches may be grouped
/// (`-Fj`), a value may be attached (`-n10`) or follow, and `--` ends the
/// flags. spiped refuses a flag given twice, and so does this.
fn parse_flags(args: &[String]) -> Flags {
    let mut flags = Flags::default();
    let mut i = 0;
    let mut flags_done = false;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if flags_done || arg == "-" || !arg.starts_with('-') {
            flags.problems.push(format!(
                "unexpected argument `{arg}`: spiped takes only flags"
            ));
            continue;
        }
        if arg == "--" {
            flags_done = true;
            continue;
        }
        if arg == "--syslog" {
            if flags.syslog {
                flags
                    .problems
                    .push("spiped --syslog given twice".to_owned());
            }
            flags.syslog = true;
            continue;
        }
        if arg.starts_with("--") {
            flags.problems.push(format!("unknown spiped flag {arg}"));
            continue;
        }

        let letters: Vec<char> = arg[1..].chars().collect();
        for (j, &c) in letters.iter().enumerate() {
            if SWITCHES.contains(&c) {
                flags.switch(c);
                continue;
            }
            if !WITH_VALUE.contains(&c) {
                flags.problems.push(format!("unknown spiped flag -{c}"));
                continue;
            }
            let attached: String = letters[j + 1..].iter().collect();
            let value = if !attached.is_empty() {
                Some(attached)
            } else if i < args.len() {
                i += 1;
                Some(args[i - 1].clone())
            } else {
                None
            };
            match value {
                Some(value) => flags.value(c, value),
                None => {
                    flags.problems.push(format!("spiped -{c} needs a value"));
                }
            }
            break;
        }
    }
    flags
}

impl Flags {
    /// Notes a switch, refusing repeats.
    fn switch(&mut self, c: char) {
        let seen = match c {
            'e' => &mut self.encrypt,
            'd' => &mut self.decrypt,
            'D' => &mut self.wait_dns,
            'F' => &mut self.foreground,
            'j' => &mut self.no_keepalive,
            'f' => &mut self.fast,
            'g' => &mut self.require_fs,
            'R' => &mut self.no_resolve,
            '1' => {
                self.problems.push(
                    "spiped -1 (exit after one connection) has no spipes \
                     equivalent"
                        .to_owned(),
                );
                return;
            }
            _ => {
                self.problems.push(
                    "spiped -v (print the version) runs no pipe".to_owned(),
                );
                return;
            }
        };
        if *seen {
            self.problems.push(format!("spiped -{c} given twice"));
        }
        *seen = true;
    }

    /// Notes a flag's value, refusing repeats.
    fn value(&mut self, c: char, value: String) {
        let slot = match c {
            's' => &mut self.source,
            't' => &mut self.target,
            'k' => &mut self.key,
            'n' => &mut self.max_connections,
            'o' => &mut self.timeout,
            'r' => &mut self.resolve,
            'b' => &mut self.bind,
            'p' => &mut self.pidfile,
            _ => &mut self.user,
        };
        if slot.is_some() {
            self.problems.push(format!("spiped -{c} given twice"));
        }
        *slot = Some(value);
    }
}

/// Settings and comments of a pipe.
type Built = (Vec<(&'static str, String)>, Vec<String>);

/// Checks the flags together and maps them to settings.
fn build(flags: &Flags) -> Result<Built, Vec<String>> {
    let mut problems = Vec::new();
    let mut settings = Vec::new();
    let mut comments = Vec::new();

    match (flags.encrypt, flags.decrypt) {
        (true, true) => {
            problems.push("spiped -e and -d cannot both be given".to_owned());
        }
        (false, false) => {
            problems.push("missing -e or -d (encrypt or decrypt)".to_owned());
        }
        (true, false) => settings.push(("mode", toml_string("encrypt"))),
        (false, true) => settings.push(("mode", toml_string("decrypt"))),
    }

    for (flag, what, value, setting) in [
        ('s', "source socket", &flags.source, "source"),
        ('t', "target socket", &flags.target, "target"),
    ] {
        match value {
            None => problems.push(format!("missing -{flag} ({what})")),
            Some(text) => match Address::parse(text) {
                Ok(address) => {
                    settings.push((setting, toml_string(&address.to_string())));
                }
                Err(e) => problems.push(format!("-{flag}: {e}")),
            },
        }
    }

    match flags.key.as_deref() {
        None => problems.push("missing -k (key file)".to_owned()),
        Some("-") => problems.push(
            "spiped -k - (key on standard input) has no spipes equivalent: \
             write the key to a file"
                .to_owned(),
        ),
        Some(key) => {
            settings.push(("key", toml_string(key)));
            if !Path::new(key).is_absolute() {
                comments.push(format!(
                    "spiped read {key} from its working folder; spipes reads \
                     a relative key path from this file's folder"
                ));
            }
        }
    }

    if let Some(bind) = &flags.bind {
        match bind_address(bind) {
            Ok(ip) => settings.push(("bind", toml_string(&ip.to_string()))),
            Err(e) => problems.push(e),
        }
    }

    if let Some(n) = &flags.max_connections {
        match n.parse::<u64>() {
            Ok(n) => settings.push(("max_connections", n.to_string())),
            Err(_) => problems.push(format!(
                "-n expects a whole number of connections (0 for no limit), \
                 not `{n}`"
            )),
        }
    }

    if let Some(o) = &flags.timeout {
        match seconds(o) {
            Some(secs) if secs > 0.0 => {
                settings.push(("timeout", toml_seconds(secs)));
            }
            _ => problems.push(format!(
                "-o expects a number of seconds more than 0, not `{o}`"
            )),
        }
    }

    if flags.no_keepalive {
        settings.push(("keepalive", "false".to_owned()));
    }

    match (flags.fast, flags.require_fs) {
        (true, true) => {
            problems.push("spiped -f and -g cannot both be given".to_owned());
        }
        (true, false) => settings.push(("forward_secrecy", toml_string("off"))),
        (false, true) => {
            settings.push(("forward_secrecy", toml_string("required")));
        }
        (false, false) => {}
    }

    match (&flags.resolve, flags.no_resolve) {
        (Some(_), true) => {
            problems.push("spiped -r and -R cannot both be given".to_owned());
        }
        (Some(r), false) => match seconds(r) {
            // spiped reads -r 0 as its default.
            Some(0.0) => {
                settings.push(("resolve_interval", "60".to_owned()));
                comments
                    .push("spiped reads -r 0 as its default, 60".to_owned());
            }
            Some(secs) => {
                settings.push(("resolve_interval", toml_seconds(secs)));
            }
            None => problems
                .push(format!("-r expects a number of seconds, not `{r}`")),
        },
        (None, true) => settings.push(("resolve_interval", "0".to_owned())),
        (None, false) => {}
    }

    if flags.foreground {
        comments.push(
            "-F ignored: spipes always runs in the foreground (under systemd)"
                .to_owned(),
        );
    }
    if flags.wait_dns {
        comments.push(
            "-D ignored: spipes does not daemonize; it resolves the target \
             when it connects, and systemd's Restart= retries a start that \
             fails"
                .to_owned(),
        );
    }
    if let Some(pidfile) = &flags.pidfile {
        comments.push(format!(
            "-p {pidfile} ignored: spipes writes no pidfile, as it runs in \
             the foreground under systemd"
        ));
    }
    if flags.syslog {
        comments.push(
            "--syslog ignored: spipes logs to standard error, which systemd \
             sends to the journal"
                .to_owned(),
        );
    }
    if let Some(user) = &flags.user {
        comments.push(format!(
            "-u {user} ignored: set User= and Group= in spipes' systemd unit"
        ));
    }

    if problems.is_empty() {
        Ok((settings, comments))
    } else {
        Err(problems)
    }
}

/// A number of seconds from 0 to the config's limit, or `None`.
fn seconds(text: &str) -> Option<f64> {
    let secs: f64 = text.parse().ok()?;
    (secs.is_finite() && (0.0..=MAX_SECONDS).contains(&secs)).then_some(secs)
}

/// spiped's `-b`: an IP address, perhaps in brackets, perhaps with port 0
/// (spiped's own form); spipes binds to an address and lets the system
/// pick the port.
fn bind_address(text: &str) -> Result<IpAddr, String> {
    let not_ip = || format!("-b expects an IP address, not `{text}`");
    let (ip, port) = if let Some(rest) = text.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or_else(not_ip)?;
        match after {
            "" => (ip, None),
            _ => (ip, Some(after.strip_prefix(':').ok_or_else(not_ip)?)),
        }
    } else {
        match text.matches(':').count() {
            0 => (text, None),
            1 => text
                .split_once(':')
                .map(|(a, p)| (a, Some(p)))
                .ok_or_else(not_ip)?,
            _ => (text, None),
        }
    };
    let ip: IpAddr = ip.parse().map_err(|_| not_ip())?;
    match port {
        None | Some("0") => Ok(ip),
        Some(_) => Err(format!(
            "-b {text}: spipes binds to an address only; the system picks \
             the port"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        split_words(line, false).expect("splits")
    }

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(words("a  b\tc"), ["a", "b", "c"]);
        assert_eq!(words("'a b' \"c d\" e\\ f"), ["a b", "c d", "e f"]);
        assert_eq!(words("a'b'\"c\"d"), ["abcd"]);
        assert_eq!(words("\"a\\\"b\\\\c\\n\""), ["a\"b\\c\\n"]);
        assert_eq!(words("a # comment"), ["a"]);
        assert_eq!(words("a#b"), ["a#b"]);
        assert_eq!(words("''"), [""]);
    }

    #[test]
    fn refuses_what_needs_a_shell() {
        let err = |l: &str| split_words(l, false).expect_err(l);
        assert_eq!(err("'a"), "unterminated ' quote");
        assert_eq!(err("\"a"), "unterminated \" quote");
        assert_eq!(
            err("a $KEY b"),
            "`$KEY` needs a shell to expand; write its value instead"
        );
        assert_eq!(
            err("a \"${KEY}\""),
            "`${KEY}` needs a shell to expand; write its value instead"
        );
        assert_eq!(
            err("a | b"),
            "shell syntax `|` is not supported; write one spiped command \
             per line"
        );
        assert_eq!(words("'$KEY'"), ["$KEY"]);
    }

    #[test]
    fn systemd_specifiers() {
        assert_eq!(split_words("a%%b", true).expect("splits"), ["a%b"]);
        assert_eq!(
            split_words("-s /run/%i.sock", true).expect_err("specifier"),
            "`%i` is a systemd specifier; write its value instead"
        );
        assert_eq!(words("a%ib"), ["a%ib"]);
    }

    #[test]
    fn bind_forms() {
        let ok = |t: &str| bind_address(t).expect(t).to_string();
        assert_eq!(ok("10.0.0.1"), "10.0.0.1");
        assert_eq!(ok("10.0.0.1:0"), "10.0.0.1");
        assert_eq!(ok("::1"), "::1");
        assert_eq!(ok("[::1]"), "::1");
        assert_eq!(ok("[::1]:0"), "::1");
        assert!(bind_address("host.example").is_err());
        assert!(bind_address("[::1]:80").is_err());
    }

    #[test]
    fn continuation_lines() {
        let text = "a \\\n  b\n# c \\\nd\\\\\ne".to_owned();
        let input = Input::new(None, text);
        let lines: Vec<(usize, String)> = logical_lines(&input)
            .into_iter()
            .map(|l| (l.number, l.text))
            .collect();
        assert_eq!(
            lines,
            [
                (1, "a   b".to_owned()),
                (4, "d\\\\".to_owned()),
                (5, "e".to_owned())
            ]
        );
    }
}
