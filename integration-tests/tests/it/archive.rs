//! Replay of archives: the generated events uploaded to the S3 API server as Firehose-like
//! hourly objects (gzip or not, whatever their names say; JSON Lines or values back to back
//! with any whitespace or none), replayed with two SIGKILLs: the rows equal the oracle's and a
//! local replay's; an object rewritten under a checkpoint is refused by name; the same layout
//! in a local directory gives the same rows. Read through connections cut mid-body, an
//! archive still gives a local replay's rows, and `--to` reads nothing after it.

use crate::kafka::{assert_same_rows, oracle};
use integration_tests::{bin, generate, root, rows, services, summary};
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

const OBJECTS: usize = 12;

/// An archive as the test lays it out.
struct Layout {
    /// Key → bytes as stored.
    objects: Vec<(String, Vec<u8>)>,
    /// The events the archive holds, one per line, in archive order: what the oracle reads.
    expected: Vec<u8>,
    /// Runs of bytes between values that frame none, and records cut short.
    bad_framing: u64,
    /// Of those, records cut short (the oracle rejects them too, as invalid JSON).
    cut: u64,
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn is_object(line: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(line).is_ok_and(|v| v.is_object())
}

/// Where the first member of an object ends: its first `,` outside strings at depth 1.
fn first_member_end(line: &[u8]) -> Option<usize> {
    let (mut depth, mut in_str, mut esc) = (0, false, false);
    for (i, &b) in line.iter().enumerate() {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth -= 1,
            b',' if depth == 1 => return Some(i),
            _ => {}
        }
    }
    None
}

/// Splits `lines` into hourly objects in four styles, in turn: JSON Lines, plain, named `.gz`;
/// values back to back with no whitespace, gzip, named without `.gz`; values with varied
/// whitespace (some spread over lines), stray commas between some, one value cut short;
/// JSON Lines, gzip, named `.jsonl.gz`. Lines that are not JSON objects go only where lines
/// are (back to back, a garbage line cannot be told from its neighbours by anyone).
fn lay_out(lines: &[&[u8]], prefix: &str, first_hour: usize) -> Layout {
    let mut l = Layout { objects: Vec::new(), expected: Vec::new(), bad_framing: 0, cut: 0 };
    let per = lines.len().div_ceil(OBJECTS);
    for (i, chunk) in lines.chunks(per).enumerate() {
        let hour = first_hour + i / 3;
        let stem = format!("{prefix}2026/11/30/{hour:02}/clicks-1-2026-11-30-{hour:02}-{i:04}");
        let (key, body) = match i % 4 {
            0 | 3 => {
                let mut body = Vec::new();
                for line in chunk {
                    body.extend_from_slice(line);
                    body.push(b'\n');
                }
                l.expected.extend_from_slice(&body);
                if i % 4 == 0 {
                    (format!("{stem}.gz"), body)
                } else {
                    (format!("{stem}.jsonl.gz"), gzip(&body))
                }
            }
            1 => {
                let mut body = Vec::new();
                for line in chunk.iter().filter(|x| is_object(x)) {
                    body.extend_from_slice(line);
                    l.expected.extend_from_slice(line);
                    l.expected.push(b'\n');
                }
                (stem, gzip(&body))
            }
            _ => {
                let seps: [&[u8]; 6] = [b"", b" ", b"\n", b"\r\n\t", b"  \n  ", b"\n\n"];
                let mut body = Vec::new();
                for (j, line) in chunk.iter().filter(|x| is_object(x)).enumerate() {
                    if j > 0 {
                        body.extend_from_slice(seps[j % seps.len()]);
                    }
                    if j % 97 == 50 {
                        body.extend_from_slice(b" , ");
                        l.bad_framing += 1;
                    }
                    if j == 200
                        && let Some(cut) = first_member_end(line)
                    {
                        // Written half, then the next record: the half is dead-lettered.
                        body.extend_from_slice(&line[..cut]);
                        l.expected.extend_from_slice(&line[..cut]);
                        l.expected.push(b'\n');
                        l.bad_framing += 1;
                        l.cut += 1;
                        continue;
                    }
                    if j % 5 == 1 {
                        // Pretty-printed: a line break between tokens.
                        body.extend_from_slice(b"{\n  ");
                        body.extend_from_slice(&line[1..]);
                    } else {
                        body.extend_from_slice(line);
                    }
                    l.expected.extend_from_slice(line);
                    l.expected.push(b'\n');
                }
                (format!("{stem}.json"), body)
            }
        };
        l.objects.push((key, body));
    }
    l
}

