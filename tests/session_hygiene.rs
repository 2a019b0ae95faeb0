//! Proxy mode's promise that nothing under the session prefix crosses tandem, and that
//! tandem's cookies never reach a backend, wherever a field can travel: trailers over HTTP/1.1
//! and HTTP/2 in both directions, the `Trailer` list announcing them, 1xx interim responses,
//! and Cookie headers whose bytes are not all visible ASCII. Such headers also keep their
//! sticky affinity (`route` and `insert` modes) and get a takeover's rewrite, and an HTTP/2
//! client's split Cookie fields reach the backend as one.

mod support;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use support::*;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A header field as read off the wire: its name (lowercase) and value.
type Field = (String, String);

/// Whether `name` is under the session prefix, in either spelling (`-` or `_`), any case.
fn is_session_field(name: &str) -> bool {
    name.to_ascii_lowercase()
        .replace('_', "-")
        .starts_with("x-tandem-session")
}

/// Fails unless no field in `fields`, and no name in a `Trailer` list among them, is a session
/// field.
fn assert_no_session_field(fields: &[Field], what: &str) {
    for (name, value) in fields {
        assert!(!is_session_field(name), "{what}: {name}: {value}");
        if name == "trailer" {
            assert!(
                !value
                    .split(',')
                    .any(|listed| is_session_field(listed.trim())),
                "{what}: trailer: {value}"
            );
        }
    }
}

fn field<'f>(fields: &'f [Field], name: &str) -> Option<&'f str> {
    fields
        .iter()
        .find(|(found, _)| found == name)
        .map(|(_, value)| value.as_str())
}

/// One request as a raw backend read it.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    head: Vec<Field>,
    trailers: Vec<Field>,
}

/// Reads a message head: its start line and fields; `None` at the end of the stream.
async fn read_head<R: AsyncBufRead + Unpin>(reader: &mut R) -> Option<(String, Vec<Field>)> {
    let mut start = String::new();
    if reader.read_line(&mut start).await.ok()? == 0 {
        return None;
    }
    let fields = read_fields(reader).await;
    Some((start.trim_end().to_string(), fields))
}

/// Reads `name: value` lines up to an empty one.
async fn read_fields<R: AsyncBufRead + Unpin>(reader: &mut R) -> Vec<Field> {
    let mut fields = Vec::new();
    for _ in 0..200 {
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line).await.unwrap();
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end();
        if line.is_empty() {
            return fields;
        }
        let (name, value) = line.split_once(':').expect("a field line");
        fields.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    panic!("too many fields");
}

/// Reads the body framed by `head` (chunked or Content-Length): its bytes and trailers.
async fn read_body<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    head: &[Field],
) -> (Vec<u8>, Vec<Field>) {
    let mut body = Vec::new();
    if field(head, "transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        for _ in 0..10_000 {
            let mut line = String::new();
            reader.read_line(&mut line).await.unwrap();
            let size = line.trim().split(';').next().unwrap();
            let size = usize::from_str_radix(size, 16).expect("a chunk size");
            if size == 0 {
                return (body, read_fields(reader).await);
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).await.unwrap();
            body.extend_from_slice(&chunk[..size]);
        }
        panic!("too many chunks");
    }
    let length = field(head, "content-length").map_or(0, |n| n.parse().unwrap());
    body.resize(length, 0);
    reader.read_exact(&mut body).await.unwrap();
    (body, Vec::new())
}

