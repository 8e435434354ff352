//! Kafka going away and coming back: broker restarts at every kind of moment, a 3-broker
//! cluster losing the group coordinator's broker, and the liveness signal of a consumer that
//! cannot get back to work. Real Apache Kafka brokers started by `scripts/services`.

use crate::fenced::{Scenario, assert_offsets_behind, input};
use crate::kafka::{terminate, wait_for};
use integration_tests::{Running, root};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A single broker of this test binary's own (its own ports and data), so that stopping it
/// disturbs no other test.
struct OwnBroker {
    dir: PathBuf,
    port: u16,
}

impl OwnBroker {
    fn start(port: u16) -> OwnBroker {
        let dir =
            std::env::temp_dir().join(format!("clickstream-broker-{}-{port}", std::process::id()));
        let b = OwnBroker { dir, port };
        b.services(&["up", "kafka"]);
        b
    }

    fn services(&self, args: &[&str]) {
        let shared = std::env::var("CLICKSTREAM_SERVICES_DIR").unwrap_or_else(|_| {
            format!("{}/.cache/clickstream/services", std::env::var("HOME").unwrap())
        });
        let st = Command::new(root().join("scripts/services"))
            .args(args)
            .env("CLICKSTREAM_SERVICES_DIR", &self.dir)
            // The jars the shared broker was installed from.
            .env("CLICKSTREAM_KAFKA_HOME", format!("{shared}/kafka/4.4.0"))
            .env("CLICKSTREAM_KAFKA_PORT", self.port.to_string())
            .env("CLICKSTREAM_KAFKA_CONTROLLER_PORT", (self.port + 1).to_string())
            .status()
            .unwrap();
        assert!(st.success(), "scripts/services {args:?} for the broker on {}", self.port);
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the broker for `down`, then starts it again.
    fn bounce(&self, down: Duration) {
        self.services(&["down", "kafka"]);
        std::thread::sleep(down);
        self.services(&["up", "kafka"]);
    }

    fn pid(&self) -> String {
        std::fs::read_to_string(self.dir.join("run/kafka.pid")).unwrap().trim().to_owned()
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.pid()]).status();
        self.services(&["down", "kafka"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// When, in a run, the broker goes away.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// Right after the partitions were assigned, while records flow.
    Consuming,
    /// Right after a checkpoint was committed (the next is being cut).
    Checkpoint,
    /// While a second instance joins and the group rebalances.
    Rebalance,
}

#[test]
fn after_ten_broker_restarts_at_any_moment_every_run_equals_the_oracle() {
    let broker = OwnBroker::start(29092);
    let input = input(4_000, 31);
    let moments = [Moment::Consuming, Moment::Checkpoint, Moment::Rebalance];
    for i in 0..10 {
        let moment = moments[i % 3];
        let sc = Scenario::on(&broker.brokers(), 1, &format!("bounce{i}"), &input, 2, false);
        let half = sc.records.len() / 2;
        sc.produce(0..half);
        let a = sc.start("a", &[]);
        let mut b: Option<Running> = None;
        match moment {
            Moment::Consuming => {
                a.wait_log("Split assigned", 60);
            }
            Moment::Checkpoint => {
                a.wait_log("Committed checkpoint", 60);
            }
            Moment::Rebalance => {
                a.wait_log("Split assigned", 60);
                let second = sc.start("b", &[]);
                a.wait_log("Partitions revoked", 60);
                b = Some(second);
            }
        }
        broker.bounce(Duration::from_secs(3 + (i as u64 % 4) * 2));
        sc.produce(half..sc.records.len());
        sc.wait_committed(sc.records.len(), 180);
        sc.assert_oracle(120);
        assert_offsets_behind(&sc);
        if let Some(b) = b {
            terminate(b);
        }
        terminate(a);
        eprintln!("bounce {i} ({moment:?}): output equals the oracle");
    }
}

#[test]
fn a_consumer_that_cannot_reach_its_broker_is_reported_stuck_and_recovers() {
    let broker = OwnBroker::start(29192);
    let input = input(3_000, 33);
    let sc = Scenario::on(&broker.brokers(), 1, "unreachable", &input, 1, false);
    sc.produce(0..sc.records.len());
    let a = sc.start("a", &[("CLICKSTREAM__RUN__LIVENESS_TIMEOUT", "8s")]);
    let addr = a.admin_addr();
    sc.wait_committed(sc.records.len(), 60);
    let live = || integration_tests::curl(&[&format!("http://{addr}/livez")]);
    assert_eq!(live().0, 200);
    // The broker freezes (SIGSTOP): the member cannot rejoin, whatever it tries.
    let st = Command::new("kill").args(["-STOP", &broker.pid()]).status().unwrap();
    assert!(st.success());
    wait_for("/livez to fail", 90, || live().0 == 503);
    let (_, why) = live();
    let (code, ready) = integration_tests::curl(&[&format!("http://{addr}/readyz")]);
    assert_eq!(code, 503, "{ready}");
    eprintln!("stuck: {why}");
    let st = Command::new("kill").args(["-CONT", &broker.pid()]).status().unwrap();
    assert!(st.success());
    let back = std::time::Instant::now();
    while live().0 != 200 {
        assert!(
            back.elapsed() < Duration::from_mins(2),
            "/livez did not recover: {:?}; log:\n{}",
            live(),
            a.log().join("\n")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    terminate(a);
}

#[test]
fn a_member_kept_without_partitions_while_records_wait_is_reported_stuck() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let input = input(3_000, 35);
    let sc = Scenario::new("hog", &input, 1, false);
    sc.produce(0..sc.records.len());
    // Another member of the group whose id sorts first takes the only partition and never
    // consumes it.
    let hog: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &sc.brokers)
        .set("group.id", &sc.group)
        .set("client.id", "aaa-hog")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    hog.subscribe(&[&sc.topic]).unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while hog.assignment().unwrap().count() == 0 {
        assert!(std::time::Instant::now() < until, "the hog got no partition");
        let _ = hog.poll(Duration::from_millis(100));
    }
    hog.pause(&hog.assignment().unwrap()).unwrap();
    let a = sc.start("a", &[("CLICKSTREAM__RUN__LIVENESS_TIMEOUT", "8s")]);
    let addr = a.admin_addr();
    let live = || integration_tests::curl(&[&format!("http://{addr}/livez")]);
    let stuck = std::time::Instant::now();
    while live().0 != 503 {
        assert!(
            stuck.elapsed() < Duration::from_secs(90),
            "/livez never failed; log:\n{}",
            a.log().join("\n")
        );
        let _ = hog.poll(Duration::from_millis(200));
    }
    let (_, why) = live();
    assert!(why.contains("no partition assigned"), "{why}");
    drop(hog);
    sc.wait_committed(sc.records.len(), 90);
    wait_for("/livez to recover", 60, || live().0 == 200);
    terminate(a);
}

/// Stops the 3-broker cluster however the test ends (`scripts/services down all` does not).
struct Kafka3Down;

impl Drop for Kafka3Down {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/services")).args(["down", "kafka3"]).status();
    }
}

#[test]
fn losing_the_group_coordinators_broker_of_three_loses_nothing() {
    let env = |k: &str| std::env::var(k).ok();
    let brokers = env("CLICKSTREAM_KAFKA3_BROKERS")
        .unwrap_or_else(|| "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094".into());
    let services = |args: &[&str]| {
        let o = Command::new(root().join("scripts/services")).args(args).output().unwrap();
        assert!(
            o.status.success(),
            "scripts/services {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    };
    services(&["up", "kafka3"]);
    let _down = Kafka3Down;
    let input = input(6_000, 37);
    let sc = Scenario::on(&brokers, 3, "three", &input, 3, false);
    let half = sc.records.len() / 2;
    sc.produce(0..half);
    // Producing while leadership moves can stall longer than the tests' usual idle timeout;
    // that pause must not pass for the end of input.
    let idle = [("CLICKSTREAM__RUN__IDLE_TIMEOUT", "20s")];
    let a = sc.start("a", &idle);
    let b = sc.start("b", &idle);
    sc.wait_committed(half, 120);
    let coordinator = services(&["kafka3-coordinator", &sc.group]);
    eprintln!("group coordinator: node {coordinator}");
    services(&["kafka3-stop", &coordinator]);
    sc.produce(half..sc.records.len());
    sc.wait_committed(sc.records.len(), 180);
    sc.assert_oracle(120);
    assert_offsets_behind(&sc);
    services(&["kafka3-start", &coordinator]);
    terminate(a);
    terminate(b);
}
