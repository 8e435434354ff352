//! Parquet with declared columns, read back by `DuckDB`.

use super::*;

/// A Python with `DuckDB` (`scripts/setup` installs it).
fn duckdb_python() -> String {
    std::env::var("CLICKSTREAM_DUCKDB_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        let tools = std::env::var("CLICKSTREAM_TOOLS_DIR")
            .unwrap_or_else(|_| format!("{home}/.cache/clickstream/tools"));
        format!("{tools}/test-venv/bin/python")
    })
}

#[test]
fn parquet_rows_with_declared_columns_read_back_in_duckdb_with_their_types() {
    let dir = tempfile::tempdir().unwrap();
    let schemas = schema_dir(dir.path());
    let data = data_set(dir.path(), 3);
    let local = dir.path().join("local");
    let o = replay_player(&local, &schemas, &data.events);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json_rows = rows(&local, "sessions/");
    assert_rows(&json_rows, &data.rows, &serde_json::json!([PLAYER_SET]));

    let bucket = services::fresh_bucket("kinds-pq");
    let mut env: Vec<(&str, String)> = services::s3_env();
    env.push(("CLICKSTREAM__SINK__FORMAT", "parquet".into()));
    let out = std::process::Command::new(integration_tests::bin())
        .args(["replay", "--schemas", schemas.to_str().unwrap()])
        .args(["--allowed-lateness", LATENESS.0])
        .args(["--output", &format!("s3://{bucket}/pq"), "--state"])
        .arg(dir.path().join("state"))
        .arg(&data.events)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let objects = services::objects(&bucket, "pq/sessions/");
    assert!(
        !objects.is_empty() && objects.keys().all(|k| k.ends_with(".parquet")),
        "{:?}",
        objects.keys()
    );
    let files = dir.path().join("parquet");
    std::fs::create_dir_all(&files).unwrap();
    for (i, body) in objects.values().enumerate() {
        std::fs::write(files.join(format!("{i}.parquet")), body).unwrap();
    }
    // Every row, times as epoch milliseconds, plus the types and a few sums.
    let script = format!(
        r#"import duckdb, json
c = duckdb.connect()
src = "read_parquet('{0}/*.parquet', union_by_name = true)"
d = c.sql(f"describe select * from {{src}}").fetchall()
cols = [r[0] for r in d]
sel = ", ".join(f"epoch_ms({{x}})" if x in ("session_start", "session_end") else x for x in cols)
rows = [list(r) for r in c.sql(f"select {{sel}} from {{src}}").fetchall()]
sums = c.sql(f"select count(*), sum(event_count), sum(video_plays), sum(paywall_views), sum(page_views), sum(pages_seen), sum(watch_events), max(max_bitrate), min(min_bitrate), min(min_buffer_s), max(max_position_s), count(platform), count(last_premium) from {{src}}").fetchone()
print(json.dumps({{"columns": cols, "types": {{r[0]: r[1] for r in d}}, "rows": rows, "sums": list(sums)}}))
"#,
        files.display()
    );
    let py = std::process::Command::new(duckdb_python()).args(["-c", &script]).output();
    let py = py.expect("DuckDB's Python (scripts/setup installs it)");
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    let got: Value = serde_json::from_slice(&py.stdout).unwrap();

    let want: Vec<Value> = json_rows.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let order = keys_in_order(&json_rows[0]);
    let columns: Vec<String> = serde_json::from_value(got["columns"].clone()).unwrap();
    assert_eq!(columns, order, "Parquet columns in the order of the JSON rows");
    let t = &got["types"];
    let expect_type = |c: &str| match c {
        "session_start" | "session_end" => "TIMESTAMP WITH TIME ZONE",
        "schema_sets" => "VARCHAR[]",
        "customer_id" | "platform" | "exit_path" | "min_country" | "max_country" => "VARCHAR",
        c if NUMBER_COLUMNS.contains(&c) => "DOUBLE",
        "last_premium" => "BOOLEAN",
        // counts, integer attributes, distinct_count and count_present
        _ => "BIGINT",
    };
    for c in &order {
        assert_eq!(t[c], expect_type(c), "type of {c}: {t}");
    }
    // Every row, cell by cell.
    let parquet: Vec<String> = got["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let m: serde_json::Map<String, Value> =
                order.iter().cloned().zip(r.as_array().unwrap().iter().cloned()).collect();
            Value::Object(m).to_string()
        })
        .collect();
    let sorted_keys = |v: &Value| {
        let mut m = v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        m.sort();
        m
    };
    assert_eq!(sorted_keys(&serde_json::from_str(&parquet[0]).unwrap()), sorted_keys(&want[0]));
    // `assert_rows` checks key order on the text: rebuild it in column order.
    let want_text: Vec<String> = json_rows
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let body: Vec<String> = order
                .iter()
                .filter(|c| *c != "schema_sets")
                .map(|c| format!("{}:{}", Value::from(c.as_str()), v[c]))
                .collect();
            format!("{{{}}}", body.join(","))
        })
        .collect();
    let parquet_text: Vec<String> = parquet
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let body: Vec<String> =
                order.iter().map(|c| format!("{}:{}", Value::from(c.as_str()), v[c])).collect();
            format!("{{{}}}", body.join(","))
        })
        .collect();
    assert_rows(&parquet_text, &want_text, &serde_json::json!([PLAYER_SET]));
    // And the aggregates an analyst would run.
    let sum = |c: &str| want.iter().map(|r| r[c].as_i64().unwrap()).sum::<i64>();
    let max = |c: &str| want.iter().filter_map(|r| r[c].as_i64()).max().unwrap();
    let min = |c: &str| want.iter().filter_map(|r| r[c].as_i64()).min().unwrap();
    let fmin = |c: &str| want.iter().filter_map(|r| r[c].as_f64()).fold(f64::INFINITY, f64::min);
    let fmax =
        |c: &str| want.iter().filter_map(|r| r[c].as_f64()).fold(f64::NEG_INFINITY, f64::max);
    let present = |c: &str| want.iter().filter(|r| !r[c].is_null()).count() as i64;
    let s = got["sums"].as_array().unwrap();
    assert_eq!(s[0], want.len(), "rows");
    assert_eq!(s[1], sum("event_count"));
    assert_eq!(s[2], sum("video_plays"));
    assert_eq!(s[3], sum("paywall_views"));
    assert_eq!(s[4], sum("page_views"));
    assert_eq!(s[5], sum("pages_seen"));
    assert_eq!(s[6], sum("watch_events"));
    assert_eq!(s[7], max("max_bitrate"));
    assert_eq!(s[8], min("min_bitrate"));
    assert_eq!(s[9].as_f64().map(f64::to_bits), Some(fmin("min_buffer_s").to_bits()));
    assert_eq!(s[10].as_f64().map(f64::to_bits), Some(fmax("max_position_s").to_bits()));
    assert_eq!(s[11], present("platform"));
    assert_eq!(s[12], present("last_premium"));
}
