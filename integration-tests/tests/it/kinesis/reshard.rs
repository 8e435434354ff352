//! Resharding: split, merge and scaling mid-stream, crashes at each step of a parent's handover,
//! a parent past retention.

use super::*;
use crate::kafka::terminate;

#[test]
fn kinesis_reshard_loses_nothing_and_cuts_no_session() {
    let s = Scenario::new("kreshard", 20_000, 2);
    let n = s.records.len();
    let p = s.start("a", &[]);
    s.put(0..n / 4);
    p.wait_log("Committed checkpoint", 60);
    let open = s.stream.open_shards();
    s.stream.split(&open[0]);
    s.put(n / 4..n / 2);
    let mut children: Vec<OpenShard> =
        s.stream.open_shards().into_iter().filter(|o| o.id != open[1].id).collect();
    children.sort_by_key(|o| o.start);
    assert_eq!(children.len(), 2, "{children:?}");
    s.stream.merge(&children[0], &children[1]);
    s.put(n / 2..3 * n / 4);
    s.stream.update_shard_count(4);
    s.put(3 * n / 4..n);
    s.assert_done(240);
    let lineage = s.stream.lineage();
    assert!(lineage.len() >= 7, "split, merge and scaling made shards: {lineage:?}");
    assert_children_after_parents(&p, &lineage);
    assert!(events(&p, "Child split starts from its parents' final state").len() >= 4);
    let metrics = integration_tests::curl(&["-s", &format!("http://{}/metrics", p.admin_addr())]).1;
    let strays: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("clickstream_customers_on_several_partitions{"))
        .collect();
    assert!(!strays.is_empty(), "the metric is exported: {metrics}");
    assert!(strays.iter().all(|l| l.ends_with(" 0")), "{strays:?}");
    terminate(p);
}

/// A crash at `point` while a parent shard hands over to its children; the restarted
/// instance ends with exactly the oracle's rows.
fn crash_at_the_handoff(point: &str) {
    let s = Scenario::new("khand", 6_000, 1);
    let n = s.records.len();
    let mut p = s.start("a", &[("CLICKSTREAM_FAILPOINT", point)]);
    s.put(0..n / 2);
    p.wait_log("Committed checkpoint", 60);
    s.stream.split(&s.stream.open_shards()[0]);
    s.put(n / 2..n);
    let st = p.wait_exit(120);
    assert!(!st.success(), "the failpoint {point} aborted the process");
    assert!(p.logged(&format!("Failpoint {point} reached")), "{}", p.log().join("\n"));
    let p = s.start("a", &[]);
    s.assert_done(240);
    terminate(p);
}

#[test]
fn kinesis_crash_after_a_parent_is_read_to_its_end() {
    crash_at_the_handoff("shard.read_to_end");
}

#[test]
fn kinesis_crash_after_a_parent_end_is_committed() {
    crash_at_the_handoff("shard.end_committed");
}

#[test]
fn kinesis_crash_before_a_child_first_checkpoint() {
    crash_at_the_handoff("child.seeded");
}

#[test]
fn kinesis_parent_past_retention_counts_as_finished() {
    use integration_tests::kinesis_proxy::KinesisProxy;
    // The parent's records were never read and are past retention; the children's are all
    // there is: the expected rows are the oracle's for the children's records alone.
    let (s, before) = Scenario::later_half("kexpired", 4_000, 5, 1);
    s.stream.put(&before);
    let parent = s.stream.open_shards()[0].clone();
    s.stream.split(&parent);
    s.put(0..s.records.len());
    let target = endpoint().trim_start_matches("http://").to_owned();
    let proxy = KinesisProxy::start(&target);
    proxy.hide_shards(&[&parent.id]);
    let p = s.start("a", &[("AWS_ENDPOINT_URL_KINESIS", &proxy.url())]);
    s.assert_done(180);
    assert!(events(&p, "Split assigned").iter().all(|(_, v)| v["split"] != parent.id.as_str()));
    terminate(p);
}
