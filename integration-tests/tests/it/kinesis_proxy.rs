//! The Kinesis fault proxy in front of the real emulator (kinesis-local,
//! `scripts/services up kinesis`), driven by aws-sdk-kinesis with one attempt per call, so
//! every injected fault reaches the caller: without faults everything passes through; throttled
//! and failed calls come back as the service's typed errors; hidden shards are missing from
//! `ListShards`. And its HTTP handling of chunked messages and keep-alive, against a scripted
//! server (kinesis-local never sends chunked responses).

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType, StreamStatus};
use integration_tests::kinesis_proxy::KinesisProxy;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};

fn var(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// The emulator's `host:port`.
fn target() -> String {
    let url = var("AWS_ENDPOINT_URL_KINESIS").unwrap_or_else(|| "http://127.0.0.1:4570".into());
    let hostport = url.strip_prefix("http://").unwrap_or_else(|| {
        panic!("AWS_ENDPOINT_URL_KINESIS={url}: the proxy needs the plain-HTTP endpoint")
    });
    hostport.trim_end_matches('/').to_owned()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A client of `url` that tries each call once.
async fn client(url: &str) -> Client {
    let creds = Credentials::new(
        var("AWS_ACCESS_KEY_ID").unwrap_or_else(|| "test".into()),
        var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|| "test".into()),
        None,
        None,
        "tests",
    );
    let conf = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(url)
        .region(Region::new(var("AWS_REGION").unwrap_or_else(|| "us-east-1".into())))
        .credentials_provider(creds)
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .load()
        .await;
    Client::new(&conf)
}

/// A new 2-shard stream, created through `c`, once ACTIVE: streams outlive a test run.
async fn fresh_stream(c: &Client, tag: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let name = format!("kproxy-{tag}-{}-{t}-{n}", std::process::id());
    c.create_stream().stream_name(&name).shard_count(2).send().await.unwrap_or_else(|e| {
        panic!(
            "cannot create stream {name} (start kinesis-local: scripts/services up kinesis): {e:?}"
        )
    });
    for _ in 0..200 {
        let s = c.describe_stream_summary().stream_name(&name).send().await.unwrap();
        if s.stream_description_summary().unwrap().stream_status() == &StreamStatus::Active {
            return name;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("stream {name} not ACTIVE");
}

async fn delete_stream(c: &Client, name: &str) {
    let _ = c.delete_stream().stream_name(name).enforce_consumer_deletion(true).send().await;
}

/// Puts records over both shards (one of them large); their payloads, sorted.
async fn put_records(c: &Client, stream: &str) -> Vec<Vec<u8>> {
    let mut put: Vec<Vec<u8>> = (0..40).map(|i| format!("record-{i}").into_bytes()).collect();
    let entries = put
        .iter()
        .enumerate()
        .map(|(i, d)| {
            PutRecordsRequestEntry::builder()
                .partition_key(format!("key-{i}"))
                .data(Blob::new(d.clone()))
                .build()
                .unwrap()
        })
        .collect::<Vec<_>>();
    let r = c.put_records().stream_name(stream).set_records(Some(entries)).send().await.unwrap();
    assert_eq!(r.failed_record_count(), Some(0));
    let shards: std::collections::BTreeSet<&str> =
        r.records().iter().filter_map(|e| e.shard_id()).collect();
    assert_eq!(shards.len(), 2, "the keys spread over both shards: {shards:?}");
    let big: Vec<u8> = (0..600_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    c.put_record()
        .stream_name(stream)
        .partition_key("big")
        .data(Blob::new(big.clone()))
        .send()
        .await
        .unwrap();
    put.push(big);
    put.sort();
    put
}

/// Every record of every shard from `TRIM_HORIZON`, sorted; a throttled call is retried with
/// the same iterator, as a consumer does. Also the number of throttled calls.
async fn read_all(c: &Client, stream: &str, expect: usize) -> (Vec<Vec<u8>>, u64) {
    let (mut out, mut throttled) = (Vec::new(), 0);
    let shards = c.list_shards().stream_name(stream).send().await.unwrap();
    for shard in shards.shards() {
        let mut it = c
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap()
            .shard_iterator()
            .unwrap()
            .to_owned();
        let mut empty = 0;
        while empty < 2 {
            match c.get_records().shard_iterator(&it).send().await {
                Ok(r) => {
                    if r.records().is_empty() {
                        empty += 1;
                    }
                    out.extend(r.records().iter().map(|x| x.data().as_ref().to_vec()));
                    r.next_shard_iterator().unwrap().clone_into(&mut it);
                }
                Err(e) if e.code() == Some("ProvisionedThroughputExceededException") => {
                    throttled += 1;
                }
                Err(e) => panic!("GetRecords: {e:?}"),
            }
        }
    }
    assert_eq!(out.len(), expect);
    out.sort();
    (out, throttled)
}

/// An iterator at `TRIM_HORIZON` of `shard`, through `c`.
async fn iterator(c: &Client, stream: &str, shard: &str) -> String {
    c.get_shard_iterator()
        .stream_name(stream)
        .shard_id(shard)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap()
        .shard_iterator()
        .unwrap()
        .to_owned()
}

#[test]
fn without_faults_everything_passes_through() {
    let proxy = KinesisProxy::start(&target());
    runtime().block_on(async {
        let c = client(&proxy.url()).await;
        let stream = fresh_stream(&c, "plain").await;
        let put = put_records(&c, &stream).await;
        let (got, throttled) = read_all(&c, &stream, put.len()).await;
        assert_eq!(got, put, "the data read back through the proxy is the data put");
        assert_eq!(throttled, 0);
        assert_eq!(c.list_shards().stream_name(&stream).send().await.unwrap().shards().len(), 2);
        delete_stream(&c, &stream).await;
    });
    assert_eq!(proxy.injected(), 0);
    assert_eq!(proxy.calls("CreateStream"), 1);
    assert_eq!(proxy.calls("PutRecords"), 1);
    assert_eq!(proxy.calls("PutRecord"), 1);
    assert_eq!(proxy.calls("GetShardIterator"), 2);
    assert!(proxy.calls("GetRecords") >= 4, "{}", proxy.calls("GetRecords"));
    assert_eq!(proxy.calls("Nonexistent"), 0);
}

#[test]
fn hidden_shards_are_missing_from_list_shards() {
    let proxy = KinesisProxy::start(&target());
    runtime().block_on(async {
        let c = client(&proxy.url()).await;
        let direct = client(&format!("http://{}", target())).await;
        let stream = fresh_stream(&c, "hide").await;
        let ids = |r: &aws_sdk_kinesis::operation::list_shards::ListShardsOutput| {
            r.shards().iter().map(|s| s.shard_id().to_owned()).collect::<Vec<_>>()
        };
        let all = ids(&c.list_shards().stream_name(&stream).send().await.unwrap());
        assert_eq!(all, ["shardId-000000000000", "shardId-000000000001"]);

        proxy.hide_shards(&["shardId-000000000001"]);
        let seen = ids(&c.list_shards().stream_name(&stream).send().await.unwrap());
        assert_eq!(seen, ["shardId-000000000000"]);
        // Only the proxy's answer changes: the stream still has both shards.
        let real = ids(&direct.list_shards().stream_name(&stream).send().await.unwrap());
        assert_eq!(real, all);
        // Paging (NextToken) still works on rewritten pages.
        let first = c.list_shards().stream_name(&stream).max_results(1).send().await.unwrap();
        assert_eq!(ids(&first), ["shardId-000000000000"]);
        let token = first.next_token().expect("a second page");
        let second = c.list_shards().next_token(token).send().await.unwrap();
        assert!(ids(&second).is_empty(), "{:?}", ids(&second));

        proxy.hide_shards(&["shardId-000000000000", "shardId-000000000001"]);
        assert!(ids(&c.list_shards().stream_name(&stream).send().await.unwrap()).is_empty());
        proxy.hide_shards(&[]);
        assert_eq!(ids(&c.list_shards().stream_name(&stream).send().await.unwrap()), all);
        delete_stream(&c, &stream).await;
    });
    assert_eq!(proxy.injected(), 0);
}

#[test]
fn throttled_get_records_are_the_service_error() {
    let proxy = KinesisProxy::start(&target());
    runtime().block_on(async {
        let c = client(&proxy.url()).await;
        let stream = fresh_stream(&c, "throttle").await;
        let put = put_records(&c, &stream).await;

        proxy.throttle_get_records(0.5);
        let mut it = iterator(&c, &stream, "shardId-000000000000").await;
        let before = proxy.calls("GetRecords");
        // Every other call: the 2nd, 4th, …
        for n in 1..=10 {
            match c.get_records().shard_iterator(&it).limit(1).send().await {
                Ok(r) => {
                    assert!(n % 2 == 1, "call {n} was not throttled");
                    it = r.next_shard_iterator().unwrap().to_owned();
                }
                Err(e) => {
                    assert!(n % 2 == 0, "call {n} was throttled: {e:?}");
                    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(400));
                    assert_eq!(e.code(), Some("ProvisionedThroughputExceededException"));
                    let msg = e.message().unwrap().to_owned();
                    let want = format!(
                        "Rate exceeded for shard shardId-000000000000 in stream {stream} under account "
                    );
                    assert!(msg.starts_with(&want) && msg.ends_with('.'), "{msg}");
                    assert!(e.into_service_error().is_provisioned_throughput_exceeded_exception());
                }
            }
        }
        assert_eq!(proxy.calls("GetRecords") - before, 10);
        assert_eq!(proxy.injected(), 5);

        // A consumer that retries a throttled call with the same iterator reads everything.
        proxy.throttle_get_records(0.5);
        let (got, throttled) = read_all(&c, &stream, put.len()).await;
        assert_eq!(got, put);
        assert!(throttled >= 3, "{throttled}");
        assert_eq!(proxy.injected(), 5 + throttled);

        proxy.throttle_get_records(0.0);
        let (got, throttled) = read_all(&c, &stream, put.len()).await;
        assert_eq!((got, throttled), (put, 0));
        delete_stream(&c, &stream).await;
    });
}

#[test]
fn failed_calls_are_the_given_error_until_cleared() {
    let proxy = KinesisProxy::start(&target());
    runtime().block_on(async {
        let c = client(&proxy.url()).await;
        let stream = fresh_stream(&c, "fail").await;
        let put = put_records(&c, &stream).await;
        let it = iterator(&c, &stream, "shardId-000000000001").await;

        proxy.fail(
            "GetRecords",
            Some((400, "ExpiredIteratorException".into(), "Iterator expired".into())),
        );
        for _ in 0..3 {
            let e = c.get_records().shard_iterator(&it).send().await.unwrap_err();
            assert_eq!(e.code(), Some("ExpiredIteratorException"));
            assert_eq!(e.message(), Some("Iterator expired"));
            assert!(e.into_service_error().is_expired_iterator_exception());
        }
        // Other operations pass.
        iterator(&c, &stream, "shardId-000000000000").await;
        assert_eq!(proxy.injected(), 3);

        proxy.fail("ListShards", Some((500, "InternalFailure".into(), "boom \"quoted\"".into())));
        let e = c.list_shards().stream_name(&stream).send().await.unwrap_err();
        assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(500));
        assert_eq!(e.code(), Some("InternalFailure"));
        assert_eq!(e.message(), Some("boom \"quoted\""));
        assert_eq!(proxy.injected(), 4);

        proxy.fail("GetRecords", None);
        proxy.fail("ListShards", None);
        assert!(c.get_records().shard_iterator(&it).send().await.is_ok());
        let (got, _) = read_all(&c, &stream, put.len()).await;
        assert_eq!(got, put);
        assert_eq!(proxy.injected(), 4);
        delete_stream(&c, &stream).await;
    });
    assert_eq!(proxy.calls("ListShards"), 2);
}

/// One HTTP message from `r`: (head lines, payload with chunk framing removed).
fn read_message(r: &mut impl BufRead) -> (Vec<String>, Vec<u8>) {
    let mut head = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        let l = l.trim_end().to_owned();
        if l.is_empty() {
            break;
        }
        head.push(l);
    }
    let header = |name: &str| {
        head.iter().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            let n = usize::from_str_radix(l.split(';').next().unwrap().trim(), 16).unwrap();
            if n == 0 {
                // Trailers, then the empty line.
                loop {
                    let mut t = String::new();
                    if r.read_line(&mut t).unwrap() == 0 || t.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = header("content-length") {
        body = vec![0u8; n.parse().unwrap()];
        r.read_exact(&mut body).unwrap();
    }
    (head, body)
}

/// `body` in chunks of at most 7 bytes.
fn chunked(body: &str) -> String {
    let mut out = String::new();
    for piece in body.as_bytes().chunks(7) {
        let _ = write!(out, "{:x};ext=1\r\n{}\r\n", piece.len(), String::from_utf8_lossy(piece));
    }
    out + "0\r\nX-Trailer: t\r\n\r\n"
}

#[test]
fn chunked_messages_are_forwarded_and_rewritten() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = server.local_addr().unwrap().to_string();
    let list = r#"{"Shards":[{"ShardId":"shardId-000000000000"},{"ShardId":"shardId-000000000001"}],"NextToken":null}"#;
    let summary = r#"{"StreamDescriptionSummary":{"StreamName":"s"}}"#;
    // Each response on a connection of its own: the server closes a kept-alive connection
    // after answering once, as an idle timeout would, and the proxy opens another.
    let scripted = std::thread::spawn(move || {
        let mut bodies = Vec::new();
        for body in [list, summary] {
            let (conn, _) = server.accept().unwrap();
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut w = conn;
            let (head, got) = read_message(&mut r);
            bodies.push((head[0].clone(), String::from_utf8(got).unwrap()));
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\nTransfer-Encoding: chunked\r\n\r\n{}",
                chunked(body)
            );
            w.write_all(reply.as_bytes()).unwrap();
        }
        bodies
    });

    let proxy = KinesisProxy::start(&target);
    proxy.hide_shards(&["shardId-000000000001"]);
    let conn = TcpStream::connect(&proxy.addr).unwrap();
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    let request = |op: &str, body: &str| {
        format!(
            "POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: Kinesis_20131202.{op}\r\nContent-Type: application/x-amz-json-1.1\r\nTransfer-Encoding: chunked\r\n\r\n{}",
            chunked(body)
        )
    };
    // ListShards: rewritten, with a Content-Length instead of the chunks.
    w.write_all(request("ListShards", r#"{"StreamName":"s"}"#).as_bytes()).unwrap();
    let (head, body) = read_message(&mut r);
    assert!(head[0].starts_with("HTTP/1.1 200"), "{head:?}");
    assert!(!head.iter().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding")));
    assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head:?}");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["Shards"], serde_json::json!([{ "ShardId": "shardId-000000000000" }]));
    // The next request on the same client connection: streamed back as the chunks it came in.
    w.write_all(request("DescribeStreamSummary", r#"{"StreamName":"s"}"#).as_bytes()).unwrap();
    let (head, body) = read_message(&mut r);
    assert!(head.iter().any(|l| l == "Transfer-Encoding: chunked"), "{head:?}");
    assert_eq!(String::from_utf8(body).unwrap(), summary);

    let bodies = scripted.join().unwrap();
    assert_eq!(
        bodies,
        [
            ("POST / HTTP/1.1".to_owned(), r#"{"StreamName":"s"}"#.to_owned()),
            ("POST / HTTP/1.1".to_owned(), r#"{"StreamName":"s"}"#.to_owned()),
        ]
    );
    assert_eq!(proxy.calls("ListShards"), 1);
    assert_eq!(proxy.calls("DescribeStreamSummary"), 1);
}
