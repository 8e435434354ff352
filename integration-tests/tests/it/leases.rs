//! The Kinesis lease table against a real `DynamoDB` API server (moto, `scripts/services up s3`):
//! KCL's item schema, and every change conditional on the counter the caller saw.

use aws_sdk_dynamodb::types::AttributeValue;
use clickstream::source::kinesis::lease::{Lease, LeaseTable, SHARD_END, TRIM_HORIZON};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;

fn var(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

fn client() -> aws_sdk_dynamodb::Client {
    let endpoint = var("AWS_ENDPOINT_URL_DYNAMODB")
        .or_else(|| var("AWS_ENDPOINT_URL"))
        .unwrap_or_else(|| "http://127.0.0.1:5000".to_owned());
    let creds = aws_sdk_dynamodb::config::Credentials::new(
        var("AWS_ACCESS_KEY_ID").unwrap_or_else(|| "test".into()),
        var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|| "test".into()),
        None,
        None,
        "tests",
    );
    let conf = aws_sdk_dynamodb::config::Builder::new()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new(
            var("AWS_REGION").unwrap_or_else(|| "us-east-1".into()),
        ))
        .endpoint_url(endpoint)
        .credentials_provider(creds)
        .build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

/// A new table name: tables outlive a test run on the same server.
fn fresh_table(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    format!("leases-{tag}-{}-{t}-{n}", std::process::id())
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// A table that exists, and the client for raw reads.
async fn table(tag: &str) -> (LeaseTable, aws_sdk_dynamodb::Client, String) {
    let name = fresh_table(tag);
    let c = client();
    let t = LeaseTable::new(c.clone(), &name);
    t.ensure().await.unwrap_or_else(|e| {
        panic!("cannot create a lease table (start the server: scripts/services up s3): {e}")
    });
    (t, c, name)
}

async fn raw(
    c: &aws_sdk_dynamodb::Client,
    table: &str,
    key: &str,
) -> HashMap<String, AttributeValue> {
    c.get_item()
        .table_name(table)
        .key("leaseKey", AttributeValue::S(key.into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap_or_default()
}

/// Attribute name → DynamoDB type, as stored.
fn types(item: &HashMap<String, AttributeValue>) -> BTreeMap<&str, &'static str> {
    item.iter()
        .map(|(k, v)| {
            let t = match v {
                AttributeValue::S(_) => "S",
                AttributeValue::N(_) => "N",
                AttributeValue::Ss(_) => "SS",
                AttributeValue::Null(_) => "NULL",
                _ => "other",
            };
            (k.as_str(), t)
        })
        .collect()
}

async fn only(t: &LeaseTable) -> Lease {
    let mut all = t.list().await.unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

#[test]
fn ensure_twice_is_fine_and_a_new_table_is_empty() {
    block_on(async {
        let (t, _, _) = table("ensure").await;
        t.ensure().await.unwrap();
        assert!(t.list().await.unwrap().is_empty());
    });
}

#[test]
fn a_missing_table_is_named_as_such() {
    block_on(async {
        let t = LeaseTable::new(client(), &fresh_table("missing"));
        let e = t.list().await.unwrap_err();
        assert!(
            matches!(e, clickstream::source::kinesis::lease::LeaseError::TableMissing { .. }),
            "{e}"
        );
    });
}

#[test]
fn create_is_idempotent() {
    block_on(async {
        let (t, _, _) = table("create").await;
        let lease = Lease::new("shardId-000000000000", TRIM_HORIZON);
        assert!(t.create(&lease).await.unwrap());
        assert!(!t.create(&Lease::new("shardId-000000000000", "LATEST")).await.unwrap());
        assert_eq!(only(&t).await, lease, "the second create changed nothing");
    });
}

#[test]
fn a_take_on_a_stale_view_loses() {
    block_on(async {
        let (t, _, _) = table("take").await;
        t.create(&Lease::new("s0", TRIM_HORIZON)).await.unwrap();
        let seen = only(&t).await;
        let a = t.take(&seen, "a").await.unwrap().expect("a takes the unowned lease");
        assert_eq!((a.owner.as_deref(), a.counter, a.owner_switches), (Some("a"), 1, 0));
        assert_eq!(t.take(&seen, "b").await.unwrap(), None, "b saw counter 0; it is 1 now");
        assert_eq!(only(&t).await, a);
        // With the current view, b steals it: an owner switch.
        let b = t.take(&a, "b").await.unwrap().expect("b steals");
        assert_eq!((b.owner.as_deref(), b.counter, b.owner_switches), (Some("b"), 2, 1));
        assert_eq!(only(&t).await, b);
    });
}

#[test]
fn renew_by_a_non_owner_returns_none() {
    block_on(async {
        let (t, _, _) = table("renew").await;
        t.create(&Lease::new("s0", TRIM_HORIZON)).await.unwrap();
        let a = t.take(&only(&t).await, "a").await.unwrap().unwrap();
        assert_eq!(t.renew(&a, "b").await.unwrap(), None);
        let renewed = t.renew(&a, "a").await.unwrap().expect("the owner renews");
        assert_eq!(renewed.counter, a.counter + 1);
        assert_eq!(t.renew(&a, "a").await.unwrap(), None, "a stale view does not renew");
        assert_eq!(only(&t).await, renewed);
    });
}

#[test]
fn a_checkpoint_on_a_stale_counter_leaves_the_item_unchanged() {
    block_on(async {
        let (t, c, name) = table("checkpoint").await;
        t.create(&Lease::new("s0", TRIM_HORIZON)).await.unwrap();
        let a1 = t.take(&only(&t).await, "a").await.unwrap().unwrap();
        let a2 = t.renew(&a1, "a").await.unwrap().unwrap();
        let before = raw(&c, &name, "s0").await;
        assert_eq!(t.checkpoint(&a1, "a", "4959", 0).await.unwrap(), None);
        assert_eq!(t.checkpoint(&a2, "b", "4959", 0).await.unwrap(), None, "not b's");
        assert_eq!(raw(&c, &name, "s0").await, before);
        // A stolen lease counts a switch; the new owner's checkpoint resets it.
        let b = t.take(&a2, "b").await.unwrap().unwrap();
        assert_eq!(b.owner_switches, 1);
        let done = t.checkpoint(&b, "b", "4959", 3).await.unwrap().expect("b's checkpoint");
        assert_eq!(
            (done.checkpoint.as_str(), done.checkpoint_sub, done.owner_switches, done.counter),
            ("4959", 3, 0, b.counter + 1)
        );
        assert_eq!(only(&t).await, done);
    });
}

#[test]
fn release_removes_the_owner_and_another_worker_takes_it() {
    block_on(async {
        let (t, c, name) = table("release").await;
        t.create(&Lease::new("s0", TRIM_HORIZON)).await.unwrap();
        let a = t.take(&only(&t).await, "a").await.unwrap().unwrap();
        assert!(!t.release(&a, "b").await.unwrap(), "b does not hold it");
        assert!(t.release(&a, "a").await.unwrap());
        assert!(!t.release(&a, "a").await.unwrap(), "the view is stale now");
        // KCL's evictLease removes leaseOwner rather than writing an empty value.
        let item = raw(&c, &name, "s0").await;
        assert!(!item.contains_key("leaseOwner"), "{item:?}");
        let seen = only(&t).await;
        assert_eq!((seen.owner.as_deref(), seen.counter), (None, a.counter + 1));
        let b = t.take(&seen, "b").await.unwrap().expect("b takes the released lease");
        // As in KCL, taking an unowned lease is not an owner switch.
        assert_eq!((b.owner.as_deref(), b.owner_switches), (Some("b"), 0));
    });
}

#[test]
fn items_carry_kcl_attribute_names_and_types() {
    block_on(async {
        let (t, c, name) = table("schema").await;
        let lease = Lease {
            parents: vec!["shardId-000000000001".into(), "shardId-000000000000".into()],
            hash_range: Some((0, 170_141_183_460_469_231_731_687_303_715_884_105_727)),
            ..Lease::new("shardId-000000000002", TRIM_HORIZON)
        };
        assert!(t.create(&lease).await.unwrap());
        let item = raw(&c, &name, &lease.key).await;
        let want: BTreeMap<&str, &str> = [
            ("leaseKey", "S"),
            ("leaseCounter", "N"),
            ("checkpoint", "S"),
            ("checkpointSubSequenceNumber", "N"),
            ("ownerSwitchesSinceCheckpoint", "N"),
            ("parentShardId", "SS"),
            ("startingHashKey", "S"),
            ("endingHashKey", "S"),
            ("entityType", "S"),
        ]
        .into();
        assert_eq!(types(&item), want);
        assert_eq!(
            item["endingHashKey"],
            AttributeValue::S("170141183460469231731687303715884105727".into())
        );
        assert_eq!(item["entityType"], AttributeValue::S("LEASE".into()));

        let mine = t.take(&only(&t).await, "w1").await.unwrap().unwrap();
        let end = t.checkpoint(&mine, "w1", SHARD_END, 0).await.unwrap().unwrap();
        let children = ["shardId-000000000004".to_owned(), "shardId-000000000003".to_owned()];
        let with = t.set_children(&end, "w1", &children).await.unwrap().unwrap();
        assert_eq!(with.children, ["shardId-000000000003", "shardId-000000000004"]);
        assert_eq!(t.set_children(&end, "w1", &children).await.unwrap(), None, "stale");
        let item = raw(&c, &name, &lease.key).await;
        let mut want = want;
        want.insert("leaseOwner", "S");
        want.insert("childShardIds", "SS");
        assert_eq!(types(&item), want);
        assert_eq!(item["leaseOwner"], AttributeValue::S("w1".into()));
        assert_eq!(item["checkpoint"], AttributeValue::S("SHARD_END".into()));
        assert_eq!(item["leaseCounter"], AttributeValue::N("3".into()));
        assert_eq!(only(&t).await, with);
    });
}

#[test]
fn only_finished_leases_are_deleted() {
    block_on(async {
        let (t, _, _) = table("delete").await;
        t.create(&Lease::new("s0", TRIM_HORIZON)).await.unwrap();
        assert!(!t.delete_finished("s0").await.unwrap(), "not finished");
        assert!(!t.delete_finished("nope").await.unwrap(), "not there");
        let a = t.take(&only(&t).await, "a").await.unwrap().unwrap();
        t.checkpoint(&a, "a", SHARD_END, 0).await.unwrap().unwrap();
        assert!(t.delete_finished("s0").await.unwrap());
        assert!(t.list().await.unwrap().is_empty());
    });
}

#[test]
fn list_reads_every_page() {
    block_on(async {
        let (t, c, name) = table("pages").await;
        // Items of about 40 KB: a scan page holds at most 1 MB, so 60 of them take pages.
        let pad: Vec<String> = (0..40).map(|i| format!("{i:03}{}", "x".repeat(1000))).collect();
        for i in 0..60 {
            let lease =
                Lease { parents: pad.clone(), ..Lease::new(format!("s{i:02}"), TRIM_HORIZON) };
            assert!(t.create(&lease).await.unwrap());
        }
        let first = c.scan().table_name(&name).consistent_read(true).send().await.unwrap();
        assert!(first.last_evaluated_key.is_some(), "the server pages this table");
        let all = t.list().await.unwrap();
        assert_eq!(all.len(), 60);
        assert_eq!(all[59].key, "s59");
    });
}
