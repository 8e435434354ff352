//! A Kinesis-aware fault proxy in front of a real Kinesis emulator (kinesis-local): it reads
//! each request's operation from the AWS JSON 1.1 protocol (`POST /` with
//! `X-Amz-Target: Kinesis_20131202.<Operation>`) and can answer calls with the service's own
//! errors without forwarding them (`GetRecords` throttled, any operation failed), or rewrite
//! `ListShards` responses so that shards past retention seem gone. Fault injection in front of
//! the real server, never a stand-in for it: everything else goes to the emulator unchanged.
//!
//! It speaks just enough HTTP/1.1 for that, one request at a time per connection (the SDK does
//! not pipeline): a request is read whole (head, then a `Content-Length` or chunked body) and
//! sent on this connection's own connection to the server; the response is streamed back as it
//! arrives, except a `ListShards` response with shards to hide, which is read whole (chunked or
//! not, gzip or not), rewritten and sent with a new `Content-Length`. Keep-alive is kept on both
//! sides; a server connection that went idle-closed is replaced before (or, when it closed
//! without answering, after) a request is sent on it.
//!
//! Injected errors look like the service's: HTTP status,
//! `Content-Type: application/x-amz-json-1.1`, an `x-amzn-RequestId`, and the body
//! `{"__type":"<Code>","message":"<message>"}`, which the SDK parses into its typed errors.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The account in messages when no ARN names one: kinesis-local's, as `scripts/services`
/// starts it (`AWS_ACCOUNT_ID=000000000000`).
const DEFAULT_ACCOUNT: &str = "000000000000";

/// Bytes of a streamed response kept to learn shard iterators from (a `GetRecords` response is
/// at most 10 MiB of data, about 14 MB of JSON).
const TAP_LIMIT: usize = 64 * 1024 * 1024;

/// Shard iterators remembered (iterator → shard) before the table starts over.
const ITERATOR_LIMIT: usize = 200_000;

/// The proxy; point the SDK at [`KinesisProxy::url`] instead of the emulator.
pub struct KinesisProxy {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    state: Arc<State>,
}

/// Which stream and shard a shard iterator reads.
#[derive(Clone, Debug)]
struct Location {
    stream: String,
    shard: String,
    account: String,
}

/// `GetRecords` calls throttled: the n-th call since the setting is throttled when
/// `floor(n * fraction) > floor((n - 1) * fraction)`.
#[derive(Default)]
struct Throttle {
    fraction: f64,
    seen: u64,
}

impl Throttle {
    fn next(&mut self) -> bool {
        if self.fraction <= 0.0 {
            return false;
        }
        self.seen += 1;
        let n = self.seen as f64;
        (n * self.fraction).floor() > ((n - 1.0) * self.fraction).floor()
    }
}

#[derive(Default)]
struct State {
    closed: AtomicBool,
    calls: Mutex<HashMap<String, u64>>,
    injected: AtomicU64,
    throttle: Mutex<Throttle>,
    failures: Mutex<HashMap<String, (u16, String, String)>>,
    /// Per operation: the calls (counted from when it was set, from 1) to fail, and how.
    chosen: Mutex<HashMap<String, Chosen>>,
    hidden: Mutex<HashSet<String>>,
    iterators: Mutex<HashMap<String, Location>>,
    open: Mutex<HashMap<u64, TcpStream>>,
    ids: AtomicU64,
}

/// Calls of one operation picked to fail.
struct Chosen {
    seen: u64,
    calls: Vec<u64>,
    failure: (u16, String, String),
}

impl State {
    /// Registers a socket to be shut down when the proxy is dropped; its id.
    fn track(&self, s: &TcpStream) -> u64 {
        let id = self.ids.fetch_add(1, Ordering::SeqCst);
        if let Ok(c) = s.try_clone() {
            self.open.lock().unwrap().insert(id, c);
        }
        id
    }

    fn untrack(&self, id: u64) {
        self.open.lock().unwrap().remove(&id);
    }

    /// The response injected for this call instead of forwarding it, if any.
    fn fault(&self, op: &str, body: &[u8]) -> Option<Vec<u8>> {
        let failure = self.failures.lock().unwrap().get(op).cloned().or_else(|| {
            let mut chosen = self.chosen.lock().unwrap();
            let c = chosen.get_mut(op)?;
            c.seen += 1;
            c.calls.contains(&c.seen).then(|| c.failure.clone())
        });
        let (status, code, message) = if let Some(f) = failure {
            f
        } else if op == "GetRecords" && self.throttle.lock().unwrap().next() {
            let s = self.shard_of_get_records(body);
            (
                400,
                "ProvisionedThroughputExceededException".to_owned(),
                format!(
                    "Rate exceeded for shard {} in stream {} under account {}.",
                    s.shard, s.stream, s.account
                ),
            )
        } else {
            return None;
        };
        let n = self.injected.fetch_add(1, Ordering::SeqCst);
        Some(error_response(status, &code, &message, n))
    }