/// A backend written by hand, because hyper would neither send trailers to a request without
/// `TE: trailers` (tandem forwards none) nor send a 1xx. It records every request with its
/// trailers and answers by path:
/// - `/login`: sets the session to `{"n":1}` in its response head;
/// - `/look`: answers the session data it received;
/// - `/trailers`: a chunked body with session fields (and `x-checksum`) in its trailers and
///   its `Trailer` list;
/// - `/trailers-only-session`: the same with only session fields in the trailers and list;
/// - `/early`: a `103 Early Hints` carrying session fields, then the answer;
/// - anything else: `ok`.
struct RawBackend {
    address: std::net::SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawBackend {
    async fn start() -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&received);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(RawBackend::serve(stream, Arc::clone(&record)));
            }
        });
        RawBackend {
            address,
            received,
            task,
        }
    }

    async fn serve(stream: TcpStream, record: Arc<Mutex<Vec<Received>>>) {
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        while let Some((start, head)) = read_head(&mut reader).await {
            let (_, trailers) = read_body(&mut reader, &head).await;
            let path = start.split(' ').nth(1).unwrap_or("/").to_string();
            let data = field(&head, "x-tandem-session-data")
                .unwrap_or("-")
                .to_string();
            record.lock().unwrap().push(Received {
                path: path.clone(),
                head,
                trailers,
            });
            let answer = match path.as_str() {
                "/login" => with_length("x-tandem-session-patch: {\"n\":1}\r\n", "ok"),
                "/look" => with_length("", &data),
                "/trailers" => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\
                     trailer: x-tandem-session-patch, X_Tandem_Session_Command, x-checksum\r\n\r\n\
                     5\r\nhello\r\n0\r\n\
                     x-tandem-session-patch: {\"n\":2}\r\n\
                     X_Tandem_Session_Command: invalidate\r\n\
                     x-tandem-session-idle-timeout: 5\r\n\
                     x-checksum: abc\r\n\r\n"
                    .to_string(),
                "/trailers-only-session" => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\
                     trailer: X-Tandem-Session-Patch\r\n\r\n\
                     5\r\nhello\r\n0\r\n\
                     x-tandem-session-patch: {\"n\":3}\r\n\r\n"
                    .to_string(),
                "/early" => format!(
                    "HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\
                     x-tandem-session-patch: {{\"n\":4}}\r\n\
                     x_tandem_session_command: invalidate\r\n\r\n{}",
                    with_length("", "ok")
                ),
                _ => with_length("", "ok"),
            };
            if write.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    /// The requests received so far on `path`.
    fn received_on(&self, path: &str) -> Vec<Received> {
        let received = self.received.lock().unwrap();
        received
            .iter()
            .filter(|request| request.path == path)
            .cloned()
            .collect()
    }
}

/// A 200 with `fields` (whole lines) and `body`, framed by Content-Length.
fn with_length(fields: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\n{fields}content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// tandem in proxy mode in front of `backend`.
fn proxy_tandem(backend: &RawBackend) -> Tandem {
    Tandem::start(&config(&format!(
        "[session]\nmode = \"proxy\"\n\n[[pool]]\nname = \"app\"\n\
         [[pool.backend]]\naddress = \"{}\"\nroute = \"r1\"\n",
        backend.address
    )))
}

/// What a client saw of one exchange: the heads (interim ones first), and the trailers.
struct Seen {
    /// Status and fields of every head received, 1xx included, in order.
    heads: Vec<(u16, Vec<Field>)>,
    trailers: Vec<Field>,
    body: Vec<u8>,
}

impl Seen {
    fn head(&self) -> &[Field] {
        &self.heads.last().expect("a final response").1
    }

    fn assert_nothing_of_the_session(&self, what: &str) {
        for (status, head) in &self.heads {
            assert_no_session_field(head, &format!("{what}, head {status}"));
        }
        assert_no_session_field(&self.trailers, &format!("{what}, trailers"));
    }
}

/// The client's protocol.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    Http1,
    Http2,
}

/// A request sent by hand: `fields` in its head and, for a body, chunks then `trailers`.
struct RawRequest<'r> {
    method: &'r str,
    path: &'r str,
    fields: &'r [(&'r str, &'r str)],
    trailers: &'r [(&'r str, &'r str)],
}

impl RawRequest<'_> {
    async fn send(&self, protocol: Protocol, tandem: &Tandem) -> Seen {
        let exchange = async {
            match protocol {
                Protocol::Http1 => self.send_h1(tandem).await,
                Protocol::Http2 => self.send_h2(tandem).await,
            }
        };
        tokio::time::timeout(DEADLINE, exchange)
            .await
            .expect("an answer within the deadline")
    }

    /// Over HTTP/1.1: a chunked body with a trailer section when there are trailers.
    async fn send_h1(&self, tandem: &Tandem) -> Seen {
        let mut request = format!(
            "{} {} HTTP/1.1\r\nhost: app\r\nconnection: close\r\n",
            self.method, self.path
        );
        for (name, value) in self.fields {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if self.trailers.is_empty() {
            request.push_str("\r\n");
        } else {
            request.push_str("transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n");
            for (name, value) in self.trailers {
                request.push_str(&format!("{name}: {value}\r\n"));
            }
            request.push_str("\r\n");
        }
        let mut stream = TcpStream::connect(tandem.address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut heads = Vec::new();
        for _ in 0..10 {
            let (start, head) = read_head(&mut reader).await.expect("a response head");
            let status: u16 = start.split(' ').nth(1).unwrap().parse().unwrap();
            heads.push((status, head));
            if status >= 200 {
                break;
            }
        }
        let (body, trailers) = read_body(&mut reader, &heads.last().unwrap().1).await;
        Seen {
            heads,
            trailers,
            body,
        }
    }

    /// Over HTTP/2 (h2c): HEADERS, DATA, then trailing HEADERS when there are trailers.
    async fn send_h2(&self, tandem: &Tandem) -> Seen {
        let tcp = TcpStream::connect(tandem.address).await.unwrap();
        let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let mut h2 = h2.ready().await.unwrap();
        let mut request = http::Request::builder()
            .method(self.method)
            .uri(tandem.url(self.path));
        for (name, value) in self.fields {
            request = request.header(*name, *value);
        }
        let has_body = !self.trailers.is_empty();
        let (response, mut stream) = h2
            .send_request(request.body(()).unwrap(), !has_body)
            .unwrap();
        if has_body {
            stream
                .send_data(Bytes::from_static(b"hello"), false)
                .unwrap();
            stream.send_trailers(to_map(self.trailers)).unwrap();
        }
        let response = response.await.unwrap();
        let status = response.status().as_u16();
        let head = from_map(response.headers());
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.unwrap();
        Seen {
            heads: vec![(status, head)],
            trailers: trailers.as_ref().map(from_map).unwrap_or_default(),
            body: bytes,
        }
    }
}

fn to_map(fields: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in fields {
        let name = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        map.append(name, HeaderValue::from_str(value).unwrap());
    }
    map
}

fn from_map(map: &HeaderMap) -> Vec<Field> {
    map.iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_string(), value)
        })
        .collect()
}