fn replay_args(input: &str, out: &Path, state: &Path, extra: &[&str]) -> Vec<String> {
    let schemas = root().join("schemas");
    let mut a: Vec<String> = [
        "replay",
        "--schemas",
        schemas.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--checkpoint-every",
        "1000",
    ]
    .map(str::to_owned)
    .to_vec();
    a.extend(extra.iter().map(|s| (*s).to_owned()));
    a.push(input.to_owned());
    a
}

fn command(args: &[String]) -> Command {
    let mut c = Command::new(bin());
    c.args(args).env("RUST_LOG", "warn");
    for (k, v) in services::s3_env() {
        c.env(k, v);
    }
    c
}

/// Runs the replay until it logs its `n`th committed checkpoint, then SIGKILLs it; false if
/// it ended first.
fn kill_after_commits(args: &[String], n: usize) -> bool {
    use std::io::BufRead as _;
    let mut child = command(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = 0;
    for line in stderr.lines() {
        if line.unwrap().contains("Committed checkpoint") {
            seen += 1;
            if seen == n {
                break;
            }
        }
    }
    let mid_run = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    mid_run && seen == n
}

/// Rows under `out/sessions/` against the oracle's, with the shared compare.py.
fn assert_rows_equal_oracle(out: &Path, expected: &Path, dir: &Path) {
    assert_same_rows(expected, &rows(out, "sessions/"), dir, "rows");
}

fn dead_letters(out: &Path) -> Vec<serde_json::Value> {
    rows(out, "dead-letter/").iter().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn an_s3_archive_killed_twice_equals_the_oracle_and_a_changed_object_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    generate(&input, 30_000, 5, "0.02");
    let data = std::fs::read(&input).unwrap();
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    let layout = lay_out(&lines, "fh/", 8);
    // An hour before the window: other events that must not be read.
    let other = dir.path().join("other.jsonl");
    generate(&other, 2_000, 6, "0");
    let other_data = std::fs::read(&other).unwrap();
    let other_lines: Vec<&[u8]> =
        other_data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    let early = lay_out(&other_lines[..300], "fh/", 2); // hours 02 to 05
    assert!(early.objects.iter().all(|(k, _)| k < &"fh/2026/11/30/08".to_owned()));

    let bucket = services::fresh_bucket("archive");
    for (key, body) in early.objects.iter().chain(&layout.objects) {
        services::put(&bucket, key, body);
    }
    let expected_input = dir.path().join("expected-input.jsonl");
    std::fs::write(&expected_input, &layout.expected).unwrap();
    let expected = oracle(&expected_input, dir.path());

    let archive = format!("s3://{bucket}/fh/");
    let (out, state) = (dir.path().join("out"), dir.path().join("state"));
    let a = replay_args(&archive, &out, &state, &["--from", "2026-11-30T08"]);
    // SIGKILL after the third checkpoint of a run, then after the sixth of the next.
    let killed = [3, 6].into_iter().filter(|&n| kill_after_commits(&a, n)).count();
    assert!(
        killed == 2 && state.join("listings").exists(),
        "the kills must land mid-run, after the listing ({killed} did)"
    );

    // An object rewritten under the checkpoint: refused, by name.
    let (key, body) = &layout.objects[5];
    services::put(&bucket, key, b"{\"rewritten\":true}\n");
    let refused = command(&a).output().unwrap();
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a changed archive must be refused");
    assert!(text.contains(&format!("{key} was rewritten")), "{text}");
    services::put(&bucket, key, body);

    let fin = command(&a).output().unwrap();
    assert!(fin.status.success(), "{}", String::from_utf8_lossy(&fin.stderr));
    assert_rows_equal_oracle(&out, &expected.rows, dir.path());

    // Every line is accounted for: the oracle's rejects, with the framing faults as
    // bad_framing instead of invalid_json (the cut value) or on top (the stray commas).
    let dead = dead_letters(&out);
    let by_reason = |r: &str| dead.iter().filter(|d| d["reason"] == r).count() as u64;
    let oracle_total: u64 = expected.rejects.values().sum();
    assert_eq!(by_reason("bad_framing"), layout.bad_framing, "bad_framing dead letters");
    assert!(layout.cut > 0);
    let mut ours = std::collections::BTreeMap::<String, u64>::new();
    for d in &dead {
        *ours.entry(d["reason"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
    }
    assert_eq!(
        dead.len() as u64,
        oracle_total + layout.bad_framing - layout.cut,
        "dead letters in all: ours {ours:?}, the oracle's {:?}",
        expected.rejects
    );
    let framing = dead.iter().find(|d| d["reason"] == "bad_framing").unwrap();
    let named = framing["source"]["file"].as_str().unwrap_or_default();
    assert!(named.starts_with(&format!("s3://{bucket}/fh/2026/11/30/")), "{framing}");
    assert!(framing["source"]["offset"].as_u64().is_some(), "{framing}");

    // A local replay of the same events gives the same rows.
    let local = dir.path().join("local");
    let o = integration_tests::replay(&local, &[expected_input.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(rows(&out, "sessions/"), rows(&local, "sessions/"), "archive vs local replay");

    // The same layout in a local directory.
    let tree = dir.path().join("tree");
    for (key, body) in early.objects.iter().chain(&layout.objects) {
        let p = tree.join(key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    let (dout, dstate) = (dir.path().join("dout"), dir.path().join("dstate"));
    let d = command(&replay_args(
        tree.join("fh").to_str().unwrap(),
        &dout,
        &dstate,
        &["--from", "2026-11-30T08:00:00Z"],
    ))
    .output()
    .unwrap();
    assert!(d.status.success(), "{}", String::from_utf8_lossy(&d.stderr));
    assert_eq!(summary(&d), summary(&fin), "directory vs S3 summary");
    assert_eq!(rows(&dout, "sessions/"), rows(&out, "sessions/"), "directory vs S3 rows");
}

#[test]
fn an_s3_archive_read_through_cut_connections_stops_at_to_and_equals_a_local_replay() {
    use integration_tests::proxy::FaultProxy;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    generate(&input, 16_000, 9, "0.02");
    let data = std::fs::read(&input).unwrap();
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    let half = lines.len() / 2;
    let within = lay_out(&lines[..half], "cut/", 8); // hours 08 to 11
    let past = lay_out(&lines[half..], "cut/", 12); // hours 12 to 15: after --to
    let bucket = services::fresh_bucket("archive-cut");
    for (key, body) in within.objects.iter().chain(&past.objects) {
        services::put(&bucket, key, body);
    }
    let expected_input = dir.path().join("expected-input.jsonl");
    std::fs::write(&expected_input, &within.expected).unwrap();

    // Every object GET is cut after 16 KiB, ten times over: the reader must go on from the
    // byte it had (a ranged GET, If-Match the listed ETag), not start the object again (that
    // would double its records) nor give up.
    let proxy = FaultProxy::start(services::s3_env()[0].1.trim_start_matches("http://"));
    let gets = format!("GET /{bucket}/cut/2026");
    proxy.cut_responses(&gets, 16 << 10, 10);
    let (out, state) = (dir.path().join("out"), dir.path().join("state"));
    let archive = format!("s3://{bucket}/cut/");
    let o = command(&replay_args(&archive, &out, &state, &["--to", "2026-11-30T12"]))
        .env("AWS_ENDPOINT_URL", proxy.url())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    assert_eq!(proxy.cuts(), 10, "every cut was made");
    assert!(log.contains("reading on from where it stopped"), "{log}");
    let ranged = proxy.requests().iter().filter(|r| r.starts_with(&gets)).count();
    assert!(ranged >= within.objects.len() + 10, "{ranged} GETs");
    // --to: nothing of hour 12 or later is read.
    assert!(
        !proxy.requests().iter().any(|r| {
            r.starts_with(&gets) && past.objects.iter().any(|(k, _)| r.contains(k.as_str()))
        }),
        "an object past --to was read: {:?}",
        proxy.requests()
    );

    let local = dir.path().join("local");
    let l = integration_tests::replay(&local, &[expected_input.to_str().unwrap()]);
    assert!(l.status.success(), "{}", String::from_utf8_lossy(&l.stderr));
    assert_eq!(rows(&out, "sessions/"), rows(&local, "sessions/"), "archive vs local replay");
    let expected = oracle(&expected_input, dir.path());
    assert_rows_equal_oracle(&out, &expected.rows, dir.path());
}