    /// The shard a `GetRecords` request reads, as far as the proxy knows it: from the iterator
    /// (issued through this proxy), else from the request's `StreamARN`; `shardId-unknown` and
    /// `unknown` stand for what it cannot tell.
    fn shard_of_get_records(&self, body: &[u8]) -> Location {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        if let Some(s) =
            v["ShardIterator"].as_str().and_then(|i| self.iterators.lock().unwrap().get(i).cloned())
        {
            return s;
        }
        let (stream, account) = v["StreamARN"]
            .as_str()
            .and_then(parse_arn)
            .unwrap_or_else(|| ("unknown".to_owned(), DEFAULT_ACCOUNT.to_owned()));
        Location { stream, shard: "shardId-unknown".to_owned(), account }
    }

    /// Learns which shard the iterator in a successful response reads.
    fn learn(&self, op: &str, request: &[u8], response: &[u8]) {
        let req: serde_json::Value = serde_json::from_slice(request).unwrap_or_default();
        let Ok(resp) = serde_json::from_slice::<serde_json::Value>(response) else { return };
        let (shard, iterator) = match op {
            "GetShardIterator" => {
                let Some(shard) = req["ShardId"].as_str() else { return };
                let (stream, account) = match req["StreamARN"].as_str().and_then(parse_arn) {
                    Some(x) => x,
                    None => (
                        req["StreamName"].as_str().unwrap_or("unknown").to_owned(),
                        DEFAULT_ACCOUNT.to_owned(),
                    ),
                };
                (Location { stream, shard: shard.to_owned(), account }, &resp["ShardIterator"])
            }
            "GetRecords" => (self.shard_of_get_records(request), &resp["NextShardIterator"]),
            _ => return,
        };
        let Some(iterator) = iterator.as_str() else { return };
        let mut map = self.iterators.lock().unwrap();
        if map.len() >= ITERATOR_LIMIT {
            map.clear();
        }
        map.insert(iterator.to_owned(), shard);
    }

    /// A `ListShards` response body without the hidden shards; `None` when nothing changes.
    fn hide(&self, body: &[u8]) -> Option<Vec<u8>> {
        let hidden = self.hidden.lock().unwrap().clone();
        if hidden.is_empty() {
            return None;
        }
        let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let shards = v.get_mut("Shards")?.as_array_mut()?;
        let before = shards.len();
        shards.retain(|s| s["ShardId"].as_str().is_none_or(|id| !hidden.contains(id)));
        if shards.len() == before {
            return None;
        }
        serde_json::to_vec(&v).ok()
    }
}

/// (stream name, account) of `arn:aws:kinesis:REGION:ACCOUNT:stream/NAME`.
fn parse_arn(arn: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let name = parts.get(5)?.strip_prefix("stream/")?;
    let name = name.split('/').next().unwrap_or(name);
    Some((name.to_owned(), (*parts.get(4)?).to_owned()))
}

