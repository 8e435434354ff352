//! A TCP fault proxy in front of a real HTTP server (the S3 API server): the link can be cut,
//! every request answered `403 AccessDenied`, responses delayed (latency per request, or held
//! for requests whose request line matches a pattern, e.g. LIST), uploads throttled, and
//! responses cut short (the connection closed mid-body, as a reset link or a dying load
//! balancer does).
//! Fault injection in front of the real server, never a stand-in for it.
//!
//! It understands just enough HTTP/1.1 for that: the SDK does not pipeline, so a request's
//! head is the first thing the client sends after the previous response began.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Faults {
    down: AtomicBool,
    deny: AtomicBool,
    latency_ms: AtomicU64,
    hold: Mutex<Option<(String, Duration)>>,
    bytes_per_sec: AtomicU64,
    open: Mutex<Vec<TcpStream>>,
    requests: Mutex<Vec<String>>,
    held: AtomicU64,
    /// Responses to requests matching the pattern are cut after this many bytes, this many
    /// times more.
    cut: Mutex<Option<(String, u64, u64)>>,
    cuts: AtomicU64,
}

/// The proxy; connect to `addr` instead of the server.
pub struct FaultProxy {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    faults: Arc<Faults>,
}

impl FaultProxy {
    /// Forwards a new loopback port to `target` (`host:port`).
    #[must_use]
    pub fn start(target: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let faults = Arc::new(Faults::default());
        let (f, target) = (Arc::clone(&faults), target.to_owned());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if f.down.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else { continue };
                {
                    let mut open = f.open.lock().unwrap();
                    open.push(client.try_clone().unwrap());
                    open.push(server.try_clone().unwrap());
                }
                connection(&f, client, server);
            }
        });
        FaultProxy { addr, faults }
    }

    /// `http://ADDR`, for `AWS_ENDPOINT_URL`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts the link (`true`: connections refused, open ones closed) or restores it.
    pub fn set_down(&self, down: bool) {
        self.faults.down.store(down, Ordering::SeqCst);
        if down {
            for s in self.faults.open.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Answers every request `403 AccessDenied` (`true`), as a revoked key or bucket policy
    /// would, or forwards again.
    pub fn set_deny(&self, deny: bool) {
        self.faults.deny.store(deny, Ordering::SeqCst);
    }

    /// Delays every response by `d`.
    pub fn set_latency(&self, d: Duration) {
        self.faults.latency_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Holds every request whose request line contains `pattern` for `d` (or until
    /// [`FaultProxy::release`]) before it reaches the server: a request that takes that long.
    pub fn hold(&self, pattern: &str, d: Duration) {
        *self.faults.hold.lock().unwrap() = Some((pattern.to_owned(), d));
    }

    /// Stops holding: held requests go through now.
    pub fn release(&self) {
        *self.faults.hold.lock().unwrap() = None;
    }

    /// Limits what clients send to this many bytes per second (0: no limit).
    pub fn throttle(&self, bytes_per_sec: u64) {
        self.faults.bytes_per_sec.store(bytes_per_sec, Ordering::SeqCst);
    }

    /// Cuts the next `times` responses to requests whose request line contains `pattern`
    /// after their first `after` bytes (head included): the connection is closed there.
    pub fn cut_responses(&self, pattern: &str, after: u64, times: u64) {
        *self.faults.cut.lock().unwrap() = Some((pattern.to_owned(), after, times));
    }

    /// Responses cut so far.
    #[must_use]
    pub fn cuts(&self) -> u64 {
        self.faults.cuts.load(Ordering::SeqCst)
    }

    /// Request lines seen so far (`PUT /bucket/key HTTP/1.1`).
    #[must_use]
    pub fn requests(&self) -> Vec<String> {
        self.faults.requests.lock().unwrap().clone()
    }

    /// Responses being held now.
    #[must_use]
    pub fn held(&self) -> u64 {
        self.faults.held.load(Ordering::SeqCst)
    }
}

/// What the response of one request gets.
struct Tag {
    delay: Duration,
    /// Bytes of the response to forward before the connection is closed.
    cut: Option<u64>,
}

/// Whether the response to `line` is to be cut, and after how many bytes.
fn cut_for(f: &Faults, line: &str) -> Option<u64> {
    let mut cut = f.cut.lock().unwrap();
    let (pattern, after, times) = cut.as_mut()?;
    if *times == 0 || !line.contains(pattern.as_str()) {
        return None;
    }
    *times -= 1;
    Some(*after)
}

fn connection(f: &Arc<Faults>, client: TcpStream, server: TcpStream) {
    let expect_head = Arc::new(AtomicBool::new(true));
    let tags: Arc<Mutex<VecDeque<Tag>>> = Arc::default();
    {
        let (f, expect_head, tags) = (Arc::clone(f), Arc::clone(&expect_head), Arc::clone(&tags));
        let (mut from, mut to) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut chunk = &buf[..n];
                if expect_head.swap(false, Ordering::SeqCst) {
                    let line = String::from_utf8_lossy(
                        chunk.split(|&b| b == b'\r').next().unwrap_or_default(),
                    )
                    .into_owned();
                    f.requests.lock().unwrap().push(line.clone());
                    if f.deny.load(Ordering::SeqCst) {
                        deny(&mut from, chunk);
                        break;
                    }
                    hold(&f, &line);
                    let delay = Duration::from_millis(f.latency_ms.load(Ordering::SeqCst));
                    let cut = cut_for(&f, &line);
                    tags.lock().unwrap().push_back(Tag { delay, cut });
                }
                while !chunk.is_empty() {
                    let bps = f.bytes_per_sec.load(Ordering::SeqCst);
                    let step = if bps == 0 { chunk.len() } else { chunk.len().min(16 * 1024) };
                    if bps > 0 {
                        std::thread::sleep(Duration::from_secs_f64(step as f64 / bps as f64));
                    }
                    if to.write_all(&chunk[..step]).is_err() {
                        return;
                    }
                    chunk = &chunk[step..];
                }
            }
            let _ = to.shutdown(Shutdown::Both);
        });
    }
    let (mut from, mut to) = (server, client);
    let f = Arc::clone(f);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        // Bytes of the current response left before it is cut.
        let mut left: Option<u64> = None;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let tag = tags.lock().unwrap().pop_front();
            if let Some(t) = tag {
                // The first bytes of a response: the client sends its next request after it.
                std::thread::sleep(t.delay);
                left = t.cut;
                expect_head.store(true, Ordering::SeqCst);
            }
            if let Some(l) = left
                && n as u64 >= l
            {
                let _ = to.write_all(&buf[..l as usize]);
                f.cuts.fetch_add(1, Ordering::SeqCst);
                let _ = from.shutdown(Shutdown::Both);
                break;
            }
            left = left.map(|l| l - n as u64);
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

/// Waits while a hold applies to the request `line`.
fn hold(f: &Faults, line: &str) {
    let Some((pattern, d)) = f.hold.lock().unwrap().clone() else { return };
    if !line.contains(pattern.as_str()) {
        return;
    }
    f.held.fetch_add(1, Ordering::SeqCst);
    let until = std::time::Instant::now() + d;
    while std::time::Instant::now() < until && f.hold.lock().unwrap().is_some() {
        std::thread::sleep(Duration::from_millis(20));
    }
    f.held.fetch_sub(1, Ordering::SeqCst);
}

/// Reads the rest of the request (head and `Content-Length` body), answers 403, closes.
fn deny(client: &mut TcpStream, first: &[u8]) {
    let mut data = first.to_vec();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    let mut have = data.len() - head_end;
    while have < len {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => have += n,
        }
    }
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
    let reply = format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(reply.as_bytes());
    let _ = client.shutdown(Shutdown::Both);
}
