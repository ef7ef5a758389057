//! The typical deployment end to end, with the real nginx at both ends:
//!
//! ```text
//! client -> nginx (front end) -> encrypt pipe -> decrypt end -> nginx
//! ```
//!
//! once with spipes at both ends of the pipe and once with the real
//! `spiped -d` at the back end. Everything listens on 127.0.0.1, on
//! ephemeral ports. nginx comes from Debian's `nginx-light`; without it
//! (or without spiped) the tests skip, unless `SPIPES_REQUIRE_SPIPED=1`.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use common::{
    Endpoint, Nginx, Spiped, Spipes, Workspace, hex, nginx_conf, pipe_toml,
    random_bytes, require_binary, sha256,
};

/// The Host header the front end sets; the back end must see exactly it.
const FRONTEND_HOST: &str = "frontend-test.example";

/// Bytes of the generated page: about a thousand packets, and more than
/// nginx's in-memory proxy buffers, so the front end may spool it to its
/// temp folder.
const PAGE_LEN: usize = 1024 * 1024 + 17;

/// Requests for the page per test, each on a connection of its own, so
/// each makes a new pipe connection and handshake.
const PAGE_REQUESTS: usize = 3;

/// Starts nginx with the `server { ... }` block that `server` returns
/// for the workspace, listening on `endpoint` (see [`Nginx::start`]).
fn start_nginx(
    bin: &Path,
    endpoint: Endpoint,
    server: impl FnOnce(&Workspace) -> String,
) -> Nginx {
    Nginx::start(bin, endpoint, |dir| {
        nginx_conf(dir, "", "application/octet-stream", &server(dir))
    })
}

/// The back end, with `page` as `/page.bin`: it answers `/host` with the
/// Host header it received, and names that header on every reply.
fn start_backend(nginx: &Path, page: &[u8]) -> Nginx {
    let endpoint = Endpoint::free_tcp();
    start_nginx(nginx, endpoint.clone(), |dir| {
        let root = dir.join("www");
        fs::create_dir(&root).expect("create the document root");
        fs::write(root.join("page.bin"), page).expect("write the page");
        format!(
            "server {{
    listen {endpoint};
    root {root};
    add_header X-Seen-Host $http_host always;
    location = /host {{
        return 200 \"$http_host\";
    }}
}}",
            root = root.display()
        )
    })
}

/// The front end: proxies everything to `upstream` (the encrypt pipe),
/// setting the Host header, as `examples/nginx/frontend.conf` does.
fn start_frontend(nginx: &Path, upstream: &Endpoint) -> Nginx {
    let endpoint = Endpoint::free_tcp();
    start_nginx(nginx, endpoint.clone(), |_| {
        format!(
            "server {{
    listen {endpoint};
    location / {{
        proxy_pass http://{upstream};
        proxy_set_header Host {FRONTEND_HOST};
        proxy_connect_timeout 10s;
        proxy_read_timeout 30s;
    }}
}}"
        )
    })
}

/// A parsed HTTP response.
struct Response {
    status: u16,
    /// Header names lowercased, in the order received.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    /// The value of header `name` (lowercase), if present once or more.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` over HTTP/1.0 on a new connection to `server`, read to the
/// end of stream; panics on I/O errors and malformed responses.
fn get(server: &Endpoint, path: &str) -> Response {
    let mut conn = server
        .connect()
        .unwrap_or_else(|e| panic!("connect to {server}: {e}"));
    let request = format!("GET {path} HTTP/1.0\r\nHost: {server}\r\n\r\n");
    conn.write_all(request.as_bytes())
        .expect("send the request");
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).expect("read the response");
    parse_response(&raw)
}