impl KinesisProxy {
    /// Forwards a new loopback port to `target` (`host:port`).
    #[must_use]
    pub fn start(target: &str) -> KinesisProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(State::default());
        let (s, target) = (Arc::clone(&state), target.to_owned());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.closed.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let (s, target) = (Arc::clone(&s), target.clone());
                std::thread::spawn(move || {
                    let id = s.track(&client);
                    let _ = serve(&s, &client, &target);
                    let _ = client.shutdown(Shutdown::Both);
                    s.untrack(id);
                });
            }
        });
        KinesisProxy { addr, state }
    }

    /// `http://ADDR`, for `AWS_ENDPOINT_URL_KINESIS`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers this fraction (`0.0..=1.0`) of `GetRecords` calls with HTTP 400
    /// `ProvisionedThroughputExceededException`, `Rate exceeded for shard SHARD in stream
    /// STREAM under account ACCOUNT.` as Kinesis does, without forwarding them.
    ///
    /// Deterministic: counting `GetRecords` calls from this setting on, the n-th is throttled
    /// when `floor(n * fraction) > floor((n - 1) * fraction)`, so exactly
    /// `floor(n * fraction)` of the first n are: 0.5 throttles the 2nd, 4th, 6th…, 0.25 every
    /// 4th, 1.0 all, 0.0 none. A [`KinesisProxy::fail`] set for `GetRecords` takes precedence
    /// (those calls do not count here). The shard and stream in the message are those of the
    /// iterator, learnt from `GetShardIterator` and `GetRecords` responses that passed through
    /// the proxy.
    ///
    /// # Panics
    /// If `fraction` is not within `0.0..=1.0`.
    pub fn throttle_get_records(&self, fraction: f64) {
        assert!((0.0..=1.0).contains(&fraction), "throttle fraction {fraction} not in 0..=1");
        *self.state.throttle.lock().unwrap() = Throttle { fraction, seen: 0 };
    }

    /// Answers every call of `operation` (e.g. `GetRecords`) with HTTP `status` and the body
    /// `{"__type": code, "message": message}`, without forwarding it, until cleared (`None`).
    pub fn fail(&self, operation: &str, failure: Option<(u16, String, String)>) {
        let mut f = self.state.failures.lock().unwrap();
        match failure {
            Some(x) => f.insert(operation.to_owned(), x),
            None => f.remove(operation),
        };
    }

    /// Answers the `calls`-th calls of `operation` (counted from now, from 1) with HTTP
    /// `status` and the body `{"__type": code, "message": message}`, without forwarding them;
    /// other calls go through. A [`KinesisProxy::fail`] set for it takes precedence.
    pub fn fail_calls(&self, operation: &str, calls: &[u64], failure: (u16, String, String)) {
        self.state
            .chosen
            .lock()
            .unwrap()
            .insert(operation.to_owned(), Chosen { seen: 0, calls: calls.to_vec(), failure });
    }

    /// Removes these shard ids from `ListShards` responses from now on (replacing the set given
    /// before; empty: hides none), as if they were past retention: elements of `Shards` whose
    /// `ShardId` is listed are dropped. Other operations (`DescribeStream`…) are not rewritten.
    pub fn hide_shards(&self, ids: &[&str]) {
        *self.state.hidden.lock().unwrap() = ids.iter().map(|&s| s.to_owned()).collect();
    }

    /// Calls of `operation` seen (forwarded or answered with a fault).
    #[must_use]
    pub fn calls(&self, operation: &str) -> u64 {
        self.state.calls.lock().unwrap().get(operation).copied().unwrap_or(0)
    }

    /// Calls answered with an injected fault (throttle or failure).
    #[must_use]
    pub fn injected(&self) -> u64 {
        self.state.injected.load(Ordering::SeqCst)
    }
}

