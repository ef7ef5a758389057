//! `spipes import`: spiped command lines and unit files to TOML pipes.
//! Every flag mapping and every refusal message, exactly; and the output
//! loads with `spipes check` once its key files exist.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{
    Workspace, output_with_stdin, output_within, spipes_command, toml_string,
};

/// The longest one import or check may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// The two comment lines every output starts with.
const HEADER: &str = "# Pipes converted by `spipes import` from spiped \
                      command lines.\n# Check them with `spipes check -c \
                      FILE` before use.\n";

/// Runs `spipes import ARGS` with `input` on standard input.
fn import_stdin(input: &str, args: &[&str]) -> Output {
    let mut cmd = spipes_command();
    cmd.arg("import").args(args);
    output_with_stdin(
        &mut cmd,
        input.as_bytes().to_vec(),
        RUN_TIMEOUT,
        "spipes import",
    )
}

/// Runs `spipes import FILES...`.
fn import_files(files: &[&Path]) -> Output {
    let mut cmd = spipes_command();
    cmd.arg("import").args(files);
    output_within(&mut cmd, RUN_TIMEOUT)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

/// The TOML for `input`, which must convert.
fn converted(input: &str) -> String {
    let output = import_stdin(input, &[]);
    assert!(
        output.status.success(),
        "import of {input:?} failed: {}",
        text(&output.stderr)
    );
    assert!(output.stderr.is_empty(), "{}", text(&output.stderr));
    text(&output.stdout)
}

/// The lines of the one table in `toml` after `[pipes.NAME]`, without
/// the comment above it.
fn body(toml: &str) -> Vec<String> {
    let mut lines = toml.lines().skip_while(|l| !l.starts_with("[pipes."));
    lines.next().expect("a table");
    lines.map(str::to_owned).collect()
}

/// The problems `input` is refused with: exit 1, nothing on stdout, and
/// standard error as lines with the first's `spipes: ` removed.
fn refused(input: &str) -> Vec<String> {
    let output = import_stdin(input, &[]);
    assert_eq!(output.status.code(), Some(1), "{input:?}");
    assert!(output.stdout.is_empty(), "{input:?} printed TOML");
    let err = text(&output.stderr);
    let err = err.strip_prefix("spipes: ").expect("spipes: prefix");
    err.lines().map(str::to_owned).collect()
}

/// A base command, so that each case adds only what it tests.
const BASE: &str = "spiped -e -s [127.0.0.1]:8025 -t [127.0.0.1]:8026 -k /k";

/// The table lines of the base command.
fn base_lines() -> Vec<String> {
    [
        "mode = \"encrypt\"",
        "source = \"127.0.0.1:8025\"",
        "target = \"127.0.0.1:8026\"",
        "key = \"/k\"",
    ]
    .map(str::to_owned)
    .to_vec()
}

#[test]
fn one_command_in_full() {
    let toml = converted(&format!("{BASE}\n"));
    assert_eq!(
        toml,
        format!(
            "{HEADER}\n# from standard input, line 1: {BASE}\n\
             [pipes.pipe1]\n{}\n",
            base_lines().join("\n")
        )
    );
}

#[test]
fn every_flag_maps() {
    // (flags added to BASE, lines added to the table)
    let cases: &[(&str, &[&str])] = &[
        ("-n 10", &["max_connections = 10"]),
        ("-n 0", &["max_connections = 0"]),
        ("-n10", &["max_connections = 10"]),
        ("-o 2.5", &["timeout = 2.5"]),
        ("-o 10", &["timeout = 10"]),
        ("-j", &["keepalive = false"]),
        ("-f", &["forward_secrecy = \"off\""]),
        ("-g", &["forward_secrecy = \"required\""]),
        ("-r 30", &["resolve_interval = 30"]),
        ("-r 0.5", &["resolve_interval = 0.5"]),
        (
            "-r 0",
            &[
                "resolve_interval = 60",
                "# spiped reads -r 0 as its default, 60",
            ],
        ),
        ("-R", &["resolve_interval = 0"]),
        ("-b 127.0.0.1", &["bind = \"127.0.0.1\""]),
        ("-b [::1]", &["bind = \"::1\""]),
        ("-b ::1", &["bind = \"::1\""]),
        ("-b [::1]:0", &["bind = \"::1\""]),
        (
            "-F",
            &["# -F ignored: spipes always runs in the foreground (under \
               systemd)"],
        ),
        (
            "-D",
            &["# -D ignored: spipes does not daemonize; it resolves the \
               target when it connects, and systemd's Restart= retries a \
               start that fails"],
        ),
        (
            "-p /run/spiped.pid",
            &[
                "# -p /run/spiped.pid ignored: spipes writes no pidfile, as \
               it runs in the foreground under systemd",
            ],
        ),
        (
            "--syslog",
            &["# --syslog ignored: spipes logs to standard error, which \
               systemd sends to the journal"],
        ),
        (
            "-u spiped:spiped",
            &[
                "# -u spiped:spiped ignored: set User= and Group= in spipes' \
               systemd unit",
            ],
        ),
        ("-jf", &["keepalive = false", "forward_secrecy = \"off\""]),
    ];
    for (flags, extra) in cases {
        let toml = converted(&format!("{BASE} {flags}\n"));
        let mut want = base_lines();
        want.extend(extra.iter().map(|s| (*s).to_owned()));
        assert_eq!(body(&toml), want, "flags {flags}");
    }
}

#[test]
fn modes_and_addresses_map() {
    // (command, mode, source, target)
    let cases = [
        (
            "spiped -d -s [0.0.0.0]:8025 -t [127.0.0.1]:25 -k /k",
            "decrypt",
            "0.0.0.0:8025",
            "127.0.0.1:25",
        ),
        (
            "spiped -e -s 127.0.0.1:8025 -t mail.example.org:8025 -k /k",
            "encrypt",
            "127.0.0.1:8025",
            "mail.example.org:8025",
        ),
        (
            "spiped -d -s [::]:8025 -t [2001:DB8::1]:25 -k /k",
            "decrypt",
            "[::]:8025",
            "[2001:db8::1]:25",
        ),
        (
            "spiped -e -s /run/spiped/in.sock -t [::1]:80 -k /k",
            "encrypt",
            "/run/spiped/in.sock",
            "[::1]:80",
        ),
        (
            "/usr/bin/spiped -d -s [127.0.0.1]:80 -t /run/app.sock -k /k",
            "decrypt",
            "127.0.0.1:80",
            "/run/app.sock",
        ),
    ];
    for (command, mode, source, target) in cases {
        let toml = converted(command);
        assert_eq!(
            body(&toml),
            [
                format!("mode = \"{mode}\""),
                format!("source = \"{source}\""),
                format!("target = \"{target}\""),
                "key = \"/k\"".to_owned(),
            ],
            "{command}"
        );
    }
}

#[test]
fn keys_are_quoted_and_relative_ones_noted() {
    let toml = converted(
        "spiped -e -s [127.0.0.1]:1 -t [127.0.0.1]:2 -k 'my \"key\".bin'",
    );
    assert_eq!(
        body(&toml)[3..],
        [
            "key = \"my \\\"key\\\".bin\"".to_owned(),
            "# spiped read my \"key\".bin from its working folder; spipes \
             reads a relative key path from this file's folder"
                .to_owned(),
        ]
    );
}

#[test]
fn shell_words_comments_and_continuations() {
    let input = "\
# a comment line, then a blank one

spiped -e \\
    -s '[127.0.0.1]:8025' \\
    -t \"[127.0.0.1]:8026\" -k /k   # trailing comment
  # an indented comment
spiped -d -s [127.0.0.1]:9025 -t [127.0.0.1]:9026 -k /etc/spiped\\ keys/k
";
    let toml = converted(input);
    let want = format!(
        "{HEADER}
# from standard input, line 3: spiped -e     -s '[127.0.0.1]:8025'     -t \"[127.0.0.1]:8026\" -k /k   # trailing comment
[pipes.pipe1]
mode = \"encrypt\"
source = \"127.0.0.1:8025\"
target = \"127.0.0.1:8026\"
key = \"/k\"

# from standard input, line 7: spiped -d -s [127.0.0.1]:9025 -t [127.0.0.1]:9026 -k /etc/spiped\\ keys/k
[pipes.pipe2]
mode = \"decrypt\"
source = \"127.0.0.1:9025\"
target = \"127.0.0.1:9026\"
key = \"/etc/spiped keys/k\"
"
    );
    assert_eq!(toml, want);
}

#[test]
fn every_refusal_message() {
    let cases: &[(&str, &[&str])] = &[
        (
            "-1",
            &[
                "line 1: spiped -1 (exit after one connection) has no spipes \
               equivalent",
            ],
        ),
        ("-x", &["line 1: unknown spiped flag -x"]),
        ("-jx", &["line 1: unknown spiped flag -x"]),
        ("--verbose", &["line 1: unknown spiped flag --verbose"]),
        (
            "-v",
            &["line 1: spiped -v (print the version) runs no pipe"],
        ),
        ("-d", &["line 1: spiped -e and -d cannot both be given"]),
        ("-e", &["line 1: spiped -e given twice"]),
        ("-j -j", &["line 1: spiped -j given twice"]),
        ("-s [127.0.0.1]:9", &["line 1: spiped -s given twice"]),
        ("-f -g", &["line 1: spiped -f and -g cannot both be given"]),
        (
            "-r 5 -R",
            &["line 1: spiped -r and -R cannot both be given"],
        ),
        ("-n", &["line 1: spiped -n needs a value"]),
        (
            "-n ten",
            &[
                "line 1: -n expects a whole number of connections (0 for no \
               limit), not `ten`",
            ],
        ),
        (
            "-n -1",
            &[
                "line 1: -n expects a whole number of connections (0 for no \
               limit), not `-1`",
            ],
        ),
        (
            "-o 0",
            &["line 1: -o expects a number of seconds more than 0, not `0`"],
        ),
        (
            "-o soon",
            &["line 1: -o expects a number of seconds more than 0, not \
               `soon`"],
        ),
        (
            "-r -1",
            &["line 1: -r expects a number of seconds, not `-1`"],
        ),
        (
            "-r inf",
            &["line 1: -r expects a number of seconds, not `inf`"],
        ),
        (
            "-b host.example",
            &["line 1: -b expects an IP address, not `host.example`"],
        ),
        (
            "-b [::1]:80",
            &["line 1: -b [::1]:80: spipes binds to an address only; the \
               system picks the port"],
        ),
        (
            "stray",
            &["line 1: unexpected argument `stray`: spiped takes only flags"],
        ),
        (
            "-- -j",
            &["line 1: unexpected argument `-j`: spiped takes only flags"],
        ),
        ("'", &["line 1: unterminated ' quote"]),
        ("-p \"/run/x", &["line 1: unterminated \" quote"]),
        (
            "-p $PIDFILE",
            &[
                "line 1: `$PIDFILE` needs a shell to expand; write its value \
               instead",
            ],
        ),
        (
            "-p `pwd`",
            &[
                "line 1: a backquoted command needs a shell to run; write its \
               output instead",
            ],
        ),
        (
            "&",
            &[
                "line 1: shell syntax `&` is not supported; write one spiped \
               command per line",
            ],
        ),
    ];
    for (flags, want) in cases {
        let problems = refused(&format!("{BASE} {flags}\n"));
        assert_eq!(problems, *want, "flags {flags}");
    }
}

#[test]
fn missing_flags_are_named() {
    let cases: &[(&str, &[&str])] = &[
        (
            "spiped -s [127.0.0.1]:1 -t [127.0.0.1]:2 -k /k",
            &["line 1: missing -e or -d (encrypt or decrypt)"],
        ),
        (
            "spiped -e -t [127.0.0.1]:2 -k /k",
            &["line 1: missing -s (source socket)"],
        ),
        (
            "spiped -e -s [127.0.0.1]:1 -k /k",
            &["line 1: missing -t (target socket)"],
        ),
        (
            "spiped -e -s [127.0.0.1]:1 -t [127.0.0.1]:2",
            &["line 1: missing -k (key file)"],
        ),
        (
            "spiped",
            &[
                "line 1: missing -e or -d (encrypt or decrypt)",
                "line 1: missing -s (source socket)",
                "line 1: missing -t (target socket)",
                "line 1: missing -k (key file)",
            ],
        ),
        (
            "spiped -e -s [127.0.0.1]:1 -t [127.0.0.1]:2 -k -",
            &["line 1: spiped -k - (key on standard input) has no spipes \
               equivalent: write the key to a file"],
        ),
        (
            "spiped -e -s 8025 -t [127.0.0.1]:2 -k /k",
            &["line 1: -s: missing port in `8025`: write host:port"],
        ),
        (
            "spiped -e -s [127.0.0.1]:1 -t run/app.sock -k /k",
            &["line 1: -t: `run/app.sock` is not an address: write \
               host:port, or an absolute path (starting with /) for a Unix \
               socket"],
        ),
        (
            "spipe -t [127.0.0.1]:2 -k /k",
            &["line 1: not a spiped command: `spipe`"],
        ),
        ("", &["standard input: no spiped command found"]),
    ];
    for (input, want) in cases {
        assert_eq!(refused(input), *want, "{input}");
    }
}

#[test]
fn one_refusal_stops_all_output_and_all_problems_are_listed() {
    let input = format!(
        "{BASE}\n\
         spiped -d -s [127.0.0.1]:2 -t [127.0.0.1]:3 -k /k -1\n\
         {BASE} -o 3\n\
         spiped -d -s [127.0.0.1]:4 -t [127.0.0.1]:5 -k /k -q\n"
    );
    assert_eq!(
        refused(&input),
        [
            "line 2: spiped -1 (exit after one connection) has no spipes \
             equivalent",
            "line 4: unknown spiped flag -q",
        ]
    );
}

#[test]
fn unit_files_give_names_and_exec_start_lines() {
    let ws = Workspace::new();
    let web = ws.write_file(
        "spiped-web.service",
        b"[Unit]
Description=spiped for the web back end
After=network.target

[Service]
; a unit-file comment
Type=simple
ExecStartPre=/bin/true
ExecStart=-/usr/bin/spiped -F -d \\
    -s [0.0.0.0]:8080 \\
    -t [127.0.0.1]:80 -k /etc/spiped/web.key
Restart=always

[Install]
WantedBy=multi-user.target
",
    );
    let db = ws.write_file(
        "spiped@db.service",
        b"[Service]\nExecStart=/usr/bin/spiped -e -s [127.0.0.1]:5432 \
          -t db.example:5433 -k /etc/spiped/db.key -F\n",
    );
    // A second unit that would also be called web.
    let web2 = ws.write_file(
        "spiped_web.service",
        b"[Service]\nExecStart=\nExecStart=spiped -e -s [127.0.0.1]:81 \
          -t [127.0.0.1]:82 -k /k\n",
    );
    let plain = ws.write_file(
        "commands.txt",
        b"spiped -e -s [127.0.0.1]:91 -t [127.0.0.1]:92 -k /k\n",
    );
    let output = import_files(&[&web, &db, &web2, &plain]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let toml = text(&output.stdout);
    let want = format!(
        "{HEADER}
# from {web}, line 9: /usr/bin/spiped -F -d      -s [0.0.0.0]:8080      -t [127.0.0.1]:80 -k /etc/spiped/web.key
[pipes.web]
mode = \"decrypt\"
source = \"0.0.0.0:8080\"
target = \"127.0.0.1:80\"
key = \"/etc/spiped/web.key\"
# -F ignored: spipes always runs in the foreground (under systemd)

# from {db}, line 2: /usr/bin/spiped -e -s [127.0.0.1]:5432 -t db.example:5433 -k /etc/spiped/db.key -F
[pipes.db]
mode = \"encrypt\"
source = \"127.0.0.1:5432\"
target = \"db.example:5433\"
key = \"/etc/spiped/db.key\"
# -F ignored: spipes always runs in the foreground (under systemd)

# from {web2}, line 3: spiped -e -s [127.0.0.1]:81 -t [127.0.0.1]:82 -k /k
[pipes.web-2]
mode = \"encrypt\"
source = \"127.0.0.1:81\"
target = \"127.0.0.1:82\"
key = \"/k\"

# from {plain}, line 1: spiped -e -s [127.0.0.1]:91 -t [127.0.0.1]:92 -k /k
[pipes.pipe1]
mode = \"encrypt\"
source = \"127.0.0.1:91\"
target = \"127.0.0.1:92\"
key = \"/k\"
",
        web = web.display(),
        db = db.display(),
        web2 = web2.display(),
        plain = plain.display(),
    );
    assert_eq!(toml, want);
}

#[test]
fn unit_names_with_dots_are_quoted_and_specifiers_refused() {
    let ws = Workspace::new();
    let unit = ws.write_file(
        "spiped-mail.example.service",
        b"[Service]\nExecStart=spiped -e -s [127.0.0.1]:25 -t [127.0.0.1]:26 -k /k\n",
    );
    let output = import_files(&[&unit]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("\n[pipes.\"mail.example\"]\n"),
        "{}",
        text(&output.stdout)
    );

    let template = ws.write_file(
        "spiped@.service",
        b"[Service]\nExecStart=spiped -e -s /run/%i.sock -t [127.0.0.1]:26 -k /k\n",
    );
    let output = import_files(&[&template]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    assert_eq!(
        text(&output.stderr),
        format!(
            "spipes: {}: line 2: `%i` is a systemd specifier; write its \
             value instead\n",
            template.display()
        )
    );
}

#[test]
fn unit_on_standard_input_is_told_by_its_sections() {
    let toml = converted(
        "[Service]\nUser=spiped\nExecStart=/usr/bin/spiped -d -s [::1]:1 -t [::1]:2 -k /k\n",
    );
    assert_eq!(
        body(&toml)[..2],
        ["mode = \"decrypt\"", "source = \"[::1]:1\""]
    );
    assert!(toml.contains("[pipes.pipe1]"), "{toml}");
}

#[test]
fn files_name_themselves_in_messages() {
    let ws = Workspace::new();
    let file = ws.write_file("lines.txt", b"\n\nspiped -e -1\n");
    let output = import_files(&[&file]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let shown = file.display();
    assert_eq!(
        text(&output.stderr),
        format!(
            "spipes: {shown}: line 3: spiped -1 (exit after one connection) \
             has no spipes equivalent\n\
             {shown}: line 3: missing -s (source socket)\n\
             {shown}: line 3: missing -t (target socket)\n\
             {shown}: line 3: missing -k (key file)\n"
        )
    );

    let missing = ws.join("missing.txt");
    let output = import_files(&[&missing]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        text(&output.stderr),
        format!(
            "spipes: cannot read {}: No such file or directory (os error \
             2)\n",
            missing.display()
        )
    );
}

#[test]
fn output_loads_with_spipes_check() {
    let ws = Workspace::new();
    let web = ws.write_key("web.key");
    let db = ws.write_key("db.key");
    let q = |p: &Path| p.display().to_string();
    let lines = format!(
        "spiped -e -s [127.0.0.1]:9080 -t backend.example.org:8080 -k {web} \
         -n 50 -o 2.5 -j -g -r 30 -b 127.0.0.1 -F\n\
         spiped -d -s [::1]:8080 -t [127.0.0.1]:80 -k {web} -f -R -D \
         -p /run/spiped.pid --syslog -u spiped\n\
         /usr/local/bin/spiped -e -s {sock} -t [127.0.0.1]:5433 -k '{db}' \
         -n 0\n",
        web = q(&web),
        db = q(&db),
        sock = q(&ws.join("db.sock")),
    );
    let output = import_stdin(&lines, &[]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let config = ws.write_file("spipes.toml", &output.stdout);

    let mut check = spipes_command();
    check.arg("check").arg("-c").arg(&config);
    let checked = output_within(&mut check, RUN_TIMEOUT);
    assert!(
        checked.status.success(),
        "spipes check refused the import:\n{}\n{}",
        text(&checked.stderr),
        text(&output.stdout)
    );
    assert_eq!(
        text(&checked.stdout),
        format!(
            "pipe1  encrypt  127.0.0.1:9080 -> backend.example.org:8080\n\
             pipe2  decrypt  [::1]:8080 -> 127.0.0.1:80\n\
             pipe3  encrypt  {} -> 127.0.0.1:5433\n",
            ws.join("db.sock").display()
        )
    );
}

#[test]
fn quoted_keys_survive_the_round_trip() {
    // A key path with a quote, a backslash and a space, through import and
    // then check.
    let ws = Workspace::new();
    let key = ws.write_key("we\"ird\\ key");
    let line = format!(
        "spiped -e -s [127.0.0.1]:1 -t [127.0.0.1]:2 -k '{}'\n",
        key.display()
    );
    let toml = converted(&line);
    assert!(
        toml.contains(&format!(
            "key = {}\n",
            toml_string(&key.display().to_string())
        )),
        "{toml}"
    );
    let config = ws.write_file("spipes.toml", toml.as_bytes());
    let mut check = spipes_command();
    check.arg("check").arg("-c").arg(&config);
    let checked = output_within(&mut check, RUN_TIMEOUT);
    assert!(checked.status.success(), "{}", text(&checked.stderr));
}