/// Splits a whole HTTP/1.x response into status, headers and body.
fn parse_response(raw: &[u8]) -> Response {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {} bytes", raw.len()));
    let head = std::str::from_utf8(&raw[..end]).expect("ASCII headers");
    let mut lines = head.split("\r\n");

    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {line:?}"));
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    Response {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

/// Requests the page and `/host` through the front end, and checks that
/// the page arrives byte for byte and the Host header intact.
fn check_deployment(frontend: &Nginx, page: &[u8]) {
    for i in 0..PAGE_REQUESTS {
        let r = get(frontend.endpoint(), "/page.bin");
        assert_eq!(r.status, 200, "page request {i}: status {}", r.status);
        assert_eq!(
            r.header("content-length"),
            Some(page.len().to_string().as_str()),
            "page request {i}: Content-Length"
        );
        assert_eq!(r.body.len(), page.len(), "page request {i}: body length");
        assert!(
            sha256(&r.body) == sha256(page),
            "page request {i}: body hash {} differs from the file's {}",
            hex(&sha256(&r.body)),
            hex(&sha256(page))
        );
        assert_eq!(
            r.header("x-seen-host"),
            Some(FRONTEND_HOST),
            "page request {i}: the Host header the back end saw"
        );
    }

    let r = get(frontend.endpoint(), "/host");
    assert_eq!(r.status, 200, "/host: status {}", r.status);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        FRONTEND_HOST,
        "/host: the Host header the back end saw"
    );
}

/// The spipes config of one host: one pipe, a short drain, and no
/// control socket, so that parallel tests share no path outside their
/// workspaces.
fn spipes_config(ws: &Workspace, name: &str, pipe: String) -> PathBuf {
    let daemon = "[daemon]\ndrain_timeout = 5\ncontrol_socket = \"\"\n";
    ws.write_config(name, &format!("{daemon}\n{pipe}"))
}

#[test]
fn nginx_to_nginx_through_spipes_at_both_ends() {
    let Some(nginx) = require_binary("nginx") else {
        return;
    };
    let page = random_bytes(PAGE_LEN);
    let backend = start_backend(&nginx, &page);

    // One spipes process per host, as deployed: a decrypt pipe on the
    // back end, an encrypt pipe on the front end.
    let ws = Workspace::new();
    let key = ws.write_key("web.key");
    let (encrypt, decrypt) = (Endpoint::free_tcp(), Endpoint::free_tcp());
    let back =
        pipe_toml("web", "decrypt", &decrypt, backend.endpoint(), &key, &[]);
    let mut back = Spipes::start(&spipes_config(&ws, "back.toml", back));
    let front = pipe_toml("web", "encrypt", &encrypt, &decrypt, &key, &[]);
    let mut front = Spipes::start(&spipes_config(&ws, "front.toml", front));

    let frontend = start_frontend(&nginx, &encrypt);
    check_deployment(&frontend, &page);

    // Both daemons stop cleanly once the front end is gone.
    drop(frontend);
    for (name, spipes) in [("front", &mut front), ("back", &mut back)] {
        let status = spipes.stop();
        assert!(status.success(), "{name} spipes exited with {status}");
    }
}

#[test]
fn nginx_to_nginx_through_spipes_and_real_spiped() {
    let Some(nginx) = require_binary("nginx") else {
        return;
    };
    if require_binary("spiped").is_none() {
        return;
    }
    let page = random_bytes(PAGE_LEN);
    let backend = start_backend(&nginx, &page);

    // The real spiped decrypts on the back end; spipes encrypts in front.
    let ws = Workspace::new();
    let key = ws.write_key("web.key");
    let (encrypt, decrypt) = (Endpoint::free_tcp(), Endpoint::free_tcp());
    let _spiped = Spiped::decrypt(&decrypt, backend.endpoint(), &key, &[]);
    let front = pipe_toml("web", "encrypt", &encrypt, &decrypt, &key, &[]);
    let mut front = Spipes::start(&spipes_config(&ws, "front.toml", front));

    let frontend = start_frontend(&nginx, &encrypt);
    check_deployment(&frontend, &page);

    drop(frontend);
    let status = front.stop();
    assert!(status.success(), "spipes exited with {status}");
}