/// The `TANDEMSESSION=...` pair of a session holding `{"n":1}`, made through the backend.
async fn login(tandem: &Tandem) -> String {
    let seen = RawRequest {
        method: "GET",
        path: "/login",
        fields: &[],
        trailers: &[],
    }
    .send(Protocol::Http1, tandem)
    .await;
    let set = field(seen.head(), "set-cookie").expect("a session cookie");
    set.split(';').next().unwrap().to_string()
}

/// What the backend receives as the session's data for a client holding `cookie`.
async fn session_data(tandem: &Tandem, cookie: &str) -> String {
    let seen = RawRequest {
        method: "GET",
        path: "/look",
        fields: &[("cookie", cookie)],
        trailers: &[],
    }
    .send(Protocol::Http1, tandem)
    .await;
    String::from_utf8(seen.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_fields_in_request_trailers_never_reach_the_backend() {
    let backend = RawBackend::start().await;
    let tandem = proxy_tandem(&backend);
    let forged = [
        ("x-tandem-session-id", "forged"),
        ("X-Tandem-Session-Data", "{\"admin\":true}"),
        ("x_tandem_session_data", "{\"admin\":true}"),
        ("x-checksum", "abc"),
    ];
    /// A client's `Trailer` list, the trailers it sends, and the list the backend may get.
    struct Row<'r> {
        declared: &'r str,
        trailers: &'r [(&'r str, &'r str)],
        kept_list: Option<&'r str>,
    }
    let rows = [
        Row {
            declared:
                "x-tandem-session-id, X-Tandem-Session-Data, x_tandem_session_data, x-checksum",
            trailers: &forged,
            kept_list: Some("x-checksum"),
        },
        Row {
            declared: "x-tandem-session-id, X_TANDEM_SESSION_DATA",
            trailers: &forged[..2],
            kept_list: None,
        },
        // A Cookie is no field for trailers, and one there would carry tandem's cookie past
        // its removal from the head.
        Row {
            declared: "cookie, x-checksum",
            trailers: &[
                ("cookie", "TANDEMSESSION=forged.r1; a=1"),
                ("x-checksum", "abc"),
            ],
            kept_list: Some("cookie, x-checksum"),
        },
    ];
    for protocol in [Protocol::Http1, Protocol::Http2] {
        for (index, row) in rows.iter().enumerate() {
            let Row {
                declared,
                trailers,
                kept_list,
            } = row;
            let path = format!("/upload-{protocol:?}-{index}");
            let seen = RawRequest {
                method: "POST",
                path: &path,
                fields: &[("trailer", declared)],
                trailers,
            }
            .send(protocol, &tandem)
            .await;
            assert_eq!(seen.heads.last().unwrap().0, 200, "{path}");
            let [received] = &backend.received_on(&path)[..] else {
                panic!("{path} reached the backend once");
            };
            let what = format!("{protocol:?}, Trailer: {declared}");
            assert_no_session_field(&received.head, &what);
            assert_no_session_field(&received.trailers, &what);
            assert_eq!(field(&received.trailers, "cookie"), None, "{what}");
            assert_eq!(field(&received.head, "trailer"), *kept_list, "{what}");
            if kept_list.is_some() {
                // The other trailers still go through.
                assert_eq!(
                    field(&received.trailers, "x-checksum"),
                    Some("abc"),
                    "{what}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_fields_in_response_trailers_and_1xx_never_reach_the_client() {
    let backend = RawBackend::start().await;
    let tandem = proxy_tandem(&backend);
    let cookie = login(&tandem).await;
    assert_eq!(session_data(&tandem, &cookie).await, r#"{"n":1}"#);
    // (path, the Trailer list and x-checksum trailer the client may get)
    let rows = [
        ("/trailers", Some("x-checksum")),
        ("/trailers-only-session", None),
        ("/early", None),
    ];
    for protocol in [Protocol::Http1, Protocol::Http2] {
        for (path, kept) in rows {
            let seen = RawRequest {
                method: "GET",
                path,
                fields: &[("te", "trailers"), ("cookie", &cookie)],
                trailers: &[],
            }
            .send(protocol, &tandem)
            .await;
            let what = format!("{protocol:?} {path}");
            seen.assert_nothing_of_the_session(&what);
            // tandem relays no 1xx at all: the 103 stays between tandem and the backend.
            assert_eq!(seen.heads.len(), 1, "{what}: one head, the final one");
            assert_eq!(seen.heads[0].0, 200, "{what}");
            assert_eq!(field(seen.head(), "trailer"), kept, "{what}");
            if kept.is_some() {
                // Trailers do travel: only the session's are held back.
                assert_eq!(field(&seen.trailers, "x-checksum"), Some("abc"), "{what}");
            }
            // A session update is read from the response head only: the patch and the
            // `invalidate` in the trailers or the 103 changed nothing, so no cookie changes.
            assert_eq!(field(seen.head(), "set-cookie"), None, "{what}");
            assert_eq!(session_data(&tandem, &cookie).await, r#"{"n":1}"#, "{what}");
        }
    }
}

/// How a client sent its Cookie fields, with `{N}={V}` standing for tandem's own cookie, and
/// the Cookie fields the backend must get.
struct CookieRow {
    what: &'static str,
    sent: &'static [&'static [u8]],
    arrives: &'static [&'static [u8]],
    /// Whether tandem can still read its cookie (proxy mode: the backend gets the session).
    readable: bool,
}

const COOKIE_ROWS: &[CookieRow] = &[
    CookieRow {
        what: "visible ASCII only",
        sent: &[b"a=1; {N}={V}; b=2"],
        arrives: &[b"a=1; b=2"],
        readable: true,
    },
    CookieRow {
        what: "0xFF in a cookie before tandem's",
        sent: &[b"a=\xff1; {N}={V}; b=2"],
        arrives: &[b"a=\xff1; b=2"],
        readable: true,
    },
    CookieRow {
        what: "0xFF in a cookie after tandem's",
        sent: &[b"a=1; {N}={V}; b=\xff2"],
        arrives: &[b"a=1; b=\xff2"],
        readable: true,
    },
    CookieRow {
        what: "0xFF inside tandem's own cookie",
        sent: &[b"a=1; {N}={V}\xff; b=2"],
        arrives: &[b"a=1; b=2"],
        readable: false,
    },
    CookieRow {
        what: "several fields, 0xFF in another",
        sent: &[b"a=\xff", b"{N}={V}", b"b=2"],
        arrives: &[b"a=\xff", b"b=2"],
        readable: true,
    },
    CookieRow {
        what: "several fields, tandem's in two, 0xFF beside it",
        sent: &[b"{N}={V}; a=\xff1", b"b=2; {N}={V}\xfe"],
        arrives: &[b"a=\xff1", b"b=2"],
        readable: true,
    },
    CookieRow {
        what: "spaces around the name, as cookie parsers read it",
        sent: &[b"a=\xff;  {N} = {V} ;b=2"],
        arrives: &[b"a=\xff;b=2"],
        readable: true,
    },
];

/// Sends every row of [`COOKIE_ROWS`] over `protocol` with `pair` (`NAME=value`) as `{N}={V}`, and
/// checks what `backend` received: never `pair`'s cookie, the others byte for byte (in one
/// field over HTTP/2). With
/// `session_id`, the backend must also get that session when tandem could read it.
async fn check_cookie_rows(
    tandem: &Tandem,
    backend: &Backend,
    protocol: Protocol,
    pair: &str,
    session_id: Option<&str>,
) {
    let client = match protocol {
        Protocol::Http1 => client(),
        Protocol::Http2 => h2c_client(),
    };
    let (name, value) = pair.split_once('=').unwrap();
    for row in COOKIE_ROWS {
        let what = format!("{protocol:?}, {}", row.what);
        let mut request = http::Request::get(tandem.url("/session"));
        for sent in row.sent {
            let sent = replace_bytes(&replace_bytes(sent, b"{N}", name), b"{V}", value);
            request = request.header("cookie", HeaderValue::from_bytes(&sent).unwrap());
        }
        let answer = send(&client, request.body(empty()).unwrap()).await;
        assert_eq!(answer.status, 200, "{what}");
        let received = backend.last_headers.lock().unwrap().clone().unwrap();
        let cookies: Vec<&[u8]> = received
            .get_all("cookie")
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        let shown: Vec<_> = cookies.iter().map(|v| String::from_utf8_lossy(v)).collect();
        assert!(
            !shown.iter().any(|value| value.contains(name)),
            "{what}: {name} reached the backend in {shown:?}"
        );
        let arrives: Vec<Vec<u8>> = row.arrives.iter().map(|field| field.to_vec()).collect();
        assert_eq!(
            cookies,
            as_forwarded(protocol, &arrives),
            "{what}: {shown:?}"
        );
        if let Some(id) = session_id {
            let got = received.get("x-tandem-session-id").map(|v| v.as_bytes());
            let expected = row.readable.then_some(id.as_bytes());
            assert_eq!(got, expected, "{what}: the session tandem read");
        }
    }
}

/// `bytes` with every `from` replaced by `to`.
fn replace_bytes(bytes: &[u8], from: &[u8], to: &str) -> Vec<u8> {
    let mut replaced = Vec::new();
    let mut rest = bytes;
    while let Some(at) = rest.windows(from.len()).position(|window| window == from) {
        replaced.extend_from_slice(&rest[..at]);
        replaced.extend_from_slice(to.as_bytes());
        rest = &rest[at + from.len()..];
    }
    replaced.extend_from_slice(rest);
    replaced
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_never_reaches_a_backend_whatever_bytes_come_with_it() {
    let backend = Backend::start("a").await;
    let tandem = Tandem::start(&config(&format!(
        "[session]\nmode = \"proxy\"\n\n{}",
        pool("app", "round_robin", "", &[&backend])
    )));
    let login = get_with(
        &client(),
        &tandem.url("/session"),
        &[("x-respond-x-tandem-session-patch", r#"{"n":1}"#)],
    )
    .await;
    let set = login.headers["set-cookie"].to_str().unwrap();
    let pair = set.split(';').next().unwrap();
    assert!(pair.starts_with("TANDEMSESSION="), "{set}");
    let id = pair["TANDEMSESSION=".len()..].split('.').next().unwrap();
    for protocol in [Protocol::Http1, Protocol::Http2] {
        check_cookie_rows(&tandem, &backend, protocol, pair, Some(id)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_insert_mode_cookie_never_reaches_a_backend_whatever_bytes_come_with_it() {
    let backend = Backend::start("a").await;
    let insert = "[pool.sticky]\nmode = \"insert\"\nsecret = \"a long enough test secret\"\n";
    let tandem = Tandem::start(&config(&pool("web", "round_robin", insert, &[&backend])));
    let first = get(&client(), &tandem.url("/")).await;
    let set = first.headers["set-cookie"].to_str().unwrap();
    let pair = set.split(';').next().unwrap();
    assert!(pair.starts_with("TANDEMROUTE="), "{set}");
    for protocol in [Protocol::Http1, Protocol::Http2] {
        check_cookie_rows(&tandem, &backend, protocol, pair, None).await;
    }
}

/// GET `path` over `protocol` with one Cookie field per entry of `cookies` (raw bytes).
async fn get_with_cookies(
    tandem: &Tandem,
    protocol: Protocol,
    path: &str,
    cookies: &[&[u8]],
) -> Answer {
    let client = match protocol {
        Protocol::Http1 => client(),
        Protocol::Http2 => h2c_client(),
    };
    let mut request = http::Request::get(tandem.url(path));
    for cookie in cookies {
        request = request.header("cookie", HeaderValue::from_bytes(cookie).unwrap());
    }
    send(&client, request.body(empty()).unwrap()).await
}

/// The Cookie fields `backend` received last, as bytes.
fn cookies_received(backend: &Backend) -> Vec<Vec<u8>> {
    let received = backend.last_headers.lock().unwrap().clone().unwrap();
    received
        .get_all("cookie")
        .iter()
        .map(|value| value.as_bytes().to_vec())
        .collect()
}

/// The Cookie fields a backend gets for `sent` over `protocol`: as sent over HTTP/1.1, joined
/// into one with `; ` over HTTP/2 (RFC 9113 §8.2.3).
fn as_forwarded(protocol: Protocol, sent: &[Vec<u8>]) -> Vec<Vec<u8>> {
    match protocol {
        Protocol::Http1 => sent.to_vec(),
        Protocol::Http2 if sent.is_empty() => Vec::new(),
        Protocol::Http2 => vec![sent.join(&b"; "[..])],
    }
}

/// Where a session cookie (`{S}`) sits among cookies holding bytes outside visible ASCII.
const BESIDE_NON_ASCII: &[&[&[u8]]] = &[
    &[b"theme=\xffdark; {S}"],
    &[b"{S}; theme=dark\xff"],
    &[b"a=1; theme=\xfe\xff; {S}; b=2"],
    &[b"theme=\xff", b"{S}"],
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_ascii_byte_in_another_cookie_keeps_route_affinity() {
    let backends = three_backends().await;
    let tandem = Tandem::start(&config(&pool(
        "web",
        "round_robin",
        "",
        &[&backends[0], &backends[1], &backends[2]],
    )));
    for protocol in [Protocol::Http1, Protocol::Http2] {
        for row in BESIDE_NON_ASCII {
            let sent: Vec<Vec<u8>> = row
                .iter()
                .map(|field| replace_bytes(field, b"{S}", "JSESSIONID=8F3A.b"))
                .collect();
            let fields: Vec<&[u8]> = sent.iter().map(Vec::as_slice).collect();
            for turn in 0..4 {
                let what = format!(
                    "{protocol:?}, {:?}, turn {turn}",
                    String::from_utf8_lossy(row[0])
                );
                let answer = get_with_cookies(&tandem, protocol, "/", &fields).await;
                assert_eq!(answer.body, "b", "{what}: the session's backend");
                assert_eq!(
                    cookies_received(&backends[1]),
                    as_forwarded(protocol, &sent),
                    "{what}: the cookies go on byte for byte"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_ascii_byte_in_another_cookie_keeps_insert_mode_affinity() {
    let backends = three_backends().await;
    let insert = "[pool.sticky]\nmode = \"insert\"\nsecret = \"a long enough test secret\"\n";
    let tandem = Tandem::start(&config(&pool(
        "web",
        "round_robin",
        insert,
        &[&backends[0], &backends[1], &backends[2]],
    )));
    let first = get(&client(), &tandem.url("/")).await;
    let set = first.headers["set-cookie"].to_str().unwrap();
    let pair = set.split(';').next().unwrap();
    assert!(pair.starts_with("TANDEMROUTE="), "{set}");
    let owner = backends.iter().find(|b| b.name == first.body).unwrap();
    for protocol in [Protocol::Http1, Protocol::Http2] {
        for row in BESIDE_NON_ASCII {
            let sent: Vec<Vec<u8>> = row
                .iter()
                .map(|field| replace_bytes(field, b"{S}", pair))
                .collect();
            let fields: Vec<&[u8]> = sent.iter().map(Vec::as_slice).collect();
            for turn in 0..4 {
                let what = format!(
                    "{protocol:?}, {:?}, turn {turn}",
                    String::from_utf8_lossy(row[0])
                );
                let answer = get_with_cookies(&tandem, protocol, "/", &fields).await;
                assert_eq!(answer.body, first.body, "{what}: the cookie's backend");
                assert!(
                    answer.headers.get("set-cookie").is_none(),
                    "{what}: the cookie is right already"
                );
                // What the backend gets: the others, byte for byte, without tandem's.
                let others: Vec<Vec<u8>> = row
                    .iter()
                    .map(|field| {
                        let field = replace_bytes(field, b"; {S}", "");
                        replace_bytes(&field, b"{S}; ", "")
                    })
                    .filter(|field| field.as_slice() != b"{S}")
                    .collect();
                assert_eq!(
                    cookies_received(owner),
                    as_forwarded(protocol, &others),
                    "{what}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_over_session_is_rewritten_whatever_bytes_come_with_it() {
    let backends = three_backends().await;
    let tandem = Tandem::start(&config(&pool(
        "web",
        "round_robin",
        "",
        &[&backends[0], &backends[1], &backends[2]],
    )));
    let login = get(&client(), &tandem.url("/app/login")).await;
    let owner = login.body.clone();
    let old_id = format!("S1.{owner}");
    backends
        .iter()
        .find(|b| b.name == owner)
        .unwrap()
        .kill()
        .await;
    let moved = get_with_cookies(
        &tandem,
        Protocol::Http1,
        "/app/whoami",
        &[format!("JSESSIONID={old_id}").as_bytes()],
    )
    .await;
    let (taker, _) = moved.body.split_once(' ').unwrap();
    assert_ne!(taker, owner);
    tandem.wait_log("session route taken over");
    let taker = backends.iter().find(|b| b.name == taker).unwrap();
    let new_id = format!("S1.{}", taker.name);
    for protocol in [Protocol::Http1, Protocol::Http2] {
        // The client holds the new id (the move's Set-Cookie) or still the old one.
        for held in [&new_id, &old_id] {
            for row in BESIDE_NON_ASCII {
                let what = format!(
                    "{protocol:?}, {held}, {:?}",
                    String::from_utf8_lossy(row[0])
                );
                let with = |id: &str| -> Vec<Vec<u8>> {
                    row.iter()
                        .map(|field| replace_bytes(field, b"{S}", &format!("JSESSIONID={id}")))
                        .collect()
                };
                let sent = with(held);
                let fields: Vec<&[u8]> = sent.iter().map(Vec::as_slice).collect();
                let answer = get_with_cookies(&tandem, protocol, "/app/whoami", &fields).await;
                assert_eq!(answer.headers["x-backend"], taker.name.as_str(), "{what}");
                assert_eq!(
                    cookies_received(taker),
                    as_forwarded(protocol, &with(&old_id)),
                    "{what}: the id the backends know, every other byte as sent"
                );
            }
        }
    }
}

/// Sends a GET with one `cookie` field per entry of `cookies` over h2c, through the `h2` crate
/// (so that each is its own field on the wire); returns the status.
async fn h2_get_with_split_cookies(tandem: &Tandem, cookies: &[&str]) -> u16 {
    let exchange = async {
        let tcp = TcpStream::connect(tandem.address).await.unwrap();
        let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let mut h2 = h2.ready().await.unwrap();
        let mut request = http::Request::get(tandem.url("/session"));
        for cookie in cookies {
            request = request.header("cookie", *cookie);
        }
        let (response, _) = h2.send_request(request.body(()).unwrap(), true).unwrap();
        response.await.unwrap().status().as_u16()
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("an answer within the deadline")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_clients_split_cookie_fields_reach_the_backend_as_one() {
    let backend = Backend::start("a").await;
    let plain = Tandem::start(&config(&pool("app", "round_robin", "", &[&backend])));
    assert_eq!(
        h2_get_with_split_cookies(&plain, &["a=1", "b=2", "c=3"]).await,
        200
    );
    assert_eq!(cookies_received(&backend), [b"a=1; b=2; c=3".to_vec()]);

    // With tandem's own cookie among them, in proxy and insert mode: it goes, the rest is one.
    let proxy = Tandem::start(&config(&format!(
        "[session]\nmode = \"proxy\"\n\n{}",
        pool("app", "round_robin", "", &[&backend])
    )));
    let insert = "[pool.sticky]\nmode = \"insert\"\nsecret = \"a long enough test secret\"\n";
    let insert = Tandem::start(&config(&pool("app", "round_robin", insert, &[&backend])));
    for (tandem, name) in [(&proxy, "TANDEMSESSION"), (&insert, "TANDEMROUTE")] {
        let login = get_with(
            &client(),
            &tandem.url("/session"),
            &[("x-respond-x-tandem-session-patch", r#"{"n":1}"#)],
        )
        .await;
        let set = login.headers["set-cookie"].to_str().unwrap();
        let pair = set.split(';').next().unwrap();
        assert!(pair.starts_with(&format!("{name}=")), "{set}");
        let status = h2_get_with_split_cookies(tandem, &["a=1", pair, "b=2", "c=3"]).await;
        assert_eq!(status, 200, "{name}");
        assert_eq!(
            cookies_received(&backend),
            [b"a=1; b=2; c=3".to_vec()],
            "{name}"
        );
    }

    // An HTTP/1.1 client's fields go on as it sent them.
    let answer = get_with_cookies(&plain, Protocol::Http1, "/", &[b"a=1", b"b=2"]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        cookies_received(&backend),
        [b"a=1".to_vec(), b"b=2".to_vec()]
    );
}