impl Drop for KinesisProxy {
    /// Stops accepting and closes every open connection.
    fn drop(&mut self) {
        self.state.closed.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr); // wakes the accept loop
        for (_, s) in self.state.open.lock().unwrap().drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// An HTTP/1.1 message head.
struct Head {
    start: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Whether the comma-separated header `name` lists `token`.
    fn has(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn remove(&mut self, name: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    /// The status code of a response head.
    fn status(&self) -> u16 {
        self.start.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    fn bytes(&self) -> Vec<u8> {
        use std::fmt::Write as _;
        let mut out = format!("{}\r\n", self.start);
        for (k, v) in &self.headers {
            let _ = write!(out, "{k}: {v}\r\n");
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    /// How the body that follows this head is delimited (RFC 9112 §6.3).
    fn framing(&self, response_to_head: bool) -> io::Result<Framing> {
        let is_response = self.start.starts_with("HTTP/");
        if is_response {
            let status = self.status();
            if response_to_head || (100..200).contains(&status) || status == 204 || status == 304 {
                return Ok(Framing::Empty);
            }
        }
        if self.has("transfer-encoding", "chunked") {
            return Ok(Framing::Chunked);
        }
        match self.get("content-length") {
            Some(v) => v.trim().parse().map(Framing::Length).map_err(|_| bad("Content-Length")),
            None if is_response => Ok(Framing::UntilClose),
            None => Ok(Framing::Empty),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("bad HTTP: {what}"))
}

/// Reads a message head; `None` when the peer closed before sending one.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut lines: Vec<String> = Vec::new();
    let mut total = 0;
    loop {
        let mut line = Vec::new();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 {
            return if lines.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        total += n;
        if total > 1024 * 1024 {
            return Err(bad("head too long"));
        }
        let text = String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_owned();
        if text.is_empty() {
            if lines.is_empty() {
                continue; // a stray CRLF between messages
            }
            break;
        }
        lines.push(text);
    }
    let start = lines.remove(0);
    let headers = lines
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Some(Head { start, headers }))
}

/// Reads a body delimited by `framing`, handing its bytes as they are on the wire to `raw`
/// and the payload (without chunk framing) to `data`.
fn walk_body(
    r: &mut impl BufRead,
    framing: Framing,
    raw: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    data: &mut dyn FnMut(&[u8]),
) -> io::Result<()> {
    fn copy(
        r: &mut impl BufRead,
        mut left: Option<u64>,
        raw: &mut dyn FnMut(&[u8]) -> io::Result<()>,
        data: &mut dyn FnMut(&[u8]),
    ) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        while left != Some(0) {
            let want = left.map_or(buf.len(), |l| l.min(buf.len() as u64) as usize);
            let n = r.read(&mut buf[..want])?;
            if n == 0 {
                return if left.is_none() {
                    Ok(())
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
            raw(&buf[..n])?;
            data(&buf[..n]);
            left = left.map(|l| l - n as u64);
        }
        Ok(())
    }
    fn line(
        r: &mut impl BufRead,
        raw: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<String> {
        let mut l = Vec::new();
        if r.read_until(b'\n', &mut l)? == 0 || l.len() > 64 * 1024 {
            return Err(bad("chunk framing"));
        }
        raw(&l)?;
        Ok(String::from_utf8_lossy(&l).trim().to_owned())
    }
    match framing {
        Framing::Empty => Ok(()),
        Framing::Length(n) => copy(r, Some(n), raw, data),
        Framing::UntilClose => copy(r, None, raw, data),
        Framing::Chunked => loop {
            let size_line = line(r, raw)?;
            let size = size_line.split(';').next().unwrap_or_default().trim();
            let size = u64::from_str_radix(size, 16).map_err(|_| bad("chunk size"))?;
            if size == 0 {
                while !line(r, raw)?.is_empty() {} // trailers, then the final CRLF
                return Ok(());
            }
            copy(r, Some(size), raw, data)?;
            if !line(r, raw)?.is_empty() {
                return Err(bad("chunk end"));
            }
        },
    }
}

/// Reads a whole body: (bytes as on the wire, payload).
fn read_body(r: &mut impl BufRead, framing: Framing) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let (mut wire, mut payload) = (Vec::new(), Vec::new());
    walk_body(
        r,
        framing,
        &mut |b| {
            wire.extend_from_slice(b);
            Ok(())
        },
        &mut |b| payload.extend_from_slice(b),
    )?;
    Ok((wire, payload))
}

/// The operation of a request: `GetRecords` of `X-Amz-Target: Kinesis_20131202.GetRecords`.
fn operation(head: &Head) -> String {
    let target = head.get("x-amz-target").unwrap_or_default();
    target.rsplit_once('.').map_or(target, |(_, op)| op).to_owned()
}

/// An error response as Kinesis sends it (AWS JSON 1.1), the connection kept alive.
fn error_response(status: u16, code: &str, message: &str, n: u64) -> Vec<u8> {
    let body = serde_json::json!({ "__type": code, "message": message }).to_string();
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    let id = format!("{:08x}-0000-4000-8000-{n:012x}", std::process::id());
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-RequestId: {id}\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// This client connection's connection to the server.
struct Upstream {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    id: u64,
}

impl Upstream {
    fn connect(state: &State, target: &str) -> io::Result<Upstream> {
        let s = TcpStream::connect(target)?;
        s.set_nodelay(true)?;
        let id = state.track(&s);
        Ok(Upstream { reader: BufReader::new(s.try_clone()?), writer: s, id })
    }

    /// Whether the server has not closed this idle connection (nor sent anything unasked).
    fn alive(&self) -> bool {
        if !self.reader.buffer().is_empty() || self.writer.set_nonblocking(true).is_err() {
            return false;
        }
        let r = self.writer.peek(&mut [0u8; 1]);
        let ok = self.writer.set_nonblocking(false).is_ok();
        ok && matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    fn close(self, state: &State) {
        let _ = self.writer.shutdown(Shutdown::Both);
        state.untrack(self.id);
    }
}

/// Serves one client connection until either side closes it.
fn serve(state: &State, client: &TcpStream, target: &str) -> io::Result<()> {
    client.set_nodelay(true)?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut writer = client.try_clone()?;
    let mut upstream: Option<Upstream> = None;
    let result = loop {
        let r = exchange(state, &mut reader, &mut writer, &mut upstream, target);
        match r {
            Ok(true) => {}
            Ok(false) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    if let Some(u) = upstream.take() {
        u.close(state);
    }
    result
}

/// One request and its response; whether the connection stays open.
fn exchange(
    state: &State,
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    upstream: &mut Option<Upstream>,
    target: &str,
) -> io::Result<bool> {
    let Some(mut head) = read_head(reader)? else { return Ok(false) };
    if head.has("expect", "100-continue") {
        // The body is needed before deciding; the server does not see the Expect.
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        head.remove("expect");
    }
    let (wire, body) = read_body(reader, head.framing(false)?)?;
    let op = operation(&head);
    *state.calls.lock().unwrap().entry(op.clone()).or_default() += 1;
    let client_close = head.has("connection", "close");
    if let Some(reply) = state.fault(&op, &body) {
        writer.write_all(&reply)?;
        return Ok(!client_close);
    }

    let mut request = head.bytes();
    request.extend_from_slice(&wire);
    let is_head = head.start.starts_with("HEAD ");
    let (mut up, response) = send(state, upstream.take(), target, &request)?;
    let keep = relay(state, &op, &body, response, is_head, &mut up, writer);
    if matches!(keep, Ok(true)) {
        *upstream = Some(up);
        return Ok(!client_close);
    }
    up.close(state);
    keep.map(|_| false)
}

/// Sends the server's response (whose head is read) on to the client; whether the server
/// connection stays open.
fn relay(
    state: &State,
    op: &str,
    request: &[u8],
    response: Head,
    is_head: bool,
    up: &mut Upstream,
    writer: &mut TcpStream,
) -> io::Result<bool> {
    let framing = response.framing(is_head)?;
    let keep = !response.has("connection", "close") && framing != Framing::UntilClose;
    let ok = response.status() == 200;
    let gzip =
        response.get("content-encoding").is_some_and(|e| !e.eq_ignore_ascii_case("identity"));
    if op == "ListShards" && ok && !state.hidden.lock().unwrap().is_empty() {
        let (wire, mut payload) = read_body(&mut up.reader, framing)?;
        if gzip {
            let mut plain = Vec::new();
            flate2::read::MultiGzDecoder::new(&payload[..]).read_to_end(&mut plain)?;
            payload = plain;
        }
        if let Some(rewritten) = state.hide(&payload) {
            let mut h = response;
            for name in ["content-length", "transfer-encoding", "content-encoding", "x-amz-crc32"] {
                h.remove(name);
            }
            h.headers.push(("Content-Length".to_owned(), rewritten.len().to_string()));
            writer.write_all(&h.bytes())?;
            writer.write_all(&rewritten)?;
        } else {
            writer.write_all(&response.bytes())?;
            writer.write_all(&wire)?;
        }
    } else {
        // Streamed as it arrives; `GetShardIterator` and `GetRecords` responses are tapped to
        // learn which shard each iterator reads (for the throttle message).
        let learn = ok && !gzip && (op == "GetShardIterator" || op == "GetRecords");
        let mut tap = Vec::new();
        writer.write_all(&response.bytes())?;
        let w = &mut *writer;
        walk_body(&mut up.reader, framing, &mut |b| w.write_all(b), &mut |b| {
            if learn && tap.len() <= TAP_LIMIT {
                tap.extend_from_slice(b);
            }
        })?;
        if learn && tap.len() <= TAP_LIMIT {
            state.learn(op, request, &tap);
        }
    }
    writer.flush()?;
    Ok(keep)
}

/// Sends `request` to the server, on `reuse` if it is still open, and reads the response head
/// (skipping interim 1xx responses). A kept-alive connection the server closed without
/// answering is replaced once.
fn send(
    state: &State,
    reuse: Option<Upstream>,
    target: &str,
    request: &[u8],
) -> io::Result<(Upstream, Head)> {
    let mut reuse = reuse.filter(|u| {
        let alive = u.alive();
        if !alive {
            let _ = u.writer.shutdown(Shutdown::Both);
            state.untrack(u.id);
        }
        alive
    });
    loop {
        let retry = reuse.is_some();
        let mut up = match reuse.take() {
            Some(u) => u,
            None => Upstream::connect(state, target)?,
        };
        let head = up.writer.write_all(request).and_then(|()| {
            loop {
                match read_head(&mut up.reader)? {
                    Some(h) if (100..200).contains(&h.status()) && h.status() != 101 => {}
                    Some(h) => break Ok(Some(h)),
                    None => break Ok(None),
                }
            }
        });
        match head {
            Ok(Some(h)) => return Ok((up, h)),
            Ok(None) | Err(_) if retry => up.close(state),
            Ok(None) => {
                up.close(state);
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            Err(e) => {
                up.close(state);
                return Err(e);
            }
        }
    }
}
